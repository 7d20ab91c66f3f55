//! The 4D SU(3) Wilson hopping term with SIMD across sites, for the solvers.
//!
//! # Layout
//! The last (time, fastest) axis, of extent L, is cut into [`LANES`] slabs of q = L/LANES
//! sites. Site (x0, x1, x2, c) sits in lane c / q of the *outer site* (x0, x1, x2, c mod q) of
//! an outer lattice with extents (L0, L1, L2, q). A spinor block ([`SpinorLanes`]) holds the
//! 24 reals of its outer site's spinors as 24 vectors of LANES lanes, a link block 18. A 3×3
//! complex product is then 108 multiplies and 108 adds on whole vectors, with no shuffle.
//!
//! # Neighbours
//! Neighbour access goes through the outer lattice's shifts: every neighbour of an outer site
//! is one other outer site, with its lanes unchanged, except the time hops across a slab's
//! edge (c mod q = q − 1 forward, 0 backward), whose lanes rotate by one. The antiperiodic
//! sign then falls on the one lane that wraps around the lattice. The rotation is done in
//! registers, on the 12 reals of a projected half-spinor or of its product with the link.
//!
//! # Even–odd
//! With q even, the sites of an outer site (q apart along time) share one parity, the outer
//! site's parity on the outer lattice. A half field of one parity is then the outer sites of
//! that parity, at index o / 2 (the outer lattice's last extent q is even), so the Schur
//! complement runs on packed half fields. This requires L to be a multiple of 2·LANES.
//!
//! # Exactness
//! Each lane does the per-site kernel's operations in the same order ([`super::wilson`]:
//! projections as i^k phases, products summed from +0 in column order, hops in the order
//! μ = 0..3, forward before backward, the time sign as a negation, no fused multiply-add), so
//! the results are bit-identical to [`super::WilsonDirac::apply`] and friends (tested). The
//! lane width is fixed at 4 on every machine, so a solve that runs in this layout gives the
//! same bits everywhere: its reductions sum in a layout-dependent order, and one layout
//! means one order. Compiled variants (baseline, AVX2, AVX-512) differ only in width.
//!
//! # Kernels
//! `Sweep::block` on `[f64; 4]` arrays is the portable kernel (the baseline variant). The
//! x86 variants write the same operations with AVX2 intrinsics, compiled for AVX2 and for
//! AVX-512VL (which gives them 32 registers); left to the compiler, the array kernel kept its
//! 24 accumulators and half-spinors on the stack, and with AVX-512 enabled fused pairs of
//! 4-lane operations into 512-bit ones with a shuffle each.
//!
//! # Scope
//! Plain Wilson fermions (no clover term, no twisted mass) on SU(3) in 4D, where the time
//! extent is a multiple of 8; the solvers use it where the fields stay in cache
//! (`wilson::fields_stay_cached`). Everything else
//! keeps the per-site kernels.

use bytemuck::{Pod, Zeroable};

use super::gamma::{ProjPair, hop_projectors};
use super::spinor::par_fill;
use super::wilson::check_len;
use super::FermionError;
use crate::lattice::Lattice;

/// Sites per vector in the lanes layout (fixed, so that results do not depend on the CPU).
pub const LANES: usize = 4;

/// One real of [`LANES`] sites.
pub type Lane = [f64; LANES];

/// The 4-spinors of one outer site: real r (index (spin·3 + colour)·2 + re/im, as in
/// [`super::Spinor`]) of lane l at `.0[r][l]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpinorLanes(pub [Lane; 24]);

/// One link U_μ of one outer site: real e (row-major 3×3, (re, im)) of lane l at `.0[e][l]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkLanes(pub [Lane; 18]);

// SAFETY: #[repr(C)] arrays of f64, no padding; every bit pattern is valid.
unsafe impl Zeroable for SpinorLanes {}
// SAFETY: as above.
unsafe impl Pod for SpinorLanes {}
// SAFETY: as above.
unsafe impl Zeroable for LinkLanes {}
// SAFETY: as above.
unsafe impl Pod for LinkLanes {}

