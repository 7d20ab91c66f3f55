//! The 4D SU(3) Wilson hopping term, written with AVX2 intrinsics.
//!
//! The same arithmetic as the generic kernel ([`WilsonDirac::hop_site`](super::WilsonDirac)),
//! operation for operation, so the bits are the same (tested): every complex product is
//! (u.re·v.re − u.im·v.im, u.re·v.im + u.im·v.re), its two halves formed by one
//! `vaddsubpd`, added to an accumulator that starts at +0; every phase i^k is a lane swap and
//! a sign flip; no multiply-add is fused.
//!
//! Layout in registers: the two half-spinor components of a projected 4-spinor share one
//! 256-bit register per colour, lanes (a.re, a.im, b.re, b.im) (the chiral basis pairs spins 0
//! and 1 with 2 and 3 in every projector, see [`hop_projectors`]), so a link's entry,
//! broadcast once, multiplies both. The site's result accumulates in six registers: spins
//! (0, 1) and (2, 3), three colours each.
//!
//! Memory: a spinor is 24 reals (spin-major, colour, re/im), a link 18 (row-major 3×3,
//! re/im), both as in [`super::Spinor`] and [`crate::gauge::Matrix`].

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::gamma::{ProjPair, hop_projectors};
use crate::lattice::Lattice;

/// Reals per SU(3) 4-spinor.
pub(crate) const SPINOR_REALS: usize = 24;
/// Reals per SU(3) link.
pub(crate) const LINK_REALS: usize = 18;

/// Lanes (a_c, b_c) for colour c of spins a and b of the spinor at `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_pair(s: &[f64; SPINOR_REALS], a: usize, b: usize, c: usize) -> __m256d {
    let (lo, hi) = (&s[(a * 3 + c) * 2..][..2], &s[(b * 3 + c) * 2..][..2]);
    // SAFETY: each slice holds the two reals an unaligned 128-bit load reads.
    let (lo, hi) = unsafe { (_mm_loadu_pd(lo.as_ptr()), _mm_loadu_pd(hi.as_ptr())) };
    _mm256_insertf128_pd::<1>(_mm256_castpd128_pd256(lo), hi)
}

/// A phase (i^k0, i^k1) on lanes (a.re, a.im, b.re, b.im), as a lane permutation (swap re
/// and im where k is odd) and a sign mask: exact.
#[derive(Clone, Copy, Debug)]
struct Phase {
    /// `vpermilpd` control: per element, 2 selects the lane's other real.
    ctrl: [i64; 4],
    /// Sign bits to flip (−0.0 where the element is negated).
    sign: [f64; 4],
}

impl Phase {
    /// i·(re, im) = (−im, re); −(re, im); −i·(re, im) = (im, −re).
    const fn new(k0: u8, k1: u8) -> Self {
        const fn half(k: u8) -> ([i64; 2], [f64; 2]) {
            match k & 3 {
                0 => ([0, 2], [0.0, 0.0]),
                1 => ([2, 0], [-0.0, 0.0]),
                2 => ([0, 2], [-0.0, -0.0]),
                _ => ([2, 0], [0.0, -0.0]),
            }
        }
        let ((c0, s0), (c1, s1)) = (half(k0), half(k1));
        Self { ctrl: [c0[0], c0[1], c1[0], c1[1]], sign: [s0[0], s0[1], s1[0], s1[1]] }
    }
}

/// The constants of one hop: the projector's pairs (i = spins 0 and 1, j = `j`), its phases
/// i^ki on the j spins and i^kj on the result, and whether the j spins come as (3, 2).
#[derive(Clone, Copy, Debug)]
struct HopConst {
    j: [usize; 2],
    ki: Phase,
    kj: Phase,
    j_swapped: bool,
}

/// [`HopConst`] for `[dag][dir][μ]`, from [`hop_projectors`].
const HOPS: [[[HopConst; 4]; 2]; 2] = {
    let p = hop_projectors::<4>();
    let blank = HopConst { j: [0, 0], ki: Phase::new(0, 0), kj: Phase::new(0, 0), j_swapped: false };
    let mut t = [[[blank; 4]; 2]; 2];
    let mut dag = 0;
    while dag < 2 {
        let mut dir = 0;
        while dir < 2 {
            let mut mu = 0;
            while mu < 4 {
                let [p0, p1]: [ProjPair; 2] = p[dag][dir][mu];
                assert!(p0.i == 0 && p1.i == 1, "chiral basis");
                t[dag][dir][mu] = HopConst {
                    j: [p0.j, p1.j],
                    ki: Phase::new(p0.ki, p1.ki),
                    kj: Phase::new(p0.kj, p1.kj),
                    j_swapped: p0.j == 3,
                };
                mu += 1;
            }
            dir += 1;
        }
        dag += 1;
    }
    t
};

