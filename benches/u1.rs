//! Criterion benchmarks of the U(1) plugin, used directly as an rlib (no plugin loading, no ABI).
//!
//! Run: `cargo bench --bench u1` (about a minute); a subset with a filter, e.g.
//! `cargo bench --bench u1 -- u1_kernel/action+force`. Theory: 2D compact U(1), Wilson action
//! S = −β Σ_P cos θ_P at β = 3.
//!
//! Groups:
//! * `u1_kernel/{action,force,action+force}/L`: one evaluation on an L×L configuration, L = 16,
//!   32, 64; throughput is `Elements(V)`, so criterion's `elem/s` reads as sites per second
//!   (each site carries 2 links and 1 plaquette). Single thread.
//! * `u1_hmc_trajectory/omelyan2/16`: one HMC trajectory (τ = 1, 4 MD steps, momentum refresh +
//!   integration + Metropolis test) through `U1::hmc_vec`; throughput is `Elements(1)`, so
//!   `elem/s` reads as trajectories per second. Single thread.
//!
//! Every measurement runs inside an explicit one-thread rayon pool (`iter_custom` +
//! `ThreadPool::install` around the whole timed loop); the kernels only go parallel at ≥ 8192
//! sites, so these sizes are single-threaded anyway.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use latflow_core::abi::{HmcParams, IntegratorKind};
use latflow_core::Stream;
use latflow_core::sdk::Adapter;
use latflow_u1::U1;

const BETA: f64 = 3.0;
const SIZES: [usize; 3] = [16, 32, 64];

fn theory(l: usize) -> Adapter<U1> {
    Adapter::<U1>::from_json(&format!(r#"{{"lattice": [{l}, {l}], "beta": {BETA}}}"#)).expect("valid u1 config")
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("rayon pool")
}

fn params(md_steps: u32) -> HmcParams {
    HmcParams {
        md_steps,
        integrator: IntegratorKind::Omelyan2,
        ..HmcParams::default()
    }
}

/// A configuration thermalised with 100 Omelyan-2 trajectories from a cold start.
fn thermalised(th: &Adapter<U1>, rng: &mut Stream) -> Vec<f64> {
    let mut theta = vec![0.0; th.kernel().n_links()];
    th.hmc_vec(&mut theta, &params(4), 100, rng).expect("thermalisation");
    theta
}

/// Times `iters` calls of `f` inside `pool`.
fn timed(pool: &rayon::ThreadPool, iters: u64, mut f: impl FnMut() + Send) -> Duration {
    pool.install(|| {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed()
    })
}

fn kernel(c: &mut Criterion) {
    let one = pool();
    let mut g = c.benchmark_group("u1_kernel");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for l in SIZES {
        let th = theory(l);
        let mut rng = Stream::new(1, 0);
        let theta = thermalised(&th, &mut rng);
        let k = th.kernel();
        let mut force = vec![0.0; theta.len()];
        g.throughput(Throughput::Elements(k.volume() as u64));
        g.bench_function(BenchmarkId::new("action", l), |b| {
            b.iter_custom(|n| {
                timed(&one, n, || {
                    black_box(k.action(black_box(&theta), BETA));
                })
            })
        });
        g.bench_function(BenchmarkId::new("force", l), |b| {
            b.iter_custom(|n| {
                timed(&one, n, || {
                    k.gradient(black_box(&theta), BETA, &mut force);
                    black_box(&mut force);
                })
            })
        });
        g.bench_function(BenchmarkId::new("action+force", l), |b| {
            b.iter_custom(|n| {
                timed(&one, n, || {
                    black_box(k.action_and_gradient(black_box(&theta), BETA, &mut force));
                    black_box(&mut force);
                })
            })
        });
    }
    g.finish();
}

fn trajectory(c: &mut Criterion) {
    let one = pool();
    let mut g = c.benchmark_group("u1_hmc_trajectory");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    let l = 16;
    let th = theory(l);
    let p = params(4);
    let mut rng = Stream::new(2, 0);
    let mut theta = thermalised(&th, &mut rng);
    g.bench_function(BenchmarkId::new("omelyan2", l), |b| {
        b.iter_custom(|n| {
            timed(&one, n, || {
                black_box(th.hmc_vec(&mut theta, &p, 1, &mut rng).expect("trajectory"));
            })
        })
    });
    g.finish();
}

criterion_group!(benches, kernel, trajectory);
criterion_main!(benches);
