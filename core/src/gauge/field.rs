//! Link fields, neighbour access, and the closed loops built from them: plaquettes, staples,
//! 2×1 rectangles and rectangle staples.
//!
//! Every function here reaches other sites only through [`Neighbours`] (x ± μ̂ as a storage
//! index), never through global coordinates; see the module docs of [`crate::gauge`] for how
//! this carries over to a domain-decomposed lattice.

use super::group::{GaugeGroup, U1Angle};
use super::parallel::{fill_random, sum_sites_as, RngFillError, SiteWork};
use crate::lattice::Lattice;
use crate::rng::Stream;

/// Neighbour access for physics kernels: the storage index of x ± μ̂ for a local site x.
///
/// On a single domain this is the periodic neighbour table of a [`Lattice`]. A domain of a
/// decomposed lattice returns, for neighbours outside the domain, indices ≥ [`Neighbours::sites`]
/// into halo storage appended to each field, filled by a halo exchange before the kernel runs.
pub trait Neighbours: Sync {
    /// Number of dimensions d.
    fn dim(&self) -> usize;
    /// Number of local sites (the sites a kernel loops over).
    fn sites(&self) -> usize;
    /// The storage index of x + μ̂.
    fn up(&self, x: usize, mu: usize) -> usize;
    /// The storage index of x − μ̂.
    fn dn(&self, x: usize, mu: usize) -> usize;
    /// The extent L of the axis that runs fastest through the site index, where the looped-over
    /// sites (and no halo) are x = L·a + c with c the coordinate along that periodic axis: a
    /// step along it changes c by ±1 mod L and keeps a; a step along any other axis keeps c.
    /// Kernels with SIMD across sites split c into lanes: for w dividing L, every site's
    /// neighbours then sit in one other group of w sites, the lanes rotated by a fixed amount.
    /// Default: None (no such kernel runs).
    fn fastest_axis_extent(&self) -> Option<usize> {
        None
    }
}

impl Neighbours for Lattice {
    #[inline]
    fn dim(&self) -> usize {
        Lattice::dim(self)
    }
    #[inline]
    fn sites(&self) -> usize {
        self.volume()
    }
    #[inline]
    fn up(&self, x: usize, mu: usize) -> usize {
        self.fwd(x, mu)
    }
    #[inline]
    fn dn(&self, x: usize, mu: usize) -> usize {
        self.bwd(x, mu)
    }
    /// The last extent: sites are stored row-major, the last axis fastest.
    fn fastest_axis_extent(&self) -> Option<usize> {
        self.shape().last().copied()
    }
}

/// The sites a kernel loops over, with the sums over them: the whole lattice ([`Lattice`]), or
/// one rank's slab of a split lattice ([`super::domain::DomainSites`]), so that one kernel
/// serves both with the same arithmetic.
pub trait Sites: Neighbours {
    /// Stored sites: the looped-over sites, then any halo sites (a field holds `stored · d`
    /// links).
    fn stored(&self) -> usize;
    /// Sites of the whole lattice (of all ranks).
    fn global_sites(&self) -> usize;
    /// Σ over the whole lattice of the terms `f(x, sum)` adds at each looped-over site x,
    /// compensated in core's fixed chunks of sites (the same bits for any thread count, see
    /// [`sum_sites`](super::parallel::sum_sites)). On a split lattice: collective, the ranks'
    /// chunk partials merged in rank order (the bits of one rank when every slab holds whole
    /// chunks). The terms are taken to be [`SiteWork::Heavy`] (loops of links: the sum goes
    /// parallel from 2048 sites).
    fn sum(&self, f: impl Fn(usize, &mut crate::sum::CompensatedSum) + Sync) -> f64;
}

impl Sites for Lattice {
    #[inline]
    fn stored(&self) -> usize {
        self.volume()
    }
    #[inline]
    fn global_sites(&self) -> usize {
        self.volume()
    }
    fn sum(&self, f: impl Fn(usize, &mut crate::sum::CompensatedSum) + Sync) -> f64 {
        sum_sites_as(SiteWork::Heavy, self.volume(), f)
    }
}

/// Read access to the links of a field by storage index (`x·d + μ`): a slice of group
/// elements, or a slice of raw angles for U(1) (the flat layout of `ElementKind::Angle`), so
/// that a plugin can run the loop functions on its configuration buffer without copying.
pub trait Links<G>: Sync {
    /// The link at storage index i.
    fn at(&self, i: usize) -> G;
}

