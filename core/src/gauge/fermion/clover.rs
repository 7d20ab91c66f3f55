//! The clover (Sheikholeslami–Wohlert) term and the gauge data an operator reads.
//!
//! With c_sw ≠ 0 the site-diagonal part of D becomes
//! ```text
//! A(x) = 1 + i·2κμ γ5 + i κ c_sw Σ_{μ<ν} σ_μν F̂_μν(x),   σ_μν = (i/2)[γ_μ, γ_ν] = iγ_μγ_ν,
//! F̂_μν(x) = (Q_μν(x) − Q_μν(x)†) / 8,
//! ```
//! where Q_μν(x) is the sum of the four plaquettes in the (μ, ν) plane that start and end at
//! x, all oriented μ → ν (the clover leaves). This is the hopping-parameter form (2κ times)
//! of openQCD's D_W + c_sw (i/4) Σ_{μ,ν} σ_μν F̂_μν, whose Wilson term has the same
//! (1 − γ_μ) forward hop as here. The clover part is Hermitian and commutes with γ5, so A(x)
//! is block-diagonal in chirality: two blocks of size b = (NS/2)·N, stored densely with
//! their inverses in a [`CloverField`]. The twist enters those blocks as ±i·2κμ.

use super::gamma::{gamma5_diag, gamma_rows};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::spinor::{par_fill, par_fill_blocks, phase, Colour, Spinor, WilsonGroup};
use super::wilson::{check_len, GaugeRef, WilsonDirac, WilsonParams};
use super::FermionError;
use crate::gauge::complex::Complex;
use crate::gauge::group::LieAlgebra;
use crate::gauge::parallel::sum_sites;
use crate::sum::CompensatedSum;

/// The largest chirality block a clover term supports, (NS/2)·N ≤ 8 (SU(4) in 4D, SU(8) in
/// 2D).
pub const MAX_CLOVER_BLOCK: usize = 8;

/// The site-diagonal matrices A(x) of a clover operator for one gauge configuration, and their
/// inverses: per site two chirality blocks (γ5 = +1 first) of b×b complex entries, row-major,
/// block index (spin position within the chirality, colour). Built by
/// [`WilsonDirac::clover_gauge`] for the links it borrows.
#[derive(Debug, Clone, PartialEq)]
pub struct CloverField {
    params: WilsonParams,
    b: usize,
    a: Vec<Complex>,
    inv: Vec<Complex>,
}

impl CloverField {
    /// The number of sites it covers.
    pub fn len(&self) -> usize {
        self.a.len() / (2 * self.b * self.b).max(1)
    }

    /// Whether it covers no site.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    /// The block size b = (NS/2)·N.
    pub fn block(&self) -> usize {
        self.b
    }

    /// The parameters (κ, μ, c_sw) the blocks were computed with.
    pub fn params(&self) -> WilsonParams {
        self.params
    }

    #[inline(always)]
    fn blocks(&self, x: usize, inv: bool) -> &[Complex] {
        let n = 2 * self.b * self.b;
        let src = if inv { &self.inv } else { &self.a };
        &src[x * n..(x + 1) * n]
    }
}

/// The gauge data an operator application reads: the links (`[site][μ]`), and with c_sw ≠ 0
/// the clover field computed from those same links. A plain slice of links serves c_sw = 0;
/// a [`CloverGauge`] serves any c_sw.
pub trait DiracGauge<G: WilsonGroup>: Sync {
    /// The links, `[site][μ]`.
    fn links(&self) -> &[G];
    /// The clover field of these links, if computed.
    fn clover(&self) -> Option<&CloverField> {
        None
    }
    /// The links as [`WilsonGroup::Hop`]s (one per link, same order), if precomputed
    /// ([`HopCached`]); the operator then multiplies by these instead of the links.
    fn hops(&self) -> Option<&[G::Hop]> {
        None
    }
}

/// Gauge data with the links' hopping factors precomputed (U(1): e^{±iθ} once per link, instead
/// of a sine and cosine at every hop of every solver iteration; nothing for SU(N), whose links
/// are their own hopping factors). Wrap the gauge data of a solve or a force in it; results are
/// the same bits (tested).
pub struct HopCached<'a, G: WilsonGroup> {
    inner: &'a dyn DiracGauge<G>,
    hops: Vec<G::Hop>,
}

