//! Criterion benchmarks of the `flow-sun` model plugin at the peer's setup
//! (`benches/peers/sun_flow.py`, after Boyda et al., PRD 103, 074504 (2021)): SU(3) (and SU(2)),
//! L = 8, β = 2, Wilson action, 16 spectral spline coupling layers on the active plaquettes
//! (K = 8 bins), hidden [8, 8], kernel 3, stripe masks of period 4, f32, batch 64.
//!
//! The model is loaded from its shared library through the plugin ABI, as `latflow train` and
//! `latflow run` load it (the bench first runs `cargo build --release -p latflow-flow-sun`, a
//! no-op when it is up to date); the action and its gradient come from the sun theory plugin
//! (used as an rlib), so a training step is exactly the host's route: `train_sample` → the
//! theory's `action_grad` → `train_step` (surrogate backward pass and Adam).
//!
//! Run: `cargo bench --bench flow_sun` (about three minutes); a subset with a filter, e.g.
//! `cargo bench --bench flow_sun -- flow_sun/su3/train_step`.
//!
//! Groups (G = su2 or su3):
//! * `flow_sun/G/train_step/tN`: one training step at batch 64 with the model's pool (and the
//!   theory's) set to N = 1 or 2 threads. Compare with the peer's median step time
//!   (`benches/peers/sun_flow.py --n 3 --threads N --steps 100 --n-eval 1024`:
//!   `training.step_ms_median`).
//! * `flow_sun/G/sample/tN/B`: B proposals with their log q plus the theory's action on them,
//!   at B = 64 and 1024, with N = 1 or 2 threads; throughput is `Elements(B)`, so criterion's
//!   `elem/s` reads as proposals per second (the peer's `evaluation.proposals_per_s_bs64` and
//!   `_bs1000` also include the action).

mod common;

use std::hint::black_box;
use std::time::Duration;

use abi_stable::std_types::RSlice;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use latflow_core::abi::Theory;
use latflow_core::sdk::Adapter;
use latflow_core::Stream;
use latflow_sun::Sun;

const L: usize = 8;
const BETA: f64 = 2.0;
const BATCH: u32 = 64;
/// The gauge groups benchmarked: SU(3), the target, and SU(2).
const GROUPS: [usize; 2] = [3, 2];
/// The peer's architecture (the plugin's defaults, spelt out).
const MODEL: &str = r#"{"layers": 16, "hidden": [8, 8], "kernel": 3, "coupling": "spectral_spline", "spline_bins": 8, "mask_period": 4, "dtype": "f32"}"#;

fn theory(n: usize, threads: u32) -> Adapter<Sun> {
    let card = format!(r#"{{"lattice": [{L}, {L}], "n": {n}, "beta": {BETA}}}"#);
    let mut th = Adapter::<Sun>::from_json(&card).expect("valid sun config");
    th.set_threads(threads).into_result().expect("theory threads");
    th
}

fn train_step(c: &mut Criterion) {
    let lib = common::model_plugin("latflow-flow-sun");
    for n in GROUPS {
        let mut g = c.benchmark_group(format!("flow_sun/su{n}/train_step"));
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
        for threads in [1u32, 2] {
            let th = theory(n, threads);
            let mut m = common::new_model(lib, MODEL, &th.layout(), threads);
            m.train_begin(&common::adam_settings(BATCH)).into_result().expect("train_begin");
            let mut rng = Stream::new(1, 0).state();
            let outer = common::pool(threads as usize);
            g.bench_function(BenchmarkId::from_parameter(format!("t{threads}")), |b| {
                b.iter_custom(|iters| {
                    common::timed(&outer, iters, || {
                        let p = m.train_sample(&mut rng).into_result().expect("train_sample");
                        let ag = th.action_grad(RSlice::from_slice(&p.configs)).into_result().expect("action_grad");
                        let met = m
                            .train_step(ag.actions.as_rslice(), ag.grad.as_rslice())
                            .into_result()
                            .expect("train_step");
                        black_box(met);
                    })
                })
            });
        }
        g.finish();
    }
}

fn sample(c: &mut Criterion) {
    let lib = common::model_plugin("latflow-flow-sun");
    for n in GROUPS {
        let mut g = c.benchmark_group(format!("flow_sun/su{n}/sample"));
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
        for threads in [1u32, 2] {
            let th = theory(n, threads);
            let m = common::new_model(lib, MODEL, &th.layout(), threads);
            let mut rng = Stream::new(2, 0).state();
            let outer = common::pool(threads as usize);
            for batch in [64u32, 1024] {
                g.throughput(Throughput::Elements(batch as u64));
                g.bench_function(BenchmarkId::new(format!("t{threads}"), batch), |b| {
                    b.iter_custom(|iters| {
                        common::timed(&outer, iters, || {
                            let p = m.sample(batch, &mut rng).into_result().expect("sample");
                            black_box(th.action(RSlice::from_slice(&p.configs)).into_result().expect("action"));
                            black_box(p.log_q);
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, train_step, sample);
criterion_main!(benches);
