//! latflow theory plugin: real scalar φ⁴ theory in any dimension.
//!
//! Convention B of docs/reference.md §1 (Albergo, Kanwar, Shanahan, PRD 100 034515), dimensionless:
//!
//! ```text
//! S[φ] = Σ_x [ Σ_μ (φ(x+μ̂) − φ(x))² + m² φ(x)² + λ φ(x)⁴ ]
//! ```
//!
//! on a periodic lattice of any shape. The hopping form (κ, λ̂),
//! `S = Σ_x [ −2κ Σ_μ ϕ(x)ϕ(x+μ̂) + ϕ² + λ̂(ϕ² − 1)² ]`, is offered as a parameterisation with
//! φ = √κ ϕ, λ = λ̂/κ², m² = (1 − 2λ̂)/κ − 2d; the field stored and measured is always φ.
//!
//! Run-card keys (`[theory]`): `lattice`, and either `m2` and `lambda`, or `kappa` and
//! `lambda_hat`. HMC can split the action over two time scales (`time_scales = [n]` in the
//! chain step): level 0 is the gradient term, level 1 the local potential m²φ² + λφ⁴.

mod kernel;

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
use latflow_core::{Lattice, RngState, Stream, Workers};
use serde::{Deserialize, Serialize};

pub use kernel::Kernel;

/// The plugin's name in run cards.
pub const NAME: &str = "phi4";

/// The run card's `[theory]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    lattice: Vec<i64>,
    m2: Option<f64>,
    lambda: Option<f64>,
    kappa: Option<f64>,
    lambda_hat: Option<f64>,
}

/// Couplings in convention B.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Couplings {
    pub m2: f64,
    pub lambda: f64,
}

impl Couplings {
    /// Validates convention-B couplings: finite, λ ≥ 0, and m² > 0 when λ = 0 (otherwise the
    /// weight e^{−S} is not normalisable).
    pub fn new(m2: f64, lambda: f64) -> Result<Self, PluginError> {
        if !m2.is_finite() {
            return Err(PluginError::config(format!("m2: must be a finite number, got {m2}")));
        }
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(PluginError::config(format!("lambda: must be finite and ≥ 0, got {lambda}")));
        }
        if lambda == 0.0 && m2 <= 0.0 {
            return Err(PluginError::config(format!(
                "m2: with lambda = 0 the theory is a free field and needs m2 > 0, got {m2}"
            )));
        }
        Ok(Self { m2, lambda })
    }

    /// From the hopping form (κ > 0, λ̂ ≥ 0) in d dimensions.
    pub fn from_hopping(kappa: f64, lambda_hat: f64, d: usize) -> Result<Self, PluginError> {
        if !(kappa.is_finite() && kappa > 0.0) {
            return Err(PluginError::config(format!("kappa: must be finite and > 0, got {kappa}")));
        }
        if !(lambda_hat.is_finite() && lambda_hat >= 0.0) {
            return Err(PluginError::config(format!("lambda_hat: must be finite and ≥ 0, got {lambda_hat}")));
        }
        Self::new((1.0 - 2.0 * lambda_hat) / kappa - 2.0 * d as f64, lambda_hat / (kappa * kappa))
    }

    /// (κ, λ̂) of these couplings in d dimensions; κ is only defined when 2d + m² + … > 0.
    pub fn hopping(&self, d: usize) -> (f64, f64) {
        // (2d + m²)κ = 1 − 2λκ²  →  2λκ² + (2d + m²)κ − 1 = 0, positive root.
        let b = 2.0 * d as f64 + self.m2;
        let kappa = if self.lambda == 0.0 {
            1.0 / b
        } else {
            (-b + (b * b + 8.0 * self.lambda).sqrt()) / (4.0 * self.lambda)
        };
        (kappa, self.lambda * kappa * kappa)
    }
}

/// The φ⁴ theory object.
pub struct Phi4 {
    lattice: Lattice,
    kernel: Kernel,
    couplings: Couplings,
    workers: Workers,
}

