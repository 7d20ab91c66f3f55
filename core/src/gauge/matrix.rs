//! Fixed-size complex N×N matrices: the storage of SU(N) links, staples and forces.
//!
//! `Matrix<N>` is `#[repr(C)]` over `[[Complex; N]; N]`, row-major, so its memory is exactly
//! the flat layout of [`crate::layout::ElementKind::ComplexMatrix`]: 2N² reals,
//! `[re(m00), im(m00), re(m01), im(m01), …]`, row by row. [`Matrix::write_reals`] and
//! [`Matrix::from_reals`] convert to and from that layout.
//!
//! Generic N is handled here (products, adjoint, trace, determinant, Gram–Schmidt, Taylor
//! exponential by scaling and squaring, traceless anti-Hermitian projection); the groups in
//! [`super::su2`] and [`super::su3`] specialise the exponential and reunitarisation.

use std::ops::{Add, AddAssign, Mul, Neg, Sub, SubAssign};

use super::complex::Complex;
use crate::rng::Stream;

/// A complex N×N matrix, row-major: `self.0[row][col]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matrix<const N: usize>(pub [[Complex; N]; N]);

impl<const N: usize> Default for Matrix<N> {
    fn default() -> Self {
        Self::zero()
    }
}

impl<const N: usize> Matrix<N> {
    /// Number of reals in the flat layout, 2N².
    pub const REALS: usize = 2 * N * N;

    /// The zero matrix.
    #[inline]
    pub fn zero() -> Self {
        Self([[Complex::ZERO; N]; N])
    }

    /// The identity.
    #[inline]
    pub fn identity() -> Self {
        let mut m = Self::zero();
        for i in 0..N {
            m.0[i][i] = Complex::ONE;
        }
        m
    }

    /// A multiple of the identity.
    #[inline]
    pub fn scalar(z: Complex) -> Self {
        let mut m = Self::zero();
        for i in 0..N {
            m.0[i][i] = z;
        }
        m
    }

    /// The conjugate transpose M†.
    #[inline(always)]
    pub fn dagger(&self) -> Self {
        let mut m = Self::zero();
        for i in 0..N {
            for j in 0..N {
                m.0[i][j] = self.0[j][i].conj();
            }
        }
        m
    }

    /// Tr M.
    #[inline]
    pub fn trace(&self) -> Complex {
        let mut t = Complex::ZERO;
        for i in 0..N {
            t += self.0[i][i];
        }
        t
    }

    /// Re Tr M.
    #[inline]
    pub fn re_trace(&self) -> f64 {
        let mut t = 0.0;
        for i in 0..N {
            t += self.0[i][i].re;
        }
        t
    }

    /// Re Tr(self · other), without forming the product.
    #[inline]
    pub fn re_trace_mul(&self, other: &Self) -> f64 {
        let mut t = 0.0;
        for i in 0..N {
            for k in 0..N {
                let (a, b) = (self.0[i][k], other.0[k][i]);
                t += a.re * b.re - a.im * b.im;
            }
        }
        t
    }

    /// self · other†, summed in the same order as [`Mul`] (the same bits as
    /// `self * other.dagger()`).
    #[inline(always)]
    pub fn mul_dagger(&self, other: &Self) -> Self {
        *self * other.dagger()
    }

    /// self† · other, summed in the same order as [`Mul`] (the same bits as
    /// `self.dagger() * other`).
    #[inline(always)]
    pub fn dagger_mul(&self, other: &Self) -> Self {
        self.dagger() * *other
    }

    /// self · s for real s.
    #[inline]
    pub fn scale(&self, s: f64) -> Self {
        let mut m = *self;
        for row in &mut m.0 {
            for z in row {
                *z = z.scale(s);
            }
        }
        m
    }

    /// self · z for complex z.
    #[inline]
    pub fn scale_c(&self, z: Complex) -> Self {
        let mut m = *self;
        for row in &mut m.0 {
            for e in row {
                *e *= z;
            }
        }
        m
    }

    /// self += s · other.
    #[inline]
    pub fn axpy(&mut self, s: f64, other: &Self) {
        for i in 0..N {
            for j in 0..N {
                self.0[i][j] += other.0[i][j].scale(s);
            }
        }
    }

    /// The Frobenius norm squared, Σ |m_ij|².
    #[inline]
    pub fn norm2(&self) -> f64 {
        self.0.iter().flatten().map(|z| z.abs2()).sum()
    }

