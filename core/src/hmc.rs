//! Hybrid Monte Carlo, generic over the field's geometry, with composable, fallible actions.
//!
//! * [`FieldSpace`] is the geometry policy (Grid's "Impl"): momenta, kinetic energy, the field
//!   update. [`RealScalar`] is the flat-space case, [`Angles`] the periodic one (U(1) links,
//!   XY spins); gauge groups add their own.
//! * [`ActionTerm`] is one term of the action (a gauge action, a pseudofermion, a Hasenbusch
//!   ratio): an optional refresh (heat bath) at the start of a trajectory, its action and its
//!   force, each of which may fail with a [`TermError`] that names the term.
//! * [`LeveledAction`] is the whole action as a list of terms per time-scale *level* (Grid's
//!   ActionLevel): level 0 is the outermost time scale, integrated with the fewest steps.
//! * [`Schedule`] gives each level its own integrator [`Scheme`] and step count; [`integrate`]
//!   runs the nested integration.
//! * [`hmc_trajectory`] does the refreshes, integration and the accept test through the one
//!   shared [`metropolis_accept`]. A failing term aborts the trajectory with its error: there
//!   is never a silently wrong trajectory.
//!
//! Plugins call these generic functions with their own concrete types, so everything is
//! monomorphised inside the plugin and only one call per trajectory crosses the ABI (the
//! [`crate::sdk`] adapter does this for a plugin).

use crate::abi::{HmcParams, IntegratorKind, TrajectoryRecord};
use crate::rng::Stream;
use crate::sum::CompensatedSum;

/// The geometry of a field: how momenta are drawn and how the field moves along them.
pub trait FieldSpace {
    /// The field.
    type Field: Clone;
    /// Its conjugate momentum (for groups, an element of the Lie algebra per link).
    type Momentum: Clone;

    /// Draws momenta at the field `u` from exp(−kinetic(p)). Flat spaces and groups (momenta
    /// in the Lie algebra) ignore `u`; a curved space draws them in the tangent space at `u`.
    fn sample_momentum(&self, u: &Self::Field, rng: &mut Stream) -> Self::Momentum;
    /// A zero momentum (used as a force buffer).
    fn zero_momentum(&self) -> Self::Momentum;
    /// A copy of the field (HMC keeps the starting field for a rejection); `u.clone()` by
    /// default, a space may copy in parallel.
    fn copy_field(&self, u: &Self::Field) -> Self::Field {
        u.clone()
    }
    /// Kinetic energy K(p), compensated sum.
    fn kinetic(&self, p: &Self::Momentum) -> f64;
    /// Moves the field along p for MD time `eps` (u ← u + eps·p; for groups u ← exp(eps·p)·u).
    ///
    /// The momentum is mutable because on a curved field space it lives in the tangent space
    /// at u, so it must be transported along with the field (e.g. for spins on a sphere, p is
    /// rotated with the spin so that it stays tangent). Flat spaces and group manifolds (whose
    /// momenta live in the Lie algebra) leave it unchanged. The map must stay reversible:
    /// stepping by `eps` and then by `−eps` with the transported momentum returns (u, p).
    fn step_field(&self, u: &mut Self::Field, p: &mut Self::Momentum, eps: f64);
    /// p ← p − eps·f, where f is a force from [`ActionTerm::force`].
    fn kick(&self, p: &mut Self::Momentum, f: &Self::Momentum, eps: f64);
    /// Restores the field to its manifold after many updates (reunitarise, wrap angles);
    /// called at the end of each integration. Returns the largest correction it applied (the
    /// distance from the manifold before projecting, e.g. ‖U†U − 1‖ for links), which HMC
    /// records per trajectory; 0 where nothing leaves the manifold (the default: no-op).
    fn project(&self, _u: &mut Self::Field) -> f64 {
        0.0
    }
}

/// A failure of one action term: which term, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermError {
    /// The term's [`ActionTerm::name`].
    pub term: String,
    /// What went wrong (e.g. "CG did not converge in 1000 iterations, residual 3e-5").
    pub message: String,
}

impl TermError {
    /// An error of the term called `term`.
    pub fn new(term: impl Into<String>, message: impl Into<String>) -> Self {
        Self { term: term.into(), message: message.into() }
    }
}

impl std::fmt::Display for TermError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "action term '{}': {}", self.term, self.message)
    }
}

impl std::error::Error for TermError {}

/// One term of an action on the field space `S`.
pub trait ActionTerm<S: FieldSpace> {
    /// A short name that errors carry (e.g. `gauge`, `pseudofermion`).
    fn name(&self) -> &str;

    /// Whether [`ActionTerm::action`] is the exact action of this term (`true`), or only a
    /// stochastic estimate, e.g. a pseudofermion action whose expectation over the heat bath
    /// is the fermion determinant's. HMC is exact either way.
    fn is_exact(&self) -> bool {
        true
    }

    /// Refreshes the term's auxiliary fields at the start of a trajectory (e.g. a
    /// pseudofermion heat bath φ = M†η); a no-op by default.
    fn refresh(&mut self, _u: &S::Field, _rng: &mut Stream) -> Result<(), TermError> {
        Ok(())
    }

    /// The term's action at u (dimensionless), a compensated sum.
    fn action(&self, u: &S::Field) -> Result<f64, TermError>;

    /// Writes the term's force into `out` (overwriting it): the derivative of the action in
    /// momentum space, dS(exp(εX)·u)/dε = ⟨out, X⟩ (for a real or angle field simply ∂S/∂φ).
    fn force(&self, u: &S::Field, out: &mut S::Momentum) -> Result<(), TermError>;

    /// The momentum kick of this term, p ← p − eps·F(u) with F as [`ActionTerm::force`] writes
    /// it; `buf` is scratch space (its contents afterwards are unspecified). The default writes
    /// the force into `buf` and applies [`FieldSpace::kick`]. A term may fuse the two into one
    /// sweep over the lattice (one parallel region instead of two, and no force buffer to
    /// write and read back); it must give the same bits as the default.
    fn kick(&self, space: &S, u: &S::Field, p: &mut S::Momentum, eps: f64, buf: &mut S::Momentum) -> Result<(), TermError> {
        self.force(u, buf)?;
        space.kick(p, buf, eps);
        Ok(())
    }

    /// A kick followed by a drift in one sweep, where the term can fuse them: p ← p −
    /// eps_kick·F(u), then u moved along the new p for MD time `eps_drift`
    /// ([`FieldSpace::step_field`]); `buf` is scratch space (e.g. for the new field, since the
    /// force at one site reads the old field at its neighbours). Returns `Ok(false)` without
    /// touching anything where the term cannot (the default): the integrator then kicks and
    /// drifts separately. Where it returns `Ok(true)` it must give the same bits as
    /// [`ActionTerm::kick`] followed by `step_field`. The integrator only asks the single term
    /// of the innermost level, whose drift is a plain field step.
    fn kick_drift(
        &self,
        _space: &S,
        _u: &mut S::Field,
        _p: &mut S::Momentum,
        _eps_kick: f64,
        _eps_drift: f64,
        _buf: &mut S::Momentum,
    ) -> Result<bool, TermError> {
        Ok(false)
    }

    /// A [`TermError`] that names this term.
    fn error(&self, message: impl Into<String>) -> TermError
    where
        Self: Sized,
    {
        TermError::new(self.name(), message)
    }
}

