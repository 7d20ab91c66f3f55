//! The SU(3) Wilson force with SIMD across sites (a site-blocked layout).
//!
//! [`fast`](crate::fast) vectorises within one 3×3 matrix (six-real rows), which leaves most
//! of a 512-bit register idle and needs shuffles for adjoints. Here `W` sites share each
//! vector instead: the fastest axis (extent L, [`Neighbours::fastest_axis_extent`]) is cut into
//! `W` slabs of q = L/W, site a·L + c sits in lane c / q of *outer site* a·q + c mod q, and a
//! matrix is 18 vectors of `W` lanes, one per real entry. A 3×3 product is then 108 multiplies
//! and 108 adds on whole vectors, with no shuffle; an adjoint is a renaming of the 18 vectors.
//! Every neighbour of an outer site is one outer site with its lanes rotated by a fixed amount
//! (0, or ±1 across a slab's edge along the fastest axis); a rotated read copies the matrix
//! into a scratch matrix with one shuffle per vector (packed links and corner products were
//! stored twice over, so that a rotated read was one unaligned load: twice the memory and the
//! traffic, and at 8⁴ on a Xeon with AVX-512 a force 1.35× slower). Outer sites keep the
//! per-site layout's neighbour distances in bytes, so cache reuse is the same.
//!
//! A force evaluation
//! 1. packs the links into the blocked layout (a transpose, no arithmetic),
//! 2. forms the corner products U_μ(y)† U_ν(y) of every outer site (when [`fast`](crate::fast) shares them,
//!    by the same rule),
//! 3. sums the staples and projects, outer site by outer site, writing each task's rows of the
//!    fastest axis straight into the `[site][μ]` force.
//!
//! Every lane does exactly the operations of [`fast`](crate::fast)'s per-site kernels, in the same order
//! (products summed from zero in k order, no fused multiply-add), so the force has the same
//! bits as the per-site path, on any thread count (no lane or site is reduced across). The
//! buffers are kept per thread between calls; nothing allocates per site. The buffers take
//! 2.5× (4D, shared corners) the memory of the links, so the dispatcher uses this path only
//! up to [`BLOCKED_MAX_BYTES`].

use std::cell::RefCell;

use latflow_core::gauge::parallel::{SiteWork, CHUNK_SITES};
use latflow_core::gauge::{Neighbours, Su3, SuAlg};
use latflow_core::par::chunks_mut_when;

/// A real entry of `W` sites.
type Lanes<const W: usize> = [f64; W];
/// A 3×3 complex matrix of `W` sites: three rows of six reals (re, im interleaved), each real a
/// vector of lanes (the layout of [`latflow_core::gauge::su3::Rows`], lane by lane).
type M<const W: usize> = [[Lanes<W>; 6]; 3];

#[inline(always)]
fn zero<const W: usize>() -> M<W> {
    [[[0.0; W]; 6]; 3]
}

/// A matrix of `W` sites, read entry by entry: real (i, j) as a vector of lanes.
trait Mat<const W: usize> {
    fn at(&self, i: usize, j: usize) -> Lanes<W>;
}

impl<const W: usize> Mat<W> for M<W> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> Lanes<W> {
        self[i][j]
    }
}

/// A stored matrix as read from a hop rotating its lanes by `r` < W (lane ℓ is stored lane
/// (ℓ + r) mod W): the stored one itself where r = 0, else its rotation written to `tmp`, so
/// that the product that reads it loads plain vectors either way.
#[inline(always)]
fn fetch<'s, const W: usize>(m: &'s M<W>, r: usize, tmp: &'s mut M<W>) -> &'s M<W> {
    if r == 0 {
        m
    } else {
        rotate_into(m, r, tmp);
        tmp
    }
}

