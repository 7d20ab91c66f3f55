//! Explicit-register f32 AVX2 + FMA forward convolutions for the shapes the flows spend their
//! time in. LLVM's vectorisation of the generic [`super::gather_conv_co`] is good for some
//! widths and poor for others: with eight output channels it hoisted all eight input
//! broadcasts, ran out of the 16 vector registers, kept an accumulator on the stack and
//! serialised on its store-to-load latency (0.8 FMA per cycle); with two or three output
//! channels it used 64- and 96-bit lanes. Here each shape gets the register blocking that fits:
//!
//! * [`conv_co8`]: eight output channels (the hidden convolutions): one 8-lane accumulator per
//!   output site, eight sites at a time, one broadcast input and one FMA per (site, offset,
//!   input channel). The same operations in the same order as the generic AVX2 kernel: the
//!   same bits.
//! * [`conv_ci8`]: eight input channels and a few outputs (the conditioners' last
//!   convolutions): the gathered row's eight channels are one vector, multiplied by the
//!   offset's weight column per output, summed over offsets lane by lane and across lanes at
//!   the end. This sums in another order than the generic kernel (other rounding, equally
//!   deterministic: nothing depends on the thread count or the batch split).
//!
//! * [`back_weight_f32`]: ∂L/∂W, Σ over configurations and sites of input row ⊗ output
//!   gradient, with vectors over the eight output channels ([`back_weight_co8`]) or the eight
//!   input channels ([`back_weight_ci8`]) and U sites' partial sums in separate registers
//!   (added in a fixed order at the end), so that no accumulator waits on its own latency and
//!   none spills.
//!
//! Both forward kernels apply a tanh activation with [`crate::vmath::tanh8`], a vectorised tanh (within 2 ulp of the exact
//! value; libm's scalar `tanhf` was a fifth of a flow's proposal time once the convolutions
//! were fast).

use std::arch::x86_64::*;

use super::{act_apply, as_f32, as_f32_mut, Act, Real, Table};
use crate::vmath::tanh8;

/// Runs the forward convolution of [`super::gather_conv_co`]'s contract (`x`: `b` blocks of
/// `rows·ci`, `w`: `[k·ci, co]`, `out`: `b` blocks of `m·co`) with an explicit-register kernel
/// when one fits (`T` = f32 and co = 8 or 9 ≤ co ≤ 48, or ci = 8 and co ∈ {1, 2, 3}); returns
/// false, having
/// done nothing, otherwise.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gather_conv_f32<T: Real>(
    x: &[T],
    rows: usize,
    w: &[T],
    bias: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    act: Act,
    out: &mut [T],
) -> bool {
    let (Some(x), Some(w), Some(bias)) = (as_f32(x), as_f32(w), as_f32(bias)) else {
        return false;
    };
    let out = as_f32_mut(out).expect("out has the input's type");
    // a table entry is its row: pad entries are stored as n_in, the pad row of the padded input
    // (rows = n_in + 1), and without pad entries every entry is < n_in = rows (checked: the
    // kernels read unchecked; m·k comparisons against m·k·ci·co multiply-adds per configuration)
    assert!(tab.idx.len() == tab.m * tab.k && tab.idx.iter().all(|&i| (i as usize) < rows));
    assert!(bias.len() == co && x.len() >= b * rows * ci && w.len() >= tab.k * ci * co && out.len() >= b * tab.m * co);
    // SAFETY (all three): AVX2 and FMA by the caller; the sizes were checked above.
    match (ci, co) {
        (_, 8) => unsafe { conv_co8(x, rows, w, bias, tab, b, ci, act, out) },
        (8, 2) => unsafe { conv_ci8::<2, 4>(x, rows, w, bias, tab, b, act, out) },
        (8, 3) => unsafe { conv_ci8::<3, 3>(x, rows, w, bias, tab, b, act, out) },
        // ∂L/∂in of a convolution from one input channel to eight
        (8, 1) => unsafe { conv_ci8::<1, 7>(x, rows, w, bias, tab, b, act, out) },
        // the spline conditioners' last convolutions (3K − 1 and 3K + 1 outputs)
        (_, 9..=16) => unsafe { conv_cov::<2, 4>(x, rows, w, bias, tab, b, ci, co, act, out) },
        (_, 17..=24) => unsafe { conv_cov::<3, 3>(x, rows, w, bias, tab, b, ci, co, act, out) },
        (_, 25..=32) => unsafe { conv_cov::<4, 2>(x, rows, w, bias, tab, b, ci, co, act, out) },
        (_, 33..=40) => unsafe { conv_cov::<5, 2>(x, rows, w, bias, tab, b, ci, co, act, out) },
        (_, 41..=48) => unsafe { conv_cov::<6, 2>(x, rows, w, bias, tab, b, ci, co, act, out) },
        _ => return false,
    }
    true
}

