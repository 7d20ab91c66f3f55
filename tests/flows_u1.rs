//! Gauge-equivariant U(1) flows inside exact samplers (flow-u1 model plugin + u1 theory plugin,
//! 2D, docs/reference.md §3): flow Metropolis, a hybrid HMC + flow chain, reweighting with log Ẑ,
//! transfer in β and in volume, and the bad inputs that must be refused. Fixed seeds; |z| < 4
//! against measured errors.

mod common;

use std::path::Path;

use common::{analyze_json, assert_z, expect_failure, log_z, run_ok, scalar, write_card};

/// Exact L = 8 values at β = 2: ⟨cos θ_P⟩, χ_top, log Z (normalised Haar measure Π dθ/2π).
const PLAQ_B2: f64 = 0.6977746580;
const CHI_B2: f64 = 0.01936404548;
const LOG_Z_B2: f64 = 52.735586655;

/// A small flow for the tests (the tutorial's architecture has 16 layers).
const FLOW: &str = "layers = 8\nhidden = [8, 8]\nkernel = 3\ndtype = \"f64\"";

fn card(dir: &Path, lattice: usize, beta: f64, model: &str, weights: &str, train: &str, chain: &str, run: &str) -> String {
    format!(
        r#"
[theory]
plugin = "u1"
lattice = [{lattice}, {lattice}]
beta = {beta}

[model]
plugin = "flow-u1"
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

/// L = 8, β = 2 with a briefly trained flow: flow Metropolis and the hybrid chain HMC×2 + flow
/// reproduce the plaquette and χ_top; reweighting reproduces the plaquette, and log Ẑ matches
/// log Z + N_links ln 2π (the flow's log q is a density with respect to plain dθ).
#[test]
fn flow_metropolis_hybrid_and_reweighting_at_beta_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = "[train]\nsteps = 300\nbatch = 64\nlearning_rate = 3e-3\nseed = 3";
    let text = card(d, 8, 2.0, FLOW, "b2.safetensors", train, "[[chain]]\nkind = \"flow\"\nbatch = 256", "seed = 4\nthermalization = 200\nmeasurements = 30000");
    let (c, out) = write_card(d, "flow", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q", "--train"]);
    let json = analyze_json(&out);
    assert_z("flow plaquette", scalar(&json, "plaquette"), PLAQ_B2, 0.0);
    assert_z("flow chi_top", scalar(&json, "topological_susceptibility"), CHI_B2, 0.0);
    let acc = json["acceptance"]["flow"].as_f64().unwrap();
    println!("U(1) flow acceptance after 300 steps: {acc:.3}");
    assert!(acc > 0.05 && acc < 1.0, "acceptance {acc}");

    let hybrid = "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3\nrepeat = 2\n\n[[chain]]\nkind = \"flow\"";
    let text = card(d, 8, 2.0, FLOW, "b2.safetensors", "", hybrid, "seed = 5\nthermalization = 100\nmeasurements = 15000");
    let (c, out) = write_card(d, "hybrid", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z("hybrid plaquette", scalar(&json, "plaquette"), PLAQ_B2, 0.0);
    assert_z("hybrid chi_top", scalar(&json, "topological_susceptibility"), CHI_B2, 0.0);

    let text = card(d, 8, 2.0, FLOW, "b2.safetensors", "", "[[chain]]\nkind = \"reweight\"\nbatch = 256", "seed = 6\nmeasurements = 30000");
    let (c, out) = write_card(d, "reweight", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z("reweight plaquette", scalar(&json, "plaquette"), PLAQ_B2, 0.0);
    let n_links = 2.0 * 64.0;
    assert_z("reweight log Z (measure dθ)", log_z(&json), LOG_Z_B2 + n_links * (2.0 * std::f64::consts::PI).ln(), 0.0);
    println!("U(1) ESS per sample: {:.3}", json["reweighting"]["ess_per_sample"].as_f64().unwrap());
}

/// The same point in f32, the default dtype: on x86-64 CPUs with AVX2 this runs the
/// explicit-register convolution kernels and the 8-lane NCP evaluation. Flow Metropolis
/// reproduces the plaquette and χ_top, and reweighting log Z (the f64 test's training seed).
#[test]
fn f32_flow_metropolis_and_reweighting_at_beta_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flow = FLOW.replace("\"f64\"", "\"f32\"");
    let train = "[train]\nsteps = 300\nbatch = 64\nlearning_rate = 3e-3\nseed = 3";
    let text = card(d, 8, 2.0, &flow, "f32.safetensors", train, "[[chain]]\nkind = \"flow\"\nbatch = 256", "seed = 14\nthermalization = 200\nmeasurements = 30000");
    let (c, out) = write_card(d, "flow32", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q", "--train"]);
    let json = analyze_json(&out);
    assert_z("f32 flow plaquette", scalar(&json, "plaquette"), PLAQ_B2, 0.0);
    assert_z("f32 flow chi_top", scalar(&json, "topological_susceptibility"), CHI_B2, 0.0);
    let acc = json["acceptance"]["flow"].as_f64().unwrap();
    println!("U(1) f32 flow acceptance after 300 steps: {acc:.3}");
    // trained: 0.054 here, 0.047 with training seed 13 (the f64 model: 0.06)
    assert!(acc > 0.03 && acc < 1.0, "acceptance {acc}");

    let text = card(d, 8, 2.0, &flow, "f32.safetensors", "", "[[chain]]\nkind = \"reweight\"\nbatch = 256", "seed = 15\nmeasurements = 30000");
    let (c, out) = write_card(d, "reweight32", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z("f32 reweight plaquette", scalar(&json, "plaquette"), PLAQ_B2, 0.0);
    assert_z("f32 reweight log Z (measure dθ)", log_z(&json), LOG_Z_B2 + 128.0 * (2.0 * std::f64::consts::PI).ln(), 0.0);
}

/// The mean training loss (reverse KL − log Z) over the history rows `from..to` (steps are 1-based).
fn mean_loss(history: &Path, from: usize, to: usize) -> f64 {
    let text = std::fs::read_to_string(history).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "loss").expect("a loss column");
    let rows: Vec<f64> = lines.map(|l| l.split(',').nth(col).unwrap().parse().unwrap()).collect();
    rows[from - 1..to].iter().sum::<f64>() / (to - from + 1) as f64
}

/// Transfer: weights trained at L = 8, β = 2 initialise a model at β = 3 (L = 8) and at L = 16
/// (β = 2). With the same short training, the transferred models reach a lower loss (a smaller
/// KL divergence, since loss = KL − log Z) than models trained from scratch, and the samplers
/// stay exact with them.
#[test]
fn transfer_in_beta_and_volume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = "[train]\nsteps = 300\nbatch = 64\nlearning_rate = 3e-3\nseed = 8";
    let text = card(d, 8, 2.0, FLOW, "base.safetensors", train, "[[chain]]\nkind = \"flow\"", "seed = 1\nmeasurements = 10");
    let (c, _) = write_card(d, "base", &text);
    run_ok(&["train", c.to_str().unwrap(), "-q"]);

    // `steps` of training at the new point, from the transferred weights or from scratch
    let train_at = |name: &str, l: usize, beta: f64, init: bool, steps: usize| -> f64 {
        let model = if init { format!("{FLOW}\ninit_from = \"{}\"", d.join("base.safetensors").display()) } else { FLOW.to_string() };
        let train = format!("[train]\nsteps = {steps}\nbatch = 64\nlearning_rate = 3e-3\nseed = 9");
        let text = card(d, l, beta, &model, &format!("{name}.safetensors"), &train, "[[chain]]\nkind = \"flow\"", "seed = 1\nmeasurements = 10");
        let (c, _) = write_card(d, name, &text);
        run_ok(&["train", c.to_str().unwrap(), "-q"]);
        mean_loss(&d.join(format!("{name}.safetensors.history.csv")), steps.saturating_sub(19).max(1), steps)
    };
    let beta3 = train_at("beta3", 8, 3.0, true, 60);
    let beta3_scratch = train_at("beta3_scratch", 8, 3.0, false, 60);
    let l16 = train_at("l16", 16, 2.0, true, 10);
    let l16_scratch = train_at("l16_scratch", 16, 2.0, false, 10);
    println!("loss after 60 steps at beta = 3: {beta3:.2} (transfer) vs {beta3_scratch:.2} (scratch)");
    println!("loss after 10 steps at L = 16: {l16:.2} (transfer) vs {l16_scratch:.2} (scratch)");
    assert!(beta3 < beta3_scratch - 3.0, "beta transfer: {beta3} vs {beta3_scratch}");
    assert!(l16 < l16_scratch - 20.0, "volume transfer: {l16} vs {l16_scratch}");

    // exact with the transferred model (the L = 16 one, briefly adapted)
    let text = card(d, 16, 2.0, FLOW, "l16.safetensors", "", "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3\n\n[[chain]]\nkind = \"flow\"", "seed = 10\nthermalization = 100\nmeasurements = 4000");
    let (c, out) = write_card(d, "l16_run", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z("transferred L = 16 hybrid plaquette", scalar(&json, "plaquette"), 0.6977746580, 0.0);
    assert_z("transferred L = 16 hybrid chi_top", scalar(&json, "topological_susceptibility"), 0.01936404563, 0.0);
}

#[test]
fn bad_u1_model_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flow = "[[chain]]\nkind = \"flow\"";
    let short = "seed = 1\nmeasurements = 10";
    // a U(1) model given to a phi4 theory
    let text = format!(
        "[theory]\nplugin = \"phi4\"\nlattice = [8, 8]\nm2 = -4.0\nlambda = 8.0\n\n[model]\nplugin = \"flow-u1\"\n\n{flow}\n\n[run]\noutput = \"{{OUT}}\"\n{short}\n"
    );
    let (c, _) = write_card(d, "phi4", &text);
    expect_failure(&["run", c.to_str().unwrap(), "-q"], &["flow-u1", "U(1)"]);
    // a lattice too small for (or not a multiple of) the mask pattern
    for l in [2, 6] {
        let text = card(d, l, 2.0, "", "none.safetensors", "", flow, short).replace("weights = ", "# weights = ");
        let (c, _) = write_card(d, &format!("small{l}"), &text);
        expect_failure(&["run", c.to_str().unwrap(), "-q"], &["mask"]);
    }
    // a scalar model given to the U(1) theory
    let text = format!(
        "[theory]\nplugin = \"u1\"\nlattice = [8, 8]\nbeta = 2.0\n\n[model]\nplugin = \"flow-scalar\"\n\n{flow}\n\n[run]\noutput = \"{{OUT}}\"\n{short}\n"
    );
    let (c, _) = write_card(d, "scalar_on_u1", &text);
    expect_failure(&["run", c.to_str().unwrap(), "-q"], &["flow-scalar"]);
}
