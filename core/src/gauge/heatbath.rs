//! The standard pure-gauge updates of the Wilson action S = −(β/N) Σ_P Re Tr U_P: the
//! Cabibbo–Marinari heat-bath with Kennedy–Pendleton SU(2) subgroup draws, and microcanonical
//! overrelaxation in the same subgroups, for SU(2), SU(3) and SU(N).
//!
//! # One link
//! With the staple sum A of link U (see [`staple`]: Re Tr(U·A) is the sum of Re Tr U_P over
//! every plaquette containing U), the conditional weight of U is exp((β/N) Re Tr(U·A)).
//! For each SU(2) subgroup (i, j), i < j, in the order (0,1), (0,2), …, (1,2), …, the link is
//! left-multiplied by R, the 2×2 block r ∈ SU(2) embedded in rows and columns i, j. With
//! W = U·A, Re Tr(R W) depends on r only through the SU(2) (quaternion) projection v = k V
//! of the block w = W[{i,j},{i,j}] (k = √det v ≥ 0, V ∈ SU(2)): Re Tr(r w) = k Re Tr(r V).
//! * Heat-bath: x = r V is drawn with weight exp(α x₀) on the Haar measure of SU(2),
//!   α = 2βk/N, i.e. x₀ ∈ [−1, 1] with density ∝ √(1 − x₀²) e^{α x₀} and x⃗ uniform on the
//!   sphere of radius √(1 − x₀²); then r = x V†. For α ≥ [`KP_MIN_ALPHA`], x₀ comes from the
//!   Kennedy–Pendleton algorithm (Phys. Lett. B 156 (1985) 393: a Gamma(3/2) proposal for
//!   1 − x₀, accepted with probability √(1 − (1 − x₀)/2)), whose acceptance rises from 0.76 at
//!   α = 2 to 1 as α → ∞. Below, where its proposal mostly falls outside [−1, 1], x₀ comes
//!   from Creutz's algorithm (Phys. Rev. D 21 (1980) 2308: e^{α x₀} on [−1, 1] by inversion,
//!   accepted with probability √(1 − x₀²)), whose acceptance is 0.69 at α = 2 and π/4 as
//!   α → 0. Both are exact for every α ≥ 0; the switch only chooses the cheaper one. A block
//!   with k = 0 (no preferred direction) gets a Haar-random r.
//! * Overrelaxation: r = (V†)², which keeps Re Tr(r w) = k Re Tr V (the action) and maps the
//!   projection v = kV to kV†, so the same move applied again restores the link: each
//!   subgroup step is an involution, and the whole move is undone by the subgroups in reverse
//!   order. It draws no random numbers and does not depend on β. A block with k = 0 is left
//!   unchanged.
//!
//! Every link is reunitarised ([`GaugeGroup::reunitarize`]) right after its update (inside
//! [`HeatbathGroup::heatbath_link`] and [`HeatbathGroup::overrelax_link`]), so rounding never
//! accumulates over sweeps or long single-link chains.
//!
//! # Sweeps, parallelism and reproducibility
//! A sweep visits μ = 0, …, d−1 and, for each, the even then the odd sites
//! ([`Lattice::sites_of_parity`]). On a lattice with every extent even, the links U_μ(x) of one
//! direction and one parity share no plaquette, so they are updated in parallel from the same
//! neighbours. The heat-bath draws them with [`fill_random_blocks`] over the list of those
//! links, one link per block: each link draws from its own reserved counter range of
//! [`HB_LINK_WORDS`] words of the caller's stream (the range's offset is the link's position in
//! the pass), so a sweep gives the same bits for any thread count, any part of a pass draws
//! what it draws in the whole pass (however many words the rejection steps of the other links
//! took), and the caller's stream advances by d · V · [`HB_LINK_WORDS`] words per sweep. One
//! buffer of V/2 links is allocated per sweep; nothing is allocated per site.
//!
//! On a lattice split over ranks ([`heatbath_sweep_split`], [`overrelax_sweep_split`]) each rank
//! updates the links of its slab in the same passes, draws each link's part of the pass's random
//! fill (its own counter range), reads staples through the slab's halos, and refreshes the halos
//! after every pass: the ranks' slabs together are the whole-lattice sweep's field, bit for bit.

