//! `latflow train`: reverse-KL self-training of a model plugin against a theory plugin.
//!
//! The host drives each step across both boundaries (the surrogate-gradient
//! trick): the model draws a batch φ = f(z) with log q and keeps its graph; the theory
//! returns S(φ) and ∂S/∂φ; the model backpropagates mean(log q + Σ φ·stopgrad(∂S/∂φ)), which
//! has the gradient of the reverse KL, and takes an Adam step. Per step the host records the
//! loss, the batch ESS per sample and an estimate of the flow-Metropolis acceptance.
//!
//! Outputs (beside `model.weights`): the weights (safetensors, architecture in the metadata),
//! `<weights>.history.csv`, the training curves as PNG, and a checkpoint
//! `<weights>.train.ckpt` (model + optimiser state, RNG, history) written atomically every
//! `checkpoint_every` steps. A NaN or infinite loss or gradient stops training with the step
//! number; the last good checkpoint is kept and `--resume` continues from it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use latflow_core::hmc::metropolis_accept;
use latflow_stats::ess_per_sample;
use latflow_core::{RngState, Stream};
use serde::{Deserialize, Serialize};

use crate::card::{ModelCard, RunCard, TrainCard};
use crate::job::Job;
use crate::plugin::ModelHandle;
use crate::setup::{build_model, load_theory, sha256_hex};
use crate::streams::{stream, train_seed, StreamUse};

const MAGIC: &[u8; 8] = b"LFTRAIN1";

/// Options of `latflow train`.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub quiet: bool,
    pub plugin_dirs: Vec<PathBuf>,
    /// Continue from the training checkpoint.
    pub resume: bool,
    /// Overwrite existing weights.
    pub force: bool,
    /// A wall-time budget, counted from the first training step: training stops after the
    /// first step that ends past it, with its weights and a checkpoint written (`--minutes`).
    pub budget: Option<std::time::Duration>,
    /// The job: with `[train] chunks = k`, its ranks share each step's k chunks (the root
    /// writes every file). One rank by default.
    pub job: Job,
}

/// One row of the training history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub step: u64,
    /// mean(log q + S) over the batch: ≥ −log Z in expectation.
    pub loss: f64,
    /// (Σw)²/(N Σw²) over the batch, w = e^{−S}/q.
    pub ess: f64,
    /// Acceptance of an independence-Metropolis chain run through the batch.
    pub acceptance: f64,
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// The stationary independence-Metropolis acceptance estimated from the batch's weights
    /// ([`latflow_stats::imh_acceptance`]); NaN in rows from before it was recorded.
    #[serde(default = "nan", deserialize_with = "nan_or_number")]
    pub acceptance_iw: f64,
    /// The acceptance if ln w were Gaussian with the batch's variance
    /// ([`latflow_stats::lognormal_acceptance`]).
    #[serde(default = "nan", deserialize_with = "nan_or_number")]
    pub acceptance_lognormal: f64,
    /// The Pareto shape k̂ of the batch's largest weights ([`latflow_stats::pareto_k`]): above
    /// about 0.7 the batch's ESS and acceptance estimates are not to be trusted.
    #[serde(default = "nan", deserialize_with = "nan_or_number")]
    pub pareto_k: f64,
    /// Wall time of the step in seconds.
    pub seconds: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// A number, or JSON's `null` (which is how serde_json writes NaN) as NaN.
fn nan_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The resumable state of a training run (header of the checkpoint file; the model's
/// safetensors bytes, with optimiser state, follow it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainCheckpoint {
    train_hash: String,
    steps_done: u64,
    rng: RngState,
    metrics_rng: RngState,
    history: Vec<HistoryRow>,
}

/// Paths derived from the weights path.
pub struct TrainPaths {
    pub weights: PathBuf,
    pub checkpoint: PathBuf,
    pub history: PathBuf,
    pub plot: PathBuf,
}

