//! `kind = "anneal"`: non-equilibrium candidate Monte Carlo (NCMC; Nilmeier, Crooks, Minh and
//! Chodera, PNAS 108 (2011) E1009), the exact form of Jarzynski annealing used as a Metropolis
//! proposal.
//!
//! One application, with λ the annealed parameter and v its value in the theory:
//!
//! ```text
//! λ_k = v + (to − v)·(1 − |k − n| / n),   k = 0 … 2n   (n = stages: v → to → v)
//! x_0 = x;  for k = 1 … 2n:  W += S_{λ_k}(x_{k−1}) − S_{λ_{k−1}}(x_{k−1});
//!                            x_k = K_{λ_k}(x_{k−1}) for k < 2n  (x_{2n} = x_{2n−1})
//! accept x_{2n} with probability min(1, e^{−W})
//! ```
//!
//! K_λ is `hmc.repeat` HMC trajectories at λ (`hmc.repeat + hold` at the turning point k = n).
//! Each K_λ satisfies detailed balance with e^{−S_λ}, and the protocol is a palindrome (λ_k =
//! λ_{2n−k}, the same kernel at k and 2n − k), so the reverse path is drawn by the same protocol
//! and p(x) P(x → x') = p(x') P(x' → x) with p ∝ e^{−S_v}: the step is exact for any schedule and
//! any `to`, and composes with every other step. The schedule only sets the acceptance: e^{−W}
//! has mean 1 over paths, and a slow protocol (many stages) keeps W small.
//!
//! The intended use is topology: at `to` (a low β, or u1's open defect, `defect_coupling` = 0) the topological
//! charge moves freely, and the return leg carries the new sector back to v.

use latflow_core::hmc::{metropolis_accept, palindrome_lambda};
use latflow_core::Stream;

use super::{BuildError, InnerHmc, MarkovStep, StepRecord};
use crate::card::AnnealCard;
use crate::plugin::{PluginLoadError, TheoryHandle};

/// `kind = "anneal"`. Records: accepted, the work W of the protocol (dimensionless, in units of
/// the action) and the acceptance of its inner HMC trajectories.
pub struct AnnealStep {
    card: AnnealCard,
}

impl AnnealStep {
    /// Checks that the theory has the parameter (a turning value `to` the theory refuses is an
    /// error at the first application, naming the parameter and the value).
    pub fn new(card: &AnnealCard, theory: &TheoryHandle) -> Result<Self, BuildError> {
        theory.parameter(&card.parameter).map_err(|e| BuildError { key: Some("parameter"), message: e.to_string() })?;
        Ok(Self { card: card.clone() })
    }

    /// λ_k of the palindromic schedule from `v` (k = 0, 2n) to `to` (k = n).
    fn lambda(&self, v: f64, k: u32) -> f64 {
        palindrome_lambda(v, self.card.to, self.card.stages, k)
    }

    /// One protocol from `config`, with v the parameter's value: returns the end point, the
    /// work and the inner acceptance. The parameter is left at λ_{2n}; the caller restores it.
    fn protocol(
        &self,
        theory: &mut TheoryHandle,
        config: &[f64],
        v: f64,
        rng: &mut Stream,
    ) -> Result<(Vec<f64>, f64, f64), PluginLoadError> {
        let (name, n) = (&self.card.parameter, self.card.stages);
        let params = self.card.hmc.params();
        let mut x = config.to_vec();
        let mut s_prev = theory.action(&x)?[0];
        let (mut work, mut inner) = (0.0, InnerHmc::default());
        for k in 1..=2 * n {
            theory.set_parameter(name, self.lambda(v, k))?;
            let s_new = theory.action(&x)?[0];
            work += s_new - s_prev;
            if k == 2 * n {
                break;
            }
            let repeat = self.card.hmc.repeat + if k == n { self.card.hold } else { 0 };
            inner.run(theory, &mut x, &params, repeat, rng)?;
            s_prev = theory.action(&x)?[0];
        }
        Ok((x, work, inner.acceptance()))
    }
}

impl MarkovStep for AnnealStep {
    fn kind(&self) -> &str {
        "anneal"
    }

    fn columns(&self) -> Vec<String> {
        vec!["work".into(), "inner_acceptance".into()]
    }

    fn params_json(&self) -> String {
        serde_json::to_string(&self.card).unwrap_or_default()
    }

    fn apply(
        &mut self,
        theory: &mut TheoryHandle,
        config: &mut [f64],
        rng: &mut Stream,
        out: &mut Vec<StepRecord>,
    ) -> Result<(), PluginLoadError> {
        super::require_exact_action(theory, "an 'anneal' step")?;
        for _ in 0..self.card.repeat {
            // the theory leaves every application at its own value, whatever happened
            let (x, work, inner) =
                super::restoring_parameter(theory, &self.card.parameter, |t, v| self.protocol(t, config, v, rng))?;
            let accepted = metropolis_accept(-work, rng);
            if accepted {
                config.copy_from_slice(&x);
            }
            out.push(StepRecord { accepted, columns: vec![work, inner] });
        }
        Ok(())
    }
}
