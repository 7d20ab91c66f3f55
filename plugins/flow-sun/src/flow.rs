//! The gauge-equivariant coupling flow for SU(N) links on candle tensors.
//!
//! The links of a batch are a complex tensor `[B, D·V, N, N, 2]` ([`CM`]), U_μ(x) at row
//! `D·x + μ` (the layout's order). Layer ℓ uses the mask (μ, ν, o) of [`crate::geometry`], with
//! these roles:
//!
//! * **active links** U_μ(x), x_ν ≡ o (mod p): the only links that change;
//! * **active loops**: the plaquette of the (μ, ν) plane that starts with the active link,
//!   W = U_μ(x) S with the staple S = U_ν(x+μ̂) U_μ(x+ν̂)† U_ν(x)† (in 2D: W = P(x) for μ = 0,
//!   P(x)† for μ = 1). S contains no active link;
//! * **passive plaquettes**: contain an active link, change as a consequence, and neither
//!   condition the layer nor enter its Jacobian (it is block triangular);
//! * **frozen plaquettes** (all others): contain no active link, and condition the layer.
//!
//! A layer computes
//!
//! ```text
//! raw = CNN(Re Tr P/N [, Im Tr P/N] of every plane, on the frozen plaquettes; the identity's (1 [, 0]) elsewhere)
//! (R, ln J) = spectral coupling of W with parameters raw        (crate::spectral)
//! U_μ(x) ← R U_μ(x)        so that W ← R W = W′
//! ```
//!
//! and the inverse layer does the same with the inverse coupling (S is unchanged by the layer,
//! so W′ = U′ S is available). Since W ↦ U = W S† is a Haar-preserving bijection for fixed S,
//! the Jacobian of the link update with respect to the Haar measure is the coupling's. Under a
//! gauge transformation g, W → g(x) W g(x)†, the conditioner's inputs are invariant and R → g(x)
//! R g(x)†, so U′ → g(x) U′ g(x+μ̂)†: every layer is gauge equivariant with an invariant
//! log-determinant.
//!
//! Parameters are candle `Var`s named `layers.{ℓ}.conv{j}.weight` and `.bias`, as in flow-u1;
//! the convolutions are D-dimensional (kernel k^D).

use candle_core::{Device, Tensor};
use latflow_flow_common::kernels::{Act, Table};
use latflow_flow_common::net::{ConvNet, Gather};
use latflow_flow_common::tensor::ColumnGather;
use std::sync::Arc;

use crate::config::{channels, input_channels, Architecture};
use crate::ctensor::CM;
use crate::geometry::{Geometry, Mask};
use crate::spectral;

/// The random stream of weight initialisation (`init_seed` is its run seed).
pub const INIT_STREAM: u64 = latflow_core::streams::Purpose::ModelInit.id(0, 0, 0);

/// One plane's conditioner input: the four links P = L0 L1 L2† L3† of its plaquette at each
/// input row, `[R]` each, and where not every row's plaquette is frozen, the frozen ones (`[R]`,
/// u8).
#[derive(Debug)]
struct PlaneInput {
    links: [Tensor; 4],
    frozen: Option<Tensor>,
}

/// One mask's index tables.
#[derive(Debug)]
pub struct MaskData {
    pub mask: Mask,
    ktables: Vec<Arc<Table>>,
    gtables: Vec<ColumnGather>,
    /// Per plane, the plaquettes read at the input rows.
    planes: Vec<PlaneInput>,
    /// The active links, `[N_active]`.
    active: Tensor,
    /// The staple S = A B† C† of each active link, `[N_active]` each.
    staple: [Tensor; 3],
}

/// The flow: geometry, masks, parameters.
#[derive(Debug)]
pub struct Flow {
    pub arch: Architecture,
    pub geom: Geometry,
    pub net: ConvNet,
    masks: Vec<Option<MaskData>>,
}

fn u32_tensor(v: Vec<u32>, device: &Device) -> candle_core::Result<Tensor> {
    let n = v.len();
    Tensor::from_vec(v, n, device)
}

/// Rows `idx` of a link batch `[B, D·V, N, N, 2]`.
fn gather(links: &CM, idx: &Tensor) -> candle_core::Result<CM> {
    Ok(CM::new(links.t.index_select(idx, 1)?, links.n))
}

