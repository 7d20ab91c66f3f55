//! SU(N) gauge theory through the whole pipeline — card → sun plugin .so → HMC → HDF5 →
//! Γ-method analysis — against the exact 2D values of docs/reference.md §4 (the plaquette
//! u = ⟨Re Tr U_P⟩/N and the area law ⟨W(A)⟩ = u^A), with fixed seeds and |z| < 4 against the
//! measured errors. Also: bad cards are refused with exit code 1, naming the key.
//!
//! The plugin's .so must be built (`cargo build --workspace`, or `cargo test --workspace`).

mod common;

use common::{analyze_json, assert_z, expect_failure, run_ok, scalar, write_card};

fn card(theory: &str, chain: &str, seed: u64, therm: u64, meas: u64) -> String {
    format!(
        r#"
[theory]
plugin = "sun"
{theory}

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

const HMC: &str = r#"
[[chain]]
kind = "hmc"
trajectory_length = 1.0
md_steps = 5
integrator = "omelyan2"
"#;

fn run(name: &str, text: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(dir.path(), name, text);
    run_ok(&["run", card.to_str().unwrap(), "--quiet"]);
    analyze_json(&out)
}

/// 2D SU(2) at β = 2 and SU(3) at β = 6 on an 8×8 torus by HMC: the plaquette, the 1×2 and 2×2
/// Wilson loops (area law u², u⁴), ⟨e^{−ΔH}⟩ = 1, and S/V = −β u exactly per configuration.
#[test]
fn hmc_reproduces_the_2d_plaquette_and_area_law() {
    for (n, beta, u, seed) in [(2, 2.0, 0.4331274267, 11), (3, 6.0, 0.4225317396, 12)] {
        let theory = format!("lattice = [8, 8]\nn = {n}\nbeta = {beta}\nwilson_loops = [[1, 2], [2, 2]]");
        let name = format!("su{n}_b{beta}");
        let json = run(&name, &card(&theory, HMC, seed, 50, 1500));
        let st = &json["steps"]["hmc"];
        let e = (st["exp_minus_delta_h"][0].as_f64().unwrap(), st["exp_minus_delta_h"][1].as_f64().unwrap());
        assert_z(&format!("{name} <exp(-dH)>"), e, 1.0, 0.0);
        assert_z(&format!("{name} plaquette"), scalar(&json, "plaquette"), u, 0.0);
        assert_z(&format!("{name} W(1x2)"), scalar(&json, "wilson_loop_1x2"), u.powi(2), 0.0);
        assert_z(&format!("{name} W(2x2)"), scalar(&json, "wilson_loop_2x2"), u.powi(4), 0.0);
        let (s, _) = scalar(&json, "action_density");
        assert!((s + beta * scalar(&json, "plaquette").0).abs() < 1e-10, "{name}: S/V = {s}");
    }
}

/// Every bad `[theory]` key and an unknown step kind are refused before anything runs.
#[test]
fn bad_cards_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str]); 7] = [
        ("lattice = [4, 4]\nn = 4\nbeta = 2.0", HMC, &["n: SU(N) is supported for n = 2 and n = 3, got 4"]),
        ("lattice = [4, 4]\nn = 3\nbeta = nan", HMC, &["beta"]),
        ("lattice = [4, 4]\nn = 3\nbeta = inf", HMC, &["beta"]),
        ("lattice = [4, 4]\nn = 3\nbeta = -1.0", HMC, &["beta: must be ≥ 0"]),
        ("lattice = [4, 4]\nn = 3\nbeta = 2.0\naction = \"wilsen\"", HMC, &["action: unknown gauge action 'wilsen'"]),
        ("lattice = [4, 1]\nn = 2\nbeta = 2.0", HMC, &["lattice", "at least 2"]),
        (
            "lattice = [4, 4]\nn = 2\nbeta = 2.0",
            "[[chain]]\nkind = \"metropolis\"",
            &["unknown step kind 'metropolis'", "hmc, flow, reweight and replica_exchange", "'sun' provides"],
        ),
    ];
    for (i, (theory, chain, needles)) in cases.into_iter().enumerate() {
        let (card, _) = write_card(dir.path(), &format!("bad{i}"), &card(theory, chain, 1, 1, 1));
        expect_failure(&["run", card.to_str().unwrap()], needles);
    }
}
