//! Reading ensembles into memory: one reader, [`read`], for plain (schema 1) and
//! replica-exchange (schema 2) files, both seen as one or more couplings.

use std::path::{Path, PathBuf};

use hdf5::{File, Group};

use super::*;

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
pub(super) fn read_provenance(path: &Path, file: &File) -> Result<Provenance, EnsembleError> {
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

///
/// The row datasets of one table (the observables and `sweep`; one step's `accepted` and
/// columns; `configs` and `configs_sweep`) grow together at every flush. A run killed in the
/// middle of a flush can leave them with different lengths (HDF5 writes the datasets' new
/// extents to disk in no particular order). A table whose datasets disagree is then read up to
/// the rows of the run's last checkpoint (`durable`: what `latflow run --resume` keeps, and the
/// rows the checkpoint's fsync made durable), provided every dataset holds them; without such a
/// checkpoint the disagreement is an error (a damaged file).
pub(super) fn read_group(
    path: &Path,
    file_len: u64,
    base: &Group,
    prefix: &str,
    durable: Option<&Counts>,
) -> Result<GroupData, EnsembleError> {
    // Observables.
    let opath = format!("{prefix}/observables");
    let og = open_group(path, base, "observables")?;
    let sweep_obj = format!("{opath}/sweep");
    let sweep_ds = open_dataset(path, &og, &opath, "sweep")?;
    let sweep_rows = rows_of(path, &sweep_ds, &sweep_obj, Some(1))?;
    let names = read_json_list(path, &og, &opath, "names")?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let object = format!("{opath}/{name}");
        let ds = open_dataset(path, &og, &opath, &name)?;
        let len = row_width(path, &ds, &object)?;
        let rows = rows_of(path, &ds, &object, None)?;
        tables.push((name, object, ds, len, rows));
    }
    let lengths: Vec<(&str, usize)> =
        std::iter::once((sweep_obj.as_str(), sweep_rows)).chain(tables.iter().map(|t| (t.1.as_str(), t.4))).collect();
    let n = table_rows(path, &lengths, durable.map(|c| c.measurements as usize))?;
    let sweeps = read_rows::<u64>(path, &sweep_ds, &sweep_obj, sweep_rows, 1, n, file_len)?;
    let mut observables = Vec::with_capacity(tables.len());
    for (name, object, ds, len, rows) in tables {
        let values = read_rows::<f64>(path, &ds, &object, rows, len, n, file_len)?;
        let description = read_str_attr(path, &ds, &object, "description")?;
        observables.push(ObservableData { name, len, description, values });
    }

    let steps = read_steps(path, file_len, base, prefix, durable)?;

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
            let sw = open_dataset(path, base, prefix, "configs_sweep")?;
            let lengths = [(cspath.as_str(), rows_of(path, &sw, &cspath, Some(1))?), (cpath.as_str(), rows_of(path, &ds, &cpath, None)?)];
            let count = table_rows(path, &lengths, durable.map(|c| c.configs as usize))?;
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

/// The rows of a table whose datasets (`lengths`: object, rows; the first is the reference)
/// have these lengths: all of them when they agree; when they do not, the checkpoint's
/// `durable` rows if every dataset holds them (see [`read_group`]); else an error naming the
/// first dataset that disagrees.
fn table_rows(path: &Path, lengths: &[(&str, usize)], durable: Option<usize>) -> Result<usize, EnsembleError> {
    let (reference, n) = lengths[0];
    match lengths.iter().find(|(_, r)| *r != n) {
        None => Ok(n),
        Some(&(object, rows)) => match durable {
            Some(m) if lengths.iter().all(|(_, r)| *r >= m) => Ok(m),
            _ => Err(shape_err(
                path,
                format!("dataset {object}"),
                format!(
                    "{rows} rows, but {reference} has {n} (a damaged file, or a run killed before its first checkpoint: \
                     no checkpoint says which rows are complete)"
                ),
            )),
        },
    }
}

/// The first `keep` rows of a row dataset of `rows` rows of `width` values.
fn read_rows<T: hdf5::H5Type>(
    path: &Path,
    ds: &hdf5::Dataset,
    object: &str,
    rows: usize,
    width: usize,
    keep: usize,
    file_len: u64,
) -> Result<Vec<T>, EnsembleError> {
    let elems = rows.checked_mul(width).ok_or_else(|| shape_err(path, format!("dataset {object}"), format!("{rows} x {width} values")))?;
    let mut v = read_all::<T>(path, ds, object, elems, file_len)?;
    v.truncate(keep * width);
    Ok(v)
}

/// Reads `{prefix}/steps/*`, sorted by step index.
pub(super) fn read_steps(
    path: &Path,
    file_len: u64,
    base: &Group,
    prefix: &str,
    durable: Option<&Counts>,
) -> Result<Vec<StepData>, EnsembleError> {
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
        let acc_rows = rows_of(path, &acc_ds, &acc_obj, Some(1))?;
        let mut tables = Vec::with_capacity(column_names.len());
        for c in column_names {
            let object = format!("{gpath}/{c}");
            let ds = open_dataset(path, &g, &gpath, &c)?;
            let rows = rows_of(path, &ds, &object, Some(1))?;
            tables.push((c, object, ds, rows));
        }
        let lengths: Vec<(&str, usize)> =
            std::iter::once((acc_obj.as_str(), acc_rows)).chain(tables.iter().map(|t| (t.1.as_str(), t.3))).collect();
        let m = table_rows(path, &lengths, durable.and_then(|c| c.steps.get(index)).map(|&r| r as usize))?;
        let accepted = read_rows::<u8>(path, &acc_ds, &acc_obj, acc_rows, 1, m, file_len)?;
        let mut columns = Vec::with_capacity(tables.len());
        for (c, object, ds, rows) in tables {
            columns.push((c, read_rows::<f64>(path, &ds, &object, rows, 1, m, file_len)?));
        }
        steps.push(StepData { label, kind, index, params, accepted, columns });
    }
    steps.sort_by_key(|s| s.index);
    Ok(steps)
}

