//! Bounds on the extreme eigenvalues of a Hermitian operator by the Lanczos method: the check
//! that a rational approximation's interval [λ_lo, λ_hi] holds the spectrum of D†D (rational
//! HMC is exact only to the approximation's accuracy on that interval).
//!
//! # Method
//! k steps of the Lanczos recurrence from a start vector b,
//!
//! ```text
//! v_0 = b/|b|,   w = A v_j − α_j v_j − β_j v_{j−1},   α_j = ⟨v_j, A v_j⟩,   β_{j+1} = |w|,   v_{j+1} = w/β_{j+1},
//! ```
//!
//! build the tridiagonal matrix T_k (diagonal α, off-diagonal β) of A on the Krylov space
//! K_k(A, b). Its eigenvalues, the Ritz values, are Rayleigh quotients of vectors of that space,
//! so they lie in [λ_min(A), λ_max(A)], and the extreme ones approach λ_min and λ_max from
//! inside as k grows. Hence a Ritz value θ_min < λ_lo **proves** λ_min(A) < λ_lo, and θ_max >
//! λ_hi proves λ_max(A) > λ_hi (up to rounding of order ε‖A‖): a failed check is never a
//! false alarm. A passed check only says that k steps found no violation (λ_min converges
//! slowly when the low end of the spectrum is dense). Without reorthogonalisation rounding
//! makes copies of converged Ritz values, which still lie in the spectrum.
//!
//! The eigenvalues of T_k come from bisection on Sturm counts (the number of negative pivots of
//! the LDLᵀ factorisation of T_k − x), to full precision, in O(k) per count.

use super::spinor::{axpy, norm2, re_dot, Colour, Spinor};
use super::FermionError;

/// The extreme Ritz values of a Lanczos run: λ_min(A) ≤ `min` and `max` ≤ λ_max(A).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RitzBounds {
    /// The smallest Ritz value, an upper bound on λ_min(A).
    pub min: f64,
    /// The largest Ritz value, a lower bound on λ_max(A).
    pub max: f64,
    /// Lanczos steps taken (fewer than asked when the Krylov space became invariant).
    pub steps: usize,
}

/// The three work fields of [`lanczos_bounds`].
#[derive(Debug, Clone)]
pub struct LanczosWork<S> {
    v: Vec<S>,
    v_prev: Vec<S>,
    w: Vec<S>,
}

impl<C: Colour, const NS: usize> LanczosWork<Spinor<C, NS>> {
    /// Work space for fields of `len` spinors.
    pub fn new(len: usize) -> Self {
        Self {
            v: vec![Spinor::default(); len],
            v_prev: vec![Spinor::default(); len],
            w: vec![Spinor::default(); len],
        }
    }
}

/// The extreme Ritz values of `steps` Lanczos steps (at least 1) of the Hermitian operator
/// `apply` (out = A v) from the start vector `b` (non-zero, finite) — bounds that lie inside
/// A's spectrum (module docs). Stops early when the Krylov space is invariant. Errors: a zero
/// or non-finite start, a non-finite A v, work of the wrong length. Allocates only the
/// tridiagonal coefficients.
pub fn lanczos_bounds<C: Colour, const NS: usize>(
    mut apply: impl FnMut(&[Spinor<C, NS>], &mut [Spinor<C, NS>]) -> Result<(), FermionError>,
    b: &[Spinor<C, NS>],
    steps: usize,
    work: &mut LanczosWork<Spinor<C, NS>>,
) -> Result<RitzBounds, FermionError> {
    let n = b.len();
    if work.v.len() != n {
        return Err(FermionError::Length { what: "Lanczos work", expected: n, got: work.v.len() });
    }
    let nb = norm2(b);
    if !(nb.is_finite() && nb > 0.0) {
        return Err(FermionError::Lanczos(format!("the start vector must be finite and non-zero (|b|² = {nb})")));
    }
    let steps = steps.max(1);
    let LanczosWork { v, v_prev, w } = work;
    v.fill(Spinor::default());
    axpy(1.0 / nb.sqrt(), b, v);
    v_prev.fill(Spinor::default());
    let (mut alpha, mut beta) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    let mut b_j = 0.0;
    for j in 0..steps {
        apply(v, w)?;
        let a = re_dot(v, w);
        if !a.is_finite() {
            return Err(FermionError::Lanczos(format!("the operator gave a non-finite ⟨v, A v⟩ at step {j}")));
        }
        axpy(-a, v, w);
        if j > 0 {
            axpy(-b_j, v_prev, w);
        }
        alpha.push(a);
        let next = norm2(w).sqrt();
        // an invariant Krylov space: T is exact, its eigenvalues are eigenvalues of A
        if j + 1 == steps || next <= 1e-14 * a.abs().max(b_j) {
            break;
        }
        beta.push(next);
        std::mem::swap(v_prev, v);
        v.fill(Spinor::default());
        axpy(1.0 / next, w, v);
        b_j = next;
    }
    let (min, max) = tridiagonal_extremes(&alpha, &beta);
    Ok(RitzBounds { min, max, steps: alpha.len() })
}

/// The number of eigenvalues below `x` of the symmetric tridiagonal matrix with diagonal `a`
/// and off-diagonal `b` (`b.len() == a.len() − 1`): the negative pivots of T − x = LDLᵀ.
fn sturm_count(a: &[f64], b: &[f64], x: f64) -> usize {
    let tiny = f64::MIN_POSITIVE.sqrt();
    let mut count = 0;
    let mut d = 1.0;
    for (i, &ai) in a.iter().enumerate() {
        let off = if i == 0 { 0.0 } else { b[i - 1] * b[i - 1] / d };
        d = ai - x - off;
        if d == 0.0 {
            d = -tiny;
        }
        if d < 0.0 {
            count += 1;
        }
    }
    count
}

