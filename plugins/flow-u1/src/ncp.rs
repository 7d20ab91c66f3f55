//! Mixtures of non-compact projections (NCP), the circle maps of Kanwar et al. (PRL 125,
//! 121601) and of the peer: for a plaquette angle P and conditioner outputs (s_1 … s_n, t),
//!
//! ```text
//! h_k(P) = 2 atan(e^{s_k} tan(P/2)),     H(P) = (1/n) Σ_k h_k(P) + t   (mod 2π)
//! h_k′(P) = 1 / D_k,   D_k = e^{−s_k} cos²(P/2) + e^{s_k} sin²(P/2) = cosh s_k − cos P sinh s_k
//! ln H′(P) = logsumexp_k(−ln D_k) − ln n
//! ```
//!
//! Each h_k is an increasing bijection of (−π, π] fixing 0 and π (continuous across P = π), so
//! their mean is one too, and H is a circle diffeomorphism. Everything is evaluated in forms
//! that neither overflow nor cancel for large |s|: with a = |s|, ε = e^{−a} and E = ε²,
//! D_k = e^a q_k where q_k = cos² E + sin² (s ≥ 0) or cos² + sin² E (s < 0), so ln D_k = a + ln q_k,
//! and h_k = 2 atan2(sin, cos·ε) (s ≥ 0) or 2 atan2(sin·ε, cos) (s < 0) with the half-angle
//! sine and cosine (cos(P/2) ≥ 0 for P ∈ (−π, π]). The derivatives used by the backward pass:
//!
//! ```text
//! ∂ ln D_k/∂P  = sin·cos·(1 − E)/q_k      (s ≥ 0),   sin·cos·(E − 1)/q_k      (s < 0)
//! ∂ ln D_k/∂s_k = (sin² − cos² E)/q_k     (s ≥ 0),   (sin² E − cos²)/q_k     (s < 0)
//! ∂ h_k/∂s_k   = sin P / D_k = 2 sin·cos·ε / q_k
//! ∂ ln H′/∂P = −Σ_k w_k ∂ ln D_k/∂P,   ∂ ln H′/∂s_k = −w_k ∂ ln D_k/∂s_k,   w = softmax(−ln D)
//! ```
//!
//! In the fused ops, ln H′ = ln((1/n) Σ_k ε_k/q_k) directly while every |s_k| ≤ 20 (no overflow
//! even in f32), and through the log-sum-exp of −ln D_k beyond; the arctangent is Cephes'
//! (`atanf`'s polynomial in f32, `atan`'s rational approximation in f64, [`fast_atan2`]),
//! inlined, instead of libm's `atan2`, which cost more than the rest of the coupling.
//!
//! The inverse has no closed form for n > 1; [`solve`] finds it by Newton's method safeguarded
//! by bisection, in f64, to a few ulp.
//!
//! This module holds the per-element arithmetic (shared by the fused ops in [`crate::ops`]),
//! the inverse solver, and the generic formulation with candle tensor ops
//! ([`ncp_generic`], with an arctangent built from candle ops, [`atan2_generic`], since candle
//! has no `atan`), which runs on every device and is the reference for the fused ops.

use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};

use candle_core::{Result, Tensor, D};
use latflow_flow_common::kernels::Real;

/// Largest number of mixture components.
pub const MAX_N_MIX: usize = 32;

/// Components' |s| up to which 1/D_k = ε/q_k is evaluated directly (no overflow in f32: ε/q ≤
/// e^{|s|}); beyond it, through ln D_k and a log-sum-exp.
const DIRECT_MAX_S: f64 = 20.0;

