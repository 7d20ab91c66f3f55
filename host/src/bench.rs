//! `latflow bench`: which sampler gives independent configurations of one target most cheaply?
//!
//! A bench card names one target theory and several contenders:
//!
//! ```toml
//! [theory]                     # the target, as in a run card
//! plugin = "u1"
//! lattice = [8, 8]
//! beta = 2.0
//!
//! [bench]
//! observables = ["topological_charge", "plaquette"]  # τ_int and cost are computed for these
//! measurements = 20000         # equal number of configurations per contender, or
//! # seconds = 60               # an equal wall-clock budget (calibrated, see below)
//! # calibration = 20           # sweeps of the first calibration run (seconds mode)
//! thermalization = 200
//! seed = 1
//! threads = 1
//! output = "bench_u1"          # a directory: generated run cards, ensembles, bench.json, PNGs
//!
//! [reference]                  # optional exact values: z-scores in the table
//! plaquette = 0.6977746580
//!
//! [[contender]]
//! name = "HMC, Omelyan"
//! chain = [{ kind = "hmc", md_steps = 8, trajectory_length = 1.0, integrator = "omelyan2" }]
//!
//! [[contender]]
//! name = "flow Metropolis"
//! model = { plugin = "flow-u1", weights = "u1_b2.safetensors" }
//! train = { steps = 1000, batch = 64 }   # optional: trained first if the weights are missing
//! chain = [{ kind = "flow", batch = 256 }]
//! ```
//!
//! Every key of a contender except `name` and `theory` becomes a top-level section of a
//! generated run card (`chain`, `model`, `train`, and whatever else the run card knows, e.g. a
//! replica `ladder`); its `run` table, if any, is merged over the `[run]` that `[bench]`
//! generates. Each generated card is written to the output directory, so every contender can
//! be rerun on its own with `latflow run`.
//!
//! A contender may override the target's `[theory]`, to compare plugins for the same physics
//! or a plugin's own options, while the observables and the `[reference]` stay common:
//!
//! ```toml
//! [[contender]]
//! name = "HMC, hopping form"
//! theory = { plugin = "phi4", lattice = [8, 8], kappa = 0.25, lambda_hat = 0.5 }  # complete
//! chain = [{ kind = "hmc", md_steps = 8 }]
//!
//! [[contender]]
//! name = "HMC, 2 threads"
//! theory = { threads = 2 }                  # keys merged over the card's [theory]
//! chain = [{ kind = "hmc", md_steps = 8 }]
//! ```
//!
//! A `theory` that names a `plugin` is a complete theory table of its own (another plugin,
//! or the same plugin written with other keys); one without `plugin` lists keys that replace or
//! add to the card's `[theory]`. It is the contender's job to describe the same target: the
//! common observables and reference values are what make the comparison fair, and the table
//! shows each contender's z-scores against them.
//!
//! Definitions (per contender, per observable O):
//! * wall time: the whole `latflow run` (plugin loading, thermalization, measurements, HDF5
//!   writes), in seconds; training is not included;
//! * τ_int(O) from the Γ-method, in sweeps; for a `reweight` chain the samples are independent
//!   but weighted, and the effective τ is ½ · N / ESS with ESS = (Σw)²/Σw²;
//! * independent samples N_eff = N / (2 τ_int) (τ_int below ½, anticorrelation, is counted as ½
//!   so that N_eff ≤ N), effective samples per second = N_eff / wall;
//! * cost per independent sample = wall / N_eff, with the error propagated from δτ_int.
//!
//! Training a flow is a one-off cost, reported separately: its seconds, and the cost per
//! independent sample amortised over this run, (training + wall) / N_eff.
//!
//! Calibration (`seconds` mode): each contender first runs pairs of short runs of n and 2n
//! sweeps, starting at n = `calibration` (default 20, at least 10) and growing n until the
//! pair's difference in wall time, the cost of n sweeps without the start-up, is measurable:
//! at least [`CALIBRATION_FRACTION`] of the budget (and 20 ms). A single run that already takes
//! half the budget ends the calibration too. The measured run then gets as many sweeps as the
//! budget leaves after the fixed cost (at least [`MIN_MEASUREMENTS`] measured sweeps), so its
//! wall time lands near the budget; when it is more than 20% off (a contender whose
//! thermalization alone exceeds the budget, or a machine whose load changed), the contender
//! gets a `budget` warning. The calibration runs' time is not part of the wall time; bench.json
//! records them under each contender's `calibration` key: `sweeps` and `seconds` of every
//! calibration run in order, the estimated `seconds_per_sweep` and `fixed_seconds` (start-up
//! per run), and their `total_seconds`.
//!
//! Warnings ([`crate::diagnostics`]): each contender's analysis warnings (at the target
//! coupling, plus the swap steps' for a ladder) are listed under the table and in bench.json
//! (`warnings` per contender, and all of them, prefixed with the contender's name, at the top);
//! a z-score under a warning that concerns its observable is marked unreliable
//! (`z_reliable: false`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use latflow_stats::{autocorrelation, GammaResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::analyze::{analyze, value_error};
use crate::diagnostics::{self, Warning};
use crate::card::RunCard;
use crate::ensemble::{read, EnsembleFile};
use crate::plot::{bar_chart, line_panels, Panel, Series};
use crate::run::RunOptions;
use crate::train::TrainOptions;

