//! Conjugate gradient for Hermitian positive-definite systems (D†D, D̂†D̂), and the
//! operator-level solves of [`WilsonDirac`].
//!
//! Convergence is judged by the **true** relative residual |b − A x| / |b|, recomputed from
//! the operator when the recursive residual reaches the target; if the true residual has not
//! reached it, CG restarts from the current x. A solve that does not reach the target within
//! the iteration cap is [`FermionError::NotConverged`], with the residual reached.

use super::clover::DiracGauge;
use super::spinor::{axpy, norm2, par_fill, re_dot, xpay, Colour, Spinor, WilsonGroup};
use super::wilson::{check_len, WilsonDirac};
use super::FermionError;

/// CG's stopping rule: the relative residual target and the iteration cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgParams {
    /// Target for the true relative residual |b − A x| / |b| (finite, > 0).
    pub tol: f64,
    /// The most operator applications of the iteration (≥ 1).
    pub max_iter: usize,
}

impl CgParams {
    /// Validated parameters: `tol` finite and > 0, `max_iter` ≥ 1.
    pub fn new(tol: f64, max_iter: usize) -> Result<Self, FermionError> {
        let p = Self { tol, max_iter };
        p.check()?;
        Ok(p)
    }

    /// Errors for a tolerance that is not finite and > 0, or a zero iteration cap.
    pub fn check(&self) -> Result<(), FermionError> {
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return Err(FermionError::Tolerance(self.tol));
        }
        if self.max_iter == 0 {
            return Err(FermionError::MaxIter(self.max_iter));
        }
        Ok(())
    }
}

/// What a converged solve reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgReport {
    /// CG iterations (one application of the normal operator each; the residual checks add
    /// one more application per check).
    pub iterations: usize,
    /// The true relative residual |b − A x| / |b| of the system CG solved (0 for b = 0).
    pub residual: f64,
}

/// CG's vectors, allocated once and reused by every solve of up to `len` spinors.
#[derive(Debug, Clone)]
pub struct CgWork<S> {
    r: Vec<S>,
    p: Vec<S>,
    ap: Vec<S>,
}

impl<C: Colour, const NS: usize> CgWork<Spinor<C, NS>> {
    /// Work vectors for systems of up to `len` spinors.
    pub fn new(len: usize) -> Self {
        Self { r: vec![Spinor::default(); len], p: vec![Spinor::default(); len], ap: vec![Spinor::default(); len] }
    }
}

/// Solves A x = b by conjugate gradient for a Hermitian positive-definite A given as
/// `apply(v, out)` (out = A v). `x` holds the initial guess on entry (zeros for none) and the
/// solution on return. `work` must hold at least `b.len()` spinors. b = 0 gives x = 0.
pub fn cg<C: Colour, const NS: usize>(
    mut apply: impl FnMut(&[Spinor<C, NS>], &mut [Spinor<C, NS>]) -> Result<(), FermionError>,
    b: &[Spinor<C, NS>],
    x: &mut [Spinor<C, NS>],
    work: &mut CgWork<Spinor<C, NS>>,
    params: &CgParams,
) -> Result<CgReport, FermionError> {
    params.check()?;
    let n = b.len();
    check_len("solution field", x.len(), n)?;
    if work.r.len() < n {
        return Err(FermionError::Length { what: "CG work vectors", expected: n, got: work.r.len() });
    }
    let (r, p, ap) = (&mut work.r[..n], &mut work.p[..n], &mut work.ap[..n]);
    let bb = norm2(b);
    if bb == 0.0 {
        par_fill(x, |_, o| *o = Spinor::default());
        return Ok(CgReport { iterations: 0, residual: 0.0 });
    }
    let target = params.tol * params.tol * bb;
    let mut iterations = 0;
    loop {
        // true residual r = b − A x
        apply(x, ap)?;
        par_fill(r, |i, o| {
            let mut v = b[i];
            for s in 0..NS {
                v.0[s].axpy(-1.0, &ap[i].0[s]);
            }
            *o = v;
        });
        let mut rr = norm2(r);
        let residual = (rr / bb).sqrt();
        if rr <= target {
            return Ok(CgReport { iterations, residual });
        }
        if iterations >= params.max_iter || !rr.is_finite() {
            return Err(FermionError::NotConverged { iterations, residual, target: params.tol });
        }
        p.copy_from_slice(r);
        while iterations < params.max_iter {
            apply(p, ap)?;
            iterations += 1;
            let pap = re_dot(p, ap);
            if pap.is_nan() || pap <= 0.0 {
                // A is not positive on p (or the arithmetic broke down): report the residual.
                return Err(FermionError::NotConverged { iterations, residual: (rr / bb).sqrt(), target: params.tol });
            }
            let alpha = rr / pap;
            axpy(alpha, p, x);
            axpy(-alpha, ap, r);
            let rr_new = norm2(r);
            if rr_new <= target {
                break;
            }
            xpay(r, rr_new / rr, p);
            rr = rr_new;
        }
    }
}

