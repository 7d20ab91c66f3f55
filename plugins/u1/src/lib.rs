//! latflow theory plugin: compact U(1) Wilson gauge theory in any dimension d ≥ 2.
//!
//! The field is one angle θ_μ(x) ∈ ℝ (any representative, periodic with 2π) per link, stored
//! `[site][μ]` with sites row-major (last axis fastest). The action is
//!
//! ```text
//! S[θ] = −β Σ_x Σ_{μ<ν} cos θ_P(x; μ, ν),   θ_P(x; μ, ν) = θ_μ(x) + θ_ν(x+μ̂) − θ_μ(x+ν̂) − θ_ν(x)
//! ```
//!
//! with Haar measure Π dθ/2π (docs/reference.md §3). Run-card keys (`[theory]`): `lattice`, `beta`
//! (finite, ≥ 0; β = 0 is the pure Haar measure) and `wilson_loops` (a list of [R, T] sizes,
//! default `[[1, 1], [2, 2]]`). Parameter for `parameter`/`set_parameter`: `beta`.
//!
//! HMC moves the angles along real momenta (U(1)'s Lie algebra), θ ← θ + εp, with the force
//! ∂S/∂θ (the same Euclidean gradient that `action_grad` returns), and wraps the angles into
//! (−π, π] at the end of each trajectory's integration. One time scale only.

mod kernel;

use abi_stable::export_root_module;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr, RString, RVec};
use latflow_core::abi::{
    batch_len, guard, parse_config, update_config, ActionGrad, HmcParams, ObservableSpec, PluginError, PluginInfo,
    PluginKind, PluginMod, PluginModRef, Start, Theory, TheoryBox, Theory_TO, TrajectoryRecord,
};
use latflow_core::hmc::{hmc_trajectory, Action, FieldSpace, RealScalar, Schedule};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::{Lattice, RngState, Stream, Workers};
use serde::Deserialize;

pub use kernel::{wrap_angle, Kernel};

/// The plugin's name in run cards.
pub const NAME: &str = "u1";

/// The run card's `[theory]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    lattice: Vec<i64>,
    beta: f64,
    #[serde(default = "default_loops")]
    wilson_loops: Vec<[i64; 2]>,
}

fn default_loops() -> Vec<[i64; 2]> {
    vec![[1, 1], [2, 2]]
}

/// Validates β: finite and ≥ 0.
pub fn check_beta(beta: f64) -> Result<f64, PluginError> {
    if !beta.is_finite() {
        return Err(PluginError::config(format!("beta: must be a finite number, got {beta}")));
    }
    if beta < 0.0 {
        return Err(PluginError::config(format!("beta: must be ≥ 0 (β = 0 is the Haar measure), got {beta}")));
    }
    Ok(beta)
}

/// θ_μ(x) → θ_μ(x) + α(x) − α(x+μ̂) for every link: the gauge transformation by
/// g(x) = e^{iα(x)}, U_μ(x) → g(x) U_μ(x) g(x+μ̂)*. `alpha` holds one angle per site.
pub fn gauge_transform(lattice: &Lattice, config: &[f64], alpha: &[f64]) -> Vec<f64> {
    let d = lattice.dim();
    assert_eq!(config.len(), lattice.volume() * d, "configuration length");
    assert_eq!(alpha.len(), lattice.volume(), "one gauge angle per site");
    let mut out = config.to_vec();
    for x in 0..lattice.volume() {
        for mu in 0..d {
            out[x * d + mu] += alpha[x] - alpha[lattice.fwd(x, mu)];
        }
    }
    out
}

/// Link angles with real momenta, H = ½ Σ p² + S: U(1)'s exponential map is θ ← θ + εp.
/// [`FieldSpace::project`] wraps every angle into (−π, π], so angles stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Angles {
    /// Number of links.
    pub len: usize,
}

impl Angles {
    fn flat(&self) -> RealScalar {
        RealScalar { len: self.len }
    }
}

impl FieldSpace for Angles {
    type Field = Vec<f64>;
    type Momentum = Vec<f64>;

    fn sample_momentum(&self, rng: &mut Stream) -> Vec<f64> {
        self.flat().sample_momentum(rng)
    }

    fn zero_momentum(&self) -> Vec<f64> {
        self.flat().zero_momentum()
    }

    fn kinetic(&self, p: &Vec<f64>) -> f64 {
        self.flat().kinetic(p)
    }

    fn step_field(&self, u: &mut Vec<f64>, p: &Vec<f64>, eps: f64) {
        self.flat().step_field(u, p, eps)
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        self.flat().kick(p, f, eps)
    }

