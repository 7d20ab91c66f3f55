//! Criterion benchmarks of the qcd plugin (Nf = 2 Wilson quarks through pseudofermions), used
//! directly as an rlib, its steps called through the `Theory` trait as the host calls them.
//!
//! Run: `cargo bench --bench qcd` (about a minute).
//!
//! Group `qcd_su3_nf2/pf_hmc/L/threads`: one pseudofermion HMC trajectory (`pf_hmc`: heat-bath
//! of the pseudofermion, leapfrog with 4 fermion steps of 2 gauge sub-steps, τ = 0.5, even–odd
//! CG to 10⁻⁸ for action and force, Metropolis) of 4D SU(3) at β = 5.6, κ = 0.12 on an 8⁴
//! lattice, on the plugin's own worker threads (`set_threads`: 1 or 2), as in `latflow run`.
//! The configuration is a hot start evolved by two trajectories; every iteration continues
//! the chain. Throughput `Elements(1)`: trajectories per second. The bits (and so the CG
//! iteration counts) do not depend on the thread count, so 1 and 2 threads do the same work.

mod common;

use std::time::{Duration, Instant};

use abi_stable::std_types::{RSliceMut, RStr};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use latflow_core::Stream;
use latflow_core::abi::{Start, Theory};
use latflow_core::sdk::{Adapter, Physics};
use latflow_qcd::Qcd;

const CARD: &str = r#"{"group": "su3", "lattice": [8, 8, 8, 8], "beta": 5.6, "kappa": 0.12,
    "solver": {"tol": 1e-8, "force_tol": 1e-8, "max_iter": 20000}, "pion_correlator": false}"#;
const OPTS: &str = r#"{"md_steps": 4, "inner_steps": [2], "trajectory_length": 0.5, "integrator": "leapfrog"}"#;

fn trajectories(c: &mut Criterion) {
    latflow_core::workers::keep_freed_memory();
    let mut g = c.benchmark_group("qcd_su3_nf2");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    for threads in [1u32, 2] {
        let mut t: Adapter<Qcd> = Adapter::from_json(CARD).unwrap_or_else(|e| panic!("{e}"));
        Theory::set_threads(&mut t, threads).into_result().expect("threads");
        let mut rng = Stream::new(5, 0);
        let mut u = t.physics().initial(Start::Hot, &mut rng);
        let mut state = rng.state();
        let (kind, opts) = (RStr::from("pf_hmc"), RStr::from(OPTS));
        Theory::step_columns(&t, kind, opts).into_result().expect("pf_hmc options");
        let mut step = |t: &mut Adapter<Qcd>, n: u32| {
            Theory::step(t, kind, opts, RSliceMut::from(&mut u[..]), n, &mut state).into_result().expect("pf_hmc")
        };
        step(&mut t, 2);
        g.bench_function(BenchmarkId::new("pf_hmc", format!("8/{threads}")), |b| {
            b.iter_custom(|n| {
                let start = Instant::now();
                step(&mut t, n as u32);
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, trajectories);
criterion_main!(benches);