/// `out` = `m` with its lanes rotated by `r` (1 ≤ r < W): lane ℓ of `out` is lane (ℓ + r) mod W
/// of `m`. A hop rotates by ±1 (across a slab's edge along the fastest axis), so those two are
/// spelt with constant lane indices (one shuffle per vector); any other r takes the general
/// path.
#[inline(always)]
fn rotate_into<const W: usize>(m: &M<W>, r: usize, out: &mut M<W>) {
    #[inline(always)]
    fn by<const W: usize>(m: &M<W>, out: &mut M<W>, f: impl Fn(&Lanes<W>) -> Lanes<W>) {
        for i in 0..3 {
            for j in 0..6 {
                out[i][j] = f(&m[i][j]);
            }
        }
    }
    if r == 1 {
        by(m, out, |v| std::array::from_fn(|l| v[(l + 1) % W]))
    } else if r == W - 1 {
        by(m, out, |v| std::array::from_fn(|l| v[(l + W - 1) % W]))
    } else {
        by(m, out, |v| std::array::from_fn(|l| v[(l + r) % W]))
    }
}

/// A·B with A replaced by A† when `AA` and B by B† when `AB`: for each lane, the operations of
/// `su3::mul_rows` (on `adj_rows` of the adjoined factor): entry (i, j) summed from zero over
/// k = 0, 1, 2 of (a.re b.re + a.im·(−b.im), a.re b.im + a.im b.re), the conjugates' signs
/// applied by exact negation.
#[inline(always)]
fn prod<const W: usize, const AA: bool, const AB: bool>(a: &impl Mat<W>, b: &impl Mat<W>) -> M<W> {
    // one row at a time, its six accumulators in registers, each row written once (no zero
    // fill of the result)
    [row::<W, AA, AB>(a, b, 0), row::<W, AA, AB>(a, b, 1), row::<W, AA, AB>(a, b, 2)]
}

/// Row i of A·B (see [`prod`]), k spelled out so that the compiler keeps no loop (and no
/// accumulator in memory) inside a row.
#[inline(always)]
fn row<const W: usize, const AA: bool, const AB: bool>(a: &impl Mat<W>, b: &impl Mat<W>, i: usize) -> [Lanes<W>; 6] {
    let mut row = [[0.0; W]; 6];
    mac::<W, AA, AB>(&mut row, a, b, i, 0);
    mac::<W, AA, AB>(&mut row, a, b, i, 1);
    mac::<W, AA, AB>(&mut row, a, b, i, 2);
    row
}

/// row += A_ik · (row k of B), entry by entry (see [`prod`]).
#[inline(always)]
fn mac<const W: usize, const AA: bool, const AB: bool>(
    row: &mut [Lanes<W>; 6],
    a: &impl Mat<W>,
    b: &impl Mat<W>,
    i: usize,
    k: usize,
) {
    let (ar, ai) = if AA { (a.at(k, 2 * i), a.at(k, 2 * i + 1)) } else { (a.at(i, 2 * k), a.at(i, 2 * k + 1)) };
    for j in 0..3 {
        let (br, bi) = if AB { (b.at(j, 2 * k), b.at(j, 2 * k + 1)) } else { (b.at(k, 2 * j), b.at(k, 2 * j + 1)) };
        for l in 0..W {
            let (ar, ai) = (ar[l], if AA { -ai[l] } else { ai[l] });
            let (br, bi) = (br[l], if AB { -bi[l] } else { bi[l] });
            row[2 * j][l] += ar * br + ai * -bi;
            row[2 * j + 1][l] += ar * bi + ai * br;
        }
    }
}

/// acc += m.
#[inline(always)]
fn add_to<const W: usize>(acc: &mut M<W>, m: &M<W>) {
    for i in 0..3 {
        for j in 0..6 {
            for l in 0..W {
                acc[i][j][l] += m[i][j][l];
            }
        }
    }
}

/// acc += m† (as `fast`'s `add_to(acc, &adj(m))`).
#[inline(always)]
fn add_adj_to<const W: usize>(acc: &mut M<W>, m: &M<W>) {
    for k in 0..3 {
        for j in 0..3 {
            for l in 0..W {
                acc[k][2 * j][l] += m[j][2 * k][l];
                acc[k][2 * j + 1][l] += -m[j][2 * k + 1][l];
            }
        }
    }
}