impl<G: GaugeGroup> Links<G> for [G] {
    #[inline]
    fn at(&self, i: usize) -> G {
        self[i]
    }
}

impl Links<U1Angle> for [f64] {
    #[inline]
    fn at(&self, i: usize) -> U1Angle {
        U1Angle(self[i])
    }
}

/// The storage index of link U_μ(x) in a `[site][μ]` field of dimension d.
#[inline]
pub fn link_index(d: usize, x: usize, mu: usize) -> usize {
    x * d + mu
}

/// Why a link field could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldError {
    /// The flat buffer does not have `REALS · V · d` values.
    Length { expected: usize, got: usize },
    /// An element of the buffer is not (close to) a group element.
    NotInGroup { link: usize, deviation: f64 },
    /// The random fill failed.
    Rng(RngFillError),
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldError::Length { expected, got } => {
                write!(f, "a link field on this lattice needs {expected} reals, got {got}")
            }
            FieldError::NotInGroup { link, deviation } => {
                write!(f, "link {link} is not a group element (deviation {deviation:e})")
            }
            FieldError::Rng(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FieldError {}

/// A gauge field: one `G` per link, stored `[site][μ]` (link U_μ(x) at `x·d + μ`), sites in
/// the lattice's row-major order: the flat layout of a `Support::Link` component.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkField<G> {
    dim: usize,
    links: Vec<G>,
}

impl<G: GaugeGroup> LinkField<G> {
    /// The cold field U = 1 on `sites` sites in `dim` dimensions.
    pub fn identity(dim: usize, sites: usize) -> Self {
        Self { dim, links: vec![G::identity(); sites * dim] }
    }

    /// A hot field of Haar-random links, drawn with [`fill_random`] (bit-identical for any
    /// thread count; the stream advances as documented there).
    pub fn random(dim: usize, sites: usize, rng: &mut Stream) -> Result<Self, FieldError> {
        let mut f = Self::identity(dim, sites);
        fill_random(&mut f.links, rng, |s, u| *u = G::random(s)).map_err(FieldError::Rng)?;
        Ok(f)
    }

    /// Reads a field from the flat layout (`G::REALS` reals per link) and checks that every
    /// link is a group element to within `tol` (see [`GaugeGroup::deviation`]).
    pub fn from_reals(dim: usize, sites: usize, r: &[f64], tol: f64) -> Result<Self, FieldError> {
        let expected = sites * dim * G::REALS;
        if r.len() != expected {
            return Err(FieldError::Length { expected, got: r.len() });
        }
        let links: Vec<G> = r.chunks_exact(G::REALS).map(G::from_reals).collect();
        for (link, u) in links.iter().enumerate() {
            let deviation = u.deviation();
            // NaN deviations are rejected too
            if deviation.is_nan() || deviation > tol {
                return Err(FieldError::NotInGroup { link, deviation });
            }
        }
        Ok(Self { dim, links })
    }

    /// Writes the flat layout into `out` (`G::REALS` reals per link).
    pub fn write_reals(&self, out: &mut [f64]) -> Result<(), FieldError> {
        let expected = self.links.len() * G::REALS;
        if out.len() != expected {
            return Err(FieldError::Length { expected, got: out.len() });
        }
        for (u, o) in self.links.iter().zip(out.chunks_exact_mut(G::REALS)) {
            u.write_reals(o);
        }
        Ok(())
    }

    /// A field from its links, `[site][μ]`.
    pub fn from_links(dim: usize, links: Vec<G>) -> Self {
        Self { dim, links }
    }

    /// Number of dimensions d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The links, `[site][μ]`.
    #[inline]
    pub fn links(&self) -> &[G] {
        &self.links
    }

    /// The links, mutable.
    #[inline]
    pub fn links_mut(&mut self) -> &mut [G] {
        &mut self.links
    }

    /// U_μ(x).
    #[inline]
    pub fn link(&self, x: usize, mu: usize) -> &G {
        &self.links[x * self.dim + mu]
    }

    /// U_μ(x), mutable.
    #[inline]
    pub fn link_mut(&mut self, x: usize, mu: usize) -> &mut G {
        &mut self.links[x * self.dim + mu]
    }
}

