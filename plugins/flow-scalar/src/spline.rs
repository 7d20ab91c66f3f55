//! Monotone rational-quadratic splines (Durkan, Bekasov, Murray, Papamakarios, "Neural Spline
//! Flows", arXiv 1906.04032) with linear tails, written with candle tensor ops only, so that
//! autograd derives the backward pass and the same code runs on every device.
//!
//! A spline acts elementwise on `[B, H]` values and is parameterised per element by the `3K − 1`
//! unconstrained numbers `[B, H, 3K − 1]` that the conditioner outputs: K bin widths, K bin
//! heights and K − 1 interior knot derivatives, in that order. On [−B, B] (B = `bound`):
//!
//! ```text
//! w = m_w + (1 − K m_w) softmax(u_w)        bin widths as fractions of 2B   (m_w = MIN_BIN_WIDTH)
//! h = m_h + (1 − K m_h) softmax(u_h)        bin heights                     (m_h = MIN_BIN_HEIGHT)
//! d_i = m_d + softplus(u_d,i + c)           interior derivatives, c = ln(e^{1 − m_d} − 1)
//! d_0 = d_K = 1                             boundary derivatives: linear tails, C¹ at ±B
//! ```
//!
//! The shift c makes zero conditioner output the identity map (uniform bins, all derivatives
//! 1); the reference implementation (nflows) uses the same constant for its boundary
//! derivatives. Knots x_k = −B + 2B Σ_{j<k} w_j (x_0 = −B and x_K = B exactly), likewise y_k.
//! In bin k, with θ = (x − x_k)/(x_{k+1} − x_k), δ = (y_{k+1} − y_k)/(x_{k+1} − x_k):
//!
//! ```text
//! y = y_k + (y_{k+1} − y_k)(δθ² + d_k θ(1−θ)) / (δ + (d_k + d_{k+1} − 2δ) θ(1−θ))
//! dy/dx = δ² (d_{k+1} θ² + 2δ θ(1−θ) + d_k (1−θ)²) / (δ + (d_k + d_{k+1} − 2δ) θ(1−θ))²
//! ```
//!
//! The inverse solves the quadratic a θ² + b θ + c = 0 (the paper's eq. 6–8): θ = 2c / (−b − √D),
//! D = b² − 4ac, as in the paper when b ≥ 0, and the equal (−b + √D) / 2a when b < 0, where the
//! paper's form would cancel. Outside [−B, B] the map is the identity (log-derivative 0).
//! Bin search: the number of interior knots ≤ the value (a comparison, not differentiated), then
//! `gather`.

use candle_core::{DType, Result, Tensor, D};

/// Smallest bin width, as a fraction of 2B (nflows' default).
pub const MIN_BIN_WIDTH: f64 = 1e-3;
/// Smallest bin height, as a fraction of 2B (nflows' default).
pub const MIN_BIN_HEIGHT: f64 = 1e-3;
/// Smallest interior knot derivative (nflows' default).
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// The knots of the splines of a batch: each `[B, H, K + 1]`.
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

/// Knot positions from unnormalised bin sizes `u` `[B, H, K]`: `[B, H, K + 1]` from −B to B.
fn knot_positions(u: &Tensor, min: f64, bound: f64) -> Result<Tensor> {
    let (b, h, k) = u.dims3()?;
    let m = u.max_keepdim(D::Minus1)?.detach();
    let e = u.broadcast_sub(&m)?.exp()?;
    let sm = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let w = sm.affine(1.0 - min * k as f64, min)?;
    let lo = Tensor::ones((b, h, 1), u.dtype(), u.device())?.affine(-bound, 0.0)?;
    let hi = Tensor::ones((b, h, 1), u.dtype(), u.device())?.affine(bound, 0.0)?;
    if k == 1 {
        return Tensor::cat(&[lo, hi], 2);
    }
    let interior = w.cumsum(2)?.narrow(2, 0, k - 1)?.affine(2.0 * bound, -bound)?;
    Tensor::cat(&[lo, interior, hi], 2)
}

/// The knots from the conditioner's output `raw` `[B, H, 3K − 1]`.
pub fn knots(raw: &Tensor, k: usize, bound: f64) -> Result<Knots> {
    let (b, h, c) = raw.dims3()?;
    if c != 3 * k - 1 {
        return Err(candle_core::Error::Msg(format!("spline: {c} parameters per site for {k} bins")));
    }
    let xs = knot_positions(&raw.narrow(2, 0, k)?, MIN_BIN_WIDTH, bound)?;
    let ys = knot_positions(&raw.narrow(2, k, k)?, MIN_BIN_HEIGHT, bound)?;
    let one = Tensor::ones((b, h, 1), raw.dtype(), raw.device())?;
    let ds = if k == 1 {
        Tensor::cat(&[&one, &one], 2)?
    } else {
        let inner = softplus(&(raw.narrow(2, 2 * k, k - 1)? + derivative_shift())?)?.affine(1.0, MIN_DERIVATIVE)?;
        Tensor::cat(&[&one, &inner, &one], 2)?
    };
    Ok(Knots { xs, ys, ds })
}