/// Options of `latflow bench`.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    pub quiet: bool,
    pub plugin_dirs: Vec<PathBuf>,
    /// Replace an existing output directory's ensembles (trained weights are kept).
    pub force: bool,
}

/// The `[bench]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    /// Observables whose τ_int and cost per independent sample are reported; the first decides
    /// the cost bar chart.
    pub observables: Vec<String>,
    /// Equal number of measured sweeps for every contender.
    pub measurements: Option<u64>,
    /// Or: an equal wall-clock budget per contender, in seconds.
    pub seconds: Option<f64>,
    /// Sweeps of the first calibration run in `seconds` mode (see the module documentation).
    #[serde(default = "default_calibration")]
    pub calibration: u64,
    #[serde(default)]
    pub thermalization: u64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// Output directory (default: the card's name with `_bench`).
    pub output: Option<PathBuf>,
    /// Lags of the autocorrelation plot.
    #[serde(default = "default_acf_lags")]
    pub acf_lags: usize,
}

fn default_calibration() -> u64 {
    20
}

/// In `seconds` mode the calibration pair's time difference must reach this fraction of the
/// budget (see the module documentation).
pub const CALIBRATION_FRACTION: f64 = 0.05;
/// The fewest measured sweeps a `seconds`-mode contender runs.
pub const MIN_MEASUREMENTS: u64 = 10;
/// A `seconds`-mode contender whose wall time is off the budget by more than this fraction gets
/// a `budget` warning.
pub const BUDGET_TOLERANCE: f64 = 0.2;

/// How `seconds` mode chose a contender's number of sweeps (bench.json's `calibration`).
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Sweeps of every calibration run, in order.
    pub sweeps: Vec<u64>,
    /// Their wall times, seconds.
    pub seconds: Vec<f64>,
    /// Estimated wall time per sweep, seconds.
    pub seconds_per_sweep: f64,
    /// Estimated fixed wall time per run (start-up, loading), seconds.
    pub fixed_seconds: f64,
    /// The calibration runs' total wall time, seconds (not part of the contender's wall time).
    pub total_seconds: f64,
}

impl Calibration {
    /// The measured sweeps that fill `budget` seconds after `thermalization` sweeps and the
    /// fixed cost (at least [`MIN_MEASUREMENTS`]).
    pub fn measurements(&self, budget: f64, thermalization: u64) -> u64 {
        let total = ((budget - self.fixed_seconds) / self.seconds_per_sweep).floor().max(0.0) as u64;
        total.saturating_sub(thermalization).max(MIN_MEASUREMENTS)
    }
}

/// Removes an ensemble file and its checkpoint, if they exist.
fn remove_ensemble(path: &Path) {
    let _ = std::fs::remove_file(path);
    let mut ckpt = path.as_os_str().to_owned();
    ckpt.push(".ckpt");
    let _ = std::fs::remove_file(ckpt);
}

/// Calibrates a contender for a wall-time `budget` (seconds): `time(n)` runs n sweeps and
/// returns its wall time. See the module documentation for the rule.
fn calibrate(budget: f64, first: u64, mut time: impl FnMut(u64) -> Result<f64>) -> Result<Calibration> {
    let target = (CALIBRATION_FRACTION * budget).max(0.02);
    let (mut sweeps, mut seconds) = (Vec::new(), Vec::new());
    let mut n = first.max(1);
    let (per_sweep, fixed) = loop {
        let t1 = time(n)?;
        sweeps.push(n);
        seconds.push(t1);
        if t1 >= 0.5 * budget {
            // no room for a pair: all of it counted as sweeps, so the run errs on the short side
            break (t1 / n as f64, 0.0);
        }
        let t2 = time(2 * n)?;
        sweeps.push(2 * n);
        seconds.push(t2);
        let d = t2 - t1;
        if d >= target || t2 >= 0.5 * budget || sweeps.len() >= 24 {
            // a noisy difference is bounded below by a tenth of the pair's mean cost per sweep
            let per_sweep = (d / n as f64).max(t2 / (2 * n) as f64 * 0.1);
            break (per_sweep, (t1 - n as f64 * per_sweep).max(0.0));
        }
        let grow = if d > 0.0 { (2.0 * target / d).ceil() } else { 16.0 };
        n = n.saturating_mul(grow.clamp(2.0, 16.0) as u64);
    };
    let total_seconds = seconds.iter().sum();
    Ok(Calibration { sweeps, seconds, seconds_per_sweep: per_sweep, fixed_seconds: fixed, total_seconds })
}
fn default_seed() -> u64 {
    1
}
fn default_threads() -> u32 {
    1
}
fn default_acf_lags() -> usize {
    100
}

