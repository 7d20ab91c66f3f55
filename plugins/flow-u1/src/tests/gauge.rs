//! Gauge equivariance: flow(g·θ) = g·flow(θ) with the same log-determinant, for random gauge
//! transformations g, α(x) per site, and random (far from initial) weights.

use super::*;

fn check_equivariance(json: &str, amp: f64, shape: &[usize]) {
    let m = model(json, shape);
    randomize(&m, amp, 17);
    let geom = m.flow().geom.clone();
    let n = 6;
    let z = angles(n * m.n_links(), 1);
    for trial in 0..3 {
        let alpha = angles(geom.volume, 100 + trial);
        let (theta, ld) = m.push_forward(&z).unwrap();
        let (theta_g, ld_g) = m.push_forward(&gauge_transform(&geom, &z, &alpha)).unwrap();
        let d = max_circle_diff(&theta_g, &gauge_transform(&geom, &theta, &alpha));
        let dl = max_abs_diff(&ld, &ld_g);
        eprintln!("{json}: |flow(gθ) − g flow(θ)| ≤ {d:.1e}, |Δ log J| ≤ {dl:.1e}");
        assert!(d < ATOL, "{json}: flow(gθ) differs from g·flow(θ) by {d}");
        assert!(dl < ATOL, "{json}: log J changed by {dl} under a gauge transformation");
        assert!(ld.iter().all(|l| l.abs() > 1e-2), "log J too small to test");
        // the inverse and log q as well
        let lq = m.log_prob_vec(&theta).unwrap();
        let lq_g = m.log_prob_vec(&gauge_transform(&geom, &theta, &alpha)).unwrap();
        let dq = max_abs_diff(&lq, &lq_g);
        assert!(dq < ATOL, "{json}: log q is not gauge invariant: differs by {dq}");
    }
    // a transformation changes the links substantially, so the test is not vacuous
    let alpha = angles(geom.volume, 100);
    assert!(max_circle_diff(&z, &gauge_transform(&geom, &z, &alpha)) > 1.0);
}

#[test]
fn ncp_flow_is_gauge_equivariant() {
    check_equivariance(r#"{"dtype":"f64","coupling":"ncp"}"#, 1.5, &[8, 8]);
    check_equivariance(r#"{"dtype":"f64","coupling":"ncp","n_mix":4,"mask_period":3,"layers":6}"#, 1.5, &[6, 9]);
}

#[test]
fn spline_flow_is_gauge_equivariant() {
    check_equivariance(r#"{"dtype":"f64","coupling":"spline"}"#, 1.0, &[8, 8]);
    check_equivariance(r#"{"dtype":"f64","coupling":"spline","spline_bins":4,"layers":5}"#, 1.5, &[4, 8]);
}

/// Translations by multiples of the mask period along both axes map every mask to itself, so
/// they commute with the flow.
#[test]
fn flow_commutes_with_translations_by_the_mask_period() {
    let m = model(r#"{"dtype":"f64"}"#, &[8, 8]);
    randomize(&m, 1.5, 8);
    let z = angles(128, 1);
    let shift = |f: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; 128];
        for x in 0..64 {
            let (x0, x1) = (x / 8, x % 8);
            let y = ((x0 + 4) % 8) * 8 + (x1 + 4) % 8;
            out[2 * y] = f[2 * x];
            out[2 * y + 1] = f[2 * x + 1];
        }
        out
    };
    let (theta, ld) = m.push_forward(&z).unwrap();
    let (theta_s, ld_s) = m.push_forward(&shift(&z)).unwrap();
    assert!(max_circle_diff(&theta_s, &shift(&theta)) < ATOL);
    assert!((ld[0] - ld_s[0]).abs() < ATOL);
}
