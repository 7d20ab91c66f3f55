//! SU(3) Wilson-action kernels specialised for speed: the force (staple sums with shared
//! two-link products: 40 products per site in 4D where the textbook staples take 52), the
//! plaquette sum (two products and the trace of a product per plaquette), and the HMC drift
//! U ← exp(εP)·U with core's exact exponential.
//!
//! Links are handled as three rows of six reals (re, im interleaved), the memory of [`Su3`].
//! A product C = A·B is formed row by row, C_i = Σ_k A_ik B_k, with the complex scalar A_ik
//! applied to the whole row B_k as Re(A_ik)·B_k + Im(A_ik)·(i B_k): plain multiplies and adds
//! on six-real rows, which the compiler turns into packed vector instructions. Each entry is
//! summed in the same order as [`latflow_core::gauge::Matrix`]'s products (k = 0, 1, 2 from
//! zero), so the products give the same bits. No fused multiply-add is ever used, so results
//! do not depend on the machine; every loop runs in core's fixed chunks of sites, so they do
//! not depend on the thread count either; nothing allocates per site.
//!
//! The same code is also compiled with AVX2 and with AVX-512F enabled, and the widest variant
//! the CPU has is chosen at run time ([`simd_level`]): the instructions are wider, the
//! arithmetic is the same operation by operation, and the bits are identical (tested). Where
//! the lattice allows, [`wilson_force`] hands over to [`crate::blocked`], which does the same
//! operations with W sites per vector.

use latflow_core::gauge::parallel::{fill_sites_as, SiteWork};
use latflow_core::gauge::su3::{
    adj_mul_rows as adj_mul, adj_rows as adj, mul_adj_rows as mul_adj, mul_rows as mul,
    re_tr_mul_adj_rows as re_tr_mul_adj, rows, Rows,
};
use latflow_core::gauge::{su3, Neighbours, Sites, Su3, SuAlg};
use latflow_core::sum::CompensatedSum;

/// The largest dimension the specialised kernels handle (their per-site staple sums live on
/// the stack); larger d uses the generic kernels.
pub const MAX_DIM: usize = 8;

/// acc += m.
#[inline(always)]
fn add_to(acc: &mut Rows, m: &Rows) {
    for i in 0..3 {
        for j in 0..6 {
            acc[i][j] += m[i][j];
        }
    }
}

/// acc += m†.
#[inline(always)]
fn add_adj_to(acc: &mut Rows, m: &Rows) {
    add_to(acc, &adj(m));
}

/// The algebra element (w/2)·TA(M), TA the traceless anti-Hermitian part: with w = β/3 and
/// M = U·(staple sum), the Wilson force of the link in core's coefficient convention
/// (−w·(−½ TA(U A)), as `re_trace_derivative(..).scale(−w)` computes it).
#[inline(always)]
fn force_of(m: &Rows, w: f64) -> SuAlg<3> {
    let mut a = [[0.0; 6]; 3];
    for i in 0..3 {
        for j in 0..3 {
            a[i][2 * j] = (m[i][2 * j] - m[j][2 * i]) * 0.5;
            a[i][2 * j + 1] = (m[i][2 * j + 1] + m[j][2 * i + 1]) * 0.5;
        }
    }
    let tr = ((a[0][1] + a[1][3]) + a[2][5]) / 3.0;
    for i in 0..3 {
        a[i][2 * i] = 0.0;
        a[i][2 * i + 1] -= tr;
    }
    let s = -w;
    let mut out = [[0.0; 6]; 3];
    for i in 0..3 {
        for j in 0..6 {
            out[i][j] = (a[i][j] * -0.5) * s;
        }
    }
    SuAlg(bytemuck::cast(out))
}

/// The widest compiled variant of the kernels this CPU runs: 0 baseline, 1 AVX2, 2 AVX-512F
/// ([`latflow_core::simd::level`]).
pub fn simd_level() -> u8 {
    latflow_core::simd::level()
}

/// The variant the force runs: the widest (AVX-512 was the fastest on the AMD EPYC (Zen 5)
/// this was tuned on; every variant gives the same bits).
pub fn force_level() -> u8 {
    simd_level()
}

