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
//! 1. packs the links into the blocked layout (a transpose, no arithmetic; with AVX-512 and 8
//!    lanes, 8×8 register transposes),
//! 2. cuts the outer sites into *slabs* (hyperplanes of the slowest axis, so that every hop
//!    from slab t lands in slab t − 1, t or t + 1) and gives each task a run of slabs. For each
//!    slab the task forms the corner products U_μ(y)† U_ν(y) (when [`fast`](crate::fast)
//!    shares them, by the same rule) into one of two slab-sized slots of its own, just before
//!    the slab's force reads them back from cache (the lower staples at x − ν̂ need the slab
//!    before too: a task forms that one first). A slab's corners are formed twice where two
//!    tasks meet, the same products, so the same bits.
//! 3. sums the staples and projects, outer site by outer site, writing each task's slabs
//!    straight into the `[site][μ]` force.
//!
//! HMC keeps its SU(3) Wilson fields in this layout for whole trajectories ([`Layout`],
//! [`Packed`], and the field space [`crate::space::PackedSpace`]): its force ([`Layout::force`])
//! skips step 1 and hands each outer site's force to the blocked momentum buffer instead of
//! writing it back to `[site][μ]`, and the drift ([`Layout::drift`]) and the kick run on the
//! blocked fields, so that fields are packed and unpacked once per call of HMC, not per force.
//! Every buffer and scratch matrix starts on a 64-byte boundary, so that no vector load spans two
//! cache lines.
//!
//! Every lane does exactly the operations of [`fast`](crate::fast)'s per-site kernels, in the
//! same order (products summed in k order from −0.0, which the compiler drops as it adds
//! nothing, no fused multiply-add; each staple added to its sum once the product is formed),
//! so the force has the same bits as the per-site path, on any thread count and split into
//! tasks (no lane or site is reduced across). The buffers are kept per thread between calls;
//! nothing allocates per site. The packed links take the memory of the links, the corner slots
//! two slabs' corners per task, so the dispatcher uses this path only up to
//! [`BLOCKED_MAX_BYTES`].
//!
//! Measured at 8⁴ on one thread of a Xeon with AVX-512 (same bits): corner products formed a
//! slab ahead instead of in a pass of their own, 1.53 → 1.41 ms; the transposes of packing and
//! of the force's write-back as register shuffles instead of gathers, and the staples added to
//! their sums from registers, 1.72 → 1.63 ms; products summed from −0.0, 1.63 → 1.53 ms;
//! buffers on cache lines, 1.54 → 1.29–1.37 ms; on HMC's blocked fields (no packing, no
//! write-back), 1.06–1.08 ms.

use std::cell::RefCell;

use latflow_core::gauge::parallel::{SiteWork, CHUNK_SITES};
use latflow_core::gauge::{su3, LieAlgebra, Neighbours, Su3, SuAlg};
use latflow_core::par::chunks_mut_when;

/// A real entry of `W` sites.
type Lanes<const W: usize> = [f64; W];
/// A 3×3 complex matrix of `W` sites: three rows of six reals (re, im interleaved), each real a
/// vector of lanes (the layout of [`latflow_core::gauge::su3::Rows`], lane by lane).
type M<const W: usize> = [[Lanes<W>; 6]; 3];

/// `T` on a 64-byte boundary: a 512-bit vector of a matrix of 8 lanes never spans two cache
/// lines (a split load costs two of the L1's loads; the allocator and the stack give only 16
/// bytes).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line<T>(T);

/// One cache line of reals: the unit of [`Lines`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([f64; 8]);

// SAFETY: eight f64 fill the 64 bytes exactly (no padding), and every bit pattern is an f64
unsafe impl bytemuck::Zeroable for CacheLine {}
// SAFETY: as above
unsafe impl bytemuck::Pod for CacheLine {}

/// A growable buffer that starts on a cache line (see [`Line`]); its matrices are 64-byte
/// multiples for 4 and 8 lanes, so each of them starts on one too.
#[derive(Clone)]
struct Lines(Vec<CacheLine>);

impl Lines {
    /// The first `n` matrices of `W` lanes (the buffer must hold them).
    fn view<const W: usize>(&self, n: usize) -> &[M<W>] {
        let bytes = n * std::mem::size_of::<M<W>>();
        bytemuck::cast_slice(&bytemuck::cast_slice::<CacheLine, u8>(&self.0)[..bytes])
    }

    /// All reals.
    fn reals_mut(&mut self) -> &mut [f64] {
        bytemuck::cast_slice_mut(&mut self.0)
    }

    /// All reals.
    fn reals(&self) -> &[f64] {
        bytemuck::cast_slice(&self.0)
    }

    /// The first `n` matrices of `W` lanes, the buffer grown (zero-filled) as needed; what an
    /// earlier call wrote stays.
    fn matrices<const W: usize>(&mut self, n: usize) -> &mut [M<W>] {
        let bytes = n * std::mem::size_of::<M<W>>();
        if self.0.len() * 64 < bytes {
            self.0.resize(bytes.div_ceil(64), CacheLine([0.0; 8]));
        }
        bytemuck::cast_slice_mut(&mut bytemuck::cast_slice_mut::<CacheLine, u8>(&mut self.0)[..bytes])
    }
}

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
/// `su3::mul_rows` (on `adj_rows` of the adjoined factor): entry (i, j) summed from −0.0 over
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
    let mut row = [[-0.0; W]; 6];
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

