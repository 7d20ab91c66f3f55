//! A small complex type for the gauge kernels.
//!
//! Own type rather than `num-complex`: the kernels need a handful of `#[inline]` operations on
//! a `#[repr(C)]` pair whose memory layout is exactly the (re, im) interleaving of
//! [`crate::layout::ElementKind::ComplexMatrix`], and no dependency whose trait set or
//! rounding (e.g. of `norm`, `exp`) could change underneath the bit-identity guarantees.

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A complex number re + i·im in double precision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Complex {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl Complex {
    /// 0.
    pub const ZERO: Complex = Complex { re: 0.0, im: 0.0 };
    /// 1.
    pub const ONE: Complex = Complex { re: 1.0, im: 0.0 };
    /// i.
    pub const I: Complex = Complex { re: 0.0, im: 1.0 };

    /// re + i·im.
    #[inline]
    pub const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }

    /// A real number.
    #[inline]
    pub const fn real(re: f64) -> Self {
        Self { re, im: 0.0 }
    }

    /// The complex conjugate.
    #[inline]
    pub fn conj(self) -> Self {
        Self { re: self.re, im: -self.im }
    }

    /// |z|².
    #[inline]
    pub fn abs2(self) -> f64 {
        self.re * self.re + self.im * self.im
    }

    /// |z| (overflow-safe).
    #[inline]
    pub fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }

    /// The argument in (−π, π].
    #[inline]
    pub fn arg(self) -> f64 {
        self.im.atan2(self.re)
    }

    /// e^{iφ} = cos φ + i sin φ.
    #[inline]
    pub fn cis(phi: f64) -> Self {
        let (s, c) = phi.sin_cos();
        Self { re: c, im: s }
    }

    /// e^z.
    #[inline]
    pub fn exp(self) -> Self {
        Self::cis(self.im).scale(self.re.exp())
    }

    /// z·s for real s.
    #[inline]
    pub fn scale(self, s: f64) -> Self {
        Self { re: self.re * s, im: self.im * s }
    }

    /// i·z.
    #[inline]
    pub fn mul_i(self) -> Self {
        Self { re: -self.im, im: self.re }
    }

    /// conj(self)·other, the building block of Hermitian inner products.
    #[inline]
    pub fn conj_mul(self, other: Self) -> Self {
        Self { re: self.re * other.re + self.im * other.im, im: self.re * other.im - self.im * other.re }
    }

    /// 1/z (z ≠ 0; a zero gives infinities/NaN as in real division).
    #[inline]
    pub fn inv(self) -> Self {
        let n = self.abs2();
        Self { re: self.re / n, im: -self.im / n }
    }

    /// Whether both parts are finite.
    #[inline]
    pub fn is_finite(self) -> bool {
        self.re.is_finite() && self.im.is_finite()
    }
}

impl Add for Complex {
    type Output = Complex;
    #[inline]
    fn add(self, o: Complex) -> Complex {
        Complex { re: self.re + o.re, im: self.im + o.im }
    }
}

impl Sub for Complex {
    type Output = Complex;
    #[inline]
    fn sub(self, o: Complex) -> Complex {
        Complex { re: self.re - o.re, im: self.im - o.im }
    }
}

impl Mul for Complex {
    type Output = Complex;
    #[inline]
    fn mul(self, o: Complex) -> Complex {
        Complex { re: self.re * o.re - self.im * o.im, im: self.re * o.im + self.im * o.re }
    }
}

impl Mul<f64> for Complex {
    type Output = Complex;
    #[inline]
    fn mul(self, s: f64) -> Complex {
        self.scale(s)
    }
}

impl Div for Complex {
    type Output = Complex;
    #[inline]
    #[allow(clippy::suspicious_arithmetic_impl)] // division is multiplication by the inverse
    fn div(self, o: Complex) -> Complex {
        self * o.inv()
    }
}

impl Neg for Complex {
    type Output = Complex;
    #[inline]
    fn neg(self) -> Complex {
        Complex { re: -self.re, im: -self.im }
    }
}

impl AddAssign for Complex {
    #[inline]
    fn add_assign(&mut self, o: Complex) {
        self.re += o.re;
        self.im += o.im;
    }
}

impl SubAssign for Complex {
    #[inline]
    fn sub_assign(&mut self, o: Complex) {
        self.re -= o.re;
        self.im -= o.im;
    }
}

impl MulAssign for Complex {
    #[inline]
    fn mul_assign(&mut self, o: Complex) {
        *self = *self * o;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c() -> impl Strategy<Value = Complex> {
        (-10.0..10.0f64, -10.0..10.0f64).prop_map(|(a, b)| Complex::new(a, b))
    }

    proptest! {
        #[test]
        fn field_identities(a in c(), b in c()) {
            let p = a * b;
            prop_assert!((p.abs() - a.abs() * b.abs()).abs() <= 1e-13 * (1.0 + p.abs()));
            prop_assert_eq!((a * b).conj(), a.conj() * b.conj());
            prop_assert_eq!(a.conj_mul(b), a.conj() * b);
            prop_assert!((a.abs2() - (a * a.conj()).re).abs() <= 1e-13 * (1.0 + a.abs2()));
            prop_assert_eq!((a * a.conj()).im, 0.0);
            if b.abs() > 1e-3 {
                let q = (a / b) * b - a;
                prop_assert!(q.abs() <= 1e-12 * (1.0 + a.abs()));
            }
            prop_assert_eq!(a.mul_i(), a * Complex::I);
            prop_assert_eq!(-a + a, Complex::ZERO);
        }

        #[test]
        fn exponentials(phi in -20.0..20.0f64, a in c()) {
            let z = Complex::cis(phi);
            prop_assert!((z.abs2() - 1.0).abs() < 1e-15);
            let wrapped = phi - std::f64::consts::TAU * (phi / std::f64::consts::TAU).round();
            prop_assert!((z.arg() - wrapped).abs() < 1e-12);
            // e^{a} e^{-a} = 1
            let e = a.exp() * (-a).exp();
            prop_assert!((e - Complex::ONE).abs() < 1e-12);
        }
    }
}
