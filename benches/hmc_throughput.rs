//! Single-chain φ⁴ HMC throughput, set up like the peer baseline `phi4_hmc.py`
//! (benches/peers), for side-by-side comparisons (`tools/compare_peers.sh`).
//!
//! ```text
//! cargo run --release -p latflow-host --example hmc_throughput -- \
//!     [--lattice 8,32,128] [--threads 1] [--trajectories 0] [--md-steps 0] \
//!     [--integrator leapfrog|omelyan2] [--seed 4321] [--measure peer|full] [--via-trait]
//! ```
//!
//! Theory: 2D φ⁴ at the tutorial point (m² = −4, λ = 8), S = Σ_x [Σ_μ (φ(x+μ̂) − φ(x))² + m²φ² +
//! λφ⁴] — the same action as the peer's. For each L, as the peer does:
//! 1. start from 0.1·N(0,1), 200 trajectories with 20 MD steps;
//! 2. unless `--md-steps` is given, scan n_md over the peer's list 4,5,6,8,10,12,15,20
//!    (300 trajectories each) and take the first with acceptance ≥ 0.80 (or the last);
//! 3. `--therm` (1000) more trajectories, then the timed loop: `--trajectories` trajectories
//!    (default: about 2 s worth, at least 2000),
//!    each followed by one measurement (`peer`: |M|/V and S, as the peer records; `full`: the
//!    plugin's whole observable set, correlator included).
//!
//! traj/s = trajectories / wall time of the timed loop (measurement included). Threads: the
//! plugin's own workers (`set_threads`, as `[run] threads` in `latflow run`: a rayon pool and a
//! spinning team) of `--threads` threads (0 = rayon's global pool); the kernel only goes
//! parallel at ≥ 8192 sites (L ≥ 91 in 2D). Freed memory is kept as `latflow` keeps it. The default path calls
//! `Adapter::hmc_vec` (the plugin's HMC, monomorphised, no ABI); `--via-trait` goes through the
//! `Theory` trait methods the host uses instead (`hmc` + `measure`, with their per-call copies
//! and checks), still without loading the .so.
//!
//! Human-readable lines go to stderr; the last stdout line is one JSON object
//! `{"benchmark": "phi4_hmc_throughput", ..., "runs": [{"L": .., "traj_per_s": .., ...}, ...]}`.

use std::time::Instant;

use abi_stable::std_types::{RSlice, RSliceMut};
use clap::{Parser, ValueEnum};
use latflow_core::abi::{HmcParams, IntegratorKind, Theory};
use latflow_stats::gamma_method;
use latflow_core::Stream;
use latflow_core::sdk::Adapter;
use latflow_phi4::Phi4;
use serde_json::json;

/// The peer's n_md scan list and acceptance target (phi4_hmc.py defaults).
const PEER_SCAN: [u32; 8] = [4, 5, 6, 8, 10, 12, 15, 20];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Integrator {
    Leapfrog,
    Omelyan2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measure {
    /// |M|/V (a plain sum over sites) and S, like the peer.
    Peer,
    /// The plugin's full observable set (action density, φ², M, |M|, χ₂, energy, correlator).
    Full,
}

/// Single-chain φ⁴ HMC throughput at the tutorial point, like benches/peers/phi4_hmc.py.
#[derive(Debug, Parser)]
#[command(name = "hmc_throughput")]
struct Args {
    /// Lattice sizes L (L×L), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    lattice: Vec<usize>,
    /// Threads of the rayon pool everything runs in (0 = rayon's global pool).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed trajectories per L (0 = auto: about 2 s at the rate of the thermalisation phase,
    /// at least 2000).
    #[arg(long, default_value_t = 0)]
    trajectories: usize,
    /// MD steps per trajectory (0 = tune like the peer: first of 4,5,6,8,10,12,15,20 with
    /// acceptance ≥ --target-acc over --scan-traj trajectories).
    #[arg(long, default_value_t = 0)]
    md_steps: u32,
    /// MD integrator (the peer uses leapfrog).
    #[arg(long, value_enum, default_value_t = Integrator::Leapfrog)]
    integrator: Integrator,
    /// Trajectory length τ.
    #[arg(long, default_value_t = 1.0)]
    tau: f64,
    /// Seed of the random stream.
    #[arg(long, default_value_t = 4321)]
    seed: u64,
    /// Thermalisation trajectories after tuning (not timed).
    #[arg(long, default_value_t = 1000)]
    therm: usize,
    /// Trajectories per n_md in the tuning scan.
    #[arg(long, default_value_t = 300)]
    scan_traj: usize,
    /// Acceptance target of the tuning scan.
    #[arg(long, default_value_t = 0.80)]
    target_acc: f64,
    /// m².
    #[arg(long, default_value_t = -4.0, allow_hyphen_values = true)]
    m2: f64,
    /// λ.
    #[arg(long, default_value_t = 8.0)]
    lambda: f64,
    /// What is measured after each timed trajectory.
    #[arg(long, value_enum, default_value_t = Measure::Peer)]
    measure: Measure,
    /// Go through the `Theory` trait (`hmc` + `measure`), as the host does, instead of `hmc_vec`.
    #[arg(long)]
    via_trait: bool,
}

struct Chain<'a> {
    th: &'a mut Adapter<Phi4>,
    phi: Vec<f64>,
    rng: Stream,
    via_trait: bool,
}

