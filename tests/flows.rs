//! Normalizing flows inside exact samplers (flow-scalar model plugin + phi4 theory plugin):
//! training across the plugin boundary, flow Metropolis, reweighting, hybrid HMC + flow chains,
//! and the bad inputs that must be refused. Fixed seeds; |z| < 4 against measured errors.

mod common;

use std::path::Path;

use common::{analyze_json, assert_z, expect_failure, log_z, run_ok, scalar, write_card};

/// A card with a theory, a model (weights in `dir`), optional training, a chain and a run.
fn card(dir: &Path, theory: &str, model: &str, weights: &str, train: &str, chain: &str, run: &str) -> String {
    format!(
        r#"
[theory]
plugin = "phi4"
{theory}

[model]
plugin = "flow-scalar"
weights = "{w}"
{model}

{train}

{chain}

[run]
output = "{{OUT}}"
{run}
"#,
        w = dir.join(weights).display()
    )
}

const FREE: &str = "lattice = [8, 8]\nm2 = 1.0\nlambda = 0.0";
const TUTORIAL: &str = "lattice = [8, 8]\nm2 = -4.0\nlambda = 8.0";
const SMALL_FLOW: &str = "layers = 8\nhidden = [8, 8]\nkernel = 3";

/// Free field L = 8, m² = 1 (convention B) with a briefly trained flow: flow Metropolis gives
/// ⟨φ²⟩ and C(0); reweighting gives ⟨φ²⟩ and log Ẑ = log Z_B (flat measure Π dφ).
#[test]
fn free_field_flow_metropolis_reweighting_and_log_z() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = "[train]\nsteps = 300\nbatch = 64\nlearning_rate = 3e-3\nseed = 3";
    // `run --train` trains first, because the weights do not exist yet
    let text = card(d, FREE, SMALL_FLOW, "free.safetensors", train, "[[chain]]\nkind = \"flow\"", "seed = 4\nthermalization = 200\nmeasurements = 30000");
    let (c, out) = write_card(d, "free_flow", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q", "--train"]);
    assert!(d.join("free.safetensors").is_file() && d.join("free.safetensors.history.csv").is_file());
    let json = analyze_json(&out);
    let g_b = 0.254173997690 / 2.0;
    assert_z("flow free <phi^2>", scalar(&json, "phi2"), g_b, 0.0);
    let c0 = &json["observables"]["correlator"];
    assert_z("flow free C(0)", (c0["mean"][0].as_f64().unwrap(), c0["error"][0].as_f64().unwrap()), 0.4476190476 / 2.0, 0.0);
    let acc = json["acceptance"]["flow"].as_f64().unwrap();
    println!("free-field flow acceptance after 300 steps: {acc:.3}");
    assert!(acc > 0.05 && acc < 1.0, "acceptance {acc}");

    let text = card(d, FREE, SMALL_FLOW, "free.safetensors", "", "[[chain]]\nkind = \"reweight\"", "seed = 5\nmeasurements = 30000");
    let (c, out) = write_card(d, "free_rw", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z("reweight free <phi^2>", scalar(&json, "phi2"), g_b, 0.0);
    let rw = &json["reweighting"];
    assert_z("reweight free log Z_B", log_z(&json), -11.6228852573, 0.0);
    let ess = rw["ess_per_sample"].as_f64().unwrap();
    println!("free-field ESS per sample: {ess:.3}");
    assert!(ess > 0.0 && ess <= 1.0);
}

/// Tutorial point: flow Metropolis, and the hybrid chain HMC×5 + flow, reproduce χ₂ and
/// ⟨|M|⟩/V (docs/reference.md §2) with a briefly trained flow.
#[test]
fn tutorial_point_flow_and_hybrid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `before_run = true`: `run` trains first, because the weights do not exist yet
    let train = "[train]\nsteps = 400\nbatch = 64\nlearning_rate = 3e-3\nseed = 7\nbefore_run = true";
    let text = card(d, TUTORIAL, SMALL_FLOW, "tut.safetensors", train, "[[chain]]\nkind = \"flow\"", "seed = 8\nthermalization = 500\nmeasurements = 40000");
    let (c, out) = write_card(d, "tut_flow", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    assert!(d.join("tut.safetensors").is_file());
    let json = analyze_json(&out);
    assert_z("flow tutorial chi2", scalar(&json, "chi2"), 0.7442, 0.0012);
    assert_z("flow tutorial <|M|>/V", scalar(&json, "abs_magnetization"), 0.08705, 0.00008);
    println!("tutorial flow acceptance after 400 steps: {:.3}", json["acceptance"]["flow"].as_f64().unwrap());

    let hybrid = "[[chain]]\nkind = \"hmc\"\nmd_steps = 10\ntrajectory_length = 1.0\nrepeat = 5\n\n[[chain]]\nkind = \"flow\"";
    let text = card(d, TUTORIAL, SMALL_FLOW, "tut.safetensors", "", hybrid, "seed = 9\nthermalization = 100\nmeasurements = 8000");
    let (c, out) = write_card(d, "tut_hybrid", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z("hybrid tutorial chi2", scalar(&json, "chi2"), 0.7442, 0.0012);
    assert_z("hybrid tutorial <|M|>/V", scalar(&json, "abs_magnetization"), 0.08705, 0.00008);
    let acc = json["acceptance"].as_object().unwrap();
    assert!(acc.contains_key("hmc") && acc.contains_key("flow"), "{acc:?}");
    assert_eq!(json["steps"]["hmc"]["n"], 40000, "five trajectories per sweep");
}

/// An untrained model (no weights: seeded initial weights) still gives the exact answer —
/// with low acceptance. 2×2 free field, ⟨φ²⟩_B = ¼ Σ_p 1/(p̂² + 1) / 2 = 0.1888…
#[test]
fn untrained_model_is_still_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = r#"
[theory]
plugin = "phi4"
lattice = [2, 2]
m2 = 1.0
lambda = 0.0

[model]
plugin = "flow-scalar"
layers = 2
hidden = [4]
kernel = 1

[[chain]]
kind = "flow"

[run]
seed = 12
thermalization = 100
measurements = 60000
output = "{OUT}"
"#;
    let (c, out) = write_card(d, "untrained", text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    let exact = 0.25 * (1.0 + 2.0 / 5.0 + 1.0 / 9.0) / 2.0;
    assert_z("untrained flow 2x2 <phi^2>", scalar(&json, "phi2"), exact, 0.0);
    let acc = json["acceptance"]["flow"].as_f64().unwrap();
    println!("untrained acceptance: {acc:.3}");
    assert!(acc < 0.5, "an untrained model should accept rarely, got {acc}");
}

/// Flow chains are reproducible and resumable: SIGKILL + resume of a hybrid chain (whose flow
/// step keeps unused proposals across sweeps) gives the same bits as an uninterrupted run.
#[test]
fn flow_chain_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[theory]
plugin = "phi4"
{TUTORIAL}

[model]
plugin = "flow-scalar"
layers = 2
hidden = [4]

[[chain]]
kind = "hmc"
md_steps = 4

[[chain]]
kind = "flow"
batch = 7
repeat = 2

[run]
seed = 21
thermalization = 3
measurements = 4000
save_every = 50
checkpoint_every = 37
output = "{{OUT}}"
"#
    );
    let (c_ref, o_ref) = write_card(d, "reference", &text);
    run_ok(&["run", c_ref.to_str().unwrap(), "-q"]);
    let (c, o) = write_card(d, "resumed", &text);
    let kills = common::kill_and_resume(c.to_str().unwrap(), &o, &[150, 300, 200]);
    assert!(kills >= 1, "the run finished before it could be killed");
    common::assert_same_bits(&o_ref, &o);
}

