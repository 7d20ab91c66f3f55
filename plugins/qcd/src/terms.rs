//! The HMC action terms: the Wilson gauge action, the pseudofermion terms (one plain
//! pseudofermion and any Hasenbusch ratios for Nf = 2, or one rational term for Nf = 1), and
//! the even–odd clover determinant term.
//!
//! All terms read the configuration buffer as links without copying. A fermion term keeps its
//! pseudofermion φ (refreshed by its heat bath at the start of every trajectory) and its
//! solver scratch, and adds the CG iterations it spends to a shared counter (see [`FermionTerm::new`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use latflow_core::gauge::fermion::lanczos::{lanczos_bounds, LanczosWork};
use latflow_core::gauge::fermion::rational::{HeatBathFractions, PartialFractions};
use latflow_core::gauge::fermion::{
    axpy, fill_gaussian, multi_shift_cg, norm2, re_dot, CgParams, CgReport, CloverField, Colour, DiracGauge,
    FermionError, HopCached, MultiShiftWork, SolverWork, Spinor, SpinorOf, WilsonDirac, WilsonGroup,
};
use latflow_core::gauge::Complex;
use latflow_core::gauge::flat::{view, view_mut};
use latflow_core::gauge::parallel::{fill_sites_as, SiteWork};
use latflow_core::gauge::{plaquette_sum, staple, GaugeGroup, LieAlgebra};
use latflow_core::hmc::{ActionTerm, TermError};
use latflow_core::{Lattice, Stream};

use crate::space::QcdSpace;

/// The links of a configuration buffer (its length is checked by the SDK before any call).
pub(crate) fn links<G: bytemuck::Pod>(u: &[f64]) -> &[G] {
    view(u).unwrap_or_else(|e| panic!("configuration: {e}"))
}

fn algebra_mut<G: GaugeGroup>(f: &mut [f64]) -> &mut [G::Algebra]
where
    G::Algebra: bytemuck::Pod,
{
    view_mut(f).unwrap_or_else(|e| panic!("force buffer: {e}"))
}

/// The Wilson gauge action S_g = −(β/N) Σ_x Σ_{μ<ν} Re Tr U_P(x; μ, ν) (for U(1), N = 1:
/// −β Σ cos θ_P).
pub fn gauge_action<G: GaugeGroup>(lat: &Lattice, u: &[G], beta: f64) -> f64 {
    -beta / G::NC as f64 * plaquette_sum(lat, u)
}

/// The gauge action as an HMC term (exact, no solver).
pub struct GaugeTerm<'a, G> {
    pub lattice: &'a Lattice,
    pub beta: f64,
    pub _g: std::marker::PhantomData<G>,
}

impl<G: GaugeGroup + bytemuck::Pod> ActionTerm<QcdSpace> for GaugeTerm<'_, G>
where
    G::Algebra: bytemuck::Pod,
{
    fn name(&self) -> &str {
        "gauge"
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        Ok(gauge_action::<G>(self.lattice, links(u), self.beta))
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        let (lat, l) = (self.lattice, links::<G>(u));
        let (d, c) = (lat.dim(), -self.beta / G::NC as f64);
        fill_sites_as(SiteWork::of_group::<G>(), algebra_mut::<G>(out), d, |x, f, _| {
            for (mu, f) in f.iter_mut().enumerate() {
                *f = l[x * d + mu]
                    .re_trace_derivative(&staple(lat, l, x, mu))
                    .scale(c);
            }
        });
        Ok(())
    }
}

/// Links without a clover field, as the gauge data of an operator with c_sw = 0.
pub struct Plain<'a, G>(pub &'a [G]);

impl<G: WilsonGroup> DiracGauge<G> for Plain<'_, G> {
    fn links(&self) -> &[G] {
        self.0
    }
}

/// A Wilson operator with its solver choice: the full lattice, or the even–odd Schur complement
/// D̂ on the even sites. "D" below means D or D̂ accordingly, and fields have `len()` spinors
/// (V or V/2).
pub struct Operator<G: WilsonGroup, const NS: usize> {
    pub dirac: WilsonDirac<G, NS>,
    pub even_odd: bool,
}

