//! Tests of `determinant = "exact"`: the dense determinant against the free-field formula, its
//! gradient against finite differences, gauge invariance, the limits of the card, and HMC on
//! the exact action against the exact 2×2 Schwinger-model values.

use super::*;
use latflow_core::abi::HmcParams;
use latflow_core::gauge::U1Angle;
use latflow_core::testkit;

fn theory(json: &str) -> Qcd {
    Qcd::from_config(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn exact(group: &str, lattice: &str, beta: f64, kappa: f64) -> String {
    format!(
        r#"{{"group": "{group}", "lattice": {lattice}, "beta": {beta}, "kappa": {kappa}, "determinant": "exact"}}"#
    )
}

/// ln |det D| of the cold (U = 1) U(1) field.
fn free_log_det(lattice: &[i64], kappa: f64, mu: f64) -> f64 {
    let lat = Lattice::new(lattice).unwrap();
    let d = WilsonDirac::<U1Angle, 2>::new(&lat, WilsonParams::twisted(kappa, mu)).unwrap();
    let det = exact_det::ExactDet::new(d).unwrap();
    let cold = vec![U1Angle(0.0); lat.volume() * 2];
    det.log_abs_det(&cold).unwrap()
}

/// Σ_p ln[(1 − 2κ Σ cos p)² + 4κ² Σ sin² p + a²] with antiperiodic time momenta.
fn free_formula(l: usize, t: usize, kappa: f64, a: f64) -> f64 {
    let mut sum = 0.0;
    for nx in 0..l {
        for nt in 0..t {
            let px = std::f64::consts::TAU * nx as f64 / l as f64;
            let pt = std::f64::consts::TAU * (nt as f64 + 0.5) / t as f64;
            let m = 1.0 - 2.0 * kappa * (px.cos() + pt.cos());
            let s2 = px.sin().powi(2) + pt.sin().powi(2);
            sum += (m * m + 4.0 * kappa * kappa * s2 + a * a).ln();
        }
    }
    sum
}

#[test]
fn the_free_field_log_det_matches_the_reference_table() {
    for (shape, kappa, reference) in [
        ([4, 4], 0.25, 1.3478411184),
        ([8, 8], 0.25, 4.5113399914),
        ([16, 16], 0.276, 33.1493803706),
    ] {
        let got = free_log_det(&shape, kappa, 0.0);
        assert!(
            (got - reference).abs() < 1e-9,
            "{shape:?}, kappa {kappa}: {got} vs {reference}"
        );
    }
    // with twisted mass: ln det(D†D) = Σ_p 2 ln(|D_0(p)|² + (2κμ)²), on a non-square lattice
    let (kappa, mu) = (0.22, 0.3);
    let got = 2.0 * free_log_det(&[4, 6], kappa, mu);
    let want = 2.0 * free_formula(4, 6, kappa, 2.0 * kappa * mu);
    assert!((got - want).abs() < 1e-9, "twisted: {got} vs {want}");
}

#[test]
fn the_dense_inverse_inverts() {
    let t = theory(&exact("su2", "[2, 4]", 2.0, 0.2));
    let u = t.initial(Start::Hot, &mut Stream::new(3, 0));
    let det = t.exact_det::<latflow_core::gauge::Su2, 2>().unwrap();
    let a = det.matrix(terms::links(&u)).unwrap();
    let n = det.dim();
    let inv = exact_det::DenseLu::new(a.clone(), n).unwrap().inverse();
    for i in 0..n {
        for j in 0..n {
            let z: Complex = (0..n).fold(Complex::ZERO, |s, k| s + a[i * n + k] * inv[k * n + j]);
            let want = if i == j { 1.0 } else { 0.0 };
            assert!(
                (z.re - want).abs() < 1e-12 && z.im.abs() < 1e-12,
                "({i}, {j}): {z:?}"
            );
        }
    }
}

#[test]
fn the_u1_gradient_and_force_match_finite_differences() {
    for card in [
        exact("u1", "[4, 4]", 1.5, 0.24),
        exact("u1", "[2, 2]", 1.0, 0.25),
        r#"{"group": "u1", "lattice": [3, 4], "beta": 2.0, "kappa": 0.27, "mu": 0.1, "determinant": "exact"}"#.into(),
    ] {
        // the HMC force of the levels
        testkit::check_force::<Qcd>(&card, &HmcParams::default());
        // action_grad in the angles
        let t = theory(&card);
        let u = t.initial(Start::Hot, &mut Stream::new(9, 0));
        let mut grad = vec![0.0; u.len()];
        let s = t.action_grad(&u, &mut grad);
        assert_eq!(s.to_bits(), t.action(&u).to_bits());
        for (i, &g) in grad.iter().enumerate() {
            let fd = central_difference(&t, &u, i);
            assert!((fd - g).abs() < 1e-7 * g.abs().max(1.0), "{card}, angle {i}: {g} vs {fd}");
        }
    }
}

/// dS/dc_i by a 4-point central difference in flat coordinate i.
fn central_difference(t: &Qcd, u: &[f64], i: usize) -> f64 {
    let h = 1e-4;
    let at = |e: f64| {
        let mut v = u.to_vec();
        v[i] += e;
        t.action(&v)
    };
    (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h)
}

#[test]
fn the_sun_ambient_gradient_matches_finite_differences() {
    for card in [
        exact("su2", "[2, 4]", 2.0, 0.2),
        r#"{"group": "su3", "lattice": [2, 2], "beta": 3.0, "kappa": 0.22, "mu": 0.05, "determinant": "exact"}"#.into(),
        exact("su2", "[2, 2, 2, 2]", 2.2, 0.12),
    ] {
        let t = theory(&card);
        let u = t.initial(Start::Hot, &mut Stream::new(10, 0));
        let mut grad = vec![0.0; u.len()];
        t.action_grad(&u, &mut grad);
        // every coordinate of the first few links (not only along the group)
        for (i, &g) in grad.iter().enumerate().take(3 * 18) {
            let fd = central_difference(&t, &u, i);
            assert!((fd - g).abs() < 1e-7 * g.abs().max(1.0), "{card}, coordinate {i}: {g} vs {fd}");
        }
    }
}

#[test]
fn the_sun_hmc_force_matches_finite_differences() {
    super::tests::check_group_force(&exact("su3", "[2, 2]", 3.0, 0.2));
    super::tests::check_group_force(&exact("su2", "[2, 2, 2, 2]", 2.2, 0.12));
}

#[test]
fn the_exact_action_is_gauge_invariant_and_exact() {
    let u1 = r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.24, "determinant": "exact",
        "condensate": {"exact": true}}"#;
    let su3 = r#"{"group": "su3", "lattice": [2, 4], "beta": 3.0, "kappa": 0.2, "determinant": "exact",
        "condensate": {"exact": true}}"#;
    for card in [u1, su3] {
        testkit::check_gauge_invariance::<Qcd>(card);
        assert!(theory(card).action_is_exact());
    }
    assert!(
        !theory(&exact("u1", "[4, 4]", 1.5, 0.24).replace("exact", "pseudofermion"))
            .action_is_exact()
    );
    let t = theory(su3);
    let a = t.action_levels(&HmcParams::default()).unwrap();
    assert_eq!(
        format!("{a:?}"),
        r#"LeveledAction[["exact_det"], ["gauge"]]"#
    );
}