#[test]
fn bad_model_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flow = "[[chain]]\nkind = \"flow\"";
    let short = "seed = 1\nmeasurements = 10";

    // `flow` in a chain with no [model]
    let text = format!("[theory]\nplugin = \"phi4\"\n{TUTORIAL}\n\n{flow}\n\n[run]\noutput = \"{{OUT}}\"\n{short}\n");
    let (c, _) = write_card(d, "no_model", &text);
    expect_failure(&["run", c.to_str().unwrap()], &["no_model.toml", "chain[0].kind", "[model]"]);

    // weights that do not exist, without [train]
    let (c, _) = write_card(d, "missing_w", &card(d, TUTORIAL, SMALL_FLOW, "nope.safetensors", "", flow, short));
    expect_failure(&["run", c.to_str().unwrap()], &["model.weights", "does not exist"]);

    // train a tiny model, then: a truncated weights file; weights of another architecture
    let train = "[train]\nsteps = 5\nbatch = 8\nseed = 1";
    let (c, _) = write_card(d, "tiny", &card(d, TUTORIAL, "layers = 2\nhidden = [4]", "tiny.safetensors", train, flow, short));
    // `run` never trains on its own: it names the command that does
    expect_failure(&["run", c.to_str().unwrap()], &["model.weights", "does not exist", "latflow train", "tiny.toml", "--train"]);
    assert!(!d.join("tiny.safetensors").exists());
    run_ok(&["train", c.to_str().unwrap(), "-q"]);
    let bytes = std::fs::read(d.join("tiny.safetensors")).unwrap();
    std::fs::write(d.join("cut.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let (c, _) = write_card(d, "cut", &card(d, TUTORIAL, "layers = 2\nhidden = [4]", "cut.safetensors", "", flow, short));
    expect_failure(&["run", c.to_str().unwrap()], &["cut.toml", "model.weights", "flow-scalar"]);
    let (c, _) = write_card(d, "other_arch", &card(d, TUTORIAL, "layers = 4\nhidden = [4]", "tiny.safetensors", "", flow, short));
    expect_failure(&["run", c.to_str().unwrap()], &["other_arch.toml", "model.weights", "layers"]);
    // one flipped bit in the tensor data: the recorded digest no longer matches
    let mut flipped = bytes.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x08;
    std::fs::write(d.join("flipped.safetensors"), &flipped).unwrap();
    let (c, _) = write_card(d, "flipped", &card(d, TUTORIAL, "layers = 2\nhidden = [4]", "flipped.safetensors", "", flow, short));
    expect_failure(&["run", c.to_str().unwrap()], &["flipped.safetensors", "tensor '", "SHA-256", "damaged"]);

    // a model whose field layout does not match the theory: the XY plugin's angles
    let xy = common::xy_plugin_dir();
    let text = format!(
        "[theory]\nplugin = \"xy\"\nlattice = [8, 8]\nbeta = 1.0\n\n[model]\nplugin = \"flow-scalar\"\n\n{flow}\n\n[run]\noutput = \"{{OUT}}\"\n{short}\n"
    );
    let (c, _) = write_card(d, "xy_flow", &text);
    expect_failure(&["--plugin-dir", xy.to_str().unwrap(), "run", c.to_str().unwrap()], &["xy_flow.toml", "[model]", "flow-scalar"]);

    // bad model keys name the key
    let (c, _) = write_card(d, "bad_key", &card(d, TUTORIAL, "layerz = 3", "x.safetensors", "", flow, short));
    expect_failure(&["run", c.to_str().unwrap()], &["[model]", "layerz"]);
    let (c, _) = write_card(d, "odd_kernel", &card(d, TUTORIAL, "kernel = 2", "x.safetensors", "", flow, short));
    expect_failure(&["run", c.to_str().unwrap()], &["[model]", "kernel"]);
    let odd_lattice = "lattice = [7, 8]\nm2 = -4.0\nlambda = 8.0";
    let (c, _) = write_card(d, "odd_l", &card(d, odd_lattice, SMALL_FLOW, "x.safetensors", "", flow, short));
    expect_failure(&["run", c.to_str().unwrap()], &["odd_l.toml", "odd"]);
}

/// NaN during training is detected, reported with the step number, and the last good
/// checkpoint is kept (the faulty theory plugin returns NaN gradients after 25 calls).
#[test]
fn nan_during_training_is_reported_and_the_checkpoint_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixtures = common::fixtures_dir();
    let text = format!(
        r#"
[theory]
plugin = "faulty"
lattice = [4, 4]
fault = "nan_grad"
after = 25

[model]
plugin = "flow-scalar"
weights = "{w}"
layers = 2
hidden = [4]

[train]
steps = 100
batch = 8
checkpoint_every = 10

[[chain]]
kind = "flow"

[run]
seed = 1
measurements = 10
output = "{{OUT}}"
"#,
        w = d.join("nan.safetensors").display()
    );
    let (c, _) = write_card(d, "nan", &text);
    expect_failure(
        &["--plugin-dir", fixtures.to_str().unwrap(), "train", c.to_str().unwrap()],
        &["nan.toml", "diverged at step 26", "step 20", "nan.safetensors.train.ckpt"],
    );
    assert!(d.join("nan.safetensors.train.ckpt").is_file());
    assert!(!d.join("nan.safetensors").exists(), "no weights are written from a diverged run");
}

