//! Conjugate gradient for Hermitian positive-definite systems (D†D, D̂†D̂), and the
//! operator-level solves of [`WilsonDirac`].
//!
//! Convergence is judged by the **true** relative residual |b − A x| / |b|, recomputed from
//! the operator when the recursive residual reaches the target; if the true residual has not
//! reached it, CG restarts from the current x. A solve that does not reach the target within
//! the iteration cap is [`FermionError::NotConverged`], with the residual reached.

use super::clover::DiracGauge;
use super::lanes::{LaneDirac, LaneLayout, SpinorLanes};
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
    /// The lanes-layout operator and packed fields, made by the first solve that uses them.
    lanes: Option<LaneWork>,
}

/// What a solve in the lanes layout ([`super::lanes`]) needs: the operator with its packed
/// links, and four packed fields (right-hand side, solution, two scratch).
#[derive(Debug, Clone)]
struct LaneWork {
    dirac: LaneDirac,
    f: [Vec<SpinorLanes>; 4],
}

impl<C: Colour, const NS: usize> SolverWork<Spinor<C, NS>> {
    /// Work space for full-lattice and even–odd solves on `volume` sites.
    pub fn new(volume: usize) -> Self {
        Self { cg: CgWork::new(volume), t: std::array::from_fn(|_| vec![Spinor::default(); volume]), lanes: None }
    }

    pub(crate) fn check(&self, volume: usize) -> Result<(), FermionError> {
        check_len("solver work space (sites)", self.t[0].len(), volume)
    }
}

/// A field's reals as 24-real records (SU(3) 4-spinors); a length error otherwise.
fn records<C: Colour, const NS: usize>(s: &[Spinor<C, NS>]) -> Result<&[[f64; 24]], FermionError> {
    let r: &[f64] = bytemuck::cast_slice(s);
    bytemuck::try_cast_slice(r).map_err(|_| FermionError::Length { what: "SU(3) spinor reals", expected: 24, got: r.len() })
}

/// As [`records`], mutable.
fn records_mut<C: Colour, const NS: usize>(s: &mut [Spinor<C, NS>]) -> Result<&mut [[f64; 24]], FermionError> {
    let r: &mut [f64] = bytemuck::cast_slice_mut(s);
    let n = r.len();
    bytemuck::try_cast_slice_mut(r).map_err(|_| FermionError::Length { what: "SU(3) spinor reals", expected: 24, got: n })
}

/// Packed blocks seen as spinors, for [`cg`] (whose vector operations act on every real alike).
fn as_spinors<C: Colour, const NS: usize>(b: &[SpinorLanes]) -> &[Spinor<C, NS>] {
    bytemuck::cast_slice(b)
}

/// As [`as_spinors`], mutable.
fn as_spinors_mut<C: Colour, const NS: usize>(b: &mut [SpinorLanes]) -> &mut [Spinor<C, NS>] {
    bytemuck::cast_slice_mut(b)
}

/// Spinors (of a packed field) seen as blocks again.
fn as_blocks<C: Colour, const NS: usize>(s: &[Spinor<C, NS>]) -> &[SpinorLanes] {
    bytemuck::cast_slice(s)
}

/// As [`as_blocks`], mutable.
fn as_blocks_mut<C: Colour, const NS: usize>(s: &mut [Spinor<C, NS>]) -> &mut [SpinorLanes] {
    bytemuck::cast_slice_mut(s)
}

