//! `latflow run`: generate an ensemble from a run card, with checkpoints and resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::card::{RunCard, StartChoice};
use crate::chain::{Chain, StepRecord};
use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::ensemble::{exit_if_stuck, ConfigDef, EnsembleWriter, FileCounts, ObservableDef};
use crate::plugin::TheoryHandle;
use crate::sampler::{chain_step_defs, initial_config, store_coupling, sweep_loop, Sampler};
use crate::setup::{
    load_checkpoint, load_model, load_theory, observable_defs, provenance, refuse_existing_output, sha256_hex, OutputFiles,
};

pub use crate::setup::RunOptions;

/// Runs (or resumes) the card. Returns the output path (of chain 0 for a card with several
/// independent chains, whose files are [`RunSection::chain_output`](crate::card::RunSection::chain_output)).
///
/// On a job of several ranks: a replica ladder is split by couplings ([`crate::replica`]);
/// a plain card's independent chains (`[run] chains`) by chains, each rank running its block
/// of chains one after the other, each chain writing its own file (so every file is a complete
/// ensemble that resumes on its own, and no rank waits for another's writes); a plain card of
/// one chain by its lattice, which the theory splits over the ranks (domain decomposition: see
/// [`run_chain`]).
pub fn run(card_path: &Path, opts: &RunOptions) -> Result<PathBuf> {
    let card = RunCard::load(card_path)?;
    if card.ladder.is_some() {
        return crate::replica::run(&card, opts);
    }
    let file = card.path.display().to_string();
    let (chains, job) = (card.run.chains as usize, &opts.job);
    if chains == 1 && job.size() > 1 {
        return run_chain(card, opts);
    }
    if job.size() > chains {
        bail!(
            "{file}: the card has {chains} chain(s) and the job {} ranks: every rank needs at least one chain (set run.chains to at least {} for independent chains, or use a replica ladder)",
            job.size(),
            job.size()
        );
    }
    if chains == 1 {
        return run_chain(card, opts);
    }
    job.check_same("card", &card.hash()).with_context(|| file.clone())?;
    let one = RunOptions { job: crate::job::Job::single(), ..opts.clone() };
    let mut result = Ok(());
    for c in job.block(chains) {
        let mut chain = card.clone();
        chain.run.chain = c as u64;
        chain.run.output = card.run.chain_output(c as u64);
        if let Err(e) = run_chain(chain, &one) {
            result = Err(e.context(format!("{file}: chain {c}")));
            break;
        }
    }
    // every rank has finished its chains (or one has failed) before any returns
    if let Some(rank) = job.first_failure(result.is_ok())? {
        result?;
        bail!("{file}: rank {rank} failed (its message says why)");
    }
    Ok(card.run.chain_output(0))
}

