//! Multi-shift conjugate gradient: (A + σ_k) x_k = b for several shifts σ_k ≥ 0 at once, for
//! a Hermitian positive-definite A, at the cost of one CG on the smallest shift plus vector
//! operations. This is the solver of rational approximations r(A) = a₀ + Σ_k a_k (A + σ_k)⁻¹
//! (rational HMC).
//!
//! # Method
//! The Krylov spaces of A + σ are the same for every σ, and the residual of the CG on A + σ is
//! collinear with the base system's: r^σ_i = ζ^σ_i r_i (Jegerlehner, hep-lat/9612014). With
//! the base CG's step sizes α_i and β_i, each shift's ζ, step sizes and search direction
//! follow by scalar recurrences:
//!
//! ζ_{i+1} = ζ_i ζ_{i−1} α_{i−1} / (α_i β_{i−1} (ζ_{i−1} − ζ_i) + ζ_{i−1} α_{i−1} (1 + σ' α_i)),
//! α^σ_i = α_i ζ_{i+1}/ζ_i, β^σ_i = β_i (ζ_{i+1}/ζ_i)², x^σ += α^σ_i p^σ_i,
//! p^σ_{i+1} = ζ_{i+1} r_{i+1} + β^σ_i p^σ_i,
//!
//! with σ' = σ − σ_base ≥ 0, ζ_0 = ζ_{−1} = 1, α_{−1} = 1, β_{−1} = 0. The base system is the
//! smallest shift, the slowest to converge; a shift stops updating once its residual
//! |ζ| |r| meets the target.
//!
//! # Guarantee
//! The recurrences track the residuals only up to rounding. After the iteration, each shift's
//! true residual |b − (A + σ_k) x_k| / |b| is computed, and any shift above the target is
//! finished by plain CG ([`super::cg()`]) from its multi-shift solution, so every reported
//! residual is a true residual that meets the target (or the solve is an error).

use super::cg::{cg, CgParams, CgReport, CgWork};
use super::spinor::{axpy, norm2, par_fill, re_dot, xpay, Colour, Spinor};
use super::wilson::check_len;
use super::FermionError;

/// Work vectors of [`multi_shift_cg`] for up to `shifts` shifts and `len` spinors: one search
/// direction per shift, the residual, A p, and a [`CgWork`] for the final refinement.
#[derive(Debug, Clone)]
pub struct MultiShiftWork<S> {
    p: Vec<Vec<S>>,
    r: Vec<S>,
    ap: Vec<S>,
    cg: CgWork<S>,
}

impl<C: Colour, const NS: usize> MultiShiftWork<Spinor<C, NS>> {
    /// Work space for up to `shifts` shifts on fields of `len` spinors.
    pub fn new(len: usize, shifts: usize) -> Self {
        Self {
            p: (0..shifts).map(|_| vec![Spinor::default(); len]).collect(),
            r: vec![Spinor::default(); len],
            ap: vec![Spinor::default(); len],
            cg: CgWork::new(len),
        }
    }
}

