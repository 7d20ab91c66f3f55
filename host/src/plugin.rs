//! Finding and loading plugins, and a checked handle on a theory object.
//!
//! Search path, in order (the first plugin with a given name wins):
//! 1. every `--plugin-dir` given on the command line;
//! 2. the directories in `LATFLOW_PLUGIN_PATH` (separated by `:`);
//! 3. when the `latflow` executable lies in a cargo target directory (`cargo run`, the
//!    integration tests): its directory's `deps/`, then its directory, where cargo puts the
//!    in-tree plugins it builds (deps/ first: always fresh);
//! 4. an installed prefix: `../lib/latflow/` relative to the executable, so that
//!    `PREFIX/bin/latflow` finds `PREFIX/lib/latflow/*.so` (see tools/install.sh).
//!
//! Nothing else: outside a cargo target directory and an install prefix, plugins are found
//! only through 1 and 2 (no path compiled into the binary). In 1, 2 and 4 every shared library
//! is a candidate; in 3, where cargo also leaves unrelated libraries, only files named
//! `liblatflow_*`.
//!
//! Libraries are opened with abi_stable's `lib_header_from_path(..).init_root_module()`, which
//! checks the root module's layout and version before any plugin code runs. (Not
//! `RootModule::load_from_file`, which caches per type and would return the first plugin for
//! every later one.)

mod abort_report;

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr};
use latflow_core::abi::{
    ObservableSpec, PluginError, PluginInfo, PluginKind, PluginModRef, Start, TheoryBox, TrajectoryRecord,
};
use latflow_core::abi::{ActionGrad, HmcParams, ModelBox, Proposals, TrainMetrics, TrainSettings};
use latflow_core::{FieldLayout, Stream};

/// Errors from loading or calling plugins.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    #[error("plugin library '{path}' could not be loaded: {reason}")]
    Load {
        path: PathBuf,
        /// One line.
        reason: String,
        /// abi_stable's full report (`latflow plugins --verbose`).
        detail: String,
    },
    #[error("no plugin named '{name}' on the search path ({searched}); `latflow plugins` lists what is found")]
    NotFound { name: String, searched: String },
    /// A library named like the plugin was found but could not be loaded.
    #[error("plugin '{name}' was found but refused: {found}")]
    Refused { name: String, found: String },
    #[error("plugin '{name}' ({path}) is a {kind:?} plugin, but a {wanted} plugin is needed here")]
    WrongKind { name: String, path: PathBuf, kind: PluginKind, wanted: &'static str },
    #[error("model '{model}' does not fit theory '{theory}': {reason}")]
    LayoutMismatch { model: String, theory: String, reason: String },
    #[error("plugin '{plugin}' failed in `{call}`: {error}")]
    Call { plugin: String, call: String, error: PluginError },
    #[error("plugin '{plugin}' returned bad data from `{call}`: {reason}")]
    BadOutput { plugin: String, call: String, reason: String },
    /// A step that needs the exact action S met a theory that only estimates it.
    #[error("theory plugin '{plugin}' computes its action only stochastically (e.g. through pseudofermions), but {step} needs the exact action S; use HMC steps with this theory")]
    InexactAction { plugin: String, step: String },
    #[error("model plugin '{plugin}' does not support {feature} ({detail}); rebuild it against this latflow-core, or use a model that implements it")]
    Unsupported { plugin: String, feature: String, detail: String },
}

/// Where a search-path directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    Environment,
    /// Beside an executable that lies in a cargo target directory.
    CargoTarget,
    /// `../lib/latflow` relative to the executable.
    Installed,
}

/// The ordered plugin search path.
#[derive(Debug, Clone)]
pub struct SearchPath {
    pub dirs: Vec<(PathBuf, Origin)>,
}

impl SearchPath {
    /// The search path for these `--plugin-dir`s, the current environment and the running
    /// executable.
    pub fn new(cli_dirs: &[PathBuf]) -> Self {
        let exe = std::env::current_exe().ok();
        Self::for_executable(cli_dirs, std::env::var_os("LATFLOW_PLUGIN_PATH").as_deref(), exe.as_deref())
    }