/// acc += A·B (A, B adjoined as in [`prod`]): row by row, each row of the product summed in
/// registers as [`prod`] does and then added entry by entry (the bits of adding the formed
/// product, without the product passing through memory).
#[inline(always)]
fn prod_add<const W: usize, const AA: bool, const AB: bool>(acc: &mut M<W>, a: &impl Mat<W>, b: &impl Mat<W>) {
    for i in 0..3 {
        let r = row::<W, AA, AB>(a, b, i);
        for j in 0..6 {
            for l in 0..W {
                acc[i][j][l] += r[j][l];
            }
        }
    }
}

/// acc += (A·B)† (see [`prod_add`]): the bits of adding the adjoint of the formed product
/// (as `fast`'s `add_to(acc, &adj(m))`).
#[inline(always)]
fn prod_add_adj<const W: usize, const AA: bool, const AB: bool>(acc: &mut M<W>, a: &impl Mat<W>, b: &impl Mat<W>) {
    for j in 0..3 {
        // row j of the product is column j of its adjoint
        let r = row::<W, AA, AB>(a, b, j);
        for k in 0..3 {
            for l in 0..W {
                acc[k][2 * j][l] += r[2 * k][l];
                acc[k][2 * j + 1][l] += -r[2 * k + 1][l];
            }
        }
    }
}

/// `out` = (w/2)·TA(M) in each lane, with the operations of `fast::force_of`. Every entry of
/// `out` is overwritten (a caller's scratch: no zero fill per call).
#[inline(always)]
fn force_into<const W: usize>(m: &M<W>, w: f64, out: &mut M<W>) {
    // the anti-Hermitian part
    for i in 0..3 {
        for j in 0..3 {
            for l in 0..W {
                out[i][2 * j][l] = (m[i][2 * j][l] - m[j][2 * i][l]) * 0.5;
                out[i][2 * j + 1][l] = (m[i][2 * j + 1][l] + m[j][2 * i + 1][l]) * 0.5;
            }
        }
    }
    let s = -w;
    for l in 0..W {
        let tr = ((out[0][1][l] + out[1][3][l]) + out[2][5][l]) / 3.0;
        for i in 0..3 {
            out[i][2 * i][l] = 0.0;
            out[i][2 * i + 1][l] -= tr;
        }
    }
    for row in out.iter_mut() {
        for x in row.iter_mut() {
            for v in x.iter_mut() {
                *v = (*v * -0.5) * s;
            }
        }
    }
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

/// The per-thread storage of the flat-interface force: packed links, corner products (as
/// untyped cache lines: any lane width), and the geometry.
struct Buffers {
    links: Lines,
    /// Each task's two slab-sized slots of corner products.
    ring: Lines,
    geometry: Geometry,
}

impl Buffers {
    const fn new() -> Self {
        Self {
            links: Lines(Vec::new()),
            ring: Lines(Vec::new()),
            geometry: Geometry { d: 0, q: 0, ext: 0, b: 0, slab: 0, up: Vec::new(), dn: Vec::new() },
        }
    }
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = const { RefCell::new(Buffers::new()) };
}

/// The most bytes of packed links and corner products the blocked force keeps, counted as the
/// packed links plus the corners of the whole lattice (the corner slots take two slabs per
/// task: at most the whole lattice's corners where each task has a slab or two; 8⁴ counts
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
    let level = width_level(width, level);
    by_width!(width, W => with_buffers(|b| run::<N, W>(lat, u, w, f, level, shared, b)))
}

/// The SIMD level the kernels of `width` lanes run at: narrower lanes run the AVX2 variant even
/// where AVX-512 is there (every AVX-512 CPU has AVX2): compiled for AVX-512, the compiler
/// fuses pairs of 4-lane (and 2-lane) vectors into 512-bit ones with shuffles and gathers,
/// which measured 2.3× slower at 4⁴ (the same bits either way).
pub(crate) fn width_level(width: usize, level: u8) -> u8 {
    if width < 8 { level.min(1) } else { level }
}

/// `$body` with the const `$w` = `$width` (8, 4, or 2 for anything else).
macro_rules! by_width {
    ($width:expr, $w:ident => $body:expr) => {
        match $width {
            8 => {
                const $w: usize = 8;
                $body
            }
            4 => {
                const $w: usize = 4;
                $body
            }
            _ => {
                const $w: usize = 2;
                $body
            }
        }
    };
}
pub(crate) use by_width;

/// `f` with this thread's buffers.
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|b| f(&mut b.borrow_mut()))
}

