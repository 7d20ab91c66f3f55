//! The ABI-stable plugin boundary.
//!
//! Every latflow plugin is a `cdylib` exporting one [`PluginModRef`] root module (abi_stable
//! checks its layout and [`PluginModRef::VERSION_STRINGS`] when the host loads it, before any
//! plugin code runs). A theory plugin's constructor turns the run card's `[theory]` section
//! (as JSON) into a [`TheoryBox`]: an opaque trait object whose methods take and return plain
//! data — flat `f64` buffers laid out as the theory's [`FieldLayout`] says, `#[repr(C)]`
//! structs, and [`PluginError`]s. Calls are coarse: one per batch or per trajectory.
//!
//! Theory plugins normally do not implement [`Theory`] by hand: they implement
//! [`crate::sdk::Physics`] and export it with [`crate::export_theory!`], whose adapter guards
//! every call. Rules for whoever touches this boundary (see the README's plugin guide):
//! * wrap every entry point in [`guard`], so that a panic becomes an error instead of aborting
//!   the host;
//! * new trait methods and root-module fields go *after* the `last_prefix_field`, with a
//!   default; new enum values are new codes of the open enums ([`crate::open_enum`]); any
//!   other layout change bumps the interface version (`[workspace.package] version`, 0.x
//!   minor), after which every plugin must be rebuilt against the new latflow-core
//!   ([`crate::CORE_VERSION`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::layout::FieldLayout;
use crate::rng::RngState;

crate::open_enum::open_enum! {
    /// What kind of failure a plugin reports. An open enum (see [`crate::open_enum`]): a kind
    /// added later reaches an older host as `Unknown(code)`.
    pub struct ErrorKind;
    /// The configuration (run-card section) is invalid.
    Config = 0, "invalid configuration";
    /// A buffer has the wrong length for the layout.
    Shape = 1, "buffer size mismatch";
    /// A non-finite number appeared (NaN/inf in an input or a result).
    Numerical = 2, "non-finite number";
    /// The operation or parameter does not exist for this plugin.
    Unsupported = 3, "unsupported";
    /// The plugin panicked; the panic was caught inside the plugin.
    Panic = 4, "plugin panicked";
    /// Anything else.
    Internal = 5, "internal error";
    /// A term of the action failed (e.g. a solver did not converge); the message names it.
    ActionTerm = 6, "action term failed";
}

/// An error returned across the boundary. The host adds the plugin's name and the call.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    pub kind: ErrorKind,
    pub message: RString,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: RString::from(message.into()) }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn shape(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shape, message)
    }
    pub fn numerical(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Numerical, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for PluginError {}

/// Runs a plugin entry point, turning a panic into [`ErrorKind::Panic`]. A panic that crossed
/// the FFI boundary would abort the host, so every exported function body goes through here.
pub fn guard<T>(call: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.into(),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            RResult::RErr(PluginError::new(ErrorKind::Panic, format!("panic in `{call}`: {msg}")))
        }
    }
}

/// Parses a plugin's configuration (the run card's section as JSON), with errors that name the
/// offending key path (for example `m2: invalid type: string "x", expected f64`, or
/// `unknown field `lamda`, expected one of ...`). Use `#[serde(deny_unknown_fields)]`.
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // serde_json appends the position in the JSON text, which the user never wrote
        let mut msg = e.inner().to_string();
        if let Some(i) = msg.rfind(" at line ") {
            msg.truncate(i);
        }
        if path == "." || path.is_empty() {
            PluginError::config(msg)
        } else {
            PluginError::config(format!("{path}: {msg}"))
        }
    })
}

crate::open_enum::open_enum! {
    /// Which kind of plugin a library is (an open enum, see [`crate::open_enum`]).
    pub struct PluginKind;
    /// A theory: action, observables, HMC.
    Theory = 0, "theory";
    /// A model: a density q(φ) that can be sampled (a normalizing flow).
    Model = 1, "model";
}

