//! [`GaugeGroup`] for SU(2) and SU(3) matrices; the pieces that differ (exponential, Haar
//! elements, reunitarisation) come from [`super::su2`] and [`super::su3`].

use super::algebra::SuAlg;
use super::complex::Complex;
use super::group::GaugeGroup;
use super::matrix::Matrix;
use super::{su2, su3};
use crate::rng::Stream;

macro_rules! impl_special_unitary {
    ($n:literal, $group:ident $(, $exp_mul:ident)?) => {
        impl GaugeGroup for Matrix<$n> {
            type Algebra = SuAlg<$n>;
            type Mat = Matrix<$n>;
            const NC: usize = $n;
            const REALS: usize = 2 * $n * $n;

            #[inline]
            fn identity() -> Self {
                Matrix::identity()
            }
            #[inline(always)]
            fn mul(&self, other: &Self) -> Self {
                *self * *other
            }
            #[inline(always)]
            fn mul_dagger(&self, other: &Self) -> Self {
                Matrix::mul_dagger(self, other)
            }
            #[inline(always)]
            fn dagger_mul(&self, other: &Self) -> Self {
                Matrix::dagger_mul(self, other)
            }
            #[inline(always)]
            fn dagger(&self) -> Self {
                Matrix::dagger(self)
            }
            #[inline]
            fn trace(&self) -> Complex {
                Matrix::trace(self)
            }
            #[inline]
            fn re_trace(&self) -> f64 {
                Matrix::re_trace(self)
            }
            #[inline]
            fn det(&self) -> Complex {
                Matrix::det(self)
            }
            #[inline]
            fn random(rng: &mut Stream) -> Self {
                $group::random(rng)
            }
            #[inline]
            fn exp(x: &SuAlg<$n>) -> Self {
                $group::exp(x)
            }
            $(
                #[inline]
                fn exp_mul_into(links: &mut [Self], x: &[SuAlg<$n>], s: f64) {
                    $group::$exp_mul(links, x, s)
                }
            )?
            #[inline]
            fn to_mat(&self) -> Self {
                *self
            }
            #[inline]
            fn re_trace_mul(&self, m: &Self) -> f64 {
                Matrix::re_trace_mul(self, m)
            }
            #[inline]
            fn re_trace_derivative(&self, m: &Self) -> SuAlg<$n> {
                SuAlg((*self * *m).traceless_antihermitian().scale(-0.5))
            }
            #[inline]
            fn deviation(&self) -> f64 {
                self.unitarity_deviation()
            }
            #[inline]
            fn reunitarize(&mut self) -> f64 {
                $group::reunitarize(self)
            }
            #[inline]
            fn write_reals(&self, out: &mut [f64]) {
                Matrix::write_reals(self, out)
            }
            #[inline]
            fn from_reals(r: &[f64]) -> Self {
                Matrix::from_reals(r)
            }
        }
    };
}

impl_special_unitary!(2, su2);
impl_special_unitary!(3, su3, exp_mul_into);

/// SU(N) for any N ≥ 2 without specialised kernels: the exponential by scaling and squaring
/// ([`Matrix::exp_taylor`]), Haar elements and reunitarisation by Gram–Schmidt with the last
/// row's phase fixed to det = 1 ([`Matrix::random_haar`], [`Matrix::gram_schmidt_special`]).
/// Same flat layout as [`Matrix<N>`]; prefer [`super::Su2`] and [`super::Su3`] for N = 2, 3.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuN<const N: usize>(pub Matrix<N>);

impl<const N: usize> GaugeGroup for SuN<N> {
    type Algebra = SuAlg<N>;
    type Mat = Matrix<N>;
    const NC: usize = N;
    const REALS: usize = 2 * N * N;

