//! Bijectivity, log-determinants, masks, equivariance, and the fused kernels against the
//! generic candle formulation.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::flow::Flow;

pub(super) fn cb_tensor(m: &FlowScalar, sites: &[f64]) -> Tensor {
    let v = m.volume();
    let cb = m.flow.geom.to_checkerboard(sites);
    tensor_from_f64(&cb, (sites.len() / v, v), m.flow.net.dtype, &Device::Cpu).unwrap()
}

#[test]
fn layer_zero_updates_even_sites_and_layers_alternate() {
    // the peer's checker(0) mask is 0 (updated) where Σ coords is even
    let m = model(r#"{"dtype":"f64","layers":2}"#, &[4, 4]);
    randomize(&m, 2.0, 1);
    let lat = Lattice::new(&[4, 4]).unwrap();
    let z = normals(16, 3);
    let params = m.flow.params(false).unwrap();
    let (y1, _) = m.flow.layer_forward(&cb_tensor(&m, &z), 0, &params).unwrap();
    let y1 = m.flow.geom.to_sites(&tensor_to_f64(&y1).unwrap());
    let (y2, _) = m.flow.layer_forward(&cb_tensor(&m, &y1), 1, &params).unwrap();
    let y2 = m.flow.geom.to_sites(&tensor_to_f64(&y2).unwrap());
    for x in 0..16 {
        if lat.parity(x) == 0 {
            assert_ne!(y1[x], z[x], "layer 0 must update even site {x}");
            assert_eq!(y2[x], y1[x], "layer 1 must freeze even site {x}");
        } else {
            assert_eq!(y1[x], z[x], "layer 0 must freeze odd site {x}");
            assert_ne!(y2[x], y1[x], "layer 1 must update odd site {x}");
        }
    }
}

#[test]
fn peer_architecture_has_the_peers_parameter_count() {
    // torch: per layer Conv2d(1,8,3) + Conv2d(8,8,3) + Conv2d(8,2,3) = 80 + 584 + 146 = 810
    let m = model("{}", &[8, 8]);
    assert_eq!(m.parameter_count(), 16 * 810);
    assert_eq!(m.parameter_names()[0], "layers.0.conv0.weight");
    assert_eq!(m.flow.net.vars[0].var.dims(), &[3, 3, 1, 8]);
    assert_eq!(m.flow.net.vars[5].var.dims(), &[2]);
}

pub(super) fn check_layer_round_trip(shape: &[usize], json: &str) {
    check_layer_round_trip_amp(shape, json, 3.0);
}

/// The same with weights randomised at amplitude `amp` (splines are unbounded: a smaller one).
pub(super) fn check_layer_round_trip_amp(shape: &[usize], json: &str, amp: f64) {
    let m = model(json, shape);
    randomize(&m, amp, 11);
    let v = m.volume();
    let z = normals(5 * v, 5);
    let params = m.flow.params(false).unwrap();
    for l in 0..m.arch().layers {
        let x = cb_tensor(&m, &z);
        let (y, ld) = m.flow.layer_forward(&x, l, &params).unwrap();
        let (back, ld_inv) = m.flow.layer_inverse(&y, l, &params).unwrap();
        let d = max_abs_diff(&tensor_to_f64(&back).unwrap(), &tensor_to_f64(&x).unwrap());
        assert!(d < ATOL, "{shape:?} layer {l}: round trip off by {d}");
        let ld = tensor_to_f64(&ld).unwrap();
        assert!(ld.iter().any(|&l| l.abs() > 1e-3), "log-det is trivially zero");
        let sum: Vec<f64> = ld.iter().zip(tensor_to_f64(&ld_inv).unwrap()).map(|(a, b)| a + b).collect();
        assert!(sum.iter().all(|s| s.abs() < ATOL), "{shape:?} layer {l}: log J + log J⁻¹ = {sum:?}");
    }
}

#[test]
fn every_layer_inverts_in_f64() {
    check_layer_round_trip(&[4, 4], r#"{"dtype":"f64","layers":4}"#);
    check_layer_round_trip(&[8], r#"{"dtype":"f64","layers":3,"hidden":[5],"kernel":5,"activation":"tanh"}"#);
    check_layer_round_trip(&[4, 4, 4], r#"{"dtype":"f64","layers":2,"activation":"gelu"}"#);
    check_layer_round_trip(&[2, 6], r#"{"dtype":"f64","layers":2,"hidden":[],"kernel":1,"activation":"relu"}"#);
}

#[test]
fn model_round_trip_and_inverse_log_det() {
    for act in ["leaky_relu", "tanh", "relu", "gelu"] {
        let m = model(&format!(r#"{{"dtype":"f64","activation":"{act}"}}"#), &[8, 8]);
        randomize(&m, 3.0, 2);
        let z = normals(7 * 64, 9);
        let (phi, ld) = m.push_forward(&z).unwrap();
        let (back, ld_inv) = m.pull_back(&phi).unwrap();
        let d = max_abs_diff(&back, &z);
        assert!(d < ATOL, "{act}: f⁻¹(f(z)) − z = {d}");
        let s: Vec<f64> = ld.iter().zip(&ld_inv).map(|(a, b)| a + b).collect();
        assert!(s.iter().all(|x| x.abs() < ATOL), "{act}: log J + log J⁻¹ = {s:?}");
        assert!(ld.iter().all(|x| x.abs() > 1e-2), "{act}: log J too small to test: {ld:?}");
    }
}

/// The dense Jacobian ∂φ/∂z of the whole flow at one point, rows by autograd (one backward
/// pass per output component), in checkerboard order.
pub(super) fn jacobian_autograd(m: &FlowScalar, z_sites: &[f64]) -> (Vec<f64>, f64) {
    let v = m.volume();
    let zc = Var::from_tensor(&cb_tensor(m, z_sites)).unwrap();
    let params = m.flow.params(false).unwrap();
    let (phi, ld) = m.flow.forward(zc.as_tensor(), &params).unwrap();
    let mut jac = Vec::with_capacity(v * v);
    for i in 0..v {
        let g = phi.narrow(1, i, 1).unwrap().sum_all().unwrap().backward().unwrap();
        jac.extend(tensor_to_f64(g.get(zc.as_tensor()).unwrap()).unwrap());
    }
    (jac, tensor_to_f64(&ld).unwrap()[0])
}

/// The same by central finite differences through `push_forward` (site order).
pub(super) fn jacobian_fd(m: &FlowScalar, z: &[f64], h: f64) -> Vec<f64> {
    let v = m.volume();
    let mut cols = vec![0.0; v * v];
    for j in 0..v {
        let mut zp = z.to_vec();
        let mut zm = z.to_vec();
        zp[j] += h;
        zm[j] -= h;
        let (fp, _) = m.push_forward(&zp).unwrap();
        let (fm, _) = m.push_forward(&zm).unwrap();
        for i in 0..v {
            cols[i * v + j] = (fp[i] - fm[i]) / (2.0 * h);
        }
    }
    cols
}

pub(super) fn check_log_det(shape: &[usize], json: &str) {
    check_log_det_amp(shape, json, 3.0);
}

pub(super) fn check_log_det_amp(shape: &[usize], json: &str, amp: f64) {
    let m = model(json, shape);
    randomize(&m, amp, 4);
    let v = m.volume();
    let z = normals(v, 12);
    let (jac, ld) = jacobian_autograd(&m, &z);
    let (_, ld_pub) = m.push_forward(&z).unwrap();
    assert!((ld - ld_pub[0]).abs() < ATOL);
    let dense = log_abs_det(jac, v);
    eprintln!("{shape:?} {json}: log J = {ld:.6}, dense |Δ| = {:.1e}", (dense - ld).abs());
    assert!(ld.abs() > 0.1, "{shape:?}: log-det {ld} too small to test");
    assert!((dense - ld).abs() < ATOL_RELAXED * ld.abs().max(1.0), "{shape:?}: log|det J| = {dense}, flow says {ld}");
    if v <= 16 {
        let dense_fd = log_abs_det(jacobian_fd(&m, &z, 1e-5), v);
        assert!(
            (dense_fd - ld).abs() < ATOL_RELAXED * ld.abs().max(1.0),
            "{shape:?}: FD log|det J| = {dense_fd}, flow says {ld}"
        );
    }
}

#[test]
fn log_det_matches_dense_jacobian_2d() {
    check_log_det(&[4, 4], r#"{"dtype":"f64","layers":6}"#);
}

#[test]
fn log_det_matches_dense_jacobian_1d() {
    check_log_det(&[8], r#"{"dtype":"f64","layers":5,"hidden":[6,4],"kernel":5,"activation":"tanh"}"#);
}

#[test]
fn log_det_matches_dense_jacobian_3d() {
    check_log_det(&[4, 2, 4], r#"{"dtype":"f64","layers":4,"kernel":1,"hidden":[4]}"#);
    check_log_det(&[4, 4, 4], r#"{"dtype":"f64","layers":3,"activation":"gelu"}"#);
}

#[test]
fn flow_is_translation_equivariant_under_parity_preserving_shifts() {
    let m = model(r#"{"dtype":"f64","layers":4}"#, &[4, 6]);
    randomize(&m, 3.0, 8);
    let lat = Lattice::new(&[4, 6]).unwrap();
    let z = normals(24, 1);
    let shift = |f: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; 24];
        for x in 0..24 {
            let c = lat.coords(x);
            out[lat.index(&[c[0] + 1, c[1] + 3])] = f[x];
        }
        out
    };
    let (phi, ld) = m.push_forward(&z).unwrap();
    let (phi_s, ld_s) = m.push_forward(&shift(&z)).unwrap();
    // every site does the same arithmetic in the same order: equal bits
    assert_eq!(phi_s, shift(&phi));
    assert!((ld[0] - ld_s[0]).abs() < ATOL);
}

/// Parameters' gradients of Σ (φ·u) + Σ log J and the input's gradient, through the flow.
pub(super) fn grads(flow: &Flow, z: &Tensor, u: &Tensor, inverse: bool) -> Vec<Vec<f64>> {
    let zv = Var::from_tensor(z).unwrap();
    let params = flow.params(true).unwrap();
    let (phi, ld) = if inverse {
        flow.inverse(zv.as_tensor(), &params).unwrap()
    } else {
        flow.forward(zv.as_tensor(), &params).unwrap()
    };
    testing::flow_gradients(&flow.net, &zv, &phi, &ld, u)
}

#[test]
fn fused_kernels_match_the_generic_formulation() {
    for (shape, json) in [
        (vec![8, 8], r#"{"dtype":"f64","layers":4,"activation":"leaky_relu"}"#),
        (vec![4, 4], r#"{"dtype":"f64","layers":3,"activation":"tanh","hidden":[3,5]}"#),
        (vec![8], r#"{"dtype":"f64","layers":3,"activation":"relu","kernel":5,"hidden":[16]}"#),
        (vec![4, 4, 4], r#"{"dtype":"f64","layers":2,"activation":"gelu","hidden":[7]}"#),
        (vec![6, 4], r#"{"dtype":"f64","layers":2,"hidden":[]}"#),
    ] {
        let mut m = model(json, &shape);
        randomize(&m, 2.0, 21);
        let v = m.volume();
        let z = Tensor::from_vec(normals(20 * v, 2), (20, v), &Device::Cpu).unwrap();
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
fn f32_model_matches_f64_model_to_single_precision() {
    let m32 = model(r#"{"init_seed":5}"#, &[8, 8]);
    let m64 = model(r#"{"init_seed":5,"dtype":"f64"}"#, &[8, 8]);
    let z = normals(4 * 64, 4);
    let (a, la) = m32.push_forward(&z).unwrap();
    let (b, lb) = m64.push_forward(&z).unwrap();
    eprintln!(
        "f32 vs f64, 16 layers on 8x8: max |Δφ| = {:.2e}, max |Δ log J| = {:.2e}",
        max_abs_diff(&a, &b),
        max_abs_diff(&la, &lb)
    );
    assert!(max_abs_diff(&a, &b) < 1e-4, "{}", max_abs_diff(&a, &b));
    assert!(max_abs_diff(&la, &lb) < 1e-3, "{}", max_abs_diff(&la, &lb));
    assert_eq!(m32.flow.net.dtype, DType::F32);
}

/// `z2 = "equivariant"`: f(−z) = −f(z) with the same log-determinant (random, far-from-identity
/// weights), the inverse round-trips, and the log-det matches the dense Jacobian.
#[test]
fn equivariant_network_is_odd_and_exact() {
    let json = r#"{"dtype":"f64","layers":6,"z2":"equivariant"}"#;
    let m = model(json, &[8, 8]);
    randomize(&m, 3.0, 5);
    let z = normals(5 * 64, 21);
    let neg: Vec<f64> = z.iter().map(|x| -x).collect();
    let (phi, ld) = m.push_forward(&z).unwrap();
    let (phi_neg, ld_neg) = m.push_forward(&neg).unwrap();
    let odd: Vec<f64> = phi.iter().zip(&phi_neg).map(|(a, b)| a + b).collect();
    assert!(
        odd.iter().all(|x| x.abs() < ATOL),
        "f(−z) ≠ −f(z): {}",
        max_abs_diff(&phi, &phi_neg.iter().map(|x| -x).collect::<Vec<_>>())
    );
    assert!(max_abs_diff(&ld, &ld_neg) < ATOL, "log J(−z) ≠ log J(z)");
    assert!(ld.iter().all(|x| x.abs() > 1e-2), "log J too small to test: {ld:?}");
    let (back, ld_inv) = m.pull_back(&phi).unwrap();
    assert!(max_abs_diff(&back, &z) < ATOL);
    assert!(ld.iter().zip(&ld_inv).all(|(a, b)| (a + b).abs() < ATOL));
    // the plain network with the same weights is not odd: the symmetry comes from the construction
    let plain = model(r#"{"dtype":"f64","layers":6}"#, &[8, 8]);
    randomize(&plain, 3.0, 5);
    let (p1, _) = plain.push_forward(&z).unwrap();
    let (p2, _) = plain.push_forward(&neg).unwrap();
    assert!(p1.iter().zip(&p2).any(|(a, b)| (a + b).abs() > 1e-3));
    check_log_det(&[4, 4], json);
}

#[test]
fn equivariant_needs_affine_and_its_own_weights() {
    let e = FlowScalar::from_json(r#"{"coupling":"spline","z2":"equivariant"}"#, &layout(&[4, 4])).err().unwrap();
    assert!(e.to_string().contains("z2"), "{e}");
    let eq = model(r#"{"z2":"equivariant","layers":2}"#, &[4, 4]);
    let sym = model(r#"{"z2":"symmetrize","layers":2}"#, &[4, 4]);
    let mut plain = model(r#"{"layers":2}"#, &[4, 4]);
    // symmetrize and none share weights; equivariant weights are another function
    plain.load_bytes(&sym.save_bytes(false).unwrap()).unwrap();
    let err = plain.load_bytes(&eq.save_bytes(false).unwrap()).err().unwrap();
    assert!(err.to_string().contains("z2=equivariant"), "{err}");
}

/// The generic formulation (what a GPU runs) against the fused CPU kernels, through the `Model`
/// trait as the host drives it: proposals, log q, the inverse pass, one batch's gradient and two
/// Adam steps (flow-common's `check_device_agreement`, here with both models on the CPU).
#[test]
fn generic_formulation_agrees_with_the_fused_kernels_through_the_model_trait() {
    let lat = Lattice::new(&[8, 8]).unwrap();
    let action = |c: &[f64]| phi4_host(&lat, c, -4.0, 8.0);
    for json in [r#"{"dtype":"f64","layers":4}"#, r#"{"dtype":"f64","layers":4,"coupling":"spline"}"#] {
        let mut fused = model(json, &[8, 8]);
        randomize(&fused, 1.0, 5);
        let mut generic = model(json, &[8, 8]);
        generic.flow.net.set_fused(false);
        let d = testing::check_device_agreement(&mut fused, &mut generic, 32, None, &action, 2, 1e-12);
        eprintln!("{json}: {d:?}");
    }
}