/// The variant the plaquette sum runs: at most AVX2 (faster than AVX-512 for the short
/// product chains of a plaquette on the machine this was tuned on; the same bits either way).
pub fn plaquette_level() -> u8 {
    simd_level().min(1)
}

/// The variant the HMC drift runs: at most AVX2 (the fastest on the machine this was tuned on;
/// the same bits either way).
pub fn step_level() -> u8 {
    simd_level().min(1)
}

/// The names of the variants, by level.
pub const SIMD_NAMES: [&str; 3] = ["baseline", "AVX2", "AVX-512"];

/// The staple sums A_μ of every link of site x (μ < d), accumulated in plane order: for each
/// plane μ < ν the upper staples of U_μ(x) and U_ν(x) from one shared product
/// C = U_ν(x+μ̂) U_μ(x+ν̂)†, and the lower staples (U_μ(y) U_ν(y+μ̂))† U_ν(y) at y = x − ν̂ and
/// (U_ν(y) U_μ(y+ν̂))† U_μ(y) at y = x − μ̂. For each link the ν ≠ μ arrive in increasing
/// order, upper before lower, as in core's `staple`.
#[inline(always)]
fn staples<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], x: usize, acc: &mut [Rows; MAX_DIM]) {
    let d = lat.dim();
    let link = |y: usize, mu: usize| rows(&u[y * d + mu]);
    for mu in 0..d {
        for nu in mu + 1..d {
            let (xm, xn) = (lat.up(x, mu), lat.up(x, nu));
            let c = mul_adj(link(xm, nu), link(xn, mu));
            let up_mu = mul_adj(&c, link(x, nu));
            add_to(&mut acc[mu], &up_mu);
            let uc = mul(link(x, mu), &c);
            let yn = lat.dn(x, nu);
            let lo_mu = adj_mul(&mul(link(yn, mu), link(lat.up(yn, mu), nu)), link(yn, nu));
            add_to(&mut acc[mu], &lo_mu);
            add_adj_to(&mut acc[nu], &uc);
            let ym = lat.dn(x, mu);
            let lo_nu = adj_mul(&mul(link(ym, nu), link(lat.up(ym, nu), mu)), link(ym, mu));
            add_to(&mut acc[nu], &lo_nu);
        }
    }
}

/// U_μ(y)† U_ν(y) for every plane μ < ν of site y (the "corner" products), in plane order.
#[inline(always)]
fn corners_site<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], y: usize, out: &mut [Rows]) {
    let d = lat.dim();
    let link = |mu: usize| rows(&u[y * d + mu]);
    let mut k = 0;
    for mu in 0..d {
        for nu in mu + 1..d {
            out[k] = adj_mul(link(mu), link(nu));
            k += 1;
        }
    }
}

/// As [`staples`], with the lower staples from the corner products F(y) = U_μ(y)† U_ν(y) of
/// every site (`corners`, d(d−1)/2 per site in plane order): (U_μ(y) U_ν(y+μ̂))† U_ν(y) =
/// U_ν(y+μ̂)† F(y) and (U_ν(y) U_μ(y+ν̂))† U_μ(y) = (F(y) U_μ(y+ν̂))†, one product each.
#[inline(always)]
fn staples_shared<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], corners: &[Rows], x: usize, acc: &mut [Rows; MAX_DIM]) {
    let d = lat.dim();
    let planes = d * (d - 1) / 2;
    let link = |y: usize, mu: usize| rows(&u[y * d + mu]);
    let mut k = 0;
    for mu in 0..d {
        for nu in mu + 1..d {
            let (xm, xn) = (lat.up(x, mu), lat.up(x, nu));
            let c = mul_adj(link(xm, nu), link(xn, mu));
            let up_mu = mul_adj(&c, link(x, nu));
            add_to(&mut acc[mu], &up_mu);
            let uc = mul(link(x, mu), &c);
            let yn = lat.dn(x, nu);
            let lo_mu = adj_mul(link(lat.up(yn, mu), nu), &corners[yn * planes + k]);
            add_to(&mut acc[mu], &lo_mu);
            add_adj_to(&mut acc[nu], &uc);
            let ym = lat.dn(x, mu);
            let lo_nu = mul(&corners[ym * planes + k], link(lat.up(ym, nu), mu));
            add_adj_to(&mut acc[nu], &lo_nu);
            k += 1;
        }
    }
}

