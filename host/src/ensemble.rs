//! HDF5 ensemble files: written by runs, read by `analyse` / `inspect` (and by h5py).
//!
//! A run appends measurements, per-step records and (optionally) configurations as it goes,
//! calls [`EnsembleWriter::flush`] at every checkpoint and stores the returned [`Counts`] in
//! the checkpoint. After a crash (even SIGKILL) [`EnsembleWriter::resume`] reopens the file and
//! truncates every dataset back to those counts, so rows written after the last checkpoint are
//! discarded and the file continues exactly where the checkpoint left off.
//!
//! # Layout (schema version 1)
//!
//! Only plain datasets (`f64`, `u64`, `u8`, no filters) and scalar variable-length UTF-8 string
//! attributes are used, so h5py reads the files without any help (strings come back as `str`).
//!
//! ```text
//! /                          attrs: schema_version (u32 = 1), latflow_version, run_card (full TOML
//! │                                 text), card_path, card_hash (hex), seed (u64), plugin_name,
//! │                                 plugin_version, plugin_path, created (UTC, RFC 3339),
//! │                                 theory_params (JSON), layout (JSON), model (JSON or "")
//! ├── observables/           attrs: names (JSON array: observable names in definition order)
//! │   ├── sweep              u64 [n]          sweep index of each measurement row
//! │   └── <name>             f64 [n] (scalar) or [n, len] (vector); attr: description
//! ├── steps/
//! │   └── <label>/           attrs: kind (e.g. "hmc"), index (u32, position in the chain),
//! │       │                         params (JSON), columns (JSON array: column names in order)
//! │       ├── accepted       u8  [m]          one row per application during measurement
//! │       └── <column>       f64 [m]          e.g. delta_h (hmc); log_q, action (other kinds)
//! ├── configs                f64 [k, config_len]  (only if configurations are stored);
//! │                          attrs: shape (u64 array: lattice shape), layout (JSON)
//! └── configs_sweep          u64 [k]          sweep index of each stored configuration
//! ```
//!
//! # Replica-exchange ensembles (schema version 2)
//!
//! A replica-exchange run ([`ReplicaWriter`]) writes the same root attributes (with
//! `schema_version = 2`), the layout above once per coupling under `/replicas/<k>` (attrs
//! `index`, `parameter`, `value`, `theory_params`, `model`), and `/replica_exchange` (attrs
//! `parameter`, `values`): `sweep` u64 [n], `replica_coupling` u64 [n, K] (the coupling of each
//! replica after that sweep) and `steps/<label>/` (one row per attempted swap: `accepted`, `pair`,
//! `log_ratio`, `delta_s`, `delta_log_q`). Files without replicas keep schema version 1.
//! [`read_any`] reads both.
//!
//! All row datasets are chunked and resizable along axis 0 (`maxshape = (None, ...)`).
//! Observable and step rows are numbered independently: measurement row `i` of every
//! observable belongs to sweep `observables/sweep[i]`; step rows have no sweep column.
//!
//! # Crash safety
//!
//! The writer opens the file with metadata-cache evictions disabled, so dirty HDF5 metadata
//! (dataset extents, chunk indices) is written at [`EnsembleWriter::flush`] (which also
//! `fsync`s) rather than whenever the cache fills up. A process killed between checkpoints
//! therefore leaves, in practice, the metadata of the last flush on disk plus raw data that it
//! does not reference (the cost: the metadata cache grows with the file, a few MB for large
//! runs). [`EnsembleWriter::resume`] then truncates to the checkpoint counts.
//! Files use the HDF5 1.8 object format (superblock v2), which has no "file is open for
//! writing" flag, so a killed writer never leaves a file that needs `h5clear`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::file::{
    CacheDecreaseMode, CacheIncreaseMode, FileAccessBuilder, FlashIncreaseMode, LibraryVersion,
    MetadataCacheConfig,
};
use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Group, H5Type, Location, MinorErrorCode};

/// Version of the file layout described in the module documentation.
pub const SCHEMA_VERSION: u32 = 1;
/// Version of the replica-exchange layout: version 1's ensemble once per coupling, under
/// `/replicas/<k>`, plus `/replica_exchange`. Files without replicas keep version 1, so that
/// older latflow versions still read them.
pub const REPLICA_SCHEMA_VERSION: u32 = 2;

/// Rows per chunk of the 1-D row datasets (and the upper bound for 2-D ones).
const ROW_CHUNK: usize = 1024;
/// Target number of elements per chunk of a 2-D dataset (128 KiB of `f64`).
const CHUNK_TARGET_ELEMS: usize = 1 << 14;
/// At most this many rows per chunk of `/configs`.
const CONFIG_ROW_CHUNK: usize = 16;
/// At most this many columns per chunk (keeps chunks well below HDF5's 4 GiB limit).
const MAX_CHUNK_COLS: usize = 1 << 24;

/// Errors of ensemble reading and writing. Every message names the file and, where there is
/// one, the HDF5 object (dataset, group or attribute) involved.
#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    /// The file does not exist.
    #[error("{}: no such file", .path.display())]
    NotFound { path: PathBuf },
    /// The directory the file should be created in does not exist.
    #[error("{}: cannot create the ensemble file: directory {} does not exist", .path.display(), .dir.display())]
    MissingDirectory { path: PathBuf, dir: PathBuf },
    /// `create` without `overwrite` found an existing file.
    #[error("{}: file already exists (refusing to overwrite it)", .path.display())]
    AlreadyExists { path: PathBuf },
    /// HDF5 cannot open the file at all: not an HDF5 file, empty, truncated or corrupt.
    #[error("{}: not a readable HDF5 file (not HDF5, empty, truncated or corrupt): {detail}", .path.display())]
    NotHdf5 { path: PathBuf, detail: String },
    /// A dataset, group or attribute the schema requires is absent.
    #[error("{}: missing {object} (not a latflow ensemble, or a damaged one)", .path.display())]
    Missing { path: PathBuf, object: String },
    /// The file was written with another schema version.
    #[error("{}: attribute /schema_version is {found}, but this latflow reads schema version {expected} (and {} for replica-exchange ensembles)", .path.display(), REPLICA_SCHEMA_VERSION)]
    SchemaVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    /// A dataset or a caller-supplied row has the wrong shape or length.
    #[error("{}: {object}: shape mismatch: {detail}", .path.display())]
    Shape {
        path: PathBuf,
        object: String,
        detail: String,
    },
    /// `resume`: the file does not belong to this run (card hash, definitions or counts differ).
    #[error("{}: {object}: {detail}", .path.display())]
    Mismatch {
        path: PathBuf,
        object: String,
        detail: String,
    },
    /// The file opens, but its contents are inconsistent or of an unexpected type.
    #[error("{}: {object}: corrupt or unexpected content: {detail}", .path.display())]
    Corrupt {
        path: PathBuf,
        object: String,
        detail: String,
    },
    /// An observable, step or column name cannot be used as an HDF5 link name here.
    #[error("{}: invalid {what} name {name:?}: {reason}", .path.display())]
    InvalidName {
        path: PathBuf,
        what: String,
        name: String,
        reason: String,
    },
    /// A caller-supplied definition or argument is invalid (e.g. unknown step index).
    #[error("{}: {object}: {detail}", .path.display())]
    Invalid {
        path: PathBuf,
        object: String,
        detail: String,
    },
    /// The HDF5 library reported an error.
    #[error("{}: {object}: HDF5 error: {detail}", .path.display())]
    Hdf5 {
        path: PathBuf,
        object: String,
        detail: String,
    },
    /// An operating-system I/O error (metadata, fsync).
    #[error("{}: {object}: {error}", .path.display())]
    Io {
        path: PathBuf,
        object: String,
        error: io::Error,
    },
}

impl EnsembleError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::NotFound { path }
            | Self::MissingDirectory { path, .. }
            | Self::AlreadyExists { path }
            | Self::NotHdf5 { path, .. }
            | Self::Missing { path, .. }
            | Self::SchemaVersion { path, .. }
            | Self::Shape { path, .. }
            | Self::Mismatch { path, .. }
            | Self::Corrupt { path, .. }
            | Self::InvalidName { path, .. }
            | Self::Invalid { path, .. }
            | Self::Hdf5 { path, .. }
            | Self::Io { path, .. } => path,
        }
    }
}

/// Where a run came from; stored as root attributes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Provenance {
    pub latflow_version: String,
    /// Full TOML text of the run card.
    pub run_card: String,
    pub card_path: String,
    /// Hex digest of the run card; `resume` refuses a file whose hash differs.
    pub card_hash: String,
    pub seed: u64,
    pub plugin_name: String,
    pub plugin_version: String,
    pub plugin_path: String,
    /// Creation time (UTC, RFC 3339), supplied by the caller.
    pub created: String,
    /// Theory parameters as JSON.
    pub theory_params: String,
    /// Field layout as JSON (also stored on `/configs`).
    pub layout: String,
    /// The model used by flow/reweight steps, as JSON (plugin, version, path, architecture,
    /// weights path and SHA-256); empty when the chain uses no model.
    pub model: String,
}

/// One observable: `len == 1` is a scalar (`[n]` dataset), `len > 1` a vector (`[n, len]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ObservableDef {
    pub name: String,
    pub len: usize,
    pub description: String,
}

/// One chain step whose applications are recorded (`accepted` plus one `f64` per column).
#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    /// Group name under `/steps`; unique.
    pub label: String,
    pub kind: String,
    /// Position of the step in the chain (stored as `u32`).
    pub index: usize,
    /// Step parameters as JSON.
    pub params: String,
    /// Column names in record order; must not be `accepted`.
    pub columns: Vec<String>,
}

/// Stored configurations: `config_len` values each; `shape` is the lattice shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDef {
    pub config_len: usize,
    pub shape: Vec<usize>,
}

/// Row counts of everything appended so far (what a checkpoint records).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub struct Counts {
    /// Rows of `/observables/*`.
    pub measurements: u64,
    /// Rows of each `/steps/<label>/*`, in `StepDef` order.
    pub steps: Vec<u64>,
    /// Rows of `/configs`.
    pub configs: u64,
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

struct ObsSlot {
    len: usize,
    /// Offset of this observable in a measurement row.
    offset: usize,
    ds: Dataset,
    object: String,
}

struct StepSlot {
    ncols: usize,
    accepted: Dataset,
    columns: Vec<(String, Dataset)>,
    group_path: String,
    on_disk: u64,
    buf_accepted: Vec<u8>,
    /// Row-major `[rows, ncols]`.
    buf_columns: Vec<f64>,
}

impl StepSlot {
    fn push(&mut self, path: &Path, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        if columns.len() != self.ncols {
            return Err(EnsembleError::Shape {
                path: path.to_owned(),
                object: format!("step record for {}", self.group_path),
                detail: format!("got {} columns, expected {}", columns.len(), self.ncols),
            });
        }
        self.buf_accepted.push(u8::from(accepted));
        self.buf_columns.extend_from_slice(columns);
        Ok(())
    }

    /// Appends the buffered records to the datasets.
    fn write(&mut self, path: &Path) -> Result<(), EnsembleError> {
        let mb = self.buf_accepted.len();
        if mb == 0 {
            return Ok(());
        }
        let m0 = self.on_disk as usize;
        let object = format!("{}/accepted", self.group_path);
        append_1d(path, &self.accepted, &object, m0, &self.buf_accepted)?;
        let mut col = vec![0.0; mb];
        for (j, (object, ds)) in self.columns.iter().enumerate() {
            for (i, v) in col.iter_mut().enumerate() {
                *v = self.buf_columns[i * self.ncols + j];
            }
            append_1d(path, ds, object, m0, &col)?;
        }
        self.on_disk = (m0 + mb) as u64;
        self.buf_accepted.clear();
        self.buf_columns.clear();
        Ok(())
    }

    fn pending(&self) -> u64 {
        self.buf_accepted.len() as u64
    }
}

struct ConfigSlot {
    config_len: usize,
    ds: Dataset,
    sweeps: Dataset,
    /// `{prefix}/configs`, for messages.
    object: String,
    /// Rows written to the datasets (configurations are written through, not buffered).
    written: u64,
    /// Rows on disk as of the last flush.
    on_disk: u64,
}

