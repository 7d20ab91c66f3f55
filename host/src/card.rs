//! Run cards: TOML files that describe a run. The field names here are public interface.
//!
//! ```toml
//! [theory]
//! plugin = "phi4"          # a plugin name, or a path to a shared library
//! lattice = [8, 8]         # the remaining keys belong to the plugin, which validates them
//! m2 = -4.0
//! lambda = 8.0
//!
//! [[chain]]                # steps, applied in order, once per sweep
//! kind = "hmc"
//! trajectory_length = 1.0
//! md_steps = 10
//! integrator = "omelyan2"  # leapfrog | omelyan2 | omelyan4 | force_gradient
//!
//! [run]
//! seed = 1
//! thermalization = 200     # sweeps discarded
//! measurements = 2000      # sweeps measured and stored
//! save_every = 1           # store a configuration every N measurements (0 = observables only)
//! output = "phi4.h5"
//! ```
//!
//! A replica-exchange card adds a ladder — `[ladder]` (`parameter`, `values`) or `[[replicas]]`
//! (one table per coupling: the parameter's value and optional `weights`) — and a
//! `kind = "replica_exchange"` step (`flow`, `repeat`); see [`crate::replica`].
//!
//! Every error names the card file and the offending field (`chain[0].md_steps: ...`).

use std::path::{Path, PathBuf};

use latflow_core::abi::{HmcParams, IntegratorKind, Start};
use latflow_core::hmc::OMELYAN_LAMBDA;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A run-card error: the file, the field path, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
pub struct CardError {
    pub file: String,
    pub field: String,
    pub message: String,
}

/// A parsed, validated run card.
#[derive(Debug, Clone)]
pub struct RunCard {
    /// Where it was read from.
    pub path: PathBuf,
    /// The card's text, stored verbatim in the ensemble.
    pub text: String,
    pub theory: TheoryCard,
    pub chain: Vec<StepCard>,
    pub run: RunSection,
    /// Optional `[model]` section (needed by `flow` and `reweight` steps and `latflow train`).
    pub model: Option<ModelCard>,
    /// Optional `[train]` section.
    pub train: Option<TrainCard>,
    /// Optional `[reference]` values: observable (or `name[j]` for a component) → (value,
    /// error). The run summary prints the z-score of each.
    pub reference: Vec<(String, f64, f64)>,
    /// The replica ladder of a replica-exchange run (`[ladder]` or `[[replicas]]`).
    pub ladder: Option<Ladder>,
}

/// Which section a replica ladder was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LadderSection {
    /// `[ladder]`: `parameter = "…"`, `values = [...]`.
    Ladder,
    /// `[[replicas]]`: one table per coupling, `PARAMETER = value` and optionally `weights`.
    Replicas,
}

/// A ladder of couplings for replica exchange: one replica (chain) per value of one theory
/// parameter. Coupling k is `values[k]`, in card order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ladder {
    /// The theory parameter that differs between replicas (`Theory::parameter` name).
    pub parameter: String,
    /// Its value at each coupling: at least two, strictly increasing or strictly decreasing.
    pub values: Vec<f64>,
    /// Per-coupling model weights (`[[replicas]]` `weights`); `None`: `[model].weights`.
    pub weights: Vec<Option<PathBuf>>,
    pub section: LadderSection,
}

impl Ladder {
    /// Number of couplings.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Always false (a ladder has at least two couplings).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The card field that names the parameter, for messages.
    pub fn parameter_field(&self) -> String {
        match self.section {
            LadderSection::Ladder => "ladder.parameter".into(),
            LadderSection::Replicas => format!("replicas[0].{}", self.parameter),
        }
    }

    /// The card field that holds coupling k's value, for messages.
    pub fn value_field(&self, k: usize) -> String {
        match self.section {
            LadderSection::Ladder => format!("ladder.values[{k}]"),
            LadderSection::Replicas => format!("replicas[{k}].{}", self.parameter),
        }
    }

    /// The card field of coupling k's weights, for messages.
    pub fn weights_field(&self, k: usize) -> String {
        match (self.section, &self.weights[k]) {
            (LadderSection::Replicas, Some(_)) => format!("replicas[{k}].weights"),
            _ => "model.weights".into(),
        }
    }

    /// The section's name, for messages.
    pub fn section_name(&self) -> &'static str {
        match self.section {
            LadderSection::Ladder => "[ladder]",
            LadderSection::Replicas => "[[replicas]]",
        }
    }
}

/// The `[theory]` section: a plugin and the keys that belong to it.
#[derive(Debug, Clone)]
pub struct TheoryCard {
    /// A plugin name or a path to a shared library.
    pub plugin: String,
    /// Every other key, passed to the plugin as a JSON object.
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// One `[[chain]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum StepCard {
    Hmc(HmcCard),
    Flow(ProposalCard),
    Reweight(ProposalCard),
    Anneal(AnnealCard),
    ReplicaExchange(ExchangeCard),
    /// A step kind the theory plugin provides (e.g. `heatbath`, `overrelax`).
    Theory(TheoryStepCard),
}

/// A step kind that is not built into the host: the theory plugin's own (e.g. `heatbath`).
/// The entry's keys other than `kind` and `repeat` are its options, which the plugin validates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoryStepCard {
    pub kind: String,
    /// Applications per sweep.
    pub repeat: u32,
    /// The other keys, as a JSON object.
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl StepCard {
    /// The step's kind as written in cards (`hmc`, `flow`, `reweight`, or a theory's own).
    pub fn kind(&self) -> &str {
        match self {
            StepCard::Hmc(_) => "hmc",
            StepCard::Flow(_) => "flow",
            StepCard::Reweight(_) => "reweight",
            StepCard::Anneal(_) => "anneal",
            StepCard::ReplicaExchange(_) => "replica_exchange",
            StepCard::Theory(t) => &t.kind,
        }
    }

    /// How often the step is applied per sweep.
    pub fn repeat(&self) -> u32 {
        match self {
            StepCard::Hmc(h) => h.repeat,
            StepCard::Flow(p) | StepCard::Reweight(p) => p.repeat,
            StepCard::Anneal(a) => a.repeat,
            StepCard::ReplicaExchange(x) => x.repeat,
            StepCard::Theory(t) => t.repeat,
        }
    }
}

/// `kind = "replica_exchange"`: the swap phase of replica exchange (parallel tempering) between
/// neighbouring couplings of the `[ladder]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeCard {
    /// Flow-assisted swaps: propose (T⁻¹ x_{i+1}, T x_i) with T = F_{i+1} ∘ F_i⁻¹ through the
    /// couplings' models, instead of exchanging the configurations as they are.
    #[serde(default)]
    pub flow: bool,
    /// Applications per sweep; successive applications alternate even and odd pairs.
    #[serde(default = "one_u32")]
    pub repeat: u32,
}

