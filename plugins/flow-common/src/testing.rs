//! Test helpers and contract checks shared by the flow model plugins' tests (feature
//! `testing`, which the plugins enable for their tests only:
//! `latflow-flow-common = { workspace = true, features = ["testing"] }` under
//! `[dev-dependencies]`).
//!
//! The checks drive a model through the `latflow_core::abi::Model` trait, as the host does, so
//! one check serves every plugin: the training protocol and its refusals, all-or-nothing
//! optimiser steps, bit-exact resumption, thread-count independence and the refusal of damaged
//! weights files. A plugin passes its own action (S and ∂S/∂x for a batch of configurations in
//! the layout's order) where a check trains.

use std::fmt::Debug;

use abi_stable::std_types::RSlice;
use latflow_core::abi::{LrSchedule, Model, TrainSettings};
use latflow_core::layout::{ElementKind, FieldComponent, FieldLayout, FieldRole, Support};
use latflow_core::{ErrorKind, PluginError, RngState, Stream};

use crate::io;
use crate::net::ConvNet;
use crate::tensor_to_f64;
use candle_core::{Tensor, Var};

/// S and ∂S/∂x of a batch of configurations (flat, the layout's order).
pub type Action<'a> = &'a dyn Fn(&[f64]) -> (Vec<f64>, Vec<f64>);

/// `n` deterministic pseudo-random values in (−1, 1) from `seed` (xorshift64): inputs and
/// weights for kernel tests and benches.
pub fn uniform_values(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Adam with torch's defaults, a constant learning rate `lr`, no decay, no clipping.
pub fn settings(batch: u32, lr: f64) -> TrainSettings {
    TrainSettings {
        batch,
        learning_rate: lr,
        schedule: LrSchedule::Constant,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        grad_clip: 0.0,
        path_gradients: false,
    }
}

/// Replaces every weight by U(−amp, amp)/√fan_in and every bias by U(−amp, amp)/2 (from the
/// stream (`seed`, 99)), so that the couplings are far from the near-identity initialisation.
pub fn randomize(net: &ConvNet, amp: f64, seed: u64) {
    let mut rng = Stream::new(seed, 99);
    let values: Vec<Vec<f64>> = net
        .vars
        .iter()
        .map(|nv| {
            let dims = nv.var.dims();
            let n = nv.var.elem_count();
            let scale =
                if nv.name.ends_with("weight") { amp / ((n / dims[dims.len() - 1]) as f64).sqrt() } else { amp / 2.0 };
            (0..n).map(|_| scale * (2.0 * rng.uniform() - 1.0)).collect()
        })
        .collect();
    net.set_values(&values).unwrap();
}

/// log|det A| of a dense n×n matrix (row-major) by LU with partial pivoting.
pub fn log_abs_det(mut a: Vec<f64>, n: usize) -> f64 {
    let mut acc = 0.0;
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i * n + col].abs().partial_cmp(&a[j * n + col].abs()).unwrap()).unwrap();
        if piv != col {
            for k in 0..n {
                a.swap(col * n + k, piv * n + k);
            }
        }
        let p = a[col * n + col];
        assert!(p != 0.0, "singular matrix");
        acc += p.abs().ln();
        for i in col + 1..n {
            let f = a[i * n + col] / p;
            for k in col..n {
                a[i * n + k] -= f * a[col * n + k];
            }
        }
    }
    acc
}

/// The largest |a_i − b_i| (the lengths must agree).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Checks the parameter gradients `got` against `truth`, parameter by parameter of `net`: each
/// within `rtol` of the parameter's largest |truth| component (which must be non-zero). Returns
/// the largest relative difference; failures name `what` and the parameter.
pub fn check_gradients(net: &ConvNet, truth: &[Vec<f64>], got: &[Vec<f64>], rtol: f64, what: &str) -> f64 {
    let mut worst = 0.0f64;
    for ((nv, a), b) in net.vars.iter().zip(truth).zip(got) {
        let scale = a.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        assert!(scale > 0.0, "{what} {}: zero gradient", nv.name);
        let d = max_abs_diff(a, b);
        worst = worst.max(d / scale);
        assert!(d <= rtol * scale, "{what} {}: gradient differs by {d} (scale {scale})", nv.name);
    }
    worst
}