/// 8(V − 1) < co ≤ 8V output channels as V vectors (weights and bias zero-padded to 8V), NB
/// output sites at a time (V·NB + NB + 1 ≤ 16 registers): [`conv_co8`] widened. Per output lane
/// the same operations in the same order as the generic AVX2 kernel: the same bits.
///
/// # Safety
/// AVX2 and FMA; `bias.len() == co`, `x.len() ≥ b·rows·ci`, `w.len() ≥ k·ci·co`,
/// `out.len() ≥ b·m·co`, every table entry < rows.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_cov<const V: usize, const NB: usize>(
    x: &[f32],
    rows: usize,
    w: &[f32],
    bias: &[f32],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    act: Act,
    out: &mut [f32],
) {
    let (m, k) = (tab.m, tab.k);
    let wide = 8 * V;
    let mut wp = vec![0f32; k * ci * wide];
    for (row, src) in wp.chunks_exact_mut(wide).zip(w.chunks_exact(co)) {
        row[..co].copy_from_slice(src);
    }
    let mut bp = vec![0f32; wide];
    bp[..co].copy_from_slice(bias);
    // SAFETY: idx < rows, c < ci, o < k, v < V: every pointer stays inside x, wp and bp.
    unsafe {
        let mut bv = [_mm256_setzero_ps(); V];
        for (v, t) in bv.iter_mut().enumerate() {
            *t = _mm256_loadu_ps(bp.as_ptr().add(8 * v));
        }
        let mut lanes = vec![0f32; wide];
        for bi in 0..b {
            let xb = x.as_ptr().add(bi * rows * ci);
            let ob = &mut out[bi * m * co..(bi + 1) * m * co];
            let mut site = 0;
            while site < m {
                let nb = (m - site).min(NB);
                let mut acc = [bv; NB];
                for o in 0..k {
                    let wo = wp.as_ptr().add(o * ci * wide);
                    let mut r = [xb; NB];
                    for (i, ri) in r.iter_mut().enumerate() {
                        *ri = xb.add(tab.idx[(site + i.min(nb - 1)) * k + o] as usize * ci);
                    }
                    for c in 0..ci {
                        let mut a = [_mm256_setzero_ps(); NB];
                        for i in 0..NB {
                            a[i] = _mm256_set1_ps(*r[i].add(c));
                        }
                        for v in 0..V {
                            let wv = _mm256_loadu_ps(wo.add(c * wide + 8 * v));
                            for i in 0..NB {
                                acc[i][v] = _mm256_fmadd_ps(a[i], wv, acc[i][v]);
                            }
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate().take(nb) {
                    for (v, t) in a.iter().enumerate() {
                        let t = if act == Act::Tanh { tanh8(*t) } else { *t };
                        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * v), t);
                    }
                    for (d, &y) in ob[(site + i) * co..(site + i + 1) * co].iter_mut().zip(&lanes) {
                        *d = if act == Act::Tanh { y } else { act_apply(act, y) };
                    }
                }
                site += nb;
            }
        }
    }
}

/// Eight output channels; see the module documentation.
///
/// # Safety
/// AVX2 and FMA; `bias.len() == 8`, `x.len() ≥ b·rows·ci`, `w.len() ≥ k·ci·8`, `out.len() ≥ b·m·8`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_co8(x: &[f32], rows: usize, w: &[f32], bias: &[f32], tab: &Table, b: usize, ci: usize, act: Act, out: &mut [f32]) {
    const NB: usize = 8;
    let (m, k) = (tab.m, tab.k);
    // SAFETY: by the contract, every pointer below stays inside x, w and bias: idx < rows,
    // c < ci, o < k.
    unsafe {
        let bv = _mm256_loadu_ps(bias.as_ptr());
        for bi in 0..b {
            let xb = x.as_ptr().add(bi * rows * ci);
            let ob = &mut out[bi * m * 8..(bi + 1) * m * 8];
            let mut site = 0;
            while site < m {
                let nb = (m - site).min(NB);
                let mut acc = [bv; NB];
                for o in 0..k {
                    let wo = w.as_ptr().add(o * ci * 8);
                    // the nb sites' input rows (the others repeat the first and are discarded)
                    let mut r = [xb; NB];
                    for (i, ri) in r.iter_mut().enumerate() {
                        *ri = xb.add(tab.idx[(site + i.min(nb - 1)) * k + o] as usize * ci);
                    }
                    for c in 0..ci {
                        let wv = _mm256_loadu_ps(wo.add(c * 8));
                        for i in 0..NB {
                            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(*r[i].add(c)), wv, acc[i]);
                        }
                    }
                }
                let mut lanes = [0f32; 8];
                for (i, a) in acc.iter().enumerate().take(nb) {
                    let a = if act == Act::Tanh { tanh8(*a) } else { *a };
                    _mm256_storeu_ps(lanes.as_mut_ptr(), a);
                    for (d, &v) in ob[(site + i) * 8..(site + i + 1) * 8].iter_mut().zip(&lanes) {
                        *d = if act == Act::Tanh { v } else { act_apply(act, v) };
                    }
                }
                site += nb;
            }
        }
    }
}

