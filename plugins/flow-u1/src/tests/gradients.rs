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
    let surrogate = m.batch_gradients(pending, &g, false).unwrap();
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
    let surrogate = m.batch_gradients(pending, &g, false).unwrap();
    let s = wilson_candle(&pending.x, &geom, 2.0).unwrap();
    let store = pending.logq.add(&s).unwrap().mean(0).unwrap().backward().unwrap();
    for (nv, b) in m.flow().net.vars.iter().zip(&surrogate) {
        let a = tensor_to_f64(store.get(nv.var.as_tensor()).unwrap()).unwrap();
        let scale = a.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        assert!(max_abs_diff(&a, b) <= GRAD_RTOL * scale, "{}", nv.name);
    }
}

/// The implicitly differentiated NCP inverse (the path that carries a gradient) gives the
/// solver's values, and its gradient of log q with respect to the links is the finite-difference
/// gradient of `log_prob`.
#[test]
fn tracked_ncp_inverse_matches_the_solver_and_finite_differences() {
    for json in [r#"{"dtype":"f64","layers":4,"activation":"tanh"}"#, r#"{"dtype":"f64","layers":3,"n_mix":4,"activation":"tanh"}"#] {
        let m = model(json, &[4, 4]);
        randomize(&m, 1.5, 41);
        let w = m.flow().n_links();
        let theta = angles(2 * w, 42);
        let params = m.flow().params(false).unwrap();
        let t = tensor_from_f64(&theta, (2, w), DType::F64, &Device::Cpu).unwrap();
        let (z_solved, ld_solved) = m.flow().inverse(&t, &params).unwrap();
        let leaf = Var::from_tensor(&t).unwrap();
        let (z_tracked, ld_tracked) = m.flow().inverse(leaf.as_tensor(), &params).unwrap();
        let zs = tensor_to_f64(&z_solved).unwrap();
        let zt = tensor_to_f64(&z_tracked).unwrap();
        assert!(max_circle_diff(&zs, &zt) < ATOL, "{json}: latent points differ by {}", max_circle_diff(&zs, &zt));
        let (lds, ldt) = (tensor_to_f64(&ld_solved).unwrap(), tensor_to_f64(&ld_tracked).unwrap());
        assert!(max_abs_diff(&lds, &ldt) < ATOL, "{json}: log-dets {lds:?} vs {ldt:?}");
        let score = tensor_to_f64(ld_tracked.sum_all().unwrap().backward().unwrap().get(leaf.as_tensor()).unwrap()).unwrap();
        let log_q = |th: &[f64]| m.inverse_chunks(th, false).unwrap().1;
        let h = 1e-6;
        for l in (0..2 * w).step_by(5) {
            let mut up = theta.clone();
            up[l] += h;
            let mut down = theta.clone();
            down[l] -= h;
            let c = l / w;
            let fd = (log_q(&up)[c] - log_q(&down)[c]) / (2.0 * h);
            assert!((fd - score[l]).abs() < ATOL_RELAXED * (1.0 + fd.abs()), "{json} link {l}: score {}, FD {fd}", score[l]);
        }
    }
}