#[inline(always)]
fn force_site_shared<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], corners: &[Rows], w: f64, x: usize, out: &mut [SuAlg<3>]) {
    let mut acc = [[[0.0; 6]; 3]; MAX_DIM];
    staples_shared(lat, u, corners, x, &mut acc);
    let d = lat.dim();
    for (mu, f) in out.iter_mut().enumerate() {
        *f = force_of(&mul(rows(&u[x * d + mu]), &acc[mu]), w);
    }
}

#[inline(always)]
fn force_site<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], w: f64, x: usize, out: &mut [SuAlg<3>]) {
    let mut acc = [[[0.0; 6]; 3]; MAX_DIM];
    staples(lat, u, x, &mut acc);
    let d = lat.dim();
    for (mu, f) in out.iter_mut().enumerate() {
        *f = force_of(&mul(rows(&u[x * d + mu]), &acc[mu]), w);
    }
}

#[inline(always)]
fn plaquettes_site<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], x: usize, s: &mut CompensatedSum) {
    let d = lat.dim();
    let link = |y: usize, mu: usize| rows(&u[y * d + mu]);
    for mu in 0..d {
        for nu in mu + 1..d {
            let a = mul(link(x, mu), link(lat.up(x, mu), nu));
            let b = mul(link(x, nu), link(lat.up(x, nu), mu));
            s.add(re_tr_mul_adj(&a, &b));
        }
    }
}

