//! Links, plaquettes and the stripe masks of the 2D gauge coupling layers (flow-u1 and
//! flow-sun), with the U(1) angle conventions; flow-sun reads the same masks with matrix links
//! (an active link's loop is the plaquette that starts with it, see its `flow` module).
//!
//! **Links.** A configuration is the flat buffer of the theory's layout: θ_μ(x) at index
//! `2·x + μ`, sites x row-major over `[L_0, L_1]` (last axis fastest), μ = 0, 1 — the
//! `[site][mu]` order of `latflow_core::layout` (the PyTorch peer stores `[mu][x0][x1]`).
//!
//! **Plaquettes.** P(x) = θ_0(x) + θ_1(x + 0̂) − θ_0(x + 1̂) − θ_1(x), one per site: the peer's
//! `links[:, 0] + roll(links[:, 1], −1, 1) − roll(links[:, 0], −1, 2) − links[:, 1]`. P is gauge
//! invariant: under θ_μ(x) → θ_μ(x) + α(x) − α(x + μ̂) the four α terms cancel.
//!
//! **Masks** (Kanwar et al., PRL 125, 121601 (2020); the peer's `link_mask` and `stripes`).
//! Coupling layer i updates direction μ = i mod 2 with stripe offset o = ⌊i/2⌋ mod p (p =
//! `mask_period`, 4 by default). Write c(x) = x_{1−μ} for the coordinate across the stripes.
//!
//! * **Active links**: θ_μ(x) with c(x) ≡ o (mod p). These and only these change.
//! * **Active plaquettes**: P(x) with c(x) ≡ o. Each contains exactly one active link, θ_μ(x),
//!   with sign σ_μ (σ_0 = +1, σ_1 = −1), so setting θ_μ(x) ← θ_μ(x) + σ_μ (P′ − P) turns P(x)
//!   into P′ = h(P), the circle map of the layer.
//! * **Passive plaquettes**: c(x) ≡ o − 1. The only other plaquette that contains θ_μ(x) is
//!   P(x − ê_{1−μ}), with the opposite sign; it changes by −(P′ − P) as a consequence, is
//!   neither an input nor a transformed variable, and does not enter the log-determinant (in
//!   the variables (active P, everything else) the Jacobian is triangular).
//! * **Frozen plaquettes**: all others, c(x) ≡ o + 1, …, o + p − 2 (two stripes for p = 4).
//!   They contain no active link, so they are unchanged, and they condition the layer: the CNN
//!   reads (cos P, sin P) on frozen plaquettes and the constant (1, 0) elsewhere — the peer's
//!   `cos(mask·P)`, `sin(mask·P)` — so that the map of an active plaquette depends on the
//!   gauge-invariant frozen data only.
//!
//! Because the conditioner sees plaquettes only and the update adds a gauge-invariant amount
//! to each active link, every layer is gauge equivariant: flow(g·θ) = g·flow(θ), with the same
//! log-determinant. The layer's Jacobian is block triangular with the active links' block
//! diagonal, entries 1 + σ_μ (h′ − 1) σ_μ = h′(P), so log J = Σ_active ln h′(P).
//!
//! **Convolution sites.** The CNN's last convolution is only needed on the active plaquettes;
//! each earlier convolution only on the sites within kernel reach of the next one's outputs
//! ([`crate::periodic::dilate`]). At L = 8, p = 4, k = 3 with two hidden layers
//! that is 64, 48 and 16 output sites instead of 3 × 64: the same function for less work.

use std::f64::consts::PI;
use std::sync::Arc;

use candle_core::Device;

use crate::kernels::Table;
use crate::periodic;
use crate::tensor::ColumnGather;

/// The sign of the active link θ_μ(x) in P(x): +1 for μ = 0, −1 for μ = 1.
pub fn sigma(mu: usize) -> f64 {
    if mu == 0 {
        1.0
    } else {
        -1.0
    }
}

/// Signs of the four links of a plaquette, in the order of [`Geometry::plaq_links`].
pub const PLAQ_SIGNS: [f64; 4] = [1.0, 1.0, -1.0, -1.0];

/// The links, plaquettes and masks of a 2D lattice.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub shape: [usize; 2],
    pub volume: usize,
    /// The four link indices of P(x): `[θ_0(x), θ_1(x + 0̂), θ_0(x + 1̂), θ_1(x)]`.
    pub plaq_links: Vec<[u32; 4]>,
    pub mask_period: usize,
}

/// Which plaquettes a layer transforms, reads and leaves alone, and the sites of its
/// convolutions.
#[derive(Debug, Clone)]
pub struct Mask {
    pub mu: usize,
    pub offset: usize,
    /// σ_μ.
    pub sigma: f64,
    /// Sites of the active plaquettes (sorted); the active link of site x is `2x + μ`.
    pub active: Vec<usize>,
    /// Sites of the frozen plaquettes (sorted): the conditioner's input rows.
    pub frozen: Vec<usize>,
    /// Sites of the passive plaquettes (sorted).
    pub passive: Vec<usize>,
    /// Output sites of each convolution of the conditioner (the last: `active`).
    pub conv_outputs: Vec<Vec<usize>>,
}

impl Geometry {
    /// Requires a 2D shape whose extents are multiples of `mask_period` (checked by the caller).
    pub fn new(shape: [usize; 2], mask_period: usize) -> Self {
        let volume = shape[0] * shape[1];
        let site = |x0: usize, x1: usize| (x0 % shape[0]) * shape[1] + x1 % shape[1];
        let plaq_links = (0..volume)
            .map(|x| {
                let (x0, x1) = (x / shape[1], x % shape[1]);
                [(2 * x) as u32, (2 * site(x0 + 1, x1) + 1) as u32, (2 * site(x0, x1 + 1)) as u32, (2 * x + 1) as u32]
            })
            .collect();
        Self { shape, volume, plaq_links, mask_period }
    }

