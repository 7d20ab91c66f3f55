//! The affine coupling flow on candle tensors.
//!
//! Fields are `[B, V]` tensors in checkerboard order (see [`crate::geometry`]). Layer ℓ has
//! parity p = ℓ mod 2 and updates the sites of parity p (the peer's `m = checker(p)`, frozen =
//! m·x):
//!
//! ```text
//! (s, t) = tanh(CNN(frozen))            on the active sites
//! x'_active = x_active · e^s + t,       log J = Σ_active s
//! x_active  = (x'_active − t) · e^{−s}  (inverse), log J⁻¹ = −Σ_active s
//! ```
//!
//! With `coupling = "spline"` the last convolution outputs 3K − 1 raw spline parameters per
//! active site (no tanh) and the active values go through monotone rational-quadratic splines
//! instead ([`crate::spline`], candle ops, autograd backward); log J = Σ_active ln dy/dx.
//!
//! The CNN is `len(hidden) + 1` periodic convolutions (kernel k, any dimension) with the
//! activation between them. Its input is the frozen field with zeros on the active sites, as
//! in the peer; its last convolution is evaluated on the active sites only.
//!
//! Parameters are candle `Var`s named `layers.{ℓ}.conv{j}.weight` (`[k, …, k, C_in, C_out]`,
//! d kernel axes) and `layers.{ℓ}.conv{j}.bias` (`[C_out]`), kept in that order.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use latflow_flow_common::tensor::ColumnGather;

use crate::config::{
    conditioner_outputs, Architecture, Coupling, PriorKind, DEFAULT_SPLINE_BINS, DEFAULT_SPLINE_BOUND, Z2,
};
use crate::geometry::{Geometry, Outputs, Source};
use crate::kernels::{self, Act, Table};
use crate::prior::Prior;
use crate::spline;
pub use latflow_flow_common::net::{ConvNet, Gather};
pub use latflow_flow_common::{tensor_from_f64, tensor_to_f64};

/// The random stream of weight initialisation (`init_seed` is its run seed), from the core
/// stream registry.
pub const INIT_STREAM: u64 = latflow_core::streams::Purpose::ModelInit.id(0, 0, 0);

pub use latflow_flow_common::tensor::NamedVar;

/// The flow: geometry, gather tables, parameters and prior.
#[derive(Debug)]
pub struct Flow {
    pub arch: Architecture,
    pub geom: Geometry,
    /// The conditioners' parameters, device, dtype and formulation.
    pub net: ConvNet,
    /// `tables[j][p]`: gather table of convolution j in a layer of parity p (generic path).
    tables: Vec<[ColumnGather; 2]>,
    /// The same tables for the fused CPU kernels.
    ktables: Vec<[Arc<Table>; 2]>,
    pub prior: Prior,
}

