//! Links, plaquettes and coupling masks of a periodic lattice of any dimension D ≥ 2, for the
//! gauge-equivariant coupling layers of [`crate::flow`].
//!
//! **Links and plaquettes.** A configuration is the sun theory's layout: U_μ(x) at link index
//! `D·x + μ`, sites x row-major over the shape (last axis fastest). The plaquettes are
//! P_μν(x) = U_μ(x) U_ν(x + μ̂) U_μ(x + ν̂)† U_ν(x)† for the D(D − 1)/2 planes μ < ν, in
//! lexicographic order ([`Geometry::planes`]); in 2D that is the one plane (0, 1).
//!
//! **Masks** (Kanwar et al. 2020 in 2D; the hyperplane form of Abbott et al., arXiv 2305.02402,
//! in any D). Coupling layer ℓ has a direction μ, a partner direction ν ≠ μ and an offset o:
//!
//! ```text
//! μ = ℓ mod D,   o = ⌊ℓ/D⌋ mod p,   ν = (μ + 1 + ⌊ℓ/(D p)⌋ mod (D − 1)) mod D
//! ```
//!
//! (p = `mask_period`), so that the first D·p layers update every link once, in the plane
//! (μ, μ + 1), and the next D·p layers use the next partner direction. In 2D this is the stripe
//! schedule of flow-u1 (ν = 1 − μ), with the same masks in the same order.
//!
//! * **Active links**: U_μ(x) with x_ν ≡ o (mod p), a stack of hyperplanes. Only these change.
//! * **Active loop** of U_μ(x): the plaquette of the (μ, ν) plane that starts with it,
//!   W = U_μ(x) S with the staple S = U_ν(x + μ̂) U_μ(x + ν̂)† U_ν(x)† (W = P_μν(x) for μ < ν,
//!   P_νμ(x)† for μ > ν). S holds no active link (x + ν̂ is off the hyperplanes for p ≥ 2), so
//!   the active links change independently of one another given the others: the layer's
//!   Jacobian is block diagonal in the active links.
//! * **Frozen plaquettes**: those that contain no active link. They are unchanged and condition
//!   the layer. Every other plaquette (the passive ones) changes as a consequence and neither
//!   conditions nor enters the Jacobian.
//!
//! The conditioner reads, at each site that has at least one frozen plaquette (its input
//! **rows**), the traces of that site's D(D − 1)/2 plaquettes, with the identity's values in
//! place of the plaquettes that are not frozen; every other site reads the identity's values as
//! padding. In 2D the rows are exactly the frozen sites of the stripe masks, with no
//! substitution needed.

use std::sync::Arc;

use candle_core::Device;
use latflow_flow_common::kernels::Table;
use latflow_flow_common::periodic;
use latflow_flow_common::tensor::ColumnGather;

/// The links, plaquettes and masks of a periodic lattice.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Extents L_0, …, L_{D−1}.
    pub shape: Vec<usize>,
    pub volume: usize,
    pub mask_period: usize,
    /// The planes (μ, ν), μ < ν, lexicographic.
    pub planes: Vec<[usize; 2]>,
    /// `plaq_links[p][x]`: the link indices of P_μν(x), (μ, ν) = `planes[p]`, in the order
    /// `[U_μ(x), U_ν(x + μ̂), U_μ(x + ν̂), U_ν(x)]` (P = L0 L1 L2† L3†).
    pub plaq_links: Vec<Vec<[u32; 4]>>,
}

/// Which links a layer transforms and which plaquettes condition it, with the sites of its
/// convolutions.
#[derive(Debug, Clone)]
pub struct Mask {
    pub mu: usize,
    pub nu: usize,
    pub offset: usize,
    /// Sites x of the active links U_μ(x) (sorted); link index `D·x + μ`.
    pub active: Vec<usize>,
    /// The conditioner's input rows: the sites with at least one frozen plaquette (sorted).
    pub rows: Vec<usize>,
    /// `frozen[p][r]`: whether plaquette `p` of site `rows[r]` is frozen.
    pub frozen: Vec<Vec<bool>>,
    /// Output sites of each convolution of the conditioner (the last: `active`).
    pub conv_outputs: Vec<Vec<usize>>,
}

impl Mask {
    /// Whether every row's plaquette of plane `p` is frozen (then no substitution is needed).
    pub fn plane_all_frozen(&self, p: usize) -> bool {
        self.frozen[p].iter().all(|&f| f)
    }
}

