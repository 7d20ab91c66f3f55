//! Criterion benchmarks of the SU(N) plugin on SU(3), used directly as an rlib (no plugin
//! loading, no ABI).
//!
//! Run: `cargo bench --bench sun` (a few minutes); a subset with a filter, e.g.
//! `cargo bench --bench sun -- sun3_kernel/force`. Theory: 4D SU(3), Wilson action, β = 5.7.
//!
//! Groups:
//! * `sun3_kernel/{force,action}/L`: one evaluation on a rough L⁴ configuration (hot start and
//!   two short trajectories), L = 4, 8; throughput `Elements(V)`, so `elem/s` reads as sites per
//!   second.
//! * `sun3_exp/{exp,exp_times_link}`: the SU(3) exponential of an MD-sized algebra element
//!   (ε = 1/15 times a Gaussian momentum), alone and times a link, over 1024 elements;
//!   throughput `Elements(1024)`.
//! * `sun3_hmc_trajectory/leapfrog15/L`: one HMC trajectory (τ = 1, 15 leapfrog steps, refresh,
//!   integration, Metropolis test and reunitarisation) through `Adapter::hmc_vec`, L = 4, 8;
//!   throughput `Elements(1)`, so `elem/s` reads as trajectories per second.
//!
//! * `sun3_threads/{force,trajectory_leapfrog15,heatbath,overrelax}/L/{rayon,team}threads`:
//!   the force, an HMC trajectory as above, and one heat-bath or overrelaxation sweep of every
//!   link (core's `heatbath_sweep`, `overrelax_sweep`), on 1 and 2 threads of an explicit rayon
//!   pool or of a spinning `par::Team` (the plugin's own workers), L = 8, and the force also at
//!   L = 16: the thread scaling of the SU(3) kernels. The bits do not depend on the threads.
//!
//! The other groups run inside an explicit one-thread rayon pool (`iter_custom` +
//! `ThreadPool::install`). SU(3) site loops go parallel from 2048 sites
//! (`gauge::parallel::HEAVY_MIN_SITES`).
//! `benches/sun_bench.rs` (an example) puts the same kernels against this machine's limits and
//! the peers.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use latflow_core::abi::{HmcParams, IntegratorKind, Start};
use latflow_core::gauge::{heatbath_sweep, overrelax_sweep, GaugeGroup, LieAlgebra, Su3, SuAlg};
use latflow_core::hmc::{ActionTerm, FieldSpace};
use latflow_core::sdk::{Adapter, Physics};
use latflow_core::Stream;
use latflow_sun::{GaugeTerm, Sun};

const BETA: f64 = 5.7;

