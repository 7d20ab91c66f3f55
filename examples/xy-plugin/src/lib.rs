//! An out-of-tree latflow theory plugin, and the template to copy: the O(2) (XY) model,
//! one angle θ(x) per site of a periodic lattice in any dimension, with
//! `S[θ] = −β Σ_x Σ_μ cos(θ(x+μ̂) − θ(x))`.
//!
//! Run-card keys: `lattice` (extents, last axis fastest) and `beta` (finite, > 0); unknown
//! keys are refused. Observables: `action_density` (S/V), `energy` (the mean of
//! cos(θ(x+μ̂) − θ(x)) over the dV links) and `magnetization` (|Σ_x e^{iθ(x)}|/V). Parameter:
//! `beta`. HMC moves the angles with core's [`Angles`] field space (θ ← θ + εp, wrapped into
//! (−π, π] after each trajectory).
//!
//! This file holds only physics: `latflow_core::sdk` guards every ABI call, checks buffer
//! sizes, batches configurations over threads and runs HMC; `export_theory!` exports it.

use latflow_core::abi::{parse_config, HmcParams, ObservableSpec, PluginError, Start};
use latflow_core::hmc::{ActionTerm, Angles, LeveledAction, TermError};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::sdk::Physics;
use latflow_core::sum::CompensatedSum;
use latflow_core::{Lattice, Stream};

/// The run card's `[theory]` section (minus `plugin`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    lattice: Vec<i64>,
    beta: f64,
}

/// The XY model: the lattice and β.
pub struct Xy {
    lattice: Lattice,
    beta: f64,
}

/// β must be finite and positive, on the card and in `set_parameter` alike.
fn check_beta(beta: f64) -> Result<f64, PluginError> {
    let bad = || PluginError::config(format!("beta: must be finite and > 0, got {beta}"));
    (beta.is_finite() && beta > 0.0).then_some(beta).ok_or_else(bad)
}

/// Σ_x Σ_μ cos(θ(x+μ̂) − θ(x)), compensated (HMC takes differences of actions).
pub fn link_cos_sum(l: &Lattice, theta: &[f64]) -> f64 {
    let links = (0..l.volume()).flat_map(|x| (0..l.dim()).map(move |mu| (theta[l.fwd(x, mu)] - theta[x]).cos()));
    links.collect::<CompensatedSum>().value()
}

/// The action as one HMC term (a theory with several time scales returns several terms).
impl ActionTerm<Angles> for Xy {
    fn name(&self) -> &str {
        "xy"
    }
    fn action(&self, theta: &Vec<f64>) -> Result<f64, TermError> {
        Ok(-self.beta * link_cos_sum(&self.lattice, theta))
    }
    /// ∂S/∂θ: each link (x, y = x+μ̂) adds −β sin(θ(y) − θ(x)) at x and the opposite at y.
    fn force(&self, theta: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        out.fill(0.0);
        for x in 0..self.lattice.volume() {
            for mu in 0..self.lattice.dim() {
                let y = self.lattice.fwd(x, mu);
                let f = self.beta * (theta[y] - theta[x]).sin();
                out[x] -= f;
                out[y] += f;
            }
        }
        Ok(())
    }
}

impl Physics for Xy {
    const NAME: &'static str = "xy";
    type Space = Angles;

    fn from_config(json: &str) -> Result<Self, PluginError> {
        let cfg: Config = parse_config(json)?;
        let lattice = Lattice::new(&cfg.lattice).map_err(|e| PluginError::config(format!("lattice: {e}")))?;
        Ok(Self { lattice, beta: check_beta(cfg.beta)? })
    }
    fn layout(&self) -> FieldLayout {
        FieldLayout::single(self.lattice.shape(), "theta", Support::Site, ElementKind::Angle)
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::json!({ "lattice": self.lattice.shape(), "beta": self.beta,
            "convention": "S = -beta sum_x sum_mu cos(theta(x+mu) - theta(x))" })
    }
    fn parameter(&self, name: &str) -> Result<f64, PluginError> {
        match name {
            "beta" => Ok(self.beta),
            _ => Err(PluginError::unsupported(format!("xy has no parameter '{name}' (it has beta)"))),
        }
    }
    fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginError> {
        self.parameter(name)?; // the only name is beta
        self.beta = check_beta(value)?;
        Ok(())
    }
    fn observables(&self) -> Vec<ObservableSpec> {
        let spec = ObservableSpec::scalar;
        vec![
            spec("action_density", "S/V"),
            spec("energy", "(1/(dV)) sum_x sum_mu cos(theta(x+mu) - theta(x))"),
            spec("magnetization", "|sum_x exp(i theta(x))| / V"),
        ]
    }
    fn measure(&self, theta: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
        let (v, d, links) =
            (self.lattice.volume() as f64, self.lattice.dim() as f64, link_cos_sum(&self.lattice, theta));
        let (mx, my) = theta.iter().fold((0.0, 0.0), |(c, s), t| (c + t.cos(), s + t.sin()));
        out.extend_from_slice(&[-self.beta * links / v, links / (d * v), mx.hypot(my) / v]);
        Ok(())
    }
    /// Cold: all angles 0. Hot: uniform in (−π, π].
    fn initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
        let hot = start == Start::Hot;
        (0..self.lattice.volume())
            .map(|_| if hot { std::f64::consts::PI * (1.0 - 2.0 * rng.uniform()) } else { 0.0 })
            .collect()
    }
    fn space(&self) -> Angles {
        Angles { len: self.lattice.volume() }
    }
    fn action_levels(&self, _params: &HmcParams) -> Result<LeveledAction<'_, Angles>, PluginError> {
        Ok(LeveledAction::single(Box::new(self)))
    }
}

latflow_core::export_theory!(Xy,
    description: "O(2)/XY model, any dimension: S = -beta sum_x sum_mu cos(theta(x+mu) - theta(x))",
    provides: ["keys: lattice, beta", "observables: action_density energy magnetization", "parameters: beta"]);

#[cfg(test)]
mod tests;
