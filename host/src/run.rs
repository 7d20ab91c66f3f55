//! `latflow run`: generate an ensemble from a run card, with checkpoints and resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::card::RunCard;
use crate::chain::{Chain, StepRecord};
use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::ensemble::{ConfigDef, EnsembleWriter, ObservableDef, StepDef};
use crate::plugin::TheoryHandle;
use crate::setup::{
    checkpoint_due, load_checkpoint, load_model, load_theory, observable_defs, progress_bar, provenance, refuse_existing_output,
    sha256_hex, step_labels, OutputFiles,
};
use crate::streams::{stream, StreamUse};

pub use crate::setup::RunOptions;

/// Runs (or resumes) the card. Returns the output path.
pub fn run(card_path: &Path, opts: &RunOptions) -> Result<PathBuf> {
    let card = RunCard::load(card_path)?;
    if card.ladder.is_some() {
        return crate::replica::run(&card, opts);
    }
    let file = card.path.display().to_string();
    let mut theory = load_theory(&card, &opts.plugin_dirs)?;
    let model = load_model(&card, &theory, opts)?;
    let model_provenance = model.as_ref().map(|m| m.provenance.clone()).unwrap_or_default();
    let weights_digest = model.as_ref().map(|m| m.weights_digest.clone()).unwrap_or_default();
    let model = model.map(|m| Arc::new(m.handle));
    let mut chain = Chain::new(&card, model.clone()).map_err(|e| anyhow::anyhow!("{file}: chain: {e}"))?;

    let observables = observable_defs(&theory);
    check_references(&card, &observables)?;
    let steps = step_defs(&chain);
    let configs = (card.run.save_every > 0)
        .then(|| ConfigDef { config_len: theory.config_len(), shape: theory.layout().shape() });
    let out = OutputFiles::of(&card);
    // The card and the model's weights together determine the run.
    let hash = if weights_digest.is_empty() { card.hash() } else { sha256_hex(format!("{}{weights_digest}", card.hash()).as_bytes()) };

    let (writer, config, sweeps_done) = if opts.resume {
        let ck = load_checkpoint(&card, &out, &hash, CheckpointKind::Plain)?;
        if ck.config.len() != theory.config_len() {
            bail!("{file}: --resume: checkpoint configuration has {} reals, the theory needs {}", ck.config.len(), theory.config_len());
        }
        chain.restore_rngs(&ck.step_rngs).map_err(|e| anyhow::anyhow!("{file}: --resume: {e}"))?;
        chain.restore_states(&ck.step_states).map_err(|e| anyhow::anyhow!("{file}: --resume: {e}"))?;
        let writer = EnsembleWriter::resume(&out.output, &hash, &observables, &steps, configs.as_ref(), &ck.counts)
            .with_context(|| format!("{file}: run.output (--resume)"))?;
        (writer, ck.config, ck.sweeps_done)
    } else {
        refuse_existing_output(&file, &out.output, &out.checkpoint, opts.force)?;
        let prov = provenance(&card, &theory, &hash, theory.params_json(), model_provenance);
        let mut init = stream(card.run.seed, StreamUse::Init { slot: None })?;
        let start = card.run.start.unwrap_or(crate::card::StartChoice::Cold);
        let config = match (start.theory_start(), &model) {
            (Some(s), _) => theory.initial(s, &mut init).with_context(|| format!("{file}: run.start"))?,
            (None, Some(m)) => m.sample(1, &mut init).with_context(|| format!("{file}: run.start (model sample)"))?.0,
            (None, None) => bail!("{file}: run.start: \"model\" needs a [model] section"),
        };
        let writer = EnsembleWriter::create(&out.output, &prov, &observables, &steps, configs.as_ref(), opts.force)
            .with_context(|| format!("{file}: run.output"))?;
        let _ = std::fs::remove_file(&out.checkpoint);
        (writer, config, 0)
    };

    // One call of the plain action entry point, so that a plugin whose `action` is broken is
    // caught here rather than later by a sampler that relies on it.
    if let Err(e) = theory.action(&config) {
        drop(writer);
        out.discard_unless(opts.resume);
        return Err(anyhow::Error::new(e).context(format!("{file}: [theory] (action of the starting configuration)")));
    }
    let mut state = PlainState { theory: &mut theory, chain: &mut chain, config, sweeps_done };
    sweep_loop(&card, &out, &hash, &mut state, writer, &steps, opts)?;
    Ok(out.output)
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

/// The stored definitions of a plain chain's steps.
fn step_defs(chain: &Chain) -> Vec<StepDef> {
    let kinds: Vec<&str> = chain.steps().iter().map(|s| s.kind()).collect();
    step_labels(&kinds)
        .into_iter()
        .zip(chain.steps())
        .enumerate()
        .map(|(index, (label, s))| StepDef { label, kind: s.kind().into(), index, params: s.params_json(), columns: s.columns() })
        .collect()
}

/// The moving parts of a plain run.
struct PlainState<'a> {
    theory: &'a mut TheoryHandle,
    chain: &'a mut Chain,
    config: Vec<f64>,
    sweeps_done: u64,
}

