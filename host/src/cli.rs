//! The `latflow` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::plugin::{self, Plugin, SearchPath};
use crate::{analyze, ensemble, flow_cmd, inspect, run};
use latflow_core::gauge::FlowOptions;

/// latflow: lattice field ensembles from HMC and normalizing flows, with exact samplers.
#[derive(Debug, Parser)]
#[command(name = "latflow", version, about)]
pub struct Cli {
    /// Extra directory to search for plugins (repeatable; searched first).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// No progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an ensemble from a run card, then print a summary.
    Run {
        /// The run card (TOML).
        card: PathBuf,
        /// Continue a stopped run from its checkpoint.
        #[arg(long)]
        resume: bool,
        /// Overwrite an existing output file.
        #[arg(long, conflicts_with = "resume")]
        force: bool,
        /// Train the model first (per the card's [train]) when `model.weights` does not exist
        /// yet; `[train] before_run = true` asks for the same. Without either, missing weights
        /// are an error.
        #[arg(long)]
        train: bool,
        /// Print one JSON object (the files written, the analysis with its warnings, and the
        /// comparison with the card's [reference] values) instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Train the card's [model] against its [theory] by reverse-KL self-training ([train]).
    Train {
        /// The run card (TOML) with [theory], [model] (with `weights`) and [train].
        card: PathBuf,
        /// Continue from the training checkpoint.
        #[arg(long)]
        resume: bool,
        /// Overwrite existing weights.
        #[arg(long, conflicts_with = "resume")]
        force: bool,
        /// A wall-time budget in minutes: training stops after the first step that ends past it,
        /// writes the weights of that step and a checkpoint, and `--resume` continues.
        #[arg(long, value_name = "M")]
        minutes: Option<f64>,
    },
    /// Γ-method analysis of an ensemble: mean, error, τ_int per observable; acceptance per step.
    Analyze {
        file: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List every plugin on the search path, its version, path and what it provides.
    Plugins {
        /// For broken libraries, print the loader's full report.
        #[arg(long)]
        verbose: bool,
    },
    /// Show an ensemble's provenance and contents.
    Inspect { file: PathBuf },
    /// Write stored SU(3) configurations of a 4D ensemble as ILDG files (one per configuration,
    /// DIR/STEM.INDEX.lime), printing the plaquette of each.
    Export(crate::ildg::cli::ExportArgs),
    /// Read ILDG/LIME or NERSC gauge files into a new latflow ensemble (one configuration each).
    Import(crate::ildg::cli::ImportArgs),
    /// Gradient flow of every stored SU(2)/SU(3) configuration: t^2<E>, <Q>, <Q^2> against
    /// flow time, and t0/a^2, w0/a with Γ-method errors (the file is only read).
    Flow {
        file: PathBuf,
        /// Largest flow time t/a^2 (measurements at 0, dt, 2dt, …, tmax).
        #[arg(long, default_value_t = 4.0, allow_negative_numbers = true)]
        tmax: f64,
        /// Spacing of the measurement times.
        #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
        dt: f64,
        /// Explicit measurement times instead of the grid (comma-separated, increasing).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        times: Option<Vec<f64>>,
        /// Integration step ε (the first step with --adaptive).
        #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
        eps: f64,
        /// Flow action: wilson or symanzik.
        #[arg(long, default_value = "wilson")]
        scheme: String,
        /// Adaptive step size with this local error tolerance per step.
        #[arg(long, value_name = "TOL", allow_negative_numbers = true)]
        adaptive: Option<f64>,
        /// Coupling of a replica-exchange ensemble.
        #[arg(long, default_value_t = 0)]
        coupling: usize,
        /// Also write the table to this file (CSV, or JSON for a .json name).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// SU(N) HMC on a lattice split over the ranks of the job (`mpirun -np R latflow scaling`
    /// with the `mpi` feature): per-trajectory ΔH and plaquette (the same on any rank count),
    /// time, messages, and a model of the communication cost at 16 and 256 ranks.
    Scaling(crate::scaling::ScalingArgs),
    /// Compare samplers on one target by cost per independent sample (a bench card: [theory],
    /// [bench], [[contender]]); writes the ensembles, bench.json and PNG plots to bench.output.
    Bench {
        /// The bench card (TOML).
        card: PathBuf,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The command's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run { .. } => "run",
            Command::Train { .. } => "train",
            Command::Analyze { .. } => "analyze",
            Command::Plugins { .. } => "plugins",
            Command::Inspect { .. } => "inspect",
            Command::Flow { .. } => "flow",
            Command::Export(_) => "export",
            Command::Import(_) => "import",
            Command::Bench { .. } => "bench",
            Command::Scaling(_) => "scaling",
        }
    }
}

/// Parses the arguments, runs the command, and maps errors to a message and exit code 1.
pub fn main() -> ExitCode {
    latflow_core::workers::keep_freed_memory();
    candle_on_the_calling_thread();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets `CANDLE_NUM_THREADS=1` for the model plugins, unless the environment sets it. candle
/// runs its CPU element-wise ops on a global pool of its own, sized from that variable (else
/// `RAYON_NUM_THREADS`, else the cores) and blind to `[run] threads`, whose workers spin between
/// ops; with two training lanes (`[train] chunks`) both queue on its one lock. The models'
/// parallel work is in their fused kernels on the pool `[run] threads` gives them, so candle's
/// own ops run on the calling thread. The numbers never change (element-wise ops), only the
/// threads: 60 training steps of a φ⁴ flow at L = 16 with `threads = 1` took 4.6 s of CPU time
/// with candle's pool of 2 and 3.1 s without.
fn candle_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY (set_var is safe in edition 2021, and sound here): called first in `main`,
        // before any other thread exists or any plugin is loaded.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// On several ranks, a rank whose command failed prints its error and ends the whole job
/// (the other ranks may be waiting for it in a collective call); passes `result` on.
fn end_job_on_error<T>(job: &crate::job::Job, session: &crate::mpi::Session, result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        if job.size() > 1 {
            eprintln!("error (rank {}): {e:#}", job.rank());
            session.abort_job(1);
        }
    }
    result
}

/// Runs one parsed command.
pub fn dispatch(cli: Cli) -> Result<()> {
    let multi_rank = matches!(cli.command, Command::Run { .. } | Command::Train { .. } | Command::Scaling(_));
    let (job, session) = crate::mpi::start(cli.command.name(), multi_rank)?;
    match cli.command {
        Command::Run { card, resume, force, train, json } => {
            run_command(&RunArgs { card, resume, force, train, json }, cli.quiet, cli.plugin_dirs, job, &session)?
        }
        Command::Train { card, resume, force, minutes } => {
            let root = job.is_root();
            let budget = crate::train::budget(minutes)?;
            let opts = crate::train::TrainOptions { quiet: cli.quiet || !root, plugin_dirs: cli.plugin_dirs, resume, force, budget, job };
            let weights = end_job_on_error(&opts.job, &session, crate::train::train(&card, &opts))?;
            if !root {
                return Ok(());
            }
            let mut hist = weights.clone().into_os_string();
            hist.push(".history.csv");
            let history = crate::train::read_history(std::path::Path::new(&hist))?;
            println!("wrote {} (history {}, plot beside it)", weights.display(), std::path::Path::new(&hist).display());
            println!("{}", crate::train::summary(&history, 100));
        }
        Command::Analyze { file, json } => {
            let a = analyze::analyze(&ensemble::read_or_exit_after(&file, read_limit()?)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a.to_json())?);
            } else {
                print!("{}", a.to_text());
            }
        }
        Command::Plugins { verbose } => print_plugins(&cli.plugin_dirs, verbose),
        Command::Flow { file, tmax, dt, times, eps, scheme, adaptive, coupling, out, json } => {
            let flow = FlowOptions { eps, scheme: flow_cmd::parse_scheme(&scheme)?, adaptive };
            let times = flow_cmd::flow_times(tmax, dt, times.as_deref())?;
            let report = flow_cmd::flow_file(&file, &flow_cmd::FlowCommand { times, flow, coupling, read_limit: Some(read_limit()?) })?;
            if let Some(out) = &out {
                flow_cmd::write_report(&report, out)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Inspect { file } => {
            print!("{}", inspect::describe(&ensemble::read_or_exit_after(&file, read_limit()?)?))
        }
        Command::Export(args) => crate::ildg::cli::export(&args, read_limit()?)?,
        Command::Import(args) => crate::ildg::cli::import(&args)?,
        Command::Scaling(args) => match end_job_on_error(&job, &session, crate::scaling::run(&args, &job))? {
            Some(report) if args.json => println!("{}", serde_json::to_string_pretty(&report)?),
            Some(report) => print!("{}", crate::scaling::to_text(&report)),
            None => {}
        },
        Command::Bench { card, json } => {
            let opts = crate::bench::BenchOptions { quiet: cli.quiet || json, plugin_dirs: cli.plugin_dirs, force: true };
            let report = crate::bench::bench(&card, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.to_text());
            }
        }
    }
    Ok(())
}

/// The arguments of `latflow run`.
struct RunArgs {
    card: PathBuf,
    resume: bool,
    force: bool,
    train: bool,
    json: bool,
}

/// `latflow run`: trains first where asked, runs the card on the job's ranks, and on the root
/// prints what was written (or that a resumed run was complete) and the summary, as text or JSON.
fn run_command(
    args: &RunArgs,
    quiet: bool,
    plugin_dirs: Vec<PathBuf>,
    job: crate::job::Job,
    session: &crate::mpi::Session,
) -> Result<()> {
    let (card, resume, force, train, json) = (&args.card, args.resume, args.force, args.train, args.json);
    if job.size() > 1 && train {
        bail!("--train: train the model first (`latflow train CARD`, on one process or, with [train] chunks, on the ranks), then start the run");
    }
    if !resume {
        train_before_run(card, train, quiet, &plugin_dirs)?;
    }
    let root = job.is_root();
    let opts = run::RunOptions { resume, force, quiet, plugin_dirs, job, read_limit: Some(read_limit()?) };
    let complete = if resume { run::completed_sweeps(card)? } else { None };
    let output = end_job_on_error(&opts.job, session, run::run(card, &opts))?;
    if !root {
        return Ok(());
    }
    let chains = match crate::card::RunCard::load(card) {
        Ok(c) if c.run.chains > 1 => (0..c.run.chains).map(|k| c.run.chain_output(k).display().to_string()).collect(),
        _ => vec![output.display().to_string()],
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary_json(card, &output, &chains, complete.is_some())?)?);
        return Ok(());
    }
    match complete {
        Some(total) => println!(
            "nothing to do: {} is complete ({total} of {total} sweeps); nothing was run or written",
            output.display()
        ),
        None if chains.len() > 1 => {
            println!("wrote {} independent chains: {} (the summary below is chain 0's)", chains.len(), chains.join(", "))
        }
        None => println!("wrote {}", output.display()),
    }
    print_summary(card, &output)?;
    Ok(())
}