/// Any ensemble file, read into memory as one or more couplings: a plain file (schema
/// version 1) is one coupling without a ladder; a replica-exchange file (schema version 2) is
/// one coupling per ladder value, with the replica paths and swap records in [`Ladder`].
/// Read a coupling's configurations with [`EnsembleFile::read_configs`].
#[derive(Debug, Clone)]
pub struct EnsembleFile {
    pub path: PathBuf,
    pub schema_version: u32,
    /// The root attributes (for a ladder, `theory_params` are those of the card's `[theory]`;
    /// each coupling's own are in its [`Ensemble::provenance`]).
    pub provenance: Provenance,
    /// The ensemble at each coupling: the root group of a plain file, `/replicas/<k>` of a
    /// replica-exchange file (with that coupling's `theory_params` and `model`).
    pub couplings: Vec<Ensemble>,
    /// The ladder of a replica-exchange file; `None` for a plain file.
    pub ladder: Option<Ladder>,
}

/// The ladder of a replica-exchange ensemble (`/replica_exchange`).
#[derive(Debug, Clone)]
pub struct Ladder {
    /// The ladder parameter.
    pub parameter: String,
    /// Its value at each coupling (one per entry of [`EnsembleFile::couplings`]).
    pub values: Vec<f64>,
    /// Sweep index of each row of `replica_coupling`.
    pub path_sweeps: Vec<u64>,
    /// Row-major `[n, K]`: the coupling index of replica r after sweep `path_sweeps[i]`.
    pub replica_coupling: Vec<u64>,
    /// The swap records of each `replica_exchange` step (columns pair, log_ratio, …).
    pub swaps: Vec<StepData>,
}

