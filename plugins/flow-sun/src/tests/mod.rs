//! flow-sun's unit tests: the flow's mathematics (round trip, dense Jacobian, equivariance,
//! Haar prior), gradients, configuration errors and the model contract.

mod config_tests;
mod contract;
mod math;

use candle_core::{Tensor, Var};
use latflow_core::gauge::Matrix;
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::Stream;
use latflow_flow_common::tensor_to_f64;

use crate::ctensor::CM;
use crate::FlowSun;

/// The sun theory's layout: N×N complex matrices per link.
pub fn layout(shape: &[usize], n: u32) -> FieldLayout {
    FieldLayout::single(shape, "links", Support::Link, ElementKind::complex_matrix(n))
}

/// A model from a `[model]` JSON section.
pub fn model(json: &str, shape: &[usize], n: u32) -> FlowSun {
    FlowSun::from_json(json, &layout(shape, n)).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// Gives every parameter uniform values in ±amp (a non-trivial flow to test).
pub fn randomize(m: &FlowSun, amp: f64, seed: u64) {
    latflow_flow_common::testing::randomize(&m.flow().net, amp, seed);
}

/// `count` Haar-random SU(n) links as flat reals.
pub fn haar(count: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Stream::new(seed, 7);
    let per = 2 * n * n;
    let mut out = vec![0.0; count * per];
    for link in out.chunks_exact_mut(per) {
        match n {
            2 => Matrix::<2>::random_haar(&mut rng).write_reals(link),
            _ => Matrix::<3>::random_haar(&mut rng).write_reals(link),
        }
    }
    out
}

/// Applies `f` to every link (as Matrix<N>) of a flat buffer, with the link's index.
pub fn map_links<const N: usize>(x: &[f64], mut f: impl FnMut(usize, Matrix<N>) -> Matrix<N>) -> Vec<f64> {
    let per = 2 * N * N;
    let mut out = x.to_vec();
    for (i, link) in out.chunks_exact_mut(per).enumerate() {
        f(i, Matrix::<N>::from_reals(link)).write_reals(link);
    }
    out
}

/// The Wilson action S = −(β/N) Σ_x Σ_{μ<ν} Re Tr P_μν(x) of a batch of flat configurations `[B, W]` on
/// `shape`, with candle ops (its autograd gives the ambient gradient ∂S/∂(Re U, Im U)).
pub fn wilson_candle(m: &FlowSun, flat: &Tensor, beta: f64) -> candle_core::Result<Tensor> {
    let flow = m.flow();
    let n = flow.n();
    let links = flow.links(flat)?;
    let col = |j: usize| -> candle_core::Result<CM> {
        let idx: Vec<u32> = flow.geom.plaq_links.iter().flatten().map(|p| p[j]).collect();
        let len = idx.len();
        let idx = Tensor::from_vec(idx, len, flat.device())?;
        Ok(CM::new(links.t.index_select(&idx, 1)?, n))
    };
    let p = col(0)?.matmul(&col(1)?)?.matmul_adj(&col(2)?, false, true)?.matmul_adj(&col(3)?, false, true)?;
    p.trace()?.re.sum(1)?.affine(-beta / n as f64, 0.0)
}

/// (S, ∂S/∂(Re U, Im U)) of flat configurations, in f64.
pub fn wilson(m: &FlowSun, x: &[f64], beta: f64) -> (Vec<f64>, Vec<f64>) {
    let w = m.width();
    let b = x.len() / w;
    let v = Var::from_tensor(&Tensor::from_vec(x.to_vec(), (b, w), &candle_core::Device::Cpu).unwrap()).unwrap();
    let s = wilson_candle(m, v.as_tensor(), beta).unwrap();
    let g = s.sum_all().unwrap().backward().unwrap();
    (tensor_to_f64(&s).unwrap(), tensor_to_f64(g.get(v.as_tensor()).unwrap()).unwrap())
}

/// max over links of the Frobenius distance of two flat buffers' entries.
pub fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}
