//! `latflow analyze`: Γ-method statistics of every observable and acceptance per step, for
//! every coupling of an ensemble file; for a replica ladder also the swap statistics and the
//! round trips. One function, [`analyze`], over the one reader view [`EnsembleFile`].

use std::collections::BTreeMap;

use latflow_stats::{
    ess_per_sample, gamma_method, jackknife_weighted, log_z_estimate, pareto_k, GammaResult, S_TAU_DEFAULT,
};
use serde::Serialize;
use serde_json::{json, Value};

pub use crate::diagnostics::value_error;
use crate::diagnostics::{self, Warning};
use crate::ensemble::{Ensemble, EnsembleFile, Ladder};

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
    /// Of them accepted.
    pub accepted: u64,
    pub acceptance: f64,
    /// ⟨exp(−ΔH)⟩ with its error (HMC steps); must be 1 within errors.
    pub exp_minus_delta_h: Option<(f64, f64)>,
    /// ⟨ΔH⟩ (HMC steps).
    pub mean_delta_h: Option<f64>,
    /// ⟨exp(−W)⟩ with its error, W the work of an `anneal` step's protocols (from the chain's
    /// equilibrium, so 1 within errors by Jarzynski's equality); `None` for other steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp_minus_work: Option<(f64, f64)>,
    /// ⟨W⟩ (`anneal` steps): the protocol's mean dissipated work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_work: Option<f64>,
    /// The Pareto shape k̂ of the proposals' importance weights w = e^{−S}/q (`flow` steps):
    /// above [`latflow_stats::PARETO_K_MAX`] the chain's error bars are unreliable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pareto_k: Option<f64>,
}

/// Importance-sampling summary of a `reweight` ensemble.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reweighting {
    /// (Σw)²/(N Σw²).
    pub ess_per_sample: f64,
    /// log Ẑ = logsumexp(log w) − ln N, an estimate of log Z with respect to the reference
    /// measure of the model's density (Π dφ for flow-scalar, Π dθ for flow-u1, the normalised
    /// Haar measure for flow-sun: each model plugin documents its own).
    pub log_z: f64,
    /// Jackknife error of log Ẑ.
    pub log_z_error: f64,
    /// The Pareto shape k̂ of the largest weights ([`latflow_stats::pareto_k`]); above
    /// [`latflow_stats::PARETO_K_MAX`] the weighted means and their errors are unreliable.
    pub pareto_k: f64,
    pub n: usize,
}

/// The analysis of the ensemble at one coupling.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub observables: Vec<ObservableAnalysis>,
    pub steps: Vec<StepAnalysis>,
    /// Present for `reweight` ensembles: their means are weighted, with jackknife errors.
    pub reweighting: Option<Reweighting>,
    /// Why (parts of) this analysis should not be trusted ([`crate::diagnostics`]).
    pub warnings: Vec<Warning>,
}

/// The analysis of an ensemble file: one [`Analysis`] per coupling (one for a plain file) and,
/// for a replica ladder, the swap statistics and round trips.
#[derive(Debug, Clone)]
pub struct EnsembleAnalysis {
    /// In coupling order.
    pub couplings: Vec<Analysis>,
    /// Present for a replica-exchange ensemble.
    pub exchange: Option<ExchangeAnalysis>,
}

