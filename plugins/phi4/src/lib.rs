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

use latflow_core::abi::{parse_config, HmcParams, ObservableSpec, PluginError, Start};
use latflow_core::hmc::{ActionTerm, LeveledAction, RealScalar, Term, TermError};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::sdk::Physics;
use latflow_core::{Lattice, Stream};
use serde::{Deserialize, Serialize};

pub use kernel::Kernel;

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
        let kappa =
            if self.lambda == 0.0 { 1.0 / b } else { (-b + (b * b + 8.0 * self.lambda).sqrt()) / (4.0 * self.lambda) };
        (kappa, self.lambda * kappa * kappa)
    }
}

/// The φ⁴ theory: lattice, couplings and the row-wise kernel.
pub struct Phi4 {
    lattice: Lattice,
    kernel: Kernel,
    couplings: Couplings,
}

impl Phi4 {
    /// A theory on `lattice` with the given couplings.
    pub fn new(lattice: Lattice, couplings: Couplings) -> Self {
        let kernel = Kernel::new(&lattice);
        Self { lattice, kernel, couplings }
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

    fn couplings_from(cfg: &Config, d: usize) -> Result<Couplings, PluginError> {
        let missing = |m: &str| Err(PluginError::config(m.to_string()));
        match (cfg.m2, cfg.lambda, cfg.kappa, cfg.lambda_hat) {
            (Some(m2), Some(l), None, None) => Couplings::new(m2, l),
            (None, None, Some(k), Some(lh)) => Couplings::from_hopping(k, lh, d),
            (Some(_), None, None, None) => missing("lambda: missing (give m2 and lambda)"),
            (None, Some(_), None, None) => missing("m2: missing (give m2 and lambda)"),
            (None, None, Some(_), None) => missing("lambda_hat: missing (give kappa and lambda_hat)"),
            (None, None, None, Some(_)) => missing("kappa: missing (give kappa and lambda_hat)"),
            (None, None, None, None) => missing("m2: missing (give m2 and lambda, or kappa and lambda_hat)"),
            _ => missing("give either m2 and lambda, or kappa and lambda_hat, not a mixture"),
        }
    }
}

/// Which part of the action an HMC term carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The whole action (one time scale).
    Whole,
    /// The gradient term Σ_x Σ_μ (φ(x+μ̂) − φ(x))² (outer time scale).
    Gradient,
    /// The local potential Σ_x m² φ² + λ φ⁴ (inner time scale).
    Potential,
}

/// One HMC term of the φ⁴ action.
struct Phi4Term<'a> {
    kernel: &'a Kernel,
    c: Couplings,
    part: Part,
}

impl ActionTerm<RealScalar> for Phi4Term<'_> {
    fn name(&self) -> &str {
        match self.part {
            Part::Whole => "phi4",
            Part::Gradient => "gradient",
            Part::Potential => "potential",
        }
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        let Couplings { m2, lambda } = self.c;
        Ok(match self.part {
            Part::Whole => self.kernel.action(u, m2, lambda),
            Part::Gradient => self.kernel.action_hopping(u),
            Part::Potential => self.kernel.action_local(u, m2, lambda),
        })
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        let Couplings { m2, lambda } = self.c;
        match self.part {
            Part::Whole => self.kernel.gradient(u, m2, lambda, out),
            Part::Gradient => self.kernel.gradient_hopping(u, out),
            Part::Potential => self.kernel.gradient_local(u, m2, lambda, out),
        }
        Ok(())
    }

    /// The force and the kick in one sweep over the lattice (the bits of `force` and a kick).
    fn kick(&self, _space: &RealScalar, u: &Vec<f64>, p: &mut Vec<f64>, eps: f64, _buf: &mut Vec<f64>) -> Result<(), TermError> {
        let Couplings { m2, lambda } = self.c;
        match self.part {
            Part::Whole => self.kernel.kick(u, m2, lambda, p, eps),
            Part::Gradient => self.kernel.kick_hopping(u, p, eps),
            Part::Potential => self.kernel.kick_local(u, m2, lambda, p, eps),
        }
        Ok(())
    }

    /// The kick and the drift that follows it in one sweep (the bits of `kick` and
    /// `RealScalar::step_field`); the new field is written to `buf`, which then becomes the
    /// field.
    fn kick_drift(
        &self,
        _space: &RealScalar,
        u: &mut Vec<f64>,
        p: &mut Vec<f64>,
        eps_kick: f64,
        eps_drift: f64,
        buf: &mut Vec<f64>,
    ) -> Result<bool, TermError> {
        if buf.len() != u.len() || p.len() != u.len() {
            return Ok(false);
        }
        let Couplings { m2, lambda } = self.c;
        let eps = (eps_kick, eps_drift);
        match self.part {
            Part::Whole => self.kernel.kick_drift(u, m2, lambda, p, eps, buf),
            Part::Gradient => self.kernel.kick_drift_hopping(u, p, eps, buf),
            Part::Potential => {
                self.kernel.kick_drift_local(u, m2, lambda, p, eps);
                return Ok(true);
            }
        }
        std::mem::swap(u, buf);
        Ok(true)
    }
}