    /// The search path for these `--plugin-dir`s, a `LATFLOW_PLUGIN_PATH` value and the path
    /// of the executable (see the module documentation for the order).
    pub fn for_executable(cli_dirs: &[PathBuf], env: Option<&std::ffi::OsStr>, exe: Option<&Path>) -> Self {
        let mut dirs: Vec<(PathBuf, Origin)> = cli_dirs.iter().map(|d| (d.clone(), Origin::CommandLine)).collect();
        if let Some(env) = env {
            dirs.extend(std::env::split_paths(env).filter(|p| !p.as_os_str().is_empty()).map(|p| (p, Origin::Environment)));
        }
        if let Some(exe_dir) = exe.and_then(Path::parent) {
            if is_cargo_profile_dir(exe_dir) {
                // deps/ first: cargo refreshes it on every build, while the uplifted copy beside
                // the executable is only refreshed when the plugin is built as a workspace member.
                dirs.push((exe_dir.join("deps"), Origin::CargoTarget));
                dirs.push((exe_dir.to_path_buf(), Origin::CargoTarget));
            }
            if let Some(prefix) = exe_dir.parent() {
                dirs.push((prefix.join("lib").join("latflow"), Origin::Installed));
            }
        }
        // drop duplicates
        let mut seen = Vec::new();
        dirs.retain(|(d, _)| {
            let key = d.canonicalize().unwrap_or_else(|_| d.clone());
            if seen.contains(&key) {
                false
            } else {
                seen.push(key);
                true
            }
        });
        Self { dirs }
    }

    /// Candidate libraries, in search order.
    pub fn candidates(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (dir, origin) in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_shared_library(p))
                .filter(|p| {
                    *origin != Origin::CargoTarget
                        || p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("liblatflow_"))
                })
                .collect();
            files.sort();
            out.extend(files);
        }
        // cargo's uplifted copy beside the executable is a hard link to the one in deps/:
        // list each file once
        let mut seen = std::collections::HashSet::new();
        out.retain(|p| seen.insert(file_identity(p)));
        out
    }

    /// A short description for error messages.
    pub fn describe(&self) -> String {
        self.dirs.iter().map(|(d, _)| d.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// Whether `dir` is a cargo profile directory (`target/debug`, `target/release`, …): cargo
/// keeps its build fingerprints there.
fn is_cargo_profile_dir(dir: &Path) -> bool {
    dir.join(".fingerprint").is_dir() && dir.join("deps").is_dir()
}

/// Identifies a file independently of the path (device and inode on unix).
fn file_identity(p: &Path) -> (u64, u64, PathBuf) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(p) {
            return (m.dev(), m.ino(), PathBuf::new());
        }
    }
    (0, 0, p.to_path_buf())
}

fn is_shared_library(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("so" | "dylib" | "dll"))
}

/// A loaded plugin library.
#[derive(Clone)]
pub struct Plugin {
    pub path: PathBuf,
    pub info: PluginInfo,
    /// The latflow-core version the plugin was built against (from its library header).
    pub core_version: String,
    module: PluginModRef,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("info", &self.info).finish()
    }
}

/// "rebuild the plugin against latflow-core X", X being this latflow's.
fn rebuild_advice() -> String {
    format!("rebuild the plugin against latflow-core {}", Plugin::host_interface_version())
}

/// The one-line reason for a library that was built against another latflow-core version
/// and failed to load: abi_stable would report each type whose package version differs.
fn version_mismatch_reason(plugin_core: &str) -> String {
    format!(
        "built against latflow-core {plugin_core}, but this latflow has latflow-core {}; {}",
        Plugin::host_interface_version(),
        rebuild_advice()
    )
}

/// A one-line reason for an abi_stable load error; its layout reports run to pages.
fn short_reason(e: &LibraryError) -> String {
    let rebuild = rebuild_advice();
    match e {
        LibraryError::OpenError { err, .. } => format!("cannot open the library: {err}"),
        LibraryError::GetSymbolError { .. } => {
            "not a latflow plugin (it exports no abi_stable root module)".to_string()
        }
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => format!(
            "plugin built for interface version {actual_version}, this latflow has {expected_version}; {rebuild}"
        ),
        LibraryError::AbiInstability(_) => {
            // Keep each "Error:" line with the expected/found lines under it, and name the
            // innermost type whose layout differs.
            let full = e.to_string();
            let lines: Vec<&str> = full.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            // the type a layout report is about is the first `type:` after its
            // "Layout of expected type:" header; the last report is the innermost type
            let mut ty: Option<String> = None;
            let mut header = false;
            let mut want_mod = false;
            let mut problems = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                if l.starts_with("Layout of expected type") {
                    header = true;
                } else if let Some(t) = l.strip_prefix("type:").filter(|_| header) {
                    ty = Some(t.trim().to_string());
                    header = false;
                    want_mod = true;
                } else if let Some((_, m)) = l.split_once("mod:").filter(|_| want_mod && l.starts_with("line:")) {
                    // name generated types by their module, e.g. `Model_trait::VTable`
                    let m = m.trim().rsplit("::").next().unwrap_or_default();
                    if let (Some(t), false) = (&mut ty, m.is_empty()) {
                        if t.as_str() == "VTable" {
                            *t = format!("{m}::{t}");
                        }
                    }
                    want_mod = false;
                }
                if let Some(p) = l.strip_prefix("Error:") {
                    let detail: Vec<&str> = lines[i + 1..]
                        .iter()
                        .take_while(|n| n.starts_with("expected") || n.starts_with("found"))
                        .copied()
                        .collect();
                    problems.push(if detail.is_empty() { p.trim().to_string() } else { format!("{} ({})", p.trim(), detail.join(", ")) });
                }
            }
            let mut s = match ty {
                Some(t) => format!("its interface layout differs from this latflow's in `{t}`"),
                None => "its interface layout differs from this latflow's".to_string(),
            };
            if !problems.is_empty() {
                s.push_str(&format!(": {}", problems.join("; ")));
            }
            if s.len() > 400 {
                s.truncate(400);
                s.push_str(" …");
            }
            format!("{s}; {rebuild}")
        }
        other => other.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "),
    }
}