/// Static facts about a plugin, for `latflow plugins` and provenance.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short name used in run cards (`plugin = "phi4"`).
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    pub kind: PluginKind,
    /// One line.
    pub description: RString,
    /// What the plugin provides: configuration keys, observables, parameters (one item each).
    pub provides: RVec<RString>,
}

/// One observable: a scalar (`len == 1`) or a vector (e.g. a correlator over time).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ObservableSpec {
    pub name: RString,
    pub len: u64,
    /// Definition and units, one line.
    pub description: RString,
}

impl ObservableSpec {
    /// An observable of `len` values.
    pub fn new(name: &str, len: usize, description: &str) -> Self {
        Self { name: name.into(), len: len as u64, description: description.into() }
    }

    /// A scalar observable (`len == 1`).
    pub fn scalar(name: &str, description: &str) -> Self {
        Self::new(name, 1, description)
    }
}

crate::open_enum::open_enum! {
    /// Integrator choice for HMC (an open enum, see [`crate::open_enum`]): a plugin built
    /// before a scheme existed refuses its code with a config error instead of misreading it.
    pub struct IntegratorKind;
    /// Leapfrog (velocity Verlet), error O(h²).
    Leapfrog = 0, "leapfrog";
    /// Omelyan–Mryglod–Folk 2nd-order minimum norm with parameter λ.
    Omelyan2 = 1, "omelyan2";
    /// Omelyan–Mryglod–Folk 4th order.
    Omelyan4 = 2, "omelyan4";
    /// The 4th-order force-gradient scheme (see `hmc::Scheme::ForceGradient`).
    ForceGradient = 3, "force_gradient";
}

/// HMC parameters, as plain data.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct HmcParams {
    /// Trajectory length τ in MD time units.
    pub trajectory_length: f64,
    /// Steps of the outermost time scale.
    pub md_steps: u32,
    pub integrator: IntegratorKind,
    /// λ of the Omelyan-2 scheme (ignored otherwise).
    pub omelyan_lambda: f64,
    /// Sub-steps of each inner time-scale level per outer drift (empty: one level).
    pub inner_steps: RVec<u32>,
    /// The Metropolis test at the end of the trajectory. `false` only when a card says so.
    pub accept_reject: bool,
    /// Trajectory-length randomisation: each trajectory's length is drawn uniformly from
    /// τ·[1 − jitter, 1 + jitter] (0 ≤ jitter < 1; 0 = fixed). This breaks the resonances of
    /// fixed-length HMC on near-harmonic modes (ωτ ≈ π), which spoil ergodicity.
    pub jitter: f64,
    /// The extension slot: plugin-specific sampler options as a JSON object (`"{}"` when there
    /// are none), e.g. solver tolerances, Hasenbusch masses or a plugin's own integrator
    /// choice. Each plugin documents and validates its keys (see [`HmcParams::extra_options`]).
    pub extra: RString,
}

impl Default for HmcParams {
    /// τ = 1, 10 Omelyan-2 steps with the usual λ, one time scale, Metropolis on, no jitter,
    /// no extra options.
    fn default() -> Self {
        Self {
            trajectory_length: 1.0,
            md_steps: 10,
            integrator: IntegratorKind::Omelyan2,
            omelyan_lambda: crate::hmc::OMELYAN_LAMBDA,
            inner_steps: RVec::new(),
            accept_reject: true,
            jitter: 0.0,
            extra: RString::from("{}"),
        }
    }
}

impl HmcParams {
    /// Parses the extension slot [`HmcParams::extra`] into a plugin's options type (use
    /// `#[serde(deny_unknown_fields)]` and `#[serde(default)]`); an empty string counts as
    /// `{}`. Errors are [`ErrorKind::Config`], start with `extra options:` and name the key.
    pub fn extra_options<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        let text = if self.extra.trim().is_empty() { "{}" } else { self.extra.as_str() };
        parse_config(text).map_err(|e| PluginError::new(e.kind, format!("extra options: {}", e.message)))
    }
}