/// One contender of a bench card.
#[derive(Debug, Clone)]
pub struct Contender {
    pub name: String,
    /// File-name-safe form of `name`.
    pub slug: String,
    /// The top-level sections it contributes to its run card.
    pub sections: toml::Table,
    /// Its `theory` override, as written (see the module documentation).
    pub theory: Option<toml::Table>,
}

/// A parsed bench card.
#[derive(Debug, Clone)]
pub struct BenchCard {
    pub path: PathBuf,
    pub theory: toml::Table,
    pub bench: BenchSection,
    /// The `[reference]` table as it was written (passed on to plain run cards).
    pub reference_table: Option<toml::Table>,
    /// Its values: (observable, value, error).
    pub reference: Vec<(String, f64, f64)>,
    pub contenders: Vec<Contender>,
}

fn slugify(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let s = s.split('_').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("_");
    if s.is_empty() { "contender".into() } else { s }
}

impl BenchCard {
    /// Reads and validates a bench card; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read bench card"))?;
        Self::parse(path, &text)
    }

    /// Parses and validates bench card text; `path` names the file in errors and anchors the
    /// card's relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let file = path.display().to_string();
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| anyhow::anyhow!("{file}: not valid TOML: {e}"))?;
        for key in table.keys() {
            if !["theory", "bench", "reference", "contender"].contains(&key.as_str()) {
                bail!("{file}: {key}: unknown section (expected [theory], [bench], [reference], [[contender]])");
            }
        }
        let theory = match table.remove("theory") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => bail!("{file}: theory: must be a table ([theory])"),
            None => bail!("{file}: theory: missing section [theory] (the target theory)"),
        };
        let bench: BenchSection = match table.remove("bench") {
            Some(v @ toml::Value::Table(_)) => {
                serde_path_to_error::deserialize(v).map_err(|e| anyhow::anyhow!("{file}: bench.{}: {}", e.path(), e.inner()))?
            }
            Some(_) => bail!("{file}: bench: must be a table ([bench])"),
            None => bail!("{file}: bench: missing section [bench]"),
        };
        if bench.observables.is_empty() {
            bail!("{file}: bench.observables: name at least one observable");
        }
        match (bench.measurements, bench.seconds) {
            (Some(_), Some(_)) => bail!("{file}: bench: give either `measurements` or `seconds`, not both"),
            (None, None) => bail!("{file}: bench: give `measurements` (equal configurations) or `seconds` (equal wall time)"),
            (Some(0), _) => bail!("{file}: bench.measurements: must be at least 1"),
            (_, Some(s)) if !(s.is_finite() && s > 0.0) => bail!("{file}: bench.seconds: must be a positive number, got {s}"),
            _ => {}
        }
        if bench.calibration < 10 {
            bail!("{file}: bench.calibration: must be at least 10 sweeps");
        }
        let reference_table = match table.remove("reference") {
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => bail!("{file}: reference: must be a table ([reference])"),
            None => None,
        };
        let reference = match &reference_table {
            Some(t) => crate::card::reference_values(t.clone()).map_err(|(f, m)| anyhow::anyhow!("{file}: {f}: {m}"))?,
            None => Vec::new(),
        };
        let list = match table.remove("contender") {
            Some(toml::Value::Array(a)) => a,
            Some(_) => bail!("{file}: contender: must be an array of tables ([[contender]])"),
            None => bail!("{file}: contender: missing; give at least one [[contender]]"),
        };
        if list.is_empty() {
            bail!("{file}: contender: give at least one [[contender]]");
        }
        let mut contenders: Vec<Contender> = Vec::new();
        for (i, c) in list.into_iter().enumerate() {
            let here = format!("contender[{i}]");
            let mut t = match c {
                toml::Value::Table(t) => t,
                _ => bail!("{file}: {here}: must be a table"),
            };
            let name = match t.remove("name") {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => s,
                Some(_) => bail!("{file}: {here}.name: must be a non-empty string"),
                None => bail!("{file}: {here}.name: missing"),
            };
            if t.contains_key("reference") {
                bail!("{file}: {here}.reference: not allowed: every contender is compared with the card's one [reference]");
            }
            let theory = match t.remove("theory") {
                Some(toml::Value::Table(th)) if th.is_empty() => bail!("{file}: {here}.theory: empty; leave it out to sample the card's [theory]"),
                Some(toml::Value::Table(th)) => Some(th),
                Some(_) => bail!("{file}: {here}.theory: must be a table of [theory] keys"),
                None => None,
            };
            if !t.contains_key("chain") {
                bail!("{file}: {here}.chain: missing (the contender's chain steps)");
            }
            let mut slug = slugify(&name);
            if contenders.iter().any(|c| c.slug == slug) {
                slug = format!("{slug}_{i}");
            }
            if contenders.iter().any(|c| c.name == name) {
                bail!("{file}: {here}.name: '{name}' is used twice");
            }
            contenders.push(Contender { name, slug, sections: t, theory });
        }
        Ok(Self { path: path.to_path_buf(), theory, bench, reference_table, reference, contenders })
    }

    /// The output directory.
    pub fn output_dir(&self) -> PathBuf {
        self.bench.output.clone().unwrap_or_else(|| {
            let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "bench".into());
            self.path.with_file_name(format!("{stem}_bench"))
        })
    }

    /// The `[theory]` a contender samples: its own `theory` if that names a `plugin`, else the
    /// card's `[theory]` with the contender's keys merged over it.
    pub fn contender_theory(&self, c: &Contender) -> toml::Table {
        match &c.theory {
            None => self.theory.clone(),
            Some(own) if own.contains_key("plugin") => own.clone(),
            Some(own) => {
                let mut merged = self.theory.clone();
                merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
                merged
            }
        }
    }

    /// The run card of one contender, with `measurements` sweeps (and `thermalization`) written
    /// to `output`.
    pub fn run_card(&self, c: &Contender, measurements: u64, thermalization: u64, output: &Path) -> Result<String> {
        let mut card = toml::Table::new();
        card.insert("theory".into(), toml::Value::Table(self.contender_theory(c)));
        let mut run = toml::Table::new();
        run.insert("seed".into(), toml::Value::Integer(self.bench.seed as i64));
        run.insert("thermalization".into(), toml::Value::Integer(thermalization as i64));
        run.insert("measurements".into(), toml::Value::Integer(measurements as i64));
        run.insert("threads".into(), toml::Value::Integer(self.bench.threads as i64));
        run.insert("save_every".into(), toml::Value::Integer(0));
        run.insert("output".into(), toml::Value::String(output.display().to_string()));
        for (k, v) in &c.sections {
            if k == "run" {
                let toml::Value::Table(extra) = v else {
                    bail!("{}: contender '{}': run: must be a table", self.path.display(), c.name);
                };
                for (rk, rv) in extra {
                    if ["measurements", "output", "thermalization"].contains(&rk.as_str()) {
                        bail!(
                            "{}: contender '{}': run.{rk}: set by [bench], not per contender",
                            self.path.display(),
                            c.name
                        );
                    }
                    run.insert(rk.clone(), rv.clone());
                }
            } else {
                card.insert(k.clone(), v.clone());
            }
        }
        card.insert("run".into(), toml::Value::Table(run));
        // A ladder card takes no [reference] (its values are per coupling): bench compares the
        // target coupling's ensemble itself.
        let ladder = c.sections.contains_key("ladder") || c.sections.contains_key("replicas");
        if let (Some(r), false) = (&self.reference_table, ladder) {
            card.insert("reference".into(), toml::Value::Table(r.clone()));
        }
        let text = toml::to_string(&card).context("serialising a contender's run card")?;
        Ok(format!("# generated by `latflow bench {}` for contender '{}'\n{text}", self.path.display(), c.name))
    }
}