/// For a flow output `y` and log-determinant `ld` computed from the input leaf `x` with `net`'s
/// tracked parameters: the gradients of Σ y·u + Σ ld with respect to every parameter and to `x`,
/// followed by `y` and `ld` themselves, all as f64.
pub fn flow_gradients(net: &ConvNet, x: &Var, y: &Tensor, ld: &Tensor, u: &Tensor) -> Vec<Vec<f64>> {
    let loss = (y.mul(u).unwrap().sum_all().unwrap() + ld.sum_all().unwrap()).unwrap();
    let g = loss.backward().unwrap();
    let mut out = net.gradients(&g).unwrap();
    out.push(tensor_to_f64(g.get(x.as_tensor()).unwrap()).unwrap());
    out.push(tensor_to_f64(y).unwrap());
    out.push(tensor_to_f64(ld).unwrap());
    out
}

/// The bit patterns of a vector, for exact comparisons.
pub fn bits(x: &[f64]) -> Vec<u64> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The message of a configuration error (`Config` kind; anything else fails the test).
pub fn config_error<T>(result: Result<T, PluginError>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Config, "{what}: {}", e.message);
            e.message.to_string()
        }
    }
}

/// `layout` with one more component.
pub fn with_component(
    layout: &FieldLayout,
    name: &str,
    support: Support,
    element: ElementKind,
    role: FieldRole,
) -> FieldLayout {
    let mut l = layout.clone();
    l.components.push(FieldComponent { name: name.into(), support, element, role });
    l
}

/// `n` training steps on the stream state `rng` with the action `action`; the bits of each
/// step's loss, gradient norm and learning rate.
pub fn train_steps(m: &mut impl Model, rng: &mut RngState, n: usize, action: Action<'_>) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let p = m.train_sample(rng).into_result().unwrap();
        let (a, g) = action(&p.configs);
        let met = m.train_step(RSlice::from(&a[..]), RSlice::from(&g[..])).into_result().unwrap();
        out.extend([met.loss.to_bits(), met.grad_norm.to_bits(), met.learning_rate.to_bits()]);
    }
    out
}

/// The bits of n proposals and their log q from the stream (`seed`, 4).
pub fn sample_bits(m: &impl Model, n: u32, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let mut rng = Stream::new(seed, 4).state();
    let p = m.sample(n, &mut rng).into_result().unwrap();
    (bits(&p.configs), bits(&p.log_q))
}

/// `run` gives the same result on the model's own pool of 1, 2 and 3 threads and on the global
/// pool as on the first run.
pub fn check_thread_independence<M: Model, T: PartialEq + Debug>(m: &mut M, run: impl Fn(&mut M) -> T) {
    let first = run(m);
    assert_eq!(first, run(m), "a second run differs");
    for t in [1, 2, 3, 0] {
        m.set_threads(t).into_result().unwrap();
        assert_eq!(first, run(m), "{t} threads");
    }
}

/// Drawing `n` proposals from the stream (11, 5) gives the same configurations, log q and final
/// stream state on every thread count (see [`check_thread_independence`]); returns that state.
pub fn check_sampling_thread_independence<M: Model>(m: &mut M, n: u32) -> RngState {
    fn draw<M: Model>(m: &mut M, n: u32) -> (Vec<u64>, Vec<u64>, RngState) {
        let mut rng = Stream::new(11, 5).state();
        let p = m.sample(n, &mut rng).into_result().unwrap();
        (bits(&p.configs), bits(&p.log_q), rng)
    }
    check_thread_independence(m, |m: &mut M| draw(m, n));
    draw(m, n).2
}

