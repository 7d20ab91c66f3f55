//! The one sweep loop of `latflow run`, and the interfaces it drives.
//!
//! A run is a [`Sampler`] (a plain chain at one coupling, or a replica ladder of several
//! couplings with swaps) and the one [`EnsembleWriter`] of its file. [`sweep_loop`] sweeps until
//! the card's total, measures and stores after thermalisation, and checkpoints as the card
//! says; the samplers say what a sweep, a measurement, a stored row and a checkpoint are.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::card::{RunCard, StartChoice, StepCard};
use crate::chain::Chain;
use crate::checkpoint::Checkpoint;
use crate::chain::StepRecord;
use crate::ensemble::{EnsembleWriter, FileCounts, StepDef};
use crate::plugin::{ModelHandle, TheoryHandle};
use crate::setup::{checkpoint_due, progress_bar, step_labels, OutputFiles, RunOptions};
use crate::streams::{stream, Slot, StreamUse};

/// A Markov-chain sampler of one or more couplings, driven by [`sweep_loop`].
pub trait Sampler {
    /// One sweep; `sweep` is its index. An error names the card file (`file`), the step, the
    /// coupling where there are several, and the sweep.
    fn sweep(&mut self, file: &str, sweep: u64) -> Result<()>;
    /// Every coupling's measurement of its current configuration, in coupling order.
    fn measure(&self, file: &str, sweep: u64) -> Result<Vec<Vec<f64>>>;
    /// Adds the last sweep's accept decisions to the acceptance shown by [`Self::progress`].
    fn tally(&mut self);
    /// Collective, before [`Self::store`] on a measured sweep: a sampler spread over ranks
    /// brings what the root stores (records, and configurations when `save_config`) to it. By
    /// default nothing (one rank holds everything).
    fn collect(&mut self, save_config: bool) -> Result<()> {
        let _ = save_config;
        Ok(())
    }
    /// Appends the last sweep's step records and the measurements `values` (from
    /// [`Self::measure`]) as measurement row `sweep`, and every coupling's configuration when
    /// `save_config`.
    fn store(&self, writer: &mut EnsembleWriter, values: &[Vec<f64>], sweep: u64, save_config: bool) -> Result<()>;
    /// The checkpoint after `sweeps_done` sweeps, given the writer's row counts at that point.
    /// Collective: every rank calls it (a sampler spread over ranks gathers its state); only
    /// the root's is saved, and only the root's `counts` are real.
    fn checkpoint(&self, hash: &str, sweeps_done: u64, counts: FileCounts) -> Result<Checkpoint>;
    /// The progress bar's message: the acceptance so far.
    fn progress(&self) -> String;
}

