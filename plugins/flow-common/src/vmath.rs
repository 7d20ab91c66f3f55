//! Elementary functions on eight f32 lanes (x86-64 AVX2 + FMA), for the flows' element-wise
//! kernels: Cephes' single-precision formulas, branch-free, each within 2–3 ulp of the exact
//! value (tested against f64 on dense sweeps). Every function here must be called only where
//! the CPU has AVX2 and FMA ([`crate::kernels::simd_kernels`]).

use std::arch::x86_64::*;

/// tanh, within 2 ulp: Cephes' odd polynomial for |x| < 0.625, else
/// sign(x)·(1 − 2/(e^{2|x|} + 1)) with |x| clamped to 10 (where tanh rounds to ±1). NaN gives
/// NaN, ±∞ gives ±1, and tanh(−0) = −0.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn tanh8(x: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let a = _mm256_andnot_ps(sign, x);
    let s = _mm256_and_ps(sign, x);
    // small |x|: x + x·z·P(z), z = x² (or'ing the sign keeps tanh(−0) = −0)
    let z = _mm256_mul_ps(x, x);
    let mut p = _mm256_set1_ps(-5.704_988_7e-3);
    for c in [2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1] {
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(c));
    }
    let small = _mm256_or_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x), s);
    // large |x|: 1 − 2/(e^{2a} + 1); min(10, a) keeps a NaN (the second operand is returned)
    let a10 = _mm256_min_ps(_mm256_set1_ps(10.0), a);
    // SAFETY: AVX2 and FMA by the caller.
    let t = unsafe { exp8(_mm256_add_ps(a10, a10)) };
    let one = _mm256_set1_ps(1.0);
    let large = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(t, one)));
    let large = _mm256_or_ps(large, s);
    let is_small = _mm256_cmp_ps(a, _mm256_set1_ps(0.625), _CMP_LT_OQ);
    _mm256_blendv_ps(large, small, is_small)
}

/// e^y for y in [−87, 88] (outside, the result is not specified; NaN gives NaN), within 2 ulp:
/// y = n·ln 2 + r, |r| ≤ ln 2 / 2 (ln 2 in two parts), e^r by Cephes' degree-6 polynomial,
/// times 2ⁿ through the exponent bits.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn exp8(y: __m256) -> __m256 {
    let n = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), y);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let er = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(er, _mm256_castsi256_ps(bits))
}

/// ln x for normal x > 0 (other inputs: not specified), within 2 ulp: x = 2ᵉ·m with
/// m ∈ [√½, √2), ln m by Cephes' `logf` polynomial in m − 1, plus e·ln 2 in two parts.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn ln8(x: __m256) -> __m256 {
    let bits = _mm256_castps_si256(x);
    // exponent and mantissa in [0.5, 1)
    let e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126));
    let m = _mm256_or_ps(_mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x007f_ffff))), _mm256_set1_ps(0.5));
    let mut e = _mm256_cvtepi32_ps(e);
    // m < √½: m ← 2m − 1, e ← e − 1; else m ← m − 1
    let lt = _mm256_cmp_ps(m, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2), _CMP_LT_OQ);
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_and_ps(m, lt);
    let m = _mm256_sub_ps(_mm256_add_ps(m, t), one);
    e = _mm256_sub_ps(e, _mm256_and_ps(one, lt));
    let z = _mm256_mul_ps(m, m);
    let mut p = _mm256_set1_ps(7.037_683_6e-2);
    for c in [-1.151_461e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_4e-1, -2.499_999_4e-1, 3.333_333e-1] {
        p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(c));
    }
    let mut y = _mm256_mul_ps(_mm256_mul_ps(p, m), z);
    y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.121_944_4e-4), y);
    y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5), y);
    let r = _mm256_add_ps(m, y);
    _mm256_fmadd_ps(e, _mm256_set1_ps(0.693_359_4), r)
}