impl Phi4 {
    /// Builds the theory from the `[theory]` section as JSON.
    pub fn from_json(json: &str) -> Result<Self, PluginError> {
        let cfg: Config = parse_config(json)?;
        let lattice = Lattice::new(&cfg.lattice).map_err(|e| PluginError::config(format!("lattice: {e}")))?;
        let d = lattice.dim();
        let couplings = match (cfg.m2, cfg.lambda, cfg.kappa, cfg.lambda_hat) {
            (Some(m2), Some(l), None, None) => Couplings::new(m2, l)?,
            (None, None, Some(k), Some(lh)) => Couplings::from_hopping(k, lh, d)?,
            (Some(_), None, None, None) => return Err(PluginError::config("lambda: missing (give m2 and lambda)")),
            (None, Some(_), None, None) => return Err(PluginError::config("m2: missing (give m2 and lambda)")),
            (None, None, Some(_), None) => {
                return Err(PluginError::config("lambda_hat: missing (give kappa and lambda_hat)"))
            }
            (None, None, None, Some(_)) => return Err(PluginError::config("kappa: missing (give kappa and lambda_hat)")),
            (None, None, None, None) => {
                return Err(PluginError::config("m2: missing (give m2 and lambda, or kappa and lambda_hat)"))
            }
            _ => {
                return Err(PluginError::config(
                    "give either m2 and lambda, or kappa and lambda_hat, not a mixture",
                ))
            }
        };
        Ok(Self::new(lattice, couplings))
    }

    /// A theory on `lattice` with the given couplings.
    pub fn new(lattice: Lattice, couplings: Couplings) -> Self {
        let kernel = Kernel::new(&lattice);
        Self { lattice, kernel, couplings, workers: Workers::default() }
    }

    /// The couplings.
    pub fn couplings(&self) -> Couplings {
        self.couplings
    }

    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// The kernel (action, force, observables) for these couplings.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    fn observable_specs(&self) -> Vec<ObservableSpec> {
        let spec = |name: &str, len: usize, description: &str| ObservableSpec {
            name: name.into(),
            len: len as u64,
            description: description.into(),
        };
        vec![
            spec("action_density", 1, "S/V"),
            spec("phi2", 1, "mean of phi^2 over sites"),
            spec("magnetization", 1, "M/V, M = sum_x phi(x)"),
            spec("abs_magnetization", 1, "|M|/V"),
            spec("chi2", 1, "M^2/V per configuration (its mean is chi_2)"),
            spec("energy", 1, "(1/(dV)) sum_x sum_mu phi(x) phi(x+mu)"),
            spec(
                "correlator",
                self.lattice.time_extent(),
                "zero-momentum C(t) = (1/V) sum_t0 m(t0) m(t0+t), m(t) = sum over the other axes; t along the last axis",
            ),
        ]
    }

    /// One HMC trajectory batch on a configuration held as a `Vec`.
    pub fn hmc_vec(
        &self,
        phi: &mut Vec<f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginError> {
        let act = Phi4Action { kernel: &self.kernel, c: self.couplings, split: !params.inner_steps.is_empty() };
        let schedule = Schedule::from_params(params, act.levels()).map_err(PluginError::config)?;
        let space = RealScalar { len: self.lattice.volume() };
        let mut out = Vec::with_capacity(n_traj as usize);
        for _ in 0..n_traj {
            let rec = hmc_trajectory(&space, &mut { act }, phi, &schedule, params.accept_reject, rng)
                .map_err(|e| PluginError::numerical(e.to_string()))?;
            out.push(rec);
        }
        Ok(out)
    }
}

/// The action split for the integrator.
#[derive(Clone, Copy)]
struct Phi4Action<'a> {
    kernel: &'a Kernel,
    c: Couplings,
    split: bool,
}

impl Action<RealScalar> for Phi4Action<'_> {
    fn levels(&self) -> usize {
        if self.split {
            2
        } else {
            1
        }
    }

    fn action(&self, u: &Vec<f64>) -> f64 {
        self.kernel.action(u, self.c.m2, self.c.lambda)
    }

    fn force(&self, level: usize, u: &Vec<f64>, out: &mut Vec<f64>) {
        match (self.split, level) {
            (false, _) => self.kernel.gradient(u, self.c.m2, self.c.lambda, out),
            (true, 0) => self.kernel.gradient_hopping(u, out),
            (true, _) => self.kernel.gradient_local(u, self.c.m2, self.c.lambda, out),
        }
    }
}

impl Theory for Phi4 {
    fn name(&self) -> RString {
        NAME.into()
    }

    fn layout(&self) -> FieldLayout {
        FieldLayout::single(self.lattice.shape(), "phi", Support::Site, ElementKind::Real)
    }

    fn params_json(&self) -> RString {
        let (kappa, lambda_hat) = self.couplings.hopping(self.lattice.dim());
        serde_json::json!({
            "lattice": self.lattice.shape(),
            "m2": self.couplings.m2,
            "lambda": self.couplings.lambda,
            "kappa": kappa,
            "lambda_hat": lambda_hat,
            "convention": "S = sum_x [ sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lambda phi^4 ]",
        })
        .to_string()
        .into()
    }

    fn observables(&self) -> RVec<ObservableSpec> {
        self.observable_specs().into()
    }

