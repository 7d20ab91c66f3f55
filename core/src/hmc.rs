//! Hybrid Monte Carlo, generic over the field's geometry.
//!
//! * [`FieldSpace`] is the geometry policy (Grid's "Impl"): momenta, kinetic energy, the field
//!   update. [`RealScalar`] is the flat-space case; gauge groups add their own.
//! * [`Action`] is an action split into time-scale *levels* (level 0 outermost, integrated with
//!   the fewest steps); each level has a force that lives beside the action.
//! * [`Schedule`] + [`integrate`] run a nested leapfrog, Omelyan-2 or Omelyan-4 integrator.
//! * [`hmc_trajectory`] does momentum refresh, integration and the accept test through the one
//!   shared [`metropolis_accept`].
//!
//! Plugins call these generic functions with their own concrete types, so everything is
//! monomorphised inside the plugin and only one call per trajectory crosses the ABI.

use crate::abi::{HmcParams, IntegratorKind, TrajectoryRecord};
use crate::rng::Stream;
use crate::sum::CompensatedSum;

/// The geometry of a field: how momenta are drawn and how the field moves along them.
pub trait FieldSpace {
    /// The field.
    type Field: Clone;
    /// Its conjugate momentum (for groups, an element of the Lie algebra per link).
    type Momentum: Clone;

    /// Draws momenta from exp(−kinetic(p)).
    fn sample_momentum(&self, rng: &mut Stream) -> Self::Momentum;
    /// A zero momentum (used as a force buffer).
    fn zero_momentum(&self) -> Self::Momentum;
    /// Kinetic energy K(p), compensated sum.
    fn kinetic(&self, p: &Self::Momentum) -> f64;
    /// Moves the field along p for MD time `eps` (u ← u + eps·p; for groups u ← exp(eps·p)·u).
    fn step_field(&self, u: &mut Self::Field, p: &Self::Momentum, eps: f64);
    /// p ← p − eps·f, where f is a force from [`Action::force`].
    fn kick(&self, p: &mut Self::Momentum, f: &Self::Momentum, eps: f64);
    /// Restores the field to its manifold after many updates (reunitarise); no-op by default.
    fn project(&self, _u: &mut Self::Field) {}
}

/// An action S(u) split into time-scale levels; S = Σ_levels S_level.
pub trait Action<S: FieldSpace> {
    /// Number of levels (≥ 1). Level 0 is the outermost time scale.
    fn levels(&self) -> usize {
        1
    }
    /// The total action S(u), accumulated with compensated sums.
    fn action(&self, u: &S::Field) -> f64;
    /// Writes the force of `level`, i.e. the derivative dS_level/du in momentum space (for a
    /// real scalar field simply ∂S_level/∂φ), into `out` (overwriting it).
    fn force(&self, level: usize, u: &S::Field, out: &mut S::Momentum);
    /// Refreshes auxiliary fields (pseudofermion heat bath) at the start of a trajectory.
    fn refresh(&mut self, _u: &S::Field, _rng: &mut Stream) {}
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
}