/// Three training steps (batch 40) on the model's own pool of 1 and 3 threads and on the global
/// pool give the same metrics, weights and optimiser state, bit for bit; `make` builds a fresh
/// model each time.
pub fn check_training_thread_independence<M: Model>(make: impl Fn() -> M, action: Action<'_>) {
    let run = |threads: u32| {
        let mut m = make();
        m.set_threads(threads).into_result().unwrap();
        m.train_begin(&settings(40, 1e-2)).into_result().unwrap();
        let bits = train_steps(&mut m, &mut Stream::new(8, 8).state(), 3, action);
        (bits, m.save(true).into_result().unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(3), "3 threads");
    assert_eq!(one, run(0), "default pool");
}

/// `train_sample` and `train_step` out of order or with buffers of the wrong size (a
/// configuration holds `width` reals) are refused with the right kinds, a batch is spent by its
/// step, and invalid settings are refused.
pub fn check_training_protocol(m: &mut impl Model, width: usize) {
    fn step(m: &mut impl Model, actions: usize, grad: usize) -> Result<(), PluginError> {
        let (a, g) = (vec![0.0; actions], vec![0.0; grad]);
        m.train_step(RSlice::from(&a[..]), RSlice::from(&g[..])).into_result().map(|_| ())
    }
    let mut rng = Stream::new(1, 1).state();
    let e = m.train_sample(&mut rng).into_result().unwrap_err();
    assert!(e.message.contains("train_begin"), "{}", e.message);
    m.train_begin(&settings(8, 1e-3)).into_result().unwrap();
    let e = step(m, 8, 8 * width).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("train_sample"), "{}", e.message);
    m.train_sample(&mut rng).into_result().unwrap();
    let e = step(m, 7, 8 * width).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape, "{}", e.message);
    let e = step(m, 8, 8 * width - 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape, "{}", e.message);
    assert!(e.message.contains(&format!("{} expected", 8 * width)), "{}", e.message);
    // the batch is still pending after a size error, but spent after a step
    step(m, 8, 8 * width).unwrap();
    assert!(step(m, 8, 8 * width).is_err(), "a batch is spent by its step");
    for bad in [
        TrainSettings { batch: 0, ..settings(8, 1e-3) },
        settings(8, 0.0),
        settings(8, f64::NAN),
        TrainSettings { beta1: 1.0, ..settings(8, 1e-3) },
        TrainSettings { eps: 0.0, ..settings(8, 1e-3) },
        TrainSettings { grad_clip: -1.0, ..settings(8, 1e-3) },
        TrainSettings { schedule: LrSchedule::Step { every: 0, factor: 0.5 }, ..settings(8, 1e-3) },
        TrainSettings { schedule: LrSchedule::Cosine { steps: 10, min_lr: 0.0, warmup: 11 }, ..settings(8, 1e-3) },
    ] {
        let e = m.train_begin(&bad).into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{bad:?}: {}", e.message);
    }
}

/// A non-finite loss, action gradient or update is a `Numerical` error that leaves the weights
/// and the optimiser's state unchanged (a configuration holds `width` reals).
pub fn check_non_finite_steps_change_nothing(m: &mut impl Model, width: usize) {
    m.train_begin(&settings(8, 1e-3)).into_result().unwrap();
    let before = m.save(true).into_result().unwrap();
    let mut rng = Stream::new(1, 1).state();
    let mut nan = vec![0.0; 8 * width];
    nan[5] = f64::NAN;
    for (actions, grad) in
        [(vec![f64::INFINITY; 8], vec![0.0; 8 * width]), (vec![0.0; 8], nan), (vec![0.0; 8], vec![1e300; 8 * width])]
    {
        m.train_sample(&mut rng).into_result().unwrap();
        let e = m.train_step(RSlice::from(&actions[..]), RSlice::from(&grad[..])).into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Numerical, "{}", e.message);
        assert_eq!(m.save(true).into_result().unwrap(), before, "weights or optimiser changed after: {}", e.message);
    }
}