impl<'a, G: WilsonGroup> HopCached<'a, G> {
    /// Precomputes the hopping factors of `inner`'s links (one allocation of V·d factors, only
    /// where [`WilsonGroup::CACHE_HOPS`]).
    pub fn new(inner: &'a dyn DiracGauge<G>) -> Self {
        let hops = if G::CACHE_HOPS { inner.links().iter().map(WilsonGroup::hop).collect() } else { Vec::new() };
        Self { inner, hops }
    }
}

impl<G: WilsonGroup> DiracGauge<G> for HopCached<'_, G> {
    fn links(&self) -> &[G] {
        self.inner.links()
    }
    fn clover(&self) -> Option<&CloverField> {
        self.inner.clover()
    }
    fn hops(&self) -> Option<&[G::Hop]> {
        if G::CACHE_HOPS {
            Some(&self.hops)
        } else {
            None
        }
    }
}

impl<G: WilsonGroup> DiracGauge<G> for [G] {
    fn links(&self) -> &[G] {
        self
    }
}

impl<G: WilsonGroup> DiracGauge<G> for Vec<G> {
    fn links(&self) -> &[G] {
        self
    }
}

/// Links together with the clover field computed from them by [`WilsonDirac::clover_gauge`]:
/// consistent by construction, since it borrows both for as long as it lives.
#[derive(Debug, Clone, Copy)]
pub struct CloverGauge<'a, G> {
    links: &'a [G],
    clover: &'a CloverField,
}

impl<G: WilsonGroup> DiracGauge<G> for CloverGauge<'_, G> {
    fn links(&self) -> &[G] {
        self.links
    }
    fn clover(&self) -> Option<&CloverField> {
        Some(self.clover)
    }
}

/// For spin s: its chirality (0 for γ5 = +1) and its position among the spins of that
/// chirality.
pub(crate) fn chirality<const NS: usize>() -> [(usize, usize); NS] {
    let g5 = gamma5_diag(NS).unwrap_or(&[]);
    let mut count = [0usize; 2];
    std::array::from_fn(|s| {
        let c = usize::from(g5.get(s).is_some_and(|&g| g < 0.0));
        count[c] += 1;
        (c, count[c] - 1)
    })
}

/// (γ_μγ_ν) as a signed permutation: row r has the entry i^k in column c.
pub(crate) fn gamma_product(ns: usize, mu: usize, nu: usize, r: usize) -> (usize, u8) {
    let (gm, gn) = (gamma_rows(ns, mu).unwrap_or(&[]), gamma_rows(ns, nu).unwrap_or(&[]));
    let m = gm[r];
    let n = gn[m.col];
    (n.col, (m.k + n.k) & 3)
}

/// One plaquette square in the plane (μ, ν), μ < ν, with lower-left corner z: its links
/// a = U_μ(z), b = U_ν(z+μ̂), c = U_μ(z+ν̂), d = U_ν(z) as matrices, and its corners
/// [z, z+μ̂, z+μ̂+ν̂, z+ν̂]. The leaf of Q_μν at corner k is the loop a b c† d† started there.
struct Square<M> {
    a: M,
    b: M,
    c: M,
    d: M,
    corners: [usize; 4],
}

impl<G: WilsonGroup, const NS: usize> WilsonDirac<G, NS> {
    fn square(&self, links: &[G], z: usize, mu: usize, nu: usize) -> Square<G::Mat> {
        let lat = self.lattice();
        let (zm, zn) = (lat.fwd(z, mu), lat.fwd(z, nu));
        let zmn = lat.fwd(zm, nu);
        Square {
            a: links[z * NS + mu].to_mat(),
            b: links[zm * NS + nu].to_mat(),
            c: links[zn * NS + mu].to_mat(),
            d: links[z * NS + nu].to_mat(),
            corners: [z, zm, zmn, zn],
        }
    }

