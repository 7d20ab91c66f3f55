//! Shared helpers for the integration tests: run the real `latflow` binary on generated cards.
#![allow(dead_code)]

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

mod fresh;

/// The `latflow` command cargo built for these tests (tests/Cargo.toml's `latflow-tested`:
/// the same `latflow_host::cli::main` as `latflow`). The first call checks that no in-tree
/// plugin library it can load is stale ([`fresh`]).
pub fn latflow() -> Command {
    static FRESH: OnceLock<()> = OnceLock::new();
    let exe = Path::new(env!("CARGO_BIN_EXE_latflow-tested"));
    FRESH.get_or_init(|| {
        fresh::check_plugins_beside(exe.parent().expect("binary directory"), &workspace_root())
    });
    let mut c = Command::new(exe);
    c.env_remove("LATFLOW_PLUGIN_PATH");
    c
}

/// Runs `latflow ARGS` and returns its output.
pub fn run(args: &[&str]) -> Output {
    latflow()
        .args(args)
        .output()
        .expect("failed to start latflow")
}

/// Runs `latflow ARGS` and asserts a clean refusal: exit code 1, no panic, and every needle in
/// stderr.
pub fn expect_failure(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "latflow {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected '{n}' in:\n{stderr}");
    }
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
    (
        o["mean"]
            .as_f64()
            .unwrap_or_else(|| panic!("no {name} in {json}")),
        o["error"].as_f64().unwrap(),
    )
}

/// log Ẑ of a reweighting analysis, with its error: `analyze --json`'s `reweighting` entry.
pub fn log_z(json: &serde_json::Value) -> (f64, f64) {
    let rw = &json["reweighting"];
    (
        rw["log_z"].as_f64().unwrap_or_else(|| panic!("no reweighting log_z in {json}")),
        rw["log_z_error"].as_f64().unwrap(),
    )
}

/// Asserts |measured − expected| < 4σ with σ² = σ_measured² + σ_reference², and prints z.
pub fn assert_z(what: &str, (mean, err): (f64, f64), expected: f64, ref_err: f64) {
    let sigma = (err * err + ref_err * ref_err).sqrt();
    assert!(sigma > 0.0, "{what}: zero error bar");
    let z = (mean - expected) / sigma;
    println!("{what}: {mean:.6} ± {err:.6} vs {expected:.6} ± {ref_err:.6}: z = {z:+.2}");
    assert!(
        z.abs() < 4.0,
        "{what}: {mean} ± {err} vs {expected} ± {ref_err}: |z| = {:.2} ≥ 4",
        z.abs()
    );
}

// ---------------------------------------------------------------------------------------------
// Building the out-of-tree crates
// ---------------------------------------------------------------------------------------------

pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// The target directory shared by the example and the fixtures.
pub fn external_target() -> PathBuf {
    workspace_root().join("target").join("external")
}

/// `cargo build --manifest-path MANIFEST` (dev profile) into [`external_target`]; returns the
/// directory holding the built libraries.
pub fn cargo_build(what: &str, manifest: &Path) -> PathBuf {
    let target = external_target();
    let start = Instant::now();
    let out = Command::new(env!("CARGO"))
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap_or_else(|e| panic!("could not start cargo to build {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} ({}) failed ({}):\n{}",
        manifest.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "built {what} in {:.1} s (target dir {})",
        start.elapsed().as_secs_f64(),
        target.display()
    );
    target.join("debug")
}

pub fn library(dir: &Path, lib_name: &str) -> PathBuf {
    let p = dir.join(format!("{DLL_PREFIX}{lib_name}{DLL_SUFFIX}"));
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

/// Builds examples/xy-plugin once; its plugin directory.
pub fn xy_plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = cargo_build(
            "the xy example plugin",
            &workspace_root().join("examples/xy-plugin/Cargo.toml"),
        );
        library(&dir, "latflow_xy");
        dir
    })
}

/// Builds the tests/fixtures workspace once; its plugin directory.
pub fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = cargo_build(
            "the test fixture plugins",
            &workspace_root().join("tests/fixtures/Cargo.toml"),
        );
        for lib in ["latflow_faulty", "latflow_faultmatrix", "latflow_badabi", "latflow_badlayout"] {
            library(&dir, lib);
        }
        dir
    })
}

// ---------------------------------------------------------------------------------------------
// Bit-for-bit comparison of ensembles, and kill/resume
// ---------------------------------------------------------------------------------------------

/// Every number in the file that the run produced: observables, sweeps, step records, configs.
pub fn contents(path: &Path) -> (latflow_host::ensemble::Ensemble, Vec<u64>) {
    let ens = latflow_host::ensemble::read_ensemble(path).unwrap();
    let configs = match &ens.configs {
        Some(c) => latflow_host::ensemble::read_configs(path, 0, c.count).unwrap(),
        None => Vec::new(),
    };
    (ens, configs.iter().map(|x| x.to_bits()).collect())
}