impl Flow {
    /// Builds the flow with PyTorch's default convolution initialisation (kaiming-uniform with
    /// a = √5: weights and biases U(−1/√fan_in, 1/√fan_in), fan_in = C_in·k^d), drawn in f64
    /// from the stream (`init_seed`, [`INIT_STREAM`]) layer by layer, convolution by
    /// convolution, weights (in storage order) before biases, then rounded to the dtype.
    pub fn new(arch: &Architecture, device: &Device, init_seed: u64) -> candle_core::Result<Self> {
        let lattice = latflow_core::Lattice::new(&arch.lattice.iter().map(|&l| l as i64).collect::<Vec<_>>())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let geom = Geometry::new(&lattice, arch.kernel);
        let mut sizes = vec![1usize];
        sizes.extend(&arch.hidden);
        sizes.push(conditioner_outputs(arch));
        let channels: Vec<(usize, usize)> = sizes.windows(2).map(|w| (w[0], w[1])).collect();
        let n = channels.len();
        let kvol = geom.kvol();
        let mut tables = Vec::with_capacity(n);
        let mut ktables = Vec::with_capacity(n);
        for j in 0..n {
            let source = if j == 0 { Source::FrozenPadded } else { Source::Full };
            let outputs = if j == n - 1 { Outputs::Active } else { Outputs::All };
            let n_in = if j == 0 { geom.half } else { geom.volume };
            let m = if j == n - 1 { geom.half } else { geom.volume };
            let mk = |p: usize| -> candle_core::Result<(ColumnGather, Arc<Table>)> {
                let t = geom.table(source, outputs, p);
                // the generic table's columns: the n_in inputs and the pad row
                Ok((ColumnGather::new(&t, n_in + 1, device)?, Arc::new(Table::new(t, m, kvol, n_in))))
            };
            let (t0, k0) = mk(0)?;
            let (t1, k1) = mk(1)?;
            tables.push([t0, t1]);
            ktables.push([k0, k1]);
        }
        let seed = (init_seed, INIT_STREAM);
        let net = ConvNet::new(arch.layers, arch.kernel, lattice.dim(), channels, arch.dtype.dtype(), device, seed)?;
        let prior = match arch.prior {
            PriorKind::Normal => Prior::normal(&geom),
            PriorKind::Free => Prior::free(&geom, arch.prior_m2.unwrap_or(1.0), device)?,
        };
        Ok(Self { arch: arch.clone(), geom, net, tables, ktables, prior })
    }

    pub fn volume(&self) -> usize {
        self.geom.volume
    }

    /// The parameters as the flow uses them ([`ConvNet::params`]).
    pub fn params(&self, track: bool) -> candle_core::Result<Vec<Tensor>> {
        self.net.params(track)
    }

    /// tanh(CNN(frozen)) of layer `l` on its active sites: `[B, H, 2]` holding (s, t) (affine),
    /// or CNN(frozen) `[B, H, 3K − 1]`, the raw spline parameters (spline).
    pub(crate) fn conditioner(&self, frozen: &Tensor, l: usize, params: &[Tensor]) -> candle_core::Result<Tensor> {
        let p = l % 2;
        let x = frozen.reshape((frozen.dim(0)?, self.geom.half, 1))?;
        let layer = self.net.layer(params, l);
        let last = if self.arch.coupling == Coupling::Spline { Act::Identity } else { Act::Tanh };
        let (fused, generic) = (|j: usize| &self.ktables[j][p], |j: usize| &self.tables[j][p]);
        let gather = if self.net.fused() { Gather::Fused(&fused) } else { Gather::Generic(&generic) };
        self.net.stack(&x, layer, gather, self.arch.activation, None, last)
    }

    /// The Z₂-equivariant conditioner: (s, t) = (½(n_s(x) + n_s(−x)), ½(n_t(x) − n_t(−x))), from
    /// one pass over the batch [x; −x]. With s even and t odd in the frozen half x, the affine
    /// layer maps −φ to −f(φ) with the same log-determinant.
    fn equivariant_conditioner(&self, frozen: &Tensor, l: usize, params: &[Tensor]) -> candle_core::Result<Tensor> {
        let b = frozen.dim(0)?;
        let both = self.conditioner(&Tensor::cat(&[frozen, &frozen.neg()?], 0)?, l, params)?;
        let plus = both.narrow(0, 0, b)?;
        let minus = both.narrow(0, b, b)?;
        let sign = Tensor::new(&[0.5f64, -0.5], &self.net.device)?.to_dtype(self.net.dtype)?.reshape((1, 1, 2))?;
        plus.affine(0.5, 0.0)?.add(&minus.broadcast_mul(&sign)?)?.contiguous()
    }