/// One force evaluation at width `W` with `bufs` as storage: packs `u`, then [`forces`] with
/// each lane written back to `f`'s `[site][μ]` records.
fn run<N: Neighbours + ?Sized, const W: usize>(
    lat: &N,
    u: &[Su3],
    w: f64,
    f: &mut [SuAlg<3>],
    level: u8,
    shared: bool,
    bufs: &mut Buffers,
) {
    let Buffers { links, ring, geometry } = bufs;
    geometry.build::<N, W>(lat);
    let g = &*geometry;
    let links = links.matrices::<W>(g.b * g.d);
    // 1. pack (a pass of its own: packing each task's links and forming their corners in one
    // pass measured 7% slower at 8⁴)
    pack_all::<W>(g, bytemuck::cast_slice(u), level, links);
    // 2. corners and forces, each lane written back to its site's record
    let lane = g.q * g.d * 18;
    let d = g.d;
    let sink = |out: &mut [f64], o: usize, mu: usize, m: &M<W>| {
        let x = g.site(o, 0);
        unpack(m, &mut out[(x * d + mu) * 18..], lane, level);
    };
    forces::<W, f64>(g, links, w, level, shared, ring, bytemuck::cast_slice_mut(f), W * d * 18, sink);
}

/// The site-blocked geometry of a lattice at `W` lanes: site a·L + c (c the fastest coordinate,
/// L its extent) is lane c / q of outer site a·q + c mod q (q = L / W); the hops of each outer
/// site (those of its lane-0 site), and the slab size ([`slab_size`]).
#[derive(Clone, Default)]
pub(crate) struct Geometry {
    d: usize,
    /// Sites per lane row: L / W.
    q: usize,
    /// The fastest axis's extent L.
    ext: usize,
    /// Outer sites.
    b: usize,
    slab: usize,
    up: Vec<Hop>,
    dn: Vec<Hop>,
}

impl Geometry {
    /// The geometry of `lat` at `W` lanes (W must divide the fastest axis's extent:
    /// [`lane_width`] checks), reusing this one's storage.
    fn build<N: Neighbours + ?Sized, const W: usize>(&mut self, lat: &N) {
        let d = lat.dim();
        let v = lat.sites();
        let ext = lat.fastest_axis_extent().expect("the caller checked the split");
        debug_assert!(ext.is_multiple_of(W) && v.is_multiple_of(ext));
        let q = ext / W;
        let b = v / W;
        (self.d, self.q, self.ext, self.b) = (d, q, ext, b);
        let outer = |y: usize| {
            let c = y % ext;
            Hop { o: ((y / ext) * q + c % q) as u32, r: (c / q) as u8 }
        };
        self.up.resize(b * d, Hop::default());
        self.dn.resize(b * d, Hop::default());
        for o in 0..b {
            let x = self.site(o, 0);
            for mu in 0..d {
                self.up[o * d + mu] = outer(lat.up(x, mu));
                self.dn[o * d + mu] = outer(lat.dn(x, mu));
            }
        }
        self.slab = slab_size(&self.up, &self.dn, d, b);
    }

    /// The geometry of `lat` at `width` lanes (see [`Geometry::build`]).
    pub(crate) fn new<N: Neighbours + ?Sized>(lat: &N, width: usize) -> Self {
        let mut g = Self::default();
        by_width!(width, W => g.build::<N, W>(lat));
        g
    }

    /// The site of lane `l` of outer site `o`.
    #[inline(always)]
    fn site(&self, o: usize, l: usize) -> usize {
        (o / self.q) * self.ext + l * self.q + o % self.q
    }

    /// Outer sites times directions: the matrices of a blocked link field.
    pub(crate) fn matrices(&self) -> usize {
        self.b * self.d
    }

    /// Outer sites per packing task: whole rows of the fastest axis, about one of core's chunks
    /// of sites.
    fn chunk(&self) -> usize {
        (CHUNK_SITES / self.ext).max(1) * self.q
    }

    /// Whether a loop over the lattice runs in parallel.
    fn parallel(&self, lanes: usize) -> bool {
        SiteWork::Heavy.parallel(self.b * lanes)
    }
}

/// Packs the `[site][μ]` records of 18 reals `uf` (links or algebra elements) into `out` (one
/// matrix of `W` lanes per outer site and direction), at SIMD `level`.
fn pack_all<const W: usize>(g: &Geometry, uf: &[f64], level: u8, out: &mut [M<W>]) {
    let d = g.d;
    let chunk = g.chunk();
    // lane ℓ of outer site o is site site(o, 0) + ℓ·q: its records lie `lane` reals apart
    let lane = g.q * d * 18;
    chunks_mut_when(g.parallel(W), out, chunk * d, |k, out| {
        let start = |n: usize| {
            let (o, mu) = ((k * chunk * d + n) / d, n % d);
            (g.site(o, 0) * d + mu) * 18
        };
        // the caller checked that the CPU runs `level`
        by_level!(level, pack, pack_into(uf, start, lane, level, out))
    });
}

/// The inverse of [`pack_all`]: `out` (`[site][μ]` records of 18 reals) from the blocked `m`.
fn unpack_all<const W: usize>(g: &Geometry, m: &[M<W>], level: u8, out: &mut [f64]) {
    let d = g.d;
    let chunk = g.chunk();
    let lane = g.q * d * 18;
    // a task's outer sites are whole rows, so their sites are contiguous
    chunks_mut_when(g.parallel(W), out, chunk * W * d * 18, |k, out| {
        for (n, m) in m[k * chunk * d..].iter().take(out.len() / (18 * W)).enumerate() {
            let (o, mu) = (n / d, n % d);
            unpack(m, &mut out[(g.site(o, 0) * d + mu) * 18..], lane, level);
        }
    });
}

