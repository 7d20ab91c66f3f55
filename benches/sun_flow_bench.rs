//! Quality and cost of the SU(N) gauge-equivariant flow (`flow-sun`) in one run: acceptance and
//! ESS after a stated training budget, training step time and proposals/s on 1 and 2 threads
//! (against the PyTorch peer of the same architecture when a Python with torch is given), and
//! the training saved by transfer (a β ladder and an 8 → 16 volume step).
//!
//! ```text
//! cargo run --release -p latflow-benches --example sun_flow_bench -- \
//!     [--steps 300] [--n-eval 4096] [--groups 2,3] [--betas 1,2,4,6] \
//!     [--python /path/to/python-with-torch] [--peer-steps 30] [--no-transfer] [--quick]
//! ```
//!
//! The model is the plugin's shared library loaded through the plugin ABI (the example first
//! runs `cargo build --release -p latflow-flow-sun`), with its defaults spelt out: 16 spectral
//! spline layers (K = 8) on the active plaquettes, stripe masks of period 4, CNN hidden [8, 8],
//! kernel 3, f32, `init_seed` 0. The theory is the sun plugin (rlib) with the Wilson action
//! S = −(β/N) Σ_x Re Tr P(x) on an L × L periodic lattice. Training is the host's route
//! (`train_sample` → `action_grad` → `train_step`), Adam with learning rate 1e-3, constant.
//!
//! Sections (human-readable lines on stderr; the last stdout line is one JSON object):
//! 1. **Quality**: for each N and β, `--steps` steps at batch `--batch` from scratch, then
//!    `--n-eval` proposals: the flow-Metropolis (independence sampler) acceptance, the
//!    reweighting ESS per sample (Σw)²/(N Σw²), log Ẑ = ln mean(e^{−S − log q}) (log q is a
//!    density with respect to the normalised Haar measure, so log Ẑ estimates the log Z of the
//!    normalised measure), and the mean loss of the last tenth of the steps.
//! 2. **Cost** at β = 2 (the criterion bench's setup): the median wall time of a training step
//!    at batch 64 and proposals/s (sample + action) at B = 64 and 1024, with the model and the
//!    theory on 1 and 2 threads; with `--python` (or `$LATFLOW_PEER_PYTHON`) the peer
//!    `benches/peers/sun_flow.py` runs right after each at the same thread count, and the
//!    ratio latflow / PyTorch of the step times is printed (the issue's goal: ≤ 0.5).
//! 3. **Transfer** (unless `--no-transfer`): a β ladder, each β of the list whose β − 2 is
//!    also in it initialised (`init_from`) from that model of section 1; and a volume step, L = 16 initialised from
//!    the L = 8 model at `--volume-beta`, against L = 16 from scratch. Each pair trains the
//!    same number of steps with the same seed; reported: the loss after equal steps (mean of
//!    the last tenth), and the steps the transferred run needed for its running mean loss
//!    (window: a tenth of the steps) to reach the scratch run's final loss (steps saved =
//!    steps − that), and both runs' ESS per sample.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use abi_stable::std_types::RSlice;
use clap::Parser;
use latflow_core::abi::{ModelBox, PluginModRef, Theory};
use latflow_core::sdk::Adapter;
use latflow_core::{RngState, Stream};
use latflow_sun::Sun;
use serde_json::{json, Value};

/// The plugin's default architecture, spelt out (the peer's).
const MODEL: &str = r#"{"layers": 16, "hidden": [8, 8], "kernel": 3, "coupling": "spectral_spline", "spline_bins": 8, "mask_period": 4, "dtype": "f32", "init_seed": 0}"#;

/// Configurations per `sample` call in the evaluation.
const EVAL_CHUNK: usize = 1024;

