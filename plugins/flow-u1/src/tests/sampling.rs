//! Sampling: reproducibility, threads, consistency with log_prob, normalisation, and the ABI
//! entry points.

use abi_stable::std_types::{RSlice, RStr};
use latflow_core::abi::PluginKind;
use latflow_core::ErrorKind;

use super::*;

#[test]
fn sampling_is_reproducible_and_independent_of_threads() {
    let mut m = model(r#"{"layers":4}"#, &[8, 8]);
    randomize(&m, 2.0, 3);
    let after = testing::check_sampling_thread_independence(&mut m, 100);
    // the stream advanced by exactly the n·2V uniforms
    let mut s = Stream::new(11, 5);
    for _ in 0..100 * 128 {
        s.uniform();
    }
    assert_eq!(after, s.state());
}

#[test]
fn sample_log_q_matches_log_prob_across_chunks() {
    let m = model(r#"{"dtype":"f64","layers":8}"#, &[4, 4]);
    randomize(&m, 2.0, 6);
    let n = crate::CHUNK + 100;
    let (c, lq) = m.sample_with(n, &mut Stream::new(1, 2)).unwrap();
    assert!(c.iter().all(|&t| (0.0..2.0 * PI).contains(&t)));
    let lp = m.log_prob_vec(&c).unwrap();
    assert!(max_abs_diff(&lq, &lp) < ATOL, "{}", max_abs_diff(&lq, &lp));
    // other representatives of the same angles have the same density
    let shifted: Vec<f64> = c.iter().enumerate().map(|(i, x)| x + 2.0 * PI * ((i % 5) as f64 - 2.0)).collect();
    assert!(max_abs_diff(&m.log_prob_vec(&shifted).unwrap(), &lp) < ATOL);
    // the first chunk does not depend on how many follow
    let (c2, lq2) = m.sample_with(10, &mut Stream::new(1, 2)).unwrap();
    assert_eq!(&c[..10 * 32], &c2[..]);
    assert_eq!(&lq[..10], &lq2[..]);
    let f32m = model(r#"{"layers":8}"#, &[4, 4]);
    randomize(&f32m, 2.0, 6);
    let (c, lq) = f32m.sample_with(100, &mut Stream::new(1, 2)).unwrap();
    let lp = f32m.log_prob_vec(&c).unwrap();
    assert!(max_abs_diff(&lq, &lp) < 1e-3, "f32: {}", max_abs_diff(&lq, &lp));
    assert_eq!(f32m.log_prob_vec(&[f64::NAN; 32]).unwrap_err().kind, ErrorKind::Numerical);
    assert_eq!(f32m.log_prob_vec(&[0.0; 31]).unwrap_err().kind, ErrorKind::Shape);
}

/// q is a normalised density on [0, 2π)^{N_links} with respect to Π dθ: with θ uniform,
/// E[q(θ)/q₀] = ∫ q dθ = 1. Checked by Monte Carlo with a z-score, for both couplings.
#[test]
fn densities_are_normalised() {
    for (json, amp) in
        [(r#"{"dtype":"f64","layers":4}"#, 0.7), (r#"{"dtype":"f64","layers":4,"coupling":"spline"}"#, 0.5)]
    {
        let m = model(json, &[4, 4]);
        randomize(&m, amp, 12);
        let n = 20_000;
        let theta = angles(n * 32, 3);
        let lq = m.log_prob_vec(&theta).unwrap();
        let r: Vec<f64> = lq.iter().map(|l| (l - m.log_q_prior()).exp()).collect();
        let mean = r.iter().sum::<f64>() / n as f64;
        let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        let err = (var / n as f64).sqrt();
        eprintln!("{json}: ∫ q dθ = {mean:.4} ± {err:.4}");
        assert!(err > 1e-3, "the flow is too close to the identity to test normalisation");
        assert!(((mean - 1.0) / err).abs() < 4.0, "{json}: ∫ q dθ = {mean} ± {err}");
    }
}

#[test]
fn root_module_and_abi_entry_points() {
    let info = (crate::get_library().info())();
    assert_eq!(info.name.as_str(), "flow-u1");
    assert_eq!(info.kind, PluginKind::Model);
    let ctor = crate::get_library().new_model().flatten().expect("a model constructor");
    let l = layout(&[4, 4]);
    let mut m = ctor(RStr::from_str(r#"{"layers":2}"#), &l).unwrap();
    assert_eq!(m.name().as_str(), "flow-u1");
    assert_eq!(m.layout(), l);
    assert!(m.architecture().contains("\"model\":\"flow-u1\""));
    let mut rng = Stream::new(1, 1).state();
    let p = m.sample(3, &mut rng).unwrap();
    assert_eq!((p.configs.len(), p.log_q.len()), (96, 3));
    let lp = m.log_prob(RSlice::from_slice(&p.configs)).unwrap();
    assert!(max_abs_diff(&lp, &p.log_q) < 1e-3);
    let e = m.log_prob(RSlice::from_slice(&[0.0; 5])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape);
    let e = m.load(RSlice::from_slice(b"junk")).unwrap_err();
    assert!(e.message.contains("safetensors"));
    m.set_threads(2).unwrap();
    let phi4 = FieldLayout::single(&[8, 8], "phi", Support::Site, ElementKind::Real);
    let e = ctor(RStr::from_str("{}"), &phi4).into_result().err().expect("a phi4 layout is refused");
    assert!(e.message.contains("flow-u1 needs U(1) link angles"), "{}", e.message);
    let e = (crate::get_library().new_theory())(RStr::from_str("{}")).into_result().err().expect("no theory");
    assert!(e.message.contains("model plugin"));
}
