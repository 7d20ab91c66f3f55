//! The kill-anywhere soak (run by tools/soak.sh; ignored by the normal suite, it takes
//! minutes): runs killed with SIGKILL at random moments and resumed, against uninterrupted
//! runs of the same cards.
//!
//! Four scenarios take turns: a φ⁴ HMC chain, a flow Metropolis + HMC hybrid chain (flow-scalar),
//! a replica-exchange ladder, and flow training. Checkpoints are written every few sweeps or
//! steps, so many kills land while a checkpoint is being written (counted from the temporary
//! file the atomic write leaves behind). After every kill the output must be readable (the
//! ensemble by the reader, the checkpoint by `--resume`); the finished run must be
//! bit-identical to the uninterrupted one (every stored number, or the weights and the
//! training history).
//!
//! `LATFLOW_SOAK_RUNS` (default 50) sets the number of killed runs and `LATFLOW_SOAK_SEED`
//! (default 1) the seed of the kill times. The summary is printed at the end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{all_bits, latflow, run_ok, write_card};
use latflow_core::Stream;

const PHI4: &str = "[theory]\nplugin = \"phi4\"\nlattice = [16, 16]\nm2 = -4.0\nlambda = 8.0\n";

/// The run cards of the scenarios, by name; `{W}` is the weights file of the flow scenarios.
fn scenario_card(name: &str) -> String {
    let run = "[run]\nseed = 3\nthermalization = 20\nmeasurements = 1500\nsave_every = 50\ncheckpoint_every = 3\noutput = \"{OUT}\"\n";
    let hmc = "[[chain]]\nkind = \"hmc\"\nmd_steps = 8\n";
    let model = "[model]\nplugin = \"flow-scalar\"\nlayers = 2\nhidden = [4]\nweights = \"{W}\"\n";
    match name {
        "hmc" => format!("{PHI4}\n{hmc}\n{}", run.replace("measurements = 1500", "measurements = 3000")),
        "hybrid" => format!("{PHI4}\n{model}\n{hmc}\n[[chain]]\nkind = \"flow\"\n\n{run}"),
        "replica" => format!(
            "{PHI4}\n[ladder]\nparameter = \"lambda\"\nvalues = [8.0, 7.0, 6.0]\n\n{hmc}\n[[chain]]\nkind = \"replica_exchange\"\n\n{run}"
        ),
        "train" => format!(
            "{PHI4}\n{model}\n[train]\nsteps = 400\nbatch = 32\nseed = 2\ncheckpoint_every = 5\n\n[[chain]]\nkind = \"flow\"\n\n\
             [run]\nseed = 1\nmeasurements = 2\noutput = \"{{OUT}}\"\n"
        ),
        other => unreachable!("{other}"),
    }
}

/// What one scenario writes and how it is compared.
struct Scenario {
    name: &'static str,
    command: &'static str,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario { name: "hmc", command: "run" },
    Scenario { name: "hybrid", command: "run" },
    Scenario { name: "replica", command: "run" },
    Scenario { name: "train", command: "train" },
];

/// Writes scenario `s`'s card as `DIR/NAME.toml`; its output (ensemble or weights) path and
/// its checkpoint path.
fn prepare(dir: &Path, s: &Scenario, name: &str, weights: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let w = if s.command == "train" { dir.join(format!("{name}.safetensors")) } else { weights.to_path_buf() };
    let text = scenario_card(s.name).replace("{W}", &w.display().to_string());
    let (card, out) = write_card(dir, name, &text);
    let (output, ckpt) = if s.command == "train" {
        (w.clone(), PathBuf::from(format!("{}.train.ckpt", w.display())))
    } else {
        (out.clone(), PathBuf::from(format!("{}.ckpt", out.display())))
    };
    (card, output, ckpt)
}

/// The result to compare: every stored number, or the weights plus the history without its
/// wall-time column.
fn fingerprint(s: &Scenario, output: &Path) -> Vec<u8> {
    if s.command == "train" {
        let mut v = std::fs::read(output).unwrap();
        let history = std::fs::read_to_string(format!("{}.history.csv", output.display())).unwrap();
        for line in history.lines() {
            v.extend_from_slice(line.rsplit_once(',').map_or(line, |(a, _)| a).as_bytes());
        }
        v
    } else {
        all_bits(output).iter().flat_map(|b| b.to_le_bytes()).collect()
    }
}