/// `kind = "anneal"`: non-equilibrium candidate Monte Carlo (Nilmeier et al., PNAS 108 (2011)
/// E1009). From the current configuration, one theory parameter is moved from its value to
/// `to` in `stages` equal switches and back in as many, with HMC trajectories at every
/// intermediate value; the end point is accepted with probability min(1, e^{−W}), W the work
/// (the sum of the action changes at each switch). The protocol is a palindrome of reversible
/// kernels, so the step satisfies detailed balance with e^{−S} at the parameter's value: exact for
/// any schedule, and composable with every other step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnnealCard {
    /// The annealed theory parameter (a `Theory::parameter` name, e.g. `beta`, or u1's `defect_coupling`).
    pub parameter: String,
    /// The parameter's value at the protocol's turning point.
    pub to: f64,
    /// Switches on each leg (≥ 1): 2·stages switches in all.
    pub stages: u32,
    /// The kernel after every switch but the last: `hmc.repeat` trajectories at the current
    /// value of the parameter (the Metropolis test is required: it makes the kernel reversible).
    pub hmc: HmcCard,
    /// Extra trajectories at the turning point, where the parameter equals `to`.
    #[serde(default)]
    pub hold: u32,
    /// Applications per sweep.
    #[serde(default = "one_u32")]
    pub repeat: u32,
}

impl AnnealCard {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if !self.to.is_finite() {
            return err("to", format!("must be a finite number, got {}", self.to));
        }
        if self.stages == 0 {
            return err("stages", "must be at least 1, got 0".into());
        }
        if self.repeat == 0 {
            return err("repeat", "must be at least 1, got 0".into());
        }
        reversible_kernel(&self.hmc, "the annealing kernels")
    }
}

/// Checks the `hmc` table of a step that runs HMC inside it as a reversible kernel (`anneal`,
/// and the stochastic layers of `flow` and `reweight`): a valid HMC card whose Metropolis test
/// is on, since `what` must satisfy detailed balance. Errors name the key under `hmc.`.
fn reversible_kernel(hmc: &HmcCard, what: &str) -> Result<(), (String, String)> {
    hmc.validate().map_err(|(f, m)| (format!("hmc.{f}"), m))?;
    if !hmc.accept_reject {
        return Err((
            "hmc.accept_reject".into(),
            format!("must be true: {what} must satisfy detailed balance, which needs the Metropolis test"),
        ));
    }
    Ok(())
}

/// `kind = "flow"` (independence Metropolis with model proposals) and `kind = "reweight"`
/// (model samples with importance weights, no accept/reject).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalCard {
    /// Proposals drawn from the model per call (they are then used one at a time, in order).
    #[serde(default = "default_proposal_batch")]
    pub batch: u32,
    /// Applications per sweep.
    #[serde(default = "one_u32")]
    pub repeat: u32,
    /// A stochastic normalizing flow: each model sample is carried to the theory's coupling by
    /// an annealing of one parameter with HMC at every stage, and weighted by the path's work.
    /// Absent (the default, not serialised so that older cards keep their hash): plain proposals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anneal: Option<ProposalAnnealCard>,
}

/// The `anneal` table of a `flow` or `reweight` step: a stochastic normalizing flow (Wu, Köhler
/// and Noé 2020; Caselle, Cellini, Nada and Panero, JHEP 07 (2022) 015) made of the model's flow
/// followed by `stages` stochastic layers. With v the parameter's value in the theory and
/// λ_k = from + (v − from)·(k − 1)/stages (k = 1 … stages + 1, so λ_1 = `from` and the last is v),
/// a model sample x_0 is moved by `hmc.repeat` HMC trajectories at λ_k for k = 1 … stages, and
/// weighted by w = e^{−W}, W = S_{λ_1}(x_0) + log q(x_0) + Σ_{k≥2} [S_{λ_k}(x_{k−1}) − S_{λ_{k−1}}(x_{k−1})].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalAnnealCard {
    /// The annealed theory parameter (a `Theory::parameter` name, e.g. `beta` or phi4's `m2`).
    pub parameter: String,
    /// The parameter's value at the first stochastic layer: where the model was trained.
    pub from: f64,
    /// Stochastic layers (≥ 1), each `hmc.repeat` trajectories at its value of the parameter.
    pub stages: u32,
    /// The kernel of every layer (the Metropolis test is required: it makes it reversible).
    pub hmc: HmcCard,
}

impl ProposalAnnealCard {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if !self.from.is_finite() {
            return err("from", format!("must be a finite number, got {}", self.from));
        }
        if self.stages == 0 {
            return err("stages", "must be at least 1, got 0 (leave `anneal` out for plain model proposals)".into());
        }
        reversible_kernel(&self.hmc, "the stochastic layers")
    }
}

fn default_proposal_batch() -> u32 {
    256
}

/// The `[model]` section: a model plugin, its weights, and the keys that belong to it.
#[derive(Debug, Clone)]
pub struct ModelCard {
    /// A plugin name or a path to a shared library.
    pub plugin: String,
    /// Weights (safetensors) to load; `latflow train` writes them here.
    pub weights: Option<PathBuf>,
    /// Transfer: initialise training from these weights (another coupling or volume).
    pub init_from: Option<PathBuf>,
    /// Every other key, passed to the plugin as JSON.
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// The `[train]` section, for `latflow train` (and for `latflow run --train`, or `latflow run`
/// with `before_run = true`, when the weights do not exist yet).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCard {
    /// Optimiser steps.
    pub steps: u64,
    /// Configurations per step.
    #[serde(default = "default_train_batch")]
    pub batch: u32,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// `"constant"` (default), or a table `{ kind = "cosine", steps, min_lr, warmup }` or
    /// `{ kind = "step", every, factor }`.
    #[serde(default = "default_schedule")]
    pub schedule: latflow_core::abi::LrSchedule,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[serde(default)]
    pub grad_clip: f64,
    /// Path-gradient estimator (Vaitl et al. 2022).
    #[serde(default)]
    pub path_gradients: bool,
    /// Data-parallel training: each step's batch is drawn and differentiated in this many
    /// chunks of `batch / chunks` configurations, each from its own stream, and their gradients
    /// are averaged in chunk order; the ranks of a job share the chunks. The same `chunks` gives
    /// the same bits on any rank count that divides it. 1 (the default, not serialised so that
    /// older cards keep their hash): the whole batch at once, on one rank.
    #[serde(default = "one_chunk", skip_serializing_if = "is_one_chunk")]
    pub chunks: u32,
    /// Seeds the training streams (defaults to `[run].seed`, else 0).
    pub seed: Option<u64>,
    /// Steps between training checkpoints.
    #[serde(default = "default_train_checkpoint")]
    pub checkpoint_every: u64,
    /// Training curves as PNG (default: the weights path with `.png`).
    pub plot: Option<PathBuf>,
    /// `latflow run` trains first when `model.weights` does not exist yet (as `--train` does).
    /// Not part of what determines the training, so never serialised (nor hashed).
    #[serde(default, skip_serializing)]
    pub before_run: bool,
}