fn theory(l: usize) -> Adapter<Sun> {
    Adapter::<Sun>::from_json(&format!(r#"{{"lattice": [{l}, {l}, {l}, {l}], "n": 3, "beta": {BETA}}}"#))
        .expect("valid sun config")
}

fn leapfrog(md_steps: u32, tau: f64) -> HmcParams {
    HmcParams { md_steps, integrator: IntegratorKind::Leapfrog, trajectory_length: tau, ..HmcParams::default() }
}

/// A rough configuration: hot start, two short trajectories.
fn rough(th: &Adapter<Sun>, rng: &mut Stream) -> Vec<f64> {
    let mut u = th.physics().initial(Start::Hot, rng);
    th.hmc_vec(&mut u, &leapfrog(10, 0.5), 2, rng).expect("trajectories");
    u
}

fn kernel(c: &mut Criterion) {
    let one = common::pool(1);
    let mut g = c.benchmark_group("sun3_kernel");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for l in [4usize, 8] {
        let th = theory(l);
        let u = rough(&th, &mut Stream::new(1, 0));
        let term = GaugeTerm { theory: th.physics() };
        let mut f = th.physics().space().zero_momentum();
        g.throughput(Throughput::Elements(l.pow(4) as u64));
        g.bench_function(BenchmarkId::new("force", l), |b| {
            b.iter_custom(|n| common::timed(&one, n, || term.force(black_box(&u), &mut f).expect("force")))
        });
        g.bench_function(BenchmarkId::new("action", l), |b| {
            b.iter_custom(|n| {
                common::timed(&one, n, || {
                    black_box(th.physics().action(black_box(&u)));
                })
            })
        });
    }
    g.finish();
}

fn exponential(c: &mut Criterion) {
    let one = common::pool(1);
    let mut rng = Stream::new(2, 0);
    let x: Vec<SuAlg<3>> = (0..1024).map(|_| SuAlg::<3>::gaussian(&mut rng).scale(1.0 / 15.0)).collect();
    let links: Vec<Su3> = (0..1024).map(|_| Su3::random(&mut rng)).collect();
    let mut out = links.clone();
    let mut g = c.benchmark_group("sun3_exp");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(1024));
    g.bench_function("exp", |b| {
        b.iter_custom(|n| {
            common::timed(&one, n, || {
                for (o, x) in out.iter_mut().zip(&x) {
                    *o = Su3::exp(black_box(x));
                }
                black_box(&mut out);
            })
        })
    });
    g.bench_function("exp_times_link", |b| {
        b.iter_custom(|n| {
            common::timed(&one, n, || {
                for ((o, x), l) in out.iter_mut().zip(&x).zip(&links) {
                    *o = Su3::exp(black_box(x)).mul(l);
                }
                black_box(&mut out);
            })
        })
    });
    g.finish();
}

fn trajectory(c: &mut Criterion) {
    let one = common::pool(1);
    let mut g = c.benchmark_group("sun3_hmc_trajectory");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for l in [4usize, 8] {
        let th = theory(l);
        let mut rng = Stream::new(3, 0);
        let mut u = rough(&th, &mut rng);
        let p = leapfrog(15, 1.0);
        g.bench_function(BenchmarkId::new("leapfrog15", l), |b| {
            b.iter_custom(|n| common::timed(&one, n, || drop(th.hmc_vec(&mut u, &p, 1, &mut rng).expect("trajectory"))))
        });
    }
    g.finish();
}

/// Where a `sun3_threads` kernel runs: an explicit rayon pool, or a spinning team (what the
/// plugin's own workers are).
enum On {
    Pool(rayon::ThreadPool),
    Team(latflow_core::par::Team),
}

impl On {
    fn name(&self) -> &'static str {
        match self {
            On::Pool(_) => "rayon",
            On::Team(_) => "team",
        }
    }

    /// Wall time of `n` calls of `f` on these threads.
    fn timed(&self, n: u64, mut f: impl FnMut() + Send) -> Duration {
        let mut run = || {
            let t = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed()
        };
        match self {
            On::Pool(p) => p.install(run),
            On::Team(t) => t.enter(&mut run),
        }
    }
}

/// 1 against 2 threads, on a rayon pool and on a team: the force at L = 8 and 16, a trajectory
/// and the sweeps at L = 8.
fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("sun3_threads");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for l in [8usize, 16] {
        let th = theory(l);
        let mut rng = Stream::new(4, 0);
        let mut u = rough(&th, &mut rng);
        let term = GaugeTerm { theory: th.physics() };
        let mut f = th.physics().space().zero_momentum();
        let lattice = latflow_core::Lattice::new(&[l as i64; 4]).expect("lattice");
        let p = leapfrog(15, 1.0);
        for threads in [1usize, 2] {
            for on in [On::Pool(common::pool(threads)), On::Team(latflow_core::par::Team::new(threads).expect("team"))] {
                let id = format!("{l}/{}{threads}", on.name());
                g.throughput(Throughput::Elements(l.pow(4) as u64));
                g.bench_function(BenchmarkId::new("force", &id), |b| {
                    b.iter_custom(|n| on.timed(n, || term.force(black_box(&u), &mut f).expect("force")))
                });
                if l > 8 {
                    continue;
                }
                g.throughput(Throughput::Elements(1));
                g.bench_function(BenchmarkId::new("trajectory_leapfrog15", &id), |b| {
                    b.iter_custom(|n| on.timed(n, || drop(th.hmc_vec(&mut u, &p, 1, &mut rng).expect("trajectory"))))
                });
                let mut links: Vec<Su3> = bytemuck::cast_slice(&u).to_vec();
                g.throughput(Throughput::Elements(l.pow(4) as u64));
                g.bench_function(BenchmarkId::new("heatbath", &id), |b| {
                    b.iter_custom(|n| on.timed(n, || heatbath_sweep(&lattice, &mut links, BETA, &mut rng).expect("heat-bath")))
                });
                g.bench_function(BenchmarkId::new("overrelax", &id), |b| {
                    b.iter_custom(|n| on.timed(n, || overrelax_sweep(&lattice, &mut links, BETA).expect("overrelaxation")))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, kernel, exponential, trajectory, threads);
criterion_main!(benches);