impl TrainPaths {
    fn new(weights: &Path, plot: Option<&Path>) -> Self {
        let with = |ext: &str| {
            let mut p = weights.as_os_str().to_owned();
            p.push(ext);
            PathBuf::from(p)
        };
        Self {
            weights: weights.to_path_buf(),
            checkpoint: with(".train.ckpt"),
            history: with(".history.csv"),
            plot: plot.map(Path::to_path_buf).unwrap_or_else(|| with(".png")),
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn save_checkpoint(path: &Path, ck: &TrainCheckpoint, model: &[u8]) -> Result<()> {
    let header = serde_json::to_vec(ck)?;
    let mut bytes = Vec::with_capacity(24 + header.len() + model.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(model);
    write_atomic(path, &bytes).with_context(|| format!("cannot write training checkpoint '{}'", path.display()))
}

/// The optimiser steps a training checkpoint holds (errors as `--resume` would on a bad file).
pub fn checkpoint_steps(path: &Path) -> Result<u64> {
    Ok(load_checkpoint(path)?.0.steps_done)
}

fn load_checkpoint(path: &Path) -> Result<(TrainCheckpoint, Vec<u8>)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no training checkpoint at '{}': nothing to resume (train without --resume to start)", path.display())
        }
        Err(e) => bail!("cannot read training checkpoint '{}': {e}", path.display()),
    };
    decode_checkpoint(path, &bytes)
}

/// Decodes a training checkpoint's bytes (`path` names it in errors): the header and the
/// model's saved bytes. Any input gives those or a clear error, never a panic.
pub(crate) fn decode_checkpoint(path: &Path, bytes: &[u8]) -> Result<(TrainCheckpoint, Vec<u8>)> {
    let bad = |why: &str| anyhow::anyhow!("training checkpoint '{}' is unreadable: {why}", path.display());
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("not a latflow training checkpoint"));
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    // the header length comes from the file: a corrupt one must not overflow `16 + n`
    let end = usize::try_from(n).ok().and_then(|n| n.checked_add(16)).filter(|&end| end <= bytes.len()).ok_or_else(|| {
        bad(&format!("its header length {n} runs past the end of the file ({} bytes): truncated or corrupt", bytes.len()))
    })?;
    let ck: TrainCheckpoint = serde_json::from_slice(&bytes[16..end]).map_err(|e| bad(&e.to_string()))?;
    Ok((ck, bytes[end..].to_vec()))
}

/// Writes the history as CSV.
/// The columns of `WEIGHTS.history.csv` (the wall time stays last).
pub const HISTORY_HEADER: &str =
    "step,loss,ess_per_sample,acceptance,grad_norm,learning_rate,acceptance_iw,acceptance_lognormal,pareto_k,seconds";

fn write_history(path: &Path, history: &[HistoryRow]) -> Result<()> {
    let mut s = String::from(HISTORY_HEADER);
    s.push('\n');
    for r in history {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.step,
            r.loss,
            r.ess,
            r.acceptance,
            r.grad_norm,
            r.learning_rate,
            r.acceptance_iw,
            r.acceptance_lognormal,
            r.pareto_k,
            r.seconds
        ));
    }
    write_atomic(path, s.as_bytes()).with_context(|| format!("cannot write '{}'", path.display()))
}

/// Acceptance of an independence-Metropolis chain through the batch's log-weights, started at
/// the first element, with uniforms from `rng` (a stream of its own, so that the metrics never
/// change the training).
pub fn batch_acceptance(log_w: &[f64], rng: &mut Stream) -> f64 {
    if log_w.len() < 2 {
        return f64::NAN;
    }
    let mut cur = log_w[0];
    let mut acc = 0usize;
    for &lw in &log_w[1..] {
        if metropolis_accept(lw - cur, rng) {
            cur = lw;
            acc += 1;
        }
    }
    acc as f64 / (log_w.len() - 1) as f64
}