fn one_chunk() -> u32 {
    1
}

fn is_one_chunk(n: &u32) -> bool {
    *n == 1
}

fn default_train_batch() -> u32 {
    64
}
fn default_lr() -> f64 {
    1e-3
}
fn default_schedule() -> latflow_core::abi::LrSchedule {
    latflow_core::abi::LrSchedule::Constant
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_train_checkpoint() -> u64 {
    100
}

impl TrainCard {
    /// The plain-data settings that cross the ABI.
    pub fn settings(&self) -> latflow_core::abi::TrainSettings {
        latflow_core::abi::TrainSettings {
            batch: self.batch / self.chunks.max(1),
            learning_rate: self.learning_rate,
            schedule: self.schedule,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            path_gradients: self.path_gradients,
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        use latflow_core::abi::LrSchedule;
        let err = |f: &str, m: String| Err((f.to_string(), m));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.steps == 0 {
            return err("steps", "must be at least 1".into());
        }
        if self.batch < 2 {
            return err("batch", format!("must be at least 2, got {}", self.batch));
        }
        if self.chunks == 0 || !self.batch.is_multiple_of(self.chunks) || self.batch / self.chunks.max(1) < 2 {
            return err(
                "chunks",
                format!(
                    "the batch of {} does not split into {} chunks of at least 2 configurations",
                    self.batch, self.chunks
                ),
            );
        }
        if !positive(self.learning_rate) {
            return err("learning_rate", format!("must be a positive number, got {}", self.learning_rate));
        }
        if !(self.beta1.is_finite() && (0.0..1.0).contains(&self.beta1)) {
            return err("beta1", format!("must lie in [0, 1), got {}", self.beta1));
        }
        if !(self.beta2.is_finite() && (0.0..1.0).contains(&self.beta2)) {
            return err("beta2", format!("must lie in [0, 1), got {}", self.beta2));
        }
        if !positive(self.eps) {
            return err("eps", format!("must be a positive number, got {}", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return err("weight_decay", format!("must be ≥ 0, got {}", self.weight_decay));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return err("grad_clip", format!("must be ≥ 0 (0 = off), got {}", self.grad_clip));
        }
        if self.checkpoint_every == 0 {
            return err("checkpoint_every", "must be at least 1".into());
        }
        match self.schedule {
            LrSchedule::Constant => {}
            LrSchedule::Cosine { steps, min_lr, .. } => {
                if steps == 0 || !(min_lr.is_finite() && min_lr >= 0.0) {
                    return err("schedule", "cosine needs steps ≥ 1 and min_lr ≥ 0".into());
                }
            }
            LrSchedule::Step { every, factor } => {
                if every == 0 || !positive(factor) {
                    return err("schedule", "step needs every ≥ 1 and factor > 0".into());
                }
            }
        }
        Ok(())
    }
}

/// An integrator name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegratorName {
    Leapfrog,
    Omelyan2,
    Omelyan4,
    /// The force-gradient integrator (4th order, one force gradient per step).
    #[serde(rename = "force_gradient")]
    ForceGradient,
}

/// `kind = "hmc"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HmcCard {
    /// Trajectory length τ (MD time units).
    #[serde(default = "one")]
    pub trajectory_length: f64,
    /// Steps of the outermost time scale.
    pub md_steps: u32,
    #[serde(default = "default_integrator")]
    pub integrator: IntegratorName,
    /// λ of Omelyan-2.
    #[serde(default = "default_lambda")]
    pub omelyan_lambda: f64,
    /// Sub-steps of each inner time scale per outer drift; empty = one time scale.
    #[serde(default)]
    pub time_scales: Vec<u32>,
    /// Trajectory-length randomisation: τ is drawn from τ·[1 − j, 1 + j] per trajectory.
    #[serde(default)]
    pub trajectory_jitter: f64,
    /// Trajectories per sweep.
    #[serde(default = "one_u32")]
    pub repeat: u32,
    /// The Metropolis test. Turning it off (an inexact sampler) must be explicit; it is recorded.
    #[serde(default = "yes")]
    pub accept_reject: bool,
    /// Plugin-specific sampler options (solver tolerances, Hasenbusch masses, a plugin's own
    /// integrator choice), passed to the theory as the JSON object `HmcParams::extra`. The
    /// plugin validates them: one that takes none refuses every key.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub options: serde_json::Map<String, serde_json::Value>,
}

fn one() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_integrator() -> IntegratorName {
    IntegratorName::Omelyan2
}
fn default_lambda() -> f64 {
    OMELYAN_LAMBDA
}

impl HmcCard {
    /// The plain-data parameters that cross the ABI.
    pub fn params(&self) -> HmcParams {
        HmcParams {
            trajectory_length: self.trajectory_length,
            md_steps: self.md_steps,
            integrator: match self.integrator {
                IntegratorName::Leapfrog => IntegratorKind::Leapfrog,
                IntegratorName::Omelyan2 => IntegratorKind::Omelyan2,
                IntegratorName::Omelyan4 => IntegratorKind::Omelyan4,
                IntegratorName::ForceGradient => IntegratorKind::ForceGradient,
            },
            omelyan_lambda: self.omelyan_lambda,
            inner_steps: self.time_scales.clone().into(),
            accept_reject: self.accept_reject,
            jitter: self.trajectory_jitter,
            extra: serde_json::Value::Object(self.options.clone()).to_string().into(),
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if !(self.trajectory_length.is_finite() && self.trajectory_length > 0.0) {
            return err("trajectory_length", format!("must be a positive number, got {}", self.trajectory_length));
        }
        if self.md_steps == 0 {
            return err("md_steps", "must be at least 1, got 0".into());
        }
        if !(self.omelyan_lambda.is_finite() && self.omelyan_lambda > 0.0 && self.omelyan_lambda < 0.5) {
            return err("omelyan_lambda", format!("must lie in (0, 0.5), got {}", self.omelyan_lambda));
        }
        if !(self.trajectory_jitter.is_finite() && (0.0..1.0).contains(&self.trajectory_jitter)) {
            return err("trajectory_jitter", format!("must lie in [0, 1), got {}", self.trajectory_jitter));
        }
        if let Some(i) = self.time_scales.iter().position(|&n| n == 0) {
            return err(&format!("time_scales[{i}]"), "must be at least 1, got 0".into());
        }
        if self.repeat == 0 {
            return err("repeat", "must be at least 1, got 0".into());
        }
        Ok(())
    }
}

/// The `[run]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Seeds every random stream of the run.
    pub seed: u64,
    /// Sweeps discarded before measuring.
    #[serde(default)]
    pub thermalization: u64,
    /// Sweeps measured and stored.
    pub measurements: u64,
    /// Store a configuration every N measurements (0 = observables only).
    #[serde(default)]
    pub save_every: u64,
    /// The HDF5 file to write (relative paths are relative to the working directory).
    pub output: PathBuf,
    /// Checkpoint (flush the data, save the state) every this many sweeps, if set.
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoint at least every this many seconds of wall time.
    #[serde(default = "default_checkpoint_seconds")]
    pub checkpoint_seconds: f64,
    /// Starting configuration: `cold`, `hot`, `model` (a sample of the card's model), or
    /// `{ file = "PATH", index = k }` (a stored configuration: an ILDG or NERSC file, or row k
    /// of a latflow ensemble's `/configs`, the last by default; see [`crate::ildg::start`]).
    /// The default is `model` when the chain has a flow or reweight step, else `cold`: a flow
    /// chain started from an ordered configuration (φ = 0) can sit there for very long,
    /// because its importance weight e^{−S}/q is far larger than that of typical proposals.
    #[serde(default)]
    pub start: Option<StartChoice>,
    /// Worker threads inside plugins (0 = their default, which honours RAYON_NUM_THREADS).
    #[serde(default)]
    pub threads: u32,
    /// Independent chains of a plain card (default 1): chain c writes `STEM.chain<c>.EXT` beside
    /// `output` and draws from its own streams, so its bits depend only on the seed and c, not on
    /// how many chains or ranks there are. Under MPI the chains are split over the ranks.
    #[serde(default = "one_chain", skip_serializing_if = "is_one")]
    pub chains: u64,
    /// Which of the card's chains this is (set by the driver, never read from the card; not
    /// part of the card's hash).
    #[serde(skip)]
    pub chain: u64,
}

fn one_chain() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

fn default_checkpoint_seconds() -> f64 {
    30.0
}
/// How the chain's first configuration is made. In the card: `"cold"`, `"hot"`, `"model"`, or
/// a table `{ file = "PATH", index = k }` (`index` optional).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "toml::Value", into = "toml::Value")]
pub enum StartChoice {
    Cold,
    Hot,
    Model,
    /// A stored configuration.
    File(StartFile),
}

/// `[run] start = { file = "PATH", index = k }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFile {
    /// An ILDG/LIME or NERSC file, or a latflow ensemble (relative paths are relative to the
    /// working directory, like `run.output`).
    pub file: PathBuf,
    /// The configuration of a latflow ensemble (a row of `/configs`); `None`: the last one.
    /// ILDG and NERSC files hold one configuration, index 0.
    pub index: Option<u64>,
}

impl StartChoice {
    /// The theory's start, or `None` for a model sample or a file.
    pub fn theory_start(&self) -> Option<Start> {
        match self {
            StartChoice::Cold => Some(Start::Cold),
            StartChoice::Hot => Some(Start::Hot),
            StartChoice::Model | StartChoice::File(_) => None,
        }
    }
}

impl TryFrom<toml::Value> for StartChoice {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<Self, String> {
        let expected = "expected \"cold\", \"hot\", \"model\" or a table { file = \"PATH\", index = k }";
        match v {
            toml::Value::String(s) => match s.as_str() {
                "cold" => Ok(StartChoice::Cold),
                "hot" => Ok(StartChoice::Hot),
                "model" => Ok(StartChoice::Model),
                other => Err(format!("unknown start {other:?}: {expected}")),
            },
            toml::Value::Table(t) => {
                let mut file = None;
                let mut index = None;
                for (k, v) in t {
                    match (k.as_str(), v) {
                        ("file", toml::Value::String(f)) if !f.is_empty() => file = Some(PathBuf::from(f)),
                        ("file", _) => return Err("file: must be a non-empty path string".into()),
                        ("index", toml::Value::Integer(i)) if i >= 0 => index = Some(i as u64),
                        ("index", _) => return Err("index: must be a non-negative integer".into()),
                        (other, _) => return Err(format!("unknown key '{other}' (a start table has file and index)")),
                    }
                }
                let file = file.ok_or("missing key 'file' (the configuration file to start from)")?;
                Ok(StartChoice::File(StartFile { file, index }))
            }
            other => Err(format!("{expected}, got {}", other.type_str())),
        }
    }
}

impl From<StartChoice> for toml::Value {
    fn from(s: StartChoice) -> Self {
        match s {
            StartChoice::Cold => toml::Value::String("cold".into()),
            StartChoice::Hot => toml::Value::String("hot".into()),
            StartChoice::Model => toml::Value::String("model".into()),
            StartChoice::File(f) => {
                let mut t = toml::Table::new();
                t.insert("file".into(), toml::Value::String(f.file.display().to_string()));
                if let Some(i) = f.index {
                    t.insert("index".into(), toml::Value::Integer(i.min(i64::MAX as u64) as i64));
                }
                toml::Value::Table(t)
            }
        }
    }
}

impl RunSection {
    /// Total number of sweeps.
    pub fn total_sweeps(&self) -> u64 {
        self.thermalization + self.measurements
    }

    /// Where this run's checkpoint lives: beside the output, with `.ckpt` appended.
    /// The output of chain `c` of a card with several chains: `STEM.chain<c>.EXT` beside
    /// `output` (`output` itself for a card with one chain).
    pub fn chain_output(&self, c: u64) -> PathBuf {
        if self.chains <= 1 {
            return self.output.clone();
        }
        let stem = self.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = match self.output.extension() {
            Some(ext) => format!("{stem}.chain{c}.{}", ext.to_string_lossy()),
            None => format!("{stem}.chain{c}"),
        };
        self.output.with_file_name(name)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        let mut p = self.output.clone().into_os_string();
        p.push(".ckpt");
        PathBuf::from(p)
    }
}

/// One `[reference]` entry: (observable or `name[j]`, value, error).
pub type ReferenceValue = (String, f64, f64);

/// Parses a `[reference]` table: observable (or `name[j]`) → a finite value, or
/// `[value, error]` with error ≥ 0. Errors are (field, message).
pub fn reference_values(t: toml::Table) -> Result<Vec<ReferenceValue>, (String, String)> {
    let num = |v: &toml::Value| match v {
        toml::Value::Float(x) if x.is_finite() => Some(*x),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    };
    let mut reference = Vec::new();
    for (name, v) in t {
        let (value, error) = match &v {
            toml::Value::Array(a) if a.len() == 2 => (num(&a[0]), num(&a[1])),
            other => (num(other), Some(0.0)),
        };
        match (value, error) {
            (Some(x), Some(e)) if e >= 0.0 => reference.push((name, x, e)),
            _ => {
                return Err((
                    format!("reference.{name}"),
                    "must be a finite number or [value, error] with error ≥ 0".into(),
                ))
            }
        }
    }
    Ok(reference)
}

impl RunCard {
    /// Reads and validates a card.
    pub fn load(path: &Path) -> Result<Self, CardError> {
        let text = std::fs::read_to_string(path).map_err(|e| CardError {
            file: path.display().to_string(),
            field: String::new(),
            message: format!("cannot read run card: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates card text; `path` is used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, CardError> {
        let file = path.display().to_string();
        let fail = |(field, message): (String, String)| CardError { file: file.clone(), field, message };
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| fail((String::new(), format!("not valid TOML: {e}"))))?;
        for key in table.keys() {
            if !["theory", "chain", "run", "model", "train", "reference", "ladder", "replicas"].contains(&key.as_str()) {
                return Err(fail((
                    key.clone(),
                    "unknown section (expected [theory], [[chain]], [run], [model], [train], [reference], [ladder], [[replicas]])"
                        .into(),
                )));
            }
        }
        let theory = match table.remove("theory") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(fail(("theory".into(), "must be a table ([theory])".into()))),
            None => return Err(fail(("theory".into(), "missing section [theory]".into()))),
        };
        let (plugin, config) = plugin_section(theory, "theory").map_err(fail)?;
        let model = parse_model(table.remove("model")).map_err(fail)?;
        let train = parse_train(table.remove("train"), model.is_some()).map_err(fail)?;
        let ladder = parse_ladder(table.remove("ladder"), table.remove("replicas")).map_err(fail)?;
        if let (Some(l), None) = (&ladder, &model) {
            if let Some(k) = l.weights.iter().position(Option::is_some) {
                return Err(fail((
                    format!("replicas[{k}].weights"),
                    "needs a [model] section naming the model plugin (and its other keys)".into(),
                )));
            }
        }
        let chain = parse_chain(table.remove("chain"), model.is_some(), ladder.as_ref()).map_err(fail)?;
        let run = parse_run(table.remove("run"), &chain, model.is_some()).map_err(fail)?;
        let reference = match table.remove("reference") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => reference_values(t).map_err(fail)?,
            Some(_) => return Err(fail(("reference".into(), "must be a table ([reference])".into()))),
        };
        if ladder.is_some() && run.chains > 1 {
            return Err(fail((
                "run.chains".into(),
                "a replica ladder runs one chain per coupling; independent chains are for plain cards".into(),
            )));
        }
        if ladder.is_some() && !reference.is_empty() {
            return Err(fail((
                "reference".into(),
                "not supported with a replica ladder (each coupling has its own values); compare per coupling with \
                 `latflow analyze --json`"
                    .into(),
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            text: text.to_string(),
            theory: TheoryCard { plugin, config },
            chain,
            run,
            model,
            train,
            reference,
            ladder,
        })
    }

    /// The model's keys as a JSON object (what the model plugin receives).
    pub fn model_json(&self) -> Option<String> {
        self.model.as_ref().map(|m| serde_json::Value::Object(m.config.clone()).to_string())
    }

    /// The theory's keys as a JSON object (what the plugin receives).
    pub fn theory_json(&self) -> String {
        serde_json::Value::Object(self.theory.config.clone()).to_string()
    }

    /// A fingerprint of everything that determines the run's results, so that a checkpoint is
    /// never resumed with another card. Comments and formatting do not matter.
    pub fn hash(&self) -> String {
        let canonical = serde_json::json!({
            "theory": { "plugin": self.theory.plugin, "config": self.theory.config },
            "chain": self.chain.iter().map(|s| match s {
                StepCard::Hmc(h) => serde_json::json!({"kind": "hmc", "params": h}),
                StepCard::Flow(p) | StepCard::Reweight(p) => serde_json::json!({"kind": s.kind(), "params": p}),
                StepCard::ReplicaExchange(x) => serde_json::json!({"kind": s.kind(), "params": x}),
                StepCard::Anneal(a) => serde_json::json!({"kind": s.kind(), "params": a}),
                StepCard::Theory(t) => serde_json::json!({"kind": s.kind(), "params": t}),
            }).collect::<Vec<_>>(),
            "run": self.run,
            "model": self.model.as_ref().map(|m| serde_json::json!({
                "plugin": m.plugin, "weights": m.weights, "init_from": m.init_from, "config": m.config,
            })),
            "train": self.train,
        });
        // only replica cards carry the key, so that other cards keep their hashes
        let mut canonical = canonical;
        if let Some(l) = &self.ladder {
            canonical["ladder"] = serde_json::json!(l);
        }
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Parses `[ladder]` or `[[replicas]]` (at most one of them) and checks the ladder: at least
/// two couplings, strictly monotone, finite.
fn parse_ladder(ladder: Option<toml::Value>, replicas: Option<toml::Value>) -> Result<Option<Ladder>, (String, String)> {
    let err = |f: String, m: String| Err((f, m));
    let parsed = match (ladder, replicas) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return err(
                "replicas".into(),
                "give the replica ladder either as [ladder] or as [[replicas]], not both".into(),
            )
        }
        (Some(toml::Value::Table(t)), None) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Raw {
                parameter: String,
                values: Vec<f64>,
            }
            check_finite_floats(&toml::Value::Table(t.clone())).map_err(|m| ("ladder.values".to_string(), m))?;
            let raw: Raw = section(t, "ladder")?;
            if raw.parameter.trim().is_empty() {
                return err("ladder.parameter".into(), "must name a theory parameter".into());
            }
            let n = raw.values.len();
            Ladder { parameter: raw.parameter, values: raw.values, weights: vec![None; n], section: LadderSection::Ladder }
        }
        (Some(_), None) => return err("ladder".into(), "must be a table ([ladder])".into()),
        (None, Some(toml::Value::Array(entries))) => parse_replicas(entries)?,
        (None, Some(_)) => return err("replicas".into(), "must be an array of tables ([[replicas]])".into()),
    };
    check_ladder(&parsed)?;
    Ok(Some(parsed))
}

/// `[[replicas]]`: one table per coupling, each setting the same one parameter (and optionally
/// its own `weights`).
fn parse_replicas(entries: Vec<toml::Value>) -> Result<Ladder, FieldError> {
    let err = |f: String, m: String| Err((f, m));
    let mut parameter: Option<String> = None;
    let mut values = Vec::new();
    let mut weights = Vec::new();
    for (k, e) in entries.into_iter().enumerate() {
        let here = format!("replicas[{k}]");
        let toml::Value::Table(t) = e else { return err(here, "must be a table ([[replicas]])".into()) };
        let mut w = None;
        let mut value = None;
        for (key, v) in t {
            if key == "weights" {
                match v {
                    toml::Value::String(p) if !p.is_empty() => w = Some(PathBuf::from(p)),
                    _ => return err(format!("{here}.weights"), "must be a file path".into()),
                }
                continue;
            }
            let x = match v {
                toml::Value::Float(x) if x.is_finite() => x,
                toml::Value::Integer(i) => i as f64,
                _ => return err(format!("{here}.{key}"), "must be a finite number (the parameter's value)".into()),
            };
            if value.is_some() {
                return err(
                    format!("{here}.{key}"),
                    "each replica sets exactly one parameter (plus optional `weights`)".into(),
                );
            }
            match &parameter {
                Some(p) if *p != key => {
                    return err(
                        format!("{here}.{key}"),
                        format!("every replica must set the same parameter; replicas[0] sets '{p}'"),
                    )
                }
                _ => parameter = Some(key.clone()),
            }
            value = Some(x);
        }
        match value {
            Some(x) => values.push(x),
            None => return err(here, "missing the parameter's value (e.g. `beta = 2.0`)".into()),
        }
        weights.push(w);
    }
    let Some(parameter) = parameter else {
        return err("replicas".into(), "a replica ladder needs at least 2 couplings, got 0".into());
    };
    Ok(Ladder { parameter, values, weights, section: LadderSection::Replicas })
}

/// A ladder has at least 2 couplings (at most 65535), strictly increasing or decreasing.
fn check_ladder(parsed: &Ladder) -> Result<(), FieldError> {
    let err = |f: String, m: String| Err((f, m));
    let n = parsed.values.len();
    if n < 2 {
        let field = match parsed.section {
            LadderSection::Ladder => "ladder.values".to_string(),
            LadderSection::Replicas => "replicas".to_string(),
        };
        return err(field, format!("a replica ladder needs at least 2 couplings, got {n}"));
    }
    if n > usize::from(u16::MAX) {
        return err("replicas".into(), format!("at most {} couplings, got {n}", u16::MAX));
    }
    let v = &parsed.values;
    let increasing = v[1] > v[0];
    for k in 1..n {
        if v[k] == v[k - 1] {
            return err(
                parsed.value_field(k),
                format!("duplicate value {} (the ladder must be strictly increasing or strictly decreasing)", v[k]),
            );
        }
        if (v[k] > v[k - 1]) != increasing {
            return err(
                parsed.value_field(k),
                format!(
                    "the ladder is not monotone: {} follows {} in a {} ladder (it must be strictly increasing or \
                     strictly decreasing)",
                    v[k],
                    v[k - 1],
                    if increasing { "increasing" } else { "decreasing" }
                ),
            );
        }
    }
    Ok(())
}

/// A card error before the file name is known: (field, message).
type FieldError = (String, String);

fn field_err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err((field.into(), message.into()))
}

/// `[model]`: the plugin, `weights`, `init_from`, and the plugin's own keys.
fn parse_model(value: Option<toml::Value>) -> Result<Option<ModelCard>, FieldError> {
    let mut t = match value {
        None => return Ok(None),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return field_err("model", "must be a table ([model])"),
    };
    let mut path_key = |key: &str| -> Result<Option<PathBuf>, FieldError> {
        match t.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(p)) if !p.is_empty() => Ok(Some(PathBuf::from(p))),
            Some(_) => field_err(format!("model.{key}"), "must be a file path"),
        }
    };
    let weights = path_key("weights")?;
    let init_from = path_key("init_from")?;
    let (plugin, config) = plugin_section(t, "model")?;
    Ok(Some(ModelCard { plugin, weights, init_from, config }))
}