impl Default for SpinorLanes {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl Default for LinkLanes {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// The outer lattice of a 4D lattice in the lanes layout, and the map between sites and
/// (outer site, lane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneLayout {
    outer: Lattice,
    /// Sites per slab along time: L / LANES.
    q: usize,
    /// The time extent L.
    l: usize,
}

impl LaneLayout {
    /// The layout of `lat`, or None unless it is 4D with a time extent that is a multiple of
    /// 2·[`LANES`] (q = L/LANES even, for even–odd).
    pub fn new(lat: &Lattice) -> Option<Self> {
        let e = lat.shape();
        if e.len() != 4 {
            return None;
        }
        let l = e[3];
        if !l.is_multiple_of(2 * LANES) {
            return None;
        }
        let q = l / LANES;
        let outer = Lattice::new(&[e[0] as i64, e[1] as i64, e[2] as i64, q as i64]).ok()?;
        Some(Self { outer, q, l })
    }

    /// The number of outer sites: V / LANES.
    pub fn outer_sites(&self) -> usize {
        self.outer.volume()
    }

    /// The site in lane `lane` of outer site `o`.
    #[inline(always)]
    pub fn site(&self, o: usize, lane: usize) -> usize {
        (o / self.q) * self.l + lane * self.q + o % self.q
    }

    /// The (outer site, lane) of site `x`: the inverse of [`Self::site`].
    #[inline(always)]
    pub fn outer_lane(&self, x: usize) -> (usize, usize) {
        ((x / self.l) * self.q + x % self.q, (x % self.l) / self.q)
    }

    /// The outer site at index `h` among those of parity `p` (the outer lattice's last extent
    /// is even, so the outer sites 2h and 2h + 1 have opposite parities).
    #[inline(always)]
    pub fn outer_of_half(&self, p: usize, h: usize) -> usize {
        let o = 2 * h;
        if self.outer.site_parity(o) == p { o } else { o + 1 }
    }