/// `--minutes M` as a budget: M must be a finite, positive number of minutes.
pub fn budget(minutes: Option<f64>) -> Result<Option<std::time::Duration>> {
    match minutes {
        None => Ok(None),
        Some(m) if m.is_finite() && m > 0.0 && m < 1e9 => Ok(Some(std::time::Duration::from_secs_f64(60.0 * m))),
        Some(m) => bail!("--minutes must be a positive number of minutes, got {m}"),
    }
}

/// Trains the model of `card_path` and returns the weights path. With a budget
/// ([`TrainOptions::budget`]) it may stop before `[train] steps`: the weights then hold the
/// steps done, a checkpoint is written, a line on stderr says so, and `--resume` continues to
/// the bits of an uninterrupted training.
pub fn train(card_path: &Path, opts: &TrainOptions) -> Result<PathBuf> {
    let card = RunCard::load(card_path)?;
    let file = card.path.display().to_string();
    let tc = card.train.clone().ok_or_else(|| anyhow::anyhow!("{file}: [train]: missing section"))?;
    let mc = card.model.clone().ok_or_else(|| anyhow::anyhow!("{file}: [model]: missing section"))?;
    let weights = mc.weights.clone().ok_or_else(|| {
        anyhow::anyhow!("{file}: model.weights: missing (the path where training writes the weights)")
    })?;
    if let Some(parent) = weights.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("{file}: model.weights: directory '{}' does not exist", parent.display());
        }
    }
    let paths = TrainPaths::new(&weights, tc.plot.as_deref());
    let mut theory = load_theory(&card, &opts.plugin_dirs)?;
    let mut model = build_model(&card, &theory, &opts.plugin_dirs)?;
    let batch = tc.batch as usize;
    let chunks = tc.chunks.max(1) as usize;
    let ranks = opts.job.size();
    if ranks > 1 && !chunks.is_multiple_of(ranks) {
        bail!("{file}: [train] chunks = {chunks} does not split over the job's {ranks} ranks (set chunks to a multiple of {ranks})");
    }
    let seed = train_seed(&card);
    let train_hash = train_hash(&card, &mc, &tc, seed);
    opts.job.check_same("card", &train_hash)?;

    let (mut rng, mut metrics_rng, mut history, start) = begin(&card, &mut model, &paths, &train_hash, seed, opts)?;
    let mut replicas = chunk_replicas(&card, &theory, &mut model, &tc.settings(), chunks / ranks, opts)?;
    if !replicas.is_empty() {
        // each lane evaluates its chunk's action on its own thread, as the models do; a shared
        // pool would make the lanes wait for each other's actions (same bits either way)
        theory.set_threads(1).with_context(|| format!("{file}: run.threads"))?;
    }

    let bar = crate::setup::progress_bar(tc.steps, start, opts.quiet, "steps");

    let mut last_good = start;
    let started = std::time::Instant::now();
    let mut stopped_at = None;
    for step in start..tc.steps {
        let t0 = std::time::Instant::now();
        let diverged = |e: anyhow::Error, last_good: u64| diverged(e, &file, &paths.checkpoint, step + 1, last_good);
        let (m, log_w) = if chunks == 1 {
            let (configs, log_q) = model.train_sample(batch, &mut rng).map_err(|e| diverged(e.into(), last_good))?;
            let (actions, grad) = theory.action_grad(&configs).map_err(|e| diverged(e.into(), last_good))?;
            let m = model.train_step(&actions, &grad).map_err(|e| diverged(e.into(), last_good))?;
            (m, actions.iter().zip(&log_q).map(|(s, q)| -s - q).collect::<Vec<f64>>())
        } else {
            chunked_step(&mut model, &mut replicas, &theory, &opts.job, chunks, batch, &mut rng)
                .map_err(|e| diverged(e, last_good))?
        };
        if !(m.loss.is_finite() && m.grad_norm.is_finite()) {
            return Err(diverged(anyhow::anyhow!("loss {} or gradient norm {} is not finite", m.loss, m.grad_norm), last_good));
        }
        history.push(HistoryRow {
            step: step + 1,
            loss: m.loss,
            ess: ess_per_sample(&log_w),
            acceptance: batch_acceptance(&log_w, &mut metrics_rng),
            acceptance_iw: latflow_stats::imh_acceptance(&log_w),
            acceptance_lognormal: latflow_stats::lognormal_acceptance(&log_w),
            pareto_k: latflow_stats::pareto_k(&log_w),
            grad_norm: m.grad_norm,
            learning_rate: m.learning_rate,
            seconds: t0.elapsed().as_secs_f64(),
        });
        let done = step + 1;
        bar.set_position(done);
        if done % 10 == 0 {
            let recent = &history[history.len().saturating_sub(50)..];
            let mean = |f: fn(&HistoryRow) -> f64| recent.iter().map(f).sum::<f64>() / recent.len() as f64;
            bar.set_message(format!("loss {:.3} ess {:.3} acc {:.3}", mean(|r| r.loss), mean(|r| r.ess), mean(|r| r.acceptance)));
        }
        // with a budget, the root's clock decides, so that every rank stops after the same step
        let stop = match opts.budget {
            Some(b) if done < tc.steps => opts.job.root_decides(started.elapsed() >= b)?,
            _ => false,
        };
        if stop || done % tc.checkpoint_every == 0 || done == tc.steps {
            let ck = TrainCheckpoint {
                train_hash: train_hash.clone(),
                steps_done: done,
                rng: rng.state(),
                metrics_rng: metrics_rng.state(),
                history: history.clone(),
            };
            if opts.job.is_root() {
                save_checkpoint(&paths.checkpoint, &ck, &model.save(true)?)?;
            }
            last_good = done;
        }
        if stop {
            stopped_at = Some(done);
            break;
        }
    }
    bar.finish_and_clear();

    if opts.job.is_root() {
        write_outputs(&file, &paths, &model, &history)?;
        if let (Some(done), Some(b)) = (stopped_at, opts.budget) {
            eprintln!("{}", budget_stop(&file, &paths.checkpoint, b, done, tc.steps));
        }
    }
    Ok(paths.weights)
}

