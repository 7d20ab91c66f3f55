//! `latflow bench`: a tiny card runs to the end, its numbers are consistent (N_eff ≤ N, costs
//! and rates agree, z-scores against the exact free-field value), it writes valid JSON and the
//! plots, and bad bench cards are refused with messages that name the field.

mod common;

use common::{latflow, run_ok};

/// Free field L = 4, m² = 1, convention B: ⟨φ²⟩ = (1/V) Σ_p 1 / (2 (m² + p̂²)).
fn free_phi2(l: usize, m2: f64) -> f64 {
    let mut s = 0.0;
    for a in 0..l {
        for b in 0..l {
            let ph = |k: usize| 4.0 * (std::f64::consts::PI * k as f64 / l as f64).sin().powi(2);
            s += 1.0 / (2.0 * (m2 + ph(a) + ph(b)));
        }
    }
    s / (l * l) as f64
}

fn bench_card(dir: &std::path::Path) -> String {
    format!(
        r#"
[theory]
plugin = "phi4"
lattice = [4, 4]
m2 = 1.0
lambda = 0.0

[bench]
observables = ["phi2", "magnetization"]
measurements = 4000
thermalization = 100
seed = 5
output = "{out}"

[reference]
phi2 = {phi2}

[[contender]]
name = "HMC leapfrog"
chain = [{{ kind = "hmc", md_steps = 6, trajectory_length = 1.0, trajectory_jitter = 0.5 }}]

[[contender]]
name = "HMC Omelyan"
chain = [{{ kind = "hmc", md_steps = 3, trajectory_length = 1.0, integrator = "omelyan2", trajectory_jitter = 0.5 }}]

[[contender]]
name = "flow Metropolis"
model = {{ plugin = "flow-scalar", weights = "{w}", layers = 4, hidden = [4], dtype = "f64", prior = "free", prior_m2 = 1.0 }}
train = {{ steps = 150, batch = 32, learning_rate = 3e-3 }}
chain = [{{ kind = "flow", batch = 128 }}]

[[contender]]
name = "replica exchange"
ladder = {{ parameter = "m2", values = [1.0, 1.4] }}
chain = [{{ kind = "hmc", md_steps = 6, trajectory_length = 1.0, trajectory_jitter = 0.5 }}, {{ kind = "replica_exchange" }}]

[[contender]]
name = "hybrid"
model = {{ plugin = "flow-scalar", weights = "{w}", layers = 4, hidden = [4], dtype = "f64", prior = "free", prior_m2 = 1.0 }}
chain = [{{ kind = "hmc", md_steps = 6, trajectory_length = 1.0, trajectory_jitter = 0.5 }}, {{ kind = "flow" }}]

[[contender]]
name = "HMC hopping form"
theory = {{ plugin = "phi4", lattice = [4, 4], kappa = 0.2, lambda_hat = 0.0 }}
chain = [{{ kind = "hmc", md_steps = 6, trajectory_length = 1.0, trajectory_jitter = 0.5 }}]
"#,
        out = dir.join("out").display(),
        w = dir.join("free.safetensors").display(),
        phi2 = free_phi2(4, 1.0),
    )
}

