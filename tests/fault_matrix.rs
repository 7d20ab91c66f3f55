//! The plugin fault matrix: one fault injected into one method of a theory plugin written with
//! the SDK (tests/fixtures/fault-matrix-plugin), for every method and every kind of fault the
//! method can show: a panic, an error, NaN or infinity in its result, a wrong size, a very slow
//! call. The host never aborts or panics itself; a failure exits with code 1 and one error line
//! that names the plugin and the ABI call; a failed run leaves nothing that blocks a rerun
//! without `--force`; a slow call changes nothing but the time.

mod common;

use std::path::Path;
use std::process::Output;

use common::{fixtures_dir, latflow, write_card};

/// Which command exercises a method.
#[derive(Clone, Copy, Debug)]
enum Card {
    /// `run` with HMC and the theory's `jitter` step.
    Chain,
    /// `run` of a two-coupling replica-exchange ladder over `mass`.
    Ladder,
    /// `train` of a small flow-scalar model.
    Train,
}

/// What must happen.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Exit code 1; the error line names the plugin, one of these ABI calls, and each mention.
    Fails(&'static [&'static str], &'static [&'static str]),
    /// Exit code 0 and the same output as without the fault.
    Same,
    /// Exit code 0; every HMC trajectory is rejected (a non-finite force makes H non-finite,
    /// and the Metropolis test rejects it): the chain stays exact, and acceptance 0 is reported.
    Rejected,
}

use Card::*;
use Expect::*;

const NEW: &[&str] = &["new_theory"];

/// The matrix: (method, kind, card, expectation).
const MATRIX: &[(&str, &str, Card, Expect)] = &[
    ("from_config", "panic", Chain, Fails(NEW, &["panic in `from_config`"])),
    ("from_config", "error", Chain, Fails(NEW, &["error in `from_config`"])),
    ("from_config", "slow", Chain, Same),
    ("layout", "panic", Chain, Fails(NEW, &["panic in `layout`"])),
    ("layout", "slow", Chain, Same),
    ("params_json", "panic", Chain, Fails(NEW, &["panic in `params_json`"])),
    ("params_json", "slow", Chain, Same),
    ("observables", "panic", Chain, Fails(NEW, &["panic in `observables`"])),
    ("observables", "slow", Chain, Same),
    ("initial", "panic", Chain, Fails(&["initial"], &["panic in `initial`"])),
    ("initial", "nan", Chain, Fails(&["initial"], &["NaN"])),
    ("initial", "inf", Chain, Fails(&["initial"], &["inf"])),
    ("initial", "wrong_size", Chain, Fails(&["initial"], &["3 reals", "4"])),
    ("initial", "slow", Chain, Same),
    ("measure", "panic", Chain, Fails(&["measure"], &["panic in `measure`"])),
    ("measure", "error", Chain, Fails(&["measure"], &["error in `measure`"])),
    ("measure", "nan", Chain, Fails(&["measure"], &["NaN"])),
    ("measure", "inf", Chain, Fails(&["measure"], &["inf"])),
    ("measure", "wrong_size", Chain, Fails(&["measure"], &["0 observable values", "1"])),
    ("measure", "slow", Chain, Same),
    ("action_levels", "panic", Chain, Fails(&["hmc"], &["panic in `action_levels`"])),
    ("action_levels", "error", Chain, Fails(&["hmc"], &["error in `action_levels`"])),
    ("action_levels", "slow", Chain, Same),
    ("term_refresh", "panic", Chain, Fails(&["hmc"], &["panic in `term_refresh`"])),
    ("term_refresh", "error", Chain, Fails(&["hmc"], &["ultralocal", "error in `term_refresh`"])),
    ("term_refresh", "slow", Chain, Same),
    ("term_action", "panic", Chain, Fails(&["hmc"], &["panic in `term_action`"])),
    ("term_action", "error", Chain, Fails(&["hmc"], &["ultralocal", "error in `term_action`"])),
    ("term_action", "nan", Chain, Fails(&["hmc"], &["NaN"])),
    ("term_action", "inf", Chain, Fails(&["hmc"], &["inf"])),
    ("term_action", "slow", Chain, Same),
    ("term_force", "panic", Chain, Fails(&["hmc"], &["panic in `term_force`"])),
    ("term_force", "error", Chain, Fails(&["hmc"], &["ultralocal", "error in `term_force`"])),
    ("term_force", "nan", Chain, Rejected),
    ("term_force", "inf", Chain, Rejected),
    ("term_force", "slow", Chain, Same),
    ("step_columns", "panic", Chain, Fails(&["step_columns"], &["panic in `step_columns`"])),
    ("step_columns", "error", Chain, Fails(&["step_columns"], &["error in `step_columns`"])),
    ("step_columns", "slow", Chain, Same),
    ("step", "panic", Chain, Fails(&["step"], &["panic in `step`"])),
    ("step", "error", Chain, Fails(&["step"], &["error in `step`"])),
    ("step", "nan", Chain, Fails(&["step"], &["NaN"])),
    ("step", "inf", Chain, Fails(&["step"], &["inf"])),
    ("step", "wrong_size", Chain, Fails(&["step"], &["2 values", "expected 1"])),
    ("step", "slow", Chain, Same),
    ("parameter", "panic", Ladder, Fails(&["parameter"], &["panic in `parameter`"])),
    ("parameter", "error", Ladder, Fails(&["parameter"], &["error in `parameter`"])),
    ("parameter", "nan", Ladder, Fails(&["parameter"], &["NaN"])),
    ("parameter", "inf", Ladder, Fails(&["parameter"], &["inf"])),
    ("parameter", "slow", Ladder, Same),
    ("set_parameter", "panic", Ladder, Fails(&["set_parameter"], &["panic in `set_parameter`"])),
    ("set_parameter", "error", Ladder, Fails(&["set_parameter"], &["error in `set_parameter`"])),
    ("set_parameter", "slow", Ladder, Same),
    ("action", "panic", Ladder, Fails(&["action"], &["panic in `action`"])),
    ("action", "nan", Ladder, Fails(&["action"], &["NaN"])),
    ("action", "inf", Ladder, Fails(&["action"], &["inf"])),
    ("action", "slow", Ladder, Same),
    ("action_grad", "panic", Train, Fails(&["action_grad"], &["training failed", "panic in `action_grad`"])),
    ("action_grad", "nan", Train, Fails(&["action_grad"], &["training diverged", "NaN"])),
    ("action_grad", "inf", Train, Fails(&["action_grad"], &["training diverged", "inf"])),
    ("action_grad", "slow", Train, Same),
];

