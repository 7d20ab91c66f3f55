//! Reproducibility: the same seed gives the same bits, whatever the thread count, and a run
//! killed with SIGKILL at any moment resumes to exactly the bits of an uninterrupted run.

mod common;

use common::{assert_same_bits, kill_and_resume, run_ok, write_card};

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
    let text = card("[16, 16]", 1, 40000, "checkpoint_every = 37");
    let (reference_card, reference) = write_card(dir.path(), "reference", &text);
    let (card, out) = write_card(dir.path(), "killed", &text);
    run_ok(&["run", reference_card.to_str().unwrap(), "-q"]);

    let card = card.to_str().unwrap();
    let kills = kill_and_resume(card, &out, &[120, 260, 90, 400, 170]);
    assert!(kills >= 2, "the run finished too quickly to be killed ({kills} kills)");
    assert_same_bits(&reference, &out);

    // resuming a finished run changes nothing
    run_ok(&["run", card, "-q", "--resume"]);
    assert_same_bits(&reference, &out);
}