impl Scheme {
    fn ops(&self) -> Vec<Op> {
        use Op::*;
        match *self {
            Scheme::Leapfrog => vec![Kick(0.5), Drift(1.0), Kick(0.5)],
            Scheme::Omelyan2 { lambda } => {
                vec![Kick(lambda), Drift(0.5), Kick(1.0 - 2.0 * lambda), Drift(0.5), Kick(lambda)]
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

/// A nested integration schedule: total MD time `tau`; `steps[0]` steps of the outermost level,
/// and for each inner level `steps[l]` sub-steps per drift of level l−1. All levels use `scheme`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub tau: f64,
    pub steps: Vec<u32>,
    pub scheme: Scheme,
    /// Trajectory-length randomisation, see [`HmcParams::jitter`].
    pub jitter: f64,
}

impl Schedule {
    /// Builds a schedule from the plain-data parameters that cross the ABI. `levels` is the
    /// action's level count: extra inner levels without sub-step counts get 1 sub-step; more
    /// sub-step counts than inner levels is an error.
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
        let scheme = match p.integrator {
            IntegratorKind::Leapfrog => Scheme::Leapfrog,
            IntegratorKind::Omelyan2 => {
                if !(p.omelyan_lambda.is_finite() && p.omelyan_lambda > 0.0 && p.omelyan_lambda < 0.5) {
                    return Err(format!("omelyan_lambda must lie in (0, 0.5), got {}", p.omelyan_lambda));
                }
                Scheme::Omelyan2 { lambda: p.omelyan_lambda }
            }
            IntegratorKind::Omelyan4 => Scheme::Omelyan4,
        };
        let mut steps = vec![p.md_steps];
        steps.extend(p.inner_steps.iter().copied());
        steps.resize(levels.max(1), 1);
        Ok(Self { tau: p.trajectory_length, steps, scheme, jitter: p.jitter })
    }
}

/// Integrates (u, p) for MD time `schedule.tau`. `force_buf` is scratch space.
///
/// Consecutive kicks of one level with no drift in between act on the same field and are merged
/// into one force evaluation, so leapfrog with n steps costs n+1 outer forces, Omelyan-2 2n+1.
pub fn integrate<S: FieldSpace, A: Action<S> + ?Sized>(
    space: &S,
    action: &A,
    u: &mut S::Field,
    p: &mut S::Momentum,
    schedule: &Schedule,
    force_buf: &mut S::Momentum,
) {
    evolve(space, action, u, p, schedule, 0, schedule.tau, force_buf);
}

fn evolve<S: FieldSpace, A: Action<S> + ?Sized>(
    space: &S,
    action: &A,
    u: &mut S::Field,
    p: &mut S::Momentum,
    schedule: &Schedule,
    level: usize,
    time: f64,
    force_buf: &mut S::Momentum,
) {
    let n = schedule.steps[level];
    let h = time / f64::from(n);
    let ops = schedule.scheme.ops();
    let innermost = level + 1 == schedule.steps.len();
    let mut pending = 0.0;
    for _ in 0..n {
        for op in &ops {
            match *op {
                Op::Kick(c) => pending += c,
                Op::Drift(c) => {
                    if pending != 0.0 {
                        action.force(level, u, force_buf);
                        space.kick(p, force_buf, pending * h);
                        pending = 0.0;
                    }
                    if innermost {
                        space.step_field(u, p, c * h);
                    } else {
                        evolve(space, action, u, p, schedule, level + 1, c * h, force_buf);
                    }
                }
            }
        }
    }
    if pending != 0.0 {
        action.force(level, u, force_buf);
        space.kick(p, force_buf, pending * h);
    }
    if level == 0 {
        space.project(u);
    }
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
}

impl std::fmt::Display for HmcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HmcError::NonFiniteStart { action } => {
                write!(f, "the action of the starting configuration is not finite ({action})")
            }
        }
    }
}

impl std::error::Error for HmcError {}

