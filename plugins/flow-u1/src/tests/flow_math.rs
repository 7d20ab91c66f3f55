//! Masks, bijectivity, log-determinants, and the fused ops against the generic formulation.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::flow::Flow;
use crate::ncp;

const NCP: &str = r#""coupling":"ncp""#;
const SPLINE: &str = r#""coupling":"spline""#;

pub(super) fn links_tensor(m: &FlowU1, x: &[f64]) -> Tensor {
    let w = m.n_links();
    tensor_from_f64(x, (x.len() / w, w), m.flow().net.dtype, &Device::Cpu).unwrap()
}

/// The peer's masks written out as in `u1_flow.py` (`link_mask`, `stripes`), on its
/// `[mu][X][Y]` grid: (active link?, active plaquette?, frozen plaquette?).
fn peer_masks(layer: usize, mu2: usize, x: usize, y: usize) -> (bool, bool, bool) {
    let (mu, off) = (layer % 2, (layer / 2) % 4);
    let c = if mu == 0 { y } else { x };
    let active_link = mu2 == mu && (c + 8 - off) % 4 == 0;
    let active_plaq = (c + 8 - off) % 4 == 0;
    let frozen = (c + 8 - off - 1) % 4 < 2;
    (active_link, active_plaq, frozen)
}

#[test]
fn layers_update_the_peers_links_and_keep_frozen_plaquettes() {
    let m = model(&format!(r#"{{"dtype":"f64",{NCP}}}"#), &[8, 8]);
    randomize(&m, 2.0, 1);
    let geom = m.flow().geom.clone();
    let x = angles(128, 3);
    let p0 = geom.plaquettes(&x);
    let params = m.flow().params(false).unwrap();
    for l in 0..16 {
        let (y, ld) = m.flow().layer_forward(&links_tensor(&m, &x), l, &params).unwrap();
        let y = tensor_to_f64(&y).unwrap();
        assert!(tensor_to_f64(&ld).unwrap()[0].abs() > 1e-3);
        let p1 = geom.plaquettes(&y);
        for xs in 0..8 {
            for ys in 0..8 {
                let site = xs * 8 + ys;
                for mu in 0..2 {
                    let (act, _, _) = peer_masks(l, mu, xs, ys);
                    let i = 2 * site + mu;
                    assert_eq!(act, y[i] != x[i], "layer {l}: link ({mu}, {xs}, {ys})");
                }
                let (_, act, frozen) = peer_masks(l, 0, xs, ys);
                let dp = wrap_pi(p1[site] - p0[site]);
                if frozen {
                    assert!(dp.abs() < ATOL, "layer {l}: frozen plaquette ({xs}, {ys}) changed by {dp}");
                } else if act {
                    assert!(dp.abs() > 1e-6, "layer {l}: active plaquette ({xs}, {ys}) unchanged");
                    // the passive neighbour across the stripe changes by −ΔP
                    let nb = if l % 2 == 0 { xs * 8 + (ys + 7) % 8 } else { ((xs + 7) % 8) * 8 + ys };
                    let dq = wrap_pi(p1[nb] - p0[nb]);
                    assert!(wrap_pi(dq + dp).abs() < ATOL, "layer {l}: passive plaquette did not follow");
                }
            }
        }
    }
}

#[test]
fn peer_architecture_has_the_peers_parameter_count() {
    // torch per layer: Conv2d(2,8,3) + Conv2d(8,8,3) + Conv2d(8,3,3) = 152 + 584 + 219 = 955
    let m = model("{}", &[8, 8]);
    assert_eq!(m.parameter_count(), 16 * 955);
    assert_eq!(m.parameter_names()[0], "layers.0.conv0.weight");
    assert_eq!(m.flow().net.vars[0].var.dims(), &[3, 3, 2, 8]);
    assert_eq!(m.flow().net.vars[5].var.dims(), &[3]);
    // the convolutions run on 64, 48 and 16 sites
    let md = m.flow().mask_data(0);
    let sizes: Vec<usize> = md.mask.conv_outputs.iter().map(|s| s.len()).collect();
    assert_eq!(sizes, vec![64, 48, 16]);
    assert_eq!((md.mask.frozen.len(), md.mask.passive.len()), (32, 16));
}

pub(super) fn check_layer_round_trip(shape: &[usize], json: &str, amp: f64) {
    let m = model(json, shape);
    randomize(&m, amp, 11);
    let x = angles(5 * m.n_links(), 5);
    let params = m.flow().params(false).unwrap();
    for l in 0..m.arch().layers {
        let xt = links_tensor(&m, &x);
        let (y, ld) = m.flow().layer_forward(&xt, l, &params).unwrap();
        let (back, ld_inv) = m.flow().layer_inverse(&y, l, &params).unwrap();
        let d = max_circle_diff(&tensor_to_f64(&back).unwrap(), &x);
        assert!(d < ATOL, "{json} layer {l}: round trip off by {d}");
        let ld = tensor_to_f64(&ld).unwrap();
        assert!(ld.iter().any(|&l| l.abs() > 1e-3), "{json}: log-det is trivially zero");
        let sum = max_abs_diff(&ld, &tensor_to_f64(&ld_inv).unwrap().iter().map(|x| -x).collect::<Vec<_>>());
        assert!(sum < ATOL, "{json} layer {l}: log J + log J⁻¹ off by {sum}");
    }
}

#[test]
fn every_layer_inverts_in_f64() {
    check_layer_round_trip(&[8, 8], &format!(r#"{{"dtype":"f64","layers":8,{NCP}}}"#), 1.5);
    check_layer_round_trip(
        &[4, 8],
        &format!(r#"{{"dtype":"f64","layers":4,{NCP},"n_mix":5,"activation":"tanh"}}"#),
        1.5,
    );
    check_layer_round_trip(&[8, 8], &format!(r#"{{"dtype":"f64","layers":8,{SPLINE}}}"#), 1.5);
    check_layer_round_trip(
        &[6, 6],
        &format!(
            r#"{{"dtype":"f64","layers":6,{SPLINE},"spline_bins":3,"mask_period":3,"hidden":[5],"kernel":5,"activation":"gelu"}}"#
        ),
        1.5,
    );
    // mask_period = 2: no frozen stripe, down to the 2×2 lattice
    for shape in [[2, 2], [4, 6]] {
        for coupling in [NCP, SPLINE] {
            let kernel = if shape[0] == 2 { 1 } else { 3 };
            let json = format!(r#"{{"dtype":"f64","layers":6,{coupling},"mask_period":2,"kernel":{kernel}}}"#);
            check_layer_round_trip(&shape, &json, 1.5);
        }
    }
}

#[test]
fn model_round_trip_and_inverse_log_det() {
    for (json, amp) in [
        (format!(r#"{{"dtype":"f64",{NCP}}}"#), 1.5),
        (format!(r#"{{"dtype":"f64",{NCP},"n_mix":3,"activation":"relu"}}"#), 1.5),
        (format!(r#"{{"dtype":"f64",{SPLINE}}}"#), 1.0),
    ] {
        let m = model(&json, &[8, 8]);
        randomize(&m, amp, 2);
        let z = angles(7 * 128, 9);
        let (theta, ld) = m.push_forward(&z).unwrap();
        assert!(theta.iter().all(|&t| (0.0..2.0 * PI).contains(&t)), "outputs must lie in [0, 2π)");
        let (back, ld_inv) = m.pull_back(&theta).unwrap();
        let d = max_circle_diff(&back, &z);
        assert!(d < ATOL, "{json}: f⁻¹(f(z)) − z = {d}");
        let s: Vec<f64> = ld.iter().zip(&ld_inv).map(|(a, b)| a + b).collect();
        assert!(s.iter().all(|x| x.abs() < ATOL), "{json}: log J + log J⁻¹ = {s:?}");
        assert!(ld.iter().all(|x| x.abs() > 1e-2), "{json}: log J too small to test: {ld:?}");
    }
}

/// The dense Jacobian ∂θ/∂z of the whole flow at one point, rows by autograd (one backward
/// pass per output link), and log J.
fn jacobian_autograd(m: &FlowU1, z: &[f64]) -> (Vec<f64>, f64) {
    let w = m.n_links();
    let zv = Var::from_tensor(&links_tensor(m, z)).unwrap();
    let params = m.flow().params(false).unwrap();
    let (theta, ld) = m.flow().forward(zv.as_tensor(), &params).unwrap();
    let mut jac = Vec::with_capacity(w * w);
    for i in 0..w {
        let g = theta.narrow(1, i, 1).unwrap().sum_all().unwrap().backward().unwrap();
        jac.extend(tensor_to_f64(g.get(zv.as_tensor()).unwrap()).unwrap());
    }
    (jac, tensor_to_f64(&ld).unwrap()[0])
}

/// The same by central finite differences through `push_forward` (differences taken on the
/// circle, so that wrapped outputs do not jump).
fn jacobian_fd(m: &FlowU1, z: &[f64], h: f64) -> Vec<f64> {
    let w = m.n_links();
    let mut jac = vec![0.0; w * w];
    for j in 0..w {
        let (mut zp, mut zm) = (z.to_vec(), z.to_vec());
        zp[j] += h;
        zm[j] -= h;
        let (fp, _) = m.push_forward(&zp).unwrap();
        let (fm, _) = m.push_forward(&zm).unwrap();
        for i in 0..w {
            jac[i * w + j] = wrap_pi(fp[i] - fm[i]) / (2.0 * h);
        }
    }
    jac
}

fn check_log_det(json: &str, amp: f64) {
    let m = model(json, &[4, 4]);
    randomize(&m, amp, 4);
    let w = m.n_links();
    let z = angles(w, 12);
    let (jac, ld) = jacobian_autograd(&m, &z);
    let (_, ld_pub) = m.push_forward(&z).unwrap();
    assert!((ld - ld_pub[0]).abs() < ATOL);
    let dense = log_abs_det(jac, w);
    let dense_fd = log_abs_det(jacobian_fd(&m, &z, 1e-5), w);
    eprintln!(
        "{json}: log J = {ld:.6}, |Δ| autograd {:.1e}, finite differences {:.1e}",
        (dense - ld).abs(),
        (dense_fd - ld).abs()
    );
    assert!(ld.abs() > 0.1, "log-det {ld} too small to test");
    assert!((dense - ld).abs() < ATOL_RELAXED * ld.abs().max(1.0), "{json}: log|det J| = {dense}, flow says {ld}");
    assert!(
        (dense_fd - ld).abs() < ATOL_RELAXED * ld.abs().max(1.0),
        "{json}: FD log|det J| = {dense_fd}, flow says {ld}"
    );
}

#[test]
fn log_det_matches_dense_jacobian_ncp() {
    check_log_det(&format!(r#"{{"dtype":"f64","layers":8,{NCP}}}"#), 1.5);
    check_log_det(&format!(r#"{{"dtype":"f64","layers":5,{NCP},"n_mix":4,"hidden":[6],"activation":"tanh"}}"#), 1.5);
    check_log_det(&format!(r#"{{"dtype":"f64","layers":6,{NCP},"mask_period":2}}"#), 1.5);
}

#[test]
fn log_det_matches_dense_jacobian_spline() {
    check_log_det(&format!(r#"{{"dtype":"f64","layers":8,{SPLINE}}}"#), 1.5);
    check_log_det(&format!(r#"{{"dtype":"f64","layers":3,{SPLINE},"spline_bins":5,"kernel":1}}"#), 1.5);
}

/// Gradients of Σ θ·u + Σ log J with respect to every parameter and to the input, plus θ and
/// log J themselves.
fn grads(flow: &Flow, z: &Tensor, u: &Tensor) -> Vec<Vec<f64>> {
    let zv = Var::from_tensor(z).unwrap();
    let params = flow.params(true).unwrap();
    let (theta, ld) = flow.forward(zv.as_tensor(), &params).unwrap();
    testing::flow_gradients(&flow.net, &zv, &theta, &ld, u)
}

#[test]
fn fused_ops_match_the_generic_formulation() {
    for (json, amp) in [
        (format!(r#"{{"dtype":"f64","layers":8,{NCP}}}"#), 1.5),
        (format!(r#"{{"dtype":"f64","layers":4,{NCP},"n_mix":3,"activation":"gelu"}}"#), 1.5),
        (format!(r#"{{"dtype":"f64","layers":4,{SPLINE},"activation":"tanh"}}"#), 1.5),
        (format!(r#"{{"dtype":"f64","layers":4,{NCP},"mask_period":2}}"#), 1.5),
    ] {
        let mut m = model(&json, &[8, 8]);
        randomize(&m, amp, 21);
        let n = 37; // more than two blocks of 16
        let z = links_tensor(&m, &angles(n * 128, 1));
        let u = links_tensor(&m, &angles(n * 128, 2));
        assert!(m.flow().net.fused());
        let fused = grads(m.flow(), &z, &u);
        let params = m.flow().params(false).unwrap();
        let (theta, _) = m.flow().forward(&z, &params).unwrap();
        let (back_f, ld_f) = m.flow().inverse(&theta, &params).unwrap();
        m.flow_mut().net.set_fused(false);
        let generic = grads(m.flow(), &z, &u);
        let (back_g, ld_g) = m.flow().inverse(&theta, &params).unwrap();
        for (i, (a, b)) in fused.iter().zip(&generic).enumerate() {
            let scale = b.iter().fold(1.0f64, |s, x| s.max(x.abs()));
            let d = max_abs_diff(a, b);
            assert!(d < ATOL_FUSED * scale, "{json}: quantity {i} differs by {d} (scale {scale})");
        }
        assert!(max_abs_diff(&tensor_to_f64(&back_f).unwrap(), &tensor_to_f64(&back_g).unwrap()) < ATOL_FUSED * 10.0);
        assert!(max_abs_diff(&tensor_to_f64(&ld_f).unwrap(), &tensor_to_f64(&ld_g).unwrap()) < ATOL_FUSED * 100.0);
    }
}

#[test]
fn f32_model_matches_f64_model_to_single_precision() {
    let a = model(r#"{"init_seed":3}"#, &[8, 8]);
    let b = model(r#"{"init_seed":3,"dtype":"f64"}"#, &[8, 8]);
    let z = angles(64 * 128, 4);
    let (ta, la) = a.push_forward(&z).unwrap();
    let (tb, lb) = b.push_forward(&z).unwrap();
    let dt = max_circle_diff(&ta, &tb);
    let dl = max_abs_diff(&la, &lb);
    eprintln!("peer setup, initial weights: |Δθ| ≤ {dt:.1e}, |Δ log J| ≤ {dl:.1e} (f32 vs f64)");
    assert!(dt < 1e-4 && dl < 1e-3, "f32 differs from f64 by {dt} (links), {dl} (log J)");
}

#[test]
fn atan2_from_candle_ops_is_accurate_and_differentiable() {
    let mut ys = Vec::new();
    let mut xs = Vec::new();
    for i in 0..=400 {
        let a = -PI / 2.0 + PI * i as f64 / 400.0;
        for r in [1e-3, 0.7, 1.0, 5e2] {
            ys.push(r * a.sin());
            xs.push(r * a.cos().max(0.0));
        }
    }
    let n = ys.len();
    let yv = Var::from_tensor(&tensor_from_f64(&ys, n, DType::F64, &Device::Cpu).unwrap()).unwrap();
    let xv = Var::from_tensor(&tensor_from_f64(&xs, n, DType::F64, &Device::Cpu).unwrap()).unwrap();
    let at = ncp::atan2_generic(yv.as_tensor(), xv.as_tensor()).unwrap();
    let g = at.sum_all().unwrap().backward().unwrap();
    let (gy, gx) = (
        tensor_to_f64(g.get(yv.as_tensor()).unwrap()).unwrap(),
        tensor_to_f64(g.get(xv.as_tensor()).unwrap()).unwrap(),
    );
    for (i, v) in tensor_to_f64(&at).unwrap().into_iter().enumerate() {
        let (y, x) = (ys[i], xs[i]);
        let want = y.atan2(x);
        assert!((v - want).abs() < 4e-16 * want.abs().max(1.0), "atan2({y}, {x}) = {v}, want {want}");
        let r2 = x * x + y * y;
        assert!((gy[i] - x / r2).abs() < 1e-13 / r2.sqrt(), "∂/∂y at ({y}, {x})");
        assert!((gx[i] + y / r2).abs() < 1e-13 / r2.sqrt(), "∂/∂x at ({y}, {x})");
    }
}

#[test]
fn ncp_solver_inverts_steep_mixtures() {
    for s in [vec![0.0], vec![4.0, -4.0], vec![8.0, 0.5, -3.0], vec![-10.0, -9.0]] {
        for i in 0..=200 {
            let u = -PI + 2.0 * PI * i as f64 / 200.0;
            let (y, ld) = ncp::eval(u, &s);
            let (back, ld2) = ncp::solve(y, &s);
            // the error of u is about one ulp of y divided by the slope
            let tol = 8.0 * f64::EPSILON * PI / ld.exp().min(1.0);
            assert!((back - u).abs() < tol, "s = {s:?}: u = {u}, solve(h(u)) = {back}");
            assert!((ld - ld2).abs() < 1e-6, "log-derivative at the solution: {ld} vs {ld2}");
        }
    }
    // the mixture with one component at s = 0 is the identity
    let (y, ld) = ncp::eval(1.234f64, &[0.0]);
    assert!((y - 1.234).abs() < 1e-15 && ld.abs() < 1e-15);
}

/// The generic formulation (what a GPU runs) against the fused CPU ops, through the `Model`
/// trait as the host drives it: proposals, log q, the inverse pass, one batch's gradient and two
/// Adam steps (flow-common's `check_device_agreement`, here with both models on the CPU).
#[test]
fn generic_formulation_agrees_with_the_fused_ops_through_the_model_trait() {
    for json in [r#"{"dtype":"f64","layers":4}"#, r#"{"dtype":"f64","layers":4,"coupling":"spline"}"#] {
        let mut fused = model(json, &[8, 8]);
        randomize(&fused, 1.0, 5);
        let mut generic = model(json, &[8, 8]);
        generic.flow_mut().net.set_fused(false);
        let geom = fused.flow().geom.clone();
        let action = |c: &[f64]| wilson_host(&geom, c, 2.0);
        let d = testing::check_device_agreement(&mut fused, &mut generic, 32, Some(2.0 * PI), &action, 2, 1e-12);
        eprintln!("{json}: {d:?}");
    }
}

/// The 8-lane f32 NCP evaluation (the CPU forward pass's fast path) against the scalar one in
/// f64: angles over [−π, π] (the ends and 0 included), components of both signs from 10⁻³ to the
/// direct range's edge, n = 1, 2, 3 and 6; and `None` (the scalar fallback) beyond that edge.
#[cfg(target_arch = "x86_64")]
#[test]
fn eight_lane_ncp_matches_the_scalar_evaluation() {
    if !latflow_core::simd::avx2_fma() {
        return;
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut worst_h, mut worst_ld) = (0f64, 0f64);
    for n in [1usize, 2, 3, 6] {
        for trial in 0..400 {
            let mut p_w = [0f32; 8];
            for (j, p) in p_w.iter_mut().enumerate() {
                *p = match (trial % 50, j) {
                    (0, 0) => -PI as f32,
                    (0, 1) => PI as f32,
                    (0, 2) => 0.0,
                    _ => ((2.0 * uniform() - 1.0) * PI) as f32,
                };
            }
            let scale = [1e-3, 0.3, 2.0, 8.0, 19.9][trial % 5];
            let raw: Vec<f32> = (0..8 * (n + 1)).map(|_| ((2.0 * uniform() - 1.0) * scale) as f32).collect();
            // SAFETY: AVX2 and FMA checked above.
            let (h8, ld8) = unsafe { ncp::eval8(&p_w, &raw, n) }.expect("every |s| is in the direct range");
            for j in 0..8 {
                let s: Vec<f64> = raw[j * (n + 1)..j * (n + 1) + n].iter().map(|&v| v as f64).collect();
                let (h, ld) = ncp::eval(p_w[j] as f64, &s);
                worst_h = worst_h.max((h8[j] as f64 - h).abs());
                worst_ld = worst_ld.max((ld8[j] as f64 - ld).abs() / ld.abs().max(1.0));
                assert!(
                    (h8[j] as f64 - h).abs() < 2e-6 && (ld8[j] as f64 - ld).abs() < 2e-6 * ld.abs().max(1.0),
                    "n = {n}, P = {}, s = {s:?}: ({}, {}) against ({h}, {ld})",
                    p_w[j],
                    h8[j],
                    ld8[j]
                );
            }
        }
    }
    eprintln!("8-lane NCP against scalar f64: |Δh| ≤ {worst_h:.1e}, |Δ ln H′| ≤ {worst_ld:.1e} (relative above 1)");
    let mut raw = vec![0.5f32; 8 * 3];
    raw[5 * 3 + 1] = -20.5;
    // SAFETY: AVX2 and FMA checked above.
    assert!(unsafe { ncp::eval8(&[0.1; 8], &raw, 2) }.is_none());
    raw[5 * 3 + 1] = f32::NAN;
    // SAFETY: as above.
    assert!(unsafe { ncp::eval8(&[0.1; 8], &raw, 2) }.is_none());
}