    /// Q_μν(x): the four leaves at x, oriented μ → ν.
    pub(crate) fn clover_leaves(&self, links: &[G], x: usize, mu: usize, nu: usize) -> G::Mat {
        let lat = self.lattice();
        let m = |a: &G::Mat, b: &G::Mat| G::mat_mul(a, b);
        let dg = |a: &G::Mat| G::mat_dagger(a);
        let (xm, xn) = (lat.bwd(x, mu), lat.bwd(x, nu));
        // the squares with lower-left corners x, x−μ̂, x−μ̂−ν̂, x−ν̂; x is their corner 0, 1, 2, 3
        let s0 = self.square(links, x, mu, nu);
        let s1 = self.square(links, xm, mu, nu);
        let s2 = self.square(links, lat.bwd(xm, nu), mu, nu);
        let s3 = self.square(links, xn, mu, nu);
        let mut q = m(&m(&m(&s0.a, &s0.b), &dg(&s0.c)), &dg(&s0.d));
        q += m(&m(&m(&s1.b, &dg(&s1.c)), &dg(&s1.d)), &s1.a);
        q += m(&m(&m(&dg(&s2.c), &dg(&s2.d)), &s2.a), &s2.b);
        q += m(&m(&m(&dg(&s3.d), &s3.a), &s3.b), &dg(&s3.c));
        q
    }

    /// An empty clover field for this operator (allocates once; filled by
    /// [`Self::clover_gauge`], reused for every gauge field). Errors if the chirality blocks
    /// exceed [`MAX_CLOVER_BLOCK`]. With c_sw = 0 the blocks hold only 1 + i·2κμγ5 and the
    /// operator's applications ignore them.
    pub fn new_clover_field(&self) -> Result<CloverField, FermionError> {
        let b = NS / 2 * G::NC;
        if b > MAX_CLOVER_BLOCK {
            return Err(FermionError::CloverBlock { block: b, max: MAX_CLOVER_BLOCK });
        }
        let n = self.volume() * 2 * b * b;
        Ok(CloverField { params: self.params(), b, a: vec![Complex::ZERO; n], inv: vec![Complex::ZERO; n] })
    }

    /// Computes the clover field of `links` into `field` (no allocation) and returns the pair
    /// for the operator's applications. Errors if `field` was made for other parameters or
    /// another lattice, or if some A(x) is singular (no inverse).
    pub fn clover_gauge<'a>(
        &self,
        links: &'a [G],
        field: &'a mut CloverField,
    ) -> Result<CloverGauge<'a, G>, FermionError> {
        self.check_links(links)?;
        let b = NS / 2 * G::NC;
        if field.params != self.params() || field.b != b {
            return Err(FermionError::CloverMismatch);
        }
        check_len("clover field", field.a.len(), self.volume() * 2 * b * b)?;
        let n = 2 * b * b;
        let chi = chirality::<NS>();
        let a = self.twist();
        let kc = self.kappa() * self.params().csw;
        let fill = |x: usize, out: &mut [Complex]| {
            out.iter_mut().for_each(|z| *z = Complex::ZERO);
            for s in 0..NS {
                let (c, p) = chi[s];
                let sign = if c == 0 { 1.0 } else { -1.0 };
                for i in 0..G::NC {
                    let k = p * G::NC + i;
                    out[c * b * b + k * b + k] = Complex::new(1.0, sign * a);
                }
            }
            for mu in 0..NS {
                for nu in mu + 1..NS {
                    let q = self.clover_leaves(links, x, mu, nu);
                    for r in 0..NS {
                        let (col, k) = gamma_product(NS, mu, nu, r);
                        let ((cr, pr), (_, pc)) = (chi[r], chi[col]);
                        // −κ c_sw (γ_μγ_ν)_{r,col} F̂_ij, F̂ = (Q − Q†)/8
                        let g = super::spinor::phase(Complex::real(-kc / 8.0), k);
                        for i in 0..G::NC {
                            for j in 0..G::NC {
                                let f = G::mat_entry(&q, i, j) - G::mat_entry(&q, j, i).conj();
                                out[cr * b * b + (pr * G::NC + i) * b + pc * G::NC + j] += g * f;
                            }
                        }
                    }
                }
            }
        };
        par_fill_blocks(&mut field.a, n, fill);
        let failed = AtomicUsize::new(usize::MAX);
        let blocks = &field.a;
        par_fill_blocks(&mut field.inv, n, |x, out| {
            for c in 0..2 {
                let r = c * b * b..(c + 1) * b * b;
                if !invert(&blocks[x * n..(x + 1) * n][r.clone()], &mut out[r], b) {
                    failed.fetch_min(x, Ordering::Relaxed);
                }
            }
        });
        match failed.into_inner() {
            usize::MAX => Ok(CloverGauge { links, clover: field }),
            site => Err(FermionError::SingularClover { site }),
        }
    }
}