/// A shared reference to an exact term is a term (so a theory that is itself its one term can
/// hand `Box::new(self)` to [`LeveledAction::single`]). A borrowed term is not refreshed, so
/// borrowing a stochastic term (pseudofermions, whose heat bath must run) is refused at the
/// first refresh: such a term must be owned by the action.
impl<S: FieldSpace, T: ActionTerm<S> + ?Sized> ActionTerm<S> for &T {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn is_exact(&self) -> bool {
        (**self).is_exact()
    }
    fn refresh(&mut self, _u: &S::Field, _rng: &mut Stream) -> Result<(), TermError> {
        if self.is_exact() {
            return Ok(());
        }
        Err(TermError::new(
            self.name(),
            "a stochastic term must be owned by the action, not borrowed (its refresh must run)",
        ))
    }
    fn action(&self, u: &S::Field) -> Result<f64, TermError> {
        (**self).action(u)
    }
    fn force(&self, u: &S::Field, out: &mut S::Momentum) -> Result<(), TermError> {
        (**self).force(u, out)
    }
    fn kick(&self, space: &S, u: &S::Field, p: &mut S::Momentum, eps: f64, buf: &mut S::Momentum) -> Result<(), TermError> {
        (**self).kick(space, u, p, eps, buf)
    }
    fn kick_drift(
        &self,
        space: &S,
        u: &mut S::Field,
        p: &mut S::Momentum,
        eps_kick: f64,
        eps_drift: f64,
        buf: &mut S::Momentum,
    ) -> Result<bool, TermError> {
        (**self).kick_drift(space, u, p, eps_kick, eps_drift, buf)
    }
}

/// A boxed action term.
pub type Term<'a, S> = Box<dyn ActionTerm<S> + 'a>;

/// An action S = Σ_levels Σ_terms S_term, as a list of terms per time-scale level (level 0
/// outermost). Each level's force is applied term by term.
pub struct LeveledAction<'a, S: FieldSpace> {
    levels: Vec<Vec<Term<'a, S>>>,
    total: Option<TotalAction<'a, S>>,
}

/// A one-pass evaluation of the summed action, see [`LeveledAction::with_total`].
pub type TotalAction<'a, S> = Box<dyn Fn(&<S as FieldSpace>::Field) -> f64 + 'a>;

impl<S: FieldSpace> std::fmt::Debug for LeveledAction<'_, S> {
    /// The term names per level, e.g. `[["gauge"], ["pseudofermion"]]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<Vec<&str>> = self.levels.iter().map(|l| l.iter().map(|t| t.name()).collect()).collect();
        write!(f, "LeveledAction{names:?}")
    }
}

impl<'a, S: FieldSpace> LeveledAction<'a, S> {
    /// The action with these levels of terms. Errors if there is no level or a level has no
    /// term.
    pub fn new(levels: Vec<Vec<Term<'a, S>>>) -> Result<Self, String> {
        if levels.is_empty() {
            return Err("an action needs at least one level".into());
        }
        if let Some(l) = levels.iter().position(|terms| terms.is_empty()) {
            return Err(format!("time-scale level {l} of the action has no term"));
        }
        Ok(Self { levels, total: None })
    }

    /// A one-level action of one term.
    pub fn single(term: Term<'a, S>) -> Self {
        Self { levels: vec![vec![term]], total: None }
    }

    /// The same action, whose total [`LeveledAction::action`] is evaluated by `total` in one
    /// pass instead of term by term (e.g. one sweep over the lattice instead of one per term;
    /// it then also rounds exactly like the theory's own action). `total` must equal the sum
    /// of the terms' actions up to rounding (the [`crate::testkit`] checks it), and is only
    /// allowed when every term is exact, since a stochastic term's action changes with its
    /// refresh; otherwise it is ignored.
    pub fn with_total(mut self, total: impl Fn(&S::Field) -> f64 + 'a) -> Self {
        if self.is_exact() {
            self.total = Some(Box::new(total));
        }
        self
    }

    /// Number of levels (≥ 1).
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// The terms of each level.
    pub fn terms(&self) -> &[Vec<Term<'a, S>>] {
        &self.levels
    }

    /// Whether every term's action is exact.
    pub fn is_exact(&self) -> bool {
        self.levels.iter().flatten().all(|t| t.is_exact())
    }

    /// The total action: the one-pass total if one was given ([`LeveledAction::with_total`]),
    /// else the sum over all terms in level order (compensated; a single term's value
    /// unchanged).
    pub fn action(&self, u: &S::Field) -> Result<f64, TermError> {
        if let Some(total) = &self.total {
            return Ok(total(u));
        }
        self.sum_of_terms(u)
    }

    /// The sum of the terms' actions, in level order (compensated; a single term's value
    /// unchanged), ignoring any one-pass total.
    pub fn sum_of_terms(&self, u: &S::Field) -> Result<f64, TermError> {
        if let [level] = self.levels.as_slice() {
            if let [term] = level.as_slice() {
                return term.action(u);
            }
        }
        let mut sum = CompensatedSum::new();
        for term in self.levels.iter().flatten() {
            sum.add(term.action(u)?);
        }
        Ok(sum.value())
    }

    /// Refreshes every term, in level order.
    pub fn refresh(&mut self, u: &S::Field, rng: &mut Stream) -> Result<(), TermError> {
        for term in self.levels.iter_mut().flatten() {
            term.refresh(u, rng)?;
        }
        Ok(())
    }

    /// The field moved by `eps` along the force of `level` (u' = u + eps·F for flat spaces,
    /// exp(eps·F)·u for groups), for force-gradient kicks; `buf` is scratch space.
    pub fn shifted_along_force(
        &self,
        space: &S,
        level: usize,
        u: &S::Field,
        eps: f64,
        buf: &mut S::Momentum,
    ) -> Result<S::Field, TermError> {
        let mut force = space.zero_momentum();
        for term in &self.levels[level] {
            term.force(u, buf)?;
            space.kick(&mut force, buf, -1.0);
        }
        let mut shifted = u.clone();
        space.step_field(&mut shifted, &mut force, eps);
        Ok(shifted)
    }

    /// p ← p − eps·F_level(u), term by term ([`ActionTerm::kick`]); `buf` is scratch space.
    pub fn kick(
        &self,
        space: &S,
        level: usize,
        u: &S::Field,
        p: &mut S::Momentum,
        eps: f64,
        buf: &mut S::Momentum,
    ) -> Result<(), TermError> {
        for term in &self.levels[level] {
            term.kick(space, u, p, eps, buf)?;
        }
        Ok(())
    }


    /// A kick of `level` by `eps_kick` and a drift by `eps_drift` in one sweep
    /// ([`ActionTerm::kick_drift`]) where the level has a single term that can fuse them;
    /// `Ok(false)`, with nothing done, otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn kick_drift(
        &self,
        space: &S,
        level: usize,
        u: &mut S::Field,
        p: &mut S::Momentum,
        eps_kick: f64,
        eps_drift: f64,
        buf: &mut S::Momentum,
    ) -> Result<bool, TermError> {
        match self.levels[level].as_slice() {
            [term] => term.kick_drift(space, u, p, eps_kick, eps_drift, buf),
            _ => Ok(false),
        }
    }
}

/// A molecular-dynamics integration scheme for one level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// Leapfrog (velocity Verlet): P(h/2) U(h) P(h/2). Error O(h²).
    Leapfrog,
    /// Omelyan–Mryglod–Folk 2nd order minimum-norm: P(λh) U(h/2) P((1−2λ)h) U(h/2) P(λh).
    /// λ = 0.1931833 is the usual choice.
    Omelyan2 { lambda: f64 },
    /// Omelyan–Mryglod–Folk 4th order (Comput. Phys. Commun. 151 (2003) 272, eq. 71):
    /// P(ξh) U((1−2λ)h/2) P(χh) U(λh) P((1−2(χ+ξ))h) U(λh) P(χh) U((1−2λ)h/2) P(ξh). Error O(h⁴).
    Omelyan4,
    /// Force-gradient (Chin's 4th-order scheme C, as used for lattice QCD by Kennedy, Clark
    /// and Silva): P(h/6) U(h/2) P̃(2h/3) U(h/2) P(h/6), where the middle kick P̃ applies the
    /// force F = ∂S at the field moved by −h²/24 along F (u' = u − (h²/24)F, for groups
    /// exp(−(h²/24)F)·u), which is the force of the modified potential that cancels the h²
    /// error to the needed order. Error O(h⁴), with one force evaluation more per step than
    /// Omelyan-2.
    ForceGradient,
}