/// The corner products and the forces of every outer site of `g` from the packed `links`,
/// each handed to `sink(out, o, μ, F)` with `out` the part of `out` of the task that owns
/// outer site o, o counted from the task's first outer site, `per_outer` elements of `out` per
/// outer site. `ring` holds each task's corner slots.
#[allow(clippy::too_many_arguments)]
fn forces<const W: usize, T: Send>(
    g: &Geometry,
    links: &[M<W>],
    w: f64,
    level: u8,
    shared: bool,
    ring: &mut Lines,
    out: &mut [T],
    per_outer: usize,
    sink: impl Fn(&mut [T], usize, usize, &M<W>) + Sync,
) {
    let (d, slab) = (g.d, g.slab);
    let slabs = g.b / slab;
    let planes = d * (d - 1) / 2;
    let (up, dn) = (&g.up[..], &g.dn[..]);
    // corners and force, slab by slab: each task takes a run of slabs, forms the corner
    // products of a slab just before its force (and those of the slab before its first), in
    // two slab-sized slots of its own, so that they are read back from cache; its force is
    // handed to `sink` (a slab's outer sites are contiguous in `out`). A slab's corners are
    // formed once more by the task before it (the same bits: the same products).
    let tasks = if g.parallel(W) { latflow_core::par::threads().clamp(1, slabs) } else { 1 };
    let per_task = slabs.div_ceil(tasks);
    let tasks = slabs.div_ceil(per_task);
    // a slot's matrices (one placeholder where no corners are formed)
    let slot = if shared { slab * planes } else { 1 };
    let ring = ring.matrices::<W>(tasks * 2 * slot);
    let task = |k: usize, out: &mut [T], ring: &mut [M<W>]| {
        let (t0, t1) = (k * per_task, ((k + 1) * per_task).min(slabs));
        let (mut cur, mut prev) = ring.split_at_mut(slot);
        let before = |t: usize| (t + slabs - 1) % slabs;
        if shared && slabs > 1 {
            by_level!(level, corners, corners_from(links, d, before(t0) * slab, prev));
        }
        for t in t0..t1 {
            if shared {
                by_level!(level, corners, corners_from(links, d, t * slab, cur));
            }
            let sites = Blocked {
                links,
                corners: &cur[..],
                corners_at: t * slab,
                before: &prev[..],
                before_at: before(t) * slab,
                slab,
                up,
                dn,
                d,
                shared,
            };
            let sink = |o: usize, mu: usize, m: &M<W>| sink(out, o - t0 * slab, mu, m);
            by_level!(level, force, force_from(&sites, w, t * slab, slab, sink));
            std::mem::swap(&mut cur, &mut prev);
        }
        // the sink may have stored non-temporally
        #[cfg(target_arch = "x86_64")]
        if level == 2 {
            // SAFETY: level 2 means the CPU runs AVX-512F
            unsafe { wide::fence() };
        }
    };
    let (out_chunk, ring_chunk) = (per_task * slab * per_outer, 2 * slot);
    if tasks > 1 {
        latflow_core::par::chunks_mut2(out, out_chunk, ring, ring_chunk, task);
    } else {
        task(0, out, ring);
    }
}

/// A field of 3×3 complex matrices, one per link (SU(3) links, or su(3) momenta and forces as
/// 3×3 anti-Hermitian matrices), in the site-blocked layout of a [`Layout`].
#[derive(Clone)]
pub struct Packed(Lines);

/// The site-blocked layout of one lattice: its geometry at a lane width, the SIMD level the
/// kernels run at, and whether the force shares corner products (as the per-site kernels
/// decide). HMC keeps the links and momenta in this layout for a whole trajectory
/// ([`crate::space::PackedSpace`]), so that the force, the kick and the drift never convert;
/// fields are packed and unpacked only at the ends. Every kernel gives each link the bits of
/// the per-site one.
#[derive(Clone)]
pub struct Layout {
    g: Geometry,
    width: usize,
    level: u8,
    shared: bool,
    /// Whether the force is written by non-temporal stores ([`STREAM_MIN_BYTES`]).
    stream: bool,
}

/// The smallest field (bytes of links) whose force [`Layout::force`] writes by non-temporal
/// stores (with AVX-512 and 8 lanes): a force that large leaves the core's L2 before anything
/// reads it, so a plain store's read of each line before writing it is wasted traffic. Measured
/// on one thread of a Xeon with AVX-512 (2 MiB of L2), the same bits: 16⁴ (38 MB) 20.6–22.9
/// against 23.9–28.1 ms; 8⁴ (2.4 MB, read back from L2 by the kick) 1.06–1.14 against 1.05–1.06
/// ms, so smaller fields keep plain stores.
pub const STREAM_MIN_BYTES: usize = 16 << 20;

