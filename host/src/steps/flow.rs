//! `kind = "flow"`: independence Metropolis with proposals from a model.

use std::sync::Arc;

use latflow_core::hmc::metropolis_accept;
use latflow_core::Stream;

use super::proposals::ProposalBuffer;
use super::snf::AnnealedPaths;
use super::{BuildError, MarkovStep, StepRecord};
use crate::card::ProposalCard;
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};

/// `kind = "flow"`: independence Metropolis with model proposals φ' ~ q, accepted with
/// probability min(1, w(φ')/w(φ)), w = e^{−S}/q. Records: accepted, and the inputs of the
/// decision — the proposal's log q and S, and log w of the configuration it was compared with.
///
/// With an `anneal` table (a stochastic normalizing flow, [`super::snf`]) the proposal is the end
/// point of an annealed path from a model sample and w = e^{−W} its path weight; the records add
/// the proposal's log w and its layers' HMC acceptance, and log q is that of the path's start.
pub struct FlowStep {
    card: ProposalCard,
    model: Arc<ModelHandle>,
    buffer: ProposalBuffer,
    paths: Option<AnnealedPaths>,
    /// log w of the current configuration, with the configuration it belongs to. Another step
    /// (HMC) may have moved the chain since; then log w is recomputed from log q and S (or, for
    /// annealed proposals, from a path drawn backwards from the configuration).
    current: Option<(Vec<f64>, f64)>,
}

impl FlowStep {
    /// Refuses an `anneal` table whose parameter the theory does not have.
    pub fn new(card: &ProposalCard, model: Arc<ModelHandle>, theory: &TheoryHandle) -> Result<Self, BuildError> {
        let paths = AnnealedPaths::for_card(card, theory)?;
        Ok(Self { card: card.clone(), model, buffer: ProposalBuffer::empty(), paths, current: None })
    }
}

impl MarkovStep for FlowStep {
    fn kind(&self) -> &str {
        "flow"
    }

    fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = vec!["log_q".into(), "action".into(), "log_w_current".into()];
        if self.paths.is_some() {
            c.extend(AnnealedPaths::columns().map(String::from));
        }
        c
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
            let log_w_cur = match (&self.current, &self.paths) {
                (Some((c, w)), _) if bits_equal(c, config) => *w,
                (_, None) => -theory.action(config)?[0] - self.model.log_prob(config)?[0],
                (_, Some(paths)) => paths.reverse(theory, &self.model, config, rng)?.log_w,
            };
            let (proposal, log_q, action) = self.buffer.next(&self.model, theory, self.card.batch, rng)?;
            let (accepted, columns) = match &self.paths {
                None => {
                    let log_w = -action - log_q;
                    let accepted = metropolis_accept(log_w - log_w_cur, rng);
                    if accepted {
                        config.copy_from_slice(proposal);
                    }
                    self.current = Some((config.to_vec(), if accepted { log_w } else { log_w_cur }));
                    (accepted, vec![log_q, action, log_w_cur])
                }
                Some(paths) => {
                    let mut x = proposal.to_vec();
                    let path = paths.forward(theory, &mut x, log_q, rng)?;
                    let accepted = metropolis_accept(path.log_w - log_w_cur, rng);
                    if accepted {
                        config.copy_from_slice(&x);
                    }
                    self.current = Some((config.to_vec(), if accepted { path.log_w } else { log_w_cur }));
                    (accepted, vec![log_q, path.action, log_w_cur, path.log_w, path.inner_acceptance])
                }
            };
            out.push(StepRecord { accepted, columns });
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