fn card_text(card: Card, fault: &str) -> String {
    let theory = format!("[theory]\nplugin = \"faultmatrix\"\nlattice = [4]\n{fault}slow_ms = 100\n");
    match card {
        Chain => format!(
            "{theory}\n[[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n[[chain]]\nkind = \"jitter\"\n\n\
             [run]\nseed = 1\nthermalization = 2\nmeasurements = 5\noutput = \"{{OUT}}\"\n"
        ),
        Ladder => format!(
            "{theory}\n[ladder]\nparameter = \"mass\"\nvalues = [1.0, 1.2]\n\n[[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n\
             [[chain]]\nkind = \"replica_exchange\"\n\n[run]\nseed = 1\nthermalization = 2\nmeasurements = 5\noutput = \"{{OUT}}\"\n"
        ),
        Train => format!(
            "{theory}\n[model]\nplugin = \"flow-scalar\"\nlayers = 2\nhidden = [4]\nweights = \"w.safetensors\"\n\n\
             [train]\nsteps = 3\nbatch = 4\nseed = 1\n\n[[chain]]\nkind = \"flow\"\n\n\
             [run]\nseed = 1\nmeasurements = 5\noutput = \"{{OUT}}\"\n"
        ),
    }
}

fn command(card: Card) -> &'static str {
    match card {
        Train => "train",
        _ => "run",
    }
}

/// Runs `latflow COMMAND CARD` with the fixtures' plugin directory.
fn latflow_on(dir: &Path, cmd: &str, card: &Path) -> Output {
    latflow()
        .env_remove("RUST_BACKTRACE")
        .arg("--plugin-dir")
        .arg(fixtures_dir())
        .args([cmd, card.to_str().unwrap(), "-q"])
        .current_dir(dir)
        .output()
        .expect("failed to start latflow")
}

