//! The surrogate loss has the true loss's parameter gradient; path gradients agree with it in
//! expectation.

use super::*;

/// Relative tolerance of the surrogate-vs-true gradient comparison (f64).
const GRAD_RTOL: f64 = 1e-8;

#[test]
fn analytic_phi4_gradient_matches_candle_autograd() {
    for shape in [vec![4, 4], vec![8], vec![2, 4, 4]] {
        let lat = Lattice::new(&shape.iter().map(|&l| l as i64).collect::<Vec<_>>()).unwrap();
        let geom = Geometry::new(&lat, 1);
        let phi = normals(3 * lat.volume(), 1);
        let (s1, g1) = phi4_host(&lat, &phi, -4.0, 8.0);
        let (s2, g2) = phi4_autograd(&geom, &phi, -4.0, 8.0);
        assert!(max_abs_diff(&s1, &s2) < 1e-10 * s1.iter().fold(1.0f64, |a, b| a.max(b.abs())));
        assert!(max_abs_diff(&g1, &g2) < 1e-10 * g1.iter().fold(1.0f64, |a, b| a.max(b.abs())));
    }
}

fn check_surrogate(shape: &[usize], json: &str, batch: u32) {
    check_surrogate_amp(shape, json, batch, 2.0);
}

pub(super) fn check_surrogate_amp(shape: &[usize], json: &str, batch: u32, amp: f64) {
    let mut m = model(json, shape);
    randomize(&m, amp, 31);
    let lat = Lattice::new(&shape.iter().map(|&l| l as i64).collect::<Vec<_>>()).unwrap();
    m.train_begin_with(&settings(batch, 1e-3)).unwrap();
    let mut rng = Stream::new(5, 1);
    let (configs, _) = m.train_sample_with(&mut rng).unwrap();
    let (_, g) = phi4_host(&lat, &configs, -4.0, 8.0);
    let pending = m.state.pending.as_ref().unwrap();
    // true loss mean(log q + S(φ)) with S written in candle, differentiated through φ
    let s = phi4_candle(&pending.x, &m.flow.geom, -4.0, 8.0).unwrap();
    let loss = pending.logq.add(&s).unwrap().mean(0).unwrap();
    let store = loss.backward().unwrap();
    let truth = m.flow.net.gradients(&store).unwrap();
    let g_cb = m.flow.geom.to_checkerboard(&g);
    let surrogate = m.batch_gradients(pending, &g_cb, false).unwrap();
    let worst = testing::check_gradients(&m.flow.net, &truth, &surrogate, GRAD_RTOL, &format!("{shape:?}"));
    eprintln!("{shape:?} {json}: surrogate vs true gradient, max relative difference {worst:.1e}");
}

