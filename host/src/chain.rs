//! Markov chains composed from steps, as the run card's `[[chain]]` list says.
//!
//! A sweep applies every step in card order, each `repeat` times. Each step draws from its
//! own random stream, so adding or reordering steps never changes another step's numbers.
//! Every application of a step yields a [`StepRecord`]: the accept flag and the step's named
//! columns (for HMC: ΔH and the action after the step), stored per step in the ensemble so
//! that any accept decision can be re-checked offline.

use latflow_core::abi::HmcParams;
use latflow_core::{RngState, Stream};

use crate::card::{HmcCard, RunCard, StepCard};
use crate::plugin::{PluginLoadError, TheoryHandle};

/// Purpose tag of the per-step streams.
pub const STREAM_STEP: u16 = 1;
/// Purpose tag of the stream that draws the starting configuration.
pub const STREAM_INIT: u16 = 2;

/// The outcome of one application of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub accepted: bool,
    /// One value per column of the step, in [`MarkovStep::columns`] order.
    pub columns: Vec<f64>,
}

/// A Markov step acting on the configuration.
pub trait MarkovStep {
    /// The kind as written in run cards.
    fn kind(&self) -> &'static str;
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
}

/// `kind = "hmc"`: trajectories run inside the theory plugin.
pub struct HmcStep {
    card: HmcCard,
    params: HmcParams,
}

impl HmcStep {
    pub fn new(card: &HmcCard) -> Self {
        Self { card: card.clone(), params: card.params() }
    }
}

impl MarkovStep for HmcStep {
    fn kind(&self) -> &'static str {
        "hmc"
    }

    fn columns(&self) -> Vec<String> {
        vec!["delta_h".into(), "action".into()]
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
        let recs = theory.hmc(config, &self.params, self.card.repeat, rng)?;
        out.extend(recs.into_iter().map(|r| StepRecord { accepted: r.accepted, columns: vec![r.delta_h, r.action] }));
        Ok(())
    }
}

/// The composed chain with one stream per step.
pub struct Chain {
    steps: Vec<Box<dyn MarkovStep>>,
    rngs: Vec<Stream>,
}

impl Chain {
    /// The chain of a card, with fresh streams derived from the run seed.
    pub fn new(card: &RunCard) -> Self {
        let steps: Vec<Box<dyn MarkovStep>> = card
            .chain
            .iter()
            .map(|s| match s {
                StepCard::Hmc(h) => Box::new(HmcStep::new(h)) as Box<dyn MarkovStep>,
            })
            .collect();
        let rngs = (0..steps.len()).map(|i| Stream::new(card.run.seed, Stream::id(STREAM_STEP, i as u16, 0, 0))).collect();
        Self { steps, rngs }
    }

    /// The steps.
    pub fn steps(&self) -> &[Box<dyn MarkovStep>] {
        &self.steps
    }

    /// Stream states, for checkpoints.
    pub fn rng_states(&self) -> Vec<RngState> {
        self.rngs.iter().map(Stream::state).collect()
    }

    /// Restores stream states from a checkpoint.
    pub fn restore_rngs(&mut self, states: &[RngState]) -> Result<(), String> {
        if states.len() != self.rngs.len() {
            return Err(format!("checkpoint has {} step streams, the chain has {} steps", states.len(), self.rngs.len()));
        }
        self.rngs = states.iter().map(Stream::from_state).collect();
        Ok(())
    }

    /// One sweep: every step in order. `records[i]` receives step i's records. An error
    /// carries the index of the step that failed.
    pub fn sweep(
        &mut self,
        theory: &mut TheoryHandle,
        config: &mut [f64],
        records: &mut [Vec<StepRecord>],
    ) -> Result<(), (usize, PluginLoadError)> {
        for (i, ((step, rng), out)) in self.steps.iter_mut().zip(&mut self.rngs).zip(records.iter_mut()).enumerate() {
            step.apply(theory, config, rng, out).map_err(|e| (i, e))?;
        }
        Ok(())
    }
}