/// Training from a checkpoint with the optimiser's state (`a` saved after 3 steps, loaded into
/// `b`, a model of the same architecture with other initial weights) continues bit for bit as
/// the uninterrupted run, with a cosine schedule, weight decay and clipping.
pub fn check_resume_is_bit_exact(a: &mut impl Model, b: &mut impl Model, action: Action<'_>) {
    let mut s = settings(16, 1e-2);
    s.schedule = LrSchedule::Cosine { steps: 10, min_lr: 1e-3, warmup: 2 };
    s.weight_decay = 0.01;
    s.grad_clip = 5.0;
    a.train_begin(&s).into_result().unwrap();
    let mut rng = Stream::new(3, 3).state();
    train_steps(a, &mut rng, 3, action);
    let ckpt = a.save(true).into_result().unwrap();
    let mut rng_at_ckpt = rng;
    let uninterrupted = train_steps(a, &mut rng, 4, action);
    let final_a = a.save(true).into_result().unwrap();
    b.load(RSlice::from(&ckpt[..])).into_result().unwrap();
    b.train_begin(&s).into_result().unwrap();
    let resumed = train_steps(b, &mut rng_at_ckpt, 4, action);
    assert_eq!(uninterrupted, resumed, "metrics differ after resume");
    assert_eq!(final_a, b.save(true).into_result().unwrap(), "weights or optimiser state differ after resume");
}

/// Data-parallel training's pieces: `train_gradient` then `train_apply` of its result is
/// `train_step`, bit for bit (`a` and `b` are two identical fresh models); a gradient of the
/// wrong length is a `Shape` error and a non-finite one a `Numerical` error, both leaving the
/// weights and the optimiser unchanged.
pub fn check_gradient_then_apply_is_a_step(a: &mut impl Model, b: &mut impl Model, action: Action<'_>) {
    let s = settings(8, 1e-2);
    a.train_begin(&s).into_result().unwrap();
    b.train_begin(&s).into_result().unwrap();
    let mut rng_a = Stream::new(6, 2).state();
    let mut rng_b = rng_a;
    let steps = train_steps(a, &mut rng_a, 2, action);
    let mut split = Vec::new();
    let mut len = 0;
    for _ in 0..2 {
        let p = b.train_sample(&mut rng_b).into_result().unwrap();
        let (act, g) = action(&p.configs);
        let grad = b.train_gradient(RSlice::from(&act[..]), RSlice::from(&g[..])).into_result().unwrap();
        len = grad.gradient.len();
        let met = b.train_apply(RSlice::from(&grad.gradient[..]), grad.loss).into_result().unwrap();
        split.extend([met.loss.to_bits(), met.grad_norm.to_bits(), met.learning_rate.to_bits()]);
    }
    assert_eq!(steps, split, "train_gradient + train_apply differs from train_step");
    assert_eq!(a.save(true).into_result().unwrap(), b.save(true).into_result().unwrap());
    let before = b.save(true).into_result().unwrap();
    let e = b.train_apply(RSlice::from(&vec![0.0; len + 1][..]), 1.0).into_result().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape, "{}", e.message);
    let mut nan = vec![0.0; len];
    nan[len / 2] = f64::NAN;
    let e = b.train_apply(RSlice::from(&nan[..]), 1.0).into_result().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Numerical, "{}", e.message);
    assert_eq!(b.save(true).into_result().unwrap(), before, "a refused gradient changed the model");
}