/// Sweeps `sampler` from `sweeps_done` to the card's total, storing records, measurements and
/// configurations after thermalisation and checkpointing (`hash` is the run hash) as the card
/// says. A fresh run that fails before its first checkpoint leaves nothing resumable: its file
/// is removed.
///
/// On a job of several ranks every rank runs this loop; only the root has a `writer` (the
/// others pass `None`), stores and saves checkpoints, and whether a checkpoint is due is the
/// root's decision, shared with every rank.
pub fn sweep_loop<S: Sampler>(
    card: &RunCard,
    out: &OutputFiles,
    hash: &str,
    sampler: &mut S,
    mut writer: Option<EnsembleWriter>,
    mut sweeps_done: u64,
    opts: &RunOptions,
) -> Result<()> {
    let file = card.path.display().to_string();
    let total = card.run.total_sweeps();
    let therm = card.run.thermalization;
    let job = &opts.job;
    let bar = progress_bar(total, sweeps_done, opts.quiet || !job.is_root(), "sweeps");
    let mut last_checkpoint = Instant::now();
    let mut checkpointed = opts.resume;
    while sweeps_done < total {
        let measured = match sampler.sweep(&file, sweeps_done) {
            Err(e) => Err(e),
            Ok(()) if sweeps_done >= therm => sampler.measure(&file, sweeps_done).map(Some),
            Ok(()) => Ok(None),
        };
        let values = match measured {
            Ok(v) => v,
            Err(e) => {
                // keep what is on disk readable; the last checkpoint stays the resume point
                if let Some(mut w) = writer.take() {
                    let _ = w.flush();
                    drop(w);
                    out.discard_unless(checkpointed);
                }
                return Err(e);
            }
        };
        sampler.tally();
        if let Some(values) = values {
            let save_config = card.run.save_every > 0 && (sweeps_done - therm).is_multiple_of(card.run.save_every);
            sampler.collect(save_config)?;
            if let Some(w) = writer.as_mut() {
                sampler.store(w, &values, sweeps_done, save_config)?;
            }
        }
        sweeps_done += 1;
        if job.root_decides(checkpoint_due(card, &mut last_checkpoint, sweeps_done, total))? {
            let counts = match writer.as_mut() {
                Some(w) => w.flush()?,
                None => Default::default(),
            };
            let ck = sampler.checkpoint(hash, sweeps_done, counts)?;
            if job.is_root() {
                ck.save(&out.checkpoint)?;
            }
            checkpointed = true;
        }
        bar.set_position(sweeps_done);
        if sweeps_done.is_multiple_of(16) {
            bar.set_message(sampler.progress());
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The starting configuration of a plain chain or a coupling slot (`slot`), drawn from its own
/// stream `StreamUse::Init { slot }`: the card's `run.start` from the theory, or one sample
/// of `model` for `start = "model"`, or the stored configuration of `start = { file = … }`
/// (checked against the theory's layout; its reading is guarded by `read_limit`, see
/// [`crate::ensemble::exit_if_stuck`]). On resume the checkpoint's configuration replaces it.
pub fn initial_config(
    card: &RunCard,
    theory: &TheoryHandle,
    model: Option<&ModelHandle>,
    slot: Slot,
    read_limit: Option<std::time::Duration>,
) -> Result<Vec<f64>> {
    let file = card.path.display().to_string();
    let mut init = stream(card.run.seed, StreamUse::Init { slot }).with_context(|| format!("{file}: run.start"))?;
    let start = card.run.start.clone().unwrap_or(StartChoice::Cold);
    if let StartChoice::File(f) = &start {
        let loaded = crate::ensemble::exit_if_stuck(&f.file, read_limit, || crate::ildg::start::load(&f.file, f.index, theory.layout()))
            .with_context(|| format!("{file}: run.start"))?;
        return Ok(loaded.config);
    }
    Ok(match (start.theory_start(), model) {
        (Some(s), _) => theory.initial(s, &mut init).with_context(|| format!("{file}: run.start"))?,
        (None, Some(m)) => m.sample(1, &mut init).with_context(|| format!("{file}: run.start (model sample)"))?.0,
        (None, None) => bail!("{file}: run.start: \"model\" needs a [model] section"),
    })
}

/// The stored definitions of a chain's steps (a plain chain, or one coupling's chain of a
/// ladder), labelled and indexed as the card's `[[chain]]` entries they come from.
pub fn chain_step_defs(card: &RunCard, chain: &Chain) -> Vec<StepDef> {
    let kinds: Vec<&str> = card.chain.iter().map(StepCard::kind).collect();
    let labels = step_labels(&kinds);
    chain
        .steps()
        .iter()
        .zip(chain.card_indices())
        .map(|(s, &i)| StepDef { label: labels[i].clone(), kind: s.kind().into(), index: i, params: s.params_json(), columns: s.columns() })
        .collect()
}

/// Appends coupling `k`'s part of a measured sweep: the step records (`records[i]`: chain step
/// i's), the measurement row `values`, and `config` when the sweep stores configurations.
pub fn store_coupling(
    writer: &mut EnsembleWriter,
    k: usize,
    records: &[Vec<StepRecord>],
    sweep: u64,
    values: &[f64],
    config: Option<&[f64]>,
) -> Result<()> {
    for (i, recs) in records.iter().enumerate() {
        for r in recs {
            writer.push_step_record(k, i, r.accepted, &r.columns)?;
        }
    }
    writer.push_measurement(k, sweep, values)?;
    if let Some(c) = config {
        writer.push_config(k, sweep, c)?;
    }
    Ok(())
}