    /// Packs site records (`R` reals each) into blocks of `R` lanes: block i from the outer site
    /// `outer(i)`, each lane's record at `site_index(site)` of `src` (a full or a half field).
    fn pack<const R: usize>(&self, src: &[[f64; R]], site_index: impl Fn(usize) -> usize + Sync, out: &mut [[Lane; R]], outer: impl Fn(usize) -> usize + Sync) {
        par_fill(out, |i, b| {
            let o = outer(i);
            for lane in 0..LANES {
                let s = &src[site_index(self.site(o, lane))];
                for r in 0..R {
                    b[r][lane] = s[r];
                }
            }
        });
    }
}

/// The hop tables' constants and the fields of one sweep of the kernel.
struct Sweep<'a> {
    layout: &'a LaneLayout,
    links: &'a [LinkLanes],
    /// A full field, or with `parity` set a half field of the other parity (index o/2).
    src: &'a [SpinorLanes],
    /// Targets: the outer sites of this parity (output index h), or all of them (None).
    parity: Option<usize>,
    /// out = x + coef·(H src) when set, else H src.
    xpay: Option<(&'a [SpinorLanes], f64)>,
}

/// The time-boundary sign on one lane: lane `lane` negated.
#[inline(always)]
fn negate_lane(v: Lane, lane: usize) -> Lane {
    std::array::from_fn(|l| if l == lane { -v[l] } else { v[l] })
}

/// Lane l takes lane l + 1 (the forward time neighbour across a slab's edge).
#[inline(always)]
fn rot_up(v: Lane) -> Lane {
    std::array::from_fn(|l| v[(l + 1) % LANES])
}

/// Lane l takes lane l − 1.
#[inline(always)]
fn rot_down(v: Lane) -> Lane {
    std::array::from_fn(|l| v[(l + LANES - 1) % LANES])
}

#[inline(always)]
fn add(a: Lane, b: Lane) -> Lane {
    std::array::from_fn(|l| a[l] + b[l])
}

#[inline(always)]
fn sub(a: Lane, b: Lane) -> Lane {
    std::array::from_fn(|l| a[l] - b[l])
}

#[inline(always)]
fn mul(a: Lane, b: Lane) -> Lane {
    std::array::from_fn(|l| a[l] * b[l])
}

/// A complex number of LANES sites.
type Cx = [Lane; 2];

/// a + i^k b, exactly as the per-site kernel's `a + phase(b, k)` (a phase is a swap and
/// negations, and x + (−y) is x − y).
#[inline(always)]
fn add_phase(a: Cx, b: Cx, k: u8) -> Cx {
    match k & 3 {
        0 => [add(a[0], b[0]), add(a[1], b[1])],
        1 => [sub(a[0], b[1]), add(a[1], b[0])],
        2 => [sub(a[0], b[0]), sub(a[1], b[1])],
        _ => [add(a[0], b[1]), sub(a[1], b[0])],
    }
}

/// A half-spinor: 2 components × 3 colours.
type Half = [[Cx; 3]; 2];

/// h_k = s[p_k.i] + i^{p_k.ki} s[p_k.j], the projection of a spinor block, into `h`.
#[inline(always)]
fn project(s: &SpinorLanes, p: [ProjPair; 2], h: &mut Half) {
    for k in 0..2 {
        let pk = p[k];
        for c in 0..3 {
            let (a, b) = ((pk.i * 3 + c) * 2, (pk.j * 3 + c) * 2);
            h[k][c] = add_phase([s.0[a], s.0[a + 1]], [s.0[b], s.0[b + 1]], pk.ki);
        }
    }
}

/// `f` on every lane vector of a half-spinor, in place.
#[inline(always)]
fn map_half(h: &mut Half, f: impl Fn(Lane) -> Lane) {
    for k in 0..2 {
        for c in 0..3 {
            for z in 0..2 {
                h[k][c][z] = f(h[k][c][z]);
            }
        }
    }
}

/// Where a hop's lanes rotate: not at all, forward across a slab's edge (the half-spinor
/// rotates up before the product, the sign falls on the last lane), or backward (the product
/// rotates down after it, the sign falls on lane 0).
#[derive(Clone, Copy, PartialEq)]
enum Edge {
    None,
    Fwd,
    Bwd,
}

/// acc += the reconstruction of (U h) (or U† h for `BACK`) with the projector `p`, row by row:
/// each entry of U h summed from +0 over the columns in order, each term
/// (u.re·h.re ∓ u.im·h.im, u.re·h.im ± u.im·h.re), then the edge's rotation and sign, then
/// acc[p_k.i] += r_k and acc[p_k.j] += i^{p_k.kj} r_k, as the per-site kernel.
#[inline(always)]
fn link_hop<const BACK: bool>(u: &LinkLanes, h: &Half, p: [ProjPair; 2], edge: Edge, acc: &mut [Lane; 24]) {
    for i in 0..3 {
        let mut r = [[[0.0; LANES]; 2]; 2];
        for j in 0..3 {
            let e = if BACK { (j * 3 + i) * 2 } else { (i * 3 + j) * 2 };
            let (ur, ui) = (u.0[e], u.0[e + 1]);
            for k in 0..2 {
                let [hr, hi] = h[k][j];
                let (tr, ti) = if BACK {
                    (add(mul(ur, hr), mul(ui, hi)), sub(mul(ur, hi), mul(ui, hr)))
                } else {
                    (sub(mul(ur, hr), mul(ui, hi)), add(mul(ur, hi), mul(ui, hr)))
                };
                r[k] = [add(r[k][0], tr), add(r[k][1], ti)];
            }
        }
        for rk in &mut r {
            for v in rk.iter_mut() {
                *v = match edge {
                    Edge::None => *v,
                    Edge::Fwd => negate_lane(*v, LANES - 1),
                    Edge::Bwd => negate_lane(rot_down(*v), 0),
                };
            }
        }
        for k in 0..2 {
            let pk = p[k];
            let (a, b) = ((pk.i * 3 + i) * 2, (pk.j * 3 + i) * 2);
            acc[a] = add(acc[a], r[k][0]);
            acc[a + 1] = add(acc[a + 1], r[k][1]);
            let t = add_phase([acc[b], acc[b + 1]], r[k], pk.kj);
            acc[b] = t[0];
            acc[b + 1] = t[1];
        }
    }
}

impl Sweep<'_> {
    /// The forward and backward hops along `MU` at target outer site `t`, added to `acc`
    /// (sources a half field when `HALF`).
    #[inline(always)]
    fn hop_mu<const DAG: usize, const MU: usize, const HALF: bool>(&self, t: usize, acc: &mut [Lane; 24]) {
        let (outer, q) = (&self.layout.outer, self.layout.q);
        let sidx = |y: usize| if HALF { y >> 1 } else { y };
        let mut h = [[[[0.0; LANES]; 2]; 3]; 2];
        // forward: U_μ(x) (1 ∓ γ_μ) ψ(x+μ̂)
        let y = outer.fwd(t, MU);
        let p = const { hop_projectors::<4>()[DAG][0][MU] };
        project(&self.src[sidx(y)], p, &mut h);
        let edge = if MU == 3 && t % q == q - 1 { Edge::Fwd } else { Edge::None };
        if edge == Edge::Fwd {
            map_half(&mut h, rot_up);
        }
        link_hop::<false>(&self.links[t * 4 + MU], &h, p, edge, acc);
        // backward: U_μ(x−μ̂)† (1 ± γ_μ) ψ(x−μ̂), formed at x−μ̂'s lanes, then rotated
        let y = outer.bwd(t, MU);
        let p = const { hop_projectors::<4>()[DAG][1][MU] };
        project(&self.src[sidx(y)], p, &mut h);
        let edge = if MU == 3 && t.is_multiple_of(q) { Edge::Bwd } else { Edge::None };
        link_hop::<true>(&self.links[y * 4 + MU], &h, p, edge, acc);
    }