/// (sin x, cos x) for |x| ≤ π/2 + 0.1 (outside: not specified), within 2 ulp: x = j·π/2 + y with
/// j ∈ {−1, 0, 1} (π/2 in three parts), Cephes' `sinf`/`cosf` polynomials on |y| ≤ π/4,
/// swapped and signed by j.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn sincos8(x: __m256) -> (__m256, __m256) {
    let j = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_2_PI)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let y = _mm256_fnmadd_ps(j, _mm256_set1_ps(1.570_312_5), x);
    let y = _mm256_fnmadd_ps(j, _mm256_set1_ps(4.837_513e-4), y);
    let y = _mm256_fnmadd_ps(j, _mm256_set1_ps(7.549_79e-8), y);
    let z = _mm256_mul_ps(y, y);
    // sin y = y + y·z·Ps(z), cos y = 1 − z/2 + z²·Pc(z)
    let mut ps = _mm256_set1_ps(-1.951_529_6e-4);
    for c in [8.332_161e-3, -1.666_665_5e-1] {
        ps = _mm256_fmadd_ps(ps, z, _mm256_set1_ps(c));
    }
    let s = _mm256_fmadd_ps(_mm256_mul_ps(ps, z), y, y);
    let mut pc = _mm256_set1_ps(2.443_315_7e-5);
    for c in [-1.388_731_6e-3, 4.166_664_6e-2] {
        pc = _mm256_fmadd_ps(pc, z, _mm256_set1_ps(c));
    }
    let c = _mm256_fmadd_ps(_mm256_mul_ps(pc, z), z, _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5), _mm256_set1_ps(1.0)));
    // j = 0: (s, c); j = 1: (c, −s); j = −1: (−c, s)
    let zero = _mm256_setzero_ps();
    let odd = _mm256_cmp_ps(j, zero, _CMP_NEQ_OQ);
    let neg = _mm256_cmp_ps(j, zero, _CMP_LT_OQ);
    let pos = _mm256_cmp_ps(j, zero, _CMP_GT_OQ);
    let sign = _mm256_set1_ps(-0.0);
    let sin = _mm256_xor_ps(_mm256_blendv_ps(s, c, odd), _mm256_and_ps(sign, neg));
    let cos = _mm256_xor_ps(_mm256_blendv_ps(c, s, odd), _mm256_and_ps(sign, pos));
    (sin, cos)
}