/// `v` times a [`Phase`].
#[inline]
#[target_feature(enable = "avx2")]
fn phase(v: __m256d, ph: &Phase) -> __m256d {
    // SAFETY: reading 4 i64 / 4 f64 from arrays of 4.
    let (ctrl, sign) = unsafe { (_mm256_loadu_si256(ph.ctrl.as_ptr().cast()), _mm256_loadu_pd(ph.sign.as_ptr())) };
    _mm256_xor_pd(_mm256_permutevar_pd(v, ctrl), sign)
}

/// out_i += m_ij·h (or conj(m_ji)·h for `DAG`) for i < 3, one column j of the product m·h
/// (or m†·h): (u.re·h ∓ u.im·swap(h)) per entry. Taking the product column by column keeps
/// one projected colour live at a time (the sixteen AVX2 registers then hold the six
/// accumulators, the three partial products and the operands); each out_i still sums its
/// terms in j order from +0, as [`super::spinor`]'s textbook loop does.
#[inline]
#[target_feature(enable = "avx2")]
fn mat_col<const DAG: bool>(m: &[f64; LINK_REALS], j: usize, h: __m256d, out: &mut [__m256d; 3]) {
    // swap(h) = (im, re) per complex; for m† the conjugate's minus sign moves onto it, so that
    // addsub (− in re lanes, + in im lanes) gives u.re v.re + u.im v.im and u.re v.im − u.im v.re
    let s = _mm256_permute_pd::<0b0101>(h);
    let w = if DAG { _mm256_xor_pd(s, _mm256_set1_pd(-0.0)) } else { s };
    for (i, o) in out.iter_mut().enumerate() {
        let e = if DAG { (j * 3 + i) * 2 } else { (i * 3 + j) * 2 };
        let (re, im) = (_mm256_set1_pd(m[e]), _mm256_set1_pd(m[e + 1]));
        let t = _mm256_addsub_pd(_mm256_mul_pd(re, h), _mm256_mul_pd(im, w));
        *o = _mm256_add_pd(*o, t);
    }
}

/// One hop: `$acc` += (1 + σγ) U ψ (U† for `$back`) with the hop's constants `$hc`, negated
/// when `$flip`. A macro, so that it inlines into the loop over axes (a `#[target_feature]`
/// function this size stays an out-of-line call, its accumulators in memory).
macro_rules! hop_term {
    ($acc:ident, $link:expr, $s:expr, $hc:expr, $flip:expr, $back:literal) => {{
        let (link, s, hc): (&[f64; LINK_REALS], &[f64; SPINOR_REALS], &HopConst) = ($link, $s, $hc);
        let mut r = [_mm256_setzero_pd(); 3];
        for c in 0..3 {
            let a = load_pair(s, 0, 1, c);
            let b = phase(load_pair(s, hc.j[0], hc.j[1], c), &hc.ki);
            mat_col::<$back>(link, c, _mm256_add_pd(a, b), &mut r);
        }
        if $flip {
            let neg = _mm256_set1_pd(-0.0);
            for rc in &mut r {
                *rc = _mm256_xor_pd(*rc, neg);
            }
        }
        for c in 0..3 {
            $acc[c] = _mm256_add_pd($acc[c], r[c]);
            let rj = phase(r[c], &hc.kj);
            let rj = if hc.j_swapped { _mm256_permute2f128_pd::<0x01>(rj, rj) } else { rj };
            $acc[3 + c] = _mm256_add_pd($acc[3 + c], rj);
        }
    }};
}

/// Link `l` of the reals `u` (bounds-checked).
#[inline(always)]
fn link(u: &[f64], l: usize) -> &[f64; LINK_REALS] {
    u[l * LINK_REALS..][..LINK_REALS].try_into().expect("18 reals")
}

/// Spinor `i` of the reals `src` (bounds-checked).
#[inline(always)]
fn spinor(src: &[f64], i: usize) -> &[f64; SPINOR_REALS] {
    src[i * SPINOR_REALS..][..SPINOR_REALS].try_into().expect("24 reals")
}

/// How many sites ahead [`hop_site`] prefetches. Even, so that in the even–odd sweeps (every
/// other site of a row) the prefetched site has the target parity (measured at 16⁴: 2, 4, 6,
/// 10 for D and D̂†D̂; 4 best; the odd 3 slows D̂†D̂ by a third).
const PREFETCH_AHEAD: usize = 4;

