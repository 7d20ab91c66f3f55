//! Markov chains composed from steps, as the run card's `[[chain]]` list says.
//!
//! A sweep applies every step in card order, each `repeat` times. Each step draws from its
//! own random stream, so adding or reordering steps never changes another step's numbers.
//! Every application of a step yields a [`StepRecord`]: the accept flag and the step's named
//! columns (for HMC: ΔH and the action after the step), stored per step in the ensemble so
//! that any accept decision can be re-checked offline.

use std::sync::Arc;

use latflow_core::abi::HmcParams;
use latflow_core::hmc::metropolis_accept;
use latflow_core::{RngState, Stream};

use crate::card::{HmcCard, ProposalCard, RunCard, StepCard};
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};
use crate::streams::{stream, StreamUse};

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

/// Proposals drawn from a model in batches and used one at a time, in order, with their
/// log q and action (computed for the whole batch at once, in parallel inside the plugins).
struct ProposalBuffer {
    configs: Vec<f64>,
    log_q: Vec<f64>,
    actions: Vec<f64>,
    next: usize,
}

impl ProposalBuffer {
    fn empty() -> Self {
        Self { configs: Vec::new(), log_q: Vec::new(), actions: Vec::new(), next: 0 }
    }

    /// The next proposal `(config, log q, S)`, refilling with `batch` new ones when used up.
    fn next<'a>(
        &'a mut self,
        model: &ModelHandle,
        theory: &TheoryHandle,
        batch: u32,
        rng: &mut Stream,
    ) -> Result<(&'a [f64], f64, f64), PluginLoadError> {
        if self.next >= self.log_q.len() {
            let (configs, log_q) = model.sample(batch, rng)?;
            self.actions = theory.action(&configs)?;
            self.configs = configs;
            self.log_q = log_q;
            self.next = 0;
        }
        let i = self.next;
        self.next += 1;
        let n = self.configs.len() / self.log_q.len();
        Ok((&self.configs[i * n..(i + 1) * n], self.log_q[i], self.actions[i]))
    }

    /// [remaining, then the remaining proposals' configs, log q, actions].
    fn state(&self) -> Vec<f64> {
        let rem = self.log_q.len() - self.next;
        let n = if self.log_q.is_empty() { 0 } else { self.configs.len() / self.log_q.len() };
        let mut s = vec![rem as f64];
        s.extend_from_slice(&self.configs[self.next * n..]);
        s.extend_from_slice(&self.log_q[self.next..]);
        s.extend_from_slice(&self.actions[self.next..]);
        s
    }

    fn restore(state: &[f64], config_len: usize) -> Result<(Self, &[f64]), String> {
        let rem = *state.first().ok_or("empty proposal state")? as usize;
        let need = 1 + rem * (config_len + 2);
        if state.len() < need {
            return Err(format!("proposal state too short ({} < {need})", state.len()));
        }
        let c = &state[1..1 + rem * config_len];
        let lq = &state[1 + rem * config_len..1 + rem * (config_len + 1)];
        let a = &state[1 + rem * (config_len + 1)..need];
        Ok((Self { configs: c.to_vec(), log_q: lq.to_vec(), actions: a.to_vec(), next: 0 }, &state[need..]))
    }
}

/// `kind = "flow"`: independence Metropolis with model proposals φ' ~ q, accepted with
/// probability min(1, w(φ')/w(φ)), w = e^{−S}/q. Records: accepted, and the inputs of the
/// decision — the proposal's log q and S, and log w of the configuration it was compared with.
pub struct FlowStep {
    card: ProposalCard,
    model: Arc<ModelHandle>,
    buffer: ProposalBuffer,
    /// log w of the current configuration, with the configuration it belongs to. Another step
    /// (HMC) may have moved the chain since; then log w is recomputed from log q and S.
    current: Option<(Vec<f64>, f64)>,
}

impl FlowStep {
    pub fn new(card: &ProposalCard, model: Arc<ModelHandle>) -> Self {
        Self { card: card.clone(), model, buffer: ProposalBuffer::empty(), current: None }
    }
}