impl Chain<'_> {
    /// Runs `n` trajectories with `p`, calling `each(theory, φ, accepted, ΔH, S)` after each;
    /// returns the number accepted.
    fn run(&mut self, p: &HmcParams, n: usize, mut each: impl FnMut(&Adapter<Phi4>, &[f64], bool, f64, f64)) -> usize {
        let mut acc = 0;
        for _ in 0..n {
            let rec = if self.via_trait {
                let mut st = self.rng.state();
                let r = self.th.hmc(RSliceMut::from_mut_slice(&mut self.phi), p, 1, &mut st).unwrap();
                self.rng = Stream::from_state(&st);
                r[0]
            } else {
                self.th.hmc_vec(&mut self.phi, p, 1, &mut self.rng).unwrap()[0]
            };
            acc += usize::from(rec.accepted);
            each(&*self.th, &self.phi, rec.accepted, rec.delta_h, rec.action);
        }
        acc
    }
}

fn params(args: &Args, md_steps: u32) -> HmcParams {
    HmcParams {
        trajectory_length: args.tau,
        md_steps,
        integrator: match args.integrator {
            Integrator::Leapfrog => IntegratorKind::Leapfrog,
            Integrator::Omelyan2 => IntegratorKind::Omelyan2,
        },
        ..HmcParams::default()
    }
}

/// The outermost step count: `args.md_steps` if given, else the first of the peer's scan whose
/// acceptance reaches `args.target_acc` (the last one otherwise), with the scan's records.
fn tune_md_steps(args: &Args, l: usize, ch: &mut Chain<'_>) -> (u32, Vec<serde_json::Value>) {
    let none = |_: &Adapter<Phi4>, _: &[f64], _: bool, _: f64, _: f64| {};
    let mut scan = Vec::new();
    if args.md_steps > 0 {
        return (args.md_steps, scan);
    }
    for n in PEER_SCAN {
        let t = Instant::now();
        let acc = ch.run(&params(args, n), args.scan_traj, none) as f64 / args.scan_traj as f64;
        let rate = args.scan_traj as f64 / t.elapsed().as_secs_f64();
        eprintln!("L={l} scan n_md={n}: acc {acc:.3}");
        scan.push(json!({"nmd": n, "acc": acc, "traj_per_s": rate}));
        if acc >= args.target_acc {
            return (n, scan);
        }
    }
    (PEER_SCAN[PEER_SCAN.len() - 1], scan)
}