/// atan(r) for r ∈ [0, 1] (Cephes: for r > 0.66 (f64) or tan(π/8) (f32), π/4 + atan((r − 1)/(r + 1));
/// then `atan`'s [4/5] rational approximation in f64, `atanf`'s polynomial in f32). About one ulp,
/// and the same formula as [`atan2_generic`] in f64.
#[inline(always)]
fn atan01<T: Real>(r: T) -> T {
    let one = T::from_f64(1.0);
    if std::mem::size_of::<T>() == 4 {
        let big = r > T::from_f64(0.414_213_562_373_095_1);
        let (x, y0) = if big { ((r - one) / (r + one), T::from_f64(FRAC_PI_4)) } else { (r, T::default()) };
        let z = x * x;
        let p = ((T::from_f64(8.053_744_495_38e-2) * z - T::from_f64(1.387_768_560_32e-1)) * z
            + T::from_f64(1.997_771_064_78e-1))
            * z
            - T::from_f64(3.333_294_915_39e-1);
        y0 + (p * z * x + x)
    } else {
        let big = r > T::from_f64(0.66);
        let (x, y0) = if big { ((r - one) / (r + one), T::from_f64(FRAC_PI_4)) } else { (r, T::default()) };
        let z = x * x;
        let mut p = T::from_f64(ATAN_P[0]);
        for &c in &ATAN_P[1..] {
            p = p * z + T::from_f64(c);
        }
        let mut q = z + T::from_f64(ATAN_Q[0]);
        for &c in &ATAN_Q[1..] {
            q = q * z + T::from_f64(c);
        }
        y0 + (x + x * z * p / q)
    }
}

/// atan2(y, x) by range reduction to [`atan01`] (any signs; 0 for (0, 0)). Inlined, without
/// libm's special-case handling: some five times faster than `atan2f` here.
#[inline(always)]
pub fn fast_atan2<T: Real>(y: T, x: T) -> T {
    let (ax, ay) = (x.abs(), y.abs());
    let (mn, mx) = if ay <= ax { (ay, ax) } else { (ax, ay) };
    if mx == T::default() {
        return T::default();
    }
    let mut a = atan01(mn / mx);
    if ay > ax {
        a = T::from_f64(FRAC_PI_2) - a;
    }
    if x < T::default() {
        a = T::from_f64(PI) - a;
    }
    if y < T::default() {
        -a
    } else {
        a
    }
}

/// Cephes `atan` numerator coefficients (highest power first).
const ATAN_P: [f64; 5] = [
    -8.750_608_600_031_904e-1,
    -1.615_753_718_733_365e1,
    -7.500_855_792_314_705e1,
    -1.228_866_684_490_136e2,
    -6.485_021_904_942_025e1,
];
/// Cephes `atan` denominator coefficients (monic, highest power first, leading 1 omitted).
const ATAN_Q: [f64; 5] = [
    2.485_846_490_142_306e1,
    1.650_270_098_316_988_6e2,
    4.328_810_604_912_903e2,
    4.853_903_996_359_137e2,
    1.945_506_571_482_614e2,
];

/// The per-component quantities at one plaquette.
#[derive(Clone, Copy, Default)]
struct Component<T> {
    /// h_k(P) ∈ [−π, π].
    h: T,
    /// ε = e^{−|s|}.
    eps: T,
    /// E = ε².
    e2: T,
    /// q_k = D_k e^{−|s|}.
    q: T,
    nonneg: bool,
}

#[inline(always)]
fn component<T: Real>(c: T, sn: T, s: T) -> Component<T> {
    let two = T::from_f64(2.0);
    let a = s.abs();
    let eps = (-a).exp();
    let e2 = eps * eps;
    let nonneg = s >= T::default();
    let (q, h) = if nonneg {
        (c * c * e2 + sn * sn, two * fast_atan2(sn, c * eps))
    } else {
        (c * c + sn * sn * e2, two * fast_atan2(sn * eps, c))
    };
    Component { h, eps, e2, q, nonneg }
}