/// Runs (or resumes) one chain of a plain card (`card.run.chain`, writing `card.run.output`).
///
/// On a job of several ranks the chain's lattice is split: every rank loads the theory and
/// hands it the job's communicator ([`TheoryHandle::set_communicator`]), so that its
/// configuration is the rank's slab of the global one and every theory call is collective.
/// Every rank runs the same chain with the same random streams; the root alone writes the file
/// and the checkpoint, which hold global configurations (gathered), and a resume gives every
/// rank its slab of the checkpoint's. Only theory steps run on a split lattice: a `[model]` is
/// refused, since models need whole configurations.
fn run_chain(card: RunCard, opts: &RunOptions) -> Result<PathBuf> {
    let file = card.path.display().to_string();
    let job = &opts.job;
    let mut theory = load_theory(&card, &opts.plugin_dirs)?;
    let global = (theory.config_len(), theory.layout().clone());
    let split = job.size() > 1;
    if split {
        hand_over_communicator(&card, &mut theory, job)?;
    }
    let model = load_model(&card, &theory, opts)?;
    let model_provenance = model.as_ref().map(|m| m.provenance.clone()).unwrap_or_default();
    let weights_digest = model.as_ref().map(|m| m.weights_digest.clone()).unwrap_or_default();
    let model = model.map(|m| Arc::new(m.handle));
    let mut chain = Chain::new(&card, &theory, model.clone()).map_err(|e| anyhow::anyhow!("{file}: chain: {e}"))?;

    let observables = observable_defs(&theory);
    check_references(&card, &observables)?;
    let steps = chain_step_defs(&card, &chain);
    let configs = (card.run.save_every > 0).then(|| ConfigDef { config_len: global.0, shape: global.1.config_dims() });
    let out = OutputFiles::of(&card);
    // The card and the model's weights together determine the run.
    let hash = if weights_digest.is_empty() { card.hash() } else { sha256_hex(format!("{}{weights_digest}", card.hash()).as_bytes()) };
    let slab = |config: &[f64]| -> Vec<f64> {
        let n = theory.config_len();
        if split { config[job.rank() * n..(job.rank() + 1) * n].to_vec() } else { config.to_vec() }
    };

    // Only the root touches the files; every rank reads the checkpoint's state.
    let setup = (|| -> Result<(Option<EnsembleWriter>, Vec<f64>, u64)> {
        Ok(if opts.resume {
            let ck = load_checkpoint(&card, &out, &hash, CheckpointKind::Plain)?;
            if ck.config.len() != global.0 {
                bail!("{file}: --resume: checkpoint configuration has {} reals, the theory needs {}", ck.config.len(), global.0);
            }
            chain.restore_rngs(&ck.step_rngs).map_err(|e| anyhow::anyhow!("{file}: --resume: {e}"))?;
            chain.restore_states(&ck.step_states).map_err(|e| anyhow::anyhow!("{file}: --resume: {e}"))?;
            let writer = if job.is_root() {
                Some(
                    exit_if_stuck(&out.output, opts.read_limit, || {
                        EnsembleWriter::resume(&out.output, &hash, &observables, &steps, configs.as_ref(), &ck.counts)
                    })
                        .with_context(|| format!("{file}: run.output (--resume)"))?,
                )
            } else {
                None
            };
            (writer, slab(&ck.config), ck.sweeps_done)
        } else {
            let config = match (&card.run.start, split) {
                (Some(StartChoice::File(f)), true) => {
                    let loaded = exit_if_stuck(&f.file, opts.read_limit, || crate::ildg::start::load(&f.file, f.index, &global.1))
                        .with_context(|| format!("{file}: run.start"))?;
                    slab(&loaded.config)
                }
                _ => initial_config(&card, &theory, model.as_deref(), crate::streams::Slot::Chain(card.run.chain as usize), opts.read_limit)?,
            };
            if !job.is_root() {
                return Ok((None, config, 0));
            }
            let overwrite = refuse_existing_output(&file, &out.output, &out.checkpoint, opts)?;
            let prov = provenance(&card, &theory, &hash, theory.params_json(), model_provenance);
            let writer = EnsembleWriter::create(&out.output, &prov, &observables, &steps, configs.as_ref(), overwrite)
                .with_context(|| format!("{file}: run.output"))?;
            let _ = std::fs::remove_file(&out.checkpoint);
            (Some(writer), config, 0)
        })
    })();
    let (writer, config, sweeps_done) = match job.first_failure(setup.is_ok())? {
        None => setup?,
        Some(rank) => {
            if let Ok((Some(w), _, _)) = setup {
                drop(w);
                out.discard_unless(opts.resume);
            } else {
                setup?;
            }
            bail!("{file}: rank {rank} could not start the run (its message says why)");
        }
    };

    let writer = check_starting_action(&theory, &config, writer, &out, opts)
        .with_context(|| format!("{file}: [theory] (action of the starting configuration)"))?;
    let n = steps.len();
    let labels = steps.iter().map(|s| s.label.clone()).collect();
    let mut sampler = PlainSampler {
        theory: &mut theory,
        chain: &mut chain,
        config,
        labels,
        records: vec![Vec::new(); n],
        accepted: vec![0; n],
        applied: vec![0; n],
        job: split.then(|| job.clone()),
        gathered: None,
    };
    sweep_loop(&card, &out, &hash, &mut sampler, writer, sweeps_done, opts)?;
    Ok(out.output)
}

/// One call of the plain action entry point on the starting configuration, so that a plugin
/// whose `action` is broken is caught here rather than later by a sampler that relies on it.
/// On failure the writer is dropped and a new output file is removed (the root's, unless
/// resuming); on success the writer is handed back.
fn check_starting_action(
    theory: &TheoryHandle,
    config: &[f64],
    writer: Option<EnsembleWriter>,
    out: &OutputFiles,
    opts: &RunOptions,
) -> Result<Option<EnsembleWriter>> {
    match theory.action(config) {
        Ok(_) => Ok(writer),
        Err(e) => {
            drop(writer);
            if opts.job.is_root() {
                out.discard_unless(opts.resume);
            }
            Err(anyhow::Error::new(e))
        }
    }
}

/// On a job of several ranks: checks that every rank runs the same card, refuses a `[model]`
/// (models need whole configurations) and hands the theory the job's communicator, which it
/// refuses when it cannot be split.
fn hand_over_communicator(card: &RunCard, theory: &mut TheoryHandle, job: &crate::job::Job) -> Result<()> {
    let file = card.path.display().to_string();
    job.check_same("card", &card.hash()).with_context(|| file.clone())?;
    if card.model.is_some() {
        bail!(
            "{file}: [model]: the lattice is split over the job's {} ranks, and a model needs whole configurations on one rank \
             (run flows on one rank, or spread replicas or independent chains over the ranks)",
            job.size()
        );
    }
    theory.set_communicator(job.comm_handle()).with_context(|| {
        format!(
            "{file}: [theory]: a card of one chain on {} ranks splits its lattice over them, and this theory cannot be split \
             (for ensemble parallelism use a replica ladder, or set run.chains to at least {} for independent chains)",
            job.size(),
            job.size()
        )
    })?;
    Ok(())
}