/// The row datasets of one ensemble: at the file root (schema version 1), or in a coupling's
/// group `/replicas/<k>` of a replica-exchange file (schema version 2).
struct GroupSlots {
    /// HDF5 path of the group: "" for the root, `/replicas/<k>` otherwise (for messages).
    prefix: String,
    observables: Vec<ObsSlot>,
    row_len: usize,
    sweep: Dataset,
    meas_on_disk: u64,
    buf_sweeps: Vec<u64>,
    /// Row-major `[rows, row_len]`.
    buf_values: Vec<f64>,
    steps: Vec<StepSlot>,
    configs: Option<ConfigSlot>,
}

/// Creates the observables, steps and configurations of one ensemble under `base`
/// (`prefix` is its HDF5 path, "" for the root).
fn create_layout(
    path: &Path,
    base: &Group,
    prefix: &str,
    layout: &str,
    observables: &[ObservableDef],
    steps: &[StepDef],
    configs: Option<&ConfigDef>,
) -> Result<(), EnsembleError> {
    // Observables.
    let opath = format!("{prefix}/observables");
    let og = base.create_group("observables").map_err(h5(path, format!("group {opath}")))?;
    let names: Vec<&str> = observables.iter().map(|o| o.name.as_str()).collect();
    write_str_attr(path, &og, &opath, "names", &json_list(&names))?;
    create_rows::<u64>(path, &og, &opath, "sweep", None, ROW_CHUNK)?;
    for o in observables {
        let width = (o.len > 1).then_some(o.len);
        let ds = create_rows::<f64>(path, &og, &opath, &o.name, width, ROW_CHUNK)?;
        let object = format!("{opath}/{}", o.name);
        write_str_attr(path, &ds, &object, "description", &o.description)?;
    }

    create_steps(path, base, prefix, steps)?;

    // Configurations.
    if let Some(c) = configs {
        let ds = create_rows::<f64>(path, base, prefix, "configs", Some(c.config_len), CONFIG_ROW_CHUNK)?;
        let shape: Vec<u64> = c.shape.iter().map(|&x| x as u64).collect();
        ds.new_attr::<u64>()
            .shape([shape.len()])
            .create("shape")
            .and_then(|a| a.write_raw(&shape[..]))
            .map_err(h5(path, format!("attribute {prefix}/configs/shape")))?;
        write_str_attr(path, &ds, &format!("{prefix}/configs"), "layout", layout)?;
        create_rows::<u64>(path, base, prefix, "configs_sweep", None, ROW_CHUNK)?;
    }
    Ok(())
}

/// Creates `{prefix}/steps/<label>` for every step.
fn create_steps(path: &Path, base: &Group, prefix: &str, steps: &[StepDef]) -> Result<(), EnsembleError> {
    let spath = format!("{prefix}/steps");
    let sg = base.create_group("steps").map_err(h5(path, format!("group {spath}")))?;
    for s in steps {
        let gpath = format!("{spath}/{}", s.label);
        let g = sg.create_group(&s.label).map_err(h5(path, format!("group {gpath}")))?;
        write_str_attr(path, &g, &gpath, "kind", &s.kind)?;
        let index = u32::try_from(s.index).map_err(|_| invalid(path, &gpath, "step index does not fit in u32"))?;
        write_scalar_attr(path, &g, &gpath, "index", &index)?;
        write_str_attr(path, &g, &gpath, "params", &s.params)?;
        let cols: Vec<&str> = s.columns.iter().map(String::as_str).collect();
        write_str_attr(path, &g, &gpath, "columns", &json_list(&cols))?;
        create_rows::<u8>(path, &g, &gpath, "accepted", None, ROW_CHUNK)?;
        for c in &s.columns {
            create_rows::<f64>(path, &g, &gpath, c, None, ROW_CHUNK)?;
        }
    }
    Ok(())
}

/// Checks that the ensemble under `base` has exactly these definitions (for resume).
fn check_layout(
    path: &Path,
    base: &Group,
    prefix: &str,
    observables: &[ObservableDef],
    steps: &[StepDef],
    configs: Option<&ConfigDef>,
) -> Result<(), EnsembleError> {
    // Observables.
    let opath = format!("{prefix}/observables");
    let og = open_group(path, base, "observables")?;
    let names = read_json_list(path, &og, &opath, "names")?;
    let want: Vec<&str> = observables.iter().map(|o| o.name.as_str()).collect();
    if names != want {
        return Err(mismatch(
            path,
            format!("attribute {opath}/names"),
            format!("file has observables {names:?}, this run defines {want:?}"),
        ));
    }
    for o in observables {
        let object = format!("{opath}/{}", o.name);
        let ds = open_dataset(path, &og, &opath, &o.name)?;
        let width = row_width(path, &ds, &object)?;
        if width != o.len {
            return Err(mismatch(
                path,
                format!("dataset {object}"),
                format!("file has length {width}, this run defines length {}", o.len),
            ));
        }
        let descr = read_str_attr(path, &ds, &object, "description")?;
        if descr != o.description {
            return Err(mismatch(
                path,
                format!("attribute {object}/description"),
                format!("file has {descr:?}, this run defines {:?}", o.description),
            ));
        }
    }

    check_steps(path, base, prefix, steps)?;

    // Configurations.
    let cpath = format!("{prefix}/configs");
    match (configs, base.link_exists("configs")) {
        (Some(c), true) => {
            let ds = open_dataset(path, base, prefix, "configs")?;
            let width = row_width(path, &ds, &cpath)?;
            let shape = read_u64_list(path, &ds, &cpath, "shape")?;
            let want: Vec<u64> = c.shape.iter().map(|&x| x as u64).collect();
            if width != c.config_len || shape != want {
                return Err(mismatch(
                    path,
                    format!("dataset {cpath}"),
                    format!(
                        "file has config_len {width}, shape {shape:?}; this run defines \
                         config_len {}, shape {want:?}",
                        c.config_len
                    ),
                ));
            }
        }
        (None, false) => {}
        (Some(_), false) => {
            return Err(mismatch(path, format!("dataset {cpath}"), "this run stores configurations but the file has none"))
        }
        (None, true) => {
            return Err(mismatch(path, format!("dataset {cpath}"), "the file stores configurations but this run does not"))
        }
    }
    Ok(())
}

/// Checks `{prefix}/steps` against the step definitions (for resume).
fn check_steps(path: &Path, base: &Group, prefix: &str, steps: &[StepDef]) -> Result<(), EnsembleError> {
    let spath = format!("{prefix}/steps");
    let sg = open_group(path, base, "steps")?;
    let mut in_file = sg.member_names().map_err(h5(path, format!("group {spath}")))?;
    in_file.sort();
    let mut labels: Vec<&str> = steps.iter().map(|s| s.label.as_str()).collect();
    labels.sort_unstable();
    if in_file != labels {
        return Err(mismatch(
            path,
            format!("group {spath}"),
            format!("file has steps {in_file:?}, this run defines {labels:?}"),
        ));
    }
    for s in steps {
        let gpath = format!("{spath}/{}", s.label);
        let g = open_group(path, &sg, &s.label)?;
        let info = read_step_info(path, &g, &gpath)?;
        let file_def = StepDef { label: s.label.clone(), kind: info.0, index: info.1, params: info.2, columns: info.3 };
        if &file_def != s {
            return Err(mismatch(
                path,
                format!("group {gpath}"),
                format!("file has step {file_def:?}, this run defines {s:?}"),
            ));
        }
    }
    Ok(())
}

/// Opens `{prefix}/steps/<label>` of every step and truncates each to its count.
fn open_steps(path: &Path, base: &Group, prefix: &str, steps: &[StepDef], counts: &[u64]) -> Result<Vec<StepSlot>, EnsembleError> {
    let sg = open_group(path, base, "steps")?;
    let mut step_slots = Vec::with_capacity(steps.len());
    for (s, &m) in steps.iter().zip(counts) {
        let gpath = format!("{prefix}/steps/{}", s.label);
        let g = open_group(path, &sg, &s.label)?;
        let accepted = open_dataset(path, &g, &gpath, "accepted")?;
        truncate_rows(path, &accepted, &format!("{gpath}/accepted"), m)?;
        let mut columns = Vec::with_capacity(s.columns.len());
        for c in &s.columns {
            let ds = open_dataset(path, &g, &gpath, c)?;
            let object = format!("{gpath}/{c}");
            truncate_rows(path, &ds, &object, m)?;
            columns.push((object, ds));
        }
        step_slots.push(StepSlot {
            ncols: s.columns.len(),
            accepted,
            columns,
            group_path: gpath,
            on_disk: m,
            buf_accepted: Vec::new(),
            buf_columns: Vec::new(),
        });
    }
    Ok(step_slots)
}

impl GroupSlots {
    /// Opens every dataset of a validated ensemble under `base` and truncates it to `counts`.
    fn open(
        path: &Path,
        base: &Group,
        prefix: &str,
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        counts: &Counts,
    ) -> Result<Self, EnsembleError> {
        if counts.steps.len() != steps.len() {
            return Err(invalid(
                path,
                "checkpoint counts",
                format!("{} step counts for {} steps", counts.steps.len(), steps.len()),
            ));
        }
        let opath = format!("{prefix}/observables");
        let og = open_group(path, base, "observables")?;
        let sweep = open_dataset(path, &og, &opath, "sweep")?;
        truncate_rows(path, &sweep, &format!("{opath}/sweep"), counts.measurements)?;
        let mut slots = Vec::with_capacity(observables.len());
        let mut offset = 0;
        for o in observables {
            let ds = open_dataset(path, &og, &opath, &o.name)?;
            let object = format!("{opath}/{}", o.name);
            truncate_rows(path, &ds, &object, counts.measurements)?;
            slots.push(ObsSlot { len: o.len, offset, ds, object });
            offset += o.len;
        }

        let step_slots = open_steps(path, base, prefix, steps, &counts.steps)?;

        let config_slot = match configs {
            Some(c) => {
                let object = format!("{prefix}/configs");
                let ds = open_dataset(path, base, prefix, "configs")?;
                let sweeps = open_dataset(path, base, prefix, "configs_sweep")?;
                truncate_rows(path, &ds, &object, counts.configs)?;
                truncate_rows(path, &sweeps, &format!("{prefix}/configs_sweep"), counts.configs)?;
                Some(ConfigSlot {
                    config_len: c.config_len,
                    ds,
                    sweeps,
                    object,
                    written: counts.configs,
                    on_disk: counts.configs,
                })
            }
            None => None,
        };
        Ok(Self {
            prefix: prefix.to_string(),
            observables: slots,
            row_len: offset,
            sweep,
            meas_on_disk: counts.measurements,
            buf_sweeps: Vec::new(),
            buf_values: Vec::new(),
            steps: step_slots,
            configs: config_slot,
        })
    }

    fn push_measurement(&mut self, path: &Path, sweep: u64, values: &[f64]) -> Result<(), EnsembleError> {
        if values.len() != self.row_len {
            return Err(EnsembleError::Shape {
                path: path.to_owned(),
                object: if self.prefix.is_empty() {
                    "measurement row".into()
                } else {
                    format!("measurement row of {}", self.prefix)
                },
                detail: format!(
                    "got {} values, expected {} (the sum of the observable lengths)",
                    values.len(),
                    self.row_len
                ),
            });
        }
        self.buf_sweeps.push(sweep);
        self.buf_values.extend_from_slice(values);
        Ok(())
    }

    fn push_step_record(&mut self, path: &Path, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        let n = self.steps.len();
        let Some(slot) = self.steps.get_mut(step) else {
            return Err(invalid(path, "step record", format!("step {step} does not exist ({n} steps defined)")));
        };
        slot.push(path, accepted, columns)
    }