/// atan2(y, x) in [−π, π] for any finite signs (0 for (0, 0)), within 3 ulp: the ratio of the
/// smaller to the larger magnitude, Cephes' `atanf` (with π/4 + atan((r − 1)/(r + 1)) above
/// tan(π/8)), then the octant by masks. The same formula as `flow-u1`'s scalar `fast_atan2`
/// in f32.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn atan2_8(y: __m256, x: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let (ax, ay) = (_mm256_andnot_ps(sign, x), _mm256_andnot_ps(sign, y));
    let mn = _mm256_min_ps(ax, ay);
    let mx = _mm256_max_ps(ax, ay);
    let zero = _mm256_setzero_ps();
    let one = _mm256_set1_ps(1.0);
    let none = _mm256_cmp_ps(mx, zero, _CMP_EQ_OQ);
    let r = _mm256_div_ps(mn, _mm256_blendv_ps(mx, one, none));
    let big = _mm256_cmp_ps(r, _mm256_set1_ps(0.414_213_57), _CMP_GT_OQ);
    let xr = _mm256_blendv_ps(r, _mm256_div_ps(_mm256_sub_ps(r, one), _mm256_add_ps(r, one)), big);
    let y0 = _mm256_and_ps(_mm256_set1_ps(std::f32::consts::FRAC_PI_4), big);
    let z = _mm256_mul_ps(xr, xr);
    let mut p = _mm256_set1_ps(8.053_744_5e-2);
    for c in [-1.387_768_6e-1, 1.997_771_1e-1, -3.333_295e-1] {
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(c));
    }
    let mut a = _mm256_add_ps(y0, _mm256_fmadd_ps(_mm256_mul_ps(p, z), xr, xr));
    let steep = _mm256_cmp_ps(ay, ax, _CMP_GT_OQ);
    a = _mm256_blendv_ps(a, _mm256_sub_ps(_mm256_set1_ps(std::f32::consts::FRAC_PI_2), a), steep);
    let back = _mm256_cmp_ps(x, zero, _CMP_LT_OQ);
    a = _mm256_blendv_ps(a, _mm256_sub_ps(_mm256_set1_ps(std::f32::consts::PI), a), back);
    let below = _mm256_cmp_ps(y, zero, _CMP_LT_OQ);
    a = _mm256_xor_ps(a, _mm256_and_ps(sign, below));
    _mm256_andnot_ps(none, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp(t: f32) -> f64 {
        let t = t.abs().max(f32::MIN_POSITIVE);
        (f32::from_bits(t.to_bits() + 1) - t) as f64
    }

    /// Applies `f` to `xs` eight at a time and returns the worst error in ulp against `exact`.
    fn worst(xs: &[f32], f: impl Fn(__m256) -> __m256, exact: impl Fn(f64) -> f64) -> f64 {
        let mut w = 0f64;
        for c in xs.chunks(8) {
            let mut lanes = [c[0]; 8];
            lanes[..c.len()].copy_from_slice(c);
            let mut out = [0f32; 8];
            // SAFETY: the tests run only where the CPU has AVX2 and FMA (checked by the caller).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), f(_mm256_loadu_ps(lanes.as_ptr()))) };
            for (&x, &y) in c.iter().zip(&out) {
                let t = exact(x as f64);
                let e = (y as f64 - t).abs() / ulp(t as f32);
                assert!(e.is_finite(), "f({x}) = {y}, exact {t}");
                w = w.max(e);
            }
        }
        w
    }

    fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n).map(|i| lo + (hi - lo) * i as f32 / n as f32).collect()
    }

    #[test]
    fn elementary_functions_are_within_two_ulp() {
        if !latflow_core::simd::avx2_fma() {
            return;
        }
        // SAFETY (closures): AVX2 and FMA checked above.
        let e = worst(&sweep(-87.0, 88.0, 400_000), |v| unsafe { exp8(v) }, f64::exp);
        assert!(e <= 2.0, "exp8: {e} ulp");
        let mut xs = sweep(1e-30, 10.0, 200_000);
        xs.extend(sweep(0.5, 2.0, 200_000));
        xs.extend([f32::MIN_POSITIVE, 1.0, 3e38, 1e-20, std::f32::consts::FRAC_1_SQRT_2, f32::from_bits(std::f32::consts::FRAC_1_SQRT_2.to_bits() + 1)]);
        let l = worst(&xs, |v| unsafe { ln8(v) }, f64::ln);
        assert!(l <= 2.0, "ln8: {l} ulp");
        let xs = sweep(-1.671, 1.671, 400_000);
        let s = worst(&xs, |v| unsafe { sincos8(v).0 }, f64::sin);
        let c = worst(&xs, |v| unsafe { sincos8(v).1 }, f64::cos);
        assert!(s <= 2.0 && c <= 2.0, "sin: {s} ulp, cos: {c} ulp");
        let t = worst(&sweep(-12.0, 12.0, 400_000), |v| unsafe { tanh8(v) }, f64::tanh);
        assert!(t <= 2.0, "tanh8: {t} ulp");
        eprintln!("worst ulp: exp {e:.2}, ln {l:.2}, sin {s:.2}, cos {c:.2}, tanh {t:.2}");
    }

    #[test]
    fn atan2_covers_every_octant() {
        if !latflow_core::simd::avx2_fma() {
            return;
        }
        let mut w = 0f64;
        let n = 2000;
        for i in 0..n {
            let th = -std::f64::consts::PI + 2.0 * std::f64::consts::PI * (i as f64 + 0.5) / n as f64;
            let mut ys = [0f32; 8];
            let mut xs = [0f32; 8];
            for (k, r) in [1e-3, 0.1, 0.7, 1.0, 3.0, 50.0, 1e4, 1e-20].iter().enumerate() {
                ys[k] = (r * th.sin()) as f32;
                xs[k] = (r * th.cos()) as f32;
            }
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), atan2_8(_mm256_loadu_ps(ys.as_ptr()), _mm256_loadu_ps(xs.as_ptr()))) };
            for k in 0..8 {
                let t = (ys[k] as f64).atan2(xs[k] as f64);
                w = w.max((out[k] as f64 - t).abs() / ulp(t as f32));
            }
        }
        eprintln!("atan2: worst {w:.2} ulp");
        assert!(w <= 3.0, "atan2: {w} ulp");
        let (ys, xs) = ([0f32, 0.0, -0.0, 1.0, -1.0, 0.0, 0.0, 1.0], [0f32, -1.0, -1.0, 0.0, 0.0, 1.0, 2.0, -1.0]);
        let mut out = [0f32; 8];
        // SAFETY: AVX2 and FMA checked above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), atan2_8(_mm256_loadu_ps(ys.as_ptr()), _mm256_loadu_ps(xs.as_ptr()))) };
        let pi = std::f32::consts::PI;
        assert_eq!(out[0], 0.0);
        assert_eq!(&out[3..7], &[std::f32::consts::FRAC_PI_2, -std::f32::consts::FRAC_PI_2, 0.0, 0.0]);
        assert!((out[1] - pi).abs() <= 3e-7 && (out[7] - 3.0 * pi / 4.0).abs() <= 3e-7);
    }
}
