//! The XY plugin's tests: its own physics checks, then the generic contract checks of
//! `latflow_core::testkit`, one line each (copy these into a new plugin).

use std::f64::consts::PI;

use latflow_core::abi::Theory;
use latflow_core::abi_stable::std_types::{RSlice, RSliceMut, RVec};
use latflow_core::sdk::Adapter;
use latflow_core::testkit;

use super::*;

fn theory(lattice: &str, beta: f64) -> Adapter<Xy> {
    Adapter::from_json(&format!(r#"{{"lattice": {lattice}, "beta": {beta}}}"#)).unwrap()
}

/// S of one configuration.
fn s(t: &Xy, theta: &[f64]) -> f64 {
    Physics::action(t, theta)
}

fn random_angles(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed, 0);
    (0..n).map(|_| 4.0 * PI * (s.uniform() - 0.5)).collect()
}

/// The action is the definition, is periodic in every angle, and is invariant under a global
/// rotation θ → θ + c; the ordered configuration has energy 1, magnetization 1, S/V = −βd.
#[test]
fn action_matches_the_definition_and_its_symmetries() {
    let t = theory("[3, 4]", 0.8);
    let lat = t.lattice.clone();
    let theta = random_angles(12, 5);
    let mut naive = 0.0;
    for x in 0..12 {
        for mu in 0..2 {
            naive -= 0.8 * (theta[lat.fwd(x, mu)] - theta[x]).cos();
        }
    }
    assert!((s(&t, &theta) - naive).abs() < 1e-12, "{} vs {naive}", s(&t, &theta));
    let shifted: Vec<f64> = theta.iter().enumerate().map(|(i, x)| x + 2.0 * PI * (i % 3) as f64 + 0.37).collect();
    assert!((s(&t, &shifted) - naive).abs() < 1e-11);
    let obs = t.measure(RSlice::from(&[1.5; 12][..])).into_result().unwrap();
    assert!((obs[0] + 1.6).abs() < 1e-14 && (obs[1] - 1.0).abs() < 1e-14 && (obs[2] - 1.0).abs() < 1e-14, "{obs:?}");
}

/// The gradient in 1 to 4 dimensions, including extent-2 axes where x+μ̂ and x−μ̂ coincide,
/// against finite differences (the kit's check on top of a 4×4 lattice).
#[test]
fn gradient_matches_finite_differences_in_1_to_4_dimensions() {
    for (shape, beta) in [("[16]", 1.0), ("[6, 5]", 0.7), ("[4, 2, 3]", 2.3), ("[2, 3, 2, 4]", 0.45)] {
        testkit::check_force::<Xy>(&format!(r#"{{"lattice": {shape}, "beta": {beta}}}"#), &HmcParams::default());
    }
}

/// Card validation: unknown keys, bad β and bad lattices are refused with the key named;
/// `set_parameter` validates like the card.
#[test]
fn configuration_and_parameters_are_validated() {
    let err = |json: &str| Xy::from_config(json).err().unwrap().message.to_string();
    assert!(err(r#"{"lattice": [4], "beta": 1, "bta": 2}"#).contains("bta"));
    assert!(err(r#"{"lattice": [4], "beta": 0}"#).starts_with("beta:"));
    assert!(err(r#"{"lattice": [4], "beta": -1}"#).starts_with("beta:"));
    assert!(err(r#"{"lattice": [1], "beta": 1}"#).starts_with("lattice:"));
    assert!(err(r#"{"lattice": [4]}"#).contains("beta"));
    let mut t = theory("[4]", 1.0);
    assert!(t.set_parameter("beta".into(), 2.5).into_result().is_ok());
    assert_eq!(t.parameter("beta".into()).into_result().unwrap(), 2.5);
    assert!(t.set_parameter("beta".into(), f64::NAN).into_result().is_err());
    assert!(t.set_parameter("kappa".into(), 1.0).into_result().is_err());
    assert!(t.params_json().contains("\"beta\":2.5"), "{}", t.params_json());
}

/// HMC through the ABI: runs, keeps angles in (−π, π], is reproducible from the stream state,
/// and refuses nested time scales (this action has one level).
#[test]
fn hmc_runs_and_is_reproducible() {
    let mut t = theory("[8, 8]", 1.1);
    let params = HmcParams::default();
    let run = |t: &mut Adapter<Xy>| {
        let mut rng = Stream::new(11, 0).state();
        let mut cfg = t.initial(Start::Hot, &mut rng).into_result().unwrap().into_vec();
        let recs = t.hmc(RSliceMut::from_mut_slice(&mut cfg), &params, 20, &mut rng).into_result().unwrap();
        (cfg, recs.into_vec())
    };
    let (a, ra) = run(&mut t);
    let (b, rb) = run(&mut t);
    assert_eq!((&a, &ra), (&b, &rb));
    assert!(ra.iter().filter(|r| r.accepted).count() >= 15, "{ra:?}");
    assert!(a.iter().all(|x| *x > -PI && *x <= PI));
    let nested = HmcParams { inner_steps: RVec::from(vec![2]), ..params.clone() };
    let mut rng = Stream::new(1, 0).state();
    assert!(t.hmc(RSliceMut::from_mut_slice(&mut a.clone()), &nested, 1, &mut rng).into_result().is_err());
}

// The generic contract checks.

const CARD: &str = r#"{"lattice": [4, 4], "beta": 1.1}"#;

#[test]
fn contract_observables() {
    testkit::check_observables::<Xy>(CARD);
}

#[test]
fn contract_reversibility() {
    testkit::check_reversibility::<Xy>(CARD, &HmcParams::default());
}

#[test]
fn contract_exp_minus_delta_h() {
    testkit::check_exp_minus_delta_h::<Xy>(CARD, &HmcParams { md_steps: 4, ..HmcParams::default() }, 4000);
}

#[test]
fn contract_adapter() {
    testkit::check_adapter::<Xy>(CARD, &HmcParams::default());
}
