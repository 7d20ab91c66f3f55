//! Training: convergence on the free field, the optimiser, schedules and refusals.

use latflow_core::ErrorKind;

use super::*;
use crate::optim;

/// −log Z_B of the free field, L = 8, m² = 1, 2D (REFERENCE.md §1).
const MINUS_LOG_Z_FREE_L8: f64 = 11.6228852573;

#[test]
fn training_approaches_minus_log_z_on_the_free_field() {
    let shape = [8, 8];
    let mut m = model("{}", &shape);
    let geom = m.flow.geom.clone();
    m.train_begin_with(&settings(64, 5e-3)).unwrap();
    let mut rng = Stream::new(2024, 3);
    let mut losses = Vec::new();
    for _ in 0..200 {
        let (configs, _) = m.train_sample_with(&mut rng).unwrap();
        // S and ∂S/∂φ of the free field (m² = 1, λ = 0) written in candle
        let (s, g) = phi4_autograd(&geom, &configs, 1.0, 0.0);
        losses.push(m.train_step_with(&s, &g).unwrap().loss);
    }
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let first = losses[0];
    let last = mean(&losses[180..]);
    let sd = (losses[180..].iter().map(|l| (l - last) * (l - last)).sum::<f64>() / 19.0 / 20.0).sqrt();
    eprintln!(
        "free field: loss {first:.3} (step 1), {:.3} (steps 1-10) → {last:.3} ± {sd:.3} (last 20); −log Z = {MINUS_LOG_Z_FREE_L8}",
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
fn learning_rate_schedules() {
    let mut s = settings(1, 0.1);
    assert_eq!(optim::learning_rate(&s, 0), 0.1);
    assert_eq!(optim::learning_rate(&s, 10_000), 0.1);
    s.schedule = LrSchedule::Step { every: 10, factor: 0.5 };
    assert_eq!(optim::learning_rate(&s, 9), 0.1);
    assert_eq!(optim::learning_rate(&s, 10), 0.05);
    assert_eq!(optim::learning_rate(&s, 25), 0.025);
    s.schedule = LrSchedule::Cosine { steps: 110, min_lr: 0.01, warmup: 10 };
    assert!((optim::learning_rate(&s, 0) - 0.01).abs() < 1e-15);
    assert!((optim::learning_rate(&s, 9) - 0.1).abs() < 1e-15);
    assert!((optim::learning_rate(&s, 10) - 0.1).abs() < 1e-15);
    assert!((optim::learning_rate(&s, 60) - 0.055).abs() < 1e-15);
    assert!((optim::learning_rate(&s, 110) - 0.01).abs() < 1e-15);
    assert!((optim::learning_rate(&s, 500) - 0.01).abs() < 1e-15);
    optim::validate(&s).unwrap();
}

#[test]
fn gradient_clipping_reports_the_norm_before_clipping() {
    assert_eq!(optim::clip_factor(10.0, 0.0), 1.0);
    assert_eq!(optim::clip_factor(0.5, 1.0), 1.0);
    assert!((optim::clip_factor(10.0, 1.0) - 1.0 / (10.0 + 1e-6)).abs() < 1e-15);
    assert!((optim::global_norm(&[vec![3.0], vec![4.0, 0.0]]) - 5.0).abs() < 1e-15);
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
    let mut m = model(r#"{"layers":2}"#, &[4, 4]);
    let mut rng = Stream::new(1, 1);
    let e = m.train_sample_with(&mut rng).unwrap_err();
    assert!(e.message.contains("train_begin"), "{}", e.message);
    m.train_begin_with(&settings(8, 1e-3)).unwrap();
    let e = m.train_step_with(&[0.0; 8], &[0.0; 128]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("train_sample"), "{}", e.message);
    m.train_sample_with(&mut rng).unwrap();
    let e = m.train_step_with(&[0.0; 7], &[0.0; 128]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape, "{}", e.message);
    let e = m.train_step_with(&[0.0; 8], &[0.0; 127]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape, "{}", e.message);
    // the batch is still pending after a size error, but spent after a step
    m.train_step_with(&[0.0; 8], &[0.0; 128]).unwrap();
    assert!(m.train_step_with(&[0.0; 8], &[0.0; 128]).is_err());
    for bad in [
        TrainSettings { batch: 0, ..settings(8, 1e-3) },
        settings(8, 0.0),
        settings(8, f64::NAN),
        TrainSettings { beta1: 1.0, ..settings(8, 1e-3) },
        TrainSettings { eps: 0.0, ..settings(8, 1e-3) },
        TrainSettings { grad_clip: -1.0, ..settings(8, 1e-3) },
        TrainSettings { schedule: LrSchedule::Step { every: 0, factor: 0.5 }, ..settings(8, 1e-3) },
        TrainSettings { schedule: LrSchedule::Cosine { steps: 10, min_lr: 0.0, warmup: 11 }, ..settings(8, 1e-3) },
    ] {
        let e = m.train_begin_with(&bad).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{bad:?}: {}", e.message);
    }
}

#[test]
fn non_finite_loss_or_gradient_leaves_the_weights_alone() {
    let mut m = model(r#"{"layers":2}"#, &[4, 4]);
    m.train_begin_with(&settings(8, 1e-3)).unwrap();
    let before = m.save_bytes(true).unwrap();
    let mut rng = Stream::new(1, 1);
    for (actions, grad) in [
        (vec![f64::INFINITY; 8], vec![0.0; 128]),
        (vec![0.0; 8], {
            let mut g = vec![0.0; 128];
            g[5] = f64::NAN;
            g
        }),
        (vec![0.0; 8], vec![1e300; 128]),
    ] {
        m.train_sample_with(&mut rng).unwrap();
        let e = m.train_step_with(&actions, &grad).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Numerical, "{}", e.message);
        assert_eq!(m.save_bytes(true).unwrap(), before, "weights or optimiser changed after: {}", e.message);
    }
}

#[test]
fn training_is_independent_of_the_thread_count() {
    let lat = Lattice::new(&[8, 8]).unwrap();
    let run = |threads: u32| {
        let mut m = model(r#"{"layers":4}"#, &[8, 8]);
        m.set_thread_count(threads).unwrap();
        m.train_begin_with(&settings(40, 1e-2)).unwrap();
        let mut rng = Stream::new(8, 8);
        let mut bits = Vec::new();
        for _ in 0..3 {
            let (c, _) = m.train_sample_with(&mut rng).unwrap();
            let (a, g) = phi4_host(&lat, &c, -4.0, 8.0);
            let met = m.train_step_with(&a, &g).unwrap();
            bits.extend([met.loss.to_bits(), met.grad_norm.to_bits()]);
        }
        (bits, m.save_bytes(true).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(3), "3 threads");
    assert_eq!(one, run(0), "default pool");
}
