use super::*;
use latflow_core::abi::HmcParams;
use latflow_core::gauge::U1Angle;
use latflow_core::hmc::FieldSpace;
use latflow_core::testkit;
use latflow_core::ErrorKind;

const U1: &str =
    r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.24, "solver": {"tol": 1e-13}}"#;
const U1_HASENBUSCH: &str = r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.24, "mu": 0.05,
    "hasenbusch": [0.2, 0.15], "solver": {"tol": 1e-13}}"#;
const U1_FULL: &str = r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.24, "even_odd": false,
    "hasenbusch": [0.2], "solver": {"tol": 1e-13}}"#;

fn theory(json: &str) -> Qcd {
    Qcd::from_config(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn params(md_steps: u32, inner: &[u32]) -> HmcParams {
    HmcParams {
        md_steps,
        inner_steps: inner.to_vec().into(),
        ..HmcParams::default()
    }
}

#[test]
fn u1_forces_match_finite_differences() {
    for card in [U1, U1_HASENBUSCH, U1_FULL] {
        testkit::check_force::<Qcd>(card, &HmcParams::default());
    }
}

/// The force of every term (summed) against a 4-point finite difference of the action along
/// random algebra directions, for links whose flat coordinates are not the momenta's (SU(N)).
pub(crate) fn check_group_force(json: &str) {
    let t = theory(json);
    let action = t.action_levels(&HmcParams::default()).unwrap();
    let space = t.space();
    let u = t.initial(Start::Hot, &mut Stream::new(7, 0));
    let mut force = space.zero_momentum();
    let mut buf = space.zero_momentum();
    for term in action.terms().iter().flatten() {
        term.force(&u, &mut buf).unwrap();
        space.kick(&mut force, &buf, -1.0);
    }
    let mut rng = Stream::new(8, 0);
    for _ in 0..2 {
        let x = space.sample_momentum(&u, &mut rng);
        let along = |eps: f64| {
            let (mut v, mut y) = (u.clone(), x.clone());
            space.step_field(&mut v, &mut y, eps);
            t.action(&v)
        };
        let h = 1e-4;
        let fd = (8.0 * (along(h) - along(-h)) - (along(2.0 * h) - along(-2.0 * h))) / (12.0 * h);
        // the coefficient pairing by polarisation of the kinetic energy
        let mut sum = x.clone();
        space.kick(&mut sum, &force, -1.0);
        let an = space.kinetic(&sum) - space.kinetic(&force) - space.kinetic(&x);
        assert!(
            (fd - an).abs() <= 1e-6 * an.abs().max(1.0),
            "{json}: force·X = {an}, finite differences {fd}"
        );
    }
}

#[test]
fn su2_and_su3_forces_match_finite_differences_with_clover_twist_and_hasenbusch() {
    check_group_force(
        r#"{"group": "su2", "lattice": [2, 2, 2, 4], "beta": 2.0, "kappa": 0.13, "csw": 1.2, "mu": 0.02,
            "hasenbusch": [0.11], "solver": {"tol": 1e-13}}"#,
    );
    check_group_force(
        r#"{"group": "su3", "lattice": [2, 2, 2, 2], "beta": 5.5, "kappa": 0.12, "csw": 1.0,
            "solver": {"tol": 1e-13}}"#,
    );
    check_group_force(
        r#"{"group": "su3", "lattice": [4, 4], "beta": 3.0, "kappa": 0.2, "even_odd": false, "solver": {"tol": 1e-13}}"#,
    );
}

#[test]
fn the_levels_nest_fermions_outside_the_gauge_action() {
    let t = theory(U1_HASENBUSCH);
    let a = t.action_levels(&HmcParams::default()).unwrap();
    assert_eq!(
        format!("{a:?}"),
        r#"LeveledAction[["hasenbusch(kappa=0.24/0.2)"], ["hasenbusch(kappa=0.2/0.15)"], ["pseudofermion(kappa=0.15)"], ["gauge"]]"#
    );
    let t = theory(
        r#"{"group": "su3", "lattice": [2, 2, 2, 2], "beta": 5.5, "kappa": 0.12, "csw": 1.0}"#,
    );
    let a = t.action_levels(&HmcParams::default()).unwrap();
    assert_eq!(
        format!("{a:?}"),
        r#"LeveledAction[["pseudofermion(kappa=0.12)"], ["gauge", "clover_det"]]"#
    );
}