/// Whether a checkpoint write was under way: its temporary file is left behind.
fn checkpoint_write_interrupted(ckpt: &Path) -> bool {
    let dir = ckpt.parent().unwrap();
    let stem = ckpt.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n != stem && n.starts_with(&stem)
        })
}

/// Whether the ensemble `output` has a live undo journal beside it (`OUTPUT.journal` whose head
/// is not voided): its writer died inside a flush.
fn live_journal(output: &Path) -> bool {
    let mut j = output.as_os_str().to_owned();
    j.push(".journal");
    std::fs::read(j).is_ok_and(|b| b.starts_with(b"LFJRNL01"))
}

#[derive(Default, Debug)]
struct Tally {
    runs: usize,
    kills: usize,
    during_checkpoint_write: usize,
    /// Kills that left a live ensemble journal: a flush had overwritten committed bytes and
    /// not yet committed, so the file had to be rolled back.
    during_flush: usize,
    resumed_from_checkpoint: usize,
    restarted_fresh: usize,
}

#[test]
#[ignore = "the kill-anywhere soak: minutes; run tools/soak.sh"]
fn kill_anywhere_soak() {
    let runs: usize = std::env::var("LATFLOW_SOAK_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("LATFLOW_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // weights for the hybrid chain, and an uninterrupted reference run of every scenario
    let (train_card, weights, _) = prepare(d, &SCENARIOS[3], "model", Path::new(""));
    run_ok(&["train", train_card.to_str().unwrap(), "-q"]);
    let mut references = Vec::new();
    for s in &SCENARIOS {
        let (card, output, _) = prepare(d, s, &format!("{}_reference", s.name), &weights);
        let t = Instant::now();
        run_ok(&[s.command, card.to_str().unwrap(), "-q"]);
        let wall = t.elapsed();
        println!("{}: uninterrupted run {:.2} s", s.name, wall.as_secs_f64());
        references.push((fingerprint(s, &output), wall));
    }

    let mut rng = Stream::new(seed, 0);
    let mut tally: Vec<Tally> = SCENARIOS.iter().map(|_| Tally::default()).collect();
    for i in 0..runs {
        let k = i % SCENARIOS.len();
        let s = &SCENARIOS[k];
        let (card, output, ckpt) = prepare(d, s, &format!("{}_{i}", s.name), &weights);
        let card = card.to_str().unwrap();
        let t = &mut tally[k];
        t.runs += 1;
        // one to three kills, each at a uniformly random moment of the run's expected length
        let kills = 1 + (rng.next_u64() % 3) as usize;
        for _ in 0..kills {
            let resume = ckpt.exists();
            let mut child = latflow()
                .args([s.command, card, "-q", if resume { "--resume" } else { "--force" }])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let delay = references[k].1.mul_f64(rng.uniform());
            std::thread::sleep(delay.min(Duration::from_secs(60)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                t.kills += 1;
                if resume {
                    t.resumed_from_checkpoint += 1;
                } else {
                    t.restarted_fresh += 1;
                }
            }
            child.wait().unwrap();
            if checkpoint_write_interrupted(&ckpt) {
                t.during_checkpoint_write += 1;
            }
            if live_journal(&output) {
                t.during_flush += 1;
            }
            if s.command == "run" && output.exists() {
                latflow_host::ensemble::read(&output)
                    .unwrap_or_else(|e| panic!("{} run {i}: a killed run left an unreadable file: {e}", s.name));
            }
        }
        let finished = if s.command == "train" { output.exists() } else { false };
        if !finished {
            run_ok(&[s.command, card, "-q", if ckpt.exists() { "--resume" } else { "--force" }]);
        }
        assert!(
            fingerprint(s, &output) == references[k].0,
            "{} run {i}: the resumed run differs from the uninterrupted one",
            s.name
        );
    }
    let total: usize = tally.iter().map(|t| t.kills).sum();
    for (s, t) in SCENARIOS.iter().zip(&tally) {
        println!(
            "{:8} runs {:3}  kills {:3}  during a checkpoint write {:3}  inside a flush (rolled back) {:3}  of a resumed run {:3}  of a fresh start {:3}  bit-identical {:3}/{:3}",
            s.name, t.runs, t.kills, t.during_checkpoint_write, t.during_flush, t.resumed_from_checkpoint, t.restarted_fresh, t.runs, t.runs
        );
    }
    println!("soak: {runs} runs, {total} SIGKILLs, every resumed run bit-identical, no unreadable file");
    assert!(total >= runs, "too few kills landed ({total} for {runs} runs): the runs end too soon");
}