/// The components at a wrapped angle, and the softmax weights w_k = (1/D_k) / Σ_j (1/D_j) with
/// ln H′ = ln((1/n) Σ_k 1/D_k).
#[inline(always)]
fn components<T: Real>(p_w: T, s: &[T], comps: &mut [Component<T>; MAX_N_MIX], w: &mut [T; MAX_N_MIX]) -> (T, T, T) {
    let half = p_w * T::from_f64(0.5);
    let (c, sn) = (half.cos(), half.sin());
    let n = s.len();
    let mut direct = true;
    for k in 0..n {
        comps[k] = component(c, sn, s[k]);
        direct &= s[k].abs() <= T::from_f64(DIRECT_MAX_S);
    }
    let mut z = T::default();
    let log_dh = if direct {
        // 1/D_k = ε_k / q_k
        for k in 0..n {
            w[k] = comps[k].eps / comps[k].q;
            z += w[k];
        }
        (z * T::from_f64(1.0 / n as f64)).ln()
    } else {
        // −ln D_k = −|s_k| − ln q_k, through a log-sum-exp
        let mut lmax = T::from_f64(f64::NEG_INFINITY);
        for k in 0..n {
            w[k] = -s[k].abs() - comps[k].q.ln();
            if w[k] > lmax {
                lmax = w[k];
            }
        }
        for k in 0..n {
            w[k] = (w[k] - lmax).exp();
            z += w[k];
        }
        lmax + z.ln() - T::from_f64((n as f64).ln())
    };
    let inv_z = T::from_f64(1.0) / z;
    for wk in &mut w[..n] {
        *wk = *wk * inv_z;
    }
    (c, sn, log_dh)
}

/// The value and log-derivative of the mixture at a wrapped angle `p_w` ∈ [−π, π]:
/// (H(p_w) − t ∈ [−π, π], ln H′(p_w)). `s` holds the n ≤ [`MAX_N_MIX`] mixture parameters.
#[inline]
pub fn eval<T: Real>(p_w: T, s: &[T]) -> (T, T) {
    let mut comps = [Component::default(); MAX_N_MIX];
    let mut w = [T::default(); MAX_N_MIX];
    let (_, _, log_dh) = components(p_w, s, &mut comps, &mut w);
    let hsum = comps[..s.len()].iter().fold(T::default(), |acc, cp| acc + cp.h);
    (hsum * T::from_f64(1.0 / s.len() as f64), log_dh)
}

/// [`eval`] on eight plaquettes at once (f32, AVX2 + FMA): `p_w` their wrapped angles, `raw`
/// their `n` mixture parameters and rotation (plaquette j's at `raw[j·(n + 1)..]`, n ≤
/// [`MAX_N_MIX`]). The same formulas with [`latflow_flow_common::vmath`]'s 8-lane sin, cos,
/// exp, atan2 and ln (each within 3 ulp) in place of libm's, so the results differ from
/// [`eval`]'s in the last bits. `None` when some |s_k| exceeds the direct evaluation's range
/// (the caller then uses [`eval`]).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn eval8(p_w: &[f32; 8], raw: &[f32], n: usize) -> Option<([f32; 8], [f32; 8])> {
    use latflow_flow_common::vmath::{atan2_8, exp8, ln8, sincos8};
    use std::arch::x86_64::*;
    assert!((1..=MAX_N_MIX).contains(&n) && raw.len() >= 8 * (n + 1));
    if raw.chunks_exact(n + 1).take(8).any(|r| r[..n].iter().any(|s| s.is_nan() || s.abs() > DIRECT_MAX_S as f32)) {
        return None;
    }
    // SAFETY: AVX2 and FMA by the caller; every load reads an 8-value array.
    unsafe {
        let (sn, c) = sincos8(_mm256_mul_ps(_mm256_loadu_ps(p_w.as_ptr()), _mm256_set1_ps(0.5)));
        let (c2, s2) = (_mm256_mul_ps(c, c), _mm256_mul_ps(sn, sn));
        let sign = _mm256_set1_ps(-0.0);
        let zero = _mm256_setzero_ps();
        let (mut hsum, mut z) = (zero, zero);
        for k in 0..n {
            let mut lanes = [0f32; 8];
            for (j, v) in lanes.iter_mut().enumerate() {
                *v = raw[j * (n + 1) + k];
            }
            let s = _mm256_loadu_ps(lanes.as_ptr());
            let eps = exp8(_mm256_or_ps(s, sign)); // e^{−|s|}
            let e2 = _mm256_mul_ps(eps, eps);
            let nonneg = _mm256_cmp_ps(s, zero, _CMP_GE_OQ);
            // s ≥ 0: q = c²ε² + sn², h = 2 atan2(sn, cε); s < 0: q = c² + sn²ε², h = 2 atan2(snε, c)
            let q = _mm256_blendv_ps(_mm256_add_ps(c2, _mm256_mul_ps(s2, e2)), _mm256_add_ps(_mm256_mul_ps(c2, e2), s2), nonneg);
            let y = _mm256_blendv_ps(_mm256_mul_ps(sn, eps), sn, nonneg);
            let x = _mm256_blendv_ps(c, _mm256_mul_ps(c, eps), nonneg);
            let h = atan2_8(y, x);
            hsum = _mm256_add_ps(hsum, _mm256_add_ps(h, h));
            z = _mm256_add_ps(z, _mm256_div_ps(eps, q));
        }
        let inv_n = _mm256_set1_ps((1.0 / n as f64) as f32);
        let (mut mean, mut log_dh) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(mean.as_mut_ptr(), _mm256_mul_ps(hsum, inv_n));
        _mm256_storeu_ps(log_dh.as_mut_ptr(), ln8(_mm256_mul_ps(z, inv_n)));
        Some((mean, log_dh))
    }
}