/// ∂L/∂W of a convolution over one block of configurations (the contract of
/// [`super::back_weight_blk`]: `x`: `b` blocks of `rows·ci`, `g`: `b` blocks of `m·co`, `gw`:
/// `[k·ci, co]`, overwritten) with an explicit-register kernel when one fits (`T` = f32, and
/// co = 8 with ci ∈ {1, 2, 4, 8}, ci = 8 with co ∈ {1, 2, 3}, or 9 ≤ co ≤ 48); returns false,
/// having done nothing, otherwise.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn back_weight_f32<T: Real>(
    x: &[T],
    rows: usize,
    g: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    gw: &mut [T],
) -> bool {
    let (Some(x), Some(g)) = (as_f32(x), as_f32(g)) else {
        return false;
    };
    let gw = as_f32_mut(gw).expect("gw has the input's type");
    assert!(x.len() >= b * rows * ci && g.len() >= b * tab.m * co && gw.len() >= tab.k * ci * co);
    assert!(tab.idx.len() == tab.m * tab.k && tab.idx.iter().all(|&i| (i as usize) < rows));
    // SAFETY (all): AVX2 and FMA by the caller; the sizes and the table were checked above.
    match (ci, co) {
        (1, 8) => unsafe { back_weight_co8::<1, 8>(x, rows, g, tab, b, gw) },
        (2, 8) => unsafe { back_weight_co8::<2, 4>(x, rows, g, tab, b, gw) },
        (4, 8) => unsafe { back_weight_co8::<4, 2>(x, rows, g, tab, b, gw) },
        (8, 8) => unsafe { back_weight_co8::<8, 1>(x, rows, g, tab, b, gw) },
        (8, 1) => unsafe { back_weight_ci8::<1, 8>(x, rows, g, tab, b, gw) },
        (8, 2) => unsafe { back_weight_ci8::<2, 4>(x, rows, g, tab, b, gw) },
        (8, 3) => unsafe { back_weight_ci8::<3, 2>(x, rows, g, tab, b, gw) },
        (_, 9..=16) => unsafe { back_weight_cov::<2, 6>(x, rows, g, tab, b, ci, co, gw) },
        (_, 17..=24) => unsafe { back_weight_cov::<3, 4>(x, rows, g, tab, b, ci, co, gw) },
        (_, 25..=32) => unsafe { back_weight_cov::<4, 3>(x, rows, g, tab, b, ci, co, gw) },
        (_, 33..=40) => unsafe { back_weight_cov::<5, 2>(x, rows, g, tab, b, ci, co, gw) },
        (_, 41..=48) => unsafe { back_weight_cov::<6, 2>(x, rows, g, tab, b, ci, co, gw) },
        _ => return false,
    }
    true
}