/// The error of a training that stopped at `step` (1-based) with `e`: non-finite numbers (bad
/// data, a numerical error) are a divergence; a plugin that panics or reports another error has
/// failed, and the message says which, and what is kept (the checkpoint of step `last_good`).
fn diverged(e: anyhow::Error, file: &str, checkpoint: &Path, step: u64, last_good: u64) -> anyhow::Error {
    let kept = if last_good > 0 {
        format!("the last good checkpoint (step {last_good}) is kept at '{}'", checkpoint.display())
    } else {
        "no checkpoint was written yet".to_string()
    };
    let failed = matches!(
        e.downcast_ref::<crate::plugin::PluginLoadError>(),
        Some(crate::plugin::PluginLoadError::Call { error, .. }) if error.kind != latflow_core::ErrorKind::Numerical
    );
    let what = if failed { "failed" } else { "diverged" };
    e.context(format!("{file}: training {what} at step {step}; {kept}"))
}

/// The line that says a training stopped at its wall-time budget after step `done` of `steps`.
fn budget_stop(file: &str, checkpoint: &Path, budget: std::time::Duration, done: u64, steps: u64) -> String {
    format!(
        "{file}: training stopped by --minutes {} after step {done} of {steps} (the weights hold step {done}); \
         `latflow train {file} --resume` continues from the checkpoint '{}'",
        budget.as_secs_f64() / 60.0,
        checkpoint.display()
    )
}

/// Words of the training stream reserved for one chunk of a step (far more than a chunk
/// draws): chunk c of a step draws from the step's stream position + c·CHUNK_WORDS.
const CHUNK_WORDS: u128 = 1 << 40;