/// The usual Omelyan-2 parameter.
pub const OMELYAN_LAMBDA: f64 = 0.193_183_327_503_783_6;
const OMF4_XI: f64 = 0.178_617_895_844_809_1;
const OMF4_LAMBDA: f64 = -0.212_341_831_062_605_4;
#[allow(clippy::excessive_precision)] // the published digits, kept as printed
const OMF4_CHI: f64 = -0.066_264_582_669_818_49;

#[derive(Clone, Copy)]
enum Op {
    Kick(f64),
    Drift(f64),
    /// A force-gradient kick: p ← p − c·h·F(u'), u' = u moved by ξh² along F(u) (ξ < 0:
    /// against it).
    GradientKick {
        c: f64,
        xi: f64,
    },
}

impl Scheme {
    fn ops(&self) -> Vec<Op> {
        use Op::*;
        match *self {
            Scheme::Leapfrog => vec![Kick(0.5), Drift(1.0), Kick(0.5)],
            Scheme::Omelyan2 { lambda } => {
                vec![Kick(lambda), Drift(0.5), Kick(1.0 - 2.0 * lambda), Drift(0.5), Kick(lambda)]
            }
            Scheme::ForceGradient => {
                vec![
                    Kick(1.0 / 6.0),
                    Drift(0.5),
                    GradientKick { c: 2.0 / 3.0, xi: -1.0 / 24.0 },
                    Drift(0.5),
                    Kick(1.0 / 6.0),
                ]
            }
            Scheme::Omelyan4 => {
                let (xi, la, chi) = (OMF4_XI, OMF4_LAMBDA, OMF4_CHI);
                vec![
                    Kick(xi),
                    Drift(0.5 * (1.0 - 2.0 * la)),
                    Kick(chi),
                    Drift(la),
                    Kick(1.0 - 2.0 * (chi + xi)),
                    Drift(la),
                    Kick(chi),
                    Drift(0.5 * (1.0 - 2.0 * la)),
                    Kick(xi),
                ]
            }
        }
    }
}

/// One level of a [`Schedule`]: its scheme and its step count (for level 0 the steps per
/// trajectory, for an inner level the sub-steps per drift of the level above).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelSchedule {
    pub steps: u32,
    pub scheme: Scheme,
}

/// A nested integration schedule: total MD time `tau`, and one [`LevelSchedule`] per action
/// level (level 0 outermost).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub tau: f64,
    pub levels: Vec<LevelSchedule>,
    /// Trajectory-length randomisation, see [`HmcParams::jitter`].
    pub jitter: f64,
}

impl Schedule {
    /// Builds a schedule from the plain-data parameters that cross the ABI, with the same
    /// scheme on every level (set another per level with [`Schedule::with_scheme`]). `levels`
    /// is the action's level count: extra inner levels without sub-step counts get 1 sub-step;
    /// more sub-step counts than inner levels is an error.
    pub fn from_params(p: &HmcParams, levels: usize) -> Result<Self, String> {
        if !(p.trajectory_length.is_finite() && p.trajectory_length > 0.0) {
            return Err(format!("trajectory_length must be a positive number, got {}", p.trajectory_length));
        }
        if p.md_steps == 0 {
            return Err("md_steps must be at least 1".into());
        }
        if p.inner_steps.len() + 1 > levels.max(1) {
            return Err(format!(
                "{} nested time scales requested but this action has {} level(s)",
                p.inner_steps.len() + 1,
                levels
            ));
        }
        if !(p.jitter.is_finite() && (0.0..1.0).contains(&p.jitter)) {
            return Err(format!("trajectory_jitter must lie in [0, 1), got {}", p.jitter));
        }
        if p.inner_steps.contains(&0) {
            return Err("every nested time-scale step count must be at least 1".into());
        }
        let scheme = Scheme::from_params(p)?;
        let mut steps = vec![p.md_steps];
        steps.extend(p.inner_steps.iter().copied());
        steps.resize(levels.max(1), 1);
        let levels = steps.into_iter().map(|steps| LevelSchedule { steps, scheme }).collect();
        Ok(Self { tau: p.trajectory_length, levels, jitter: p.jitter })
    }

    /// The same schedule with `scheme` on `level` (ignored for a level that does not exist).
    pub fn with_scheme(mut self, level: usize, scheme: Scheme) -> Self {
        if let Some(l) = self.levels.get_mut(level) {
            l.scheme = scheme;
        }
        self
    }

    /// The step counts, level 0 first.
    pub fn steps(&self) -> Vec<u32> {
        self.levels.iter().map(|l| l.steps).collect()
    }
}

impl Scheme {
    /// The scheme that [`HmcParams::integrator`] names (checking λ for Omelyan-2). An
    /// integrator code this build does not know is an error that asks for a rebuild.
    pub fn from_params(p: &HmcParams) -> Result<Self, String> {
        match p.integrator {
            IntegratorKind::Leapfrog => Ok(Scheme::Leapfrog),
            IntegratorKind::Omelyan2 => {
                if !(p.omelyan_lambda.is_finite() && p.omelyan_lambda > 0.0 && p.omelyan_lambda < 0.5) {
                    return Err(format!("omelyan_lambda must lie in (0, 0.5), got {}", p.omelyan_lambda));
                }
                Ok(Scheme::Omelyan2 { lambda: p.omelyan_lambda })
            }
            IntegratorKind::Omelyan4 => Ok(Scheme::Omelyan4),
            IntegratorKind::ForceGradient => Ok(Scheme::ForceGradient),
            other => Err(format!(
                "integrator {other:?} is not known to this plugin's latflow-core {}: rebuild the plugin \
                 against the host's latflow-core",
                crate::CORE_VERSION
            )),
        }
    }
}

/// Integrates (u, p) for MD time `schedule.tau`. `force_buf` is scratch space. The schedule
/// must have one level per action level.
///
/// Consecutive kicks of one level with no drift in between act on the same field and are merged
/// into one force evaluation, so leapfrog with n steps costs n+1 outer forces, Omelyan-2 2n+1.
/// A failing term stops the integration with its error ((u, p) are then meaningless).
pub fn integrate<S: FieldSpace>(
    space: &S,
    action: &LeveledAction<'_, S>,
    u: &mut S::Field,
    p: &mut S::Momentum,
    schedule: &Schedule,
    force_buf: &mut S::Momentum,
) -> Result<f64, TermError> {
    assert_eq!(schedule.levels.len(), action.levels(), "the schedule needs one level per action level");
    evolve(space, action, u, p, schedule, 0, schedule.tau, force_buf)?;
    Ok(space.project(u))
}

fn evolve<S: FieldSpace>(
    space: &S,
    action: &LeveledAction<'_, S>,
    u: &mut S::Field,
    p: &mut S::Momentum,
    schedule: &Schedule,
    level: usize,
    time: f64,
    force_buf: &mut S::Momentum,
) -> Result<(), TermError> {
    let LevelSchedule { steps: n, scheme } = schedule.levels[level];
    let h = time / f64::from(n);
    let ops = scheme.ops();
    let innermost = level + 1 == schedule.levels.len();
    let mut pending = 0.0;
    for _ in 0..n {
        for op in &ops {
            match *op {
                Op::Kick(c) => pending += c,
                Op::GradientKick { c, xi } => {
                    if pending != 0.0 {
                        action.kick(space, level, u, p, pending * h, force_buf)?;
                        pending = 0.0;
                    }
                    let shifted = action.shifted_along_force(space, level, u, xi * h * h, force_buf)?;
                    action.kick(space, level, &shifted, p, c * h, force_buf)?;
                }
                Op::Drift(c) => {
                    if pending != 0.0 {
                        // on the innermost level a lone term may kick and drift in one sweep
                        if innermost && action.kick_drift(space, level, u, p, pending * h, c * h, force_buf)? {
                            pending = 0.0;
                            continue;
                        }
                        action.kick(space, level, u, p, pending * h, force_buf)?;
                        pending = 0.0;
                    }
                    if innermost {
                        space.step_field(u, p, c * h);
                    } else {
                        evolve(space, action, u, p, schedule, level + 1, c * h, force_buf)?;
                    }
                }
            }
        }
    }
    if pending != 0.0 {
        action.kick(space, level, u, p, pending * h, force_buf)?;
    }
    Ok(())
}