use std::fmt;

use super::complex::Complex;
use bytemuck::Pod;

use super::domain::DomainSites;
use super::field::{staple, Neighbours, Sites};
use super::group::GaugeGroup;
use super::matrix::Matrix;
use super::parallel::{fill_random_blocks, fill_sites_as, RngFillError, SiteWork, CHUNK_SITES, WORD_POS_LIMIT};
use super::sun::SuN;
use crate::lattice::{Lattice, LatticeError};
use crate::rng::Stream;

/// From this effective SU(2) coupling α = 2βk/N on, x₀ is drawn with Kennedy–Pendleton;
/// below, with Creutz's algorithm (see the module docs). At α = 2 their acceptance rates are
/// 0.76 and 0.69.
pub const KP_MIN_ALPHA: f64 = 2.0;

/// The counter range (in 32-bit words) reserved for the draws of one link in a heat-bath pass,
/// 2²⁰ words: far more than the at most N(N−1)/2 · `MAX_TRIES` attempts of a link update
/// draw (tens of words in practice). A sweep of V sites uses d · V · 2²⁰ of the stream's 2⁶⁸.
pub const HB_LINK_WORDS: u128 = 1 << 20;

/// Rejection attempts per SU(2) draw before a link update reports failure. Every acceptance
/// rate is above 0.69, so a valid input never gets near this.
const MAX_TRIES: usize = 1000;

/// Below this subgroup projection strength k, the block is treated as k = 0 (Haar draw, or no
/// overrelaxation move): e^{α x₀} then differs from 1 by less than 2βk/N ≈ 0 relative.
const K_MIN: f64 = 1e-200;

/// Why a sweep could not run (or stopped).
#[derive(Debug, Clone, PartialEq)]
pub enum HeatbathError {
    /// β is NaN, infinite or negative (the key `beta` of a run card).
    Beta(f64),
    /// An extent is odd: the checkerboard of independent links needs every extent even.
    OddExtent { axis: usize, extent: usize },
    /// The link slice does not have V·d links.
    Length { expected: usize, got: usize },
    /// The sweep needs more reserved counter ranges than the random stream has left; nothing
    /// was changed.
    StreamExhausted { chunks: usize },
    /// A chunk of random draws overran its reserved counter range.
    Rng(RngFillError),
    /// The update of link `link` (storage index x·d + μ) met a non-finite link or staple; the
    /// links updated before it in the sweep keep their new values.
    NotFinite { link: usize },
    /// A halo exchange of a split lattice failed.
    Comm(String),
}

impl fmt::Display for HeatbathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeatbathError::Beta(b) => write!(f, "beta must be finite and non-negative, got {b}"),
            HeatbathError::OddExtent { axis, extent } => write!(
                f,
                "lattice extent {extent} along axis {axis} is odd: heat-bath and overrelaxation update the links of \
                 one parity at a time and need every extent even"
            ),
            HeatbathError::Length { expected, got } => {
                write!(f, "a link field on this lattice has {expected} links, got {got}")
            }
            HeatbathError::StreamExhausted { chunks } => {
                write!(f, "a heat-bath sweep of {chunks} reserved link ranges would run past the end of the random stream")
            }
            HeatbathError::Rng(e) => write!(f, "{e}"),
            HeatbathError::NotFinite { link } => {
                write!(f, "link {link} or its staple is not finite: the configuration is corrupt")
            }
            HeatbathError::Comm(m) => write!(f, "halo exchange: {m}"),
        }
    }
}

impl std::error::Error for HeatbathError {}