/// Analyses an ensemble file: every coupling with [`analyze_coupling`] and, for a ladder, its
/// swaps and round trips. A plain file's error messages are those of its one coupling; a
/// ladder's name the coupling (`replica k`).
pub fn analyze(file: &EnsembleFile) -> anyhow::Result<EnsembleAnalysis> {
    let Some(ladder) = file.ladder() else {
        let couplings = file.couplings.iter().map(analyze_coupling).collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(EnsembleAnalysis { couplings, exchange: None });
    };
    let couplings = file
        .couplings
        .iter()
        .enumerate()
        .map(|(i, r)| analyze_coupling(r).map_err(|e| e.context(format!("replica {i}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let exchange = analyze_exchange(file, ladder)?;
    Ok(EnsembleAnalysis { couplings, exchange: Some(exchange) })
}

/// Analyses the ensemble at one coupling. A component whose error cannot be estimated is kept,
/// with the reason in [`ObservableAnalysis::failures`], so that one bad series never hides the
/// others.
pub fn analyze_coupling(ens: &Ensemble) -> anyhow::Result<Analysis> {
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
            Some(Reweighting { ess_per_sample: ess_per_sample(lw), log_z, log_z_error, pareto_k: pareto_k(lw), n: lw.len() })
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
            let accepted = s.accepted.iter().filter(|&&a| a != 0).count() as u64;
            let acceptance = if n == 0 { f64::NAN } else { accepted as f64 / n as f64 };
            let column = |name: &str| s.columns.iter().find(|(c, _)| c == name).map(|(_, v)| v);
            let exp_minus = |v: &Vec<f64>| {
                let e: Vec<f64> = v.iter().map(|x| (-x).exp()).collect();
                gamma_method(&e, S_TAU_DEFAULT).ok().map(|g| (g.mean, g.error))
            };
            let mean = |v: &Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            let dh = column("delta_h");
            let work = if s.kind == "anneal" { column("work") } else { None };
            let proposal_k = match (s.kind.as_str(), column("log_q"), column("action")) {
                // annealed proposals (a stochastic normalizing flow) record their path weights
                ("flow", _, _) if column("log_w").is_some() => column("log_w").map(|lw| pareto_k(lw)),
                ("flow", Some(lq), Some(a)) => {
                    Some(pareto_k(&a.iter().zip(lq).map(|(a, q)| -a - q).collect::<Vec<f64>>()))
                }
                _ => None,
            };
            StepAnalysis {
                label: s.label.clone(),
                kind: s.kind.clone(),
                n,
                accepted,
                acceptance,
                exp_minus_delta_h: dh.and_then(exp_minus),
                mean_delta_h: dh.and_then(mean),
                exp_minus_work: work.and_then(exp_minus),
                mean_work: work.and_then(mean),
                pareto_k: proposal_k,
            }
        })
        .collect();
    let mut analysis = Analysis { observables, steps, reweighting, warnings: Vec::new() };
    analysis.warnings = coupling_warnings(&analysis);
    Ok(analysis)
}

/// The warnings of one coupling's analysis: per observable component, the reweighting, and
/// per step (see [`crate::diagnostics`] for the rules).
fn coupling_warnings(a: &Analysis) -> Vec<Warning> {
    let mut w = Vec::new();
    for o in &a.observables {
        let single = o.components.len() == 1;
        for (j, g) in o.components.iter().enumerate() {
            let subject = if single { o.name.clone() } else { format!("{}[{j}]", o.name) };
            if let Some((_, why)) = o.failures.iter().find(|(k, _)| *k == j) {
                w.push(Warning { code: "no_error", subject: subject.clone(), message: format!("{subject}: no error estimate: {why}") });
            } else if a.reweighting.is_none() {
                w.extend(diagnostics::short_chain(&subject, g.n, g.tau_int));
            }
        }
    }
    if let Some(r) = &a.reweighting {
        w.extend(diagnostics::low_ess(r.n, r.ess_per_sample));
        w.extend(diagnostics::heavy_tail("reweighting", "the importance weights", r.pareto_k));
    }
    for st in &a.steps {
        w.extend(diagnostics::low_acceptance(&st.label, st.accepted, st.n as u64));
        if let Some((m, e)) = st.exp_minus_delta_h {
            w.extend(diagnostics::not_one("exp_delta_h", &st.label, "<exp(-dH)>", m, e));
        }
        if let Some((m, e)) = st.exp_minus_work {
            w.extend(diagnostics::not_one("exp_work", &st.label, "<exp(-W)>", m, e));
        }
        if let Some(k) = st.pareto_k {
            w.extend(diagnostics::heavy_tail(&st.label, "the proposals' weights", k));
        }
    }
    w
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
    /// False when a warning of the analysis concerns this observable
    /// ([`crate::diagnostics::Warning::affects`]): then z means little.
    pub reliable: bool,
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
                let reliable = !self.warnings.iter().any(|w| w.affects(name));
                Ok(Comparison { name: name.clone(), mean: g.mean, error: g.error, reference: *r, reference_error: *re, z, reliable })
            })
            .collect()
    }

    /// The documented JSON shape:
    /// `{"observables": {NAME: {"mean", "error", "value", "tau_int", "tau_int_error", "window", "n"}},
    /// "acceptance": {KIND: rate}, "steps": {...}, "warnings": [{"code", "subject", "message"}]}`;
    /// for vector observables `mean`, `error`, `value`, `tau_int`, `tau_int_error` and `window`
    /// are arrays. `value` is the value(error) string, τ_int is in sweeps, `window` is the
    /// Γ-method's summation window W in sweeps (0 where no error was estimated, and for
    /// reweighted samples). NaN (no estimate) is written as `null`.
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
            let pick_json = |f: fn(&GammaResult) -> Value| -> Value {
                if o.components.len() == 1 {
                    f(&o.components[0])
                } else {
                    Value::Array(o.components.iter().map(f).collect())
                }
            };
            let mut entry = json!({
                "mean": pick(|g| g.mean),
                "error": pick(|g| g.error),
                "value": pick_json(|g| json!(value_error(g.mean, g.error))),
                "tau_int": pick(|g| g.tau_int),
                "tau_int_error": pick(|g| g.tau_int_error),
                "window": pick_json(|g| json!(g.window)),
                "n": o.components.first().map_or(0, |g| g.n),
            });
            if !o.failures.is_empty() {
                entry["warnings"] = json!(o.failures.iter().map(|(j, w)| format!("[{j}]: {w}")).collect::<Vec<_>>());
            }
            obs.insert(o.name.clone(), entry);
        }
        let acceptance: BTreeMap<&str, f64> = self.steps.iter().map(|s| (s.label.as_str(), s.acceptance)).collect();
        let steps: BTreeMap<&str, &StepAnalysis> = self.steps.iter().map(|s| (s.label.as_str(), s)).collect();
        let mut out = json!({
            "observables": obs, "acceptance": acceptance, "steps": steps, "warnings": diagnostics::to_json(&self.warnings),
        });
        if let Some(r) = &self.reweighting {
            out["reweighting"] = json!(r);
        }
        out
    }

    /// A human-readable table: each observable's value(error), τ_int(error) in sweeps, the
    /// Γ-method window W and N; then the reweighting and step lines, and the warnings.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("{:<22} {:>20} {:>18} {:>6} {:>7}\n", "observable", "value(error)", "tau_int (sweeps)", "W", "n"));
        for o in &self.observables {
            for (j, g) in o.components.iter().enumerate() {
                let name = if o.components.len() == 1 { o.name.clone() } else { format!("{}[{j}]", o.name) };
                s.push_str(&format!(
                    "{:<22} {:>20} {:>18} {:>6} {:>7}\n",
                    name,
                    value_error(g.mean, g.error),
                    value_error(g.tau_int, g.tau_int_error),
                    g.window,
                    g.n
                ));
            }
        }
        if let Some(r) = &self.reweighting {
            s.push_str(&format!(
                "reweighting: means are weighted; ESS/N = {:.4}; Pareto k̂ = {:.2}; log Z = {:.6} ± {:.6} (w.r.t. the reference measure of the model's log q)\n",
                r.ess_per_sample, r.pareto_k, r.log_z, r.log_z_error
            ));
        }
        for st in &self.steps {
            s.push_str(&format!("step {:<10} acceptance {:.4} over {}", st.label, st.acceptance, st.n));
            if let Some((m, e)) = st.exp_minus_delta_h {
                s.push_str(&format!(", <exp(-dH)> = {}", value_error(m, e)));
            }
            if let Some(k) = st.pareto_k {
                s.push_str(&format!(", weights' Pareto k̂ = {k:.2}"));
            }
            if let (Some((m, e)), Some(w)) = (st.exp_minus_work, st.mean_work) {
                s.push_str(&format!(", <W> = {w:.3}, <exp(-W)> = {}", value_error(m, e)));
            }
            s.push('\n');
        }
        s.push_str(&diagnostics::to_text(&self.warnings));
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Replica exchange
// ---------------------------------------------------------------------------------------------