/// The one reader: opens and validates a plain (schema 1) or replica-exchange (schema 2)
/// file. A clear error (naming the path) for a missing file, a non-HDF5 or truncated/corrupt
/// file, a wrong schema version, or inconsistent dataset lengths; never panics on a bad file.
pub fn read(path: &Path) -> Result<EnsembleFile, EnsembleError> {
    hdf5::silence_errors(true);
    let file = open_file(path, false)?;
    let file_len = file_len(path)?;
    let schema_version = check_schema_version(path, &file)?;
    let provenance = read_provenance(path, &file)?;
    if schema_version == REPLICA_SCHEMA_VERSION {
        let (couplings, ladder) = read_ladder(path, file_len, &file, &provenance)?;
        return Ok(EnsembleFile { path: path.to_owned(), schema_version, provenance, couplings, ladder: Some(ladder) });
    }
    let checkpoint = durable_state(path, &provenance);
    let durable = checkpoint.as_ref().map(|c| &c.counts);
    let (observables, sweeps, steps, configs) = read_group(path, file_len, &file, "", durable)?;
    let plain = Ensemble {
        path: path.to_owned(),
        schema_version,
        provenance: provenance.clone(),
        observables,
        sweeps,
        steps,
        configs,
    };
    Ok(EnsembleFile { path: path.to_owned(), schema_version, provenance, couplings: vec![plain], ladder: None })
}

/// The checkpoint of the run that writes `path` (`PATH.ckpt`, as `latflow run` names it), if
/// there is a readable one of the same run (its card hash is the file's): the rows it records
/// are durable (see [`read_group`]).
fn durable_state(path: &Path, provenance: &Provenance) -> Option<crate::checkpoint::Checkpoint> {
    let mut ckpt = path.as_os_str().to_owned();
    ckpt.push(".ckpt");
    crate::checkpoint::Checkpoint::load(Path::new(&ckpt)).ok().filter(|c| c.card_hash == provenance.card_hash)
}

/// [`read`] for the command line, which must never hang on a damaged file: if the read has not
/// returned after `limit`, the process ends with exit code 1 and an error that names the file
/// (see [`exit_if_stuck`]).
pub fn read_or_exit_after(path: &Path, limit: std::time::Duration) -> Result<EnsembleFile, EnsembleError> {
    exit_if_stuck(path, Some(limit), || read(path))
}

/// Runs `f`, HDF5 work that opens the existing file `path` (reading its attributes), under a
/// time limit for the command line: if `limit` is `Some` and `f` has not returned after it, the
/// process ends with exit code 1 and an error that names the file. With `None`, `f` just runs.
///
/// HDF5 can loop forever inside its own parser on some damaged files (found by fuzzing: a
/// global heap whose free-space object has size 0 makes `H5HG__cache_heap_deserialize` stop
/// advancing while reading the variable-length provenance strings). Such a call cannot be
/// interrupted, and it holds HDF5's library lock, so the only clean way out is to end the
/// process; library users that cannot accept that pass `None`.
pub fn exit_if_stuck<T>(path: &Path, limit: Option<std::time::Duration>, f: impl FnOnce() -> T) -> T {
    let Some(limit) = limit else {
        return f();
    };
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let name = path.display().to_string();
    let guard = std::thread::Builder::new().name("read-guard".into()).spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!(
                "error: {name}: HDF5 has not finished reading the file after {} s; the file is damaged \
                 (HDF5 can loop forever on some damaged structures; LATFLOW_READ_TIMEOUT_S sets this limit)",
                limit.as_secs()
            );
            std::process::exit(1);
        }
    });
    let result = f();
    drop(done);
    if let Ok(g) = guard {
        let _ = g.join();
    }
    result
}

/// [`read`] for a file that must be plain (schema version 1): its one coupling. A
/// replica-exchange file is refused with a pointer to [`read`].
pub fn read_ensemble(path: &Path) -> Result<Ensemble, EnsembleError> {
    let mut f = read(path)?;
    match (f.ladder.is_some(), f.couplings.pop()) {
        (false, Some(e)) => Ok(e),
        _ => Err(invalid(
            path,
            "file",
            "is a replica-exchange ensemble (schema version 2: one ensemble per coupling under /replicas/<k>); \
             read it with ensemble::read",
        )),
    }
}

