//! `latflow run`: generate an ensemble from a run card, with checkpoints and resume.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::card::RunCard;
use crate::chain::{Chain, StepRecord};
use crate::checkpoint::Checkpoint;
use crate::ensemble::{ConfigDef, EnsembleWriter, ObservableDef, Provenance, StepDef};
use crate::plugin::{self, ModelHandle, SearchPath, TheoryHandle};
use crate::streams::{stream, StreamUse};

/// Options of `latflow run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the checkpoint beside the output.
    pub resume: bool,
    /// Overwrite an existing output file.
    pub force: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Extra plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
}

/// Loads the card's theory plugin and builds the theory; errors name the card and the field.
pub fn load_theory(card: &RunCard, plugin_dirs: &[PathBuf]) -> Result<TheoryHandle> {
    let search = SearchPath::new(plugin_dirs);
    let file = card.path.display();
    let plugin = plugin::find(&search, &card.theory.plugin).with_context(|| format!("{file}: theory.plugin"))?;
    let mut theory = plugin.new_theory(&card.theory_json()).with_context(|| format!("{file}: [theory]"))?;
    theory.set_threads(card.run.threads).with_context(|| format!("{file}: run.threads"))?;
    Ok(theory)
}

/// A model ready for sampling, with its provenance (JSON) and a digest of its weights.
pub struct LoadedModel {
    pub handle: ModelHandle,
    pub provenance: String,
    pub weights_digest: String,
}

/// Loads the card's `[model]` for `theory`: builds it, then loads `model.weights` if given. A
/// missing weights file is an error naming the command that trains it (`run` never trains:
/// `latflow run --train` or `[train] before_run = true` train first, see [`crate::cli`]).
/// Without `model.weights` the model keeps its seeded initial weights (an untrained model, which
/// the exact samplers still handle correctly, at low acceptance), or takes those of
/// `model.init_from` (transfer without further training).
pub fn load_model(card: &RunCard, theory: &TheoryHandle, opts: &RunOptions) -> Result<Option<LoadedModel>> {
    let Some(mc) = &card.model else { return Ok(None) };
    let file = card.path.display();
    let mut handle = build_model(card, theory, &opts.plugin_dirs)?;
    let digest = match &mc.weights {
        Some(w) => {
            if !w.exists() {
                bail!("{file}: model.weights: '{}' does not exist; {}", w.display(), train_hint(card));
            }
            let bytes = std::fs::read(w).with_context(|| format!("{file}: model.weights: cannot read '{}'", w.display()))?;
            handle.load(&bytes).with_context(|| format!("{file}: model.weights ('{}')", w.display()))?;
            sha256_hex(&bytes)
        }
        None => {
            match &mc.init_from {
                // a transferred model used as it is (e.g. to measure what transfer alone gives)
                Some(src) => {
                    let bytes = std::fs::read(src).with_context(|| format!("{file}: model.init_from: cannot read '{}'", src.display()))?;
                    handle.init_from(&bytes).with_context(|| format!("{file}: model.init_from ('{}')", src.display()))?;
                    if !opts.quiet {
                        eprintln!("note: {file}: [model] has no `weights`: using the weights of '{}' untrained here", src.display());
                    }
                }
                None => eprintln!("note: {file}: [model] has no `weights`: using the untrained model"),
            }
            sha256_hex(&handle.save(false)?)
        }
    };
    let provenance = serde_json::json!({
        "plugin": handle.name, "version": handle.version, "path": handle.path,
        "architecture": serde_json::from_str::<serde_json::Value>(&handle.architecture()).unwrap_or_default(),
        "weights": mc.weights, "init_from": mc.init_from, "weights_sha256": digest,
    })
    .to_string();
    Ok(Some(LoadedModel { handle, provenance, weights_digest: digest }))
}

/// How to get missing weights for `card`: the command that trains them.
pub fn train_hint(card: &RunCard) -> String {
    let path = card.path.display();
    if card.train.is_some() {
        format!(
            "train it first with `latflow train {path}` (or let `latflow run --train {path}` train it before sampling, \
             or set `before_run = true` in [train])"
        )
    } else {
        format!("train it first with `latflow train` on a card with a [train] section (this card, {path}, has none)")
    }
}

/// Builds the card's model (no weights loaded) and checks that it fits the theory.
pub fn build_model(card: &RunCard, theory: &TheoryHandle, plugin_dirs: &[PathBuf]) -> Result<ModelHandle> {
    let file = card.path.display();
    let mc = card.model.as_ref().ok_or_else(|| anyhow::anyhow!("{file}: [model]: missing section"))?;
    let search = SearchPath::new(plugin_dirs);
    let plugin = plugin::find(&search, &mc.plugin).with_context(|| format!("{file}: model.plugin"))?;
    let mut handle = plugin.new_model(&card.model_json().unwrap_or_default(), theory).with_context(|| format!("{file}: [model]"))?;
    handle.set_threads(card.run.threads).with_context(|| format!("{file}: run.threads"))?;
    Ok(handle)
}

