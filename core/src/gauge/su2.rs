//! SU(2): closed-form exponential, Haar elements and reunitarisation.
//!
//! Every SU(2) matrix is a₀ + i a·σ with a₀² + |a|² = 1, i.e.
//! `[[a₀ + i a₃, a₂ + i a₁], [−a₂ + i a₁, a₀ − i a₃]]`.

use super::algebra::SuAlg;
use super::complex::Complex;
use super::matrix::Matrix;
use crate::rng::Stream;

/// An SU(2) link (also used for sums of SU(2) matrices such as staples).
pub type Su2 = Matrix<2>;

/// sin(φ)/φ, exact to rounding for every φ ≥ 0.
#[inline]
pub(crate) fn sinc(phi: f64) -> f64 {
    if phi < 1e-4 {
        1.0 - phi * phi / 6.0
    } else {
        phi.sin() / phi
    }
}

/// exp(X) in closed form: X² = −φ²·1 with φ² = ‖X‖²_F/2 = |x|²/4, so
/// exp(X) = cos φ · 1 + (sin φ/φ) · X.
#[inline]
pub fn exp(x: &SuAlg<2>) -> Su2 {
    let phi = (0.5 * x.0.norm2()).sqrt();
    let mut m = x.0.scale(sinc(phi));
    let c = phi.cos();
    m.0[0][0].re += c;
    m.0[1][1].re += c;
    m
}

/// A Haar element: a uniform point on the 3-sphere from four normals (a₀, a₁, a₂, a₃, drawn in
/// that order), normalised.
#[inline]
pub fn random(rng: &mut Stream) -> Su2 {
    let a = [rng.normal(), rng.normal(), rng.normal(), rng.normal()];
    let n = 1.0 / (a[0] * a[0] + a[1] * a[1] + a[2] * a[2] + a[3] * a[3]).sqrt();
    let (a0, a1, a2, a3) = (a[0] * n, a[1] * n, a[2] * n, a[3] * n);
    Matrix([[Complex::new(a0, a3), Complex::new(a2, a1)], [Complex::new(-a2, a1), Complex::new(a0, -a3)]])
}

/// Projects onto SU(2): (α, β) = ((u₀₀ + ū₁₁)/2, (u₀₁ − ū₁₀)/2) normalised, and
/// U = [[α, β], [−β̄, ᾱ]]. Exact SU(2) input is returned unchanged up to rounding. Returns the
/// deviation ‖U†U − 1‖_F + |det U − 1| it had before.
#[inline]
pub fn reunitarize(u: &mut Su2) -> f64 {
    let dev = u.unitarity_deviation();
    project(u);
    dev
}

/// The projection of [`reunitarize`] without measuring the deviation first (for updates that
/// do not record it).
#[inline]
pub fn project(u: &mut Su2) {
    let a = (u.0[0][0] + u.0[1][1].conj()).scale(0.5);
    let b = (u.0[0][1] - u.0[1][0].conj()).scale(0.5);
    let n = 1.0 / (a.abs2() + b.abs2()).sqrt();
    let (a, b) = (a.scale(n), b.scale(n));
    *u = Matrix([[a, b], [-b.conj(), a.conj()]]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauge::group::LieAlgebra;

    #[test]
    fn pauli_closed_form() {
        // x = (0, 0, 2φ): exp(i φ σ₃) = diag(e^{iφ}, e^{−iφ})
        let phi = 0.7;
        let u = exp(&SuAlg::from_coeffs(&[0.0, 0.0, 2.0 * phi]));
        assert!((u.0[0][0] - Complex::cis(phi)).abs() < 1e-16);
        assert!((u.0[1][1] - Complex::cis(-phi)).abs() < 1e-16);
        assert_eq!(u.0[0][1], Complex::ZERO);
    }

    #[test]
    fn reunitarize_restores_the_group() {
        let mut rng = Stream::new(21, 0);
        for _ in 0..100 {
            let u = random(&mut rng);
            let mut v = u;
            assert!(reunitarize(&mut v) < 1e-14);
            assert!((v - u).norm2().sqrt() < 1e-15);
            let mut w = u;
            w.0[0][1].re += 1e-3;
            w.0[1][1].im -= 2e-3;
            let dev = reunitarize(&mut w);
            assert!(dev > 1e-3);
            assert!(w.unitarity_deviation() < 1e-14);
            assert!((w - u).norm2().sqrt() < 1e-2);
        }
    }
}