    fn push_config(&mut self, path: &Path, sweep: u64, config: &[f64]) -> Result<(), EnsembleError> {
        let Some(c) = self.configs.as_mut() else {
            return Err(invalid(
                path,
                format!("dataset {}/configs", self.prefix),
                "this ensemble stores no configurations",
            ));
        };
        if config.len() != c.config_len {
            return Err(EnsembleError::Shape {
                path: path.to_owned(),
                object: "configuration".into(),
                detail: format!("got {} values, expected config_len {}", config.len(), c.config_len),
            });
        }
        let row = c.written as usize;
        let obj = c.object.clone();
        c.ds.resize([row + 1, c.config_len]).map_err(h5(path, format!("dataset {obj} (resize)")))?;
        c.ds.write_slice(config, (row, ..)).map_err(h5(path, format!("dataset {obj} (write)")))?;
        c.sweeps.resize([row + 1]).map_err(h5(path, format!("dataset {obj}_sweep (resize)")))?;
        c.sweeps
            .write_slice(&[sweep][..], row..row + 1)
            .map_err(h5(path, format!("dataset {obj}_sweep (write)")))?;
        c.written += 1;
        Ok(())
    }

    /// Appends the buffered rows to the datasets (not yet synced to disk).
    fn write(&mut self, path: &Path) -> Result<(), EnsembleError> {
        // Measurements.
        let nb = self.buf_sweeps.len();
        if nb > 0 {
            let n0 = self.meas_on_disk as usize;
            let n1 = n0 + nb;
            append_1d(path, &self.sweep, &format!("{}/observables/sweep", self.prefix), n0, &self.buf_sweeps)?;
            for o in &self.observables {
                if o.len == 1 {
                    let col: Vec<f64> = (0..nb).map(|i| self.buf_values[i * self.row_len + o.offset]).collect();
                    append_1d(path, &o.ds, &o.object, n0, &col)?;
                } else {
                    let obj = o.object.as_str();
                    o.ds.resize([n1, o.len]).map_err(h5(path, format!("dataset {obj} (resize)")))?;
                    // Without ndarray we can only write 1-D slabs: one call per row or per
                    // component, whichever is fewer.
                    if nb <= o.len {
                        for i in 0..nb {
                            let start = i * self.row_len + o.offset;
                            o.ds.write_slice(&self.buf_values[start..start + o.len], (n0 + i, ..))
                                .map_err(h5(path, format!("dataset {obj} (write)")))?;
                        }
                    } else {
                        let mut col = vec![0.0; nb];
                        for j in 0..o.len {
                            for (i, v) in col.iter_mut().enumerate() {
                                *v = self.buf_values[i * self.row_len + o.offset + j];
                            }
                            o.ds.write_slice(&col[..], (n0..n1, j))
                                .map_err(h5(path, format!("dataset {obj} (write)")))?;
                        }
                    }
                }
            }
            self.meas_on_disk = n1 as u64;
            self.buf_sweeps.clear();
            self.buf_values.clear();
        }

        // Step records.
        for s in &mut self.steps {
            s.write(path)?;
        }
        Ok(())
    }

    /// After the file was flushed and synced: the configurations written so far are on disk.
    fn synced(&mut self) {
        if let Some(c) = self.configs.as_mut() {
            c.on_disk = c.written;
        }
    }

    fn on_disk_counts(&self) -> Counts {
        Counts {
            measurements: self.meas_on_disk,
            steps: self.steps.iter().map(|s| s.on_disk).collect(),
            configs: self.configs.as_ref().map_or(0, |c| c.on_disk),
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            measurements: self.meas_on_disk + self.buf_sweeps.len() as u64,
            steps: self.steps.iter().map(|s| s.on_disk + s.pending()).collect(),
            configs: self.configs.as_ref().map_or(0, |c| c.written),
        }
    }
}

/// Appends rows to an ensemble file. Measurement and step rows are buffered in memory and
/// written by [`flush`](Self::flush); configurations (potentially large) are written to the
/// dataset at once but, like everything else, are only guaranteed on disk after `flush`.
///
/// Dropping the writer does not flush: rows pushed since the last `flush` are lost (or, for
/// configurations, discarded by the next `resume`). After any error the writer should be
/// dropped; the file can be resumed from the last checkpoint.
pub struct EnsembleWriter {
    path: PathBuf,
    file: File,
    /// A plain handle on the same file, used only to `fsync` it at every flush.
    sync: std::fs::File,
    slots: GroupSlots,
}

impl fmt::Debug for EnsembleWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnsembleWriter")
            .field("path", &self.path)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

/// Creates a file for writing: checks the directory, refuses to overwrite unless asked.
fn create_file(path: &Path, overwrite: bool) -> Result<File, EnsembleError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(EnsembleError::MissingDirectory { path: path.to_owned(), dir: parent.to_owned() });
    }
    if path.is_dir() {
        return Err(invalid(path, "file", "is a directory"));
    }
    if !overwrite && path.exists() {
        return Err(EnsembleError::AlreadyExists { path: path.to_owned() });
    }
    let mut builder = File::with_options();
    builder.with_fapl(writer_fapl);
    let file = if overwrite { builder.create(path) } else { builder.create_excl(path) };
    file.map_err(|e| {
        if path.exists() && !overwrite {
            EnsembleError::AlreadyExists { path: path.to_owned() }
        } else {
            h5(path, "file (create)")(e)
        }
    })
}

/// Writes the provenance attributes and the schema version on the root group.
fn write_provenance(path: &Path, file: &File, prov: &Provenance, schema_version: u32) -> Result<(), EnsembleError> {
    write_scalar_attr(path, file, "/", "schema_version", &schema_version)?;
    let strings: [(&str, &str); 11] = [
        ("latflow_version", &prov.latflow_version),
        ("run_card", &prov.run_card),
        ("card_path", &prov.card_path),
        ("card_hash", &prov.card_hash),
        ("plugin_name", &prov.plugin_name),
        ("plugin_version", &prov.plugin_version),
        ("plugin_path", &prov.plugin_path),
        ("created", &prov.created),
        ("theory_params", &prov.theory_params),
        ("layout", &prov.layout),
        ("model", &prov.model),
    ];
    for (name, value) in strings {
        write_str_attr(path, file, "/", name, value)?;
    }
    write_scalar_attr(path, file, "/", "seed", &prov.seed)
}

/// Opens a file for resume: schema version and card hash must match.
fn open_for_resume(path: &Path, card_hash: &str, schema_version: u32) -> Result<File, EnsembleError> {
    let file = open_file(path, true)?;
    let found_version = check_schema_version(path, &file)?;
    if found_version != schema_version {
        return Err(mismatch(
            path,
            "attribute /schema_version",
            match schema_version {
                REPLICA_SCHEMA_VERSION => "the file is not a replica-exchange ensemble, but this run card has a replica ladder",
                _ => "the file is a replica-exchange ensemble, but this run card has no replica ladder",
            },
        ));
    }
    let found = read_str_attr(path, &file, "/", "card_hash")?;
    if found != card_hash {
        return Err(mismatch(
            path,
            "attribute /card_hash",
            format!(
                "the file belongs to another run card (file has {found:?}, this card is \
                 {card_hash:?})"
            ),
        ));
    }
    Ok(file)
}

/// Flushes the file and `fsync`s it.
fn sync_file(path: &Path, file: &File, sync: &std::fs::File) -> Result<(), EnsembleError> {
    file.flush().map_err(h5(path, "file (flush)"))?;
    sync.sync_all().map_err(|error| EnsembleError::Io { path: path.to_owned(), object: "file (fsync)".into(), error })
}

fn sync_handle(path: &Path) -> Result<std::fs::File, EnsembleError> {
    std::fs::File::open(path).map_err(|error| EnsembleError::Io {
        path: path.to_owned(),
        object: "file (open for fsync)".into(),
        error,
    })
}

