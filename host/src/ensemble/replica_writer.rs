//! Replica-exchange files (schema version 2) through the one [`EnsembleWriter`]: its ladder
//! constructors, the swap records and the replica paths of `/replica_exchange`.

use std::path::Path;

use hdf5::{Dataset, File};

use super::writer::{open_steps, GroupSlots, StepSlot};
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

/// What a replica-exchange file holds beyond the per-coupling rows: the ladder parameter, the
/// couplings, and the `replica_exchange` steps whose swap records it stores.
#[derive(Debug, Clone, Copy)]
pub struct LadderDef<'a> {
    /// The theory parameter the ladder varies.
    pub parameter: &'a str,
    /// One per coupling, in ladder order (at least 2).
    pub replicas: &'a [ReplicaDef],
    /// The `replica_exchange` steps, in card order.
    pub exchange_steps: &'a [StepDef],
}

/// HDF5 path of coupling k's group.
pub fn replica_group(k: usize) -> String {
    format!("/replicas/{k}")
}

/// The buffered rows of `/replica_exchange`: one slot per swap step, and the replica paths (the
/// coupling of each replica after each measured sweep).
pub(super) struct ExchangeSlots {
    steps: Vec<StepSlot>,
    n_replicas: usize,
    path_sweep: Dataset,
    path_ds: Dataset,
    path_on_disk: u64,
    buf_path_sweeps: Vec<u64>,
    /// Row-major `[rows, n_replicas]`.
    buf_path: Vec<u64>,
}

impl ExchangeSlots {
    /// Opens `/replica_exchange` and truncates its rows to `counts`.
    fn open(path: &Path, file: &File, n_replicas: usize, exchange_steps: &[StepDef], counts: &Counts) -> Result<Self, EnsembleError> {
        let xg = open_group(path, file, "replica_exchange")?;
        let steps = open_steps(path, &xg, "/replica_exchange", exchange_steps, &counts.steps)?;
        let path_sweep = open_dataset(path, &xg, "/replica_exchange", "sweep")?;
        truncate_rows(path, &path_sweep, "/replica_exchange/sweep", counts.measurements)?;
        let path_ds = open_dataset(path, &xg, "/replica_exchange", "replica_coupling")?;
        let width = row_width(path, &path_ds, "/replica_exchange/replica_coupling")?;
        if width != n_replicas {
            return Err(mismatch(
                path,
                "dataset /replica_exchange/replica_coupling",
                format!("file has {width} replicas, this run defines {n_replicas}"),
            ));
        }
        truncate_rows(path, &path_ds, "/replica_exchange/replica_coupling", counts.measurements)?;
        Ok(Self {
            steps,
            n_replicas,
            path_sweep,
            path_ds,
            path_on_disk: counts.measurements,
            buf_path_sweeps: Vec::new(),
            buf_path: Vec::new(),
        })
    }

    /// Appends the buffered swap records and paths to the datasets (no flush).
    pub(super) fn write(&mut self, path: &Path) -> Result<(), EnsembleError> {
        for s in &mut self.steps {
            s.write(path)?;
        }
        let nb = self.buf_path_sweeps.len();
        if nb > 0 {
            let n0 = self.path_on_disk as usize;
            let n1 = n0 + nb;
            append_1d(path, &self.path_sweep, "/replica_exchange/sweep", n0, &self.buf_path_sweeps)?;
            let obj = "/replica_exchange/replica_coupling";
            self.path_ds.resize([n1, self.n_replicas]).map_err(h5(path, format!("dataset {obj} (resize)")))?;
            let mut col = vec![0u64; nb];
            for j in 0..self.n_replicas {
                for (i, v) in col.iter_mut().enumerate() {
                    *v = self.buf_path[i * self.n_replicas + j];
                }
                self.path_ds.write_slice(&col[..], (n0..n1, j)).map_err(h5(path, format!("dataset {obj} (write)")))?;
            }
            self.path_on_disk = n1 as u64;
            self.buf_path_sweeps.clear();
            self.buf_path.clear();
        }
        Ok(())
    }

    /// Rows written to the datasets (on disk after the file's sync).
    pub(super) fn on_disk_counts(&self) -> Counts {
        Counts { measurements: self.path_on_disk, steps: self.steps.iter().map(|s| s.on_disk).collect(), configs: 0 }
    }

    /// Rows including those still buffered.
    pub(super) fn counts(&self) -> Counts {
        Counts {
            measurements: self.path_on_disk + self.buf_path_sweeps.len() as u64,
            steps: self.steps.iter().map(|s| s.on_disk + s.pending()).collect(),
            configs: 0,
        }
    }
}

