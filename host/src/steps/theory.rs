//! A step kind the theory plugin provides (e.g. `kind = "heatbath"` or `"overrelax"` of the
//! SU(N) theory): applied inside the plugin, `repeat` times per sweep, always accepted, with
//! the values the plugin names per application stored as the step's columns.

use latflow_core::Stream;

use super::{BuildError, MarkovStep, StepRecord};
use crate::card::TheoryStepCard;
use crate::plugin::{PluginLoadError, TheoryHandle};

/// `kind = "<a theory's step kind>"`.
pub struct TheoryStep {
    card: TheoryStepCard,
    options: String,
    columns: Vec<String>,
}

impl TheoryStep {
    /// Checks the kind and its options with the theory (which refuses kinds it does not have,
    /// naming the ones it has) and learns the step's columns.
    pub fn new(card: &TheoryStepCard, theory: &TheoryHandle) -> Result<Self, BuildError> {
        let options = serde_json::Value::Object(card.options.clone()).to_string();
        let columns = theory.step_columns(&card.kind, &options).map_err(|e| {
            let kinds = theory.step_kinds();
            let own = if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") };
            if kinds.iter().any(|k| k == &card.kind) {
                BuildError { key: None, message: format!("kind = \"{}\": {e}", card.kind) }
            } else {
                let message = format!(
                    "unknown step kind '{}': the built-in kinds are hmc, flow, reweight, anneal and replica_exchange, \
                     and the theory '{}' provides {own}",
                    card.kind, theory.name
                );
                BuildError { key: Some("kind"), message }
            }
        })?;
        Ok(Self { card: card.clone(), options, columns })
    }
}

impl MarkovStep for TheoryStep {
    fn kind(&self) -> &str {
        &self.card.kind
    }

    fn columns(&self) -> Vec<String> {
        self.columns.clone()
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
        let n = self.columns.len();
        let values = theory.step(&self.card.kind, &self.options, n, config, self.card.repeat, rng)?;
        let records = (0..self.card.repeat as usize)
            .map(|i| StepRecord { accepted: true, columns: values[i * n..(i + 1) * n].to_vec() });
        out.extend(records);
        Ok(())
    }
}