/// (w/2)·TA(M) in each lane, with the operations of `fast::force_of`.
#[inline(always)]
fn force_of<const W: usize>(m: &M<W>, w: f64) -> M<W> {
    let mut a = zero::<W>();
    for i in 0..3 {
        for j in 0..3 {
            for l in 0..W {
                a[i][2 * j][l] = (m[i][2 * j][l] - m[j][2 * i][l]) * 0.5;
                a[i][2 * j + 1][l] = (m[i][2 * j + 1][l] + m[j][2 * i + 1][l]) * 0.5;
            }
        }
    }
    let s = -w;
    let mut out = zero::<W>();
    for l in 0..W {
        let tr = ((a[0][1][l] + a[1][3][l]) + a[2][5][l]) / 3.0;
        for i in 0..3 {
            a[i][2 * i][l] = 0.0;
            a[i][2 * i + 1][l] -= tr;
        }
    }
    for i in 0..3 {
        for j in 0..6 {
            for l in 0..W {
                out[i][j][l] = (a[i][j][l] * -0.5) * s;
            }
        }
    }
    out
}

/// A neighbour of an outer site: the outer site and the lane rotation.
#[derive(Clone, Copy, Default)]
struct Hop {
    o: u32,
    r: u8,
}

/// The hop from `o` by `a` then `b` (rotations add).
#[inline(always)]
fn then<const W: usize>(hops: &[Hop], d: usize, a: Hop, b: usize) -> Hop {
    let h = hops[a.o as usize * d + b];
    Hop { o: h.o, r: ((a.r as usize + h.r as usize) % W) as u8 }
}

/// The per-thread storage of one lane width: packed links, corner products, and the outer
/// sites' forward and backward hops.
struct Buffers<const W: usize> {
    links: Vec<M<W>>,
    corners: Vec<M<W>>,
    up: Vec<Hop>,
    dn: Vec<Hop>,
}

impl<const W: usize> Buffers<W> {
    const fn new() -> Self {
        Self { links: Vec::new(), corners: Vec::new(), up: Vec::new(), dn: Vec::new() }
    }
}

thread_local! {
    static B8: RefCell<Buffers<8>> = const { RefCell::new(Buffers::new()) };
    static B4: RefCell<Buffers<4>> = const { RefCell::new(Buffers::new()) };
    static B2: RefCell<Buffers<2>> = const { RefCell::new(Buffers::new()) };
}

/// The most bytes of packed links and corner products the blocked force keeps (8⁴ needs
/// 5.9 MB with its corners, 2.5× the links' memory; 16⁴, whose force forms its lower staples
/// without shared corners ([`crate::fast::CORNERS_MAX_BYTES`]), 38 MB for the links alone;
/// 24⁴ would need 191 MB, which the per-site kernels save).
/// Both paths give the same bits, so this bound only trades memory for speed. Measured, one
/// thread, a Xeon with AVX-512 and 480 MiB of L3: the blocked force against the per-site one at
/// 8³·16 3.9 against 7.5 ms, 8²·16² 9.9 against 16.1, 16⁴ 42 against 77. On a 2-core EPYC with
/// 32 MiB of L3, with the earlier buffers stored twice over, the per-site kernels were faster
/// where those buffers left the L3 (8³·16: 4.8 against 4.4 ms; 8²·16²: 14.7 against 11.7),
/// and at 16⁴ the blocked force was still the faster (43 against 46 ms).
pub const BLOCKED_MAX_BYTES: usize = 128 << 20;

/// `$variant(args)` in the compiled variant `$level`: `avx512::$variant`, `avx2::$variant`,
/// or `$plain` itself below AVX2. The caller must have checked that the CPU runs `$level`.
macro_rules! by_level {
    ($level:expr, $variant:ident, $plain:ident($($arg:expr),*)) => {
        match $level {
            // SAFETY: the caller checked that the CPU runs the level
            #[cfg(target_arch = "x86_64")]
            2 => unsafe { avx512::$variant($($arg),*) },
            // SAFETY: as above
            #[cfg(target_arch = "x86_64")]
            1 => unsafe { avx2::$variant($($arg),*) },
            _ => $plain($($arg),*),
        }
    };
}