#[test]
fn the_integrator_is_reversible_and_hmc_is_exact() {
    testkit::check_reversibility::<Qcd>(U1_HASENBUSCH, &params(4, &[2, 1, 2]));
    let z = testkit::check_exp_minus_delta_h::<Qcd>(U1_HASENBUSCH, &params(3, &[1, 1, 2]), 1000);
    assert!(z.abs() < 4.0);
}

#[test]
fn observables_are_finite_and_gauge_invariant() {
    testkit::check_observables::<Qcd>(U1);
    let exact = r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.24, "condensate": {"exact": true}}"#;
    // the weight is gauge invariant, but the action at a fixed reference pseudofermion is not,
    // so the theory offers no gauge transformation to the kit: check the observables here
    let t = theory(exact);
    let u = t.initial(Start::Hot, &mut Stream::new(5, 0));
    let mut rng = Stream::new(6, 0);
    let g: Vec<U1Angle> = (0..16).map(|_| U1Angle::random(&mut rng)).collect();
    let mut v = u.clone();
    latflow_core::gauge::gauge_transform(
        t.lattice(),
        latflow_core::gauge::flat::view_mut::<U1Angle>(&mut v).unwrap(),
        &g,
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    t.measure(&u, &mut a).unwrap();
    t.measure(&v, &mut b).unwrap();
    assert!(u.iter().zip(&v).any(|(x, y)| x != y));
    for k in 0..2 {
        assert!(
            (a[k] - b[k]).abs() < 1e-10,
            "observable {k}: {} vs {}",
            a[k],
            b[k]
        );
    }
    testkit::check_adapter::<Qcd>(U1, &HmcParams::default());
}

/// The stochastic condensate is unbiased: its mean over many noise seeds matches the exact
/// trace within errors, on one fixed configuration.
#[test]
fn the_noise_estimate_of_the_condensate_matches_the_exact_trace() {
    let exact = theory(
        r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.24, "condensate": {"exact": true}}"#,
    );
    let u = exact.initial(Start::Hot, &mut Stream::new(3, 0));
    let mut out = Vec::new();
    exact.measure(&u, &mut out).unwrap();
    let reference = out[1];
    let samples: Vec<f64> = (0..200)
        .map(|seed| {
            let card = format!(
                r#"{{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.24, "condensate": {{"sources": 1, "seed": {seed}}}}}"#
            );
            let mut o = Vec::new();
            theory(&card).measure(&u, &mut o).unwrap();
            o[1]
        })
        .collect();
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let z = (mean - reference) / (var / n).sqrt();
    println!(
        "condensate: exact {reference:.6}, noise {mean:.6} ± {:.6} (z = {z:.2})",
        (var / n).sqrt()
    );
    assert!(z.abs() < 4.0, "z = {z}");
}

/// The free-field condensate on the cold configuration against its closed form: with U = 1,
/// Tr D⁻¹ = Σ_p tr[(1 − 2κ Σ cos p) + 2iκ Σ γ_μ sin p]⁻¹ = Σ_p 2 a / (a² + 4κ² Σ sin² p) per
/// colour in 2D, a = 1 − 2κ Σ_μ cos p_μ, p_t antiperiodic.
#[test]
fn the_free_condensate_matches_the_momentum_sum() {
    let (l, kappa) = (4usize, 0.2);
    let card = format!(
        r#"{{"group": "u1", "lattice": [{l}, {l}], "beta": 1.0, "kappa": {kappa}, "condensate": {{"exact": true}}}}"#
    );
    let t = theory(&card);
    let u = t.initial(Start::Cold, &mut Stream::new(1, 0));
    let mut out = Vec::new();
    t.measure(&u, &mut out).unwrap();
    let (mut trace, mut norm) = (0.0, 0.0);
    for nx in 0..l {
        for nt in 0..l {
            let px = std::f64::consts::TAU * nx as f64 / l as f64;
            let pt = std::f64::consts::TAU * (nt as f64 + 0.5) / l as f64;
            let a = 1.0 - 2.0 * kappa * (px.cos() + pt.cos());
            let s2 = px.sin().powi(2) + pt.sin().powi(2);
            trace += 2.0 * a / (a * a + 4.0 * kappa * kappa * s2);
            norm += 2.0 / (a * a + 4.0 * kappa * kappa * s2);
        }
    }
    let expected = 2.0 * kappa * trace / (l * l) as f64;
    assert!(
        (out[1] - expected).abs() < 1e-9,
        "Sigma = {} vs {expected}",
        out[1]
    );
    assert_eq!(out[0], 1.0);
    // the pion correlator: Σ_t C(t) = (2κ)² Σ_{s} (D⁻¹D⁻†)_{(0,s),(0,s)} = (2κ)² (1/V) Σ_p 2/(a² + 4κ² Σ sin² p),
    // symmetric under t → T − t on the free field
    let c = &out[2..2 + l];
    let sum: f64 = c.iter().sum();
    let expected = 4.0 * kappa * kappa * norm / (l * l) as f64;
    assert!(
        (sum - expected).abs() < 1e-9 * expected,
        "sum C(t) = {sum} vs {expected}"
    );
    for t in 1..l {
        assert!(
            (c[t] - c[l - t]).abs() < 1e-10 * c[0],
            "C({t}) = {} vs C({}) = {}",
            c[t],
            l - t,
            c[l - t]
        );
        assert!(c[t] > 0.0 && c[t] < c[0]);
    }
}

