//! The model contract: reproducibility across thread counts, the training protocol, save /
//! load / resume / transfer, damaged files, latent maps, the ABI entry points, and configurations
//! that are refused.

use abi_stable::std_types::{RSlice, RStr};
use latflow_core::abi::{ErrorKind, PluginKind};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::Stream;
use latflow_flow_common::testing::{self, settings};

use super::*;

/// The Wilson action of a model's lattice, as the host's `Action` for the shared checks.
fn action(aux: &FlowSun, beta: f64) -> impl Fn(&[f64]) -> (Vec<f64>, Vec<f64>) + '_ {
    move |c: &[f64]| wilson(aux, c, beta)
}

#[test]
fn sampling_and_training_are_reproducible_and_independent_of_threads() {
    for n in [2u32, 3] {
        let mut m = model(r#"{"layers":4}"#, &[4, 4], n);
        randomize(&m, 0.5, 3);
        testing::check_sampling_thread_independence(&mut m, 40);
        let aux = model(r#"{"layers":1}"#, &[4, 4], n);
        let act = action(&aux, 2.0);
        testing::check_training_thread_independence(|| model(r#"{"layers":4}"#, &[4, 4], n), &act);
    }
}

#[test]
fn training_protocol_and_non_finite_steps() {
    let mut m = model(r#"{"layers":2}"#, &[4, 4], 3);
    let w = m.width();
    testing::check_training_protocol(&mut m, w);
    testing::check_non_finite_steps_change_nothing(&mut m, w);
}

#[test]
fn save_load_resume_and_damaged_files() {
    let keys =
        ["layers", "hidden", "kernel", "activation", "coupling", "n", "spline_bins", "mask_period", "dtype", "lattice"];
    let m = model(r#"{"layers":3}"#, &[4, 4], 3);
    testing::check_saved_weights(&m, "flow-sun", &keys);
    let aux = model(r#"{"layers":1}"#, &[4, 4], 2);
    let act = action(&aux, 2.0);
    let mut a = model(r#"{"layers":3}"#, &[4, 4], 2);
    let mut b = model(r#"{"layers":3,"init_seed":9}"#, &[4, 4], 2);
    testing::check_resume_is_bit_exact(&mut a, &mut b, &act);
    let (mut e, mut f) = (model(r#"{"layers":3}"#, &[4, 4], 2), model(r#"{"layers":3}"#, &[4, 4], 2));
    testing::check_gradient_then_apply_is_a_step(&mut e, &mut f, &act);
    let mut c = model(r#"{"layers":3}"#, &[4, 4], 2);
    testing::check_damaged_files_are_refused(&mut c);
    // weights of SU(2) into an SU(3) model
    let su2 = model(r#"{"layers":3}"#, &[4, 4], 2).save_bytes(false).unwrap();
    let mut su3 = model(r#"{"layers":3}"#, &[4, 4], 3);
    let e = su3.load_bytes(&su2).unwrap_err();
    assert!(e.message.contains("n=2") && e.message.contains("n=3"), "{}", e.message);
    let e = su3.init_from_bytes(&su2).unwrap_err();
    assert!(e.message.contains("n=2"), "{}", e.message);
}

#[test]
fn init_from_transfers_across_lattice_sizes_and_dtypes() {
    let aux = model(r#"{"layers":1}"#, &[4, 4], 3);
    let mut a = model(r#"{"layers":3}"#, &[4, 4], 3);
    a.train_begin_with(&settings(8, 1e-2)).unwrap();
    let mut state = Stream::new(1, 1).state();
    testing::train_steps(&mut a, &mut state, 3, &action(&aux, 2.0));
    let bytes = a.save_bytes(true).unwrap();
    let mut big = model(r#"{"layers":3,"dtype":"f64"}"#, &[8, 8], 3);
    assert_eq!(big.init_from_bytes(&bytes).unwrap(), 3 * 3 * 2);
    assert_eq!(big.optimizer_steps(), 0);
    let va = a.flow().net.values().unwrap();
    let vb = big.flow().net.values().unwrap();
    assert!(va.iter().flatten().zip(vb.iter().flatten()).all(|(x, y)| (x - y).abs() < 1e-7));
    // another architecture is refused, naming the key
    let mut other = model(r#"{"layers":4}"#, &[4, 4], 3);
    let e = other.init_from_bytes(&bytes).unwrap_err();
    assert!(e.message.contains("layers"), "{}", e.message);
}

#[test]
fn latent_maps_round_trip_and_match_sampling() {
    let m = model(r#"{"layers":4,"dtype":"f64"}"#, &[4, 4], 3);
    randomize(&m, 0.5, 5);
    let mut rng = Stream::new(2, 0);
    let (x, lq) = m.sample_with(6, &mut rng).unwrap();
    let (z, lq_inv) = m.to_latent_with(&x).unwrap();
    let mut rng = Stream::new(2, 0);
    let prior = m.draw_prior(6, &mut rng);
    assert!(max_diff(&z, &prior) < 1e-10, "the latent point of a sample is its prior draw");
    assert!(max_diff(&lq, &lq_inv) < 1e-10);
    let (back, lq_fwd) = m.from_latent_with(&z).unwrap();
    assert!(max_diff(&back, &x) < 1e-10 && max_diff(&lq_fwd, &lq) < 1e-10);
    assert!(max_diff(&m.log_prob_vec(&x).unwrap(), &lq) < 1e-10);
}

#[test]
fn inputs_off_the_group_are_refused() {
    let m = model(r#"{"layers":2}"#, &[4, 4], 3);
    let mut x = haar(32, 3, 1);
    x[18 * 5] *= 1.01;
    let e = m.log_prob_vec(&x).unwrap_err();
    assert!(e.message.contains("link 5 is not in SU(3)"), "{}", e.message);
    x[18 * 5] = f64::NAN;
    assert!(m.log_prob_vec(&x).is_err());
    assert_eq!(m.log_prob_vec(&x[..17]).unwrap_err().kind, ErrorKind::Shape);
    // U(1)-like input: angles in an SU(2) buffer
    let m2 = model(r#"{"layers":2}"#, &[4, 4], 2);
    let angles: Vec<f64> = (0..32 * 8).map(|i| (i as f64 * 0.37).sin()).collect();
    assert!(m2.to_latent_with(&angles).unwrap_err().message.contains("not in SU(2)"));
}

#[test]
fn root_module_and_abi_entry_points() {
    let info = (crate::get_library().info())();
    assert_eq!(info.name.as_str(), "flow-sun");
    assert_eq!(info.kind, PluginKind::Model);
    let ctor = crate::get_library().new_model().flatten().expect("a model constructor");
    let l = layout(&[4, 4], 3);
    let mut m = ctor(RStr::from_str(r#"{"layers":2}"#), &l).unwrap();
    assert_eq!(m.name().as_str(), "flow-sun");
    assert!(m.architecture().contains("\"model\":\"flow-sun\""));
    let mut rng = Stream::new(1, 1).state();
    let p = m.sample(3, &mut rng).unwrap();
    assert_eq!((p.configs.len(), p.log_q.len()), (3 * 32 * 18, 3));
    let lp = m.log_prob(RSlice::from_slice(&p.configs)).unwrap();
    assert!(max_diff(&lp, &p.log_q) < 1e-3);
    m.set_threads(2).unwrap();
    let u1 = FieldLayout::single(&[8, 8], "links", Support::Link, ElementKind::Angle);
    let e = ctor(RStr::from_str("{}"), &u1).into_result().err().expect("a U(1) layout is refused");
    assert!(e.message.contains("flow-sun needs SU(N) links"), "{}", e.message);
}

#[test]
fn a_non_finite_layer_is_named() {
    let m = model(r#"{"layers":3}"#, &[4, 4], 3);
    let mut values = m.flow().net.values().unwrap();
    // layer 1's first convolution weight (3 convolutions per layer, weight and bias each): every
    // spline parameter of the layer becomes NaN
    values[6][0] = f64::NAN;
    m.flow().net.set_values(&values).unwrap();
    let e = m.sample_with(2, &mut Stream::new(1, 1)).unwrap_err();
    assert!(e.message.contains("flow-sun layer 1") && e.message.contains("non-finite"), "{}", e.message);
    let e = m.log_prob_vec(&haar(2 * 32, 3, 4)).unwrap_err();
    assert!(e.message.contains("flow-sun layer 1 (inverse)"), "{}", e.message);
}