    /// The determinant (closed forms for N ≤ 3, Gaussian elimination with partial pivoting
    /// beyond). Inlinable, so that the closed forms reach the callers' vector units.
    #[inline]
    pub fn det(&self) -> Complex {
        let m = &self.0;
        match N {
            1 => m[0][0],
            2 => m[0][0] * m[1][1] - m[0][1] * m[1][0],
            3 => {
                m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                    + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
            }
            _ => self.det_elimination(),
        }
    }

    fn det_elimination(&self) -> Complex {
        let mut a = self.0;
        let mut det = Complex::ONE;
        for col in 0..N {
            let pivot = (col..N).max_by(|&i, &j| a[i][col].abs2().total_cmp(&a[j][col].abs2())).unwrap_or(col);
            if a[pivot][col].abs2() == 0.0 {
                return Complex::ZERO;
            }
            if pivot != col {
                a.swap(pivot, col);
                det = -det;
            }
            det *= a[col][col];
            let inv = a[col][col].inv();
            for r in col + 1..N {
                let f = a[r][col] * inv;
                for c in col..N {
                    let sub = f * a[col][c];
                    a[r][c] -= sub;
                }
            }
        }
        det
    }

    /// The projection onto traceless anti-Hermitian matrices,
    /// TA(M) = ½(M − M†) − (1/N)·Tr[½(M − M†)]·1.
    #[inline]
    pub fn traceless_antihermitian(&self) -> Self {
        let mut a = Self::zero();
        for i in 0..N {
            for j in 0..N {
                a.0[i][j] = (self.0[i][j] - self.0[j][i].conj()).scale(0.5);
            }
        }
        let tr = a.trace().im / N as f64;
        for i in 0..N {
            a.0[i][i].re = 0.0;
            a.0[i][i].im -= tr;
        }
        a
    }

    /// The distance from SU(N): ‖M†M − 1‖_F + |det M − 1|. Zero (up to rounding) for a group
    /// element; used to decide and to report reunitarisation.
    pub fn unitarity_deviation(&self) -> f64 {
        let mut p = self.dagger_mul(self);
        for i in 0..N {
            p.0[i][i] -= Complex::ONE;
        }
        p.norm2().sqrt() + (self.det() - Complex::ONE).abs()
    }

    /// Gram–Schmidt on the rows (with one reorthogonalisation), then the last row's phase fixed
    /// so that det = 1: the SU(N)
    /// matrix nearest in the row-by-row sense. Requires linearly independent rows.
    pub fn gram_schmidt_special(&self) -> Self {
        let mut m = *self;
        for i in 0..N {
            // modified Gram–Schmidt, twice: orthogonal to rounding even for ill-conditioned rows
            for _ in 0..2 {
                for k in 0..i {
                    let mut dot = Complex::ZERO;
                    for j in 0..N {
                        dot += m.0[k][j].conj_mul(m.0[i][j]);
                    }
                    for j in 0..N {
                        let sub = m.0[k][j] * dot;
                        m.0[i][j] -= sub;
                    }
                }
            }
            let n: f64 = m.0[i].iter().map(|z| z.abs2()).sum::<f64>().sqrt();
            for z in &mut m.0[i] {
                *z = z.scale(1.0 / n);
            }
        }
        let phase = m.det().conj();
        let phase = phase.scale(1.0 / phase.abs());
        for z in &mut m.0[N - 1] {
            *z *= phase;
        }
        m
    }

    /// exp(M) by a Taylor series after scaling by 2^−s so that ‖M/2^s‖_F ≤ 1, then squaring
    /// s times. Accurate to about machine precision for any M; the generic-N exponential and
    /// the reference against which the closed forms are tested.
    pub fn exp_taylor(&self) -> Self {
        let norm = self.norm2().sqrt();
        let mut s = 0u32;
        while norm * 0.5f64.powi(s as i32) > 1.0 && s < 1100 {
            s += 1;
        }
        let a = self.scale(0.5f64.powi(s as i32));
        // ‖a‖ ≤ 1: 30 terms leave a remainder below 1/31! ≈ 1e-34; few squarings keep the
        // rounding of a unitary result small.
        let mut term = Self::identity();
        let mut sum = Self::identity();
        for k in 1..=30 {
            term = (term * a).scale(1.0 / f64::from(k));
            sum += term;
        }
        for _ in 0..s {
            sum = sum * sum;
        }
        sum
    }