fn no_such_parameter(name: &str) -> PluginError {
    PluginError::unsupported(format!("phi4 has no parameter '{name}' (it has m2, lambda, kappa, lambda_hat)"))
}

impl Physics for Phi4 {
    const NAME: &'static str = "phi4";
    type Space = RealScalar;

    fn from_config(json: &str) -> Result<Self, PluginError> {
        let cfg: Config = parse_config(json)?;
        let lattice = Lattice::new(&cfg.lattice).map_err(|e| PluginError::config(format!("lattice: {e}")))?;
        let couplings = Self::couplings_from(&cfg, lattice.dim())?;
        Ok(Self::new(lattice, couplings))
    }

    fn layout(&self) -> FieldLayout {
        FieldLayout::single(self.lattice.shape(), "phi", Support::Site, ElementKind::Real)
    }

    fn params_json(&self) -> serde_json::Value {
        let (kappa, lambda_hat) = self.couplings.hopping(self.lattice.dim());
        serde_json::json!({
            "lattice": self.lattice.shape(),
            "m2": self.couplings.m2,
            "lambda": self.couplings.lambda,
            "kappa": kappa,
            "lambda_hat": lambda_hat,
            "convention": "S = sum_x [ sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lambda phi^4 ]",
        })
    }

    fn parameter(&self, name: &str) -> Result<f64, PluginError> {
        let (kappa, lambda_hat) = self.couplings.hopping(self.lattice.dim());
        match name {
            "m2" => Ok(self.couplings.m2),
            "lambda" => Ok(self.couplings.lambda),
            "kappa" => Ok(kappa),
            "lambda_hat" => Ok(lambda_hat),
            other => Err(no_such_parameter(other)),
        }
    }

    fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginError> {
        let d = self.lattice.dim();
        let (kappa, lambda_hat) = self.couplings.hopping(d);
        self.couplings = match name {
            "m2" => Couplings::new(value, self.couplings.lambda)?,
            "lambda" => Couplings::new(self.couplings.m2, value)?,
            "kappa" => Couplings::from_hopping(value, lambda_hat, d)?,
            "lambda_hat" => Couplings::from_hopping(kappa, value, d)?,
            other => return Err(no_such_parameter(other)),
        };
        Ok(())
    }

    /// A sweep is a few flops per site (about 12 µs at 128² on one core), so the worker
    /// threads form a spinning team: with rayon's sleeping workers alone, 2 threads gained
    /// 1.25–1.4× on HMC at L = 128–256.
    fn short_parallel_regions(&self) -> bool {
        true
    }

    fn observables(&self) -> Vec<ObservableSpec> {
        let spec = ObservableSpec::new;
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

    fn measure(&self, phi: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
        self.kernel.observables(phi, self.couplings.m2, self.couplings.lambda, out);
        Ok(())
    }

    fn action(&self, phi: &[f64]) -> f64 {
        self.kernel.action(phi, self.couplings.m2, self.couplings.lambda)
    }

    fn action_grad(&self, phi: &[f64], grad: &mut [f64]) -> f64 {
        self.kernel.gradient(phi, self.couplings.m2, self.couplings.lambda, grad);
        self.action(phi)
    }

    fn initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
        let mut phi = vec![0.0; self.lattice.volume()];
        if start == Start::Hot {
            // Gaussian with σ = 1/2: disordered, yet inside the MD stability range of
            // typical step sizes even at large λ (σ = 1 gives forces ~ 4λ that stall HMC).
            rng.fill_normal(&mut phi);
            phi.iter_mut().for_each(|p| *p *= 0.5);
        }
        phi
    }

    fn space(&self) -> RealScalar {
        RealScalar { len: self.lattice.volume() }
    }

    /// One level with the whole action, or (with `time_scales`) the gradient term on level 0
    /// and the local potential on level 1, whose sum H evaluates in one sweep.
    fn action_levels(&self, params: &HmcParams) -> Result<LeveledAction<'_, RealScalar>, PluginError> {
        let term =
            |part| -> Term<'_, RealScalar> { Box::new(Phi4Term { kernel: &self.kernel, c: self.couplings, part }) };
        if params.inner_steps.is_empty() {
            return Ok(LeveledAction::single(term(Part::Whole)));
        }
        let levels = LeveledAction::new(vec![vec![term(Part::Gradient)], vec![term(Part::Potential)]]);
        Ok(levels.map_err(PluginError::config)?.with_total(|phi: &Vec<f64>| self.action(phi)))
    }
}

latflow_core::export_theory!(Phi4,
description: "real scalar phi^4, any dimension: S = sum_x [sum_mu (phi(x+mu)-phi(x))^2 + m2 phi^2 + lambda phi^4]",
provides: [
    "keys: lattice, m2 + lambda | kappa + lambda_hat",
    "observables: action_density phi2 magnetization abs_magnetization chi2 energy correlator",
    "parameters: m2 lambda kappa lambda_hat",
    "hmc levels: 1, or 2 with time_scales (gradient term | local potential)",
]);

#[cfg(test)]
mod tests;