/// `latflow plugins`: the interface version, the search path, and every plugin library found
/// (name, version, kind, path, core version, what it provides), or why a library was refused
/// (with the loader's detail when `verbose`).
fn print_plugins(plugin_dirs: &[PathBuf], verbose: bool) {
    let search = SearchPath::new(plugin_dirs);
    println!("plugin interface version {} (latflow-core)", Plugin::host_interface_version());
    println!("search path: {}", search.describe());
    let listing = plugin::list(&search);
    if listing.is_empty() {
        println!("no plugin libraries found");
    }
    for l in listing {
        match l.result {
            Ok(p) => {
                let note = if l.shadowed { " (shadowed by an earlier plugin of the same name)" } else { "" };
                println!(
                    "{} {} [{:?}] {}{}\n    built against latflow-core {}\n    {}",
                    p.info.name,
                    p.info.version,
                    p.info.kind,
                    p.path.display(),
                    note,
                    p.core_version,
                    p.info.description
                );
                for item in p.info.provides.iter() {
                    println!("    {item}");
                }
            }
            Err(e) => {
                println!("BROKEN {}\n    {e}", l.path.display());
                if let (true, plugin::PluginLoadError::Load { detail, .. }) = (verbose, &e) {
                    for line in detail.lines() {
                        println!("      | {line}");
                    }
                }
            }
        }
    }
}