    #[inline]
    fn identity() -> Self {
        SuN(Matrix::identity())
    }
    #[inline(always)]
    fn mul(&self, other: &Self) -> Self {
        SuN(self.0 * other.0)
    }
    #[inline(always)]
    fn mul_dagger(&self, other: &Self) -> Self {
        SuN(self.0.mul_dagger(&other.0))
    }
    #[inline(always)]
    fn dagger_mul(&self, other: &Self) -> Self {
        SuN(self.0.dagger_mul(&other.0))
    }
    #[inline(always)]
    fn dagger(&self) -> Self {
        SuN(self.0.dagger())
    }
    #[inline]
    fn trace(&self) -> Complex {
        self.0.trace()
    }
    #[inline]
    fn re_trace(&self) -> f64 {
        self.0.re_trace()
    }
    #[inline]
    fn det(&self) -> Complex {
        self.0.det()
    }
    #[inline]
    fn random(rng: &mut Stream) -> Self {
        SuN(Matrix::random_haar(rng))
    }
    #[inline]
    fn exp(x: &SuAlg<N>) -> Self {
        SuN(x.0.exp_taylor())
    }
    #[inline]
    fn to_mat(&self) -> Matrix<N> {
        self.0
    }
    #[inline]
    fn re_trace_mul(&self, m: &Matrix<N>) -> f64 {
        self.0.re_trace_mul(m)
    }
    #[inline]
    fn re_trace_derivative(&self, m: &Matrix<N>) -> SuAlg<N> {
        SuAlg((self.0 * *m).traceless_antihermitian().scale(-0.5))
    }
    #[inline]
    fn deviation(&self) -> f64 {
        self.0.unitarity_deviation()
    }
    #[inline]
    fn reunitarize(&mut self) -> f64 {
        let dev = self.0.unitarity_deviation();
        self.0 = self.0.gram_schmidt_special();
        dev
    }
    #[inline]
    fn write_reals(&self, out: &mut [f64]) {
        self.0.write_reals(out)
    }
    #[inline]
    fn from_reals(r: &[f64]) -> Self {
        SuN(Matrix::from_reals(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauge::group::LieAlgebra;
    use proptest::prelude::*;

    fn coeffs(n: usize) -> impl Strategy<Value = (Vec<f64>, f64)> {
        (
            proptest::collection::vec(-1.0..1.0f64, n),
            prop_oneof![Just(1e-3), Just(0.1), Just(1.0), Just(4.0), Just(12.0)],
        )
    }

    /// exp(X) against the scaling-and-squaring Taylor series, unitarity, det = 1 and
    /// exp(X) exp(−X) = 1. Rounding grows with ‖X‖ (the closed forms combine terms of size
    /// ‖X‖²), so the bounds are 1e-14 up to s = 4 (‖X‖_F ≲ 6, far beyond an MD step) and grow
    /// linearly beyond.
    ///
    /// The generic Taylor path ([`SuN`]) squares k times after scaling ‖X‖_F below 1, and each
    /// squaring doubles the deviation from the group, so its bound is also at least 8ε·2^k (ε the
    /// f64 epsilon, 8 ≈ the N² = 9 entries' rounding), which exceeds the linear bound only at the
    /// largest norms tested (k = 5 at ‖X‖_F ≈ 24).
    fn check_exp<G: GaugeGroup<Mat = Matrix<N>, Algebra = SuAlg<N>>, const N: usize>(c: &[f64], s: f64, taylor: bool) {
        let x = SuAlg::<N>::from_coeffs(c).scale(s);
        let e = G::exp(&x).to_mat();
        let r = x.0.exp_taylor();
        let squarings = x.0.norm2().sqrt().log2().ceil().max(0.0);
        let squaring_bound = if taylor { 8.0 * f64::EPSILON * squarings.exp2() } else { 0.0 };
        let tol = (1e-14 * (s / 4.0).max(1.0)).max(squaring_bound);
        assert!((e - r).norm2().sqrt() < tol, "N = {N}, |x| = {s}: {:e}", (e - r).norm2().sqrt());
        assert!(e.unitarity_deviation() < tol, "{:e}", e.unitarity_deviation());
        let inv = G::exp(&x.scale(-1.0)).to_mat();
        assert!(((e * inv) - Matrix::identity()).norm2().sqrt() < tol);
    }

    proptest! {
        #[test]
        fn su2_exp_exact((c, s) in coeffs(3)) {
            check_exp::<Matrix<2>, 2>(&c, s, false);
        }

        #[test]
        fn su3_exp_exact((c, s) in coeffs(8)) {
            check_exp::<Matrix<3>, 3>(&c, s, false);
        }

        #[test]
        fn generic_exp_agrees_with_the_closed_forms((c, s) in coeffs(8)) {
            check_exp::<SuN<3>, 3>(&c, s, true);
            check_exp::<SuN<2>, 2>(&c[..3], s, true);
            let x = SuAlg::<3>::from_coeffs(&c).scale(s);
            let d = (SuN::<3>::exp(&x).0 - super::su3::exp(&x)).norm2().sqrt();
            prop_assert!(d < 1e-14 * (s / 4.0).max(1.0), "{d:e}");
        }

        #[test]
        fn coefficient_round_trip((c, _) in coeffs(8)) {
            let x = SuAlg::<3>::from_coeffs(&c);
            let mut back = [0.0; 8];
            x.write_coeffs(&mut back);
            for (a, b) in c.iter().zip(&back) {
                prop_assert!((a - b).abs() < 1e-15);
            }
            // Σ (x^a)² = −2 Tr X²
            let n2: f64 = c.iter().map(|v| v * v).sum();
            prop_assert!((x.norm2() - n2).abs() < 1e-14);
            prop_assert!(((x.0 * x.0).trace().re * -2.0 - n2).abs() < 1e-14);
            prop_assert!(x.0.traceless_antihermitian() == x.0 || (x.0.traceless_antihermitian() - x.0).norm2() < 1e-30);
        }
    }

    /// Rounding in ‖U†U − 1‖_F + |det U − 1| grows with the N² entries: 1e-14 up to N = 3.
    fn unitarity_tol(n: usize) -> f64 {
        1e-14 * ((n * n) as f64 / 9.0).max(1.0)
    }

    fn generators_are_orthonormal<const N: usize>() {
        for a in 0..N * N - 1 {
            let ta = SuAlg::<N>::generator(a);
            assert!((ta - ta.dagger()).norm2() < 1e-30, "T^{a} Hermitian");
            assert!(ta.trace().abs() < 1e-15);
            for b in 0..N * N - 1 {
                let tr = (ta * SuAlg::<N>::generator(b)).trace();
                let want = if a == b { 0.5 } else { 0.0 };
                assert!((tr - Complex::real(want)).abs() < 1e-15, "Tr(T^{a} T^{b}) = {tr:?}");
            }
        }
    }

    #[test]
    fn generator_bases() {
        generators_are_orthonormal::<2>();
        generators_are_orthonormal::<3>();
        generators_are_orthonormal::<4>();
        // Pauli order for SU(2): T^2 = σ₂/2 = [[0, −i/2], [i/2, 0]]
        let t2 = SuAlg::<2>::generator(1);
        assert_eq!(t2.0[0][1], Complex::new(0.0, -0.5));
        // Gell-Mann order for SU(3): T^8 = λ₈/2 = diag(1, 1, −2)/(2√3)
        let t8 = SuAlg::<3>::generator(7);
        let d = 1.0 / (2.0 * 3f64.sqrt());
        assert!((t8.0[0][0].re - d).abs() < 1e-16 && (t8.0[2][2].re + 2.0 * d).abs() < 1e-15);
        // T^4 = λ₄/2 couples rows 0 and 2
        assert_eq!(SuAlg::<3>::generator(3).0[0][2], Complex::real(0.5));
    }

    /// Gaussian momenta: every coefficient N(0, 1), so ⟨−Tr P²⟩ = N_GEN/2 and K = ½ Σ (p^a)².
    fn gaussian_variance<const N: usize>() {
        let mut rng = Stream::new(40 + N as u64, 0);
        let n = 20_000;
        let ng = N * N - 1;
        let mut m2 = vec![0.0; ng];
        let mut k = 0.0;
        let mut k2 = 0.0;
        let mut c = vec![0.0; ng];
        for _ in 0..n {
            let p = SuAlg::<N>::gaussian(&mut rng);
            p.write_coeffs(&mut c);
            for (m, v) in m2.iter_mut().zip(&c) {
                *m += v * v;
            }
            let kin = -(p.0 * p.0).trace().re;
            assert!((kin - 0.5 * p.norm2()).abs() < 1e-13);
            k += kin;
            k2 += kin * kin;
        }
        for (a, m) in m2.iter().enumerate() {
            let z = (m / n as f64 - 1.0) / (2.0 / n as f64).sqrt();
            assert!(z.abs() < 4.0, "N = {N}: <(p^{a})^2> z = {z}");
        }
        // K is ½ χ²_{ng}: mean ng/2, variance ng/2
        let mean = k / n as f64;
        let var = k2 / n as f64 - mean * mean;
        let z = (mean - ng as f64 / 2.0) / (var / n as f64).sqrt();
        assert!(z.abs() < 4.0, "N = {N}: <K> z = {z}");
        assert!((var - ng as f64 / 2.0).abs() < 0.1 * ng as f64, "N = {N}: var K = {var}");
    }

    #[test]
    fn gaussian_momenta_have_unit_coefficient_variance() {
        gaussian_variance::<2>();
        gaussian_variance::<3>();
    }

    fn haar_moments<G: GaugeGroup>() {
        // Haar: ⟨Tr U⟩ = 0 and ⟨|Tr U|²⟩ = 1 for SU(N), N ≥ 2.
        let mut rng = Stream::new(50 + G::NC as u64, 0);
        let n = 20_000;
        let (mut s, mut s2, mut s4) = (Complex::ZERO, 0.0, 0.0);
        for _ in 0..n {
            let u = G::random(&mut rng);
            assert!(u.deviation() < unitarity_tol(G::NC));
            assert!((u.det() - Complex::ONE).abs() < unitarity_tol(G::NC));
            assert_eq!(G::n_gen(), G::NC * G::NC - 1);
            let t = u.trace();
            s += t;
            s2 += t.abs2();
            s4 += t.abs2() * t.abs2();
        }
        let nf = n as f64;
        let err = (1.0 / nf).sqrt();
        assert!((s.re / nf).abs() < 4.0 * err && (s.im / nf).abs() < 4.0 * err, "<Tr U> = {s:?}");
        let var = s4 / nf - (s2 / nf).powi(2);
        let z = (s2 / nf - 1.0) / (var / nf).sqrt();
        assert!(z.abs() < 4.0, "<|Tr U|^2> z = {z}");
    }

    #[test]
    fn haar_elements_have_haar_moments() {
        haar_moments::<Matrix<2>>();
        haar_moments::<Matrix<3>>();
        haar_moments::<SuN<4>>();
    }

    fn derivative_matches_finite_difference<G: GaugeGroup>() {
        let mut rng = Stream::new(60, 0);
        for _ in 0..20 {
            let u = G::random(&mut rng);
            let m = G::random(&mut rng).to_mat();
            let d = u.re_trace_derivative(&m);
            let mut dc = vec![0.0; G::Algebra::N_GEN];
            d.write_coeffs(&mut dc);
            for a in 0..G::Algebra::N_GEN {
                let mut c = vec![0.0; G::Algebra::N_GEN];
                let h = 1e-5;
                c[a] = h;
                let xp = G::Algebra::from_coeffs(&c);
                let xm = xp.scale(-1.0);
                let fd = (G::exp(&xp).mul(&u).re_trace_mul(&m) - G::exp(&xm).mul(&u).re_trace_mul(&m)) / (2.0 * h);
                assert!((fd - dc[a]).abs() < 1e-9, "a = {a}: {fd} vs {}", dc[a]);
            }
        }
    }

    #[test]
    fn re_trace_derivative_is_the_lie_derivative() {
        derivative_matches_finite_difference::<Matrix<2>>();
        derivative_matches_finite_difference::<Matrix<3>>();
        derivative_matches_finite_difference::<SuN<4>>();
    }

    #[test]
    fn generic_reunitarisation_restores_the_group() {
        let mut rng = Stream::new(70, 0);
        for _ in 0..50 {
            let u = SuN::<4>::random(&mut rng);
            let mut w = u;
            w.0 .0[2][1].re += 1e-3;
            assert!(w.reunitarize() > 1e-3);
            assert!(w.deviation() < unitarity_tol(4));
            assert!((w.0 - u.0).norm2().sqrt() < 1e-2);
        }
    }
}