/// A gauge group with Cabibbo–Marinari link updates: implemented by [`Su2`](super::Su2),
/// [`Su3`](super::Su3) and [`SuN<N>`].
pub trait HeatbathGroup: GaugeGroup {
    /// Replaces the link by a draw from exp((β/N) Re Tr(U·staple)) restricted to the SU(2)
    /// subgroups, one after the other (module docs), then reunitarises it; β is the coupling of
    /// S = −(β/N) Σ_P Re Tr U_P and must be finite and ≥ 0 (not checked here). Returns false,
    /// leaving the link partly updated, when U·staple has a non-finite entry.
    fn heatbath_link(&mut self, staple: &Self::Mat, beta: f64, rng: &mut Stream) -> bool;

    /// The overrelaxation move in every SU(2) subgroup (module docs), then reunitarisation:
    /// Re Tr(U·staple) is kept to rounding. Returns false when U·staple has a non-finite entry.
    fn overrelax_link(&mut self, staple: &Self::Mat) -> bool;
}

// The links are projected back with the group's reunitarisation, without measuring the
// deviation first: nothing records it here (the same bits as `reunitarize`).
macro_rules! impl_heatbath_matrix {
    ($n:literal, $group:ident) => {
        impl HeatbathGroup for Matrix<$n> {
            #[inline]
            fn heatbath_link(&mut self, staple: &Matrix<$n>, beta: f64, rng: &mut Stream) -> bool {
                let ok = heatbath_matrix(self, staple, beta, rng);
                super::$group::project(self);
                ok
            }
            #[inline]
            fn overrelax_link(&mut self, staple: &Matrix<$n>) -> bool {
                let ok = overrelax_matrix(self, staple, false);
                super::$group::project(self);
                ok
            }
        }
    };
}

impl_heatbath_matrix!(2, su2);
impl_heatbath_matrix!(3, su3);

impl<const N: usize> HeatbathGroup for SuN<N> {
    #[inline]
    fn heatbath_link(&mut self, staple: &Matrix<N>, beta: f64, rng: &mut Stream) -> bool {
        let ok = heatbath_matrix(&mut self.0, staple, beta, rng);
        self.reunitarize();
        ok
    }
    #[inline]
    fn overrelax_link(&mut self, staple: &Matrix<N>) -> bool {
        let ok = overrelax_matrix(&mut self.0, staple, false);
        self.reunitarize();
        ok
    }
}

/// An SU(2) element [[p, q], [−q̄, p̄]] (p = a₀ + i a₃, q = a₂ + i a₁ in the a₀ + i a⃗·σ⃗ form
/// of [`super::su2`]); also the quaternion part k·V of any 2×2 block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Quat {
    pub(crate) p: Complex,
    pub(crate) q: Complex,
}

impl Quat {
    const IDENTITY: Quat = Quat { p: Complex::ONE, q: Complex::ZERO };

    /// The projection of the block [[w00, w01], [w10, w11]] onto the real span of SU(2):
    /// Re Tr(r w) = Re Tr(r v) for every r ∈ SU(2).
    #[inline]
    fn project(w00: Complex, w01: Complex, w10: Complex, w11: Complex) -> Quat {
        Quat { p: (w00 + w11.conj()).scale(0.5), q: (w01 - w10.conj()).scale(0.5) }
    }

    /// √det = √(|p|² + |q|²).
    #[inline]
    fn norm(&self) -> f64 {
        (self.p.abs2() + self.q.abs2()).sqrt()
    }

    #[inline]
    fn dagger(&self) -> Quat {
        Quat { p: self.p.conj(), q: -self.q }
    }

    #[inline]
    fn scale(&self, s: f64) -> Quat {
        Quat { p: self.p.scale(s), q: self.q.scale(s) }
    }

    #[inline]
    fn mul(&self, o: &Quat) -> Quat {
        Quat { p: self.p * o.p - self.q * o.q.conj(), q: self.p * o.q + self.q * o.p.conj() }
    }