    /// Output block `i`: the hopping term (H, or H† for `DAG` = 1) at its outer site, or the
    /// xpay of it.
    #[inline(always)]
    fn block<const DAG: usize, const HALF: bool>(&self, i: usize, out: &mut SpinorLanes) {
        let t = match self.parity {
            Some(p) => self.layout.outer_of_half(p, i),
            None => i,
        };
        let mut acc = [[0.0; LANES]; 24];
        self.hop_mu::<DAG, 0, HALF>(t, &mut acc);
        self.hop_mu::<DAG, 1, HALF>(t, &mut acc);
        self.hop_mu::<DAG, 2, HALF>(t, &mut acc);
        self.hop_mu::<DAG, 3, HALF>(t, &mut acc);
        match self.xpay {
            Some((x, coef)) => {
                let c = [coef; LANES];
                for r in 0..24 {
                    out.0[r] = add(x[i].0[r], mul(c, acc[r]));
                }
            }
            None => out.0 = acc,
        }
    }
}

/// [`Sweep::block`] at the baseline instruction set.
fn block_plain<const DAG: usize, const HALF: bool>(s: &Sweep<'_>, i: usize, out: &mut SpinorLanes) {
    s.block::<DAG, HALF>(i, out)
}

/// The kernel written with AVX2 intrinsics on 4-lane vectors (compiled twice: for AVX2, and
/// for AVX-512VL, which gives it 32 registers), the same operations in the same order as
/// [`Sweep::block`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// A complex number of 4 sites: (re, im).
    type C = (__m256d, __m256d);

    #[inline(always)]
    fn ld(v: &Lane) -> __m256d {
        // SAFETY: `v` holds the 4 reals an unaligned 256-bit load reads (AVX is enabled by
        // every caller: the functions below are compiled with AVX2 or AVX-512VL).
        unsafe { _mm256_loadu_pd(v.as_ptr()) }
    }

    /// a + i^k b ([`super::add_phase`]).
    #[inline(always)]
    fn add_phase(a: C, b: C, k: u8) -> C {
        // SAFETY (all intrinsics here): register operations, AVX enabled by every caller.
        unsafe {
            match k & 3 {
                0 => (_mm256_add_pd(a.0, b.0), _mm256_add_pd(a.1, b.1)),
                1 => (_mm256_sub_pd(a.0, b.1), _mm256_add_pd(a.1, b.0)),
                2 => (_mm256_sub_pd(a.0, b.0), _mm256_sub_pd(a.1, b.1)),
                _ => (_mm256_add_pd(a.0, b.1), _mm256_sub_pd(a.1, b.0)),
            }
        }
    }

    /// One hop (see [`super::link_hop`]): component by component, so that a component's six
    /// vectors, a row's two sums and the products fit in 16 registers; the link's entries
    /// are memory operands.
    #[inline(always)]
    fn hop<const BACK: bool>(src: &SpinorLanes, u: &LinkLanes, p: [ProjPair; 2], edge: Edge, acc: &mut [__m256d; 24]) {
        // SAFETY (all intrinsics here): register operations, AVX2 enabled by every caller.
        unsafe {
            let neg_last = _mm256_set_pd(-0.0, 0.0, 0.0, 0.0);
            let neg_first = _mm256_set_pd(0.0, 0.0, 0.0, -0.0);
            for k in 0..2 {
                let pk = p[k];
                let mut h = [(_mm256_setzero_pd(), _mm256_setzero_pd()); 3];
                for (c, hc) in h.iter_mut().enumerate() {
                    let (a, b) = ((pk.i * 3 + c) * 2, (pk.j * 3 + c) * 2);
                    *hc = add_phase((ld(&src.0[a]), ld(&src.0[a + 1])), (ld(&src.0[b]), ld(&src.0[b + 1])), pk.ki);
                    if edge == Edge::Fwd {
                        // lane l takes lane l + 1
                        *hc = (_mm256_permute4x64_pd::<0x39>(hc.0), _mm256_permute4x64_pd::<0x39>(hc.1));
                    }
                }
                for i in 0..3 {
                    let (mut rr, mut ri) = (_mm256_setzero_pd(), _mm256_setzero_pd());
                    for (j, &(hr, hi)) in h.iter().enumerate() {
                        let e = if BACK { (j * 3 + i) * 2 } else { (i * 3 + j) * 2 };
                        let (ur, ui) = (ld(&u.0[e]), ld(&u.0[e + 1]));
                        let (tr, ti) = if BACK {
                            (
                                _mm256_add_pd(_mm256_mul_pd(ur, hr), _mm256_mul_pd(ui, hi)),
                                _mm256_sub_pd(_mm256_mul_pd(ur, hi), _mm256_mul_pd(ui, hr)),
                            )
                        } else {
                            (
                                _mm256_sub_pd(_mm256_mul_pd(ur, hr), _mm256_mul_pd(ui, hi)),
                                _mm256_add_pd(_mm256_mul_pd(ur, hi), _mm256_mul_pd(ui, hr)),
                            )
                        };
                        rr = _mm256_add_pd(rr, tr);
                        ri = _mm256_add_pd(ri, ti);
                    }
                    match edge {
                        Edge::None => {}
                        Edge::Fwd => {
                            rr = _mm256_xor_pd(rr, neg_last);
                            ri = _mm256_xor_pd(ri, neg_last);
                        }
                        Edge::Bwd => {
                            // lane l takes lane l − 1, and lane 0 (from the last lane) flips
                            rr = _mm256_xor_pd(_mm256_permute4x64_pd::<0x93>(rr), neg_first);
                            ri = _mm256_xor_pd(_mm256_permute4x64_pd::<0x93>(ri), neg_first);
                        }
                    }
                    let (a, b) = ((pk.i * 3 + i) * 2, (pk.j * 3 + i) * 2);
                    acc[a] = _mm256_add_pd(acc[a], rr);
                    acc[a + 1] = _mm256_add_pd(acc[a + 1], ri);
                    let t = add_phase((acc[b], acc[b + 1]), (rr, ri), pk.kj);
                    acc[b] = t.0;
                    acc[b + 1] = t.1;
                }
            }
        }
    }

    /// The hops along `MU` at target outer site `t` (see [`Sweep::hop_mu`]).
    #[inline(always)]
    fn hop_mu<const DAG: usize, const MU: usize, const HALF: bool>(s: &Sweep<'_>, t: usize, acc: &mut [__m256d; 24]) {
        let (outer, q) = (&s.layout.outer, s.layout.q);
        let sidx = |y: usize| if HALF { y >> 1 } else { y };
        let y = outer.fwd(t, MU);
        let p = const { hop_projectors::<4>()[DAG][0][MU] };
        let edge = if MU == 3 && t % q == q - 1 { Edge::Fwd } else { Edge::None };
        hop::<false>(&s.src[sidx(y)], &s.links[t * 4 + MU], p, edge, acc);
        let y = outer.bwd(t, MU);
        let p = const { hop_projectors::<4>()[DAG][1][MU] };
        let edge = if MU == 3 && t.is_multiple_of(q) { Edge::Bwd } else { Edge::None };
        hop::<true>(&s.src[sidx(y)], &s.links[y * 4 + MU], p, edge, acc);
    }

    /// [`Sweep::block`] in intrinsics.
    #[inline(always)]
    fn block<const DAG: usize, const HALF: bool>(s: &Sweep<'_>, i: usize, out: &mut SpinorLanes) {
        let t = match s.parity {
            Some(p) => s.layout.outer_of_half(p, i),
            None => i,
        };
        // SAFETY (all intrinsics here): AVX2 enabled by every caller; each store writes the
        // 4 reals of one lane vector.
        unsafe {
            let mut acc = [_mm256_setzero_pd(); 24];
            hop_mu::<DAG, 0, HALF>(s, t, &mut acc);
            hop_mu::<DAG, 1, HALF>(s, t, &mut acc);
            hop_mu::<DAG, 2, HALF>(s, t, &mut acc);
            hop_mu::<DAG, 3, HALF>(s, t, &mut acc);
            match s.xpay {
                Some((x, coef)) => {
                    let c = _mm256_set1_pd(coef);
                    for r in 0..24 {
                        let v = _mm256_add_pd(ld(&x[i].0[r]), _mm256_mul_pd(c, acc[r]));
                        _mm256_storeu_pd(out.0[r].as_mut_ptr(), v);
                    }
                }
                None => {
                    for r in 0..24 {
                        _mm256_storeu_pd(out.0[r].as_mut_ptr(), acc[r]);
                    }
                }
            }
        }
    }

    /// [`block`] for AVX2 (callable only where the CPU runs it).
    #[target_feature(enable = "avx2")]
    pub(super) fn avx2<const DAG: usize, const HALF: bool>(s: &Sweep<'_>, i: usize, out: &mut SpinorLanes) {
        block::<DAG, HALF>(s, i, out)
    }

    /// [`block`] for AVX-512VL (callable only where the CPU runs AVX2, AVX-512F and -VL).
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn avx512<const DAG: usize, const HALF: bool>(s: &Sweep<'_>, i: usize, out: &mut SpinorLanes) {
        block::<DAG, HALF>(s, i, out)
    }
}