/// Outcome of one HMC trajectory.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct TrajectoryRecord {
    pub accepted: bool,
    /// H(end) − H(start); +∞ when the MD diverged.
    pub delta_h: f64,
    /// The action of the configuration after the accept step.
    pub action: f64,
    /// The largest correction the field space's projection applied at the end of the
    /// trajectory's integration (for SU(N) links the reunitarisation, ‖U†U − 1‖ before it;
    /// 0 for flat spaces). Recorded so that drift off the group manifold is visible.
    pub projection: f64,
}

/// How to initialise a configuration.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Ordered: φ = 0, U = 1.
    Cold,
    /// Random.
    Hot,
}

/// Actions and their Euclidean gradients for a batch.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ActionGrad {
    /// S per configuration.
    pub actions: RVec<f64>,
    /// ∂S/∂x_k for every real coordinate k of every configuration (same layout as the input).
    pub grad: RVec<f64>,
}

/// A theory: an action on a field layout, its gradient, observables and an HMC.
///
/// Buffers hold `n` configurations back to back, each [`FieldLayout::config_len`] reals long.
#[sabi_trait]
pub trait Theory: Send + Sync {
    /// The plugin's name.
    fn name(&self) -> RString;

    /// The field layout (fixed for the object's life).
    fn layout(&self) -> FieldLayout;

    /// All parameters after validation and defaults, as a JSON object (for provenance).
    fn params_json(&self) -> RString;

    /// The observables that [`Theory::measure`] returns, in order.
    fn observables(&self) -> RVec<ObservableSpec>;

