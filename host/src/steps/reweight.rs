//! `kind = "reweight"`: independent model samples with importance weights.

use std::sync::Arc;

use latflow_core::Stream;

use super::proposals::ProposalBuffer;
use super::snf::AnnealedPaths;
use super::{BuildError, MarkovStep, StepRecord};
use crate::card::ProposalCard;
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};

/// `kind = "reweight"`: each sweep replaces the configuration by an independent model sample and
/// records its importance weight log w = −S − log q (no accept/reject). `analyze` forms
/// weighted means with jackknife errors, the ESS, and log Ẑ.
///
/// With an `anneal` table (a stochastic normalizing flow, [`super::snf`]) the sample is the end
/// point of an annealed path from a model sample, log w = −W is the path's, `action` is the end
/// point's and log q the start's, and a column adds the layers' HMC acceptance. E[e^{−W}] is
/// still Z, so `analyze` needs nothing else.
pub struct ReweightStep {
    card: ProposalCard,
    model: Arc<ModelHandle>,
    buffer: ProposalBuffer,
    paths: Option<AnnealedPaths>,
}

impl ReweightStep {
    /// Refuses an `anneal` table whose parameter the theory does not have.
    pub fn new(card: &ProposalCard, model: Arc<ModelHandle>, theory: &TheoryHandle) -> Result<Self, BuildError> {
        let paths = AnnealedPaths::for_card(card, theory)?;
        Ok(Self { card: card.clone(), model, buffer: ProposalBuffer::empty(), paths })
    }
}

impl MarkovStep for ReweightStep {
    fn kind(&self) -> &str {
        "reweight"
    }

    fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = vec!["log_q".into(), "action".into(), "log_w".into()];
        if self.paths.is_some() {
            c.push("inner_acceptance".into());
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
        super::require_exact_action(theory, "a 'reweight' step")?;
        for _ in 0..self.card.repeat {
            let (proposal, log_q, action) = self.buffer.next(&self.model, theory, self.card.batch, rng)?;
            config.copy_from_slice(proposal);
            let columns = match &self.paths {
                None => vec![log_q, action, -action - log_q],
                Some(paths) => {
                    let path = paths.forward(theory, config, log_q, rng)?;
                    vec![log_q, path.action, path.log_w, path.inner_acceptance]
                }
            };
            out.push(StepRecord { accepted: true, columns });
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
