//! The surrogate loss (the host's route: train_sample, S and ∂S/∂θ from the theory as flat
//! arrays, train_step) has the true reverse-KL loss's parameter gradient.

use super::*;

/// Relative tolerance of the surrogate-vs-true gradient comparison (f64).
const GRAD_RTOL: f64 = 1e-8;

#[test]
fn analytic_wilson_gradient_matches_candle_autograd() {
    for shape in [[4, 4], [8, 4]] {
        let m = model(r#"{"dtype":"f64","layers":1}"#, &shape);
        let geom = m.flow().geom.clone();
        let links = angles(3 * geom.n_links(), 1);
        let (s1, g1) = wilson_host(&geom, &links, 1.7);
        let (s2, g2) = wilson_autograd(&geom, &links, 1.7);
        assert!(max_abs_diff(&s1, &s2) < 1e-12 * 100.0);
        assert!(max_abs_diff(&g1, &g2) < 1e-12 * 10.0);
    }
}

fn check_surrogate(shape: &[usize], json: &str, batch: u32, amp: f64, beta: f64) {
    let mut m = model(json, shape);
    randomize(&m, amp, 31);
    let geom = m.flow().geom.clone();
    m.train_begin_with(&settings(batch, 1e-3)).unwrap();
    let mut rng = Stream::new(5, 1);
    let (configs, logq) = m.train_sample_with(&mut rng).unwrap();
    // the host's route: S and ∂S/∂θ as flat arrays, through the surrogate
    let (actions, g) = wilson_host(&geom, &configs, beta);
    let pending = m.state.pending.as_ref().unwrap();
    let surrogate = m.batch_gradients(pending, &g).unwrap();
    // the truth: mean(log q + S(θ)) with S written in candle, differentiated through θ
    let s = wilson_candle(&pending.x, &geom, beta).unwrap();
    let loss = pending.logq.add(&s).unwrap().mean(0).unwrap();
    let store = loss.backward().unwrap();
    let truth = m.flow().net.gradients(&store).unwrap();
    let worst = testing::check_gradients(&m.flow().net, &truth, &surrogate, GRAD_RTOL, json);
    eprintln!("{shape:?} {json}: surrogate vs true gradient, max relative difference {worst:.1e}");
    // and train_step itself: it reports the loss and the norm of the true gradient
    let met = m.train_step_with(&actions, &g).unwrap();
    let norm = latflow_flow_common::optim::global_norm(&truth);
    let want_loss = logq.iter().zip(&actions).map(|(a, b)| a + b).sum::<f64>() / batch as f64;
    assert!((met.grad_norm - norm).abs() <= GRAD_RTOL * norm, "train_step's gradient norm {} vs {norm}", met.grad_norm);
    assert!((met.loss - want_loss).abs() <= 1e-12 * want_loss.abs(), "loss {} vs {want_loss}", met.loss);
}

#[test]
fn surrogate_gradient_equals_true_gradient_ncp() {
    check_surrogate(&[4, 4], r#"{"dtype":"f64","layers":8}"#, 16, 2.0, 2.0);
    check_surrogate(&[8, 8], r#"{"dtype":"f64","layers":4,"n_mix":3,"activation":"tanh"}"#, 8, 2.0, 1.0);
}

#[test]
fn surrogate_gradient_equals_true_gradient_spline() {
    check_surrogate(&[4, 4], r#"{"dtype":"f64","layers":8,"coupling":"spline"}"#, 16, 1.5, 2.0);
}

/// The same through the generic (any-device) formulation.
#[test]
fn surrogate_gradient_equals_true_gradient_generic_formulation() {
    let mut m = model(r#"{"dtype":"f64","layers":4}"#, &[4, 4]);
    m.flow_mut().net.set_fused(false);
    randomize(&m, 2.0, 3);
    let geom = m.flow().geom.clone();
    m.train_begin_with(&settings(8, 1e-3)).unwrap();
    let (configs, _) = m.train_sample_with(&mut Stream::new(2, 2)).unwrap();
    let (_, g) = wilson_host(&geom, &configs, 2.0);
    let pending = m.state.pending.as_ref().unwrap();
    let surrogate = m.batch_gradients(pending, &g).unwrap();
    let s = wilson_candle(&pending.x, &geom, 2.0).unwrap();
    let store = pending.logq.add(&s).unwrap().mean(0).unwrap().backward().unwrap();
    for (nv, b) in m.flow().net.vars.iter().zip(&surrogate) {
        let a = tensor_to_f64(store.get(nv.var.as_tensor()).unwrap()).unwrap();
        let scale = a.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        assert!(max_abs_diff(&a, b) <= GRAD_RTOL * scale, "{}", nv.name);
    }
}