    /// A Haar-distributed SU(N) element: Gram–Schmidt of a matrix of complex Gaussians (Haar on
    /// U(N)), with the last row's phase fixed to det = 1 (which keeps the first N−1 rows' Haar
    /// distribution, hence Haar on SU(N)). Draws 2N² normals, row by row, re before im.
    pub fn random_haar(rng: &mut Stream) -> Self {
        let mut m = Self::zero();
        for row in &mut m.0 {
            for z in row {
                z.re = rng.normal();
                z.im = rng.normal();
            }
        }
        m.gram_schmidt_special()
    }

    /// Writes the 2N² reals of the flat layout (row-major, (re, im) interleaved) to
    /// `out[..2N²]`.
    #[inline]
    pub fn write_reals(&self, out: &mut [f64]) {
        for (k, z) in self.0.iter().flatten().enumerate() {
            out[2 * k] = z.re;
            out[2 * k + 1] = z.im;
        }
    }

    /// Reads a matrix from the first 2N² reals of `r` (the flat layout).
    #[inline]
    pub fn from_reals(r: &[f64]) -> Self {
        let mut m = Self::zero();
        for (k, z) in m.0.iter_mut().flatten().enumerate() {
            *z = Complex::new(r[2 * k], r[2 * k + 1]);
        }
        m
    }
}

/// The product, row by row: row i of the result is Σ_k a_ik · (row k of b), each complex
/// scalar a_ik applied to a whole row as Re(a_ik)·row + Im(a_ik)·(i·row). Every entry is
/// (a_i0 b_0j + a_i1 b_1j) + … in k order, from −0.0 (which adds nothing), with each complex
/// product rounded as (a.re b.re − a.im b.im, a.re b.im + a.im b.re); only the loop order
/// differs from the textbook form, which lets the compiler use packed instructions.
impl<const N: usize> Mul for Matrix<N> {
    type Output = Matrix<N>;
    #[inline(always)]
    fn mul(self, o: Matrix<N>) -> Matrix<N> {
        if N == 3 {
            // the same arithmetic on six-real rows, which vectorises better
            let m = super::su3::mul_rows(bytemuck::cast_ref(&self), bytemuck::cast_ref(&o));
            return bytemuck::cast(m);
        }
        let mut oi = o;
        for z in oi.0.iter_mut().flatten() {
            *z = z.mul_i();
        }
        // sums from −0.0, as `su3::mul_rows` (−0.0 + x is x, the sign of a zero included)
        let mut m = Matrix([[Complex::new(-0.0, -0.0); N]; N]);
        for i in 0..N {
            for k in 0..N {
                let a = self.0[i][k];
                for j in 0..N {
                    let (b, bi) = (o.0[k][j], oi.0[k][j]);
                    m.0[i][j].re += a.re * b.re + a.im * bi.re;
                    m.0[i][j].im += a.re * b.im + a.im * bi.im;
                }
            }
        }
        m
    }
}

impl<const N: usize> Add for Matrix<N> {
    type Output = Matrix<N>;
    #[inline]
    fn add(mut self, o: Matrix<N>) -> Matrix<N> {
        self += o;
        self
    }
}

impl<const N: usize> Sub for Matrix<N> {
    type Output = Matrix<N>;
    #[inline]
    fn sub(mut self, o: Matrix<N>) -> Matrix<N> {
        self -= o;
        self
    }
}

impl<const N: usize> Neg for Matrix<N> {
    type Output = Matrix<N>;
    #[inline]
    fn neg(self) -> Matrix<N> {
        self.scale(-1.0)
    }
}

impl<const N: usize> AddAssign for Matrix<N> {
    #[inline]
    fn add_assign(&mut self, o: Matrix<N>) {
        for i in 0..N {
            for j in 0..N {
                self.0[i][j] += o.0[i][j];
            }
        }
    }
}

