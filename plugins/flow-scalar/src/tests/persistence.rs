//! save / load / init_from.

use super::*;
use crate::io;

/// The φ⁴ action at (m², λ) = (−4, 8) on the model's lattice, for the shared checks.
pub(super) fn action(m: &FlowScalar) -> impl Fn(&[f64]) -> (Vec<f64>, Vec<f64>) {
    let lat = Lattice::new(&m.arch().lattice.iter().map(|&l| l as i64).collect::<Vec<_>>()).unwrap();
    move |c: &[f64]| phi4_host(&lat, c, -4.0, 8.0)
}

pub(super) fn train_steps(m: &mut FlowScalar, rng: &mut Stream, n: usize) -> Vec<u64> {
    let (act, mut state) = (action(m), rng.state());
    let out = testing::train_steps(m, &mut state, n, &act);
    *rng = Stream::from_state(&state);
    out
}

pub(super) fn sample_bits(m: &FlowScalar, seed: u64) -> (Vec<u64>, Vec<u64>) {
    testing::sample_bits(m, 50, seed)
}

#[test]
fn save_is_deterministic_and_carries_the_architecture() {
    let m = model(r#"{"layers":3}"#, &[4, 4]);
    let keys = ["layers", "hidden", "kernel", "activation", "dtype", "coupling", "prior", "z2", "lattice"];
    let f = testing::check_saved_weights(&m, crate::NAME, &keys);
    assert_eq!(f.tensors.len(), 3 * 3 * 2 * 3);
    assert!(f.tensors.contains_key("adam.m.layers.2.conv1.weight"));
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    for dtype in ["f32", "f64"] {
        let mut a = model(&format!(r#"{{"dtype":"{dtype}","layers":4,"init_seed":1}}"#), &[4, 4]);
        a.train_begin_with(&settings(16, 1e-2)).unwrap();
        train_steps(&mut a, &mut Stream::new(1, 1), 3);
        let bytes = a.save_bytes(false).unwrap();
        let mut b = model(&format!(r#"{{"dtype":"{dtype}","layers":4,"init_seed":2}}"#), &[4, 4]);
        assert_ne!(sample_bits(&a, 7), sample_bits(&b, 7));
        b.load_bytes(&bytes).unwrap();
        assert_eq!(sample_bits(&a, 7), sample_bits(&b, 7), "{dtype}");
        assert_eq!(b.optimizer_steps(), 0, "weights without optimiser state restart Adam");
    }
}

#[test]
fn resume_with_optimizer_state_is_bit_exact() {
    let mut a = model(r#"{"layers":4}"#, &[4, 4]);
    let mut b = model(r#"{"layers":4,"init_seed":9}"#, &[4, 4]);
    let act = action(&a);
    testing::check_resume_is_bit_exact(&mut a, &mut b, &act);
    assert_eq!(b.optimizer_steps(), 3 + 4);
    let (mut c, mut d) = (model(r#"{"layers":4}"#, &[4, 4]), model(r#"{"layers":4}"#, &[4, 4]));
    testing::check_gradient_then_apply_is_a_step(&mut c, &mut d, &act);
}

#[test]
fn damaged_or_foreign_files_are_refused_clearly() {
    let mut m = model(r#"{"layers":4}"#, &[4, 4]);
    testing::check_damaged_files_are_refused(&mut m);
    let before = m.save_bytes(true).unwrap();
    let other = model(r#"{"layers":8}"#, &[4, 4]).save_bytes(false).unwrap();
    let e = m.load_bytes(&other).unwrap_err();
    assert!(e.message.contains("weights are for layers=8, this model has layers=4"), "{}", e.message);
    let other = model(r#"{"layers":4}"#, &[8, 8]).save_bytes(false).unwrap();
    let e = m.load_bytes(&other).unwrap_err();
    assert!(e.message.contains("lattice=[8,8]"), "{}", e.message);
    let other = model(r#"{"layers":4,"dtype":"f64"}"#, &[4, 4]).save_bytes(false).unwrap();
    let e = m.load_bytes(&other).unwrap_err();
    assert!(e.message.contains("dtype=f64"), "{}", e.message);
    // a file without latflow metadata: init_from accepts by name and shape
    let bare =
        io::serialize(&[("x".to_string(), io::RawTensor::new(&[1.0], vec![1], false))], Default::default()).unwrap();
    let e = m.init_from_bytes(&bare).unwrap_err();
    assert!(e.message.contains("no tensor") && e.message.contains("layers.0.conv0.weight"), "{}", e.message);
    assert_eq!(m.save_bytes(true).unwrap(), before, "a failed load changed the model");
}

#[test]
fn init_from_transfers_weights_across_lattice_sizes() {
    let small = model(r#"{"layers":4,"init_seed":1}"#, &[4, 4]);
    randomize(&small, 2.0, 5);
    let bytes = small.save_bytes(false).unwrap();
    let mut big = model(r#"{"layers":4,"init_seed":2}"#, &[8, 8]);
    assert!(big.load_bytes(&bytes).is_err(), "load must refuse another lattice");
    assert_eq!(big.init_from_bytes(&bytes).unwrap(), small.parameter_names().len());
    for (a, b) in small.flow.net.vars.iter().zip(&big.flow.net.vars) {
        assert_eq!(tensor_to_f64(a.var.as_tensor()).unwrap(), tensor_to_f64(b.var.as_tensor()).unwrap(), "{}", a.name);
    }
    // a deeper model takes the layers that exist (by name and shape); an f64 file into f32 converts
    let mut deeper = model(r#"{"layers":6,"dtype":"f64"}"#, &[8, 8]);
    let from_f32 = deeper.init_from_bytes(&bytes).unwrap();
    assert_eq!(from_f32, 4 * 6);
    // other channel counts share no shapes
    let mut narrow = model(r#"{"layers":4,"hidden":[4]}"#, &[8, 8]);
    let e = narrow.init_from_bytes(&bytes).unwrap_err();
    assert!(e.message.contains("no tensor"), "{}", e.message);
    // transfer resets the optimiser
    let mut trained = model(r#"{"layers":4}"#, &[4, 4]);
    trained.train_begin_with(&settings(8, 1e-3)).unwrap();
    train_steps(&mut trained, &mut Stream::new(1, 1), 2);
    assert_eq!(trained.optimizer_steps(), 2);
    trained.init_from_bytes(&bytes).unwrap();
    assert_eq!(trained.optimizer_steps(), 0);
}

/// z2 symmetrisation has no weights of its own: weights trained without it load into a
/// symmetrised model (and back), while a real architecture difference is still refused.
#[test]
fn z2_is_a_sampling_option_for_weights() {
    let a = model(r#"{"dtype":"f64","layers":2,"init_seed":1}"#, &[4, 4]);
    let bytes = a.save_bytes(false).unwrap();
    let mut sym = model(r#"{"dtype":"f64","layers":2,"init_seed":2,"z2":"symmetrize"}"#, &[4, 4]);
    sym.load_bytes(&bytes).unwrap();
    let mut mixture = model(r#"{"dtype":"f64","layers":2,"init_seed":2,"z2":"mixture"}"#, &[4, 4]);
    mixture.load_bytes(&bytes).unwrap();
    // the mixture samples and evaluates log q as the symmetrised model does
    let x = super::normals(3 * 16, 4);
    assert_eq!(sym.log_prob_vec(&x).unwrap(), mixture.log_prob_vec(&x).unwrap());
    let mut other = model(r#"{"dtype":"f64","layers":3,"init_seed":2,"z2":"symmetrize"}"#, &[4, 4]);
    assert!(other.load_bytes(&bytes).is_err());
}