/// The compiled variant this CPU runs at most: 0 baseline, 1 AVX2, 2 AVX-512 (F and VL).
pub fn lanes_simd_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
        return crate::simd::AVX512;
    }
    crate::simd::level().min(crate::simd::AVX2)
}

/// The plain Wilson operator of one gauge field in the lanes layout: its links packed once
/// ([`LaneDirac::new`]), then D, D†, the Schur complement D̂ and their normal products on
/// packed fields, allocation-free.
#[derive(Debug, Clone)]
pub struct LaneDirac {
    layout: LaneLayout,
    links: Vec<LinkLanes>,
    kappa: f64,
    level: u8,
}

impl LaneDirac {
    /// An empty operator on `layout` with hopping parameter `kappa`, kernels at SIMD `level`
    /// (capped at [`lanes_simd_level`]); [`Self::set_links`] fills in a gauge field.
    pub fn new(layout: LaneLayout, kappa: f64, level: u8) -> Self {
        let links = vec![LinkLanes::default(); layout.outer_sites() * 4];
        Self { layout, links, kappa, level: level.min(lanes_simd_level()) }
    }

    /// The layout.
    pub fn layout(&self) -> &LaneLayout {
        &self.layout
    }

    /// Sets κ (the links stay).
    pub fn set_kappa(&mut self, kappa: f64) {
        self.kappa = kappa;
    }

