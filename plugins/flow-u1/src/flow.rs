//! The gauge-equivariant coupling flow on candle tensors.
//!
//! The flow's state is one `[B, 2V + 1]` tensor: the link angles in the layout's order
//! (θ_μ(x) at column `2x + μ`) and, in the last column, the log-determinant accumulated over the
//! layers applied so far. Layer ℓ (mask (μ, o) = (ℓ mod 2, ⌊ℓ/2⌋ mod p), see
//! [`crate::geometry`]) does
//!
//! ```text
//! raw = CNN(cos P, sin P on the frozen plaquettes; (1, 0) elsewhere)     on the active plaquettes
//! P_a′ = h_raw(P_a)                                                      every active plaquette a
//! θ_μ(x_a) ← θ_μ(x_a) + σ_μ (P_a′ − P_a)   wrapped into [0, 2π),    log J += Σ_a ln h′(P_a)
//! ```
//!
//! with h an NCP mixture ([`crate::ncp`]) or a circular spline ([`crate::spline`]); the inverse
//! layer solves for P_a and subtracts. The CNN is `len(hidden) + 1` periodic convolutions
//! (kernel k, 2 → hidden … → outputs, the activation between them, none after the last), the
//! peer's `Conv2d(…, padding_mode="circular")` stack; each convolution is evaluated only on the
//! sites that the next one reads (the last one on the active plaquettes).
//!
//! Two formulations compute the same function (tested to 1e-12 in f64, gradients included):
//! the fused CPU ops ([`crate::ops`] and `latflow_flow_common::kernels::conv`; the default on
//! the CPU), and the generic one with candle ops (column gathers, `ColumnGather`, as im2col +
//! matmul for the convolutions, for the plaquettes and for spreading link updates), which runs on
//! every device. The spline coupling gathers plaquettes and updates links with candle ops and
//! maps them with latflow-flow-common's spline op (fused on the CPU); the NCP inverse is solved on the CPU (on other devices its inputs are copied to the
//! host and back), and when its inputs carry a gradient (path gradients) the solution enters the
//! graph by implicit differentiation ([`Flow::ncp_inverse_tracked`]).
//!
//! Parameters are candle `Var`s named `layers.{ℓ}.conv{j}.weight` (`[k, k, C_in, C_out]`,
//! torch's `W[c_out, c_in, k0, k1]` permuted) and `layers.{ℓ}.conv{j}.bias` (`[C_out]`), kept in
//! that order.

use std::f64::consts::PI;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use latflow_flow_common::kernels::{Act, Table};
use latflow_flow_common::tensor::ColumnGather;
use latflow_flow_common::tensor_from_f64;

use crate::config::{channels, Architecture, Coupling, DEFAULT_N_MIX, DEFAULT_SPLINE_BINS};
use crate::geometry::{Geometry, Mask, PLAQ_SIGNS};
use crate::ops::{self, OpGeom};
use crate::{ncp, spline};

/// The random stream of weight initialisation (`init_seed` is its run seed), from the core
/// stream registry.
pub const INIT_STREAM: u64 = latflow_core::streams::Purpose::ModelInit.id(0, 0, 0);

/// The conditioner's input on non-frozen plaquettes: (cos 0, sin 0), as the peer's masked input.
pub const PAD_FEATURES: [f64; 2] = [1.0, 0.0];

pub use latflow_flow_common::net::{ConvNet, Gather};
pub use latflow_flow_common::tensor::NamedVar;

/// One mask's index tables, for both formulations.
#[derive(Debug)]
pub struct MaskData {
    pub mask: Mask,
    op: Arc<OpGeom>,
    ktables: Vec<Arc<Table>>,
    gtables: Vec<ColumnGather>,
    /// Gathers the link indices of the frozen plaquettes, `[N_frozen · 4]`, from a state.
    frozen_idx: ColumnGather,
    /// Gathers the link indices of the active plaquettes, `[N_active · 4]`.
    active_idx: ColumnGather,
    /// Gathers the active links, `[N_active]`.
    active_links: ColumnGather,
    /// Spreads an update `[B, N_active + 1]` (the active links' changes, then the log-det
    /// column's) over a state's 2V + 1 columns: column c takes the update aimed at it, or the
    /// zero column N_active + 1 appended to the update.
    spread: ColumnGather,
}

