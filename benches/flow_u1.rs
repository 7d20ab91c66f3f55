//! Criterion benchmarks of the `flow-u1` model plugin at the peer's setup
//! (`benches/peers/u1_flow.py`, Albergo et al. arXiv 2101.08176): L = 8, β = 2, 16 gauge-equivariant
//! NCP coupling layers (2 components), hidden [8, 8], kernel 3, f32, batch 64.
//!
//! The model is loaded from its shared library through the plugin ABI, as `latflow train` and
//! `latflow run` load it (the bench first runs `cargo build --release -p latflow-flow-u1`, a
//! no-op when it is up to date); the action and its gradient come from the u1 theory plugin
//! (used as an rlib), so a training step is exactly the host's route: `train_sample` → the
//! theory's `action_grad` → `train_step` (surrogate backward pass and Adam).
//!
//! Run: `cargo bench --bench flow_u1` (about a minute and a half); a subset with a filter, e.g.
//! `cargo bench --bench flow_u1 -- flow_u1/train_step`.
//!
//! Groups:
//! * `flow_u1/train_step/tN`: one training step at batch 64 with the model's pool (and the
//!   theory's) set to N = 1 or 2 threads. Compare with the peer's median step time
//!   (`benches/peers/u1_flow.py --threads N --steps 200 --n-eval 1000`: `training.step_ms_median`).
//! * `flow_u1/sample/tN/B`: B proposals with their log q plus the theory's action on them, at
//!   B = 64 and 1024, with N = 1 or 2 threads; throughput is `Elements(B)`, so criterion's
//!   `elem/s` reads as proposals per second (the peer's `evaluation.proposals_per_s_bs64`/`_bs1000`,
//!   from `u1_flow.py --steps 1 --n-eval 10000`, also include the action).

mod common;

use std::hint::black_box;
use std::time::Duration;

use abi_stable::std_types::RSlice;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use latflow_core::abi::Theory;
use latflow_core::Stream;
use latflow_core::sdk::Adapter;
use latflow_u1::U1;

const L: usize = 8;
const BETA: f64 = 2.0;
const BATCH: u32 = 64;
/// The peer's architecture (the plugin's defaults, spelt out).
const MODEL: &str = r#"{"layers": 16, "hidden": [8, 8], "kernel": 3, "coupling": "ncp", "n_mix": 2, "dtype": "f32"}"#;

fn theory(threads: u32) -> Adapter<U1> {
    let mut th = Adapter::<U1>::from_json(&format!(r#"{{"lattice": [{L}, {L}], "beta": {BETA}}}"#)).expect("valid u1 config");
    th.set_threads(threads).into_result().expect("theory threads");
    th
}

fn train_step(c: &mut Criterion) {
    let lib = common::model_plugin("latflow-flow-u1");
    let mut g = c.benchmark_group("flow_u1/train_step");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for threads in [1u32, 2] {
        let th = theory(threads);
        let mut m = common::new_model(lib, MODEL, &th.layout(), threads);
        m.train_begin(&common::adam_settings(BATCH)).into_result().expect("train_begin");
        let mut rng = Stream::new(1, 0).state();
        let outer = common::pool(threads as usize);
        g.bench_function(BenchmarkId::from_parameter(format!("t{threads}")), |b| {
            b.iter_custom(|n| {
                common::timed(&outer, n, || {
                    let p = m.train_sample(&mut rng).into_result().expect("train_sample");
                    let ag = th.action_grad(RSlice::from_slice(&p.configs)).into_result().expect("action_grad");
                    let met =
                        m.train_step(ag.actions.as_rslice(), ag.grad.as_rslice()).into_result().expect("train_step");
                    black_box(met);
                })
            })
        });
    }
    g.finish();
}

fn sample(c: &mut Criterion) {
    let lib = common::model_plugin("latflow-flow-u1");
    let mut g = c.benchmark_group("flow_u1/sample");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for threads in [1u32, 2] {
        let th = theory(threads);
        let m = common::new_model(lib, MODEL, &th.layout(), threads);
        let mut rng = Stream::new(2, 0).state();
        let outer = common::pool(threads as usize);
        for batch in [64u32, 1024] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(BenchmarkId::new(format!("t{threads}"), batch), |b| {
                b.iter_custom(|n| {
                    common::timed(&outer, n, || {
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

criterion_group!(benches, train_step, sample);
criterion_main!(benches);
