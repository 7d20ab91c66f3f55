//! Statistics that say when not to trust them: `run` and `analyze` warn (text, and the
//! `warnings` array of `--json`) on a chain that barely moves, too few samples for its τ_int, a
//! reweighting with a tiny ESS; z-scores under such a warning are marked unreliable; a healthy
//! chain gives no warning at all. Results read in value(error) notation.

mod common;

use common::{analyze_json, run_ok, write_card};

/// φ⁴ at the tutorial point (docs/reference.md §2) with the given chain and run settings.
fn phi4_card(chain: &str, run: &str, extra: &str) -> String {
    format!(
        "[theory]\nplugin = \"phi4\"\nlattice = [8, 8]\nm2 = -4.0\nlambda = 8.0\n\n{chain}\n\n[run]\nseed = 3\noutput = \"{{OUT}}\"\n{run}\n\n{extra}\n"
    )
}

const HMC: &str = "[[chain]]\nkind = \"hmc\"\nmd_steps = 10\ntrajectory_length = 1.0";
const REFERENCE: &str = "[reference]\nchi2 = [0.7442, 0.0012]\nphi2 = [0.14348, 0.00002]";

fn codes(json: &serde_json::Value) -> Vec<(String, String)> {
    json["warnings"]
        .as_array()
        .expect("a warnings array")
        .iter()
        .map(|w| (w["code"].as_str().unwrap().to_string(), w["subject"].as_str().unwrap().to_string()))
        .collect()
}

/// HMC with one leapfrog step over a trajectory of length 4 accepts almost nothing: the
/// acceptance warning, short-chain warnings, and every z-score marked unreliable.
#[test]
fn a_chain_that_barely_moves_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let chain = "[[chain]]\nkind = \"hmc\"\nmd_steps = 1\ntrajectory_length = 4.0";
    let (card, out) = write_card(dir.path(), "stuck", &phi4_card(chain, "thermalization = 100\nmeasurements = 2000", REFERENCE));
    let text = run_ok(&["run", card.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    let acc = json["acceptance"]["hmc"].as_f64().unwrap();
    let codes = codes(&json);
    println!("acceptance {acc}; warnings {codes:?}");
    assert!(acc * 2000.0 < 50.0, "the chain was meant to accept fewer than 50 proposals: {acc}");
    assert!(codes.contains(&("low_acceptance".into(), "hmc".into())), "{codes:?}");
    assert!(text.contains("warning: step hmc:") && text.contains("proposals accepted"), "{text}");
    // every reference line says its z is unreliable
    let z_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("chi2 ") || l.starts_with("phi2 ")).collect();
    let refs: Vec<&&str> = z_lines.iter().filter(|l| l.contains("unreliable")).collect();
    assert_eq!(refs.len(), 2, "{text}");
    // `run --json` on the finished run (resumed: nothing to do) records the same: the warning,
    // and both comparisons marked unreliable
    let text = run_ok(&["run", card.to_str().unwrap(), "--resume", "--json", "-q"]);
    let run: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(run["nothing_to_do"], true);
    assert_eq!(run["written"][0].as_str().unwrap(), out.to_str().unwrap());
    assert!(self::codes(&run["analysis"]).contains(&("low_acceptance".into(), "hmc".into())), "{run}");
    let cmp = run["reference"].as_array().expect("the comparison with [reference]");
    assert_eq!(cmp.len(), 2, "{run}");
    for c in cmp {
        assert_eq!(c["reliable"], false, "{c}");
        assert!(c["z"].as_f64().unwrap().is_finite() && c["reference"].as_f64().unwrap() > 0.0, "{c}");
    }
}

/// A healthy chain — the tutorial point, 20 000 HMC trajectories with acceptance ≈ 0.99 — gives
/// no warning, and its results read in value(error) notation with τ_int in sweeps and the
/// window W in the JSON.
#[test]
fn a_healthy_chain_gives_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(dir.path(), "good", &phi4_card(HMC, "thermalization = 200\nmeasurements = 20000", REFERENCE));
    let text = run_ok(&["run", card.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_eq!(codes(&json), Vec::<(String, String)>::new(), "{text}");
    assert!(!text.contains("warning") && !text.contains("unreliable"), "{text}");
    let chi2 = &json["observables"]["chi2"];
    let (mean, err, tau) = (chi2["mean"].as_f64().unwrap(), chi2["error"].as_f64().unwrap(), chi2["tau_int"].as_f64().unwrap());
    let w = chi2["window"].as_u64().expect("the Γ-method window W");
    assert!(w >= 1 && (w as f64) >= tau, "W = {w}, τ_int = {tau}");
    // value(error): the error's digits stand for the last digits of the value
    let value = chi2["value"].as_str().unwrap();
    let (v, e) = value.trim_end_matches(')').split_once('(').expect("value(error)");
    let decimals = v.split_once('.').map_or(0, |(_, d)| d.len());
    let e_read = e.parse::<f64>().unwrap() * 10f64.powi(-(decimals as i32));
    println!("chi2 = {value} (mean {mean}, error {err}), tau_int {tau}, W {w}");
    assert!((v.parse::<f64>().unwrap() - mean).abs() <= 0.5 * 10f64.powi(-(decimals as i32)), "{value} vs {mean}");
    assert!((e_read - err).abs() <= 0.5 * 10f64.powi(-(decimals as i32)) + 1e-15, "{value} vs {err}");
    assert!(text.lines().any(|l| l.starts_with("chi2 ") && l.contains(value)), "{text}");
}

/// A reweighting with an untrained flow: ESS/N far below 0.01 and a Pareto tail shape k̂ above
/// 0.7, so the weighted means carry `low_ess` and `heavy_tail` warnings and their z-scores are
/// unreliable.
#[test]
fn reweighting_with_a_tiny_ess_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let model = "[model]\nplugin = \"flow-scalar\"\nlayers = 2\nhidden = [4]\nkernel = 3";
    let extra = format!("{model}\n\n{REFERENCE}");
    let (card, out) = write_card(dir.path(), "rw", &phi4_card("[[chain]]\nkind = \"reweight\"", "measurements = 2000", &extra));
    let text = run_ok(&["run", card.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    let ess = json["reweighting"]["ess_per_sample"].as_f64().unwrap();
    let codes = codes(&json);
    println!("ESS/N {ess}; warnings {codes:?}");
    assert!(ess < 0.01, "an untrained flow at the tutorial point was meant to give ESS/N < 0.01: {ess}");
    assert!(codes.contains(&("low_ess".into(), "reweighting".into())), "{codes:?}");
    // its weights are heavy tailed too: the Pareto k̂ of their tail, and its warning
    let k = json["reweighting"]["pareto_k"].as_f64().unwrap();
    println!("Pareto k̂ {k}");
    assert!(k > 0.7, "an untrained flow was meant to give heavy-tailed weights: k̂ = {k}");
    assert!(codes.contains(&("heavy_tail".into(), "reweighting".into())), "{codes:?}");
    assert!(text.contains("Pareto tail shape"), "{text}");
    assert!(text.contains("warning: reweighting: ESS/N"), "{text}");
    assert!(text.lines().filter(|l| l.contains("unreliable")).count() >= 2, "{text}");
    // `inspect` shows the model's provenance: plugin, weights (none here) and their SHA-256
    let info = run_ok(&["inspect", out.to_str().unwrap()]);
    assert!(info.contains("model           flow-scalar"), "{info}");
    let sha = info.lines().find_map(|l| l.trim().strip_prefix("sha256")).expect("a sha256 line").trim();
    assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()), "{info}");
    assert!(info.contains("weights       none"), "{info}");
}