#[test]
fn the_exact_determinant_refuses_what_it_does_not_do() {
    let cases = [
        (
            r#"{"group": "su3", "lattice": [2, 2, 2, 2], "beta": 5.5, "kappa": 0.12, "csw": 1.0, "determinant": "exact"}"#,
            "clover",
        ),
        (
            r#"{"group": "u1", "lattice": [4, 4], "beta": 1.0, "kappa": 0.2, "hasenbusch": [0.1], "determinant": "exact"}"#,
            "hasenbusch",
        ),
        (
            r#"{"group": "u1", "lattice": [4, 4], "beta": 1.0, "kappa": 0.2, "determinant": "dense"}"#,
            "unknown value 'dense'",
        ),
        (
            r#"{"group": "su3", "lattice": [4, 4, 4, 4], "beta": 5.5, "kappa": 0.12, "determinant": "exact"}"#,
            "3072",
        ),
    ];
    for (card, needle) in cases {
        let e = Qcd::from_config(card)
            .err()
            .unwrap_or_else(|| panic!("{card} was accepted"));
        let msg = e.to_string();
        assert!(
            msg.contains("determinant") && msg.contains(needle),
            "{card}: {msg}"
        );
    }
    // 32×32 U(1) is exactly at the limit (2048)
    assert!(Qcd::from_config(&exact("u1", "[32, 32]", 1.0, 0.2)).is_ok());
    let mut t = theory(&exact("su3", "[2, 2, 2, 2]", 5.5, 0.12));
    assert!(t.set_parameter("csw", 1.0).is_err());
}

/// HMC on the exact action (the dense determinant force, gauge innermost) reproduces the exact
/// 2×2 Schwinger-model values ⟨cos θ_P⟩ and Σ.
#[test]
fn hmc_on_the_exact_action_reproduces_the_2x2_schwinger_values() {
    for (beta, kappa, plaq, sigma, seed) in [
        (1.0, 0.25, 0.6042904459, 0.7631221705, 21),
        (2.0, 0.276, 0.8127516480, 0.7425785691, 22),
    ] {
        let card = format!(
            r#"{{"group": "u1", "lattice": [2, 2], "beta": {beta}, "kappa": {kappa}, "determinant": "exact",
                "condensate": {{"exact": true}}, "pion_correlator": false}}"#
        );
        let t = theory(&card);
        let p = HmcParams {
            md_steps: 5,
            trajectory_length: 1.0,
            inner_steps: vec![2].into(),
            ..HmcParams::default()
        };
        let mut rng = Stream::new(seed, 0);
        let mut u = t.initial(Start::Hot, &mut rng);
        let (hp, hs, _) = crate::tests::hmc_plaquette_sigma(&t, &p, &mut u, &mut rng, 100, 8000);
        let label = format!("2x2 beta {beta} kappa {kappa}");
        crate::tests::assert_exact(&label, "cos theta_P", &hp, plaq);
        crate::tests::assert_exact(&label, "Sigma", &hs, sigma);
    }
}