/// The flow: geometry, masks, parameters.
#[derive(Debug)]
pub struct Flow {
    pub arch: Architecture,
    pub geom: Geometry,
    /// The conditioners' parameters, device, dtype and formulation.
    pub net: ConvNet,
    /// Per distinct mask (index [`Geometry::mask_index`]); built for the masks that layers use.
    masks: Vec<Option<MaskData>>,
    /// The plaquette signs `[1, 1, −1, −1]` in the dtype.
    signs: Tensor,
}

impl Flow {
    /// Builds the flow with PyTorch's default convolution initialisation (kaiming-uniform with
    /// a = √5: weights and biases U(−1/√fan_in, 1/√fan_in), fan_in = C_in·k²), drawn in f64 from
    /// the stream (`init_seed`, [`INIT_STREAM`]) layer by layer, convolution by convolution,
    /// weights (in storage order) before biases, then rounded to the dtype.
    pub fn new(arch: &Architecture, device: &Device, init_seed: u64) -> candle_core::Result<Self> {
        let geom = Geometry::new([arch.lattice[0], arch.lattice[1]], arch.mask_period);
        let dtype = arch.dtype.dtype();
        let channels = channels(arch);
        let n_conv = channels.len();
        let masks = geom.per_mask(arch.layers, arch.kernel, n_conv, |mask| -> candle_core::Result<MaskData> {
            let mu = mask.mu;
            let plaqs = |sites: &[usize]| -> Vec<[u32; 4]> { sites.iter().map(|&x| geom.plaq_links[x]).collect() };
            let active_links: Vec<u32> = mask.active.iter().map(|&x| (2 * x + mu) as u32).collect();
            let op = Arc::new(OpGeom {
                n_links: geom.n_links(),
                frozen: plaqs(&mask.frozen),
                active: plaqs(&mask.active),
                active_links: active_links.clone(),
                sigma: mask.sigma,
            });
            let flat = |p: &[[u32; 4]]| p.iter().flatten().copied().collect::<Vec<u32>>();
            let width = geom.n_links() + 1;
            let mut spread = vec![active_links.len() as u32 + 1; width];
            for (j, &l) in active_links.iter().enumerate() {
                spread[l as usize] = j as u32;
            }
            spread[geom.n_links()] = active_links.len() as u32;
            Ok(MaskData {
                ktables: geom.tables(&mask, arch.kernel),
                gtables: geom.gather_tables(&mask, arch.kernel, device)?,
                frozen_idx: ColumnGather::new(&flat(&op.frozen), width, device)?,
                active_idx: ColumnGather::new(&flat(&op.active), width, device)?,
                active_links: ColumnGather::new(&active_links, width, device)?,
                spread: ColumnGather::new(&spread, active_links.len() + 2, device)?,
                op,
                mask,
            })
        })?;
        let net = ConvNet::new(arch.layers, arch.kernel, 2, channels, dtype, device, (init_seed, INIT_STREAM))?;
        let signs = tensor_from_f64(&PLAQ_SIGNS, 4, dtype, device)?;
        Ok(Self { arch: arch.clone(), geom, net, masks, signs })
    }

    /// Number of sites V.
    pub fn volume(&self) -> usize {
        self.geom.volume
    }

    /// Number of links 2V (reals per configuration).
    pub fn n_links(&self) -> usize {
        self.geom.n_links()
    }

    /// The mask data of layer `l`.
    pub fn mask_data(&self, l: usize) -> &MaskData {
        self.masks[self.geom.mask_index(l)].as_ref().expect("masks of every layer are built")
    }

    /// The parameters as the flow uses them ([`ConvNet::params`]).
    pub fn params(&self, track: bool) -> candle_core::Result<Vec<Tensor>> {
        self.net.params(track)
    }

    fn n_mix(&self) -> usize {
        self.arch.n_mix.unwrap_or(DEFAULT_N_MIX)
    }