/// λ_k of a palindromic annealing schedule with `n` ≥ 1 stages each way: `v` at k = 0 and
/// k = 2n, `to` at k = n, linear in between (λ_k = v + (to − v)(1 − |k − n|/n)), so that
/// λ_k = λ_{2n−k}. Shared by the host's `anneal` step and theory steps that anneal.
pub fn palindrome_lambda(v: f64, to: f64, n: u32, k: u32) -> f64 {
    if k == 0 || k == 2 * n {
        return v;
    }
    let frac = 1.0 - (k as f64 - n as f64).abs() / n as f64;
    v + (to - v) * frac
}

/// The shared Metropolis test: accepts with probability min(1, exp(log_ratio)).
///
/// Always draws exactly one uniform, so that the stream's position does not depend on the
/// outcome. A NaN log-ratio is rejected (callers report NaN inputs as errors before this).
pub fn metropolis_accept(log_ratio: f64, rng: &mut Stream) -> bool {
    let r = rng.uniform();
    if log_ratio.is_nan() {
        return false;
    }
    log_ratio >= 0.0 || r < log_ratio.exp()
}

/// Why a trajectory could not be run.
#[derive(Debug, Clone, PartialEq)]
pub enum HmcError {
    /// The action of the starting configuration is not finite.
    NonFiniteStart { action: f64 },
    /// An action term failed (refresh, action or force).
    Term(TermError),
    /// The schedule does not fit the action.
    Schedule(String),
}

impl std::fmt::Display for HmcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HmcError::NonFiniteStart { action } => {
                write!(f, "the action of the starting configuration is not finite ({action})")
            }
            HmcError::Term(e) => e.fmt(f),
            HmcError::Schedule(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HmcError {}

impl From<TermError> for HmcError {
    fn from(e: TermError) -> Self {
        HmcError::Term(e)
    }
}

/// One HMC trajectory: refresh the terms' auxiliary fields and the momenta, integrate,
/// Metropolis test on ΔH.
///
/// With `schedule.jitter > 0` the trajectory length is first drawn uniformly from
/// τ·[1 − jitter, 1 + jitter] (independently of the state, so detailed balance holds).
///
/// On acceptance `u` holds the new configuration; on rejection it is unchanged. A trajectory
/// whose final H is not finite (an MD instability) is rejected and recorded with ΔH = +∞.
/// A failing term is an error (and `u` is unchanged). With `accept_reject == false` every
/// trajectory is accepted (an explicit, recorded option for tests of the integrator, never a
/// default).
pub fn hmc_trajectory<S: FieldSpace>(
    space: &S,
    action: &mut LeveledAction<'_, S>,
    u: &mut S::Field,
    schedule: &Schedule,
    accept_reject: bool,
    rng: &mut Stream,
) -> Result<TrajectoryRecord, HmcError> {
    if schedule.levels.len() != action.levels() {
        return Err(HmcError::Schedule(format!(
            "the schedule has {} level(s) but the action has {}",
            schedule.levels.len(),
            action.levels()
        )));
    }
    let jittered;
    let schedule = if schedule.jitter > 0.0 {
        let scale = 1.0 + schedule.jitter * (2.0 * rng.uniform() - 1.0);
        jittered = Schedule { tau: schedule.tau * scale, ..schedule.clone() };
        &jittered
    } else {
        schedule
    };
    action.refresh(u, rng)?;
    let mut p = space.sample_momentum(u, rng);
    let s0 = action.action(u)?;
    if !s0.is_finite() {
        return Err(HmcError::NonFiniteStart { action: s0 });
    }
    let k0 = space.kinetic(&p);
    let mut v = space.copy_field(u);
    let mut buf = space.zero_momentum();
    let projection = integrate(space, action, &mut v, &mut p, schedule, &mut buf)?;
    let s1 = action.action(&v)?;
    let k1 = space.kinetic(&p);
    let mut dh = CompensatedSum::new();
    dh.add(s1);
    dh.add(-s0);
    dh.add(k1);
    dh.add(-k0);
    let delta_h = if dh.value().is_finite() { dh.value() } else { f64::INFINITY };
    let accepted = if accept_reject { metropolis_accept(-delta_h, rng) } else { true };
    let action_after = if accepted {
        *u = v;
        s1
    } else {
        s0
    };
    Ok(TrajectoryRecord { accepted, delta_h, action: action_after, projection })
}

/// The field space of one real number per degree of freedom, with H = ½ Σ p² + S.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealScalar {
    /// Number of real degrees of freedom.
    pub len: usize,
}

impl FieldSpace for RealScalar {
    type Field = Vec<f64>;
    type Momentum = Vec<f64>;

    /// N(0, 1) momenta drawn as a [`fill_random`](crate::gauge::parallel::fill_random): chunks
    /// of 256 reals, each from its own counter range of the stream, in parallel for long
    /// vectors and with the same bits for any thread count (as the gauge link spaces draw).
    fn sample_momentum(&self, _u: &Vec<f64>, rng: &mut Stream) -> Vec<f64> {
        let mut p = self.zero_momentum();
        if let Err(e) = crate::gauge::parallel::fill_random(&mut p, rng, |s, x| *x = s.normal()) {
            panic!("momentum refresh: {e}");
        }
        p
    }

    /// Zeros written in parallel for long vectors (each part by the thread that later works
    /// on it).
    fn zero_momentum(&self) -> Vec<f64> {
        if self.len >= PARALLEL_MIN_REALS && crate::par::threads() > 1 {
            crate::par::filled(self.len, 0.0, UPDATE_CHUNK)
        } else {
            vec![0.0; self.len]
        }
    }

    /// Copied in parallel for long vectors, as [`RealScalar::zero_momentum`] zeros.
    fn copy_field(&self, u: &Vec<f64>) -> Vec<f64> {
        if u.len() >= PARALLEL_MIN_REALS && crate::par::threads() > 1 {
            crate::par::copy_of(u, UPDATE_CHUNK)
        } else {
            u.clone()
        }
    }

    /// ½ Σ p², compensated sums over fixed chunks of 1024 reals merged in order
    /// ([`sum_sites`](crate::gauge::parallel::sum_sites)): parallel for long vectors, the same
    /// bits for any thread count.
    fn kinetic(&self, p: &Vec<f64>) -> f64 {
        0.5 * crate::gauge::parallel::sum_sites(p.len(), |i, s| s.add(p[i] * p[i]))
    }

    fn step_field(&self, u: &mut Vec<f64>, p: &mut Vec<f64>, eps: f64) {
        update_pairs(u, p, |x, q| *x += eps * q);
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        update_pairs(p, f, |q, g| *q -= eps * g);
    }
}

/// Element-wise updates of at least this many reals run in parallel (on the caller's threads,
/// [`crate::par`], when it has more than one).
const PARALLEL_MIN_REALS: usize = 16384;
/// Reals per parallel task.
const UPDATE_CHUNK: usize = 4096;

/// `f(a[i], b[i])` for every i, in fixed chunks, in parallel for long vectors. Each element's
/// result depends on its own inputs alone, so the bits never depend on the thread count.
fn update_pairs(a: &mut [f64], b: &[f64], f: impl Fn(&mut f64, f64) + Sync) {
    if a.len() >= PARALLEL_MIN_REALS && crate::par::threads() > 1 {
        crate::par::chunks_mut(a, UPDATE_CHUNK, |k, x| {
            x.iter_mut().zip(&b[k * UPDATE_CHUNK..]).for_each(|(x, &y)| f(x, y));
        });
    } else {
        a.iter_mut().zip(b).for_each(|(x, &y)| f(x, y));
    }
}

pub use crate::gauge::wrap_angle;

/// Angles with real momenta, H = ½ Σ p² + S (U(1) links, XY spins): the exponential map of
/// U(1) is θ ← θ + εp. [`FieldSpace::project`] wraps every angle into (−π, π] at the end of
/// each integration, so stored angles stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Angles {
    /// Number of angles.
    pub len: usize,
}