/// `latflow run --train` and `[train] before_run = true`: trains the card's model (as
/// `latflow train` does) when its `model.weights` does not exist yet. Nothing happens when
/// neither asks for it, or when the weights exist (they are used as they are).
fn train_before_run(card_path: &Path, flag: bool, quiet: bool, plugin_dirs: &[PathBuf]) -> Result<()> {
    let card = crate::card::RunCard::load(card_path)?;
    let asked = flag || card.train.as_ref().is_some_and(|t| t.before_run);
    if !asked {
        return Ok(());
    }
    let file = card.path.display();
    if card.ladder.is_some() {
        bail!(
            "{file}: --train / [train] before_run: a replica ladder's models are trained one coupling at a time; \
             run `latflow train` on a card for each coupling"
        );
    }
    let weights = card.model.as_ref().and_then(|m| m.weights.clone());
    let Some(weights) = weights else {
        bail!("{file}: --train / [train] before_run: needs [model] with `weights` (the path where training writes them)");
    };
    if card.train.is_none() {
        bail!("{file}: --train: the card has no [train] section");
    }
    if weights.exists() {
        if !quiet {
            eprintln!(
                "note: {file}: model.weights '{}' exists: sampling with it as it is (`latflow train --force` retrains)",
                weights.display()
            );
        }
        return Ok(());
    }
    let opts = crate::train::TrainOptions {
        quiet,
        plugin_dirs: plugin_dirs.to_vec(),
        resume: false,
        force: false,
        budget: None,
        job: Default::default(),
    };
    crate::train::train(card_path, &opts)?;
    Ok(())
}