/// One HMC trajectory: refresh momenta (and auxiliary fields), integrate, Metropolis test on ΔH.
///
/// With `schedule.jitter > 0` the trajectory length is first drawn uniformly from
/// τ·[1 − jitter, 1 + jitter] (independently of the state, so detailed balance holds).
///
/// On acceptance `u` holds the new configuration; on rejection it is unchanged. A trajectory
/// whose final H is not finite (an MD instability) is rejected and recorded with ΔH = +∞.
/// With `accept_reject == false` every trajectory is accepted (an explicit, recorded option
/// for tests of the integrator, never a default).
pub fn hmc_trajectory<S: FieldSpace, A: Action<S> + ?Sized>(
    space: &S,
    action: &mut A,
    u: &mut S::Field,
    schedule: &Schedule,
    accept_reject: bool,
    rng: &mut Stream,
) -> Result<TrajectoryRecord, HmcError> {
    let jittered;
    let schedule = if schedule.jitter > 0.0 {
        let scale = 1.0 + schedule.jitter * (2.0 * rng.uniform() - 1.0);
        jittered = Schedule { tau: schedule.tau * scale, ..schedule.clone() };
        &jittered
    } else {
        schedule
    };
    action.refresh(u, rng);
    let mut p = space.sample_momentum(rng);
    let s0 = action.action(u);
    if !s0.is_finite() {
        return Err(HmcError::NonFiniteStart { action: s0 });
    }
    let k0 = space.kinetic(&p);
    let mut v = u.clone();
    let mut buf = space.zero_momentum();
    integrate(space, &*action, &mut v, &mut p, schedule, &mut buf);
    let s1 = action.action(&v);
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
    Ok(TrajectoryRecord { accepted, delta_h, action: action_after })
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

    fn sample_momentum(&self, rng: &mut Stream) -> Vec<f64> {
        let mut p = vec![0.0; self.len];
        rng.fill_normal(&mut p);
        p
    }

    fn zero_momentum(&self) -> Vec<f64> {
        vec![0.0; self.len]
    }

    fn kinetic(&self, p: &Vec<f64>) -> f64 {
        0.5 * crate::sum::compensated_sum(p.iter().map(|x| x * x))
    }

    fn step_field(&self, u: &mut Vec<f64>, p: &Vec<f64>, eps: f64) {
        for (x, q) in u.iter_mut().zip(p) {
            *x += eps * q;
        }
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        for (q, g) in p.iter_mut().zip(f) {
            *q -= eps * g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latflow_stats::{gamma_method, S_TAU_DEFAULT};
    use abi_stable::std_types::RVec;

    /// Anharmonic oscillators with a two-level split: S = Σ a x²/2 (level 0) + Σ b x⁴/4 (level 1).
    struct Anharmonic {
        a: f64,
        b: f64,
        split: bool,
    }

    impl Action<RealScalar> for Anharmonic {
        fn levels(&self) -> usize {
            if self.split { 2 } else { 1 }
        }
        fn action(&self, u: &Vec<f64>) -> f64 {
            crate::sum::compensated_sum(u.iter().map(|x| 0.5 * self.a * x * x + 0.25 * self.b * x.powi(4)))
        }
        fn force(&self, level: usize, u: &Vec<f64>, out: &mut Vec<f64>) {
            for (o, x) in out.iter_mut().zip(u) {
                *o = match (self.split, level) {
                    (false, _) => self.a * x + self.b * x.powi(3),
                    (true, 0) => self.a * x,
                    (true, _) => self.b * x.powi(3),
                };
            }
        }
    }

    fn params(kind: IntegratorKind, steps: u32, inner: &[u32]) -> HmcParams {
        HmcParams {
            trajectory_length: 1.0,
            md_steps: steps,
            integrator: kind,
            omelyan_lambda: OMELYAN_LAMBDA,
            inner_steps: RVec::from(inner.to_vec()),
            accept_reject: true,
            jitter: 0.0,
        }
    }

    fn delta_h(kind: IntegratorKind, steps: u32, inner: &[u32], split: bool) -> f64 {
        let space = RealScalar { len: 16 };
        let act = Anharmonic { a: 1.3, b: 0.7, split };
        let sched = Schedule::from_params(&params(kind, steps, inner), act.levels()).unwrap();
        let mut rng = Stream::new(11, 0);
        let mut u = space.sample_momentum(&mut rng);
        let mut p = space.sample_momentum(&mut rng);
        let h0 = space.kinetic(&p) + act.action(&u);
        let mut buf = space.zero_momentum();
        integrate(&space, &act, &mut u, &mut p, &sched, &mut buf);
        space.kinetic(&p) + act.action(&u) - h0
    }

    #[test]
    fn reversibility() {
        for kind in [IntegratorKind::Leapfrog, IntegratorKind::Omelyan2, IntegratorKind::Omelyan4] {
            for (inner, split) in [(&[][..], false), (&[3][..], true)] {
                let space = RealScalar { len: 16 };
                let act = Anharmonic { a: 1.3, b: 0.7, split };
                let sched = Schedule::from_params(&params(kind, 7, inner), act.levels()).unwrap();
                let mut rng = Stream::new(5, 0);
                let u0 = space.sample_momentum(&mut rng);
                let p0 = space.sample_momentum(&mut rng);
                let (mut u, mut p) = (u0.clone(), p0.clone());
                let mut buf = space.zero_momentum();
                integrate(&space, &act, &mut u, &mut p, &sched, &mut buf);
                p.iter_mut().for_each(|x| *x = -*x);
                integrate(&space, &act, &mut u, &mut p, &sched, &mut buf);
                for (a, b) in u.iter().zip(&u0) {
                    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{kind:?}: {a} vs {b}");
                }
                for (a, b) in p.iter().zip(&p0) {
                    assert!((a + b).abs() <= 1e-12 * b.abs().max(1.0), "{kind:?}");
                }
            }
        }
    }

    /// log2 of the ratio |ΔH(n)| / |ΔH(2n)| estimates the order 2k of the error ΔH ∝ h^{2k}... for
    /// a single trajectory ΔH ∝ h^p with p = 2 (2nd-order schemes) or 4 (OMF4).
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
        let mut act = Anharmonic { a: 1.0, b: 0.0, split: false };
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
        let g = gamma_method(&e, S_TAU_DEFAULT).unwrap();
        assert!(((g.mean - 1.0) / g.error).abs() < 4.0, "<exp(-dH)> = {} ± {}", g.mean, g.error);
        let g = gamma_method(&x2, S_TAU_DEFAULT).unwrap();
        assert!(((g.mean - 1.0) / g.error).abs() < 4.0, "<x^2> = {} ± {}", g.mean, g.error);
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
        assert_eq!(s.steps, vec![4, 1, 1]);
    }
}