/// Opens every coupling's group under `/replicas` and `/replica_exchange`, truncated to `counts`.
fn open_ladder(
    path: &Path,
    file: &File,
    ladder: &LadderDef<'_>,
    defs: (&[ObservableDef], &[StepDef], Option<&ConfigDef>),
    counts: &FileCounts,
) -> Result<(Vec<GroupSlots>, Option<ExchangeSlots>), EnsembleError> {
    let (observables, steps, configs) = defs;
    let rg = open_group(path, file, "replicas")?;
    let mut couplings = Vec::with_capacity(ladder.replicas.len());
    for (k, c) in counts.couplings.iter().enumerate() {
        let g = open_group(path, &rg, &k.to_string())?;
        couplings.push(GroupSlots::open(path, &g, &replica_group(k), observables, steps, configs, c)?);
    }
    let zero = Counts { measurements: 0, steps: vec![0; ladder.exchange_steps.len()], configs: 0 };
    let x = counts.exchange.as_ref().unwrap_or(&zero);
    let exchange = ExchangeSlots::open(path, file, ladder.replicas.len(), ladder.exchange_steps, x)?;
    Ok((couplings, Some(exchange)))
}

impl EnsembleWriter {
    /// Creates a replica-exchange file: one ensemble per coupling under `/replicas/<k>` (the
    /// layout of a plain file's root, so each is "the ensemble at coupling k"), and the swap
    /// records and replica paths under `/replica_exchange`. `steps` are the per-coupling chain
    /// steps (the same at every coupling). Validation and clean-up as for
    /// [`create`](Self::create).
    pub fn create_ladder(
        path: &Path,
        prov: &Provenance,
        ladder: &LadderDef<'_>,
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        overwrite: bool,
    ) -> Result<Self, EnsembleError> {
        hdf5::silence_errors(true);
        validate_defs(path, observables, steps, configs)?;
        validate_defs(path, &[], ladder.exchange_steps, None)?;
        let replicas = ladder.replicas;
        if replicas.len() < 2 {
            return Err(invalid(path, "/replicas", "a replica ladder needs at least 2 couplings"));
        }
        let parameter = ladder.parameter;
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
            create_steps(path, &xg, "/replica_exchange", ladder.exchange_steps)?;
            file.flush().map_err(h5(path, "file (flush)"))?;
            let zero = FileCounts {
                couplings: vec![Counts { measurements: 0, steps: vec![0; steps.len()], configs: 0 }; replicas.len()],
                exchange: None,
            };
            open_ladder(path, &file, ladder, (observables, steps, configs), &zero)
        })();
        Self::finish_created(path, file, made)
    }

    /// Reopens a replica-exchange file and truncates it to the checkpoint's counts (one per
    /// coupling, and `/replica_exchange`'s; see [`resume`](Self::resume)). The ladder's values
    /// are the card's, which the card hash already ties to the file.
    pub fn resume_ladder(
        path: &Path,
        card_hash: &str,
        ladder: &LadderDef<'_>,
        observables: &[ObservableDef],
        steps: &[StepDef],
        configs: Option<&ConfigDef>,
        counts: &FileCounts,
    ) -> Result<Self, EnsembleError> {
        hdf5::silence_errors(true);
        validate_defs(path, observables, steps, configs)?;
        let file = open_for_resume(path, card_hash, REPLICA_SCHEMA_VERSION)?;
        let n_replicas = ladder.replicas.len();
        let exchange_counts = counts.exchange.as_ref().map_or(0, |x| x.steps.len());
        if counts.couplings.len() != n_replicas || exchange_counts != ladder.exchange_steps.len() {
            return Err(invalid(
                path,
                "checkpoint counts",
                format!(
                    "{} replica counts and {exchange_counts} swap-step counts for {n_replicas} replicas and {} swap steps",
                    counts.couplings.len(),
                    ladder.exchange_steps.len()
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
        check_steps(path, &xg, "/replica_exchange", ladder.exchange_steps)?;
        let (couplings, exchange) = open_ladder(path, &file, ladder, (observables, steps, configs), counts)?;
        Self::finish(path, file, couplings, exchange)
    }

    fn exchange(&mut self, what: &str) -> Result<&mut ExchangeSlots, EnsembleError> {
        match &mut self.exchange {
            Some(x) => Ok(x),
            None => Err(invalid(&self.path, what, "a plain ensemble has no replica exchange")),
        }
    }

    /// Buffers one swap record of `replica_exchange` step `step` (index into its StepDefs).
    /// Error on a plain file or an unknown step.
    pub fn push_swap_record(&mut self, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        let x = self.exchange("swap record")?;
        let n = x.steps.len();
        let Some(slot) = x.steps.get_mut(step) else {
            return Err(invalid(&path, "swap record", format!("swap step {step} does not exist ({n} defined)")));
        };
        slot.push(&path, accepted, columns)
    }

    /// Buffers one row of the replica paths: the coupling index of each replica after `sweep`.
    /// Error on a plain file or a row of the wrong length.
    pub fn push_path(&mut self, sweep: u64, coupling_of_replica: &[u64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        let x = self.exchange("row of /replica_exchange/replica_coupling")?;
        if coupling_of_replica.len() != x.n_replicas {
            return Err(shape_err(
                &path,
                "row of /replica_exchange/replica_coupling",
                format!("got {} values, expected {}", coupling_of_replica.len(), x.n_replicas),
            ));
        }
        x.buf_path_sweeps.push(sweep);
        x.buf_path.extend_from_slice(coupling_of_replica);
        Ok(())
    }
}