/// Path gradients: the estimator equals the finite-difference gradient of
/// mean(log q_w₀(θ_w(z)) + S(θ_w(z))) at w = w₀ (the density's weights held fixed), at fixed
/// prior draws, for both couplings.
#[test]
fn path_gradient_matches_finite_differences_at_fixed_density() {
    let beta = 2.0;
    for json in [r#"{"dtype":"f64","layers":4,"activation":"tanh"}"#, r#"{"dtype":"f64","layers":3,"coupling":"spline","activation":"tanh"}"#] {
        let mut m = model(json, &[4, 4]);
        randomize(&m, 0.5, 43);
        let geom = m.flow().geom.clone();
        m.train_begin_with(&TrainSettings { path_gradients: true, ..settings(4, 1e-3) }).unwrap();
        let (x, _) = m.train_sample_with(&mut Stream::new(44, 0)).unwrap();
        let (_, g) = wilson_host(&geom, &x, beta);
        let pending = m.state.pending.take().unwrap();
        let grads = m.batch_gradients(&pending, &g, true).unwrap();
        let z = m.draw_prior(4, &mut Stream::new(44, 0));
        let values = m.flow().net.values().unwrap();
        let objective = |v: &[Vec<f64>]| {
            m.flow().net.set_values(v).unwrap();
            let (y, _) = m.forward_chunks(&z).unwrap();
            m.flow().net.set_values(&values).unwrap();
            let (_, lq) = m.inverse_chunks(&y, false).unwrap();
            let (s, _) = wilson_host(&geom, &y, beta);
            s.iter().zip(&lq).map(|(s, l)| s + l).sum::<f64>() / s.len() as f64
        };
        let mut checked = 0;
        for (p, vals) in values.iter().enumerate() {
            for i in [0, vals.len() / 2, vals.len() - 1] {
                let h = 1e-5;
                let mut v = values.clone();
                v[p][i] += h;
                let up = objective(&v);
                v[p][i] -= 2.0 * h;
                let down = objective(&v);
                let fd = (up - down) / (2.0 * h);
                let gr = grads[p][i];
                assert!((fd - gr).abs() < ATOL_RELAXED * (1.0 + gr.abs()), "{json} parameter {p}[{i}]: path gradient {gr}, FD {fd}");
                checked += 1;
            }
        }
        eprintln!("{json}: {checked} path-gradient entries match finite differences");
    }
}

/// The fused inverse op's hand-written implicit backward pass equals the generic formulation's
/// (candle autograd through one zero-valued Newton correction): gradients of the latent point
/// and of log J⁻¹ with respect to the links and the weights.
#[test]
fn fused_tracked_ncp_inverse_matches_the_generic_formulation() {
    let json = r#"{"dtype":"f64","layers":4,"n_mix":3,"activation":"tanh"}"#;
    let mut m = model(json, &[4, 4]);
    randomize(&m, 1.5, 45);
    let w = m.flow().n_links();
    let theta = angles(3 * w, 46);
    let weights: Vec<f64> = (0..w).map(|i| 0.3 + 0.1 * (i % 7) as f64).collect();
    let mut run = |fused: bool| {
        m.flow_mut().net.set_fused(fused);
        let leaf = Var::from_tensor(&tensor_from_f64(&theta, (3, w), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let params = m.flow().params(true).unwrap();
        let (z, ld) = m.flow().inverse(leaf.as_tensor(), &params).unwrap();
        let wt = tensor_from_f64(&weights, w, DType::F64, &Device::Cpu).unwrap();
        let loss = z.broadcast_mul(&wt).unwrap().sum_all().unwrap().add(&ld.sum_all().unwrap()).unwrap();
        let store = loss.backward().unwrap();
        let gx = tensor_to_f64(store.get(leaf.as_tensor()).unwrap()).unwrap();
        let gw = m.flow().net.gradients(&store).unwrap();
        (tensor_to_f64(&ld).unwrap(), gx, gw)
    };
    let (ld_f, gx_f, gw_f) = run(true);
    let (ld_g, gx_g, gw_g) = run(false);
    assert!(max_abs_diff(&ld_f, &ld_g) < ATOL, "log-dets {ld_f:?} vs {ld_g:?}");
    assert!(max_abs_diff(&gx_f, &gx_g) < ATOL_FUSED * 100.0, "link gradients differ by {}", max_abs_diff(&gx_f, &gx_g));
    for (p, (a, b)) in gw_f.iter().zip(&gw_g).enumerate() {
        let scale = b.iter().fold(1.0f64, |s, v| s.max(v.abs()));
        assert!(max_abs_diff(a, b) < ATOL_FUSED * 100.0 * scale, "weight gradient {p} differs by {}", max_abs_diff(a, b));
    }
}