/// The inverse of the b×b complex matrix `m` (row-major) into `out`, by Gauss–Jordan
/// elimination with partial pivoting. False if a pivot is zero or not finite.
fn invert(m: &[Complex], out: &mut [Complex], b: usize) -> bool {
    let mut w = [[Complex::ZERO; 2 * MAX_CLOVER_BLOCK]; MAX_CLOVER_BLOCK];
    for i in 0..b {
        for j in 0..b {
            w[i][j] = m[i * b + j];
        }
        w[i][b + i] = Complex::ONE;
    }
    for k in 0..b {
        let p = (k..b).max_by(|&i, &j| w[i][k].abs2().total_cmp(&w[j][k].abs2())).unwrap_or(k);
        w.swap(k, p);
        let piv = w[k][k];
        if !(piv.is_finite() && piv.abs2() > 0.0) {
            return false;
        }
        let inv = piv.inv();
        for j in 0..2 * b {
            w[k][j] *= inv;
        }
        for i in 0..b {
            if i != k {
                let f = w[i][k];
                for j in 0..2 * b {
                    let t = w[k][j];
                    w[i][j] -= f * t;
                }
            }
        }
    }
    for i in 0..b {
        for j in 0..b {
            out[i * b + j] = w[i][b + j];
        }
    }
    out.iter().all(|z| z.is_finite())
}

/// A(x)ψ, A(x)†ψ, A(x)⁻¹ψ or (A(x)⁻¹)†ψ from the blocks of `field` at site x.
#[inline]
pub(crate) fn apply_blocks<C: Colour, const NS: usize>(
    field: &CloverField,
    x: usize,
    inv: bool,
    dag: bool,
    s: &Spinor<C, NS>,
) -> Spinor<C, NS> {
    let b = field.b;
    let blocks = field.blocks(x, inv);
    let chi = chirality::<NS>();
    let mut v = [[Complex::ZERO; MAX_CLOVER_BLOCK]; 2];
    for (sp, &(c, p)) in chi.iter().enumerate() {
        for (i, z) in s.0[sp].components().iter().enumerate() {
            v[c][p * C::NC + i] = *z;
        }
    }
    let mut out = Spinor::<C, NS>::default();
    for (sp, &(c, p)) in chi.iter().enumerate() {
        let m = &blocks[c * b * b..(c + 1) * b * b];
        for (i, o) in out.0[sp].components_mut().iter_mut().enumerate() {
            let row = p * C::NC + i;
            let mut acc = Complex::ZERO;
            for k in 0..b {
                acc += if dag { m[k * b + row].conj() * v[c][k] } else { m[row * b + k] * v[c][k] };
            }
            *o = acc;
        }
    }
    out
}

impl<G: WilsonGroup, const NS: usize> WilsonDirac<G, NS> {
    /// The matrix R with Σ_{x, μ<ν} Re Tr(Q_μν(x) W_μν(x)) changing by
    /// d/dt Re Tr(exp(tX) U R) when the link U = U_ρ(y) moves, for weights `w(x, μ, ν)`:
    /// the sum over the 2(d−1) squares that contain the link, each with the weights of its four
    /// corners inserted where the leaf starting there begins.
    fn clover_staple(&self, links: &[G], y: usize, rho: usize, w: &impl Fn(usize, usize, usize) -> G::Mat) -> G::Mat {
        let lat = self.lattice();
        let m = |a: &G::Mat, b: &G::Mat| G::mat_mul(a, b);
        let dg = |a: &G::Mat| G::mat_dagger(a);
        let mut r = G::Mat::default();
        for sigma in (0..NS).filter(|&s| s != rho) {
            let (mu, nu) = (rho.min(sigma), rho.max(sigma));
            let weights = |q: &Square<G::Mat>| q.corners.map(|x| w(x, mu, nu));
            // the square on the +σ side of the link, and the one on the −σ side
            let up = self.square(links, y, mu, nu);
            let dn = self.square(links, lat.bwd(y, sigma), mu, nu);
            let (q, [w0, w1, w2, w3]) = (&up, weights(&up));
            let (cd, bcd) = (m(&dg(&q.c), &dg(&q.d)), m(&q.b, &m(&dg(&q.c), &dg(&q.d))));
            if rho < sigma {
                // the link is a of the upper square: R_a = bc†d†W0 + W1bc†d† + bW2c†d† + bc†W3d†
                r += m(&bcd, &w0);
                r += m(&w1, &bcd);
                r += m(&m(&q.b, &w2), &cd);
                r += m(&m(&m(&q.b, &dg(&q.c)), &w3), &dg(&q.d));
            } else {
                // the link is d of the upper square: R_d = (W0abc† + aW1bc† + abW2c† + abc†W3)†
                let (ab, abc) = (m(&q.a, &q.b), m(&m(&q.a, &q.b), &dg(&q.c)));
                let mut k = m(&w0, &abc);
                k += m(&m(&q.a, &w1), &m(&q.b, &dg(&q.c)));
                k += m(&m(&ab, &w2), &dg(&q.c));
                k += m(&abc, &w3);
                r += dg(&k);
            }
            let (q, [w0, w1, w2, w3]) = (&dn, weights(&dn));
            if rho < sigma {
                // the link is c of the lower square: R_c = (d†W0ab + d†aW1b + d†abW2 + W3d†ab)†
                let (dab, da) = (m(&dg(&q.d), &m(&q.a, &q.b)), m(&dg(&q.d), &q.a));
                let mut k = m(&m(&dg(&q.d), &w0), &m(&q.a, &q.b));
                k += m(&m(&da, &w1), &q.b);
                k += m(&dab, &w2);
                k += m(&w3, &dab);
                r += dg(&k);
            } else {
                // the link is b of the lower square: R_b = c†d†W0a + c†d†aW1 + W2c†d†a + c†W3d†a
                let cd = m(&dg(&q.c), &dg(&q.d));
                let cda = m(&cd, &q.a);
                r += m(&m(&cd, &w0), &q.a);
                r += m(&cda, &w1);
                r += m(&w2, &cda);
                r += m(&m(&m(&dg(&q.c), &w3), &dg(&q.d)), &q.a);
            }
        }
        r
    }

