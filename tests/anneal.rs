//! The `anneal` step (non-equilibrium candidate Monte Carlo) through the whole pipeline, on 2D
//! U(1) at L = 8 against the exact values of docs/reference.md §3: opening a one-plaquette defect
//! (u1's `defect_coupling` parameter) at β = 6, where HMC alone barely changes the topological charge,
//! and lowering β itself at β = 3. Fixed seeds, |z| < 4, Jarzynski's ⟨e^{−W}⟩ = 1. Also: a replica
//! ladder over the defect's coupling (parallel tempering in the boundary conditions) is exact at
//! its physical coupling, a killed run resumes to the same bits, and bad anneal cards are
//! refused naming the key. The same for u1's `defect_snf` step, the protocol with trained flow
//! layers.

mod common;

use common::{analyze_json, assert_same_bits, assert_z, exact_wilson_loop, expect_failure, kill_and_resume, run_ok, scalar, write_card};

fn card(beta: f64, defect: &str, anneal: &str, seed: u64, meas: u64, extra_run: &str) -> String {
    format!(
        r#"
[theory]
plugin = "u1"
lattice = [8, 8]
beta = {beta}
{defect}

[[chain]]
kind = "hmc"
md_steps = 4
trajectory_jitter = 0.2

[[chain]]
kind = "anneal"
{anneal}

[run]
seed = {seed}
thermalization = 100
measurements = {meas}
save_every = 0
threads = 1
output = "{{OUT}}"
{extra_run}
"#
    )
}

/// The defect protocol of the headline: 5 switches each way, 10 extra trajectories with the
/// defect open, HMC trajectories of length 2.
const DEFECT: &str = "parameter = \"defect_coupling\"\nto = 0.0\nstages = 5\nhold = 10\n\
                      hmc = { md_steps = 8, trajectory_length = 2.0, trajectory_jitter = 0.2 }";

