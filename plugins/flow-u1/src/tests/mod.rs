//! Tests of the flow-u1 plugin. Tolerances are named constants; exactness tests run in f64
//! with fixed seeds.

mod config_tests;
#[cfg(feature = "cuda")]
mod cuda;
mod flow_math;
mod gauge;
mod gradients;
mod latent;
mod persistence;
mod sampling;
mod training;

use std::f64::consts::PI;

use candle_core::{DType, Device, Tensor, Var};
pub use latflow_core::abi::TrainSettings;
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::Stream;
pub use latflow_flow_common::testing::{self, log_abs_det, max_abs_diff, settings};
use latflow_flow_common::{tensor_from_f64, tensor_to_f64};

use crate::geometry::{wrap_pi, Geometry, PLAQ_SIGNS};
use crate::FlowU1;

/// Round trips and identities that hold to rounding in f64.
pub const ATOL: f64 = 1e-10;
/// Comparisons against a numerical (finite-difference) reference.
pub const ATOL_RELAXED: f64 = 1e-6;
/// The fused ops against the generic formulation (f64).
pub const ATOL_FUSED: f64 = 1e-12;

/// The u1 theory's layout: one Angle per Link, named "links".
pub fn layout(shape: &[usize]) -> FieldLayout {
    FieldLayout::single(shape, "links", Support::Link, ElementKind::Angle)
}

pub fn model(json: &str, shape: &[usize]) -> FlowU1 {
    FlowU1::from_json(json, &layout(shape)).unwrap_or_else(|e| panic!("{json} on {shape:?}: {e}"))
}

/// flow-common's `testing::randomize` on the model's parameters.
pub fn randomize(m: &FlowU1, amp: f64, seed: u64) {
    latflow_flow_common::testing::randomize(&m.flow().net, amp, seed);
}

/// Uniform angles in [0, 2π).
pub fn angles(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed, 7);
    (0..n).map(|_| 2.0 * PI * s.uniform()).collect()
}

/// The Wilson action S = −β Σ_x cos P(x) and ∂S/∂θ on the host, per configuration
/// (∂S/∂θ_l = β Σ_{x: l ∈ P(x)} ±sin P(x)).
pub fn wilson_host(geom: &Geometry, links: &[f64], beta: f64) -> (Vec<f64>, Vec<f64>) {
    let w = geom.n_links();
    let mut s = Vec::new();
    let mut g = vec![0.0; links.len()];
    for (c, cfg) in links.chunks(w).enumerate() {
        let p = geom.plaquettes(cfg);
        s.push(-beta * p.iter().map(|x| x.cos()).sum::<f64>());
        for (x, pl) in geom.plaq_links.iter().enumerate() {
            let sp = beta * p[x].sin();
            for j in 0..4 {
                g[c * w + pl[j] as usize] += PLAQ_SIGNS[j] * sp;
            }
        }
    }
    (s, g)
}

/// The Wilson action written in candle on links `[B, 2V]` → `[B]`.
pub fn wilson_candle(links: &Tensor, geom: &Geometry, beta: f64) -> candle_core::Result<Tensor> {
    let (b, _) = links.dims2()?;
    let v = geom.volume;
    let idx: Vec<u32> = geom.plaq_links.iter().flatten().copied().collect();
    let idx = Tensor::from_vec(idx, 4 * v, links.device())?;
    let signs = tensor_from_f64(&PLAQ_SIGNS, 4, links.dtype(), links.device())?;
    let p = links.contiguous()?.index_select(&idx, 1)?.reshape((b, v, 4))?.broadcast_mul(&signs)?.sum(2)?;
    p.cos()?.sum(1)?.affine(-beta, 0.0)
}

/// S and ∂S/∂θ of the Wilson action by candle autograd (f64).
pub fn wilson_autograd(geom: &Geometry, links: &[f64], beta: f64) -> (Vec<f64>, Vec<f64>) {
    let w = geom.n_links();
    let n = links.len() / w;
    let leaf = Var::from_tensor(&tensor_from_f64(links, (n, w), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let s = wilson_candle(leaf.as_tensor(), geom, beta).unwrap();
    let g = s.sum_all().unwrap().backward().unwrap();
    (tensor_to_f64(&s).unwrap(), tensor_to_f64(g.get(leaf.as_tensor()).unwrap()).unwrap())
}

/// A random gauge transformation α(x) per site applied to links: θ_μ(x) + α(x) − α(x + μ̂).
pub fn gauge_transform(geom: &Geometry, links: &[f64], alpha: &[f64]) -> Vec<f64> {
    let w = geom.n_links();
    let [l0, l1] = geom.shape;
    let mut out = links.to_vec();
    for cfg in out.chunks_mut(w) {
        for x in 0..geom.volume {
            let (x0, x1) = (x / l1, x % l1);
            let fwd = [((x0 + 1) % l0) * l1 + x1, x0 * l1 + (x1 + 1) % l1];
            for mu in 0..2 {
                cfg[2 * x + mu] += alpha[x] - alpha[fwd[mu]];
            }
        }
    }
    out
}

/// The largest distance between angles on the circle.
pub fn max_circle_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| wrap_pi(x - y).abs()).fold(0.0, f64::max)
}