#[test]
fn bench_runs_and_reports_consistent_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let card = d.join("bench.toml");
    std::fs::write(&card, bench_card(d)).unwrap();
    let stdout = run_ok(&["bench", card.to_str().unwrap(), "--json", "-q"]);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("bench --json prints one JSON object");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/bench.json")).unwrap()).expect("bench.json is valid JSON");
    assert_eq!(json, file);
    let contenders = json["contenders"].as_array().unwrap();
    assert_eq!(contenders.len(), 6);
    for c in contenders {
        let name = c["name"].as_str().unwrap();
        let n = c["samples"].as_f64().unwrap();
        let wall = c["wall_seconds"].as_f64().unwrap();
        assert_eq!(n, 4000.0, "{name}");
        assert!(wall > 0.0, "{name}");
        for (k, a) in c["acceptance"].as_object().unwrap() {
            let a = a.as_f64().unwrap();
            assert!(a > 0.0 && a <= 1.0, "{name} {k} acceptance {a}");
        }
        for obs in ["phi2", "magnetization"] {
            let o = &c["observables"][obs];
            let eff = o["effective_samples"].as_f64().unwrap();
            let tau = o["tau_int"].as_f64().unwrap();
            let cost = o["cost_per_independent_sample_s"].as_f64().unwrap();
            let rate = o["effective_samples_per_second"].as_f64().unwrap();
            assert!(eff > 0.0 && eff <= n, "{name} {obs}: N_eff {eff} of {n}");
            assert!(tau >= 0.5, "{name} {obs}: tau {tau}");
            assert!(((eff - n / (2.0 * tau)) / eff).abs() < 1e-9, "{name} {obs}");
            assert!((cost * rate - 1.0).abs() < 1e-9, "{name} {obs}: cost {cost} rate {rate}");
            assert!(((cost - wall / eff) / cost).abs() < 1e-9, "{name} {obs}");
        }
        // z-scores are present exactly where the card gives a reference value, and exact
        let z = c["observables"]["phi2"]["z"].as_f64().expect("z for phi2");
        println!("{name}: <phi^2> z = {z:+.2}, tau_int = {:.2}", c["observables"]["phi2"]["tau_int"]);
        assert!(z.abs() < 4.0, "{name}: <phi^2> z = {z}");
        assert!(c["observables"]["magnetization"]["z"].is_null());
    }
    // training is a separate one-off cost: timed for the contender that trained, not the other
    assert!(contenders[2]["training_seconds"].as_f64().unwrap() > 0.0);
    assert!(contenders[2]["amortised_cost_s"].as_f64().unwrap() > contenders[2]["observables"]["phi2"]["cost_per_independent_sample_s"].as_f64().unwrap());
    assert!(contenders[4]["training_seconds"].is_null());
    // replica exchange: the ensemble at the target coupling, and the swap acceptance beside HMC's
    let swaps = contenders[3]["acceptance"].as_object().unwrap().iter().find(|(k, _)| k.contains("swaps")).expect("swap acceptance");
    let a = swaps.1.as_f64().unwrap();
    assert!(a > 0.0 && a < 1.0, "swap acceptance {a}");
    assert!(json["winner"].is_string() && json["winner_factor"].as_f64().unwrap() >= 1.0);
    for png in ["histories.png", "acf.png", "cost.png"] {
        let bytes = std::fs::read(d.join("out").join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png}");
    }
    // each contender's generated run card reruns on its own
    assert!(d.join("out/hmc_omelyan.toml").is_file() && d.join("out/hybrid.h5").is_file());
    // a contender's own [theory] (the free field in the hopping form: (2d + m²)κ = 1 with
    // λ̂ = 0, so κ = 1/5 is m² = 1) replaces the card's, and is measured against the common
    // reference like the others (its z-score is checked above)
    let hopping: toml::Table = std::fs::read_to_string(d.join("out/hmc_hopping_form.toml")).unwrap().parse().unwrap();
    let theory = hopping["theory"].as_table().unwrap();
    assert_eq!(theory.get("kappa").and_then(|v| v.as_float()), Some(0.2), "{theory:?}");
    assert!(!theory.contains_key("m2") && !theory.contains_key("lambda"), "the override is complete: {theory:?}");

    // the table names every contender
    let text = run_ok(&["bench", card.to_str().unwrap(), "-q"]);
    for c in ["HMC leapfrog", "HMC Omelyan", "flow Metropolis", "replica exchange", "hybrid", "HMC hopping form", "cheapest independent phi2"] {
        assert!(text.contains(c), "table lacks {c}:\n{text}");
    }
}