#[test]
fn a_solve_that_does_not_converge_is_an_error_naming_the_term_and_residual() {
    let t = theory(
        r#"{"group": "u1", "lattice": [4, 4], "beta": 1.0, "kappa": 0.24, "solver": {"tol": 1e-12, "max_iter": 2}}"#,
    );
    let mut u = t.initial(Start::Hot, &mut Stream::new(1, 0));
    let e = latflow_core::sdk::hmc_trajectories(
        &t,
        &mut u,
        &HmcParams::default(),
        1,
        &mut Stream::new(2, 0),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ActionTerm);
    assert!(
        e.message.contains("pseudofermion(kappa=0.24)") && e.message.contains("residual"),
        "{e}"
    );
}

#[test]
fn pf_hmc_records_cg_iterations_per_trajectory() {
    let t = theory(U1_HASENBUSCH);
    let opts = serde_json::json!({"md_steps": 3, "inner_steps": [1, 1, 2]});
    assert_eq!(
        t.step_columns("pf_hmc", &opts).unwrap(),
        vec!["metropolis_accepted", "delta_h", "cg_iterations"]
    );
    let mut u = t.initial(Start::Hot, &mut Stream::new(1, 0));
    let mut out = Vec::new();
    let mut rng = Stream::new(2, 0);
    for _ in 0..3 {
        t.step("pf_hmc", &opts, &mut u, &mut rng, &mut out).unwrap();
    }
    assert_eq!(out.len(), 9);
    for rec in out.chunks(3) {
        assert!(rec[0] == 0.0 || rec[0] == 1.0);
        assert!(rec[1].is_finite());
        assert!(rec[2] > 10.0, "{out:?}");
    }
    let e = t
        .step_columns("pf_hmc", &serde_json::json!({"integrator": "euler"}))
        .unwrap_err();
    assert!(e.message.contains("integrator"), "{e}");
    let e = t
        .step_columns("pf_hmc", &serde_json::json!({"inner_steps": [1, 1, 1, 1]}))
        .unwrap_err();
    assert!(e.message.contains("level"), "{e}");
}