/// Runs the card and checks the exact plaquette, 2×2 loop, χ_top and ⟨Q⟩ at L = 8, ⟨e^{−ΔH}⟩ and
/// ⟨e^{−W}⟩; returns (τ_int(Q) in sweeps, the anneal acceptance).
fn check_exact(name: &str, text: &str, beta: f64, chi_top: f64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (c, out) = write_card(dir.path(), name, text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    let plaquette = exact_wilson_loop(beta, 64, 1);
    assert_z(&format!("{name} plaquette"), scalar(&json, "plaquette"), plaquette, 0.0);
    assert_z(&format!("{name} W(2x2)"), scalar(&json, "wilson_loop_2x2"), exact_wilson_loop(beta, 64, 4), 0.0);
    assert_z(&format!("{name} chi_top"), scalar(&json, "topological_susceptibility"), chi_top, 0.0);
    assert_z(&format!("{name} <Q>"), scalar(&json, "topological_charge"), 0.0, 0.0);
    let pair = |v: &serde_json::Value| (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
    assert_z(&format!("{name} <exp(-dH)>"), pair(&json["steps"]["hmc"]["exp_minus_delta_h"]), 1.0, 0.0);
    let anneal = &json["steps"]["anneal"];
    assert_z(&format!("{name} <exp(-W)>"), pair(&anneal["exp_minus_work"]), 1.0, 0.0);
    let acc = json["acceptance"]["anneal"].as_f64().unwrap();
    let tau_q = json["observables"]["topological_charge"]["tau_int"].as_f64().unwrap();
    println!("{name}: anneal acceptance {acc:.3}, <W> = {:.3}, tau_int(Q) = {tau_q:.2} sweeps", anneal["mean_work"]);
    let warnings = json["warnings"].as_array().map_or(0, |w| w.len());
    assert_eq!(warnings, 0, "{name}: warnings {}", json["warnings"]);
    (tau_q, acc)
}

/// β = 6, where plain HMC's τ_int(Q) at L = 8 is about 1400 trajectories (README headline): with
/// the defect protocol (about 21 trajectories a sweep) Q decorrelates within a few sweeps, and
/// every exact value is reproduced.
#[test]
fn opening_a_defect_is_exact_and_moves_the_charge_at_beta_6() {
    let text = card(6.0, "defect = [1, 1]", DEFECT, 21, 6000, "");
    let (tau_q, acc) = check_exact("defect_b6", &text, 6.0, 0.004362513208);
    assert!(acc > 0.2, "defect protocol acceptance {acc}");
    assert!(tau_q < 20.0, "tau_int(Q) = {tau_q} sweeps: the defect does not move the charge");
}

/// Annealing β itself (β = 3 → 2 → 3, 10 switches each way) is exact too. (A faster protocol,
/// 3 → 1 in 10 switches, stays exact but has ⟨W⟩ ≈ 4: then ⟨e^{−W}⟩ is carried by rare paths and
/// comes out far below 1 at this N, which `analyze` flags as a warning.)
#[test]
fn annealing_beta_is_exact_at_beta_3() {
    let anneal = "parameter = \"beta\"\nto = 2.0\nstages = 10\nhmc = { md_steps = 4 }";
    let (_, acc) = check_exact("beta_b3", &card(3.0, "", anneal, 22, 6000, ""), 3.0, 0.01106004700);
    assert!(acc > 0.05, "beta protocol acceptance {acc}");
}

/// Replica exchange over `defect_coupling` (w = 1, 0.5, 0 at β = 6): the w = 1 replica is the
/// plain theory and reproduces its exact values; swaps are frequent, and its charge decorrelates
/// within a few sweeps.
#[test]
fn a_ladder_over_the_defect_coupling_is_exact_at_w_1() {
    let dir = tempfile::tempdir().unwrap();
    let text = String::from(
        "[theory]\nplugin = \"u1\"\nlattice = [8, 8]\nbeta = 6.0\ndefect = [1, 1]\ndefect_coupling = 1.0\n\n\
         [ladder]\nparameter = \"defect_coupling\"\nvalues = [1.0, 0.5, 0.0]\n\n\
         [[chain]]\nkind = \"hmc\"\nmd_steps = 4\ntrajectory_jitter = 0.2\n\n[[chain]]\nkind = \"replica_exchange\"\n\n\
         [run]\nseed = 24\nthermalization = 200\nmeasurements = 30000\nsave_every = 0\nthreads = 1\noutput = \"{OUT}\"\n"
    );
    let (c, out) = write_card(dir.path(), "ptbc", &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    let w1 = &json["replicas"][0];
    assert_eq!(w1["value"].as_f64(), Some(1.0));
    assert_z("ptbc w=1 plaquette", scalar(w1, "plaquette"), exact_wilson_loop(6.0, 64, 1), 0.0);
    assert_z("ptbc w=1 W(2x2)", scalar(w1, "wilson_loop_2x2"), exact_wilson_loop(6.0, 64, 4), 0.0);
    assert_z("ptbc w=1 chi_top", scalar(w1, "topological_susceptibility"), 0.004362513208, 0.0);
    assert_z("ptbc w=1 <Q>", scalar(w1, "topological_charge"), 0.0, 0.0);
    let sw = &json["replica_exchange"]["swaps"]["replica_exchange"];
    let e = &sw["exp_log_ratio"];
    assert_z("ptbc <exp(log r)>", (e[0].as_f64().unwrap(), e[1].as_f64().unwrap()), 1.0, 0.0);
    let acc = sw["acceptance"].as_f64().unwrap();
    let tau_q = w1["observables"]["topological_charge"]["tau_int"].as_f64().unwrap();
    println!("ptbc: swap acceptance {acc:.3}, tau_int(Q) at w = 1: {tau_q:.1} sweeps");
    assert!(acc > 0.3 && tau_q < 50.0, "swap acceptance {acc}, tau_int(Q) {tau_q}");
}

/// A run with anneal steps, killed at several moments and resumed, has the bits of a run that
/// was never interrupted; the step leaves the theory's parameter where it found it.
#[test]
fn killed_anneal_run_resumes_to_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let text = card(6.0, "defect = [1, 1]", DEFECT, 23, 4000, "checkpoint_every = 53").replace("save_every = 0", "save_every = 7");
    let (reference_card, reference) = write_card(dir.path(), "reference", &text);
    let (c, out) = write_card(dir.path(), "killed", &text);
    run_ok(&["run", reference_card.to_str().unwrap(), "-q"]);
    let kills = kill_and_resume(c.to_str().unwrap(), &out, &[300, 500, 250]);
    assert!(kills >= 2, "the run finished too quickly to be killed ({kills} kills)");
    assert_same_bits(&reference, &out);
    // the protocol restores the parameter: S/V = −β⟨cos θ_P⟩ exactly, with w = 1
    let json = analyze_json(&out);
    let (s, _) = scalar(&json, "action_density");
    assert!((s + 6.0 * scalar(&json, "plaquette").0).abs() < 1e-12, "S/V = {s}: the defect was left open");
}

/// Bad anneal entries are refused with the key at fault, never a panic.
#[test]
fn bad_anneal_cards_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let hmc = "hmc = { md_steps = 4 }";
    for (name, defect, anneal, needles) in [
        ("unknown_parameter", "", format!("parameter = \"kappa\"\nto = 1.0\nstages = 2\n{hmc}"), &["chain[1].parameter", "kappa"][..]),
        ("defect_undeclared", "", format!("parameter = \"defect_coupling\"\nto = 0.0\nstages = 2\n{hmc}"), &["chain[1].parameter", "defect = ["][..]),
        ("negative_defect", "defect = [1, 1]", format!("parameter = \"defect_coupling\"\nto = -1.0\nstages = 2\n{hmc}"), &["defect_coupling", "≥ 0"][..]),
        ("negative_beta", "", format!("parameter = \"beta\"\nto = -1.0\nstages = 2\n{hmc}"), &["beta", "≥ 0"][..]),
        ("nan_to", "", format!("parameter = \"beta\"\nto = nan\nstages = 2\n{hmc}"), &["chain[1].to", "finite"][..]),
        ("zero_stages", "", format!("parameter = \"beta\"\nto = 1.0\nstages = 0\n{hmc}"), &["chain[1].stages", "at least 1"][..]),
        ("no_hmc", "", "parameter = \"beta\"\nto = 1.0\nstages = 2".to_string(), &["chain[1]", "hmc"][..]),
        ("bad_hmc", "", "parameter = \"beta\"\nto = 1.0\nstages = 2\nhmc = { md_steps = 0 }".to_string(), &["chain[1].hmc.md_steps"][..]),
        (
            "no_metropolis",
            "",
            "parameter = \"beta\"\nto = 1.0\nstages = 2\nhmc = { md_steps = 4, accept_reject = false }".to_string(),
            &["chain[1].hmc.accept_reject", "detailed balance"][..],
        ),
        ("unknown_key", "", format!("parameter = \"beta\"\nto = 1.0\nstages = 2\nstage = 3\n{hmc}"), &["chain[1]", "stage"][..]),
    ] {
        let (c, _) = write_card(dir.path(), name, &card(2.0, defect, &anneal, 1, 10, ""));
        let mut all = needles.to_vec();
        all.push(name);
        expect_failure(&["run", c.to_str().unwrap(), "-q"], &all);
    }
}

// ---------------------------------------------------------------------------------------------
// u1's `defect_snf` step: a stochastic normalizing flow over the defect (trained flow layers
// between the HMC kernels of the protocol)
// ---------------------------------------------------------------------------------------------

/// The flow protocol of the headline: one trained layer each way, 1 + 2 trajectories at w = 0.
const DEFECT_SNF: &str = "stages = 1\nhold = 2\nflow = { train_steps = 100, batch = 16 }";

/// The exact plaquette, W(2×2), χ_top and ⟨Q⟩ of L = 8, β = 6 (docs/reference.md §3).
fn assert_exact_at_beta_6(name: &str, json: &serde_json::Value) {
    assert_z(&format!("{name} plaquette"), scalar(json, "plaquette"), exact_wilson_loop(6.0, 64, 1), 0.0);
    assert_z(&format!("{name} W(2x2)"), scalar(json, "wilson_loop_2x2"), exact_wilson_loop(6.0, 64, 4), 0.0);
    assert_z(&format!("{name} chi_top"), scalar(json, "topological_susceptibility"), 0.004362513208, 0.0);
    assert_z(&format!("{name} <Q>"), scalar(json, "topological_charge"), 0.0, 0.0);
}

/// The step's `protocol_accepted` and `work` columns, from the file.
fn snf_columns(out: &std::path::Path) -> (Vec<f64>, Vec<f64>) {
    let ens = latflow_host::ensemble::read_ensemble(out).unwrap();
    let step = ens.steps.iter().find(|s| s.label == "defect_snf").expect("a defect_snf step");
    let col = |name: &str| step.columns.iter().find(|(n, _)| n == name).expect(name).1.clone();
    (col("protocol_accepted"), col("work"))
}

/// The anneal test card `card(beta, defect, "", seed, sweeps, extra)` with its step turned into
/// `defect_snf` with the options `step`.
fn snf_card(beta: f64, defect: &str, seed: u64, sweeps: u64, extra: &str, step: &str) -> String {
    card(beta, defect, "", seed, sweeps, extra)
        .replace("kind = \"anneal\"\n", &format!("kind = \"defect_snf\"\n{step}\n"))
}

/// Runs the `defect_snf` card `text` as `name` in `dir`, checks the exact values at β = 6, and
/// returns the work column, the protocol acceptance and τ_int(Q) in sweeps (printed too).
fn run_exact_snf(dir: &std::path::Path, name: &str, text: &str) -> (Vec<f64>, f64, f64) {
    let (c, out) = write_card(dir, name, text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_exact_at_beta_6(name, &json);
    let (accepted, work) = snf_columns(&out);
    let n = work.len() as f64;
    let acc = accepted.iter().sum::<f64>() / n;
    let tau_q = json["observables"]["topological_charge"]["tau_int"].as_f64().unwrap();
    println!("{name}: acceptance {acc:.3}, <W> = {:.3}, tau_int(Q) = {tau_q:.2} sweeps", work.iter().sum::<f64>() / n);
    (work, acc, tau_q)
}

/// At β = 6, L = 8, the flow protocol reproduces the exact plaquette, W(2×2), χ_top and ⟨Q⟩,
/// with Jarzynski's ⟨e^{−W}⟩ = 1 (independent-sample error: protocols from consecutive sweeps
/// are nearly independent here, τ_int(Q) being a few sweeps); the trained layer is accepted
/// most of the time and the charge decorrelates within a few sweeps.
#[test]
fn the_defect_flow_is_exact_and_moves_the_charge_at_beta_6() {
    let dir = tempfile::tempdir().unwrap();
    let text = snf_card(6.0, "defect = [1, 1]", 31, 6000, "", DEFECT_SNF);
    let (work, acc, tau_q) = run_exact_snf(dir.path(), "defect_snf", &text);
    let n = work.len() as f64;
    let e: Vec<f64> = work.iter().map(|w| (-w).exp()).collect();
    let mean = e.iter().sum::<f64>() / n;
    let err = (e.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt();
    assert_z("defect_snf <exp(-W)>", (mean, err), 1.0, 0.0);
    assert!(acc > 0.5, "protocol acceptance {acc}: the trained layer should carry the defect");
    assert!(tau_q < 10.0, "tau_int(Q) = {tau_q} sweeps: the flow protocol does not move the charge");
}

/// Two defect plaquettes far apart (`defect_sites`), a sub-layer each: still exact at L = 8,
/// β = 6, and the charge moves.
#[test]
fn the_defect_flow_with_two_defects_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let text = snf_card(6.0, "defect_sites = [[0, 0], [4, 4]]", 33, 4000, "", DEFECT_SNF);
    let (_, acc, tau_q) = run_exact_snf(dir.path(), "defect_snf2", &text);
    assert!(acc > 0.3 && tau_q < 10.0, "acceptance {acc}, tau_int(Q) {tau_q}");
}

/// A run with the flow step, killed and resumed, has the bits of an uninterrupted run (the
/// layers are retrained from the step's own seed on resume).
#[test]
fn killed_defect_flow_run_resumes_to_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let text = snf_card(6.0, "defect = [1, 1]", 32, 6000, "checkpoint_every = 97", DEFECT_SNF)
        .replace("save_every = 0", "save_every = 11");
    let (reference_card, reference) = write_card(dir.path(), "reference", &text);
    let (c, out) = write_card(dir.path(), "killed", &text);
    run_ok(&["run", reference_card.to_str().unwrap(), "-q"]);
    let kills = kill_and_resume(c.to_str().unwrap(), &out, &[400, 600, 300]);
    assert!(kills >= 2, "the run finished too quickly to be killed ({kills} kills)");
    assert_same_bits(&reference, &out);
}

/// Bad `defect_snf` entries and theories it cannot serve are refused naming the key.
#[test]
fn bad_defect_flow_cards_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (name, defect, step, needles) in [
        ("snf_zero_stages", "defect = [1, 1]", "stages = 0", &["stages", "at least 1"][..]),
        ("snf_bad_lr", "defect = [1, 1]", "flow = { learning_rate = -1.0 }", &["flow.learning_rate"][..]),
        ("snf_unknown_key", "defect = [1, 1]", "flows = 2", &["flows"][..]),
        ("snf_no_defect", "", "stages = 1", &["defect = [1, 1]"][..]),
        ("snf_bad_components", "defect = [1, 1]", "flow = { components = 0 }", &["flow.components"][..]),
        ("snf_bad_sites", "defect_sites = [[0, 0], [8, 0]]", "stages = 1", &["defect_sites[1][0]"][..]),
    ] {
        let text = snf_card(6.0, defect, 1, 10, "", step);
        let (c, _) = write_card(dir.path(), name, &text);
        expect_failure(&["run", c.to_str().unwrap(), "-q"], needles);
    }
}
