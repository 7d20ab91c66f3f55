//! Dense complex matrices for tests: the matrix of an operator on a tiny lattice, and its
//! determinant by LU decomposition with partial pivoting.

use super::spinor::{Colour, Spinor};
use crate::gauge::complex::Complex;

/// A dense n×n complex matrix, row-major.
pub struct Dense {
    pub n: usize,
    pub a: Vec<Complex>,
}

/// The flat complex components of a field, (site, spin, colour) order.
pub fn flatten<C: Colour, const NS: usize>(f: &[Spinor<C, NS>]) -> Vec<Complex> {
    f.iter().flat_map(|s| s.0.iter().flat_map(|c| c.components().iter().copied())).collect()
}

/// A field from flat complex components.
pub fn unflatten<C: Colour, const NS: usize>(v: &[Complex], sites: usize) -> Vec<Spinor<C, NS>> {
    let mut f = vec![Spinor::<C, NS>::default(); sites];
    let mut it = v.iter();
    for s in f.iter_mut() {
        for c in s.0.iter_mut() {
            for z in c.components_mut() {
                *z = *it.next().unwrap();
            }
        }
    }
    f
}

impl Dense {
    /// The matrix of `apply` (out = A in) on fields of `sites` spinors, column by column.
    pub fn of<C: Colour, const NS: usize>(
        sites: usize,
        mut apply: impl FnMut(&[Spinor<C, NS>], &mut [Spinor<C, NS>]),
    ) -> Self {
        let n = sites * NS * C::NC;
        let mut a = vec![Complex::ZERO; n * n];
        let mut e = vec![Complex::ZERO; n];
        let mut out = vec![Spinor::<C, NS>::default(); sites];
        for j in 0..n {
            e.iter_mut().for_each(|z| *z = Complex::ZERO);
            e[j] = Complex::ONE;
            let src = unflatten::<C, NS>(&e, sites);
            apply(&src, &mut out);
            for (i, z) in flatten(&out).into_iter().enumerate() {
                a[i * n + j] = z;
            }
        }
        Self { n, a }
    }

    /// (ln |det A|, arg det A) by LU with partial pivoting.
    pub fn log_det(&self) -> (f64, f64) {
        let n = self.n;
        let mut a = self.a.clone();
        let (mut logabs, mut arg) = (0.0, 0.0);
        for k in 0..n {
            let p = (k..n).max_by(|&i, &j| a[i * n + k].abs().total_cmp(&a[j * n + k].abs())).unwrap();
            if p != k {
                for j in 0..n {
                    a.swap(k * n + j, p * n + j);
                }
                arg += std::f64::consts::PI;
            }
            let piv = a[k * n + k];
            logabs += piv.abs().ln();
            arg += piv.arg();
            let inv = piv.inv();
            for i in k + 1..n {
                let f = a[i * n + k] * inv;
                if f == Complex::ZERO {
                    continue;
                }
                for j in k + 1..n {
                    let t = a[k * n + j];
                    a[i * n + j] -= f * t;
                }
            }
        }
        let arg = arg - std::f64::consts::TAU * (arg / std::f64::consts::TAU).round();
        (logabs, arg)
    }
}