/// The streams of a step's `chunks` chunks, cut from `rng` at fixed word offsets; `rng` moves
/// past all of them. Errors if the stream has too few words left (never from a fresh stream).
fn chunk_streams(rng: &mut Stream, chunks: usize) -> Result<Vec<Stream>> {
    let base = rng.word_pos();
    let end = base + chunks as u128 * CHUNK_WORDS;
    if end >= 1 << 68 {
        bail!("the training stream is exhausted (its word counter is at {base})");
    }
    let streams = (0..chunks).map(|c| rng.at_word_pos(base + c as u128 * CHUNK_WORDS)).collect();
    *rng = rng.at_word_pos(end);
    Ok(streams)
}

/// The extra models that differentiate a rank's chunks of a data-parallel step side by side
/// (`[train] chunks` > 1 and `[run] threads` > 1, or 0 with more than one core): one per thread
/// beyond the first, up to the rank's chunk count. They and the training model then run their
/// plugin calls on one thread each: one parallel region a step (its chunks) instead of one per
/// kernel call. None otherwise.
///
/// Each starts as a copy of the training model as `begin` left it (weights and Adam's state,
/// through `save(true)` and `load`) and then applies the same averaged gradient every step, so
/// it stays a bit-for-bit copy without the weights crossing the ABI again: the optimiser step is
/// deterministic and runs on one thread in every copy.
fn chunk_replicas(
    card: &RunCard,
    theory: &crate::plugin::TheoryHandle,
    model: &mut ModelHandle,
    settings: &latflow_core::abi::TrainSettings,
    my_chunks: usize,
    opts: &TrainOptions,
) -> Result<Vec<ModelHandle>> {
    let threads = match card.run.threads {
        0 => rayon::current_num_threads(),
        t => t as usize,
    };
    let lanes = threads.min(my_chunks);
    if lanes < 2 {
        return Ok(Vec::new());
    }
    let file = card.path.display();
    model.set_threads(1).with_context(|| format!("{file}: run.threads"))?;
    let state = model.save(true)?;
    (1..lanes)
        .map(|_| {
            let mut r = build_model(card, theory, &opts.plugin_dirs)?;
            r.set_threads(1).with_context(|| format!("{file}: run.threads"))?;
            r.load(&state)?;
            r.train_begin(settings)?;
            Ok(r)
        })
        .collect()
}

/// A lane's chunks of a data-parallel step: (chunk index, [`chunk_gradient`]'s vector).
type LaneResults = Vec<(usize, Vec<f64>)>;

/// One chunk of a data-parallel step on `model`: its loss, log-weights −S − log q and
/// parameter gradient, in that order, as one vector.
fn chunk_gradient(
    model: &mut ModelHandle,
    theory: &crate::plugin::TheoryHandle,
    per_chunk: usize,
    stream: &mut Stream,
) -> Result<Vec<f64>> {
    let (configs, log_q) = model.train_sample(per_chunk, stream)?;
    let (actions, grad) = theory.action_grad(&configs)?;
    let (gradient, loss) = model.train_gradient(&actions, &grad).map_err(|e| match &e {
        crate::plugin::PluginLoadError::Call { error, .. } if error.kind == latflow_core::ErrorKind::Unsupported => {
            anyhow::anyhow!("the model does not support data-parallel training ([train] chunks > 1): {e}")
        }
        _ => e.into(),
    })?;
    let mut out = Vec::with_capacity(1 + per_chunk + gradient.len());
    out.push(loss);
    out.extend(actions.iter().zip(&log_q).map(|(s, q)| -s - q));
    out.extend(gradient);
    Ok(out)
}