/// `[train]`, which needs a `[model]`.
fn parse_train(value: Option<toml::Value>, has_model: bool) -> Result<Option<TrainCard>, FieldError> {
    match value {
        None => Ok(None),
        Some(toml::Value::Table(t)) => {
            let tc: TrainCard = section(t, "train")?;
            tc.validate().map_err(|(f, m)| (format!("train.{f}"), m))?;
            if !has_model {
                return field_err("train", "needs a [model] section");
            }
            Ok(Some(tc))
        }
        Some(_) => field_err("train", "must be a table ([train])"),
    }
}

/// `[[chain]]`: at least one step; a ladder needs a `replica_exchange` step.
fn parse_chain(value: Option<toml::Value>, has_model: bool, ladder: Option<&Ladder>) -> Result<Vec<StepCard>, FieldError> {
    let steps = match value {
        Some(toml::Value::Array(a)) => a,
        Some(_) => return field_err("chain", "must be an array of tables ([[chain]])"),
        None => return field_err("chain", "missing: give at least one [[chain]] step"),
    };
    if steps.is_empty() {
        return field_err("chain", "must contain at least one step");
    }
    let n_steps = steps.len();
    let chain = steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| parse_step(i, step, n_steps, has_model, ladder.is_some()))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(l) = ladder {
        if !chain.iter().any(|s| matches!(s, StepCard::ReplicaExchange(_))) {
            let field = if l.section == LadderSection::Ladder { "ladder" } else { "replicas" };
            return field_err(field, "a replica ladder needs a [[chain]] step with kind = \"replica_exchange\" (the swap phase)");
        }
    }
    Ok(chain)
}

