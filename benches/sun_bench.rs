//! SU(3) performance in one run: this machine's limits, the gauge kernels against them, HMC
//! throughput against the peers, and scaling with the volume and the thread count.
//!
//! ```text
//! cargo run --release -p latflow-benches --example sun_bench -- \
//!     [--python python3] [--no-peer] [--lqcd-rs PATH] [--trajectories 400] [--quick]
//!     [--kernels-only | --scaling-only | --dirac-only]
//! ```
//!
//! Sections (human-readable lines on stderr; the last stdout line is one JSON object):
//! 1. **Limits.** A flop loop on one thread (independent chains of x ← x·b + c; plain
//!    multiply-then-add, the instruction mix of the kernels, at the baseline ISA and, where
//!    the CPU has them, AVX2 and AVX-512; and fused multiply-add with FMA3 / AVX-512, the
//!    machine's peak), and a STREAM-like triad a = b + s·c on 3 × 64 MiB arrays (1 and 2
//!    threads; 24 bytes per element, no write-allocate traffic counted, as in STREAM).
//! 2. **Kernels** (SU(3), Wilson, d = 4, one thread, at 4⁴, 8⁴, 16⁴): the force (staples),
//!    the action (plaquettes), the field update exp(εP)U, the momentum refresh, kick and
//!    kinetic energy, and the force, action and drift in each compiled variant (baseline,
//!    AVX2, AVX-512; the same bits). Times are thread CPU time per call. Flops are counted for
//!    the arithmetic the kernels execute (see [`force_flops_per_site`],
//!    [`ACTION_FLOPS_PER_SITE`]), bytes as the compulsory traffic of links and momenta (each
//!    read or written once, 8 bytes per real; the force's scratch of corner products is not
//!    counted). The percentage is of the roofline bound min(peak flops, flops/byte × triad
//!    bandwidth), with the plain multiply-add peak at the widest ISA the kernels use (they
//!    never fuse, so that results do not depend on the machine), and with the FMA peak.
//! 3. **HMC, 4⁴, β = 5.7,** the peer's setup: cold start, 30 warm-up trajectories with 40
//!    leapfrog steps, then leapfrog τ = 1 with 15 steps; traj/s on one thread (measured
//!    plaquette included: it comes from each trajectory's action), acceptance, ⟨e^{−ΔH}⟩, and
//!    the plaquette. The PyTorch peer (`benches/peers/su3_hmc.py`, one torch thread) runs in
//!    the same process tree right after, and the ratio is printed; lattice-qcd-rs runs too if
//!    `--lqcd-rs` names its built program (benches/peers/lattice-qcd-rs).
//! 4. **Scaling:** HMC at 8⁴ and 16⁴ on 1 and 2 threads (short runs): a hot start thermalised
//!    by 20 heat-bath sweeps, one warm-up trajectory, then τ = 1 with 20 (8⁴) or 40 (16⁴)
//!    leapfrog steps, so that the timed trajectories are accepted as in production (ΔH grows as
//!    V ε⁴); traj/s, MD steps/s, acceptance and plaquette. Then the theory's own Markov steps
//!    (`heatbath`, `overrelax`) in sweeps/s where the plugin offers them.
//! 5. **The Wilson–Dirac operator** (SU(3), d = 4, κ = 0.12, random links, at 8⁴ and 16⁴):
//!    D ψ in each compiled variant of the hopping kernel on one thread (thread CPU time), then
//!    the same in the lanes layout the solvers use (packed fields, each variant), and both
//!    layouts' widest on 2 threads (wall time), with 1320 flops and 960 compulsory bytes per site
//!    against the same roofline (`--dirac-only`: the limits and this section alone; it also
//!    runs with `--kernels-only` and in the full run).

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use abi_stable::std_types::{RSliceMut, RStr};
use clap::Parser;
use latflow_core::Stream;
use latflow_core::abi::{HmcParams, IntegratorKind, Start, Theory};
use latflow_core::gauge::parallel::HEAVY_MIN_SITES;
use latflow_core::gauge::su3::Rows;
use latflow_core::gauge::{GaugeGroup, LieAlgebra, Su3, SuAlg};
use latflow_core::hmc::{ActionTerm, FieldSpace};
use latflow_core::sdk::{Adapter, Physics};
use latflow_sun::fast;
use latflow_sun::{GaugeTerm, PackedGaugeTerm, Sun};
use rayon::prelude::*;
use serde_json::{Value, json};

/// Flops of one 3×3 complex matrix product: 9 entries × (3 complex products of 6 flops + 2
/// complex additions of 2 flops).
const MATMUL_FLOPS: f64 = 198.0;

/// Flops of the Wilson force per site in d = 4, as the plugin executes them
/// (`latflow_sun::fast`): per plane μ < ν, one shared product C = U_ν(x+μ̂) U_μ(x+ν̂)† and the
/// two upper staples C U_ν(x)† and (U_μ(x) C)† (3 products), and the two lower staples: from
/// the corner products F(y) = U_μ(y)† U_ν(y) of every site (1 product per plane, kept when
/// they fit in `CORNERS_MAX_BYTES`) one product each, else two each. With U·Σ for the 4 links:
/// 6 × 6 + 4 = 40 products per site with corners, 6 × 7 + 4 = 46 without (the textbook count,
/// 2 products per staple, is 52). Per link also the 6 staple additions (6 × 18), the
/// traceless anti-Hermitian part (42) and the two scalings (36).
pub fn force_flops_per_site(l: usize) -> f64 {
    let corners = l.pow(4) * 6 * std::mem::size_of::<Rows>() <= fast::CORNERS_MAX_BYTES;
    let products = if corners { 40.0 } else { 46.0 };
    products * MATMUL_FLOPS + 4.0 * (6.0 * 18.0 + 42.0 + 36.0)
}