/// Scratch fields of one operator application or solve.
pub struct Scratch<G: WilsonGroup, const NS: usize> {
    pub work: SolverWork<SpinorOf<G, NS>>,
    pub tmp: Vec<SpinorOf<G, NS>>,
    /// The clover field of the current links (c_sw ≠ 0 only).
    pub clover: Option<CloverField>,
}

impl<G: WilsonGroup, const NS: usize> Operator<G, NS> {
    /// Field length: V, or V/2 even–odd.
    pub fn field_len(&self) -> usize {
        let v = self.dirac.volume();
        if self.even_odd {
            v / 2
        } else {
            v
        }
    }

    /// Scratch space for this operator.
    pub fn scratch(&self) -> Result<Scratch<G, NS>, FermionError> {
        let clover = if self.dirac.params().csw != 0.0 {
            Some(self.dirac.new_clover_field()?)
        } else {
            None
        };
        Ok(Scratch {
            work: SolverWork::new(self.dirac.volume()),
            tmp: vec![Spinor::default(); self.dirac.volume()],
            clover,
        })
    }

    /// Runs `f` with the gauge data of `links` (with their clover field when c_sw ≠ 0), their
    /// hopping factors precomputed once for the whole call ([`HopCached`]: U(1) takes each
    /// link's sine and cosine once per solve instead of at every hop).
    pub fn with_gauge<R>(
        &self,
        links: &[G],
        clover: &mut Option<CloverField>,
        f: impl FnOnce(&dyn DiracGauge<G>) -> Result<R, FermionError>,
    ) -> Result<R, FermionError> {
        match clover {
            Some(c) => f(&HopCached::new(&self.dirac.clover_gauge(links, c)?)),
            None => f(&HopCached::new(&Plain(links))),
        }
    }

    /// out = D x (`tmp`: V/2 scratch spinors even–odd, unused on the full lattice).
    pub fn apply(
        &self,
        g: &dyn DiracGauge<G>,
        x: &[SpinorOf<G, NS>],
        tmp: &mut [SpinorOf<G, NS>],
        out: &mut [SpinorOf<G, NS>],
    ) -> Result<(), FermionError> {
        if self.even_odd {
            self.dirac.apply_schur(g, x, &mut tmp[..x.len()], out)
        } else {
            self.dirac.apply(g, x, out)
        }
    }

    /// out = D† x.
    pub fn apply_dagger(
        &self,
        g: &dyn DiracGauge<G>,
        x: &[SpinorOf<G, NS>],
        tmp: &mut [SpinorOf<G, NS>],
        out: &mut [SpinorOf<G, NS>],
    ) -> Result<(), FermionError> {
        if self.even_odd {
            self.dirac
                .apply_schur_dagger(g, x, &mut tmp[..x.len()], out)
        } else {
            self.dirac.apply_dagger(g, x, out)
        }
    }

    /// out = D†D x (`mid`: a field of x's length for D x; `tmp` as in [`Self::apply`]).
    pub fn apply_normal(
        &self,
        g: &dyn DiracGauge<G>,
        x: &[SpinorOf<G, NS>],
        tmp: &mut [SpinorOf<G, NS>],
        mid: &mut [SpinorOf<G, NS>],
        out: &mut [SpinorOf<G, NS>],
    ) -> Result<(), FermionError> {
        self.apply(g, x, tmp, mid)?;
        self.apply_dagger(g, mid, tmp, out)
    }

    /// Solves D†D x = b (x: initial guess on entry).
    pub fn solve_normal(
        &self,
        g: &dyn DiracGauge<G>,
        b: &[SpinorOf<G, NS>],
        x: &mut [SpinorOf<G, NS>],
        work: &mut SolverWork<SpinorOf<G, NS>>,
        params: &CgParams,
    ) -> Result<CgReport, FermionError> {
        if self.even_odd {
            self.dirac.solve_schur_normal(g, b, x, work, params)
        } else {
            self.dirac.solve_normal(g, b, x, work, params)
        }
    }

    /// out += scale · (the derivative of −2 Re(Y† D X) at fixed X, Y).
    pub fn add_force(
        &self,
        g: &dyn DiracGauge<G>,
        x: &[SpinorOf<G, NS>],
        y: &[SpinorOf<G, NS>],
        scale: f64,
        work: &mut SolverWork<SpinorOf<G, NS>>,
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        if self.even_odd {
            self.dirac.add_force_eo(g, x, y, scale, work, out)
        } else {
            self.dirac.add_force(g, x, y, scale, out)
        }
    }
}