impl Plugin {
    /// Opens a library and checks its latflow root module (layout and version).
    pub fn load(path: &Path) -> Result<Self, PluginLoadError> {
        let fail = |e: LibraryError| PluginLoadError::Load {
            path: path.to_path_buf(),
            reason: short_reason(&e),
            detail: e.to_string(),
        };
        abort_report::install();
        let header = lib_header_from_path(path).map_err(fail)?;
        let core_version = header.version_strings().version.to_string();
        let module = header.init_root_module::<PluginModRef>().map_err(|e| {
            if core_version == Self::host_interface_version() {
                fail(e)
            } else {
                PluginLoadError::Load {
                    path: path.to_path_buf(),
                    reason: version_mismatch_reason(&core_version),
                    detail: e.to_string(),
                }
            }
        })?;
        let info = {
            let _in = abort_report::enter(path.to_str().unwrap_or("?"), "info");
            (module.info())()
        };
        Ok(Self { path: path.to_path_buf(), info, core_version, module })
    }

    /// The interface version the host expects: the version of the latflow-core it was built
    /// with.
    pub fn host_interface_version() -> String {
        PluginModRef::VERSION_STRINGS.version.to_string()
    }

    /// Builds a theory from the card's `[theory]` keys (JSON), with checked calls.
    pub fn new_theory(&self, config_json: &str) -> Result<TheoryHandle, PluginLoadError> {
        if self.info.kind != PluginKind::Theory {
            return Err(PluginLoadError::WrongKind {
                name: self.info.name.to_string(),
                path: self.path.clone(),
                kind: self.info.kind,
                wanted: "theory",
            });
        }
        let _in = abort_report::enter(&self.info.name, "new_theory");
        let obj = call(&self.info.name, "new_theory", (self.module.new_theory())(RStr::from_str(config_json)))?;
        TheoryHandle::new(self.info.name.to_string(), self.info.version.to_string(), self.path.clone(), obj)
    }
}

impl Plugin {
    /// Builds a model for `theory`'s layout from the card's `[model]` keys (JSON), with checked
    /// calls. The model's layout must match the theory's.
    pub fn new_model(&self, config_json: &str, theory: &TheoryHandle) -> Result<ModelHandle, PluginLoadError> {
        let wrong_kind = || PluginLoadError::WrongKind {
            name: self.info.name.to_string(),
            path: self.path.clone(),
            kind: self.info.kind,
            wanted: "model",
        };
        if self.info.kind != PluginKind::Model {
            return Err(wrong_kind());
        }
        let ctor = self.module.new_model().flatten().ok_or_else(wrong_kind)?;
        let _in = abort_report::enter(&self.info.name, "new_model");
        let obj = call(&self.info.name, "new_model", ctor(RStr::from_str(config_json), theory.layout()))?;
        let _in = abort_report::enter(&self.info.name, "layout");
        let layout = obj.layout();
        layout.check_compatible(theory.layout()).map_err(|reason| PluginLoadError::LayoutMismatch {
            model: self.info.name.to_string(),
            theory: theory.name.clone(),
            reason,
        })?;
        Ok(ModelHandle {
            name: self.info.name.to_string(),
            version: self.info.version.to_string(),
            path: self.path.clone(),
            config_len: layout.config_len(),
            obj,
        })
    }
}

/// A model object with every call checked, like [`TheoryHandle`].
pub struct ModelHandle {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    obj: ModelBox,
    config_len: usize,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle").field("name", &self.name).field("path", &self.path).finish()
    }
}

impl ModelHandle {
    fn call<T>(&self, name: &str, r: RResult<T, PluginError>) -> Result<T, PluginLoadError> {
        call(&self.name, name, r)
    }

    fn bad(&self, call: &str, reason: String) -> PluginLoadError {
        PluginLoadError::BadOutput { plugin: self.name.clone(), call: call.into(), reason }
    }