    /// Left-multiplies rows i and j of m by this element embedded in the (i, j) subgroup.
    #[inline]
    fn rotate_rows<const N: usize>(&self, m: &mut Matrix<N>, i: usize, j: usize) {
        let (p, q) = (self.p, self.q);
        for c in 0..N {
            let (a, b) = (m.0[i][c], m.0[j][c]);
            m.0[i][c] = p * a + q * b;
            m.0[j][c] = p.conj() * b - q.conj() * a;
        }
    }
}

/// The SU(2) subgroup (i, j) with index `pair` in the order (0,1), (0,2), …, (0,N−1), (1,2), ….
#[inline]
fn subgroup<const N: usize>(pair: usize) -> (usize, usize) {
    let mut p = pair;
    let mut i = 0;
    while p >= N - 1 - i {
        p -= N - 1 - i;
        i += 1;
    }
    (i, i + 1 + p)
}

/// Runs `choose(v, k)` for every subgroup (in order, or reversed), left-multiplying U (and
/// W = U·A) by the r it returns; false as soon as `choose` fails.
#[inline]
fn for_subgroups<const N: usize>(
    u: &mut Matrix<N>,
    a: &Matrix<N>,
    reverse: bool,
    mut choose: impl FnMut(&Quat, f64) -> Option<Quat>,
) -> bool {
    let mut w = *u * *a;
    let pairs = N * N.saturating_sub(1) / 2;
    for n in 0..pairs {
        let (i, j) = subgroup::<N>(if reverse { pairs - 1 - n } else { n });
        let v = Quat::project(w.0[i][i], w.0[i][j], w.0[j][i], w.0[j][j]);
        let Some(r) = choose(&v, v.norm()) else {
            return false;
        };
        r.rotate_rows(u, i, j);
        r.rotate_rows(&mut w, i, j);
    }
    true
}

fn heatbath_matrix<const N: usize>(u: &mut Matrix<N>, a: &Matrix<N>, beta: f64, rng: &mut Stream) -> bool {
    let two_beta_over_n = 2.0 * beta / N as f64;
    for_subgroups(u, a, false, |v, k| {
        let alpha = two_beta_over_n * k;
        if !alpha.is_finite() {
            return None;
        }
        if k <= K_MIN {
            return sample_su2(0.0, rng);
        }
        // r = x V† with V = v/k
        sample_su2(alpha, rng).map(|x| x.mul(&v.dagger().scale(1.0 / k)))
    })
}

fn overrelax_matrix<const N: usize>(u: &mut Matrix<N>, a: &Matrix<N>, reverse: bool) -> bool {
    for_subgroups(u, a, reverse, |v, k| {
        if !k.is_finite() {
            return None;
        }
        if k <= K_MIN {
            return Some(Quat::IDENTITY);
        }
        let vd = v.dagger().scale(1.0 / k);
        Some(vd.mul(&vd))
    })
}

/// The overrelaxation move with the subgroups in reverse order: the inverse of
/// [`HeatbathGroup::overrelax_link`] (each subgroup step is an involution).
#[cfg(test)]
pub(crate) fn overrelax_reversed<const N: usize>(u: &mut Matrix<N>, a: &Matrix<N>) -> bool {
    overrelax_matrix(u, a, true)
}

/// x ∈ SU(2) with weight exp(α x₀) on the Haar measure (α ≥ 0, finite): x₀ from
/// [`sample_x0`], x⃗ uniform on the sphere of radius √(1 − x₀²). None after [`MAX_TRIES`]
/// rejections.
#[inline]
fn sample_su2(alpha: f64, rng: &mut Stream) -> Option<Quat> {
    let x0 = sample_x0(alpha, rng)?;
    let s = (1.0 - x0 * x0).max(0.0).sqrt();
    let cos_t = 2.0 * rng.uniform() - 1.0;
    let sin_t = (1.0 - cos_t * cos_t).max(0.0).sqrt();
    let (sin_p, cos_p) = (std::f64::consts::TAU * rng.uniform()).sin_cos();
    let (x1, x2, x3) = (s * sin_t * cos_p, s * sin_t * sin_p, s * cos_t);
    Some(Quat { p: Complex::new(x0, x3), q: Complex::new(x2, x1) })
}