    /// out[l] += coef · d/dt Σ_{x, μ<ν} Re Tr(Q_μν(x) W_μν(x)) at U_l → exp(t X_a) U_l with
    /// W = (Λ − Λ†)/8 for the colour matrices Λ = `lambda(x, μ, ν)`.
    pub(crate) fn clover_force_add(
        &self,
        links: &[G],
        coef: f64,
        lambda: impl Fn(usize, usize, usize) -> G::Mat + Sync,
        out: &mut [G::Algebra],
    ) {
        let w = |x: usize, mu: usize, nu: usize| {
            let l = lambda(x, mu, nu);
            let mut w = G::mat_scale(&l, Complex::real(0.125));
            w += G::mat_scale(&G::mat_dagger(&l), Complex::real(-0.125));
            w
        };
        par_fill(out, |l, f| {
            let r = self.clover_staple(links, l / NS, l % NS, &w);
            f.axpy(coef, &links[l].re_trace_derivative(&r));
        });
    }

    /// Λ_μν(x) = weight · Σ_r (γ_μγ_ν)_{r,c} X(x)_c ⊗ Y(x)_r†, so that
    /// Re(Y(x)† (γ_μγ_ν ⊗ δF) X(x)) = weight⁻¹ · Re Tr(δF Λ).
    pub(crate) fn spinor_lambda(
        x: &Spinor<G::Colour, NS>,
        y: &Spinor<G::Colour, NS>,
        mu: usize,
        nu: usize,
        weight: f64,
    ) -> G::Mat {
        let mut l = G::Mat::default();
        for r in 0..NS {
            let (c, k) = gamma_product(NS, mu, nu, r);
            l += G::outer(&x.0[c].mul_c(phase(Complex::real(weight), k)), &y.0[r]);
        }
        l
    }

    /// The clover part of the pseudofermion force, added to `out`: −2 Re(Y† δA X) with the
    /// site weights `w[parity]` (1, 1 on the full lattice; 1, κ² for the even–odd action),
    /// times `scale`.
    pub(crate) fn clover_pf_force_add(
        &self,
        g: GaugeRef<'_, G>,
        x: &[Spinor<G::Colour, NS>],
        y: &[Spinor<G::Colour, NS>],
        w: [f64; 2],
        scale: f64,
        out: &mut [G::Algebra],
    ) {
        if g.clover.is_none() {
            return;
        }
        let lat = self.lattice();
        let coef = 2.0 * self.kappa() * self.params().csw * scale;
        let lambda = |s: usize, mu, nu| Self::spinor_lambda(&x[s], &y[s], mu, nu, w[lat.site_parity(s)]);
        self.clover_force_add(g.links, coef, lambda, out);
    }