    fn check_proposals(&self, call: &str, p: Proposals, n: usize) -> Result<(Vec<f64>, Vec<f64>), PluginLoadError> {
        if p.configs.len() != n * self.config_len || p.log_q.len() != n {
            return Err(self.bad(
                call,
                format!("{} reals and {} log q for {n} configurations of {} reals", p.configs.len(), p.log_q.len(), self.config_len),
            ));
        }
        if let Some(i) = p.configs.iter().position(|x| !x.is_finite()) {
            return Err(self.bad(call, format!("configuration value [{i}] is {}", p.configs[i])));
        }
        if let Some(i) = p.log_q.iter().position(|x| !x.is_finite()) {
            return Err(self.bad(call, format!("log q [{i}] is {}", p.log_q[i])));
        }
        Ok((p.configs.into_vec(), p.log_q.into_vec()))
    }

    /// Reals per configuration.
    pub fn config_len(&self) -> usize {
        self.config_len
    }

    /// The architecture as JSON.
    pub fn architecture(&self) -> String {
        let _in = abort_report::enter(&self.name, "architecture");
        self.obj.architecture().into()
    }

    /// Sets the plugin's worker-thread count.
    pub fn set_threads(&mut self, n: u32) -> Result<(), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "set_threads");
        let r = self.obj.set_threads(n);
        self.call("set_threads", r)
    }

    /// `n` proposals and their log q.
    pub fn sample(&self, n: u32, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginLoadError> {
        let mut st = rng.state();
        let _in = abort_report::enter(&self.name, "sample");
        let p = self.call("sample", self.obj.sample(n, &mut st))?;
        *rng = Stream::from_state(&st);
        self.check_proposals("sample", p, n as usize)
    }

    /// log q of each configuration in a batch.
    pub fn log_prob(&self, configs: &[f64]) -> Result<Vec<f64>, PluginLoadError> {
        let n = configs.len() / self.config_len;
        let _in = abort_report::enter(&self.name, "log_prob");
        let lq = self.call("log_prob", self.obj.log_prob(RSlice::from_slice(configs)))?.into_vec();
        if lq.len() != n {
            return Err(self.bad("log_prob", format!("{} values for {n} configurations", lq.len())));
        }
        if let Some(i) = lq.iter().position(|x| !x.is_finite()) {
            return Err(self.bad("log_prob", format!("log q [{i}] is {}", lq[i])));
        }
        Ok(lq)
    }

    /// Sets up training.
    pub fn train_begin(&mut self, settings: &TrainSettings) -> Result<(), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "train_begin");
        let r = self.obj.train_begin(settings);
        self.call("train_begin", r)
    }

    /// Draws a training batch.
    pub fn train_sample(&mut self, batch: usize, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginLoadError> {
        let mut st = rng.state();
        let _in = abort_report::enter(&self.name, "train_sample");
        let r = self.obj.train_sample(&mut st);
        let p = self.call("train_sample", r)?;
        *rng = Stream::from_state(&st);
        self.check_proposals("train_sample", p, batch)
    }

    /// One optimiser step from the batch's actions and gradients.
    pub fn train_step(&mut self, actions: &[f64], grad: &[f64]) -> Result<TrainMetrics, PluginLoadError> {
        let _in = abort_report::enter(&self.name, "train_step");
        let r = self.obj.train_step(RSlice::from_slice(actions), RSlice::from_slice(grad));
        self.call("train_step", r)
    }

    /// The gradient and loss of the last training batch, nothing applied (data-parallel
    /// training). A model without it answers `Unsupported`.
    pub fn train_gradient(&mut self, actions: &[f64], grad: &[f64]) -> Result<(Vec<f64>, f64), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "train_gradient");
        let r = self.obj.train_gradient(RSlice::from_slice(actions), RSlice::from_slice(grad));
        let g = self.call("train_gradient", r)?;
        Ok((g.gradient.into_vec(), g.loss))
    }

    /// One optimiser step with a given (summed-over-chunks, averaged) gradient.
    pub fn train_apply(&mut self, gradient: &[f64], loss: f64) -> Result<TrainMetrics, PluginLoadError> {
        let _in = abort_report::enter(&self.name, "train_apply");
        let r = self.obj.train_apply(RSlice::from_slice(gradient), loss);
        self.call("train_apply", r)
    }

    /// Weights (and optimiser state) as safetensors bytes.
    pub fn save(&self, with_optimizer: bool) -> Result<Vec<u8>, PluginLoadError> {
        let _in = abort_report::enter(&self.name, "save");
        Ok(self.call("save", self.obj.save(with_optimizer))?.into_vec())
    }

    /// Loads weights saved by a model of the same architecture.
    pub fn load(&mut self, bytes: &[u8]) -> Result<(), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "load");
        let r = self.obj.load(RSlice::from_slice(bytes));
        self.call("load", r)
    }

    /// Initialises from another model's weights (transfer).
    pub fn init_from(&mut self, bytes: &[u8]) -> Result<(), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "init_from");
        let r = self.obj.init_from(RSlice::from_slice(bytes));
        self.call("init_from", r)
    }

    /// A latent-map call, checked: an `Unsupported` answer — from a model that does not
    /// implement the map, or from a plugin built before `Model` had it (its vtable lacks the
    /// method, and the trait's default answers) — becomes [`PluginLoadError::Unsupported`].
    fn latent_call(&self, call: &str, r: RResult<Proposals, PluginError>, n: usize) -> Result<(Vec<f64>, Vec<f64>), PluginLoadError> {
        match r {
            RResult::RErr(e) if e.kind == latflow_core::ErrorKind::Unsupported => Err(PluginLoadError::Unsupported {
                plugin: self.name.clone(),
                feature: "flow-assisted swaps".into(),
                detail: format!("`{call}`: {}", e.message),
            }),
            r => {
                let p = self.call(call, r)?;
                self.check_proposals(call, p, n)
            }
        }
    }

    /// For each configuration x of the batch: the latent point z = F⁻¹(x) and log q(x)
    /// (flow-assisted replica swaps; see [`latflow_core::abi::Model::to_latent`]).
    pub fn to_latent(&self, configs: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginLoadError> {
        let n = configs.len() / self.config_len;
        let _in = abort_report::enter(&self.name, "to_latent");
        self.latent_call("to_latent", self.obj.to_latent(RSlice::from_slice(configs)), n)
    }

    /// For each latent point z of the batch: x = F(z) and log q(x).
    pub fn from_latent(&self, latent: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginLoadError> {
        let n = latent.len() / self.config_len;
        let _in = abort_report::enter(&self.name, "from_latent");
        self.latent_call("from_latent", self.obj.from_latent(RSlice::from_slice(latent)), n)
    }
}

/// Finds a plugin by name (or opens it by path if `name` looks like a path).
pub fn find(search: &SearchPath, name: &str) -> Result<Plugin, PluginLoadError> {
    let as_path = Path::new(name);
    if name.contains(std::path::MAIN_SEPARATOR) || is_shared_library(as_path) {
        return Plugin::load(as_path);
    }
    let candidates = search.candidates();
    // Conventional file names first, so that resolving a name does not open every library.
    let conventional = [format!("liblatflow_{name}"), format!("lib{name}")];
    let (preferred, rest): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|p| {
        p.file_stem().and_then(|s| s.to_str()).is_some_and(|s| conventional.iter().any(|c| c == s))
    });
    let mut refused = Vec::new();
    for path in preferred.iter().chain(&rest) {
        match Plugin::load(path) {
            Ok(p) if p.info.name.as_str() == name => return Ok(p),
            Ok(_) => {}
            Err(e) => refused.push((path, e)),
        }
    }
    // A library that could not be loaded cannot say its name: one named like the plugin is
    // most likely it, so say what was found there and why it was refused.
    let named: Vec<String> = refused
        .iter()
        .filter(|(p, _)| preferred.contains(*p))
        .map(|(p, e)| match e {
            PluginLoadError::Load { reason, .. } => format!("{}: {reason}", p.display()),
            other => format!("{}: {other}", p.display()),
        })
        .collect();
    if !named.is_empty() {
        return Err(PluginLoadError::Refused { name: name.into(), found: named.join("; ") });
    }
    let others = match refused.len() {
        0 => String::new(),
        1 => "; 1 other library there could not be loaded".to_string(),
        n => format!("; {n} other libraries there could not be loaded"),
    };
    Err(PluginLoadError::NotFound { name: name.into(), searched: format!("{}{others}", search.describe()) })
}