/// The plaquette U_P(x; μ, ν) = U_μ(x) U_ν(x+μ̂) U_μ(x+ν̂)† U_ν(x)†, multiplied left to right
/// (for U(1) angles: ((θ_μ(x) + θ_ν(x+μ̂)) − θ_μ(x+ν̂)) − θ_ν(x)).
#[inline]
pub fn plaquette<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(
    nb: &N,
    u: &L,
    x: usize,
    mu: usize,
    nu: usize,
) -> G {
    let d = nb.dim();
    u.at(x * d + mu)
        .mul(&u.at(nb.up(x, mu) * d + nu))
        .mul_dagger(&u.at(nb.up(x, nu) * d + mu))
        .mul_dagger(&u.at(x * d + nu))
}

/// The staple sum of link U_μ(x): the 2(d−1) open paths from x+μ̂ back to x,
/// Σ_{ν≠μ} [U_ν(x+μ̂) U_μ(x+ν̂)† U_ν(x)† + U_ν(x+μ̂−ν̂)† U_μ(x−ν̂)† U_ν(x−ν̂)],
/// so that Re Tr(U_μ(x) · staple) is the sum of Re Tr U_P over every plaquette containing
/// U_μ(x).
#[inline(always)]
pub fn staple<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(
    nb: &N,
    u: &L,
    x: usize,
    mu: usize,
) -> G::Mat {
    let d = nb.dim();
    let xp = nb.up(x, mu);
    let mut s = G::Mat::default();
    for nu in 0..d {
        if nu == mu {
            continue;
        }
        let up = u.at(xp * d + nu).mul_dagger(&u.at(nb.up(x, nu) * d + mu)).mul_dagger(&u.at(x * d + nu));
        s += up.to_mat();
        let xm = nb.dn(x, nu);
        // U_ν(x+μ̂−ν̂)† U_μ(x−ν̂)† U_ν(x−ν̂) = (U_μ(x−ν̂) U_ν(x+μ̂−ν̂))† U_ν(x−ν̂)
        let down = u.at(xm * d + mu).mul(&u.at(nb.dn(xp, nu) * d + nu)).dagger_mul(&u.at(xm * d + nu));
        s += down.to_mat();
    }
    s
}

/// One step of a lattice path: along +μ̂ or −μ̂.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The direction μ.
    pub mu: usize,
    /// +μ̂ if true, −μ̂ if false.
    pub forward: bool,
}

/// The ordered product of links along a path from x: a step +μ̂ at site y multiplies by
/// U_μ(y), a step −μ̂ by U_μ(y−μ̂)†. Returns the product (the identity for no steps) and the
/// end site.
#[inline]
pub fn path<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(
    nb: &N,
    u: &L,
    x: usize,
    steps: &[Step],
) -> (G, usize) {
    let d = nb.dim();
    let mut y = x;
    // the first link itself rather than 1 · it (the same entries, one product fewer)
    let Some((first, rest)) = steps.split_first() else {
        return (G::identity(), x);
    };
    let mut p = if first.forward {
        let u0 = u.at(y * d + first.mu);
        y = nb.up(y, first.mu);
        u0
    } else {
        y = nb.dn(y, first.mu);
        u.at(y * d + first.mu).dagger()
    };
    for s in rest {
        if s.forward {
            p = p.mul(&u.at(y * d + s.mu));
            y = nb.up(y, s.mu);
        } else {
            y = nb.dn(y, s.mu);
            p = p.mul_dagger(&u.at(y * d + s.mu));
        }
    }
    (p, y)
}

const fn fw(mu: usize) -> Step {
    Step { mu, forward: true }
}

const fn bw(mu: usize) -> Step {
    Step { mu, forward: false }
}

/// The 2×1 rectangle R(x; μ, ν), two links along μ and one along ν:
/// U_μ(x) U_μ(x+μ̂) U_ν(x+2μ̂) U_μ(x+μ̂+ν̂)† U_μ(x+ν̂)† U_ν(x)†.
#[inline]
pub fn rectangle<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(
    nb: &N,
    u: &L,
    x: usize,
    mu: usize,
    nu: usize,
) -> G {
    path(nb, u, x, &[fw(mu), fw(mu), fw(nu), bw(mu), bw(mu), bw(nu)]).0
}