/// `[[chain]]` entry i of `n_steps`.
fn parse_step(i: usize, step: toml::Value, n_steps: usize, has_model: bool, has_ladder: bool) -> Result<StepCard, FieldError> {
    let here = format!("chain[{i}]");
    let mut t = match step {
        toml::Value::Table(t) => t,
        _ => return field_err(here, "must be a table"),
    };
    let kind = match t.remove("kind") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return field_err(format!("{here}.kind"), "must be a string"),
        None => return field_err(format!("{here}.kind"), "missing (expected \"hmc\")"),
    };
    let step = match kind.as_str() {
        "hmc" => {
            let h: HmcCard = section(t, &here)?;
            h.validate().map_err(|(f, m)| (format!("{here}.{f}"), m))?;
            StepCard::Hmc(h)
        }
        "flow" | "reweight" => {
            let p: ProposalCard = section(t, &here)?;
            if p.batch == 0 || p.repeat == 0 {
                let f = if p.batch == 0 { "batch" } else { "repeat" };
                return field_err(format!("{here}.{f}"), "must be at least 1");
            }
            if !has_model {
                return field_err(
                    format!("{here}.kind"),
                    format!("a '{kind}' step needs a [model] section naming the model plugin and its weights"),
                );
            }
            if let Some(a) = &p.anneal {
                a.validate().map_err(|(f, m)| (format!("{here}.anneal.{f}"), m))?;
            }
            if kind == "flow" { StepCard::Flow(p) } else { StepCard::Reweight(p) }
        }
        "anneal" => {
            let a: AnnealCard = section(t, &here)?;
            a.validate().map_err(|(f, m)| (format!("{here}.{f}"), m))?;
            StepCard::Anneal(a)
        }
        "replica_exchange" => {
            let x: ExchangeCard = section(t, &here)?;
            if x.repeat == 0 {
                return field_err(format!("{here}.repeat"), "must be at least 1");
            }
            if !has_ladder {
                return field_err(
                    format!("{here}.kind"),
                    "a 'replica_exchange' step needs a replica ladder: a [ladder] section (parameter, values) \
                     or a [[replicas]] list",
                );
            }
            if x.flow && !has_model {
                return field_err(
                    format!("{here}.flow"),
                    "flow-assisted swaps need a model per coupling: add a [model] section (with `weights` \
                     per coupling in [[replicas]], or one [model].weights)",
                );
            }
            StepCard::ReplicaExchange(x)
        }
        other => StepCard::Theory(theory_step(other, t, &here)?),
    };
    if let StepCard::Reweight(p) = &step {
        // Importance weights belong to independent model samples: a reweight step
        // only makes sense alone, once per sweep.
        if n_steps != 1 || p.repeat != 1 {
            return field_err(here, "a reweight step must be the only step of the chain, with repeat = 1");
        }
    }
    Ok(step)
}