/// Sweeps until the card's total, storing records, measurements and configurations after
/// thermalisation and checkpointing as the card says. A fresh run that fails before its first
/// checkpoint leaves nothing resumable: its file is removed.
fn sweep_loop(
    card: &RunCard,
    out: &OutputFiles,
    hash: &str,
    st: &mut PlainState<'_>,
    mut writer: EnsembleWriter,
    steps: &[StepDef],
    opts: &RunOptions,
) -> Result<()> {
    let file = card.path.display().to_string();
    let total = card.run.total_sweeps();
    let therm = card.run.thermalization;
    let bar = progress_bar(total, st.sweeps_done, opts.quiet);
    let mut records: Vec<Vec<StepRecord>> = vec![Vec::new(); steps.len()];
    let mut accepted = vec![0u64; steps.len()];
    let mut applied = vec![0u64; steps.len()];
    let mut last_checkpoint = std::time::Instant::now();
    let mut checkpointed = opts.resume;
    while st.sweeps_done < total {
        let sweeps_done = st.sweeps_done;
        records.iter_mut().for_each(Vec::clear);
        let swept = st.chain.sweep(st.theory, &mut st.config, &mut records);
        let measured = match swept {
            Err((i, e)) => Err(anyhow::Error::new(e).context(format!("{file}: chain[{i}] (sweep {sweeps_done})"))),
            Ok(()) if sweeps_done >= therm => st
                .theory
                .measure(&st.config)
                .map(Some)
                .map_err(|e| anyhow::Error::new(e).context(format!("{file}: measurement (sweep {sweeps_done})"))),
            Ok(()) => Ok(None),
        };
        let values = match measured {
            Ok(v) => v,
            Err(e) => {
                // keep what is on disk readable; the last checkpoint stays the resume point
                let _ = writer.flush();
                drop(writer);
                out.discard_unless(checkpointed);
                return Err(e);
            }
        };
        for (i, recs) in records.iter().enumerate() {
            accepted[i] += recs.iter().filter(|r| r.accepted).count() as u64;
            applied[i] += recs.len() as u64;
        }
        if let Some(values) = values {
            for (i, recs) in records.iter().enumerate() {
                for r in recs {
                    writer.push_step_record(i, r.accepted, &r.columns)?;
                }
            }
            writer.push_measurement(sweeps_done, &values)?;
            if card.run.save_every > 0 && (sweeps_done - therm) % card.run.save_every == 0 {
                writer.push_config(sweeps_done, &st.config)?;
            }
        }
        st.sweeps_done += 1;
        if checkpoint_due(card, &mut last_checkpoint, st.sweeps_done, total) {
            let counts = writer.flush()?;
            Checkpoint {
                kind: CheckpointKind::Plain,
                card_hash: hash.to_string(),
                sweeps_done: st.sweeps_done,
                counts,
                step_rngs: st.chain.rng_states(),
                config: st.config.clone(),
                step_states: st.chain.step_states(),
                replica: None,
            }
            .save(&out.checkpoint)?;
            checkpointed = true;
        }
        bar.set_position(st.sweeps_done);
        if st.sweeps_done % 16 == 0 {
            let acc: Vec<String> = steps
                .iter()
                .zip(accepted.iter().zip(&applied))
                .map(|(s, (a, n))| format!("{} {:.3}", s.label, *a as f64 / (*n).max(1) as f64))
                .collect();
            bar.set_message(format!("acceptance {}", acc.join(", ")));
        }
    }
    bar.finish_and_clear();
    Ok(())
}