/// The backward pass at one plaquette: given ∂L/∂δ (δ = H(P) − P, the change of P) and
/// ∂L/∂ln H′, returns ∂L/∂P and writes ∂L/∂(s_1 … s_n, t) into `g_raw` (n + 1 values).
#[inline]
pub fn backward<T: Real>(p_w: T, s: &[T], g_delta: T, g_ld: T, g_raw: &mut [T]) -> T {
    let n = s.len();
    let one = T::from_f64(1.0);
    let two = T::from_f64(2.0);
    let mut comps = [Component::default(); MAX_N_MIX];
    let mut w = [T::default(); MAX_N_MIX];
    let (c, sn, log_dh) = components(p_w, s, &mut comps, &mut w);
    let inv_n = T::from_f64(1.0 / n as f64);
    let dh = log_dh.exp();
    let sc = sn * c;
    let mut dlog_dp = T::default();
    for k in 0..n {
        let cp = &comps[k];
        let inv_q = one / cp.q;
        let (dlogd_dp, dlogd_ds) = if cp.nonneg {
            (sc * (one - cp.e2) * inv_q, (sn * sn - c * c * cp.e2) * inv_q)
        } else {
            (sc * (cp.e2 - one) * inv_q, (sn * sn * cp.e2 - c * c) * inv_q)
        };
        dlog_dp += w[k] * dlogd_dp;
        let dh_ds = two * sc * cp.eps * inv_q * inv_n;
        g_raw[k] = g_delta * dh_ds - g_ld * w[k] * dlogd_ds;
    }
    g_raw[n] = g_delta;
    g_delta * (dh - one) - g_ld * dlog_dp
}

/// The mixture's inverse: u ∈ [−π, π] with (1/n) Σ_k h_k(u) = y, for y ∈ [−π, π], and ln H′(u).
/// Newton's method safeguarded by bisection on [−π, π], in f64; converges to a few ulp.
pub fn solve(y: f64, s: &[f64]) -> (f64, f64) {
    let (mut lo, mut hi) = (-PI, PI);
    let mut u = y.clamp(lo, hi);
    for _ in 0..200 {
        let (m, ld) = eval(u, s);
        let f = m - y;
        if f == 0.0 {
            break;
        }
        if f > 0.0 {
            hi = u;
        } else {
            lo = u;
        }
        let mut next = u - f / ld.exp();
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        let done = (next - u).abs() <= 2.0 * f64::EPSILON * PI || hi - lo <= 2.0 * f64::EPSILON * PI;
        u = next;
        if done {
            break;
        }
    }
    (u, eval(u, s).1)
}

