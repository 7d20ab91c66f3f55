//! The bottom of the host's run machinery, shared by `run` (plain and replica drivers), `train`
//! and `bench`: run options, loading theories and models, the run hash, the output policy
//! (output and checkpoint files, when to checkpoint, provenance), step labels and the progress
//! bar. It imports no driver, so the drivers never import each other through it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::card::RunCard;
use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::ensemble::{ObservableDef, Provenance};
use crate::plugin::{self, ModelHandle, SearchPath, TheoryHandle};

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
    /// This process's rank in the job (one rank by default); see [`crate::job`].
    pub job: crate::job::Job,
    /// How long HDF5 may take to open an existing file (the output on `--resume` or before
    /// replacing it, a `run.start` ensemble) before the process ends with an error naming it
    /// ([`crate::ensemble::exit_if_stuck`]); `None` (the default): no limit, for library use.
    pub read_limit: Option<std::time::Duration>,
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
/// checkpoint exists. An output without a checkpoint that holds no measurement (left by a run
/// that was killed or whose plugin aborted before its first checkpoint) is replaced, since
/// nothing in it can be lost; one that cannot be read as an ensemble is refused with that said.
/// Returns whether the output may be overwritten (`force`, or such an empty output).
pub fn refuse_existing_output(file: &str, output: &Path, ckpt_path: &Path, opts: &RunOptions) -> Result<bool> {
    let force = opts.force;
    if !output.exists() || force {
        return Ok(force);
    }
    if ckpt_path.exists() {
        bail!(
            "{file}: run.output: '{}' already exists; use --resume to continue its run or --force to overwrite it",
            output.display()
        );
    }
    match crate::ensemble::exit_if_stuck(output, opts.read_limit, || crate::ensemble::read(output)) {
        Ok(ens) if ens.couplings.iter().all(|c| c.sweeps.is_empty()) => {
            eprintln!(
                "note: replacing '{}': it holds no measurement and has no checkpoint (a run stopped before its first checkpoint)",
                output.display()
            );
            Ok(true)
        }
        Ok(_) => bail!(
            "{file}: run.output: '{}' already exists; it has no checkpoint to resume from; use --force to overwrite it",
            output.display()
        ),
        Err(e) => bail!(
            "{file}: run.output: '{}' already exists and is not a readable ensemble ({e}); it has no checkpoint to \
             resume from; use --force to overwrite it",
            output.display()
        ),
    }
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

/// Where a run writes: the ensemble and its checkpoint.
pub struct OutputFiles {
    pub output: PathBuf,
    pub checkpoint: PathBuf,
}

impl OutputFiles {
    pub fn of(card: &RunCard) -> Self {
        Self { output: card.run.output.clone(), checkpoint: card.run.checkpoint_path() }
    }

    /// Removes the output of a run that has no checkpoint to resume from (`keep`: it has one).
    pub fn discard_unless(&self, keep: bool) {
        if !keep {
            let _ = std::fs::remove_file(&self.output);
        }
    }
}

/// The card's run checkpoint, refused when another card (or other weights) wrote it, or
/// another driver (`kind`: a plain run's checkpoint for a ladder card, or the reverse).
pub fn load_checkpoint(card: &RunCard, out: &OutputFiles, hash: &str, kind: CheckpointKind) -> Result<Checkpoint> {
    let file = card.path.display();
    let ck = Checkpoint::load(&out.checkpoint).with_context(|| format!("{file}: run.output (--resume)"))?;
    if ck.card_hash != hash {
        bail!(
            "{file}: --resume: checkpoint '{}' was written by a different run card (its card hash {} ≠ {}); \
             resume with the card that started the run, or start afresh without --resume",
            out.checkpoint.display(),
            &ck.card_hash[..12.min(ck.card_hash.len())],
            &hash[..12]
        );
    }
    if ck.kind != kind {
        bail!(
            "{file}: --resume: checkpoint '{}' is from a {} run, this card is a {} run",
            out.checkpoint.display(),
            ck.kind.name(),
            kind.name()
        );
    }
    Ok(ck)
}

/// The root provenance of a new ensemble file.
pub fn provenance(card: &RunCard, theory: &TheoryHandle, hash: &str, theory_params: String, model: String) -> Provenance {
    Provenance {
        latflow_version: env!("CARGO_PKG_VERSION").into(),
        run_card: card.text.clone(),
        card_path: card.path.display().to_string(),
        card_hash: hash.to_string(),
        seed: card.run.seed,
        plugin_name: theory.name.clone(),
        plugin_version: theory.version.clone(),
        plugin_path: theory.path.display().to_string(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        theory_params,
        layout: serde_json::to_string(theory.layout()).unwrap_or_default(),
        model,
    }
}

/// The theory's observables, as stored.
pub fn observable_defs(theory: &TheoryHandle) -> Vec<ObservableDef> {
    theory
        .observables()
        .iter()
        .map(|o| ObservableDef { name: o.name.to_string(), len: o.len as usize, description: o.description.to_string() })
        .collect()
}

/// Whether a checkpoint is due after `sweeps_done` of `total` sweeps (every
/// `run.checkpoint_every` sweeps, every `run.checkpoint_seconds`, and at the end); resets the
/// clock when it is.
pub fn checkpoint_due(card: &RunCard, last: &mut std::time::Instant, sweeps_done: u64, total: u64) -> bool {
    let due = card.run.checkpoint_every.is_some_and(|n| sweeps_done.is_multiple_of(n))
        || last.elapsed().as_secs_f64() >= card.run.checkpoint_seconds
        || sweeps_done == total;
    if due {
        *last = std::time::Instant::now();
    }
    due
}

/// A progress bar on stderr at `done` of `total` `unit`s ("sweeps" for a run, "steps" for a
/// training); hidden with `--quiet` or when stdout is not a terminal.
pub fn progress_bar(total: u64, done: u64, quiet: bool, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if quiet || !std::io::stdout().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} (eta {{eta}}) {{msg}}");
    bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_position(done);
    bar
}