/// Solves (A + σ_k) x_k = b for every shift σ_k of `shifts` (finite, ≥ 0, any order) with
/// A = `apply` (out = A v) Hermitian positive definite, by multi-shift CG (module docs).
/// `x[k]` receives the solution of shift k (its content on entry is ignored: multi-shift CG
/// starts from zero). `params.tol` is the target of every shift's true relative residual;
/// `params.max_iter` caps the iterations of the shared iteration and of each refinement.
/// Returns one report per shift: the iterations (shared iterations plus the shift's
/// refinement) and its true residual. b = 0 gives x_k = 0. Allocates only per-shift scalars
/// and the reports.
pub fn multi_shift_cg<C: Colour, const NS: usize>(
    mut apply: impl FnMut(&[Spinor<C, NS>], &mut [Spinor<C, NS>]) -> Result<(), FermionError>,
    shifts: &[f64],
    b: &[Spinor<C, NS>],
    x: &mut [Vec<Spinor<C, NS>>],
    work: &mut MultiShiftWork<Spinor<C, NS>>,
    params: &CgParams,
) -> Result<Vec<CgReport>, FermionError> {
    params.check()?;
    let (n, m) = (b.len(), shifts.len());
    if let Some(&s) = shifts.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
        return Err(FermionError::Shift(s));
    }
    check_len("solutions (one per shift)", x.len(), m)?;
    for xk in x.iter() {
        check_len("solution field", xk.len(), n)?;
    }
    if work.p.len() < m || work.r.len() < n {
        return Err(FermionError::Length { what: "multi-shift CG work (shifts)", expected: m, got: work.p.len() });
    }
    if m == 0 {
        return Ok(Vec::new());
    }
    let bb = norm2(b);
    for xk in x.iter_mut() {
        par_fill(xk, |_, o| *o = Spinor::default());
    }
    if bb == 0.0 {
        return Ok(vec![CgReport { iterations: 0, residual: 0.0 }; m]);
    }
    let base = (0..m).fold(0, |i, k| if shifts[k] < shifts[i] { k } else { i });
    let sigma0 = shifts[base];
    let target = params.tol * params.tol * bb;
    let MultiShiftWork { p, r, ap, cg: cgw } = work;
    let (r, ap) = (&mut r[..n], &mut ap[..n]);
    r.copy_from_slice(b);
    for pk in p.iter_mut().take(m) {
        pk[..n].copy_from_slice(b);
    }
    // per shift: ζ_i, ζ_{i−1}, and whether it still updates
    let mut zeta = vec![(1.0f64, 1.0f64, true); m];
    // per shift: ζ_{i+1} of the current iteration
    let mut next = vec![0.0f64; m];
    let (mut alpha_prev, mut beta_prev, mut rr) = (1.0f64, 0.0f64, bb);
    let mut iterations = 0;
    while rr > target {
        if iterations >= params.max_iter || !rr.is_finite() {
            return Err(FermionError::NotConverged { iterations, residual: (rr / bb).sqrt(), target: params.tol });
        }
        // ap = (A + σ0) p_base
        let pb = &p[base][..n];
        apply(pb, ap)?;
        axpy(sigma0, pb, ap);
        iterations += 1;
        let pap = re_dot(pb, ap);
        if pap.is_nan() || pap <= 0.0 {
            return Err(FermionError::NotConverged { iterations, residual: (rr / bb).sqrt(), target: params.tol });
        }
        let alpha = rr / pap;
        // the shifted systems' ζ_{i+1} and steps
        for k in 0..m {
            let (z, zp, active) = zeta[k];
            if k == base || !active {
                continue;
            }
            let ds = shifts[k] - sigma0;
            let zn = z * zp * alpha_prev / (alpha * beta_prev * (zp - z) + zp * alpha_prev * (1.0 + ds * alpha));
            next[k] = zn;
            axpy(alpha * zn / z, &p[k][..n], &mut x[k]);
        }
        axpy(alpha, &p[base][..n], &mut x[base]);
        axpy(-alpha, ap, r);
        let rr_new = norm2(r);
        let beta = rr_new / rr;
        xpay(r, beta, &mut p[base][..n]);
        for k in 0..m {
            let (z, _, active) = zeta[k];
            if k == base || !active {
                continue;
            }
            let zn = next[k];
            let bk = beta * (zn / z) * (zn / z);
            let r: &[Spinor<C, NS>] = r;
            par_fill(&mut p[k][..n], |i, o| {
                for s in 0..NS {
                    let mut v = r[i].0[s].scale(zn);
                    v.axpy(bk, &o.0[s]);
                    o.0[s] = v;
                }
            });
            // |r_k|² = ζ² |r|²: a converged shift stops updating
            zeta[k] = (zn, z, zn * zn * rr_new > target);
        }
        alpha_prev = alpha;
        beta_prev = beta;
        rr = rr_new;
    }
    // true residuals; a shift the recurrences left above the target is finished by plain CG
    let mut reports = Vec::with_capacity(m);
    for k in 0..m {
        let sigma = shifts[k];
        let mut shifted = |v: &[Spinor<C, NS>], out: &mut [Spinor<C, NS>]| {
            apply(v, out)?;
            axpy(sigma, v, out);
            Ok(())
        };
        let rep = cg(&mut shifted, b, &mut x[k], cgw, params)?;
        reports.push(CgReport { iterations: iterations + rep.iterations, residual: rep.residual });
    }
    Ok(reports)
}