/// A step kind the host does not know: the theory plugin's own, checked when the chain is
/// built (an unknown kind is then refused, naming the built-in kinds and the theory's).
fn theory_step(kind: &str, mut t: toml::Table, here: &str) -> Result<TheoryStepCard, FieldError> {
    let repeat = match t.remove("repeat") {
        None => 1,
        Some(toml::Value::Integer(n)) if n >= 1 && n <= u32::MAX as i64 => n as u32,
        Some(_) => return field_err(format!("{here}.repeat"), "must be an integer of at least 1"),
    };
    let options = serde_json::to_value(toml::Value::Table(t))
        .map_err(|e| (here.to_string(), format!("options are not representable as JSON: {e}")))?;
    let serde_json::Value::Object(options) = options else {
        return field_err(here.to_string(), "must be a table");
    };
    Ok(TheoryStepCard { kind: kind.to_string(), repeat, options })
}

/// `[run]`, with `start` defaulted from the chain (a model start when the chain uses a model).
fn parse_run(value: Option<toml::Value>, chain: &[StepCard], has_model: bool) -> Result<RunSection, FieldError> {
    let run = match value {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return field_err("run", "must be a table ([run])"),
        None => return field_err("run", "missing section [run]"),
    };
    let mut run: RunSection = section(run, "run")?;
    if run.measurements == 0 {
        return field_err("run.measurements", "must be at least 1");
    }
    let uses_model = chain.iter().any(|s| matches!(s, StepCard::Flow(_) | StepCard::Reweight(_)));
    match &run.start {
        Some(StartChoice::Model) if !has_model => return field_err("run.start", "\"model\" needs a [model] section"),
        Some(StartChoice::File(f)) if !f.file.is_file() => {
            return field_err("run.start.file", format!("'{}' does not exist or is not a file", f.file.display()))
        }
        None => run.start = Some(if uses_model { StartChoice::Model } else { StartChoice::Cold }),
        _ => {}
    }
    if run.checkpoint_every == Some(0) {
        return field_err("run.checkpoint_every", "must be at least 1");
    }
    if run.chains == 0 || run.chains > 1 << 16 {
        return field_err("run.chains", format!("must be between 1 and 65536, got {}", run.chains));
    }
    if !(run.checkpoint_seconds.is_finite() && run.checkpoint_seconds > 0.0) {
        return field_err("run.checkpoint_seconds", format!("must be a positive number, got {}", run.checkpoint_seconds));
    }
    if run.output.as_os_str().is_empty() {
        return field_err("run.output", "must be a file path");
    }
    if let Some(parent) = run.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return field_err("run.output", format!("directory '{}' does not exist", parent.display()));
        }
    }
    Ok(run)
}