/// The bin ends of `kn` for the bin index `idx` `[B, H, 1]`: one gather of
/// `[x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1}]`, returned as six `[B, H]` tensors.
fn at_bin(kn: &Knots, idx: &Tensor) -> Result<[Tensor; 6]> {
    let n1 = kn.xs.dim(2)? as u32;
    let all = Tensor::cat(&[&kn.xs, &kn.ys, &kn.ds], 2)?;
    let offsets = Tensor::from_vec(vec![0u32, 1, n1, n1 + 1, 2 * n1, 2 * n1 + 1], (1, 1, 6), idx.device())?;
    let g = all.gather(&idx.broadcast_add(&offsets)?.contiguous()?, 2)?;
    let col = |j: usize| g.narrow(2, j, 1)?.squeeze(2);
    Ok([col(0)?, col(1)?, col(2)?, col(3)?, col(4)?, col(5)?])
}

/// The bin of each value `v` `[B, H]` (inside [knots₀, knots_K]) among `knots` `[B, H, K + 1]`:
/// the number of interior knots ≤ v, as `[B, H, 1]` u32.
fn bin_index(v: &Tensor, knots: &Tensor) -> Result<Tensor> {
    let n = knots.dim(2)? - 1;
    if n == 1 {
        return Tensor::zeros((v.dim(0)?, v.dim(1)?, 1), DType::U32, v.device());
    }
    let interior = knots.narrow(2, 1, n - 1)?.detach();
    v.detach().unsqueeze(2)?.broadcast_ge(&interior)?.to_dtype(DType::U32)?.sum_keepdim(2)
}

/// ln dy/dx at θ in a bin with height `h`, slope δ and end derivatives `d0`, `d1`; also the
/// denominator.
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

/// Applies the splines with parameters `raw` `[B, H, 3K − 1]` to `x` `[B, H]` (or their
/// inverses, with `inverse`): the transformed values and Σ over H of ln|dy/dx| (ln|dx/dy| for
/// the inverse), `[B]`.
pub fn apply(x: &Tensor, raw: &Tensor, k: usize, bound: f64, inverse: bool) -> Result<(Tensor, Tensor)> {
    let kn = knots(raw, k, bound)?;
    let inside = x.abs()?.le(bound)?;
    let zeros = x.zeros_like()?;
    // values outside are replaced by 0 (inside) so that the spline branch stays finite
    let v = inside.where_cond(x, &zeros)?;
    let src = if inverse { &kn.ys } else { &kn.xs };
    let idx = bin_index(&v, src)?;
    let [x_lo, x_hi, y_lo, y_hi, d0, d1] = at_bin(&kn, &idx)?;
    let (s_lo, t_lo) = if inverse { (y_lo.clone(), x_lo.clone()) } else { (x_lo.clone(), y_lo.clone()) };
    let (xw, yh) = (x_hi.sub(&x_lo)?, y_hi.sub(&y_lo)?);
    let delta = yh.div(&xw)?;
    let (out, ld) = if inverse {
        // a θ² + b θ + c = 0 with dy = y − y_k, s = d_k + d_{k+1} − 2δ
        let dy = v.sub(&s_lo)?;
        let s = d0.add(&d1)?.sub(&delta.affine(2.0, 0.0)?)?;
        let a = yh.mul(&delta.sub(&d0)?)?.add(&dy.mul(&s)?)?;
        let b = yh.mul(&d0)?.sub(&dy.mul(&s)?)?;
        let c = delta.mul(&dy)?.neg()?;
        let sq = b.sqr()?.sub(&a.mul(&c)?.affine(4.0, 0.0)?)?.relu()?.sqrt()?;
        // θ = 2c / (−b − √D) = (−b + √D) / 2a, whichever does not cancel: the first for b ≥ 0,
        // the second for b < 0 (then a ≥ |b|/2 > 0 since θ ≤ 1). The branch not taken gets a
        // harmless denominator so that its (masked) gradient stays finite.
        let pos = b.ge(0.0)?;
        let minus_one = Tensor::ones_like(&b)?.neg()?;
        let den1 = pos.where_cond(&b.neg()?.sub(&sq)?, &minus_one)?;
        let a_safe = pos.where_cond(&Tensor::ones_like(&a)?, &a)?;
        let theta1 = c.affine(2.0, 0.0)?.div(&den1)?;
        let theta2 = sq.sub(&b)?.div(&a_safe.affine(2.0, 0.0)?)?;
        let theta = pos.where_cond(&theta1, &theta2)?;
        let x_out = t_lo.add(&theta.mul(&xw)?)?;
        (x_out, log_derivative(&theta, &delta, &d0, &d1)?.neg()?)
    } else {
        let theta = v.sub(&s_lo)?.div(&xw)?;
        let t1 = theta.mul(&theta.affine(-1.0, 1.0)?)?;
        let num = yh.mul(&delta.mul(&theta.sqr()?)?.add(&d0.mul(&t1)?)?)?;
        let den = delta.add(&d0.add(&d1)?.sub(&delta.affine(2.0, 0.0)?)?.mul(&t1)?)?;
        let y = t_lo.add(&num.div(&den)?)?;
        (y, log_derivative(&theta, &delta, &d0, &d1)?)
    };
    let y = inside.where_cond(&out, x)?;
    let ld = inside.where_cond(&ld, &zeros)?;
    Ok((y, ld.sum(1)?))
}