impl EnsembleWriter {
    /// Creates a new file (fails if the parent directory is missing, with a clear message;
    /// overwrites an existing file only if `overwrite`). Names are validated first: non-empty,
    /// no `/`, no NUL, not `sweep`, `.` or `..`, unique; step columns also not `accepted`.
    /// Observable `len` and `config_len` must be at least 1. If creation fails after the file
    /// was made, the partial file is removed.
    pub fn create(
        path: &Path,
        prov: &Provenance,
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        overwrite: bool,
    ) -> Result<Self, EnsembleError> {
        hdf5::silence_errors(true);
        validate_defs(path, observables, steps, configs)?;
        let file = create_file(path, overwrite)?;
        let made = (|| {
            write_provenance(path, &file, prov, SCHEMA_VERSION)?;
            create_layout(path, &file, "", &prov.layout, observables, steps, configs)?;
            file.flush().map_err(h5(path, "file (flush)"))?;
            let counts = Counts { measurements: 0, steps: vec![0; steps.len()], configs: 0 };
            let slots = GroupSlots::open(path, &file, "", observables, steps, configs, &counts)?;
            Ok(slots)
        })();
        match made.and_then(|slots| Self::finish(path, file, slots)) {
            Ok(w) => Ok(w),
            Err(e) => {
                // remove the half-made file
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    fn finish(path: &Path, file: File, slots: GroupSlots) -> Result<Self, EnsembleError> {
        let sync = sync_handle(path)?;
        let mut w = Self { path: path.to_owned(), file, sync, slots };
        w.flush()?;
        Ok(w)
    }

    /// Reopens a file for appending and truncates every dataset to `counts` (rows written after
    /// the last checkpoint are discarded). Checks that the file's card_hash equals `card_hash`
    /// and that the observables/steps/config defs match exactly (names, order, lengths,
    /// descriptions, kinds, indices, params, columns, config shape); errors otherwise. Also
    /// errors if the file holds fewer rows than `counts` claims. The truncation is flushed
    /// before this returns.
    pub fn resume(
        path: &Path,
        card_hash: &str,
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        counts: &Counts,
    ) -> Result<Self, EnsembleError> {
        hdf5::silence_errors(true);
        validate_defs(path, observables, steps, configs)?;
        let file = open_for_resume(path, card_hash, SCHEMA_VERSION)?;
        if counts.steps.len() != steps.len() {
            return Err(invalid(
                path,
                "checkpoint counts",
                format!("{} step counts for {} steps", counts.steps.len(), steps.len()),
            ));
        }
        check_layout(path, &file, "", observables, steps, configs)?;
        let slots = GroupSlots::open(path, &file, "", observables, steps, configs, counts)?;
        Self::finish(path, file, slots)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Buffers one measurement row: `values` is the concatenation of all observables in
    /// definition order (total length = Σ len). Error on length mismatch.
    pub fn push_measurement(&mut self, sweep: u64, values: &[f64]) -> Result<(), EnsembleError> {
        self.slots.push_measurement(&self.path, sweep, values)
    }

    /// Buffers one record of step `step` (index into the StepDefs): accepted flag and one value
    /// per column. Error on an unknown step or a wrong number of columns.
    pub fn push_step_record(&mut self, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        self.slots.push_step_record(&self.path, step, accepted, columns)
    }

    /// Appends one configuration (length config_len) with its sweep index. It is written to
    /// `/configs` at once (configurations can be large), but only guaranteed on disk after
    /// [`flush`](Self::flush). Error if the file stores no configurations or on length mismatch.
    pub fn push_config(&mut self, sweep: u64, config: &[f64]) -> Result<(), EnsembleError> {
        self.slots.push_config(&self.path, sweep, config)
    }

    /// Appends all buffered rows to the datasets (resize + write slab), then flushes the file to
    /// disk (HDF5 flush and fsync). Returns the counts now on disk — what a checkpoint records.
    pub fn flush(&mut self) -> Result<Counts, EnsembleError> {
        self.slots.write(&self.path)?;
        sync_file(&self.path, &self.file, &self.sync)?;
        self.slots.synced();
        Ok(self.slots.on_disk_counts())
    }

    /// Row counts including rows pushed since the last flush.
    pub fn counts(&self) -> Counts {
        self.slots.counts()
    }
}

// ---------------------------------------------------------------------------------------------
// Replica-exchange ensembles (schema version 2)
// ---------------------------------------------------------------------------------------------

/// One coupling of a replica ladder, as stored on `/replicas/<k>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaDef {
    /// The ladder parameter's value at this coupling.
    pub value: f64,
    /// The theory's parameters at this coupling (JSON).
    pub theory_params: String,
    /// This coupling's model (JSON provenance), or "".
    pub model: String,
}

/// Writes a replica-exchange ensemble: one ensemble per coupling under `/replicas/<k>` (the
/// layout of a schema-1 file's root, so each is "the ensemble at coupling k"), and the swap
/// records and replica paths under `/replica_exchange`. Buffering, flushing and resume work as
/// for [`EnsembleWriter`], with one [`Counts`] per coupling plus one for `/replica_exchange`.
pub struct ReplicaWriter {
    path: PathBuf,
    file: File,
    sync: std::fs::File,
    replicas: Vec<GroupSlots>,
    exchange: Vec<StepSlot>,
    n_replicas: usize,
    path_sweep: Dataset,
    path_ds: Dataset,
    path_on_disk: u64,
    buf_path_sweeps: Vec<u64>,
    /// Row-major `[rows, n_replicas]`.
    buf_path: Vec<u64>,
}

impl fmt::Debug for ReplicaWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaWriter").field("path", &self.path).field("replicas", &self.n_replicas).finish_non_exhaustive()
    }
}

/// HDF5 path of coupling k's group.
pub fn replica_group(k: usize) -> String {
    format!("/replicas/{k}")
}

impl ReplicaWriter {
    /// Creates a replica-exchange file (see the module documentation for the layout). `steps`
    /// are the per-coupling chain steps (the same at every coupling), `exchange_steps` the
    /// `replica_exchange` steps.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        path: &Path,
        prov: &Provenance,
        parameter: &str,
        replicas: &[ReplicaDef],
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        exchange_steps: &[StepDef],
        overwrite: bool,
    ) -> Result<Self, EnsembleError> {
        hdf5::silence_errors(true);
        validate_defs(path, observables, steps, configs)?;
        validate_defs(path, &[], exchange_steps, None)?;
        if replicas.len() < 2 {
            return Err(invalid(path, "/replicas", "a replica ladder needs at least 2 couplings"));
        }
        let file = create_file(path, overwrite)?;
        let made = (|| {
            write_provenance(path, &file, prov, REPLICA_SCHEMA_VERSION)?;
            let rg = file.create_group("replicas").map_err(h5(path, "group /replicas"))?;
            for (k, r) in replicas.iter().enumerate() {
                let prefix = replica_group(k);
                let g = rg.create_group(&k.to_string()).map_err(h5(path, format!("group {prefix}")))?;
                write_scalar_attr(path, &g, &prefix, "index", &(k as u32))?;
                write_str_attr(path, &g, &prefix, "parameter", parameter)?;
                write_scalar_attr(path, &g, &prefix, "value", &r.value)?;
                write_str_attr(path, &g, &prefix, "theory_params", &r.theory_params)?;
                write_str_attr(path, &g, &prefix, "model", &r.model)?;
                create_layout(path, &g, &prefix, &prov.layout, observables, steps, configs)?;
            }
            let xg = file.create_group("replica_exchange").map_err(h5(path, "group /replica_exchange"))?;
            write_str_attr(path, &xg, "/replica_exchange", "parameter", parameter)?;
            let values: Vec<f64> = replicas.iter().map(|r| r.value).collect();
            write_str_attr(path, &xg, "/replica_exchange", "values", &serde_json::to_string(&values).unwrap_or_default())?;
            create_rows::<u64>(path, &xg, "/replica_exchange", "sweep", None, ROW_CHUNK)?;
            create_rows::<u64>(path, &xg, "/replica_exchange", "replica_coupling", Some(replicas.len()), ROW_CHUNK)?;
            create_steps(path, &xg, "/replica_exchange", exchange_steps)?;
            file.flush().map_err(h5(path, "file (flush)"))?;
            let zero = Counts { measurements: 0, steps: vec![0; steps.len()], configs: 0 };
            let exchange_zero = Counts { measurements: 0, steps: vec![0; exchange_steps.len()], configs: 0 };
            Self::open_all(path, &file, replicas.len(), observables, steps, configs, exchange_steps, &vec![zero; replicas.len()], &exchange_zero)
        })();
        match made.and_then(|parts| Self::finish(path, file, replicas.len(), parts)) {
            Ok(w) => Ok(w),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Reopens a replica-exchange file and truncates it to the checkpoint's counts (see
    /// [`EnsembleWriter::resume`]).
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        path: &Path,
        card_hash: &str,
        n_replicas: usize,
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        exchange_steps: &[StepDef],
        counts: &[Counts],
        exchange_counts: &Counts,
    ) -> Result<Self, EnsembleError> {
        hdf5::silence_errors(true);
        validate_defs(path, observables, steps, configs)?;
        let file = open_for_resume(path, card_hash, REPLICA_SCHEMA_VERSION)?;
        if counts.len() != n_replicas || exchange_counts.steps.len() != exchange_steps.len() {
            return Err(invalid(
                path,
                "checkpoint counts",
                format!(
                    "{} replica counts and {} swap-step counts for {n_replicas} replicas and {} swap steps",
                    counts.len(),
                    exchange_counts.steps.len(),
                    exchange_steps.len()
                ),
            ));
        }
        let rg = open_group(path, &file, "replicas")?;
        let mut members = rg.member_names().map_err(h5(path, "group /replicas"))?;
        members.sort_by_key(|m| m.parse::<usize>().unwrap_or(usize::MAX));
        let want: Vec<String> = (0..n_replicas).map(|k| k.to_string()).collect();
        if members != want {
            return Err(mismatch(path, "group /replicas", format!("file has replicas {members:?}, this run defines {n_replicas}")));
        }
        for k in 0..n_replicas {
            let g = open_group(path, &rg, &k.to_string())?;
            check_layout(path, &g, &replica_group(k), observables, steps, configs)?;
        }
        let xg = open_group(path, &file, "replica_exchange")?;
        check_steps(path, &xg, "/replica_exchange", exchange_steps)?;
        let parts = Self::open_all(path, &file, n_replicas, observables, steps, configs, exchange_steps, counts, exchange_counts)?;
        Self::finish(path, file, n_replicas, parts)
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn open_all(
        path: &Path,
        file: &File,
        n_replicas: usize,
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        exchange_steps: &[StepDef],
        counts: &[Counts],
        exchange_counts: &Counts,
    ) -> Result<(Vec<GroupSlots>, Vec<StepSlot>, Dataset, Dataset, u64), EnsembleError> {
        let rg = open_group(path, file, "replicas")?;
        let mut replicas = Vec::with_capacity(n_replicas);
        for (k, c) in counts.iter().enumerate() {
            let g = open_group(path, &rg, &k.to_string())?;
            replicas.push(GroupSlots::open(path, &g, &replica_group(k), observables, steps, configs, c)?);
        }
        let xg = open_group(path, file, "replica_exchange")?;
        let exchange = open_steps(path, &xg, "/replica_exchange", exchange_steps, &exchange_counts.steps)?;
        let sweep = open_dataset(path, &xg, "/replica_exchange", "sweep")?;
        truncate_rows(path, &sweep, "/replica_exchange/sweep", exchange_counts.measurements)?;
        let rc = open_dataset(path, &xg, "/replica_exchange", "replica_coupling")?;
        let width = row_width(path, &rc, "/replica_exchange/replica_coupling")?;
        if width != n_replicas {
            return Err(mismatch(
                path,
                "dataset /replica_exchange/replica_coupling",
                format!("file has {width} replicas, this run defines {n_replicas}"),
            ));
        }
        truncate_rows(path, &rc, "/replica_exchange/replica_coupling", exchange_counts.measurements)?;
        Ok((replicas, exchange, sweep, rc, exchange_counts.measurements))
    }

    fn finish(
        path: &Path,
        file: File,
        n_replicas: usize,
        (replicas, exchange, path_sweep, path_ds, path_on_disk): (Vec<GroupSlots>, Vec<StepSlot>, Dataset, Dataset, u64),
    ) -> Result<Self, EnsembleError> {
        let sync = sync_handle(path)?;
        let mut w = Self {
            path: path.to_owned(),
            file,
            sync,
            replicas,
            exchange,
            n_replicas,
            path_sweep,
            path_ds,
            path_on_disk,
            buf_path_sweeps: Vec::new(),
            buf_path: Vec::new(),
        };
        w.flush()?;
        Ok(w)
    }

    fn replica(&mut self, k: usize) -> Result<&mut GroupSlots, EnsembleError> {
        let n = self.replicas.len();
        self.replicas.get_mut(k).ok_or_else(|| invalid(&self.path, "/replicas", format!("replica {k} does not exist ({n} defined)")))
    }

    /// Buffers one measurement row of coupling k.
    pub fn push_measurement(&mut self, k: usize, sweep: u64, values: &[f64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        self.replica(k)?.push_measurement(&path, sweep, values)
    }

    /// Buffers one record of chain step `step` at coupling k.
    pub fn push_step_record(&mut self, k: usize, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        self.replica(k)?.push_step_record(&path, step, accepted, columns)
    }

    /// Appends one configuration of coupling k.
    pub fn push_config(&mut self, k: usize, sweep: u64, config: &[f64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        self.replica(k)?.push_config(&path, sweep, config)
    }

    /// Buffers one swap record of `replica_exchange` step `step` (index into its StepDefs).
    pub fn push_swap_record(&mut self, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        let n = self.exchange.len();
        let Some(slot) = self.exchange.get_mut(step) else {
            return Err(invalid(&self.path, "swap record", format!("swap step {step} does not exist ({n} defined)")));
        };
        slot.push(&self.path, accepted, columns)
    }

    /// Buffers one row of the replica paths: the coupling index of each replica after `sweep`.
    pub fn push_path(&mut self, sweep: u64, coupling_of_replica: &[u64]) -> Result<(), EnsembleError> {
        if coupling_of_replica.len() != self.n_replicas {
            return Err(shape_err(
                &self.path,
                "row of /replica_exchange/replica_coupling",
                format!("got {} values, expected {}", coupling_of_replica.len(), self.n_replicas),
            ));
        }
        self.buf_path_sweeps.push(sweep);
        self.buf_path.extend_from_slice(coupling_of_replica);
        Ok(())
    }

    /// Writes every buffered row, flushes and syncs the file; returns the counts on disk (per
    /// coupling, and for `/replica_exchange`).
    pub fn flush(&mut self) -> Result<(Vec<Counts>, Counts), EnsembleError> {
        let path = self.path.clone();
        for r in &mut self.replicas {
            r.write(&path)?;
        }
        for s in &mut self.exchange {
            s.write(&path)?;
        }
        let nb = self.buf_path_sweeps.len();
        if nb > 0 {
            let n0 = self.path_on_disk as usize;
            let n1 = n0 + nb;
            append_1d(&path, &self.path_sweep, "/replica_exchange/sweep", n0, &self.buf_path_sweeps)?;
            let obj = "/replica_exchange/replica_coupling";
            self.path_ds.resize([n1, self.n_replicas]).map_err(h5(&path, format!("dataset {obj} (resize)")))?;
            let mut col = vec![0u64; nb];
            for j in 0..self.n_replicas {
                for (i, v) in col.iter_mut().enumerate() {
                    *v = self.buf_path[i * self.n_replicas + j];
                }
                self.path_ds.write_slice(&col[..], (n0..n1, j)).map_err(h5(&path, format!("dataset {obj} (write)")))?;
            }
            self.path_on_disk = n1 as u64;
            self.buf_path_sweeps.clear();
            self.buf_path.clear();
        }
        sync_file(&path, &self.file, &self.sync)?;
        for r in &mut self.replicas {
            r.synced();
        }
        let exchange = Counts {
            measurements: self.path_on_disk,
            steps: self.exchange.iter().map(|s| s.on_disk).collect(),
            configs: 0,
        };
        Ok((self.replicas.iter().map(GroupSlots::on_disk_counts).collect(), exchange))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Everything analyse/inspect needs, read into memory.
#[derive(Debug, Clone)]
pub struct Ensemble {
    pub path: PathBuf,
    pub schema_version: u32,
    pub provenance: Provenance,
    /// In definition order.
    pub observables: Vec<ObservableData>,
    /// Sweep index of each measurement row.
    pub sweeps: Vec<u64>,
    /// Sorted by step index.
    pub steps: Vec<StepData>,
    /// Present if the file stores configurations (read them with [`read_configs`]).
    pub configs: Option<ConfigInfo>,
}

/// One observable's measurements.
#[derive(Debug, Clone)]
pub struct ObservableData {
    pub name: String,
    pub len: usize,
    pub description: String,
    /// Row-major `[n, len]`.
    pub values: Vec<f64>,
}

impl ObservableData {
    /// Number of measurement rows.
    pub fn n(&self) -> usize {
        self.values.len().checked_div(self.len).unwrap_or(0)
    }

    /// Component `j` of every row (the whole series for a scalar, `j == 0`).
    /// Panics if `j >= len`.
    pub fn component(&self, j: usize) -> Vec<f64> {
        assert!(
            j < self.len,
            "component {j} of observable {:?} with len {}",
            self.name,
            self.len
        );
        self.values
            .iter()
            .skip(j)
            .step_by(self.len)
            .copied()
            .collect()
    }
}

/// One step's records.
#[derive(Debug, Clone)]
pub struct StepData {
    pub label: String,
    pub kind: String,
    pub index: usize,
    pub params: String,
    /// 0/1 per record.
    pub accepted: Vec<u8>,
    /// `(name, values)` in column order; every `values` has `accepted.len()` entries.
    pub columns: Vec<(String, Vec<f64>)>,
}

/// What `/configs` holds (not the data itself).
#[derive(Debug, Clone)]
pub struct ConfigInfo {
    pub count: usize,
    pub config_len: usize,
    pub shape: Vec<usize>,
    pub layout: String,
}

/// Reads the root provenance attributes.
fn read_provenance(path: &Path, file: &File) -> Result<Provenance, EnsembleError> {
    let s = |name: &str| read_str_attr(path, file, "/", name);
    let seed_attr = file.attr("seed").map_err(|e| missing_or_h5(path, file, "/", "seed", e))?;
    let seed = seed_attr.read_scalar::<u64>().map_err(h5(path, "attribute /seed"))?;
    Ok(Provenance {
        latflow_version: s("latflow_version")?,
        run_card: s("run_card")?,
        card_path: s("card_path")?,
        card_hash: s("card_hash")?,
        seed,
        plugin_name: s("plugin_name")?,
        plugin_version: s("plugin_version")?,
        plugin_path: s("plugin_path")?,
        created: s("created")?,
        theory_params: s("theory_params")?,
        layout: s("layout")?,
        model: s("model")?,
    })
}

/// The observables, sweeps, steps and configuration info of the ensemble under `base`.
type GroupData = (Vec<ObservableData>, Vec<u64>, Vec<StepData>, Option<ConfigInfo>);

fn read_group(path: &Path, file_len: u64, base: &Group, prefix: &str) -> Result<GroupData, EnsembleError> {
    // Observables.
    let opath = format!("{prefix}/observables");
    let og = open_group(path, base, "observables")?;
    let sweep_obj = format!("{opath}/sweep");
    let sweep_ds = open_dataset(path, &og, &opath, "sweep")?;
    let n = rows_of(path, &sweep_ds, &sweep_obj, Some(1))?;
    let sweeps = read_all::<u64>(path, &sweep_ds, &sweep_obj, n, file_len)?;
    let names = read_json_list(path, &og, &opath, "names")?;
    let mut observables = Vec::with_capacity(names.len());
    for name in names {
        let object = format!("{opath}/{name}");
        let ds = open_dataset(path, &og, &opath, &name)?;
        let len = row_width(path, &ds, &object)?;
        let rows = rows_of(path, &ds, &object, None)?;
        if rows != n {
            return Err(shape_err(path, format!("dataset {object}"), format!("{rows} rows, but {sweep_obj} has {n}")));
        }
        let values = read_all::<f64>(path, &ds, &object, n * len, file_len)?;
        let description = read_str_attr(path, &ds, &object, "description")?;
        observables.push(ObservableData { name, len, description, values });
    }

    let steps = read_steps(path, file_len, base, prefix)?;

    // Configurations.
    let cpath = format!("{prefix}/configs");
    let cspath = format!("{prefix}/configs_sweep");
    let configs = match (base.link_exists("configs"), base.link_exists("configs_sweep")) {
        (false, false) => None,
        (true, false) => return Err(missing(path, format!("dataset {cspath}"))),
        (false, true) => return Err(missing(path, format!("dataset {cpath}"))),
        (true, true) => {
            let ds = open_dataset(path, base, prefix, "configs")?;
            let config_len = row_width(path, &ds, &cpath)?;
            let count = rows_of(path, &ds, &cpath, None)?;
            let sw = open_dataset(path, base, prefix, "configs_sweep")?;
            let count_sw = rows_of(path, &sw, &cspath, Some(1))?;
            if count != count_sw {
                return Err(shape_err(path, format!("dataset {cpath}"), format!("{count} rows, but {cspath} has {count_sw}")));
            }
            check_size(path, &cpath, count, config_len, 8, file_len)?;
            let shape = read_u64_list(path, &ds, &cpath, "shape")?
                .into_iter()
                .map(|x| usize::try_from(x).unwrap_or(usize::MAX))
                .collect();
            let layout = read_str_attr(path, &ds, &cpath, "layout")?;
            Some(ConfigInfo { count, config_len, shape, layout })
        }
    };
    Ok((observables, sweeps, steps, configs))
}

/// Reads `{prefix}/steps/*`, sorted by step index.
fn read_steps(path: &Path, file_len: u64, base: &Group, prefix: &str) -> Result<Vec<StepData>, EnsembleError> {
    let spath = format!("{prefix}/steps");
    let sg = open_group(path, base, "steps")?;
    let mut labels = sg.member_names().map_err(h5(path, format!("group {spath}")))?;
    labels.sort();
    let mut steps = Vec::with_capacity(labels.len());
    for label in labels {
        let gpath = format!("{spath}/{label}");
        let g = open_group(path, &sg, &label)?;
        let (kind, index, params, column_names) = read_step_info(path, &g, &gpath)?;
        let acc_obj = format!("{gpath}/accepted");
        let acc_ds = open_dataset(path, &g, &gpath, "accepted")?;
        let m = rows_of(path, &acc_ds, &acc_obj, Some(1))?;
        let accepted = read_all::<u8>(path, &acc_ds, &acc_obj, m, file_len)?;
        let mut columns = Vec::with_capacity(column_names.len());
        for c in column_names {
            let object = format!("{gpath}/{c}");
            let ds = open_dataset(path, &g, &gpath, &c)?;
            let rows = rows_of(path, &ds, &object, Some(1))?;
            if rows != m {
                return Err(shape_err(path, format!("dataset {object}"), format!("{rows} rows, but {acc_obj} has {m}")));
            }
            let values = read_all::<f64>(path, &ds, &object, m, file_len)?;
            columns.push((c, values));
        }
        steps.push(StepData { label, kind, index, params, accepted, columns });
    }
    steps.sort_by_key(|s| s.index);
    Ok(steps)
}

/// Opens and validates a file: a clear error (naming the path) for a missing file, a non-HDF5
/// or truncated/corrupt file, a wrong schema version, or inconsistent dataset lengths.
/// Never panics on a bad file. A replica-exchange file (schema version 2) is refused with a
/// pointer to [`read_replica_ensemble`]; [`read_any`] reads either kind.
pub fn read_ensemble(path: &Path) -> Result<Ensemble, EnsembleError> {
    hdf5::silence_errors(true);
    let file = open_file(path, false)?;
    let file_len = file_len(path)?;
    let schema_version = check_schema_version(path, &file)?;
    if schema_version != SCHEMA_VERSION {
        return Err(invalid(
            path,
            "file",
            "is a replica-exchange ensemble (schema version 2: one ensemble per coupling under /replicas/<k>); \
             read it with read_replica_ensemble",
        ));
    }
    let provenance = read_provenance(path, &file)?;
    let (observables, sweeps, steps, configs) = read_group(path, file_len, &file, "")?;
    Ok(Ensemble { path: path.to_owned(), schema_version, provenance, observables, sweeps, steps, configs })
}

/// A replica-exchange ensemble (schema version 2), read into memory.
#[derive(Debug, Clone)]
pub struct ReplicaEnsemble {
    pub path: PathBuf,
    pub schema_version: u32,
    /// The root attributes (`theory_params` are those of the card's `[theory]`).
    pub provenance: Provenance,
    /// The ladder parameter.
    pub parameter: String,
    /// Its value at each coupling.
    pub values: Vec<f64>,
    /// The ensemble at each coupling (`/replicas/<k>`), with that coupling's `theory_params`
    /// and `model` in its provenance. Read its configurations with [`read_replica_configs`].
    pub replicas: Vec<Ensemble>,
    /// Sweep index of each row of `replica_coupling`.
    pub path_sweeps: Vec<u64>,
    /// Row-major `[n, K]`: the coupling index of replica r after sweep `path_sweeps[i]`.
    pub replica_coupling: Vec<u64>,
    /// The swap records of each `replica_exchange` step (columns pair, log_ratio, …).
    pub swaps: Vec<StepData>,
}

/// Either kind of ensemble file.
#[derive(Debug, Clone)]
pub enum AnyEnsemble {
    Plain(Ensemble),
    Replica(ReplicaEnsemble),
}

/// Reads a plain (schema 1) or replica-exchange (schema 2) ensemble.
pub fn read_any(path: &Path) -> Result<AnyEnsemble, EnsembleError> {
    hdf5::silence_errors(true);
    let version = {
        let file = open_file(path, false)?;
        check_schema_version(path, &file)?
    };
    if version == REPLICA_SCHEMA_VERSION {
        read_replica_ensemble(path).map(AnyEnsemble::Replica)
    } else {
        read_ensemble(path).map(AnyEnsemble::Plain)
    }
}

/// Reads a replica-exchange ensemble (schema version 2).
pub fn read_replica_ensemble(path: &Path) -> Result<ReplicaEnsemble, EnsembleError> {
    hdf5::silence_errors(true);
    let file = open_file(path, false)?;
    let file_len = file_len(path)?;
    let schema_version = check_schema_version(path, &file)?;
    if schema_version != REPLICA_SCHEMA_VERSION {
        return Err(invalid(path, "file", "is not a replica-exchange ensemble (schema version 1); read it with read_ensemble"));
    }
    let provenance = read_provenance(path, &file)?;
    let xg = open_group(path, &file, "replica_exchange")?;
    let parameter = read_str_attr(path, &xg, "/replica_exchange", "parameter")?;
    let values_text = read_str_attr(path, &xg, "/replica_exchange", "values")?;
    let values: Vec<f64> = serde_json::from_str(&values_text).map_err(|e| {
        corrupt(path, "attribute /replica_exchange/values", format!("expected a JSON array of numbers: {e}"))
    })?;
    let k = values.len();
    let rg = open_group(path, &file, "replicas")?;
    let mut replicas = Vec::with_capacity(k);
    for i in 0..k {
        let prefix = replica_group(i);
        let g = open_group(path, &rg, &i.to_string())?;
        let mut prov = provenance.clone();
        prov.theory_params = read_str_attr(path, &g, &prefix, "theory_params")?;
        prov.model = read_str_attr(path, &g, &prefix, "model")?;
        let (observables, sweeps, steps, configs) = read_group(path, file_len, &g, &prefix)?;
        replicas.push(Ensemble { path: path.to_owned(), schema_version, provenance: prov, observables, sweeps, steps, configs });
    }
    let sw_obj = "/replica_exchange/sweep";
    let sw = open_dataset(path, &xg, "/replica_exchange", "sweep")?;
    let n = rows_of(path, &sw, sw_obj, Some(1))?;
    let path_sweeps = read_all::<u64>(path, &sw, sw_obj, n, file_len)?;
    let rc_obj = "/replica_exchange/replica_coupling";
    let rc = open_dataset(path, &xg, "/replica_exchange", "replica_coupling")?;
    let rows = rows_of(path, &rc, rc_obj, Some(2))?;
    let width = row_width(path, &rc, rc_obj)?;
    if rows != n || width != k {
        return Err(shape_err(
            path,
            format!("dataset {rc_obj}"),
            format!("shape [{rows}, {width}], expected [{n}, {k}] ({sw_obj} rows, couplings)"),
        ));
    }
    let replica_coupling = read_all::<u64>(path, &rc, rc_obj, n * k, file_len)?;
    if let Some(bad) = replica_coupling.iter().find(|&&c| c as usize >= k) {
        return Err(corrupt(path, format!("dataset {rc_obj}"), format!("coupling index {bad} out of range (K = {k})")));
    }
    let swaps = read_steps(path, file_len, &xg, "/replica_exchange")?;
    Ok(ReplicaEnsemble {
        path: path.to_owned(),
        schema_version,
        provenance,
        parameter,
        values,
        replicas,
        path_sweeps,
        replica_coupling,
        swaps,
    })
}

/// Reads configurations `[start, start+count)` as a flat row-major Vec
/// (`count * config_len` values). Errors if the range exceeds the stored configurations.
pub fn read_configs(path: &Path, start: usize, count: usize) -> Result<Vec<f64>, EnsembleError> {
    read_configs_in(path, None, start, count)
}

/// [`read_configs`] for coupling k of a replica-exchange ensemble (`/replicas/<k>/configs`).
pub fn read_replica_configs(path: &Path, k: usize, start: usize, count: usize) -> Result<Vec<f64>, EnsembleError> {
    read_configs_in(path, Some(k), start, count)
}

fn read_configs_in(path: &Path, replica: Option<usize>, start: usize, count: usize) -> Result<Vec<f64>, EnsembleError> {
    hdf5::silence_errors(true);
    let file = open_file(path, false)?;
    let version = check_schema_version(path, &file)?;
    let (base, prefix): (Group, String) = match replica {
        None if version == SCHEMA_VERSION => ((*file).clone(), String::new()),
        None => return Err(invalid(path, "/configs", "a replica-exchange ensemble: read a coupling's configurations")),
        Some(_) if version != REPLICA_SCHEMA_VERSION => {
            return Err(invalid(path, "/replicas", "not a replica-exchange ensemble"))
        }
        Some(k) => {
            let rg = open_group(path, &file, "replicas")?;
            (open_group(path, &rg, &k.to_string())?, replica_group(k))
        }
    };
    let cpath = format!("{prefix}/configs");
    let ds = open_dataset(path, &base, &prefix, "configs")?;
    let config_len = row_width(path, &ds, &cpath)?;
    let k = rows_of(path, &ds, &cpath, None)?;
    let end = start.checked_add(count).filter(|&e| e <= k).ok_or_else(|| {
        invalid(
            path,
            format!("dataset {cpath}"),
            format!("requested configurations {start}..{} but the file holds {k}", start + count),
        )
    })?;
    if count == 0 {
        return Ok(Vec::new());
    }
    check_size(path, &cpath, count, config_len, 8, file_len(path)?)?;
    let block = ds
        .read_slice_2d::<f64, _>((start..end, ..))
        .map_err(h5(path, format!("dataset {cpath} (read)")))?;
    Ok(block.iter().copied().collect())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn h5(path: &Path, object: impl Into<String>) -> impl FnOnce(hdf5::Error) -> EnsembleError {
    let path = path.to_owned();
    let object = object.into();
    move |e| EnsembleError::Hdf5 {
        path,
        object,
        detail: e.to_string(),
    }
}

fn invalid(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Invalid {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

fn mismatch(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Mismatch {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

fn shape_err(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Shape {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

fn corrupt(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Corrupt {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

fn missing(path: &Path, object: impl Into<String>) -> EnsembleError {
    EnsembleError::Missing {
        path: path.to_owned(),
        object: object.into(),
    }
}

/// File-access settings of the writer: HDF5 1.8 format (readable by any h5py, no SWMR flag
/// that a killed writer would leave set), file locking that is skipped on file systems that
/// do not support it, and no metadata-cache evictions (metadata reaches the disk only at a
/// flush, so a killed process leaves the last checkpoint's metadata intact).
fn writer_fapl(p: &mut FileAccessBuilder) -> &mut FileAccessBuilder {
    let mdc = MetadataCacheConfig {
        evictions_enabled: false,
        incr_mode: CacheIncreaseMode::Off,
        flash_incr_mode: FlashIncreaseMode::Off,
        decr_mode: CacheDecreaseMode::Off,
        ..MetadataCacheConfig::default()
    };
    p.libver_bounds(LibraryVersion::V18, LibraryVersion::V18)
        .file_locking(true)
        .mdc_config(&mdc)
}

/// Opens an existing file, mapping failures to NotFound / NotHdf5 / Hdf5.
fn open_file(path: &Path, rw: bool) -> Result<File, EnsembleError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(EnsembleError::NotFound {
                path: path.to_owned(),
            })
        }
        Err(error) => {
            return Err(EnsembleError::Io {
                path: path.to_owned(),
                object: "file".into(),
                error,
            })
        }
    };
    if meta.is_dir() {
        return Err(invalid(
            path,
            "file",
            "is a directory, not an ensemble file",
        ));
    }
    if meta.len() == 0 {
        return Err(EnsembleError::NotHdf5 {
            path: path.to_owned(),
            detail: "the file is empty".into(),
        });
    }
    let mut builder = File::with_options();
    if rw {
        builder.with_fapl(writer_fapl);
    } else {
        builder.with_fapl(|p| p.file_locking(true));
    }
    let res = if rw {
        builder.open_rw(path)
    } else {
        builder.open(path)
    };
    res.map_err(|e| {
        if e.contains_minor(MinorErrorCode::NotHdf5) || e.contains_minor(MinorErrorCode::Truncated)
        {
            EnsembleError::NotHdf5 {
                path: path.to_owned(),
                detail: e.to_string(),
            }
        } else {
            let hint = if e.contains_minor(MinorErrorCode::CantLockFile)
                || e.contains_minor(MinorErrorCode::CantLock)
            {
                " (is another process writing it?)"
            } else {
                ""
            };
            EnsembleError::Hdf5 {
                path: path.to_owned(),
                object: "file (open)".into(),
                detail: format!("{e}{hint}"),
            }
        }
    })
}

fn file_len(path: &Path) -> Result<u64, EnsembleError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|error| EnsembleError::Io {
            path: path.to_owned(),
            object: "file".into(),
            error,
        })
}

fn check_schema_version(path: &Path, file: &File) -> Result<u32, EnsembleError> {
    let attr = file
        .attr("schema_version")
        .map_err(|e| missing_or_h5(path, file, "/", "schema_version", e))?;
    let found = attr
        .read_scalar::<u32>()
        .map_err(h5(path, "attribute /schema_version"))?;
    if found != SCHEMA_VERSION && found != REPLICA_SCHEMA_VERSION {
        return Err(EnsembleError::SchemaVersion {
            path: path.to_owned(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

fn attr_object(obj: &str, name: &str) -> String {
    if obj.is_empty() || obj == "/" {
        format!("attribute /{name}")
    } else {
        format!("attribute {obj}/{name}")
    }
}

/// Classifies a failed attribute open: absent (Missing) or another HDF5 error.
fn missing_or_h5(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
    e: hdf5::Error,
) -> EnsembleError {
    let object = attr_object(obj, name);
    match loc.attr_names() {
        Ok(names) if !names.iter().any(|n| n == name) => missing(path, object),
        _ => h5(path, object)(e),
    }
}

fn write_scalar_attr<T: H5Type>(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
    value: &T,
) -> Result<(), EnsembleError> {
    loc.new_attr::<T>()
        .shape(())
        .create(name)
        .and_then(|a| a.write_scalar(value))
        .map_err(h5(path, attr_object(obj, name)))
}

/// Writes a scalar variable-length UTF-8 string attribute (h5py reads it as `str`).
fn write_str_attr(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
    value: &str,
) -> Result<(), EnsembleError> {
    let v = VarLenUnicode::from_str(value).map_err(|e| {
        invalid(
            path,
            attr_object(obj, name),
            format!("cannot be stored as an HDF5 string: {e}"),
        )
    })?;
    write_scalar_attr(path, loc, obj, name, &v)
}

/// Reads a scalar string attribute (variable-length UTF-8 or ASCII, as h5py writes them).
fn read_str_attr(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
) -> Result<String, EnsembleError> {
    let object = attr_object(obj, name);
    let attr = loc
        .attr(name)
        .map_err(|e| missing_or_h5(path, loc, obj, name, e))?;
    let descr = attr
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(h5(path, object.clone()))?;
    match descr {
        TypeDescriptor::VarLenUnicode => attr
            .read_scalar::<VarLenUnicode>()
            .map(|s| s.as_str().to_owned())
            .map_err(h5(path, object)),
        TypeDescriptor::VarLenAscii => attr
            .read_scalar::<VarLenAscii>()
            .map(|s| s.as_str().to_owned())
            .map_err(h5(path, object)),
        other => Err(corrupt(
            path,
            object,
            format!("expected a variable-length string attribute, found type {other}"),
        )),
    }
}

fn read_json_list(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
) -> Result<Vec<String>, EnsembleError> {
    let text = read_str_attr(path, loc, obj, name)?;
    serde_json::from_str(&text).map_err(|e| {
        corrupt(
            path,
            attr_object(obj, name),
            format!("expected a JSON array of strings: {e}"),
        )
    })
}

fn json_list(items: &[&str]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn read_u64_list(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
) -> Result<Vec<u64>, EnsembleError> {
    let attr = loc
        .attr(name)
        .map_err(|e| missing_or_h5(path, loc, obj, name, e))?;
    let object = attr_object(obj, name);
    let shape = attr.get_shape().map_err(h5(path, object.clone()))?;
    if shape.len() != 1 || shape[0] > 64 {
        return Err(corrupt(
            path,
            object,
            format!("expected a short 1-D array, found shape {shape:?}"),
        ));
    }
    attr.read_raw::<u64>().map_err(h5(path, object))
}

/// Reads kind, index, params and columns of a step group.
fn read_step_info(
    path: &Path,
    g: &Group,
    gpath: &str,
) -> Result<(String, usize, String, Vec<String>), EnsembleError> {
    let kind = read_str_attr(path, g, gpath, "kind")?;
    let index_attr = g
        .attr("index")
        .map_err(|e| missing_or_h5(path, g, gpath, "index", e))?;
    let index = index_attr
        .read_scalar::<u32>()
        .map_err(h5(path, attr_object(gpath, "index")))?;
    let params = read_str_attr(path, g, gpath, "params")?;
    let columns = read_json_list(path, g, gpath, "columns")?;
    Ok((kind, index as usize, params, columns))
}

fn open_group(path: &Path, parent: &Group, name: &str) -> Result<Group, EnsembleError> {
    let full = join(&parent.name(), name);
    if !parent.link_exists(name) {
        return Err(missing(path, format!("group {full}")));
    }
    parent
        .group(name)
        .map_err(h5(path, format!("group {full}")))
}

fn open_dataset(
    path: &Path,
    parent: &Group,
    ppath: &str,
    name: &str,
) -> Result<Dataset, EnsembleError> {
    let full = join(ppath, name);
    if !parent.link_exists(name) {
        return Err(missing(path, format!("dataset {full}")));
    }
    parent
        .dataset(name)
        .map_err(h5(path, format!("dataset {full}")))
}

fn join(parent: &str, name: &str) -> String {
    format!("{}/{name}", parent.trim_end_matches('/'))
}

/// Creates an empty row dataset `[0]` or `[0, width]`, resizable along axis 0.
fn create_rows<T: H5Type>(
    path: &Path,
    parent: &Group,
    ppath: &str,
    name: &str,
    width: Option<usize>,
    max_rows: usize,
) -> Result<Dataset, EnsembleError> {
    let object = format!("dataset {}", join(ppath, name));
    let builder = parent.new_dataset::<T>();
    let res = match width {
        None => builder.chunk([max_rows]).shape([0..]).create(name),
        Some(w) => {
            let rows = (CHUNK_TARGET_ELEMS / w).clamp(1, max_rows);
            builder
                .chunk([rows, w.min(MAX_CHUNK_COLS)])
                .shape((0.., w))
                .create(name)
        }
    };
    res.map_err(h5(path, object))
}

/// Number of rows of a row dataset; `want_ndim` is the required rank (`None`: 1 or 2).
fn rows_of(
    path: &Path,
    ds: &Dataset,
    object: &str,
    want_ndim: Option<usize>,
) -> Result<usize, EnsembleError> {
    let shape = ds
        .get_shape()
        .map_err(h5(path, format!("dataset {object}")))?;
    let ok = match want_ndim {
        Some(d) => shape.len() == d,
        None => shape.len() == 1 || shape.len() == 2,
    };
    if !ok {
        return Err(shape_err(
            path,
            format!("dataset {object}"),
            format!("unexpected shape {shape:?}"),
        ));
    }
    Ok(shape[0])
}

/// Row width: 1 for `[n]`, `len` for `[n, len]` (which must have `len >= 1`).
fn row_width(path: &Path, ds: &Dataset, object: &str) -> Result<usize, EnsembleError> {
    let shape = ds
        .get_shape()
        .map_err(h5(path, format!("dataset {object}")))?;
    match shape[..] {
        [_] => Ok(1),
        [_, w] if w >= 1 => Ok(w),
        _ => Err(shape_err(
            path,
            format!("dataset {object}"),
            format!("unexpected shape {shape:?}"),
        )),
    }
}

/// Guards against allocating for a dataset whose size a damaged file misreports: our datasets
/// are never compressed, so their data cannot exceed the file size.
fn check_size(
    path: &Path,
    object: &str,
    rows: usize,
    width: usize,
    elem: u64,
    file_len: u64,
) -> Result<(), EnsembleError> {
    let bytes = (rows as u64)
        .checked_mul(width as u64)
        .and_then(|x| x.checked_mul(elem));
    match bytes {
        Some(b) if b <= file_len => Ok(()),
        _ => Err(corrupt(
            path,
            format!("dataset {object}"),
            format!(
                "claims {rows} x {width} elements, more than the {file_len}-byte file can hold"
            ),
        )),
    }
}

/// Reads a whole row dataset (`elems` values, row-major) after a size sanity check.
fn read_all<T: H5Type>(
    path: &Path,
    ds: &Dataset,
    object: &str,
    elems: usize,
    file_len: u64,
) -> Result<Vec<T>, EnsembleError> {
    check_size(
        path,
        object,
        elems,
        1,
        std::mem::size_of::<T>() as u64,
        file_len,
    )?;
    let v = ds
        .read_raw::<T>()
        .map_err(h5(path, format!("dataset {object} (read)")))?;
    if v.len() != elems {
        return Err(shape_err(
            path,
            format!("dataset {object}"),
            format!("read {} values, expected {elems}", v.len()),
        ));
    }
    Ok(v)
}

/// Resizes a 1-D dataset to `start + data.len()` rows and writes `data` at `start`.
fn append_1d<T: H5Type>(
    path: &Path,
    ds: &Dataset,
    object: &str,
    start: usize,
    data: &[T],
) -> Result<(), EnsembleError> {
    let end = start + data.len();
    ds.resize([end])
        .map_err(h5(path, format!("dataset {object} (resize)")))?;
    ds.write_slice(data, start..end)
        .map_err(h5(path, format!("dataset {object} (write)")))
}

/// Shrinks a row dataset to `rows` (keeping its width); errors if it holds fewer.
fn truncate_rows(path: &Path, ds: &Dataset, object: &str, rows: u64) -> Result<(), EnsembleError> {
    let mut shape = ds
        .get_shape()
        .map_err(h5(path, format!("dataset {object}")))?;
    if shape.is_empty() {
        return Err(shape_err(
            path,
            format!("dataset {object}"),
            "scalar dataset, expected rows",
        ));
    }
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    if shape[0] < rows {
        return Err(mismatch(
            path,
            format!("dataset {object}"),
            format!(
                "has {} rows but the checkpoint records {rows}; the file is older than the \
                 checkpoint or was replaced",
                shape[0]
            ),
        ));
    }
    if shape[0] > rows {
        shape[0] = rows;
        ds.resize(shape)
            .map_err(h5(path, format!("dataset {object} (truncate)")))?;
    }
    Ok(())
}

fn validate_name(
    path: &Path,
    what: &str,
    name: &str,
    extra_reserved: &[&str],
) -> Result<(), EnsembleError> {
    let reason = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.contains('/') {
        Some("must not contain '/'".to_string())
    } else if name.contains('\0') {
        Some("must not contain NUL".to_string())
    } else if name == "." || name == ".." || name == "sweep" || extra_reserved.contains(&name) {
        Some("is reserved".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EnsembleError::InvalidName {
            path: path.to_owned(),
            what: what.into(),
            name: name.into(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_unique<'a>(
    path: &Path,
    what: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), EnsembleError> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(EnsembleError::InvalidName {
                path: path.to_owned(),
                what: what.into(),
                name: n.into(),
                reason: "is defined twice".into(),
            });
        }
    }
    Ok(())
}

fn validate_defs(
    path: &Path,
    observables: &[ObservableDef],
    steps: &[StepDef],
    configs: Option<&ConfigDef>,
) -> Result<(), EnsembleError> {
    for o in observables {
        validate_name(path, "observable", &o.name, &[])?;
        if o.len == 0 {
            return Err(invalid(
                path,
                format!("observable {:?}", o.name),
                "length must be at least 1",
            ));
        }
    }
    check_unique(
        path,
        "observable",
        observables.iter().map(|o| o.name.as_str()),
    )?;
    for s in steps {
        validate_name(path, "step label", &s.label, &[])?;
        for c in &s.columns {
            validate_name(
                path,
                &format!("column of step {:?}", s.label),
                c,
                &["accepted"],
            )?;
        }
        check_unique(
            path,
            &format!("column of step {:?}", s.label),
            s.columns.iter().map(String::as_str),
        )?;
        if u32::try_from(s.index).is_err() {
            return Err(invalid(
                path,
                format!("step {:?}", s.label),
                "index does not fit in u32",
            ));
        }
    }
    check_unique(path, "step label", steps.iter().map(|s| s.label.as_str()))?;
    if let Some(c) = configs {
        if c.config_len == 0 {
            return Err(invalid(path, "configs", "config_len must be at least 1"));
        }
        if c.shape.is_empty() {
            return Err(invalid(path, "configs", "lattice shape must not be empty"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{RwLock, RwLockReadGuard};

    /// HDF5 opens files without `O_CLOEXEC`, so a child process spawned while another test has
    /// a file open inherits the descriptor and its lock (opening the file then fails with
    /// "unable to lock file" until the child exits). Tests hold this lock for reading; the one
    /// test that spawns a child holds it for writing while it spawns.
    static OPEN_FILES: RwLock<()> = RwLock::new(());

    fn files() -> RwLockReadGuard<'static, ()> {
        OPEN_FILES.read().unwrap_or_else(|e| e.into_inner())
    }

    fn prov() -> Provenance {
        Provenance {
            latflow_version: "0.1.0".into(),
            run_card: "[theory]\nname = \"phi4\"\n# ünïcödé\n".into(),
            card_path: "cards/phi4.toml".into(),
            card_hash: "deadbeef".into(),
            seed: u64::MAX - 7,
            plugin_name: "phi4".into(),
            plugin_version: "0.1.0".into(),
            plugin_path: "/tmp/libphi4.so".into(),
            created: "2025-01-02T03:04:05Z".into(),
            theory_params: r#"{"kappa":0.18,"lambda":1.1}"#.into(),
            model: String::new(),
            layout: r#"{"shape":[4,4],"components":1}"#.into(),
        }
    }

    fn obs() -> Vec<ObservableDef> {
        vec![
            ObservableDef {
                name: "mag".into(),
                len: 1,
                description: "magnetisation".into(),
            },
            ObservableDef {
                name: "corr".into(),
                len: 3,
                description: "correlator".into(),
            },
            ObservableDef {
                name: "action".into(),
                len: 1,
                description: "action density".into(),
            },
        ]
    }

    fn steps() -> Vec<StepDef> {
        vec![
            StepDef {
                label: "hmc".into(),
                kind: "hmc".into(),
                index: 0,
                params: r#"{"n_md":10}"#.into(),
                columns: vec!["delta_h".into()],
            },
            StepDef {
                label: "flip".into(),
                kind: "global_flip".into(),
                index: 1,
                params: "{}".into(),
                columns: vec!["log_q".into(), "action".into()],
            },
        ]
    }

    fn cdef() -> ConfigDef {
        ConfigDef {
            config_len: 16,
            shape: vec![4, 4],
        }
    }

    /// Deterministic, bit-pattern-rich values (negative zero, subnormals, NaN payloads excluded).
    fn val(i: usize, j: usize) -> f64 {
        let x = (i as f64 + 1.0) * 0.1 + (j as f64) * 1e-7;
        if (i + j) % 5 == 0 {
            -x / 3.0
        } else {
            x.sqrt() * 1e300_f64.powf((j % 3) as f64 / 10.0)
        }
    }

    fn row(i: usize) -> Vec<f64> {
        (0..5).map(|j| val(i, j)).collect()
    }

    fn config(i: usize) -> Vec<f64> {
        (0..16).map(|j| val(i + 1000, j)).collect()
    }

    /// Pushes measurements [from, to), one hmc record per measurement, a flip record every other
    /// one and a config every third one.
    fn push_range(w: &mut EnsembleWriter, from: usize, to: usize) {
        for i in from..to {
            w.push_measurement(10 * i as u64, &row(i)).unwrap();
            w.push_step_record(0, i % 3 != 0, &[val(i, 7)]).unwrap();
            if i % 2 == 0 {
                w.push_step_record(1, i % 4 == 0, &[val(i, 8), val(i, 9)])
                    .unwrap();
            }
            if i % 3 == 0 {
                w.push_config(10 * i as u64, &config(i)).unwrap();
            }
        }
    }

    fn create(path: &Path) -> EnsembleWriter {
        EnsembleWriter::create(path, &prov(), &obs(), &steps(), Some(&cdef()), false).unwrap()
    }

    fn check_contents(path: &Path, n: usize) {
        let e = read_ensemble(path).unwrap();
        assert_eq!(e.schema_version, SCHEMA_VERSION);
        assert_eq!(e.provenance, prov());
        assert_eq!(e.sweeps, (0..n).map(|i| 10 * i as u64).collect::<Vec<_>>());
        let names: Vec<_> = e.observables.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["mag", "corr", "action"]);
        let (mag, corr, action) = (&e.observables[0], &e.observables[1], &e.observables[2]);
        assert_eq!((mag.len, corr.len, action.len), (1, 3, 1));
        assert_eq!(corr.description, "correlator");
        assert_eq!((mag.n(), corr.n(), action.n()), (n, n, n));
        for i in 0..n {
            let r = row(i);
            assert_eq!(mag.values[i].to_bits(), r[0].to_bits());
            for j in 0..3 {
                assert_eq!(corr.values[3 * i + j].to_bits(), r[1 + j].to_bits());
            }
            assert_eq!(action.values[i].to_bits(), r[4].to_bits());
        }
        let c1 = corr.component(1);
        assert_eq!(c1.len(), n);
        if n > 0 {
            assert_eq!(c1[n - 1].to_bits(), row(n - 1)[2].to_bits());
        }

        assert_eq!(e.steps.len(), 2);
        let (hmc, flip) = (&e.steps[0], &e.steps[1]);
        assert_eq!(
            (hmc.label.as_str(), hmc.kind.as_str(), hmc.index),
            ("hmc", "hmc", 0)
        );
        assert_eq!(hmc.params, r#"{"n_md":10}"#);
        assert_eq!(
            hmc.accepted,
            (0..n).map(|i| u8::from(i % 3 != 0)).collect::<Vec<_>>()
        );
        assert_eq!(hmc.columns.len(), 1);
        assert_eq!(hmc.columns[0].0, "delta_h");
        let dh: Vec<u64> = hmc.columns[0].1.iter().map(|x| x.to_bits()).collect();
        assert_eq!(dh, (0..n).map(|i| val(i, 7).to_bits()).collect::<Vec<_>>());
        assert_eq!(
            (flip.label.as_str(), flip.kind.as_str(), flip.index),
            ("flip", "global_flip", 1)
        );
        let evens: Vec<usize> = (0..n).filter(|i| i % 2 == 0).collect();
        assert_eq!(
            flip.accepted,
            evens
                .iter()
                .map(|i| u8::from(i % 4 == 0))
                .collect::<Vec<_>>()
        );
        let names: Vec<_> = flip.columns.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["log_q", "action"]);
        for (k, &i) in evens.iter().enumerate() {
            assert_eq!(flip.columns[0].1[k].to_bits(), val(i, 8).to_bits());
            assert_eq!(flip.columns[1].1[k].to_bits(), val(i, 9).to_bits());
        }

        let ci = e.configs.unwrap();
        let thirds: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
        assert_eq!(
            (ci.count, ci.config_len, ci.shape.clone()),
            (thirds.len(), 16, vec![4, 4])
        );
        assert_eq!(ci.layout, prov().layout);
        let all = read_configs(path, 0, ci.count).unwrap();
        let want: Vec<u64> = thirds
            .iter()
            .flat_map(|&i| config(i))
            .map(f64::to_bits)
            .collect();
        assert_eq!(all.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        if ci.count >= 2 {
            let one = read_configs(path, 1, 1).unwrap();
            assert_eq!(one, config(thirds[1]));
        }
        assert!(read_configs(path, ci.count, 1).is_err());
    }

    #[test]
    fn round_trip() {
        let _files = files();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ens.h5");
        let mut w = create(&path);
        // Flushes of 1 row (per-row writes of the vector observable) and of many rows
        // (per-component writes), crossing chunk boundaries.
        push_range(&mut w, 0, 1);
        let c = w.flush().unwrap();
        assert_eq!(
            c,
            Counts {
                measurements: 1,
                steps: vec![1, 1],
                configs: 1
            }
        );
        push_range(&mut w, 1, 2500);
        assert_eq!(w.counts().measurements, 2500);
        let c = w.flush().unwrap();
        assert_eq!(c, w.counts());
        assert_eq!(
            c,
            Counts {
                measurements: 2500,
                steps: vec![2500, 1250],
                configs: 834
            }
        );
        drop(w);
        check_contents(&path, 2500);
    }

    #[test]
    fn empty_ensemble_reads() {
        let _files = files();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.h5");
        drop(create(&path));
        check_contents(&path, 0);
        // No configs, no steps, no observables at all.
        let p2 = dir.path().join("bare.h5");
        let mut w = EnsembleWriter::create(&p2, &prov(), &[], &[], None, false).unwrap();
        w.push_measurement(3, &[]).unwrap();
        assert!(w.push_config(0, &[1.0]).is_err());
        assert_eq!(w.flush().unwrap().measurements, 1);
        drop(w);
        let e = read_ensemble(&p2).unwrap();
        assert_eq!(e.sweeps, [3]);
        assert!(e.configs.is_none() && e.steps.is_empty() && e.observables.is_empty());
    }

    #[test]
    fn resume_truncates_to_checkpoint() {
        let _files = files();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ens.h5");
        let mut w = create(&path);
        push_range(&mut w, 0, 1100);
        let checkpoint = w.flush().unwrap();
        push_range(&mut w, 1100, 1500); // flushed but not checkpointed
        w.flush().unwrap();
        push_range(&mut w, 1500, 1600); // never flushed
        drop(w);

        let mut w = EnsembleWriter::resume(
            &path,
            "deadbeef",
            &obs(),
            &steps(),
            Some(&cdef()),
            &checkpoint,
        )
        .unwrap();
        assert_eq!(w.counts(), checkpoint);
        check_contents(&path, 1100);
        push_range(&mut w, 1100, 1700);
        w.flush().unwrap();
        drop(w);
        check_contents(&path, 1700);
    }

    #[test]
    fn resume_rejects_mismatches() {
        let _files = files();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ens.h5");
        let mut w = create(&path);
        push_range(&mut w, 0, 10);
        let counts = w.flush().unwrap();
        drop(w);
        let resume =
            |hash: &str, o: &[ObservableDef], s: &[StepDef], c: Option<&ConfigDef>, n: &Counts| {
                EnsembleWriter::resume(&path, hash, o, s, c, n)
                    .unwrap_err()
                    .to_string()
            };
        let msg = resume("cafe", &obs(), &steps(), Some(&cdef()), &counts);
        assert!(
            msg.contains("card_hash") && msg.contains(&*path.to_string_lossy()),
            "{msg}"
        );
        let mut o = obs();
        o[1].len = 4;
        assert!(
            resume("deadbeef", &o, &steps(), Some(&cdef()), &counts).contains("/observables/corr")
        );
        let mut s = steps();
        s[1].columns.pop();
        assert!(resume("deadbeef", &o[..0], &s, Some(&cdef()), &counts).contains("/observables"));
        assert!(resume("deadbeef", &obs(), &s, Some(&cdef()), &counts).contains("/steps/flip"));
        assert!(resume("deadbeef", &obs(), &steps(), None, &counts).contains("/configs"));
        let more = Counts {
            measurements: 11,
            ..counts.clone()
        };
        let msg = resume("deadbeef", &obs(), &steps(), Some(&cdef()), &more);
        assert!(
            msg.contains("/observables/sweep") && msg.contains("checkpoint"),
            "{msg}"
        );
        // The file is untouched by the failed attempts.
        check_contents(&path, 10);
    }

    #[test]
    fn bad_files_give_errors_naming_the_path() {
        let _files = files();
        let dir = tempfile::tempdir().unwrap();
        let check = |p: &Path| {
            let msg = read_ensemble(p).unwrap_err().to_string();
            assert!(msg.contains(&*p.to_string_lossy()), "{msg}");
            let msg2 = read_configs(p, 0, 1).unwrap_err().to_string();
            assert!(msg2.contains(&*p.to_string_lossy()), "{msg2}");
            msg
        };
        check(&dir.path().join("missing.h5"));

        let random = dir.path().join("random.h5");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&random, bytes).unwrap();
        check(&random);

        let empty = dir.path().join("empty.h5");
        std::fs::write(&empty, b"").unwrap();
        assert!(check(&empty).contains("empty"));

        let real = dir.path().join("real.h5");
        let mut w = create(&real);
        push_range(&mut w, 0, 3000);
        w.flush().unwrap();
        drop(w);
        let data = std::fs::read(&real).unwrap();
        for (name, cut) in [
            ("half.h5", data.len() / 2),
            ("head.h5", 100),
            ("almost.h5", data.len() - 1),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, &data[..cut]).unwrap();
            check(&p);
        }

        // A valid HDF5 file that is not an ensemble.
        let other = dir.path().join("other.h5");
        File::create(&other).unwrap();
        let msg = check(&other);
        assert!(msg.contains("schema_version"), "{msg}");

        // A wrong schema version.
        let v3 = dir.path().join("v3.h5");
        std::fs::copy(&real, &v3).unwrap();
        {
            let f = File::open_rw(&v3).unwrap();
            f.attr("schema_version")
                .unwrap()
                .write_scalar(&3u32)
                .unwrap();
        }
        let msg = check(&v3);
        assert!(
            msg.contains("schema version 1") && msg.contains("is 3"),
            "{msg}"
        );

        // Inconsistent lengths.
        let bad = dir.path().join("bad.h5");
        std::fs::copy(&real, &bad).unwrap();
        File::open_rw(&bad)
            .unwrap()
            .dataset("observables/mag")
            .unwrap()
            .resize([5])
            .unwrap();
        let msg = read_ensemble(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("/observables/mag") && msg.contains("rows"),
            "{msg}"
        );
        // Missing dataset.
        File::open_rw(&bad)
            .unwrap()
            .unlink("observables/mag")
            .unwrap();
        let msg = read_ensemble(&bad).unwrap_err().to_string();
        assert!(msg.contains("missing dataset /observables/mag"), "{msg}");
    }

    #[test]
    fn create_errors() {
        let _files = files();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/ens.h5");
        let err =
            EnsembleWriter::create(&path, &prov(), &obs(), &steps(), None, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, EnsembleError::MissingDirectory { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("ens.h5") && msg.contains("does not exist"),
            "{msg}"
        );

        let path = dir.path().join("ens.h5");
        drop(create(&path));
        let err =
            EnsembleWriter::create(&path, &prov(), &obs(), &steps(), None, false).unwrap_err();
        assert!(matches!(err, EnsembleError::AlreadyExists { .. }), "{err}");
        let w = EnsembleWriter::create(&path, &prov(), &obs(), &[], None, true).unwrap();
        drop(w);
        assert!(read_ensemble(&path).unwrap().steps.is_empty());

        let p = dir.path().join("names.h5");
        for bad in ["", "a/b", "sweep", "."] {
            let o = [ObservableDef {
                name: bad.into(),
                len: 1,
                description: String::new(),
            }];
            let err = EnsembleWriter::create(&p, &prov(), &o, &[], None, false).unwrap_err();
            assert!(matches!(err, EnsembleError::InvalidName { .. }), "{err}");
        }
        let mut s = steps();
        s[0].columns.push("accepted".into());
        assert!(EnsembleWriter::create(&p, &prov(), &[], &s, None, false).is_err());
        let mut s = steps();
        s[1].label = "hmc".into();
        assert!(EnsembleWriter::create(&p, &prov(), &[], &s, None, false).is_err());
        let o = [ObservableDef {
            name: "x".into(),
            len: 0,
            description: String::new(),
        }];
        assert!(EnsembleWriter::create(&p, &prov(), &o, &[], None, false).is_err());
        let mut bad_prov = prov();
        bad_prov.run_card.push('\0');
        let err = EnsembleWriter::create(&p, &bad_prov, &[], &[], None, false).unwrap_err();
        assert!(err.to_string().contains("/run_card"), "{err}");
        assert!(!p.exists(), "a failed create leaves no file");
    }

    #[test]
    fn push_errors() {
        let _files = files();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ens.h5");
        let mut w = create(&path);
        assert!(matches!(
            w.push_measurement(0, &[1.0; 4]),
            Err(EnsembleError::Shape { .. })
        ));
        assert!(matches!(
            w.push_step_record(2, true, &[]),
            Err(EnsembleError::Invalid { .. })
        ));
        assert!(matches!(
            w.push_step_record(1, true, &[1.0]),
            Err(EnsembleError::Shape { .. })
        ));
        assert!(matches!(
            w.push_config(0, &[1.0; 15]),
            Err(EnsembleError::Shape { .. })
        ));
        assert_eq!(
            w.counts(),
            Counts {
                measurements: 0,
                steps: vec![0, 0],
                configs: 0
            }
        );
    }

    /// Child half of `resume_after_sigkill`: runs only when the parent sets the env variable.
    #[test]
    #[ignore = "helper process for resume_after_sigkill"]
    fn sigkill_child() {
        let Ok(dir) = std::env::var("LATFLOW_ENSEMBLE_SIGKILL_DIR") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let path = dir.join("ens.h5");
        let mut w = create(&path);
        push_range(&mut w, 0, 1200);
        let checkpoint = w.flush().unwrap();
        std::fs::write(
            dir.join("counts.json"),
            serde_json::to_string(&checkpoint).unwrap(),
        )
        .unwrap();
        push_range(&mut w, 1200, 3000);
        w.flush().unwrap();
        // Configurations are written through (lots of unflushed chunk-index updates); the
        // rest stays buffered.
        push_range(&mut w, 3000, 30000);
        std::fs::write(dir.join("ready"), b"").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(120));
    }

    #[test]
    fn resume_after_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let test_name = format!(
            "{}::sigkill_child",
            module_path!()
                .split_once("::")
                .map_or(module_path!(), |(_, rest)| rest)
        );
        let spawn_guard = OPEN_FILES.write().unwrap_or_else(|e| e.into_inner());
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                test_name.as_str(),
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LATFLOW_ENSEMBLE_SIGKILL_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(spawn_guard);
        let ready = dir.path().join("ready");
        let t0 = std::time::Instant::now();
        while !ready.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("child exited early ({status}): {err}");
            }
            if t0.elapsed().as_secs() > 120 {
                let _ = child.kill();
                panic!("child never got ready");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        let path = dir.path().join("ens.h5");
        let counts: Counts =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("counts.json")).unwrap())
                .unwrap();
        // The killed file reads exactly as it was at its last flush ...
        check_contents(&path, 3000);
        // ... and resumes to the checkpoint.
        let mut w =
            EnsembleWriter::resume(&path, "deadbeef", &obs(), &steps(), Some(&cdef()), &counts)
                .unwrap();
        check_contents(&path, 1200);
        push_range(&mut w, 1200, 1300);
        w.flush().unwrap();
        drop(w);
        check_contents(&path, 1300);
    }
}
