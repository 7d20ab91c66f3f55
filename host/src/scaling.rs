//! `latflow scaling`: the domain-decomposed SU(N) HMC of [`latflow_core::gauge::domain`] on
//! the ranks of the job, with what it costs: per trajectory ΔH, acceptance, plaquette and wall
//! time; per rank the messages sent and the time spent communicating; measured message latency
//! and bandwidth; and a model of the communication cost that predicts the parallel efficiency
//! at more ranks than this machine has (and at 2 ranks, to set against the measurement).
//!
//! The same arguments on 1 rank and on R ranks give the same link fields (and, when every
//! rank's slab holds whole reduction chunks, the same ΔH bits): the printed histories can be
//! compared line by line (tools/mpi_check.sh does).
//!
//! # The cost model
//! One trajectory on P ranks, each holding V_loc sites, costs
//!
//! T(P) = c·V_loc + n_x·Σ_faces 2·(α + b_face/B) + n_r·α_r·⌈log₂ P⌉,
//!
//! with c the compute time per site and trajectory (measured here: wall time minus time in
//! communication, per site), n_x the halo exchanges and n_r the reductions per trajectory
//! (counted here), b_face the bytes of one face of the local block (d links of REALS reals per
//! site of the face), α the latency and B the bandwidth of one paired message (measured here
//! between ranks 0 and 1 with messages of one real and of one face), and α_r the time of one
//! small allgather on 2 ranks (measured), assumed to grow as log₂ P (recursive doubling).
//! Assumptions: c does not depend on V_loc (no cache effects), messages in different
//! directions do not overlap with each other or with computation, diagonal (edge) halos that a
//! grid split in several directions needs are neglected, and the network is either this
//! machine's shared memory (measured) or a typical InfiniBand link (α = 2 µs, B = 12 GB/s,
//! stated, not measured). Weak scaling keeps this run's local block; strong scaling splits a
//! 32⁴ lattice over a hypercubic process grid.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RVec};
use anyhow::{bail, Context, Result};
use bytemuck::Pod;
use serde_json::json;

use latflow_core::abi::PluginError;
use latflow_core::comm::{self, CommBox, Communicator, Communicator_TO};
use latflow_core::gauge::domain::{CommCount, Domain, DomainLinkSpace, DomainWilson};
use latflow_core::gauge::{GaugeGroup, Neighbours, Su2, Su3};
use latflow_core::hmc::{hmc_trajectory, LeveledAction, LevelSchedule, Schedule, Scheme};
use latflow_core::Stream;

use crate::job::{comm_error, Job};

/// The gauge group of a scaling run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    Su2,
    Su3,
}

/// The arguments of `latflow scaling`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingArgs {
    /// The gauge group.
    #[arg(long, value_enum, default_value_t = Group::Su3)]
    pub group: Group,
    /// The global lattice, comma-separated (split along the first axis over the ranks).
    #[arg(long, value_delimiter = ',', default_value = "8,8,8,8")]
    pub lattice: Vec<usize>,
    /// The Wilson coupling β.
    #[arg(long, default_value_t = 5.7, allow_negative_numbers = true)]
    pub beta: f64,
    /// HMC trajectories (from a hot start; no thermalisation is implied).
    #[arg(long, default_value_t = 4)]
    pub trajectories: u32,
    /// Omelyan-2 steps per trajectory of length 1.
    #[arg(long, default_value_t = 8)]
    pub md_steps: u32,
    /// The seed of the hot start and of the momenta.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Repetitions of each latency and bandwidth measurement.
    #[arg(long, default_value_t = 200)]
    pub reps: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The job's communicator, timing every call (for the time spent communicating).
struct Timed {
    job: Job,
    seconds: Arc<Mutex<f64>>,
}

impl Timed {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *self.seconds.lock().unwrap_or_else(|e| e.into_inner()) += t.elapsed().as_secs_f64();
        out
    }
}

impl Communicator for Timed {
    fn rank(&self) -> u32 {
        self.job.comm().rank()
    }
    fn size(&self) -> u32 {
        self.job.comm().size()
    }
    fn sendrecv(&self, send: RSlice<'_, f64>, dest: u32, source: u32, recv_len: u64) -> RResult<RVec<f64>, PluginError> {
        self.time(|| self.job.comm().sendrecv(send, dest, source, recv_len))
    }
    fn allgather(&self, send: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        self.time(|| self.job.comm().allgather(send))
    }
}

/// Seconds spent in the [`Timed`] communicator so far.
struct Clock(Arc<Mutex<f64>>);