    fn project(&self, u: &mut Vec<f64>) {
        u.iter_mut().for_each(|t| *t = wrap_angle(*t));
    }
}

/// The Wilson action for the integrator (one level).
#[derive(Clone, Copy)]
pub struct WilsonAction<'a> {
    pub kernel: &'a Kernel,
    pub beta: f64,
}

impl Action<Angles> for WilsonAction<'_> {
    fn action(&self, u: &Vec<f64>) -> f64 {
        self.kernel.action(u, self.beta)
    }

    fn force(&self, _level: usize, u: &Vec<f64>, out: &mut Vec<f64>) {
        self.kernel.gradient(u, self.beta, out)
    }
}

/// The U(1) theory object.
pub struct U1 {
    lattice: Lattice,
    kernel: Kernel,
    beta: f64,
    loops: Vec<(usize, usize)>,
    workers: Workers,
}

impl U1 {
    /// Builds the theory from the `[theory]` section as JSON.
    pub fn from_json(json: &str) -> Result<Self, PluginError> {
        let cfg: Config = parse_config(json)?;
        let lattice = Lattice::new(&cfg.lattice).map_err(|e| PluginError::config(format!("lattice: {e}")))?;
        if lattice.dim() < 2 {
            return Err(PluginError::config(format!(
                "lattice: a gauge theory needs at least 2 dimensions, got {}",
                lattice.dim()
            )));
        }
        let beta = check_beta(cfg.beta)?;
        let kernel = Kernel::new(&lattice);
        let mut loops: Vec<(usize, usize)> = Vec::with_capacity(cfg.wilson_loops.len());
        for (i, &[r, t]) in cfg.wilson_loops.iter().enumerate() {
            let key = format!("wilson_loops[{i}]");
            if r < 1 || t < 1 {
                return Err(PluginError::config(format!("{key}: loop sizes must be at least 1, got [{r}, {t}]")));
            }
            let (r, t) = (r as usize, t as usize);
            if !kernel.loop_fits(r, t) {
                return Err(PluginError::config(format!(
                    "{key}: a {r}x{t} loop does not fit the lattice {:?} (R runs along μ, T along ν, for every plane μ < ν)",
                    lattice.shape()
                )));
            }
            if loops.contains(&(r, t)) {
                return Err(PluginError::config(format!("{key}: {r}x{t} is listed twice")));
            }
            loops.push((r, t));
        }
        Ok(Self { lattice, kernel, beta, loops, workers: Workers::default() })
    }

    /// β.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// The kernel (action, force, observables).
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    fn config_len(&self) -> usize {
        self.kernel.n_links()
    }

    fn observable_specs(&self) -> Vec<ObservableSpec> {
        let spec = |name: &str, description: &str| ObservableSpec {
            name: name.into(),
            len: 1,
            description: description.into(),
        };
        let mut specs = vec![
            spec("plaquette", "mean of cos(theta_P) over all plaquettes"),
            spec("action_density", "S/V, V = number of sites"),
        ];
        if self.lattice.dim() == 2 {
            specs.push(spec(
                "topological_charge",
                "Q = (1/2pi) sum_P wrap(theta_P), wrap into (-pi, pi]; an integer (rounded)",
            ));
            specs.push(spec("topological_susceptibility", "Q^2/V per configuration (its mean is chi_top)"));
        }
        for &(r, t) in &self.loops {
            specs.push(spec(
                &format!("wilson_loop_{r}x{t}"),
                &format!("mean cos of the {r}x{t} loop over sites and planes mu<nu, R={r} along mu, T={t} along nu"),
            ));
        }
        specs
    }

    /// `n_traj` HMC trajectories on a configuration held as a `Vec`.
    pub fn hmc_vec(
        &self,
        theta: &mut Vec<f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginError> {
        let mut act = WilsonAction { kernel: &self.kernel, beta: self.beta };
        let schedule = Schedule::from_params(params, act.levels()).map_err(PluginError::config)?;
        let space = Angles { len: self.config_len() };
        let mut out = Vec::with_capacity(n_traj as usize);
        for _ in 0..n_traj {
            let rec = hmc_trajectory(&space, &mut act, theta, &schedule, params.accept_reject, rng)
                .map_err(|e| PluginError::numerical(e.to_string()))?;
            out.push(rec);
        }
        Ok(out)
    }
}

fn no_such_parameter(name: &str) -> PluginError {
    PluginError::unsupported(format!("u1 has no parameter '{name}' (it has beta)"))
}

impl Theory for U1 {
    fn name(&self) -> RString {
        NAME.into()
    }

