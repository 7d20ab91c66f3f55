//! The theory SDK: write only the physics, get a guarded ABI plugin.
//!
//! A plugin implements [`Physics`] — a safe Rust trait with no ABI types in its methods
//! except plain data — and exports it with [`crate::export_theory!`]. The generic
//! [`Adapter`] implements the ABI [`Theory`] for it:
//!
//! * every ABI method is guarded: the plugin code that `layout`, `params_json` and
//!   `observables` need runs once at construction (and again after `set_parameter`), inside
//!   [`guard`], and the ABI methods hand out the cached values; all other methods run inside
//!   `guard`, so a panic anywhere becomes an error naming the plugin and the method;
//! * buffer sizes are checked (input batches, and what the physics returns: the initial
//!   configuration, observables, gradients), configurations entering HMC must be finite;
//! * batches of configurations are processed in parallel on the theory's
//!   [`Workers`], one configuration per task, so results never depend on the thread count;
//! * HMC runs core's [`hmc_trajectory`] on the physics' action terms per level.
//!
//! The [`crate::testkit`] checks a [`Physics`] against its contract in one line per check.

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr, RString, RVec};

use crate::abi::{
    batch_len, guard, update_config, ActionGrad, HmcParams, ObservableSpec, PluginError, PluginInfo, PluginKind,
    PluginMod, PluginModRef, Start, Theory, TheoryBox, Theory_TO, TrajectoryRecord,
};
use crate::hmc::{hmc_trajectory, FieldSpace, HmcError, LeveledAction, Schedule};
use crate::layout::FieldLayout;
use crate::rng::{RngState, Stream};
use crate::workers::Workers;
use crate::comm::CommBox;
use crate::ErrorKind;