impl Layout {
    /// The layout of `lat` at `width` lanes (from [`lane_width`]) with kernels at SIMD `level`
    /// (which the CPU must run: the caller checks), corners shared when `shared`.
    pub(crate) fn new<N: Neighbours + ?Sized>(lat: &N, width: usize, level: u8, shared: bool) -> Self {
        let g = Geometry::new(lat, width);
        let stream = g.matrices() * width * 18 * 8 >= STREAM_MIN_BYTES;
        Self { g, width, level: width_level(width, level), shared, stream }
    }

    /// This layout with the force written by non-temporal stores (where the kernels run
    /// AVX-512 with 8 lanes) or not, whatever the field's size (for tests: the same bits).
    pub fn streaming(self, stream: bool) -> Self {
        Self { stream, ..self }
    }

    /// The lane width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The lattice's dimension.
    pub fn dim(&self) -> usize {
        self.g.d
    }

    /// The lattice's sites.
    pub fn sites(&self) -> usize {
        self.g.b * self.width
    }

    /// Reals per field: 18 per link.
    pub fn reals(&self) -> usize {
        self.g.matrices() * self.width * 18
    }

    /// A field of zeros.
    pub fn zeros(&self) -> Packed {
        let mut p = Packed(Lines(Vec::new()));
        by_width!(self.width, W => { p.0.matrices::<W>(self.g.matrices()); });
        p
    }

    /// `uf` (`[site][μ]` records of 18 reals, [`Layout::reals`] in all) packed.
    pub fn pack(&self, uf: &[f64]) -> Packed {
        assert_eq!(uf.len(), self.reals(), "a field of the layout's lattice");
        let mut p = self.zeros();
        by_width!(self.width, W => pack_all::<W>(&self.g, uf, self.level, p.0.matrices::<W>(self.g.matrices())));
        p
    }

    /// `p` written to `out` as `[site][μ]` records of 18 reals.
    pub fn unpack(&self, p: &Packed, out: &mut [f64]) {
        assert_eq!(out.len(), self.reals(), "a field of the layout's lattice");
        by_width!(self.width, W => unpack_all::<W>(&self.g, p.0.view::<W>(self.g.matrices()), self.level, out));
    }