/// Every stored number of a plain or replica-exchange ensemble as bits, coupling by coupling:
/// sweeps, observables, step records (flags and columns) and configurations. Equal for two
/// files exactly when their data are bit-identical (provenance such as timestamps aside).
pub fn all_bits(path: &Path) -> Vec<u64> {
    let file = latflow_host::ensemble::read(path).unwrap_or_else(|e| panic!("{e}"));
    let mut bits = Vec::new();
    for (k, c) in file.couplings.iter().enumerate() {
        bits.extend(c.sweeps.iter().copied());
        for o in &c.observables {
            bits.extend(o.values.iter().map(|x| x.to_bits()));
        }
        for s in &c.steps {
            bits.extend(s.accepted.iter().map(|&a| a as u64));
            bits.extend(s.columns.iter().flat_map(|(_, v)| v.iter().map(|x| x.to_bits())));
        }
        if let Some(info) = &c.configs {
            bits.extend(file.read_configs(k, 0, info.count).unwrap().iter().map(|x| x.to_bits()));
        }
    }
    bits
}

pub fn assert_same_bits(a: &Path, b: &Path) {
    let (ea, ca) = contents(a);
    let (eb, cb) = contents(b);
    assert_eq!(ea.sweeps, eb.sweeps);
    assert_eq!(ea.observables.len(), eb.observables.len());
    for (x, y) in ea.observables.iter().zip(&eb.observables) {
        assert_eq!(x.name, y.name);
        let bx: Vec<u64> = x.values.iter().map(|v| v.to_bits()).collect();
        let by: Vec<u64> = y.values.iter().map(|v| v.to_bits()).collect();
        assert!(
            bx == by,
            "observable {} differs between {} and {}",
            x.name,
            a.display(),
            b.display()
        );
    }
    assert_eq!(ea.steps.len(), eb.steps.len());
    for (x, y) in ea.steps.iter().zip(&eb.steps) {
        assert_eq!(x.accepted, y.accepted, "accept flags of {}", x.label);
        for ((nx, vx), (ny, vy)) in x.columns.iter().zip(&y.columns) {
            assert_eq!(nx, ny);
            let bx: Vec<u64> = vx.iter().map(|v| v.to_bits()).collect();
            let by: Vec<u64> = vy.iter().map(|v| v.to_bits()).collect();
            assert!(bx == by, "step column {}/{nx} differs", x.label);
        }
    }
    assert!(!ca.is_empty(), "no configurations stored");
    assert!(
        ca == cb,
        "configurations differ between {} and {}",
        a.display(),
        b.display()
    );
}

/// Runs `card` and SIGKILLs it after each delay (ms), resuming from the checkpoint each time
/// (or starting afresh if the first kill came before any checkpoint), then runs it to the end
/// with `--resume`. Returns how many times the run was really killed.
pub fn kill_and_resume(card: &str, out: &Path, delays_ms: &[u64]) -> usize {
    let ckpt = PathBuf::from(format!("{}.ckpt", out.display()));
    let mut kills = 0;
    for delay in delays_ms {
        let mut cmd = latflow();
        cmd.args(["run", card, "-q"]);
        if ckpt.exists() {
            cmd.arg("--resume");
        } else {
            cmd.arg("--force");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(*delay));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on unix
            kills += 1;
        }
        child.wait().unwrap();
        if out.exists() {
            latflow_host::ensemble::read_ensemble(out)
                .expect("a killed run must leave a readable file");
        }
    }
    if ckpt.exists() {
        run_ok(&["run", card, "-q", "--resume"]);
    } else {
        run_ok(&["run", card, "-q", "--force"]);
    }
    kills
}

// ---------------------------------------------------------------------------------------------
// Exact 2D U(1) results (docs/reference.md §3)
// ---------------------------------------------------------------------------------------------

/// I_n(x) for n ≥ 0 by its power series Σ_k (x/2)^{2k+n} / (k! (k+n)!).
pub fn bessel_i(n: u32, x: f64) -> f64 {
    let h = 0.5 * x;
    let mut term = (1..=n).fold(1.0, |t, j| t * h / f64::from(j));
    let mut sum = term;
    for k in 1..200u32 {
        term *= h * h / (f64::from(k) * f64::from(k + n));
        sum += term;
        if term < 1e-18 * sum {
            break;
        }
    }
    sum
}

/// ⟨W_A⟩ = Σ_n I_n^{V−A} I_{n+1}^A / Σ_n I_n^V on a 2D torus of V plaquettes (docs/reference.md §3);
/// A = 1 is the plaquette ⟨cos θ_P⟩. Computed with ratios I_n/I_0 so that nothing overflows.
pub fn exact_wilson_loop(beta: f64, v: i32, a: i32) -> f64 {
    let i0 = bessel_i(0, beta);
    let r = |n: i32| bessel_i(n.unsigned_abs(), beta) / i0;
    let (mut num, mut den) = (0.0, 0.0);
    for n in -40..=40 {
        num += r(n).powi(v - a) * r(n + 1).powi(a);
        den += r(n).powi(v);
    }
    num / den
}