    /// Number of links (2V), the length of a configuration.
    pub fn n_links(&self) -> usize {
        2 * self.volume
    }

    /// Coordinates (x_0, x_1) of site x.
    pub fn coords(&self, x: usize) -> [usize; 2] {
        [x / self.shape[1], x % self.shape[1]]
    }

    /// (μ, offset) of coupling layer `layer`.
    pub fn layer_mask(&self, layer: usize) -> (usize, usize) {
        (layer % 2, (layer / 2) % self.mask_period)
    }

    /// Index of layer `layer`'s mask among the 2p distinct ones.
    pub fn mask_index(&self, layer: usize) -> usize {
        let (mu, off) = self.layer_mask(layer);
        2 * off + mu
    }

    /// One `T` per distinct mask that the first `layers` coupling layers use, at
    /// [`Self::mask_index`] (`None` where no layer uses that mask): `build(mask)` gets the
    /// layer's [`Self::mask`] with `kernel` and `n_conv`. Layers that share a mask share its `T`.
    pub fn per_mask<T, E>(
        &self,
        layers: usize,
        kernel: usize,
        n_conv: usize,
        mut build: impl FnMut(Mask) -> Result<T, E>,
    ) -> Result<Vec<Option<T>>, E> {
        let mut masks: Vec<Option<T>> = (0..2 * self.mask_period).map(|_| None).collect();
        for l in 0..layers {
            let i = self.mask_index(l);
            if masks[i].is_none() {
                let (mu, off) = self.layer_mask(l);
                masks[i] = Some(build(self.mask(mu, off, kernel, n_conv))?);
            }
        }
        Ok(masks)
    }

    /// The mask of direction `mu`, offset `off`, with the output sites of `n_conv` convolutions
    /// of size `kernel`.
    pub fn mask(&self, mu: usize, off: usize, kernel: usize, n_conv: usize) -> Mask {
        let p = self.mask_period;
        let class = |x: usize| (self.coords(x)[1 - mu] + p - off) % p;
        let active: Vec<usize> = (0..self.volume).filter(|&x| class(x) == 0).collect();
        let passive: Vec<usize> = (0..self.volume).filter(|&x| class(x) == p - 1).collect();
        let frozen: Vec<usize> = (0..self.volume).filter(|&x| class(x) != 0 && class(x) != p - 1).collect();
        let mut conv_outputs = vec![active.clone()];
        for _ in 1..n_conv {
            let next = periodic::dilate(&self.shape, kernel, conv_outputs.last().expect("non-empty"));
            conv_outputs.push(next);
        }
        conv_outputs.reverse();
        Mask { mu, offset: off, sigma: sigma(mu), active, frozen, passive, conv_outputs }
    }

    /// The fused-kernel tables of a mask's convolutions: convolution 0 reads the frozen rows
    /// (other sites: the pad row), convolution j > 0 reads the outputs of convolution j − 1.
    pub fn tables(&self, mask: &Mask, kernel: usize) -> Vec<Arc<Table>> {
        (0..mask.conv_outputs.len())
            .map(|j| {
                let inputs = if j == 0 { &mask.frozen } else { &mask.conv_outputs[j - 1] };
                Arc::new(periodic::table(&self.shape, kernel, &mask.conv_outputs[j], inputs))
            })
            .collect()
    }

    /// The same as flat gather indices for the generic formulation (padding = the row count).
    pub fn gather_indices(&self, mask: &Mask, kernel: usize) -> Vec<Vec<u32>> {
        (0..mask.conv_outputs.len())
            .map(|j| {
                let inputs = self.conv_inputs(mask, j);
                let rows = periodic::rows_of(self.volume, inputs);
                periodic::gather_indices(&self.shape, kernel, &mask.conv_outputs[j], &rows, inputs.len())
            })
            .collect()
    }

    /// The sites that convolution `j` of `mask`'s conditioner reads: the frozen sites, then the
    /// previous convolution's outputs.
    fn conv_inputs<'m>(&self, mask: &'m Mask, j: usize) -> &'m [usize] {
        if j == 0 { &mask.frozen } else { &mask.conv_outputs[j - 1] }
    }

    /// [`Self::gather_indices`] as the generic formulation's [`ColumnGather`]s on `device`, each
    /// over its inputs and the pad row.
    pub fn gather_tables(&self, mask: &Mask, kernel: usize, device: &Device) -> candle_core::Result<Vec<ColumnGather>> {
        self.gather_indices(mask, kernel)
            .iter()
            .enumerate()
            .map(|(j, t)| ColumnGather::new(t, self.conv_inputs(mask, j).len() + 1, device))
            .collect()
    }

    /// The plaquettes of one configuration (f64, unwrapped sums of the four links).
    pub fn plaquettes(&self, links: &[f64]) -> Vec<f64> {
        self.plaq_links.iter().map(|l| (0..4).map(|j| PLAQ_SIGNS[j] * links[l[j] as usize]).sum()).collect()
    }
}

/// x wrapped into [0, 2π) (f64; a result that rounds to 2π becomes 0).
pub fn wrap_2pi(x: f64) -> f64 {
    let y = x.rem_euclid(2.0 * PI);
    if y >= 2.0 * PI {
        0.0
    } else {
        y
    }
}

/// x wrapped into (−π, π] (f64).
pub fn wrap_pi(x: f64) -> f64 {
    let y = PI - (PI - x).rem_euclid(2.0 * PI);
    if y <= -PI {
        PI
    } else {
        y
    }
}