    /// The Wilson force (weight `w` = β/3, as [`fast::wilson_force`](crate::fast::wilson_force)) of the links `u` into `f`.
    pub fn force(&self, u: &Packed, w: f64, f: &mut Packed) {
        let n = self.g.matrices();
        let d = self.g.d;
        by_width!(self.width, W => {
            let (u, f) = (u.0.view::<W>(n), f.0.matrices::<W>(n));
            let (level, stream) = (self.level, self.stream);
            let sink = move |out: &mut [M<W>], o: usize, mu: usize, m: &M<W>| {
                let dst = &mut out[o * d + mu];
                #[cfg(target_arch = "x86_64")]
                if W == 8 && level == 2 && stream {
                    // SAFETY: level 2 means the CPU runs AVX-512F; `dst` is a matrix of a
                    // `Lines` buffer of 8-lane matrices (1152 bytes each), so on a cache line
                    unsafe { wide::stream8(&*(m as *const M<W>).cast::<M<8>>(), &mut *(dst as *mut M<W>).cast::<M<8>>()) };
                    return;
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (level, stream);
                *dst = *m;
            };
            with_buffers(|b| forces::<W, M<W>>(&self.g, u, w, self.level, self.shared, &mut b.ring, f, d, sink))
        })
    }

    /// The drift U ← exp(εP)·U of every link (the bits of core's `GaugeGroup::exp_mul_into`).
    pub fn drift(&self, u: &mut Packed, p: &Packed, eps: f64) {
        let n = self.g.matrices();
        let (level, chunk) = (self.level, self.g.chunk() * self.g.d);
        by_width!(self.width, W => {
            let (u, p) = (u.0.matrices::<W>(n), p.0.view::<W>(n));
            chunks_mut_when(self.g.parallel(W), u, chunk, |k, u| {
                let p = &p[k * chunk..][..u.len()];
                by_level!(level, drift, drift_from(u, p, eps, level))
            });
        })
    }

    /// p ← p − ε·f, real by real (the bits of core's kick).
    pub fn kick(&self, p: &mut Packed, f: &Packed, eps: f64) {
        let f = f.0.reals();
        let chunk = CHUNK_SITES * 18;
        chunks_mut_when(SiteWork::Light.parallel(self.g.b * self.width), p.0.reals_mut(), chunk, |k, p| {
            for (q, g) in p.iter_mut().zip(&f[k * chunk..]) {
                *q += *g * -eps;
            }
        });
    }
}

/// U ← exp(εP)·U for the links `u` and momenta `p` of a run of outer sites: each matrix's lanes
/// unpacked into W algebra elements, exponentiated W at a time by core's `su3::exp_many` (the
/// bits of `su3::exp`), packed back and multiplied onto U in the blocked layout (the bits of a
/// per-site product).
#[inline(always)]
fn drift_from<const W: usize>(u: &mut [M<W>], p: &[M<W>], eps: f64, level: u8) {
    let mut xs = [SuAlg::<3>::zero(); W];
    let mut e = Line(zero::<W>());
    for (u, q) in u.iter_mut().zip(p) {
        unpack(q, bytemuck::cast_slice_mut(&mut xs), 18, level);
        if eps != 1.0 {
            for x in &mut xs {
                *x = x.scale(eps);
            }
        }
        let es = su3::exp_many(&xs);
        pack_into(bytemuck::cast_slice(&es), |_| 0, 18, level, std::slice::from_mut(&mut e.0));
        *u = prod::<W, false, false>(&e.0, u);
    }
}

/// The slab size of the outer sites whose forward and backward `hops` (`d` per outer site, `b`
/// outer sites) are `up` and `dn`: the outer-site stride S of the slowest axis, so that slab
/// t = o / S holds whole hyperplanes of that axis and every hop from slab t lands in slab t − 1,
/// t or t + 1 (cyclically), as for row-major sites. Where the hops do not have that shape, b
/// (one slab).
fn slab_size(up: &[Hop], dn: &[Hop], d: usize, b: usize) -> usize {
    // the backward hop from outer site 0 along the slowest axis lands furthest, at (L − 1)·S
    let far = (0..d).map(|mu| dn[mu].o as usize).max().unwrap_or(0);
    let s = b - far;
    if far == 0 || !b.is_multiple_of(s) || b / s < 2 {
        return b;
    }
    let n = b / s;
    let near = |o: usize, h: Hop| {
        let (a, c) = (o / s, h.o as usize / s);
        c == a || c == (a + 1) % n || c == (a + n - 1) % n
    };
    let fits = (0..b).all(|o| (0..d).all(|mu| near(o, up[o * d + mu]) && near(o, dn[o * d + mu])));
    if fits { s } else { b }
}

/// Packs `out[n]` from the links of `uf` (18 reals each): lane ℓ from the record at
/// `start(n) + ℓ·lane`. At SIMD `level` 2 with 8 lanes, by register transposes.
#[inline(always)]
fn pack_into<const W: usize>(uf: &[f64], start: impl Fn(usize) -> usize, lane: usize, level: u8, out: &mut [M<W>]) {
    for (n, m) in out.iter_mut().enumerate() {
        let src = &uf[start(n)..][..(W - 1) * lane + 18];
        #[cfg(target_arch = "x86_64")]
        if W == 8 && level == 2 {
            // SAFETY: level 2 means the CPU runs AVX-512F (the caller checked); `src` holds the
            // 8 records (sliced above); M<W> is M<8> here
            unsafe { wide::pack8(src, lane, &mut *(m as *mut M<W>).cast::<M<8>>()) };
            continue;
        }
        let _ = level;
        for i in 0..3 {
            for j in 0..6 {
                m[i][j] = std::array::from_fn(|l| src[l * lane + i * 6 + j]);
            }
        }
    }
}

/// Writes lane ℓ of `m` as 18 reals at `out[ℓ·lane..]`; at SIMD `level` 2 with 8 lanes, by
/// register transposes.
#[inline(always)]
fn unpack<const W: usize>(m: &M<W>, out: &mut [f64], lane: usize, level: u8) {
    let out = &mut out[..(W - 1) * lane + 18];
    #[cfg(target_arch = "x86_64")]
    if W == 8 && level == 2 {
        // SAFETY: level 2 means the CPU runs AVX-512F (the caller checked); `out` holds the 8
        // records (sliced above); M<W> is M<8> here
        unsafe { wide::unpack8(&*(m as *const M<W>).cast::<M<8>>(), out, lane) };
        return;
    }
    let _ = level;
    for l in 0..W {
        let dst = &mut out[l * lane..][..18];
        for i in 0..3 {
            for j in 0..6 {
                dst[i * 6 + j] = m[i][j][l];
            }
        }
    }
}

/// Packing and unpacking 8 lanes with AVX-512 shuffles: the 18 reals of a matrix as two 8×8
/// transposes (reals 0–7 and 8–15) and one 2×8 (reals 16, 17).
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::M;
    use std::arch::x86_64::*;

