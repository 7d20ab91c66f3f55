//! `latflow analyze`: Γ-method statistics of every observable and acceptance per step.

use std::collections::BTreeMap;

use latflow_core::stats::{
    ess_per_sample, gamma_method, jackknife_weighted, log_z_estimate, GammaResult, S_TAU_DEFAULT,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::ensemble::Ensemble;

/// The analysis of one observable (for vectors, one entry per component).
#[derive(Debug, Clone)]
pub struct ObservableAnalysis {
    pub name: String,
    pub description: String,
    pub components: Vec<GammaResult>,
    /// Components where the Γ-method could not estimate an error (too few samples, or a
    /// pathological autocorrelation function), with the reason. Their `error`, `tau_int` and
    /// `tau_int_error` are NaN (`null` in JSON); `mean` is the plain sample mean.
    pub failures: Vec<(usize, String)>,
}

/// Acceptance and ΔH statistics of one chain step.
#[derive(Debug, Clone, Serialize)]
pub struct StepAnalysis {
    pub label: String,
    pub kind: String,
    /// Applications recorded (measurement phase).
    pub n: usize,
    pub acceptance: f64,
    /// ⟨exp(−ΔH)⟩ with its error (HMC steps); must be 1 within errors.
    pub exp_minus_delta_h: Option<(f64, f64)>,
    /// ⟨ΔH⟩ (HMC steps).
    pub mean_delta_h: Option<f64>,
}

/// Importance-sampling summary of a `reweight` ensemble.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reweighting {
    /// (Σw)²/(N Σw²).
    pub ess_per_sample: f64,
    /// log Ẑ = logsumexp(log w) − ln N, an estimate of log Z with respect to the flat measure
    /// of the model's density (Π dφ for real fields).
    pub log_z: f64,
    /// Jackknife error of log Ẑ.
    pub log_z_error: f64,
    pub n: usize,
}

/// The full analysis of an ensemble.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub observables: Vec<ObservableAnalysis>,
    pub steps: Vec<StepAnalysis>,
    /// Present for `reweight` ensembles: their means are weighted, with jackknife errors.
    pub reweighting: Option<Reweighting>,
}

/// Analyses an ensemble. A component whose error cannot be estimated is kept, with the reason
/// in [`ObservableAnalysis::failures`], so that one bad series never hides the others.
pub fn analyze(ens: &Ensemble) -> anyhow::Result<Analysis> {
    // A reweight ensemble: independent model samples with importance weights.
    let log_w: Option<&Vec<f64>> = match ens.steps.as_slice() {
        [s] if s.kind == "reweight" => s.columns.iter().find(|(c, _)| c == "log_w").map(|(_, v)| v),
        _ => None,
    };
    if let Some(lw) = log_w {
        if lw.len() != ens.sweeps.len() {
            anyhow::bail!(
                "{}: reweight step has {} weights for {} measurements",
                ens.path.display(),
                lw.len(),
                ens.sweeps.len()
            );
        }
    }
    let reweighting = match log_w {
        Some(lw) => {
            let (log_z, log_z_error) = log_z_estimate(lw, 1).map_err(|e| anyhow::anyhow!("{}: log Z: {e}", ens.path.display()))?;
            Some(Reweighting { ess_per_sample: ess_per_sample(lw), log_z, log_z_error, n: lw.len() })
        }
        None => None,
    };
    let mut observables = Vec::new();
    for o in &ens.observables {
        let mut failures = Vec::new();
        let components = (0..o.len)
            .map(|j| {
                let series = o.component(j);
                let result = match log_w {
                    // independent samples: τ_int = ½ by construction; weighted jackknife errors
                    Some(lw) => jackknife_weighted(&[&series], lw, 1, |m| m[0]).map(|r| GammaResult {
                        mean: r.mean,
                        error: r.error,
                        tau_int: 0.5,
                        tau_int_error: 0.0,
                        window: 0,
                        n: series.len(),
                    }),
                    None => gamma_method(&series, S_TAU_DEFAULT),
                };
                result.unwrap_or_else(|e| {
                    failures.push((j, e.to_string()));
                    let mean = if series.is_empty() { f64::NAN } else { series.iter().sum::<f64>() / series.len() as f64 };
                    GammaResult { mean, error: f64::NAN, tau_int: f64::NAN, tau_int_error: f64::NAN, window: 0, n: series.len() }
                })
            })
            .collect();
        observables.push(ObservableAnalysis { name: o.name.clone(), description: o.description.clone(), components, failures });
    }
    let steps = ens
        .steps
        .iter()
        .map(|s| {
            let n = s.accepted.len();
            let acceptance = if n == 0 { f64::NAN } else { s.accepted.iter().map(|&a| a as f64).sum::<f64>() / n as f64 };
            let dh = s.columns.iter().find(|(c, _)| c == "delta_h").map(|(_, v)| v);
            let exp_minus_delta_h = dh.and_then(|v| {
                let e: Vec<f64> = v.iter().map(|x| (-x).exp()).collect();
                gamma_method(&e, S_TAU_DEFAULT).ok().map(|g| (g.mean, g.error))
            });
            let mean_delta_h = dh.filter(|v| !v.is_empty()).map(|v| v.iter().sum::<f64>() / v.len() as f64);
            StepAnalysis { label: s.label.clone(), kind: s.kind.clone(), n, acceptance, exp_minus_delta_h, mean_delta_h }
        })
        .collect();
    Ok(Analysis { observables, steps, reweighting })
}

