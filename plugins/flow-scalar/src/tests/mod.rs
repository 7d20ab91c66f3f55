//! Tests of the flow-scalar plugin. Tolerances are named constants; exactness tests run in f64.

mod config_tests;
#[cfg(feature = "cuda")]
mod cuda;
mod flow_math;
mod gradients;
mod persistence;
mod sampling;
mod spline_tests;
mod training;

use candle_core::Tensor;
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::{Lattice, Stream};
pub use latflow_flow_common::testing::{self, log_abs_det, max_abs_diff, settings};

use crate::flow::{tensor_from_f64, tensor_to_f64};
use crate::geometry::Geometry;
use crate::FlowScalar;

/// Round trips and identities that hold to rounding in f64.
pub const ATOL: f64 = 1e-10;
/// Comparisons against a numerical (finite-difference) reference.
pub const ATOL_RELAXED: f64 = 1e-6;

pub fn layout(shape: &[usize]) -> FieldLayout {
    FieldLayout::single(shape, "phi", Support::Site, ElementKind::Real)
}

pub fn model(json: &str, shape: &[usize]) -> FlowScalar {
    FlowScalar::from_json(json, &layout(shape)).unwrap_or_else(|e| panic!("{json} on {shape:?}: {e}"))
}

/// flow-common's `testing::randomize` on the model's parameters.
pub fn randomize(m: &FlowScalar, amp: f64, seed: u64) {
    latflow_flow_common::testing::randomize(&m.flow.net, amp, seed);
}

/// φ⁴ action (convention B) and its gradient on the host, in site order:
/// S = Σ_x [Σ_μ (φ(x+μ̂) − φ(x))² + m² φ² + λ φ⁴],
/// ∂S/∂φ(x) = 2(2d + m²)φ(x) − 2 Σ_μ (φ(x+μ̂) + φ(x−μ̂)) + 4λφ(x)³.
pub fn phi4_host(lat: &Lattice, phi: &[f64], m2: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let v = lat.volume();
    let d = lat.dim();
    let mut s = Vec::new();
    let mut g = vec![0.0; phi.len()];
    for (c, cfg) in phi.chunks(v).enumerate() {
        let mut a = 0.0;
        for x in 0..v {
            let p = cfg[x];
            a += m2 * p * p + lam * p.powi(4);
            let mut nb = 0.0;
            for mu in 0..d {
                let f = cfg[lat.fwd(x, mu)];
                a += (f - p) * (f - p);
                nb += f + cfg[lat.bwd(x, mu)];
            }
            g[c * v + x] = 2.0 * (2.0 * d as f64 + m2) * p - 2.0 * nb + 4.0 * lam * p * p * p;
        }
        s.push(a);
    }
    (s, g)
}

/// The same action written in candle, on `[B, V]` fields in checkerboard order → `[B]`.
pub fn phi4_candle(phi: &Tensor, geom: &Geometry, m2: f64, lam: f64) -> candle_core::Result<Tensor> {
    let (b, v) = phi.dims2()?;
    let d = geom.lattice.dim();
    let fwd = geom.fwd_positions();
    let idx = Tensor::from_vec(fwd.clone(), fwd.len(), phi.device())?;
    let nb = phi.index_select(&idx, 1)?.reshape((b, v, d))?;
    let kinetic = nb.broadcast_sub(&phi.unsqueeze(2)?)?.sqr()?.sum((1, 2))?;
    let p2 = phi.sqr()?;
    let pot = ((p2.sum(1)? * m2)? + (p2.sqr()?.sum(1)? * lam)?)?;
    kinetic + pot
}

/// S and ∂S/∂φ by candle autograd (f64), for configurations in site order.
pub fn phi4_autograd(geom: &Geometry, phi_sites: &[f64], m2: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let v = geom.volume;
    let n = phi_sites.len() / v;
    let cb = geom.to_checkerboard(phi_sites);
    let leaf = candle_core::Var::from_tensor(
        &tensor_from_f64(&cb, (n, v), candle_core::DType::F64, &candle_core::Device::Cpu).unwrap(),
    )
    .unwrap();
    let s = phi4_candle(leaf.as_tensor(), geom, m2, lam).unwrap();
    let g = s.sum_all().unwrap().backward().unwrap();
    let grad = tensor_to_f64(g.get(leaf.as_tensor()).unwrap()).unwrap();
    (tensor_to_f64(&s).unwrap(), geom.to_sites(&grad))
}

pub fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed, 7);
    let mut v = vec![0.0; n];
    s.fill_normal(&mut v);
    v
}
