//! `kind = "flow"`: independence Metropolis with proposals from a model.

use std::sync::Arc;

use latflow_core::hmc::metropolis_accept;
use latflow_core::Stream;

use super::proposals::ProposalBuffer;
use super::{MarkovStep, StepRecord};
use crate::card::ProposalCard;
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};

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
    fn kind(&self) -> &str {
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
        super::require_exact_action(theory, "a 'flow' step")?;
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
