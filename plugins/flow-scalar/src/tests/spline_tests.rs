//! Rational-quadratic spline couplings: the spline itself (round trips including the tails and
//! the knots, monotonicity, derivative, C¹ tails), layers and models (round trips, dense
//! Jacobian, fused vs generic conditioner, surrogate gradient), persistence and training.
//!
//! Spline parameters are unbounded (the affine couplings' s and t go through tanh), so the
//! weights are randomised at amplitude [`AMP`] rather than 2–3: at amplitude 3 a 16-layer model
//! has log J ≈ −300 on 8×8 (most values squeezed into bins of 10⁻³ width), and f⁻¹(f(z))
//! loses everything to conditioning (layer round trips 1e-9, model 6.5). At [`AMP`] log J ≈ −100
//! and the model round trip holds to 1e-13.

/// Amplitude of the randomised weights in these tests.
const AMP: f64 = 1.0;

use candle_core::{DType, Device, Tensor, Var};

use super::flow_math::{cb_tensor, check_layer_round_trip_amp, check_log_det_amp, grads};
use super::gradients::check_surrogate_amp;
use super::persistence::{sample_bits, train_steps};
use super::*;
use crate::spline;

fn t64(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Raw spline parameters `[n, h, 3K − 1]`, N(0, amp²).
fn raw_params(n: usize, h: usize, k: usize, amp: f64, seed: u64) -> Tensor {
    let c = 3 * k - 1;
    t64(normals(n * h * c, seed).iter().map(|x| amp * x).collect(), &[n, h, c])
}

fn v3(t: &Tensor) -> Vec<Vec<Vec<f64>>> {
    t.to_vec3::<f64>().unwrap()
}

#[test]
fn spline_round_trip_in_the_tails_at_the_knots_and_at_the_bounds() {
    for (k, bound, amp) in [(8, 4.0, 1.0), (8, 2.0, 2.0), (3, 1.0, 3.0), (16, 4.0, 2.0)] {
        let (n, h) = (6, 40);
        let raw = raw_params(n, h, k, amp, 3 + k as u64);
        let kn = spline::knots(&raw, k, bound).unwrap();
        let (xs, ys) = (v3(&kn.xs), v3(&kn.ys));
        // sites 0..=K: the x knots (±B included); the rest N(0, (1.5B)²): many in the tails
        let z = normals(n * h, 17);
        let mut x = vec![0.0; n * h];
        let mut y_knots = vec![0.0; n * h];
        for b in 0..n {
            for i in 0..h {
                x[b * h + i] = if i <= k { xs[b][i][i] } else { 1.5 * bound * z[b * h + i] };
                y_knots[b * h + i] = if i <= k { ys[b][i][i] } else { 0.0 };
            }
        }
        assert_eq!(xs[0][0][0], -bound);
        assert_eq!(xs[0][0][k], bound);
        assert!(x.iter().filter(|v| v.abs() > bound).count() > n * h / 5, "too few points in the tails");
        let xt = t64(x.clone(), &[n, h]);
        let (y, ld) = spline::apply(&xt, &raw, k, bound, false).unwrap();
        let yv = tensor_to_f64(&y).unwrap();
        for b in 0..n {
            for i in 0..h {
                let (xi, yi) = (x[b * h + i], yv[b * h + i]);
                if i <= k {
                    assert!((yi - y_knots[b * h + i]).abs() < 1e-14, "knot {i}: {yi} vs {}", y_knots[b * h + i]);
                } else if xi.abs() > bound {
                    assert_eq!(yi, xi, "tails are the identity");
                }
            }
        }
        let (back, ld_inv) = spline::apply(&y, &raw, k, bound, true).unwrap();
        let d = max_abs_diff(&tensor_to_f64(&back).unwrap(), &x);
        assert!(d < ATOL, "K={k} B={bound}: round trip off by {d}");
        let s: Vec<f64> =
            tensor_to_f64(&ld).unwrap().iter().zip(tensor_to_f64(&ld_inv).unwrap()).map(|(a, b)| a + b).collect();
        assert!(s.iter().all(|v| v.abs() < ATOL), "log J + log J⁻¹ = {s:?}");
        // the inverse at the y knots lands on the x knots
        let (xk, _) = spline::apply(&t64(y_knots.clone(), &[n, h]), &raw, k, bound, true).unwrap();
        let xk = tensor_to_f64(&xk).unwrap();
        for b in 0..n {
            for i in 0..=k {
                assert!((xk[b * h + i] - xs[b][i][i]).abs() < 1e-13, "inverse at y knot {i}");
            }
        }
    }
}

/// One spline (row `row` of `raw`) on a dense grid over [−1.5B, 1.5B]: (x, y, ln dy/dx).
fn on_grid(raw: &Tensor, row: usize, k: usize, bound: f64, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = (0..n).map(|i| -1.5 * bound + 3.0 * bound * i as f64 / (n - 1) as f64).collect();
    on_grid_at(raw, row, k, bound, x)
}

/// One spline at the points `x`: (x, y, ln dy/dx).
fn on_grid_at(raw: &Tensor, row: usize, k: usize, bound: f64, x: Vec<f64>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = x.len();
    let c = 3 * k - 1;
    let one = raw.narrow(0, row, 1).unwrap().narrow(1, 0, 1).unwrap();
    let rep = one.broadcast_as((n, 1, c)).unwrap().contiguous().unwrap();
    let (y, ld) = spline::apply(&t64(x.clone(), &[n, 1]), &rep, k, bound, false).unwrap();
    (x, tensor_to_f64(&y).unwrap(), tensor_to_f64(&ld).unwrap())
}

#[test]
fn spline_is_strictly_increasing_with_the_right_derivative_and_c1_tails() {
    let n = 30_001;
    for (k, bound, amp) in [(8, 4.0, 1.0), (8, 4.0, 6.0), (4, 1.0, 3.0), (32, 3.0, 10.0)] {
        let raw = raw_params(4, 1, k, amp, 100 + k as u64);
        for row in 0..4 {
            let (x, y, ld) = on_grid(&raw, row, k, bound, n);
            for i in 1..n {
                assert!(y[i] > y[i - 1], "K={k} amp={amp}: not increasing at x = {}", x[i]);
            }
            // central differences with step 1e-6 at every grid point vs the analytic derivative,
            // skipping points within a step of a knot (where the second derivative jumps)
            let kn = v3(&spline::knots(&raw.narrow(0, row, 1).unwrap(), k, bound).unwrap().xs)[0][0].clone();
            let step = 1e-6;
            let (_, yp, _) = on_grid_at(&raw, row, k, bound, x.iter().map(|v| v + step).collect());
            let (_, ym, _) = on_grid_at(&raw, row, k, bound, x.iter().map(|v| v - step).collect());
            let mut worst = 0.0f64;
            for i in 0..n {
                if kn.iter().any(|&t| (t - x[i]).abs() <= step) {
                    continue;
                }
                let fd = (yp[i] - ym[i]) / (2.0 * step);
                let an = ld[i].exp();
                worst = worst.max((fd - an).abs() / an.max(1.0));
            }
            assert!(worst < 1e-4, "K={k} amp={amp}: dy/dx vs finite differences off by {worst}");
            eprintln!("K={k} B={bound} amp={amp}: dy/dx vs central differences (relative) ≤ {worst:.1e}");
            // C¹ at ±B: dy/dx = 1 at and just inside the bounds, y(±B) = ±B
            let (lo, hi) = (n / 6, n - 1 - n / 6);
            assert!((x[lo] + bound).abs() < 1e-9 && (x[hi] - bound).abs() < 1e-9);
            let e = 1e-10;
            let pts = vec![-bound, -bound + e, bound - e, bound];
            let c = 3 * k - 1;
            let rep = raw.narrow(0, row, 1).unwrap().broadcast_as((4, 1, c)).unwrap().contiguous().unwrap();
            let (yb, lb) = spline::apply(&t64(pts.clone(), &[4, 1]), &rep, k, bound, false).unwrap();
            let (yb, lb) = (tensor_to_f64(&yb).unwrap(), tensor_to_f64(&lb).unwrap());
            assert!((yb[0] + bound).abs() < 1e-14 && (yb[3] - bound).abs() < 1e-14, "y(±B) = {yb:?}");
            // exactly 1 at ±B; 1e-10 inside, 1 + O(1e-10 · y'') (y'' is large next to tiny edge bins)
            assert!(lb[0].abs() < 1e-12 && lb[3].abs() < 1e-12, "K={k} amp={amp}: ln dy/dx at ±B {lb:?}");
            assert!(lb[1].abs() < 1e-3 && lb[2].abs() < 1e-3, "K={k} amp={amp}: ln dy/dx inside ±B {lb:?}");
            assert!(ld[lo - 1] == 0.0 && ld[hi + 1] == 0.0);
        }
    }
}

#[test]
fn zero_conditioner_output_is_the_identity() {
    let k = 8;
    let raw = Tensor::zeros((3, 5, 3 * k - 1), DType::F64, &Device::Cpu).unwrap();
    let x = t64(normals(15, 1).iter().map(|v| 3.0 * v).collect(), &[3, 5]);
    let (y, ld) = spline::apply(&x, &raw, k, 4.0, false).unwrap();
    assert!(max_abs_diff(&tensor_to_f64(&y).unwrap(), &tensor_to_f64(&x).unwrap()) < 1e-14);
    assert!(tensor_to_f64(&ld).unwrap().iter().all(|v| v.abs() < 1e-12));
}

#[test]
fn spline_layers_invert_in_f64() {
    check_layer_round_trip_amp(&[4, 4], r#"{"dtype":"f64","layers":4,"coupling":"spline"}"#, AMP);
    // a narrow interval: most values in the tails
    check_layer_round_trip_amp(&[4, 4], r#"{"dtype":"f64","layers":2,"coupling":"spline","spline_bound":0.7}"#, AMP);
    check_layer_round_trip_amp(
        &[8],
        r#"{"dtype":"f64","layers":3,"hidden":[5],"kernel":5,"activation":"tanh","coupling":"spline","spline_bins":3}"#,
        AMP,
    );
    check_layer_round_trip_amp(
        &[4, 4, 4],
        r#"{"dtype":"f64","layers":2,"activation":"gelu","coupling":"spline"}"#,
        AMP,
    );
}

#[test]
fn spline_layer_maps_knots_to_knots_and_inverts_there() {
    let m = model(r#"{"dtype":"f64","layers":2,"coupling":"spline","spline_bins":5,"spline_bound":2.0}"#, &[6, 6]);
    randomize(&m, AMP, 13);
    let (k, bound) = m.flow.spline_shape();
    let v = m.volume();
    let h = v / 2;
    let z = normals(3 * v, 8);
    let params = m.flow.params(false).unwrap();
    for l in 0..2 {
        let p = l % 2;
        let x = cb_tensor(&m, &z);
        let frozen = x.narrow(1, (1 - p) * h, h).unwrap().contiguous().unwrap();
        let raw = m.flow.conditioner(&frozen, l, &params).unwrap();
        let kn = spline::knots(&raw, k, bound).unwrap();
        let (xs, ys) = (v3(&kn.xs), v3(&kn.ys));
        // active site i gets knot i mod (K + 1): every knot, ±B included
        let mut xv = tensor_to_f64(&x).unwrap();
        let mut expect = xv.clone();
        for b in 0..3 {
            for i in 0..h {
                xv[b * v + p * h + i] = xs[b][i][i % (k + 1)];
                expect[b * v + p * h + i] = ys[b][i][i % (k + 1)];
            }
        }
        let xt = t64(xv.clone(), &[3, v]);
        let (y, ld) = m.flow.layer_forward(&xt, l, &params).unwrap();
        let d = max_abs_diff(&tensor_to_f64(&y).unwrap(), &expect);
        assert!(d < 1e-13, "layer {l}: knots map to knots up to {d}");
        let (back, ld_inv) = m.flow.layer_inverse(&y, l, &params).unwrap();
        let d = max_abs_diff(&tensor_to_f64(&back).unwrap(), &xv);
        assert!(d < ATOL, "layer {l}: round trip at the knots off by {d}");
        let s = max_abs_diff(&tensor_to_f64(&ld).unwrap(), &tensor_to_f64(&ld_inv.neg().unwrap()).unwrap());
        assert!(s < ATOL, "layer {l}: log J + log J⁻¹ up to {s}");
    }
}

#[test]
fn spline_model_round_trip_and_inverse_log_det() {
    for (json, scale) in [
        (r#"{"dtype":"f64","coupling":"spline"}"#, 1.0),
        (r#"{"dtype":"f64","coupling":"spline"}"#, 2.5),
        (r#"{"dtype":"f64","coupling":"spline","spline_bound":1.5,"spline_bins":12,"activation":"tanh"}"#, 1.5),
    ] {
        let m = model(json, &[8, 8]);
        randomize(&m, AMP, 2);
        let z: Vec<f64> = normals(7 * 64, 9).iter().map(|v| scale * v).collect();
        let (phi, ld) = m.push_forward(&z).unwrap();
        let (back, ld_inv) = m.pull_back(&phi).unwrap();
        let d = max_abs_diff(&back, &z);
        assert!(d < ATOL, "{json} ×{scale}: f⁻¹(f(z)) − z = {d}");
        let s: Vec<f64> = ld.iter().zip(&ld_inv).map(|(a, b)| a + b).collect();
        assert!(s.iter().all(|x| x.abs() < ATOL), "{json}: log J + log J⁻¹ = {s:?}");
        assert!(ld.iter().all(|x| x.abs() > 1e-2), "{json}: log J too small to test: {ld:?}");
        eprintln!(
            "{json} ×{scale}: |f⁻¹(f(z)) − z| ≤ {d:.1e}, |log J + log J⁻¹| ≤ {:.1e}",
            max_abs_diff(&ld, &ld_inv.iter().map(|x| -x).collect::<Vec<_>>())
        );
    }
}

#[test]
fn spline_log_det_matches_dense_jacobian() {
    check_log_det_amp(&[4, 4], r#"{"dtype":"f64","layers":6,"coupling":"spline"}"#, AMP);
    check_log_det_amp(
        &[4, 4],
        r#"{"dtype":"f64","layers":4,"coupling":"spline","spline_bound":1.0,"spline_bins":5}"#,
        AMP,
    );
    check_log_det_amp(
        &[8],
        r#"{"dtype":"f64","layers":5,"hidden":[6,4],"kernel":5,"activation":"tanh","coupling":"spline"}"#,
        AMP,
    );
}

#[test]
fn spline_fused_conditioner_matches_the_generic_formulation() {
    for (shape, json) in [
        (vec![8, 8], r#"{"dtype":"f64","layers":4,"coupling":"spline"}"#),
        (
            vec![4, 4, 4],
            r#"{"dtype":"f64","layers":2,"activation":"gelu","hidden":[7],"coupling":"spline","spline_bins":5}"#,
        ),
        (vec![6, 4], r#"{"dtype":"f64","layers":2,"hidden":[],"coupling":"spline","spline_bins":16}"#),
        // the specialised kernels for 3K − 1 = 11 and 23 outputs
        (vec![8, 8], r#"{"dtype":"f64","layers":2,"hidden":[8],"coupling":"spline","spline_bins":4}"#),
        (vec![4, 4], r#"{"dtype":"f64","layers":2,"hidden":[4, 16],"coupling":"spline","spline_bins":4}"#),
        (vec![4, 4], r#"{"dtype":"f64","layers":2,"hidden":[16],"coupling":"spline"}"#),
    ] {
        let mut m = model(json, &shape);
        randomize(&m, AMP, 21);
        let v = m.volume();
        let z = Tensor::from_vec(normals(20 * v, 2).iter().map(|x| 2.0 * x).collect::<Vec<_>>(), (20, v), &Device::Cpu)
            .unwrap();
        let u = Tensor::from_vec(normals(20 * v, 3), (20, v), &Device::Cpu).unwrap();
        for inverse in [false, true] {
            assert!(m.flow.net.fused());
            let a = grads(&m.flow, &z, &u, inverse);
            m.flow.net.set_fused(false);
            let b = grads(&m.flow, &z, &u, inverse);
            m.flow.net.set_fused(true);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                let scale = y.iter().fold(1.0f64, |s, v| s.max(v.abs()));
                let d = max_abs_diff(x, y);
                assert!(d < 1e-12 * scale, "{json} inverse={inverse}: tensor {i} differs by {d} (scale {scale})");
            }
        }
    }
}

#[test]
fn spline_surrogate_gradient_equals_true_gradient_phi4() {
    check_surrogate_amp(&[4, 4], r#"{"dtype":"f64","layers":4,"coupling":"spline"}"#, 16, AMP);
    check_surrogate_amp(
        &[8, 8],
        r#"{"dtype":"f64","layers":4,"activation":"tanh","coupling":"spline","spline_bound":1.5}"#,
        8,
        AMP,
    );
    check_surrogate_amp(
        &[8],
        r#"{"dtype":"f64","layers":3,"prior":"free","prior_m2":0.5,"coupling":"spline","spline_bins":4}"#,
        8,
        AMP,
    );
}

#[test]
fn spline_input_gradient_matches_finite_differences() {
    // ∂(Σ φ·u + log J)/∂z by autograd against central differences of the same scalar
    let m = model(r#"{"dtype":"f64","layers":4,"coupling":"spline","spline_bound":2.0}"#, &[4, 4]);
    randomize(&m, AMP, 6);
    let v = m.volume();
    let z = t64(normals(2 * v, 4).iter().map(|x| 1.5 * x).collect(), &[2, v]);
    let u = t64(normals(2 * v, 5), &[2, v]);
    let g = grads(&m.flow, &z, &u, false);
    let gz = &g[g.len() - 3];
    let params = m.flow.params(false).unwrap();
    let f = |zz: &[f64]| -> f64 {
        let (phi, ld) = m.flow.forward(&t64(zz.to_vec(), &[2, v]), &params).unwrap();
        (phi.mul(&u).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
            + ld.sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let zv = tensor_to_f64(&z).unwrap();
    let eps = 1e-6;
    for i in 0..2 * v {
        let mut p = zv.clone();
        let mut q = zv.clone();
        p[i] += eps;
        q[i] -= eps;
        let fd = (f(&p) - f(&q)) / (2.0 * eps);
        assert!((fd - gz[i]).abs() < ATOL_RELAXED * gz[i].abs().max(1.0), "z[{i}]: autograd {} vs FD {fd}", gz[i]);
    }
    let _ = Var::from_tensor(&z);
}

#[test]
fn spline_architecture_is_saved_and_other_couplings_are_refused() {
    let json = r#"{"layers":4,"coupling":"spline"}"#;
    let m = model(json, &[4, 4]);
    let arch: serde_json::Value = serde_json::from_str(&m.arch().to_json()).unwrap();
    assert_eq!(arch["coupling"], "spline");
    assert_eq!(arch["spline_bins"], 8);
    assert_eq!(arch["spline_bound"], 4.0);
    assert_eq!(m.flow.net.vars[5].var.dims(), &[23], "3K − 1 = 23 output channels");
    // affine records carry no spline keys (files written before splines still load)
    let affine: serde_json::Value = serde_json::from_str(&model(r#"{"layers":4}"#, &[4, 4]).arch().to_json()).unwrap();
    assert!(affine.get("spline_bins").is_none() && affine.get("spline_bound").is_none(), "{affine}");
    for dtype in ["f32", "f64"] {
        let mut a = model(&format!(r#"{{"dtype":"{dtype}","layers":4,"init_seed":1,"coupling":"spline"}}"#), &[4, 4]);
        a.train_begin_with(&settings(16, 1e-2)).unwrap();
        train_steps(&mut a, &mut Stream::new(1, 1), 3);
        let bytes = a.save_bytes(true).unwrap();
        assert_eq!(bytes, a.save_bytes(true).unwrap());
        let mut b = model(&format!(r#"{{"dtype":"{dtype}","layers":4,"init_seed":2,"coupling":"spline"}}"#), &[4, 4]);
        assert_ne!(sample_bits(&a, 7), sample_bits(&b, 7));
        b.load_bytes(&bytes).unwrap();
        assert_eq!(sample_bits(&a, 7), sample_bits(&b, 7), "{dtype}");
        assert_eq!(b.optimizer_steps(), 3);
    }
    let mut spline_m = model(json, &[4, 4]);
    let mut affine_m = model(r#"{"layers":4}"#, &[4, 4]);
    let e = spline_m.load_bytes(&affine_m.save_bytes(false).unwrap()).unwrap_err();
    assert!(e.message.contains("weights are for coupling=affine, this model has coupling=spline"), "{}", e.message);
    let e = affine_m.load_bytes(&spline_m.save_bytes(false).unwrap()).unwrap_err();
    assert!(e.message.contains("weights are for coupling=spline, this model has coupling=affine"), "{}", e.message);
    let other = model(r#"{"layers":4,"coupling":"spline","spline_bins":4}"#, &[4, 4]).save_bytes(false).unwrap();
    let e = spline_m.load_bytes(&other).unwrap_err();
    assert!(e.message.contains("spline_bins=4, this model has spline_bins=8"), "{}", e.message);
    let other = model(r#"{"layers":4,"coupling":"spline","spline_bound":3.0}"#, &[4, 4]).save_bytes(false).unwrap();
    let e = spline_m.load_bytes(&other).unwrap_err();
    assert!(e.message.contains("spline_bound=3.0, this model has spline_bound=4.0"), "{}", e.message);
    // init_from copies by name and shape: the conditioners' hidden layers transfer, the last
    // convolution (2 vs 23 channels) does not
    let n = spline_m.init_from_bytes(&affine_m.save_bytes(false).unwrap()).unwrap();
    assert_eq!(n, 4 * 4, "conv0 and conv1 weight and bias of 4 layers");
}

#[test]
fn spline_training_approaches_minus_log_z_on_the_free_field() {
    super::training::check_free_field_training(r#"{"coupling":"spline"}"#, "spline");
}

/// Training-step time, spline vs affine, at the peer's setup. Run with
/// `RAYON_NUM_THREADS=1 cargo test --release -p latflow-flow-scalar -- --ignored --nocapture bench_`.
#[test]
#[ignore]
fn bench_training_step_spline_vs_affine() {
    let lat = Lattice::new(&[8, 8]).unwrap();
    for json in [r#"{}"#, r#"{"coupling":"spline"}"#, r#"{"coupling":"spline","spline_bins":4}"#] {
        let mut m = model(json, &[8, 8]);
        m.set_thread_count(1).unwrap();
        m.train_begin_with(&settings(64, 1e-3)).unwrap();
        let mut rng = Stream::new(1, 1);
        let mut step = |m: &mut FlowScalar| {
            let (c, _) = m.train_sample_with(&mut rng).unwrap();
            let (a, g) = phi4_host(&lat, &c, -4.0, 8.0);
            m.train_step_with(&a, &g).unwrap();
        };
        for _ in 0..5 {
            step(&mut m);
        }
        let n = 40;
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            step(&mut m);
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
        eprintln!("{json}: {ms:.2} ms per training step ({} parameters)", m.parameter_count());
    }
}