impl<G: WilsonGroup, const NS: usize> WilsonDirac<G, NS> {
    /// The lanes operator of `work` for `layout` with the links `links` packed (made, or
    /// remade for another layout, on first use; after that nothing allocates), and its four
    /// full-size packed fields.
    fn lane_work<'w>(
        &self,
        layout: &LaneLayout,
        links: &[f64],
        lanes: &'w mut Option<LaneWork>,
    ) -> Result<&'w mut LaneWork, FermionError> {
        if lanes.as_ref().is_some_and(|w| w.dirac.layout() != layout) {
            *lanes = None;
        }
        let w = lanes.get_or_insert_with(|| LaneWork {
            dirac: LaneDirac::new(layout.clone(), self.kappa(), self.lanes_level()),
            f: std::array::from_fn(|_| vec![SpinorLanes::default(); layout.outer_sites()]),
        });
        w.dirac.set_kappa(self.kappa());
        w.dirac.set_level(self.lanes_level());
        w.dirac.set_links(links)?;
        Ok(w)
    }

    /// Solves D†D x = φ on the full lattice by CG (x: initial guess on entry, zeros for none).
    /// This is the X = (D†D)⁻¹φ of the pseudofermion action and force. The report's residual
    /// is |φ − D†D x| / |φ|. For plain Wilson SU(3) in 4D with the time extent a multiple of 8
    /// the solve runs in the lanes layout ([`super::lanes`]; up to its size limit).
    pub fn solve_normal(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        phi: &[Spinor<G::Colour, NS>],
        x: &mut [Spinor<G::Colour, NS>],
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        params: &CgParams,
    ) -> Result<CgReport, FermionError> {
        work.check(self.volume())?;
        let g = self.gauge(u)?;
        let SolverWork { cg: cgw, t, lanes } = work;
        if let Some((layout, links)) = self.lanes_for(&g) {
            check_len("source field", phi.len(), self.volume())?;
            check_len("solution field", x.len(), self.volume())?;
            let w = self.lane_work(layout, links, lanes)?;
            let [b, xb, t0, _] = &mut w.f;
            w.dirac.pack_full(records(phi)?, b)?;
            w.dirac.pack_full(records(x)?, xb)?;
            let d = &w.dirac;
            let report = cg(
                |v, out| d.apply_normal(as_blocks(v), t0, as_blocks_mut(out)),
                as_spinors(b),
                as_spinors_mut(xb),
                cgw,
                params,
            )?;
            w.dirac.unpack_full(xb, records_mut(x)?)?;
            return Ok(report);
        }
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
        let mut rhs = std::mem::take(&mut work.t[1]);
        let applied = self.apply_dagger(u, eta, &mut rhs);
        let report = applied.and_then(|()| self.solve_normal(u, &rhs, psi, work, params));
        work.t[1] = rhs;
        report
    }

    /// Solves D̂†D̂ x_e = φ_e on the even sites (half-lattice fields, V/2 spinors; x_e: initial
    /// guess on entry). The even–odd pseudofermion action is φ_e†(D̂†D̂)⁻¹φ_e. For plain Wilson
    /// SU(3) in 4D with the time extent a multiple of 8 the solve runs in the lanes layout.
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
        let g = self.gauge(u)?;
        let SolverWork { cg: cgw, t, lanes } = work;
        if let Some((layout, links)) = self.lanes_for(&g) {
            return self.lane_schur_solve(layout, links, lanes, cgw, phi_e, x_e, params);
        }
        let [t0, t1, ..] = t;
        let (to, te) = (&mut t0[..half], &mut t1[..half]);
        cg(|v, out| self.apply_schur_normal(u, v, to, te, out), phi_e, x_e, cgw, params)
    }

    /// D̂†D̂ x_e = φ_e by CG in the lanes layout: pack, solve, unpack.
    #[allow(clippy::too_many_arguments)]
    fn lane_schur_solve(
        &self,
        layout: &LaneLayout,
        links: &[f64],
        lanes: &mut Option<LaneWork>,
        cgw: &mut CgWork<Spinor<G::Colour, NS>>,
        phi_e: &[Spinor<G::Colour, NS>],
        x_e: &mut [Spinor<G::Colour, NS>],
        params: &CgParams,
    ) -> Result<CgReport, FermionError> {
        let half = self.half_volume()?;
        check_len("even source field", phi_e.len(), half)?;
        check_len("even solution field", x_e.len(), half)?;
        let w = self.lane_work(layout, links, lanes)?;
        let n = layout.outer_sites() / 2;
        let [b, xb, to, te] = &mut w.f;
        let (b, xb, to, te) = (&mut b[..n], &mut xb[..n], &mut to[..n], &mut te[..n]);
        w.dirac.pack_half(false, records(phi_e)?, b)?;
        w.dirac.pack_half(false, records(x_e)?, xb)?;
        let d = &w.dirac;
        let report = cg(
            |v, out| d.schur_normal(as_blocks(v), to, te, as_blocks_mut(out)),
            as_spinors(b),
            as_spinors_mut(xb),
            cgw,
            params,
        )?;
        w.dirac.unpack_half(xb, records_mut(x_e)?)?;
        Ok(report)
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
        let g = self.gauge(u)?;
        let SolverWork { cg: cgw, t, lanes } = work;
        let [t0, t1, t2, t3, t4] = t;
        let (eta_e, eta_o) = t2.split_at_mut(half);
        self.split_eo(eta, eta_e, eta_o)?;
        let (b_e, c_e) = t3.split_at_mut(half);
        let (x_e, x_o) = t4.split_at_mut(half);
        self.split_eo(psi, x_e, x_o)?;
        let (to, te) = (&mut t0[..half], &mut t1[..half]);
        self.eo_prepare(u, eta_e, eta_o, to, b_e)?;
        self.apply_schur_dagger(u, b_e, to, c_e)?;
        let report = match self.lanes_for(&g) {
            Some((layout, links)) => self.lane_schur_solve(layout, links, lanes, cgw, c_e, x_e, params)?,
            None => cg(|v, out| self.apply_schur_normal(u, v, to, te, out), c_e, x_e, cgw, params)?,
        };
        self.eo_reconstruct(u, x_e, eta_o, x_o)?;
        self.merge_eo(x_e, x_o, psi)?;
        Ok(report)
    }
}