/// atan2(y, x) for x ≥ 0 (and (x, y) ≠ 0), written with candle ops so that it runs on every
/// device and autograd differentiates it: range reduction to r = min/max ∈ [0, 1], then
/// Cephes' `atan` (r > 0.66: π/4 + atan((r − 1)/(r + 1)); a [4/5] rational approximation in r²),
/// accurate to about 1 ulp in f64.
pub fn atan2_generic(y: &Tensor, x: &Tensor) -> Result<Tensor> {
    const P: [f64; 5] = ATAN_P;
    const Q: [f64; 5] = ATAN_Q;
    let ay = y.abs()?;
    let le = ay.le(x)?;
    let num = le.where_cond(&ay, x)?;
    let den = le.where_cond(x, &ay)?;
    let r = num.div(&den)?;
    let big = r.gt(0.66)?;
    let reduced = r.affine(1.0, -1.0)?.div(&r.affine(1.0, 1.0)?)?;
    let xr = big.where_cond(&reduced, &r)?;
    let base = big.where_cond(&r.ones_like()?.affine(FRAC_PI_4, 0.0)?, &r.zeros_like()?)?;
    let z = xr.sqr()?;
    let mut p = z.affine(P[0], P[1])?;
    for &c in &P[2..] {
        p = p.mul(&z)?.affine(1.0, c)?;
    }
    let mut q = z.affine(1.0, Q[0])?;
    for &c in &Q[1..] {
        q = q.mul(&z)?.affine(1.0, c)?;
    }
    let at = base.add(&xr.add(&xr.mul(&z)?.mul(&p)?.div(&q)?)?)?;
    let ang = le.where_cond(&at, &at.affine(-1.0, FRAC_PI_2)?)?;
    y.ge(0.0)?.where_cond(&ang, &ang.neg()?)
}

/// The NCP mixture with candle ops: for wrapped angles `p_w` `[B, A]` in (−π, π] and conditioner
/// outputs `raw` `[B, A, n + 1]` (s_1 … s_n, t), returns (δ = H(p_w) − p_w, ln H′(p_w)), both
/// `[B, A]`. The reference for the fused op [`crate::ops::ncp_couple`].
pub fn ncp_generic(p_w: &Tensor, raw: &Tensor, n: usize) -> Result<(Tensor, Tensor)> {
    let (b, a, _) = raw.dims3()?;
    let s = raw.narrow(2, 0, n)?;
    let t = raw.narrow(2, n, 1)?.squeeze(2)?;
    let half = p_w.affine(0.5, 0.0)?.unsqueeze(2)?.broadcast_as((b, a, n))?;
    let c = half.cos()?;
    let sn = half.sin()?;
    let abs = s.abs()?;
    let eps = abs.neg()?.exp()?;
    let e2 = eps.sqr()?;
    let nonneg = s.ge(0.0)?;
    let c2 = c.sqr()?;
    let s2 = sn.sqr()?;
    let q = nonneg.where_cond(&c2.mul(&e2)?.add(&s2)?, &c2.add(&s2.mul(&e2)?)?)?;
    let h = nonneg
        .where_cond(&atan2_generic(&sn, &c.mul(&eps)?)?, &atan2_generic(&sn.mul(&eps)?, &c)?)?
        .affine(2.0, 0.0)?;
    let log_d = abs.add(&q.log()?)?;
    let log_dh = log_d.neg()?.log_sum_exp(D::Minus1)?.affine(1.0, -(n as f64).ln())?;
    let delta = h.mean(D::Minus1)?.add(&t)?.sub(p_w)?;
    Ok((delta, log_dh))
}