fn run_one(args: &Args, l: usize) -> serde_json::Value {
    let mut th =
        Adapter::<Phi4>::from_json(&format!(r#"{{"lattice": [{l}, {l}], "m2": {}, "lambda": {}}}"#, args.m2, args.lambda))
            .unwrap_or_else(|e| panic!("phi4 config: {e:?}"));
    if args.threads > 0 {
        // the plugin's own worker threads, as `[run] threads` gives them in `latflow run`
        th.set_threads(args.threads as u32).into_result().unwrap_or_else(|e| panic!("threads: {e:?}"));
    }
    let v = l * l;
    let mut rng = Stream::new(args.seed, 0);
    let mut phi = vec![0.0; v];
    rng.fill_normal(&mut phi);
    phi.iter_mut().for_each(|p| *p *= 0.1);
    let mut ch = Chain { th: &mut th, phi, rng, via_trait: args.via_trait };
    let none = |_: &Adapter<Phi4>, _: &[f64], _: bool, _: f64, _: f64| {};

    // 1–2: thermalise with a safe step count, then tune like the peer.
    ch.run(&params(args, 20), 200, none);
    let (md_steps, scan) = tune_md_steps(args, l, &mut ch);
    let p = params(args, md_steps);
    let t = Instant::now();
    ch.run(&p, args.therm, none);
    let therm_rate = args.therm as f64 / t.elapsed().as_secs_f64();

    // 3: the timed loop, one measurement per trajectory.
    let n_traj = if args.trajectories > 0 {
        args.trajectories
    } else {
        // about 2 s at the thermalisation rate, and at least 2000 trajectories
        ((2.0 * therm_rate) as usize).clamp(2000, 1_000_000)
    };
    let mut abs_m = Vec::with_capacity(n_traj);
    let mut act = Vec::with_capacity(n_traj);
    let mut dh = Vec::with_capacity(n_traj);
    let measure = args.measure;
    let via_trait = args.via_trait;
    let t = Instant::now();
    let acc = ch.run(&p, n_traj, |th, phi, _, d, s| {
        match measure {
            Measure::Peer => {
                let m: f64 = phi.iter().sum();
                abs_m.push(m.abs() / v as f64);
            }
            Measure::Full => {
                let obs = if via_trait {
                    th.measure(RSlice::from_slice(phi)).unwrap().into_vec()
                } else {
                    let mut o = Vec::with_capacity(6 + l);
                    th.kernel().observables(phi, th.couplings().m2, th.couplings().lambda, &mut o);
                    o
                };
                abs_m.push(obs[3]);
            }
        }
        act.push(s);
        dh.push(d);
    });
    let secs = t.elapsed().as_secs_f64();

    let traj_per_s = n_traj as f64 / secs;
    let acceptance = acc as f64 / n_traj as f64;
    let exp_mdh = dh.iter().map(|d| (-d).exp()).sum::<f64>() / n_traj as f64;
    let chi2: Vec<f64> = abs_m.iter().map(|a| a * a * v as f64).collect();
    let g_m = gamma_method(&abs_m, 1.5).ok();
    let g_s = gamma_method(&act, 1.5).ok();
    let g_chi = gamma_method(&chi2, 1.5).ok();
    let tau_of = |g: &Option<latflow_stats::GammaResult>| g.as_ref().map(|g| g.tau_int);
    let tau_worst = tau_of(&g_m).unwrap_or(f64::NAN).max(tau_of(&g_s).unwrap_or(f64::NAN));
    eprintln!(
        "L={l} n_md {md_steps} acc {acceptance:.3} traj/s {traj_per_s:.1} tau|M| {:.2} tauS {:.2} chi2 {:.4}+-{:.4} <exp(-dH)> {exp_mdh:.3}",
        tau_of(&g_m).unwrap_or(f64::NAN),
        tau_of(&g_s).unwrap_or(f64::NAN),
        g_chi.as_ref().map_or(f64::NAN, |g| g.mean),
        g_chi.as_ref().map_or(f64::NAN, |g| g.error),
    );
    json!({
        "L": l,
        "volume": v,
        "integrator": format!("{:?}", args.integrator).to_lowercase(),
        "tau": args.tau,
        "nmd": md_steps,
        "eps": args.tau / f64::from(md_steps),
        "tune_scan": scan,
        "ntraj": n_traj,
        "ntherm": args.therm,
        "time_s": secs,
        "traj_per_s": traj_per_s,
        "sec_per_traj": secs / n_traj as f64,
        "site_updates_per_s": traj_per_s * v as f64,
        "acceptance": acceptance,
        "mean_exp_minus_dH": exp_mdh,
        "tau_int_absM": tau_of(&g_m),
        "tau_int_S": tau_of(&g_s),
        "indep_samples_per_s": traj_per_s / (2.0 * tau_worst),
        "chi2": g_chi.as_ref().map(|g| [g.mean, g.error]),
    })
}

fn main() {
    latflow_core::workers::keep_freed_memory();
    let args = Args::parse();
    let threads_effective = if args.threads == 0 { rayon::current_num_threads() } else { args.threads };
    let runs: Vec<serde_json::Value> = args.lattice.iter().map(|&l| run_one(&args, l)).collect();
    let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
        let v: Vec<f64> = s.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
        (v.len() == 3).then_some(v)
    });
    let out = json!({
        "benchmark": "phi4_hmc_throughput",
        "implementation": "latflow",
        "path": if args.via_trait { "Theory::hmc + Theory::measure" } else { "Adapter::hmc_vec" },
        "measure": format!("{:?}", args.measure).to_lowercase(),
        "theory": {"m2": args.m2, "lam": args.lambda, "dim": 2},
        "threads": threads_effective,
        "seed": args.seed,
        "loadavg_end": load,
        "runs": runs,
    });
    println!("{out}");
}