/// One observable's figures for one contender.
#[derive(Debug, Clone, Serialize)]
pub struct ObservableFigures {
    pub name: String,
    pub mean: f64,
    pub error: f64,
    /// In sweeps (effective, for reweighting).
    pub tau_int: f64,
    pub tau_int_error: f64,
    /// The Γ-method window W, in sweeps (0 for reweighting).
    pub window: usize,
    /// N / (2 τ_int).
    pub effective_samples: f64,
    pub effective_samples_per_second: f64,
    /// Seconds per independent sample, and its error.
    pub cost: f64,
    pub cost_error: f64,
    /// Against the card's `[reference]`, when it names this observable.
    pub reference: Option<f64>,
    pub z: Option<f64>,
    /// False when a warning of the contender concerns this observable: z means little.
    pub reliable: bool,
}

/// One contender's result.
#[derive(Debug, Clone, Serialize)]
pub struct ContenderResult {
    pub name: String,
    pub card: PathBuf,
    pub ensemble: PathBuf,
    /// Measured sweeps.
    pub samples: u64,
    pub wall_seconds: f64,
    /// Acceptance per chain step label.
    pub acceptance: Vec<(String, f64)>,
    /// Reweighting ESS per sample, for `reweight` chains.
    pub ess_per_sample: Option<f64>,
    pub observables: Vec<ObservableFigures>,
    /// Seconds spent training the model here (None: no training, or pre-trained weights).
    pub training_seconds: Option<f64>,
    /// (training + wall) / N_eff of the first observable, when training was timed.
    pub amortised_cost: Option<f64>,
    /// For an integer-valued first observable (the topological charge): the fraction of
    /// successive measurements whose value changed, i.e. tunnelling events per sweep.
    pub tunnelling_rate: Option<f64>,
    /// Autocorrelation function of the first observable, lags 0..
    #[serde(skip)]
    pub acf: Vec<f64>,
    /// History of the first observable.
    #[serde(skip)]
    pub history: Vec<f64>,
    /// `seconds` mode: how the number of sweeps was chosen.
    pub calibration: Option<Calibration>,
    /// Why its figures should not be trusted ([`crate::diagnostics`]).
    pub warnings: Vec<Warning>,
}