/// Weights are standard safetensors: Python's `safetensors` reads them, with the architecture in
/// the metadata. CI installs `safetensors` and sets LATFLOW_REQUIRE_SAFETENSORS=1, making this
/// mandatory there; elsewhere it is skipped (with a message) when the package is missing.
#[test]
fn python_safetensors_reads_the_weights() {
    let probe = "import safetensors.numpy, numpy";
    let have = std::process::Command::new("python3").args(["-c", probe]).status().is_ok_and(|s| s.success());
    if !have {
        assert!(std::env::var_os("LATFLOW_REQUIRE_SAFETENSORS").is_none(), "python safetensors is required but missing");
        eprintln!("python safetensors not available: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = "[train]\nsteps = 3\nbatch = 8\nseed = 1";
    let text = card(d, TUTORIAL, "layers = 2\nhidden = [4]", "w.safetensors", train, "[[chain]]\nkind = \"flow\"", "seed = 1\nmeasurements = 2");
    let (c, _) = write_card(d, "py", &text);
    run_ok(&["train", c.to_str().unwrap(), "-q"]);
    let script = r#"
import sys, json
from safetensors import safe_open
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
with safe_open(sys.argv[1], framework="numpy") as f:
    meta = f.metadata()
arch = json.loads(meta["latflow.architecture"])
print(json.dumps({"names": sorted(t.keys()), "layers": arch["layers"],
                  "w0": list(t["layers.0.conv0.weight"].shape), "format": meta["latflow.format"]}))
"#;
    let o = std::process::Command::new("python3").arg("-c").arg(script).arg(d.join("w.safetensors")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["layers"], 2);
    assert_eq!(v["format"], "1");
    // two layers, each conv0 (1 → 4) and conv1 (4 → 2), weight and bias
    assert_eq!(v["names"].as_array().unwrap().len(), 8, "{v}");
    assert_eq!(v["w0"], serde_json::json!([3, 3, 1, 4]));
}

/// A 4-layer flow at the tutorial point with the `[train]` section `train`, its weights at
/// `DIR/NAME.safetensors`; returns the card's path.
fn small_training_card(d: &Path, name: &str, train: &str) -> std::path::PathBuf {
    let text = card(d, TUTORIAL, "layers = 4\nhidden = [8]", &format!("{name}.safetensors"), train, "[[chain]]\nkind = \"flow\"", "seed = 1\nmeasurements = 2");
    write_card(d, name, &text).0
}

/// A training run killed with SIGKILL and resumed from its checkpoint ends with the same weights,
/// bit for bit, as an uninterrupted one (model, Adam state, RNG and history are checkpointed).
#[test]
fn training_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = "[train]\nsteps = 1200\nbatch = 16\ncheckpoint_every = 7\nseed = 5\nschedule = { kind = \"cosine\", steps = 1200, min_lr = 1e-5, warmup = 10 }";
    let make = |name: &str| small_training_card(d, name, train);
    let reference = make("reference");
    run_ok(&["train", reference.to_str().unwrap(), "-q"]);
    let resumed = make("resumed");
    let ckpt = d.join("resumed.safetensors.train.ckpt");
    let mut kills = 0;
    // long enough (several seconds) that the kills land mid-run on an idle machine too
    for delay in [300u64, 600, 400] {
        let mut cmd = common::latflow();
        cmd.args(["train", resumed.to_str().unwrap(), "-q"]);
        cmd.arg(if ckpt.exists() { "--resume" } else { "--force" });
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 1, "training finished before it could be killed");
    if d.join("resumed.safetensors").exists() {
        // the last attempt finished by itself
    } else {
        run_ok(&["train", resumed.to_str().unwrap(), "-q", if ckpt.exists() { "--resume" } else { "--force" }]);
    }
    let a = std::fs::read(d.join("reference.safetensors")).unwrap();
    let b = std::fs::read(d.join("resumed.safetensors")).unwrap();
    assert!(a == b, "resumed training gave different weights");
    let ha = std::fs::read_to_string(d.join("reference.safetensors.history.csv")).unwrap();
    let hb = std::fs::read_to_string(d.join("resumed.safetensors.history.csv")).unwrap();
    // identical except the wall-time column
    let strip = |h: &str| h.lines().map(|l| l.rsplit_once(',').map_or(l, |(a, _)| a).to_string()).collect::<Vec<_>>();
    let (sa, sb) = (strip(&ha), strip(&hb));
    assert_eq!(sa.len(), sb.len(), "history lengths differ");
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(x, y, "history rows differ");
    }
}