impl FieldSpace for Angles {
    type Field = Vec<f64>;
    type Momentum = Vec<f64>;

    fn sample_momentum(&self, u: &Vec<f64>, rng: &mut Stream) -> Vec<f64> {
        RealScalar { len: self.len }.sample_momentum(u, rng)
    }

    fn zero_momentum(&self) -> Vec<f64> {
        vec![0.0; self.len]
    }

    fn kinetic(&self, p: &Vec<f64>) -> f64 {
        RealScalar { len: self.len }.kinetic(p)
    }

    fn step_field(&self, u: &mut Vec<f64>, p: &mut Vec<f64>, eps: f64) {
        RealScalar { len: self.len }.step_field(u, p, eps)
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        RealScalar { len: self.len }.kick(p, f, eps)
    }

    /// Wraps every angle into (−π, π]: a change of representative, not of the group element,
    /// so the recorded correction is 0.
    fn project(&self, u: &mut Vec<f64>) -> f64 {
        u.iter_mut().for_each(|t| *t = wrap_angle(*t));
        0.0
    }
}

/// Unit n-vectors per site (O(n) spins, n ≥ 2): a curved field space. The field holds `sites`
/// vectors of `n` reals, `[site][component]`; each momentum is a tangent vector at its spin
/// (p_x · s_x = 0), with H = ½ Σ |p|² + S.
///
/// * Momenta are drawn as isotropic Gaussians projected onto the tangent plane at the current
///   spin, which is the (n−1)-dimensional Gaussian e^{−|p|²/2} on that plane.
/// * [`FieldSpace::step_field`] follows the exact geodesic (a great circle) for time ε and
///   transports the momentum with it: with ω = |p|, s ← s cos ωε + (p/ω) sin ωε and
///   p ← p cos ωε − s ω sin ωε. This flow is exact, volume-preserving and reversible.
/// * Forces must be tangent vectors: the Euclidean gradient ∂S/∂s projected onto the tangent
///   plane, g − (g·s)s (the Riemannian gradient); [`FieldSpace::kick`] then keeps p tangent.
/// * [`FieldSpace::project`] renormalises every spin against rounding drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spheres {
    /// Components per spin (n = 3 for the O(3) model).
    pub n: usize,
    /// Number of spins.
    pub sites: usize,
}

impl FieldSpace for Spheres {
    type Field = Vec<f64>;
    type Momentum = Vec<f64>;

    fn sample_momentum(&self, u: &Vec<f64>, rng: &mut Stream) -> Vec<f64> {
        let mut p = vec![0.0; self.n * self.sites];
        rng.fill_normal(&mut p);
        for (q, s) in p.chunks_mut(self.n).zip(u.chunks(self.n)) {
            let along: f64 = q.iter().zip(s).map(|(a, b)| a * b).sum();
            q.iter_mut().zip(s).for_each(|(a, b)| *a -= along * b);
        }
        p
    }

    fn zero_momentum(&self) -> Vec<f64> {
        vec![0.0; self.n * self.sites]
    }

    fn kinetic(&self, p: &Vec<f64>) -> f64 {
        RealScalar { len: p.len() }.kinetic(p)
    }

    fn step_field(&self, u: &mut Vec<f64>, p: &mut Vec<f64>, eps: f64) {
        for (s, q) in u.chunks_mut(self.n).zip(p.chunks_mut(self.n)) {
            let omega = q.iter().map(|a| a * a).sum::<f64>().sqrt();
            if omega == 0.0 {
                continue;
            }
            let (sin, cos) = (omega * eps).sin_cos();
            for (a, b) in s.iter_mut().zip(q.iter_mut()) {
                let (s0, q0) = (*a, *b);
                *a = s0 * cos + q0 / omega * sin;
                *b = q0 * cos - s0 * omega * sin;
            }
        }
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        RealScalar { len: p.len() }.kick(p, f, eps)
    }