    /// 128-bit lane `K` of `v` (through AVX-512F's float form, which moves the same bits; the
    /// double form needs AVX-512DQ, which the variant's level does not check).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lane128<const K: i32>(v: __m512d) -> __m128d {
        _mm_castps_pd(_mm512_extractf32x4_ps::<K>(_mm512_castpd_ps(v)))
    }

    /// `v` with its 128-bit lane `K` replaced by `x` (AVX-512F, as [`lane128`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn with128<const K: i32>(v: __m512d, x: __m128d) -> __m512d {
        _mm512_castps_pd(_mm512_insertf32x4::<K>(_mm512_castpd_ps(v), _mm_castpd_ps(x)))
    }

    /// The 8×8 transpose of `r` (r[a][b] becomes r[b][a]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose8(r: [__m512d; 8]) -> [__m512d; 8] {
        let t = [
            _mm512_unpacklo_pd(r[0], r[1]),
            _mm512_unpackhi_pd(r[0], r[1]),
            _mm512_unpacklo_pd(r[2], r[3]),
            _mm512_unpackhi_pd(r[2], r[3]),
            _mm512_unpacklo_pd(r[4], r[5]),
            _mm512_unpackhi_pd(r[4], r[5]),
            _mm512_unpacklo_pd(r[6], r[7]),
            _mm512_unpackhi_pd(r[6], r[7]),
        ];
        // 128-bit lanes 0 and 2 (resp. 1 and 3) of two vectors, interleaved
        let even = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
        let odd = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
        let s = [
            _mm512_permutex2var_pd(t[0], even, t[2]),
            _mm512_permutex2var_pd(t[1], even, t[3]),
            _mm512_permutex2var_pd(t[0], odd, t[2]),
            _mm512_permutex2var_pd(t[1], odd, t[3]),
            _mm512_permutex2var_pd(t[4], even, t[6]),
            _mm512_permutex2var_pd(t[5], even, t[7]),
            _mm512_permutex2var_pd(t[4], odd, t[6]),
            _mm512_permutex2var_pd(t[5], odd, t[7]),
        ];
        [
            _mm512_shuffle_f64x2::<0b01_00_01_00>(s[0], s[4]),
            _mm512_shuffle_f64x2::<0b01_00_01_00>(s[1], s[5]),
            _mm512_shuffle_f64x2::<0b01_00_01_00>(s[2], s[6]),
            _mm512_shuffle_f64x2::<0b01_00_01_00>(s[3], s[7]),
            _mm512_shuffle_f64x2::<0b11_10_11_10>(s[0], s[4]),
            _mm512_shuffle_f64x2::<0b11_10_11_10>(s[1], s[5]),
            _mm512_shuffle_f64x2::<0b11_10_11_10>(s[2], s[6]),
            _mm512_shuffle_f64x2::<0b11_10_11_10>(s[3], s[7]),
        ]
    }

    /// `m` from the 8 records of 18 reals at `src[ℓ·lane..]`.
    ///
    /// # Safety
    /// The CPU must run AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack8(src: &[f64], lane: usize, m: &mut M<8>) {
        assert!(src.len() >= 7 * lane + 18);
        let p = src.as_ptr();
        let out = (m as *mut M<8>).cast::<f64>();
        // SAFETY: every read lies in `src` (checked above); `out` is 18 vectors of 8 reals
        unsafe {
            for h in 0..2 {
                let r = std::array::from_fn(|l| _mm512_loadu_pd(p.add(l * lane + 8 * h)));
                for (j, v) in transpose8(r).into_iter().enumerate() {
                    _mm512_storeu_pd(out.add((8 * h + j) * 8), v);
                }
            }
            // reals 16 and 17 of lanes 0–3 and 4–7 as (16, 17) pairs, then split
            let pairs = |first: usize| {
                let v = _mm512_castpd128_pd512(_mm_loadu_pd(p.add(first * lane + 16)));
                let v = with128::<1>(v, _mm_loadu_pd(p.add((first + 1) * lane + 16)));
                let v = with128::<2>(v, _mm_loadu_pd(p.add((first + 2) * lane + 16)));
                with128::<3>(v, _mm_loadu_pd(p.add((first + 3) * lane + 16)))
            };
            let (lo, hi) = (pairs(0), pairs(4));
            let re = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
            let im = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
            _mm512_storeu_pd(out.add(16 * 8), _mm512_permutex2var_pd(lo, re, hi));
            _mm512_storeu_pd(out.add(17 * 8), _mm512_permutex2var_pd(lo, im, hi));
        }
    }

    /// The 8 records of 18 reals of `m` to `out[ℓ·lane..]`.
    ///
    /// `out` = `m` by non-temporal stores, which write whole lines without reading them first
    /// (weakly ordered: the storing thread must [`fence`] before another reads `out`).
    ///
    /// # Safety
    /// The CPU must run AVX-512F; `out` must start on a 64-byte boundary.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn stream8(m: &M<8>, out: &mut M<8>) {
        let (src, dst) = ((m as *const M<8>).cast::<f64>(), (out as *mut M<8>).cast::<f64>());
        debug_assert!((dst as usize).is_multiple_of(64));
        // SAFETY: both are 18 vectors of 8 reals, `dst` aligned (the caller's contract)
        unsafe {
            for k in 0..18 {
                _mm512_stream_pd(dst.add(8 * k), _mm512_loadu_pd(src.add(8 * k)));
            }
        }
    }

    /// Orders this thread's earlier non-temporal stores before its later stores.
    ///
    /// # Safety
    /// The CPU must run AVX-512F (any x86-64 has the fence; this keeps the variant's contract).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fence() {
        _mm_sfence()
    }

    /// # Safety
    /// The CPU must run AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn unpack8(m: &M<8>, out: &mut [f64], lane: usize) {
        assert!(out.len() >= 7 * lane + 18);
        let p = out.as_mut_ptr();
        let src = (m as *const M<8>).cast::<f64>();
        // SAFETY: every write lies in `out` (checked above); `src` is 18 vectors of 8 reals
        unsafe {
            for h in 0..2 {
                let r = std::array::from_fn(|j| _mm512_loadu_pd(src.add((8 * h + j) * 8)));
                for (l, v) in transpose8(r).into_iter().enumerate() {
                    _mm512_storeu_pd(p.add(l * lane + 8 * h), v);
                }
            }
            let (re, im) = (_mm512_loadu_pd(src.add(16 * 8)), _mm512_loadu_pd(src.add(17 * 8)));
            let lo = _mm512_permutex2var_pd(re, _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), im);
            let hi = _mm512_permutex2var_pd(re, _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4), im);
            _mm_storeu_pd(p.add(16), _mm512_castpd512_pd128(lo));
            _mm_storeu_pd(p.add(lane + 16), lane128::<1>(lo));
            _mm_storeu_pd(p.add(2 * lane + 16), lane128::<2>(lo));
            _mm_storeu_pd(p.add(3 * lane + 16), lane128::<3>(lo));
            _mm_storeu_pd(p.add(4 * lane + 16), _mm512_castpd512_pd128(hi));
            _mm_storeu_pd(p.add(5 * lane + 16), lane128::<1>(hi));
            _mm_storeu_pd(p.add(6 * lane + 16), lane128::<2>(hi));
            _mm_storeu_pd(p.add(7 * lane + 16), lane128::<3>(hi));
        }
    }
}

