//! The spectral coupling: a conjugation-equivariant invertible map W ↦ W′ of SU(N) (N = 2, 3)
//! that moves the eigenphases of W and keeps its eigenvectors (the spectral flow of Boyda et
//! al., PRD 103, 074504 (2021)), with the log-determinant with respect to the Haar measure.
//!
//! **Coordinates on the alcove** (the phases θ of [`crate::eig`], θ_0 ≥ … ≥ θ_{N−1}, Σθ = 0):
//!
//! * SU(2): u = (θ_0 − θ_1)/2π = φ/π ∈ [0, 1] (0 at the identity, 1 at −1).
//! * SU(3): u = (θ_0 − θ_2)/2π ∈ [0, 1] (the spread of the phases) and
//!   v = (θ_0 − θ_1)/(θ_0 − θ_2) ∈ [0, 1]. With α = (θ_1 − θ_2)/2π = u(1 − v) and
//!   β = (θ_0 − θ_1)/2π = u v, θ = (2π/3)(α + 2β, α − β, −2α − β). The alcove is the triangle
//!   with vertices 1 (u = 0), e^{2πi/3}·1 and e^{−2πi/3}·1 (u = 1, v = 0 or 1); (u, v) are
//!   collapsed ("Duffy") coordinates centred on the identity, dα dβ = u du dv, and its three
//!   walls are v = 0 (θ_0 = θ_1), v = 1 (θ_1 = θ_2) and u = 1 (e^{iθ_0} = e^{iθ_2}).
//!
//! **The map.** u′ = g_u(u) and, for SU(3), v′ = g_v(v), each a monotone rational-quadratic
//! spline of [0, 1] onto itself (K bins; its 3K + 1 parameters are K widths, K heights and K + 1
//! knot derivatives, as in [`latflow_flow_common::spline`]). It maps every wall onto itself, so
//! the phase map is well defined on the whole group (on a wall the two coinciding eigenvalues
//! move together) and commutes with the Weyl permutations; W′ = V e^{iθ′} V† for W = V e^{iθ} V†
//! is then equivariant: (g W g†)′ = g W′ g†. Zero parameters give the identity map.
//!
//! **Log-determinant.** The Haar measure is w(θ) dθ × (the measure of the eigenvectors), with
//! the Weyl density w(θ) = Π_{i<j} |e^{iθ_i} − e^{iθ_j}|² = Π_{i<j} 4 sin²((θ_i − θ_j)/2). The map
//! keeps the eigenvectors, so with respect to the Haar measure
//!
//! ```text
//! ln J = ln g_u′(u) [+ ln g_v′(v) + ln(u′/u)] + ln w(θ′) − ln w(θ)
//! ln w = 2 ln sin(πu) (+ const)                                        SU(2)
//! ln w = 2 [ln sin(πα) + ln sin(πβ) + ln sin(πu)] (+ const)            SU(3)
//! ```
//!
//! (the bracket is SU(3)'s: the Jacobian of the collapsed coordinates). The constants cancel.
//!
//! **The update.** R = W′ W† = V e^{i(θ′ − θ)} V† is a polynomial in W with coefficients from
//! the eigenvalues λ_k = e^{iθ_k} and the targets μ_k = e^{i(θ′_k − θ_k)} (Lagrange
//! interpolation in Newton form): R = μ_0 + d_01 (W − λ_0) [+ d_012 (W − λ_0)(W − λ_1)], with the
//! divided differences computed from half-angle sines, free of cancellation when two
//! eigenvalues are close:
//!
//! ```text
//! d_ij = (μ_i − μ_j)/(λ_i − λ_j) = e^{i(Δ_i + Δ_j − θ_i − θ_j)/2} sin((Δ_i − Δ_j)/2) / sin((θ_i − θ_j)/2)
//! d_012 = (d_12 − d_01)/(λ_2 − λ_0),        Δ_k = θ′_k − θ_k.
//! ```
//!
//! Everything is written with candle ops (the phases with the differentiable op of
//! [`crate::eig`], the splines with latflow-flow-common's fused spline op on the CPU), so
//! autograd derives the training gradient.

use std::f64::consts::PI;

use candle_core::{Result, Tensor};
use latflow_flow_common::spline::{apply_raw, EndDerivatives, SplineSpec};

use crate::ctensor::{CM, CT};
use crate::eig;

/// Parameters of one interval spline of K bins: K widths, K heights, K + 1 derivatives.
pub fn spline_params(bins: usize) -> usize {
    3 * bins + 1
}

/// Conditioner outputs per active loop: one spline for SU(2), two for SU(3).
pub fn loop_params(n: usize, bins: usize) -> usize {
    (n - 1) * spline_params(bins)
}

/// The spline family of the alcove coordinates: K bins on [0, 1], both end derivatives free.
pub fn spec(k: usize) -> SplineSpec {
    SplineSpec { bins: k, lo: 0.0, hi: 1.0, ends: EndDerivatives::Free, identity_outside: false }
}

/// The alcove phases `[B, A, N]` of matrices `w` `[B, A, N, N]` (SU(2): from Re a and
/// √((Im a)² + |b|²); SU(3): from the trace).
pub fn phases(w: &CM, n: usize) -> Result<Tensor> {
    let (b, a) = (w.t.dim(0)?, w.t.dim(1)?);
    let input = if n == 2 {
        let (a00, a01) = (w.entry(0, 0)?, w.entry(0, 1)?);
        let s = a00.im.sqr()?.add(&a01.re.sqr()?)?.add(&a01.im.sqr()?)?.sqrt()?;
        Tensor::stack(&[&a00.re, &s], 2)?
    } else {
        let t = w.trace()?;
        Tensor::stack(&[&t.re, &t.im], 2)?
    };
    eig::phases(&input.reshape((b * a, 2))?, n)?.reshape((b, a, n))
}