impl Clock {
    fn get(&self) -> f64 {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check(args: &ScalingArgs) -> Result<()> {
    if !(args.beta.is_finite() && args.beta > 0.0) {
        bail!("--beta must be a positive number, got {}", args.beta);
    }
    if args.trajectories == 0 || args.md_steps == 0 || args.reps == 0 {
        bail!("--trajectories, --md-steps and --reps must be at least 1");
    }
    if args.lattice.len() < 2 || args.lattice.iter().any(|&l| l < 2) {
        bail!("--lattice needs at least 2 extents, each at least 2 (got {:?})", args.lattice);
    }
    if args.lattice.iter().try_fold(1usize, |v, &l| v.checked_mul(l)).is_none_or(|v| v > 1 << 26) {
        bail!("--lattice {:?} is too large for this command (at most 2^26 sites)", args.lattice);
    }
    Ok(())
}

/// Runs the decomposed HMC on the job's ranks; on the root, returns the report (JSON) and on
/// the other ranks `None`. Collective: every rank must call it with the same arguments.
pub fn run(args: &ScalingArgs, job: &Job) -> Result<Option<serde_json::Value>> {
    check(args)?;
    // the same arguments on every rank (a hash of them, checked like a run card's)
    job.check_same("the scaling arguments", &crate::setup::sha256_hex(format!("{args:?}").as_bytes()))?;
    let seconds = Arc::new(Mutex::new(0.0));
    let clock = Clock(seconds.clone());
    let comm: CommBox = Communicator_TO::from_value(Timed { job: job.clone(), seconds }, TD_Opaque);
    let report = match args.group {
        Group::Su2 => run_group::<Su2>(args, &comm, &clock),
        Group::Su3 => run_group::<Su3>(args, &comm, &clock),
    }?;
    Ok(job.is_root().then_some(report))
}

/// The largest of one value per rank.
fn max_over_ranks(comm: &CommBox, v: f64) -> Result<f64> {
    comm::max_over_ranks(comm, v).map_err(comm_error)
}

fn run_group<G: GaugeGroup + Pod>(args: &ScalingArgs, comm: &CommBox, clock: &Clock) -> Result<serde_json::Value>
where
    G::Algebra: Pod,
{
    let shape = &args.lattice;
    let d = shape.len();
    let dom = Domain::for_comm(shape, comm, 1)?;
    let count = CommCount::default();
    let space = DomainLinkSpace::<G>::new(&dom, comm, &count);
    let term = DomainWilson::new(&dom, comm, &count, args.beta);
    let mut action = LeveledAction::single(Box::new(&term));
    let schedule = Schedule {
        tau: 1.0,
        levels: vec![LevelSchedule { steps: args.md_steps, scheme: Scheme::Omelyan2 { lambda: 0.1931833275037836 } }],
        jitter: 0.0,
    };
    // the hot start of one rank: every rank draws its slab of it
    let mut rng = Stream::new(args.seed, 0);
    let mut u = space.random(&mut rng)?;
    let mut history = Vec::new();
    let comm_before = clock.get();
    let counts_before = count.get();
    let mut total = 0.0;
    for t in 0..args.trajectories {
        let t0 = Instant::now();
        let rec = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hmc_trajectory(&space, &mut action, &mut u, &schedule, true, &mut rng)
        }))
        .map_err(|p| anyhow::anyhow!("trajectory {t}: {}", panic_text(&p)))?
        .with_context(|| format!("trajectory {t}"))?;
        let seconds = max_over_ranks(comm, t0.elapsed().as_secs_f64())?;
        total += seconds;
        let plaquette = term.mean_plaquette(&u)?;
        history.push(json!({
            "delta_h": rec.delta_h, "accepted": rec.accepted, "plaquette": plaquette, "seconds": seconds,
        }));
    }
    let n = f64::from(args.trajectories);
    let comm_seconds = max_over_ranks(comm, clock.get() - comm_before)? / n;
    let after = count.get();
    let per = |a: u64, b: u64| (a - b) as f64 / n;
    let exchanges = per(after.0, counts_before.0);
    let reductions = per(after.2, counts_before.2);
    let slab_bytes = dom.halo_reals(d * G::REALS) / 2 * 8;
    let seconds_per_traj = total / n;
    let net = measure_network(comm, slab_bytes / 8, args.reps)?;
    let compute_per_site = (seconds_per_traj - comm_seconds).max(0.0) / dom.sites() as f64;
    let (_, size) = dom.rank();
    let mut local = shape.clone();
    local[0] /= size;
    let model = Model {
        dim: d,
        reals_per_link: G::REALS,
        compute_per_site,
        exchanges,
        reductions,
        allgather: net.allgather,
    };
    let predictions: Vec<serde_json::Value> = [("this machine (measured)", net.latency, net.bandwidth), ("InfiniBand (assumed)", 2e-6, 12e9)]
        .iter()
        .filter(|(_, lat, bw)| lat.is_finite() && bw.is_finite())
        .map(|&(network, lat, bw)| {
            let rows: Vec<serde_json::Value> = [2usize, 16, 256]
                .iter()
                .map(|&p| {
                    json!({
                        "ranks": p,
                        "weak_efficiency": model.weak(&local, p, lat, bw),
                        "strong_efficiency_32^4": model.strong(32, p, lat, bw),
                    })
                })
                .collect();
            json!({"network": network, "latency_s": lat, "bandwidth_bytes_per_s": bw, "predictions": rows})
        })
        .collect();
    Ok(json!({
        "group": format!("SU({})", G::NC),
        "lattice": shape,
        "local_lattice": local,
        "ranks": size,
        "threads_per_rank": rayon::current_num_threads(),
        "beta": args.beta,
        "md_steps": args.md_steps,
        "seed": args.seed,
        "trajectories": history,
        "seconds_per_trajectory": seconds_per_traj,
        "comm_seconds_per_trajectory": comm_seconds,
        "per_trajectory": {"halo_exchanges": exchanges, "halo_bytes_per_message": slab_bytes, "reductions": reductions},
        "measured": {
            "latency_s": finite_or_null(net.latency),
            "bandwidth_bytes_per_s": finite_or_null(net.bandwidth),
            "allgather_s": net.allgather,
            "compute_s_per_site_and_trajectory": compute_per_site,
        },
        "model": predictions,
    }))
}