/// Everything the operator-level solves of [`WilsonDirac`] need, allocated once for a lattice
/// of `volume` sites and reused (no allocation per solve).
#[derive(Debug, Clone)]
pub struct SolverWork<S> {
    cg: CgWork<S>,
    pub(crate) t: [Vec<S>; 5],
}

impl<C: Colour, const NS: usize> SolverWork<Spinor<C, NS>> {
    /// Work space for full-lattice and even–odd solves on `volume` sites.
    pub fn new(volume: usize) -> Self {
        Self { cg: CgWork::new(volume), t: std::array::from_fn(|_| vec![Spinor::default(); volume]) }
    }

    pub(crate) fn check(&self, volume: usize) -> Result<(), FermionError> {
        check_len("solver work space (sites)", self.t[0].len(), volume)
    }
}

impl<G: WilsonGroup, const NS: usize> WilsonDirac<G, NS> {
    /// Solves D†D x = φ on the full lattice by CG (x: initial guess on entry, zeros for none).
    /// This is the X = (D†D)⁻¹φ of the pseudofermion action and force. The report's residual
    /// is |φ − D†D x| / |φ|.
    pub fn solve_normal(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        phi: &[Spinor<G::Colour, NS>],
        x: &mut [Spinor<G::Colour, NS>],
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        params: &CgParams,
    ) -> Result<CgReport, FermionError> {
        work.check(self.volume())?;
        let SolverWork { cg: cgw, t } = work;
        let tmp = &mut t[0];
        cg(|v, out| self.apply_normal(u, v, tmp, out), phi, x, cgw, params)
    }

    /// Solves D ψ = η on the full lattice, as D†D ψ = D†η by CG (ψ: initial guess on entry).
    /// The report's residual is that of the normal equations.
    pub fn solve(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        eta: &[Spinor<G::Colour, NS>],
        psi: &mut [Spinor<G::Colour, NS>],
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        params: &CgParams,
    ) -> Result<CgReport, FermionError> {
        work.check(self.volume())?;
        let SolverWork { cg: cgw, t } = work;
        let [t0, t1, ..] = t;
        self.apply_dagger(u, eta, t1)?;
        cg(|v, out| self.apply_normal(u, v, t0, out), t1, psi, cgw, params)
    }

    /// Solves D̂†D̂ x_e = φ_e on the even sites (half-lattice fields, V/2 spinors; x_e: initial
    /// guess on entry). The even–odd pseudofermion action is φ_e†(D̂†D̂)⁻¹φ_e.
    pub fn solve_schur_normal(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        phi_e: &[Spinor<G::Colour, NS>],
        x_e: &mut [Spinor<G::Colour, NS>],
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        params: &CgParams,
    ) -> Result<CgReport, FermionError> {
        let half = self.half_volume()?;
        work.check(self.volume())?;
        let SolverWork { cg: cgw, t } = work;
        let [t0, t1, ..] = t;
        let (to, te) = (&mut t0[..half], &mut t1[..half]);
        cg(|v, out| self.apply_schur_normal(u, v, to, te, out), phi_e, x_e, cgw, params)
    }

    /// Solves D ψ = η on the full lattice with even–odd preconditioning: D̂ψ_e = b_e (see
    /// [`Self::eo_prepare`]) by CG on D̂†D̂, then ψ_o by [`Self::eo_reconstruct`]. ψ is
    /// overwritten (its even half is the initial guess). The report's residual is that of the
    /// even normal equations. Requires even extents.
    pub fn solve_eo(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        eta: &[Spinor<G::Colour, NS>],
        psi: &mut [Spinor<G::Colour, NS>],
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        params: &CgParams,
    ) -> Result<CgReport, FermionError> {
        let half = self.half_volume()?;
        work.check(self.volume())?;
        let SolverWork { cg: cgw, t } = work;
        let [t0, t1, t2, t3, t4] = t;
        let (eta_e, eta_o) = t2.split_at_mut(half);
        self.split_eo(eta, eta_e, eta_o)?;
        let (b_e, c_e) = t3.split_at_mut(half);
        let (x_e, x_o) = t4.split_at_mut(half);
        self.split_eo(psi, x_e, x_o)?;
        let (to, te) = (&mut t0[..half], &mut t1[..half]);
        self.eo_prepare(u, eta_e, eta_o, to, b_e)?;
        self.apply_schur_dagger(u, b_e, to, c_e)?;
        let report = cg(|v, out| self.apply_schur_normal(u, v, to, te, out), c_e, x_e, cgw, params)?;
        self.eo_reconstruct(u, x_e, eta_o, x_o)?;
        self.merge_eo(x_e, x_o, psi)?;
        Ok(report)
    }
}