/// `save` gives the same bytes twice; with the optimiser, the file holds the format version,
/// `plugin`'s name, the architecture record (which has the `keys`), step 0, and every
/// parameter with its two Adam moments; without, the parameters only and no step. Returns the
/// file saved with the optimiser.
pub fn check_saved_weights(m: &impl Model, plugin: &str, keys: &[&str]) -> io::WeightsFile {
    let a = m.save(true).into_result().unwrap();
    assert_eq!(a, m.save(true).into_result().unwrap(), "save is not deterministic");
    let f = io::parse(&a).unwrap();
    assert_eq!(f.metadata[io::KEY_FORMAT], io::FORMAT);
    assert_eq!(f.metadata[io::KEY_PLUGIN], plugin);
    assert_eq!(f.metadata[io::KEY_ARCH], m.architecture().as_str());
    assert_eq!(f.metadata[io::KEY_STEP], "0");
    let arch: serde_json::Value = serde_json::from_str(&f.metadata[io::KEY_ARCH]).unwrap();
    for key in keys {
        assert!(arch.get(key).is_some(), "architecture lacks {key}: {arch}");
    }
    let plain = io::parse(&m.save(false).into_result().unwrap()).unwrap();
    assert!(!plain.metadata.contains_key(io::KEY_STEP));
    assert_eq!(f.tensors.len(), 3 * plain.tensors.len());
    for name in plain.tensors.keys() {
        assert!(f.tensors.contains_key(&format!("adam.m.{name}")) && f.tensors.contains_key(&format!("adam.v.{name}")));
    }
    f
}

/// `good` (a valid weights file) damaged in every way that [`io::parse`] must catch.
pub fn damaged_files(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut huge = good.to_vec();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    vec![
        ("empty", Vec::new()),
        ("short", good[..5].to_vec()),
        ("truncated header", good[..30].to_vec()),
        ("truncated data", good[..good.len() - 3].to_vec()),
        ("garbage", b"this is not a safetensors file at all, just some text".to_vec()),
        ("huge header length", huge),
    ]
}

/// Damaged files and a file without latflow's metadata are refused by `load` (and damaged ones
/// by `init_from`) with `Config` errors that say what is wrong, and leave the model unchanged.
pub fn check_damaged_files_are_refused(m: &mut impl Model) {
    let good = m.save(true).into_result().unwrap();
    for (what, bytes) in damaged_files(&good) {
        let e = m.load(RSlice::from(&bytes[..])).into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{what}: {}", e.message);
        assert!(e.message.contains("safetensors"), "{what}: {}", e.message);
        let e = m.init_from(RSlice::from(&bytes[..])).into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{what}: {}", e.message);
    }
    let bare = io::serialize(&[("x".to_string(), io::RawTensor::new(&[1.0], vec![1], false))], Default::default());
    let e = m.load(RSlice::from(&bare.unwrap()[..])).into_result().unwrap_err();
    assert!(e.message.contains(io::KEY_ARCH), "{}", e.message);
    assert_eq!(m.save(true).into_result().unwrap(), good, "a failed load changed the model");
}

/// The largest deviations that [`check_device_agreement`] saw, each relative as
/// |a − b| / (1 + |b|) (gradients: relative to the largest CPU component).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceDeviations {
    pub configs: f64,
    pub log_q: f64,
    /// log q of the CPU's proposals evaluated on the device (an inverse pass there).
    pub log_prob: f64,
    /// log q of the device's own proposals evaluated on the device: the round trip there.
    pub round_trip: f64,
    pub gradient: f64,
    pub loss: f64,
}