/// The smallest and largest eigenvalues of the symmetric tridiagonal (a, b), by bisection
/// inside the Gershgorin interval to full precision.
fn tridiagonal_extremes(a: &[f64], b: &[f64]) -> (f64, f64) {
    let m = a.len();
    let radius = |i: usize| {
        let l = if i > 0 { b[i - 1].abs() } else { 0.0 };
        let r = if i < m - 1 { b[i].abs() } else { 0.0 };
        l + r
    };
    let lo = (0..m).map(|i| a[i] - radius(i)).fold(f64::INFINITY, f64::min);
    let hi = (0..m).map(|i| a[i] + radius(i)).fold(f64::NEG_INFINITY, f64::max);
    // the k-th smallest eigenvalue (k = 1 … m): the smallest x with count(x) ≥ k
    let kth = |k: usize| {
        let (mut l, mut h) = (lo, hi);
        for _ in 0..200 {
            let mid = 0.5 * (l + h);
            if mid <= l || mid >= h {
                break;
            }
            if sturm_count(a, b, mid) >= k {
                h = mid;
            } else {
                l = mid;
            }
        }
        0.5 * (l + h)
    };
    (kth(1), kth(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauge::fermion::spinor::ColourVector;
    use crate::gauge::Complex;

    type S = Spinor<ColourVector<1>, 1>;

    fn field(values: &[f64]) -> Vec<S> {
        values.iter().map(|&x| Spinor([ColourVector([Complex::new(x, 0.5 * x)])])).collect()
    }

    /// A = diag(d) on one-component spinors.
    fn diag(d: &[f64]) -> impl FnMut(&[S], &mut [S]) -> Result<(), FermionError> + '_ {
        move |v, out| {
            for ((o, x), &di) in out.iter_mut().zip(v).zip(d) {
                *o = Spinor([x.0[0].scale(di)]);
            }
            Ok(())
        }
    }

    #[test]
    fn ritz_values_bound_the_spectrum_from_inside_and_converge() {
        let n = 200;
        // eigenvalues 0.01 … 4, clustered at the low end as D†D's are
        let d: Vec<f64> = (0..n).map(|i| 0.01 + 3.99 * ((i as f64) / (n - 1) as f64).powi(3)).collect();
        let b = field(&(0..n).map(|i| 1.0 + (i % 7) as f64 * 0.1).collect::<Vec<_>>());
        let mut work = LanczosWork::new(n);
        let mut last = (f64::INFINITY, f64::NEG_INFINITY);
        for steps in [5, 20, 60, 200] {
            let r = lanczos_bounds(diag(&d), &b, steps, &mut work).unwrap();
            eprintln!("{steps} steps: θ_min = {:.6e}, θ_max = {:.6}", r.min, r.max);
            assert!(r.min >= 0.01 - 1e-12 && r.max <= 4.0 + 1e-12, "{r:?} outside the spectrum");
            assert!(r.min <= last.0 + 1e-12 && r.max >= last.1 - 1e-12, "bounds must tighten: {r:?} after {last:?}");
            last = (r.min, r.max);
        }
        // the top is isolated and converges fully; the bottom is a dense cluster (its second
        // eigenvalue is 0.0100005) that 200 steps without reorthogonalisation resolve to 0.3%
        assert!((last.1 - 4.0).abs() < 1e-8, "λ_max converged: {last:?}");
        assert!(last.0 - 0.01 < 1e-4, "λ_min approached: {last:?}");
    }

    #[test]
    fn an_invariant_space_stops_early_with_exact_eigenvalues() {
        // b has components on two eigenvectors only
        let d = [1.0, 2.0, 3.0, 4.0];
        let b = field(&[0.0, 1.0, 0.0, 2.0]);
        let r = lanczos_bounds(diag(&d), &b, 10, &mut LanczosWork::new(4)).unwrap();
        assert_eq!(r.steps, 2);
        assert!((r.min - 2.0).abs() < 1e-12 && (r.max - 4.0).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn sturm_bisection_matches_a_closed_form() {
        // the m×m matrix tridiag(−1, 2, −1): eigenvalues 2 − 2cos(kπ/(m + 1))
        let m = 30;
        let (a, b) = (vec![2.0; m], vec![-1.0; m - 1]);
        let (lo, hi) = tridiagonal_extremes(&a, &b);
        let f = |k: f64| 2.0 - 2.0 * (k * std::f64::consts::PI / (m as f64 + 1.0)).cos();
        assert!((lo - f(1.0)).abs() < 1e-13 && (hi - f(m as f64)).abs() < 1e-13, "{lo} {hi}");
        assert_eq!(tridiagonal_extremes(&[3.0], &[]), (3.0, 3.0));
    }

    #[test]
    fn bad_starts_and_operators_are_errors() {
        let d = [1.0, 2.0];
        let mut work = LanczosWork::new(2);
        let zero = field(&[0.0, 0.0]);
        assert!(lanczos_bounds(diag(&d), &zero, 5, &mut work).unwrap_err().to_string().contains("non-zero"));
        let nan = field(&[f64::NAN, 1.0]);
        assert!(lanczos_bounds(diag(&d), &nan, 5, &mut work).is_err());
        let bad = [f64::INFINITY, 1.0];
        let e = lanczos_bounds(diag(&bad), &field(&[1.0, 1.0]), 5, &mut work).unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let e = lanczos_bounds(diag(&d), &field(&[1.0, 1.0, 1.0]), 5, &mut work).unwrap_err();
        assert!(e.to_string().contains("Lanczos work"), "{e}");
    }
}