    /// A named real parameter (e.g. `beta`, `lambda`).
    fn parameter(&self, name: RStr<'_>) -> RResult<f64, PluginError>;

    /// Changes a named real parameter (replica ladders, transfer). Validated like the card.
    fn set_parameter(&mut self, name: RStr<'_>, value: f64) -> RResult<(), PluginError>;

    /// Worker threads for this object's parallel loops (0: the plugin's default). Results must
    /// not depend on it.
    fn set_threads(&mut self, threads: u32) -> RResult<(), PluginError>;

    /// A starting configuration.
    fn initial(&self, start: Start, rng: &mut RngState) -> RResult<RVec<f64>, PluginError>;

    /// S for each configuration of the batch.
    fn action(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError>;

    /// S and the Euclidean gradient ∂S/∂x for each configuration of the batch. This gradient,
    /// in the flat real coordinates of the layout, is what model plugins train against.
    fn action_grad(&self, configs: RSlice<'_, f64>) -> RResult<ActionGrad, PluginError>;

    /// All observables of each configuration: `n × Σ len` values, in the order of
    /// [`Theory::observables`].
    fn measure(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError>;

    /// Runs `n_traj` HMC trajectories in place on one configuration.
    #[sabi(last_prefix_field)]
    fn hmc(
        &mut self,
        config: RSliceMut<'_, f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut RngState,
    ) -> RResult<RVec<TrajectoryRecord>, PluginError>;

    // Appended after the prefix, with a default: a plugin built before this existed answers
    // `true`, which is what every such plugin's action was.

    /// Whether [`Theory::action`] is the exact action. `false` for an action that can only be
    /// estimated stochastically (e.g. pseudofermions): HMC stays exact, but anything that needs
    /// S itself (flow Metropolis, reweighting, plain replica swaps) must refuse such a theory.
    fn action_is_exact(&self) -> bool {
        true
    }

    // Theory-specific Markov steps (appended after the prefix, with defaults: a plugin built
    // before they existed has none).

    /// The theory's own Markov step kinds, as written in run cards (e.g. `heatbath`,
    /// `overrelax`), beside the host's built-in `hmc`, `flow`, `reweight` and
    /// `replica_exchange`. None by default.
    fn step_kinds(&self) -> RVec<RString> {
        RVec::new()
    }

    /// Validates the theory step `kind` with its card options (a JSON object: the `[[chain]]`
    /// entry's keys other than `kind` and `repeat`) against the current parameters, and returns
    /// the names of the values it records per application. An unknown kind is
    /// [`ErrorKind::Unsupported`]; bad options or a kind that does not apply to these parameters
    /// (e.g. heat-bath with an improved action) are [`ErrorKind::Config`] naming the key.
    fn step_columns(&self, kind: RStr<'_>, options: RStr<'_>) -> RResult<RVec<RString>, PluginError> {
        let _ = options;
        RResult::RErr(PluginError::new(ErrorKind::Unsupported, format!("the theory has no step kind '{kind}'")))
    }

    /// Applies the theory step `kind` `n` times in place on one configuration, continuing
    /// `rng`; returns `n × columns` values (see [`Theory::step_columns`]), application-major.
    /// Theory steps are always accepted (a local update records its own acceptance rate in a
    /// column).
    fn step(
        &mut self,
        kind: RStr<'_>,
        options: RStr<'_>,
        config: RSliceMut<'_, f64>,
        n: u32,
        rng: &mut RngState,
    ) -> RResult<RVec<f64>, PluginError> {
        let _ = (options, config, n, rng);
        RResult::RErr(PluginError::new(ErrorKind::Unsupported, format!("the theory has no step kind '{kind}'")))
    }

    // Domain decomposition (appended after the prefix, with a default: a plugin built before it
    // existed runs on one rank only).

    /// Splits this theory's lattice over the ranks of `comm` (see [`crate::comm`]); called once,
    /// before any configuration exists, on every rank with its own communicator. A communicator
    /// of one rank changes nothing. With more ranks the theory is *decomposed*: rank r holds the
    /// sites of a contiguous block of the global lattice along axis 0 (the slowest axis), so
    /// that its configuration is the slice `[r·len, (r+1)·len)` of the global flat
    /// configuration and the ranks' configurations concatenated in rank order are the global
    /// one. Then [`Theory::layout`] describes the local block, [`Theory::initial`] returns the
    /// local part of the global start, and [`Theory::action`], [`Theory::measure`] and the
    /// records of [`Theory::hmc`] are global values with the same bits on every rank (every
    /// rank must make the same calls, with the same parameters and random states, in the same
    /// order). A theory that cannot be decomposed, or a lattice that does not divide over the
    /// ranks, is an error ([`ErrorKind::Unsupported`] by default).
    fn set_communicator(&mut self, comm: crate::comm::CommBox) -> RResult<(), PluginError> {
        if comm.size() == 1 {
            return RResult::ROk(());
        }
        RResult::RErr(PluginError::new(
            ErrorKind::Unsupported,
            format!("the theory cannot be split over {} ranks (it has no domain decomposition)", comm.size()),
        ))
    }
}

/// An owned theory object.
pub type TheoryBox = Theory_TO<'static, RBox<()>>;

/// Proposals from a model: `n` configurations and the model's log-density of each.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Proposals {
    /// `n × config_len` reals, in the theory's flat layout.
    pub configs: RVec<f64>,
    /// log q(φ) per configuration, as a density with respect to the model's reference measure,
    /// which the model plugin documents: the flat measure Π dφ for real fields (flow-scalar) and
    /// U(1) angles (flow-u1), the normalised Haar measure per link for SU(N) (flow-sun).
    pub log_q: RVec<f64>,
}

/// The learning-rate schedule.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// Fixed learning rate.
    Constant,
    /// Cosine decay from the base rate to `min_lr` over `steps` steps, after a linear warm-up of
    /// `warmup` steps.
    Cosine { steps: u64, min_lr: f64, warmup: u64 },
    /// Multiply by `factor` every `every` steps.
    Step { every: u64, factor: f64 },
}

/// Optimiser settings for training, as plain data.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct TrainSettings {
    /// Configurations per step.
    pub batch: u32,
    /// Adam's base learning rate.
    pub learning_rate: f64,
    pub schedule: LrSchedule,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0: no clipping).
    pub grad_clip: f64,
    /// Path-gradient estimator (Vaitl et al. 2022) instead of the plain reparameterised one.
    pub path_gradients: bool,
}

/// What one training step reports.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct TrainMetrics {
    /// Reverse-KL loss mean(log q + S) of the batch (≥ −log Z in expectation).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used for this step.
    pub learning_rate: f64,
}