/// Prefetches into L1 what the hop at site `z` reads from afar: its four links, the backward
/// links along axes 0, 1 and 2, and the spinors at z ± μ̂ for those axes (whose neighbours lie
/// rows or planes away, beyond what the hardware prefetcher, which follows a few sequential
/// streams, fetches in time). Nothing for z past the end. A hint only: it changes no result.
#[inline(always)]
fn prefetch_site(lat: &Lattice, u: &[f64], src: &[f64], z: usize, idx: &impl Fn(usize) -> usize) {
    if z >= lat.volume() {
        return;
    }
    let line = |p: &[f64]| {
        // SAFETY: a prefetch never faults; the address is inside `p`'s slice anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.as_ptr().cast()) }
    };
    // 8 reals = one 64-byte line
    let links = &u[z * 4 * LINK_REALS..][..4 * LINK_REALS];
    for k in 0..9 {
        line(&links[k * 8..]);
    }
    for mu in 0..3 {
        let y = lat.bwd(z, mu);
        let l = &u[(y * 4 + mu) * LINK_REALS..][..LINK_REALS];
        line(l);
        line(&l[8..]);
        line(&l[LINK_REALS - 1..]);
        for y in [y, lat.fwd(z, mu)] {
            let s = &src[idx(y) * SPINOR_REALS..][..SPINOR_REALS];
            line(s);
            line(&s[8..]);
            line(&s[16..]);
            line(&s[SPINOR_REALS - 1..]);
        }
    }
}

/// The hopping term of the 4D SU(3) Wilson operator at site x (H for `DAG` = 0, H† for 1),
/// written to `out` (24 reals). `u`: the links as reals (`[site][μ]`, 18 each), `src`: the
/// source field as reals (24 per spinor), `idx` maps a site to its spinor's position in
/// `src`. Slicing is bounds-checked: a short slice panics rather than reading out of bounds.
/// Callable (unsafely) only where the CPU runs AVX2.
#[target_feature(enable = "avx2")]
///
/// With `xpay = Some((ψ, s))` it writes ψ + s·(H ψ) instead (per real x + s·h, the bits of
/// [`super::Colour::xpay`]), finishing the operator's site in registers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hop_site<const DAG: usize>(
    lat: &Lattice,
    u: &[f64],
    src: &[f64],
    x: usize,
    idx: impl Fn(usize) -> usize,
    xpay: Option<(&[f64; SPINOR_REALS], f64)>,
    out: &mut [f64; SPINOR_REALS],
) {
    let t = lat.time(x);
    // only where the fields stream from memory (see `fields_stay_cached`)
    if !super::wilson::fields_stay_cached(lat.volume()) {
        prefetch_site(lat, u, src, x + PREFETCH_AHEAD, &idx);
    }
    let mut acc = [_mm256_setzero_pd(); 6];
    let hops = &HOPS[DAG];
    // a loop, not unrolled code: unrolled, the compiler hoists every hop's loads and spills
    for mu in 0..4 {
        let time = mu == 3;
        let y = lat.fwd(x, mu);
        hop_term!(
            acc,
            link(u, x * 4 + mu),
            spinor(src, idx(y)),
            &hops[0][mu],
            time && t + 1 == lat.time_extent(),
            false
        );
        let y = lat.bwd(x, mu);
        hop_term!(acc, link(u, y * 4 + mu), spinor(src, idx(y)), &hops[1][mu], time && t == 0, true);
    }
    if let Some((psi, coef)) = xpay {
        let coef = _mm256_set1_pd(coef);
        for c in 0..3 {
            acc[c] = _mm256_add_pd(load_pair(psi, 0, 1, c), _mm256_mul_pd(coef, acc[c]));
            acc[3 + c] = _mm256_add_pd(load_pair(psi, 2, 3, c), _mm256_mul_pd(coef, acc[3 + c]));
        }
    }
    for c in 0..3 {
        // spins 0 and 1, then 2 and 3
        for (k, a) in [(0usize, acc[c]), (2, acc[3 + c])] {
            let (lo, hi) = (_mm256_castpd256_pd128(a), _mm256_extractf128_pd::<1>(a));
            let o = &mut out[(k * 3 + c) * 2..][..2];
            // SAFETY: `o` holds the two reals an unaligned 128-bit store writes.
            unsafe { _mm_storeu_pd(o.as_mut_ptr(), lo) };
            let o = &mut out[((k + 1) * 3 + c) * 2..][..2];
            // SAFETY: as above.
            unsafe { _mm_storeu_pd(o.as_mut_ptr(), hi) };
        }
    }
}
