//! Criterion benchmarks of the flows' fused convolution kernels (`latflow_flow_common::kernels`),
//! one convolution at a time, at the shapes the tutorial flows spend their time in: L = 8,
//! kernel 3, batch 64, f32, one thread.
//!
//! Run: `cargo bench --bench flow_kernels` (under a minute). On x86-64 CPUs with AVX2 and FMA
//! these run the explicit-register kernels of `kernels/avx2.rs`.
//!
//! Groups (throughput `Elements` = multiply-adds, so criterion's `elem/s` reads as MAC/s):
//! * `flow_kernels/forward/NAME`: the convolution with its activation.
//! * `flow_kernels/backward/NAME`: forward, then ∂/∂(input, weight, bias) of Σ output.
//!
//! Shapes (NAME): `phi4_1to8` (the first convolution, reading the frozen half with zero
//! padding), `hidden_8to8` (every site), `phi4_8to2` (the affine conditioner's output on the
//! active half), `spline_8to23` (the φ⁴ spline conditioner's output, K = 8) and `u1_8to3` (the
//! U(1) NCP conditioner's output on a stripe).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use latflow_flow_common::kernels::{conv, conv_padded, Act, Table};
use latflow_flow_common::periodic;
use latflow_flow_common::tensor::tensor_from_f64;
use latflow_flow_common::testing::uniform_values as values;

const SHAPE: [usize; 2] = [8, 8];
const BATCH: usize = 64;

/// One convolution: its name, channels, gather table, activation and pad row.
struct Shape {
    name: &'static str,
    ci: usize,
    co: usize,
    tab: Arc<Table>,
    act: Act,
    pad: Option<Vec<f64>>,
}

fn shapes() -> Vec<Shape> {
    let all: Vec<usize> = (0..64).collect();
    // checkerboard halves (x + y even: frozen; odd: active)
    let frozen: Vec<usize> = (0..64).filter(|s| (s / 8 + s % 8) % 2 == 0).collect();
    let active: Vec<usize> = (0..64).filter(|s| (s / 8 + s % 8) % 2 == 1).collect();
    let stripe: Vec<usize> = (0..64).filter(|s| s % 8 == 3).collect();
    let t = |outputs: &[usize], inputs: &[usize]| Arc::new(periodic::table(&SHAPE, 3, outputs, inputs));
    vec![
        Shape { name: "phi4_1to8", ci: 1, co: 8, tab: t(&all, &frozen), act: Act::LeakyRelu, pad: Some(vec![0.0]) },
        Shape { name: "hidden_8to8", ci: 8, co: 8, tab: t(&all, &all), act: Act::LeakyRelu, pad: None },
        Shape { name: "phi4_8to2", ci: 8, co: 2, tab: t(&active, &all), act: Act::Tanh, pad: None },
        Shape { name: "spline_8to23", ci: 8, co: 23, tab: t(&active, &all), act: Act::Identity, pad: None },
        Shape { name: "u1_8to3", ci: 8, co: 3, tab: t(&stripe, &all), act: Act::Identity, pad: None },
    ]
}

fn run(s: &Shape, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    match &s.pad {
        Some(p) => conv_padded(x, w, b, &s.tab, s.act, p),
        None => conv(x, w, b, &s.tab, s.act),
    }
    .unwrap()
}

fn kernels(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let dev = Device::Cpu;
    for pass in ["forward", "backward"] {
        let mut g = c.benchmark_group(format!("flow_kernels/{pass}"));
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for s in shapes() {
            let (m, n_in, k) = (s.tab.m, s.tab.n_in, s.tab.k);
            let f = |v: Vec<f64>, shape: &[usize]| tensor_from_f64(&v, shape, DType::F32, &dev).unwrap();
            let x = Var::from_tensor(&f(values(BATCH * n_in * s.ci, 1), &[BATCH, n_in, s.ci])).unwrap();
            let w = Var::from_tensor(&f(values(k * s.ci * s.co, 2), &[k * s.ci, s.co])).unwrap();
            let b = Var::from_tensor(&f(values(s.co, 3), &[s.co])).unwrap();
            g.throughput(Throughput::Elements((BATCH * m * k * s.ci * s.co) as u64));
            g.bench_function(BenchmarkId::from_parameter(s.name), |bench| {
                bench.iter(|| {
                    pool.install(|| {
                        let y = run(&s, x.as_tensor(), w.as_tensor(), b.as_tensor());
                        if pass == "backward" {
                            black_box(y.sum_all().unwrap().backward().unwrap());
                        } else {
                            black_box(y);
                        }
                    })
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
