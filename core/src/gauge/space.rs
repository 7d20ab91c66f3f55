//! The HMC field space of Lie-group links: [`crate::hmc::FieldSpace`] for any [`GaugeGroup`].

use super::field::LinkField;
use super::group::{GaugeGroup, LieAlgebra};
use super::parallel::{fill_random, fill_sites, sum_sites};
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
}

impl<G: GaugeGroup> FieldSpace for LinkSpace<G> {
    type Field = LinkField<G>;
    type Momentum = Vec<G::Algebra>;

    /// Every coefficient p^a an independent N(0, 1). A stream too close to its end (2⁶⁸ words)
    /// to reserve the counter ranges cannot occur from a fresh stream; it is reported by
    /// panicking with the reason, which the plugin boundary turns into an error.
    fn sample_momentum(&self, _u: &LinkField<G>, rng: &mut Stream) -> Vec<G::Algebra> {
        let mut p = vec![G::Algebra::zero(); self.links()];
        if let Err(e) = fill_random(&mut p, rng, |s, x| *x = G::Algebra::gaussian(s)) {
            panic!("momentum refresh: {e}");
        }
        p
    }

    fn zero_momentum(&self) -> Vec<G::Algebra> {
        vec![G::Algebra::zero(); self.links()]
    }

    fn kinetic(&self, p: &Vec<G::Algebra>) -> f64 {
        let d = self.dim;
        0.5 * sum_sites(self.sites, |x, s| {
            for q in &p[x * d..(x + 1) * d] {
                s.add(q.norm2());
            }
        })
    }

    fn step_field(&self, u: &mut LinkField<G>, p: &mut Vec<G::Algebra>, eps: f64) {
        let d = self.dim;
        fill_sites(u.links_mut(), d, |x, links, _| {
            for (l, q) in links.iter_mut().zip(&p[x * d..(x + 1) * d]) {
                *l = G::exp(&q.scale(eps)).mul(l);
            }
        });
    }

    fn kick(&self, p: &mut Vec<G::Algebra>, f: &Vec<G::Algebra>, eps: f64) {
        let d = self.dim;
        fill_sites(p, d, |x, ps, _| {
            for (q, g) in ps.iter_mut().zip(&f[x * d..(x + 1) * d]) {
                q.axpy(-eps, g);
            }
        });
    }

    /// Reunitarises every link.
    fn project(&self, u: &mut LinkField<G>) {
        fill_sites(u.links_mut(), self.dim, |_, links, _| {
            for l in links {
                l.reunitarize();
            }
        });
    }
}
