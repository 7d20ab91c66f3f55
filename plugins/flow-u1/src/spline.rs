//! Circular rational-quadratic splines (Rezende et al., "Normalizing flows on tori and
//! spheres", ICML 2020, built on the splines of Durkan et al., arXiv 1906.04032), written with
//! candle tensor ops: autograd derives the backward pass and the same code runs on every
//! device.
//!
//! A spline acts on angles x ∈ [0, 2π] and is parameterised per plaquette by the conditioner's
//! `3K + 1` outputs: K bin widths, K bin heights, K knot derivatives and a rotation t:
//!
//! ```text
//! w = m_w + (1 − K m_w) softmax(u_w)     bin widths as fractions of 2π   (m_w = MIN_BIN_WIDTH)
//! h = m_h + (1 − K m_h) softmax(u_h)     bin heights                     (m_h = MIN_BIN_HEIGHT)
//! d_k = m_d + softplus(u_d,k + c),  k = 0 … K − 1,  c = ln(e^{1 − m_d} − 1),   d_K = d_0
//! ```
//!
//! Knots x_0 = 0 < x_1 < … < x_K = 2π (likewise y). Within bin k, with θ = (x − x_k)/(x_{k+1} −
//! x_k) and δ = (y_{k+1} − y_k)/(x_{k+1} − x_k), the map and its derivative are Durkan et al.'s
//!
//! ```text
//! g(x) = y_k + (y_{k+1} − y_k)(δθ² + d_k θ(1−θ)) / (δ + (d_k + d_{k+1} − 2δ) θ(1−θ))
//! g′(x) = δ² (d_{k+1} θ² + 2δ θ(1−θ) + d_k (1−θ)²) / (δ + (d_k + d_{k+1} − 2δ) θ(1−θ))²
//! ```
//!
//! g fixes 0 and 2π and has equal derivatives there (d_K = d_0), so g (mod 2π) is a smooth
//! (C¹) diffeomorphism of the circle; the coupling applies P ↦ g(P mod 2π) + t (mod 2π). Zero
//! conditioner output is the identity (uniform bins, all derivatives 1, t = 0). The inverse
//! solves the quadratic a θ² + b θ + c = 0 in the cancellation-free form (2c/(−b − √D) for
//! b ≥ 0, (−b + √D)/2a for b < 0).

use std::f64::consts::PI;

use candle_core::{DType, Result, Tensor, D};

/// Smallest bin width, as a fraction of 2π.
pub const MIN_BIN_WIDTH: f64 = 1e-3;
/// Smallest bin height, as a fraction of 2π.
pub const MIN_BIN_HEIGHT: f64 = 1e-3;
/// Smallest knot derivative.
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// The knots of the splines of a batch: each `[B, A, K + 1]`.
#[derive(Debug, Clone)]
pub struct Knots {
    pub xs: Tensor,
    pub ys: Tensor,
    pub ds: Tensor,
}

/// c with m_d + softplus(c) = 1.
fn derivative_shift() -> f64 {
    ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln()
}

