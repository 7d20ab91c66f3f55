//! Markov chains composed from steps, as the run card's `[[chain]]` list says (the steps
//! themselves are in the registry [`crate::steps`]).
//!
//! A sweep applies every step in card order, each `repeat` times. Each step draws from its
//! own random stream, so adding or reordering steps never changes another step's numbers.
//! Every application of a step yields a [`StepRecord`]: the accept flag and the step's named
//! columns (for HMC: ΔH and the action after the step), stored per step in the ensemble so
//! that any accept decision can be re-checked offline.

use std::sync::Arc;

use latflow_core::{RngState, Stream};

use crate::card::{RunCard, StepCard};
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};
pub use crate::steps::{MarkovStep, StepRecord};
use crate::streams::{stream, Slot, StreamUse};

/// The composed chain with one stream per step.
pub struct Chain {
    steps: Vec<Box<dyn MarkovStep>>,
    rngs: Vec<Stream>,
    /// The card index of each step.
    card_indices: Vec<usize>,
}

impl Chain {
    /// The chain of a card, with fresh streams derived from the run seed. `model` must be
    /// given when the chain has `flow` or `reweight` steps.
    pub fn new(card: &RunCard, theory: &TheoryHandle, model: Option<Arc<ModelHandle>>) -> Result<Self, String> {
        let steps: Vec<(usize, &StepCard)> = card.chain.iter().enumerate().collect();
        Self::build(card.run.seed, &steps, theory, model, |step| StreamUse::Step { step, slot: Slot::Chain(card.run.chain as usize) })
    }

    /// The chain that runs at coupling slot `k` of a replica-exchange run: the card's steps
    /// except the `replica_exchange` ones (which act across replicas), each with its own stream
    /// (`StreamUse::Step { step: card index, slot: Slot::Coupling(k) }`). `model` is coupling k's model.
    pub fn for_replica(
        card: &RunCard,
        k: usize,
        theory: &TheoryHandle,
        model: Option<Arc<ModelHandle>>,
    ) -> Result<Self, String> {
        let steps: Vec<(usize, &StepCard)> =
            card.chain.iter().enumerate().filter(|(_, s)| !matches!(s, StepCard::ReplicaExchange(_))).collect();
        Self::build(card.run.seed, &steps, theory, model, |step| StreamUse::Step { step, slot: Slot::Coupling(k) })
    }

    fn build(
        seed: u64,
        steps: &[(usize, &StepCard)],
        theory: &TheoryHandle,
        model: Option<Arc<ModelHandle>>,
        stream_of: impl Fn(usize) -> StreamUse,
    ) -> Result<Self, String> {
        let boxed = steps
            .iter()
            .map(|(i, s)| crate::steps::build(s, theory, model.clone()).map_err(|e| e.at(&format!("chain[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let rngs = steps
            .iter()
            .map(|(i, _)| stream(seed, stream_of(*i)).map_err(|e| format!("chain[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { steps: boxed, rngs, card_indices: steps.iter().map(|(i, _)| *i).collect() })
    }

    /// The card index of each step.
    pub fn card_indices(&self) -> &[usize] {
        &self.card_indices
    }

    /// Every step's internal state, for checkpoints.
    pub fn step_states(&self) -> Vec<Vec<f64>> {
        self.steps.iter().map(|s| s.state()).collect()
    }

    /// Restores step states from a checkpoint.
    pub fn restore_states(&mut self, states: &[Vec<f64>]) -> Result<(), String> {
        if states.len() != self.steps.len() {
            return Err(format!("checkpoint has {} step states, the chain has {} steps", states.len(), self.steps.len()));
        }
        for (i, (step, st)) in self.steps.iter_mut().zip(states).enumerate() {
            step.restore(st).map_err(|e| format!("chain[{i}]: {e}"))?;
        }
        Ok(())
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

    /// Applies the steps at positions `steps` (a range of this chain's steps), in order.
    /// `records[i]` receives the records of the chain's step i. An error carries the position of
    /// the step that failed.
    pub fn sweep_range(
        &mut self,
        steps: std::ops::Range<usize>,
        theory: &mut TheoryHandle,
        config: &mut [f64],
        records: &mut [Vec<StepRecord>],
    ) -> Result<(), (usize, PluginLoadError)> {
        for i in steps {
            self.steps[i].apply(theory, config, &mut self.rngs[i], &mut records[i]).map_err(|e| (i, e))?;
        }
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