/// The CG tolerances of a fermion term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Solvers {
    /// For the action (at the start and end of a trajectory) and the heat bath.
    pub action: CgParams,
    /// For the forces during the integration.
    pub force: CgParams,
}

/// Mutable state of a fermion term.
struct State<G: WilsonGroup, const NS: usize> {
    phi: Vec<SpinorOf<G, NS>>,
    x: Vec<SpinorOf<G, NS>>,
    y: Vec<SpinorOf<G, NS>>,
    b: Vec<SpinorOf<G, NS>>,
    s1: Scratch<G, NS>,
    s2: Option<Scratch<G, NS>>,
}

/// One pseudofermion term of Nf = 2 (weight det(D₁†D₁)/det(D₂†D₂), D₂ = 1 without Hasenbusch):
/// * plain: S = φ†(D₁†D₁)⁻¹φ, heat bath φ = D₁†η;
/// * Hasenbusch ratio: S = φ†D₂(D₁†D₁)⁻¹D₂†φ, heat bath φ = D₂^{−†}D₁†η (solving D₂†D₂ z = D₁†η,
///   φ = D₂ z),
///
/// with Gaussian η (density ∝ e^{−η†η}), so that S = η†η at the refresh. D₁ is the lighter
/// operator (larger κ), D₂ the heavier.
pub struct FermionTerm<G: WilsonGroup, const NS: usize> {
    name: String,
    d1: Operator<G, NS>,
    d2: Option<Operator<G, NS>>,
    solvers: Solvers,
    state: RefCell<State<G, NS>>,
    iterations: Rc<Cell<u64>>,
}

impl<G: WilsonGroup + bytemuck::Pod, const NS: usize> FermionTerm<G, NS>
where
    G::Algebra: bytemuck::Pod,
{
    /// A term named `name` with inverse operator `d1` and Hasenbusch numerator `d2`; CG
    /// iterations are added to `iterations`. Until its first heat bath, φ is a fixed reference
    /// field: Gaussian noise from `reference` (so that the action of a configuration outside
    /// HMC is a deterministic function of it).
    pub fn new(
        name: String,
        d1: Operator<G, NS>,
        d2: Option<Operator<G, NS>>,
        solvers: Solvers,
        iterations: Rc<Cell<u64>>,
        reference: &mut Stream,
    ) -> Result<Self, TermError> {
        let n = d1.field_len();
        let zero = vec![Spinor::default(); n];
        let s1 = d1
            .scratch()
            .map_err(|e| TermError::new(&name, e.to_string()))?;
        let s2 = d2
            .as_ref()
            .map(|d| d.scratch())
            .transpose()
            .map_err(|e| TermError::new(&name, e.to_string()))?;
        let mut phi = zero.clone();
        fill_gaussian(&mut phi, reference)
            .map_err(|e| TermError::new(&name, format!("reference field: {e}")))?;
        let state = State {
            phi,
            x: zero.clone(),
            y: zero.clone(),
            b: zero,
            s1,
            s2,
        };
        Ok(Self {
            name,
            d1,
            d2,
            solvers,
            state: RefCell::new(state),
            iterations,
        })
    }

    fn fail(&self, what: &str, e: FermionError) -> TermError {
        TermError::new(&self.name, format!("{what}: {e}"))
    }

    fn count(&self, r: CgReport) {
        self.iterations
            .set(self.iterations.get() + r.iterations as u64);
    }

    /// b = D₂†φ for a ratio (φ itself otherwise), into `st.b`.
    fn source(&self, l: &[G], st: &mut State<G, NS>) -> Result<(), FermionError> {
        let State { phi, b, s2, .. } = st;
        match (&self.d2, s2) {
            (Some(d2), Some(s2)) => {
                let Scratch { tmp, clover, .. } = s2;
                d2.with_gauge(l, clover, |g| d2.apply_dagger(g, phi, tmp, b))
            }
            _ => {
                b.copy_from_slice(phi);
                Ok(())
            }
        }
    }

    /// X = (D₁†D₁)⁻¹ b into `st.x` (from a zero guess, so results do not depend on history).
    fn solve(&self, l: &[G], st: &mut State<G, NS>, params: &CgParams) -> Result<(), FermionError> {
        let State { x, b, s1, .. } = st;
        x.iter_mut().for_each(|s| *s = Spinor::default());
        let Scratch { work, clover, .. } = s1;
        let r = self
            .d1
            .with_gauge(l, clover, |g| self.d1.solve_normal(g, b, x, work, params))?;
        self.count(r);
        Ok(())
    }

    fn force_into(
        &self,
        l: &[G],
        st: &mut State<G, NS>,
        out: &mut [G::Algebra],
    ) -> Result<(), TermError> {
        self.source(l, st)
            .map_err(|e| self.fail("the Hasenbusch source D2^dag phi", e))?;
        self.solve(l, st, &self.solvers.force)
            .map_err(|e| self.fail("the force solve", e))?;
        out.iter_mut().for_each(|f| *f = G::Algebra::zero());
        let State {
            phi, x, y, s1, s2, ..
        } = st;
        let Scratch { work, tmp, clover } = s1;
        self.d1
            .with_gauge(l, clover, |g| {
                self.d1.apply(g, x, tmp, y)?;
                self.d1.add_force(g, x, y, 1.0, work, out)
            })
            .map_err(|e| self.fail("the force", e))?;
        if let (Some(d2), Some(s2)) = (&self.d2, s2) {
            let Scratch { work, clover, .. } = s2;
            d2.with_gauge(l, clover, |g| d2.add_force(g, x, phi, -1.0, work, out))
                .map_err(|e| self.fail("the Hasenbusch force", e))?;
        }
        Ok(())
    }
}

