use super::*;
use latflow_core::abi::{IntegratorKind, Theory};
use latflow_core::abi_stable::std_types::{RSlice, RSliceMut, RVec};
use latflow_core::sdk::Adapter;
use latflow_core::testkit;

/// Reference action straight from the definition, with the lattice's neighbour tables.
fn naive_action(lat: &Lattice, phi: &[f64], m2: f64, lambda: f64) -> f64 {
    let mut s = 0.0;
    for x in 0..lat.volume() {
        for mu in 0..lat.dim() {
            let d = phi[lat.fwd(x, mu)] - phi[x];
            s += d * d;
        }
        s += m2 * phi[x] * phi[x] + lambda * phi[x].powi(4);
    }
    s
}

fn random_field(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed, 0);
    (0..n).map(|_| s.normal()).collect()
}

fn theory(json: &str) -> Adapter<Phi4> {
    Adapter::new(Phi4::from_config(json).unwrap()).unwrap()
}

#[test]
fn action_matches_definition_in_1_to_4_dimensions() {
    for shape in [vec![6], vec![4, 6], vec![3, 4, 2], vec![2, 3, 4, 2]] {
        let lat = Lattice::new(&shape.iter().map(|&x| x as i64).collect::<Vec<_>>()).unwrap();
        let k = Kernel::new(&lat);
        let phi = random_field(lat.volume(), 1);
        let a = k.action(&phi, -1.3, 0.7);
        let b = naive_action(&lat, &phi, -1.3, 0.7);
        assert!((a - b).abs() < 1e-12 * b.abs().max(1.0), "{shape:?}: {a} vs {b}");
        let h = k.action_hopping(&phi);
        let hb = naive_action(&lat, &phi, 0.0, 0.0);
        assert!((h - hb).abs() < 1e-12 * hb.abs().max(1.0));
    }
}

