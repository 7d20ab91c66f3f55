//! Training: convergence on the free field, the optimiser, schedules and refusals.

use super::*;

/// −log Z_B of the free field, L = 8, m² = 1, 2D (docs/reference.md §1).
const MINUS_LOG_Z_FREE_L8: f64 = 11.6228852573;

#[test]
fn training_approaches_minus_log_z_on_the_free_field() {
    check_free_field_training("{}", "affine");
}

/// 200 steps of batch 64 at lr 5e-3 on the free field (m² = 1, λ = 0, S and ∂S/∂φ written in
/// candle) bring the loss within 5% of its initial excess over −log Z, and not below −log Z.
pub(super) fn check_free_field_training(json: &str, label: &str) {
    let mut m = model(json, &[8, 8]);
    let geom = m.flow.geom.clone();
    m.train_begin_with(&settings(64, 5e-3)).unwrap();
    let mut rng = Stream::new(2024, 3);
    let mut losses = Vec::new();
    for _ in 0..200 {
        let (configs, _) = m.train_sample_with(&mut rng).unwrap();
        let (s, g) = phi4_autograd(&geom, &configs, 1.0, 0.0);
        losses.push(m.train_step_with(&s, &g).unwrap().loss);
    }
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let first = losses[0];
    let last = mean(&losses[180..]);
    let sd = (losses[180..].iter().map(|l| (l - last) * (l - last)).sum::<f64>() / 19.0 / 20.0).sqrt();
    eprintln!(
        "{label}, free field: loss {first:.3} (step 1), {:.3} (steps 1-10) → {last:.3} ± {sd:.3} (last 20); −log Z = {MINUS_LOG_Z_FREE_L8}",
        mean(&losses[..10])
    );
    // the reverse KL is ≥ −log Z in expectation, so the batch average may dip below only by noise
    assert!(last > MINUS_LOG_Z_FREE_L8 - 4.0 * sd, "loss {last} ± {sd} is below −log Z");
    // at initialisation the loss is ≈ 5V − (V/2)(1 + ln 2π) ≈ 229 above −log Z ≈ 11.6
    assert!(first - MINUS_LOG_Z_FREE_L8 > 100.0, "unexpected initial loss {first}");
    assert!(
        last - MINUS_LOG_Z_FREE_L8 < 0.05 * (first - MINUS_LOG_Z_FREE_L8),
        "loss {first} → {last}: too little progress"
    );
}

#[test]
fn adam_first_step_moves_every_parameter_by_the_learning_rate() {
    // With m̂ = g and v̂ = g² after one step, Δθ = −lr·g/(|g| + ε) ≈ −lr·sign(g).
    let mut m = model(r#"{"dtype":"f64","layers":2}"#, &[4, 4]);
    let lat = Lattice::new(&[4, 4]).unwrap();
    let lr = 1e-3;
    m.train_begin_with(&settings(16, lr)).unwrap();
    let before: Vec<Vec<f64>> = m.flow.net.vars.iter().map(|nv| tensor_to_f64(nv.var.as_tensor()).unwrap()).collect();
    let mut rng = Stream::new(1, 1);
    let (configs, _) = m.train_sample_with(&mut rng).unwrap();
    let (s, g) = phi4_host(&lat, &configs, -4.0, 8.0);
    let pending_grads = {
        let p = m.state.pending.as_ref().unwrap();
        m.batch_gradients(p, &m.flow.geom.to_checkerboard(&g), false).unwrap()
    };
    m.train_step_with(&s, &g).unwrap();
    assert_eq!(m.optimizer_steps(), 1);
    for ((nv, b), gr) in m.flow.net.vars.iter().zip(&before).zip(&pending_grads) {
        let after = tensor_to_f64(nv.var.as_tensor()).unwrap();
        for i in 0..b.len() {
            let expect = b[i] - lr * gr[i] / (gr[i].abs() + 1e-8);
            assert!((after[i] - expect).abs() < 1e-15, "{}[{i}]: {} vs {expect}", nv.name, after[i]);
        }
    }
}

#[test]
fn gradient_clipping_reports_the_norm_before_clipping() {
    // (the clipping factor and the norm themselves are tested in latflow-flow-common's optim)
    let lat = Lattice::new(&[4, 4]).unwrap();
    let run = |clip: f64| {
        let mut m = model(r#"{"dtype":"f64","layers":2}"#, &[4, 4]);
        let mut s = settings(16, 1e-2);
        s.grad_clip = clip;
        s.beta1 = 0.0; // with β₁ = 0 after the first step the update direction shows the clipping
        m.train_begin_with(&s).unwrap();
        let mut rng = Stream::new(3, 3);
        let mut norms = Vec::new();
        for _ in 0..3 {
            let (c, _) = m.train_sample_with(&mut rng).unwrap();
            let (a, g) = phi4_host(&lat, &c, -4.0, 8.0);
            norms.push(m.train_step_with(&a, &g).unwrap().grad_norm);
        }
        (norms, m.save_bytes(false).unwrap())
    };
    let (n0, w0) = run(0.0);
    let (n1, w1) = run(1e-3);
    assert_eq!(n0[0], n1[0], "the first reported norm is before clipping");
    assert!(n0[0] > 1e-3);
    assert_ne!(w0, w1, "clipping changed nothing");
}

#[test]
fn train_calls_are_refused_out_of_order_or_with_bad_buffers() {
    testing::check_training_protocol(&mut model(r#"{"layers":2}"#, &[4, 4]), 16);
}

#[test]
fn non_finite_loss_or_gradient_leaves_the_weights_alone() {
    testing::check_non_finite_steps_change_nothing(&mut model(r#"{"layers":2}"#, &[4, 4]), 16);
}

#[test]
fn training_is_independent_of_the_thread_count() {
    let make = || model(r#"{"layers":4}"#, &[8, 8]);
    testing::check_training_thread_independence(make, &super::persistence::action(&make()));
}