/// The gradient of one training batch, for data-parallel training ([`Model::train_gradient`]).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct TrainGradient {
    /// ∂/∂θ of the batch's mean surrogate loss for every parameter, flattened: the model's
    /// parameters in its own fixed order (the same for every model of one architecture), each
    /// row-major. Only [`Model::train_apply`] of a model of the same architecture reads it.
    pub gradient: RVec<f64>,
    /// The batch's reverse-KL loss mean(log q + S).
    pub loss: f64,
}

/// A normalizing-flow model: a density q(φ) on a theory's configurations that can be sampled.
///
/// Training is driven by the host in two calls per step, so that the model never sees the
/// action and the theory never sees the model: [`Model::train_sample`] draws a batch (keeping
/// its autograd graph); the host gets S and ∂S/∂φ from the theory; [`Model::train_step`]
/// backpropagates the surrogate loss mean(log q + Σ φ·stopgrad(∂S/∂φ)), whose parameter
/// gradient equals that of the reverse KL, and takes an optimiser step.
#[sabi_trait]
pub trait Model: Send + Sync {
    /// The plugin's name.
    fn name(&self) -> RString;

    /// The layout the model produces.
    fn layout(&self) -> FieldLayout;

    /// The architecture as JSON (also stored in saved weights' metadata).
    fn architecture(&self) -> RString;

    /// Worker threads (0: the plugin's default). Results must not depend on it.
    fn set_threads(&mut self, threads: u32) -> RResult<(), PluginError>;

    /// Draws `n` configurations with their log q.
    fn sample(&self, n: u32, rng: &mut RngState) -> RResult<Proposals, PluginError>;