/// For `--resume`: the number of sweeps of the card's run when its checkpoint already records
/// all of them (the run is complete, a resume has nothing to do), else `None` (also when there
/// is no readable checkpoint: [`run`] reports that).
pub fn completed_sweeps(card_path: &Path) -> Result<Option<u64>> {
    let card = RunCard::load(card_path)?;
    let total = card.run.total_sweeps();
    Ok(Checkpoint::load(&OutputFiles::of(&card).checkpoint).ok().filter(|ck| ck.sweeps_done >= total).map(|_| total))
}

/// Every `[reference]` name must be a scalar observable or a component `name[j]`.
fn check_references(card: &RunCard, observables: &[ObservableDef]) -> Result<()> {
    for (name, _, _) in &card.reference {
        let (base, j) = match name.split_once('[') {
            Some((b, rest)) => (b, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (name.as_str(), Some(0)),
        };
        let ok = observables.iter().any(|o| o.name == base && j.is_some_and(|j| j < o.len) && (name.contains('[') || o.len == 1));
        if !ok {
            let names: Vec<&str> = observables.iter().map(|o| o.name.as_str()).collect();
            bail!(
                "{}: reference.{name}: no such scalar observable or component (the theory has: {})",
                card.path.display(),
                names.join(", ")
            );
        }
    }
    Ok(())
}

/// A plain run as a [`Sampler`]: the chain at the card's one coupling.
struct PlainSampler<'a> {
    theory: &'a mut TheoryHandle,
    chain: &'a mut Chain,
    config: Vec<f64>,
    /// The step labels, for the progress message.
    labels: Vec<String>,
    /// The last sweep's records, per step.
    records: Vec<Vec<StepRecord>>,
    accepted: Vec<u64>,
    applied: Vec<u64>,
    /// The job whose ranks hold the slabs of a split lattice (`None`: this rank holds it all).
    job: Option<crate::job::Job>,
    /// The global configuration gathered by [`Sampler::collect`] for the root to store.
    gathered: Option<Vec<f64>>,
}

impl PlainSampler<'_> {
    /// The global configuration: this rank's own, or on a split lattice every rank's slab
    /// gathered in rank order (collective).
    fn global_config(&self) -> Result<Vec<f64>> {
        match &self.job {
            None => Ok(self.config.clone()),
            Some(job) => Ok(job.gather(&self.config)?.concat()),
        }
    }
}

impl Sampler for PlainSampler<'_> {
    fn sweep(&mut self, file: &str, sweep: u64) -> Result<()> {
        self.records.iter_mut().for_each(Vec::clear);
        self.chain
            .sweep(self.theory, &mut self.config, &mut self.records)
            .map_err(|(i, e)| anyhow::Error::new(e).context(format!("{file}: chain[{i}] (sweep {sweep})")))
    }

    fn measure(&self, file: &str, sweep: u64) -> Result<Vec<Vec<f64>>> {
        let values = self
            .theory
            .measure(&self.config)
            .map_err(|e| anyhow::Error::new(e).context(format!("{file}: measurement (sweep {sweep})")))?;
        Ok(vec![values])
    }

    fn tally(&mut self) {
        for (i, recs) in self.records.iter().enumerate() {
            self.accepted[i] += recs.iter().filter(|r| r.accepted).count() as u64;
            self.applied[i] += recs.len() as u64;
        }
    }

    fn collect(&mut self, save_config: bool) -> Result<()> {
        self.gathered = match (&self.job, save_config) {
            (Some(_), true) => Some(self.global_config()?),
            _ => None,
        };
        Ok(())
    }

    fn store(&self, writer: &mut EnsembleWriter, values: &[Vec<f64>], sweep: u64, save_config: bool) -> Result<()> {
        let config = self.gathered.as_deref().unwrap_or(&self.config);
        store_coupling(writer, 0, &self.records, sweep, &values[0], save_config.then_some(config))
    }

    fn checkpoint(&self, hash: &str, sweeps_done: u64, counts: FileCounts) -> Result<Checkpoint> {
        Ok(Checkpoint {
            kind: CheckpointKind::Plain,
            card_hash: hash.to_string(),
            sweeps_done,
            counts: counts.first(),
            step_rngs: self.chain.rng_states(),
            config: self.global_config()?,
            step_states: self.chain.step_states(),
            replica: None,
        })
    }

    fn progress(&self) -> String {
        let acc: Vec<String> = self
            .labels
            .iter()
            .zip(self.accepted.iter().zip(&self.applied))
            .map(|(l, (a, n))| format!("{l} {:.3}", *a as f64 / (*n).max(1) as f64))
            .collect();
        format!("acceptance {}", acc.join(", "))
    }
}