/// The same model on another device (`dev`, e.g. CUDA) or in another formulation (the generic
/// candle ops instead of the fused CPU kernels) against the reference (`cpu`), driven through
/// the `Model` trait as the host drives it. `dev` first takes `cpu`'s weights (save, load). Then,
/// from the same streams:
/// * `n` proposals: configurations and log q agree; configurations are compared modulo
///   `period` where given (angles, whose wrapping may differ by rounding);
/// * log q of the CPU's proposals evaluated on `dev` agrees with the CPU's values, and log q of
///   `dev`'s proposals evaluated on `dev` agrees with what its sampling reported;
/// * the parameter gradient of one training batch (batch 32, `action`) agrees, and so do the
///   losses of `steps` Adam steps (lr 1e-2) after it. Run those in f64 only: Adam divides each
///   gradient component by its own running size, so where a component is near zero, a
///   rounding-level difference in f32 becomes a step difference of order the learning rate,
///   and the trajectories part (seen: 5.6e-4 after three steps, against 1e-5 for the gradient).
///
/// Every deviation must stay below `tol` (relative, [`DeviceDeviations`]); returns them for the
/// log. Panics with the first one that does not.
pub fn check_device_agreement<M: Model>(
    cpu: &mut M,
    dev: &mut M,
    n: u32,
    period: Option<f64>,
    action: Action<'_>,
    steps: usize,
    tol: f64,
) -> DeviceDeviations {
    fn rel(a: &[f64], b: &[f64], period: Option<f64>) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| {
                let mut d = (x - y).abs();
                if let Some(p) = period {
                    d = d.rem_euclid(p).min(p - d.rem_euclid(p));
                }
                d / (1.0 + y.abs())
            })
            .fold(0.0, f64::max)
    }
    let mut out = DeviceDeviations::default();
    dev.load(RSlice::from(&cpu.save(false).into_result().unwrap()[..])).into_result().unwrap();
    let draw = |m: &M| m.sample(n, &mut Stream::new(31, 2).state()).into_result().unwrap();
    let (pc, pd) = (draw(cpu), draw(dev));
    out.configs = rel(&pd.configs, &pc.configs, period);
    out.log_q = rel(&pd.log_q, &pc.log_q, None);
    let lp = dev.log_prob(RSlice::from(&pc.configs[..])).into_result().unwrap();
    out.log_prob = rel(&lp, &pc.log_q, None);
    let own = dev.log_prob(RSlice::from(&pd.configs[..])).into_result().unwrap();
    out.round_trip = rel(&own, &pd.log_q, None);
    let grads: Vec<(Vec<f64>, f64)> = [&mut *cpu, &mut *dev]
        .into_iter()
        .map(|m| {
            m.train_begin(&settings(32, 1e-2)).into_result().unwrap();
            let p = m.train_sample(&mut Stream::new(32, 3).state()).into_result().unwrap();
            let (a, g) = action(&p.configs);
            let tg = m.train_gradient(RSlice::from(&a[..]), RSlice::from(&g[..])).into_result().unwrap();
            m.train_apply(RSlice::from(&tg.gradient[..]), tg.loss).into_result().unwrap();
            (tg.gradient.to_vec(), tg.loss)
        })
        .collect();
    let scale = grads[0].0.iter().fold(0.0f64, |m, g| m.max(g.abs())).max(1e-300);
    out.gradient = grads[0].0.iter().zip(&grads[1].0).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
    out.loss = rel(&[grads[1].1], &[grads[0].1], None);
    let mut rng_c = Stream::new(33, 3).state();
    let mut rng_d = rng_c;
    for _ in 0..steps {
        let mut loss = [0.0; 2];
        for (k, (m, rng)) in [(&mut *cpu, &mut rng_c), (&mut *dev, &mut rng_d)].into_iter().enumerate() {
            let p = m.train_sample(rng).into_result().unwrap();
            let (a, g) = action(&p.configs);
            loss[k] = m.train_step(RSlice::from(&a[..]), RSlice::from(&g[..])).into_result().unwrap().loss;
        }
        out.loss = out.loss.max(rel(&[loss[1]], &[loss[0]], None));
    }
    let named = [
        ("configurations", out.configs),
        ("log q", out.log_q),
        ("log q of the CPU's proposals", out.log_prob),
        ("log q round trip on the device", out.round_trip),
        ("gradient", out.gradient),
        ("loss", out.loss),
    ];
    for (what, d) in named {
        assert!(d <= tol, "{what}: the device deviates from the CPU by {d:.3e} (tolerance {tol:.1e}); all: {out:?}");
    }
    out
}
