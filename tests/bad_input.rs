//! Bad input gets a clear error and exit code 1 — never a panic, an abort or a silent wrong
//! answer. Each case states what the message must name.

mod common;

use std::path::Path;

use common::{run, run_ok, write_card};

const GOOD: &str = r#"
[theory]
plugin = "phi4"
lattice = [4, 4]
m2 = -4.0
lambda = 8.0

[[chain]]
kind = "hmc"
md_steps = 10
integrator = "omelyan2"

[run]
seed = 1
thermalization = 10
measurements = 50
save_every = 10
output = "{OUT}"
"#;

/// Runs `latflow ARGS` and checks: exit code 1, "error:" on stderr, every `needle` present,
/// no panic text.
fn expect_error(args: &[&str], needles: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "latflow {args:?}: expected exit code 1, got {}:\n{stderr}", out.status);
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "latflow {args:?} panicked:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "latflow {args:?}: expected '{n}' in:\n{stderr}");
    }
    stderr
}

/// A card with `from` replaced by `to`; the error must name the card file and `needles`.
fn bad_card(dir: &Path, name: &str, from: &str, to: &str, needles: &[&str]) {
    assert!(GOOD.contains(from), "test bug: '{from}' not in the card");
    let (card, _) = write_card(dir, name, &GOOD.replace(from, to));
    let file = format!("{name}.toml");
    let mut all = vec![file.as_str()];
    all.extend_from_slice(needles);
    expect_error(&["run", card.to_str().unwrap(), "-q"], &all);
}

#[test]
fn bad_run_cards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let theory = "[theory]\nplugin = \"phi4\"\nlattice = [4, 4]\nm2 = -4.0\nlambda = 8.0\n";
    bad_card(d, "no_theory", theory, "", &["theory", "missing"]);
    bad_card(d, "unknown_plugin", "plugin = \"phi4\"", "plugin = \"phi5\"", &["theory.plugin", "phi5", "latflow plugins"]);
    bad_card(d, "missing_so", "plugin = \"phi4\"", "plugin = \"/no/such/libplugin.so\"", &["theory.plugin", "/no/such/libplugin.so"]);
    bad_card(d, "typo_chain_key", "md_steps = 10", "md_step = 10", &["chain[0]", "md_step"]);
    bad_card(d, "typo_theory_key", "lambda = 8.0", "lamda = 8.0", &["[theory]", "phi4", "new_theory", "lamda"]);
    bad_card(d, "typo_run_key", "seed = 1", "sede = 1", &["run", "sede"]);
    bad_card(d, "negative_extent", "lattice = [4, 4]", "lattice = [4, -4]", &["lattice", "-4"]);
    bad_card(d, "zero_extent", "lattice = [4, 4]", "lattice = [0, 4]", &["lattice", "extent 0"]);
    bad_card(d, "empty_lattice", "lattice = [4, 4]", "lattice = []", &["lattice"]);
    bad_card(d, "nan_coupling", "m2 = -4.0", "m2 = nan", &["theory.m2", "finite"]);
    bad_card(d, "inf_coupling", "lambda = 8.0", "lambda = inf", &["theory.lambda", "finite"]);
    bad_card(d, "negative_lambda", "lambda = 8.0", "lambda = -1.0", &["lambda", "≥ 0"]);
    bad_card(d, "unstable_free_field", "lambda = 8.0", "lambda = 0.0", &["m2", "m2 > 0"]);
    bad_card(d, "zero_md_steps", "md_steps = 10", "md_steps = 0", &["chain[0].md_steps", "at least 1"]);
    bad_card(d, "negative_md_steps", "md_steps = 10", "md_steps = -2", &["chain[0].md_steps"]);
    bad_card(d, "wrong_type", "md_steps = 10", "md_steps = \"ten\"", &["chain[0].md_steps", "invalid type"]);
    bad_card(d, "wrong_type_lattice", "lattice = [4, 4]", "lattice = \"4x4\"", &["lattice", "invalid type"]);
    bad_card(d, "unknown_integrator", "\"omelyan2\"", "\"verlet\"", &["chain[0].integrator", "verlet"]);
    bad_card(d, "unknown_step_kind", "kind = \"hmc\"", "kind = \"heatbath\"", &["chain[0].kind", "heatbath"]);
    bad_card(d, "zero_measurements", "measurements = 50", "measurements = 0", &["run.measurements"]);
    bad_card(d, "bad_jitter", "md_steps = 10", "md_steps = 10\ntrajectory_jitter = 1.5", &["trajectory_jitter"]);
    bad_card(d, "missing_dir", "output = \"{OUT}\"", "output = \"/no/such/dir/x.h5\"", &["run.output", "/no/such/dir"]);
    bad_card(d, "not_toml", "[run]", "[run", &["not valid TOML"]);
    bad_card(d, "unknown_section", "[run]", "[runn]\nx = 1\n[run]", &["runn", "unknown section"]);
    bad_card(d, "unknown_reference", "[run]", "[reference]\nchi3 = 1.0\n[run]", &["reference.chi3", "chi2"]);
    bad_card(d, "bad_reference", "[run]", "[reference]\nchi2 = [1.0, -1.0]\n[run]", &["reference.chi2"]);
    bad_card(d, "vector_reference", "[run]", "[reference]\ncorrelator = 1.0\n[run]", &["reference.correlator"]);
    bad_card(d, "nested_too_deep", "md_steps = 10", "md_steps = 10\ntime_scales = [2, 2]", &["hmc", "level"]);
}