impl<G: WilsonGroup + bytemuck::Pod, const NS: usize> ActionTerm<QcdSpace> for FermionTerm<G, NS>
where
    G::Algebra: bytemuck::Pod,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn is_exact(&self) -> bool {
        false
    }

    fn refresh(&mut self, u: &Vec<f64>, rng: &mut Stream) -> Result<(), TermError> {
        let l = links::<G>(u);
        let st = self.state.get_mut();
        let State {
            phi,
            x,
            y,
            b,
            s1,
            s2,
        } = st;
        fill_gaussian(y, rng).map_err(|e| TermError::new(&self.name, format!("heat bath: {e}")))?;
        let Scratch { tmp, clover, .. } = s1;
        let target = if self.d2.is_some() {
            &mut *b
        } else {
            &mut *phi
        };
        self.d1
            .with_gauge(l, clover, |g| self.d1.apply_dagger(g, y, tmp, target))
            .map_err(|e| TermError::new(&self.name, format!("heat bath: {e}")))?;
        if let (Some(d2), Some(s2)) = (&self.d2, s2) {
            // φ = D₂ z with D₂†D₂ z = D₁†η
            x.iter_mut().for_each(|s| *s = Spinor::default());
            let Scratch { work, tmp, clover } = s2;
            let params = self.solvers.action;
            let r = d2
                .with_gauge(l, clover, |g| {
                    let r = d2.solve_normal(g, b, x, work, &params)?;
                    d2.apply(g, x, tmp, phi)?;
                    Ok(r)
                })
                .map_err(|e| TermError::new(&self.name, format!("the heat-bath solve: {e}")))?;
            self.iterations
                .set(self.iterations.get() + r.iterations as u64);
        }
        Ok(())
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        let l = links::<G>(u);
        let mut st = self.state.borrow_mut();
        self.source(l, &mut st)
            .map_err(|e| self.fail("the Hasenbusch source D2^dag phi", e))?;
        self.solve(l, &mut st, &self.solvers.action)
            .map_err(|e| self.fail("the action solve", e))?;
        Ok(re_dot(&st.b, &st.x))
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        let l = links::<G>(u);
        let mut st = self.state.borrow_mut();
        self.force_into(l, &mut st, algebra_mut::<G>(out))
    }
}

/// Mutable state of a [`RationalTerm`].
struct RationalState<G: WilsonGroup, const NS: usize> {
    phi: Vec<SpinorOf<G, NS>>,
    /// The multi-shift solutions, one per pole (or zero, in the heat bath).
    xs: Vec<Vec<SpinorOf<G, NS>>>,
    y: Vec<SpinorOf<G, NS>>,
    /// D v inside the normal operator D†D v, and γ5 D Y in the heat bath.
    mid: Vec<SpinorOf<G, NS>>,
    multi: MultiShiftWork<SpinorOf<G, NS>>,
    lanczos: LanczosWork<SpinorOf<G, NS>>,
    s: Scratch<G, NS>,
}

