//! `kind = "hmc"`: HMC trajectories, run inside the theory plugin.

use latflow_core::abi::HmcParams;
use latflow_core::Stream;

use super::{MarkovStep, StepRecord};
use crate::card::HmcCard;
use crate::plugin::{PluginLoadError, TheoryHandle};

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
    fn kind(&self) -> &str {
        "hmc"
    }

    fn columns(&self) -> Vec<String> {
        vec!["delta_h".into(), "action".into(), "projection".into()]
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
        out.extend(recs.into_iter().map(|r| StepRecord { accepted: r.accepted, columns: vec![r.delta_h, r.action, r.projection] }));
        Ok(())
    }
}