/// The lane width the blocked force takes at SIMD `level` on `lat` (8 for AVX-512, 4 for AVX2,
/// 2 for the baseline, halved until it divides the fastest axis's extent), or None where no
/// width of at least 2 does (an odd extent, or a lattice that is not split this way: one rank's
/// slab with halos), or where its buffers (with corner products when `shared`) would exceed
/// [`BLOCKED_MAX_BYTES`].
pub fn lane_width<N: Neighbours + ?Sized>(lat: &N, level: u8, shared: bool) -> Option<usize> {
    let widest = match level {
        2 => 8,
        1 => 4,
        _ => 2,
    };
    let d = lat.dim();
    let stored = d + if shared { d * (d - 1) / 2 } else { 0 };
    if lat.sites() * stored * std::mem::size_of::<latflow_core::gauge::su3::Rows>() > BLOCKED_MAX_BYTES {
        return None;
    }
    let ext = lat.fastest_axis_extent()?;
    [8, 4, 2].into_iter().filter(|&w| w <= widest).find(|&w| ext % w == 0)
}

/// The Wilson force of every site of `lat` into `f` (`[site][μ]`), as
/// [`fast::wilson_force`](crate::fast::wilson_force) defines it, with `W` = `width` sites per
/// vector (from [`lane_width`]), the lower staples from shared corner products when `shared`,
/// compiled for SIMD `level` (which the CPU must run: the caller checks). The same bits as the
/// per-site kernels.
pub(crate) fn wilson_force<N: Neighbours + ?Sized>(
    lat: &N,
    u: &[Su3],
    w: f64,
    f: &mut [SuAlg<3>],
    width: usize,
    level: u8,
    shared: bool,
) {
    match width {
        8 => B8.with(|b| run::<N, 8>(lat, u, w, f, level, shared, &mut b.borrow_mut())),
        4 => B4.with(|b| run::<N, 4>(lat, u, w, f, level, shared, &mut b.borrow_mut())),
        2 => B2.with(|b| run::<N, 2>(lat, u, w, f, level, shared, &mut b.borrow_mut())),
        _ => unreachable!("lane widths are 2, 4 or 8"),
    }
}

/// One force evaluation at width `W` with `bufs` as storage.
fn run<N: Neighbours + ?Sized, const W: usize>(
    lat: &N,
    u: &[Su3],
    w: f64,
    f: &mut [SuAlg<3>],
    level: u8,
    shared: bool,
    bufs: &mut Buffers<W>,
) {
    let d = lat.dim();
    let v = lat.sites();
    let ext = lat.fastest_axis_extent().expect("the caller checked the split");
    debug_assert!(ext.is_multiple_of(W) && v.is_multiple_of(ext));
    // site a·ext + c (c the fastest coordinate) is lane c / q of outer site a·q + c mod q
    let q = ext / W;
    let b = v / W;
    let site = |o: usize, l: usize| (o / q) * ext + l * q + o % q;
    let outer = |y: usize| {
        let c = y % ext;
        Hop { o: ((y / ext) * q + c % q) as u32, r: (c / q) as u8 }
    };
    let planes = d * (d - 1) / 2;
    let par = SiteWork::Heavy.parallel(v);
    // whole rows of the fastest axis per task, about one of core's chunks of sites
    let rows = (CHUNK_SITES / ext).max(1);
    let chunk = rows * q;
    // the hops of outer site o are those of its lane-0 site
    bufs.up.resize(b * d, Hop::default());
    bufs.dn.resize(b * d, Hop::default());
    for o in 0..b {
        let x = site(o, 0);
        for mu in 0..d {
            bufs.up[o * d + mu] = outer(lat.up(x, mu));
            bufs.dn[o * d + mu] = outer(lat.dn(x, mu));
        }
    }
    // 1. pack (a pass of its own: packing each task's links and forming their corners in one
    // pass measured 7% slower at 8⁴)
    let uf: &[f64] = bytemuck::cast_slice(u);
    let Buffers { links, corners, up, dn } = bufs;
    links.resize(b * d, zero::<W>());
    chunks_mut_when(par, links, chunk * d, |k, out| {
        let start = |n: usize| {
            let (o, mu) = ((k * chunk * d + n) / d, n % d);
            std::array::from_fn(|l| (site(o, l) * d + mu) * 18)
        };
        // the caller checked that the CPU runs `level`
        by_level!(level, pack, pack_into(uf, start, out))
    });
    // 2. corners
    if shared {
        corners.resize(b * planes, zero::<W>());
        let links = &links[..];
        chunks_mut_when(par, corners, chunk * planes, |k, out| {
            by_level!(level, corners, corners_from(links, d, k * chunk, out))
        });
    }
    let (links, up, dn) = (&links[..], &up[..], &dn[..]);
    let corners = &corners[..];
    // 3. force, each task's rows of the fastest axis written straight to `f` (a row's sites are
    // contiguous there)
    let ff: &mut [f64] = bytemuck::cast_slice_mut(f);
    chunks_mut_when(par, ff, rows * ext * d * 18, |k, out| {
        let sites = Blocked { links, corners, up, dn, d, shared };
        let first = k * chunk;
        let n = out.len() / (ext * d * 18) * q;
        let sink = |o: usize, mu: usize, m: &M<W>| {
            for l in 0..W {
                let x = site(o, l) - k * rows * ext;
                let dst = &mut out[(x * d + mu) * 18..][..18];
                for i in 0..3 {
                    for j in 0..6 {
                        dst[i * 6 + j] = m[i][j][l];
                    }
                }
            }
        };
        by_level!(level, force, force_from(&sites, w, first, n, sink))
    });
}

