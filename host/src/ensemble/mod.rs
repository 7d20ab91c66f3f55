//! HDF5 ensemble files: written by runs, read by `analyse` / `inspect` (and by h5py).
//!
//! A run appends measurements, per-step records and (optionally) configurations as it goes,
//! calls [`EnsembleWriter::flush`] at every checkpoint and stores the returned [`FileCounts`]
//! in the checkpoint. One writer serves every run: a plain file is one coupling at the root, a
//! replica ladder one coupling per `/replicas/<k>` plus `/replica_exchange`. After a crash (even SIGKILL) [`EnsembleWriter::resume`] reopens the file and
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
//! A replica-exchange run ([`EnsembleWriter::create_ladder`]) writes the same root attributes (with
//! `schema_version = 2`), the layout above once per coupling under `/replicas/<k>` (attrs
//! `index`, `parameter`, `value`, `theory_params`, `model`), and `/replica_exchange` (attrs
//! `parameter`, `values`): `sweep` u64 [n], `replica_coupling` u64 [n, K] (the coupling of each
//! replica after that sweep) and `steps/<label>/` (one row per attempted swap: `accepted`, `pair`,
//! `log_ratio`, `delta_s`, `delta_log_q`). Files without replicas keep schema version 1.
//! [`read`] reads both, as one or more couplings ([`EnsembleFile`]): a plain file is one coupling
//! without a ladder.
//!
//! All row datasets are chunked and resizable along axis 0 (`maxshape = (None, ...)`), and
//! every chunk carries a Fletcher32 checksum: a damaged chunk is a read error that names the
//! file and the dataset, never silently wrong data.
//! Observable and step rows are numbered independently: measurement row `i` of every
//! observable belongs to sweep `observables/sweep[i]`; step rows have no sweep column.
//!
//! # Crash safety
//!
//! The writer opens the file with metadata-cache evictions disabled, so dirty HDF5 metadata
//! (dataset extents, chunk indices) is written at [`EnsembleWriter::flush`] (which also
//! `fsync`s) rather than whenever the cache fills up (the cost: the metadata cache grows with
//! the file, a few MB for large runs). A flush still updates the file in place: it rewrites
//! the last, partly filled chunk of each dataset, the object headers and the chunk indices. A
//! process killed in the middle of those writes would leave some done and some not, or one
//! torn at a page boundary (a chunk whose Fletcher32 checksum no longer matches). So the
//! writer's files go through latflow's own HDF5 driver (`journal`): before a committed byte
//! is overwritten, its old value goes to an undo journal `<file>.journal`, and each flush
//! commits by voiding it. Whoever opens the file next (a resume, `analyze`, `inspect`) first
//! rolls a journal back, so a killed writer's file reads, bit for bit, as at its last flush;
//! [`EnsembleWriter::resume`] (or `resume_ladder`) then truncates to the checkpoint counts. A
//! file read by another program (h5py) before latflow has opened it again may still hold the
//! half-done flush. Files use the HDF5 1.8 object format (superblock v2), which has no "file
//! is open for writing" flag, so a killed writer never leaves a file that needs `h5clear`.

use std::io;
use std::path::{Path, PathBuf};

mod h5;
mod journal;
pub(crate) use h5::close_on_exec;
mod reader;
mod replica_writer;
mod schema;
mod writer;
#[cfg(test)]
mod tests;

use h5::*;
use schema::*;

pub use reader::{
    exit_if_stuck, read, read_configs, read_ensemble, read_or_exit_after, read_replica_ensemble, ConfigInfo, Ensemble, EnsembleFile,
    Ladder, ObservableData, StepData,
};
pub use replica_writer::{replica_group, LadderDef, ReplicaDef};
pub use writer::{EnsembleWriter, FileCounts};

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