fn finite_or_null(x: f64) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

struct Network {
    /// Seconds of one paired message of one real (NaN on one rank).
    latency: f64,
    /// Bytes per second of a slab-sized paired message beyond the latency (NaN on one rank).
    bandwidth: f64,
    /// Seconds of one allgather of two reals over the job.
    allgather: f64,
}

/// Ping-pong style timings: ranks 2k and 2k+1 exchange messages of 1 real and of `slab` reals
/// (`reps` times each, the mean, the largest over ranks); every rank times small allgathers.
fn measure_network(comm: &CommBox, slab: usize, reps: u32) -> Result<Network> {
    let (rank, size) = (comm.rank(), comm.size());
    let partner = if size > 1 && (rank ^ 1) < size { Some(rank ^ 1) } else { None };
    let time_msg = |len: usize| -> Result<f64> {
        let buf = vec![1.0; len];
        // warm up once
        if let Some(p) = partner {
            comm.sendrecv(RSlice::from_slice(&buf), p, p, len as u64).into_result().map_err(comm_error)?;
        }
        let t = Instant::now();
        for _ in 0..reps {
            if let Some(p) = partner {
                comm.sendrecv(RSlice::from_slice(&buf), p, p, len as u64).into_result().map_err(comm_error)?;
            }
        }
        let mine = if partner.is_some() { t.elapsed().as_secs_f64() / f64::from(reps) } else { 0.0 };
        max_over_ranks(comm, mine)
    };
    let small = time_msg(1)?;
    let large = time_msg(slab.max(2))?;
    let t = Instant::now();
    for _ in 0..reps {
        comm.allgather(RSlice::from_slice(&[1.0, 2.0])).into_result().map_err(comm_error)?;
    }
    let allgather = max_over_ranks(comm, t.elapsed().as_secs_f64() / f64::from(reps))?;
    if size < 2 {
        return Ok(Network { latency: f64::NAN, bandwidth: f64::NAN, allgather });
    }
    let extra = (large - small).max(1e-12);
    Ok(Network { latency: small, bandwidth: ((slab.max(2) - 1) * 8) as f64 / extra, allgather })
}

/// The communication-cost model of the module docs.
struct Model {
    dim: usize,
    reals_per_link: usize,
    compute_per_site: f64,
    exchanges: f64,
    reductions: f64,
    allgather: f64,
}