/// Swap statistics of one `replica_exchange` step.
#[derive(Debug, Clone, Serialize)]
pub struct SwapAnalysis {
    pub label: String,
    /// Flow-assisted swaps.
    pub flow: bool,
    /// Attempted swaps recorded (measurement phase).
    pub n: usize,
    /// Accepted / attempted, over all pairs.
    pub acceptance: f64,
    /// The swap-acceptance matrix: `attempts[i][j]` swaps attempted between couplings i and j
    /// (symmetric; only neighbours j = i ± 1 are ever attempted).
    pub attempts: Vec<Vec<u64>>,
    /// `accepts[i][j]`: swaps accepted between couplings i and j.
    pub accepts: Vec<Vec<u64>>,
    /// Acceptance of each neighbour pair (i, i+1); NaN (`null`) where none was attempted.
    pub pair_acceptance: Vec<f64>,
    /// ⟨e^{log r}⟩ over the attempted swaps with its Γ-method error. A swap is a deterministic
    /// involution T of the pair, so E[r] = ∫ π(T y)|det J_T(y)| dy = 1 in equilibrium, like
    /// ⟨e^{−ΔH}⟩ for HMC: a wrong action or Jacobian term shows up here.
    pub exp_log_ratio: Option<(f64, f64)>,
}

