//! Writing replica-exchange ensembles (schema version 2): [`ReplicaWriter`].

use std::fmt;

use super::writer::{open_steps, GroupSlots, StepSlot};
use std::path::{Path, PathBuf};

use hdf5::{Dataset, File};

use super::*;

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
    file: LockedFile,
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
        file: LockedFile,
        n_replicas: usize,
        (replicas, exchange, path_sweep, path_ds, path_on_disk): (Vec<GroupSlots>, Vec<StepSlot>, Dataset, Dataset, u64),
    ) -> Result<Self, EnsembleError> {
        let mut w = Self {
            path: path.to_owned(),
            file,
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
        self.file.sync(&path)?;
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

impl RunWriter for ReplicaWriter {
    /// The counts of every coupling's group, and of `/replica_exchange`.
    type Counts = (Vec<Counts>, Counts);

    fn push_coupling_measurement(&mut self, k: usize, sweep: u64, values: &[f64]) -> Result<(), EnsembleError> {
        self.push_measurement(k, sweep, values)
    }

    fn push_coupling_step_record(&mut self, k: usize, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        self.push_step_record(k, step, accepted, columns)
    }

    fn push_coupling_config(&mut self, k: usize, sweep: u64, config: &[f64]) -> Result<(), EnsembleError> {
        self.push_config(k, sweep, config)
    }

    fn flush_rows(&mut self) -> Result<(Vec<Counts>, Counts), EnsembleError> {
        self.flush()
    }
}