/// x₀ ∈ [−1, 1] with density ∝ √(1 − x₀²) e^{α x₀} (α ≥ 0, finite): Kennedy–Pendleton for
/// α ≥ [`KP_MIN_ALPHA`], Creutz below (module docs).
pub(crate) fn sample_x0(alpha: f64, rng: &mut Stream) -> Option<f64> {
    if alpha >= KP_MIN_ALPHA {
        for _ in 0..MAX_TRIES {
            // uniforms in (0, 1] for the logarithms
            let r1 = 1.0 - rng.uniform();
            let c = (std::f64::consts::TAU * rng.uniform()).cos();
            let r3 = 1.0 - rng.uniform();
            // δ = 1 − x₀ ~ Gamma(3/2) with rate α: Exp(1) + Box–Muller Z²/2, over α
            let delta = -(r1.ln() + c * c * r3.ln()) / alpha;
            let r4 = rng.uniform();
            if r4 * r4 <= 1.0 - 0.5 * delta {
                return Some(1.0 - delta);
            }
        }
    } else {
        // z = e^{α(x₀ − 1)} uniform on [e^{−2α}, 1]; written with exp_m1/ln_1p so that α → 0
        // tends smoothly to x₀ = 1 − 2u
        let span = -(-2.0 * alpha).exp_m1();
        for _ in 0..MAX_TRIES {
            let u = rng.uniform();
            let x0 = if alpha > 0.0 { (1.0 + (-u * span).ln_1p() / alpha).max(-1.0) } else { 1.0 - 2.0 * u };
            let r = rng.uniform();
            if r * r <= 1.0 - x0 * x0 {
                return Some(x0);
            }
        }
    }
    None
}

/// Where a sweep runs: the whole lattice, or one rank's slab of a split lattice (whose
/// looped-over sites are the global sites `first .. first + sites` in order, stored first).
trait Region<G>: Sites {
    /// The global index of the first looped-over site.
    fn first(&self) -> usize;
    /// Makes the halos current after a pass changed looped-over links (nothing on the whole
    /// lattice).
    fn refresh(&self, links: &mut [G]) -> Result<(), HeatbathError>;
}

impl<G> Region<G> for Lattice {
    fn first(&self) -> usize {
        0
    }
    fn refresh(&self, _links: &mut [G]) -> Result<(), HeatbathError> {
        Ok(())
    }
}

impl<G: Pod> Region<G> for DomainSites<'_> {
    fn first(&self) -> usize {
        self.domain.first_site()
    }
    fn refresh(&self, links: &mut [G]) -> Result<(), HeatbathError> {
        self.exchange(links, self.domain.dim()).map_err(|e| HeatbathError::Comm(e.to_string()))
    }
}

/// Checks β, the extents of the (global) lattice and the field length (`stored · d` links).
fn check<G>(lattice: &Lattice, stored: usize, links: &[G], beta: f64) -> Result<(), HeatbathError> {
    if !beta.is_finite() || beta < 0.0 {
        return Err(HeatbathError::Beta(beta));
    }
    lattice.require_even().map_err(|e| match e {
        LatticeError::OddExtent { axis, extent } => HeatbathError::OddExtent { axis, extent },
        // require_even reports nothing else; keep the extent information regardless
        _ => HeatbathError::OddExtent { axis: 0, extent: lattice.shape()[0] },
    })?;
    let expected = stored * lattice.dim();
    if links.len() != expected {
        return Err(HeatbathError::Length { expected, got: links.len() });
    }
    Ok(())
}