#[test]
fn bad_bench_cards_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = bench_card(d);
    let cases = [
        (good.replace("measurements = 4000", "measurements = 4000\nseconds = 5"), "not both"),
        (good.replace("measurements = 4000", ""), "bench: give `measurements`"),
        (good.replace("observables = [\"phi2\", \"magnetization\"]", "observables = []"), "bench.observables"),
        (good.replace("observables = [\"phi2\", \"magnetization\"]", "observables = [\"phi2\"]\nsteps = 3"), "bench.steps"),
        (good.replace("name = \"HMC Omelyan\"", "name = \"HMC leapfrog\""), "used twice"),
        (good.replace("[bench]", "[benchmark]"), "unknown section"),
        (good.split("[[contender]]").next().unwrap().to_string(), "contender: missing"),
        (good.replace("name = \"hybrid\"\n", ""), "contender[4].name: missing"),
        (good.replace("values = [1.0, 1.4]", "values = [1.2, 1.4]"), "does not contain the target's value 1"),
        (good.replace("phi2 = ", "phi2 = \"x\"\nchi = "), "reference.phi2"),
        (good.replace("[\"phi2\", \"magnetization\"]", "[\"phi2\", \"plaquette\"]"), "'plaquette' is not a scalar observable"),
        (good.replace("theory = { plugin = \"phi4\", lattice = [4, 4], kappa = 0.2, lambda_hat = 0.0 }", "theory = 3"), "contender[5].theory: must be a table"),
        (good.replace("name = \"hybrid\"\n", "name = \"hybrid\"\nreference = { phi2 = 0.1 }\n"), "contender[4].reference: not allowed"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let card = d.join(format!("bad{i}.toml"));
        std::fs::write(&card, text).unwrap();
        let out = latflow().args(["bench", card.to_str().unwrap(), "-q"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(want), "case {i}: expected '{want}' in:\n{err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
}

/// `seconds` mode: the number of sweeps comes from calibration runs (recorded under
/// `calibration`), the wall time lands near the budget (a `budget` warning says when it is more
/// than 20% off), and the report says which mode it used.
#[test]
fn wall_time_mode_calibrates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = bench_card(d).replace("measurements = 4000", "seconds = 2.0\ncalibration = 50");
    let text = text.split("[[contender]]\nname = \"HMC Omelyan\"").next().unwrap().to_string();
    let card = d.join("bench.toml");
    std::fs::write(&card, text).unwrap();
    let json: serde_json::Value = serde_json::from_str(&run_ok(&["bench", card.to_str().unwrap(), "--json", "-q"])).unwrap();
    assert!(json["mode"].as_str().unwrap().starts_with("equal wall time"), "{}", json["mode"]);
    let c = &json["contenders"][0];
    assert!(c["samples"].as_u64().unwrap() >= 10, "{c}");
    // the calibration record: runs of n and 2n sweeps, the last pair's difference measurable
    let cal = &c["calibration"];
    let sweeps: Vec<u64> = cal["sweeps"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let secs: Vec<f64> = cal["seconds"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(sweeps.len() >= 2 && sweeps.len() == secs.len() && sweeps[0] == 50, "{cal}");
    assert!(sweeps.chunks(2).all(|p| p.len() < 2 || p[1] == 2 * p[0]), "{cal}");
    let total: f64 = secs.iter().sum();
    assert!((cal["total_seconds"].as_f64().unwrap() - total).abs() < 1e-9 && cal["seconds_per_sweep"].as_f64().unwrap() > 0.0, "{cal}");
    // the wall time lands within 20% of the budget, or the contender says it did not
    let wall = c["wall_seconds"].as_f64().unwrap();
    let flagged = c["warnings"].as_array().unwrap().iter().any(|w| w["code"] == "budget");
    println!("budget 2 s: wall {wall:.2} s after {} calibration runs ({total:.2} s)", sweeps.len());
    assert_eq!(flagged, (wall - 2.0).abs() > 0.4, "{c}");
    assert!(!d.join("out/hmc_leapfrog.calibration.h5").exists(), "the calibration ensemble is removed");
    assert!(!d.join("out/hmc_leapfrog.calibration.h5.ckpt").exists(), "and its checkpoint");
}