    /// log q of each configuration of a batch.
    fn log_prob(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError>;

    /// Sets up the optimiser (keeps its state if called again with the same settings).
    fn train_begin(&mut self, settings: &TrainSettings) -> RResult<(), PluginError>;

    /// Draws a training batch of `settings.batch` configurations and keeps what the gradient needs.
    fn train_sample(&mut self, rng: &mut RngState) -> RResult<Proposals, PluginError>;

    /// One optimiser step, given S and ∂S/∂φ of the batch from the last `train_sample`.
    fn train_step(&mut self, actions: RSlice<'_, f64>, grad: RSlice<'_, f64>) -> RResult<TrainMetrics, PluginError>;

    /// The weights (and, if `with_optimizer`, Adam's state and step) as safetensors bytes, with
    /// the architecture in the metadata.
    fn save(&self, with_optimizer: bool) -> RResult<RVec<u8>, PluginError>;

    /// Loads weights saved by [`Model::save`] by a model of the same architecture (optimizer state too, if present).
    fn load(&mut self, bytes: RSlice<'_, u8>) -> RResult<(), PluginError>;

    /// Transfer: initialises from another model's weights, which may come from a different
    /// lattice size or coupling; tensors are matched by name and shape.
    #[sabi(last_prefix_field)]
    fn init_from(&mut self, bytes: RSlice<'_, u8>) -> RResult<(), PluginError>;

    // Appended after the prefix, with default implementations: a plugin built before these
    // existed (its vtable lacks them) and a model that does not override them both answer
    // `ErrorKind::Unsupported`, which the host reports as "does not support flow-assisted swaps".

    /// The inverse map into the latent space, for flow-assisted replica swaps: for each
    /// configuration x of the batch, z = F⁻¹(x) and log q(x), where F is the model's bijection
    /// from its latent density r to q (x = F(z), z ~ r). The two models of a swap must share r,
    /// so that F_b ∘ F_a⁻¹ maps between their densities with |det J| = q_a(x)/q_b(F_b(F_a⁻¹(x))).
    /// The host builds every coupling's model from the card's one `[model]` section, so the two
    /// models of a swap are always of the same plugin (and layout): r is each plugin's own
    /// convention, shared by all its models whatever their weights — for example N(0, 1) per
    /// latent real for flow-scalar, and the Haar prior (uniform angles in [0, 2π)) for flow-u1.
    /// There is no latflow-wide latent density. `Proposals::configs` holds the latent points
    /// (`n × config_len` reals); `log_q` is log q(x) with respect to the same reference measure as
    /// [`Model::log_prob`] (for a bijective model, the same values). A model whose sampler is not
    /// a bijection (e.g. a symmetrised mixture) returns the log-density of its underlying
    /// bijection, consistently with [`Model::from_latent`].
    fn to_latent(&self, configs: RSlice<'_, f64>) -> RResult<Proposals, PluginError> {
        let _ = configs;
        RResult::RErr(PluginError::unsupported("to_latent is not implemented by this model"))
    }

    /// The forward map: for each latent point z of the batch, x = F(z) and log q(x) (the same
    /// F and the same plugin-specific latent density r as [`Model::to_latent`]).
    #[allow(clippy::wrong_self_convention)]
    fn from_latent(&self, latent: RSlice<'_, f64>) -> RResult<Proposals, PluginError> {
        let _ = latent;
        RResult::RErr(PluginError::unsupported("from_latent is not implemented by this model"))
    }

    // Data-parallel training (appended; the default answers `ErrorKind::Unsupported`, which
    // the host reports as "does not support data-parallel training"). `train_step` is
    // `train_gradient` followed by `train_apply` of its result: a model that implements these
    // must give the same bits both ways. The host splits a batch into chunks, has each rank
    // compute its chunks' gradients, adds them in chunk order and applies the mean on every
    // rank, so every rank's model stays the same.

    /// The gradient of the batch of the last `train_sample`, given S and ∂S/∂φ of it as for
    /// `train_step`; nothing is applied (the batch is consumed).
    fn train_gradient(&mut self, actions: RSlice<'_, f64>, grad: RSlice<'_, f64>) -> RResult<TrainGradient, PluginError> {
        let _ = (actions, grad);
        RResult::RErr(PluginError::unsupported("train_gradient is not implemented by this model"))
    }

    /// One optimiser step with a given gradient (flattened as [`Model::train_gradient`]'s) and
    /// the loss it reports. Errors (and changes nothing) on a gradient of the wrong length or
    /// a non-finite one.
    fn train_apply(&mut self, gradient: RSlice<'_, f64>, loss: f64) -> RResult<TrainMetrics, PluginError> {
        let _ = (gradient, loss);
        RResult::RErr(PluginError::unsupported("train_apply is not implemented by this model"))
    }
}

/// An owned model object.
pub type ModelBox = Model_TO<'static, RBox<()>>;

/// The root module every latflow plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
pub struct PluginMod {
    /// Static facts about the plugin.
    pub info: extern "C" fn() -> PluginInfo,
    /// Builds a theory from the run card's `[theory]` section (minus `plugin`) as JSON.
    /// Model plugins return an [`ErrorKind::Unsupported`] error.
    #[sabi(last_prefix_field)]
    pub new_theory: extern "C" fn(config: RStr<'_>) -> RResult<TheoryBox, PluginError>,
    /// Builds a model for `layout` from the run card's `[model]` section (minus `plugin`) as
    /// JSON. Appended after the prefix: plugins built before models existed lack it (the host
    /// sees `None`), and theory plugins may leave it out.
    pub new_model: Option<extern "C" fn(config: RStr<'_>, layout: &FieldLayout) -> RResult<ModelBox, PluginError>>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "latflow_plugin";
    const NAME: &'static str = "latflow_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Checks that a batch buffer holds a whole number of configurations; returns the count.
pub fn batch_len(buf_len: usize, config_len: usize) -> Result<usize, PluginError> {
    if config_len == 0 || !buf_len.is_multiple_of(config_len) {
        return Err(PluginError::shape(format!(
            "buffer of {buf_len} reals is not a whole number of configurations of {config_len} reals"
        )));
    }
    Ok(buf_len / config_len)
}

/// The common body of a configuration-updating entry point such as [`Theory::hmc`]: checks
/// that `config` holds `expected_len` finite reals, restores the stream from `rng`, runs `f` on a
/// copy of the configuration, and on success writes the configuration and the stream state back
/// (on error both are left unchanged). Call it inside [`guard`].
pub fn update_config<T>(
    config: RSliceMut<'_, f64>,
    expected_len: usize,
    rng: &mut RngState,
    f: impl FnOnce(&mut Vec<f64>, &mut crate::rng::Stream) -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    if config.len() != expected_len {
        return Err(PluginError::shape(format!("configuration has {} reals, expected {expected_len}", config.len())));
    }
    check_finite("configuration", &config)?;
    let mut field = config.to_vec();
    let mut stream = crate::rng::Stream::from_state(rng);
    let out = f(&mut field, &mut stream)?;
    config.into_mut_slice().copy_from_slice(&field);
    *rng = stream.state();
    Ok(out)
}

/// Errors with [`ErrorKind::Numerical`] if any value is not finite, naming the first index.
pub fn check_finite(what: &str, values: &[f64]) -> Result<(), PluginError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(PluginError::numerical(format!("{what}[{i}] = {}", values[i]))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_catches_panics() {
        let r: RResult<(), PluginError> = guard("action", || panic!("boom"));
        let e = r.into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Panic);
        assert!(e.message.contains("action") && e.message.contains("boom"), "{}", e.message);
        let ok: RResult<i32, PluginError> = guard("x", || Ok(3));
        assert_eq!(ok.into_result().unwrap(), 3);
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        lattice: Vec<i64>,
        m2: f64,
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = parse_config::<Cfg>(r#"{"lattice":[4,4],"m2":"x"}"#).unwrap_err();
        assert!(e.message.starts_with("m2:"), "{}", e.message);
        let e = parse_config::<Cfg>(r#"{"lattice":[4,4],"m2":1,"lamda":2}"#).unwrap_err();
        assert!(e.message.contains("lamda") && !e.message.contains("at line"), "{}", e.message);
        let e = parse_config::<Cfg>(r#"{"lattice":[4,"a"],"m2":1}"#).unwrap_err();
        assert!(e.message.starts_with("lattice[1]:"), "{}", e.message);
    }

    #[test]
    fn extra_options_parse_with_named_keys() {
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields, default)]
        struct Opts {
            tolerance: f64,
        }
        let mut p = HmcParams::default();
        assert_eq!(p.extra_options::<Opts>().unwrap().tolerance, 0.0);
        p.extra = r#"{"tolerance": 1e-8}"#.into();
        assert_eq!(p.extra_options::<Opts>().unwrap().tolerance, 1e-8);
        p.extra = r#"{"tolerence": 1}"#.into();
        let e = p.extra_options::<Opts>().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.starts_with("extra options:") && e.message.contains("tolerence"), "{}", e.message);
        p.extra = "".into();
        assert_eq!(p.extra_options::<Opts>().unwrap().tolerance, 0.0);
    }

    #[test]
    fn unknown_error_kinds_display_their_code() {
        let e = PluginError::new(ErrorKind::from_code(99), "from a newer plugin");
        assert_eq!(e.to_string(), "unknown (code 99): from a newer plugin");
        assert_eq!(PluginError::config("x").to_string(), "invalid configuration: x");
        assert_eq!(format!("{:?}", PluginKind::Model), "Model");
    }

    #[test]
    fn batch_and_finite_checks() {
        assert_eq!(batch_len(12, 4).unwrap(), 3);
        assert!(batch_len(13, 4).is_err());
        assert!(check_finite("grad", &[1.0, f64::NAN]).unwrap_err().message.contains("grad[1]"));
    }
}