    fn parameter(&self, name: RStr<'_>) -> RResult<f64, PluginError> {
        guard("parameter", || {
            let (kappa, lambda_hat) = self.couplings.hopping(self.lattice.dim());
            match name.as_str() {
                "m2" => Ok(self.couplings.m2),
                "lambda" => Ok(self.couplings.lambda),
                "kappa" => Ok(kappa),
                "lambda_hat" => Ok(lambda_hat),
                other => Err(PluginError::unsupported(format!(
                    "phi4 has no parameter '{other}' (it has m2, lambda, kappa, lambda_hat)"
                ))),
            }
        })
    }

    fn set_parameter(&mut self, name: RStr<'_>, value: f64) -> RResult<(), PluginError> {
        guard("set_parameter", || {
            let d = self.lattice.dim();
            let (kappa, lambda_hat) = self.couplings.hopping(d);
            self.couplings = match name.as_str() {
                "m2" => Couplings::new(value, self.couplings.lambda)?,
                "lambda" => Couplings::new(self.couplings.m2, value)?,
                "kappa" => Couplings::from_hopping(value, lambda_hat, d)?,
                "lambda_hat" => Couplings::from_hopping(kappa, value, d)?,
                other => {
                    return Err(PluginError::unsupported(format!(
                        "phi4 has no parameter '{other}' (it has m2, lambda, kappa, lambda_hat)"
                    )))
                }
            };
            Ok(())
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
            let mut phi = vec![0.0; self.lattice.volume()];
            if start == Start::Hot {
                // Gaussian with σ = 1/2: disordered, yet inside the MD stability range of
                // typical step sizes even at large λ (σ = 1 gives forces ~ 4λ that stall HMC).
                s.fill_normal(&mut phi);
                phi.iter_mut().for_each(|p| *p *= 0.5);
            }
            *rng = s.state();
            Ok(phi.into())
        })
    }

    fn action(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        guard("action", || {
            let v = self.lattice.volume();
            batch_len(configs.len(), v)?;
            let c = self.couplings;
            let out: Vec<f64> = self.workers.install(|| {
                use rayon::prelude::*;
                configs.as_slice().par_chunks(v).map(|phi| self.kernel.action(phi, c.m2, c.lambda)).collect()
            });
            Ok(out.into())
        })
    }

    fn action_grad(&self, configs: RSlice<'_, f64>) -> RResult<ActionGrad, PluginError> {
        guard("action_grad", || {
            let v = self.lattice.volume();
            let n = batch_len(configs.len(), v)?;
            let c = self.couplings;
            let mut grad = vec![0.0; n * v];
            let mut actions = vec![0.0; n];
            self.workers.install(|| {
                use rayon::prelude::*;
                grad.par_chunks_mut(v).zip(actions.par_iter_mut()).zip(configs.as_slice().par_chunks(v)).for_each(
                    |((g, s), phi)| {
                        *s = self.kernel.action(phi, c.m2, c.lambda);
                        self.kernel.gradient(phi, c.m2, c.lambda, g);
                    },
                )
            });
            Ok(ActionGrad { actions: actions.into(), grad: grad.into() })
        })
    }

    fn measure(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        guard("measure", || {
            let v = self.lattice.volume();
            let n = batch_len(configs.len(), v)?;
            let c = self.couplings;
            let mut out = Vec::with_capacity(n * (6 + self.lattice.time_extent()));
            for phi in configs.as_slice().chunks(v) {
                self.kernel.observables(phi, c.m2, c.lambda, &mut out);
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
            update_config(config, self.lattice.volume(), rng, |phi, s| {
                self.workers.install(|| self.hmc_vec(phi, params, n_traj, s))
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
        description: "real scalar phi^4, any dimension: S = sum_x [sum_mu (phi(x+mu)-phi(x))^2 + m2 phi^2 + lambda phi^4]"
            .into(),
        provides: RVec::from(vec![
            RString::from("keys: lattice, m2 + lambda | kappa + lambda_hat"),
            RString::from("observables: action_density phi2 magnetization abs_magnetization chi2 energy correlator"),
            RString::from("parameters: m2 lambda kappa lambda_hat"),
            RString::from("hmc levels: 1, or 2 with time_scales (gradient term | local potential)"),
        ]),
    }
}

extern "C" fn new_theory(config: RStr<'_>) -> RResult<TheoryBox, PluginError> {
    guard("new_theory", || Ok(Theory_TO::from_value(Phi4::from_json(config.as_str())?, TD_Opaque)))
}

/// The plugin's root module.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod { info, new_theory, new_model: None }.leak_into_prefix()
}

#[cfg(test)]
mod tests;
