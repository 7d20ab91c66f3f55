//! Model proposals shared by the `flow` and `reweight` steps.

use latflow_core::Stream;

use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};

/// Proposals drawn from a model in batches and used one at a time, in order, with their
/// log q and action (computed for the whole batch at once, in parallel inside the plugins).
pub(super) struct ProposalBuffer {
    configs: Vec<f64>,
    log_q: Vec<f64>,
    actions: Vec<f64>,
    next: usize,
}

impl ProposalBuffer {
    pub(super) fn empty() -> Self {
        Self { configs: Vec::new(), log_q: Vec::new(), actions: Vec::new(), next: 0 }
    }

    /// The next proposal `(config, log q, S)`, refilling with `batch` new ones when used up.
    pub(super) fn next<'a>(
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
    pub(super) fn state(&self) -> Vec<f64> {
        let rem = self.log_q.len() - self.next;
        let n = if self.log_q.is_empty() { 0 } else { self.configs.len() / self.log_q.len() };
        let mut s = vec![rem as f64];
        s.extend_from_slice(&self.configs[self.next * n..]);
        s.extend_from_slice(&self.log_q[self.next..]);
        s.extend_from_slice(&self.actions[self.next..]);
        s
    }

    pub(super) fn restore(state: &[f64], config_len: usize) -> Result<(Self, &[f64]), String> {
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