/// softplus(v) = ln(1 + e^v), evaluated as relu(v) + ln(1 + e^{−|v|}).
fn softplus(v: &Tensor) -> Result<Tensor> {
    v.relu()?.add(&(v.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// Knot positions from unnormalised bin sizes `u` `[B, A, K]`: `[B, A, K + 1]` from 0 to 2π.
fn knot_positions(u: &Tensor, min: f64) -> Result<Tensor> {
    let (b, a, k) = u.dims3()?;
    let m = u.max_keepdim(D::Minus1)?.detach();
    let e = u.broadcast_sub(&m)?.exp()?;
    let sm = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let w = sm.affine(1.0 - min * k as f64, min)?;
    let lo = Tensor::zeros((b, a, 1), u.dtype(), u.device())?;
    let hi = Tensor::ones((b, a, 1), u.dtype(), u.device())?.affine(2.0 * PI, 0.0)?;
    if k == 1 {
        return Tensor::cat(&[lo, hi], 2);
    }
    let interior = w.cumsum(2)?.narrow(2, 0, k - 1)?.affine(2.0 * PI, 0.0)?;
    Tensor::cat(&[lo, interior, hi], 2)
}

/// The knots from the conditioner's output `raw` `[B, A, 3K + 1]` (the rotation, the last
/// entry, is not used here).
pub fn knots(raw: &Tensor, k: usize) -> Result<Knots> {
    let (_, _, c) = raw.dims3()?;
    if c != 3 * k + 1 {
        return Err(candle_core::Error::Msg(format!("circular spline: {c} parameters per plaquette for {k} bins")));
    }
    let xs = knot_positions(&raw.narrow(2, 0, k)?, MIN_BIN_WIDTH)?;
    let ys = knot_positions(&raw.narrow(2, k, k)?, MIN_BIN_HEIGHT)?;
    let d = softplus(&(raw.narrow(2, 2 * k, k)? + derivative_shift())?)?.affine(1.0, MIN_DERIVATIVE)?;
    let ds = Tensor::cat(&[&d, &d.narrow(2, 0, 1)?], 2)?;
    Ok(Knots { xs, ys, ds })
}

/// The bin ends of `kn` for the bin index `idx` `[B, A, 1]`: six `[B, A]` tensors
/// `[x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1}]`.
fn at_bin(kn: &Knots, idx: &Tensor) -> Result<[Tensor; 6]> {
    let n1 = kn.xs.dim(2)? as u32;
    let all = Tensor::cat(&[&kn.xs, &kn.ys, &kn.ds], 2)?;
    let offsets = Tensor::from_vec(vec![0u32, 1, n1, n1 + 1, 2 * n1, 2 * n1 + 1], (1, 1, 6), idx.device())?;
    let g = all.gather(&idx.broadcast_add(&offsets)?.contiguous()?, 2)?;
    let col = |j: usize| g.narrow(2, j, 1)?.squeeze(2);
    Ok([col(0)?, col(1)?, col(2)?, col(3)?, col(4)?, col(5)?])
}

/// The bin of each value `v` `[B, A]` among `knots` `[B, A, K + 1]`: the number of interior knots
/// ≤ v, as `[B, A, 1]` u32.
fn bin_index(v: &Tensor, knots: &Tensor) -> Result<Tensor> {
    let n = knots.dim(2)? - 1;
    if n == 1 {
        return Tensor::zeros((v.dim(0)?, v.dim(1)?, 1), DType::U32, v.device());
    }
    let interior = knots.narrow(2, 1, n - 1)?.detach();
    v.detach().unsqueeze(2)?.broadcast_ge(&interior)?.to_dtype(DType::U32)?.sum_keepdim(2)
}

/// ln g′ at θ in a bin with slope δ and end derivatives `d0`, `d1`.
fn log_derivative(theta: &Tensor, delta: &Tensor, d0: &Tensor, d1: &Tensor) -> Result<Tensor> {
    let one_m = theta.affine(-1.0, 1.0)?;
    let t1 = theta.mul(&one_m)?;
    let den = delta.add(&d0.add(d1)?.sub(&delta.affine(2.0, 0.0)?)?.mul(&t1)?)?;
    let num = d1
        .mul(&theta.sqr()?)?
        .add(&delta.affine(2.0, 0.0)?.mul(&t1)?)?
        .add(&d0.mul(&one_m.sqr()?)?)?
        .mul(&delta.sqr()?)?;
    num.log()?.sub(&den.log()?.affine(2.0, 0.0)?)
}

/// x − 2π⌊x/2π⌋ ∈ [0, 2π] (the floor carries no gradient).
pub fn wrap_2pi(x: &Tensor) -> Result<Tensor> {
    x.sub(&x.affine(0.5 / PI, 0.0)?.floor()?.affine(2.0 * PI, 0.0)?)
}

/// The spline coupling of active plaquettes `p` `[B, A]` with parameters `raw` `[B, A, 3K + 1]`:
///
/// * forward, for plaquettes P (any representative): x = P mod 2π, δ = g(x) + t − x, ln g′(x);
/// * `inverse`, for transformed plaquettes P′: x = g⁻¹((P′ − t) mod 2π), δ = x − P′, −ln g′(x).
///
/// Both `[B, A]`. Adding σ_μ δ to each active link moves its plaquette to the image (mod 2π).
pub fn coupling(p: &Tensor, raw: &Tensor, k: usize, inverse: bool) -> Result<(Tensor, Tensor)> {
    let kn = knots(raw, k)?;
    let t = raw.narrow(2, 3 * k, 1)?.squeeze(2)?;
    if inverse {
        // y = (P′ − t) mod 2π = g(x); the old link is θ′ − σ(P′ − x), i.e. δ = x − P′
        let y = wrap_2pi(&p.sub(&t)?)?;
        let (x, ld) = apply(&y, &kn, true)?;
        Ok((x.sub(p)?, ld))
    } else {
        let x = wrap_2pi(p)?;
        let (y, ld) = apply(&x, &kn, false)?;
        Ok((y.add(&t)?.sub(&x)?, ld))
    }
}

/// The splines (or their inverses) of values `v` `[B, A]` in [0, 2π]: the images and ln|dy/dx|
/// (ln|dx/dy| for the inverse), both `[B, A]`.
pub fn apply(v: &Tensor, kn: &Knots, inverse: bool) -> Result<(Tensor, Tensor)> {
    let src = if inverse { &kn.ys } else { &kn.xs };
    let idx = bin_index(v, src)?;
    let [x_lo, x_hi, y_lo, y_hi, d0, d1] = at_bin(kn, &idx)?;
    let (xw, yh) = (x_hi.sub(&x_lo)?, y_hi.sub(&y_lo)?);
    let delta = yh.div(&xw)?;
    if inverse {
        // a θ² + b θ + c = 0 with dy = y − y_k, s = d_k + d_{k+1} − 2δ
        let dy = v.sub(&y_lo)?;
        let s = d0.add(&d1)?.sub(&delta.affine(2.0, 0.0)?)?;
        let a = yh.mul(&delta.sub(&d0)?)?.add(&dy.mul(&s)?)?;
        let b = yh.mul(&d0)?.sub(&dy.mul(&s)?)?;
        let c = delta.mul(&dy)?.neg()?;
        let sq = b.sqr()?.sub(&a.mul(&c)?.affine(4.0, 0.0)?)?.relu()?.sqrt()?;
        // θ = 2c / (−b − √D) for b ≥ 0, (−b + √D) / 2a for b < 0 (then a ≥ |b|/2 > 0); the branch
        // not taken gets a harmless denominator so that its masked gradient stays finite
        let pos = b.ge(0.0)?;
        let minus_one = Tensor::ones_like(&b)?.neg()?;
        let den1 = pos.where_cond(&b.neg()?.sub(&sq)?, &minus_one)?;
        let a_safe = pos.where_cond(&Tensor::ones_like(&a)?, &a)?;
        let theta1 = c.affine(2.0, 0.0)?.div(&den1)?;
        let theta2 = sq.sub(&b)?.div(&a_safe.affine(2.0, 0.0)?)?;
        let theta = pos.where_cond(&theta1, &theta2)?;
        let x = x_lo.add(&theta.mul(&xw)?)?;
        Ok((x, log_derivative(&theta, &delta, &d0, &d1)?.neg()?))
    } else {
        let theta = v.sub(&x_lo)?.div(&xw)?;
        let t1 = theta.mul(&theta.affine(-1.0, 1.0)?)?;
        let num = yh.mul(&delta.mul(&theta.sqr()?)?.add(&d0.mul(&t1)?)?)?;
        let den = delta.add(&d0.add(&d1)?.sub(&delta.affine(2.0, 0.0)?)?.mul(&t1)?)?;
        let y = y_lo.add(&num.div(&den)?)?;
        Ok((y, log_derivative(&theta, &delta, &d0, &d1)?))
    }
}