/// One entry of `latflow plugins`.
#[derive(Debug)]
pub struct Listing {
    pub path: PathBuf,
    pub result: Result<Plugin, PluginLoadError>,
    /// A plugin of the same name found earlier on the path takes precedence.
    pub shadowed: bool,
}

/// Every candidate library on the search path, loaded or with the reason it failed.
pub fn list(search: &SearchPath) -> Vec<Listing> {
    let mut names: Vec<String> = Vec::new();
    search
        .candidates()
        .into_iter()
        .map(|path| {
            let result = Plugin::load(&path);
            let shadowed = match &result {
                Ok(p) => {
                    let n = p.info.name.to_string();
                    let s = names.contains(&n);
                    names.push(n);
                    s
                }
                Err(_) => false,
            };
            Listing { path, result, shadowed }
        })
        .collect()
}

fn call<T>(plugin: &str, name: &str, r: RResult<T, PluginError>) -> Result<T, PluginLoadError> {
    r.into_result().map_err(|error| PluginLoadError::Call { plugin: plugin.into(), call: name.into(), error })
}

/// A theory object with every call checked: errors and panics caught in the plugin come back
/// as [`PluginLoadError::Call`], and wrong-sized or non-finite results as
/// [`PluginLoadError::BadOutput`] — both naming the plugin and the call.
pub struct TheoryHandle {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    obj: TheoryBox,
    layout: FieldLayout,
    observables: Vec<ObservableSpec>,
    obs_len: usize,
    config_len: usize,
}