/// Prints the analysis of a finished run and, for plain runs, its comparison with the card's
/// `[reference]` values.
fn print_summary(card: &Path, output: &Path) -> Result<()> {
    let all = analyze::analyze(&ensemble::read(output)?)?;
    print!("{}", all.to_text());
    let Some(analysis) = all.plain() else { return Ok(()) };
    let reference = crate::card::RunCard::load(card)?.reference;
    if !reference.is_empty() {
        let cmp = analysis.compare(&reference).map_err(|e| anyhow::anyhow!("{}: {e}", card.display()))?;
        println!("{:<22} {:>20} {:>20} {:>7}", "reference", "measured", "reference", "z");
        for c in cmp {
            let note = if c.reliable { "" } else { "  (unreliable: see the warnings)" };
            println!(
                "{:<22} {:>20} {:>20} {:>+7.2}{note}",
                c.name,
                analyze::value_error(c.mean, c.error),
                if c.reference_error == 0.0 { c.reference.to_string() } else { analyze::value_error(c.reference, c.reference_error) },
                c.z
            );
        }
    }
    Ok(())
}

/// `run --json`: the files (`written`: every chain's file; `nothing_to_do`: a finished run
/// resumed), the analysis of `output` (chain 0's) as `analyze --json` prints it, warnings
/// included, and the comparison with the card's `[reference]` values (name, mean, error,
/// reference, reference_error, z, reliable: false when a warning concerns the observable).
fn summary_json(card: &Path, output: &Path, written: &[String], nothing_to_do: bool) -> Result<serde_json::Value> {
    let all = analyze::analyze(&ensemble::read(output)?)?;
    let reference = crate::card::RunCard::load(card)?.reference;
    let comparison: Vec<serde_json::Value> = match all.plain() {
        Some(a) if !reference.is_empty() => a
            .compare(&reference)
            .map_err(|e| anyhow::anyhow!("{}: {e}", card.display()))?
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "mean": c.mean, "error": c.error, "reference": c.reference,
                    "reference_error": c.reference_error, "z": c.z, "reliable": c.reliable,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(serde_json::json!({
        "written": written,
        "nothing_to_do": nothing_to_do,
        "analysis": all.to_json(),
        "reference": comparison,
    }))
}

/// How long `analyze` and `inspect` wait for HDF5 to read a file before declaring it damaged
/// ([`ensemble::read_or_exit_after`]): `LATFLOW_READ_TIMEOUT_S` seconds, default 600 (reading
/// a large ensemble's measurements takes seconds; a damaged file can make HDF5 loop forever).
fn read_limit() -> Result<std::time::Duration> {
    match std::env::var("LATFLOW_READ_TIMEOUT_S") {
        Err(_) => Ok(std::time::Duration::from_secs(600)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(std::time::Duration::from_secs(s)),
            _ => anyhow::bail!("LATFLOW_READ_TIMEOUT_S: expected a whole number of seconds > 0, got '{v}'"),
        },
    }
}