impl Flow {
    /// Builds the flow with PyTorch's default convolution initialisation drawn from the stream
    /// (`init_seed`, [`INIT_STREAM`]), as flow-u1.
    pub fn new(arch: &Architecture, device: &Device, init_seed: u64) -> candle_core::Result<Self> {
        let geom = Geometry::new(&arch.lattice, arch.mask_period);
        let channels = channels(arch);
        let n_conv = channels.len();
        let d = geom.dim();
        let masks = geom.per_mask(arch.layers, arch.kernel, n_conv, |mask| -> candle_core::Result<MaskData> {
            let (mu, nu) = (mask.mu, mask.nu);
            let planes = (0..geom.planes.len())
                .map(|p| -> candle_core::Result<PlaneInput> {
                    let column = |j: usize| -> Vec<u32> { mask.rows.iter().map(|&x| geom.plaq_links[p][x][j]).collect() };
                    let [l0, l1, l2, l3] = [0, 1, 2, 3].map(|j| u32_tensor(column(j), device));
                    let frozen = if mask.plane_all_frozen(p) {
                        None
                    } else {
                        let f: Vec<u8> = mask.frozen[p].iter().map(|&f| f as u8).collect();
                        let n = f.len();
                        Some(Tensor::from_vec(f, n, device)?)
                    };
                    Ok(PlaneInput { links: [l0?, l1?, l2?, l3?], frozen })
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let link = |x: usize, dir: usize| (d * x + dir) as u32;
            let staple = |f: &dyn Fn(usize) -> u32| u32_tensor(mask.active.iter().map(|&x| f(x)).collect(), device);
            let s0 = staple(&|x| link(geom.step(x, mu), nu))?;
            let s1 = staple(&|x| link(geom.step(x, nu), mu))?;
            let s2 = staple(&|x| link(x, nu))?;
            let active: Vec<u32> = mask.active.iter().map(|&x| link(x, mu)).collect();
            Ok(MaskData {
                ktables: geom.tables(&mask, arch.kernel),
                gtables: geom.gather_tables(&mask, arch.kernel, device)?,
                planes,
                active: u32_tensor(active, device)?,
                staple: [s0, s1, s2],
                mask,
            })
        })?;
        let dtype = arch.dtype.dtype();
        let net = ConvNet::new(arch.layers, arch.kernel, d, channels, dtype, device, (init_seed, INIT_STREAM))?;
        Ok(Self { arch: arch.clone(), geom, net, masks })
    }

    /// N of SU(N).
    pub fn n(&self) -> usize {
        self.arch.n
    }

    /// Number of links D·V.
    pub fn n_links(&self) -> usize {
        self.geom.n_links()
    }

    /// Reals per configuration: D·V · 2N².
    pub fn width(&self) -> usize {
        self.n_links() * 2 * self.n() * self.n()
    }

    /// The mask data of layer `l`.
    pub fn mask_data(&self, l: usize) -> &MaskData {
        self.masks[self.geom.mask_index(l)].as_ref().expect("masks of every layer are built")
    }

    /// The parameters as the flow uses them ([`ConvNet::params`]).
    pub fn params(&self, track: bool) -> candle_core::Result<Vec<Tensor>> {
        self.net.params(track)
    }

    /// Flat configurations `[B, D·V·2N²]` as a link batch `[B, D·V, N, N, 2]` (a view).
    pub fn links(&self, flat: &Tensor) -> candle_core::Result<CM> {
        let (b, n) = (flat.dim(0)?, self.n());
        Ok(CM::new(flat.reshape((b, self.n_links(), n, n, 2))?, n))
    }

    /// A link batch as flat configurations `[B, D·V·2N²]`.
    pub fn flat(&self, links: &CM) -> candle_core::Result<Tensor> {
        let b = links.t.dim(0)?;
        links.t.reshape((b, self.width()))
    }

    /// The conditioner's input at the mask's rows `[B, R, C·planes]`: per plane, Re Tr P/N (and
    /// Im Tr P/N for SU(3)) of the frozen plaquettes, the identity's values (1, 0) elsewhere.
    fn features(&self, links: &CM, md: &MaskData) -> candle_core::Result<Tensor> {
        let n = self.n();
        let b = links.t.dim(0)?;
        let channels = input_channels(n) * md.planes.len();
        if md.mask.rows.is_empty() {
            return Tensor::zeros((b, 0, channels), links.t.dtype(), links.t.device());
        }
        let mut out = Vec::with_capacity(channels);
        for plane in &md.planes {
            let [l0, l1, l2, l3] = &plane.links;
            let p = gather(links, l0)?.matmul(&gather(links, l1)?)?.matmul_adj(&gather(links, l2)?, false, true)?;
            let p = p.matmul_adj(&gather(links, l3)?, false, true)?;
            let t = p.trace()?.scale(1.0 / n as f64)?;
            let mut parts = vec![t.re];
            if n != 2 {
                parts.push(t.im);
            }
            if let Some(frozen) = &plane.frozen {
                let mask = frozen.unsqueeze(0)?.broadcast_as(parts[0].shape())?;
                let one = Tensor::ones_like(&parts[0])?;
                let zero = Tensor::zeros_like(&parts[0])?;
                parts = parts
                    .iter()
                    .enumerate()
                    .map(|(i, v)| mask.where_cond(v, if i == 0 { &one } else { &zero }))
                    .collect::<candle_core::Result<_>>()?;
            }
            out.extend(parts);
        }
        if out.len() == 1 {
            out[0].unsqueeze(2)
        } else {
            Tensor::stack(&out, 2)
        }
    }

    /// The conditioner of layer `l` on its active loops: `[B, N_active, (N − 1)(3K + 1)]`.
    pub fn conditioner(&self, links: &CM, l: usize, params: &[Tensor]) -> candle_core::Result<Tensor> {
        let md = self.mask_data(l);
        let (layer, act) = (self.net.layer(params, l), self.arch.activation);
        let x = self.features(links, md)?;
        let identity: &[f64] = if input_channels(self.n()) == 1 { &[1.0] } else { &[1.0, 0.0] };
        let pad = identity.repeat(md.planes.len());
        let (fused, generic) = (|j: usize| &md.ktables[j], |j: usize| &md.gtables[j]);
        let gather = if self.net.fused() { Gather::Fused(&fused) } else { Gather::Generic(&generic) };
        self.net.stack(&x, layer, gather, act, Some(&pad), Act::Identity)
    }

    /// The active links and their loops W = U S of layer `l`.
    fn active_loops(&self, links: &CM, md: &MaskData) -> candle_core::Result<(CM, CM)> {
        let u = gather(links, &md.active)?;
        let [a, b, c] = &md.staple;
        let s = gather(links, a)?.matmul_adj(&gather(links, b)?, false, true)?.matmul_adj(
            &gather(links, c)?,
            false,
            true,
        )?;
        let w = u.matmul(&s)?;
        Ok((u, w))
    }

    /// Coupling layer `l` (or its inverse) on links `[B, D·V, N, N]`: the new links and ln|J|
    /// per configuration `[B]`.
    pub fn layer(&self, links: &CM, l: usize, params: &[Tensor], inverse: bool) -> candle_core::Result<(CM, Tensor)> {
        let md = self.mask_data(l);
        let raw = self.conditioner(links, l, params)?;
        let (u, w) = self.active_loops(links, md)?;
        let (r, ld) = spectral::couple(&w, &raw, self.n(), self.arch.spline_bins, inverse)?;
        let delta = r.matmul(&u)?.t.sub(&u.t)?;
        let new = CM::new(links.t.index_add(&md.active, &delta, 1)?, links.n);
        Ok((new, ld.sum(1)?))
    }

    /// The whole flow z → U with Σ ln J per configuration `[B]`.
    pub fn forward(&self, z: &CM, params: &[Tensor]) -> candle_core::Result<(CM, Tensor)> {
        self.run(z, params, false)
    }

    /// The inverse flow U → z with Σ ln J⁻¹ per configuration `[B]` (= −ln J of the forward
    /// map at z).
    pub fn inverse(&self, u: &CM, params: &[Tensor]) -> candle_core::Result<(CM, Tensor)> {
        self.run(u, params, true)
    }

    fn run(&self, x: &CM, params: &[Tensor], inverse: bool) -> candle_core::Result<(CM, Tensor)> {
        let b = x.t.dim(0)?;
        let mut ld = Tensor::zeros(b, x.t.dtype(), x.t.device())?;
        let mut links = x.clone();
        let order: Vec<usize> =
            if inverse { (0..self.arch.layers).rev().collect() } else { (0..self.arch.layers).collect() };
        for l in order {
            let (next, d) = self.layer(&links, l, params, inverse)?;
            // a non-finite log-determinant names its layer (a NaN in the links shows up here too)
            let total: f64 = d.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar()?;
            if !total.is_finite() {
                candle_core::bail!(
                    "flow-sun layer {l}{}: non-finite log-determinant ({total}); a loop on an eigenvalue \
                     degeneracy, links off the group, or diverged weights",
                    if inverse { " (inverse)" } else { "" }
                );
            }
            links = next;
            ld = ld.add(&d)?;
        }
        Ok((links, ld))
    }
}