/// What the per-outer-site kernels read.
struct Blocked<'a, const W: usize> {
    links: &'a [M<W>],
    /// The corner products of the `slab` outer sites from `corners_at` on (the slab being
    /// worked on), and those of the `slab` from `before_at` on (the slab before it).
    corners: &'a [M<W>],
    corners_at: usize,
    before: &'a [M<W>],
    before_at: usize,
    slab: usize,
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

    /// The corner product of plane k at the hop's site (in the slab worked on or the one before
    /// it), lanes rotated (into `tmp` where they move).
    #[inline(always)]
    fn corner<'s>(&self, h: Hop, k: usize, tmp: &'s mut M<W>) -> &'s M<W>
    where
        'a: 's,
    {
        let planes = self.d * (self.d - 1) / 2;
        let o = h.o as usize;
        let (slot, from) = if o.wrapping_sub(self.corners_at) < self.slab {
            (self.corners, self.corners_at)
        } else {
            (self.before, self.before_at)
        };
        fetch(&slot[(o - from) * planes + k], h.r as usize, tmp)
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
    // on cache lines, as the buffers (see [`Line`])
    let mut acc = Line([zero::<W>(); crate::fast::MAX_DIM]);
    let acc = &mut acc.0;
    // scratch for the rotated operands of one product
    let (mut l0, mut l1) = (Line(zero::<W>()), Line(zero::<W>()));
    let (t0, t1) = (&mut l0.0, &mut l1.0);
    for o in first..first + n {
        for a in acc.iter_mut().take(d) {
            *a = zero();
        }
        let mut k = 0;
        for mu in 0..d {
            for nu in mu + 1..d {
                let (xm, xn) = (s.up[o * d + mu], s.up[o * d + nu]);
                let c = prod::<W, false, true>(s.link(xm, nu, &mut *t0), s.link(xn, mu, &mut *t1));
                prod_add::<W, false, true>(&mut acc[mu], &c, s.here(o, nu));
                let yn = s.dn[o * d + nu];
                let ym = s.dn[o * d + mu];
                if s.shared {
                    prod_add::<W, true, false>(
                        &mut acc[mu],
                        s.link(then::<W>(s.up, d, yn, mu), nu, &mut *t0),
                        s.corner(yn, k, &mut *t1),
                    );
                    prod_add_adj::<W, false, false>(&mut acc[nu], s.here(o, mu), &c);
                    prod_add_adj::<W, false, false>(
                        &mut acc[nu],
                        s.corner(ym, k, &mut *t0),
                        s.link(then::<W>(s.up, d, ym, nu), mu, &mut *t1),
                    );
                } else {
                    let a = prod::<W, false, false>(s.link(yn, mu, &mut *t0), s.link(then::<W>(s.up, d, yn, mu), nu, &mut *t1));
                    prod_add::<W, true, false>(&mut acc[mu], &a, s.link(yn, nu, &mut *t0));
                    prod_add_adj::<W, false, false>(&mut acc[nu], s.here(o, mu), &c);
                    let a = prod::<W, false, false>(s.link(ym, nu, &mut *t0), s.link(then::<W>(s.up, d, ym, nu), mu, &mut *t1));
                    prod_add::<W, true, false>(&mut acc[nu], &a, s.link(ym, mu, &mut *t0));
                }
                k += 1;
            }
        }
        for (mu, a) in acc.iter().enumerate().take(d) {
            force_into(&prod::<W, false, false>(s.here(o, mu), a), w, &mut *t0);
            sink(o, mu, &*t0);
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
            pub unsafe fn pack<const W: usize>(
                uf: &[f64],
                start: impl Fn(usize) -> usize,
                lane: usize,
                level: u8,
                out: &mut [M<W>],
            ) {
                pack_into(uf, start, lane, level, out)
            }

            /// # Safety
            /// The CPU must support the instruction set.
            #[target_feature(enable = $feature)]
            pub unsafe fn drift<const W: usize>(u: &mut [M<W>], p: &[M<W>], eps: f64, level: u8) {
                drift_from(u, p, eps, level)
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
