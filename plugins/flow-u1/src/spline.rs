//! Circular rational-quadratic splines (Rezende et al., "Normalizing flows on tori and
//! spheres", ICML 2020, built on the splines of Durkan et al., arXiv 1906.04032): on the CPU
//! one fused op with a hand-written backward pass (`latflow_flow_common::spline_op`), elsewhere
//! candle tensor ops (the reference, tested equal).
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

use candle_core::{Result, Tensor};

use latflow_flow_common::spline::{apply_raw, EndDerivatives, SplineSpec};
pub use latflow_flow_common::spline::{Knots, MIN_BIN_HEIGHT, MIN_BIN_WIDTH, MIN_DERIVATIVE};

/// The spline family: K bins on [0, 2π], d_K = d_0 (circular).
pub fn spec(k: usize) -> SplineSpec {
    SplineSpec { bins: k, lo: 0.0, hi: 2.0 * PI, ends: EndDerivatives::Periodic, identity_outside: false }
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
    let (_, _, c) = raw.dims3()?;
    if c != 3 * k + 1 {
        return Err(candle_core::Error::Msg(format!("circular spline: {c} parameters per plaquette for {k} bins")));
    }
    let params = raw.narrow(2, 0, 3 * k)?;
    let t = raw.narrow(2, 3 * k, 1)?.squeeze(2)?;
    if inverse {
        // y = (P′ − t) mod 2π = g(x); the old link is θ′ − σ(P′ − x), i.e. δ = x − P′
        let y = wrap_2pi(&p.sub(&t)?)?;
        let (x, ld) = apply_raw(&y, &params, &spec(k), true)?;
        Ok((x.sub(p)?, ld))
    } else {
        let x = wrap_2pi(p)?;
        let (y, ld) = apply_raw(&x, &params, &spec(k), false)?;
        Ok((y.add(&t)?.sub(&x)?, ld))
    }
}
