//! SU(N) gauge theory through the whole pipeline — card → sun plugin .so → HMC → HDF5 →
//! Γ-method analysis — against the exact 2D values of docs/reference.md §4 (the plaquette
//! u = ⟨Re Tr U_P⟩/N and the area law ⟨W(A)⟩ = u^A), with fixed seeds and |z| < 4 against the
//! measured errors. Also: bad cards are refused with exit code 1, naming the key.
//!
//! The plugin's .so must be built (`cargo build --workspace`, or `cargo test --workspace`).

mod common;

use common::{analyze_json, assert_z, bessel_i, expect_failure, run_ok, scalar, write_card};

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

/// Heat-bath + overrelaxation (the theory's own step kinds) alone, and composed with HMC in one
/// chain: 2D SU(3) at β = 2 (u = 0.1286277853) and SU(2) at β = 4, each with the area law.
#[test]
fn heatbath_and_hybrid_chains_reproduce_the_2d_values() {
    let hb = "[[chain]]\nkind = \"heatbath\"\n\n[[chain]]\nkind = \"overrelax\"\nrepeat = 2\n";
    let hybrid = format!("{HMC}\n{hb}");
    for (n, beta, u, chain, seed) in [(3, 2.0, 0.1286277853, hb.to_string(), 21), (2, 4.0, 0.6580472674, hybrid, 22)] {
        let theory = format!("lattice = [8, 8]\nn = {n}\nbeta = {beta}\nwilson_loops = [[1, 2]]");
        let name = format!("su{n}_b{beta}_hb");
        let json = run(&name, &card(&theory, &chain, seed, 50, 2000));
        assert_z(&format!("{name} plaquette"), scalar(&json, "plaquette"), u, 0.0);
        assert_z(&format!("{name} W(1x2)"), scalar(&json, "wilson_loop_1x2"), u.powi(2), 0.0);
        assert_eq!(json["acceptance"]["heatbath"].as_f64(), Some(1.0), "{json}");
    }
}

/// Reference §5 small-volume plaquettes by heat-bath + overrelaxation through the pipeline:
/// SU(3) 4⁴ at β = 5.7 and SU(2) 4⁴ at β = 2.3 (the reference errors added in quadrature).
#[test]
fn heatbath_reproduces_the_4d_small_volume_plaquettes() {
    let chain = "[[chain]]\nkind = \"heatbath\"\n\n[[chain]]\nkind = \"overrelax\"\nrepeat = 3\n";
    for (n, beta, p, err, seed) in [(3, 5.7, 0.560245, 0.000173, 31), (2, 2.3, 0.609331, 0.000188, 32)] {
        let theory = format!("lattice = [4, 4, 4, 4]\nn = {n}\nbeta = {beta}");
        let json = run(&format!("su{n}_4d_hb"), &card(&theory, chain, seed, 100, 1500));
        assert_z(&format!("SU({n}) 4^4 beta {beta} heat-bath plaquette"), scalar(&json, "plaquette"), p, err);
    }
}

/// 2D SU(2): u(β) = I₂(β)/I₁(β) (docs/reference.md §4, a_j/d_j = 2 I_{2j+1}(β)/β).
fn su2_plaquette(beta: f64) -> f64 {
    bessel_i(2, beta) / bessel_i(1, beta)
}

/// Heat-bath steps inside a replica ladder over β (with swaps): every coupling exact.
#[test]
fn heatbath_composes_with_replica_exchange() {
    let text = r#"
[theory]
plugin = "sun"
lattice = [8, 8]
n = 2
beta = 2.0

[ladder]
parameter = "beta"
values = [1.8, 2.0, 2.2]

[[chain]]
kind = "heatbath"

[[chain]]
kind = "overrelax"

[[chain]]
kind = "replica_exchange"

[run]
seed = 41
thermalization = 50
measurements = 2000
save_every = 0
output = "{OUT}"
"#;
    assert!((su2_plaquette(2.0) - 0.4331274267).abs() < 1e-9);
    let json = run("su2_ladder", text);
    let reps = json["replicas"].as_array().expect("a replica-exchange analysis");
    for (k, beta) in [1.8, 2.0, 2.2].into_iter().enumerate() {
        assert_z(&format!("ladder beta {beta} plaquette"), scalar(&reps[k], "plaquette"), su2_plaquette(beta), 0.0);
    }
}

/// Every bad `[theory]` key and an unknown step kind are refused before anything runs.
#[test]
fn bad_cards_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str]); 10] = [
        (
            "lattice = [4, 4]\nn = 3\nbeta = 2.0\naction = \"iwasaki\"",
            "[[chain]]\nkind = \"heatbath\"",
            &["action: 'heatbath' steps sample the Wilson action only", "iwasaki", "hmc"],
        ),
        ("lattice = [4, 5]\nn = 2\nbeta = 2.0", "[[chain]]\nkind = \"overrelax\"", &["lattice", "extent 5 along axis 1 is odd"]),
        ("lattice = [4, 4]\nn = 2\nbeta = 2.0", "[[chain]]\nkind = \"heatbath\"\nsweeps = 2", &["sweeps", "takes no options"]),
        ("lattice = [4, 4]\nn = 4\nbeta = 2.0", HMC, &["n: SU(N) is supported for n = 2 and n = 3, got 4"]),
        ("lattice = [4, 4]\nn = 3\nbeta = nan", HMC, &["beta"]),
        ("lattice = [4, 4]\nn = 3\nbeta = inf", HMC, &["beta"]),
        ("lattice = [4, 4]\nn = 3\nbeta = -1.0", HMC, &["beta: must be ≥ 0"]),
        ("lattice = [4, 4]\nn = 3\nbeta = 2.0\naction = \"wilsen\"", HMC, &["action: unknown gauge action 'wilsen'"]),
        ("lattice = [4, 1]\nn = 2\nbeta = 2.0", HMC, &["lattice", "at least 2"]),
        (
            "lattice = [4, 4]\nn = 2\nbeta = 2.0",
            "[[chain]]\nkind = \"metropolis\"",
            &["unknown step kind 'metropolis'", "hmc, flow, reweight, anneal and replica_exchange", "'sun' provides"],
        ),
    ];
    for (i, (theory, chain, needles)) in cases.into_iter().enumerate() {
        let (card, _) = write_card(dir.path(), &format!("bad{i}"), &card(theory, chain, 1, 1, 1));
        expect_failure(&["run", card.to_str().unwrap()], needles);
    }
}
