//! The latent maps of flow-assisted replica swaps (`to_latent`, `from_latent`): the latent space
//! is the Haar prior (uniform angles in [0, 2π)), F(F⁻¹(θ)) = θ mod 2π, log q agrees with
//! `log_prob` and `sample`, the latent point of a sample is its prior draw, and the maps are
//! gauge covariant. f64, random (far from initial) weights, both couplings.

use abi_stable::std_types::RSlice;
use latflow_core::ErrorKind;

use super::*;

const CASES: [(&str, f64); 2] = [
    (r#"{"dtype":"f64","layers":8,"coupling":"ncp"}"#, 1.5),
    (r#"{"dtype":"f64","layers":6,"coupling":"spline"}"#, 1.0),
];

/// Round trips both ways, for arbitrary configurations (any representatives) and across chunks;
/// log q from both maps equals `log_prob`'s value.
#[test]
fn latent_round_trip_and_log_q() {
    for (json, amp) in CASES {
        let m = model(json, &[4, 8]);
        randomize(&m, amp, 21);
        let w = m.n_links();
        let n = crate::CHUNK + 9;
        // other representatives than [0, 2π)
        let theta: Vec<f64> =
            angles(n * w, 4).iter().enumerate().map(|(i, x)| x + 2.0 * PI * ((i % 5) as f64 - 2.0)).collect();
        let (z, lq_inv) = m.to_latent_with(&theta).unwrap();
        assert_eq!((z.len(), lq_inv.len()), (n * w, n));
        assert!(z.iter().all(|&t| (0.0..2.0 * PI).contains(&t)), "{json}: latent angles wrapped into [0, 2π)");
        let lp = m.log_prob_vec(&theta).unwrap();
        let d = max_abs_diff(&lq_inv, &lp);
        assert!(d < ATOL, "{json}: to_latent's log q differs from log_prob by {d}");
        let (back, lq_fwd) = m.from_latent_with(&z).unwrap();
        let d = max_circle_diff(&back, &theta);
        eprintln!("{json}: |F(F⁻¹(θ)) − θ| ≤ {d:.1e}, |Δ log q| ≤ {:.1e}", max_abs_diff(&lq_fwd, &lp));
        assert!(d < ATOL, "{json}: F(F⁻¹(θ)) differs from θ (mod 2π) by {d}");
        assert!(back.iter().all(|&t| (0.0..2.0 * PI).contains(&t)));
        let d = max_abs_diff(&lq_fwd, &lp);
        assert!(d < ATOL, "{json}: from_latent's log q differs from log_prob by {d}");
        // the other way: F⁻¹(F(z)) = z for arbitrary latent points
        let z2 = angles(n * w, 5);
        let (x2, lq2) = m.from_latent_with(&z2).unwrap();
        let (z2_back, lq2_back) = m.to_latent_with(&x2).unwrap();
        assert!(max_circle_diff(&z2_back, &z2) < ATOL, "{json}: F⁻¹(F(z)) ≠ z");
        assert!(max_abs_diff(&lq2_back, &lq2) < ATOL);
        // the flow is far from the identity, so the checks are not vacuous
        let moved = max_circle_diff(&z, &theta);
        let mean_log_j = lp.iter().map(|l| (l - m.log_q_prior()).abs()).sum::<f64>() / n as f64;
        assert!(
            moved > 0.5 && mean_log_j > 0.1,
            "{json}: the flow is too close to the identity: {moved}, {mean_log_j}"
        );
    }
}

/// from_latent is `sample` given its prior draw, bit for bit, and the latent point of a sample is
/// that draw: the latent space is the Haar prior of `sample`.
#[test]
fn latent_of_a_sample_is_its_prior_draw() {
    for (json, amp) in CASES {
        let m = model(json, &[4, 4]);
        randomize(&m, amp, 22);
        let n = 20;
        let (x, lq) = m.sample_with(n, &mut Stream::new(3, 9)).unwrap();
        let mut s = Stream::new(3, 9);
        let z: Vec<f64> = (0..n * m.n_links()).map(|_| 2.0 * PI * s.uniform()).collect();
        let (x2, lq2) = m.from_latent_with(&z).unwrap();
        assert_eq!(x, x2, "{json}: from_latent(prior draw) = sample");
        assert_eq!(lq, lq2);
        let (z_back, lq_back) = m.to_latent_with(&x).unwrap();
        assert!(max_circle_diff(&z_back, &z) < ATOL, "{json}: latent of a sample");
        assert!(max_abs_diff(&lq_back, &lq) < ATOL);
        assert_eq!(lq_back, m.log_prob_vec(&x).unwrap(), "{json}: to_latent's log q is log_prob's, bit for bit");
    }
}

/// Every layer is gauge equivariant, so the inverse is too: F⁻¹(g·θ) = g·F⁻¹(θ) (mod 2π), and
/// log q(g·θ) = log q(θ); likewise F(g·z) = g·F(z) through `from_latent`.
#[test]
fn latent_maps_are_gauge_covariant() {
    for (json, amp) in CASES {
        let m = model(json, &[8, 8]);
        randomize(&m, amp, 23);
        let geom = m.flow().geom.clone();
        let n = 4;
        let theta = angles(n * m.n_links(), 6);
        let (z, lq) = m.to_latent_with(&theta).unwrap();
        for trial in 0..3 {
            let alpha = angles(geom.volume, 200 + trial);
            let (z_g, lq_g) = m.to_latent_with(&gauge_transform(&geom, &theta, &alpha)).unwrap();
            let d = max_circle_diff(&z_g, &gauge_transform(&geom, &z, &alpha));
            eprintln!("{json}: |F⁻¹(gθ) − g F⁻¹(θ)| ≤ {d:.1e}");
            assert!(d < ATOL, "{json}: to_latent(gθ) differs from g·to_latent(θ) by {d}");
            assert!(max_abs_diff(&lq_g, &lq) < ATOL, "{json}: log q is not gauge invariant");
            let (x, lx) = m.from_latent_with(&z).unwrap();
            let (x_g, lx_g) = m.from_latent_with(&gauge_transform(&geom, &z, &alpha)).unwrap();
            assert!(max_circle_diff(&x_g, &gauge_transform(&geom, &x, &alpha)) < ATOL, "{json}: from_latent");
            assert!(max_abs_diff(&lx_g, &lx) < ATOL);
            // the transformation moves the latent point substantially
            assert!(max_circle_diff(&z_g, &z) > 1.0);
        }
    }
}

/// The ABI entry points: shapes, f32 round trip, and refusals.
#[test]
fn latent_maps_cross_the_abi() {
    let m = model(r#"{"layers":4}"#, &[4, 4]).into_box();
    let theta = angles(3 * 32, 8);
    let p = m.to_latent(RSlice::from_slice(&theta)).into_result().unwrap();
    assert_eq!((p.configs.len(), p.log_q.len()), (96, 3));
    let lp = m.log_prob(RSlice::from_slice(&theta)).into_result().unwrap();
    assert_eq!(p.log_q.as_slice(), lp.as_slice(), "to_latent's log q is log_prob's (f32)");
    let q = m.from_latent(RSlice::from_slice(&p.configs)).into_result().unwrap();
    assert!(max_circle_diff(&q.configs, &theta) < 1e-4, "f32 round trip: {}", max_circle_diff(&q.configs, &theta));
    assert!(max_abs_diff(&q.log_q, &lp) < 1e-3);
    assert_eq!(m.to_latent(RSlice::from_slice(&theta[..5])).into_result().unwrap_err().kind, ErrorKind::Shape);
    assert_eq!(m.from_latent(RSlice::from_slice(&theta[..33])).into_result().unwrap_err().kind, ErrorKind::Shape);
    let mut bad = theta.clone();
    bad[7] = f64::NAN;
    assert_eq!(m.to_latent(RSlice::from_slice(&bad)).into_result().unwrap_err().kind, ErrorKind::Numerical);
    let e = m.from_latent(RSlice::from_slice(&bad)).into_result().unwrap_err();
    assert!(e.kind == ErrorKind::Numerical && e.message.contains("latent point[7]"), "{}", e.message);
}