/// The physics of a theory plugin. Configurations are flat `f64` slices laid out as
/// [`Physics::layout`] says; every method sees exactly one configuration of the right length.
pub trait Physics: Send + Sync + Sized + 'static {
    /// The name in run cards (`plugin = "phi4"`).
    const NAME: &'static str;

    /// The HMC field space (its field and momentum are flat real buffers: for links in a Lie
    /// group, the momentum holds algebra coordinates).
    type Space: FieldSpace<Field = Vec<f64>, Momentum = Vec<f64>>;

    /// Builds the theory from the run card's `[theory]` section (minus `plugin`) as JSON;
    /// use [`crate::abi::parse_config`]. Errors are [`ErrorKind::Config`] naming the key.
    fn from_config(json: &str) -> Result<Self, PluginError>;

    /// The field layout.
    fn layout(&self) -> FieldLayout;

    /// All parameters after validation and defaults (for provenance), a JSON object.
    fn params_json(&self) -> serde_json::Value;

    /// A named real parameter; [`ErrorKind::Unsupported`] for an unknown name.
    fn parameter(&self, name: &str) -> Result<f64, PluginError>;

    /// Changes a named real parameter, validated like the card.
    fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginError>;

    /// The observables [`Physics::measure`] appends, in order.
    fn observables(&self) -> Vec<ObservableSpec>;

    /// Whether this theory's work is many short parallel regions (a stencil of a few flops per
    /// site, tens of microseconds per sweep), or passes over the lattice that each read what
    /// the last one wrote: its worker threads are then a spinning [`crate::par::Team`] (see
    /// [`Workers::with_team`]), whose members take the same share of every loop, and all its
    /// parallel loops must go through [`crate::par`]. False by default: a rayon pool.
    fn short_parallel_regions(&self) -> bool {
        false
    }

    /// Appends the observables of one configuration to `out` (Σ len values).
    fn measure(&self, config: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError>;

    /// The action S of one configuration (exact, or the estimate of a stochastic action).
    ///
    /// By default the sum of the terms of [`Physics::action_levels`] for
    /// `HmcParams::default()` (a failing term panics, which the adapter's guard reports).
    /// Override it with a direct evaluation where one exists.
    fn action(&self, config: &[f64]) -> f64 {
        let levels = self.action_levels(&HmcParams::default()).unwrap_or_else(|e| panic!("action_levels: {e}"));
        levels.action(&config.to_vec()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// S and its Euclidean gradient ∂S/∂x in the flat coordinates (what models train
    /// against), written to `grad` (overwritten, same length as `config`).
    ///
    /// By default S from [`Physics::action`] and the sum of the terms' forces for
    /// `HmcParams::default()`, which is the Euclidean gradient when the momenta's coordinates
    /// are the configuration's flat coordinates ([`crate::hmc::RealScalar`],
    /// [`crate::hmc::Angles`]). Field spaces with other momentum coordinates (Lie-group
    /// links stored as matrices) must override it; [`crate::testkit::check_force`] checks it
    /// against finite differences either way.
    fn action_grad(&self, config: &[f64], grad: &mut [f64]) -> f64 {
        let levels = self.action_levels(&HmcParams::default()).unwrap_or_else(|e| panic!("action_levels: {e}"));
        let (u, mut buf) = (config.to_vec(), vec![0.0; config.len()]);
        grad.fill(0.0);
        for term in levels.terms().iter().flatten() {
            term.force(&u, &mut buf).unwrap_or_else(|e| panic!("{e}"));
            grad.iter_mut().zip(&buf).for_each(|(g, f)| *g += f);
        }
        self.action(config)
    }

    /// A starting configuration.
    fn initial(&self, start: Start, rng: &mut Stream) -> Vec<f64>;

    /// The HMC field space.
    fn space(&self) -> Self::Space;

    /// The action as terms per time-scale level for HMC with these parameters (the plugin
    /// reads its own options from [`HmcParams::extra_options`] here).
    fn action_levels(&self, params: &HmcParams) -> Result<LeveledAction<'_, Self::Space>, PluginError>;

    /// Validates the plugin-specific sampler options in [`HmcParams::extra`] (the run card's
    /// `options` table of an HMC step). By default a plugin takes none and refuses every key,
    /// so that a misspelt or misplaced option is never silently ignored; a plugin with options
    /// overrides this (parsing them with [`HmcParams::extra_options`] into a
    /// `deny_unknown_fields` struct) and reads them in [`Physics::action_levels`] or
    /// [`Physics::schedule`].
    fn check_options(&self, params: &HmcParams) -> Result<(), PluginError> {
        let options: serde_json::Map<String, serde_json::Value> = params.extra_options()?;
        match options.keys().next() {
            Some(key) => Err(PluginError::config(format!(
                "extra options: {} takes no plugin-specific HMC options, got '{key}'",
                Self::NAME
            ))),
            None => Ok(()),
        }
    }

    /// The integration schedule for an action of `levels` levels; by default
    /// [`Schedule::from_params`] (one scheme on all levels).
    fn schedule(&self, params: &HmcParams, levels: usize) -> Result<Schedule, PluginError> {
        Schedule::from_params(params, levels).map_err(PluginError::config)
    }

    /// Whether [`Physics::action`] is exact (`true`) or only a stochastic estimate.
    fn action_is_exact(&self) -> bool {
        true
    }

    /// A random gauge transformation of `config`, for tests of gauge invariance; `None` for a
    /// theory without a gauge symmetry.
    fn random_gauge_transform(&self, _config: &[f64], _rng: &mut Stream) -> Option<Vec<f64>> {
        None
    }

    /// Splits the lattice over the ranks of `comm` (see [`Theory::set_communicator`] for the
    /// contract: afterwards [`Physics::layout`] is the local block along axis 0,
    /// [`Physics::initial`] the local part of the global start, and `action`, `measure` and
    /// [`Physics::hmc`] are collective, with global results equal on every rank). Called at
    /// most once, before any configuration exists. By default one rank is accepted (nothing
    /// changes) and more are refused.
    fn set_communicator(&mut self, comm: CommBox) -> Result<(), PluginError> {
        if comm.size() == 1 {
            return Ok(());
        }
        Err(PluginError::new(
            ErrorKind::Unsupported,
            format!("the theory '{}' cannot be split over {} ranks (it has no domain decomposition)", Self::NAME, comm.size()),
        ))
    }

    /// `n_traj` HMC trajectories on one configuration, continuing `rng`. By default core's
    /// [`hmc_trajectory`] on [`Physics::space`] and [`Physics::action_levels`]
    /// ([`hmc_trajectories`]); a theory whose decomposed lattice needs halo storage that the
    /// flat configuration does not carry overrides it for that case.
    fn hmc(&self, field: &mut Vec<f64>, params: &HmcParams, n_traj: u32, rng: &mut Stream) -> Result<Vec<TrajectoryRecord>, PluginError> {
        hmc_trajectories(self, field, params, n_traj, rng)
    }

    /// The theory's own Markov step kinds (card `kind`s, e.g. `heatbath`); none by default.
    /// Each must leave e^{−S} invariant: it composes with every other step of a chain.
    fn step_kinds(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Validates theory step `kind` with its card `options` (a JSON object of the `[[chain]]`
    /// entry's other keys) for the current parameters, and names the values that
    /// [`Physics::step`] records per application. Unknown kinds are refused by default.
    fn step_columns(&self, kind: &str, _options: &serde_json::Value) -> Result<Vec<String>, PluginError> {
        Err(unknown_step(Self::NAME, kind, &self.step_kinds()))
    }

    /// One application of theory step `kind` to `config` (already validated by
    /// [`Physics::step_columns`]), continuing `rng`; appends one value per column to `out`.
    fn step(
        &self,
        kind: &str,
        _options: &serde_json::Value,
        _config: &mut [f64],
        _rng: &mut Stream,
        _out: &mut Vec<f64>,
    ) -> Result<(), PluginError> {
        Err(unknown_step(Self::NAME, kind, &self.step_kinds()))
    }
}

/// The error for a step kind that a theory does not provide, listing the ones it does.
pub fn unknown_step(theory: &str, kind: &str, kinds: &[&str]) -> PluginError {
    let offer = if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") };
    PluginError::new(ErrorKind::Unsupported, format!("the theory '{theory}' has no step kind '{kind}' (its own: {offer})"))
}

/// Maps an HMC failure to a plugin error: a failing term is [`ErrorKind::ActionTerm`], a
/// non-finite start [`ErrorKind::Numerical`], a schedule mismatch [`ErrorKind::Config`].
pub fn hmc_error(e: HmcError) -> PluginError {
    let kind = match &e {
        HmcError::Term(_) => ErrorKind::ActionTerm,
        HmcError::NonFiniteStart { .. } => ErrorKind::Numerical,
        HmcError::Schedule(_) => ErrorKind::Config,
    };
    PluginError::new(kind, e.to_string())
}

/// `n_traj` HMC trajectories of `physics` on `field` (one configuration), continuing `rng`.
pub fn hmc_trajectories<P: Physics>(
    physics: &P,
    field: &mut Vec<f64>,
    params: &HmcParams,
    n_traj: u32,
    rng: &mut Stream,
) -> Result<Vec<TrajectoryRecord>, PluginError> {
    physics.check_options(params)?;
    let mut action = physics.action_levels(params)?;
    let schedule = physics.schedule(params, action.levels())?;
    run_trajectories(&physics.space(), &mut action, field, &schedule, params.accept_reject, n_traj, rng)
}

/// `n_traj` HMC trajectories of `u` in `space` under `action` and `schedule`, continuing `rng`:
/// the records in order, or the first failure as a [`PluginError`] (see [`hmc_error`]), with
/// `u` then holding the field of the last trajectory that ended. The loop of
/// [`hmc_trajectories`], for a plugin that runs HMC in a field space of its own.
pub fn run_trajectories<S: FieldSpace>(
    space: &S,
    action: &mut LeveledAction<'_, S>,
    u: &mut S::Field,
    schedule: &Schedule,
    accept_reject: bool,
    n_traj: u32,
    rng: &mut Stream,
) -> Result<Vec<TrajectoryRecord>, PluginError> {
    (0..n_traj).map(|_| hmc_trajectory(space, action, u, schedule, accept_reject, rng).map_err(hmc_error)).collect()
}

/// The ABI [`Theory`] of a [`Physics`], with cached static facts and guarded calls.
pub struct Adapter<P: Physics> {
    physics: P,
    workers: Workers,
    layout: FieldLayout,
    config_len: usize,
    params_json: RString,
    observables: RVec<ObservableSpec>,
    measure_len: usize,
    /// Whether the lattice is split over several ranks: every call is then collective, so a
    /// batch is processed one configuration after the other (every rank in the same order).
    decomposed: bool,
}

impl<P: Physics> Adapter<P> {
    /// Wraps `physics`, computing its layout, parameters and observables (call inside
    /// [`guard`]: [`new_theory`] does).
    pub fn new(physics: P) -> Result<Self, PluginError> {
        let layout = physics.layout();
        let config_len = layout.config_len();
        if config_len == 0 {
            return Err(PluginError::new(ErrorKind::Internal, "the layout has no dynamical reals"));
        }
        let mut adapter = Self {
            physics,
            workers: Workers::default(),
            layout,
            config_len,
            params_json: RString::new(),
            observables: RVec::new(),
            measure_len: 0,
            decomposed: false,
        };
        adapter.refresh_cache();
        Ok(adapter)
    }

    /// Builds the physics from a `[theory]` section as JSON and wraps it (unguarded: for Rust
    /// callers such as tests and benchmarks; the ABI entry point is [`new_theory`]).
    pub fn from_json(json: &str) -> Result<Self, PluginError> {
        Self::new(P::from_config(json)?)
    }

    /// `n_traj` HMC trajectories on one configuration held as a `Vec`, on this theory's
    /// workers, without the ABI's checks and copies (what [`Theory::hmc`] runs inside).
    pub fn hmc_vec(
        &self,
        field: &mut Vec<f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginError> {
        self.workers.install(|| self.physics.hmc(field, params, n_traj, rng))
    }

    /// The wrapped physics.
    pub fn physics(&self) -> &P {
        &self.physics
    }

    /// Reals per configuration.
    pub fn config_len(&self) -> usize {
        self.config_len
    }

    fn refresh_cache(&mut self) {
        self.params_json = self.physics.params_json().to_string().into();
        let specs = self.physics.observables();
        self.measure_len = specs.iter().map(|s| s.len as usize).sum();
        self.observables = specs.into();
    }

    fn call<T>(&self, method: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
        guard(&format!("{}::{method}", P::NAME), f)
    }

    fn contract(&self, method: &str, what: String) -> PluginError {
        PluginError::new(ErrorKind::Internal, format!("{}::{method} broke its contract: {what}", P::NAME))
    }

    /// `f` on each configuration of the batch, in parallel, results in order.
    fn per_config<T: Send>(
        &self,
        configs: &[f64],
        f: impl Fn(&[f64]) -> Result<T, PluginError> + Sync + Send,
    ) -> Result<Vec<T>, PluginError> {
        batch_len(configs.len(), self.config_len)?;
        if self.decomposed {
            return self.workers.install(|| configs.chunks(self.config_len).map(f).collect());
        }
        let len = self.config_len;
        self.workers.install(|| crate::par::map(configs.len() / len, |i| f(&configs[i * len..(i + 1) * len])).into_iter().collect())
    }
}

/// Read access to the wrapped physics (`adapter.lattice()` for `Adapter<Phi4>`).
impl<P: Physics> std::ops::Deref for Adapter<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.physics
    }
}

impl<P: Physics> Theory for Adapter<P> {
    fn name(&self) -> RString {
        P::NAME.into()
    }

    fn layout(&self) -> FieldLayout {
        self.layout.clone()
    }

    fn params_json(&self) -> RString {
        self.params_json.clone()
    }

    fn observables(&self) -> RVec<ObservableSpec> {
        self.observables.clone()
    }

    fn parameter(&self, name: RStr<'_>) -> RResult<f64, PluginError> {
        self.call("parameter", || self.physics.parameter(name.as_str()))
    }

    fn set_parameter(&mut self, name: RStr<'_>, value: f64) -> RResult<(), PluginError> {
        guard(&format!("{}::set_parameter", P::NAME), || {
            self.physics.set_parameter(name.as_str(), value)?;
            self.refresh_cache();
            Ok(())
        })
    }

    fn set_threads(&mut self, threads: u32) -> RResult<(), PluginError> {
        guard(&format!("{}::set_threads", P::NAME), || {
            self.workers =
                if self.physics.short_parallel_regions() { Workers::with_team(threads)? } else { Workers::new(threads)? };
            Ok(())
        })
    }

    fn initial(&self, start: Start, rng: &mut RngState) -> RResult<RVec<f64>, PluginError> {
        self.call("initial", || {
            let mut s = Stream::from_state(rng);
            let config = self.physics.initial(start, &mut s);
            if config.len() != self.config_len {
                return Err(self.contract("initial", format!("{} reals, expected {}", config.len(), self.config_len)));
            }
            *rng = s.state();
            Ok(config.into())
        })
    }

    fn action(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        self.call("action", || Ok(self.per_config(&configs, |c| Ok(self.physics.action(c)))?.into()))
    }

    fn action_grad(&self, configs: RSlice<'_, f64>) -> RResult<ActionGrad, PluginError> {
        self.call("action_grad", || {
            if self.decomposed {
                return Err(PluginError::new(
                    ErrorKind::Unsupported,
                    "action_grad on a lattice split over ranks: a model needs whole configurations, which a split theory does not hold",
                ));
            }
            let n = batch_len(configs.len(), self.config_len)?;
            let mut grad = vec![0.0; configs.len()];
            let mut actions = vec![0.0; n];
            let len = self.config_len;
            self.workers.install(|| {
                crate::par::chunks_mut2(&mut grad, len, &mut actions, 1, |i, g, s| {
                    s[0] = self.physics.action_grad(&configs[i * len..(i + 1) * len], g)
                })
            });
            Ok(ActionGrad { actions: actions.into(), grad: grad.into() })
        })
    }

    fn measure(&self, configs: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        self.call("measure", || {
            let per = self.per_config(&configs, |c| {
                let mut out = Vec::with_capacity(self.measure_len);
                self.physics.measure(c, &mut out)?;
                if out.len() != self.measure_len {
                    let what = format!("{} observable values, expected {}", out.len(), self.measure_len);
                    return Err(self.contract("measure", what));
                }
                Ok(out)
            })?;
            Ok(per.concat().into())
        })
    }

    fn hmc(
        &mut self,
        config: RSliceMut<'_, f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut RngState,
    ) -> RResult<RVec<TrajectoryRecord>, PluginError> {
        self.call("hmc", || {
            update_config(config, self.config_len, rng, |field, s| self.hmc_vec(field, params, n_traj, s))
                .map(RVec::from)
        })
    }

    fn step_kinds(&self) -> RVec<RString> {
        guard(&format!("{}::step_kinds", P::NAME), || Ok(self.physics.step_kinds().into_iter().map(RString::from).collect()))
            .into_result()
            .unwrap_or_default()
    }

    fn step_columns(&self, kind: RStr<'_>, options: RStr<'_>) -> RResult<RVec<RString>, PluginError> {
        self.call("step_columns", || {
            let options = step_options(&options)?;
            Ok(self.physics.step_columns(&kind, &options)?.into_iter().map(RString::from).collect())
        })
    }

    fn step(
        &mut self,
        kind: RStr<'_>,
        options: RStr<'_>,
        config: RSliceMut<'_, f64>,
        n: u32,
        rng: &mut RngState,
    ) -> RResult<RVec<f64>, PluginError> {
        self.call("step", || {
            let options = step_options(&options)?;
            let columns = self.physics.step_columns(&kind, &options)?.len();
            let physics = &self.physics;
            update_config(config, self.config_len, rng, |field, s| {
                let mut out = Vec::with_capacity(n as usize * columns);
                for _ in 0..n {
                    let before = out.len();
                    self.workers.install(|| physics.step(&kind, &options, field, s, &mut out))?;
                    if out.len() != before + columns {
                        let what = format!("{} values for step '{kind}', expected {columns}", out.len() - before);
                        return Err(self.contract("step", what));
                    }
                    crate::abi::check_finite("configuration after the step", field)?;
                }
                Ok(RVec::from(out))
            })
        })
    }

    fn set_communicator(&mut self, comm: CommBox) -> RResult<(), PluginError> {
        guard(&format!("{}::set_communicator", P::NAME), || {
            let ranks = comm.size();
            self.physics.set_communicator(comm)?;
            if ranks > 1 {
                self.decomposed = true;
                self.layout = self.physics.layout();
                self.config_len = self.layout.config_len();
                if self.config_len == 0 {
                    return Err(PluginError::new(ErrorKind::Internal, "the local layout has no dynamical reals"));
                }
                self.refresh_cache();
            }
            Ok(())
        })
    }

    fn action_is_exact(&self) -> bool {
        // a plain getter of a constant; guarded anyway so a panic cannot cross the boundary
        guard(&format!("{}::action_is_exact", P::NAME), || Ok(self.physics.action_is_exact()))
            .into_result()
            .unwrap_or(false)
    }
}

/// Parses a theory step's options (a JSON object; empty means none).
fn step_options(options: &str) -> Result<serde_json::Value, PluginError> {
    if options.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_str(options) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(PluginError::config("step options must be a JSON object")),
        Err(e) => Err(PluginError::config(format!("step options are not valid JSON: {e}"))),
    }
}

/// The body of a plugin's `new_theory`: parses the card section and wraps the physics,
/// guarded.
pub fn new_theory<P: Physics>(config: &str) -> RResult<TheoryBox, PluginError> {
    guard(&format!("{}::new_theory", P::NAME), || {
        Ok(Theory_TO::from_value(Adapter::new(P::from_config(config)?)?, TD_Opaque))
    })
}

/// A theory plugin's [`PluginInfo`] (no plugin code runs: the strings are static).
pub fn theory_info(name: &str, version: &str, description: &str, provides: &[&str]) -> PluginInfo {
    PluginInfo {
        name: name.into(),
        version: version.into(),
        kind: PluginKind::Theory,
        description: description.into(),
        provides: provides.iter().map(|&p| RString::from(p)).collect(),
    }
}

/// A theory plugin's root module.
pub fn root_module(
    info: extern "C" fn() -> PluginInfo,
    new_theory: extern "C" fn(RStr<'_>) -> RResult<TheoryBox, PluginError>,
) -> PluginModRef {
    PluginMod { info, new_theory, new_model: None }.leak_into_prefix()
}

/// The symbol abi_stable 0.11 looks the root module up by (`ROOT_MODULE_LOADER_NAME`), spelt
/// out because [`crate::export_theory!`] needs it as a literal; a test checks it.
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Exports a [`Physics`] type as a latflow theory plugin (the library's root module), so the
/// plugin crate needs no direct abi_stable dependency:
///
/// ```ignore
/// latflow_core::export_theory!(Xy,
///     description: "the O(2)/XY model, any dimension",
///     provides: ["keys: lattice, beta", "observables: action_density energy magnetization"]);
/// ```
///
/// It defines `pub fn get_library() -> PluginModRef` (usable in the plugin's own tests) and
/// the exported symbol that the host loads. The plugin's version is its crate version.
#[macro_export]
macro_rules! export_theory {
    ($physics:ty, description: $description:expr, provides: [$($provides:expr),* $(,)?] $(,)?) => {
        extern "C" fn __latflow_info() -> $crate::abi::PluginInfo {
            $crate::sdk::theory_info(
                <$physics as $crate::sdk::Physics>::NAME,
                env!("CARGO_PKG_VERSION"),
                $description,
                &[$($provides),*],
            )
        }

        extern "C" fn __latflow_new_theory(
            config: $crate::abi_stable::std_types::RStr<'_>,
        ) -> $crate::abi_stable::std_types::RResult<$crate::abi::TheoryBox, $crate::PluginError> {
            $crate::sdk::new_theory::<$physics>(config.as_str())
        }

        /// The plugin's root module.
        pub fn get_library() -> $crate::abi::PluginModRef {
            $crate::sdk::root_module(__latflow_info, __latflow_new_theory)
        }

        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __LATFLOW_ROOT_MODULE: $crate::abi_stable::library::LibHeader = {
            extern "C" fn loader() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(get_library)
            }
            // SAFETY: `loader` returns the root module of type `PluginModRef`, as declared.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginModRef>(
                    loader,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::parse_config;
    use crate::hmc::{ActionTerm, RealScalar, TermError};
    use crate::layout::{ElementKind, Support};
    use crate::testkit;

    /// Free field S = (m/2) Σ φ² on `n` sites, with injectable misbehaviour.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Free {
        n: usize,
        m: f64,
        #[serde(default)]
        fault: String,
    }

    impl ActionTerm<RealScalar> for Free {
        fn name(&self) -> &str {
            "mass"
        }
        fn is_exact(&self) -> bool {
            self.fault != "stochastic"
        }
        fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
            Ok(crate::sum::compensated_sum(u.iter().map(|x| 0.5 * self.m * x * x)))
        }
        fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
            match self.fault.as_str() {
                "force" => return Err(self.error("solver did not converge")),
                "wrong_force" => out.iter_mut().zip(u).for_each(|(o, x)| *o = 1.1 * self.m * x),
                _ => out.iter_mut().zip(u).for_each(|(o, x)| *o = self.m * x),
            }
            Ok(())
        }
    }

    impl Physics for Free {
        const NAME: &'static str = "free";
        type Space = RealScalar;
        fn from_config(json: &str) -> Result<Self, PluginError> {
            parse_config(json)
        }
        fn layout(&self) -> FieldLayout {
            FieldLayout::single(&[self.n], "phi", Support::Site, ElementKind::Real)
        }
        fn params_json(&self) -> serde_json::Value {
            serde_json::json!({ "n": self.n, "m": self.m })
        }
        fn parameter(&self, name: &str) -> Result<f64, PluginError> {
            match name {
                "m" => Ok(self.m),
                _ => Err(PluginError::unsupported(format!("no parameter '{name}'"))),
            }
        }
        fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginError> {
            self.parameter(name)?;
            self.m = value;
            Ok(())
        }
        fn observables(&self) -> Vec<ObservableSpec> {
            assert!(self.fault != "panic_observables", "observables exploded");
            let len = if self.fault == "short_measure" { 2 } else { 1 };
            vec![ObservableSpec { name: "phi2".into(), len, description: "mean phi^2".into() }]
        }
        fn measure(&self, u: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
            out.push(u.iter().map(|x| x * x).sum::<f64>() / u.len() as f64);
            Ok(())
        }
        fn initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
            let mut u = vec![0.0; self.n];
            if start == Start::Hot {
                rng.fill_normal(&mut u);
            }
            u
        }
        fn space(&self) -> RealScalar {
            RealScalar { len: self.n }
        }
        fn action_levels(&self, _: &HmcParams) -> Result<LeveledAction<'_, RealScalar>, PluginError> {
            Ok(LeveledAction::single(Box::new(self)))
        }
        fn action_is_exact(&self) -> bool {
            self.fault != "stochastic"
        }
    }

    const FREE: &str = r#"{"n": 6, "m": 1.5}"#;

    fn theory(json: &str) -> Result<TheoryBox, PluginError> {
        new_theory::<Free>(json).into_result()
    }

    #[test]
    fn the_root_module_symbol_is_abi_stables() {
        assert_eq!(ROOT_MODULE_SYMBOL, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }

    #[test]
    fn the_kit_passes_a_correct_theory() {
        testkit::check_force::<Free>(FREE, &HmcParams::default());
        testkit::check_observables::<Free>(FREE);
        testkit::check_reversibility::<Free>(FREE, &HmcParams::default());
        testkit::check_adapter::<Free>(FREE, &HmcParams::default());
        let z =
            testkit::check_exp_minus_delta_h::<Free>(FREE, &HmcParams { md_steps: 3, ..HmcParams::default() }, 4000);
        assert!(z.is_finite());
    }

    #[test]
    #[should_panic(expected = "force·X")]
    fn the_kit_catches_a_wrong_force() {
        testkit::check_force::<Free>(r#"{"n": 6, "m": 1.5, "fault": "wrong_force"}"#, &HmcParams::default());
    }

    #[test]
    #[should_panic(expected = "provides no gauge transformation")]
    fn the_gauge_check_needs_a_gauge_transformation() {
        testkit::check_gauge_invariance::<Free>(FREE);
    }

    #[test]
    fn a_panic_while_caching_static_facts_is_an_error() {
        let e = theory(r#"{"n": 6, "m": 1.5, "fault": "panic_observables"}"#).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Panic);
        assert!(e.message.contains("free::new_theory") && e.message.contains("observables exploded"), "{e}");
    }

    #[test]
    fn contract_violations_and_failing_terms_are_named_errors() {
        let t = theory(r#"{"n": 6, "m": 1.5, "fault": "short_measure"}"#).unwrap();
        let e = t.measure(RSlice::from_slice(&[0.0; 6])).into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.contains("free::measure") && e.message.contains("1 observable values, expected 2"), "{e}");
        let mut t = theory(r#"{"n": 6, "m": 1.5, "fault": "force"}"#).unwrap();
        let mut u = vec![0.5; 6];
        let e = t.hmc(RSliceMut::from_mut_slice(&mut u), &HmcParams::default(), 1, &mut Stream::new(1, 0).state());
        let e = e.into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::ActionTerm);
        assert_eq!(e.message.as_str(), "action term 'mass': solver did not converge");
        assert_eq!(u, vec![0.5; 6]);
    }

    #[test]
    fn exactness_and_parameters_cross_the_abi() {
        let mut t = theory(FREE).unwrap();
        assert!(t.action_is_exact());
        assert!(!theory(r#"{"n": 6, "m": 1.5, "fault": "stochastic"}"#).unwrap().action_is_exact());
        t.set_parameter(RStr::from_str("m"), 2.5).into_result().unwrap();
        assert!(t.params_json().contains("2.5"), "the cached parameters follow set_parameter");
        assert_eq!(t.layout().config_len(), 6);
        assert_eq!(t.observables()[0].name.as_str(), "phi2");
    }
}