/// The rectangle staple sum of link U_μ(x): the 6(d−1) open paths from x+μ̂ back to x that
/// close U_μ(x) into a 2×1 or 1×2 rectangle, so that Re Tr(U_μ(x) · result) is the sum of
/// Re Tr R over every rectangle (either orientation) containing U_μ(x). This is the staple of
/// the rectangle term of Symanzik and Iwasaki actions.
pub fn rectangle_staple<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(
    nb: &N,
    u: &L,
    x: usize,
    mu: usize,
) -> G::Mat {
    let d = nb.dim();
    let xp = nb.up(x, mu);
    let mut s = G::Mat::default();
    for nu in 0..d {
        if nu == mu {
            continue;
        }
        // Each path starts at x+μ̂ and ends at x; the first four have the long side along μ.
        let paths: [&[Step]; 6] = [
            &[fw(mu), fw(nu), bw(mu), bw(mu), bw(nu)],
            &[fw(nu), bw(mu), bw(mu), bw(nu), fw(mu)],
            &[fw(mu), bw(nu), bw(mu), bw(mu), fw(nu)],
            &[bw(nu), bw(mu), bw(mu), fw(nu), fw(mu)],
            &[fw(nu), fw(nu), bw(mu), bw(nu), bw(nu)],
            &[bw(nu), bw(nu), bw(mu), fw(nu), fw(nu)],
        ];
        for steps in paths {
            let (p, end) = path(nb, u, xp, steps);
            debug_assert_eq!(end, x);
            s += p.to_mat();
        }
    }
    s
}

/// Σ_x Σ_{μ<ν} Re Tr U_P(x; μ, ν), compensated, in fixed chunks of sites (bit-identical for any
/// thread count).
pub fn plaquette_sum<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(nb: &N, u: &L) -> f64 {
    let planes = planes(nb.dim());
    sum_sites_as(SiteWork::of_group::<G>(), nb.sites(), |x, s| {
        for &(mu, nu) in &planes {
            s.add(plaquette(nb, u, x, mu, nu).re_trace());
        }
    })
}

/// The planes (μ, ν), μ < ν, in the order μ = 0, ν = 1, 2, …; then μ = 1, … (the order of
/// every plaquette loop here). Listed once per call so that site loops walk a flat list.
pub fn planes(d: usize) -> Vec<(usize, usize)> {
    (0..d).flat_map(|mu| (mu + 1..d).map(move |nu| (mu, nu))).collect()
}

/// The mean plaquette ⟨Re Tr U_P⟩/N over all sites and planes μ < ν (1 on the cold field).
pub fn mean_plaquette<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(nb: &N, u: &L) -> f64 {
    let d = nb.dim();
    let count = nb.sites() * d * (d - 1) / 2;
    plaquette_sum(nb, u) / (count as f64 * G::NC as f64)
}

/// The geometric topological charge of 2D U(1) links: Q = (1/2π) Σ_x arg U_01(x), each
/// plaquette angle taken in (−π, π] ([`super::wrap_angle`]), summed over sites in order
/// (compensated). On a periodic lattice it is an integer up to rounding, and gauge invariant.
/// `None` unless the lattice is two-dimensional.
pub fn u1_geometric_charge<L: Links<super::U1Angle> + ?Sized, N: Neighbours + ?Sized>(nb: &N, u: &L) -> Option<f64> {
    if nb.dim() != 2 {
        return None;
    }
    let angles = (0..nb.sites()).map(|x| super::wrap_angle(plaquette(nb, u, x, 0, 1).0));
    Some(crate::sum::compensated_sum(angles) / std::f64::consts::TAU)
}

/// Σ_x Σ_{μ≠ν} Re Tr R(x; μ, ν): every 2×1 rectangle once in each orientation (long side
/// along μ), compensated, in fixed chunks.
pub fn rectangle_sum<G: GaugeGroup, L: Links<G> + ?Sized, N: Neighbours + ?Sized>(nb: &N, u: &L) -> f64 {
    let d = nb.dim();
    sum_sites_as(SiteWork::of_group::<G>(), nb.sites(), |x, s| {
        for mu in 0..d {
            for nu in 0..d {
                if nu != mu {
                    s.add(rectangle(nb, u, x, mu, nu).re_trace());
                }
            }
        }
    })
}

/// The gauge transformation U_μ(x) → g(x) U_μ(x) g(x+μ̂)† with one `g` per site.
pub fn gauge_transform<G: GaugeGroup, N: Neighbours + ?Sized>(nb: &N, u: &mut [G], g: &[G]) {
    let d = nb.dim();
    for x in 0..nb.sites() {
        for mu in 0..d {
            let l = &mut u[x * d + mu];
            *l = g[x].mul(l).mul_dagger(&g[nb.up(x, mu)]);
        }
    }
}
