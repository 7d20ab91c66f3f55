//! The rational-quadratic spline core (Durkan, Bekasov, Murray, Papamakarios, "Neural Spline
//! Flows", arXiv 1906.04032) shared by the plugins' interval splines (linear tails,
//! `flow-scalar`; free end derivatives, `flow-sun`) and circular splines (`flow-u1`).
//!
//! A plugin describes its splines by a [`SplineSpec`] (bins, domain [lo, hi], how the end
//! derivatives are set, identity outside or not) and maps values with [`apply_raw`] straight
//! from the conditioner's raw parameters: on the CPU that is one fused op with a hand-written
//! backward pass ([`crate::spline_op`]); elsewhere [`knots_from_raw`] builds the [`Knots`]
//! with candle tensor ops (autograd derives the backward pass, on every device) and
//! [`apply_bins`] maps values inside the knot range. In bin k, with
//! θ = (x − x_k)/(x_{k+1} − x_k), δ = (y_{k+1} − y_k)/(x_{k+1} − x_k):
//!
//! ```text
//! y = y_k + (y_{k+1} − y_k)(δθ² + d_k θ(1−θ)) / (δ + (d_k + d_{k+1} − 2δ) θ(1−θ))
//! dy/dx = δ² (d_{k+1} θ² + 2δ θ(1−θ) + d_k (1−θ)²) / (δ + (d_k + d_{k+1} − 2δ) θ(1−θ))²
//! ```
//!
//! The inverse solves a θ² + b θ + c = 0 in the cancellation-free form: θ = 2c / (−b − √D) for
//! b ≥ 0, (−b + √D) / 2a for b < 0. Bin search: the number of interior knots ≤ the value (a
//! comparison, not differentiated), then one `gather`.

use candle_core::{DType, Result, Tensor, D};

pub use crate::spline_op::{EndDerivatives, SplineSpec};

/// Smallest bin width, as a fraction of the knot range (nflows' default).
pub const MIN_BIN_WIDTH: f64 = 1e-3;
/// Smallest bin height, as a fraction of the knot range (nflows' default).
pub const MIN_BIN_HEIGHT: f64 = 1e-3;
/// Smallest knot derivative (nflows' default).
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// The knots of the splines of a batch, each `[B, N, K + 1]` (N splines per batch row, K bins):
/// increasing positions `xs`, increasing values `ys`, positive derivatives `ds`.
#[derive(Debug, Clone)]
pub struct Knots {
    pub xs: Tensor,
    pub ys: Tensor,
    pub ds: Tensor,
}

/// c with m_d + softplus(c) = 1 (m_d = [`MIN_DERIVATIVE`]): the shift that makes zero
/// conditioner output a unit knot derivative.
pub fn derivative_shift() -> f64 {
    ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln()
}