impl Geometry {
    /// Requires D ≥ 2 and extents that are multiples of `mask_period` (checked by the caller).
    pub fn new(shape: &[usize], mask_period: usize) -> Self {
        let d = shape.len();
        assert!(d >= 2, "gauge flows need at least two dimensions, got {shape:?}");
        let volume = shape.iter().product();
        let planes: Vec<[usize; 2]> = (0..d).flat_map(|mu| (mu + 1..d).map(move |nu| [mu, nu])).collect();
        let step = |x: usize, mu: usize| step(shape, x, mu);
        let link = |x: usize, mu: usize| (d * x + mu) as u32;
        let plaq_links = planes
            .iter()
            .map(|&[mu, nu]| {
                (0..volume).map(|x| [link(x, mu), link(step(x, mu), nu), link(step(x, nu), mu), link(x, nu)]).collect()
            })
            .collect();
        Self { shape: shape.to_vec(), volume, mask_period, planes, plaq_links }
    }

    /// The dimension D.
    pub fn dim(&self) -> usize {
        self.shape.len()
    }

    /// Number of links D·V, the length of a configuration in links.
    pub fn n_links(&self) -> usize {
        self.dim() * self.volume
    }

    /// The site x + μ̂ (periodic).
    pub fn step(&self, x: usize, mu: usize) -> usize {
        step(&self.shape, x, mu)
    }

    /// Coordinate `mu` of site x.
    pub fn coord(&self, x: usize, mu: usize) -> usize {
        let stride: usize = self.shape[mu + 1..].iter().product();
        (x / stride) % self.shape[mu]
    }

    /// Number of distinct masks: D · p · (D − 1).
    pub fn n_masks(&self) -> usize {
        let d = self.dim();
        d * self.mask_period * (d - 1)
    }

    /// (μ, ν, offset) of coupling layer `layer` (the schedule of the module docs).
    pub fn layer_mask(&self, layer: usize) -> (usize, usize, usize) {
        let (d, p) = (self.dim(), self.mask_period);
        let mu = layer % d;
        let off = (layer / d) % p;
        let k = (layer / (d * p)) % (d - 1);
        (mu, (mu + 1 + k) % d, off)
    }

    /// Index of layer `layer`'s mask among the [`Self::n_masks`] distinct ones (in 2D: 2·o + μ).
    pub fn mask_index(&self, layer: usize) -> usize {
        layer % self.n_masks()
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
        let mut masks: Vec<Option<T>> = (0..self.n_masks()).map(|_| None).collect();
        for l in 0..layers {
            let i = self.mask_index(l);
            if masks[i].is_none() {
                let (mu, nu, off) = self.layer_mask(l);
                masks[i] = Some(build(self.mask(mu, nu, off, kernel, n_conv))?);
            }
        }
        Ok(masks)
    }

    /// The mask of direction `mu`, partner `nu`, offset `off`, with the output sites of `n_conv`
    /// convolutions of size `kernel`.
    pub fn mask(&self, mu: usize, nu: usize, off: usize, kernel: usize, n_conv: usize) -> Mask {
        let (d, p) = (self.dim(), self.mask_period);
        let active: Vec<usize> = (0..self.volume).filter(|&x| self.coord(x, nu) % p == off).collect();
        let mut is_active = vec![false; self.n_links()];
        for &x in &active {
            is_active[d * x + mu] = true;
        }
        let frozen_at: Vec<Vec<bool>> = self
            .plaq_links
            .iter()
            .map(|plane| plane.iter().map(|links| links.iter().all(|&l| !is_active[l as usize])).collect())
            .collect();
        let rows: Vec<usize> = (0..self.volume).filter(|&x| frozen_at.iter().any(|f| f[x])).collect();
        let frozen = frozen_at.iter().map(|f| rows.iter().map(|&x| f[x]).collect()).collect();
        let mut conv_outputs = vec![active.clone()];
        for _ in 1..n_conv {
            let next = periodic::dilate(&self.shape, kernel, conv_outputs.last().expect("non-empty"));
            conv_outputs.push(next);
        }
        conv_outputs.reverse();
        Mask { mu, nu, offset: off, active, rows, frozen, conv_outputs }
    }

    /// The sites that convolution `j` of `mask`'s conditioner reads: the input rows, then the
    /// previous convolution's outputs.
    fn conv_inputs<'m>(&self, mask: &'m Mask, j: usize) -> &'m [usize] {
        if j == 0 {
            &mask.rows
        } else {
            &mask.conv_outputs[j - 1]
        }
    }

    /// The fused-kernel tables of a mask's convolutions: convolution 0 reads the input rows
    /// (other sites: the pad row), convolution j > 0 reads the outputs of convolution j − 1.
    pub fn tables(&self, mask: &Mask, kernel: usize) -> Vec<Arc<Table>> {
        (0..mask.conv_outputs.len())
            .map(|j| Arc::new(periodic::table(&self.shape, kernel, &mask.conv_outputs[j], self.conv_inputs(mask, j))))
            .collect()
    }

    /// The same as [`ColumnGather`]s for the generic formulation on `device`, each over its
    /// inputs and the pad row.
    pub fn gather_tables(&self, mask: &Mask, kernel: usize, device: &Device) -> candle_core::Result<Vec<ColumnGather>> {
        (0..mask.conv_outputs.len())
            .map(|j| {
                let inputs = self.conv_inputs(mask, j);
                let rows = periodic::rows_of(self.volume, inputs);
                let idx = periodic::gather_indices(&self.shape, kernel, &mask.conv_outputs[j], &rows, inputs.len());
                ColumnGather::new(&idx, inputs.len() + 1, device)
            })
            .collect()
    }
}

