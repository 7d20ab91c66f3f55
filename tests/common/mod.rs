//! Shared helpers for the integration tests: run the real `latflow` binary on generated cards.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `latflow` binary cargo built for these tests.
pub fn latflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latflow"));
    c.env_remove("LATFLOW_PLUGIN_PATH");
    c
}

/// Runs `latflow ARGS` and returns its output.
pub fn run(args: &[&str]) -> Output {
    latflow().args(args).output().expect("failed to start latflow")
}

/// Runs `latflow ARGS`, panicking with stderr if it fails.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "latflow {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a card into `dir` with `{OUT}` replaced by an output path in `dir`; returns
/// (card path, output path).
pub fn write_card(dir: &Path, name: &str, text: &str) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.h5"));
    let card = dir.join(format!("{name}.toml"));
    std::fs::write(&card, text.replace("{OUT}", &out.display().to_string())).unwrap();
    (card, out)
}

/// `latflow analyze FILE --json`, parsed.
pub fn analyze_json(file: &Path) -> serde_json::Value {
    let s = run_ok(&["analyze", file.to_str().unwrap(), "--json"]);
    serde_json::from_str(&s).expect("analyze --json printed invalid JSON")
}

/// (mean, error) of a scalar observable from `analyze --json`.
pub fn scalar(json: &serde_json::Value, name: &str) -> (f64, f64) {
    let o = &json["observables"][name];
    (o["mean"].as_f64().unwrap_or_else(|| panic!("no {name} in {json}")), o["error"].as_f64().unwrap())
}

/// Asserts |measured − expected| < 4σ with σ² = σ_measured² + σ_reference², and prints z.
pub fn assert_z(what: &str, (mean, err): (f64, f64), expected: f64, ref_err: f64) {
    let sigma = (err * err + ref_err * ref_err).sqrt();
    assert!(sigma > 0.0, "{what}: zero error bar");
    let z = (mean - expected) / sigma;
    println!("{what}: {mean:.6} ± {err:.6} vs {expected:.6} ± {ref_err:.6}: z = {z:+.2}");
    assert!(z.abs() < 4.0, "{what}: {mean} ± {err} vs {expected} ± {ref_err}: |z| = {:.2} ≥ 4", z.abs());
}
