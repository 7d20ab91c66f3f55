//! Configuration errors name the key and the mismatch.

use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_flow_common::testing::config_error;

use super::*;

fn err(json: &str, l: &FieldLayout) -> String {
    config_error(FlowSun::from_json(json, l), json)
}

#[test]
fn bad_keys_and_values_are_named() {
    let l = layout(&[8, 8], 3);
    for (json, needle) in [
        (r#"{"n":2}"#, "SU(2) but the theory's links are SU(3)"),
        (r#"{"mask_period":1}"#, "mask_period"),
        (r#"{"mask_period":3}"#, "multiple of mask_period = 3"),
        (r#"{"spline_bins":0}"#, "spline_bins"),
        (r#"{"layers":0}"#, "layers"),
        (r#"{"kernel":2}"#, "kernel"),
        (r#"{"coupling":"ncp"}"#, "ncp"),
        (r#"{"device":"cuda"}"#, "device"),
        (r#"{"bogus":1}"#, "bogus"),
    ] {
        let e = err(json, &l);
        assert!(e.contains(needle), "{json}: {e}");
    }
}

#[test]
fn other_layouts_are_refused() {
    let u1 = FieldLayout::single(&[8, 8], "links", Support::Link, ElementKind::Angle);
    assert!(err("{}", &u1).contains("flow-sun needs SU(N) links"));
    let su4 = FieldLayout::single(&[8, 8], "links", Support::Link, ElementKind::complex_matrix(4));
    assert!(err("{}", &su4).contains("SU(2) and SU(3)"));
    let d1 = FieldLayout::single(&[8], "links", Support::Link, ElementKind::complex_matrix(3));
    assert!(err("{}", &d1).contains("two or more dimensions"));
    // four dimensions are a flow-sun lattice, with the same extent rules; the default layers
    // there (32) give every plane active loops, a stated count is kept
    let m4 = model("{}", &[4, 4, 4, 4], 3);
    assert_eq!(m4.width(), 4 * 256 * 18);
    assert_eq!(m4.flow().arch.layers, 32);
    assert_eq!(model(r#"{"layers": 16}"#, &[4, 4, 4, 4], 3).flow().arch.layers, 16);
    assert_eq!(model("{}", &[8, 8], 3).flow().arch.layers, 16);
    assert_eq!(model("{}", &[4, 4, 4], 2).flow().arch.layers, 16);
    assert_eq!(crate::config::default_layers(5, 2), 20);
    assert!(err("{}", &layout(&[4, 4, 4, 6], 3)).contains("multiple of mask_period = 4"));
    assert!(err(r#"{"kernel":5}"#, &layout(&[4, 4, 4, 8], 2)).contains("kernel"));
    let sites = FieldLayout::single(&[8, 8], "phi", Support::Site, ElementKind::complex_matrix(3));
    assert!(err("{}", &sites).contains("per Link"));
}