/// Round trips of the replicas along the ladder: a round trip is a replica's walk from the
/// lowest coupling (index 0) to the highest (index K − 1) and back. Its time is the number of
/// sweeps from the replica's first visit of the lowest coupling (or its previous return there)
/// to its next return after having reached the highest. Only the measured sweeps are seen.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTrips {
    /// Completed round trips, all replicas together.
    pub count: usize,
    /// Mean round-trip time in sweeps (NaN without round trips).
    pub mean: f64,
    /// Standard error of the mean (NaN with fewer than two round trips).
    pub error: f64,
    /// Each replica's round-trip times, in sweeps.
    pub per_replica: Vec<Vec<u64>>,
}

/// The ladder part of a replica-exchange ensemble's analysis: the swap statistics and the
/// round trips (the couplings' own analyses are in [`EnsembleAnalysis::couplings`]).
#[derive(Debug, Clone)]
pub struct ExchangeAnalysis {
    pub parameter: String,
    pub values: Vec<f64>,
    pub swaps: Vec<SwapAnalysis>,
    pub round_trips: RoundTrips,
    /// The swap steps' warnings (acceptance, ⟨e^{log r}⟩).
    pub warnings: Vec<Warning>,
}

/// The swap statistics and round trips of a ladder.
fn analyze_exchange(file: &EnsembleFile, ladder: &Ladder) -> anyhow::Result<ExchangeAnalysis> {
    let k = ladder.values.len();
    let mut swaps = Vec::new();
    for s in &ladder.swaps {
        let pairs = s
            .columns
            .iter()
            .find(|(c, _)| c == "pair")
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow::anyhow!("{}: swap step {} has no `pair` column", file.path.display(), s.label))?;
        let mut attempts = vec![vec![0u64; k]; k];
        let mut accepts = vec![vec![0u64; k]; k];
        for (&p, &a) in pairs.iter().zip(&s.accepted) {
            let i = p as usize;
            if p < 0.0 || p.fract() != 0.0 || i + 1 >= k {
                anyhow::bail!("{}: swap step {}: pair index {p} out of range (K = {k})", file.path.display(), s.label);
            }
            attempts[i][i + 1] += 1;
            attempts[i + 1][i] += 1;
            if a != 0 {
                accepts[i][i + 1] += 1;
                accepts[i + 1][i] += 1;
            }
        }
        let pair_acceptance = (0..k.saturating_sub(1))
            .map(|i| if attempts[i][i + 1] == 0 { f64::NAN } else { accepts[i][i + 1] as f64 / attempts[i][i + 1] as f64 })
            .collect();
        let n = s.accepted.len();
        let acceptance = if n == 0 { f64::NAN } else { s.accepted.iter().filter(|&&a| a != 0).count() as f64 / n as f64 };
        let flow = serde_json::from_str::<Value>(&s.params).ok().and_then(|v| v["flow"].as_bool()).unwrap_or(false);
        let exp_log_ratio = s.columns.iter().find(|(c, _)| c == "log_ratio").and_then(|(_, v)| {
            let e: Vec<f64> = v.iter().map(|x| x.exp()).collect();
            if e.iter().all(|x| x.is_finite()) {
                gamma_method(&e, S_TAU_DEFAULT).ok().map(|g| (g.mean, g.error))
            } else {
                None
            }
        });
        swaps.push(SwapAnalysis { label: s.label.clone(), flow, n, acceptance, attempts, accepts, pair_acceptance, exp_log_ratio });
    }
    let round_trips = round_trips(&ladder.path_sweeps, &ladder.replica_coupling, k);
    let mut warnings = Vec::new();
    for sw in &swaps {
        let accepted = sw.accepts.iter().enumerate().map(|(i, row)| row.get(i + 1).copied().unwrap_or(0)).sum::<u64>();
        warnings.extend(diagnostics::low_acceptance(&sw.label, accepted, sw.n as u64));
        if let Some((m, e)) = sw.exp_log_ratio {
            warnings.extend(diagnostics::not_one("exp_log_ratio", &sw.label, "<exp(log r)>", m, e));
        }
    }
    Ok(ExchangeAnalysis { parameter: ladder.parameter.clone(), values: ladder.values.clone(), swaps, round_trips, warnings })
}