    /// Renormalises every spin; the correction is the largest |1 − |s||.
    fn project(&self, u: &mut Vec<f64>) -> f64 {
        let mut worst = 0.0f64;
        for s in u.chunks_mut(self.n) {
            let norm = s.iter().map(|a| a * a).sum::<f64>().sqrt();
            worst = worst.max((1.0 - norm).abs());
            s.iter_mut().for_each(|a| *a /= norm);
        }
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::batch_means;
    use abi_stable::std_types::RVec;

    /// S = Σ a x²/2.
    struct Quadratic(f64);
    /// S = Σ b x⁴/4.
    struct Quartic(f64);
    /// S = Σ (a x²/2 + b x⁴/4), as one term.
    struct Both(f64, f64);

    impl ActionTerm<RealScalar> for Quadratic {
        fn name(&self) -> &str {
            "quadratic"
        }
        fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(crate::sum::compensated_sum(u.iter().map(|x| 0.5 * self.0 * x * x)))
        }
        fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            out.iter_mut().zip(u).for_each(|(o, x)| *o = self.0 * x);
            Ok(())
        }
    }

    impl ActionTerm<RealScalar> for Quartic {
        fn name(&self) -> &str {
            "quartic"
        }
        fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(crate::sum::compensated_sum(u.iter().map(|x| 0.25 * self.0 * x.powi(4))))
        }
        fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            out.iter_mut().zip(u).for_each(|(o, x)| *o = self.0 * x.powi(3));
            Ok(())
        }
    }

    impl ActionTerm<RealScalar> for Both {
        fn name(&self) -> &str {
            "both"
        }
        fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(crate::sum::compensated_sum(u.iter().map(|x| 0.5 * self.0 * x * x + 0.25 * self.1 * x.powi(4))))
        }
        fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            out.iter_mut().zip(u).for_each(|(o, x)| *o = self.0 * x + self.1 * x.powi(3));
            Ok(())
        }
    }

    /// [`Both`], with its kick and its kick-then-drift fused into one sweep each.
    struct FusedBoth(f64, f64);

    impl ActionTerm<RealScalar> for FusedBoth {
        fn name(&self) -> &str {
            "fused"
        }
        fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
            Both(self.0, self.1).action(u)
        }
        fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            Both(self.0, self.1).force(u, out)
        }
        fn kick(&self, _: &RealScalar, u: &Vec<f64>, p: &mut Vec<f64>, eps: f64, _: &mut Vec<f64>) -> Result<(), TermError> {
            p.iter_mut().zip(u).for_each(|(q, x)| *q -= eps * (self.0 * x + self.1 * x.powi(3)));
            Ok(())
        }
        fn kick_drift(
            &self,
            _: &RealScalar,
            u: &mut Vec<f64>,
            p: &mut Vec<f64>,
            eps_kick: f64,
            eps_drift: f64,
            _: &mut Vec<f64>,
        ) -> Result<bool, TermError> {
            for (x, q) in u.iter_mut().zip(p.iter_mut()) {
                *q -= eps_kick * (self.0 * *x + self.1 * x.powi(3));
                *x += eps_drift * *q;
            }
            Ok(true)
        }
    }

    /// A term's fused kick and kick-then-drift give the integrator the bits of the separate
    /// force, kick and drift, for every scheme, alone and as the inner level of a split; the
    /// outer level of a split has a drift that is a whole inner integration, which is never
    /// fused.
    #[test]
    fn fused_kicks_and_drifts_give_the_same_bits() {
        for kind in IntegratorKind::KNOWN.iter().copied() {
            for nested in [false, true] {
                let inner: &[u32] = if nested { &[3] } else { &[] };
                let (plain, fused) = if nested {
                    (
                        LeveledAction::new(vec![vec![Box::new(Both(1.3, 0.0)) as Term<'_, _>], vec![Box::new(Both(0.0, 0.7))]]),
                        LeveledAction::new(vec![vec![Box::new(FusedBoth(1.3, 0.0)) as Term<'_, _>], vec![Box::new(FusedBoth(0.0, 0.7))]]),
                    )
                } else {
                    (Ok(LeveledAction::single(Box::new(Both(1.3, 0.7)))), Ok(LeveledAction::single(Box::new(FusedBoth(1.3, 0.7)))))
                };
                let (plain, fused) = (plain.unwrap(), fused.unwrap());
                let sched = Schedule::from_params(&params(kind, 5, inner), plain.levels()).unwrap();
                let (u0, p0, dh0) = run(&plain, &sched);
                let (u1, p1, dh1) = run(&fused, &sched);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&u0), bits(&u1), "{kind:?}, nested {nested}: field");
                assert_eq!(bits(&p0), bits(&p1), "{kind:?}, nested {nested}: momenta");
                assert_eq!(dh0.to_bits(), dh1.to_bits());
            }
        }
    }

    /// Anharmonic oscillators, a = 1.3, b = 0.7: one term, or split over two levels.
    fn anharmonic(split: bool) -> LeveledAction<'static, RealScalar> {
        if split {
            LeveledAction::new(vec![vec![Box::new(Quadratic(1.3))], vec![Box::new(Quartic(0.7))]]).unwrap()
        } else {
            LeveledAction::single(Box::new(Both(1.3, 0.7)))
        }
    }

    fn params(kind: IntegratorKind, steps: u32, inner: &[u32]) -> HmcParams {
        HmcParams { md_steps: steps, integrator: kind, inner_steps: RVec::from(inner.to_vec()), ..HmcParams::default() }
    }

    /// (u, p) after integrating from a fixed random start, and ΔH.
    fn run(act: &LeveledAction<'_, RealScalar>, sched: &Schedule) -> (Vec<f64>, Vec<f64>, f64) {
        let space = RealScalar { len: 16 };
        let mut rng = Stream::new(11, 0);
        let mut u = space.sample_momentum(&vec![0.0; 16], &mut rng);
        let mut p = space.sample_momentum(&u, &mut rng);
        let h0 = space.kinetic(&p) + act.action(&u).unwrap();
        let mut buf = space.zero_momentum();
        integrate(&space, act, &mut u, &mut p, sched, &mut buf).unwrap();
        let dh = space.kinetic(&p) + act.action(&u).unwrap() - h0;
        (u, p, dh)
    }

    fn delta_h(kind: IntegratorKind, steps: u32, inner: &[u32], split: bool) -> f64 {
        let act = anharmonic(split);
        run(&act, &Schedule::from_params(&params(kind, steps, inner), act.levels()).unwrap()).2
    }

    fn assert_reversible(act: &LeveledAction<'_, RealScalar>, sched: &Schedule, what: &str) {
        let space = RealScalar { len: 16 };
        let mut rng = Stream::new(5, 0);
        let u0 = space.sample_momentum(&vec![0.0; 16], &mut rng);
        let p0 = space.sample_momentum(&u0, &mut rng);
        let (mut u, mut p) = (u0.clone(), p0.clone());
        let mut buf = space.zero_momentum();
        integrate(&space, act, &mut u, &mut p, sched, &mut buf).unwrap();
        p.iter_mut().for_each(|x| *x = -*x);
        integrate(&space, act, &mut u, &mut p, sched, &mut buf).unwrap();
        for (a, b) in u.iter().zip(&u0) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{what}: {a} vs {b}");
        }
        for (a, b) in p.iter().zip(&p0) {
            assert!((a + b).abs() <= 1e-12 * b.abs().max(1.0), "{what}");
        }
    }

    #[test]
    fn reversibility() {
        for kind in IntegratorKind::KNOWN.iter().copied() {
            for (inner, split) in [(&[][..], false), (&[3][..], true)] {
                let act = anharmonic(split);
                let sched = Schedule::from_params(&params(kind, 7, inner), act.levels()).unwrap();
                assert_reversible(&act, &sched, &format!("{kind:?} {inner:?}"));
            }
        }
    }

    /// log2 of the ratio |ΔH(n)| / |ΔH(2n)|: for a single trajectory ΔH ∝ h^p with p = 2
    /// (2nd-order schemes) or 4 (OMF4).
    fn order(kind: IntegratorKind, inner: &[u32], split: bool) -> f64 {
        let d1 = delta_h(kind, 16, inner, split).abs();
        let d2 = delta_h(kind, 32, inner, split).abs();
        (d1 / d2).log2()
    }

    #[test]
    fn delta_h_scaling() {
        for (inner, split) in [(&[][..], false), (&[2][..], true)] {
            let lf = order(IntegratorKind::Leapfrog, inner, split);
            let om = order(IntegratorKind::Omelyan2, inner, split);
            let o4 = order(IntegratorKind::Omelyan4, inner, split);
            let fg = order(IntegratorKind::ForceGradient, inner, split);
            assert!((fg - 4.0).abs() < 0.3, "force-gradient order {fg}");
            println!("orders {inner:?}: leapfrog {lf:.3}, omelyan2 {om:.3}, omelyan4 {o4:.3}, force-gradient {fg:.3}");
            assert!((lf - 2.0).abs() < 0.2, "leapfrog order {lf}");
            assert!((om - 2.0).abs() < 0.2, "omelyan2 order {om}");
            assert!((o4 - 4.0).abs() < 0.3, "omelyan4 order {o4}");
        }
    }

    #[test]
    fn nested_with_one_substep_equals_flat_split_sum() {
        // With equal forces on both levels merged, a 2-level split with 1 sub-step is still
        // second order and reversible; check it against the unsplit integrator's ΔH scale.
        let flat = delta_h(IntegratorKind::Omelyan2, 20, &[], false).abs();
        let nested = delta_h(IntegratorKind::Omelyan2, 20, &[4], true).abs();
        assert!(nested < 10.0 * flat + 1e-12 && nested > 0.0);
    }

    /// Two terms on one level integrate like the one summed term: same (u, p) up to the
    /// rounding of kicking twice instead of once.
    #[test]
    fn two_terms_on_one_level_equal_the_summed_action() {
        let two: LeveledAction<'_, RealScalar> =
            LeveledAction::new(vec![vec![Box::new(Quadratic(1.3)), Box::new(Quartic(0.7))]]).unwrap();
        let one = anharmonic(false);
        for kind in IntegratorKind::KNOWN.iter().copied() {
            let sched = Schedule::from_params(&params(kind, 9, &[]), 1).unwrap();
            let (u2, p2, dh2) = run(&two, &sched);
            let (u1, p1, dh1) = run(&one, &sched);
            for (a, b) in u2.iter().chain(&p2).zip(u1.iter().chain(&p1)) {
                assert!((a - b).abs() <= 1e-13 * b.abs().max(1.0), "{kind:?}: {a} vs {b}");
            }
            assert!((dh2 - dh1).abs() <= 1e-12, "{kind:?}: {dh2} vs {dh1}");
            let u = vec![0.3; 16];
            assert!((two.action(&u).unwrap() - one.action(&u).unwrap()).abs() < 1e-14);
        }
    }

    #[test]
    fn a_one_pass_total_replaces_the_sum_only_for_exact_terms() {
        let u = vec![0.3; 16];
        let act = anharmonic(true).with_total(|u: &Vec<f64>| u.len() as f64);
        assert_eq!(act.action(&u).unwrap(), 16.0);
        assert!((act.sum_of_terms(&u).unwrap() - anharmonic(false).action(&u).unwrap()).abs() < 1e-14);
        let stochastic =
            LeveledAction::single(Box::new(Estimate) as Term<'_, RealScalar>).with_total(|_: &Vec<f64>| 1.0);
        assert!(!stochastic.is_exact());
        assert_eq!(stochastic.action(&u).unwrap(), 2.0);
    }

    /// A term whose action is only an estimate.
    struct Estimate;

    impl ActionTerm<RealScalar> for Estimate {
        fn name(&self) -> &str {
            "estimate"
        }
        fn is_exact(&self) -> bool {
            false
        }
        fn action(&self, _u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(2.0)
        }
        fn force(&self, _u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            out.iter_mut().for_each(|o| *o = 0.0);
            Ok(())
        }
    }

    /// Each level integrates with its own scheme: OMF4 on the outer level with a force-free
    /// inner leapfrog level keeps 4th order; a leapfrog inner level with a force makes it 2nd.
    #[test]
    fn per_level_schemes() {
        let order_of = |b: f64| {
            let act: LeveledAction<'_, RealScalar> =
                LeveledAction::new(vec![vec![Box::new(Quadratic(1.3))], vec![Box::new(Quartic(b))]]).unwrap();
            let dh = |n: u32| {
                let sched = Schedule::from_params(&params(IntegratorKind::Omelyan4, n, &[1]), 2)
                    .unwrap()
                    .with_scheme(1, Scheme::Leapfrog);
                assert_reversible(&act, &sched, "omelyan4 / leapfrog");
                run(&act, &sched).2.abs()
            };
            (dh(16) / dh(32)).log2()
        };
        let free = order_of(0.0);
        let coupled = order_of(0.7);
        assert!((free - 4.0).abs() < 0.3, "order with a force-free leapfrog level: {free}");
        assert!((coupled - 2.0).abs() < 0.3, "order with a leapfrog level: {coupled}");
    }

    /// A term whose force fails (a solver that does not converge) after a few calls.
    struct Flaky {
        calls: std::cell::Cell<u32>,
    }

    impl ActionTerm<RealScalar> for Flaky {
        fn name(&self) -> &str {
            "solver"
        }
        fn action(&self, _u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(0.0)
        }
        fn force(&self, _u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get() > 3 {
                return Err(self.error("CG did not converge"));
            }
            out.iter_mut().for_each(|o| *o = 0.0);
            Ok(())
        }
    }

    #[test]
    fn a_failing_term_is_an_error_that_names_it() {
        let space = RealScalar { len: 4 };
        let mut act: LeveledAction<'_, RealScalar> =
            LeveledAction::new(vec![vec![Box::new(Quadratic(1.0)), Box::new(Flaky { calls: 0.into() })]]).unwrap();
        let sched = Schedule::from_params(&params(IntegratorKind::Leapfrog, 10, &[]), 1).unwrap();
        let mut u = vec![0.5; 4];
        let e = hmc_trajectory(&space, &mut act, &mut u, &sched, true, &mut Stream::new(1, 0)).unwrap_err();
        assert_eq!(e, HmcError::Term(TermError::new("solver", "CG did not converge")));
        assert_eq!(e.to_string(), "action term 'solver': CG did not converge");
        assert_eq!(u, vec![0.5; 4], "a failed trajectory leaves the configuration unchanged");
        assert!(LeveledAction::<RealScalar>::new(vec![]).is_err());
        assert!(LeveledAction::<RealScalar>::new(vec![vec![]]).unwrap_err().contains("level 0"));
    }

    #[test]
    fn unknown_integrators_ask_for_a_rebuild() {
        let p = params(IntegratorKind::from_code(77), 4, &[]);
        let e = Schedule::from_params(&p, 1).unwrap_err();
        assert!(e.contains("Unknown(77)") && e.contains(crate::CORE_VERSION), "{e}");
    }

    #[test]
    fn metropolis_draws_one_uniform_and_rejects_nan() {
        let mut a = Stream::new(1, 0);
        let mut b = Stream::new(1, 0);
        assert!(metropolis_accept(0.5, &mut a));
        b.uniform();
        assert_eq!(a.next_u64(), b.next_u64());
        assert!(!metropolis_accept(f64::NAN, &mut a));
        assert!(!metropolis_accept(f64::NEG_INFINITY, &mut a));
    }

    #[test]
    fn metropolis_rate() {
        let mut rng = Stream::new(2, 0);
        let n = 100_000;
        let acc = (0..n).filter(|_| metropolis_accept(-0.7, &mut rng)).count() as f64 / n as f64;
        let p = (-0.7f64).exp();
        let err = (p * (1.0 - p) / n as f64).sqrt();
        assert!(((acc - p) / err).abs() < 4.0);
    }

    #[test]
    fn exp_minus_delta_h_averages_to_one_and_samples_gaussian() {
        // Harmonic oscillators, a = 1: <x²> = 1 exactly; <exp(-ΔH)> = 1.
        let space = RealScalar { len: 4 };
        let mut act = LeveledAction::single(Box::new(Quadratic(1.0)));
        let mut pr = params(IntegratorKind::Leapfrog, 3, &[]);
        pr.trajectory_length = 1.3;
        let sched = Schedule::from_params(&pr, 1).unwrap();
        let mut rng = Stream::new(9, 0);
        let mut u = vec![0.0; 4];
        let n = 40_000;
        let mut e = Vec::with_capacity(n);
        let mut x2 = Vec::with_capacity(n);
        for _ in 0..n {
            let r = hmc_trajectory(&space, &mut act, &mut u, &sched, true, &mut rng).unwrap();
            e.push((-r.delta_h).exp());
            x2.push(u.iter().map(|x| x * x).sum::<f64>() / 4.0);
        }
        let (mean, err) = batch_means(&e, 50);
        assert!(((mean - 1.0) / err).abs() < 4.0, "<exp(-dH)> = {mean} ± {err}");
        let (mean, err) = batch_means(&x2, 50);
        assert!(((mean - 1.0) / err).abs() < 4.0, "<x^2> = {mean} ± {err}");
    }

    #[test]
    fn schedule_validation() {
        assert!(Schedule::from_params(&params(IntegratorKind::Leapfrog, 0, &[]), 1).is_err());
        assert!(Schedule::from_params(&params(IntegratorKind::Leapfrog, 4, &[2]), 1).is_err());
        assert!(Schedule::from_params(&params(IntegratorKind::Leapfrog, 4, &[0]), 2).is_err());
        let mut p = params(IntegratorKind::Omelyan2, 4, &[]);
        p.omelyan_lambda = 0.7;
        assert!(Schedule::from_params(&p, 1).is_err());
        p.omelyan_lambda = OMELYAN_LAMBDA;
        p.trajectory_length = f64::NAN;
        assert!(Schedule::from_params(&p, 1).is_err());
        let s = Schedule::from_params(&params(IntegratorKind::Leapfrog, 4, &[]), 3).unwrap();
        assert_eq!(s.steps(), vec![4, 1, 1]);
        let mut act = anharmonic(true);
        let one_level = Schedule::from_params(&params(IntegratorKind::Leapfrog, 4, &[]), 1).unwrap();
        let e = hmc_trajectory(
            &RealScalar { len: 16 },
            &mut act,
            &mut vec![0.0; 16],
            &one_level,
            true,
            &mut Stream::new(1, 0),
        );
        assert!(matches!(e, Err(HmcError::Schedule(_))));
    }

    #[test]
    fn angles_wrap_at_the_end_of_integration() {
        assert_eq!(wrap_angle(1.0), 1.0);
        assert_eq!(wrap_angle(std::f64::consts::PI), std::f64::consts::PI);
        assert!((wrap_angle(-std::f64::consts::PI) - std::f64::consts::PI).abs() < 1e-15);
        assert!((wrap_angle(7.0) - (7.0 - std::f64::consts::TAU)).abs() < 1e-15);
        let space = Angles { len: 3 };
        let mut u = vec![3.0, -3.0, 0.0];
        let mut p = vec![10.0, -10.0, 0.5];
        let act = LeveledAction::single(Box::new(Quadratic(0.0)) as Term<'_, RealScalar>);
        // Quadratic(0) has no force: the angles move freely, then wrap.
        let sched = Schedule::from_params(&params(IntegratorKind::Leapfrog, 2, &[]), 1).unwrap();
        let free = RealScalar { len: 3 };
        let mut v = u.clone();
        integrate(&free, &act, &mut v, &mut p.clone(), &sched, &mut vec![0.0; 3]).unwrap();
        space.project(&mut v);
        let act_angles = LeveledAction::single(Box::new(FreeAngles) as Term<'_, Angles>);
        integrate(&space, &act_angles, &mut u, &mut p, &sched, &mut vec![0.0; 3]).unwrap();
        assert_eq!(u, v);
        assert!(u.iter().all(|t| *t > -std::f64::consts::PI && *t <= std::f64::consts::PI));
    }

    struct FreeAngles;

    impl ActionTerm<Angles> for FreeAngles {
        fn name(&self) -> &str {
            "free"
        }
        fn action(&self, _u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(0.0)
        }
        fn force(&self, _u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            out.iter_mut().for_each(|o| *o = 0.0);
            Ok(())
        }
    }

    /// S = −β Σ_x s_x · s_{x+1}, O(3) spins on a periodic ring of `l` sites (a curved space).
    struct O3Ring {
        beta: f64,
        l: usize,
    }

    fn dot3(a: &[f64], b: &[f64]) -> f64 {
        a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    }

    impl O3Ring {
        fn energy(&self, u: &[f64]) -> f64 {
            (0..self.l).map(|x| dot3(&u[3 * x..3 * x + 3], &u[3 * ((x + 1) % self.l)..][..3])).sum::<f64>() / self.l as f64
        }
    }

    impl ActionTerm<Spheres> for O3Ring {
        fn name(&self) -> &str {
            "o3_ring"
        }
        fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(-self.beta * self.l as f64 * self.energy(u))
        }
        /// The tangent projection of ∂S/∂s_x = −β (s_{x+1} + s_{x−1}).
        fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            let l = self.l;
            for x in 0..l {
                let (up, dn, s) = (&u[3 * ((x + 1) % l)..][..3], &u[3 * ((x + l - 1) % l)..][..3], &u[3 * x..3 * x + 3]);
                let g: Vec<f64> = (0..3).map(|i| -self.beta * (up[i] + dn[i])).collect();
                let along = dot3(&g, s);
                (0..3).for_each(|i| out[3 * x + i] = g[i] - along * s[i]);
            }
            Ok(())
        }
    }

    /// Random unit 3-vectors.
    fn random_spins(l: usize, rng: &mut Stream) -> Vec<f64> {
        let mut u = vec![0.0; 3 * l];
        rng.fill_normal(&mut u);
        Spheres { n: 3, sites: l }.project(&mut u);
        u
    }

    /// ⟨s_x · s_{x+1}⟩ on the periodic O(3) ring, exactly: Z = Σ_l (2l+1) i_l(β)^L with
    /// i_l(β) = ½ ∫₋₁¹ e^{βt} P_l(t) dt, and E = (1/L) d ln Z/dβ (integrals by Simpson's rule).
    fn o3_ring_energy(beta: f64, sites: i32) -> f64 {
        let n = 4000;
        let h = 2.0 / n as f64;
        let (mut z, mut dz) = (0.0, 0.0);
        for l in 0..40usize {
            let (mut i, mut di) = (0.0, 0.0);
            for k in 0..=n {
                let t = -1.0 + k as f64 * h;
                let (mut p0, mut p1) = (1.0, t);
                for m in 1..l.max(1) {
                    let p2 = ((2 * m + 1) as f64 * t * p1 - m as f64 * p0) / (m + 1) as f64;
                    (p0, p1) = (p1, p2);
                }
                let pl = if l == 0 { 1.0 } else { p1 };
                let w = if k == 0 || k == n { 1.0 } else if k % 2 == 1 { 4.0 } else { 2.0 };
                i += w * (beta * t).exp() * pl;
                di += w * t * (beta * t).exp() * pl;
            }
            let (i, di) = (0.5 * i * h / 3.0, 0.5 * di * h / 3.0);
            z += (2 * l + 1) as f64 * i.powi(sites);
            dz += (2 * l + 1) as f64 * sites as f64 * i.powi(sites - 1) * di;
        }
        dz / z / sites as f64
    }

    #[test]
    fn o3_ring_reference_is_right() {
        // β → 0: E = β/3 + O(β³); L → ∞: E = coth β − 1/β (the Langevin function)
        assert!((o3_ring_energy(1e-3, 8) - 1e-3 / 3.0).abs() < 1e-9);
        let b: f64 = 1.5;
        assert!((o3_ring_energy(b, 400) - (1.0 / b.tanh() - 1.0 / b)).abs() < 1e-9);
    }

    #[test]
    fn spheres_geodesic_flow_is_reversible_and_forces_match_finite_differences() {
        let (l, space) = (6, Spheres { n: 3, sites: 6 });
        let ring = O3Ring { beta: 1.3, l };
        let mut rng = Stream::new(7, 0);
        let u0 = random_spins(l, &mut rng);
        let p0 = space.sample_momentum(&u0, &mut rng);
        for x in 0..l {
            assert!(dot3(&u0[3 * x..][..3], &p0[3 * x..][..3]).abs() < 1e-14, "momentum not tangent");
        }
        // dS/dt along the geodesic with velocity p is F·p at t = 0
        let mut f = space.zero_momentum();
        ring.force(&u0, &mut f).unwrap();
        let s_at = |t: f64| {
            let (mut v, mut q) = (u0.clone(), p0.clone());
            space.step_field(&mut v, &mut q, t);
            ring.action(&v).unwrap()
        };
        let h = 1e-5;
        let fd = (s_at(h) - s_at(-h)) / (2.0 * h);
        let fp: f64 = f.iter().zip(&p0).map(|(a, b)| a * b).sum();
        assert!((fd - fp).abs() < 1e-7 * fp.abs().max(1.0), "{fd} vs {fp}");
        // integrate, flip, integrate back
        let act = LeveledAction::single(Box::new(O3Ring { beta: 1.3, l }));
        let sched = Schedule::from_params(&HmcParams { md_steps: 7, ..HmcParams::default() }, 1).unwrap();
        let (mut u, mut p, mut buf) = (u0.clone(), p0.clone(), space.zero_momentum());
        integrate(&space, &act, &mut u, &mut p, &sched, &mut buf).unwrap();
        p.iter_mut().for_each(|x| *x = -*x);
        integrate(&space, &act, &mut u, &mut p, &sched, &mut buf).unwrap();
        // back where it started, with the momentum reversed
        let du = u.iter().zip(&u0).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let dp = p.iter().zip(&p0).map(|(a, b)| (a + b).abs()).fold(0.0, f64::max);
        assert!(du < 1e-12 && dp < 1e-12, "reversibility: {du:e} {dp:e}");
    }

    /// HMC on spheres samples the O(3) ring exactly: ⟨s·s'⟩ against the transfer-matrix value.
    #[test]
    fn spheres_hmc_reproduces_the_exact_o3_ring() {
        let (l, beta) = (8usize, 1.5);
        let space = Spheres { n: 3, sites: l };
        let mut act = LeveledAction::single(Box::new(O3Ring { beta, l }));
        let params = HmcParams { md_steps: 6, jitter: 0.2, ..HmcParams::default() };
        let sched = Schedule::from_params(&params, 1).unwrap();
        let mut rng = Stream::new(17, 0);
        let mut u = random_spins(l, &mut rng);
        let (mut e, mut boltz) = (Vec::new(), Vec::new());
        for i in 0..40_200 {
            let r = hmc_trajectory(&space, &mut act, &mut u, &sched, true, &mut rng).unwrap();
            if i >= 200 {
                e.push(O3Ring { beta, l }.energy(&u));
                boltz.push((-r.delta_h).exp());
            }
        }
        let exact = o3_ring_energy(beta, l as i32);
        let (mean, err) = batch_means(&e, 50);
        let z = (mean - exact) / err;
        let (b, berr) = batch_means(&boltz, 50);
        eprintln!("O(3) ring L={l} beta={beta}: E = {mean:.5} ± {err:.5} (exact {exact:.6}, z = {z:+.2}); <exp(-dH)> = {b:.4} ± {berr:.4}");
        assert!(z.abs() < 4.0, "E = {mean} ± {err}, exact {exact}");
        assert!(((b - 1.0) / berr).abs() < 4.0, "<exp(-dH)> = {b} ± {berr}");
    }
}