/// The gradient (what models train against, and the HMC force) against central finite
/// differences along random directions: dS(φ + εv)/dε = ⟨∇S, v⟩.
#[test]
fn gradient_matches_finite_differences() {
    for shape in ["[8, 8]", "[4, 3, 5]"] {
        let t = theory(&format!(r#"{{"lattice": {shape}, "m2": -4.0, "lambda": 8.0}}"#));
        let v = t.lattice().volume();
        let phi = random_field(v, 2);
        let mut g = vec![0.0; v];
        t.kernel().gradient(&phi, -4.0, 8.0, &mut g);
        for seed in 0..5 {
            let dir = random_field(v, 100 + seed);
            let eps = 1e-5;
            let shifted = |e: f64| -> Vec<f64> { phi.iter().zip(&dir).map(|(p, d)| p + e * d).collect() };
            let s = |e: f64| t.kernel().action(&shifted(e), -4.0, 8.0);
            // 4-point stencil, error O(eps^4)
            let fd = (8.0 * (s(eps) - s(-eps)) - (s(2.0 * eps) - s(-2.0 * eps))) / (12.0 * eps);
            let an: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
            assert!((fd - an).abs() < 1e-7 * an.abs().max(1.0), "{shape} seed {seed}: fd {fd} vs {an}");
        }
        // the split forces add up to the full one
        let mut g0 = vec![0.0; v];
        let mut g1 = vec![0.0; v];
        t.kernel().gradient_hopping(&phi, &mut g0);
        t.kernel().gradient_local(&phi, -4.0, 8.0, &mut g1);
        for i in 0..v {
            assert!((g0[i] + g1[i] - g[i]).abs() < 1e-12 * g[i].abs().max(1.0));
        }
    }
}

#[test]
fn gradient_through_the_abi_matches_finite_differences() {
    let t = theory(r#"{"lattice": [4, 4], "m2": 1.0, "lambda": 0.5}"#);
    let batch: Vec<f64> = random_field(48, 3);
    let ag = t.action_grad(RSlice::from(&batch[..])).into_result().unwrap();
    assert_eq!(ag.actions.len(), 3);
    assert_eq!(ag.grad.len(), 48);
    let eps = 1e-6;
    for k in [0usize, 17, 47] {
        let mut p = batch.clone();
        p[k] += eps;
        let sp = t.action(RSlice::from(&p[..])).into_result().unwrap();
        p[k] -= 2.0 * eps;
        let sm = t.action(RSlice::from(&p[..])).into_result().unwrap();
        let fd = (sp[k / 16] - sm[k / 16]) / (2.0 * eps);
        assert!((fd - ag.grad[k]).abs() < 1e-6 * ag.grad[k].abs().max(1.0), "{k}: {fd} vs {}", ag.grad[k]);
    }
}

#[test]
fn hopping_form_round_trips() {
    // m² = −4, d = 2 gives λ̂ = 1/2 and κ = 1/√(2λ) (docs/reference.md §2).
    let c = Couplings::new(-4.0, 8.0).unwrap();
    let (k, lh) = c.hopping(2);
    assert!((lh - 0.5).abs() < 1e-14 && (k - 0.25).abs() < 1e-14, "{k} {lh}");
    let back = Couplings::from_hopping(k, lh, 2).unwrap();
    assert!((back.m2 + 4.0).abs() < 1e-12 && (back.lambda - 8.0).abs() < 1e-12);
    let t = theory(r#"{"lattice": [8, 8], "kappa": 0.25, "lambda_hat": 0.5}"#);
    assert!((t.couplings().m2 + 4.0).abs() < 1e-12 && (t.couplings().lambda - 8.0).abs() < 1e-12);
}

#[test]
fn bad_configs_name_the_key() {
    let cases = [
        (r#"{"lattice": [8, 8], "m2": -4.0, "lambda": -1.0}"#, "lambda"),
        (r#"{"lattice": [8, 8], "m2": -4.0, "lamda": 8.0}"#, "lamda"),
        (r#"{"lattice": [8, 0], "m2": 1.0, "lambda": 0.0}"#, "lattice"),
        (r#"{"lattice": [8, 8], "m2": -1.0, "lambda": 0.0}"#, "m2"),
        (r#"{"lattice": [8, 8], "m2": 1.0}"#, "lambda"),
        (r#"{"lattice": [8, 8], "m2": "x", "lambda": 1.0}"#, "m2"),
        (r#"{"lattice": [8, 8], "kappa": -0.1, "lambda_hat": 0.5}"#, "kappa"),
        (r#"{"lattice": [8, 8], "m2": 1.0, "lambda": 1.0, "kappa": 0.1}"#, "either"),
        (r#"{"m2": 1.0, "lambda": 1.0}"#, "lattice"),
    ];
    for (json, key) in cases {
        let e = Phi4::from_config(json).err().unwrap_or_else(|| panic!("accepted {json}"));
        assert!(e.message.contains(key), "{json}: {}", e.message);
    }
    // NaN cannot be written in JSON; check it through set_parameter.
    let mut t = theory(r#"{"lattice": [4, 4], "m2": 1.0, "lambda": 1.0}"#);
    assert!(t.set_parameter("lambda".into(), f64::NAN).into_result().is_err());
    assert!(t.set_parameter("beta".into(), 1.0).into_result().is_err());
    assert!(t.set_parameter("lambda".into(), 2.0).into_result().is_ok());
    assert_eq!(t.parameter("lambda".into()).into_result().unwrap(), 2.0);
}

#[test]
fn observables_of_a_known_configuration() {
    // φ = 1 on every site of a 4×4 lattice: M/V = 1, φ² = 1, energy = 1, C(t) = (1/V) Σ_t0 4·4 = 4.
    let t = theory(r#"{"lattice": [4, 4], "m2": -4.0, "lambda": 8.0}"#);
    let phi = [1.0; 16];
    let o = t.measure(RSlice::from(&phi[..])).into_result().unwrap();
    let names: Vec<String> = t.observables().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["action_density", "phi2", "magnetization", "abs_magnetization", "chi2", "energy", "correlator"]);
    assert_eq!(o.len(), 6 + 4);
    let expect = [-4.0 + 8.0, 1.0, 1.0, 1.0, 16.0, 1.0, 4.0, 4.0, 4.0, 4.0];
    for (a, b) in o.iter().zip(expect) {
        assert!((a - b).abs() < 1e-12, "{o:?}");
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // 128×128 is above the parallel threshold.
    let json = r#"{"lattice": [128, 128], "m2": -4.0, "lambda": 8.0}"#;
    let params = HmcParams {
        md_steps: 10,
        integrator: IntegratorKind::Omelyan2,
        ..HmcParams::default()
    };
    let run = |threads: u32| {
        let mut t = theory(json);
        t.set_threads(threads).into_result().unwrap();
        let mut rng = Stream::new(7, 1).state();
        let mut phi = t.initial(Start::Hot, &mut rng).into_result().unwrap();
        let recs = t.hmc(RSliceMut::from(&mut phi[..]), &params, 3, &mut rng).into_result().unwrap();
        let s = t.action(RSlice::from(&phi[..])).into_result().unwrap();
        (phi, recs, s, rng)
    };
    let (p1, r1, s1, g1) = run(1);
    let (p2, r2, s2, g2) = run(2);
    assert!(p1.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(r1, r2);
    assert_eq!(s1[0].to_bits(), s2[0].to_bits());
    assert_eq!(g1, g2);
}

/// Each term's fused kick (force and momentum update in one sweep) gives the bits of its
/// force followed by the field space's kick, and its fused kick and drift those of the kick
/// followed by the field step, on one and on two threads, above and below the parallel
/// threshold.
#[test]
fn fused_kicks_and_drifts_give_the_bits_of_the_separate_steps() {
    use latflow_core::hmc::{ActionTerm, FieldSpace};
    for shape in [[6i64, 10], [96, 96]] {
        let lat = Lattice::new(&shape).unwrap();
        let kernel = Kernel::new(&lat);
        let v = lat.volume();
        let space = RealScalar { len: v };
        let phi = random_field(v, 3);
        let p0 = random_field(v, 4);
        let c = Couplings { m2: -4.0, lambda: 8.0 };
        for part in [Part::Whole, Part::Gradient, Part::Potential] {
            let term = Phi4Term { kernel: &kernel, c, part };
            let mut f = vec![0.0; v];
            term.force(&phi, &mut f).unwrap();
            let mut expect = p0.clone();
            space.kick(&mut expect, &f, 0.137);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut p = p0.clone();
                let mut buf = vec![f64::NAN; v];
                pool.install(|| term.kick(&space, &phi, &mut p, 0.137, &mut buf)).unwrap();
                let same = p.iter().zip(&expect).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{shape:?}, {}, {threads} threads: fused kick differs", term.name());
                // a kick and the drift after it, in one sweep
                let (mut u, mut p) = (phi.clone(), p0.clone());
                assert!(pool.install(|| term.kick_drift(&space, &mut u, &mut p, 0.137, 0.071, &mut buf)).unwrap());
                let (mut u_expect, mut p_expect) = (phi.clone(), expect.clone());
                space.step_field(&mut u_expect, &mut p_expect, 0.071);
                let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same(&p, &p_expect) && same(&u, &u_expect), "{shape:?}, {}, {threads} threads: kick_drift", term.name());
            }
        }
    }
}

#[test]
fn hmc_rejects_non_finite_configurations_with_an_error() {
    let mut t = theory(r#"{"lattice": [4, 4], "m2": 1.0, "lambda": 1.0}"#);
    let mut phi = [0.0; 16];
    phi[3] = f64::NAN;
    let params = HmcParams {
        md_steps: 10,
        integrator: IntegratorKind::Leapfrog,
        ..HmcParams::default()
    };
    let mut rng = Stream::new(1, 1).state();
    let e = t.hmc(RSliceMut::from(&mut phi[..]), &params, 1, &mut rng).into_result().unwrap_err();
    assert!(e.message.contains("configuration[3]"), "{}", e.message);
    let mut short = [0.0; 15];
    assert!(t.hmc(RSliceMut::from(&mut short[..]), &params, 1, &mut rng).into_result().is_err());
}

// The generic contract checks of latflow_core::testkit.

const CARD: &str = r#"{"lattice": [4, 3], "m2": -1.0, "lambda": 1.5}"#;

/// Two time scales: the gradient term outside, the potential inside.
fn split() -> HmcParams {
    HmcParams { inner_steps: RVec::from(vec![3]), ..HmcParams::default() }
}

#[test]
fn contract_force() {
    testkit::check_force::<Phi4>(CARD, &HmcParams::default());
    testkit::check_force::<Phi4>(CARD, &split());
}

#[test]
fn contract_observables() {
    testkit::check_observables::<Phi4>(CARD);
}

#[test]
fn contract_reversibility() {
    testkit::check_reversibility::<Phi4>(CARD, &HmcParams::default());
    testkit::check_reversibility::<Phi4>(CARD, &split());
    let force_gradient = HmcParams { integrator: IntegratorKind::ForceGradient, ..split() };
    testkit::check_reversibility::<Phi4>(CARD, &force_gradient);
}

#[test]
fn contract_exp_minus_delta_h() {
    testkit::check_exp_minus_delta_h::<Phi4>(CARD, &split(), 4000);
}

#[test]
fn contract_adapter() {
    testkit::check_adapter::<Phi4>(CARD, &HmcParams::default());
}