/// `train --minutes`: the training stops after the first step past the budget with that step's
/// weights and a checkpoint, says so, and `--resume` ends with the weights of an uninterrupted
/// training, bit for bit. A budget that is not a positive number is refused. (4000 steps: the
/// small model's steps take well under 0.1 ms each, so fewer could all fit in the budget.)
#[test]
fn training_with_a_wall_time_budget_stops_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let make = |name: &str| small_training_card(d, name, "[train]\nsteps = 4000\nbatch = 16\ncheckpoint_every = 1000\nseed = 6");
    let reference = make("reference");
    run_ok(&["train", reference.to_str().unwrap(), "-q"]);
    let budgeted = make("budgeted");
    let out = common::run(&["train", budgeted.to_str().unwrap(), "-q", "--minutes", "0.004"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped by --minutes") && stderr.contains("--resume"), "{stderr}");
    let history = std::fs::read_to_string(d.join("budgeted.safetensors.history.csv")).unwrap();
    let done = history.lines().count() - 1;
    assert!(done > 0 && done < 4000, "{done} steps in a budget of 0.24 s");
    assert!(stderr.contains(&format!("after step {done} of 4000")), "{stderr}");
    assert!(d.join("budgeted.safetensors").exists() && d.join("budgeted.safetensors.train.ckpt").exists());
    run_ok(&["train", budgeted.to_str().unwrap(), "-q", "--resume"]);
    let a = std::fs::read(d.join("reference.safetensors")).unwrap();
    let b = std::fs::read(d.join("budgeted.safetensors")).unwrap();
    assert!(a == b, "a training stopped by its budget and resumed gave different weights");
    for bad in ["0", "-1", "nan", "inf"] {
        let arg = format!("--minutes={bad}");
        expect_failure(&["train", budgeted.to_str().unwrap(), "-q", "--resume", &arg], &["--minutes", "positive"]);
    }
}

/// Rational-quadratic spline couplings inside flow Metropolis and reweighting: free field,
/// L = 4, m² = 1, ⟨φ²⟩_B = 0.263492063492/2 (docs/reference.md §1), log Ẑ = log Z_B = −2.8581318146.
#[test]
fn spline_flow_is_exact_on_the_free_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let theory = "lattice = [4, 4]\nm2 = 1.0\nlambda = 0.0";
    let model = "coupling = \"spline\"\nspline_bins = 4\nlayers = 4\nhidden = [8]";
    let train = "[train]\nsteps = 150\nbatch = 64\nlearning_rate = 3e-3\nseed = 2";
    let text = card(d, theory, model, "spline.safetensors", train, "[[chain]]\nkind = \"flow\"", "seed = 3\nthermalization = 100\nmeasurements = 20000");
    let (c, out) = write_card(d, "spline_flow", &text);
    run_ok(&["train", c.to_str().unwrap(), "-q"]);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    let exact = 0.263492063492 / 2.0;
    assert_z("spline flow free <phi^2>", scalar(&json, "phi2"), exact, 0.0);
    println!("spline flow acceptance: {:.3}", json["acceptance"]["flow"].as_f64().unwrap());

    let text = card(d, theory, model, "spline.safetensors", "", "[[chain]]\nkind = \"reweight\"", "seed = 4\nmeasurements = 20000");
    let (c, out) = write_card(d, "spline_rw", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z("spline reweight free <phi^2>", scalar(&json, "phi2"), exact, 0.0);
    assert_z("spline reweight log Z_B", log_z(&json), -2.8581318146, 0.0);
}