/// Plugin-specific HMC options (`options`, passed as `HmcParams::extra`) are validated by the
/// plugin: phi4 takes none, so any key is refused with its name, never silently ignored.
#[test]
fn unknown_hmc_options_are_refused_by_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("md_steps = 10", "md_steps = 10\noptions = { solver_tol = 1e-8 }");
    let (card, _) = write_card(dir.path(), "options", &text);
    expect_error(&["run", card.to_str().unwrap(), "-q"], &["phi4", "extra options", "solver_tol"]);
}

#[test]
fn missing_card_file() {
    expect_error(&["run", "/no/such/card.toml"], &["/no/such/card.toml", "cannot read"]);
}

#[test]
fn existing_output_needs_force_or_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(dir.path(), "exists", GOOD);
    std::fs::write(&out, b"precious").unwrap();
    expect_error(&["run", card.to_str().unwrap(), "-q"], &["run.output", "already exists", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious", "an existing file was touched");
    run_ok(&["run", card.to_str().unwrap(), "-q", "--force"]);
}

#[test]
fn resume_without_checkpoint_or_from_another_card() {
    let dir = tempfile::tempdir().unwrap();
    let (card, _) = write_card(dir.path(), "fresh", GOOD);
    expect_error(&["run", card.to_str().unwrap(), "-q", "--resume"], &["fresh.toml", "no checkpoint", "--resume"]);

    // a finished run leaves a checkpoint; a different card pointing at the same output is refused
    run_ok(&["run", card.to_str().unwrap(), "-q"]);
    let other = GOOD.replace("seed = 1", "seed = 2").replace("{OUT}", &dir.path().join("fresh.h5").display().to_string());
    let other_card = dir.path().join("other.toml");
    std::fs::write(&other_card, other).unwrap();
    expect_error(&["run", other_card.to_str().unwrap(), "-q", "--resume"], &["other.toml", "different run card"]);
}

#[test]
fn resume_of_a_finished_run_says_that_nothing_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(dir.path(), "done", GOOD);
    let first = run_ok(&["run", card.to_str().unwrap(), "-q"]);
    assert!(first.contains("wrote"), "{first}");
    let bytes = std::fs::read(&out).unwrap();
    let again = run_ok(&["run", card.to_str().unwrap(), "-q", "--resume"]);
    assert!(again.contains("nothing to do") && again.contains("is complete") && !again.contains("wrote"), "{again}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes, "a resume with nothing to do changed the file");
}

#[test]
fn corrupt_or_truncated_hdf5_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.h5");
    std::fs::write(&junk, (0..4096u32).map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8).collect::<Vec<_>>()).unwrap();
    for cmd in ["analyze", "inspect"] {
        expect_error(&[cmd, junk.to_str().unwrap()], &["junk.h5"]);
    }
    let empty = dir.path().join("empty.h5");
    std::fs::write(&empty, b"").unwrap();
    expect_error(&["analyze", empty.to_str().unwrap()], &["empty.h5"]);
    expect_error(&["analyze", "/no/such/file.h5"], &["/no/such/file.h5"]);

    // a real ensemble cut in half
    let (card, out) = write_card(dir.path(), "real", GOOD);
    run_ok(&["run", card.to_str().unwrap(), "-q"]);
    let bytes = std::fs::read(&out).unwrap();
    let cut = dir.path().join("truncated.h5");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&["analyze", cut.to_str().unwrap()], &["truncated.h5"]);

    // one flipped bit in a stored measurement: the chunk checksum catches it
    let (ens, _) = common::contents(&out);
    let obs = &ens.observables[0];
    let value = obs.values[obs.values.len() / 2].to_le_bytes();
    let hits: Vec<usize> = bytes.windows(8).enumerate().filter(|(_, w)| *w == value).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "the measurement is stored once");
    let mut damaged = bytes.clone();
    damaged[hits[0] + 3] ^= 0x40;
    let flipped = dir.path().join("flipped.h5");
    std::fs::write(&flipped, &damaged).unwrap();
    let object = format!("observables/{}", obs.name);
    expect_error(&["analyze", flipped.to_str().unwrap()], &["flipped.h5", &object, "checksum"]);

    // a damaged checkpoint is refused on --resume, naming it
    let ckpt = format!("{}.ckpt", out.display());
    std::fs::write(&ckpt, b"LFCKPT01garbage").unwrap();
    expect_error(&["run", card.to_str().unwrap(), "-q", "--resume"], &["real.h5.ckpt"]);
}