/// Flops of the Wilson action per site in d = 4, as executed: per plane two two-link
/// products and Re Tr(A B†) as an 18-term dot product (36 + 2 flops), plus the compensated
/// sum (4 flops). The textbook count, 3 products and a trace per plaquette, would be
/// 6 × (3 × 198 + 2) flops.
pub const ACTION_FLOPS_PER_SITE: f64 = 6.0 * (2.0 * MATMUL_FLOPS + 38.0 + 4.0);

/// Bytes per SU(3) link or su(3) momentum/force element (18 reals).
const ELEMENT_BYTES: f64 = 18.0 * 8.0;

#[derive(Debug, Parser)]
#[command(name = "sun_bench", about = "SU(3) kernels, HMC throughput and machine limits in one run")]
struct Args {
    /// Python interpreter with torch, for the PyTorch peer.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the PyTorch peer.
    #[arg(long)]
    no_peer: bool,
    /// The built lattice-qcd-rs comparison program (benches/peers/lattice-qcd-rs); skipped
    /// when not given.
    #[arg(long)]
    lqcd_rs: Option<PathBuf>,
    /// Timed trajectories of the 4⁴ run (the peer runs a fifth of them, at least 50).
    #[arg(long, default_value_t = 400)]
    trajectories: usize,
    /// Short everything (a smoke run: seconds instead of minutes).
    #[arg(long)]
    quick: bool,
    /// Only the limits, products and kernels (at 4⁴, or the sizes of `--kernel-sizes`).
    #[arg(long)]
    kernels_only: bool,
    /// The L of the L⁴ kernel figures (default 4 with `--kernels-only`, else 4, 8 and 16).
    #[arg(long, value_delimiter = ',')]
    kernel_sizes: Vec<usize>,
    /// Only section 4: HMC at 8⁴ and 16⁴ and the theory's own steps, on 1 and 2 threads.
    #[arg(long)]
    scaling_only: bool,
    /// Only the limits and the Wilson–Dirac operator (section 5).
    #[arg(long)]
    dirac_only: bool,
    /// Seed of the HMC runs.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    if args.scaling_only {
        let out = json!({
            "benchmark": "sun_bench",
            "load_start": common::load_average(),
            "scaling": scaling(&args),
            "theory_steps": theory_steps(&args),
            "load_end": common::load_average(),
        });
        println!("{out}");
        return;
    }
    let limits = limits(args.quick);
    if args.dirac_only {
        let dirac = dirac_report(&limits, args.quick);
        println!("{}", json!({"benchmark": "sun_bench", "limits": limits.json, "dirac": dirac}));
        return;
    }
    let products = product_report(&limits);
    let sizes: &[usize] = if !args.kernel_sizes.is_empty() {
        &args.kernel_sizes
    } else if args.kernels_only {
        &[4]
    } else {
        &[4, 8, 16]
    };
    let kernels: Vec<Value> = sizes.iter().map(|&l| kernel_report(l, &limits, args.quick)).collect();
    let dirac = dirac_report(&limits, args.quick);
    if args.kernels_only {
        println!(
            "{}",
            json!({"benchmark": "sun_bench", "limits": limits.json, "su3_products": products, "kernels": kernels, "dirac": dirac})
        );
        return;
    }
    let hmc = hmc_small(&args);
    let ours = (hmc["traj_per_s"].as_f64().unwrap_or(f64::NAN), hmc["traj_per_cpu_s"].as_f64().unwrap_or(f64::NAN));
    let peers = run_peers(&args, ours);
    let scaling = scaling(&args);
    let steps = theory_steps(&args);
    let out = json!({
        "benchmark": "sun_bench",
        "limits": limits.json,
        "su3_products": products,
        "kernels": kernels,
        "dirac": dirac,
        "hmc_4x4x4x4": hmc,
        "peers": peers,
        "scaling": scaling,
        "theory_steps": steps,
        "load_end": common::load_average(),
    });
    println!("{out}");
}

// ---------------------------------------------------------------------------------------------
// Timing helpers

/// CPU time of the calling thread, in seconds: on a shared machine it leaves out the time the
/// thread waited for a core, which wall-clock time counts.
fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return f64::NAN;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// [`per_call`] of a drift `step(ε)`, ε alternating between +0.05 and −0.05 so that the field
/// stays where it started.
fn per_drift(mut step: impl FnMut(f64), batch_s: f64, batches: usize) -> (f64, f64) {
    let mut eps = 0.05;
    per_call(
        || {
            step(eps);
            eps = -eps;
        },
        batch_s,
        batches,
    )
}