/// One link of a checkerboard pass: its (stored) site, its (new) value, and whether its update
/// worked.
#[derive(Clone, Copy)]
struct Slot<G> {
    x: usize,
    u: G,
    ok: bool,
}

/// Loads the links U_μ(x) of the looped-over sites x of `parity` into `slots` (reusing its
/// allocation), in the update's chunks of [`CHUNK_SITES`] slots, in parallel where the update
/// is: on a team each member then loads, updates and stores the same links, which stay in its
/// cache (done by one thread, the gather and the store pulled every link through the other's
/// cache, and an overrelaxation sweep on 8⁴ gained 1.4× on two threads). Returns (the
/// position of the first of them in the lattice's list of sites of that parity, the length
/// of that list): the part of the whole pass's random fill they take.
fn gather<G: GaugeGroup>(
    lattice: &Lattice,
    first: usize,
    sites: usize,
    links: &[G],
    mu: usize,
    parity: usize,
    slots: &mut Vec<Slot<G>>,
) -> (usize, usize) {
    let d = lattice.dim();
    let list = lattice.sites_of_parity(parity);
    let lo = list.partition_point(|&x| (x as usize) < first);
    let hi = list.partition_point(|&x| (x as usize) < first + sites);
    let ours = &list[lo..hi];
    slots.resize(ours.len(), Slot { x: 0, u: G::identity(), ok: true });
    fill_sites_as(SiteWork::of_group::<G>(), slots, 1, |i, slot, _| {
        let x = ours[i] as usize - first;
        slot[0] = Slot { x, u: links[x * d + mu], ok: true };
    });
    (lo, list.len())
}

/// The links of a field, written from several threads at distinct indices.
struct LinkWriter<G> {
    base: *mut G,
    len: usize,
}

// SAFETY: a `LinkWriter` is only used while the field is exclusively borrowed, to write
// distinct links from distinct threads (see `scatter`).
unsafe impl<G: Send> Send for LinkWriter<G> {}
// SAFETY: as above.
unsafe impl<G: Send> Sync for LinkWriter<G> {}

impl<G> LinkWriter<G> {
    /// Stores `value` at link `i` (checked against the field's length).
    ///
    /// # Safety
    /// No other thread reads or writes link `i` meanwhile, and the field outlives the writer.
    unsafe fn store(&self, i: usize, value: G) {
        assert!(i < self.len, "link {i} of {}", self.len);
        // SAFETY: in bounds (checked); exclusive per the caller's contract
        unsafe { self.base.add(i).write(value) }
    }
}

/// Stores the updated links back, in the chunks of [`gather`] (in parallel where it is); if an
/// update failed, stores nothing of this pass and errors, naming the first failed link's global
/// index.
fn scatter<G: GaugeGroup>(d: usize, first: usize, links: &mut [G], mu: usize, slots: &[Slot<G>]) -> Result<(), HeatbathError> {
    if let Some(s) = slots.iter().find(|s| !s.ok) {
        return Err(HeatbathError::NotFinite { link: (s.x + first) * d + mu });
    }
    let out = LinkWriter { base: links.as_mut_ptr(), len: links.len() };
    let store = |part: &[Slot<G>]| {
        for s in part {
            // SAFETY: the slots hold distinct sites (one parity's list), so every link index
            // x·d + μ is written once, by one thread; `links` is exclusively borrowed for this
            // call and nothing else reads it meanwhile
            unsafe { out.store(s.x * d + mu, s.u) };
        }
    };
    if SiteWork::of_group::<G>().parallel(slots.len()) {
        crate::par::chunks(slots, CHUNK_SITES, |_, part| store(part));
    } else {
        store(slots);
    }
    Ok(())
}