/// Splits a plugin section into the plugin name and the keys the plugin receives (as JSON).
fn plugin_section(
    table: toml::Table,
    section: &str,
) -> Result<(String, serde_json::Map<String, serde_json::Value>), (String, String)> {
    let mut config = serde_json::Map::new();
    let mut plugin = None;
    for (k, v) in table {
        if k == "plugin" {
            match v {
                toml::Value::String(s) if !s.trim().is_empty() => plugin = Some(s),
                _ => return Err((format!("{section}.plugin"), "must be a non-empty string".into())),
            }
        } else {
            let field = format!("{section}.{k}");
            check_finite_floats(&v).map_err(|m| (field.clone(), m))?;
            let json = serde_json::to_value(&v).map_err(|e| (field, e.to_string()))?;
            config.insert(k, json);
        }
    }
    let plugin = plugin.ok_or_else(|| (format!("{section}.plugin"), "missing (a plugin name or a path)".into()))?;
    Ok((plugin, config))
}

/// Plugins receive their keys as JSON, which has no NaN or infinity: refuse them here.
fn check_finite_floats(v: &toml::Value) -> Result<(), String> {
    match v {
        toml::Value::Float(x) if !x.is_finite() => Err(format!("must be a finite number, got {x}")),
        toml::Value::Array(a) => a.iter().try_for_each(check_finite_floats),
        toml::Value::Table(t) => t.values().try_for_each(check_finite_floats),
        _ => Ok(()),
    }
}

