//! The HMC field spaces of Lie-group links: [`LinkSpace`] over a [`LinkField`], and
//! [`FlatLinkSpace`] over the flat real buffer a theory plugin's configuration is (the same
//! memory, viewed as links through [`super::flat`]).

use bytemuck::Pod;

use super::field::LinkField;
use super::flat::{view, view_mut};
use super::group::{GaugeGroup, LieAlgebra};
use super::parallel::{fill_random, fill_sites, fill_sites_as, sum_sites, SiteWork, CHUNK_SITES};
use crate::hmc::FieldSpace;
use crate::rng::Stream;

/// Links in a group G with momenta in its algebra, one per link:
/// H = ½ Σ_links Σ_a (p^a)² + S (for SU(N), ½ Σ (p^a)² = −Tr P², see [`super::group`]),
/// the field moving as U ← exp(εP) U and the momentum kicked as P ← P − εF, where F is the
/// force in the coefficient convention of [`super::group`].
///
/// Momenta are drawn with [`fill_random`] (bit-identical for any thread count; the stream
/// advances by one counter range per [`super::parallel::RNG_CHUNK`] links). All loops run in
/// fixed chunks, so every result is independent of the thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpace<G> {
    /// Number of dimensions d.
    pub dim: usize,
    /// Number of sites V (the field has V·d links).
    pub sites: usize,
    _group: std::marker::PhantomData<G>,
}

impl<G: GaugeGroup> LinkSpace<G> {
    /// The space of link fields with `dim` directions on `sites` sites.
    pub fn new(dim: usize, sites: usize) -> Self {
        Self { dim, sites, _group: std::marker::PhantomData }
    }

    fn links(&self) -> usize {
        self.dim * self.sites
    }

    /// The largest deviation from the group over all links (see [`GaugeGroup::deviation`]).
    pub fn max_deviation(&self, u: &LinkField<G>) -> f64 {
        u.links().iter().map(|l| l.deviation()).fold(0.0, f64::max)
    }

    /// Fresh momenta: every coefficient p^a an independent N(0, 1). A stream too close to its
    /// end (2⁶⁸ words) to reserve the counter ranges cannot occur from a fresh stream; it is
    /// reported by panicking with the reason, which the plugin boundary turns into an error.
    fn momenta_into(&self, p: &mut [G::Algebra], rng: &mut Stream) {
        if let Err(e) = fill_random(p, rng, |s, x| *x = G::Algebra::gaussian(s)) {
            panic!("momentum refresh: {e}");
        }
    }

    fn kinetic_of(&self, p: &[G::Algebra]) -> f64 {
        let d = self.dim;
        0.5 * sum_sites(self.sites, |x, s| {
            for q in &p[x * d..(x + 1) * d] {
                s.add(q.norm2());
            }
        })
    }

    fn step_links(&self, u: &mut [G], p: &[G::Algebra], eps: f64) {
        let d = self.dim;
        fill_sites_as(SiteWork::of_group::<G>(), u, d, |x, links, _| G::exp_mul_into(links, &p[x * d..(x + 1) * d], eps));
    }

    fn kick_momenta(&self, p: &mut [G::Algebra], f: &[G::Algebra], eps: f64) {
        let d = self.dim;
        fill_sites(p, d, |x, ps, _| {
            for (q, g) in ps.iter_mut().zip(&f[x * d..(x + 1) * d]) {
                q.axpy(-eps, g);
            }
        });
    }

    /// Reunitarises every link; returns the largest deviation before (a max, so independent of
    /// the chunking and thread count).
    fn reunitarize_links(&self, u: &mut [G]) -> f64 {
        let fix = |links: &mut [G]| links.iter_mut().map(|l| l.reunitarize()).fold(0.0, f64::max);
        crate::par::chunks_mut(u, CHUNK_SITES * self.dim.max(1), |_, links| fix(links)).into_iter().fold(0.0, f64::max)
    }
}

impl<G: GaugeGroup> FieldSpace for LinkSpace<G> {
    type Field = LinkField<G>;
    type Momentum = Vec<G::Algebra>;

    fn sample_momentum(&self, _u: &LinkField<G>, rng: &mut Stream) -> Vec<G::Algebra> {
        let mut p = vec![G::Algebra::zero(); self.links()];
        self.momenta_into(&mut p, rng);
        p
    }

    fn zero_momentum(&self) -> Vec<G::Algebra> {
        vec![G::Algebra::zero(); self.links()]
    }

    fn kinetic(&self, p: &Vec<G::Algebra>) -> f64 {
        self.kinetic_of(p)
    }

    fn step_field(&self, u: &mut LinkField<G>, p: &mut Vec<G::Algebra>, eps: f64) {
        self.step_links(u.links_mut(), p, eps)
    }

    fn kick(&self, p: &mut Vec<G::Algebra>, f: &Vec<G::Algebra>, eps: f64) {
        self.kick_momenta(p, f, eps)
    }

    /// Reunitarises every link; returns the largest deviation ‖U†U − 1‖ before.
    fn project(&self, u: &mut LinkField<G>) -> f64 {
        self.reunitarize_links(u.links_mut())
    }
}

/// [`LinkSpace`] on flat buffers: the field is the configuration's reals (links `[site][μ]`,
/// [`GaugeGroup::REALS`] reals each, the memory of `G`), the momentum the reals of one
/// `G::Algebra` per link (for SU(N), the traceless anti-Hermitian matrix: 2N² reals). This is
/// the field space of a theory plugin whose configuration is a link field; the buffers are
/// viewed as links without copying ([`super::flat`]). A buffer of the wrong length panics
/// with the reason, which the plugin boundary turns into an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatLinkSpace<G>(pub LinkSpace<G>);

impl<G: GaugeGroup> FlatLinkSpace<G> {
    /// The space of link fields with `dim` directions on `sites` sites.
    pub fn new(dim: usize, sites: usize) -> Self {
        Self(LinkSpace::new(dim, sites))
    }

    /// Reals per momentum (one algebra element per link).
    pub fn momentum_len(&self) -> usize
    where
        G::Algebra: Pod,
    {
        self.0.links() * std::mem::size_of::<G::Algebra>() / std::mem::size_of::<f64>()
    }
}

fn links<T: Pod>(r: &[f64]) -> &[T] {
    view(r).unwrap_or_else(|e| panic!("{e}"))
}

fn links_mut<T: Pod>(r: &mut [f64]) -> &mut [T] {
    view_mut(r).unwrap_or_else(|e| panic!("{e}"))
}

impl<G: GaugeGroup + Pod> FieldSpace for FlatLinkSpace<G>
where
    G::Algebra: Pod,
{
    type Field = Vec<f64>;
    type Momentum = Vec<f64>;

    fn sample_momentum(&self, _u: &Vec<f64>, rng: &mut Stream) -> Vec<f64> {
        let mut p = self.zero_momentum();
        self.0.momenta_into(links_mut(&mut p), rng);
        p
    }

    fn zero_momentum(&self) -> Vec<f64> {
        vec![0.0; self.momentum_len()]
    }

    fn kinetic(&self, p: &Vec<f64>) -> f64 {
        self.0.kinetic_of(links(p))
    }

    fn step_field(&self, u: &mut Vec<f64>, p: &mut Vec<f64>, eps: f64) {
        self.0.step_links(links_mut(u), links(p), eps)
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        self.0.kick_momenta(links_mut(p), links(f), eps)
    }

    /// Reunitarises every link; returns the largest deviation ‖U†U − 1‖ before.
    fn project(&self, u: &mut Vec<f64>) -> f64 {
        self.0.reunitarize_links(links_mut(u))
    }
}
