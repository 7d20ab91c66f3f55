//! The `[model]` keys, the layout check and the lattice checks.

use latflow_core::layout::FieldRole;

use super::*;
use crate::config::{Activation, Coupling, DTypeCfg};

fn err(json: &str, l: &FieldLayout) -> String {
    testing::config_error(FlowU1::from_json(json, l), json)
}

#[test]
fn defaults_are_the_peers_architecture() {
    let m = model("{}", &[8, 8]);
    let a = m.arch();
    assert_eq!((a.layers, a.hidden.clone(), a.kernel), (16, vec![8, 8], 3));
    assert_eq!((a.coupling, a.n_mix, a.spline_bins, a.mask_period), (Coupling::Ncp, Some(2), None, 4));
    assert_eq!((a.activation, a.dtype), (Activation::LeakyRelu, DTypeCfg::F32));
    assert_eq!(a.lattice, vec![8, 8]);
    assert_eq!(m.n_links(), 128);
    assert!((m.log_q_prior() + 128.0 * (2.0 * PI).ln()).abs() < 1e-12);
    let s = model(r#"{"coupling":"spline"}"#, &[8, 8]);
    assert_eq!((s.arch().spline_bins, s.arch().n_mix), (Some(8), None));
    assert_eq!(s.parameter_count(), 16 * (152 + 584 + 9 * 8 * 25 + 25));
}

#[test]
fn bad_keys_and_values_are_named() {
    let l = layout(&[8, 8]);
    for (json, needle) in [
        (r#"{"layerz":3}"#, "layerz"),
        (r#"{"beta":2.0}"#, "beta"),
        (r#"{"layers":0}"#, "layers: must be at least 1, got 0"),
        (r#"{"hidden":[8,0]}"#, "hidden[1]"),
        (r#"{"kernel":2}"#, "kernel: must be odd"),
        (r#"{"kernel":9}"#, "kernel: 9 exceeds the smallest lattice extent 8"),
        (r#"{"coupling":"affine"}"#, "coupling"),
        (r#"{"activation":"swish"}"#, "activation"),
        (r#"{"n_mix":0}"#, "n_mix: must be between 1 and 32, got 0"),
        (r#"{"n_mix":2,"coupling":"spline"}"#, "n_mix: only used with coupling = \"ncp\""),
        (r#"{"spline_bins":4}"#, "spline_bins: only used with coupling = \"spline\""),
        (r#"{"coupling":"spline","spline_bins":1}"#, "spline_bins: must be between 2 and 256, got 1"),
        (r#"{"mask_period":1}"#, "mask_period: must be at least 2"),
        (r#"{"dtype":"f16"}"#, "dtype"),
        (r#"{"device":"tpu"}"#, "device"),
    ] {
        let m = err(json, &l);
        assert!(m.contains(needle), "{json}: {m}");
    }
}

#[test]
fn non_u1_layouts_are_refused() {
    let phi4 = FieldLayout::single(&[8, 8], "phi", Support::Site, ElementKind::Real);
    let m = err("{}", &phi4);
    assert!(m.starts_with("flow-u1 needs U(1) link angles"), "{m}");
    assert!(m.contains("the theory's layout has 1 dynamical component ('phi': Real per Site)"), "{m}");
    let su2 = FieldLayout::single(&[8, 8], "U", Support::Link, ElementKind::complex_matrix(2));
    assert!(err("{}", &su2).contains("'U': ComplexMatrix { n: 2 } per Link"));
    let two = testing::with_component(&layout(&[8, 8]), "phi", Support::Site, ElementKind::Real, FieldRole::Dynamical);
    assert!(err("{}", &two).contains("2 dynamical components"));
    // auxiliary components are fine
    let pf = ElementKind::complex_vector(2);
    let aux = testing::with_component(&layout(&[8, 8]), "pf", Support::Site, pf, FieldRole::Auxiliary);
    FlowU1::from_json("{}", &aux).unwrap();
    let m = err("{}", &layout(&[4, 4, 4]));
    assert!(m.contains("flow-u1 needs a 2D lattice") && m.contains("[4, 4, 4]"), "{m}");
}

#[test]
fn lattices_that_do_not_fit_the_masks_are_refused() {
    for (shape, json, needle) in [
        (vec![6, 8], "{}", "each extent must be a multiple of mask_period = 4 and at least 4 (the stripe masks repeat with period 4); the lattice is [6, 8]"),
        (vec![2, 2], "{}", "the lattice is [2, 2]"),
        (vec![8, 8], r#"{"mask_period":3}"#, "multiple of mask_period = 3"),
        (vec![4, 4], r#"{"mask_period":8}"#, "at least 8"),
    ] {
        let m = err(json, &layout(&shape));
        assert!(m.contains(needle), "{shape:?} {json}: {m}");
    }
    // the smallest lattice the default masks allow
    model(r#"{"layers":2}"#, &[4, 4]);
    model(r#"{"layers":2,"mask_period":3,"kernel":3}"#, &[3, 6]);
}

#[test]
fn cuda_device_needs_the_feature() {
    if cfg!(feature = "cuda") {
        return;
    }
    let m = err(r#"{"device":"cuda"}"#, &layout(&[8, 8]));
    assert!(m.contains("--features cuda"), "{m}");
}