/// A file on which HDF5 itself loops forever (found by fuzzing: a damaged global heap) ends
/// every command that opens an existing ensemble with a clear error after
/// LATFLOW_READ_TIMEOUT_S seconds, not a hang: `analyze`, `inspect`, `flow`, `export`, `run`
/// before replacing such an output, `run --resume` onto it, and a run that starts from it.
#[test]
fn a_file_that_hangs_hdf5_is_refused_after_the_read_limit() {
    let hang = common::workspace_root().join("fuzz/known-upstream/ensemble/timeout-d31a185e30be91b9008b6b43a9dda8bc5727621e");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let limited = |args: &[&str], needle: &str| {
        let t = std::time::Instant::now();
        let out = common::latflow().env("LATFLOW_READ_TIMEOUT_S", "2").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle) && stderr.contains("damaged") && stderr.contains("after 2 s"), "{args:?}: {stderr}");
        assert!(t.elapsed().as_secs() < 60, "{args:?} took {:?}", t.elapsed());
    };
    let h = hang.to_str().unwrap();
    for cmd in ["inspect", "analyze"] {
        limited(&[cmd, h], "timeout-d31a185e");
    }
    limited(&["flow", h, "--tmax", "0.1"], "timeout-d31a185e");
    limited(&["export", h, "--ildg", d.join("ildg").to_str().unwrap()], "timeout-d31a185e");
    // an existing output without a checkpoint is read before it is replaced
    let (card, out) = write_card(d, "over", GOOD);
    std::fs::copy(&hang, &out).unwrap();
    limited(&["run", card.to_str().unwrap(), "-q"], "over.h5");
    // --resume reopens the output with a valid checkpoint beside it
    let (card, out) = write_card(d, "resumed", GOOD);
    run_ok(&["run", card.to_str().unwrap(), "-q"]);
    std::fs::copy(&hang, &out).unwrap();
    limited(&["run", card.to_str().unwrap(), "-q", "--resume"], "resumed.h5");
    // a run that starts from it
    let start = GOOD.replace("[run]\n", &format!("[run]\nstart = {{ file = \"{h}\" }}\n"));
    let (card, _) = write_card(d, "started", &start);
    limited(&["run", card.to_str().unwrap(), "-q"], "timeout-d31a185e");

    let out = common::latflow().env("LATFLOW_READ_TIMEOUT_S", "soon").args(["inspect", h]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("LATFLOW_READ_TIMEOUT_S") && stderr.contains("soon"), "{stderr}");
}