    fn spline_bins(&self) -> usize {
        self.arch.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS)
    }

    /// Plaquettes `[B, N]` at the plaquettes whose link indices are `idx` `[N·4]` (generic).
    fn plaquettes(&self, state: &Tensor, idx: &ColumnGather) -> candle_core::Result<Tensor> {
        let b = state.dim(0)?;
        let n = idx.len() / 4;
        idx.apply(state)?.reshape((b, n, 4))?.broadcast_mul(&self.signs)?.sum(2)
    }

    /// The conditioner of layer `l` on its active plaquettes: `[B, N_active, outputs]`.
    pub fn conditioner(&self, state: &Tensor, l: usize, params: &[Tensor]) -> candle_core::Result<Tensor> {
        let md = self.mask_data(l);
        let (layer, act) = (self.net.layer(params, l), self.arch.activation);
        let (fused, generic) = (|j: usize| &md.ktables[j], |j: usize| &md.gtables[j]);
        let (x, gather) = if md.mask.frozen.is_empty() {
            // mask_period = 2: no frozen stripe, every input is the padding
            let g = if self.net.fused() { Gather::Fused(&fused) } else { Gather::Generic(&generic) };
            (Tensor::zeros((state.dim(0)?, 0, 2), state.dtype(), state.device())?, g)
        } else if self.net.fused() {
            (ops::features(state, &md.op)?, Gather::Fused(&fused))
        } else {
            let p = self.plaquettes(state, &md.frozen_idx)?;
            (Tensor::stack(&[p.cos()?, p.sin()?], 2)?, Gather::Generic(&generic))
        };
        self.net.stack(&x, layer, gather, act, Some(&PAD_FEATURES), Act::Identity)
    }

    /// Adds σ·δ (`[B, N_active]`) to the active links, wrapped into [0, 2π), and `ld` (`[B]`) to
    /// the log-det column (generic formulation).
    fn update(&self, state: &Tensor, md: &MaskData, delta: &Tensor, ld: &Tensor) -> candle_core::Result<Tensor> {
        let old = md.active_links.apply(state)?;
        let new = old.add(&delta.affine(md.mask.sigma, 0.0)?)?;
        let wrapped = spline::wrap_2pi(&new)?;
        let zero = Tensor::zeros((state.dim(0)?, 1), state.dtype(), state.device())?;
        let source = Tensor::cat(&[&wrapped.sub(&old)?, &ld.unsqueeze(1)?, &zero], 1)?;
        state.add(&md.spread.apply(&source)?)
    }

    /// Coupling layer `l` on a state `[B, 2V + 1]` (see the module docs), or its inverse.
    pub fn layer(&self, state: &Tensor, l: usize, params: &[Tensor], inverse: bool) -> candle_core::Result<Tensor> {
        let md = self.mask_data(l);
        let raw = self.conditioner(state, l, params)?;
        match (self.arch.coupling, inverse) {
            (Coupling::Ncp, false) if self.net.fused() => ops::ncp_couple(state, &raw, &md.op, self.n_mix()),
            (Coupling::Ncp, false) => {
                let p = self.plaquettes(state, &md.active_idx)?;
                let p_w = p.sub(&p.affine(0.5 / PI, 0.0)?.round()?.affine(2.0 * PI, 0.0)?)?;
                let (delta, log_dh) = ncp::ncp_generic(&p_w, &raw, self.n_mix())?;
                self.update(state, md, &delta, &log_dh.sum(1)?)
            }
            (Coupling::Ncp, true) if (state.track_op() || raw.track_op()) && self.net.fused() => {
                ops::ncp_inverse_tracked(state, &raw, &md.op, self.n_mix())
            }
            (Coupling::Ncp, true) if state.track_op() || raw.track_op() => self.ncp_inverse_tracked(state, md, &raw),
            (Coupling::Ncp, true) => self.ncp_inverse_solved(state, &raw, md),
            (Coupling::Spline, inv) => {
                let p = self.plaquettes(state, &md.active_idx)?;
                let (delta, log_dh) = spline::coupling(&p, &raw, self.spline_bins(), inv)?;
                self.update(state, md, &delta, &log_dh.sum(1)?)
            }
        }
    }

    /// The inverse NCP layer by the solver (fused CPU op; on other devices through the host),
    /// without a gradient.
    fn ncp_inverse_solved(&self, state: &Tensor, raw: &Tensor, md: &MaskData) -> candle_core::Result<Tensor> {
        if self.net.device.is_cpu() {
            ops::ncp_inverse(state, raw, &md.op, self.n_mix())
        } else {
            let cpu = Device::Cpu;
            let s = ops::ncp_inverse(&state.to_device(&cpu)?, &raw.to_device(&cpu)?, &md.op, self.n_mix())?;
            s.to_device(&self.net.device)
        }
    }

    /// The inverse NCP layer with a gradient (implicit differentiation) in the generic
    /// formulation (any device; the fused CPU op [`ops::ncp_inverse_tracked`] has the same
    /// derivatives by hand, tested equal), for path gradients and any other use that
    /// differentiates log q or the latent point with respect to the links or the weights. The
    /// solver's root P₀ of H(P) = P′ (per active plaquette, detached) is
    /// carried into the graph by one Newton correction whose value is zero:
    ///
    /// ```text
    /// t  = −wrap(H(P₀) − P′) / stopgrad(H′(P₀)),     P* = P₀ + (t − stopgrad(t))
    /// ```
    ///
    /// so P* has P₀'s value and the implicit-function derivatives ∂P*/∂P′ = 1/H′(P₀) and
    /// ∂P*/∂raw = −(∂H/∂raw)/H′(P₀) (first derivatives exact, which is all a gradient of log q
    /// or of the links needs). The old link is θ′ + σ(P* − P′) and the log-det column gains
    /// −Σ ln H′(P*), both through the generic formulation ([`ncp::ncp_generic`]). Values agree
    /// with [`Flow::ncp_inverse_solved`] to rounding in the dtype (tested).
    fn ncp_inverse_tracked(&self, state: &Tensor, md: &MaskData, raw: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.n_mix();
        let two_pi = 2.0 * PI;
        let wrap_pi = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.sub(&x.affine(0.5 / PI, 0.0)?.round()?.affine(two_pi, 0.0)?.detach())
        };
        let p_new = self.plaquettes(state, &md.active_idx)?;
        let solved = self.ncp_inverse_solved(&state.detach(), &raw.detach(), md)?;
        let p0 = wrap_pi(&self.plaquettes(&solved, &md.active_idx)?)?.detach();
        let (d0, ld0) = ncp::ncp_generic(&p0, raw, n)?;
        let residual = wrap_pi(&p0.add(&d0)?.sub(&p_new)?)?;
        let t = residual.neg()?.div(&ld0.exp()?.detach())?;
        let p_star = p0.add(&t.sub(&t.detach())?)?;
        let (_, ld_star) = ncp::ncp_generic(&p_star, raw, n)?;
        self.update(state, md, &p_star.sub(&p_new)?, &ld_star.sum(1)?.neg()?)
    }

    /// The state `[B, 2V + 1]` of links `[B, 2V]` with a zero log-det column.
    pub fn state(&self, links: &Tensor) -> candle_core::Result<Tensor> {
        let b = links.dim(0)?;
        Tensor::cat(&[links, &Tensor::zeros((b, 1), links.dtype(), links.device())?], 1)
    }

    /// (links `[B, 2V]`, log-det `[B]`) of a state.
    pub fn split(&self, state: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let w = self.n_links();
        Ok((state.narrow(1, 0, w)?, state.narrow(1, w, 1)?.squeeze(1)?))
    }

    /// Coupling layer `l` forward on links `[B, 2V]`: (θ′, log J).
    pub fn layer_forward(&self, x: &Tensor, l: usize, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        self.split(&self.layer(&self.state(x)?, l, params, false)?)
    }

    /// Coupling layer `l` inverse on links `[B, 2V]`: (θ, log J⁻¹) with log J⁻¹ = −log J.
    pub fn layer_inverse(&self, y: &Tensor, l: usize, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        self.split(&self.layer(&self.state(y)?, l, params, true)?)
    }

    /// The whole flow, z → θ (links `[B, 2V]`), with Σ log J per configuration (`[B]`).
    pub fn forward(&self, z: &Tensor, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut s = self.state(z)?;
        for l in 0..self.arch.layers {
            s = self.layer(&s, l, params, false)?;
        }
        self.split(&s)
    }

    /// The inverse flow, θ → z, with Σ log J⁻¹ per configuration (`[B]`).
    pub fn inverse(&self, theta: &Tensor, params: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut s = self.state(theta)?;
        for l in (0..self.arch.layers).rev() {
            s = self.layer(&s, l, params, true)?;
        }
        self.split(&s)
    }
}