/// The check, at every heat bath, that the approximation's interval holds the spectrum of D†D
/// (D̂†D̂ even–odd) on the current links: `steps` Lanczos steps from the heat bath's Gaussian
/// noise give Ritz values inside the spectrum
/// ([`latflow_core::gauge::fermion::lanczos`]), so one below `range.0` or above `range.1`
/// proves that the spectrum leaves the interval, where R(x) ≈ x^{−1/2} is no longer accurate
/// and the chain would sample a wrong weight. That is an error naming the key to change; a
/// passed check cannot prove the converse (the lowest eigenvalues converge slowly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpectrumCheck {
    /// [λ_lo, λ_hi] of the approximation.
    pub range: (f64, f64),
    /// Lanczos steps per heat bath (0: no check).
    pub steps: usize,
}

/// One flavour (Nf = 1) by rational HMC: weight det R(D†D)⁻¹ ≈ det(D†D)^{1/2} with Zolotarev's
/// R(x) ≈ x^{−1/2} ([`latflow_core::gauge::fermion::rational`]; D̂ even–odd):
/// * S = φ† R(D†D) φ = a₀ φ†φ + Σ_l a_l φ† (D†D + μ_l²)⁻¹ φ, one multi-shift solve;
/// * force −Σ_l a_l X_l† d(D†D) X_l with X_l = (D†D + μ_l²)⁻¹ φ;
/// * heat bath φ = (B†)⁻¹ η with R(Q²) = BB†, Q = γ5 D Hermitian, so S = η†η exactly at the
///   refresh (to the solver's tolerance): φ = D₀^{−1/2} [η + Σ_l iγ_l (Q + iν_l) Y_l],
///   Y_l = (D†D + ν_l²)⁻¹ η.
///
/// At every heat bath, [`SpectrumCheck`] verifies (one-sidedly) that the spectrum of D†D lies
/// in the approximation's interval. Needs γ5-hermiticity of D: no twisted mass.
pub struct RationalTerm<G: WilsonGroup, const NS: usize> {
    name: String,
    op: Operator<G, NS>,
    action: PartialFractions,
    heat_bath: HeatBathFractions,
    check: SpectrumCheck,
    /// The action's poles μ_l² and the heat bath's ν_l²: the shifts of the multi-shift solves.
    action_shifts: Vec<f64>,
    heat_bath_shifts: Vec<f64>,
    solvers: Solvers,
    state: RefCell<RationalState<G, NS>>,
    iterations: Rc<Cell<u64>>,
}