    /// The update of the active half from the conditioner's output `st` (affine: (s, t);
    /// spline: the raw spline parameters), and its log-determinant.
    fn couple(&self, x: &Tensor, st: &Tensor, inverse: bool) -> candle_core::Result<(Tensor, Tensor)> {
        if self.arch.coupling == Coupling::Spline {
            let (k, bound) = self.spline_shape();
            return spline::apply(x, st, k, bound, inverse);
        }
        if self.net.fused() {
            let y = if inverse { kernels::uncouple(x, st)? } else { kernels::couple(x, st)? };
            return Ok((y, kernels::sum_s(st, inverse)?));
        }
        let (b, h, _) = st.dims3()?;
        let s = st.narrow(2, 0, 1)?.reshape((b, h))?;
        let t = st.narrow(2, 1, 1)?.reshape((b, h))?;
        if inverse {
            Ok((x.sub(&t)?.mul(&s.neg()?.exp()?)?, s.sum(1)?.neg()?))
        } else {
            Ok((x.mul(&s.exp()?)?.add(&t)?, s.sum(1)?))
        }
    }

    /// (K, B) of the spline couplings.
    pub fn spline_shape(&self) -> (usize, f64) {
        (self.arch.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS), self.arch.spline_bound.unwrap_or(DEFAULT_SPLINE_BOUND))
    }

    fn split(&self, x: &Tensor) -> candle_core::Result<[Tensor; 2]> {
        let h = self.geom.half;
        Ok([x.narrow(1, 0, h)?.contiguous()?, x.narrow(1, h, h)?.contiguous()?])
    }

    /// Coupling layer `l` on a field held as its even and odd halves; returns log J (or log J⁻¹).
    pub fn layer(
        &self,
        halves: &mut [Tensor; 2],
        l: usize,
        params: &[Tensor],
        inverse: bool,
    ) -> candle_core::Result<Tensor> {
        let p = l % 2;
        let st = if self.arch.z2 == Z2::Equivariant {
            self.equivariant_conditioner(&halves[1 - p], l, params)?
        } else {
            self.conditioner(&halves[1 - p], l, params)?
        };
        let (y, ld) = self.couple(&halves[p], &st, inverse)?;
        halves[p] = y;
        Ok(ld)
    }

    /// Coupling layer `l` forward on a `[B, V]` field: (x', log J).
    pub fn layer_forward(&self, x: &Tensor, l: usize, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut halves = self.split(x)?;
        let ld = self.layer(&mut halves, l, params, false)?;
        Ok((Tensor::cat(&halves, 1)?, ld))
    }

    /// Coupling layer `l` inverse on a `[B, V]` field: (x, log J⁻¹) with log J⁻¹ = −log J.
    pub fn layer_inverse(&self, y: &Tensor, l: usize, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut halves = self.split(y)?;
        let ld = self.layer(&mut halves, l, params, true)?;
        Ok((Tensor::cat(&halves, 1)?, ld))
    }

    /// The whole flow, z → φ, with Σ log J per configuration ([B]).
    pub fn forward(&self, z: &Tensor, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut halves = self.split(z)?;
        let mut lds = Vec::with_capacity(self.arch.layers);
        for l in 0..self.arch.layers {
            lds.push(self.layer(&mut halves, l, params, false)?);
        }
        Ok((Tensor::cat(&halves, 1)?, Tensor::stack(&lds, 1)?.sum(1)?))
    }

    /// log q(φ) in f64 from an inverse pass's (z, log|det ∂z/∂φ|): the prior's log density of z
    /// (in f64) plus the log-determinant.
    pub fn log_q_host(&self, z: &Tensor, ld_inv: &Tensor) -> candle_core::Result<Vec<f64>> {
        let lq0 = self.prior.log_prob_host(&tensor_to_f64(z)?);
        Ok(lq0.iter().zip(&tensor_to_f64(ld_inv)?).map(|(a, b)| a + b).collect())
    }

    /// The inverse flow, φ → z, with Σ log J⁻¹ per configuration ([B]).
    pub fn inverse(&self, phi: &Tensor, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut halves = self.split(phi)?;
        let mut lds = Vec::with_capacity(self.arch.layers);
        for l in (0..self.arch.layers).rev() {
            lds.push(self.layer(&mut halves, l, params, true)?);
        }
        Ok((Tensor::cat(&halves, 1)?, Tensor::stack(&lds, 1)?.sum(1)?))
    }
}