/// Refuses to overwrite an existing output without `--force`, pointing at `--resume` when its
/// checkpoint exists.
pub fn refuse_existing_output(file: &str, output: &Path, ckpt_path: &Path, force: bool) -> Result<()> {
    if output.exists() && !force {
        let hint = if ckpt_path.exists() {
            "use --resume to continue its run or --force to overwrite it"
        } else {
            "it has no checkpoint to resume from; use --force to overwrite it"
        };
        bail!("{file}: run.output: '{}' already exists; {hint}", output.display());
    }
    Ok(())
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Step labels: the kind, with the step's index appended when a kind occurs more than once.
pub fn step_labels(kinds: &[&str]) -> Vec<String> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| if kinds.iter().filter(|x| x == &k).count() > 1 { format!("{k}_{i}") } else { k.to_string() })
        .collect()
}

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
    let model_for_start = model.clone();
    let mut chain = Chain::new(&card, model).map_err(|e| anyhow::anyhow!("{file}: chain: {e}"))?;

    let observables: Vec<ObservableDef> = theory
        .observables()
        .iter()
        .map(|o| ObservableDef { name: o.name.to_string(), len: o.len as usize, description: o.description.to_string() })
        .collect();
    for (name, _, _) in &card.reference {
        let (base, j) = match name.split_once('[') {
            Some((b, rest)) => (b, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (name.as_str(), Some(0)),
        };
        let ok = observables.iter().any(|o| o.name == base && j.is_some_and(|j| j < o.len) && (name.contains('[') || o.len == 1));
        if !ok {
            let names: Vec<&str> = observables.iter().map(|o| o.name.as_str()).collect();
            bail!("{file}: reference.{name}: no such scalar observable or component (the theory has: {})", names.join(", "));
        }
    }
    let kinds: Vec<&str> = chain.steps().iter().map(|s| s.kind()).collect();
    let steps: Vec<StepDef> = step_labels(&kinds)
        .into_iter()
        .zip(chain.steps())
        .enumerate()
        .map(|(index, (label, s))| StepDef {
            label,
            kind: s.kind().into(),
            index,
            params: s.params_json(),
            columns: s.columns(),
        })
        .collect();
    let configs = (card.run.save_every > 0)
        .then(|| ConfigDef { config_len: theory.config_len(), shape: theory.layout().shape() });
    let ckpt_path = card.run.checkpoint_path();
    let output = card.run.output.clone();
    // The card and the model's weights together determine the run.
    let hash = if weights_digest.is_empty() { card.hash() } else { sha256_hex(format!("{}{weights_digest}", card.hash()).as_bytes()) };

    let (mut writer, mut config, mut sweeps_done) = if opts.resume {
        let ck = Checkpoint::load(&ckpt_path).with_context(|| format!("{file}: run.output (--resume)"))?;
        if ck.card_hash != hash {
            bail!(
                "{file}: --resume: checkpoint '{}' was written by a different run card (its card hash {} ≠ {}); \
                 resume with the card that started the run, or start afresh without --resume",
                ckpt_path.display(),
                &ck.card_hash[..12.min(ck.card_hash.len())],
                &hash[..12]
            );
        }
        if ck.config.len() != theory.config_len() {
            bail!("{file}: --resume: checkpoint configuration has {} reals, the theory needs {}", ck.config.len(), theory.config_len());
        }
        chain.restore_rngs(&ck.step_rngs).map_err(|e| anyhow::anyhow!("{file}: --resume: {e}"))?;
        chain.restore_states(&ck.step_states).map_err(|e| anyhow::anyhow!("{file}: --resume: {e}"))?;
        let writer = EnsembleWriter::resume(&output, &hash, &observables, &steps, configs.as_ref(), &ck.counts)
            .with_context(|| format!("{file}: run.output (--resume)"))?;
        (writer, ck.config, ck.sweeps_done)
    } else {
        refuse_existing_output(&file, &output, &ckpt_path, opts.force)?;
        let prov = Provenance {
            latflow_version: env!("CARGO_PKG_VERSION").into(),
            run_card: card.text.clone(),
            card_path: card.path.display().to_string(),
            card_hash: hash.clone(),
            seed: card.run.seed,
            plugin_name: theory.name.clone(),
            plugin_version: theory.version.clone(),
            plugin_path: theory.path.display().to_string(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            theory_params: theory.params_json(),
            layout: serde_json::to_string(theory.layout()).unwrap_or_default(),
            model: model_provenance.clone(),
        };
        let mut init = stream(card.run.seed, StreamUse::Init { slot: None })?;
        let start = card.run.start.unwrap_or(crate::card::StartChoice::Cold);
        let config = match (start.theory_start(), &model_for_start) {
            (Some(s), _) => theory.initial(s, &mut init).with_context(|| format!("{file}: run.start"))?,
            (None, Some(m)) => m.sample(1, &mut init).with_context(|| format!("{file}: run.start (model sample)"))?.0,
            (None, None) => bail!("{file}: run.start: \"model\" needs a [model] section"),
        };
        let writer = EnsembleWriter::create(&output, &prov, &observables, &steps, configs.as_ref(), opts.force)
            .with_context(|| format!("{file}: run.output"))?;
        let _ = std::fs::remove_file(&ckpt_path);
        (writer, config, 0)
    };

    // One call of the plain action entry point, so that a plugin whose `action` is broken is
    // caught here rather than later by a sampler that relies on it.
    let fresh = !opts.resume;
    if let Err(e) = theory.action(&config) {
        drop(writer);
        if fresh {
            let _ = std::fs::remove_file(&output);
        }
        return Err(anyhow::Error::new(e).context(format!("{file}: [theory] (action of the starting configuration)")));
    }

    let total = card.run.total_sweeps();
    let therm = card.run.thermalization;
    let bar = progress_bar(total, sweeps_done, opts.quiet);
    let mut records: Vec<Vec<StepRecord>> = vec![Vec::new(); steps.len()];
    let mut accepted = vec![0u64; steps.len()];
    let mut applied = vec![0u64; steps.len()];
    let mut last_checkpoint = std::time::Instant::now();
    let mut checkpointed = !fresh;
    // A fresh run that fails before its first checkpoint leaves nothing resumable: remove its file.
    let abandon = |writer: EnsembleWriter, checkpointed: bool, e: anyhow::Error| -> anyhow::Error {
        drop(writer);
        if !checkpointed {
            let _ = std::fs::remove_file(&output);
        }
        e
    };

    while sweeps_done < total {
        records.iter_mut().for_each(Vec::clear);
        if let Err((i, e)) = chain.sweep(&mut theory, &mut config, &mut records) {
            // keep what is on disk readable; the last checkpoint stays the resume point
            let _ = writer.flush();
            let e = anyhow::Error::new(e).context(format!("{file}: chain[{i}] (sweep {sweeps_done})"));
            return Err(abandon(writer, checkpointed, e));
        }
        for (i, recs) in records.iter().enumerate() {
            accepted[i] += recs.iter().filter(|r| r.accepted).count() as u64;
            applied[i] += recs.len() as u64;
        }
        if sweeps_done >= therm {
            let m = sweeps_done - therm;
            for (i, recs) in records.iter().enumerate() {
                for r in recs {
                    writer.push_step_record(i, r.accepted, &r.columns)?;
                }
            }
            let values = match theory.measure(&config) {
                Ok(v) => v,
                Err(e) => {
                    let _ = writer.flush();
                    let e = anyhow::Error::new(e).context(format!("{file}: measurement (sweep {sweeps_done})"));
                    return Err(abandon(writer, checkpointed, e));
                }
            };
            writer.push_measurement(sweeps_done, &values)?;
            if card.run.save_every > 0 && m % card.run.save_every == 0 {
                writer.push_config(sweeps_done, &config)?;
            }
        }
        sweeps_done += 1;
        let due = card.run.checkpoint_every.is_some_and(|n| sweeps_done % n == 0)
            || last_checkpoint.elapsed().as_secs_f64() >= card.run.checkpoint_seconds;
        if due || sweeps_done == total {
            last_checkpoint = std::time::Instant::now();
            let counts = writer.flush()?;
            Checkpoint {
                card_hash: hash.clone(),
                sweeps_done,
                counts,
                step_rngs: chain.rng_states(),
                config: config.clone(),
                step_states: chain.step_states(),
                replica: None,
            }
                .save(&ckpt_path)?;
            checkpointed = true;
        }
        bar.set_position(sweeps_done);
        if sweeps_done % 16 == 0 {
            let acc: Vec<String> = steps
                .iter()
                .zip(accepted.iter().zip(&applied))
                .map(|(s, (a, n))| format!("{} {:.3}", s.label, *a as f64 / (*n).max(1) as f64))
                .collect();
            bar.set_message(format!("acceptance {}", acc.join(", ")));
        }
    }
    bar.finish_and_clear();
    Ok(output)
}

/// The run's progress bar (hidden with `--quiet` or when stdout is not a terminal).
pub(crate) fn progress_bar(total: u64, done: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if quiet || !std::io::stdout().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} sweeps (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar
}