    /// Sets the kernels' SIMD level (capped at [`lanes_simd_level`]; every level gives the
    /// same bits).
    pub fn set_level(&mut self, level: u8) {
        self.level = level.min(lanes_simd_level());
    }

    /// Packs the links `u` (`[site][μ]`, 18 reals each: V·4·18 reals).
    pub fn set_links(&mut self, u: &[f64]) -> Result<(), FermionError> {
        let v = self.layout.outer_sites() * LANES;
        check_len("links (reals)", u.len(), v * 4 * 18)?;
        let u: &[[f64; 18]] = bytemuck::cast_slice(u);
        let links: &mut [[Lane; 18]] = bytemuck::cast_slice_mut(&mut self.links);
        // one block per (outer site, μ): site record o·4 + μ ↦ link of site(o, lane)·4 + μ
        let layout = &self.layout;
        par_fill(links, |i, b| {
            let (o, mu) = (i / 4, i % 4);
            for lane in 0..LANES {
                let s = &u[layout.site(o, lane) * 4 + mu];
                for e in 0..18 {
                    b[e][lane] = s[e];
                }
            }
        });
        Ok(())
    }

    /// Packs a full field (V spinors as 24 reals each) into V/LANES blocks.
    pub fn pack_full(&self, psi: &[[f64; 24]], out: &mut [SpinorLanes]) -> Result<(), FermionError> {
        let n = self.layout.outer_sites();
        check_len("full field", psi.len(), n * LANES)?;
        check_len("packed full field", out.len(), n)?;
        self.layout.pack(psi, |x| x, bytemuck::cast_slice_mut(out), |i| i);
        Ok(())
    }