/// softplus(v) = ln(1 + e^v), evaluated as relu(v) + ln(1 + e^{−|v|}).
pub fn softplus(v: &Tensor) -> Result<Tensor> {
    v.relu()?.add(&(v.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// Knot positions from unnormalised bin sizes `u` `[B, N, K]`: `[B, N, K + 1]`, with the sizes
/// w = min + (1 − K min) softmax(u) as fractions of the range and the ends `lo`, `hi` produced
/// by the caller (`[B, N, 1]` each, exact); the interior knots are `scale · cumsum(w) + shift`.
pub fn knot_positions(u: &Tensor, min: f64, lo: Tensor, hi: Tensor, scale: f64, shift: f64) -> Result<Tensor> {
    let k = u.dim(2)?;
    let m = u.max_keepdim(D::Minus1)?.detach();
    let e = u.broadcast_sub(&m)?.exp()?;
    let sm = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let w = sm.affine(1.0 - min * k as f64, min)?;
    if k == 1 {
        return Tensor::cat(&[lo, hi], 2);
    }
    let interior = w.cumsum(2)?.narrow(2, 0, k - 1)?.affine(scale, shift)?;
    Tensor::cat(&[lo, interior, hi], 2)
}

/// The bin ends of `kn` for the bin index `idx` `[B, N, 1]`: one gather of
/// `[x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1}]`, returned as six `[B, N]` tensors.
fn at_bin(kn: &Knots, idx: &Tensor) -> Result<[Tensor; 6]> {
    let n1 = kn.xs.dim(2)? as u32;
    let all = Tensor::cat(&[&kn.xs, &kn.ys, &kn.ds], 2)?;
    let offsets = Tensor::from_vec(vec![0u32, 1, n1, n1 + 1, 2 * n1, 2 * n1 + 1], (1, 1, 6), idx.device())?;
    let g = all.gather(&idx.broadcast_add(&offsets)?.contiguous()?, 2)?;
    let col = |j: usize| g.narrow(2, j, 1)?.squeeze(2);
    Ok([col(0)?, col(1)?, col(2)?, col(3)?, col(4)?, col(5)?])
}

/// The bin of each value `v` `[B, N]` among `knots` `[B, N, K + 1]`: the number of interior
/// knots ≤ v, as `[B, N, 1]` u32.
fn bin_index(v: &Tensor, knots: &Tensor) -> Result<Tensor> {
    let n = knots.dim(2)? - 1;
    if n == 1 {
        return Tensor::zeros((v.dim(0)?, v.dim(1)?, 1), DType::U32, v.device());
    }
    let interior = knots.narrow(2, 1, n - 1)?.detach();
    v.detach().unsqueeze(2)?.broadcast_ge(&interior)?.to_dtype(DType::U32)?.sum_keepdim(2)
}

/// ln dy/dx at θ in a bin with slope δ and end derivatives `d0`, `d1`.
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

/// The splines (or, with `inverse`, their inverses) of values `v` `[B, N]`, which must lie in
/// the knot range ([x_0, x_K], or [y_0, y_K] for the inverse), with candle tensor ops (any
/// device; the reference for the fused op of [`crate::spline_op`]): the images and ln|dy/dx|
/// (ln|dx/dy| for the inverse), both `[B, N]`. Both branches of the quadratic are evaluated
/// and the one not taken gets a harmless denominator, so masked gradients stay finite.
pub fn apply_bins(v: &Tensor, kn: &Knots, inverse: bool) -> Result<(Tensor, Tensor)> {
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
        // θ = 2c / (−b − √D) = (−b + √D) / 2a, whichever does not cancel: the first for b ≥ 0,
        // the second for b < 0 (then a ≥ |b|/2 > 0 since θ ≤ 1)
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

/// The knots of splines with parameters `raw` `[B, N, P]` (P = [`SplineSpec::n_params`]: K bin
/// widths, K bin heights, then the derivative parameters) on [lo, hi], with candle ops: widths
/// and heights by [`knot_positions`], derivatives m_d + softplus(r + [`derivative_shift`]), the
/// end derivatives as `spec.ends` says.
pub fn knots_from_raw(raw: &Tensor, spec: &SplineSpec) -> Result<Knots> {
    let (b, n, c) = raw.dims3()?;
    let k = spec.bins;
    if c != spec.n_params() {
        candle_core::bail!("spline: {c} parameters per spline for {k} bins (want {})", spec.n_params());
    }
    let end = |x: f64| -> Result<Tensor> { Tensor::ones((b, n, 1), raw.dtype(), raw.device())?.affine(x, 0.0) };
    let (lo, hi) = (spec.lo, spec.hi);
    let xs = knot_positions(&raw.narrow(2, 0, k)?, MIN_BIN_WIDTH, end(lo)?, end(hi)?, hi - lo, lo)?;
    let ys = knot_positions(&raw.narrow(2, k, k)?, MIN_BIN_HEIGHT, end(lo)?, end(hi)?, hi - lo, lo)?;
    let nd = spec.n_derivatives();
    let inner = if nd > 0 {
        Some(softplus(&(raw.narrow(2, 2 * k, nd)? + derivative_shift())?)?.affine(1.0, MIN_DERIVATIVE)?)
    } else {
        None
    };
    let ds = match (spec.ends, inner) {
        (EndDerivatives::Free, Some(d)) => d,
        (EndDerivatives::Periodic, Some(d)) => Tensor::cat(&[&d, &d.narrow(2, 0, 1)?], 2)?,
        (EndDerivatives::One, Some(d)) => Tensor::cat(&[&end(1.0)?, &d, &end(1.0)?], 2)?,
        (_, None) => Tensor::cat(&[&end(1.0)?, &end(1.0)?], 2)?,
    };
    Ok(Knots { xs, ys, ds })
}

/// The splines of `spec` with parameters `raw` `[B, N, P]` on values `v` `[B, N]` (or their
/// inverses): (images, log-derivatives), each `[B, N]`. Values must lie in [lo, hi] unless
/// `spec.identity_outside`, which maps the others to themselves with log-derivative 0. On the
/// CPU one fused op ([`crate::spline_op::rq_spline_raw`]); elsewhere [`knots_from_raw`] and
/// [`apply_bins`].
pub fn apply_raw(v: &Tensor, raw: &Tensor, spec: &SplineSpec, inverse: bool) -> Result<(Tensor, Tensor)> {
    if crate::spline_op::fused_available(v, spec) {
        return crate::spline_op::rq_spline_raw(v, raw, *spec, inverse);
    }
    apply_raw_generic(v, raw, spec, inverse)
}

/// [`apply_raw`] with candle ops only (any device; the reference for the fused op).
pub fn apply_raw_generic(v: &Tensor, raw: &Tensor, spec: &SplineSpec, inverse: bool) -> Result<(Tensor, Tensor)> {
    let kn = knots_from_raw(raw, spec)?;
    if !spec.identity_outside {
        return apply_bins(v, &kn, inverse);
    }
    let inside = v.ge(spec.lo)?.mul(&v.le(spec.hi)?)?;
    let zeros = v.zeros_like()?;
    // values outside are replaced by the midpoint so that the spline branch stays finite
    let mid = v.ones_like()?.affine(0.5 * (spec.lo + spec.hi), 0.0)?;
    let (out, ld) = apply_bins(&inside.where_cond(v, &mid)?, &kn, inverse)?;
    Ok((inside.where_cond(&out, v)?, inside.where_cond(&ld, &zeros)?))
}
