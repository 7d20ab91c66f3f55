//! The model on the GPU against the same model on the CPU (feature `cuda`; needs a CUDA device:
//! `cargo test -p latflow-flow-u1 --release --features cuda cuda`). The CPU path is the one the
//! exactness tests check (round trips, dense-Jacobian log-dets, gauge equivariance, gradients by
//! finite differences), so agreement to rounding carries those checks to the device. On the
//! device the generic candle formulation runs; the NCP inverse's solver and Adam stay on the
//! host.

use super::*;
use latflow_flow_common::testing::check_device_agreement;

/// Relative agreement in f64 (orders of summation differ between the devices).
const TOL_F64: f64 = 1e-9;
/// Relative agreement in f32.
const TOL_F32: f64 = 2e-4;

/// `steps`: Adam steps compared after the first batch (f64 only; see `check_device_agreement`).
fn check(json: &str, tol: f64, steps: usize) {
    let shape = [8, 8];
    let mut cpu = model(json, &shape);
    randomize(&cpu, 1.0, 5);
    let mut dev = model(&json.replacen('{', r#"{"device":"cuda","#, 1), &shape);
    let geom = cpu.flow().geom.clone();
    let action = |c: &[f64]| wilson_host(&geom, c, 2.0);
    let d = check_device_agreement(&mut cpu, &mut dev, 64, Some(2.0 * PI), &action, steps, tol);
    eprintln!("{json}: {d:?}");
}

#[test]
fn cuda_ncp_f64_agrees_with_the_cpu() {
    check(r#"{"dtype":"f64"}"#, TOL_F64, 3);
}

#[test]
fn cuda_spline_f64_agrees_with_the_cpu() {
    check(r#"{"dtype":"f64","coupling":"spline"}"#, TOL_F64, 3);
}

#[test]
fn cuda_ncp_f32_agrees_with_the_cpu() {
    check(r#"{"dtype":"f32"}"#, TOL_F32, 0);
}

#[test]
fn cuda_spline_f32_agrees_with_the_cpu() {
    check(r#"{"dtype":"f32","coupling":"spline"}"#, TOL_F32, 0);
}
