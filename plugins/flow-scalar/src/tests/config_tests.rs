//! Configuration and layout validation: every error names the key and what was given.

use latflow_core::layout::FieldRole;

use super::*;
use crate::config::{Activation, Coupling, DTypeCfg, PriorKind, Z2};

fn err(json: &str, shape: &[usize]) -> String {
    testing::config_error(FlowScalar::from_json(json, &layout(shape)), &format!("{json} on {shape:?}"))
}

#[test]
fn defaults_are_the_peers_architecture() {
    let m = model("{}", &[8, 8]);
    let a = m.arch();
    assert_eq!((a.layers, a.hidden.clone(), a.kernel), (16, vec![8, 8], 3));
    assert_eq!(
        (a.activation, a.dtype, a.prior, a.coupling, a.z2),
        (Activation::LeakyRelu, DTypeCfg::F32, PriorKind::Normal, Coupling::Affine, Z2::None)
    );
    assert_eq!(a.scale_bound, "tanh");
    assert_eq!(a.lattice, vec![8, 8]);
    // construction is deterministic, and init_seed changes it
    assert_eq!(model("{}", &[8, 8]).save_bytes(false).unwrap(), m.save_bytes(false).unwrap());
    assert_ne!(model(r#"{"init_seed":1}"#, &[8, 8]).save_bytes(false).unwrap(), m.save_bytes(false).unwrap());
    // every key is accepted
    model(
        r#"{"layers":2,"hidden":[3],"kernel":3,"activation":"gelu","dtype":"f64","device":"cpu","prior":"free","prior_m2":1.5,"init_seed":7,"coupling":"affine","z2":"symmetrize"}"#,
        &[4, 4],
    );
    model(r#"{"prior":"gaussian"}"#, &[4, 4]);
}

#[test]
fn bad_keys_are_named() {
    let cases: &[(&str, &[usize], &[&str])] = &[
        (r#"{"layer":4}"#, &[4, 4], &["unknown field `layer`"]),
        (r#"{"layers":0}"#, &[4, 4], &["layers", "at least 1", "0"]),
        (r#"{"layers":-3}"#, &[4, 4], &["layers", "-3"]),
        (r#"{"layers":"many"}"#, &[4, 4], &["layers"]),
        (r#"{"hidden":[8,0]}"#, &[4, 4], &["hidden[1]", "0"]),
        (r#"{"kernel":4}"#, &[4, 4], &["kernel", "odd", "4"]),
        (r#"{"kernel":0}"#, &[4, 4], &["kernel", "0"]),
        (r#"{"kernel":5}"#, &[4, 4], &["kernel", "5", "smallest lattice extent 4"]),
        (r#"{"kernel":3}"#, &[2, 8], &["kernel", "extent 2"]),
        (r#"{"activation":"swish"}"#, &[4, 4], &["activation", "swish", "leaky_relu"]),
        (r#"{"dtype":"f16"}"#, &[4, 4], &["dtype", "f16"]),
        (r#"{"device":"tpu"}"#, &[4, 4], &["device", "tpu"]),
        (r#"{"prior":"free"}"#, &[4, 4], &["prior_m2", "missing"]),
        (r#"{"prior_m2":1.0}"#, &[4, 4], &["prior_m2", "free"]),
        (r#"{"prior":"free","prior_m2":-1.0}"#, &[4, 4], &["prior_m2", "-1"]),
        (r#"{"prior":"free","prior_m2":1.0}"#, &[128, 64], &["prior", "4096", "8192"]),
        (r#"{"spline_bins":4}"#, &[4, 4], &["spline_bins", "only used with coupling = \"spline\""]),
        (r#"{"spline_bound":3.0}"#, &[4, 4], &["spline_bound", "only used with coupling = \"spline\""]),
        (r#"{"coupling":"spline","spline_bins":1}"#, &[4, 4], &["spline_bins", "between 2 and 256", "1"]),
        (r#"{"coupling":"spline","spline_bins":300}"#, &[4, 4], &["spline_bins", "300"]),
        (r#"{"coupling":"spline","spline_bound":0.0}"#, &[4, 4], &["spline_bound", "> 0", "0"]),
        (r#"{"coupling":"spline","spline_bound":-2.0}"#, &[4, 4], &["spline_bound", "-2"]),
        (r#"{"coupling":"nice"}"#, &[4, 4], &["coupling", "nice"]),
        (r#"{"z2":"yes"}"#, &[4, 4], &["z2", "yes"]),
        (r#"{"init_seed":-1}"#, &[4, 4], &["init_seed"]),
        ("{}", &[5, 4], &["lattice", "odd", "5", "even"]),
        ("{}", &[4, 3], &["lattice", "3"]),
    ];
    for (json, shape, needles) in cases {
        let msg = err(json, shape);
        for n in *needles {
            assert!(msg.contains(n), "{json} on {shape:?}: '{msg}' lacks '{n}'");
        }
    }
}

#[test]
fn cuda_device_needs_the_feature() {
    if cfg!(feature = "cuda") {
        return;
    }
    let msg = err(r#"{"device":"cuda"}"#, &[4, 4]);
    assert!(msg.contains("device") && msg.contains("cuda") && msg.contains("feature"), "{msg}");
}

#[test]
fn non_scalar_layouts_are_refused() {
    let link = FieldLayout::single(&[4, 4], "theta", Support::Link, ElementKind::Angle);
    let e = FlowScalar::from_json("{}", &link).err().expect("link layout accepted");
    assert!(e.message.contains("Real per Site") && e.message.contains("'theta': Link Angle"), "{}", e.message);
    let su3 = FieldLayout::single(&[4, 4], "U", Support::Link, ElementKind::complex_matrix(3));
    assert!(FlowScalar::from_json("{}", &su3).is_err());
    let two = testing::with_component(&layout(&[4, 4]), "chi", Support::Site, ElementKind::Real, FieldRole::Dynamical);
    let e = FlowScalar::from_json("{}", &two).err().expect("two components accepted");
    assert!(e.message.contains("exactly one dynamical component") && e.message.contains("it has 2"), "{}", e.message);
    // auxiliary components are not part of configurations and are ignored
    let pf = ElementKind::complex_vector(2);
    let aux = testing::with_component(&layout(&[4, 4]), "pf", Support::Site, pf, FieldRole::Auxiliary);
    FlowScalar::from_json("{}", &aux).unwrap();
}