/// Per-call times of `f` on this thread: batches of about `batch_s` seconds, `batches` of
/// them; returns (median, min) seconds of thread CPU time per call (see [`thread_cpu_s`]).
fn per_call(mut f: impl FnMut(), batch_s: f64, batches: usize) -> (f64, f64) {
    let t0 = thread_cpu_s();
    f();
    let once = (thread_cpu_s() - t0).max(1e-9);
    let reps = ((batch_s / once).ceil() as usize).max(1);
    let mut times: Vec<f64> = (0..batches.max(1))
        .map(|_| {
            let t = thread_cpu_s();
            for _ in 0..reps {
                f();
            }
            (thread_cpu_s() - t) / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("cannot start {threads} threads: {e}"))
        .install(f)
}

// ---------------------------------------------------------------------------------------------
// 1. Machine limits

/// The measured limits: flop rates (GFLOP/s, one thread) and triad bandwidths (GB/s).
struct Limits {
    /// The plain multiply-then-add peak at the ISA the kernels run at (AVX2 where present,
    /// else the baseline).
    mul_add: f64,
    /// The fused multiply-add peak (the machine's).
    fma: f64,
    /// Triad bandwidth on 1 and 2 threads.
    triad: [f64; 2],
    json: Value,
}

/// x ← x·b + c on `L` independent lanes, `iters` times: 2·L·iters flops.
#[inline(always)]
fn flop_chains<const L: usize>(iters: usize, fused: bool) -> f64 {
    let (b, c) = (black_box(0.999_999_9), black_box(1e-9));
    let mut x = [0.5f64; L];
    for (i, v) in x.iter_mut().enumerate() {
        *v += i as f64 * 1e-3;
    }
    for _ in 0..iters {
        for v in x.iter_mut() {
            *v = if fused { v.mul_add(b, c) } else { *v * b + c };
        }
    }
    black_box(x).iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The flop loops compiled for the wider ISAs (called only after runtime detection).
    use super::flop_chains;

    #[target_feature(enable = "avx2")]
    pub unsafe fn mul_add_avx2(iters: usize) -> f64 {
        flop_chains::<48>(iters, false)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn mul_add_avx512(iters: usize) -> f64 {
        flop_chains::<96>(iters, false)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iters: usize) -> f64 {
        flop_chains::<48>(iters, true)
    }

    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn fma_avx512(iters: usize) -> f64 {
        flop_chains::<96>(iters, true)
    }
}

/// GFLOP/s of a flop loop `run(iters)` doing `lanes` lanes (best of 5 runs of ~0.1 s).
fn gflops(lanes: usize, run: impl Fn(usize) -> f64) -> f64 {
    let iters = 2_000_000;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(run(iters));
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * lanes as f64 * iters as f64 / best / 1e9
}

fn flop_limits() -> (Vec<(String, f64)>, f64, f64) {
    let mut rates = vec![("mul+add baseline (SSE2)".to_string(), gflops(24, |n| flop_chains::<24>(n, false)))];
    let mut fma = 0.0;
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            rates.push(("mul+add AVX2".into(), gflops(48, |n| unsafe { simd::mul_add_avx2(n) })));
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            rates.push(("mul+add AVX-512".into(), gflops(96, |n| unsafe { simd::mul_add_avx512(n) })));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA3 (checked above).
            let r = gflops(48, |n| unsafe { simd::fma_avx2(n) });
            rates.push(("FMA AVX2".into(), r));
            fma = r;
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX-512F and FMA (checked above).
            let r = gflops(96, |n| unsafe { simd::fma_avx512(n) });
            rates.push(("FMA AVX-512".into(), r));
            fma = fma.max(r);
        }
    }
    let used = ["mul+add baseline (SSE2)", "mul+add AVX2", "mul+add AVX-512"][fast::simd_level() as usize];
    let mul_add = rates.iter().find(|(n, _)| n == used).map_or(rates[0].1, |r| r.1);
    if fma == 0.0 {
        fma = mul_add;
    }
    (rates, mul_add, fma)
}

/// STREAM-like triad a = b + s·c over `n` doubles per array on `threads` threads (best of 5);
/// GB/s counting 24 bytes per element.
fn triad(n: usize, threads: usize) -> f64 {
    in_pool(threads, || {
        let chunk = n.div_ceil(threads);
        let mut a = vec![0.0f64; n];
        let mut b = vec![0.0f64; n];
        let mut c = vec![0.0f64; n];
        // first touch on the threads that use the memory
        a.par_chunks_mut(chunk).for_each(|x| x.fill(1.0));
        b.par_chunks_mut(chunk).for_each(|x| x.fill(2.0));
        c.par_chunks_mut(chunk).for_each(|x| x.fill(0.5));
        let s = black_box(3.0);
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                a.par_chunks_mut(chunk).zip(b.par_chunks(chunk)).zip(c.par_chunks(chunk)).for_each(|((a, b), c)| {
                    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + s * z;
                    }
                });
                black_box(&a);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        24.0 * n as f64 / best / 1e9
    })
}