/// The whole bench.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub card: PathBuf,
    pub output: PathBuf,
    pub mode: String,
    pub observables: Vec<String>,
    pub contenders: Vec<ContenderResult>,
    /// Name of the contender with the lowest cost per independent sample of the first observable.
    pub winner: Option<String>,
    /// Its advantage: the runner-up's cost over the winner's.
    pub winner_factor: Option<f64>,
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t0 = Instant::now();
    let v = f()?;
    Ok((v, t0.elapsed().as_secs_f64()))
}

/// Figures of one observable from an analysis; `ess_per_sample` marks a reweighting ensemble.
fn figures(
    name: &str,
    g: &GammaResult,
    ess_per_sample: Option<f64>,
    wall: f64,
    reference: &[(String, f64, f64)],
) -> ObservableFigures {
    let n = g.n as f64;
    // τ < ½ (anticorrelated data) is capped at ½: never claim more independent samples than samples.
    let (tau, dtau) = match ess_per_sample {
        Some(e) if e > 0.0 => (0.5 / e.min(1.0), 0.0),
        Some(_) => (f64::INFINITY, 0.0),
        None => (g.tau_int.max(0.5), g.tau_int_error),
    };
    let eff = n / (2.0 * tau);
    let cost = wall / eff;
    let cost_error = wall * 2.0 * dtau / n;
    let r = reference.iter().find(|(k, _, _)| k == name);
    let z = r.map(|(_, v, e)| (g.mean - v) / (g.error * g.error + e * e).sqrt());
    ObservableFigures {
        name: name.to_string(),
        mean: g.mean,
        error: g.error,
        tau_int: tau,
        tau_int_error: dtau,
        window: g.window,
        effective_samples: eff,
        effective_samples_per_second: eff / wall,
        cost,
        cost_error,
        reference: r.map(|(_, v, _)| *v),
        z,
        reliable: true,
    }
}

/// Runs the bench: every contender in order, then the table, JSON and plots.
pub fn bench(card_path: &Path, opts: &BenchOptions) -> Result<BenchReport> {
    let card = BenchCard::load(card_path)?;
    let file = card.path.display().to_string();
    let out = card.output_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("{file}: bench.output: cannot create '{}'", out.display()))?;
    let n_c = card.contenders.len();
    let mut results = Vec::with_capacity(n_c);
    for (i, c) in card.contenders.iter().enumerate() {
        if !opts.quiet {
            eprintln!("[{}/{n_c}] {}", i + 1, c.name);
        }
        let r = run_contender(&card, c, &out, opts).with_context(|| format!("{file}: contender '{}'", c.name))?;
        results.push(r);
    }
    let mut ranked: Vec<&ContenderResult> = results.iter().filter(|r| r.observables[0].cost.is_finite()).collect();
    ranked.sort_by(|a, b| a.observables[0].cost.total_cmp(&b.observables[0].cost));
    let winner = ranked.first().map(|r| r.name.clone());
    let winner_factor = match ranked.as_slice() {
        [a, b, ..] => Some(b.observables[0].cost / a.observables[0].cost),
        _ => None,
    };
    let report = BenchReport {
        card: card.path.clone(),
        output: out.clone(),
        mode: match (card.bench.measurements, card.bench.seconds) {
            (Some(n), _) => format!("equal configurations ({n} per contender)"),
            (_, Some(s)) => format!("equal wall time ({s} s per contender, calibrated)"),
            _ => unreachable!("validated in BenchCard::load"),
        },
        observables: card.bench.observables.clone(),
        contenders: results,
        winner,
        winner_factor,
    };
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&report.to_json())?)
        .with_context(|| format!("writing {}", out.join("bench.json").display()))?;
    plots(&report, &out)?;
    Ok(report)
}

/// The `budget` warning of a `seconds`-mode contender whose wall time is more than
/// [`BUDGET_TOLERANCE`] off the budget (both in seconds).
fn budget_warning(name: &str, wall: f64, budget: f64, thermalization: u64) -> Option<Warning> {
    ((wall - budget).abs() > BUDGET_TOLERANCE * budget).then(|| Warning {
        code: "budget",
        subject: name.to_string(),
        message: format!(
            "{name}: wall time {wall:.2} s is {:+.0}% off the budget of {budget} s (thermalization of {thermalization} sweeps, at least \
             {MIN_MEASUREMENTS} measured sweeps, or a change in the machine's load since the calibration)",
            100.0 * (wall / budget - 1.0),
        ),
    })
}