/// Packs `out[n]` from the links of `uf` (18 reals each) that start at `start(n)[ℓ]`, lane ℓ.
#[inline(always)]
fn pack_into<const W: usize>(uf: &[f64], start: impl Fn(usize) -> [usize; W], out: &mut [M<W>]) {
    for (n, m) in out.iter_mut().enumerate() {
        let src: [&[f64]; W] = start(n).map(|s| &uf[s..s + 18]);
        for i in 0..3 {
            for j in 0..6 {
                m[i][j] = std::array::from_fn(|l| src[l][i * 6 + j]);
            }
        }
    }
}

/// What the per-outer-site kernels read.
struct Blocked<'a, const W: usize> {
    links: &'a [M<W>],
    corners: &'a [M<W>],
    up: &'a [Hop],
    dn: &'a [Hop],
    d: usize,
    shared: bool,
}

impl<'a, const W: usize> Blocked<'a, W> {
    /// The link U_μ at the hop's site, lanes rotated (into `tmp` where they move).
    #[inline(always)]
    fn link<'s>(&self, h: Hop, mu: usize, tmp: &'s mut M<W>) -> &'s M<W>
    where
        'a: 's,
    {
        fetch(&self.links[h.o as usize * self.d + mu], h.r as usize, tmp)
    }

    /// The link U_μ(o) itself.
    #[inline(always)]
    fn here(&self, o: usize, mu: usize) -> &'a M<W> {
        &self.links[o * self.d + mu]
    }

    /// The corner product of plane k at the hop's site, lanes rotated (into `tmp` where they
    /// move).
    #[inline(always)]
    fn corner<'s>(&self, h: Hop, k: usize, tmp: &'s mut M<W>) -> &'s M<W>
    where
        'a: 's,
    {
        let planes = self.d * (self.d - 1) / 2;
        fetch(&self.corners[h.o as usize * planes + k], h.r as usize, tmp)
    }
}

/// The corner products U_μ(o)† U_ν(o), plane by plane, of the outer sites from `first` on
/// (`out`: `planes` per outer site).
#[inline(always)]
fn corners_from<const W: usize>(links: &[M<W>], d: usize, first: usize, out: &mut [M<W>]) {
    let planes = d * (d - 1) / 2;
    for (n, site) in out.chunks_mut(planes).enumerate() {
        let o = first + n;
        let mut k = 0;
        for mu in 0..d {
            for nu in mu + 1..d {
                site[k] = prod::<W, true, false>(&links[o * d + mu], &links[o * d + nu]);
                k += 1;
            }
        }
    }
}

