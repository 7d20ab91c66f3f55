//! An out-of-tree latflow theory plugin: the O(2) (XY) model in any dimension.
//!
//! One angle θ(x) per site of a periodic lattice, with the action
//!
//! ```text
//! S[θ] = −β Σ_x Σ_μ cos(θ(x+μ̂) − θ(x))
//! ```
//!
//! This crate is meant as a **template**: copy it, rename it, and replace the physics. The
//! pieces every plugin needs, in the order they appear below, are
//!
//! 1. a [`Config`] struct, deserialised from the run card's `[theory]` section (the host
//!    passes every key except `plugin` as a JSON object) with [`parse_config`];
//! 2. a theory struct ([`Xy`]) holding the lattice and the couplings;
//! 3. an [`Action`] implementation, so that core's generic [`hmc_trajectory`] can run HMC
//!    inside the plugin (one ABI call per batch of trajectories, not per force evaluation);
//! 4. the [`Theory`] trait implementation, with every method body wrapped in [`guard`], so a
//!    panic comes back to the host as an error instead of aborting it;
//! 5. the root module: an `info` function, a `new_theory` constructor, and the
//!    `#[export_root_module]` function that hands both to the host.
//!
//! Run-card keys: `lattice` (extents, last axis fastest) and `beta` (β > 0, finite). Unknown
//! keys are refused. Observables: `action_density` (S/V), `energy` (the mean of
//! cos(θ(x+μ̂) − θ(x)) over the dV links) and `magnetization` (|Σ_x e^{iθ(x)}|/V). The one
//! parameter, `beta`, can be changed with `set_parameter`.
//!
//! The flat configuration buffer holds V angles in the lattice's row-major site order (the
//! layout `FieldLayout::single(shape, "theta", Site, Angle)`). Angles are plain real numbers
//! for HMC ([`RealScalar`]): the action is periodic, so any representative is valid; after each
//! HMC call the plugin reduces them to [−π, π) to keep stored configurations tidy.

use std::f64::consts::PI;

use abi_stable::export_root_module;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr, RString, RVec};
use latflow_core::abi::{
    batch_len, guard, parse_config, update_config, ActionGrad, HmcParams, ObservableSpec, PluginError, PluginInfo,
    PluginKind, PluginMod, PluginModRef, Start, Theory, TheoryBox, Theory_TO, TrajectoryRecord,
};
use latflow_core::hmc::{hmc_trajectory, Action, RealScalar, Schedule};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::sum::CompensatedSum;
use latflow_core::{Lattice, RngState, Stream};
use serde::Deserialize;

/// The plugin's name: what run cards write as `plugin = "xy"`.
pub const NAME: &str = "xy";

// ---------------------------------------------------------------------------------------------
// 1. Configuration
// ---------------------------------------------------------------------------------------------

/// The run card's `[theory]` section (minus `plugin`). `deny_unknown_fields` turns a typo such
/// as `bta = 1.0` into a clear error instead of a silently ignored key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Lattice extents. Signed, so that a negative extent is reported rather than wrapped.
    pub lattice: Vec<i64>,
    /// The inverse temperature β.
    pub beta: f64,
}