/// ∂L/∂bias of a convolution with eight output channels over one block: `out[q] += Σ_s g[s·8 + q]`,
/// with four partial sums (rows s ≡ 0, 1, 2, 3 mod 4, then the tail in the first) added in a
/// fixed order. Returns false, having done nothing, unless `T` = f32 and `out.len() == 8`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sum_rows8<T: Real>(g: &[T], out: &mut [T]) -> bool {
    let (Some(g), Some(out)) = (as_f32(g), as_f32_mut(out)) else {
        return false;
    };
    if out.len() != 8 {
        return false;
    }
    let rows = g.len() / 8;
    // SAFETY: every load reads a whole row s < rows of g; out holds 8 values.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut s = 0;
        while s + 4 <= rows {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_loadu_ps(g.as_ptr().add((s + u) * 8)));
            }
            s += 4;
        }
        for s in s..rows {
            acc[0] = _mm256_add_ps(acc[0], _mm256_loadu_ps(g.as_ptr().add(s * 8)));
        }
        let t = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(_mm256_loadu_ps(out.as_ptr()), t));
    }
    true
}

/// Runs `site(s, partial)` for the sites s < m, site s into partial s mod U in blocks of U, the
/// tail into partial 0: U independent accumulator chains, in a fixed order.
#[inline(always)]
fn split_sites<A, const U: usize>(m: usize, acc: &mut [A; U], site: impl Fn(usize, &mut A)) {
    let mut s = 0;
    while s + U <= m {
        for (u, a) in acc.iter_mut().enumerate() {
            site(s + u, a);
        }
        s += U;
    }
    for s in s..m {
        site(s, &mut acc[0]);
    }
}

/// Σ_u acc[u][i], added in the order u = 0, 1, …, U − 1 (the partial sums of [`split_sites`]).
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn sum_partials<const N: usize, const U: usize>(acc: &[[__m256; N]; U], i: usize) -> __m256 {
    let mut t = acc[0][i];
    for a in &acc[1..] {
        t = _mm256_add_ps(t, a[i]);
    }
    t
}

/// ∂L/∂W with eight output channels: per offset, CI·U accumulators of the gradient rows
/// times broadcast inputs, U sites apart.
///
/// # Safety
/// AVX2 and FMA; sizes and table as checked by [`back_weight_f32`].
#[target_feature(enable = "avx2,fma")]
unsafe fn back_weight_co8<const CI: usize, const U: usize>(x: &[f32], rows: usize, g: &[f32], tab: &Table, b: usize, gw: &mut [f32]) {
    let (m, k) = (tab.m, tab.k);
    // SAFETY: idx < rows, c < CI, s < m: every pointer stays inside x and g.
    unsafe {
        for o in 0..k {
            let mut acc = [[_mm256_setzero_ps(); CI]; U];
            for bi in 0..b {
                let xb = x.as_ptr().add(bi * rows * CI);
                let gb = g.as_ptr().add(bi * m * 8);
                let site = |s: usize, acc: &mut [__m256; CI]| {
                    let gv = _mm256_loadu_ps(gb.add(s * 8));
                    let r = xb.add(tab.idx[s * k + o] as usize * CI);
                    for c in 0..CI {
                        acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(*r.add(c)), gv, acc[c]);
                    }
                };
                split_sites(m, &mut acc, site);
            }
            for c in 0..CI {
                _mm256_storeu_ps(gw.as_mut_ptr().add((o * CI + c) * 8), sum_partials(&acc, c));
            }
        }
    }
}

