//! 2D U(1) gauge theory HMC against the exact finite-volume results of docs/reference.md §3, through
//! the whole pipeline: card → u1 plugin .so → HMC → HDF5 → Γ-method analysis. Fixed seeds;
//! |z| < 4 against the measured error. Also: bad couplings are refused with exit code 1.
//!
//! The plugin's .so must be built (`cargo build --workspace`, or `cargo test --workspace`).

mod common;

use common::{analyze_json, assert_z, bessel_i, exact_wilson_loop, run, run_ok, scalar, write_card};

/// The helper reproduces docs/reference.md's plaquette column, so its Wilson loops can be trusted.
#[test]
fn exact_formula_reproduces_the_reference_table() {
    for (beta, l, plaq) in
        [(1.0, 8, 0.4463899659), (3.0, 8, 0.8099855474), (6.0, 8, 0.9124549149), (6.0, 16, 0.9123593044)]
    {
        let w = exact_wilson_loop(beta, l * l, 1);
        assert!((w - plaq).abs() < 1e-9, "beta {beta}, L {l}: {w} vs {plaq}");
    }
    // I_1(1) = 0.565159103992485 (Abramowitz & Stegun table 9.8)
    assert!((bessel_i(1, 1.0) - 0.565159103992485).abs() < 1e-14);
}

fn card(beta: f64, chain: &str, seed: u64, therm: u64, meas: u64) -> String {
    format!(
        r#"
[theory]
plugin = "u1"
lattice = [8, 8]
beta = {beta}
wilson_loops = [[1, 1], [2, 2]]

{chain}

[run]
seed = {seed}
thermalization = {therm}
measurements = {meas}
save_every = 0
output = "{{OUT}}"
"#
    )
}

/// Runs the card; checks ⟨exp(−ΔH)⟩ = 1 and the acceptance; returns `analyze --json`.
fn run_hmc(name: &str, text: &str, acceptance: (f64, f64)) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(dir.path(), name, text);
    run_ok(&["run", card.to_str().unwrap(), "--quiet"]);
    let json = analyze_json(&out);
    let st = &json["steps"]["hmc"];
    let e = (st["exp_minus_delta_h"][0].as_f64().unwrap(), st["exp_minus_delta_h"][1].as_f64().unwrap());
    assert_z(&format!("{name} <exp(-dH)>"), e, 1.0, 0.0);
    let acc = json["acceptance"]["hmc"].as_f64().unwrap();
    println!("{name}: acceptance {acc:.4}");
    assert!(acc > acceptance.0 && acc < acceptance.1, "{name}: acceptance {acc} outside {acceptance:?}");
    json
}

fn tau_int(json: &serde_json::Value, name: &str) -> f64 {
    json["observables"][name]["tau_int"].as_f64().unwrap_or_else(|| panic!("no tau_int for {name}"))
}

/// Plaquette, χ_top = ⟨Q²⟩/V, ⟨Q⟩ = 0, and the 1×1 and 2×2 Wilson loops (area 1 and 4).
fn check_exact(name: &str, json: &serde_json::Value, beta: f64, plaquette: f64, chi_top: f64) {
    assert!((exact_wilson_loop(beta, 64, 1) - plaquette).abs() < 1e-9);
    assert_z(&format!("{name} plaquette"), scalar(json, "plaquette"), plaquette, 0.0);
    assert_z(&format!("{name} chi_top"), scalar(json, "topological_susceptibility"), chi_top, 0.0);
    assert_z(&format!("{name} <Q>"), scalar(json, "topological_charge"), 0.0, 0.0);
    assert_z(&format!("{name} W(1x1)"), scalar(json, "wilson_loop_1x1"), plaquette, 0.0);
    assert_z(&format!("{name} W(2x2)"), scalar(json, "wilson_loop_2x2"), exact_wilson_loop(beta, 64, 4), 0.0);
    // S/V = −β·⟨cos θ_P⟩ in 2D, and the 1×1 loop is the plaquette configuration by configuration
    let (s, _) = scalar(json, "action_density");
    assert!((s + beta * scalar(json, "plaquette").0).abs() < 1e-12, "{name}: S/V = {s}");
    assert!((scalar(json, "wilson_loop_1x1").0 - scalar(json, "plaquette").0).abs() < 1e-12);
    let (tq, tchi) = (tau_int(json, "topological_charge"), tau_int(json, "topological_susceptibility"));
    println!("{name}: tau_int plaquette {:.2}, Q {tq:.2}, Q^2/V {tchi:.2}", tau_int(json, "plaquette"));
}

/// β = 1, L = 8 (docs/reference.md §3): ⟨cos θ_P⟩ = 0.4463899659, χ_top = 0.04063623611. Leapfrog.
#[test]
fn beta_1_plaquette_topology_and_wilson_loops() {
    let chain = "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\nintegrator = \"leapfrog\"";
    let json = run_hmc("u1_beta1", &card(1.0, chain, 11, 200, 40_000), (0.8, 0.95));
    check_exact("beta=1", &json, 1.0, 0.4463899659, 0.04063623611);
}

/// β = 3, L = 8: ⟨cos θ_P⟩ = 0.8099855474, χ_top = 0.01106004700. Omelyan-2 with a randomised
/// trajectory length (the weak-coupling modes are near-harmonic). Q still tunnels at L = 8:
/// τ_int(Q) must stay small against the run length.
#[test]
fn beta_3_plaquette_topology_and_wilson_loops() {
    let chain = "[[chain]]\nkind = \"hmc\"\nmd_steps = 3\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3";
    let meas = 80_000;
    let json = run_hmc("u1_beta3", &card(3.0, chain, 12, 500, meas), (0.8, 0.95));
    check_exact("beta=3", &json, 3.0, 0.8099855474, 0.01106004700);
    let tq = tau_int(&json, "topological_charge");
    assert!(tq < 40.0 && meas as f64 / (2.0 * tq) > 1000.0, "beta=3: tau_int(Q) = {tq}: Q barely mixes");
}

/// Bad couplings are refused with exit code 1 and a message naming beta — never a panic.
#[test]
fn bad_beta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let chain = "[[chain]]\nkind = \"hmc\"\nmd_steps = 4";
    for (name, beta, needles) in [
        ("nan_beta", "nan", &["theory.beta", "finite"][..]),
        ("inf_beta", "inf", &["theory.beta", "finite"][..]),
        ("negative_beta", "-1.0", &["u1", "new_theory", "beta", "≥ 0"][..]),
    ] {
        let text = card(1.0, chain, 1, 10, 10).replace("beta = 1", &format!("beta = {beta}"));
        let (c, _) = write_card(dir.path(), name, &text);
        let out = run(&["run", c.to_str().unwrap(), "-q"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("error:") && !stderr.contains("panicked"), "{name}: {stderr}");
        for n in needles.iter().chain(&[format!("{name}.toml").as_str()]) {
            assert!(stderr.contains(n), "{name}: expected '{n}' in:\n{stderr}");
        }
    }
    // a Wilson loop larger than the lattice, and one of size 0
    for (name, loops, needle) in
        [("big_loop", "[[9, 1]]", "wilson_loops[0]"), ("zero_loop", "[[1, 1], [0, 1]]", "wilson_loops[1]")]
    {
        let text = card(1.0, chain, 1, 10, 10).replace("[[1, 1], [2, 2]]", loops);
        let (c, _) = write_card(dir.path(), name, &text);
        let out = run(&["run", c.to_str().unwrap(), "-q"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{name}: {stderr}");
    }
}