impl Model {
    /// Seconds per trajectory of a local block `local` on a process grid splitting the
    /// directions where `split[μ]`, over `ranks` ranks.
    fn time(&self, local: &[usize], split: &[bool], ranks: usize, latency: f64, bandwidth: f64) -> f64 {
        let v: usize = local.iter().product();
        let compute = self.compute_per_site * v as f64;
        let halo: f64 = (0..self.dim)
            .filter(|&mu| split[mu])
            .map(|mu| {
                let face_bytes = (v / local[mu] * self.dim * self.reals_per_link * 8) as f64;
                2.0 * (latency + face_bytes / bandwidth)
            })
            .sum();
        let reduce = if ranks > 1 { self.allgather * (ranks as f64).log2().ceil() } else { 0.0 };
        compute + self.exchanges * halo + self.reductions * reduce
    }

    /// The hypercubic process grid of `ranks` (a power of 2^d, or 2^k spread over the first
    /// directions): ranks per direction.
    fn grid(&self, ranks: usize) -> Vec<usize> {
        let mut grid = vec![1; self.dim];
        let mut left = ranks;
        let mut mu = 0;
        while left > 1 {
            grid[mu % self.dim] *= 2;
            left /= 2;
            mu += 1;
        }
        grid
    }

    /// Weak-scaling efficiency T(1)/T(P) with the local block fixed.
    fn weak(&self, local: &[usize], ranks: usize, latency: f64, bandwidth: f64) -> f64 {
        let split: Vec<bool> = self.grid(ranks).iter().map(|&g| g > 1).collect();
        let one = self.time(local, &vec![false; self.dim], 1, latency, bandwidth);
        one / self.time(local, &split, ranks, latency, bandwidth)
    }

    /// Strong-scaling efficiency T(1)/(P·T(P)) of an L^d lattice.
    fn strong(&self, l: usize, ranks: usize, latency: f64, bandwidth: f64) -> f64 {
        let grid = self.grid(ranks);
        let local: Vec<usize> = grid.iter().map(|&g| (l / g).max(1)).collect();
        let split: Vec<bool> = grid.iter().map(|&g| g > 1).collect();
        let one = self.time(&vec![l; self.dim], &vec![false; self.dim], 1, latency, bandwidth);
        one / (ranks as f64 * self.time(&local, &split, ranks, latency, bandwidth))
    }
}

/// The report as a table.
pub fn to_text(r: &serde_json::Value) -> String {
    let mut s = format!(
        "decomposed {} HMC, lattice {} on {} rank(s) (local {}), {} thread(s) per rank, beta {}\n",
        r["group"].as_str().unwrap_or(""),
        dims(&r["lattice"]),
        r["ranks"],
        dims(&r["local_lattice"]),
        r["threads_per_rank"],
        r["beta"]
    );
    s.push_str("traj  accepted  delta_h                   plaquette              seconds\n");
    for (t, h) in r["trajectories"].as_array().into_iter().flatten().enumerate() {
        s.push_str(&format!(
            "{t:>4}  {:<8}  {:+.17e}  {:.17}  {:.4}\n",
            if h["accepted"].as_bool().unwrap_or(false) { "yes" } else { "no" },
            h["delta_h"].as_f64().unwrap_or(f64::NAN),
            h["plaquette"].as_f64().unwrap_or(f64::NAN),
            h["seconds"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let pt = &r["per_trajectory"];
    s.push_str(&format!(
        "per trajectory: {:.4} s, {:.4} s communicating; {} halo exchanges of 2 messages of {} bytes, {} reductions\n",
        r["seconds_per_trajectory"].as_f64().unwrap_or(f64::NAN),
        r["comm_seconds_per_trajectory"].as_f64().unwrap_or(f64::NAN),
        pt["halo_exchanges"],
        pt["halo_bytes_per_message"],
        pt["reductions"]
    ));
    let m = &r["measured"];
    s.push_str(&format!(
        "measured: latency {} s, bandwidth {} B/s, allgather {:.3e} s, compute {:.3e} s per site and trajectory\n",
        m["latency_s"], m["bandwidth_bytes_per_s"], m["allgather_s"].as_f64().unwrap_or(f64::NAN),
        m["compute_s_per_site_and_trajectory"].as_f64().unwrap_or(f64::NAN)
    ));
    for net in r["model"].as_array().into_iter().flatten() {
        for p in net["predictions"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "model, {}: {} ranks: weak-scaling efficiency {:.3}, strong scaling of 32^4 {:.3}\n",
                net["network"].as_str().unwrap_or(""),
                p["ranks"],
                p["weak_efficiency"].as_f64().unwrap_or(f64::NAN),
                p["strong_efficiency_32^4"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    s
}

fn dims(v: &serde_json::Value) -> String {
    v.as_array().map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x")).unwrap_or_default()
}