    fn layout(&self) -> FieldLayout {
        FieldLayout::single(self.lattice.shape(), "links", Support::Link, ElementKind::Angle)
    }

    fn params_json(&self) -> RString {
        let loops: Vec<[usize; 2]> = self.loops.iter().map(|&(r, t)| [r, t]).collect();
        serde_json::json!({
            "lattice": self.lattice.shape(),
            "beta": self.beta,
            "wilson_loops": loops,
            "convention": "S = -beta sum_P cos(theta_P), theta_P = th_mu(x) + th_nu(x+mu) - th_mu(x+nu) - th_nu(x); links [site][mu]",
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
            other => Err(no_such_parameter(other)),
        })
    }

    fn set_parameter(&mut self, name: RStr<'_>, value: f64) -> RResult<(), PluginError> {
        guard("set_parameter", || match name.as_str() {
            "beta" => {
                self.beta = check_beta(value)?;
                Ok(())
            }
            other => Err(no_such_parameter(other)),
        })
    }

    fn set_threads(&mut self, threads: u32) -> RResult<(), PluginError> {
        guard("set_threads", || {
            self.workers = Workers::new(threads)?;
            Ok(())
        })
    }

    fn initial(&self, start: Start, rng: &mut RngState) -> RResult<RVec<f64>, PluginError> {
        guard("initial", || {
            let mut s = Stream::from_state(rng);
            let mut theta = vec![0.0; self.config_len()];
            if start == Start::Hot {
                // uniform in (−π, π]: π − 2πu with u ∈ [0, 1)
                theta.iter_mut().for_each(|t| *t = std::f64::consts::PI - std::f64::consts::TAU * s.uniform());
            }
            *rng = s.state();
            Ok(theta.into())
        })
    }

    fn action(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        guard("action", || {
            let n = self.config_len();
            batch_len(configs.len(), n)?;
            let out: Vec<f64> = self.workers.install(|| {
                use rayon::prelude::*;
                configs.as_slice().par_chunks(n).map(|theta| self.kernel.action(theta, self.beta)).collect()
            });
            Ok(out.into())
        })
    }

    fn action_grad(&self, configs: RSlice<'_, f64>) -> RResult<ActionGrad, PluginError> {
        guard("action_grad", || {
            let n = self.config_len();
            let count = batch_len(configs.len(), n)?;
            let mut grad = vec![0.0; count * n];
            let mut actions = vec![0.0; count];
            self.workers.install(|| {
                use rayon::prelude::*;
                grad.par_chunks_mut(n)
                    .zip(actions.par_iter_mut())
                    .zip(configs.as_slice().par_chunks(n))
                    .for_each(|((g, s), theta)| *s = self.kernel.action_and_gradient(theta, self.beta, g))
            });
            Ok(ActionGrad { actions: actions.into(), grad: grad.into() })
        })
    }

    fn measure(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        guard("measure", || {
            let n = self.config_len();
            let count = batch_len(configs.len(), n)?;
            let per = 2 + if self.lattice.dim() == 2 { 2 } else { 0 } + self.loops.len();
            let mut out = Vec::with_capacity(count * per);
            self.workers.install(|| {
                for theta in configs.as_slice().chunks(n) {
                    self.kernel.observables(theta, self.beta, &self.loops, &mut out);
                }
            });
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
            update_config(config, self.config_len(), rng, |theta, s| {
                self.workers.install(|| self.hmc_vec(theta, params, n_traj, s))
            })
            .map(RVec::from)
        })
    }
}

extern "C" fn info() -> PluginInfo {
    PluginInfo {
        name: NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        kind: PluginKind::Theory,
        description: "compact U(1) Wilson gauge theory, any dimension >= 2: S = -beta sum_P cos(theta_P)".into(),
        provides: RVec::from(vec![
            RString::from("keys: lattice, beta, wilson_loops (default [[1, 1], [2, 2]])"),
            RString::from(
                "observables: plaquette action_density topological_charge topological_susceptibility (2D) wilson_loop_RxT",
            ),
            RString::from("parameters: beta"),
            RString::from("hmc levels: 1"),
        ]),
    }
}

extern "C" fn new_theory(config: RStr<'_>) -> RResult<TheoryBox, PluginError> {
    guard("new_theory", || Ok(Theory_TO::from_value(U1::from_json(config.as_str())?, TD_Opaque)))
}

/// The plugin's root module.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod { info, new_theory, new_model: None }.leak_into_prefix()
}

#[cfg(test)]
mod gauge_tests;
#[cfg(test)]
mod tests;
