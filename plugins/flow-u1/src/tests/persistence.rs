//! save / load / init_from.

use latflow_core::ErrorKind;
use latflow_flow_common::io;

use super::*;

pub(super) fn train_steps(m: &mut FlowU1, rng: &mut Stream, n: usize, beta: f64) -> Vec<u64> {
    let geom = m.flow().geom.clone();
    let mut out = Vec::new();
    for _ in 0..n {
        let (c, _) = m.train_sample_with(rng).unwrap();
        let (a, g) = wilson_host(&geom, &c, beta);
        let met = m.train_step_with(&a, &g).unwrap();
        out.extend([met.loss.to_bits(), met.grad_norm.to_bits(), met.learning_rate.to_bits()]);
    }
    out
}

pub(super) fn sample_bits(m: &FlowU1, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let mut rng = Stream::new(seed, 4);
    let (c, l) = m.sample_with(20, &mut rng).unwrap();
    (c.iter().map(|x| x.to_bits()).collect(), l.iter().map(|x| x.to_bits()).collect())
}

fn log_prob_bits(m: &FlowU1, configs: &[f64]) -> Vec<u64> {
    m.log_prob_vec(configs).unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn save_is_deterministic_and_carries_the_architecture() {
    let m = model(r#"{"layers":3}"#, &[4, 4]);
    let a = m.save_bytes(true).unwrap();
    assert_eq!(a, m.save_bytes(true).unwrap());
    let f = io::parse(&a).unwrap();
    assert_eq!(f.metadata[io::KEY_FORMAT], "1");
    assert_eq!(f.metadata[io::KEY_PLUGIN], "flow-u1");
    assert_eq!(f.metadata[io::KEY_ARCH], m.arch().to_json());
    assert_eq!(f.metadata[io::KEY_STEP], "0");
    assert_eq!(f.tensors.len(), 3 * 3 * 2 * 3);
    assert!(f.tensors.contains_key("adam.v.layers.2.conv2.bias"));
    let arch: serde_json::Value = serde_json::from_str(&m.arch().to_json()).unwrap();
    for key in ["layers", "hidden", "kernel", "activation", "coupling", "n_mix", "mask_period", "dtype", "lattice"] {
        assert!(arch.get(key).is_some(), "architecture lacks {key}: {arch}");
    }
    assert!(arch.get("spline_bins").is_none());
    let plain = io::parse(&m.save_bytes(false).unwrap()).unwrap();
    assert_eq!(plain.tensors.len(), 3 * 3 * 2);
    assert!(!plain.metadata.contains_key(io::KEY_STEP));
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    for (dtype, coupling) in [("f32", "ncp"), ("f64", "ncp"), ("f32", "spline")] {
        let json =
            |seed: u64| format!(r#"{{"dtype":"{dtype}","coupling":"{coupling}","layers":4,"init_seed":{seed}}}"#);
        let mut a = model(&json(1), &[4, 4]);
        a.train_begin_with(&settings(16, 1e-2)).unwrap();
        train_steps(&mut a, &mut Stream::new(1, 1), 3, 2.0);
        let bytes = a.save_bytes(false).unwrap();
        let mut b = model(&json(2), &[4, 4]);
        let probe = angles(10 * 32, 77);
        assert_ne!(log_prob_bits(&a, &probe), log_prob_bits(&b, &probe));
        b.load_bytes(&bytes).unwrap();
        assert_eq!(log_prob_bits(&a, &probe), log_prob_bits(&b, &probe), "{dtype} {coupling}: log_prob");
        assert_eq!(sample_bits(&a, 7), sample_bits(&b, 7), "{dtype} {coupling}: samples");
        assert_eq!(b.optimizer_steps(), 0, "weights without optimiser state restart Adam");
        assert_eq!(b.save_bytes(false).unwrap(), bytes);
    }
}

#[test]
fn resume_with_optimizer_state_is_bit_exact() {
    let json = r#"{"layers":4}"#;
    let mut a = model(json, &[4, 4]);
    let mut s = settings(16, 1e-2);
    s.schedule = LrSchedule::Cosine { steps: 10, min_lr: 1e-3, warmup: 2 };
    s.weight_decay = 0.01;
    s.grad_clip = 5.0;
    a.train_begin_with(&s).unwrap();
    let mut rng = Stream::new(3, 3);
    train_steps(&mut a, &mut rng, 3, 2.0);
    let ckpt = a.save_bytes(true).unwrap();
    let rng_at_ckpt = rng.state();
    let uninterrupted = train_steps(&mut a, &mut rng, 4, 2.0);
    let final_a = a.save_bytes(true).unwrap();

    let mut b = model(r#"{"layers":4,"init_seed":9}"#, &[4, 4]);
    b.load_bytes(&ckpt).unwrap();
    assert_eq!(b.optimizer_steps(), 3);
    b.train_begin_with(&s).unwrap();
    let resumed = train_steps(&mut b, &mut Stream::from_state(&rng_at_ckpt), 4, 2.0);
    assert_eq!(uninterrupted, resumed, "metrics differ after resume");
    assert_eq!(final_a, b.save_bytes(true).unwrap(), "weights or optimiser state differ after resume");
}

#[test]
fn damaged_or_foreign_files_are_refused_clearly() {
    let mut m = model(r#"{"layers":4}"#, &[4, 4]);
    let good = m.save_bytes(true).unwrap();
    let before = m.save_bytes(true).unwrap();
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("short", good[..5].to_vec()),
        ("truncated header", good[..40].to_vec()),
        ("truncated data", good[..good.len() - 3].to_vec()),
        ("garbage", b"this is not a safetensors file at all, just some text".to_vec()),
        ("huge header length", huge),
    ] {
        let e = m.load_bytes(&bytes).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{what}: {}", e.message);
        assert!(e.message.contains("safetensors"), "{what}: {}", e.message);
        let e = m.init_from_bytes(&bytes).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{what}: {}", e.message);
    }
    for (json, shape, needle) in [
        (r#"{"layers":8}"#, [4, 4], "weights are for layers=8, this model has layers=4"),
        (r#"{"layers":4}"#, [8, 8], "weights are for lattice=[8,8], this model has lattice=[4,4]"),
        (r#"{"layers":4,"dtype":"f64"}"#, [4, 4], "dtype=f64"),
        (r#"{"layers":4,"coupling":"spline"}"#, [4, 4], "weights are for coupling=spline, this model has coupling=ncp"),
        (r#"{"layers":4,"n_mix":3}"#, [4, 4], "weights are for n_mix=3, this model has n_mix=2"),
        (r#"{"layers":4,"hidden":[4]}"#, [4, 4], "hidden=[4]"),
    ] {
        let other = model(json, &shape).save_bytes(false).unwrap();
        let e = m.load_bytes(&other).unwrap_err();
        assert!(e.message.contains(needle), "{json}: {}", e.message);
    }
    // a file without latflow metadata
    let bare =
        io::serialize(&[("x".to_string(), io::RawTensor::new(&[1.0], vec![1], false))], Default::default()).unwrap();
    let e = m.load_bytes(&bare).unwrap_err();
    assert!(e.message.contains("latflow.architecture"), "{}", e.message);
    let e = m.init_from_bytes(&bare).unwrap_err();
    assert!(e.message.starts_with("init_from:") && e.message.contains("latflow.architecture"), "{}", e.message);
    assert_eq!(m.save_bytes(true).unwrap(), before, "a failed load changed the model");
}

/// Weights trained on one lattice (and β) start training on another: the architecture is
/// compared without the lattice (and dtype), and every tensor is copied.
#[test]
fn init_from_transfers_weights_across_lattice_sizes_and_dtypes() {
    let mut small = model(r#"{"layers":4,"init_seed":1}"#, &[4, 4]);
    small.train_begin_with(&settings(8, 1e-2)).unwrap();
    train_steps(&mut small, &mut Stream::new(1, 1), 2, 1.0);
    let bytes = small.save_bytes(true).unwrap();
    let mut big = model(r#"{"layers":4,"init_seed":2}"#, &[8, 12]);
    assert!(big.load_bytes(&bytes).is_err(), "load must refuse another lattice");
    assert_eq!(big.init_from_bytes(&bytes).unwrap(), small.parameter_names().len());
    assert_eq!(big.optimizer_steps(), 0, "transfer resets the optimiser");
    for (a, b) in small.flow().net.vars.iter().zip(&big.flow().net.vars) {
        assert_eq!(tensor_to_f64(a.var.as_tensor()).unwrap(), tensor_to_f64(b.var.as_tensor()).unwrap(), "{}", a.name);
    }
    // and the transferred model trains at another β
    big.train_begin_with(&settings(8, 1e-3)).unwrap();
    train_steps(&mut big, &mut Stream::new(2, 2), 1, 3.0);
    // f32 weights into an f64 model convert exactly
    let mut wide = model(r#"{"layers":4,"dtype":"f64"}"#, &[8, 8]);
    wide.init_from_bytes(&bytes).unwrap();
    assert_eq!(
        tensor_to_f64(wide.flow().net.vars[3].var.as_tensor()).unwrap(),
        tensor_to_f64(small.flow().net.vars[3].var.as_tensor()).unwrap()
    );
    // anything else must match
    for (json, needle) in [
        (r#"{"layers":6}"#, "init_from: weights are for layers=4, this model has layers=6"),
        (r#"{"layers":4,"hidden":[4]}"#, "init_from: weights are for hidden=[8,8], this model has hidden=[4]"),
        (r#"{"layers":4,"mask_period":8}"#, "mask_period=4"),
    ] {
        let mut other = model(json, &[8, 8]);
        let e = other.init_from_bytes(&bytes).unwrap_err();
        assert!(e.message.contains(needle), "{json}: {}", e.message);
    }
}