impl<const N: usize> SubAssign for Matrix<N> {
    #[inline]
    fn sub_assign(&mut self, o: Matrix<N>) {
        for i in 0..N {
            for j in 0..N {
                self.0[i][j] -= o.0[i][j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian<const N: usize>(rng: &mut Stream) -> Matrix<N> {
        let mut m = Matrix::<N>::zero();
        for z in m.0.iter_mut().flatten() {
            *z = Complex::new(rng.normal(), rng.normal());
        }
        m
    }

    fn close<const N: usize>(a: &Matrix<N>, b: &Matrix<N>, tol: f64) -> bool {
        (*a - *b).norm2().sqrt() <= tol * (1.0 + b.norm2().sqrt())
    }

    #[test]
    fn det_is_multiplicative_and_matches_elimination() {
        let mut rng = Stream::new(1, 0);
        for _ in 0..50 {
            let (a, b) = (gaussian::<3>(&mut rng), gaussian::<3>(&mut rng));
            let (l, r) = ((a * b).det(), a.det() * b.det());
            assert!((l - r).abs() < 1e-12 * (1.0 + r.abs()));
            assert!((a.det() - a.det_elimination()).abs() < 1e-12 * (1.0 + a.det().abs()));
            let c = gaussian::<2>(&mut rng);
            assert!((c.det() - c.det_elimination()).abs() < 1e-13 * (1.0 + c.det().abs()));
            let (d, e) = (gaussian::<4>(&mut rng), gaussian::<4>(&mut rng));
            let (l, r) = ((d * e).det(), d.det() * e.det());
            assert!((l - r).abs() < 1e-11 * (1.0 + r.abs()));
        }
    }

    #[test]
    fn products_adjoints_traces() {
        let mut rng = Stream::new(2, 0);
        for _ in 0..50 {
            let (a, b) = (gaussian::<3>(&mut rng), gaussian::<3>(&mut rng));
            assert!(close(&a.mul_dagger(&b), &(a * b.dagger()), 1e-15));
            assert!(close(&a.dagger_mul(&b), &(a.dagger() * b), 1e-15));
            // the product rounds each entry as the textbook sum from zero, k = 0, 1, 2
            let p = a * b;
            for i in 0..3 {
                for j in 0..3 {
                    let mut s = Complex::ZERO;
                    for k in 0..3 {
                        s += a.0[i][k] * b.0[k][j];
                    }
                    assert_eq!(p.0[i][j], s);
                }
            }
            assert!(close(&(a * b).dagger(), &(b.dagger() * a.dagger()), 1e-15));
            assert!((a.re_trace_mul(&b) - (a * b).re_trace()).abs() < 1e-13);
            assert!(((a * b).trace() - (b * a).trace()).abs() < 1e-13);
            let mut r = [0.0; 18];
            a.write_reals(&mut r);
            assert_eq!(Matrix::<3>::from_reals(&r), a);
            assert_eq!(r[2], a.0[0][1].re);
            assert_eq!(r[7], a.0[1][0].im);
        }
    }

    #[test]
    fn ta_projection_is_idempotent_traceless_antihermitian() {
        let mut rng = Stream::new(3, 0);
        for _ in 0..50 {
            let a = gaussian::<3>(&mut rng).traceless_antihermitian();
            assert!(close(&a, &-a.dagger(), 1e-15));
            assert!(a.trace().abs() < 1e-15);
            assert!(close(&a.traceless_antihermitian(), &a, 1e-15));
        }
    }

    #[test]
    fn haar_and_gram_schmidt_are_special_unitary() {
        let mut rng = Stream::new(4, 0);
        for _ in 0..50 {
            assert!(Matrix::<2>::random_haar(&mut rng).unitarity_deviation() < 1e-14);
            assert!(Matrix::<3>::random_haar(&mut rng).unitarity_deviation() < 1e-14);
            assert!(Matrix::<4>::random_haar(&mut rng).unitarity_deviation() < 1e-14);
        }
    }

    #[test]
    fn taylor_exp_inverts_and_composes() {
        let mut rng = Stream::new(5, 0);
        for scale in [1e-3, 0.3, 2.0, 7.0] {
            let a = gaussian::<4>(&mut rng).scale(scale);
            let e = a.exp_taylor();
            let e_neg = (-a).exp_taylor();
            // a product is exact to rounding relative to ‖e‖·‖e⁻¹‖ (non-normal A: ≫ 1)
            let bound = 1e-14 * e.norm2().sqrt() * e_neg.norm2().sqrt();
            assert!(((e * e_neg) - Matrix::identity()).norm2().sqrt() < bound, "scale {scale}");
            // exp(A) exp(A) = exp(2A)
            assert!(close(&(e * e), &a.scale(2.0).exp_taylor(), 1e-13), "scale {scale}");
            // det exp(A) = exp(Tr A)
            // … and to rounding relative to ‖e‖⁴ for a 4×4 determinant
            assert!((e.det() - a.trace().exp()).abs() < 1e-14 * e.norm2() * e.norm2());
        }
    }
}
