//! Stochastic normalizing flows: model samples carried to the theory's coupling by annealing
//! (the `anneal` table of a `flow` or `reweight` step, [`crate::card::ProposalAnnealCard`]).
//!
//! The flow F (the model, density q) is followed by n = `stages` stochastic layers: K_k is
//! `hmc.repeat` HMC trajectories at λ_k = from + (v − from)·(k − 1)/n, k = 1 … n, which satisfies
//! detailed balance with e^{−S_{λ_k}}; λ_{n+1} = v is the theory's own value. A forward path is
//!
//! ```text
//! x_0 ~ q,   x_k = K_k(x_{k−1})  (k = 1 … n),   end point x_n,
//! W = S_{λ_1}(x_0) + log q(x_0) + Σ_{k=2}^{n+1} [S_{λ_k}(x_{k−1}) − S_{λ_{k−1}}(x_{k−1})].
//! ```
//!
//! With the extended target π(x_0 … x_n) = p(x_n) Π_k K_k(x_k → x_{k−1}) (p ∝ e^{−S_v}, the
//! layers run backwards) and the forward density Q = q(x_0) Π_k K_k(x_{k−1} → x_k), detailed
//! balance of each K_k gives π/Q = e^{−W}/Z. Hence (annealed importance sampling, Neal 2001; the
//! stochastic normalizing flow of Wu, Köhler and Noé 2020 and Caselle et al. 2022):
//!
//! * reweighting: ⟨O⟩ = E[O(x_n) e^{−W}] / E[e^{−W}], and E[e^{−W}] = Z (q normalised);
//! * independence Metropolis on paths: a new forward path replaces the current one with
//!   probability min(1, e^{W_current − W_new}). The marginal of the end point is p.
//!
//! When another step has moved the chain, the current configuration has no path; one is drawn
//! from its conditional under π, by running the layers backwards from it ([`AnnealedPaths::reverse`]),
//! which is a Gibbs update of the auxiliary variables and keeps the step exact. It costs as much
//! as a forward path. For `from` = v the layers are plain HMC at v and W is the flow's own
//! log-weight; a good schedule moves from a coupling where the model is good (and the charge
//! moves) to v slowly enough that W stays small. The flow is trained on its own, not through
//! the stochastic layers, and the layers follow the whole flow rather than interleave with its
//! couplings (the model is a plugin, whose layers the host does not see).

use latflow_core::Stream;

use super::{BuildError, InnerHmc};
use crate::card::{ProposalAnnealCard, ProposalCard};
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};

/// The stochastic layers of a `flow` or `reweight` step's `anneal` table.
pub(super) struct AnnealedPaths {
    card: ProposalAnnealCard,
}

/// A path's outcome: log w = −W, the action S_v of its end point, and the acceptance of the
/// layers' HMC trajectories.
pub(super) struct PathRecord {
    pub log_w: f64,
    pub action: f64,
    pub inner_acceptance: f64,
}

impl AnnealedPaths {
    /// The layers of a `flow` or `reweight` card's `anneal` table (`None` without one). Refuses
    /// a parameter the theory does not have (a value of λ it refuses is an error at the first
    /// path, naming the parameter and the value).
    pub(super) fn for_card(card: &ProposalCard, theory: &TheoryHandle) -> Result<Option<Self>, BuildError> {
        let Some(a) = &card.anneal else { return Ok(None) };
        theory.parameter(&a.parameter).map_err(|e| BuildError { key: Some("anneal.parameter"), message: e.to_string() })?;
        Ok(Some(Self { card: a.clone() }))
    }

    /// λ_k for k = 1 … n + 1 (λ_1 = `from`, λ_{n+1} = v).
    fn lambda(&self, v: f64, k: u32) -> f64 {
        let n = self.card.stages;
        if k == n + 1 {
            return v;
        }
        self.card.from + (v - self.card.from) * f64::from(k - 1) / f64::from(n)
    }

    /// The column names a step adds for its paths.
    pub(super) fn columns() -> [&'static str; 2] {
        ["log_w", "inner_acceptance"]
    }

    /// Carries the model sample `x` (log q = `log_q`) forward through the layers, in place, to
    /// its end point. The theory's parameter is back at its value v afterwards, whatever happened.
    pub(super) fn forward(
        &self,
        theory: &mut TheoryHandle,
        x: &mut [f64],
        log_q: f64,
        rng: &mut Stream,
    ) -> Result<PathRecord, PluginLoadError> {
        let (name, n) = (&self.card.parameter, self.card.stages);
        let params = self.card.hmc.params();
        super::restoring_parameter(theory, name, |theory, v| {
            let mut inner = InnerHmc::default();
            theory.set_parameter(name, self.lambda(v, 1))?;
            let mut work = theory.action(x)?[0] + log_q;
            let mut action = 0.0;
            for k in 1..=n {
                inner.run(theory, x, &params, self.card.hmc.repeat, rng)?;
                work -= theory.action(x)?[0];
                theory.set_parameter(name, self.lambda(v, k + 1))?;
                action = theory.action(x)?[0];
                work += action;
            }
            Ok(PathRecord { log_w: -work, action, inner_acceptance: inner.acceptance() })
        })
    }

    /// Draws a path that ends at `end` from its conditional under the extended target, by
    /// running the layers backwards (K_n first), and returns its record; `end` itself is left as
    /// it is. The theory's parameter is back at its value v afterwards, whatever happened.
    pub(super) fn reverse(
        &self,
        theory: &mut TheoryHandle,
        model: &ModelHandle,
        end: &[f64],
        rng: &mut Stream,
    ) -> Result<PathRecord, PluginLoadError> {
        let (name, n) = (&self.card.parameter, self.card.stages);
        let params = self.card.hmc.params();
        super::restoring_parameter(theory, name, |theory, v| {
            let mut inner = InnerHmc::default();
            let mut x = end.to_vec();
            // the k = n + 1 term, at the end point x_n
            let action = theory.action(&x)?[0];
            theory.set_parameter(name, self.lambda(v, n))?;
            let mut work = action - theory.action(&x)?[0];
            for k in (1..=n).rev() {
                // the parameter is λ_k: x_{k−1} = K_k(x_k)
                inner.run(theory, &mut x, &params, self.card.hmc.repeat, rng)?;
                work += theory.action(&x)?[0];
                if k >= 2 {
                    theory.set_parameter(name, self.lambda(v, k - 1))?;
                    work -= theory.action(&x)?[0];
                } else {
                    work += model.log_prob(&x)?[0];
                }
            }
            Ok(PathRecord { log_w: -work, action, inner_acceptance: inner.acceptance() })
        })
    }
}