/// The index of the contender's own coupling in its ensemble: 0 for a plain chain, and for
/// a replica ladder the rung whose value equals the one the contender's `[theory]` sets.
fn target_coupling(card: &BenchCard, c: &Contender, file: &EnsembleFile) -> Result<usize> {
    let Some(l) = file.ladder() else { return Ok(0) };
    let theory = card.contender_theory(c);
    let target = theory.get(&l.parameter).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)));
    let Some(target) = target else {
        bail!("the ladder varies '{}', which the contender's [theory] does not set", l.parameter)
    };
    let Some(k) = l.values.iter().position(|&v| v == target) else {
        bail!("the ladder {:?} of '{}' does not contain the target's value {target}", l.values, l.parameter)
    };
    Ok(k)
}

fn run_contender(card: &BenchCard, c: &Contender, out: &Path, opts: &BenchOptions) -> Result<ContenderResult> {
    let card_path = out.join(format!("{}.toml", c.slug));
    let ens_path = out.join(format!("{}.h5", c.slug));
    let run_opts = RunOptions { resume: false, force: true, quiet: opts.quiet, plugin_dirs: opts.plugin_dirs.clone(), ..Default::default() };
    let write = |text: String| -> Result<()> {
        std::fs::write(&card_path, text).with_context(|| format!("writing {}", card_path.display()))
    };
    // 1. The model's training, timed separately (one-off cost).
    write(card.run_card(c, 1, 0, &ens_path)?)?;
    let parsed = RunCard::load(&card_path)?;
    let mut training_seconds = None;
    if let (Some(m), Some(_)) = (&parsed.model, &parsed.train) {
        if let Some(w) = &m.weights {
            if !w.exists() {
                let topts = TrainOptions {
                    quiet: opts.quiet,
                    plugin_dirs: opts.plugin_dirs.clone(),
                    resume: false,
                    force: false,
                    budget: None,
                    job: Default::default(),
                };
                let (_, secs) = timed(|| crate::train::train(&card_path, &topts))?;
                training_seconds = Some(secs);
            }
        }
    }
    // 2. The number of sweeps: given, or from calibration runs in wall-time mode.
    let mut calibration = None;
    let measurements = match (card.bench.measurements, card.bench.seconds) {
        (Some(n), _) => n,
        (_, Some(budget)) => {
            let calib = out.join(format!("{}.calibration.h5", c.slug));
            let cal = calibrate(budget, card.bench.calibration, |n| {
                write(card.run_card(c, n, 0, &calib)?)?;
                Ok(timed(|| crate::run::run(&card_path, &RunOptions { quiet: true, ..run_opts.clone() }).map(|_| ()))?.1)
            });
            remove_ensemble(&calib);
            let cal = cal?;
            let n = cal.measurements(budget, card.bench.thermalization);
            calibration = Some(cal);
            n
        }
        _ => unreachable!("validated in BenchCard::load"),
    };
    // 3. The run itself.
    write(card.run_card(c, measurements, card.bench.thermalization, &ens_path)?)?;
    let (_, wall) = timed(|| crate::run::run(&card_path, &run_opts).map(|_| ()))?;
    // 4. Its analysis: for replica exchange, the ensemble at the target coupling, with the
    // swap acceptance of each exchange step beside the chain steps'.
    let mut file = read(&ens_path)?;
    let k = target_coupling(card, c, &file)?;
    let all = analyze(&file)?;
    let swap_warnings = all.exchange.as_ref().map(|x| x.warnings.clone()).unwrap_or_default();
    let swap_acceptance: Vec<(String, f64)> = all
        .exchange
        .iter()
        .flat_map(|x| x.swaps.iter().map(|s| (format!("{} (swaps)", s.label), s.acceptance)))
        .collect();
    let ens = file.couplings.swap_remove(k);
    let analysis = all.couplings.into_iter().nth(k).expect("one analysis per coupling");
    let ess = analysis.reweighting.map(|r| r.ess_per_sample);
    let mut warnings = analysis.warnings.clone();
    warnings.extend(swap_warnings);
    let mut obs = Vec::new();
    for name in &card.bench.observables {
        let g = analysis.get(name).ok_or_else(|| {
            anyhow::anyhow!("bench.observables: '{name}' is not a scalar observable of this theory (or `name[j]` component)")
        })?;
        let mut f = figures(name, g, ess, wall, &card.reference);
        f.reliable = !warnings.iter().any(|w| w.affects(name));
        obs.push(f);
    }
    if let Some(budget) = card.bench.seconds {
        warnings.extend(budget_warning(&c.name, wall, budget, card.bench.thermalization));
    }
    let first = &card.bench.observables[0];
    let history = series(&ens, first).unwrap_or_default();
    let acf = autocorrelation(&history, card.bench.acf_lags);
    let amortised_cost = training_seconds.map(|t| (t + wall) / obs[0].effective_samples);
    let tunnelling_rate = tunnelling_rate(&history);
    Ok(ContenderResult {
        name: c.name.clone(),
        card: card_path,
        ensemble: ens_path,
        samples: measurements,
        wall_seconds: wall,
        acceptance: analysis.steps.iter().map(|s| (s.label.clone(), s.acceptance)).chain(swap_acceptance).collect(),
        ess_per_sample: ess,
        observables: obs,
        training_seconds,
        amortised_cost,
        tunnelling_rate,
        acf,
        history,
        calibration,
        warnings,
    })
}