/// One Cabibbo–Marinari heat-bath sweep of the Wilson action S = −(β/N) Σ_P Re Tr U_P: every
/// link once, in the order and with the random streams of the module docs (bit-identical for
/// any thread count), each link reunitarised after its update.
///
/// `links` is the field `[site][μ]` (U_μ(x) at x·d + μ, as in [`LinkField`](super::LinkField))
/// on `lattice`; β ≥ 0 (β = 0 draws Haar-random links). Errors, before changing anything, when
/// β is NaN, infinite or negative, an extent is odd, the length is not V·d, or the stream has
/// no room left for the sweep; errors with [`HeatbathError::NotFinite`] on a non-finite link.
pub fn heatbath_sweep<G: HeatbathGroup>(
    lattice: &Lattice,
    links: &mut [G],
    beta: f64,
    rng: &mut Stream,
) -> Result<(), HeatbathError> {
    heatbath_in(lattice, lattice, links, beta, rng)
}

/// [`heatbath_sweep`] of the global `lattice` split over ranks: this rank updates the links of
/// its slab (`slab`; `links` holds them with current halos, `stored · d` links) and refreshes
/// the halos after every pass of one direction and parity. Each link draws what it draws in
/// the whole-lattice sweep (its part of the pass's random fill) and reads the same staple, so
/// the ranks' slabs together are the whole-lattice sweep's field, bit for bit, and `rng`
/// advances as it does. Collective.
pub fn heatbath_sweep_split<G: HeatbathGroup + Pod>(
    lattice: &Lattice,
    slab: &DomainSites<'_>,
    links: &mut [G],
    beta: f64,
    rng: &mut Stream,
) -> Result<(), HeatbathError> {
    heatbath_in(lattice, slab, links, beta, rng)
}

fn heatbath_in<G: HeatbathGroup, R: Region<G>>(
    lattice: &Lattice,
    region: &R,
    links: &mut [G],
    beta: f64,
    rng: &mut Stream,
) -> Result<(), HeatbathError> {
    check(lattice, region.stored(), links, beta)?;
    let d = lattice.dim();
    let chunks = d * (lattice.sites_of_parity(0).len() + lattice.sites_of_parity(1).len());
    if rng.word_pos() + chunks as u128 * HB_LINK_WORDS > WORD_POS_LIMIT {
        return Err(HeatbathError::StreamExhausted { chunks });
    }
    let first = region.first();
    let mut slots = Vec::with_capacity(region.sites().div_ceil(2));
    for mu in 0..d {
        for parity in 0..2 {
            let (at, total) = gather(lattice, first, region.sites(), links, mu, parity, &mut slots);
            let field: &[G] = links;
            #[cfg(target_arch = "x86_64")]
            let wide = wide_vectors();
            fill_random_blocks(&mut slots, at, total, 1, HB_LINK_WORDS, rng, |s, slot| {
                #[cfg(target_arch = "x86_64")]
                if wide {
                    // SAFETY: `wide_vectors` found AVX2 on this CPU
                    slot.ok = unsafe { wide::heatbath_link(region, field, slot, mu, beta, s) };
                    return;
                }
                slot.ok = heatbath_link(region, field, slot, mu, beta, s);
            })
            .map_err(|e| match e {
                RngFillError::StreamExhausted { chunks } => HeatbathError::StreamExhausted { chunks },
                e => HeatbathError::Rng(e),
            })?;
            scatter(d, first, links, mu, &slots)?;
            region.refresh(links)?;
        }
    }
    Ok(())
}

/// One overrelaxation sweep: the move of [`HeatbathGroup::overrelax_link`] on every link, in
/// the order of [`heatbath_sweep`] (parallel over the links of one direction and parity; no
/// random numbers, so bit-identical for any thread count), each link reunitarised after its
/// update. The Wilson action is unchanged to rounding.
///
/// The move does not depend on β: `beta` is checked as for [`heatbath_sweep`] so that both
/// steps refuse the same run cards. Errors as [`heatbath_sweep`] does (no stream involved).
pub fn overrelax_sweep<G: HeatbathGroup>(lattice: &Lattice, links: &mut [G], beta: f64) -> Result<(), HeatbathError> {
    overrelax_in(lattice, lattice, links, beta)
}