/// Round trips from the replica paths: `coupling[i * k + r]` is the coupling of replica r at
/// row i (sweep `sweeps[i]`).
pub fn round_trips(sweeps: &[u64], coupling: &[u64], k: usize) -> RoundTrips {
    let top = k.saturating_sub(1) as u64;
    let mut per_replica = vec![Vec::new(); k];
    for (r, times) in per_replica.iter_mut().enumerate() {
        // start of the current trip (a visit of the bottom), and whether the top was reached since
        let mut start: Option<u64> = None;
        let mut seen_top = false;
        for (i, &t) in sweeps.iter().enumerate() {
            let c = coupling[i * k + r];
            if c == 0 {
                match start {
                    Some(s) if seen_top => {
                        times.push(t - s);
                        start = Some(t);
                        seen_top = false;
                    }
                    None => start = Some(t),
                    _ => {}
                }
            } else if c == top && start.is_some() {
                seen_top = true;
            }
        }
    }
    let all: Vec<f64> = per_replica.iter().flatten().map(|&t| t as f64).collect();
    let count = all.len();
    let mean = if count == 0 { f64::NAN } else { all.iter().sum::<f64>() / count as f64 };
    let error = if count < 2 {
        f64::NAN
    } else {
        let var = all.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (count - 1) as f64;
        (var / count as f64).sqrt()
    };
    RoundTrips { count, mean, error, per_replica }
}

impl EnsembleAnalysis {
    /// The analysis at coupling `k` (0 for a plain file).
    pub fn coupling(&self, k: usize) -> Option<&Analysis> {
        self.couplings.get(k)
    }

    /// The documented JSON shape. A plain file: its one coupling's [`Analysis::to_json`]. A
    /// replica-exchange ensemble:
    /// `{"replica_exchange": {"parameter", "values", "swaps": {LABEL: {"flow", "n", "acceptance",
    /// "attempts", "accepts", "pair_acceptance", "exp_log_ratio": [mean, error]}}, "round_trips": {"count", "mean", "error",
    /// "per_replica"}, "warnings"}, "replicas": [{"index", "parameter", "value", "observables", "acceptance",
    /// "steps", "warnings"}, ...], "warnings"}`, where each replica's `observables`, `acceptance`,
    /// `steps` and `warnings` are those of a plain ensemble's analysis (Γ-method errors), the
    /// exchange's `warnings` are the swap steps', and the top-level `warnings` hold all of them,
    /// each replica's subjects prefixed `replica K: `. NaN is written as `null`.
    pub fn to_json(&self) -> Value {
        let Some(x) = &self.exchange else { return self.plain().map_or(Value::Null, Analysis::to_json) };
        let swaps: BTreeMap<&str, &SwapAnalysis> = x.swaps.iter().map(|s| (s.label.as_str(), s)).collect();
        let replicas: Vec<Value> = self
            .couplings
            .iter()
            .zip(&x.values)
            .enumerate()
            .map(|(k, (a, v))| {
                let mut j = a.to_json();
                j["index"] = json!(k);
                j["parameter"] = json!(x.parameter);
                j["value"] = json!(v);
                j
            })
            .collect();
        json!({
            "replica_exchange": {
                "parameter": x.parameter,
                "values": x.values,
                "swaps": swaps,
                "round_trips": x.round_trips,
                "warnings": diagnostics::to_json(&x.warnings),
            },
            "replicas": replicas,
            "warnings": diagnostics::to_json(&self.warnings()),
        })
    }