/// Changes per step of an integer-valued series (None if any value is not an integer).
fn tunnelling_rate(history: &[f64]) -> Option<f64> {
    if history.len() < 2 || history.iter().any(|q| !q.is_finite() || q.fract() != 0.0) {
        return None;
    }
    let changes = history.windows(2).filter(|w| w[0] != w[1]).count();
    Some(changes as f64 / (history.len() - 1) as f64)
}

/// The measured series of a scalar observable or component `name[j]`.
fn series(ens: &crate::ensemble::Ensemble, name: &str) -> Option<Vec<f64>> {
    let (base, j) = match name.split_once('[') {
        Some((b, rest)) => (b, rest.trim_end_matches(']').parse::<usize>().ok()?),
        None => (name, 0),
    };
    let o = ens.observables.iter().find(|o| o.name == base)?;
    Some(o.component(j))
}

fn plots(r: &BenchReport, out: &Path) -> Result<()> {
    let first = &r.observables[0];
    let xs: Vec<Vec<f64>> = r.contenders.iter().map(|c| (0..c.history.len()).map(|i| i as f64).collect()).collect();
    let panels: Vec<Panel<'_>> = r
        .contenders
        .iter()
        .zip(&xs)
        .map(|(c, x)| Panel {
            title: &c.name,
            x_label: "sweep",
            y_label: first,
            series: vec![Series { label: "", x, y: &c.history }],
            log_y: false,
            hline: c.observables[0].reference.map(|v| (v, "exact")),
        })
        .collect();
    let h = 260 * panels.len().max(1) as u32;
    line_panels(&out.join("histories.png"), &panels, 1, (1100, h))?;
    let lags: Vec<Vec<f64>> = r.contenders.iter().map(|c| (0..c.acf.len()).map(|i| i as f64).collect()).collect();
    let acf_title = format!("autocorrelation of {first}");
    let acf_panel = Panel {
        title: &acf_title,
        x_label: "lag (sweeps)",
        y_label: "ρ(t)",
        series: r.contenders.iter().zip(&lags).map(|(c, x)| Series { label: &c.name, x, y: &c.acf }).collect(),
        log_y: false,
        hline: Some((0.0, "")),
    };
    line_panels(&out.join("acf.png"), &[acf_panel], 1, (1000, 600))?;
    let bars: Vec<(&str, f64, Option<f64>)> = r
        .contenders
        .iter()
        .map(|c| (c.name.as_str(), c.observables[0].cost, Some(c.observables[0].cost_error)))
        .collect();
    let title = format!("cost per independent sample of {first}");
    bar_chart(&out.join("cost.png"), &title, "seconds", &bars, true, (1000, 600))?;
    Ok(())
}

fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

impl BenchReport {
    /// The JSON written to `bench.json` and printed by `--json` (non-finite numbers as null).
    pub fn to_json(&self) -> Value {
        let contenders: Vec<Value> = self
            .contenders
            .iter()
            .map(|c| {
                let obs: serde_json::Map<String, Value> = c
                    .observables
                    .iter()
                    .map(|o| {
                        (
                            o.name.clone(),
                            json!({
                                "mean": num(o.mean), "error": num(o.error),
                                "value": value_error(o.mean, o.error),
                                "tau_int": num(o.tau_int), "tau_int_error": num(o.tau_int_error),
                                "window": o.window,
                                "effective_samples": num(o.effective_samples),
                                "effective_samples_per_second": num(o.effective_samples_per_second),
                                "cost_per_independent_sample_s": num(o.cost),
                                "cost_error_s": num(o.cost_error),
                                "reference": o.reference, "z": o.z.map(num), "z_reliable": o.reliable,
                            }),
                        )
                    })
                    .collect();
                json!({
                    "name": c.name, "card": c.card, "ensemble": c.ensemble,
                    "samples": c.samples, "wall_seconds": c.wall_seconds,
                    "acceptance": c.acceptance.iter().map(|(k, v)| (k.clone(), num(*v))).collect::<serde_json::Map<_, _>>(),
                    "ess_per_sample": c.ess_per_sample.map(num),
                    "observables": obs,
                    "training_seconds": c.training_seconds,
                    "amortised_cost_s": c.amortised_cost.map(num),
                    "tunnelling_rate": c.tunnelling_rate.map(num),
                    "calibration": c.calibration,
                    "warnings": diagnostics::to_json(&c.warnings),
                })
            })
            .collect();
        json!({
            "card": self.card, "output": self.output, "mode": self.mode,
            "observables": self.observables, "contenders": contenders,
            "winner": self.winner, "winner_factor": self.winner_factor.map(num),
            "warnings": diagnostics::to_json(&self.warnings()),
        })
    }