/// ∂L/∂W with 8(V − 1) < co ≤ 8V output channels: the gradient row as V vectors (the last one
/// loaded under a mask), CC input channels at a time (CC·V accumulators), each lane summed over
/// configurations and sites in the generic kernel's order: the same bits.
///
/// # Safety
/// AVX2 and FMA; sizes and table as checked by [`back_weight_f32`].
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn back_weight_cov<const V: usize, const CC: usize>(
    x: &[f32],
    rows: usize,
    g: &[f32],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    gw: &mut [f32],
) {
    let (m, k) = (tab.m, tab.k);
    let tail = co - 8 * (V - 1);
    let mut mask = [0i32; 8];
    for (l, t) in mask.iter_mut().enumerate() {
        *t = if l < tail { -1 } else { 0 };
    }
    let mut lanes = vec![0f32; 8 * V];
    // SAFETY: idx < rows, c < ci, s < m, and the masked load reads only the row's last `tail`
    // values: every pointer stays inside x and g.
    unsafe {
        let mask = _mm256_loadu_si256(mask.as_ptr() as *const __m256i);
        for o in 0..k {
            let mut c0 = 0;
            while c0 < ci {
                let cc = (ci - c0).min(CC);
                let mut acc = [[_mm256_setzero_ps(); V]; CC];
                for bi in 0..b {
                    let xb = x.as_ptr().add(bi * rows * ci);
                    let gb = g.as_ptr().add(bi * m * co);
                    for s in 0..m {
                        let gs = gb.add(s * co);
                        let mut gv = [_mm256_setzero_ps(); V];
                        for (v, t) in gv.iter_mut().enumerate().take(V - 1) {
                            *t = _mm256_loadu_ps(gs.add(8 * v));
                        }
                        gv[V - 1] = _mm256_maskload_ps(gs.add(8 * (V - 1)), mask);
                        let r = xb.add(tab.idx[s * k + o] as usize * ci + c0);
                        for (c, a) in acc.iter_mut().enumerate().take(cc) {
                            let xc = _mm256_set1_ps(*r.add(c));
                            for v in 0..V {
                                a[v] = _mm256_fmadd_ps(xc, gv[v], a[v]);
                            }
                        }
                    }
                }
                for (c, a) in acc.iter().enumerate().take(cc) {
                    for (v, t) in a.iter().enumerate() {
                        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * v), *t);
                    }
                    gw[(o * ci + c0 + c) * co..(o * ci + c0 + c + 1) * co].copy_from_slice(&lanes[..co]);
                }
                c0 += cc;
            }
        }
    }
}

/// ∂L/∂W with eight input channels: per offset, CO·U accumulators of the input rows times
/// broadcast gradients, U sites apart, transposed into `gw` at the end.
///
/// # Safety
/// AVX2 and FMA; sizes and table as checked by [`back_weight_f32`].
#[target_feature(enable = "avx2,fma")]
unsafe fn back_weight_ci8<const CO: usize, const U: usize>(x: &[f32], rows: usize, g: &[f32], tab: &Table, b: usize, gw: &mut [f32]) {
    let (m, k) = (tab.m, tab.k);
    // SAFETY: idx < rows, q < CO, s < m: every pointer stays inside x and g.
    unsafe {
        for o in 0..k {
            let mut acc = [[_mm256_setzero_ps(); CO]; U];
            for bi in 0..b {
                let xb = x.as_ptr().add(bi * rows * 8);
                let gb = g.as_ptr().add(bi * m * CO);
                let site = |s: usize, acc: &mut [__m256; CO]| {
                    let xv = _mm256_loadu_ps(xb.add(tab.idx[s * k + o] as usize * 8));
                    for q in 0..CO {
                        acc[q] = _mm256_fmadd_ps(xv, _mm256_set1_ps(*gb.add(s * CO + q)), acc[q]);
                    }
                };
                split_sites(m, &mut acc, site);
            }
            let mut lanes = [0f32; 8];
            for q in 0..CO {
                _mm256_storeu_ps(lanes.as_mut_ptr(), sum_partials(&acc, q));
                for (c, &v) in lanes.iter().enumerate() {
                    gw[(o * 8 + c) * CO + q] = v;
                }
            }
        }
    }
}

/// The sum of a vector's eight lanes, in a fixed order: (l0 + l4) + (l2 + l6) + ((l1 + l5) + (l3 + l7)).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0b01));
    _mm_cvtss_f32(s1)
}