impl MarkovStep for FlowStep {
    fn kind(&self) -> &'static str {
        "flow"
    }

    fn columns(&self) -> Vec<String> {
        vec!["log_q".into(), "action".into(), "log_w_current".into()]
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
        for _ in 0..self.card.repeat {
            let log_w_cur = match &self.current {
                Some((c, w)) if bits_equal(c, config) => *w,
                _ => -theory.action(config)?[0] - self.model.log_prob(config)?[0],
            };
            let (proposal, log_q, action) = self.buffer.next(&self.model, theory, self.card.batch, rng)?;
            let log_w = -action - log_q;
            let accepted = metropolis_accept(log_w - log_w_cur, rng);
            if accepted {
                config.copy_from_slice(proposal);
            }
            self.current = Some((config.to_vec(), if accepted { log_w } else { log_w_cur }));
            out.push(StepRecord { accepted, columns: vec![log_q, action, log_w_cur] });
        }
        Ok(())
    }

    fn state(&self) -> Vec<f64> {
        let mut s = self.buffer.state();
        match &self.current {
            Some((c, w)) => {
                s.push(1.0);
                s.push(*w);
                s.extend_from_slice(c);
            }
            None => s.push(0.0),
        }
        s
    }

    fn restore(&mut self, state: &[f64]) -> Result<(), String> {
        let n = self.model.config_len();
        let (buffer, rest) = ProposalBuffer::restore(state, n)?;
        self.buffer = buffer;
        self.current = match rest {
            [flag] if *flag == 0.0 => None,
            [flag, w, c @ ..] if *flag == 1.0 && c.len() == n => Some((c.to_vec(), *w)),
            _ => return Err("flow step state has the wrong length".into()),
        };
        Ok(())
    }
}

fn bits_equal(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// `kind = "reweight"`: each sweep replaces the configuration by an independent model sample and
/// records its importance weight log w = −S − log q (no accept/reject). `analyze` forms
/// weighted means with jackknife errors, the ESS, and log Ẑ.
pub struct ReweightStep {
    card: ProposalCard,
    model: Arc<ModelHandle>,
    buffer: ProposalBuffer,
}

impl ReweightStep {
    pub fn new(card: &ProposalCard, model: Arc<ModelHandle>) -> Self {
        Self { card: card.clone(), model, buffer: ProposalBuffer::empty() }
    }
}

impl MarkovStep for ReweightStep {
    fn kind(&self) -> &'static str {
        "reweight"
    }

    fn columns(&self) -> Vec<String> {
        vec!["log_q".into(), "action".into(), "log_w".into()]
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
        for _ in 0..self.card.repeat {
            let (proposal, log_q, action) = self.buffer.next(&self.model, theory, self.card.batch, rng)?;
            config.copy_from_slice(proposal);
            out.push(StepRecord { accepted: true, columns: vec![log_q, action, -action - log_q] });
        }
        Ok(())
    }

    fn state(&self) -> Vec<f64> {
        self.buffer.state()
    }

    fn restore(&mut self, state: &[f64]) -> Result<(), String> {
        let (buffer, rest) = ProposalBuffer::restore(state, self.model.config_len())?;
        if !rest.is_empty() {
            return Err("reweight step state has the wrong length".into());
        }
        self.buffer = buffer;
        Ok(())
    }
}

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
    pub fn new(card: &RunCard, model: Option<Arc<ModelHandle>>) -> Result<Self, String> {
        let steps: Vec<(usize, &StepCard)> = card.chain.iter().enumerate().collect();
        Self::build(card.run.seed, &steps, model, |step| StreamUse::Step { step, slot: None })
    }

    /// The chain that runs at coupling slot `k` of a replica-exchange run: the card's steps
    /// except the `replica_exchange` ones (which act across replicas), each with its own stream
    /// (`StreamUse::Step { step: card index, slot: Some(k) }`). `model` is coupling k's model.
    pub fn for_replica(card: &RunCard, k: usize, model: Option<Arc<ModelHandle>>) -> Result<Self, String> {
        let steps: Vec<(usize, &StepCard)> =
            card.chain.iter().enumerate().filter(|(_, s)| !matches!(s, StepCard::ReplicaExchange(_))).collect();
        Self::build(card.run.seed, &steps, model, |step| StreamUse::Step { step, slot: Some(k) })
    }

    fn build(
        seed: u64,
        steps: &[(usize, &StepCard)],
        model: Option<Arc<ModelHandle>>,
        stream_of: impl Fn(usize) -> StreamUse,
    ) -> Result<Self, String> {
        let boxed = steps
            .iter()
            .map(|(_, s)| -> Result<Box<dyn MarkovStep>, String> {
                let model = || model.clone().ok_or_else(|| format!("a '{}' step needs a [model]", s.kind()));
                Ok(match s {
                    StepCard::Hmc(h) => Box::new(HmcStep::new(h)),
                    StepCard::Flow(p) => Box::new(FlowStep::new(p, model()?)),
                    StepCard::Reweight(p) => Box::new(ReweightStep::new(p, model()?)),
                    StepCard::ReplicaExchange(_) => {
                        return Err("a 'replica_exchange' step needs a replica ladder ([ladder] or [[replicas]])".into())
                    }
                })
            })
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