    /// Every contender's warnings, subjects and messages prefixed with its name.
    pub fn warnings(&self) -> Vec<Warning> {
        self.contenders
            .iter()
            .flat_map(|c| {
                c.warnings.iter().map(move |w| {
                    let prefix = if w.code == "budget" { String::new() } else { format!("{}: ", c.name) };
                    Warning { code: w.code, subject: format!("{prefix}{}", w.subject), message: format!("{prefix}{}", w.message) }
                })
            })
            .collect()
    }

    /// The table printed by `latflow bench`.
    pub fn to_text(&self) -> String {
        let mut s = format!("bench {} — {}\n", self.card.display(), self.mode);
        s.push_str(&format!(
            "{:<24} {:<20} {:>9} {:>9} {:>16} {:>14} {:>10} {:>20} {:>8}\n",
            "contender", "observable", "accept", "wall s", "tau_int", "eff/s", "N_eff", "cost/indep s", "z"
        ));
        for c in &self.contenders {
            let acc = c.acceptance.iter().map(|(_, a)| format!("{a:.3}")).collect::<Vec<_>>().join("/");
            for (i, o) in c.observables.iter().enumerate() {
                let (name, acc, wall) = if i == 0 {
                    (c.name.as_str(), acc.as_str(), format!("{:.2}", c.wall_seconds))
                } else {
                    ("", "", String::new())
                };
                s.push_str(&format!(
                    "{:<24} {:<20} {:>9} {:>9} {:>16} {:>14.2} {:>10.1} {:>20} {:>8}\n",
                    name,
                    o.name,
                    acc,
                    wall,
                    value_error(o.tau_int, o.tau_int_error),
                    o.effective_samples_per_second,
                    o.effective_samples,
                    format!("{:.3e} ± {:.1e}", o.cost, o.cost_error),
                    o.z.map_or("-".into(), |z| format!("{z:+.2}{}", if o.reliable { "" } else { "!" })),
                ));
                s.push_str(&format!("{:<24} {:<20} value {}\n", "", "", value_error(o.mean, o.error)));
            }
            if let Some(r) = c.tunnelling_rate {
                s.push_str(&format!("{:<24} {} changes per sweep: {r:.4}\n", "", self.observables[0]));
            }
            if let Some(t) = c.training_seconds {
                s.push_str(&format!(
                    "{:<24} training (one-off) {:.1} s; amortised over this run: {:.3e} s per independent sample\n",
                    "",
                    t,
                    c.amortised_cost.unwrap_or(f64::NAN)
                ));
            }
        }
        if let (Some(w), Some(f)) = (&self.winner, self.winner_factor) {
            s.push_str(&format!(
                "cheapest independent {}: {w}, {f:.2}× cheaper than the runner-up\n",
                self.observables[0]
            ));
        }
        let warnings = self.warnings();
        if self.contenders.iter().flat_map(|c| &c.observables).any(|o| o.z.is_some() && !o.reliable) {
            s.push_str("z-scores marked ! are unreliable: a warning below concerns their observable\n");
        }
        s.push_str(&diagnostics::to_text(&warnings));
        s.push_str(&format!("outputs: {} (bench.json, histories.png, acf.png, cost.png)\n", self.output.display()));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_safe() {
        assert_eq!(slugify("HMC, Omelyan (λ=0.19)"), "hmc_omelyan_0_19");
        assert_eq!(slugify("!!"), "contender");
    }

    #[test]
    fn tunnelling_counts_changes_of_integer_series() {
        assert_eq!(tunnelling_rate(&[0.0, 0.0, 1.0, 1.0, -1.0]), Some(0.5));
        assert_eq!(tunnelling_rate(&[0.5, 0.5]), None);
        assert_eq!(tunnelling_rate(&[1.0]), None);
    }

    #[test]
    fn costs_follow_tau() {
        let g = GammaResult { mean: 1.0, error: 0.1, tau_int: 5.0, tau_int_error: 1.0, window: 20, n: 1000 };
        let f = figures("x", &g, None, 10.0, &[("x".into(), 1.2, 0.0)]);
        assert!((f.effective_samples - 100.0).abs() < 1e-12);
        assert!((f.cost - 0.1).abs() < 1e-12);
        assert!((f.cost_error - 0.02).abs() < 1e-12);
        assert!((f.z.unwrap() + 2.0).abs() < 1e-12);
        let w = figures("x", &g, Some(0.25), 10.0, &[]);
        assert!((w.tau_int - 2.0).abs() < 1e-12 && (w.effective_samples - 250.0).abs() < 1e-9);
        assert!(w.z.is_none());
    }
}
