//! Criterion benchmarks of the φ⁴ plugin, used directly as an rlib (no plugin loading, no ABI).
//!
//! Run: `cargo bench --bench phi4` (about 2–3 minutes); a subset with a filter, e.g.
//! `cargo bench --bench phi4 -- hmc_trajectory/leapfrog`. Theory: 2D, the tutorial couplings
//! m² = −4, λ = 8 of Albergo et al. (arXiv:2101.08176), convention
//! S = Σ_x [Σ_μ (φ(x+μ̂) − φ(x))² + m²φ² + λφ⁴].
//!
//! Groups:
//! * `kernel/{action,gradient,action+gradient}/L`: one evaluation on an L×L configuration;
//!   throughput is `Elements(V)`, so criterion's `elem/s` reads as site-updates per second.
//!   Single thread.
//! * `hmc_trajectory/{leapfrog,omelyan2}/L`: one HMC trajectory (τ = 1, 10 MD steps, momentum
//!   refresh + integration + Metropolis test) through `Phi4::hmc_vec`; throughput is
//!   `Elements(1)`, so `elem/s` reads as trajectories per second. Single thread.
//! * `threads/{trajectory_omelyan2,action+gradient}/L{128,256}/tN`: the same at L = 128 and
//!   256 on N = 1 or 2 threads (trajectories: the plugin's own workers, `set_threads`, as in
//!   `latflow run`; the kernels: a rayon pool); the speed-up is the ratio of t1 to t2.
//!   The kernel only goes parallel at ≥ 8192 sites and the HMC field updates at ≥ 16384
//!   reals, so these are the sizes where threads can matter. The momentum draw and the
//!   kinetic energy run in fixed chunks too (bit-identical for any thread count).
//!
//! Every measurement runs inside an explicit rayon pool (`iter_custom` + `ThreadPool::install`
//! around the whole timed loop, so the pool hand-off is not in the per-iteration time):
//! without it the kernel would use rayon's global pool, i.e. all cores.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use latflow_core::abi::{HmcParams, IntegratorKind, Theory};
use latflow_core::Stream;
use latflow_core::sdk::Adapter;
use latflow_phi4::Phi4;

const M2: f64 = -4.0;
const LAMBDA: f64 = 8.0;
const SIZES: [usize; 3] = [8, 32, 128];

fn theory(l: usize) -> Adapter<Phi4> {
    Adapter::<Phi4>::from_json(&format!(r#"{{"lattice": [{l}, {l}], "m2": {M2}, "lambda": {LAMBDA}}}"#))
        .expect("valid phi4 config")
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool")
}

fn params(integrator: IntegratorKind, md_steps: u32) -> HmcParams {
    HmcParams {
        md_steps,
        integrator,
        ..HmcParams::default()
    }
}

/// A configuration thermalised with 200 Omelyan-2 trajectories (τ = 1, 10 steps).
fn thermalised(th: &Adapter<Phi4>, rng: &mut Stream) -> Vec<f64> {
    let v = th.lattice().volume();
    let mut phi = vec![0.0; v];
    rng.fill_normal(&mut phi);
    phi.iter_mut().for_each(|p| *p *= 0.1);
    th.hmc_vec(&mut phi, &params(IntegratorKind::Omelyan2, 10), 200, rng).expect("thermalisation");
    phi
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
    let one = pool(1);
    let mut g = c.benchmark_group("kernel");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for l in SIZES {
        let th = theory(l);
        let mut rng = Stream::new(1, 0);
        let phi = thermalised(&th, &mut rng);
        let k = th.kernel();
        let mut grad = vec![0.0; phi.len()];
        g.throughput(Throughput::Elements(phi.len() as u64));
        g.bench_function(BenchmarkId::new("action", l), |b| {
            b.iter_custom(|n| {
                timed(&one, n, || {
                    black_box(k.action(black_box(&phi), M2, LAMBDA));
                })
            })
        });
        g.bench_function(BenchmarkId::new("gradient", l), |b| {
            b.iter_custom(|n| {
                timed(&one, n, || {
                    k.gradient(black_box(&phi), M2, LAMBDA, &mut grad);
                    black_box(&mut grad);
                })
            })
        });
        g.bench_function(BenchmarkId::new("action+gradient", l), |b| {
            b.iter_custom(|n| {
                timed(&one, n, || {
                    black_box(k.action(black_box(&phi), M2, LAMBDA));
                    k.gradient(black_box(&phi), M2, LAMBDA, &mut grad);
                    black_box(&mut grad);
                })
            })
        });
    }
    g.finish();
}

fn trajectory(c: &mut Criterion) {
    let one = pool(1);
    let mut g = c.benchmark_group("hmc_trajectory");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for (name, kind) in [("leapfrog", IntegratorKind::Leapfrog), ("omelyan2", IntegratorKind::Omelyan2)] {
        let p = params(kind, 10);
        for l in SIZES {
            let th = theory(l);
            let mut rng = Stream::new(2, 0);
            let mut phi = thermalised(&th, &mut rng);
            g.bench_function(BenchmarkId::new(name, l), |b| {
                b.iter_custom(|n| {
                    timed(&one, n, || {
                        black_box(th.hmc_vec(&mut phi, &p, 1, &mut rng).expect("trajectory"));
                    })
                })
            });
        }
    }
    g.finish();
}

fn threads(c: &mut Criterion) {
    latflow_core::workers::keep_freed_memory();
    let mut g = c.benchmark_group("threads");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for (l, t) in [(128, 1usize), (128, 2), (256, 1), (256, 2)] {
        let mut th = theory(l);
        let p = params(IntegratorKind::Omelyan2, 10);
        let pl = pool(t);
        let mut rng = Stream::new(3, 0);
        let mut phi = thermalised(&th, &mut rng);
        // the trajectories run on the plugin's own workers, as in `latflow run`
        th.set_threads(t as u32).into_result().expect("threads");
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new(format!("trajectory_omelyan2/L{l}"), format!("t{t}")), |b| {
            b.iter_custom(|n| {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(th.hmc_vec(&mut phi, &p, 1, &mut rng).expect("trajectory"));
                }
                start.elapsed()
            })
        });
        let k = th.kernel();
        let mut grad = vec![0.0; phi.len()];
        g.throughput(Throughput::Elements(phi.len() as u64));
        g.bench_function(BenchmarkId::new(format!("action+gradient/L{l}"), format!("t{t}")), |b| {
            b.iter_custom(|n| {
                timed(&pl, n, || {
                    black_box(k.action(black_box(&phi), M2, LAMBDA));
                    k.gradient(black_box(&phi), M2, LAMBDA, &mut grad);
                    black_box(&mut grad);
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernel, trajectory, threads);
criterion_main!(benches);
