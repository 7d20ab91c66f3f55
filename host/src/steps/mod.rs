//! The step registry: every kind of Markov step that acts on one configuration, one file each.
//!
//! * [`hmc`]: `kind = "hmc"`, trajectories inside the theory plugin;
//! * [`flow`]: `kind = "flow"`, independence Metropolis with model proposals;
//! * [`reweight`]: `kind = "reweight"`, independent model samples with importance weights;
//! * `snf`: the `anneal` table of `flow` and `reweight` steps, which makes their proposals a
//!   stochastic normalizing flow (the model followed by HMC layers along a parameter schedule);
//! * [`anneal`]: `kind = "anneal"`, non-equilibrium candidate Monte Carlo: a palindromic
//!   annealing of one theory parameter with HMC at every stage, accepted on its work;
//! * [`swap`]: `kind = "replica_exchange"`, swaps between neighbouring couplings of a replica
//!   ladder. It acts on pairs of configurations, so the ladder driver ([`crate::replica`])
//!   applies it rather than [`build`];
//! * [`theory`]: any other kind, provided by the theory plugin itself (e.g. the SU(N)
//!   theory's `heatbath` and `overrelax`), validated by the plugin when the chain is built.
//!
//! A new single-configuration kind is a file here implementing [`MarkovStep`], its line in
//! [`build`], and its `[[chain]]` card variant in [`crate::card::StepCard`].

use std::sync::Arc;

use latflow_core::Stream;

use crate::card::StepCard;
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};

pub mod anneal;
pub mod flow;
pub mod hmc;
mod proposals;
pub mod reweight;
mod snf;
pub mod swap;
pub mod theory;

pub use anneal::AnnealStep;
pub use flow::FlowStep;
pub use hmc::HmcStep;
pub use reweight::ReweightStep;
pub use theory::TheoryStep;

/// The outcome of one application of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub accepted: bool,
    /// One value per column of the step, in [`MarkovStep::columns`] order.
    pub columns: Vec<f64>,
}

/// A Markov step acting on the configuration.
pub trait MarkovStep: Send + Sync {
    /// The kind as written in run cards.
    fn kind(&self) -> &str;
    /// Names of the per-application columns stored besides the accept flag.
    fn columns(&self) -> Vec<String>;
    /// The step's parameters as JSON (stored in the ensemble).
    fn params_json(&self) -> String;
    /// Applies the step `repeat` times, appending one record per application.
    fn apply(
        &mut self,
        theory: &mut TheoryHandle,
        config: &mut [f64],
        rng: &mut Stream,
        out: &mut Vec<StepRecord>,
    ) -> Result<(), PluginLoadError>;
    /// Internal state that must survive a checkpoint (e.g. unused proposals), as exact f64s.
    fn state(&self) -> Vec<f64> {
        Vec::new()
    }
    /// Restores [`MarkovStep::state`].
    fn restore(&mut self, state: &[f64]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(format!("a {} step has no state, but the checkpoint holds {} values", self.kind(), state.len()))
        }
    }
}

/// Refuses a theory whose action is only a stochastic estimate for a step that needs the exact
/// action S (`what`, e.g. "a 'flow' step"): flow Metropolis, reweighting, and replica swaps,
/// whose acceptance ratios and weights are built from S itself.
pub fn require_exact_action(theory: &TheoryHandle, what: &str) -> Result<(), PluginLoadError> {
    if theory.action_is_exact() {
        Ok(())
    } else {
        Err(PluginLoadError::InexactAction { plugin: theory.name.clone(), step: what.to_string() })
    }
}

/// Runs `f(theory, v)` with v the theory's value of parameter `name`, and sets the parameter
/// back to v afterwards, whatever `f` returned: for steps that move a parameter on the way
/// (`anneal`, the stochastic layers of `flow` and `reweight`) and must leave the theory as
/// they found it.
pub(super) fn restoring_parameter<T>(
    theory: &mut TheoryHandle,
    name: &str,
    f: impl FnOnce(&mut TheoryHandle, f64) -> Result<T, PluginLoadError>,
) -> Result<T, PluginLoadError> {
    let v = theory.parameter(name)?;
    let result = f(theory, v);
    theory.set_parameter(name, v)?;
    result
}

/// The acceptance of the HMC trajectories a step runs inside it (its `inner_acceptance`).
#[derive(Debug, Default)]
pub(super) struct InnerHmc {
    accepted: usize,
    trajectories: usize,
}

impl InnerHmc {
    /// `repeat` trajectories of `params` on `x` at the theory's current parameters, counted.
    pub(super) fn run(
        &mut self,
        theory: &mut TheoryHandle,
        x: &mut [f64],
        params: &latflow_core::abi::HmcParams,
        repeat: u32,
        rng: &mut Stream,
    ) -> Result<(), PluginLoadError> {
        let recs = theory.hmc(x, params, repeat, rng)?;
        self.accepted += recs.iter().filter(|r| r.accepted).count();
        self.trajectories += recs.len();
        Ok(())
    }

    /// The fraction accepted (0 when none ran).
    pub(super) fn acceptance(&self) -> f64 {
        self.accepted as f64 / self.trajectories.max(1) as f64
    }
}

/// Why a `[[chain]]` entry cannot become a step: the entry's key at fault, if one is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The key of the entry (e.g. `kind`), or `None` for the entry as a whole.
    pub key: Option<&'static str>,
    pub message: String,
}

impl From<String> for BuildError {
    fn from(message: String) -> Self {
        Self { key: None, message }
    }
}

impl BuildError {
    /// The message with the entry's path in front: `chain[i].key: …` or `chain[i]: …`.
    pub fn at(&self, entry: &str) -> String {
        match self.key {
            Some(k) => format!("{entry}.{k}: {}", self.message),
            None => format!("{entry}: {}", self.message),
        }
    }
}

/// The step of a `[[chain]]` entry. `model` is the run's (or the coupling's) model, which `flow`
/// and `reweight` steps need; `replica_exchange` is not a single-configuration step.
pub fn build(
    card: &StepCard,
    theory: &TheoryHandle,
    model: Option<Arc<ModelHandle>>,
) -> Result<Box<dyn MarkovStep>, BuildError> {
    let model = || model.clone().ok_or_else(|| format!("a '{}' step needs a [model]", card.kind()));
    Ok(match card {
        StepCard::Hmc(h) => Box::new(HmcStep::new(h)),
        StepCard::Theory(t) => Box::new(TheoryStep::new(t, theory)?),
        StepCard::Flow(p) => Box::new(FlowStep::new(p, model()?, theory)?),
        StepCard::Reweight(p) => Box::new(ReweightStep::new(p, model()?, theory)?),
        StepCard::Anneal(a) => Box::new(AnnealStep::new(a, theory)?),
        StepCard::ReplicaExchange(_) => {
            return Err(String::from("a 'replica_exchange' step needs a replica ladder ([ladder] or [[replicas]])").into())
        }
    })
}