/// Eight input channels, CO outputs, NB output sites at a time (CO·NB + NB + 1 ≤ 16 vector
/// registers); see the module documentation.
///
/// # Safety
/// AVX2 and FMA; `bias.len() == CO`, `x.len() ≥ b·rows·8`, `w.len() ≥ k·8·CO`, `out.len() ≥ b·m·CO`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_ci8<const CO: usize, const NB: usize>(
    x: &[f32],
    rows: usize,
    w: &[f32],
    bias: &[f32],
    tab: &Table,
    b: usize,
    act: Act,
    out: &mut [f32],
) {
    let (m, k) = (tab.m, tab.k);
    // the weight columns: wt[(o·CO + q)·8 + c] = w[(o·8 + c)·CO + q]
    let mut wt = vec![0f32; k * CO * 8];
    for o in 0..k {
        for c in 0..8 {
            for q in 0..CO {
                wt[(o * CO + q) * 8 + c] = w[(o * 8 + c) * CO + q];
            }
        }
    }
    // SAFETY: by the contract, every pointer below stays inside x and wt: idx < rows,
    // o < k, q < CO.
    unsafe {
        for bi in 0..b {
            let xb = x.as_ptr().add(bi * rows * 8);
            let ob = &mut out[bi * m * CO..(bi + 1) * m * CO];
            let mut site = 0;
            while site < m {
                let nb = (m - site).min(NB);
                let mut acc = [[_mm256_setzero_ps(); CO]; NB];
                for o in 0..k {
                    let mut xv = [_mm256_setzero_ps(); NB];
                    for (i, v) in xv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(xb.add(tab.idx[(site + i.min(nb - 1)) * k + o] as usize * 8));
                    }
                    for q in 0..CO {
                        let wv = _mm256_loadu_ps(wt.as_ptr().add((o * CO + q) * 8));
                        for i in 0..NB {
                            acc[i][q] = _mm256_fmadd_ps(xv[i], wv, acc[i][q]);
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate().take(nb) {
                    for q in 0..CO {
                        let v = bias[q] + hsum(a[q]);
                        ob[(site + i) * CO + q] = if act == Act::Tanh { v } else { act_apply(act, v) };
                    }
                }
                site += nb;
            }
            if act == Act::Tanh {
                tanh_slice(ob);
            }
        }
    }
}

/// [`tanh8`] over a slice, in place (the tail through a zero-padded vector).
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tanh_slice(v: &mut [f32]) {
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: c holds 8 f32 values.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), tanh8(_mm256_loadu_ps(c.as_ptr()))) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut lanes = [0f32; 8];
        lanes[..tail.len()].copy_from_slice(tail);
        // SAFETY: lanes holds 8 f32 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), tanh8(_mm256_loadu_ps(lanes.as_ptr()))) };
        let n = tail.len();
        tail.copy_from_slice(&lanes[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp(t: f32) -> f64 {
        let t = t.abs();
        (f32::from_bits(t.to_bits() + 1) - t) as f64
    }

    /// tanh8 against f64 tanh on a dense sweep, at the branch point and at the special values.
    #[test]
    fn tanh8_is_within_two_ulp() {
        if !latflow_core::simd::avx2_fma() {
            return;
        }
        let mut xs: Vec<f32> = (-240_000..=240_000).map(|i| i as f32 * 5e-5).collect();
        xs.extend([0.625, -0.625, 0.624_999_9, 8.999_999, 9.0, 9.5, 20.0, 1e-30, -1e-30, 1e-40, 0.0, -0.0]);
        let mut ys = xs.clone();
        // SAFETY: AVX2 and FMA checked above.
        unsafe { tanh_slice(&mut ys) };
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let t = (x as f64).tanh();
            let err = (y as f64 - t).abs() / ulp(t as f32);
            worst = worst.max(err);
            assert!(err <= 2.0, "tanh({x}) = {y}, exact {t}: {err} ulp");
            assert_eq!(y.is_sign_negative(), x.is_sign_negative(), "sign of tanh({x})");
        }
        eprintln!("tanh8: worst error {worst:.2} ulp");
        assert!(worst > 0.0);
        let mut special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, 0.0, 0.0, 0.0];
        // SAFETY: AVX2 and FMA checked above.
        unsafe { tanh_slice(&mut special) };
        assert!(special[0].is_nan());
        assert_eq!(&special[1..5], &[1.0, -1.0, 1.0, -1.0]);
    }
}
