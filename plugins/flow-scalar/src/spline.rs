//! Monotone rational-quadratic splines (Durkan, Bekasov, Murray, Papamakarios, "Neural Spline
//! Flows", arXiv 1906.04032) with linear tails: on the CPU one fused op with a hand-written
//! backward pass (`latflow_flow_common::spline_op`), elsewhere candle tensor ops (the
//! reference, tested equal).
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

use candle_core::{Result, Tensor};

use latflow_flow_common::spline::{apply_raw, knots_from_raw, EndDerivatives, SplineSpec};
pub use latflow_flow_common::spline::{Knots, MIN_BIN_HEIGHT, MIN_BIN_WIDTH, MIN_DERIVATIVE};

/// The spline family: K bins on [−B, B], boundary derivatives 1, identity outside.
pub fn spec(k: usize, bound: f64) -> SplineSpec {
    SplineSpec { bins: k, lo: -bound, hi: bound, ends: EndDerivatives::One, identity_outside: true }
}

/// The knots from the conditioner's output `raw` `[B, H, 3K − 1]`.
pub fn knots(raw: &Tensor, k: usize, bound: f64) -> Result<Knots> {
    knots_from_raw(raw, &spec(k, bound))
}

/// Applies the splines with parameters `raw` `[B, H, 3K − 1]` to `x` `[B, H]` (or their
/// inverses, with `inverse`): the transformed values and Σ over H of ln|dy/dx| (ln|dx/dy| for
/// the inverse), `[B]`. On the CPU one fused op with a hand-written backward pass
/// (`latflow_flow_common::spline_op`), elsewhere candle ops.
pub fn apply(x: &Tensor, raw: &Tensor, k: usize, bound: f64, inverse: bool) -> Result<(Tensor, Tensor)> {
    let (y, ld) = apply_raw(x, raw, &spec(k, bound), inverse)?;
    Ok((y, ld.sum(1)?))
}