fn exit_code(what: &str, out: &Output) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), None, "{what}: killed by a signal:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.code().expect("exit code")
}

/// The run's results: the ensemble's numbers (for `run`) or the weights (for `train`).
fn results(dir: &Path, card: Card, out: &Path) -> Vec<u8> {
    match card {
        Train => std::fs::read(dir.join("w.safetensors")).unwrap(),
        _ => common::all_bits(out).iter().flat_map(|b| b.to_le_bytes()).collect(),
    }
}

/// One cell of the matrix, in its own directory.
fn check(method: &str, kind: &str, card: Card, expect: Expect, baseline: &dyn Fn(Card) -> Vec<u8>) {
    let what = format!("{method}:{kind}");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (path, out) = write_card(d, "card", &card_text(card, &format!("fault = \"{what}\"\n")));
    let first = latflow_on(d, command(card), &path);
    let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
    let code = exit_code(&what, &first);
    for line in stderr.lines().filter(|l| l.contains("panicked at")) {
        assert!(line.contains("fault-matrix-plugin/src/"), "{what}: the host panicked:\n{stderr}");
    }
    match expect {
        Fails(calls, mentions) => {
            assert_eq!(code, 1, "{what}: exit code {code}:\n{stderr}");
            let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{what}: no error line:\n{stderr}"));
            assert!(error.contains("'faultmatrix'"), "{what}: the plugin is not named: {error}");
            assert!(calls.iter().any(|c| error.contains(&format!("`{c}`"))), "{what}: none of {calls:?} named: {error}");
            for m in mentions {
                assert!(error.contains(m), "{what}: {m:?} not mentioned: {error}");
            }
            assert!(stderr.len() < 2000, "{what}: {} bytes of stderr:\n{stderr}", stderr.len());
            // nothing was measured, so nothing blocks the same command again without --force:
            // it fails the same way rather than at "already exists"
            let again = latflow_on(d, command(card), &path);
            let stderr2 = String::from_utf8_lossy(&again.stderr);
            assert_eq!(exit_code(&what, &again), 1, "{what}: rerun:\n{stderr2}");
            let error2 = stderr2.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
            assert_eq!(error2, error, "{what}: the rerun failed differently:\n{stderr2}");
            println!("{what}: {error}");
        }
        Same => {
            assert_eq!(code, 0, "{what}: exit code {code}:\n{stderr}");
            assert!(results(d, card, &out) == baseline(card), "{what}: a slow call changed the results");
            println!("{what}: same results");
        }
        Rejected => {
            assert_eq!(code, 0, "{what}: exit code {code}:\n{stderr}");
            let ens = latflow_host::ensemble::read_ensemble(&out).unwrap();
            let hmc = ens.steps.iter().find(|s| s.kind == "hmc").expect("hmc step");
            assert!(hmc.accepted.iter().all(|&a| a == 0), "{what}: a trajectory with a non-finite force was accepted");
            println!("{what}: every trajectory rejected");
        }
    }
}

/// Cells run four at a time (each in its own directory): most of a cell's time is process
/// start-up and the sleeps of `slow` faults, not computation.
#[test]
fn every_method_and_every_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let baseline_of = |card: Card| {
        let d = tmp.path().join(format!("{card:?}"));
        std::fs::create_dir(&d).unwrap();
        let (path, _) = write_card(&d, "card", &card_text(card, ""));
        let out = latflow_on(&d, command(card), &path);
        assert!(out.status.success(), "{card:?} without a fault: {}", String::from_utf8_lossy(&out.stderr));
        results(&d, card, &d.join("card.h5"))
    };
    let baselines = [baseline_of(Chain), baseline_of(Ladder), baseline_of(Train)];
    let baseline = |card: Card| baselines[card as usize].clone();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((method, kind, card, expect)) = MATRIX.get(i) else { break };
                    check(method, kind, *card, *expect, &baseline);
                })
            })
            .collect();
        for w in workers {
            if let Err(e) = w.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}