/// A comparison of a measured value with a reference value.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: String,
    pub mean: f64,
    pub error: f64,
    pub reference: f64,
    pub reference_error: f64,
    /// (mean − reference)/√(error² + reference_error²).
    pub z: f64,
}

impl Analysis {
    /// Looks up a scalar observable or a component written `name[j]`.
    pub fn get(&self, name: &str) -> Option<&GammaResult> {
        let (base, j) = match name.split_once('[') {
            Some((b, rest)) => (b, rest.trim_end_matches(']').parse::<usize>().ok()?),
            None => (name, 0),
        };
        let o = self.observables.iter().find(|o| o.name == base)?;
        if !name.contains('[') && o.components.len() != 1 {
            return None;
        }
        o.components.get(j)
    }

    /// z-scores against reference values `(name, value, error)`; unknown names are errors.
    pub fn compare(&self, reference: &[(String, f64, f64)]) -> Result<Vec<Comparison>, String> {
        reference
            .iter()
            .map(|(name, r, re)| {
                let g = self.get(name).ok_or_else(|| format!("reference.{name}: no such scalar observable or component"))?;
                let z = (g.mean - r) / (g.error * g.error + re * re).sqrt();
                Ok(Comparison { name: name.clone(), mean: g.mean, error: g.error, reference: *r, reference_error: *re, z })
            })
            .collect()
    }

    /// The documented JSON shape:
    /// `{"observables": {NAME: {"mean", "error", "tau_int", "tau_int_error", "n"}}, "acceptance": {KIND: rate}, "steps": {...}}`;
    /// for vector observables `mean`, `error`, `tau_int` and `tau_int_error` are arrays.
    /// NaN (no estimate) is written as `null`.
    pub fn to_json(&self) -> Value {
        let mut obs = serde_json::Map::new();
        for o in &self.observables {
            let pick = |f: fn(&GammaResult) -> f64| -> Value {
                if o.components.len() == 1 {
                    json!(f(&o.components[0]))
                } else {
                    json!(o.components.iter().map(f).collect::<Vec<_>>())
                }
            };
            let mut entry = json!({
                "mean": pick(|g| g.mean),
                "error": pick(|g| g.error),
                "tau_int": pick(|g| g.tau_int),
                "tau_int_error": pick(|g| g.tau_int_error),
                "n": o.components.first().map_or(0, |g| g.n),
            });
            if !o.failures.is_empty() {
                entry["warnings"] = json!(o.failures.iter().map(|(j, w)| format!("[{j}]: {w}")).collect::<Vec<_>>());
            }
            obs.insert(o.name.clone(), entry);
        }
        let acceptance: BTreeMap<&str, f64> = self.steps.iter().map(|s| (s.label.as_str(), s.acceptance)).collect();
        let steps: BTreeMap<&str, &StepAnalysis> = self.steps.iter().map(|s| (s.label.as_str(), s)).collect();
        let mut out = json!({ "observables": obs, "acceptance": acceptance, "steps": steps });
        if let Some(r) = &self.reweighting {
            out["reweighting"] = json!(r);
        }
        out
    }

    /// A human-readable table.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<22} {:>14} {:>12} {:>10} {:>9} {:>7}\n",
            "observable", "mean", "error", "tau_int", "± ", "n"
        ));
        for o in &self.observables {
            for (j, why) in &o.failures {
                s.push_str(&format!("warning: {}[{j}]: no error estimate: {why}\n", o.name));
            }
            for (j, g) in o.components.iter().enumerate() {
                let name = if o.components.len() == 1 { o.name.clone() } else { format!("{}[{j}]", o.name) };
                s.push_str(&format!(
                    "{:<22} {:>14.8} {:>12.3e} {:>10.3} {:>9.3} {:>7}\n",
                    name, g.mean, g.error, g.tau_int, g.tau_int_error, g.n
                ));
            }
        }
        if let Some(r) = &self.reweighting {
            s.push_str(&format!(
                "reweighting: means are weighted; ESS/N = {:.4}; log Z = {:.6} ± {:.6} (flat measure of the model's density)\n",
                r.ess_per_sample, r.log_z, r.log_z_error
            ));
        }
        for st in &self.steps {
            s.push_str(&format!("step {:<10} acceptance {:.4} over {}", st.label, st.acceptance, st.n));
            if let Some((m, e)) = st.exp_minus_delta_h {
                s.push_str(&format!(", <exp(-dH)> = {m:.4} ± {e:.4}"));
            }
            s.push('\n');
        }
        s
    }
}