    /// Σ_{x of `parity`} ln det(A(x)†A(x)) of the site-diagonal clover blocks (all sites for
    /// `None`), a compensated sum. With even–odd preconditioning
    /// det(D†D) = det(A_oo†A_oo) · det(D̂†D̂), so HMC on φ_e†(D̂†D̂)⁻¹φ_e needs the action term
    /// −`clover_log_det(g, Some(1))` (see [`Self::clover_log_det_force`]).
    pub fn clover_log_det(&self, g: &CloverGauge<'_, G>, parity: Option<usize>) -> Result<f64, FermionError> {
        let g = self.gauge(g)?;
        let Some(c) = g.clover else { return Ok(0.0) };
        let lat = self.lattice();
        Ok(sum_sites(lat.volume(), |x, s: &mut CompensatedSum| {
            if parity.is_none_or(|p| lat.site_parity(x) == p) {
                let blocks = c.blocks(x, false);
                let b = c.b;
                for k in 0..2 {
                    s.add(2.0 * log_abs_det(&blocks[k * b * b..(k + 1) * b * b], b));
                }
            }
        }))
    }

    /// The force of S_det = −Σ_{x of `parity`} ln det(A(x)†A(x)) (all sites for `None`), the
    /// even–odd clover determinant term: F^a = dS_det/dt at U_l → exp(t X_a) U_l, written into
    /// `out` (V·d algebra elements, overwriting it).
    pub fn clover_log_det_force(
        &self,
        g: &CloverGauge<'_, G>,
        parity: Option<usize>,
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        let g = self.gauge(g)?;
        check_len("force", out.len(), self.volume() * NS)?;
        out.iter_mut().for_each(|f| *f = G::Algebra::zero());
        let Some(c) = g.clover else { return Ok(()) };
        let lat = self.lattice();
        let chi = chirality::<NS>();
        let b = c.b;
        // d/dt S_det = −2 Re Tr(A⁻¹ δA) = 2κ c_sw Σ Re Tr(δF Λ'), Λ'_ji = Σ_r (γγ)_{rc} (A⁻¹)_{(c,j),(r,i)}
        let lambda = |x: usize, mu: usize, nu: usize| {
            let mut l = G::Mat::default();
            if parity.is_some_and(|p| lat.site_parity(x) != p) {
                return l;
            }
            let inv = c.blocks(x, true);
            for r in 0..NS {
                let (col, k) = gamma_product(NS, mu, nu, r);
                let ((cr, pr), (_, pc)) = (chi[r], chi[col]);
                let blk = &inv[cr * b * b..(cr + 1) * b * b];
                let z = phase(Complex::ONE, k);
                // accumulate as outer products of unit vectors: Λ'_ji over colours i, j
                for j in 0..G::NC {
                    let mut a = G::Colour::default();
                    a.components_mut()[j] = Complex::ONE;
                    for i in 0..G::NC {
                        let mut e = G::Colour::default();
                        e.components_mut()[i] = Complex::ONE;
                        let v = z * blk[(pc * G::NC + j) * b + pr * G::NC + i];
                        l += G::outer(&a.mul_c(v), &e);
                    }
                }
            }
            l
        };
        self.clover_force_add(g.links, 2.0 * self.kappa() * self.params().csw, lambda, out);
        Ok(())
    }
}

/// ln |det m| of a b×b complex matrix by LU with partial pivoting (−∞ if singular).
fn log_abs_det(m: &[Complex], b: usize) -> f64 {
    let mut w = [[Complex::ZERO; MAX_CLOVER_BLOCK]; MAX_CLOVER_BLOCK];
    for i in 0..b {
        for j in 0..b {
            w[i][j] = m[i * b + j];
        }
    }
    let mut total = 0.0;
    for k in 0..b {
        let p = (k..b).max_by(|&i, &j| w[i][k].abs2().total_cmp(&w[j][k].abs2())).unwrap_or(k);
        w.swap(k, p);
        let piv = w[k][k];
        if piv.abs2() == 0.0 {
            return f64::NEG_INFINITY;
        }
        total += piv.abs().ln();
        let inv = piv.inv();
        for i in k + 1..b {
            let f = w[i][k] * inv;
            for j in k + 1..b {
                let t = w[k][j];
                w[i][j] -= f * t;
            }
        }
    }
    total
}