/// Alcove coordinates (u, v) of phases `[B, A, N]` (v only for SU(3)).
fn coordinates(th: &Tensor, n: usize) -> Result<(Tensor, Option<Tensor>)> {
    let col = |k: usize| th.narrow(2, k, 1).and_then(|t| t.squeeze(2));
    let spread = col(0)?.sub(&col(n - 1)?)?;
    let u = spread.affine(0.5 / PI, 0.0)?;
    let v = if n == 3 { Some(col(0)?.sub(&col(1)?)?.div(&spread)?) } else { None };
    Ok((u, v))
}

/// Phases `[B, A, N]` from alcove coordinates.
fn from_coordinates(u: &Tensor, v: Option<&Tensor>) -> Result<Tensor> {
    match v {
        None => Tensor::stack(&[&u.affine(PI, 0.0)?, &u.affine(-PI, 0.0)?], 2),
        Some(v) => {
            let beta = u.mul(v)?;
            let alpha = u.sub(&beta)?;
            let c = 2.0 * PI / 3.0;
            let t0 = alpha.add(&beta.affine(2.0, 0.0)?)?.affine(c, 0.0)?;
            let t1 = alpha.sub(&beta)?.affine(c, 0.0)?;
            let t2 = alpha.affine(2.0, 0.0)?.add(&beta)?.affine(-c, 0.0)?;
            Tensor::stack(&[&t0, &t1, &t2], 2)
        }
    }
}

/// ln w(θ) up to a constant, from the alcove coordinates (see the module docs).
fn log_weyl(u: &Tensor, v: Option<&Tensor>) -> Result<Tensor> {
    let ln_sin = |x: &Tensor| x.affine(PI, 0.0)?.sin()?.log();
    let mut s = ln_sin(u)?;
    if let Some(v) = v {
        let beta = u.mul(v)?;
        s = s.add(&ln_sin(&beta)?)?.add(&ln_sin(&u.sub(&beta)?)?)?;
    }
    s.affine(2.0, 0.0)
}

/// The divided difference d_ij of μ over λ (module docs), a scalar batch `[B, A]`.
fn divided(th: &[Tensor], dl: &[Tensor], i: usize, j: usize) -> Result<CT> {
    let phase = dl[i].add(&dl[j])?.sub(&th[i])?.sub(&th[j])?.affine(0.5, 0.0)?;
    let ratio = dl[i].sub(&dl[j])?.affine(0.5, 0.0)?.sin()?.div(&th[i].sub(&th[j])?.affine(0.5, 0.0)?.sin()?)?;
    CT::cis(&phase)?.mul_real(&ratio)
}

/// R = V e^{i(θ_to − θ_from)} V† as a polynomial in `w` `[B, A, N, N]`, whose alcove phases are
/// `from` `[B, A, N]`.
fn rotation(w: &CM, from: &Tensor, to: &Tensor, n: usize) -> Result<CM> {
    let th: Vec<Tensor> = (0..n).map(|k| from.narrow(2, k, 1)?.squeeze(2)).collect::<Result<_>>()?;
    let delta = to.sub(from)?;
    let dl: Vec<Tensor> = (0..n).map(|k| delta.narrow(2, k, 1)?.squeeze(2)).collect::<Result<_>>()?;
    let lam: Vec<CT> = th.iter().map(CT::cis).collect::<Result<_>>()?;
    let mu0 = CT::cis(&dl[0])?;
    let d01 = divided(&th, &dl, 0, 1)?;
    let c0 = mu0.sub(&d01.mul(&lam[0])?)?;
    if n == 2 {
        return CM::polynomial(&[c0, d01], &[w]);
    }
    let d12 = divided(&th, &dl, 1, 2)?;
    let d012 = d12.sub(&d01)?.div(&lam[2].sub(&lam[0])?)?;
    let c2 = d012.clone();
    let c1 = d01.sub(&d012.mul(&lam[0].add(&lam[1])?)?)?;
    let c0 = c0.add(&d012.mul(&lam[0].mul(&lam[1])?)?)?;
    let w2 = w.matmul(w)?;
    CM::polynomial(&[c0, c1, c2], &[w, &w2])
}

/// The spectral coupling of loops `w` `[B, A, N, N]` with conditioner output `raw`
/// `[B, A, (N − 1)(3K + 1)]`: forward W ↦ W′ or, with `inverse`, W′ ↦ W. Returns R `[B, A, N, N]`
/// with output = R·input (so an active link U becomes R U) and ln|J| `[B, A]` of the map that
/// was applied, with respect to the Haar measure.
pub fn couple(w: &CM, raw: &Tensor, n: usize, bins: usize, inverse: bool) -> Result<(CM, Tensor)> {
    let from = phases(w, n)?;
    let (u, v) = coordinates(&from, n)?;
    let p = spline_params(bins);
    let (u2, mut ld) = apply_raw(&u, &raw.narrow(2, 0, p)?, &spec(bins), inverse)?;
    let v2 = match &v {
        Some(v) => {
            let (v2, ldv) = apply_raw(v, &raw.narrow(2, p, p)?, &spec(bins), inverse)?;
            ld = ld.add(&ldv)?.add(&u2.log()?)?.sub(&u.log()?)?;
            Some(v2)
        }
        None => None,
    };
    let to = from_coordinates(&u2, v2.as_ref())?;
    let ld = ld.add(&log_weyl(&u2, v2.as_ref())?)?.sub(&log_weyl(&u, v.as_ref())?)?;
    Ok((rotation(w, &from, &to, n)?, ld))
}