/// Same seed, same bits on 1 and 2 threads, on a lattice large enough (8192 sites) for the
/// site loops to run in parallel chunks.
#[test]
fn same_seed_same_bits_for_any_thread_count() {
    let card = r#"{"group": "u1", "lattice": [128, 64], "beta": 2.0, "kappa": 0.2, "hasenbusch": [0.15],
        "solver": {"tol": 1e-9}, "condensate": {"sources": 1}}"#;
    let run = |threads: usize| {
        let t = theory(card);
        rayon_pool(threads).install(|| {
            let mut u = t.initial(Start::Hot, &mut Stream::new(1, 0));
            let p = params(2, &[1, 2]);
            let recs =
                latflow_core::sdk::hmc_trajectories(&t, &mut u, &p, 1, &mut Stream::new(2, 0))
                    .unwrap();
            let mut obs = Vec::new();
            t.measure(&u, &mut obs).unwrap();
            (
                u,
                recs.iter().map(|r| r.delta_h.to_bits()).collect::<Vec<_>>(),
                obs,
            )
        })
    };
    let (a, b) = (run(1), run(2));
    assert_eq!(a.1, b.1);
    assert!(a
        .0
        .iter()
        .zip(&b.0)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(a
        .2
        .iter()
        .zip(&b.2)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// `therm` HMC trajectories of `t` from `u`, then `n` more with the plaquette and Σ (the first
/// two observables) measured after each: the two series and how many of the `n` were accepted.
pub(crate) fn hmc_plaquette_sigma(
    t: &Qcd,
    p: &HmcParams,
    u: &mut Vec<f64>,
    rng: &mut Stream,
    therm: u32,
    n: usize,
) -> (Vec<f64>, Vec<f64>, usize) {
    latflow_core::sdk::hmc_trajectories(t, u, p, therm, rng).unwrap();
    let (mut plaq, mut sigma, mut accepted) = (Vec::new(), Vec::new(), 0);
    for _ in 0..n {
        let r = latflow_core::sdk::hmc_trajectories(t, u, p, 1, rng).unwrap();
        accepted += usize::from(r[0].accepted);
        let mut out = Vec::new();
        t.measure(u, &mut out).unwrap();
        plaq.push(out[0]);
        sigma.push(out[1]);
    }
    (plaq, sigma, accepted)
}

/// |z| < 4 for the mean of `data` (error from 40 batch means) against the exact `want`.
pub(crate) fn assert_exact(label: &str, what: &str, data: &[f64], want: f64) {
    let (m, e) = testkit::batch_means(data, 40);
    let z = (m - want) / e;
    println!("{label}: {what} = {m:.5} ± {e:.5} (exact {want:.10}): z = {z:+.2}");
    assert!(z.abs() < 4.0, "{label} {what}: z = {z}");
}

fn rayon_pool(threads: usize) -> latflow_core::workers::Workers {
    latflow_core::workers::Workers::new(threads as u32).unwrap()
}

fn refused(json: &str, needles: &[&str]) {
    let e = Qcd::from_config(json)
        .err()
        .unwrap_or_else(|| panic!("accepted: {json}"));
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    for n in needles {
        assert!(e.message.contains(n), "{json}: '{e}' lacks '{n}'");
    }
}

#[test]
fn bad_cards_are_refused_naming_the_key() {
    let base = |extra: &str| {
        format!(r#"{{"group": "u1", "lattice": [4, 4], "beta": 1.0, "kappa": 0.2{extra}}}"#)
    };
    refused(
        r#"{"group": "u1", "lattice": [4, 4], "beta": 1.0, "kappa": 0.0}"#,
        &["kappa", "> 0"],
    );
    refused(
        r#"{"group": "u1", "lattice": [4, 4], "beta": 1.0, "kappa": -0.1}"#,
        &["kappa"],
    );
    refused(&base(r#", "mu": -0.1"#), &["mu", "≥ 0"]);
    refused(
        &base(r#", "hasenbusch": [0.1, 0.15]"#),
        &["hasenbusch[1]", "light to heavy"],
    );
    refused(&base(r#", "hasenbusch": [0.2]"#), &["hasenbusch[0]"]);
    refused(&base(r#", "solver": {"tol": 0.0}"#), &["solver.tol", "> 0"]);
    refused(
        &base(r#", "solver": {"force_tol": -1e-8}"#),
        &["solver.force_tol"],
    );
    refused(
        &base(r#", "solver": {"max_iter": 0}"#),
        &["solver.max_iter"],
    );
    refused(
        r#"{"group": "u1", "lattice": [3, 4], "beta": 1.0, "kappa": 0.2, "even_odd": true}"#,
        &["even_odd", "odd"],
    );
    refused(
        r#"{"group": "u2", "lattice": [4, 4], "beta": 1.0, "kappa": 0.2}"#,
        &["group", "u2"],
    );
    refused(&base(r#", "csw": 1.0"#), &["csw", "4D"]);
    refused(
        r#"{"group": "u1", "lattice": [4, 4, 4], "beta": 1.0, "kappa": 0.2}"#,
        &["lattice", "3D"],
    );
    refused(
        &base(r#", "condensate": {"sources": 0}"#),
        &["condensate.sources"],
    );
    refused(&base(r#", "kapa": 0.1"#), &["kapa"]);
    // NaN and infinity cannot be written in JSON; set_parameter sees them
    let mut t = theory(&base(""));
    for bad in [f64::NAN, f64::INFINITY] {
        let e = t.set_parameter("kappa", bad).unwrap_err();
        assert!(e.message.contains("kappa"), "{e}");
    }
    assert!(t
        .set_parameter("mu", -1.0)
        .unwrap_err()
        .message
        .contains("mu"));
    // an odd extent without even-odd is fine
    assert!(!theory(r#"{"group": "u1", "lattice": [3, 4], "beta": 1.0, "kappa": 0.2}"#).even_odd());
}

#[test]
fn action_grad_is_refused_for_matrix_links() {
    let card = r#"{"group": "su2", "lattice": [2, 2], "beta": 1.0, "kappa": 0.2}"#;
    let a = latflow_core::sdk::Adapter::<Qcd>::from_json(card).unwrap();
    let u = a.physics().initial(Start::Hot, &mut Stream::new(1, 0));
    let slice = latflow_core::abi_stable::std_types::RSlice::from_slice(&u);
    let e = latflow_core::abi::Theory::action_grad(&a, slice)
        .into_result()
        .unwrap_err();
    assert!(e.message.contains("u1"), "{e}");
}

/// The index of observable `name` in a measurement row (all observables here are scalars
/// except the pion correlator, which these cards switch off).
fn position(t: &Qcd, name: &str) -> Option<usize> {
    t.observables().iter().position(|s| s.name.as_str() == name)
}

/// U(1) in 2D: the geometric charge is an integer, gauge invariant, equals (1/2π) Σ wrap(θ_P)
/// summed here by hand, and is 1 on a field of constant flux 2π/V; its susceptibility column
/// is Q²/V.
#[test]
fn the_u1_geometric_charge_is_an_integer_and_counts_the_flux() {
    let json = r#"{"group": "u1", "lattice": [4, 6], "beta": 1.5, "kappa": 0.1, "pion_correlator": false}"#;
    let t = theory(json);
    let (iq, ichi) = (position(&t, "topological_charge").unwrap(), position(&t, "topological_susceptibility").unwrap());
    let lat = t.lattice().clone();
    let v = lat.volume();
    let by_hand = |th: &[f64]| -> f64 {
        let mut q = 0.0;
        for x in 0..v {
            let c = lat.coords(x);
            let up0 = lat.index(&[(c[0] + 1) % 4, c[1]]);
            let up1 = lat.index(&[c[0], (c[1] + 1) % 6]);
            q += latflow_core::gauge::wrap_angle(th[2 * x] + th[2 * up0 + 1] - th[2 * up1] - th[2 * x + 1]);
        }
        q / std::f64::consts::TAU
    };
    for seed in 0..4 {
        let u = t.initial(Start::Hot, &mut Stream::new(seed, 3));
        let mut row = Vec::new();
        t.measure(&u, &mut row).unwrap();
        let q = row[iq];
        assert!((q - q.round()).abs() < 1e-10, "Q = {q}");
        assert!((q - by_hand(&u)).abs() < 1e-12, "{q} vs {}", by_hand(&u));
        assert_eq!(row[ichi].to_bits(), (q * q / v as f64).to_bits());
        let mut rng = Stream::new(seed + 10, 0);
        let g: Vec<U1Angle> = (0..v).map(|_| U1Angle::random(&mut rng)).collect();
        let mut w = u.clone();
        latflow_core::gauge::gauge_transform(&lat, latflow_core::gauge::flat::view_mut::<U1Angle>(&mut w).unwrap(), &g);
        let mut row2 = Vec::new();
        t.measure(&w, &mut row2).unwrap();
        assert!((row2[iq] - q).abs() < 1e-10, "gauge transformed: {} vs {q}", row2[iq]);
    }
    // constant flux 2π/V per plaquette: θ_1(x0, x1) = 2π x0/V, θ_0 = −2π x1/L1 on the last x0 slice
    let mut th = vec![0.0; 2 * v];
    for x in 0..v {
        let c = lat.coords(x);
        th[2 * x + 1] = std::f64::consts::TAU * c[0] as f64 / v as f64;
        if c[0] == 3 {
            th[2 * x] = -std::f64::consts::TAU * c[1] as f64 / 6.0;
        }
    }
    let mut row = Vec::new();
    t.measure(&th, &mut row).unwrap();
    assert!((row[iq] - 1.0).abs() < 1e-12, "Q = {}", row[iq]);
}

/// SU(3) in 4D with `gradient_flow`: the charge is core's clover Q after the flow, bit for bit;
/// without the key there is no charge; the key is refused where it does not apply.
#[test]
fn the_sun_charge_is_measured_after_the_gradient_flow() {
    let base = r#""lattice": [4, 4, 4, 4], "beta": 5.7, "kappa": 0.1, "pion_correlator": false"#;
    let t = theory(&format!(r#"{{"group": "su3", {base}, "gradient_flow": {{"time": 0.3, "eps": 0.05}}}}"#));
    let iq = position(&t, "topological_charge").unwrap();
    let u = t.initial(Start::Hot, &mut Stream::new(7, 0));
    let mut row = Vec::new();
    t.measure(&u, &mut row).unwrap();
    let mut links = latflow_core::gauge::flat::view::<latflow_core::gauge::Su3>(&u).unwrap().to_vec();
    let opts = latflow_core::gauge::FlowOptions { eps: 0.05, ..Default::default() };
    let p = latflow_core::gauge::gradflow::flow_measurements(t.lattice(), &mut links, &[0.3], &opts).unwrap();
    assert_eq!(row[iq].to_bits(), p[0].q.unwrap().to_bits());
    assert!(row[iq].is_finite());

    let plain = theory(&format!(r#"{{"group": "su3", {base}}}"#));
    assert!(position(&plain, "topological_charge").is_none());
    refused(
        r#"{"group": "su3", "lattice": [4, 4], "beta": 2.0, "kappa": 0.1, "gradient_flow": {"time": 0.3}}"#,
        &["gradient_flow", "4D"],
    );
    refused(
        r#"{"group": "u1", "lattice": [4, 4], "beta": 2.0, "kappa": 0.1, "gradient_flow": {"time": 0.3}}"#,
        &["gradient_flow", "geometric"],
    );
    refused(
        &format!(r#"{{"group": "su2", {base}, "gradient_flow": {{"time": -1.0}}}}"#),
        &["gradient_flow.time"],
    );
    refused(
        &format!(r#"{{"group": "su2", {base}, "gradient_flow": {{"time": 0.3, "scheme": "zeuthen"}}}}"#),
        &["gradient_flow.scheme", "zeuthen"],
    );
}

/// End to end through the lanes layout: pseudofermion HMC for SU(3) in 4D (2·2·2·8, even–odd,
/// one Hasenbusch mass) with its solves in the lanes layout follows the same trajectories as
/// with every solve in the site layout, to the solvers' tolerance (the same accept/reject
/// decisions, ΔH and links to 1e-8), and the observables on one configuration (noise-source
/// condensate and pion correlator) agree to 1e-8.
#[test]
fn pf_hmc_through_the_lanes_layout_follows_the_site_layout() {
    let card = r#"{"group": "su3", "lattice": [2, 2, 2, 8], "beta": 5.5, "kappa": 0.12, "hasenbusch": [0.1],
        "solver": {"tol": 1e-12, "force_tol": 1e-12}, "condensate": {"sources": 2}}"#;
    let layouts = [theory(card).with_layout(SolverLayout::Auto), theory(card).with_layout(SolverLayout::Sites)];
    let runs: Vec<_> = layouts
        .iter()
        .zip([true, false])
        .map(|(t, lanes)| {
            for k in t.kappas() {
                assert_eq!(t.dirac::<latflow_core::gauge::Su3, 4>(k).unwrap().solves_in_lanes(), lanes);
            }
            let mut rng = Stream::new(7, 0);
            let mut u = t.initial(Start::Hot, &mut rng);
            let recs = latflow_core::sdk::hmc_trajectories(t, &mut u, &params(4, &[1, 2]), 4, &mut rng).unwrap();
            (u, recs)
        })
        .collect();
    let ((ul, rl), (us, rs)) = (&runs[0], &runs[1]);
    assert!(rl.iter().any(|r| r.accepted), "{rl:?}");
    for (a, b) in rl.iter().zip(rs) {
        assert_eq!(a.accepted, b.accepted);
        assert!((a.delta_h - b.delta_h).abs() < 1e-8, "{} vs {}", a.delta_h, b.delta_h);
    }
    let du = ul.iter().zip(us).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(du > 0.0 && du < 1e-8, "largest link difference {du:e}");
    // the noise sources are seeded by the configuration's bits: measure one configuration
    let (mut ol, mut os) = (Vec::new(), Vec::new());
    layouts[0].measure(ul, &mut ol).unwrap();
    layouts[1].measure(ul, &mut os).unwrap();
    for (a, b) in ol.iter().zip(&os) {
        assert!((a - b).abs() <= 1e-8 * (1.0 + b.abs()), "{ol:?} vs {os:?}");
    }
}

const U1_NF1: &str = r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.22, "nf": 1,
    "rhmc": {"lambda_min": 0.01, "degree": 14}, "solver": {"tol": 1e-13}}"#;
const U1_NF1_FULL: &str = r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.22, "nf": 1, "even_odd": false,
    "rhmc": {"lambda_min": 0.005, "lambda_max": 6.0, "degree": 12}, "solver": {"tol": 1e-13}}"#;

/// One flavour (rational HMC): the force against finite differences of the action, in U(1)
/// (even–odd and full lattice) and SU(2), SU(3); the integrator is reversible.
#[test]
fn rational_forces_match_finite_differences_and_the_integrator_is_reversible() {
    for card in [U1_NF1, U1_NF1_FULL] {
        testkit::check_force::<Qcd>(card, &HmcParams::default());
    }
    check_group_force(
        r#"{"group": "su2", "lattice": [2, 2, 2, 4], "beta": 2.0, "kappa": 0.13, "nf": 1,
            "rhmc": {"lambda_min": 0.02}, "solver": {"tol": 1e-13}}"#,
    );
    check_group_force(
        r#"{"group": "su3", "lattice": [4, 4], "beta": 3.0, "kappa": 0.2, "nf": 1, "even_odd": false,
            "rhmc": {"lambda_min": 0.01}, "solver": {"tol": 1e-13}}"#,
    );
    testkit::check_reversibility::<Qcd>(U1_NF1, &params(4, &[2]));
    let t = theory(U1_NF1);
    let a = t.action_levels(&HmcParams::default()).unwrap();
    assert_eq!(format!("{a:?}"), r#"LeveledAction[["rational(kappa=0.22, nf=1)"], ["gauge"]]"#);
}

/// The heat bath φ = (B†)⁻¹η samples the action's own density: right after it, S(φ) = η†η
/// (to the solver's tolerance), on both layouts and both groups.
#[test]
fn the_rational_heat_bath_gives_s_equal_to_eta_dagger_eta() {
    for card in [
        U1_NF1,
        U1_NF1_FULL,
        r#"{"group": "su3", "lattice": [2, 2, 2, 4], "beta": 5.5, "kappa": 0.12, "nf": 1,
            "rhmc": {"lambda_min": 0.05}, "solver": {"tol": 1e-13}}"#,
    ] {
        let t = theory(card);
        let mut levels = t.action_levels(&HmcParams::default()).unwrap();
        let u = t.initial(Start::Hot, &mut Stream::new(3, 0));
        // the rational term refreshes first (the gauge term draws nothing)
        levels.refresh(&u, &mut Stream::new(4, 0)).unwrap();
        let s = levels.terms()[0][0].action(&u).unwrap();
        // the same η: the stream's first Gaussian field of the term's length
        let n = if t.even_odd() { t.lattice().volume() / 2 } else { t.lattice().volume() };
        let eta2 = with_theory!(t, G, NS => {
            let mut eta = vec![latflow_core::gauge::fermion::SpinorOf::<G, NS>::default(); n];
            latflow_core::gauge::fermion::fill_gaussian(&mut eta, &mut Stream::new(4, 0)).unwrap();
            latflow_core::gauge::fermion::norm2(&eta)
        });
        println!("{card}: S = {s}, eta^dag eta = {eta2}");
        assert!((s / eta2 - 1.0).abs() < 1e-9, "S = {s}, η†η = {eta2}");
    }
}

/// The heat bath's spectral-range check: an interval that misses the low or the high end of
/// D̂†D̂'s spectrum on a hot U(1) 4×4 configuration (its 16-dimensional even–odd space is
/// spanned by 20 Lanczos steps, so the Ritz values are the eigenvalues) is an error naming the
/// key to change; with the check off the same card refreshes. The other nf = 1 tests run with
/// the check on (20 steps) and pass it.
#[test]
fn a_spectrum_outside_the_rational_range_is_an_error_naming_the_key() {
    let refresh = |rhmc: &str| {
        let card = format!(
            r#"{{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.22, "nf": 1, "rhmc": {rhmc}, "solver": {{"tol": 1e-12}}}}"#
        );
        let t = theory(&card);
        let mut levels = t.action_levels(&HmcParams::default()).unwrap();
        let u = t.initial(Start::Hot, &mut Stream::new(3, 0));
        levels.refresh(&u, &mut Stream::new(4, 0)).map_err(|e| e.to_string())
    };
    refresh(r#"{"lambda_min": 0.01}"#).unwrap();
    let e = refresh(r#"{"lambda_min": 0.5}"#).unwrap_err();
    assert!(e.contains("below rhmc.lambda_min = 5e-1") && e.contains("Lower rhmc.lambda_min"), "{e}");
    let e = refresh(r#"{"lambda_min": 0.01, "lambda_max": 1.0}"#).unwrap_err();
    assert!(e.contains("above rhmc.lambda_max = 1e0") && e.contains("raise rhmc.lambda_max"), "{e}");
    println!("{e}");
    refresh(r#"{"lambda_min": 0.5, "spectrum_check": 0}"#).unwrap();
}

#[test]
fn bad_rational_cards_are_refused_naming_the_key() {
    let base = r#""group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.22"#;
    for (extra, needles) in [
        (r#""nf": 3"#, &["nf", "1", "2"][..]),
        (r#""nf": 1"#, &["rhmc", "lambda_min"]),
        (r#""rhmc": {"lambda_min": 0.1}"#, &["rhmc", "nf = 1"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.0}"#, &["rhmc.lambda_min", "> 0"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1, "lambda_max": 0.05}"#, &["rhmc.lambda_max", "larger"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1, "degree": 0}"#, &["rhmc.degree"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1, "degree": 65}"#, &["rhmc.degree"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1}, "mu": 0.1"#, &["mu", "twisted"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1}, "hasenbusch": [0.2]"#, &["hasenbusch"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1}, "determinant": "exact""#, &["determinant"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 100.0}"#, &["rhmc", "range"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1, "poles": 3}"#, &["poles"]),
        (r#""nf": 1, "rhmc": {"lambda_min": 0.1, "spectrum_check": 20000}"#, &["rhmc.spectrum_check"]),
    ] {
        let card = format!("{{{base}, {extra}}}");
        // some are refused when the card is read, the range only when the terms are made
        match Qcd::from_config(&card) {
            Err(e) => {
                for n in needles {
                    assert!(e.message.contains(n), "{card}: {e} lacks '{n}'");
                }
            }
            Ok(t) => {
                let e = t.action_levels(&HmcParams::default()).unwrap_err();
                for n in needles {
                    assert!(e.message.contains(n), "{card}: {e} lacks '{n}'");
                }
            }
        }
    }
    let card = r#"{"group": "su3", "lattice": [2, 2, 2, 2], "beta": 5.5, "kappa": 0.12, "nf": 1, "rhmc": {"lambda_min": 0.1}, "csw": 1.0}"#;
    assert!(Qcd::from_config(card).err().unwrap().message.contains("csw"));
    let mut t = theory(U1_NF1);
    assert!(t.set_parameter("mu", 0.1).unwrap_err().message.contains("twisted"));
}

/// `solver.layout`: "auto" (the default) and "sites" and "lanes" reach the operators; "lanes"
/// where the lanes layout cannot apply, and an unknown name, are errors naming the key.
#[test]
fn the_solver_layout_key_reaches_the_operators_and_refuses_what_cannot_apply() {
    use latflow_core::gauge::Su3;
    let card = |layout: &str| {
        format!(r#"{{"group": "su3", "lattice": [2, 2, 2, 8], "beta": 5.5, "kappa": 0.12, "solver": {{"layout": {layout:?}}}}}"#)
    };
    for (name, lanes) in [("auto", true), ("sites", false), ("lanes", true)] {
        let t = theory(&card(name));
        assert_eq!(t.dirac::<Su3, 4>(0.12).unwrap().solves_in_lanes(), lanes, "{name}");
        assert_eq!(t.params_json()["solver"]["layout"], name);
    }
    assert!(!theory(&card("lanes")).with_layout(SolverLayout::Sites).dirac::<Su3, 4>(0.12).unwrap().solves_in_lanes());
    refused(&card("simd"), &["solver.layout", "simd"]);
    let lanes = r#""solver": {"layout": "lanes"}"#;
    for (c, why) in [
        (format!(r#"{{"group": "su2", "lattice": [2, 2, 2, 8], "beta": 2.0, "kappa": 0.12, {lanes}}}"#), "SU(3) in 4D"),
        (format!(r#"{{"group": "su3", "lattice": [2, 2, 2, 4], "beta": 5.5, "kappa": 0.12, {lanes}}}"#), "multiple of 8"),
        (format!(r#"{{"group": "su3", "lattice": [2, 2, 2, 8], "beta": 5.5, "kappa": 0.12, "csw": 1.0, {lanes}}}"#), "no csw"),
        (format!(r#"{{"group": "su3", "lattice": [2, 2, 2, 8], "beta": 5.5, "kappa": 0.12, "mu": 0.1, {lanes}}}"#), "no mu"),
        (format!(r#"{{"group": "u1", "lattice": [4, 8], "beta": 2.0, "kappa": 0.12, {lanes}}}"#), "SU(3) in 4D"),
    ] {
        refused(&c, &["solver.layout", why]);
    }
}