#[derive(Debug, Parser)]
#[command(name = "sun_flow_bench", about = "flow-sun quality, cost against PyTorch, and transfer, in one run")]
struct Args {
    /// Training steps of every run (the training budget is steps × batch configurations).
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Configurations per training step.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Proposals of each evaluation.
    #[arg(long, default_value_t = 4096)]
    n_eval: usize,
    /// The N of SU(N), comma-separated (2 and/or 3).
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    groups: Vec<usize>,
    /// The couplings β, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,6")]
    betas: Vec<f64>,
    /// Lattice extent of the quality and cost sections (a multiple of 4).
    #[arg(long, default_value_t = 8)]
    lattice: usize,
    /// Threads of the quality and transfer runs.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Timed training steps per thread count in the cost section (after 3 untimed ones).
    #[arg(long, default_value_t = 20)]
    timing_steps: usize,
    /// Python interpreter with torch for the peer (else `$LATFLOW_PEER_PYTHON`; no peer when
    /// neither is set).
    #[arg(long)]
    python: Option<String>,
    /// Training steps of each peer run (its median step time is compared).
    #[arg(long, default_value_t = 30)]
    peer_steps: usize,
    /// Skip the transfer section.
    #[arg(long)]
    no_transfer: bool,
    /// β of the 8 → 16 volume step (taken from the quality runs, so it must be in --betas).
    #[arg(long, default_value_t = 2.0)]
    volume_beta: f64,
    /// A smoke run: 30 steps, 512 proposals, 5 timed steps, 5 peer steps.
    #[arg(long)]
    quick: bool,
    /// Seed of training and evaluation.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

fn main() {
    let mut args = Args::parse();
    if args.quick {
        (args.steps, args.n_eval, args.timing_steps, args.peer_steps) = (30, 512, 5, 5);
    }
    if let Err(e) = check_args(&args) {
        eprintln!("sun_flow_bench: {e}");
        std::process::exit(2);
    }
    let lib = common::model_plugin("latflow-flow-sun");
    let (quality, models) = quality(lib, &args);
    let cost = cost(lib, &args);
    let transfer = if args.no_transfer { json!({"skipped": "--no-transfer"}) } else { transfer(lib, &args, &models) };
    let out = json!({
        "benchmark": "sun_flow_bench",
        "model": serde_json::from_str::<Value>(MODEL).expect("MODEL is JSON"),
        "training": {"steps": args.steps, "batch": args.batch, "learning_rate": 1e-3, "optimizer": "adam"},
        "log_q_measure": "normalised Haar measure on every link (log Z-hat estimates the log Z of that measure)",
        "quality": quality,
        "cost": cost,
        "transfer": transfer,
        "load_end": common::load_average(),
    });
    println!("{out}");
}

fn check_args(args: &Args) -> Result<(), String> {
    if args.groups.is_empty() || args.groups.iter().any(|&n| n != 2 && n != 3) {
        return Err(format!("--groups: 2 and/or 3, got {:?}", args.groups));
    }
    if args.betas.is_empty() || args.betas.iter().any(|&b| !(b.is_finite() && b > 0.0)) {
        return Err(format!("--betas: positive couplings, got {:?}", args.betas));
    }
    if args.lattice < 4 || !args.lattice.is_multiple_of(4) {
        return Err(format!("--lattice: a multiple of the mask period 4, got {}", args.lattice));
    }
    if args.steps < 10 || args.batch == 0 || args.n_eval < 2 || args.timing_steps == 0 {
        return Err("--steps ≥ 10, --batch ≥ 1, --n-eval ≥ 2 and --timing-steps ≥ 1 are needed".into());
    }
    if !args.no_transfer && !args.betas.contains(&args.volume_beta) {
        return Err(format!("--volume-beta {} is not among --betas {:?}", args.volume_beta, args.betas));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Plugin, theory, model

/// The setup of one run: SU(n), L × L, β.
#[derive(Debug, Clone, Copy)]
struct Setup {
    n: usize,
    l: usize,
    beta: f64,
}

impl Setup {
    fn theory(&self, threads: u32) -> Adapter<Sun> {
        let card =
            format!(r#"{{"lattice": [{l}, {l}], "n": {n}, "beta": {b}}}"#, l = self.l, n = self.n, b = self.beta);
        let mut th = Adapter::<Sun>::from_json(&card).unwrap_or_else(|e| panic!("sun theory {card}: {e}"));
        th.set_threads(threads).into_result().expect("theory threads");
        th
    }

    fn label(&self) -> String {
        format!("SU({}) L={} β={}", self.n, self.l, self.beta)
    }
}

fn in_pool<R: Send>(threads: u32, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads as usize)
        .build()
        .unwrap_or_else(|e| panic!("cannot start {threads} threads: {e}"))
        .install(f)
}

/// `steps` training steps (host route); returns the losses and the wall time per step (s).
fn train(m: &mut ModelBox, th: &Adapter<Sun>, steps: usize, batch: u32, state: &mut RngState) -> (Vec<f64>, Vec<f64>) {
    m.train_begin(&common::adam_settings(batch)).into_result().unwrap_or_else(|e| panic!("train_begin: {e}"));
    let (mut losses, mut times) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for _ in 0..steps {
        let t = Instant::now();
        let p = m.train_sample(state).into_result().unwrap_or_else(|e| panic!("train_sample: {e}"));
        let ag = th.action_grad(RSlice::from_slice(&p.configs)).into_result().expect("action_grad");
        let met = m
            .train_step(ag.actions.as_rslice(), ag.grad.as_rslice())
            .into_result()
            .unwrap_or_else(|e| panic!("train_step: {e}"));
        times.push(t.elapsed().as_secs_f64());
        losses.push(met.loss);
    }
    (losses, times)
}

/// Mean of the last tenth (at least one) of `x`.
fn tail_mean(x: &[f64]) -> f64 {
    let k = (x.len() / 10).max(1);
    x[x.len() - k..].iter().sum::<f64>() / k as f64
}

fn median(x: &[f64]) -> f64 {
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The evaluation of a model as a proposal distribution: `n` proposals (drawn from stream
/// `(seed, 2)`), their log-weights ln w = −S − log q, the independence-Metropolis acceptance
/// along them (uniforms from stream `(seed, 4)`), the ESS per sample, log Ẑ, and the plaquette
/// ⟨Re Tr P/N⟩ along the chain (from S).
fn evaluate(m: &ModelBox, th: &Adapter<Sun>, s: Setup, n: usize, seed: u64) -> Value {
    let mut state = Stream::new(seed, 2).state();
    let mut rng = Stream::new(seed, 4);
    let mut log_w = Vec::with_capacity(n);
    let mut actions = Vec::with_capacity(n);
    let t = Instant::now();
    while log_w.len() < n {
        let b = EVAL_CHUNK.min(n - log_w.len()) as u32;
        let p = m.sample(b, &mut state).into_result().unwrap_or_else(|e| panic!("sample: {e}"));
        let a = th.action(RSlice::from_slice(&p.configs)).into_result().expect("action");
        log_w.extend(a.iter().zip(p.log_q.iter()).map(|(s, lq)| -s - lq));
        actions.extend(a.iter().copied());
    }
    let seconds = t.elapsed().as_secs_f64();
    let (mut cur, mut accepted, mut plaq_sum) = (0usize, 0usize, 0.0);
    let per_site = -(s.beta * (s.l * s.l) as f64);
    for i in 1..n {
        if rng.uniform().ln() < log_w[i] - log_w[cur] {
            cur = i;
            accepted += 1;
        }
        plaq_sum += actions[cur] / per_site;
    }
    let log_z = latflow_stats::log_sum_exp(&log_w) - (n as f64).ln();
    json!({
        "n": n,
        "acceptance": accepted as f64 / (n - 1) as f64,
        "ess_per_sample": latflow_stats::ess_per_sample(&log_w),
        "log_z_estimate": log_z,
        "plaquette_chain_mean": plaq_sum / (n - 1) as f64,
        "proposals_per_s": n as f64 / seconds,
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Quality

/// A finished run: its JSON record, its losses and the model's weights.
struct Trained {
    record: Value,
    losses: Vec<f64>,
    bytes: Vec<u8>,
}

/// The quality section's runs by (N, β in thousandths).
type Models = BTreeMap<(usize, i64), Trained>;

fn key(n: usize, beta: f64) -> (usize, i64) {
    (n, (beta * 1000.0).round() as i64)
}

/// One training run from `init` (scratch when `None`) and its evaluation.
fn run(lib: PluginModRef, args: &Args, s: Setup, init: Option<&[u8]>) -> Trained {
    let th = s.theory(args.threads);
    in_pool(args.threads, || {
        let mut m = common::new_model(lib, MODEL, &th.layout(), args.threads);
        if let Some(bytes) = init {
            m.init_from(RSlice::from_slice(bytes)).into_result().unwrap_or_else(|e| panic!("init_from: {e}"));
        }
        let mut state = Stream::new(args.seed, 1).state();
        let t = Instant::now();
        let (losses, times) = train(&mut m, &th, args.steps, args.batch, &mut state);
        let train_s = t.elapsed().as_secs_f64();
        let ev = evaluate(&m, &th, s, args.n_eval, args.seed);
        let bytes = m.save(false).into_result().unwrap_or_else(|e| panic!("save: {e}")).to_vec();
        let record = json!({
            "n": s.n, "L": s.l, "beta": s.beta, "init_from": init.is_some(),
            "final_loss": tail_mean(&losses), "train_seconds": train_s, "step_ms_median": 1e3 * median(&times),
            "evaluation": ev,
        });
        Trained { record, losses, bytes }
    })
}

fn quality(lib: PluginModRef, args: &Args) -> (Value, Models) {
    let mut rows = Vec::new();
    let mut models = Models::new();
    eprintln!(
        "quality: {} steps × batch {} from scratch ({} threads), then {} proposals",
        args.steps, args.batch, args.threads, args.n_eval
    );
    eprintln!("  group    L  beta   loss       log Z-hat   acceptance  ESS/N   <plaq>   train s");
    for &n in &args.groups {
        for &beta in &args.betas {
            let s = Setup { n, l: args.lattice, beta };
            let t = run(lib, args, s, None);
            let row = &t.record;
            let ev = &row["evaluation"];
            eprintln!(
                "  SU({n})  {:>3}  {beta:>4}  {:>9.3}  {:>10.3}  {:>10.3}  {:>6.3}  {:>7.4}  {:>7.1}",
                args.lattice,
                row["final_loss"].as_f64().unwrap_or(f64::NAN),
                ev["log_z_estimate"].as_f64().unwrap_or(f64::NAN),
                ev["acceptance"].as_f64().unwrap_or(f64::NAN),
                ev["ess_per_sample"].as_f64().unwrap_or(f64::NAN),
                ev["plaquette_chain_mean"].as_f64().unwrap_or(f64::NAN),
                row["train_seconds"].as_f64().unwrap_or(f64::NAN),
            );
            rows.push(row.clone());
            models.insert(key(n, beta), t);
        }
    }
    (json!(rows), models)
}

// ---------------------------------------------------------------------------------------------
// 2. Cost

/// Median step time (ms) over `args.timing_steps` steps after 3 untimed ones, and proposals/s
/// (sample + action) at B = 64 and 1024, on `threads` threads.
fn cost_point(lib: PluginModRef, args: &Args, s: Setup, threads: u32) -> Value {
    let th = s.theory(threads);
    in_pool(threads, || {
        let mut m = common::new_model(lib, MODEL, &th.layout(), threads);
        let mut state = Stream::new(args.seed, 3).state();
        train(&mut m, &th, 3, 64, &mut state);
        let (_, times) = train(&mut m, &th, args.timing_steps, 64, &mut state);
        let mut rate = |b: u32, reps: usize| {
            let t = Instant::now();
            for _ in 0..reps {
                let p = m.sample(b, &mut state).into_result().expect("sample");
                std::hint::black_box(th.action(RSlice::from_slice(&p.configs)).into_result().expect("action"));
            }
            (b as usize * reps) as f64 / t.elapsed().as_secs_f64()
        };
        let reps = if args.quick { 1 } else { 3 };
        let (r64, r1024) = (rate(64, 4 * reps), rate(1024, reps));
        json!({"threads": threads, "step_ms_median": 1e3 * median(&times), "proposals_per_s_b64": r64,
               "proposals_per_s_b1024": r1024})
    })
}

fn peer_python(args: &Args) -> Option<String> {
    args.python.clone().or_else(|| std::env::var("LATFLOW_PEER_PYTHON").ok().filter(|p| !p.is_empty()))
}

/// Runs a program and returns the JSON object of its last stdout line.
fn run_json(cmd: &mut Command) -> Result<Value, String> {
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{cmd:?} failed ({}): {}", out.status, err.lines().last().unwrap_or("")));
    }
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("{cmd:?}: last line is not JSON ({e})"))
}

/// The PyTorch peer at the same setup and thread count: its training and evaluation JSON.
fn peer(python: &str, args: &Args, s: Setup, threads: u32) -> Result<Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/sun_flow.py");
    let mut cmd = Command::new(python);
    cmd.args([script, "--n", &s.n.to_string(), "--L", &s.l.to_string(), "--beta", &s.beta.to_string()]);
    cmd.args(["--steps", &args.peer_steps.to_string(), "--n-eval", "1024", "--threads", &threads.to_string()]);
    cmd.args(["--seed", &args.seed.to_string()]);
    run_json(&mut cmd)
}

fn cost(lib: PluginModRef, args: &Args) -> Value {
    let python = peer_python(args);
    if python.is_none() {
        eprintln!("cost: no PyTorch peer (pass --python PATH or set LATFLOW_PEER_PYTHON to a Python with torch)");
    }
    let mut rows = Vec::new();
    for &n in &args.groups {
        let s = Setup { n, l: args.lattice, beta: 2.0 };
        for threads in [1u32, 2] {
            let mut row = cost_point(lib, args, s, threads);
            let ours = row["step_ms_median"].as_f64().unwrap_or(f64::NAN);
            let mut line = format!(
                "cost {} {threads} thread(s): step {ours:.1} ms (batch 64), {:.0} proposals/s at B = 64, {:.0} at B = 1024",
                s.label(),
                row["proposals_per_s_b64"].as_f64().unwrap_or(f64::NAN),
                row["proposals_per_s_b1024"].as_f64().unwrap_or(f64::NAN)
            );
            if let Some(py) = &python {
                match peer(py, args, s, threads) {
                    Ok(v) => {
                        let theirs = v["training"]["step_ms_median"].as_f64().unwrap_or(f64::NAN);
                        let pr = v["evaluation"]["proposals_per_s_bs1000"].as_f64().unwrap_or(f64::NAN);
                        line += &format!(
                            "; PyTorch step {theirs:.1} ms, {pr:.0} proposals/s at B = 1000; step time latflow / PyTorch = {:.3}",
                            ours / theirs
                        );
                        row["peer"] = json!({"step_ms_median": theirs, "proposals_per_s_bs1000": pr,
                            "proposals_per_s_bs64": v["evaluation"]["proposals_per_s_bs64"], "steps": args.peer_steps,
                            "machine": v["machine"]});
                        row["step_time_ratio_latflow_over_peer"] = json!(ours / theirs);
                    }
                    Err(e) => {
                        line += &format!("; PyTorch peer failed: {e}");
                        row["peer"] = json!({"failed": e});
                    }
                }
            }
            eprintln!("{line}");
            rows.push(row);
        }
    }
    json!(rows)
}

// ---------------------------------------------------------------------------------------------
// 3. Transfer

/// The first step at which the running mean of `losses` over `window` steps is ≤ `target`.
fn steps_to_reach(losses: &[f64], window: usize, target: f64) -> Option<usize> {
    let w = window.max(1);
    (w..=losses.len()).find(|&end| losses[end - w..end].iter().sum::<f64>() / w as f64 <= target)
}

/// Transferred (from weights `from`) against `scratch` (trained here when `None`) at one setup.
fn compare(lib: PluginModRef, args: &Args, s: Setup, from: &[u8], what: &str, scratch: Option<&Trained>) -> Value {
    let own;
    let scratch = match scratch {
        Some(t) => t,
        None => {
            own = run(lib, args, s, None);
            &own
        }
    };
    let Trained { record: moved, losses, .. } = run(lib, args, s, Some(from));
    let target = tail_mean(&scratch.losses);
    let reach = steps_to_reach(&losses, args.steps / 10, target);
    let saved = reach.map(|r| args.steps as i64 - r as i64);
    let ess = |v: &Value| v["evaluation"]["ess_per_sample"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "transfer {what} → {}: loss after {} steps {:.3} (scratch {:.3}); scratch's final loss reached at step {} \
         (steps saved {}); ESS/N {:.3} (scratch {:.3})",
        s.label(),
        args.steps,
        tail_mean(&losses),
        target,
        reach.map_or("never".into(), |r| r.to_string()),
        saved.map_or("none".into(), |r| r.to_string()),
        ess(&moved),
        ess(&scratch.record),
    );
    json!({"setup": {"n": s.n, "L": s.l, "beta": s.beta}, "from": what, "scratch": scratch.record, "transferred": moved,
           "steps_to_reach_scratch_final_loss": reach, "steps_saved": saved})
}

fn transfer(lib: PluginModRef, args: &Args, models: &Models) -> Value {
    let mut ladder = Vec::new();
    let mut volume = Vec::new();
    for &n in &args.groups {
        for &beta in &args.betas {
            let (Some(from), Some(scratch)) = (models.get(&key(n, beta - 2.0)), models.get(&key(n, beta))) else {
                continue;
            };
            let s = Setup { n, l: args.lattice, beta };
            ladder.push(compare(lib, args, s, &from.bytes, &format!("β = {} model", beta - 2.0), Some(scratch)));
        }
        let from = &models[&key(n, args.volume_beta)].bytes;
        let s = Setup { n, l: 2 * args.lattice, beta: args.volume_beta };
        volume.push(compare(lib, args, s, from, &format!("L = {} model", args.lattice), None));
    }
    json!({"beta_ladder": ladder, "volume": volume})
}