    /// Every warning: a plain file's; for a ladder each coupling's (subjects prefixed
    /// `replica K: `) and the swap steps'.
    pub fn warnings(&self) -> Vec<Warning> {
        let Some(x) = &self.exchange else { return self.plain().map(|a| a.warnings.clone()).unwrap_or_default() };
        let mut all: Vec<Warning> = self
            .couplings
            .iter()
            .enumerate()
            .flat_map(|(k, a)| {
                a.warnings.iter().map(move |w| Warning {
                    code: w.code,
                    subject: format!("replica {k}: {}", w.subject),
                    message: format!("replica {k}: {}", w.message),
                })
            })
            .collect();
        all.extend(x.warnings.iter().cloned());
        all
    }

    /// A human-readable report: a plain file's table ([`Analysis::to_text`]); for a ladder each
    /// coupling's table, then the swap statistics and round trips.
    pub fn to_text(&self) -> String {
        let Some(x) = &self.exchange else { return self.plain().map_or_else(String::new, Analysis::to_text) };
        let mut s = String::new();
        for (k, (a, v)) in self.couplings.iter().zip(&x.values).enumerate() {
            s.push_str(&format!("== replica {k}: {} = {v}\n", x.parameter));
            s.push_str(&a.to_text());
        }
        s.push_str(&format!("== replica exchange over {}: {} couplings\n", x.parameter, x.values.len()));
        for sw in &x.swaps {
            s.push_str(&format!(
                "swap step {} ({}): acceptance {:.4} over {}",
                sw.label,
                if sw.flow { "flow-assisted" } else { "plain" },
                sw.acceptance,
                sw.n
            ));
            if let Some((m, e)) = sw.exp_log_ratio {
                s.push_str(&format!(", <exp(log r)> = {}", value_error(m, e)));
            }
            s.push('\n');
            s.push_str(&format!("  {:<6} {:>26} {:>10} {:>10} {:>10}\n", "pair", x.parameter, "attempts", "accepts", "acceptance"));
            for (i, acc) in sw.pair_acceptance.iter().enumerate() {
                s.push_str(&format!(
                    "  {:<6} {:>26} {:>10} {:>10} {:>10.4}\n",
                    format!("{i}-{}", i + 1),
                    format!("{} <-> {}", x.values[i], x.values[i + 1]),
                    sw.attempts[i][i + 1],
                    sw.accepts[i][i + 1],
                    acc
                ));
            }
        }
        let rt = &x.round_trips;
        if rt.count == 0 {
            s.push_str("round trips: none completed in the measured sweeps\n");
        } else {
            s.push_str(&format!("round trips: {} (mean {:.1} ± {:.1} sweeps)\n", rt.count, rt.mean, rt.error));
        }
        s.push_str(&diagnostics::to_text(&x.warnings));
        s
    }

    /// The one coupling of a plain file (`None` for a ladder).
    pub fn plain(&self) -> Option<&Analysis> {
        match (&self.exchange, self.couplings.as_slice()) {
            (None, [a]) => Some(a),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_follow_the_paths() {
        // 3 couplings; replica 0 goes 0 → 1 → 2 → 1 → 0 → 2 → 0; replica 1 never reaches 0
        let sweeps = [10, 11, 12, 13, 14, 15, 16];
        let r0 = [0u64, 1, 2, 1, 0, 2, 0];
        let r1 = [1u64, 0, 1, 2, 2, 0, 2];
        let r2 = [2u64, 2, 0, 0, 1, 1, 1];
        let mut path = Vec::new();
        for i in 0..7 {
            path.extend([r0[i], r1[i], r2[i]]);
        }
        let rt = round_trips(&sweeps, &path, 3);
        assert_eq!(rt.per_replica[0], vec![4, 2]);
        assert_eq!(rt.per_replica[1], vec![4]); // at 0 at sweep 11, top at 13, back at 15
        assert_eq!(rt.per_replica[2], Vec::<u64>::new());
        assert_eq!(rt.count, 3);
        assert!((rt.mean - 10.0 / 3.0).abs() < 1e-12);
    }
}