fn limits(quick: bool) -> Limits {
    let (rates, mul_add, fma) = flop_limits();
    for (name, r) in &rates {
        eprintln!("limit: {name:<24} {r:8.2} GFLOP/s (1 thread)");
    }
    let n = if quick { 1 << 21 } else { 1 << 23 };
    let triad = [triad(n, 1), triad(n, 2)];
    eprintln!(
        "limit: triad {} MiB arrays     {:8.2} GB/s (1 thread), {:.2} GB/s (2 threads)",
        (n * 8) >> 20,
        triad[0],
        triad[1]
    );
    let flops: serde_json::Map<String, Value> = rates.iter().map(|(n, r)| (n.clone(), json!(r))).collect();
    let json = json!({
        "gflops_1_thread": flops,
        "mul_add_peak_gflops_kernel_isa": mul_add,
        "kernel_isa": fast::SIMD_NAMES[fast::simd_level() as usize],
        "fma_peak_gflops": fma,
        "triad_gbs": {"threads_1": triad[0], "threads_2": triad[1], "array_mib": (n * 8) >> 20},
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load": common::load_average(),
    });
    Limits { mul_add, fma, triad, json }
}

// ---------------------------------------------------------------------------------------------
// 2. Kernels

fn su3_card(l: usize, beta: f64) -> String {
    format!(r#"{{"lattice": [{l}, {l}, {l}, {l}], "n": 3, "beta": {beta}}}"#)
}

/// A thermalised-looking configuration for timing: hot start, a few trajectories.
fn rough_config(t: &Adapter<Sun>, seed: u64) -> Vec<f64> {
    let mut rng = Stream::new(seed, 0);
    let mut u = t.physics().initial(Start::Hot, &mut rng);
    let p = HmcParams { md_steps: 10, trajectory_length: 0.5, ..HmcParams::default() };
    t.hmc_vec(&mut u, &p, 2, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    u
}

/// One kernel's figures: time per call, GFLOP/s, GB/s and the roofline percentages.
fn kernel_figures(name: &str, l: usize, secs: (f64, f64), flops: f64, bytes: f64, lim: &Limits) -> Value {
    let (med, min) = secs;
    let gf = flops / med / 1e9;
    let gb = bytes / med / 1e9;
    let intensity = flops / bytes;
    let bound_plain = lim.mul_add.min(intensity * lim.triad[0]);
    let bound_fma = lim.fma.min(intensity * lim.triad[0]);
    let binds = if lim.mul_add <= intensity * lim.triad[0] { "flops" } else { "bandwidth" };
    eprintln!(
        "{l:>2}^4 {name:<13} {:9.1} µs (min {:9.1})  {gf:6.2} GFLOP/s  {gb:6.2} GB/s  \
         {:5.1}% of mul+add roofline ({binds}), {:5.1}% of FMA",
        med * 1e6,
        min * 1e6,
        100.0 * gf / bound_plain,
        100.0 * gf / bound_fma,
    );
    json!({
        "kernel": name, "L": l, "us_median": med * 1e6, "us_min": min * 1e6,
        "flops": flops, "bytes": bytes, "gflops": gf, "gbs": gb,
        "flops_per_byte": intensity, "binds": binds,
        "percent_of_mul_add_roofline": 100.0 * gf / bound_plain,
        "percent_of_fma_roofline": 100.0 * gf / bound_fma,
    })
}

/// The 4D SU(3) Wilson–Dirac operator D ψ (κ = 0.12, Haar-random links, Gaussian source) at 8⁴
/// and 16⁴: each kernel variant on one thread (thread CPU time per call), and the widest on
/// 2 threads (wall time per call), against the limits. Flops: the customary 1320 per site.
fn dirac_report(lim: &Limits, quick: bool) -> Value {
    use latflow_core::gauge::fermion::wilson::{WILSON_BYTES_PER_SITE_SU3_4D, WILSON_FLOPS_PER_SITE_SU3_4D, hop_simd_level};
    let mut out = Vec::new();
    for l in [8i64, 16] {
        let (d, u, psi) = common::su3_dirac(l);
        let v = d.volume();
        let mut res = psi.clone();
        let flops = WILSON_FLOPS_PER_SITE_SU3_4D * v as f64;
        let bytes = (WILSON_BYTES_PER_SITE_SU3_4D * v) as f64;
        let batch = if quick { 0.02 } else { 0.2 };
        for level in 0..=hop_simd_level() {
            let dl = d.clone().with_simd_level(level);
            let secs =
                in_pool(1, || per_call(|| dl.apply(u.links(), black_box(&psi), &mut res).expect("apply"), batch, 5));
            let name = format!("dirac {}", ["baseline", "AVX2"][level as usize]);
            out.push(json!({"threads": 1, "variant": level, "figures": kernel_figures(&name, l as usize, secs, flops, bytes, lim)}));
        }
        // the lanes layout the solvers use, on packed fields (the same bits)
        let (mut ld, packed) = common::su3_lanes(&d, &u, &psi);
        let mut pout = packed.clone();
        for level in 0..=latflow_core::gauge::fermion::lanes::lanes_simd_level() {
            ld.set_level(level);
            let secs = in_pool(1, || per_call(|| ld.apply(black_box(&packed), &mut pout, false).expect("apply"), batch, 5));
            let name = format!("dirac lanes {}", fast::SIMD_NAMES[level as usize]);
            out.push(json!({"threads": 1, "layout": "lanes", "variant": level, "figures": kernel_figures(&name, l as usize, secs, flops, bytes, lim)}));
        }
        // 2 threads: wall time (thread CPU time would count one thread only)
        let reps = if quick { 3 } else { (2e9 / flops).ceil().max(3.0) as usize };
        for layout in ["sites", "lanes"] {
            let mut call = || match layout {
                "sites" => d.apply(u.links(), black_box(&psi), &mut res).expect("apply"),
                _ => ld.apply(black_box(&packed), &mut pout, false).expect("apply"),
            };
            let wall = in_pool(2, || {
                call();
                let t = Instant::now();
                for _ in 0..reps {
                    call();
                }
                t.elapsed().as_secs_f64() / reps as f64
            });
            let (gf, gb) = (flops / wall / 1e9, bytes / wall / 1e9);
            let bound = (2.0 * lim.mul_add).min((flops / bytes) * lim.triad[1]);
            eprintln!(
                "{l:>2}^4 dirac {layout}, 2 threads {:9.1} µs wall  {gf:6.2} GFLOP/s  {gb:6.2} GB/s  ({:.1}% of the 2-thread triad roofline)",
                wall * 1e6,
                100.0 * gf / bound
            );
            out.push(json!({"threads": 2, "layout": layout, "L": l, "us_wall": wall * 1e6, "gflops": gf, "gbs": gb}));
        }
    }
    json!(out)
}

/// The throughput of 3×3 complex products on data in L1 (64 independent products per pass),
/// for each compiled variant of the kernels this CPU runs (baseline, AVX2, AVX-512).
fn product_report(lim: &Limits) -> Value {
    let mut rng = Stream::new(5, 0);
    let a: Vec<Rows> = (0..64).map(|_| bytemuck::cast(Su3::random(&mut rng))).collect();
    let b: Vec<Rows> = (0..64).map(|_| bytemuck::cast(Su3::random(&mut rng))).collect();
    let mut c = vec![[[0.0f64; 6]; 3]; 64];
    // the same 64 products, 8 sites per vector (the blocked force's layout), 64 times per call
    let blocked = |m: &[Rows]| -> Vec<f64> {
        let mut v = vec![0.0; 64 * 18];
        for (s, r) in m.iter().enumerate() {
            for e in 0..18 {
                v[(s / 8) * 144 + e * 8 + s % 8] = r[e / 6][e % 6];
            }
        }
        v
    };
    let (ab, bb) = (blocked(&a), blocked(&b));
    let mut cb = vec![0.0; 64 * 18];
    let mut out = Vec::new();
    for layout in ["per site", "8 sites per vector"] {
        for level in 0..=fast::simd_level() {
            let ((med, min), per_call_products) = if layout == "per site" {
                (per_call(|| fast::products(&a, &b, &mut c, level), 0.02, 7), 64.0)
            } else {
                (per_call(|| latflow_sun::blocked::products8(&ab, &bb, &mut cb, level), 0.02, 7), 4096.0)
            };
            let ns = med / per_call_products * 1e9;
            let gf = MATMUL_FLOPS / ns;
            let name = fast::SIMD_NAMES[level as usize];
            eprintln!(
                "3x3 complex product, {layout} ({name}): {ns:.2} ns per site (min {:.2}), {gf:.2} GFLOP/s, {:.1}% of the mul+add peak",
                min / per_call_products * 1e9,
                100.0 * gf / lim.mul_add
            );
            out.push(json!({"variant": name, "layout": layout, "ns": ns, "gflops": gf}));
        }
    }
    json!(out)
}

/// The SU(3) kernels at L⁴ on one thread.
fn kernel_report(l: usize, lim: &Limits, quick: bool) -> Value {
    let t: Adapter<Sun> = Adapter::from_json(&su3_card(l, 5.7)).unwrap_or_else(|e| panic!("{e}"));
    let sun = t.physics();
    let (v, links) = (l.pow(4) as f64, 4.0 * l.pow(4) as f64);
    let (batch, batches) = if quick { (0.01, 3) } else { (0.05, 7) };
    in_pool(1, || {
        let mut u = rough_config(&t, 11);
        let space = sun.space();
        let term = GaugeTerm { theory: sun };
        let mut rng = Stream::new(12, 0);
        let mut p = space.sample_momentum(&u, &mut rng);
        let mut f = space.zero_momentum();
        let force = per_call(|| term.force(&u, &mut f).unwrap_or_else(|e| panic!("{e}")), batch, batches);
        let action = per_call(
            || {
                black_box(sun.action(&u));
            },
            batch,
            batches,
        );
        // each compiled variant of the fast kernels (the dispatched ones use the widest)
        let (u3, w): (&[Su3], f64) = (bytemuck::cast_slice(&u[..]), 5.7 / 3.0);
        let mut f3 = vec![SuAlg::<3>::zero(); u3.len()];
        let mut variants = Vec::new();
        for level in 0..=fast::simd_level() {
            let name = fast::SIMD_NAMES[level as usize];
            let force = per_call(|| fast::wilson_force(sun.lattice(), u3, w, &mut f3, level), batch, batches);
            let per_site =
                per_call(|| fast::wilson_force_per_site(sun.lattice(), u3, w, &mut f3, level), batch, batches);
            let action = per_call(
                || {
                    black_box(fast::plaquette_sum(sun.lattice(), u3, level));
                },
                batch,
                batches,
            );
            let mut v3: Vec<Su3> = u3.to_vec();
            let p3: Vec<SuAlg<3>> = bytemuck::cast_slice(&p[..]).to_vec();
            let step = per_drift(|eps| fast::step_links(&mut v3, &p3, 4, eps, level), batch, batches);
            let e = links * ELEMENT_BYTES;
            variants.push(plain_figures(&format!("step_field[{name}]"), l, step, 3.0 * e));
            variants.push(kernel_figures(
                &format!("force[{name}]"),
                l,
                force,
                v * force_flops_per_site(l),
                2.0 * e,
                lim,
            ));
            variants.push(kernel_figures(
                &format!("force per site[{name}]"),
                l,
                per_site,
                v * force_flops_per_site(l),
                2.0 * e,
                lim,
            ));
            variants.push(kernel_figures(&format!("action[{name}]"), l, action, v * ACTION_FLOPS_PER_SITE, e, lim));
        }
        let step = per_drift(|eps| space.step_field(&mut u, &mut p, eps), batch, batches);
        let refresh = per_call(|| drop(black_box(space.sample_momentum(&u, &mut rng))), batch, batches);
        let kick = per_call(|| space.kick(&mut p, &f, 1e-9), batch, batches);
        let kinetic = per_call(
            || {
                black_box(space.kinetic(&p));
            },
            batch,
            batches,
        );
        let e = links * ELEMENT_BYTES;
        // the kernels HMC runs where it keeps its fields site-blocked (SU(3), Wilson action, an
        // even fastest extent): no packing or write-back in the force
        let mut packed = Vec::new();
        if let Some(ps) = sun.packed_space() {
            let pterm = PackedGaugeTerm { theory: sun, space: &ps };
            let (mut pu, mut pp) = (ps.layout.pack(&u), ps.layout.pack(&p));
            let mut pf = ps.zero_momentum();
            let force = per_call(|| pterm.force(&pu, &mut pf).unwrap_or_else(|e| panic!("{e}")), batch, batches);
            let step = per_drift(|eps| ps.step_field(&mut pu, &mut pp, eps), batch, batches);
            let kick = per_call(|| ps.kick(&mut pp, &pf, 1e-9), batch, batches);
            let width = ps.layout.width();
            packed.push(kernel_figures(
                &format!("force, blocked fields (W = {width})"),
                l,
                force,
                v * force_flops_per_site(l),
                2.0 * e,
                lim,
            ));
            packed.push(plain_figures(&format!("step_field, blocked fields (W = {width})"), l, step, 3.0 * e));
            packed.push(plain_figures(&format!("kick, blocked fields (W = {width})"), l, kick, 3.0 * e));
        }
        json!([
            kernel_figures("force", l, force, v * force_flops_per_site(l), 2.0 * e, lim),
            packed,
            kernel_figures("action", l, action, v * ACTION_FLOPS_PER_SITE, e, lim),
            plain_figures("step_field", l, step, 3.0 * e),
            plain_figures("momentum", l, refresh, e),
            plain_figures("kick", l, kick, 3.0 * e),
            plain_figures("kinetic", l, kinetic, e),
            variants,
        ])
    })
}

/// A kernel without a meaningful flop count: time per call and compulsory GB/s.
fn plain_figures(name: &str, l: usize, secs: (f64, f64), bytes: f64) -> Value {
    let (med, min) = secs;
    eprintln!("{l:>2}^4 {name:<13} {:9.1} µs (min {:9.1})  {:6.2} GB/s", med * 1e6, min * 1e6, bytes / med / 1e9);
    json!({"kernel": name, "L": l, "us_median": med * 1e6, "us_min": min * 1e6, "bytes": bytes, "gbs": bytes / med / 1e9})
}

// ---------------------------------------------------------------------------------------------
// 3. HMC at 4⁴ with the peer's settings, and the peers

fn leapfrog(md_steps: u32) -> HmcParams {
    HmcParams { md_steps, integrator: IntegratorKind::Leapfrog, trajectory_length: 1.0, ..HmcParams::default() }
}

/// HMC statistics of a timed run.
struct Run {
    traj_per_s: f64,
    /// Trajectories per second of thread CPU time (one thread only).
    traj_per_cpu_s: Option<f64>,
    acceptance: f64,
    mean_exp_minus_dh: f64,
    plaquette: f64,
    trajectories: usize,
}

impl Run {
    fn json(&self) -> Value {
        json!({
            "traj_per_s": self.traj_per_s, "traj_per_cpu_s": self.traj_per_cpu_s, "acceptance": self.acceptance,
            "mean_exp_minus_dH": self.mean_exp_minus_dh, "plaquette": self.plaquette,
            "trajectories": self.trajectories,
        })
    }
}

/// How an HMC timing run starts and what it times.
#[derive(Clone, Copy)]
struct Protocol {
    /// Heat-bath sweeps of the plugin from a hot start; 0 for a cold start instead.
    sweeps: u32,
    /// Untimed trajectories of 40 leapfrog steps after the start.
    warm: u32,
    /// Leapfrog steps of each timed trajectory (length 1).
    md_steps: u32,
}

/// HMC at L⁴ and β on `threads` threads, started as `protocol` says, then `n` timed
/// trajectories. The plaquette is read off each trajectory's action (Wilson:
/// ⟨P⟩ = −S / (6 V β)), so measuring costs nothing extra.
fn hmc_run(l: usize, beta: f64, protocol: &Protocol, n: usize, threads: usize, seed: u64) -> Run {
    let Protocol { sweeps, warm, md_steps } = *protocol;
    let mut t: Adapter<Sun> = Adapter::from_json(&su3_card(l, beta)).unwrap_or_else(|e| panic!("{e}"));
    in_pool(threads, || {
        let mut rng = Stream::new(seed, 0);
        let mut u = if sweeps == 0 {
            t.physics().initial(Start::Cold, &mut rng)
        } else {
            let mut u = t.physics().initial(Start::Hot, &mut rng);
            let mut state = Stream::new(seed, 4).state();
            Theory::step(&mut t, RStr::from("heatbath"), RStr::from("{}"), RSliceMut::from(&mut u[..]), sweeps, &mut state)
                .into_result()
                .unwrap_or_else(|e| panic!("heat-bath thermalisation: {e}"));
            u
        };
        if warm > 0 {
            t.hmc_vec(&mut u, &leapfrog(40), warm, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        }
        let (start, cpu) = (Instant::now(), thread_cpu_s());
        let recs = t.hmc_vec(&mut u, &leapfrog(md_steps), n as u32, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let secs = start.elapsed().as_secs_f64();
        let cpu = thread_cpu_s() - cpu;
        let v = l.pow(4) as f64;
        let m = recs.len() as f64;
        Run {
            traj_per_s: m / secs,
            traj_per_cpu_s: (threads == 1).then_some(m / cpu),
            acceptance: recs.iter().filter(|r| r.accepted).count() as f64 / m,
            mean_exp_minus_dh: recs.iter().map(|r| (-r.delta_h).exp()).sum::<f64>() / m,
            plaquette: recs.iter().map(|r| -r.action / (6.0 * v * beta)).sum::<f64>() / m,
            trajectories: recs.len(),
        }
    })
}

fn hmc_small(args: &Args) -> Value {
    let n = if args.quick { 40 } else { args.trajectories };
    let r = hmc_run(4, 5.7, &Protocol { sweeps: 0, warm: 30, md_steps: 15 }, n, 1, args.seed);
    eprintln!(
        "HMC 4^4 β=5.7 leapfrog 15 steps, 1 thread: {:.1} traj/s ({:.1} per CPU second), acceptance {:.3}, \
         <exp(-dH)> {:.3}, plaquette {:.4} ({} traj)",
        r.traj_per_s,
        r.traj_per_cpu_s.unwrap_or(f64::NAN),
        r.acceptance,
        r.mean_exp_minus_dh,
        r.plaquette,
        r.trajectories
    );
    r.json()
}

/// Runs a peer program and returns the JSON object of its last stdout line.
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

/// Our (traj/s by wall clock, traj per CPU second) against the peers'.
fn run_peers(args: &Args, ours: (f64, f64)) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("pytorch".into(), pytorch_peer(args, ours));
    out.insert("lattice_qcd_rs".into(), lqcd_peer(args, ours));
    Value::Object(out)
}

fn pytorch_peer(args: &Args, ours: (f64, f64)) -> Value {
    if args.no_peer {
        eprintln!("peer: PyTorch skipped (--no-peer)");
        return json!({"skipped": "--no-peer"});
    }
    let probe = Command::new(&args.python).args(["-c", "import torch"]).output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        let why = format!("'{}' cannot import torch; pass --python PATH to a Python with torch", args.python);
        eprintln!("peer: PyTorch skipped: {why}");
        return json!({"skipped": why});
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/su3_hmc.py");
    let n = if args.quick { 10 } else { (args.trajectories / 5).max(50) };
    let mut cmd = Command::new(&args.python);
    cmd.args([script, "--threads", "1", "--L", "4", "--beta", "5.7", "--nmd", "15", "--ntherm", "30"]);
    cmd.args(["--therm-nmd", "40", "--ntraj", &n.to_string(), "--seed", &args.seed.to_string()]);
    match run_json(&mut cmd) {
        Ok(v) => {
            let theirs = v["traj_per_s"].as_f64().unwrap_or(f64::NAN);
            let theirs_cpu = v["traj_per_cpu_s"].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "peer: PyTorch {theirs:.1} traj/s ({theirs_cpu:.1} per CPU second; acceptance {:.3}, plaquette {:.4}); \
                 latflow / PyTorch = {:.1} (wall), {:.1} (CPU time)",
                v["acceptance"].as_f64().unwrap_or(f64::NAN),
                v["plaquette"].as_f64().unwrap_or(f64::NAN),
                ours.0 / theirs,
                ours.1 / theirs_cpu
            );
            json!({"result": v, "ratio_latflow_over_peer": ours.0 / theirs, "ratio_cpu_time": ours.1 / theirs_cpu})
        }
        Err(e) => {
            eprintln!("peer: PyTorch failed: {e}");
            json!({"failed": e})
        }
    }
}

fn lqcd_peer(args: &Args, ours: (f64, f64)) -> Value {
    let Some(prog) = &args.lqcd_rs else {
        eprintln!("peer: lattice-qcd-rs skipped (build benches/peers/lattice-qcd-rs and pass --lqcd-rs PATH)");
        return json!({"skipped": "no --lqcd-rs"});
    };
    // One trajectory from the cold start: that one took 0.8 s here, while the next one had not
    // finished after 4 CPU-minutes, so the figure is a bound in lattice-qcd-rs's favour (its
    // plaquette after one trajectory is not an equilibrium value).
    let n = 1;
    let mut cmd = Command::new(prog);
    cmd.env("RAYON_NUM_THREADS", "1").args(["--trajectories", &n.to_string(), "--warm", "0"]);
    match run_json(cmd.args(["--seed", &args.seed.to_string()])) {
        Ok(v) => {
            let theirs = v["traj_per_s"].as_f64().unwrap_or(f64::NAN);
            let theirs_cpu =
                v["trajectories"].as_f64().unwrap_or(f64::NAN) / v["cpu_seconds"].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "peer: lattice-qcd-rs {theirs:.3} traj/s ({theirs_cpu:.3} per CPU second; plaquette {:.4} after {} \
                 trajectories from a cold start); latflow / lattice-qcd-rs = {:.0} (wall), {:.0} (CPU time)",
                v["plaquette"].as_f64().unwrap_or(f64::NAN),
                v["trajectories"],
                ours.0 / theirs,
                ours.1 / theirs_cpu
            );
            json!({"result": v, "ratio_latflow_over_peer": ours.0 / theirs, "ratio_cpu_time": ours.1 / theirs_cpu})
        }
        Err(e) => {
            eprintln!("peer: lattice-qcd-rs failed: {e}");
            json!({"failed": e})
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Scaling and the theory's own steps

/// HMC at 8⁴ and 16⁴ on 1 and 2 threads: a hot start thermalised by heat-bath sweeps, one
/// warm-up trajectory, then a few timed ones with 20 (8⁴) or 40 (16⁴) leapfrog steps, so that
/// they are accepted as in production (ΔH grows as V ε⁴). Lattices below core's parallel
/// threshold run on one thread whatever the pool (reported as `parallel: false`).
fn scaling(args: &Args) -> Value {
    let mut out = Vec::new();
    let sweeps = if args.quick { 2 } else { 20 };
    for (l, md, n) in [(8usize, 20, if args.quick { 2 } else { 20 }), (16, 40, if args.quick { 1 } else { 3 })] {
        let parallel = l.pow(4) >= HEAVY_MIN_SITES;
        let protocol = Protocol { sweeps, warm: 1, md_steps: md };
        for threads in [1usize, 2] {
            let r = hmc_run(l, 5.7, &protocol, n, threads, args.seed);
            eprintln!(
                "HMC {l}^4 β=5.7 leapfrog {md} steps, {threads} thread(s): {:.3} traj/s, {:.1} MD steps/s, \
                 acceptance {:.2}, plaquette {:.4} ({} traj after {sweeps} heat-bath sweeps and 1 warm-up{})",
                r.traj_per_s,
                r.traj_per_s * f64::from(md),
                r.acceptance,
                r.plaquette,
                r.trajectories,
                if parallel { "" } else { "; below the parallel threshold: one thread" }
            );
            let mut j = r.json();
            j["md_steps"] = json!(md);
            j["L"] = json!(l);
            j["threads"] = json!(threads);
            j["parallel"] = json!(parallel);
            out.push(j);
        }
    }
    json!(out)
}

/// Sweeps/s of the theory's own Markov steps (`heatbath`, `overrelax`) at 8⁴ and 16⁴ on 1 and 2
/// threads, through the `Theory` trait as the host calls them; an empty list where the plugin
/// offers none.
fn theory_steps(args: &Args) -> Value {
    let mut out = Vec::new();
    for l in [8usize, 16] {
        let mut t: Adapter<Sun> = Adapter::from_json(&su3_card(l, 5.7)).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<String> = Theory::step_kinds(&t).iter().map(|k| k.to_string()).collect();
        if kinds.is_empty() {
            eprintln!("theory steps: the sun plugin offers none in this build (heat-bath/overrelaxation not timed)");
            return json!({"skipped": "the plugin offers no step kinds in this build"});
        }
        for kind in &kinds {
            for threads in [1usize, 2] {
                let r = in_pool(threads, || time_step(&mut t, kind, if args.quick { 1 } else { 5 }, args.seed));
                match r {
                    Ok(rate) => {
                        eprintln!("{kind} {l}^4, {threads} thread(s): {rate:.2} sweeps/s");
                        out.push(json!({"kind": kind, "L": l, "threads": threads, "sweeps_per_s": rate}));
                    }
                    Err(e) => {
                        eprintln!("{kind} {l}^4: {e}");
                        out.push(json!({"kind": kind, "L": l, "threads": threads, "failed": e}));
                    }
                }
            }
        }
    }
    json!(out)
}

/// Applies theory step `kind` (no options) to a hot start: one untimed sweep, then `n` timed.
fn time_step(t: &mut Adapter<Sun>, kind: &str, n: u32, seed: u64) -> Result<f64, String> {
    let mut rng = Stream::new(seed, 3);
    let mut u = t.physics().initial(Start::Hot, &mut rng);
    let mut state = rng.state();
    Theory::step_columns(t, RStr::from(kind), RStr::from("{}")).into_result().map_err(|e| e.to_string())?;
    let mut apply = |t: &mut Adapter<Sun>, n: u32| {
        Theory::step(t, RStr::from(kind), RStr::from("{}"), RSliceMut::from(&mut u[..]), n, &mut state)
            .into_result()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    apply(t, 1)?;
    let start = Instant::now();
    apply(t, n)?;
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}