    /// Unpacks V/LANES blocks into a full field (the inverse of [`Self::pack_full`]).
    pub fn unpack_full(&self, b: &[SpinorLanes], psi: &mut [[f64; 24]]) -> Result<(), FermionError> {
        let n = self.layout.outer_sites();
        check_len("packed full field", b.len(), n)?;
        check_len("full field", psi.len(), n * LANES)?;
        par_fill(psi, |x, s| {
            let (o, lane) = self.layout.outer_lane(x);
            for r in 0..24 {
                s[r] = b[o].0[r][lane];
            }
        });
        Ok(())
    }

    /// Packs a half field of the odd sites (`odd`) or the even ones (V/2 spinors, the site x at
    /// x/2) into V/(2·LANES) blocks.
    pub fn pack_half(&self, odd: bool, psi: &[[f64; 24]], out: &mut [SpinorLanes]) -> Result<(), FermionError> {
        let p = usize::from(odd);
        let n = self.layout.outer_sites() / 2;
        check_len("half field", psi.len(), n * LANES)?;
        check_len("packed half field", out.len(), n)?;
        let layout = &self.layout;
        layout.pack(psi, |x| x >> 1, bytemuck::cast_slice_mut(out), |h| layout.outer_of_half(p, h));
        Ok(())
    }

    /// Unpacks a packed half field (the inverse of [`Self::pack_half`], for either parity: the
    /// sites 2i and 2i + 1 share a lane and a block pair, so the site of half index i sits in
    /// block (o/2) whichever its parity).
    pub fn unpack_half(&self, b: &[SpinorLanes], psi: &mut [[f64; 24]]) -> Result<(), FermionError> {
        let n = self.layout.outer_sites() / 2;
        check_len("packed half field", b.len(), n)?;
        check_len("half field", psi.len(), n * LANES)?;
        par_fill(psi, |i, s| {
            // the site x = 2i or 2i + 1 of this parity; its outer site's half index is o/2
            let (o, lane) = self.layout.outer_lane(2 * i);
            for r in 0..24 {
                s[r] = b[o >> 1].0[r][lane];
            }
        });
        Ok(())
    }