/// The per-site kernels compiled with a wider instruction set enabled: the same operations in
/// the same order (no fused multiply-add: Rust never contracts), wider instructions.
macro_rules! variant {
    ($name:ident, $feature:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::*;

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn force_site<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], w: f64, x: usize, out: &mut [SuAlg<3>]) {
                super::force_site(lat, u, w, x, out)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn corners_site<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], y: usize, out: &mut [Rows]) {
                super::corners_site(lat, u, y, out)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn force_site_shared<N: Neighbours + ?Sized>(
                lat: &N,
                u: &[Su3],
                corners: &[Rows],
                w: f64,
                x: usize,
                out: &mut [SuAlg<3>],
            ) {
                super::force_site_shared(lat, u, corners, w, x, out)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn step_site(links: &mut [Su3], p: &[SuAlg<3>], eps: f64) {
                su3::exp_mul_into(links, p, eps)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn products(a: &[Rows], b: &[Rows], c: &mut [Rows]) {
                super::products_impl(a, b, c)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn plaquettes_site<N: Neighbours + ?Sized>(lat: &N, u: &[Su3], x: usize, s: &mut CompensatedSum) {
                super::plaquettes_site(lat, u, x, s)
            }
        }
    };
}

variant!(avx2, "avx2");
variant!(avx512, "avx512f");

/// `level` if this CPU runs it, else the widest it runs.
fn runnable(level: u8) -> u8 {
    level.min(simd_level())
}

/// The HMC drift U ← exp(εP)·U of every link (`[site][μ]`, `d` links per site), with core's
/// exact SU(3) exponential: the same bits as core's `FlatLinkSpace::step_field`, in the
/// compiled variant `level` (see [`wilson_force`]).
pub fn step_links(u: &mut [Su3], p: &[SuAlg<3>], d: usize, eps: f64, level: u8) {
    let at = |x: usize| &p[x * d..(x + 1) * d];
    match runnable(level) {
        // SAFETY: the CPU has the instruction set (`runnable` checked it).
        #[cfg(target_arch = "x86_64")]
        2 => fill_sites_as(SiteWork::Heavy, u, d, |x, links, _| unsafe { avx512::step_site(links, at(x), eps) }),
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        1 => fill_sites_as(SiteWork::Heavy, u, d, |x, links, _| unsafe { avx2::step_site(links, at(x), eps) }),
        _ => fill_sites_as(SiteWork::Heavy, u, d, |x, links, _| su3::exp_mul_into(links, at(x), eps)),
    };
}

/// c[i] = a[i]·b[i] (a micro-kernel for benchmarks). `level` as for [`wilson_force`].
pub fn products(a: &[Rows], b: &[Rows], c: &mut [Rows], level: u8) {
    match runnable(level) {
        // SAFETY: the CPU has the instruction set (`runnable` checked it).
        #[cfg(target_arch = "x86_64")]
        2 => unsafe { avx512::products(a, b, c) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { avx2::products(a, b, c) },
        _ => products_impl(a, b, c),
    }
}

#[inline(always)]
fn products_impl(a: &[Rows], b: &[Rows], c: &mut [Rows]) {
    for ((a, b), c) in a.iter().zip(b).zip(c) {
        *c = mul(a, b);
    }
}

/// The largest buffer of corner products the force keeps (per calling thread): up to this
/// size (16⁴ in d = 4 is 57 MB, 12⁴ 18 MB) the lower staples reuse them; beyond, they are
/// formed from scratch (46 instead of 40 products per site in d = 4), so that memory stays
/// bounded.
pub const CORNERS_MAX_BYTES: usize = 32 << 20;

thread_local! {
    /// The corner products of the last force evaluated on this thread (reused storage).
    static CORNERS: std::cell::RefCell<Vec<Rows>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The Wilson force F(x, μ) = ∂S/∂ω^a (core's coefficient convention) of every link of the
/// looped-over sites of `lat` (the whole lattice, or one rank's slab whose halos `u` holds:
/// `u` has the links of all `lat.stored()` sites), with w = β c0/3 the weight of Re Tr U_P in
/// −S, written to `f` (`[site][μ]`). Requires 2 ≤ d ≤ [`MAX_DIM`]. `level` selects the compiled
/// variant (see [`simd_level`]; a level the CPU lacks falls back to the widest it has). When
/// the corner products of the *global* lattice take at most [`CORNERS_MAX_BYTES`] it shares
/// them between lower staples (the same result up to rounding); deciding by the global volume
/// gives a split lattice the arithmetic of the whole one, so every link's force has the same
/// bits. On a whole lattice whose fastest extent a lane width divides, and whose blocked
/// buffers fit [`crate::blocked::BLOCKED_MAX_BYTES`], the force runs with SIMD across sites
/// ([`crate::blocked`]): the same bits, faster.
pub fn wilson_force<S: Sites + ?Sized>(lat: &S, u: &[Su3], w: f64, f: &mut [SuAlg<3>], level: u8) {
    let d = lat.dim();
    assert!((2..=MAX_DIM).contains(&d), "the SU(3) fast path handles 2 ≤ d ≤ {MAX_DIM}, got {d}");
    let shared = shares_corners(lat);
    let level = runnable(level);
    if let Some(width) = crate::blocked::lane_width(lat, level, shared) {
        crate::blocked::wilson_force(lat, u, w, f, width, level, shared);
        return;
    }
    wilson_force_with(lat, lat.stored(), u, w, f, level, shared);
}

/// The site-blocked layout [`wilson_force`] takes on `lat` (at [`force_level`], corners shared
/// as it decides), or None where it takes the per-site kernels: HMC then keeps its fields in
/// this layout for whole trajectories ([`crate::space::PackedSpace`]).
pub fn blocked_layout<S: Sites + ?Sized>(lat: &S) -> Option<crate::blocked::Layout> {
    let d = lat.dim();
    if !(2..=MAX_DIM).contains(&d) {
        return None;
    }
    let (shared, level) = (shares_corners(lat), runnable(force_level()));
    let width = crate::blocked::lane_width(lat, level, shared)?;
    Some(crate::blocked::Layout::new(lat, width, level, shared))
}

/// [`wilson_force`] by the per-site kernels alone (SIMD within each matrix), never the
/// site-blocked ones: the same bits, for comparison benchmarks.
pub fn wilson_force_per_site<S: Sites + ?Sized>(lat: &S, u: &[Su3], w: f64, f: &mut [SuAlg<3>], level: u8) {
    wilson_force_with(lat, lat.stored(), u, w, f, level, shares_corners(lat));
}

/// Whether the force shares corner products between lower staples: when those of the *global*
/// lattice take at most [`CORNERS_MAX_BYTES`] (see [`wilson_force`]).
pub(crate) fn shares_corners<S: Sites + ?Sized>(lat: &S) -> bool {
    let d = lat.dim();
    lat.global_sites() * d * (d - 1) / 2 * std::mem::size_of::<Rows>() <= CORNERS_MAX_BYTES
}

/// [`wilson_force`], with (`shared`) or without the corner products.
fn wilson_force_with<N: Neighbours + ?Sized>(
    lat: &N,
    stored: usize,
    u: &[Su3],
    w: f64,
    f: &mut [SuAlg<3>],
    level: u8,
    shared: bool,
) {
    let d = lat.dim();
    assert!((2..=MAX_DIM).contains(&d), "the SU(3) fast path handles 2 ≤ d ≤ {MAX_DIM}, got {d}");
    let level = runnable(level);
    if !shared {
        match level {
            // SAFETY: the CPU has the instruction set (`runnable` checked it).
            #[cfg(target_arch = "x86_64")]
            2 => fill_sites_as(SiteWork::Heavy, f, d, |x, out, _| unsafe { avx512::force_site(lat, u, w, x, out) }),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            1 => fill_sites_as(SiteWork::Heavy, f, d, |x, out, _| unsafe { avx2::force_site(lat, u, w, x, out) }),
            _ => fill_sites_as(SiteWork::Heavy, f, d, |x, out, _| force_site(lat, u, w, x, out)),
        };
        return;
    }
    // A thread that waits inside a parallel loop may run another force meanwhile (rayon's work
    // stealing); that one takes a buffer of its own (the same arithmetic, the same bits).
    CORNERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => force_shared(lat, stored, u, w, f, level, &mut buf),
        Err(_) => force_shared(lat, stored, u, w, f, level, &mut Vec::new()),
    });
}

/// The shared-corner force with `buf` as the corner storage (resized to fit): the corners of
/// every stored site (a split lattice's lower staples reach into the halo below).
fn force_shared<N: Neighbours + ?Sized>(
    lat: &N,
    stored: usize,
    u: &[Su3],
    w: f64,
    f: &mut [SuAlg<3>],
    level: u8,
    buf: &mut Vec<Rows>,
) {
    let d = lat.dim();
    let planes = d * (d - 1) / 2;
    buf.resize(stored * planes, [[0.0; 6]; 3]);
    let corners = &mut buf[..];
    match level {
        // SAFETY: the CPU has the instruction set (the caller checked it with `runnable`).
        #[cfg(target_arch = "x86_64")]
        2 => fill_sites_as(SiteWork::Heavy, corners, planes, |y, out, _| unsafe { avx512::corners_site(lat, u, y, out) }),
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        1 => fill_sites_as(SiteWork::Heavy, corners, planes, |y, out, _| unsafe { avx2::corners_site(lat, u, y, out) }),
        _ => fill_sites_as(SiteWork::Heavy, corners, planes, |y, out, _| corners_site(lat, u, y, out)),
    };
    let c = &*corners;
    match level {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        2 => fill_sites_as(SiteWork::Heavy, f, d, |x, out, _| unsafe { avx512::force_site_shared(lat, u, c, w, x, out) }),
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        1 => fill_sites_as(SiteWork::Heavy, f, d, |x, out, _| unsafe { avx2::force_site_shared(lat, u, c, w, x, out) }),
        _ => fill_sites_as(SiteWork::Heavy, f, d, |x, out, _| force_site_shared(lat, u, c, w, x, out)),
    };
}

/// Σ_x Σ_{μ<ν} Re Tr U_P(x; μ, ν) over the whole lattice, compensated in fixed chunks
/// ([`Sites::sum`]: on a split lattice, collective), with U_P's trace taken as
/// Re Tr[(U_μ(x) U_ν(x+μ̂)) (U_ν(x) U_μ(x+ν̂))†]. `level` as for [`wilson_force`].
pub fn plaquette_sum<S: Sites + ?Sized>(lat: &S, u: &[Su3], level: u8) -> f64 {
    match runnable(level) {
        // SAFETY: the CPU has the instruction set (`runnable` checked it).
        #[cfg(target_arch = "x86_64")]
        2 => lat.sum(|x, s| unsafe { avx512::plaquettes_site(lat, u, x, s) }),
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        1 => lat.sum(|x, s| unsafe { avx2::plaquettes_site(lat, u, x, s) }),
        _ => lat.sum(|x, s| plaquettes_site(lat, u, x, s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latflow_core::Lattice;
    use latflow_core::gauge::{plaquette_sum as generic_plaquette_sum, staple, GaugeGroup, LieAlgebra};
    use latflow_core::Stream;

    fn hot(shape: &[i64], seed: u64) -> (Lattice, Vec<Su3>) {
        let lat = Lattice::new(shape).unwrap();
        let mut rng = Stream::new(seed, 0);
        let u = (0..lat.volume() * lat.dim()).map(|_| Su3::random(&mut rng)).collect();
        (lat, u)
    }

    #[test]
    fn products_give_core_bits() {
        let mut rng = Stream::new(3, 0);
        for _ in 0..100 {
            let (a, b) = (Su3::random(&mut rng).scale(1.3), Su3::random(&mut rng));
            let (ra, rb) = (rows(&a), rows(&b));
            let same = |x: Rows, y: Su3| x == *rows(&y);
            assert!(same(mul(ra, rb), a * b));
            assert!(same(mul_adj(ra, rb), a.mul_dagger(&b)));
            assert!(same(adj_mul(ra, rb), a.dagger_mul(&b)));
            assert!(same(adj(ra), a.dagger()));
            let t = re_tr_mul_adj(ra, rb);
            assert!((t - a.mul_dagger(&b).re_trace()).abs() < 1e-14);
        }
    }

    #[test]
    fn force_and_plaquettes_match_the_generic_kernels() {
        for (shape, seed) in
            [(&[4i64, 4, 4, 4][..], 1), (&[3, 4, 2][..], 2), (&[4, 4][..], 3), (&[2, 3, 2, 2, 3][..], 4)]
        {
            let (lat, u) = hot(shape, seed);
            let d = lat.dim();
            let w = 5.7 / 3.0;
            for (level, shared) in (0..=simd_level()).flat_map(|l| [(l, false), (l, true)]) {
                let mut f = vec![SuAlg::<3>::zero(); u.len()];
                wilson_force_with(&lat, lat.volume(), &u, w, &mut f, level, shared);
                for x in 0..lat.volume() {
                    for mu in 0..d {
                        let l = &u[x * d + mu];
                        let g = l.re_trace_derivative(&staple(&lat, &u[..], x, mu)).scale(-w);
                        let diff = (g.0 - f[x * d + mu].0).norm2().sqrt();
                        assert!(diff < 1e-13, "{shape:?} x {x} mu {mu}: {diff:e}");
                    }
                }
                let (p, q) = (plaquette_sum(&lat, &u, level), generic_plaquette_sum(&lat, &u[..]));
                assert!((p - q).abs() < 1e-12 * q.abs().max(1.0), "{shape:?}: {p} vs {q}");
            }
        }
    }

    /// The site-blocked force (SIMD across sites) gives the bits of the per-site kernels, at
    /// every lane width that splits the lattice, every compiled variant, with and without
    /// shared corners, on one, two and three threads (the lattices from 2048 sites run in
    /// tasks of whole slabs: two slabs in all, the slowest extent 2; five slabs in tasks of
    /// two, two and one; six in two tasks of three or three of two).
    #[test]
    fn blocked_force_gives_the_per_site_bits() {
        for (shape, seed) in [
            (&[4i64, 4, 4, 8][..], 1),
            (&[4, 4, 4, 4][..], 2),
            (&[2, 3, 2, 4][..], 3),
            (&[8, 8][..], 4),
            (&[3, 2, 6][..], 5),
            (&[6, 6, 8, 16][..], 6),
            (&[3, 3, 3][..], 7),
            (&[2, 8, 8, 16][..], 8),
            (&[5, 4, 8, 16][..], 9),
        ] {
            let (lat, u) = hot(shape, seed);
            for (level, shared) in (0..=simd_level()).flat_map(|l| [(l, false), (l, true)]) {
                let mut want = vec![SuAlg::<3>::zero(); u.len()];
                wilson_force_with(&lat, lat.volume(), &u, 1.9, &mut want, level, shared);
                for width in [2usize, 4, 8] {
                    if !(shape[shape.len() - 1] as usize).is_multiple_of(width) {
                        continue;
                    }
                    for threads in [1, 2, 3] {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let mut got = vec![SuAlg::<3>::zero(); u.len()];
                        pool.install(|| crate::blocked::wilson_force(&lat, &u, 1.9, &mut got, width, level, shared));
                        assert!(got == want, "{shape:?} level {level} shared {shared} width {width} threads {threads}");
                    }
                }
            }
            // the dispatched force takes a blocked width wherever one splits the lattice
            assert_eq!(crate::blocked::lane_width(&lat, 0, true).is_some(), shape[shape.len() - 1] % 2 == 0);
        }
    }

    /// The blocked product micro-kernel gives each lane the bits of the per-site product.
    #[test]
    fn blocked_products_give_the_per_site_bits() {
        let mut rng = Stream::new(11, 0);
        let (a, b): (Vec<Su3>, Vec<Su3>) = (0..16).map(|_| (Su3::random(&mut rng), Su3::random(&mut rng))).unzip();
        let blocked = |m: &[Su3]| -> Vec<f64> {
            let mut v = vec![0.0; m.len() * 18];
            for (s, x) in m.iter().enumerate() {
                for (e, &r) in rows(x).as_flattened().iter().enumerate() {
                    v[(s / 8) * 144 + e * 8 + s % 8] = r;
                }
            }
            v
        };
        let want = blocked(&a.iter().zip(&b).map(|(x, y)| *x * *y).collect::<Vec<_>>());
        for level in 0..=simd_level() {
            let mut c = vec![0.0; want.len()];
            crate::blocked::products8(&blocked(&a), &blocked(&b), &mut c, level);
            assert!(c == want, "level {level}");
        }
    }

    /// Above core's parallel threshold (8192 sites) the kernels give the same bits on 1 and 2
    /// threads.
    #[test]
    fn kernels_do_not_depend_on_the_thread_count() {
        let (lat, u) = hot(&[10, 10, 10, 10], 8);
        let p: Vec<SuAlg<3>> = {
            let mut rng = Stream::new(9, 0);
            (0..u.len()).map(|_| SuAlg::<3>::gaussian(&mut rng)).collect()
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut f = vec![SuAlg::<3>::zero(); u.len()];
                wilson_force(&lat, &u, 1.9, &mut f, force_level());
                let mut v = u.clone();
                step_links(&mut v, &p, 4, 0.05, step_level());
                (f, v, plaquette_sum(&lat, &u, plaquette_level()).to_bits())
            })
        };
        let (a, b) = (run(1), run(2));
        assert!(a.0 == b.0 && a.1 == b.1 && a.2 == b.2);
    }

    /// The drift gives the bits of core's field space in every variant.
    #[test]
    fn drift_matches_core_bits() {
        use latflow_core::gauge::FlatLinkSpace;
        use latflow_core::hmc::FieldSpace;
        // d = 4 exponentiates a site's links four at a time, d = 3 and 5 also one at a time
        for shape in [&[4, 4, 2, 4][..], &[4, 2, 6], &[2, 4, 2, 2, 4]] {
            let d = shape.len();
            let (lat, u) = hot(shape, 6);
            let space = FlatLinkSpace::<Su3>::new(d, lat.volume());
            let mut rng = Stream::new(7, 0);
            let flat: Vec<f64> = bytemuck::cast_slice(&u[..]).to_vec();
            let mut p = space.sample_momentum(&flat, &mut rng);
            let mut expect = flat.clone();
            space.step_field(&mut expect, &mut p, 0.07);
            let q: &[SuAlg<3>] = bytemuck::cast_slice(&p[..]);
            for level in 0..=simd_level() {
                let mut v = u.clone();
                step_links(&mut v, q, d, 0.07, level);
                assert!(bytemuck::cast_slice::<Su3, f64>(&v) == &expect[..], "{shape:?}, level {level}");
            }
        }
    }

    /// The wider variants give the same bits as the baseline one.
    #[test]
    fn simd_variants_give_identical_bits() {
        let (lat, u) = hot(&[4, 4, 4, 6], 5);
        let run = |level: u8, shared: bool| {
            let mut f = vec![SuAlg::<3>::zero(); u.len()];
            wilson_force_with(&lat, lat.volume(), &u, 1.9, &mut f, level, shared);
            (f, plaquette_sum(&lat, &u, level).to_bits())
        };
        for shared in [false, true] {
            let base = run(0, shared);
            for level in 1..=simd_level() {
                let other = run(level, shared);
                assert!(base.0 == other.0 && base.1 == other.1, "level {level}, shared {shared}");
            }
        }
    }
}
