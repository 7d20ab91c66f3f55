//! Reproducibility: the same seed gives the same bits, whatever the thread count, and a run
//! killed with SIGKILL at any moment resumes to exactly the bits of an uninterrupted run.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{latflow, run_ok, write_card};
use latflow_host::ensemble::{read_configs, read_ensemble, Ensemble};

/// Every number in the file that the run produced: observables, sweeps, step records, configs.
fn contents(path: &Path) -> (Ensemble, Vec<u64>) {
    let ens = read_ensemble(path).unwrap();
    let configs = match &ens.configs {
        Some(c) => read_configs(path, 0, c.count).unwrap(),
        None => Vec::new(),
    };
    (ens, configs.iter().map(|x| x.to_bits()).collect())
}

fn assert_same_bits(a: &Path, b: &Path) {
    let (ea, ca) = contents(a);
    let (eb, cb) = contents(b);
    assert_eq!(ea.sweeps, eb.sweeps);
    assert_eq!(ea.observables.len(), eb.observables.len());
    for (x, y) in ea.observables.iter().zip(&eb.observables) {
        assert_eq!(x.name, y.name);
        let bx: Vec<u64> = x.values.iter().map(|v| v.to_bits()).collect();
        let by: Vec<u64> = y.values.iter().map(|v| v.to_bits()).collect();
        assert!(bx == by, "observable {} differs between {} and {}", x.name, a.display(), b.display());
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
    assert!(ca == cb, "configurations differ between {} and {}", a.display(), b.display());
}

fn card(lattice: &str, threads: u32, meas: u64, extra_run: &str) -> String {
    format!(
        r#"
[theory]
plugin = "phi4"
lattice = {lattice}
m2 = -4.0
lambda = 8.0

[[chain]]
kind = "hmc"
md_steps = 6
integrator = "omelyan2"
trajectory_jitter = 0.1

[[chain]]
kind = "hmc"
md_steps = 3
integrator = "leapfrog"
trajectory_length = 0.3

[run]
seed = 77
start = "hot"
thermalization = 5
measurements = {meas}
save_every = 3
threads = {threads}
output = "{{OUT}}"
{extra_run}
"#
    )
}

/// 128×128 is above the φ⁴ kernel's parallel threshold, so two threads really split the work.
#[test]
fn same_seed_same_bits_with_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, o1) = write_card(dir.path(), "t1", &card("[128, 128]", 1, 12, ""));
    let (c2, o2) = write_card(dir.path(), "t2", &card("[128, 128]", 2, 12, ""));
    let (c3, o3) = write_card(dir.path(), "t1again", &card("[128, 128]", 1, 12, ""));
    run_ok(&["run", c1.to_str().unwrap(), "-q"]);
    run_ok(&["run", c2.to_str().unwrap(), "-q"]);
    run_ok(&["run", c3.to_str().unwrap(), "-q"]);
    assert_same_bits(&o1, &o3);
    assert_same_bits(&o1, &o2);
}

/// Kill the run with SIGKILL at several moments, resume each time, and compare with a run that
/// was never interrupted.
#[test]
fn sigkill_and_resume_gives_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let text = card("[16, 16]", 1, 6000, "checkpoint_every = 37");
    let (reference_card, reference) = write_card(dir.path(), "reference", &text);
    let (card, out) = write_card(dir.path(), "killed", &text);
    run_ok(&["run", reference_card.to_str().unwrap(), "-q"]);

    let card = card.to_str().unwrap();
    let mut kills = 0;
    for (attempt, delay_ms) in [120u64, 260, 90, 400, 170].iter().enumerate() {
        let mut cmd = latflow();
        cmd.args(["run", card, "-q"]);
        if attempt > 0 {
            cmd.arg("--resume");
        }
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on unix
            kills += 1;
        }
        child.wait().unwrap();
        if attempt == 0 && !Path::new(&format!("{}.ckpt", out.display())).exists() {
            // killed before the first checkpoint: start again rather than resume
            continue;
        }
        // the file left behind by a kill is readable
        read_ensemble(&out).expect("a killed run must leave a readable file");
    }
    assert!(kills >= 2, "the run finished too quickly to be killed ({kills} kills)");
    run_ok(&["run", card, "-q", "--resume"]);
    assert_same_bits(&reference, &out);

    // resuming a finished run changes nothing
    run_ok(&["run", card, "-q", "--resume"]);
    assert_same_bits(&reference, &out);
}