    /// One sweep of the kernel over `out`.
    fn run(&self, s: &Sweep<'_>, dag: bool, out: &mut [SpinorLanes]) {
        let level = self.level;
        macro_rules! go {
            ($half:literal) => {
                par_fill(out, |i, o| match (level, dag) {
                    // SAFETY: `level` is capped at what the CPU runs (`Self::new`)
                    #[cfg(target_arch = "x86_64")]
                    (2, false) => unsafe { x86::avx512::<0, $half>(s, i, o) },
                    // SAFETY: as above
                    #[cfg(target_arch = "x86_64")]
                    (2, true) => unsafe { x86::avx512::<1, $half>(s, i, o) },
                    // SAFETY: as above
                    #[cfg(target_arch = "x86_64")]
                    (1, false) => unsafe { x86::avx2::<0, $half>(s, i, o) },
                    // SAFETY: as above
                    #[cfg(target_arch = "x86_64")]
                    (1, true) => unsafe { x86::avx2::<1, $half>(s, i, o) },
                    (_, false) => block_plain::<0, $half>(s, i, o),
                    (_, true) => block_plain::<1, $half>(s, i, o),
                })
            };
        }
        if s.parity.is_some() {
            go!(true)
        } else {
            go!(false)
        }
    }

    /// out = D ψ (`dag` false) or D† ψ on packed full fields, D = 1 − κH.
    pub fn apply(&self, psi: &[SpinorLanes], out: &mut [SpinorLanes], dag: bool) -> Result<(), FermionError> {
        let n = self.layout.outer_sites();
        check_len("packed source field", psi.len(), n)?;
        check_len("packed output field", out.len(), n)?;
        let s = Sweep {
            layout: &self.layout,
            links: &self.links,
            src: psi,
            parity: None,
            xpay: Some((psi, -self.kappa)),
        };
        self.run(&s, dag, out);
        Ok(())
    }

    /// out = D†D ψ on packed full fields (`tmp`: scratch of the same size).
    pub fn apply_normal(&self, psi: &[SpinorLanes], tmp: &mut [SpinorLanes], out: &mut [SpinorLanes]) -> Result<(), FermionError> {
        self.apply(psi, tmp, false)?;
        self.apply(tmp, out, true)
    }

    /// out_e = D̂ ψ_e (`dag` false) or D̂† ψ_e on packed even half fields, with
    /// D̂ = 1 − κ² H_eo H_oe (`tmp_o`: packed odd scratch).
    pub fn schur(&self, psi_e: &[SpinorLanes], tmp_o: &mut [SpinorLanes], out_e: &mut [SpinorLanes], dag: bool) -> Result<(), FermionError> {
        let n = self.layout.outer_sites() / 2;
        check_len("packed half source field", psi_e.len(), n)?;
        check_len("packed half scratch field", tmp_o.len(), n)?;
        check_len("packed half output field", out_e.len(), n)?;
        let odd = Sweep { layout: &self.layout, links: &self.links, src: psi_e, parity: Some(1), xpay: None };
        self.run(&odd, dag, tmp_o);
        let k2 = self.kappa * self.kappa;
        let even =
            Sweep { layout: &self.layout, links: &self.links, src: tmp_o, parity: Some(0), xpay: Some((psi_e, -k2)) };
        self.run(&even, dag, out_e);
        Ok(())
    }

    /// out_e = D̂†D̂ ψ_e on packed even half fields (`tmp_o`, `tmp_e`: packed scratch).
    pub fn schur_normal(
        &self,
        psi_e: &[SpinorLanes],
        tmp_o: &mut [SpinorLanes],
        tmp_e: &mut [SpinorLanes],
        out_e: &mut [SpinorLanes],
    ) -> Result<(), FermionError> {
        self.schur(psi_e, tmp_o, tmp_e, false)?;
        self.schur(tmp_e, tmp_o, out_e, true)
    }
}