#[test]
fn surrogate_gradient_equals_true_gradient_phi4() {
    check_surrogate(&[4, 4], r#"{"dtype":"f64","layers":4}"#, 16);
    check_surrogate(&[8, 8], r#"{"dtype":"f64","layers":4,"activation":"tanh"}"#, 8);
    check_surrogate(&[8], r#"{"dtype":"f64","layers":3,"prior":"free","prior_m2":0.5}"#, 8);
}

/// With `z2 = "mixture"` the training batch carries log q_sym with its graph, and the surrogate
/// (through the host's ∂S/∂φ) has the gradient of the mixture's reverse KL, mean(log q_sym + S).
#[test]
fn surrogate_gradient_equals_true_gradient_of_the_z2_mixture() {
    check_surrogate(&[4, 4], r#"{"dtype":"f64","layers":4,"z2":"mixture"}"#, 16);
    check_surrogate(&[4, 4], r#"{"dtype":"f64","layers":2,"z2":"mixture","coupling":"spline"}"#, 8);
}

/// The mixture's training log q is log q_sym, which the sampling side computes independently
/// (`log_prob`): the same values, and different from the unsymmetrised flow's.
#[test]
fn mixture_training_reports_the_symmetrised_log_q() {
    let json = r#"{"dtype":"f64","layers":4,"z2":"mixture","init_seed":5}"#;
    let mut m = model(json, &[4, 4]);
    randomize(&m, 1.0, 12);
    m.train_begin_with(&settings(16, 1e-3)).unwrap();
    let (configs, lq) = m.train_sample_with(&mut Stream::new(3, 0)).unwrap();
    let again = m.log_prob_vec(&configs).unwrap();
    assert!(max_abs_diff(&lq, &again) < 1e-10, "train_sample and log_prob disagree: {}", max_abs_diff(&lq, &again));
    let mut plain = model(&json.replace(r#""mixture""#, r#""none""#), &[4, 4]);
    plain.load_bytes(&m.save_bytes(false).unwrap()).unwrap();
    let unsym = plain.log_prob_vec(&configs).unwrap();
    assert!(max_abs_diff(&lq, &unsym) > 1e-3, "log q_sym equals log q: the randomised flow is symmetric?");
    // ½(q(φ) + q(−φ)) ≥ ½ q(φ): log q_sym ≥ log q − ln 2
    for (s, u) in lq.iter().zip(&unsym) {
        assert!(*s >= u - std::f64::consts::LN_2 - 1e-12);
    }
}

/// Path gradients (Vaitl et al. 2022) drop the score term ∂_θ log q_θ(φ)|_φ, whose expectation
/// is zero, so they equal the reparameterised gradient only in expectation. The paired
/// difference of the two estimators, projected on a fixed random direction, must average to
/// zero within its standard error over independent batches.
#[test]
fn path_gradient_agrees_with_reparameterised_gradient_in_expectation() {
    path_and_reparameterised_agree(r#"{"dtype":"f64","layers":4}"#);
}

/// The same for the Z₂ mixture, whose path gradient uses the score of log q_sym.
#[test]
fn mixture_path_gradient_agrees_with_reparameterised_gradient_in_expectation() {
    path_and_reparameterised_agree(r#"{"dtype":"f64","layers":4,"z2":"mixture"}"#);
}

fn path_and_reparameterised_agree(json: &str) {
    // the free field (m² = 1, λ = 0) from a mildly randomised flow: far from the optimum, so the
    // mean gradient is clearly non-zero, with moderate variance
    let shape = [4, 4];
    let mut m = model(json, &shape);
    randomize(&m, 0.7, 41);
    let lat = Lattice::new(&[4, 4]).unwrap();
    m.train_begin_with(&settings(256, 1e-3)).unwrap();
    let n_par = m.parameter_count();
    let u = normals(n_par, 77);
    let mut rng = Stream::new(9, 2);
    let (mut diffs, mut plain, mut path) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..40 {
        let (configs, _) = m.train_sample_with(&mut rng).unwrap();
        let (_, g) = phi4_host(&lat, &configs, 1.0, 0.0);
        let g_cb = m.flow.geom.to_checkerboard(&g);
        let pending = m.state.pending.as_ref().unwrap();
        let a: Vec<f64> = m.batch_gradients(pending, &g_cb, false).unwrap().concat();
        let b: Vec<f64> = m.batch_gradients(pending, &g_cb, true).unwrap().concat();
        let pa: f64 = a.iter().zip(&u).map(|(x, y)| x * y).sum();
        let pb: f64 = b.iter().zip(&u).map(|(x, y)| x * y).sum();
        plain.push(pa);
        path.push(pb);
        diffs.push(pb - pa);
    }
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        (mean, (var / n).sqrt())
    };
    let (md, sd) = stats(&diffs);
    let (mp, sp) = stats(&plain);
    let (mq, sq) = stats(&path);
    eprintln!("u·grad: reparameterised {mp:.4} ± {sp:.4}, path {mq:.4} ± {sq:.4}, difference {md:.4} ± {sd:.4}");
    assert!(sd > 0.0, "the estimators coincide batch by batch: the test has no power");
    assert!(md.abs() < 4.0 * sd, "path − reparameterised = {md} ± {sd}");
    // the gradient itself is clearly non-zero here, so agreement is not trivial
    assert!(mp.abs() > 4.0 * sp, "reparameterised u·grad = {mp} ± {sp} is compatible with zero");
}

#[test]
fn path_gradient_training_step_runs_and_reports_the_loss() {
    let mut m = model(r#"{"layers":2}"#, &[4, 4]);
    let lat = Lattice::new(&[4, 4]).unwrap();
    let mut s = settings(32, 1e-2);
    s.path_gradients = true;
    m.train_begin_with(&s).unwrap();
    let mut rng = Stream::new(1, 1);
    for _ in 0..3 {
        let (configs, lq) = m.train_sample_with(&mut rng).unwrap();
        let (act, g) = phi4_host(&lat, &configs, 1.0, 0.0);
        let met = m.train_step_with(&act, &g).unwrap();
        let expect = lq.iter().zip(&act).map(|(a, b)| a + b).sum::<f64>() / 32.0;
        assert!((met.loss - expect).abs() < 1e-9 * expect.abs());
        assert!(met.grad_norm > 0.0 && met.learning_rate == 1e-2);
    }
}