/// [`overrelax_sweep`] of the global `lattice` split over ranks, as [`heatbath_sweep_split`]
/// splits the heat-bath: the same links, bit for bit. Collective.
pub fn overrelax_sweep_split<G: HeatbathGroup + Pod>(
    lattice: &Lattice,
    slab: &DomainSites<'_>,
    links: &mut [G],
    beta: f64,
) -> Result<(), HeatbathError> {
    overrelax_in(lattice, slab, links, beta)
}

fn overrelax_in<G: HeatbathGroup, R: Region<G>>(lattice: &Lattice, region: &R, links: &mut [G], beta: f64) -> Result<(), HeatbathError> {
    check(lattice, region.stored(), links, beta)?;
    let d = lattice.dim();
    let first = region.first();
    let mut slots = Vec::with_capacity(region.sites().div_ceil(2));
    for mu in 0..d {
        for parity in 0..2 {
            gather(lattice, first, region.sites(), links, mu, parity, &mut slots);
            let field: &[G] = links;
            #[cfg(target_arch = "x86_64")]
            let wide = wide_vectors();
            fill_sites_as(SiteWork::of_group::<G>(), &mut slots, 1, |_, slot, _| {
                let slot = &mut slot[0];
                #[cfg(target_arch = "x86_64")]
                if wide {
                    // SAFETY: `wide_vectors` found AVX2 on this CPU
                    slot.ok = unsafe { wide::overrelax_link(region, field, slot, mu) };
                    return;
                }
                slot.ok = overrelax_link(region, field, slot, mu);
            });
            scatter(d, first, links, mu, &slots)?;
            region.refresh(links)?;
        }
    }
    Ok(())
}

/// The heat-bath update of one link: its staple, then [`HeatbathGroup::heatbath_link`].
#[inline(always)]
fn heatbath_link<G: HeatbathGroup, R: Region<G>>(region: &R, field: &[G], slot: &mut Slot<G>, mu: usize, beta: f64, rng: &mut Stream) -> bool {
    let a = staple(region, field, slot.x, mu);
    slot.u.heatbath_link(&a, beta, rng)
}

/// The overrelaxation of one link: its staple, then [`HeatbathGroup::overrelax_link`].
#[inline(always)]
fn overrelax_link<G: HeatbathGroup, R: Region<G>>(region: &R, field: &[G], slot: &mut Slot<G>, mu: usize) -> bool {
    let a = staple(region, field, slot.x, mu);
    slot.u.overrelax_link(&a)
}

/// Whether this CPU runs the link updates compiled for AVX2 (`wide`, x86-64 only). They
/// gained 1.12× (heat-bath) and 1.24× (overrelaxation, with the projection's saving) on 8⁴,
/// 1.05× and 1.10× on 16⁴, whole process, on the machine this was tuned on.
#[cfg(target_arch = "x86_64")]
fn wide_vectors() -> bool {
    crate::simd::level() >= crate::simd::AVX2
}

/// The link updates compiled with AVX2 enabled: the same operations in the same order (Rust
/// never fuses a multiply and an add), so the same bits, with wider instructions for the
/// staple's 3×3 products.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::*;

    /// [`super::heatbath_link`].
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn heatbath_link<G: HeatbathGroup, R: Region<G>>(
        region: &R,
        field: &[G],
        slot: &mut Slot<G>,
        mu: usize,
        beta: f64,
        rng: &mut Stream,
    ) -> bool {
        super::heatbath_link(region, field, slot, mu, beta, rng)
    }

    /// [`super::overrelax_link`].
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn overrelax_link<G: HeatbathGroup, R: Region<G>>(region: &R, field: &[G], slot: &mut Slot<G>, mu: usize) -> bool {
        super::overrelax_link(region, field, slot, mu)
    }
}

#[cfg(test)]
#[path = "heatbath_tests.rs"]
mod tests;