impl<G: WilsonGroup + bytemuck::Pod, const NS: usize> RationalTerm<G, NS>
where
    G::Algebra: bytemuck::Pod,
{
    /// A term named `name` for the operator `op` with the action's partial fractions `action`
    /// and the matching heat-bath factor `heat_bath` (of one [`latflow_core::gauge::fermion::rational::InverseSqrt`]),
    /// whose interval the heat bath checks as `check` says; φ starts as Gaussian noise from
    /// `reference` (as [`FermionTerm::new`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        op: Operator<G, NS>,
        action: PartialFractions,
        heat_bath: HeatBathFractions,
        check: SpectrumCheck,
        solvers: Solvers,
        iterations: Rc<Cell<u64>>,
        reference: &mut Stream,
    ) -> Result<Self, TermError> {
        if op.dirac.twist() != 0.0 {
            return Err(TermError::new(&name, "one flavour needs gamma5-hermiticity of D: no twisted mass"));
        }
        let (n, poles) = (op.field_len(), action.terms.len().max(heat_bath.terms.len()));
        let s = op.scratch().map_err(|e| TermError::new(&name, e.to_string()))?;
        let mut phi = vec![Spinor::default(); n];
        fill_gaussian(&mut phi, reference).map_err(|e| TermError::new(&name, format!("reference field: {e}")))?;
        let state = RationalState {
            phi,
            xs: vec![vec![Spinor::default(); n]; poles],
            y: vec![Spinor::default(); n],
            mid: vec![Spinor::default(); n],
            multi: MultiShiftWork::new(n, poles),
            lanczos: LanczosWork::new(if check.steps > 0 { n } else { 0 }),
            s,
        };
        let action_shifts = action.terms.iter().map(|&(_, mu2)| mu2).collect();
        let heat_bath_shifts = heat_bath.terms.iter().map(|&(_, nu)| nu * nu).collect();
        Ok(Self {
            name,
            op,
            action,
            heat_bath,
            check,
            action_shifts,
            heat_bath_shifts,
            solvers,
            state: RefCell::new(state),
            iterations,
        })
    }

    fn fail(&self, what: &str, e: FermionError) -> TermError {
        TermError::new(&self.name, format!("{what}: {e}"))
    }

    /// xs[l] = (D†D + shifts[l])⁻¹ b, counting the shared iterations once.
    fn solve(
        &self,
        l: &[G],
        st: &mut RationalState<G, NS>,
        shifts: &[f64],
        source_is_phi: bool,
        params: &CgParams,
    ) -> Result<(), FermionError> {
        let RationalState { phi, xs, y, mid, multi, s, .. } = st;
        let Scratch { tmp, clover, .. } = s;
        let b: &[SpinorOf<G, NS>] = if source_is_phi { phi } else { y };
        let op = &self.op;
        let reports = op.with_gauge(l, clover, |g| {
            let normal = |v: &[SpinorOf<G, NS>], out: &mut [SpinorOf<G, NS>]| op.apply_normal(g, v, tmp, mid, out);
            multi_shift_cg(normal, shifts, b, &mut xs[..shifts.len()], multi, params)
        })?;
        let most = reports.iter().map(|r| r.iterations).max().unwrap_or(0);
        self.iterations.set(self.iterations.get() + most as u64);
        Ok(())
    }

    /// [`SpectrumCheck`] on links `l` from the heat bath's noise (in `st.y`).
    fn check_spectrum(&self, l: &[G], st: &mut RationalState<G, NS>) -> Result<(), TermError> {
        let SpectrumCheck { range: (lo, hi), steps } = self.check;
        if steps == 0 {
            return Ok(());
        }
        let RationalState { y, mid, lanczos, s, .. } = st;
        let Scratch { tmp, clover, .. } = s;
        let op = &self.op;
        let r = op
            .with_gauge(l, clover, |g| {
                let normal = |v: &[SpinorOf<G, NS>], out: &mut [SpinorOf<G, NS>]| op.apply_normal(g, v, tmp, mid, out);
                lanczos_bounds(normal, y, steps, lanczos)
            })
            .map_err(|e| self.fail("the spectral-range check", e))?;
        // Ritz values lie in the spectrum up to rounding of order 1e-16 ‖D†D‖
        let slack = 1e-12 * hi;
        let what = if self.op.even_odd { "D^dag D (even-odd: D-hat^dag D-hat)" } else { "D^dag D" };
        if r.min < lo - slack {
            return Err(TermError::new(
                &self.name,
                format!(
                    "the spectrum of {what} reaches below rhmc.lambda_min = {lo:e}: a Lanczos Ritz value \
                     ({} steps) is {:.4e}, an upper bound on its smallest eigenvalue; the rational approximation \
                     is not accurate there, so the chain would sample a wrong weight. Lower rhmc.lambda_min \
                     (below {:.4e}) and raise rhmc.degree to keep the error",
                    r.steps, r.min, r.min
                ),
            ));
        }
        if r.max > hi + slack {
            return Err(TermError::new(
                &self.name,
                format!(
                    "the spectrum of {what} reaches above rhmc.lambda_max = {hi:e}: a Lanczos Ritz value ({} \
                     steps) is {:.4e}, a lower bound on its largest eigenvalue; raise rhmc.lambda_max (or \
                     leave it out: the default is a bound on the norm)",
                    r.steps, r.max
                ),
            ));
        }
        Ok(())
    }
}