/// [`read`] for a file that must be a replica-exchange ensemble (schema version 2).
pub fn read_replica_ensemble(path: &Path) -> Result<EnsembleFile, EnsembleError> {
    let f = read(path)?;
    if f.ladder.is_none() {
        return Err(invalid(path, "file", "is not a replica-exchange ensemble (schema version 1)"));
    }
    Ok(f)
}

impl EnsembleFile {
    /// The ladder (parameter, values, replica paths, swap records), or `None` for a plain file.
    pub fn ladder(&self) -> Option<&Ladder> {
        self.ladder.as_ref()
    }

    /// Reads configurations `[start, start+count)` of coupling `k` (0 for a plain file) as a
    /// flat row-major Vec (`count * config_len` values). Errors if `k` or the range exceeds
    /// what the file holds.
    pub fn read_configs(&self, k: usize, start: usize, count: usize) -> Result<Vec<f64>, EnsembleError> {
        if k >= self.couplings.len() {
            return Err(invalid(&self.path, "file", format!("no coupling {k} (the file has {})", self.couplings.len())));
        }
        read_configs_in(&self.path, self.ladder.as_ref().map(|_| k), start, count)
    }
}

/// The couplings and the ladder of a replica-exchange file.
fn read_ladder(path: &Path, file_len: u64, file: &File, provenance: &Provenance) -> Result<(Vec<Ensemble>, Ladder), EnsembleError> {
    let schema_version = REPLICA_SCHEMA_VERSION;
    let xg = open_group(path, file, "replica_exchange")?;
    let parameter = read_str_attr(path, &xg, "/replica_exchange", "parameter")?;
    let values_text = read_str_attr(path, &xg, "/replica_exchange", "values")?;
    let values: Vec<f64> = serde_json::from_str(&values_text).map_err(|e| {
        corrupt(path, "attribute /replica_exchange/values", format!("expected a JSON array of numbers: {e}"))
    })?;
    let k = values.len();
    let rg = open_group(path, file, "replicas")?;
    let checkpoint = durable_state(path, provenance);
    let mut replicas = Vec::with_capacity(k);
    for i in 0..k {
        let prefix = replica_group(i);
        let g = open_group(path, &rg, &i.to_string())?;
        let mut prov = provenance.clone();
        prov.theory_params = read_str_attr(path, &g, &prefix, "theory_params")?;
        prov.model = read_str_attr(path, &g, &prefix, "model")?;
        let durable = checkpoint.as_ref().and_then(|c| c.replica.as_ref()).and_then(|r| r.counts.get(i));
        let (observables, sweeps, steps, configs) = read_group(path, file_len, &g, &prefix, durable)?;
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
    let exchange = checkpoint.as_ref().and_then(|c| c.replica.as_ref()).map(|r| &r.exchange_counts);
    let swaps = read_steps(path, file_len, &xg, "/replica_exchange", exchange)?;
    Ok((replicas, Ladder { parameter, values, path_sweeps, replica_coupling, swaps }))
}

/// Reads configurations `[start, start+count)` of a plain file as a flat row-major Vec
/// (`count * config_len` values). Errors if the range exceeds the stored configurations.
/// [`EnsembleFile::read_configs`] reads those of any coupling of any file.
pub fn read_configs(path: &Path, start: usize, count: usize) -> Result<Vec<f64>, EnsembleError> {
    read_configs_in(path, None, start, count)
}

pub(super) fn read_configs_in(path: &Path, replica: Option<usize>, start: usize, count: usize) -> Result<Vec<f64>, EnsembleError> {
    hdf5::silence_errors(true);
    let file = open_file(path, false)?;
    let version = check_schema_version(path, &file)?;
    let (base, prefix): (Group, String) = match replica {
        None if version == SCHEMA_VERSION => ((**file).clone(), String::new()),
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
    let len = file_len(path)?;
    check_size(path, &cpath, count, config_len, 8, len)?;
    check_chunks(path, &ds, &cpath, len)?;
    let block = ds
        .read_slice_2d::<f64, _>((start..end, ..))
        .map_err(h5(path, format!("dataset {cpath} (read)")))?;
    Ok(block.iter().copied().collect())
}