/// One data-parallel training step: this rank draws and differentiates its block of the
/// step's chunks, every rank gets every chunk's gradient, loss and log-weights (in chunk
/// order), and applies the mean of the chunk gradients, added in chunk order. So the step has
/// the same bits on any number of ranks that divides `chunks`. With `replicas` (copies of the
/// model, [`chunk_replicas`]), the rank's chunks are shared round-robin between the model
/// (lane 0) and the replicas, each lane on its own thread, and every copy then applies the
/// same mean gradient; every chunk is computed as it would be on its own from the same weights
/// and stream, so the bits do not change. Returns the metrics and the whole batch's
/// log-weights −S − log q.
fn chunked_step(
    model: &mut ModelHandle,
    replicas: &mut [ModelHandle],
    theory: &crate::plugin::TheoryHandle,
    job: &Job,
    chunks: usize,
    batch: usize,
    rng: &mut Stream,
) -> Result<(latflow_core::abi::TrainMetrics, Vec<f64>)> {
    let per_chunk = batch / chunks;
    let mut streams = chunk_streams(rng, chunks)?;
    let block: Vec<usize> = job.block(chunks).collect();
    let mut mine = Vec::new();
    if replicas.is_empty() {
        for &c in &block {
            mine.extend(chunk_gradient(model, theory, per_chunk, &mut streams[c])?);
        }
    } else {
        let lanes = 1 + replicas.len();
        let mut by_lane: Vec<Vec<(usize, Stream)>> = (0..lanes).map(|_| Vec::new()).collect();
        for (i, &c) in block.iter().enumerate() {
            by_lane[i % lanes].push((c, streams[c].clone()));
        }
        let models = std::iter::once(&mut *model).chain(replicas.iter_mut());
        let results: Vec<Result<LaneResults>> = std::thread::scope(|scope| {
            let handles: Vec<_> = models
                .zip(by_lane)
                .map(|(m, work)| {
                    scope.spawn(move || {
                        work.into_iter()
                            .map(|(c, mut s)| Ok((c, chunk_gradient(m, theory, per_chunk, &mut s)?)))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let mut done = Vec::new();
        for r in results {
            done.extend(r?);
        }
        done.sort_by_key(|(c, _)| *c);
        for (_, words) in done {
            mine.extend(words);
        }
    }
    let all = job.gather(&mine)?;
    let mut sum: Vec<f64> = Vec::new();
    let mut loss = 0.0;
    let mut log_w = Vec::with_capacity(batch);
    let per_rank = chunks / job.size();
    for words in &all {
        for chunk in words.chunks(words.len() / per_rank) {
            loss += chunk[0];
            log_w.extend_from_slice(&chunk[1..1 + per_chunk]);
            let g = &chunk[1 + per_chunk..];
            if sum.is_empty() {
                sum = g.to_vec();
            } else {
                sum.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
    }
    let k = chunks as f64;
    sum.iter_mut().for_each(|g| *g /= k);
    // the replicas take the same step as the model, side by side, and so stay its copies
    let (m, copies) = std::thread::scope(|scope| {
        let handles: Vec<_> = replicas.iter_mut().map(|r| scope.spawn(|| r.train_apply(&sum, loss / k))).collect();
        let m = model.train_apply(&sum, loss / k);
        let copies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect();
        (m, copies)
    });
    let m = m?;
    for c in copies {
        c?;
    }
    Ok((m, log_w))
}

/// Everything that determines a training: the theory, the model, the settings and the seed.
fn train_hash(card: &RunCard, mc: &ModelCard, tc: &TrainCard, seed: u64) -> String {
    sha256_hex(
        serde_json::json!({
            "theory": { "plugin": card.theory.plugin, "config": card.theory.config },
            "model": { "plugin": mc.plugin, "config": mc.config, "init_from": mc.init_from },
            "train": tc, "seed": seed,
        })
        .to_string()
        .as_bytes(),
    )
}

/// Starts a training (`model.init_from` applied, fresh streams) or resumes it from its
/// checkpoint (model, optimiser, streams, history). Returns the sampling and metrics streams,
/// the history so far and the number of steps done.
fn begin(
    card: &RunCard,
    model: &mut ModelHandle,
    paths: &TrainPaths,
    train_hash: &str,
    seed: u64,
    opts: &TrainOptions,
) -> Result<(Stream, Stream, Vec<HistoryRow>, u64)> {
    let file = card.path.display().to_string();
    let (tc, mc) = match (&card.train, &card.model) {
        (Some(tc), Some(mc)) => (tc, mc),
        _ => bail!("{file}: [train] and [model] are both needed"),
    };
    let weights = &paths.weights;
    Ok(if opts.resume {
        let (ck, bytes) = load_checkpoint(&paths.checkpoint).with_context(|| format!("{file}: --resume"))?;
        if ck.train_hash != train_hash {
            bail!(
                "{file}: --resume: training checkpoint '{}' was written with different theory, model or [train] settings",
                paths.checkpoint.display()
            );
        }
        model.load(&bytes).with_context(|| format!("{file}: --resume: '{}'", paths.checkpoint.display()))?;
        model.train_begin(&tc.settings()).with_context(|| format!("{file}: [train]"))?;
        (Stream::from_state(&ck.rng), Stream::from_state(&ck.metrics_rng), ck.history, ck.steps_done)
    } else {
        if weights.exists() && !opts.force {
            bail!(
                "{file}: model.weights: '{}' already exists; use --force to train again and overwrite it",
                weights.display()
            );
        }
        if let Some(src) = &mc.init_from {
            let bytes = std::fs::read(src).with_context(|| format!("{file}: model.init_from: cannot read '{}'", src.display()))?;
            model.init_from(&bytes).with_context(|| format!("{file}: model.init_from ('{}')", src.display()))?;
        }
        model.train_begin(&tc.settings()).with_context(|| format!("{file}: [train]"))?;
        (
            stream(seed, StreamUse::Train)?,
            stream(seed, StreamUse::TrainMetrics)?,
            Vec::new(),
            0,
        )
    })
}

/// Writes the history CSV, the training curves and, last, the final weights, each file
/// atomically: the weights mark a finished training, so a run killed before them has no
/// weights (and `--resume` from the checkpoint writes all three), and one killed after them
/// has all three.
fn write_outputs(file: &str, paths: &TrainPaths, model: &ModelHandle, history: &[HistoryRow]) -> Result<()> {
    write_history(&paths.history, history)?;
    let col = |f: fn(&HistoryRow) -> f64| history.iter().map(f).collect::<Vec<f64>>();
    crate::plot::training_curves(
        &paths.plot,
        &col(|r| r.step as f64),
        &col(|r| r.loss),
        &col(|r| r.ess),
        &col(|r| r.acceptance),
        None,
        50,
    )
    .with_context(|| format!("{file}: train.plot"))?;
    write_atomic(&paths.weights, &model.save(false)?).with_context(|| format!("{file}: model.weights"))?;
    Ok(())
}

/// A one-paragraph summary of the last `window` steps of a history.
pub fn summary(history: &[HistoryRow], window: usize) -> String {
    let recent = &history[history.len().saturating_sub(window)..];
    if recent.is_empty() {
        return "no training steps".into();
    }
    let mean = |f: fn(&HistoryRow) -> f64| recent.iter().map(f).sum::<f64>() / recent.len() as f64;
    let time: f64 = history.iter().map(|r| r.seconds).sum();
    format!(
        "{} steps in {:.1} s ({:.2} ms/step); last {} steps: loss {:.4}, ESS/N {:.4}, acceptance {:.4} \
         (stationary estimate {:.4}, log-normal {:.4}; Pareto k̂ {:.2}{})",
        history.len(),
        time,
        1e3 * time / history.len() as f64,
        recent.len(),
        mean(|r| r.loss),
        mean(|r| r.ess),
        mean(|r| r.acceptance),
        mean(|r| r.acceptance_iw),
        mean(|r| r.acceptance_lognormal),
        mean(|r| r.pareto_k),
        if mean(|r| r.pareto_k) > latflow_stats::PARETO_K_MAX { ": heavy-tailed weights, the batch estimates are unreliable" } else { "" }
    )
}

/// Reads a history CSV written by [`train`].
pub fn read_history(path: &Path) -> Result<Vec<HistoryRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: Vec<f64> = l.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<_, _>>()
                .with_context(|| format!("{}: line {}: not numbers", path.display(), i + 2))?;
            // 10 columns ([`HISTORY_HEADER`]), or 7 in files from before the tail estimates
            let (extra, seconds) = match v.len() {
                10 => ([v[6], v[7], v[8]], v[9]),
                7 => ([f64::NAN; 3], v[6]),
                n => bail!("{}: line {}: expected 10 columns (or 7), got {n}", path.display(), i + 2),
            };
            Ok(HistoryRow {
                step: v[0] as u64,
                loss: v[1],
                ess: v[2],
                acceptance: v[3],
                grad_norm: v[4],
                learning_rate: v[5],
                acceptance_iw: extra[0],
                acceptance_lognormal: extra[1],
                pareto_k: extra[2],
                seconds,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint file: the magic, a header length as the file states it, and `rest`.
    fn corrupt_file(name: &str, stated_len: u64, rest: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("latflow-train-ck-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.ckpt");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&stated_len.to_le_bytes());
        bytes.extend_from_slice(rest);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// History rows from before the tail estimates (no such fields), and rows whose NaN
    /// estimates serde_json wrote as null, read back with NaN; so do 7-column history files.
    #[test]
    fn history_rows_without_tail_estimates_read_back_as_nan() {
        let old = r#"{"step":3,"loss":-1.5,"ess":0.2,"acceptance":0.3,"grad_norm":1.0,"learning_rate":0.001,"seconds":0.01}"#;
        let r: HistoryRow = serde_json::from_str(old).unwrap();
        assert!(r.acceptance_iw.is_nan() && r.acceptance_lognormal.is_nan() && r.pareto_k.is_nan());
        assert_eq!((r.step, r.acceptance), (3, 0.3));
        let row = HistoryRow { pareto_k: f64::NAN, acceptance_iw: 0.25, acceptance_lognormal: 0.125, ..r };
        let back: HistoryRow = serde_json::from_str(&serde_json::to_string(&row).unwrap()).unwrap();
        assert!(back.pareto_k.is_nan() && back.acceptance_iw == 0.25 && back.acceptance_lognormal == 0.125);
        let dir = std::env::temp_dir().join(format!("latflow-train-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old_csv, new_csv) = (dir.join("old.csv"), dir.join("new.csv"));
        std::fs::write(&old_csv, "step,loss,ess_per_sample,acceptance,grad_norm,learning_rate,seconds\n3,-1.5,0.2,0.3,1,0.001,0.01\n").unwrap();
        let h = read_history(&old_csv).unwrap();
        assert!(h[0].pareto_k.is_nan() && h[0].seconds == 0.01);
        write_history(&new_csv, &[row]).unwrap();
        let h = read_history(&new_csv).unwrap();
        assert!(h[0].pareto_k.is_nan() && h[0].acceptance_iw == 0.25 && h[0].seconds == 0.01);
        assert!(std::fs::read_to_string(&new_csv).unwrap().starts_with(HISTORY_HEADER));
        std::fs::write(&old_csv, "h\n1,2,3\n").unwrap();
        assert!(read_history(&old_csv).unwrap_err().to_string().contains("expected 10 columns"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_header_length_past_the_end_is_an_error_not_a_panic() {
        for (name, len) in [("max", u64::MAX), ("wrap", u64::MAX - 15), ("long", 1000)] {
            let path = corrupt_file(name, len, b"{}");
            let e = load_checkpoint(&path).unwrap_err().to_string();
            assert!(e.contains("t.ckpt") && e.contains("runs past the end of the file"), "{name}: {e}");
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }
}