impl<G: WilsonGroup + bytemuck::Pod, const NS: usize> ActionTerm<QcdSpace> for RationalTerm<G, NS>
where
    G::Algebra: bytemuck::Pod,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn is_exact(&self) -> bool {
        false
    }

    fn refresh(&mut self, u: &Vec<f64>, rng: &mut Stream) -> Result<(), TermError> {
        let l = links::<G>(u);
        let mut st = self.state.borrow_mut();
        fill_gaussian(&mut st.y, rng).map_err(|e| TermError::new(&self.name, format!("heat bath: {e}")))?;
        self.check_spectrum(l, &mut st)?;
        self.solve(l, &mut st, &self.heat_bath_shifts, false, &self.solvers.action)
            .map_err(|e| self.fail("the heat-bath solve", e))?;
        let RationalState { phi, xs, y, mid: qy, s, .. } = &mut *st;
        let Scratch { tmp, clover, .. } = s;
        let scale = self.heat_bath.scale;
        // φ = scale·[η + Σ_l (−γ_l ν_l Y_l + iγ_l γ5 D Y_l)]
        phi.copy_from_slice(y);
        for (k, &(gamma, nu)) in self.heat_bath.terms.iter().enumerate() {
            axpy(-gamma * nu, &xs[k], phi);
            self.op
                .with_gauge(l, clover, |g| self.op.apply(g, &xs[k], tmp, qy))
                .map_err(|e| self.fail("the heat bath", e))?;
            self.op.dirac.gamma5(qy);
            let c = Complex::new(0.0, gamma);
            for (p, q) in phi.iter_mut().zip(qy.iter()) {
                for s in 0..NS {
                    p.0[s].add_assign(&q.0[s].mul_c(c));
                }
            }
        }
        phi.iter_mut().for_each(|p| {
            for s in 0..NS {
                p.0[s] = p.0[s].scale(scale);
            }
        });
        Ok(())
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        let l = links::<G>(u);
        let mut st = self.state.borrow_mut();
        self.solve(l, &mut st, &self.action_shifts, true, &self.solvers.action)
            .map_err(|e| self.fail("the action solve", e))?;
        let st = &*st;
        let mut s = self.action.constant * norm2(&st.phi);
        for (k, &(a, _)) in self.action.terms.iter().enumerate() {
            s += a * re_dot(&st.phi, &st.xs[k]);
        }
        Ok(s)
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        let l = links::<G>(u);
        let mut st = self.state.borrow_mut();
        self.solve(l, &mut st, &self.action_shifts, true, &self.solvers.force)
            .map_err(|e| self.fail("the force solve", e))?;
        let out = algebra_mut::<G>(out);
        out.iter_mut().for_each(|f| *f = G::Algebra::zero());
        let RationalState { xs, y, s, .. } = &mut *st;
        let Scratch { work, tmp, clover } = s;
        for (k, &(a, _)) in self.action.terms.iter().enumerate() {
            self.op
                .with_gauge(l, clover, |g| {
                    self.op.apply(g, &xs[k], tmp, y)?;
                    self.op.add_force(g, &xs[k], y, a, work, out)
                })
                .map_err(|e| self.fail("the force", e))?;
        }
        Ok(())
    }
}

/// The even–odd clover determinant term S_det = −Σ_{x odd} ln det(A(x)†A(x)) (exact, local):
/// with even–odd preconditioning det(D†D) = det(A_oo†A_oo)·det(D̂†D̂).
pub struct CloverDetTerm<G: WilsonGroup, const NS: usize> {
    pub dirac: WilsonDirac<G, NS>,
    pub clover: RefCell<CloverField>,
}

impl<G: WilsonGroup + bytemuck::Pod, const NS: usize> ActionTerm<QcdSpace> for CloverDetTerm<G, NS>
where
    G::Algebra: bytemuck::Pod,
{
    fn name(&self) -> &str {
        "clover_det"
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        let mut c = self.clover.borrow_mut();
        let g = self
            .dirac
            .clover_gauge(links::<G>(u), &mut c)
            .map_err(|e| self.error(e.to_string()))?;
        Ok(-self
            .dirac
            .clover_log_det(&g, Some(1))
            .map_err(|e| self.error(e.to_string()))?)
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        let mut c = self.clover.borrow_mut();
        let g = self
            .dirac
            .clover_gauge(links::<G>(u), &mut c)
            .map_err(|e| self.error(e.to_string()))?;
        self.dirac
            .clover_log_det_force(&g, Some(1), algebra_mut::<G>(out))
            .map_err(|e| self.error(e.to_string()))
    }
}
