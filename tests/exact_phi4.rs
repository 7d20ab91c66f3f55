//! φ⁴ HMC against exact and reference values (docs/reference.md §1 and §2), through the whole
//! pipeline: card → plugin .so → HMC → HDF5 → Γ-method analysis. Fixed seeds; |z| < 4 against
//! the measured error (combined with the reference value's error where it has one).

mod common;

use common::{analyze_json, assert_z, run_ok, scalar, write_card};

fn card(lattice: &str, couplings: &str, chain: &str, seed: u64, therm: u64, meas: u64) -> String {
    format!(
        r#"
[theory]
plugin = "phi4"
lattice = {lattice}
{couplings}

{chain}

[run]
seed = {seed}
thermalization = {therm}
measurements = {meas}
output = "{{OUT}}"
"#
    )
}

const OMELYAN: &str = "[[chain]]\nkind = \"hmc\"\ntrajectory_length = 1.0\nmd_steps = 10\nintegrator = \"omelyan2\"";

/// Runs a card and returns `analyze --json`.
fn run_card(name: &str, text: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(dir.path(), name, text);
    run_ok(&["run", card.to_str().unwrap(), "--quiet"]);
    analyze_json(&out)
}

/// ⟨exp(−ΔH)⟩ = 1 within errors, and the acceptance is sane.
fn check_hmc_step(json: &serde_json::Value, label: &str) {
    let st = &json["steps"][label];
    let (m, e) = (st["exp_minus_delta_h"][0].as_f64().unwrap(), st["exp_minus_delta_h"][1].as_f64().unwrap());
    assert_z(&format!("{label} <exp(-dH)>"), (m, e), 1.0, 0.0);
    let acc = json["acceptance"][label].as_f64().unwrap();
    assert!(acc > 0.5 && acc < 1.0, "acceptance {acc}");
}

/// Free field, L = 8, m² = 1, convention B: G_B = G_A/2 (docs/reference.md §1).
///
/// Fixed-length HMC is not ergodic here: the modes with p̂² + m² = 5 have ω = √10 ≈ π, so a
/// τ = 1 trajectory maps them to ≈ −themselves (C(1) came out 4.5σ low with fixed τ). The
/// card therefore randomises the trajectory length, as one must for near-harmonic theories.
#[test]
fn free_field_phi2_and_correlator() {
    let chain = format!("{OMELYAN}\ntrajectory_jitter = 0.5");
    let json = run_card("free", &card("[8, 8]", "m2 = 1.0\nlambda = 0.0", &chain, 11, 200, 40_000));
    assert_z("free <phi^2>", scalar(&json, "phi2"), 0.254173997690 / 2.0, 0.0);
    let c_a = [0.4476190476, 0.1714285714, 0.0666666667, 0.0285714286, 0.0190476190];
    let c = &json["observables"]["correlator"];
    for (t, exact) in c_a.iter().enumerate() {
        let m = (c["mean"][t].as_f64().unwrap(), c["error"][t].as_f64().unwrap());
        assert_z(&format!("free C({t})"), m, exact / 2.0, 0.0);
    }
    // the correlator is symmetric: C(t) = C(L − t) exactly per configuration
    for t in 1..4 {
        assert_eq!(c["mean"][t].as_f64(), c["mean"][8 - t].as_f64());
    }
    check_hmc_step(&json, "hmc");
}

/// Tutorial point L = 8, m² = −4, λ = 8: χ₂ = 0.7442(12), ⟨|M|⟩/V = 0.08705(8), ⟨φ²⟩ = 0.14348(2).
#[test]
fn tutorial_point() {
    let json = run_card("tutorial", &card("[8, 8]", "m2 = -4.0\nlambda = 8.0", OMELYAN, 3, 500, 60_000));
    assert_z("tutorial chi2", scalar(&json, "chi2"), 0.7442, 0.0012);
    assert_z("tutorial <|M|>/V", scalar(&json, "abs_magnetization"), 0.08705, 0.00008);
    assert_z("tutorial <phi^2>", scalar(&json, "phi2"), 0.14348, 0.00002);
    assert_z("tutorial E", scalar(&json, "energy"), 0.04428, 0.00002);
    assert_z("tutorial <M>/V", scalar(&json, "magnetization"), 0.0, 0.0);
    check_hmc_step(&json, "hmc");
}

/// E2 of PRD 100 034515: L = 8, λ = 6.008: χ₂ = 1.8971(42), ⟨|M|⟩/V = 0.14221(18), ⟨φ²⟩ = 0.18391(4).
#[test]
fn e2_point() {
    let json = run_card("e2", &card("[8, 8]", "m2 = -4.0\nlambda = 6.008", OMELYAN, 5, 500, 80_000));
    assert_z("E2 chi2", scalar(&json, "chi2"), 1.8971, 0.0042);
    assert_z("E2 <|M|>/V", scalar(&json, "abs_magnetization"), 0.14221, 0.00018);
    assert_z("E2 <phi^2>", scalar(&json, "phi2"), 0.18391, 0.00004);
}

/// Every integrator — leapfrog, Omelyan-4, and two nested time scales — and the hopping-form
/// parameterisation give the same physics at the tutorial point.
#[test]
fn every_integrator_and_parameterisation_is_exact() {
    let variants = [
        ("leapfrog", "m2 = -4.0\nlambda = 8.0", "[[chain]]\nkind = \"hmc\"\nmd_steps = 12\nintegrator = \"leapfrog\""),
        ("omelyan4", "m2 = -4.0\nlambda = 8.0", "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\nintegrator = \"omelyan4\""),
        (
            "nested",
            "m2 = -4.0\nlambda = 8.0",
            "[[chain]]\nkind = \"hmc\"\nmd_steps = 5\ntime_scales = [3]\nintegrator = \"omelyan2\"",
        ),
        ("hopping", "kappa = 0.25\nlambda_hat = 0.5", OMELYAN),
        (
            "two_steps",
            "m2 = -4.0\nlambda = 8.0",
            "[[chain]]\nkind = \"hmc\"\nmd_steps = 8\ntrajectory_length = 0.5\nrepeat = 2\n\n[[chain]]\nkind = \"hmc\"\nmd_steps = 10\nintegrator = \"leapfrog\"",
        ),
        ("force_gradient", "m2 = -4.0\nlambda = 8.0", "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\nintegrator = \"force_gradient\""),
    ];
    for (i, (name, couplings, chain)) in variants.iter().enumerate() {
        let json = run_card(name, &card("[8, 8]", couplings, chain, 20 + i as u64, 300, 30_000));
        assert_z(&format!("{name} chi2"), scalar(&json, "chi2"), 0.7442, 0.0012);
        assert_z(&format!("{name} <|M|>/V"), scalar(&json, "abs_magnetization"), 0.08705, 0.00008);
        assert_z(&format!("{name} <phi^2>"), scalar(&json, "phi2"), 0.14348, 0.00002);
        let labels: Vec<String> = json["acceptance"].as_object().unwrap().keys().cloned().collect();
        for label in labels {
            check_hmc_step(&json, &label);
        }
    }
}