impl std::fmt::Debug for TheoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TheoryHandle").field("name", &self.name).field("path", &self.path).finish()
    }
}

impl TheoryHandle {
    fn new(name: String, version: String, path: PathBuf, obj: TheoryBox) -> Result<Self, PluginLoadError> {
        let (layout, observables) = {
            let _in = abort_report::enter(&name, "layout");
            let layout = obj.layout();
            let _in = abort_report::enter(&name, "observables");
            (layout, obj.observables().into_iter().collect::<Vec<ObservableSpec>>())
        };
        let obs_len = observables.iter().map(|o| o.len as usize).sum();
        let config_len = layout.config_len();
        let h = Self { name, version, path, obj, layout, observables, obs_len, config_len };
        if h.config_len == 0 {
            return Err(h.bad("layout", "the field layout has no dynamical degrees of freedom".into()));
        }
        if let Some(o) = h.observables.iter().find(|o| o.len == 0 || o.name.is_empty()) {
            return Err(h.bad("observables", format!("observable '{}' has an empty name or length 0", o.name)));
        }
        Ok(h)
    }

    fn bad(&self, call: &str, reason: String) -> PluginLoadError {
        PluginLoadError::BadOutput { plugin: self.name.clone(), call: call.into(), reason }
    }

    fn call<T>(&self, name: &str, r: RResult<T, PluginError>) -> Result<T, PluginLoadError> {
        call(&self.name, name, r)
    }

    fn check_len(&self, call: &str, what: &str, got: usize, want: usize) -> Result<(), PluginLoadError> {
        if got != want {
            return Err(self.bad(call, format!("{what} has {got} values, expected {want}")));
        }
        Ok(())
    }

