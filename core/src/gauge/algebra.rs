//! su(N): traceless anti-Hermitian N×N matrices with the generalised Gell-Mann basis.
//!
//! Basis X_a = i T^a with T^a Hermitian and Tr(T^a T^b) = ½ δ^{ab}, ordered by column j = 1…N−1:
//! for each row i < j the symmetric generator (E_ij + E_ji)/2 then the antisymmetric one
//! (−i E_ij + i E_ji)/2, then the diagonal generator
//! √(2/(j(j+1)))/2 · diag(1, …, 1, −j, 0, …) with j ones. This is σ^a/2 in Pauli order for
//! N = 2 and λ^a/2 in Gell-Mann order for N = 3.
//!
//! For X = i Σ_a x^a T^a: Σ_a (x^a)² = −2 Tr X² = 2‖X‖²_F.

use super::complex::Complex;
use super::group::LieAlgebra;
use super::matrix::Matrix;
use crate::rng::Stream;

/// An element of su(N), stored as its traceless anti-Hermitian matrix.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuAlg<const N: usize>(pub Matrix<N>);

impl<const N: usize> Default for SuAlg<N> {
    fn default() -> Self {
        Self(Matrix::zero())
    }
}

impl<const N: usize> SuAlg<N> {
    /// The algebra element TA(M), the traceless anti-Hermitian part of any matrix M.
    #[inline]
    pub fn project(m: &Matrix<N>) -> Self {
        Self(m.traceless_antihermitian())
    }

    /// The generator T^a (Hermitian, Tr(T^a T^b) = ½ δ^{ab}), a < N² − 1.
    pub fn generator(a: usize) -> Matrix<N> {
        let mut c = vec![0.0; N * N - 1];
        c[a] = 1.0;
        // X_a = i T^a, so T^a = −i X_a
        Self::from_coeffs(&c).0.scale_c(Complex::new(0.0, -1.0))
    }
}

/// √(2/(j(j+1))), the normalisation of the j-th diagonal generator.
#[inline]
fn diag_norm(j: usize) -> f64 {
    (2.0 / (j * (j + 1)) as f64).sqrt()
}

impl<const N: usize> LieAlgebra for SuAlg<N> {
    const N_GEN: usize = N * N - 1;

    #[inline]
    fn zero() -> Self {
        Self(Matrix::zero())
    }

    #[inline]
    fn axpy(&mut self, s: f64, other: &Self) {
        self.0.axpy(s, &other.0);
    }

    #[inline]
    fn scale(&self, s: f64) -> Self {
        Self(self.0.scale(s))
    }

    #[inline]
    fn norm2(&self) -> f64 {
        2.0 * self.0.norm2()
    }

    fn gaussian(rng: &mut Stream) -> Self {
        let mut x = Matrix::zero();
        for j in 1..N {
            for i in 0..j {
                let sym = rng.normal();
                let anti = rng.normal();
                x.0[i][j] = Complex::new(0.5 * anti, 0.5 * sym);
                x.0[j][i] = Complex::new(-0.5 * anti, 0.5 * sym);
            }
            add_diagonal(&mut x, j, rng.normal());
        }
        Self(x)
    }

    fn write_coeffs(&self, out: &mut [f64]) {
        let x = &self.0 .0;
        let mut a = 0;
        for j in 1..N {
            for i in 0..j {
                out[a] = x[i][j].im + x[j][i].im;
                out[a + 1] = x[i][j].re - x[j][i].re;
                a += 2;
            }
            let d = (0..j).map(|k| x[k][k].im).sum::<f64>() - j as f64 * x[j][j].im;
            out[a] = diag_norm(j) * d;
            a += 1;
        }
    }

    fn from_coeffs(c: &[f64]) -> Self {
        let mut x = Matrix::zero();
        let mut a = 0;
        for j in 1..N {
            for i in 0..j {
                let (sym, anti) = (c[a], c[a + 1]);
                x.0[i][j] = Complex::new(0.5 * anti, 0.5 * sym);
                x.0[j][i] = Complex::new(-0.5 * anti, 0.5 * sym);
                a += 2;
            }
            add_diagonal(&mut x, j, c[a]);
            a += 1;
        }
        Self(x)
    }
}

/// x += i c T_diag(j): i c n_j/2 on the first j diagonal entries, −i c n_j j/2 on entry j.
#[inline]
fn add_diagonal<const N: usize>(x: &mut Matrix<N>, j: usize, c: f64) {
    let h = 0.5 * c * diag_norm(j);
    for k in 0..j {
        x.0[k][k].im += h;
    }
    x.0[j][j].im -= h * j as f64;
}