/// The force of every link of the `n` outer sites from `first` on, handed to `sink(o, μ, F)`:
/// the staple sums in `fast`'s order (`staples_shared` or `staples`), then (w/2)·TA(U·A).
#[inline(always)]
fn force_from<const W: usize>(s: &Blocked<'_, W>, w: f64, first: usize, n: usize, mut sink: impl FnMut(usize, usize, &M<W>)) {
    let d = s.d;
    let mut acc = [zero::<W>(); crate::fast::MAX_DIM];
    // scratch for the rotated operands of one product
    let (mut t0, mut t1) = (zero::<W>(), zero::<W>());
    for o in first..first + n {
        for a in acc.iter_mut().take(d) {
            *a = zero();
        }
        let mut k = 0;
        for mu in 0..d {
            for nu in mu + 1..d {
                let (xm, xn) = (s.up[o * d + mu], s.up[o * d + nu]);
                let c = prod::<W, false, true>(s.link(xm, nu, &mut t0), s.link(xn, mu, &mut t1));
                let up_mu = prod::<W, false, true>(&c, s.here(o, nu));
                add_to(&mut acc[mu], &up_mu);
                let uc = prod::<W, false, false>(s.here(o, mu), &c);
                let yn = s.dn[o * d + nu];
                let ym = s.dn[o * d + mu];
                if s.shared {
                    let lo_mu = prod::<W, true, false>(s.link(then::<W>(s.up, d, yn, mu), nu, &mut t0), s.corner(yn, k, &mut t1));
                    add_to(&mut acc[mu], &lo_mu);
                    add_adj_to(&mut acc[nu], &uc);
                    let lo_nu = prod::<W, false, false>(s.corner(ym, k, &mut t0), s.link(then::<W>(s.up, d, ym, nu), mu, &mut t1));
                    add_adj_to(&mut acc[nu], &lo_nu);
                } else {
                    let a = prod::<W, false, false>(s.link(yn, mu, &mut t0), s.link(then::<W>(s.up, d, yn, mu), nu, &mut t1));
                    let lo_mu = prod::<W, true, false>(&a, s.link(yn, nu, &mut t0));
                    add_to(&mut acc[mu], &lo_mu);
                    add_adj_to(&mut acc[nu], &uc);
                    let a = prod::<W, false, false>(s.link(ym, nu, &mut t0), s.link(then::<W>(s.up, d, ym, nu), mu, &mut t1));
                    let lo_nu = prod::<W, true, false>(&a, s.link(ym, mu, &mut t0));
                    add_to(&mut acc[nu], &lo_nu);
                }
                k += 1;
            }
        }
        for (mu, a) in acc.iter().enumerate().take(d) {
            sink(o, mu, &force_of(&prod::<W, false, false>(s.here(o, mu), a), w));
        }
    }
}

/// The kernels compiled with a wider instruction set enabled (the same operations).
macro_rules! variant {
    ($name:ident, $feature:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::*;

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn corners<const W: usize>(links: &[M<W>], d: usize, first: usize, out: &mut [M<W>]) {
                corners_from(links, d, first, out)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn force<const W: usize>(
                s: &Blocked<'_, W>,
                w: f64,
                first: usize,
                n: usize,
                sink: impl FnMut(usize, usize, &M<W>),
            ) {
                force_from(s, w, first, n, sink)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn pack<const W: usize>(uf: &[f64], start: impl Fn(usize) -> [usize; W], out: &mut [M<W>]) {
                pack_into(uf, start, out)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn products<const W: usize>(a: &[M<W>], b: &[M<W>], c: &mut [M<W>]) {
                products_impl(a, b, c)
            }
        }
    };
}

variant!(avx2, "avx2");
variant!(avx512, "avx512f");

/// `c[n] = a[n]·b[n]` for blocked matrices of 8 sites (each 144 reals: real (i, j) of lane ℓ at
/// (6i + j)·8 + ℓ), repeated 64 times (a micro-kernel for benchmarks: the blocked force's
/// products alone), in the variant `level` (a level the CPU lacks falls back to the widest it
/// has). Panics unless the three slices hold equally many whole matrices.
pub fn products8(a: &[f64], b: &[f64], c: &mut [f64], level: u8) {
    assert!(a.len().is_multiple_of(144) && a.len() == b.len() && a.len() == c.len(), "whole blocked matrices");
    let (a, b): (&[M<8>], &[M<8>]) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
    let c: &mut [M<8>] = bytemuck::cast_slice_mut(c);
    by_level!(level.min(crate::fast::simd_level()), products, products_impl(a, b, c))
}

#[inline(always)]
fn products_impl<const W: usize>(a: &[M<W>], b: &[M<W>], c: &mut [M<W>]) {
    for _ in 0..64 {
        for ((a, b), c) in a.iter().zip(b).zip(c.iter_mut()) {
            *c = prod::<W, false, false>(a, b);
        }
    }
}