    fn check_finite(&self, call: &str, what: &str, v: &[f64]) -> Result<(), PluginLoadError> {
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(self.bad(call, format!("{what}[{i}] is {}", v[i]))),
            None => Ok(()),
        }
    }

    /// The field layout.
    pub fn layout(&self) -> &FieldLayout {
        &self.layout
    }

    /// Reals per configuration.
    pub fn config_len(&self) -> usize {
        self.config_len
    }

    /// The observables, in measurement order.
    pub fn observables(&self) -> &[ObservableSpec] {
        &self.observables
    }

    /// Validated parameters as JSON.
    pub fn params_json(&self) -> String {
        let _in = abort_report::enter(&self.name, "params_json");
        self.obj.params_json().into()
    }

    /// Whether the theory's action is exact (`false`: only a stochastic estimate, e.g. with
    /// pseudofermions). HMC is exact either way, but flow Metropolis, reweighting and plain
    /// replica swaps need S itself and must refuse a theory that answers `false`.
    pub fn action_is_exact(&self) -> bool {
        self.obj.action_is_exact()
    }

    /// Sets the plugin's worker-thread count.
    pub fn set_threads(&mut self, n: u32) -> Result<(), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "set_threads");
        let r = self.obj.set_threads(n);
        self.call("set_threads", r)
    }

    /// Splits the theory's lattice over the ranks of `comm` (see
    /// [`latflow_core::abi::Theory::set_communicator`]): afterwards [`Self::layout`] and
    /// [`Self::config_len`] describe this rank's block, and action, measurement and HMC calls
    /// are collective. The observables are read again (their list may not change).
    pub fn set_communicator(&mut self, comm: latflow_core::comm::CommBox) -> Result<(), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "set_communicator");
        let r = self.obj.set_communicator(comm);
        self.call("set_communicator", r)?;
        let layout = self.obj.layout();
        let observables: Vec<ObservableSpec> = self.obj.observables().into_iter().collect();
        if observables != self.observables {
            return Err(self.bad("set_communicator", "the observables changed when the lattice was split".into()));
        }
        self.config_len = layout.config_len();
        self.layout = layout;
        if self.config_len == 0 {
            return Err(self.bad("layout", "the local field layout has no dynamical degrees of freedom".into()));
        }
        Ok(())
    }

    /// A named parameter.
    pub fn parameter(&self, name: &str) -> Result<f64, PluginLoadError> {
        let _in = abort_report::enter(&self.name, "parameter");
        let value = self.call("parameter", self.obj.parameter(RStr::from_str(name)))?;
        if !value.is_finite() {
            return Err(PluginLoadError::BadOutput {
                plugin: self.name.clone(),
                call: "parameter".into(),
                reason: format!("parameter '{name}' is {value}"),
            });
        }
        Ok(value)
    }

    /// Changes a named parameter.
    pub fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginLoadError> {
        let _in = abort_report::enter(&self.name, "set_parameter");
        let r = self.obj.set_parameter(RStr::from_str(name), value);
        self.call("set_parameter", r)
    }

    /// A starting configuration drawn from `rng`.
    pub fn initial(&self, start: Start, rng: &mut Stream) -> Result<Vec<f64>, PluginLoadError> {
        let mut st = rng.state();
        let _in = abort_report::enter(&self.name, "initial");
        let v = self.call("initial", self.obj.initial(start, &mut st))?.into_vec();
        *rng = Stream::from_state(&st);
        self.check_len("initial", "the configuration", v.len(), self.config_len)?;
        self.check_finite("initial", "configuration", &v)?;
        Ok(v)
    }

    /// S of each configuration in a batch.
    pub fn action(&self, configs: &[f64]) -> Result<Vec<f64>, PluginLoadError> {
        let n = configs.len() / self.config_len;
        let _in = abort_report::enter(&self.name, "action");
        let s = self.call("action", self.obj.action(RSlice::from_slice(configs)))?.into_vec();
        self.check_len("action", "the action batch", s.len(), n)?;
        self.check_finite("action", "action", &s)?;
        Ok(s)
    }

    /// S and ∂S/∂x of each configuration in a batch.
    pub fn action_grad(&self, configs: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginLoadError> {
        let n = configs.len() / self.config_len;
        let _in = abort_report::enter(&self.name, "action_grad");
        let ActionGrad { actions, grad } = self.call("action_grad", self.obj.action_grad(RSlice::from_slice(configs)))?;
        self.check_len("action_grad", "the action batch", actions.len(), n)?;
        self.check_len("action_grad", "the gradient", grad.len(), configs.len())?;
        self.check_finite("action_grad", "action", &actions)?;
        self.check_finite("action_grad", "gradient", &grad)?;
        Ok((actions.into_vec(), grad.into_vec()))
    }

    /// All observables of one configuration, concatenated in [`TheoryHandle::observables`] order.
    pub fn measure(&self, config: &[f64]) -> Result<Vec<f64>, PluginLoadError> {
        let _in = abort_report::enter(&self.name, "measure");
        let m = self.call("measure", self.obj.measure(RSlice::from_slice(config)))?.into_vec();
        self.check_len("measure", "the observable row", m.len(), self.obs_len)?;
        self.check_finite("measure", "observable", &m)?;
        Ok(m)
    }

    /// `n` HMC trajectories in place on `config`, drawing from `rng`.
    pub fn hmc(
        &mut self,
        config: &mut [f64],
        params: &HmcParams,
        n: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginLoadError> {
        let mut st = rng.state();
        let _in = abort_report::enter(&self.name, "hmc");
        let r = self.obj.hmc(RSliceMut::from_mut_slice(config), params, n, &mut st);
        let recs = self.call("hmc", r)?.into_vec();
        *rng = Stream::from_state(&st);
        self.check_len("hmc", "the trajectory records", recs.len(), n as usize)?;
        if let Some(i) = recs.iter().position(|r| r.delta_h.is_nan() || r.action.is_nan()) {
            return Err(self.bad("hmc", format!("trajectory {i} has a NaN ΔH or action")));
        }
        self.check_finite("hmc", "configuration", config)?;
        Ok(recs)
    }

    /// The theory's own Markov step kinds (e.g. `heatbath`).
    pub fn step_kinds(&self) -> Vec<String> {
        let _in = abort_report::enter(&self.name, "step_kinds");
        self.obj.step_kinds().into_iter().map(|s| s.into_string()).collect()
    }

    /// Validates theory step `kind` with its options (a JSON object) and returns the names of
    /// the values it records per application.
    pub fn step_columns(&self, kind: &str, options: &str) -> Result<Vec<String>, PluginLoadError> {
        let _in = abort_report::enter(&self.name, "step_columns");
        let r = self.obj.step_columns(RStr::from_str(kind), RStr::from_str(options));
        Ok(self.call("step_columns", r)?.into_iter().map(|s| s.into_string()).collect())
    }

    /// `n` applications of theory step `kind` in place on `config`, drawing from `rng`; returns
    /// `n × columns` values.
    pub fn step(
        &mut self,
        kind: &str,
        options: &str,
        columns: usize,
        config: &mut [f64],
        n: u32,
        rng: &mut Stream,
    ) -> Result<Vec<f64>, PluginLoadError> {
        let mut st = rng.state();
        let _in = abort_report::enter(&self.name, "step");
        let r = self.obj.step(RStr::from_str(kind), RStr::from_str(options), RSliceMut::from_mut_slice(config), n, &mut st);
        let values = self.call("step", r)?.into_vec();
        *rng = Stream::from_state(&st);
        self.check_len("step", "the step records", values.len(), n as usize * columns)?;
        self.check_finite("step", "configuration", config)?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{RString, RVec};
    use latflow_core::abi::{Model, Model_TO};
    use latflow_core::layout::{ElementKind, Support};
    use latflow_core::RngState;

    /// A model that implements only the methods every model plugin had before the latent maps:
    /// it stands for a plugin built before them (whose calls reach the trait's defaults).
    struct OldModel(FieldLayout);

    impl Model for OldModel {
        fn name(&self) -> RString {
            "old".into()
        }
        fn layout(&self) -> FieldLayout {
            self.0.clone()
        }
        fn architecture(&self) -> RString {
            "{}".into()
        }
        fn set_threads(&mut self, _: u32) -> RResult<(), PluginError> {
            RResult::ROk(())
        }
        fn sample(&self, _: u32, _: &mut RngState) -> RResult<Proposals, PluginError> {
            RResult::RErr(PluginError::unsupported("no"))
        }
        fn log_prob(&self, _: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
            RResult::RErr(PluginError::unsupported("no"))
        }
        fn train_begin(&mut self, _: &TrainSettings) -> RResult<(), PluginError> {
            RResult::ROk(())
        }
        fn train_sample(&mut self, _: &mut RngState) -> RResult<Proposals, PluginError> {
            RResult::RErr(PluginError::unsupported("no"))
        }
        fn train_step(&mut self, _: RSlice<'_, f64>, _: RSlice<'_, f64>) -> RResult<TrainMetrics, PluginError> {
            RResult::RErr(PluginError::unsupported("no"))
        }
        fn save(&self, _: bool) -> RResult<RVec<u8>, PluginError> {
            RResult::ROk(RVec::new())
        }
        fn load(&mut self, _: RSlice<'_, u8>) -> RResult<(), PluginError> {
            RResult::ROk(())
        }
        fn init_from(&mut self, _: RSlice<'_, u8>) -> RResult<(), PluginError> {
            RResult::ROk(())
        }
    }

    #[test]
    fn a_model_without_latent_maps_is_reported_by_name() {
        let layout = FieldLayout::single(&[2, 2], "phi", Support::Site, ElementKind::Real);
        let handle = ModelHandle {
            name: "old".into(),
            version: "0".into(),
            path: PathBuf::from("libold.so"),
            config_len: layout.config_len(),
            obj: Model_TO::from_value(OldModel(layout), TD_Opaque),
        };
        for e in [handle.to_latent(&[0.0; 4]).unwrap_err(), handle.from_latent(&[0.0; 4]).unwrap_err()] {
            assert!(matches!(e, PluginLoadError::Unsupported { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("model plugin 'old' does not support flow-assisted swaps"), "{msg}");
        }
    }

    fn dirs_of(search: &SearchPath) -> Vec<(PathBuf, Origin)> {
        search.dirs.iter().map(|(d, o)| (d.clone(), *o)).collect()
    }

    #[test]
    fn outside_a_target_dir_only_the_environment_and_the_prefix_are_searched() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(bin.join("deps")).unwrap(); // a deps/ alone is not a target dir
        let env = std::ffi::OsString::from("/p1::/p2");
        let s = SearchPath::for_executable(&[PathBuf::from("/cli")], Some(&env), Some(&bin.join("latflow")));
        let want = vec![
            (PathBuf::from("/cli"), Origin::CommandLine),
            (PathBuf::from("/p1"), Origin::Environment),
            (PathBuf::from("/p2"), Origin::Environment),
            (tmp.path().join("lib").join("latflow"), Origin::Installed),
        ];
        assert_eq!(dirs_of(&s), want);
        let none = SearchPath::for_executable(&[], None, None);
        assert!(none.dirs.is_empty(), "{:?}", none.dirs);
    }

    #[test]
    fn inside_a_target_dir_deps_then_the_binary_dir_are_searched() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = tmp.path().join("target").join("debug");
        std::fs::create_dir_all(profile.join("deps")).unwrap();
        std::fs::create_dir_all(profile.join(".fingerprint")).unwrap();
        let s = SearchPath::for_executable(&[], None, Some(&profile.join("latflow")));
        let want = vec![
            (profile.join("deps"), Origin::CargoTarget),
            (profile.clone(), Origin::CargoTarget),
            (tmp.path().join("target").join("lib").join("latflow"), Origin::Installed),
        ];
        assert_eq!(dirs_of(&s), want);
    }
}
