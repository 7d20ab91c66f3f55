//! Writing ensembles: the buffered slots of one coupling's group, and [`EnsembleWriter`], the
//! one writer of every run (a plain file, schema version 1, or a replica ladder, schema version 2,
//! whose constructors and swap rows are in `replica_writer.rs`).

use std::fmt;

use std::path::{Path, PathBuf};

use hdf5::{Dataset, Group};

use super::replica_writer::ExchangeSlots;
use super::*;

pub(super) struct ObsSlot {
    pub(super) len: usize,
    /// Offset of this observable in a measurement row.
    pub(super) offset: usize,
    pub(super) ds: Dataset,
    pub(super) object: String,
}

pub(super) struct StepSlot {
    pub(super) ncols: usize,
    pub(super) accepted: Dataset,
    pub(super) columns: Vec<(String, Dataset)>,
    pub(super) group_path: String,
    pub(super) on_disk: u64,
    pub(super) buf_accepted: Vec<u8>,
    /// Row-major `[rows, ncols]`.
    pub(super) buf_columns: Vec<f64>,
}

impl StepSlot {
    pub(super) fn push(&mut self, path: &Path, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
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
    pub(super) fn write(&mut self, path: &Path) -> Result<(), EnsembleError> {
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

    pub(super) fn pending(&self) -> u64 {
        self.buf_accepted.len() as u64
    }
}

pub(super) struct ConfigSlot {
    pub(super) config_len: usize,
    pub(super) ds: Dataset,
    pub(super) sweeps: Dataset,
    /// `{prefix}/configs`, for messages.
    pub(super) object: String,
    /// Rows written to the datasets (configurations are written through, not buffered).
    pub(super) written: u64,
    /// Rows on disk as of the last flush.
    pub(super) on_disk: u64,
}

/// The row datasets of one ensemble: at the file root (schema version 1), or in a coupling's
/// group `/replicas/<k>` of a replica-exchange file (schema version 2).
pub(super) struct GroupSlots {
    /// HDF5 path of the group: "" for the root, `/replicas/<k>` otherwise (for messages).
    pub(super) prefix: String,
    pub(super) observables: Vec<ObsSlot>,
    pub(super) row_len: usize,
    pub(super) sweep: Dataset,
    pub(super) meas_on_disk: u64,
    pub(super) buf_sweeps: Vec<u64>,
    /// Row-major `[rows, row_len]`.
    pub(super) buf_values: Vec<f64>,
    pub(super) steps: Vec<StepSlot>,
    pub(super) configs: Option<ConfigSlot>,
}


/// Opens `{prefix}/steps/<label>` of every step and truncates each to its count.
pub(super) fn open_steps(path: &Path, base: &Group, prefix: &str, steps: &[StepDef], counts: &[u64]) -> Result<Vec<StepSlot>, EnsembleError> {
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
    pub(super) fn open(
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

    pub(super) fn push_measurement(&mut self, path: &Path, sweep: u64, values: &[f64]) -> Result<(), EnsembleError> {
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

    pub(super) fn push_step_record(&mut self, path: &Path, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        let n = self.steps.len();
        let Some(slot) = self.steps.get_mut(step) else {
            return Err(invalid(path, "step record", format!("step {step} does not exist ({n} steps defined)")));
        };
        slot.push(path, accepted, columns)
    }

    pub(super) fn push_config(&mut self, path: &Path, sweep: u64, config: &[f64]) -> Result<(), EnsembleError> {
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
    pub(super) fn write(&mut self, path: &Path) -> Result<(), EnsembleError> {
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
    pub(super) fn synced(&mut self) {
        if let Some(c) = self.configs.as_mut() {
            c.on_disk = c.written;
        }
    }

    pub(super) fn on_disk_counts(&self) -> Counts {
        Counts {
            measurements: self.meas_on_disk,
            steps: self.steps.iter().map(|s| s.on_disk).collect(),
            configs: self.configs.as_ref().map_or(0, |c| c.on_disk),
        }
    }

    pub(super) fn counts(&self) -> Counts {
        Counts {
            measurements: self.meas_on_disk + self.buf_sweeps.len() as u64,
            steps: self.steps.iter().map(|s| s.on_disk + s.pending()).collect(),
            configs: self.configs.as_ref().map_or(0, |c| c.written),
        }
    }
}

/// What a flush leaves on disk, and what a checkpoint records: the rows of each coupling's group
/// (one for a plain file) and, for a replica ladder, those of `/replica_exchange`
/// (`measurements` = rows of the replica paths, `steps` = swap records per swap step).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileCounts {
    /// Per coupling, in ladder order; never empty for a writer's counts.
    pub couplings: Vec<Counts>,
    /// `/replica_exchange`'s rows; `None` for a plain file.
    pub exchange: Option<Counts>,
}

impl FileCounts {
    /// Coupling 0's counts: all of a plain file's rows.
    pub fn first(mut self) -> Counts {
        if self.couplings.is_empty() {
            Counts::default()
        } else {
            self.couplings.swap_remove(0)
        }
    }
}

/// Appends rows to an ensemble file: the one writer of plain runs and replica ladders. A plain
/// file has one coupling, `k = 0`, at the root; a ladder has one group per coupling under
/// `/replicas/<k>` plus the swap records and replica paths of `/replica_exchange` (created by
/// [`create_ladder`](Self::create_ladder)). Measurement and step rows are buffered in memory and
/// written by [`flush`](Self::flush); configurations (potentially large) are written to the
/// dataset at once but, like everything else, are only guaranteed on disk after `flush`.
///
/// Dropping the writer does not flush: rows pushed since the last `flush` are lost (or, for
/// configurations, discarded by the next `resume`). After any error the writer should be
/// dropped; the file can be resumed from the last checkpoint.
pub struct EnsembleWriter {
    pub(super) path: PathBuf,
    /// One per coupling: the root group of a plain file, `/replicas/<k>` of a ladder.
    pub(super) couplings: Vec<GroupSlots>,
    /// A ladder's `/replica_exchange` rows; `None` for a plain file.
    pub(super) exchange: Option<ExchangeSlots>,
    /// Last, so that it drops last: HDF5 closes the file (its last writes, the journal's
    /// commit) only once the datasets above are closed, and the lock must outlive that.
    pub(super) file: LockedFile,
}

impl fmt::Debug for EnsembleWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnsembleWriter")
            .field("path", &self.path)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl EnsembleWriter {
    /// Creates a new plain file (fails if the parent directory is missing, with a clear message;
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
            GroupSlots::open(path, &file, "", observables, steps, configs, &counts)
        })();
        Self::finish_created(path, file, made.map(|slots| (vec![slots], None)))
    }

    /// The writer over freshly opened slots, flushed once; a failure removes the half-made file.
    pub(super) fn finish_created(
        path: &Path,
        file: LockedFile,
        slots: Result<(Vec<GroupSlots>, Option<ExchangeSlots>), EnsembleError>,
    ) -> Result<Self, EnsembleError> {
        match slots.and_then(|(couplings, exchange)| Self::finish(path, file, couplings, exchange)) {
            Ok(w) => Ok(w),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    pub(super) fn finish(
        path: &Path,
        file: LockedFile,
        couplings: Vec<GroupSlots>,
        exchange: Option<ExchangeSlots>,
    ) -> Result<Self, EnsembleError> {
        let mut w = Self { path: path.to_owned(), file, couplings, exchange };
        w.flush()?;
        Ok(w)
    }

    /// Reopens a plain file for appending and truncates every dataset to `counts` (rows written
    /// after the last checkpoint are discarded). Checks that the file's card_hash equals
    /// `card_hash` and that the observables/steps/config defs match exactly (names, order,
    /// lengths, descriptions, kinds, indices, params, columns, config shape); errors otherwise.
    /// Also errors if the file holds fewer rows than `counts` claims. The truncation is flushed
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
        Self::finish(path, file, vec![slots], None)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of couplings: 1 for a plain file, the ladder's length otherwise.
    pub fn couplings(&self) -> usize {
        self.couplings.len()
    }

    fn coupling(&mut self, k: usize) -> Result<&mut GroupSlots, EnsembleError> {
        let n = self.couplings.len();
        match self.couplings.get_mut(k) {
            Some(slots) => Ok(slots),
            None if self.exchange.is_none() => Err(invalid(
                &self.path,
                "/",
                format!("coupling {k} does not exist (a plain ensemble has one coupling, 0)"),
            )),
            None => Err(invalid(&self.path, "/replicas", format!("replica {k} does not exist ({n} defined)"))),
        }
    }

    /// Buffers one measurement row of coupling `k`: `values` is the concatenation of all
    /// observables in definition order (total length = Σ len). Error on an unknown coupling or a
    /// length mismatch.
    pub fn push_measurement(&mut self, k: usize, sweep: u64, values: &[f64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        self.coupling(k)?.push_measurement(&path, sweep, values)
    }

    /// Buffers one record of chain step `step` (index into the StepDefs) at coupling `k`:
    /// accepted flag and one value per column. Error on an unknown coupling or step, or a wrong
    /// number of columns.
    pub fn push_step_record(&mut self, k: usize, step: usize, accepted: bool, columns: &[f64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        self.coupling(k)?.push_step_record(&path, step, accepted, columns)
    }

    /// Appends one configuration of coupling `k` (length config_len) with its sweep index. It is
    /// written to the dataset at once (configurations can be large), but only guaranteed on
    /// disk after [`flush`](Self::flush). Error if the file stores no configurations, on an
    /// unknown coupling or on a length mismatch.
    pub fn push_config(&mut self, k: usize, sweep: u64, config: &[f64]) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        self.coupling(k)?.push_config(&path, sweep, config)
    }

    /// Appends all buffered rows to the datasets (resize + write slab), then flushes the file to
    /// disk (HDF5 flush and fsync). Returns the counts now on disk — what a checkpoint records.
    pub fn flush(&mut self) -> Result<FileCounts, EnsembleError> {
        let path = self.path.clone();
        for slots in &mut self.couplings {
            slots.write(&path)?;
        }
        if let Some(x) = &mut self.exchange {
            x.write(&path)?;
        }
        self.file.sync(&path)?;
        for slots in &mut self.couplings {
            slots.synced();
        }
        Ok(FileCounts {
            couplings: self.couplings.iter().map(GroupSlots::on_disk_counts).collect(),
            exchange: self.exchange.as_ref().map(ExchangeSlots::on_disk_counts),
        })
    }

    /// A flush's writes without its `fsync` and commit: what a writer killed after those
    /// writes leaves on disk (for the journal's tests).
    #[cfg(test)]
    pub(super) fn write_uncommitted(&mut self) -> Result<(), EnsembleError> {
        let path = self.path.clone();
        for slots in &mut self.couplings {
            slots.write(&path)?;
        }
        if let Some(x) = &mut self.exchange {
            x.write(&path)?;
        }
        self.file.flush().map_err(h5(&path, "file (flush)"))
    }

    /// Row counts including rows pushed since the last flush.
    pub fn counts(&self) -> FileCounts {
        FileCounts {
            couplings: self.couplings.iter().map(GroupSlots::counts).collect(),
            exchange: self.exchange.as_ref().map(ExchangeSlots::counts),
        }
    }
}