/// Deserialises one section, naming the field path on error.
fn section<T: DeserializeOwned>(table: toml::Table, prefix: &str) -> Result<T, (String, String)> {
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { prefix.to_string() } else { format!("{prefix}.{path}") };
        // toml repeats the key as "\nin `key`"; the field path already names it
        let msg = e.into_inner().to_string();
        (field, msg.lines().next().unwrap_or_default().trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[theory]
plugin = "phi4"
lattice = [8, 8]
m2 = -4.0
lambda = 8.0

[[chain]]
kind = "hmc"
trajectory_length = 1.0
md_steps = 10
integrator = "omelyan2"

[run]
seed = 1
thermalization = 200
measurements = 2000
save_every = 1
output = "phi4.h5"
"#;

    #[test]
    fn parses_the_documented_card() {
        let c = RunCard::parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(c.theory.plugin, "phi4");
        assert_eq!(c.theory.config["m2"], serde_json::json!(-4.0));
        assert_eq!(c.chain.len(), 1);
        assert_eq!(c.run.total_sweeps(), 2200);
        assert_eq!(c.run.checkpoint_path(), PathBuf::from("phi4.h5.ckpt"));
        let again = RunCard::parse(Path::new("c.toml"), &format!("# comment\n{GOOD}")).unwrap();
        assert_eq!(c.hash(), again.hash());
        let other = RunCard::parse(Path::new("c.toml"), &GOOD.replace("seed = 1", "seed = 2")).unwrap();
        assert_ne!(c.hash(), other.hash());
    }

    /// A kind the host does not know is the theory's to accept or refuse (when the chain is
    /// built, naming `chain[i].kind`); the card keeps its other keys as the step's options.
    #[test]
    fn unknown_kinds_are_theory_steps() {
        let c = RunCard::parse(Path::new("c.toml"), &GOOD.replace("kind = \"hmc\"", "kind = \"hcm\"")).unwrap();
        let StepCard::Theory(t) = &c.chain[0] else { panic!("{:?}", c.chain[0]) };
        assert_eq!((t.kind.as_str(), t.repeat), ("hcm", 1));
        assert_eq!(t.options["md_steps"], serde_json::json!(10));
        let e = err(&GOOD.replace("kind = \"hmc\"", "kind = \"heatbath\"\nrepeat = 0"));
        assert!(e.contains("chain[0].repeat"), "{e}");
    }

    fn err(text: &str) -> String {
        RunCard::parse(Path::new("bad.toml"), text).unwrap_err().to_string()
    }

    const LADDER: &str = "\n[ladder]\nparameter = \"m2\"\nvalues = [1.0, 1.5, 2.0]\n\n[[chain]]\nkind = \"replica_exchange\"\n";

    #[test]
    fn replica_ladders() {
        let c = RunCard::parse(Path::new("c.toml"), &format!("{GOOD}{LADDER}")).unwrap();
        let l = c.ladder.as_ref().unwrap();
        assert_eq!((l.parameter.as_str(), l.values.len(), l.section), ("m2", 3, LadderSection::Ladder));
        assert!(matches!(c.chain[1], StepCard::ReplicaExchange(ExchangeCard { flow: false, repeat: 1 })));
        assert_ne!(c.hash(), RunCard::parse(Path::new("c.toml"), &format!("{GOOD}{}", LADDER.replace("2.0]", "2.5]"))).unwrap().hash());
        let replicas = "\n[[replicas]]\nlambda = 1\n\n[[replicas]]\nlambda = 0.5\n\n[[chain]]\nkind = \"replica_exchange\"\n";
        let c = RunCard::parse(Path::new("c.toml"), &format!("{GOOD}{replicas}")).unwrap();
        let l = c.ladder.as_ref().unwrap();
        assert_eq!((l.parameter.as_str(), l.values.clone(), l.section), ("lambda", vec![1.0, 0.5], LadderSection::Replicas));

        let cases = [
            (format!("{GOOD}{}", LADDER.replace("[1.0, 1.5, 2.0]", "[1.0]")), "ladder.values: a replica ladder needs at least 2"),
            (format!("{GOOD}{}", LADDER.replace("[1.0, 1.5, 2.0]", "[1.0, 2.0, 1.5]")), "ladder.values[2]: the ladder is not monotone"),
            (format!("{GOOD}{}", LADDER.replace("[1.0, 1.5, 2.0]", "[1.0, 1.0]")), "ladder.values[1]: duplicate"),
            (format!("{GOOD}{}", LADDER.replace("1.5", "nan")), "ladder.values"),
            (format!("{GOOD}{LADDER}{}", replicas.replace("[[chain]]\nkind = \"replica_exchange\"\n", "")), "not both"),
            (format!("{GOOD}{}", replicas.replace("lambda = 0.5", "m2 = 0.5")), "replicas[1].m2: every replica must set the same parameter"),
            (format!("{GOOD}{}", replicas.replace("lambda = 0.5", "weights = \"w\"\nlambda = 0.5")), "replicas[1].weights: needs a [model]"),
            (format!("{GOOD}\n[ladder]\nparameter = \"m2\"\nvalues = [1.0, 2.0]\n"), "ladder: a replica ladder needs a [[chain]] step"),
            (format!("{GOOD}\n[[chain]]\nkind = \"replica_exchange\"\n"), "chain[1].kind: a 'replica_exchange' step needs a replica ladder"),
            (format!("{GOOD}{}", LADDER.replace("\"replica_exchange\"", "\"replica_exchange\"\nflow = true")), "chain[1].flow: flow-assisted swaps need a model"),
            (format!("{GOOD}{LADDER}\n[reference]\nchi2 = 1.0\n"), "reference: not supported with a replica ladder"),
        ];
        for (text, needle) in cases {
            let e = err(&text);
            assert!(e.starts_with("bad.toml: ") && e.contains(needle), "expected '{needle}' in: {e}");
        }
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            (GOOD.replace("md_steps = 10", "md_step = 10"), "chain[0]"),
            (GOOD.replace("md_steps = 10", "md_steps = 0"), "chain[0].md_steps"),
            (GOOD.replace("md_steps = 10", "md_steps = \"ten\""), "chain[0].md_steps"),
            (GOOD.replace("md_steps = 10", "md_steps = -3"), "chain[0].md_steps"),
            (GOOD.replace("\"omelyan2\"", "\"verlet\""), "chain[0].integrator"),
            (GOOD.replace("seed = 1", "sed = 1"), "run"),
            (GOOD.replace("[theory]\nplugin = \"phi4\"", "[theory]"), "theory.plugin"),
            (GOOD.replace("output = \"phi4.h5\"", "output = \"/no/such/dir/x.h5\""), "run.output"),
            (GOOD.replace("measurements = 2000", "measurements = 0"), "run.measurements"),
            (GOOD.replace("trajectory_length = 1.0", "trajectory_length = nan"), "chain[0].trajectory_length"),
            ("[run]\nseed = 1\n".into(), "theory"),
            (GOOD.replace("m2 = -4.0", "m2 = nan"), "theory.m2"),
            (format!("{GOOD}\n[extra]\nx = 1\n"), "extra"),
            ("this is = = not toml".into(), "not valid TOML"),
        ];
        for (text, field) in cases {
            let e = err(&text);
            assert!(e.starts_with("bad.toml: "), "{e}");
            assert!(e.contains(field), "expected '{field}' in: {e}");
        }
    }
}