/// Validates β: finite and positive. Used for the card and for `set_parameter` alike.
fn check_beta(beta: f64) -> Result<f64, PluginError> {
    if beta.is_finite() && beta > 0.0 {
        Ok(beta)
    } else {
        Err(PluginError::config(format!("beta: must be finite and > 0, got {beta}")))
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The theory and its kernels
// ---------------------------------------------------------------------------------------------

/// The XY model on a periodic lattice.
#[derive(Debug, Clone)]
pub struct Xy {
    lattice: Lattice,
    beta: f64,
}

impl Xy {
    /// Builds the theory from the `[theory]` section as JSON (errors name the offending key).
    pub fn from_json(json: &str) -> Result<Self, PluginError> {
        let cfg: Config = parse_config(json)?;
        let lattice = Lattice::new(&cfg.lattice).map_err(|e| PluginError::config(format!("lattice: {e}")))?;
        Ok(Self { lattice, beta: check_beta(cfg.beta)? })
    }

    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// β.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Σ_x Σ_μ cos(θ(x+μ̂) − θ(x)), with a compensated sum (HMC takes differences of actions).
    pub fn link_cos_sum(&self, theta: &[f64]) -> f64 {
        let mut s = CompensatedSum::new();
        for x in 0..self.lattice.volume() {
            for mu in 0..self.lattice.dim() {
                s.add((theta[self.lattice.fwd(x, mu)] - theta[x]).cos());
            }
        }
        s.value()
    }

    /// S = −β Σ_x Σ_μ cos(θ(x+μ̂) − θ(x)).
    pub fn action_of(&self, theta: &[f64]) -> f64 {
        -self.beta * self.link_cos_sum(theta)
    }

    /// ∂S/∂θ(x) = β Σ_μ [sin(θ(x) − θ(x−μ̂)) − sin(θ(x+μ̂) − θ(x))], written to `out`.
    ///
    /// Each link (x, x+μ̂) contributes −β sin(θ(x+μ̂) − θ(x)) to site x and the opposite to
    /// site x+μ̂, so one pass over the links suffices.
    pub fn gradient(&self, theta: &[f64], out: &mut [f64]) {
        out.iter_mut().for_each(|g| *g = 0.0);
        for x in 0..self.lattice.volume() {
            for mu in 0..self.lattice.dim() {
                let y = self.lattice.fwd(x, mu);
                let f = self.beta * (theta[y] - theta[x]).sin();
                out[x] -= f;
                out[y] += f;
            }
        }
    }

    /// The observables of one configuration, appended to `out` in [`Xy::observable_specs`]
    /// order: action_density, energy, magnetization.
    pub fn observables(&self, theta: &[f64], out: &mut Vec<f64>) {
        let v = self.lattice.volume() as f64;
        let d = self.lattice.dim() as f64;
        let links = self.link_cos_sum(theta);
        let mx: f64 = theta.iter().map(|t| t.cos()).sum();
        let my: f64 = theta.iter().map(|t| t.sin()).sum();
        out.extend_from_slice(&[-self.beta * links / v, links / (d * v), mx.hypot(my) / v]);
    }

    /// What `measure` returns, in order. The host checks every row against these lengths.
    pub fn observable_specs(&self) -> Vec<ObservableSpec> {
        let spec = |name: &str, description: &str| ObservableSpec {
            name: name.into(),
            len: 1,
            description: description.into(),
        };
        vec![
            spec("action_density", "S/V"),
            spec("energy", "(1/(dV)) sum_x sum_mu cos(theta(x+mu) - theta(x))"),
            spec("magnetization", "|sum_x exp(i theta(x))| / V"),
        ]
    }

    /// Runs `n_traj` HMC trajectories on one configuration held in a `Vec`.
    pub fn hmc_vec(
        &self,
        theta: &mut Vec<f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginError> {
        let mut act = XyAction { theory: self };
        // `from_params` rejects nested time scales here: this action has one level.
        let schedule = Schedule::from_params(params, act.levels()).map_err(PluginError::config)?;
        let space = RealScalar { len: self.lattice.volume() };
        let mut out = Vec::with_capacity(n_traj as usize);
        for _ in 0..n_traj {
            let rec = hmc_trajectory(&space, &mut act, theta, &schedule, params.accept_reject, rng)
                .map_err(|e| PluginError::numerical(e.to_string()))?;
            out.push(rec);
        }
        // Any representative of an angle is valid; keep them in [−π, π).
        theta.iter_mut().for_each(|t| *t -= 2.0 * PI * ((*t + PI) / (2.0 * PI)).floor());
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The action as core's HMC sees it
// ---------------------------------------------------------------------------------------------

/// The action for [`hmc_trajectory`]: one time-scale level, force = ∂S/∂θ.
struct XyAction<'a> {
    theory: &'a Xy,
}

impl Action<RealScalar> for XyAction<'_> {
    fn action(&self, u: &Vec<f64>) -> f64 {
        self.theory.action_of(u)
    }

    fn force(&self, _level: usize, u: &Vec<f64>, out: &mut Vec<f64>) {
        self.theory.gradient(u, out)
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The ABI-stable trait: what the host calls. Every body goes through `guard`.
// ---------------------------------------------------------------------------------------------

impl Theory for Xy {
    fn name(&self) -> RString {
        NAME.into()
    }

    fn layout(&self) -> FieldLayout {
        FieldLayout::single(self.lattice.shape(), "theta", Support::Site, ElementKind::Angle)
    }

    /// Stored in every ensemble's provenance: all parameters after validation.
    fn params_json(&self) -> RString {
        serde_json::json!({
            "lattice": self.lattice.shape(),
            "beta": self.beta,
            "convention": "S = -beta sum_x sum_mu cos(theta(x+mu) - theta(x))",
        })
        .to_string()
        .into()
    }

    fn observables(&self) -> RVec<ObservableSpec> {
        self.observable_specs().into()
    }

    fn parameter(&self, name: RStr<'_>) -> RResult<f64, PluginError> {
        guard("parameter", || match name.as_str() {
            "beta" => Ok(self.beta),
            other => Err(PluginError::unsupported(format!("xy has no parameter '{other}' (it has beta)"))),
        })
    }

    fn set_parameter(&mut self, name: RStr<'_>, value: f64) -> RResult<(), PluginError> {
        guard("set_parameter", || match name.as_str() {
            "beta" => {
                self.beta = check_beta(value)?;
                Ok(())
            }
            other => Err(PluginError::unsupported(format!("xy has no parameter '{other}' (it has beta)"))),
        })
    }

    /// This plugin is single-threaded, so the thread count is accepted and ignored (results
    /// must not depend on it in any case).
    fn set_threads(&mut self, _threads: u32) -> RResult<(), PluginError> {
        guard("set_threads", || Ok(()))
    }

    /// Cold: all angles 0 (fully ordered). Hot: uniform in [−π, π). Draws only from the
    /// stream the host passes in, and hands its advanced state back.
    fn initial(&self, start: Start, rng: &mut RngState) -> RResult<RVec<f64>, PluginError> {
        guard("initial", || {
            let mut s = Stream::from_state(rng);
            let mut theta = vec![0.0; self.lattice.volume()];
            if start == Start::Hot {
                theta.iter_mut().for_each(|t| *t = PI * (2.0 * s.uniform() - 1.0));
            }
            *rng = s.state();
            Ok(theta.into())
        })
    }

    fn action(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        guard("action", || {
            let v = self.lattice.volume();
            batch_len(configs.len(), v)?;
            Ok(configs.as_slice().chunks(v).map(|t| self.action_of(t)).collect())
        })
    }

    fn action_grad(&self, configs: RSlice<'_, f64>) -> RResult<ActionGrad, PluginError> {
        guard("action_grad", || {
            let v = self.lattice.volume();
            let n = batch_len(configs.len(), v)?;
            let mut actions = Vec::with_capacity(n);
            let mut grad = vec![0.0; n * v];
            for (theta, g) in configs.as_slice().chunks(v).zip(grad.chunks_mut(v)) {
                actions.push(self.action_of(theta));
                self.gradient(theta, g);
            }
            Ok(ActionGrad { actions: actions.into(), grad: grad.into() })
        })
    }

    fn measure(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        guard("measure", || {
            let v = self.lattice.volume();
            let n = batch_len(configs.len(), v)?;
            let mut out = Vec::with_capacity(3 * n);
            for theta in configs.as_slice().chunks(v) {
                self.observables(theta, &mut out);
            }
            Ok(out.into())
        })
    }

    fn hmc(
        &mut self,
        config: RSliceMut<'_, f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut RngState,
    ) -> RResult<RVec<TrajectoryRecord>, PluginError> {
        guard("hmc", || {
            // core's helper checks the buffer, restores the stream and writes both back
            update_config(config, self.lattice.volume(), rng, |theta, s| self.hmc_vec(theta, params, n_traj, s))
                .map(RVec::from)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// 5. The root module: what `latflow` finds in the shared library.
// ---------------------------------------------------------------------------------------------

/// Static facts for `latflow plugins` and provenance. Must not fail.
extern "C" fn info() -> PluginInfo {
    PluginInfo {
        name: NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        kind: PluginKind::Theory,
        description: "O(2)/XY model, any dimension: S = -beta sum_x sum_mu cos(theta(x+mu) - theta(x))".into(),
        provides: RVec::from(vec![
            RString::from("keys: lattice, beta"),
            RString::from("observables: action_density energy magnetization"),
            RString::from("parameters: beta"),
        ]),
    }
}

/// Builds the theory from the card's `[theory]` keys (JSON). `Theory_TO::from_value(..,
/// TD_Opaque)` erases the concrete type into the ABI-stable trait object the host holds.
extern "C" fn new_theory(config: RStr<'_>) -> RResult<TheoryBox, PluginError> {
    guard("new_theory", || Ok(Theory_TO::from_value(Xy::from_json(config.as_str())?, TD_Opaque)))
}

/// The plugin's root module. abi_stable checks its layout and interface version against the
/// host's before any of the functions above can be called.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod { info, new_theory, new_model: None }.leak_into_prefix()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn theory(lattice: &str, beta: f64) -> Xy {
        Xy::from_json(&format!(r#"{{"lattice": {lattice}, "beta": {beta}}}"#)).unwrap()
    }

    fn random_angles(n: usize, seed: u64) -> Vec<f64> {
        let mut s = Stream::new(seed, 0);
        (0..n).map(|_| 4.0 * PI * (s.uniform() - 0.5)).collect()
    }

    /// dS(θ + εv)/dε at ε = 0, by a 4-point central difference (error O(ε⁴)).
    fn directional_fd(s: impl Fn(&[f64]) -> f64, theta: &[f64], dir: &[f64]) -> f64 {
        let eps = 1e-4;
        let at = |e: f64| -> f64 { s(&theta.iter().zip(dir).map(|(t, d)| t + e * d).collect::<Vec<_>>()) };
        (8.0 * (at(eps) - at(-eps)) - (at(2.0 * eps) - at(-2.0 * eps))) / (12.0 * eps)
    }

    /// The gradient (the HMC force, and what model plugins train against) matches finite
    /// differences of the action along random directions, in 1 to 4 dimensions, including
    /// extent-2 axes where x+μ̂ and x−μ̂ coincide.
    #[test]
    fn gradient_matches_finite_differences_along_random_directions() {
        for (shape, beta) in [("[16]", 1.0), ("[6, 5]", 0.7), ("[4, 2, 3]", 2.3), ("[2, 3, 2, 4]", 0.45)] {
            let t = theory(shape, beta);
            let v = t.lattice().volume();
            let theta = random_angles(v, 1);
            let mut g = vec![f64::NAN; v];
            t.gradient(&theta, &mut g);
            for seed in 0..5 {
                let mut s = Stream::new(100 + seed, 1);
                let dir: Vec<f64> = (0..v).map(|_| s.normal()).collect();
                let fd = directional_fd(|x| t.action_of(x), &theta, &dir);
                let an: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
                assert!((fd - an).abs() < 1e-8 * an.abs().max(1.0), "{shape} seed {seed}: fd {fd} vs {an}");
            }
        }
    }

    /// The same check through the ABI entry point `action_grad`, on a batch of three.
    #[test]
    fn action_grad_through_the_abi_matches_finite_differences() {
        let t = theory("[4, 4]", 1.3);
        let batch = random_angles(48, 3);
        let ag = t.action_grad(RSlice::from(&batch[..])).into_result().unwrap();
        assert_eq!(ag.actions.len(), 3);
        assert_eq!(ag.grad.len(), 48);
        for (c, theta) in batch.chunks(16).enumerate() {
            assert_eq!(ag.actions[c], t.action_of(theta));
            let mut s = Stream::new(7 + c as u64, 2);
            let dir: Vec<f64> = (0..16).map(|_| s.normal()).collect();
            let fd = directional_fd(|x| t.action_of(x), theta, &dir);
            let an: f64 = ag.grad[16 * c..16 * (c + 1)].iter().zip(&dir).map(|(a, b)| a * b).sum();
            assert!((fd - an).abs() < 1e-8 * an.abs().max(1.0), "config {c}: fd {fd} vs {an}");
        }
        assert!(t.action_grad(RSlice::from(&batch[..47])).into_result().is_err());
    }

    /// The action is the definition, is periodic in every angle, and is invariant under a
    /// global rotation θ → θ + c.
    #[test]
    fn action_matches_the_definition_and_its_symmetries() {
        let t = theory("[3, 4]", 0.8);
        let lat = t.lattice().clone();
        let theta = random_angles(12, 5);
        let mut naive = 0.0;
        for x in 0..12 {
            for mu in 0..2 {
                naive -= 0.8 * (theta[lat.fwd(x, mu)] - theta[x]).cos();
            }
        }
        let s = t.action_of(&theta);
        assert!((s - naive).abs() < 1e-12, "{s} vs {naive}");
        let shifted: Vec<f64> = theta.iter().enumerate().map(|(i, x)| x + 2.0 * PI * (i % 3) as f64 + 0.37).collect();
        assert!((t.action_of(&shifted) - s).abs() < 1e-11);
        // observables of the ordered configuration: energy 1, magnetization 1, S/V = −βd
        let mut obs = Vec::new();
        t.observables(&[1.5; 12], &mut obs);
        assert!((obs[0] + 1.6).abs() < 1e-14 && (obs[1] - 1.0).abs() < 1e-14 && (obs[2] - 1.0).abs() < 1e-14, "{obs:?}");
    }

    /// Card validation: unknown keys, bad β and bad lattices are refused with the key named;
    /// `set_parameter` validates like the card.
    #[test]
    fn configuration_and_parameters_are_validated() {
        let err = |json: &str| Xy::from_json(json).unwrap_err().message.to_string();
        assert!(err(r#"{"lattice": [4], "beta": 1, "bta": 2}"#).contains("bta"));
        assert!(err(r#"{"lattice": [4], "beta": 0}"#).starts_with("beta:"));
        assert!(err(r#"{"lattice": [4], "beta": -1}"#).starts_with("beta:"));
        assert!(err(r#"{"lattice": [1], "beta": 1}"#).starts_with("lattice:"));
        assert!(err(r#"{"lattice": [4]}"#).contains("beta"));
        let mut t = theory("[4]", 1.0);
        assert!(t.set_parameter("beta".into(), 2.5).into_result().is_ok());
        assert_eq!(t.parameter("beta".into()).into_result().unwrap(), 2.5);
        assert!(t.set_parameter("beta".into(), f64::NAN).into_result().is_err());
        assert!(t.set_parameter("kappa".into(), 1.0).into_result().is_err());
        assert_eq!(t.beta(), 2.5);
    }

    /// HMC through the ABI entry point: runs, keeps angles in [−π, π), is reproducible from
    /// the stream state, and refuses nested time scales (this action has one level).
    #[test]
    fn hmc_runs_and_is_reproducible() {
        let mut t = theory("[8, 8]", 1.1);
        let params = HmcParams {
            trajectory_length: 1.0,
            md_steps: 10,
            integrator: latflow_core::abi::IntegratorKind::Omelyan2,
            omelyan_lambda: latflow_core::hmc::OMELYAN_LAMBDA,
            inner_steps: RVec::new(),
            accept_reject: true,
            jitter: 0.0,
        };
        let run = |t: &mut Xy| {
            let mut rng = Stream::new(11, 0).state();
            let mut cfg = t.initial(Start::Hot, &mut rng).into_result().unwrap().into_vec();
            let recs = t.hmc(RSliceMut::from_mut_slice(&mut cfg), &params, 20, &mut rng).into_result().unwrap();
            (cfg, recs.into_vec())
        };
        let (a, ra) = run(&mut t);
        let (b, rb) = run(&mut t);
        assert_eq!(a, b);
        assert_eq!(ra, rb);
        assert!(ra.iter().filter(|r| r.accepted).count() >= 15, "{ra:?}");
        assert!(a.iter().all(|x| (-PI..PI).contains(x)));
        let nested = HmcParams { inner_steps: RVec::from(vec![2]), ..params.clone() };
        let mut cfg = a.clone();
        let mut rng = Stream::new(1, 0).state();
        assert!(t.hmc(RSliceMut::from_mut_slice(&mut cfg), &nested, 1, &mut rng).into_result().is_err());
    }
}
