//! save / load / init_from.

use latflow_flow_common::io;

use super::*;

pub(super) fn train_steps(m: &mut FlowU1, rng: &mut Stream, n: usize, beta: f64) -> Vec<u64> {
    let geom = m.flow().geom.clone();
    let mut state = rng.state();
    let out = testing::train_steps(m, &mut state, n, &|c: &[f64]| wilson_host(&geom, c, beta));
    *rng = Stream::from_state(&state);
    out
}

pub(super) fn sample_bits(m: &FlowU1, seed: u64) -> (Vec<u64>, Vec<u64>) {
    testing::sample_bits(m, 20, seed)
}

fn log_prob_bits(m: &FlowU1, configs: &[f64]) -> Vec<u64> {
    m.log_prob_vec(configs).unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn save_is_deterministic_and_carries_the_architecture() {
    let m = model(r#"{"layers":3}"#, &[4, 4]);
    let keys = ["layers", "hidden", "kernel", "activation", "coupling", "n_mix", "mask_period", "dtype", "lattice"];
    let f = testing::check_saved_weights(&m, "flow-u1", &keys);
    assert_eq!(f.tensors.len(), 3 * 3 * 2 * 3);
    assert!(f.tensors.contains_key("adam.v.layers.2.conv2.bias"));
    let arch: serde_json::Value = serde_json::from_str(&m.arch().to_json()).unwrap();
    assert!(arch.get("spline_bins").is_none());
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
    let mut a = model(r#"{"layers":4}"#, &[4, 4]);
    let mut b = model(r#"{"layers":4,"init_seed":9}"#, &[4, 4]);
    let geom = a.flow().geom.clone();
    testing::check_resume_is_bit_exact(&mut a, &mut b, &|c: &[f64]| wilson_host(&geom, c, 2.0));
    assert_eq!(b.optimizer_steps(), 3 + 4);
    let (mut c, mut d) = (model(r#"{"layers":4}"#, &[4, 4]), model(r#"{"layers":4}"#, &[4, 4]));
    testing::check_gradient_then_apply_is_a_step(&mut c, &mut d, &|x: &[f64]| wilson_host(&geom, x, 2.0));
}

#[test]
fn damaged_or_foreign_files_are_refused_clearly() {
    let mut m = model(r#"{"layers":4}"#, &[4, 4]);
    testing::check_damaged_files_are_refused(&mut m);
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
    let e = m.init_from_bytes(&bare).unwrap_err();
    assert!(e.message.starts_with("init_from:") && e.message.contains("latflow.architecture"), "{}", e.message);
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