/// The site x + μ̂ on the periodic lattice `shape`.
fn step(shape: &[usize], x: usize, mu: usize) -> usize {
    let mut o = vec![0i64; shape.len()];
    o[mu] = 1;
    periodic::shift(shape, x, &o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latflow_flow_common::stripes;

    #[test]
    fn two_dimensions_are_the_stripe_masks() {
        let (shape, p, kernel, n_conv) = ([8usize, 4], 4, 3, 3);
        let g = Geometry::new(&shape, p);
        let s = stripes::Geometry::new(shape, p);
        assert_eq!(g.planes, vec![[0, 1]]);
        assert_eq!(g.plaq_links[0], s.plaq_links);
        assert_eq!(g.n_masks(), 2 * p);
        for l in 0..40 {
            let (mu, nu, off) = g.layer_mask(l);
            assert_eq!((mu, off), s.layer_mask(l));
            assert_eq!(nu, 1 - mu);
            assert_eq!(g.mask_index(l), s.mask_index(l));
            let (a, b) = (g.mask(mu, nu, off, kernel, n_conv), s.mask(mu, off, kernel, n_conv));
            assert_eq!(a.active, b.active);
            assert_eq!(a.rows, b.frozen);
            assert!(a.plane_all_frozen(0));
            assert_eq!(a.conv_outputs, b.conv_outputs);
        }
    }

    #[test]
    fn four_dimensional_masks_freeze_exactly_the_plaquettes_without_active_links() {
        let shape = [4usize, 4, 4, 4];
        let g = Geometry::new(&shape, 4);
        assert_eq!(g.planes.len(), 6);
        assert_eq!(g.n_masks(), 48);
        let mut seen = [false; 48];
        let mut updates = vec![0usize; g.n_links()];
        for l in 0..48 {
            let (mu, nu, off) = g.layer_mask(l);
            assert_ne!(mu, nu);
            assert!(!seen[g.mask_index(l)], "layer {l} repeats a mask within one cycle");
            seen[g.mask_index(l)] = true;
            let m = g.mask(mu, nu, off, 3, 2);
            assert_eq!(m.active.len(), g.volume / 4);
            for &x in &m.active {
                updates[4 * x + mu] += 1;
                assert_eq!(g.coord(x, nu) % 4, off);
                // the staple holds no active link
                let staple = [4 * g.step(x, mu) + nu, 4 * g.step(x, nu) + mu, 4 * x + nu];
                assert!(staple.iter().all(|&s| !(s % 4 == mu && m.active.contains(&(s / 4)))));
            }
            // frozen: exactly the plaquettes without an active link
            for (p, plane) in g.plaq_links.iter().enumerate() {
                for (x, links) in plane.iter().enumerate() {
                    let has_active = links.iter().any(|&l| l as usize % 4 == mu && m.active.contains(&(l as usize / 4)));
                    let frozen = m.rows.binary_search(&x).map(|r| m.frozen[p][r]).unwrap_or(false);
                    assert_eq!(frozen, !has_active, "layer {l} plane {p} site {x}");
                }
            }
            // planes without μ are frozen everywhere, so every site is a row
            assert_eq!(m.rows.len(), g.volume);
            assert_eq!(m.conv_outputs[1], m.active);
        }
        // 48 layers: every link moves once in each of its three planes
        assert!(updates.iter().all(|&u| u == 3), "{:?}", &updates[..8]);
    }

    #[test]
    fn plaquette_links_follow_the_layout() {
        let g = Geometry::new(&[2, 4, 2], 2);
        assert_eq!(g.planes, vec![[0, 1], [0, 2], [1, 2]]);
        // site (0, 3, 1) = 7; plane (1, 2): U_1(x), U_2(x + 1̂) with x + 1̂ = (0, 0, 1) = 1, U_1(x + 2̂) with
        // x + 2̂ = (0, 3, 0) = 6, U_2(x)
        assert_eq!(g.plaq_links[2][7], [3 * 7 + 1, 3 + 2, 3 * 6 + 1, 3 * 7 + 2]);
        assert_eq!(g.coord(7, 1), 3);
        assert_eq!(g.step(7, 0), 15);
    }
}
