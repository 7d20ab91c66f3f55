//! Flows with dynamical fermions, route (a): the flow-u1 model trains on the qcd theory with
//! `determinant = "exact"` (S_eff = S_g − ln det(D†D), the dense determinant), so that flow
//! Metropolis and reweighting are exact. On the 2×2 Schwinger model they reproduce the exact
//! table (⟨cos θ_P⟩, Σ, and ln⟨det D²⟩_quenched = ln Z_Nf2 − ln Z_quenched from two log Ẑ
//! estimates); on 4×4 flow Metropolis agrees with pseudofermion HMC. Fixed seeds; |z| < 4
//! against the Γ-method errors of the host's analysis.
//!
//! The plugins' .so files must be built (`cargo build --workspace`).

mod common;

use std::path::Path;

use common::{analyze_json, assert_z, expect_failure, log_z, run_ok, scalar, write_card};

/// (β, κ, ⟨cos θ_P⟩, Σ, ⟨det D²⟩_quenched) of the exact 2×2 table.
const EXACT: [(f64, f64, f64, f64, f64); 2] = [
    (1.0, 0.25, 0.6042904459, 0.7631221705, 3.3565866862),
    (2.0, 0.276, 0.8127516480, 0.7425785691, 6.7667649335),
];

/// The 2×2 flow: mask_period = 2 (no frozen stripe), kernel 1.
const FLOW_2X2: &str =
    "plugin = \"flow-u1\"\nlayers = 4\nhidden = [4]\nkernel = 1\nmask_period = 2\ndtype = \"f64\"";

fn card(
    dir: &Path,
    theory: &str,
    model: &str,
    weights: &str,
    train: &str,
    chain: &str,
    run: &str,
) -> String {
    format!(
        r#"
[theory]
{theory}

[model]
weights = "{w}"
{model}

{train}

{chain}

[run]
output = "{{OUT}}"
save_every = 0
{run}
"#,
        w = dir.join(weights).display()
    )
}

fn qcd(lattice: usize, beta: f64, kappa: f64, determinant: &str) -> String {
    format!(
        "plugin = \"qcd\"\ngroup = \"u1\"\nlattice = [{lattice}, {lattice}]\nbeta = {beta}\nkappa = {kappa}\n\
         determinant = \"{determinant}\"\ncondensate = {{ exact = true }}\npion_correlator = false"
    )
}

fn run(dir: &Path, name: &str, text: &str, args: &[&str]) -> serde_json::Value {
    let (c, out) = write_card(dir, name, text);
    let mut all = vec!["run", c.to_str().unwrap(), "-q"];
    all.extend_from_slice(args);
    run_ok(&all);
    analyze_json(&out)
}

/// 2×2, (β, κ) = (1, 0.25) and (2, 0.276): a briefly trained flow; flow Metropolis and
/// reweighting reproduce ⟨cos θ_P⟩ and Σ, and the difference of the log Ẑ of the same flow on
/// the exact qcd action and on the quenched u1 action is ln⟨det D²⟩_quenched (the flow's
/// measure constant cancels).
#[test]
fn flow_samplers_reproduce_the_2x2_schwinger_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, &(beta, kappa, plaq, sigma, det2)) in EXACT.iter().enumerate() {
        let seed = 10 * i as u64;
        let theory = qcd(2, beta, kappa, "exact");
        let weights = format!("f{i}.safetensors");
        let train = format!(
            "[train]\nsteps = 150\nbatch = 64\nlearning_rate = 1e-2\nseed = {}",
            seed + 1
        );
        let flow = "[[chain]]\nkind = \"flow\"\nbatch = 256";
        let runs = format!(
            "seed = {}\nthermalization = 100\nmeasurements = 12000",
            seed + 2
        );
        let text = card(d, &theory, FLOW_2X2, &weights, &train, flow, &runs);
        let json = run(d, &format!("flow{i}"), &text, &["--train"]);
        let name = format!("2x2 beta {beta} kappa {kappa}");
        println!("{name}: flow acceptance {}", json["acceptance"]["flow"]);
        assert_z(
            &format!("{name} flow <cos theta_P>"),
            scalar(&json, "plaquette"),
            plaq,
            0.0,
        );
        assert_z(
            &format!("{name} flow Sigma"),
            scalar(&json, "chiral_condensate"),
            sigma,
            0.0,
        );

        let reweight = "[[chain]]\nkind = \"reweight\"\nbatch = 256";
        let runs = format!("seed = {}\nmeasurements = 12000", seed + 3);
        let text = card(d, &theory, FLOW_2X2, &weights, "", reweight, &runs);
        let json = run(d, &format!("rw{i}"), &text, &[]);
        assert_z(
            &format!("{name} reweighted <cos theta_P>"),
            scalar(&json, "plaquette"),
            plaq,
            0.0,
        );
        assert_z(
            &format!("{name} reweighted Sigma"),
            scalar(&json, "chiral_condensate"),
            sigma,
            0.0,
        );
        let full = log_z(&json);

        let quenched = format!("plugin = \"u1\"\nlattice = [2, 2]\nbeta = {beta}");
        let runs = format!("seed = {}\nmeasurements = 12000", seed + 4);
        let text = card(d, &quenched, FLOW_2X2, &weights, "", reweight, &runs);
        let q = log_z(&run(d, &format!("rwq{i}"), &text, &[]));
        let diff = (full.0 - q.0, full.1.hypot(q.1));
        println!(
            "{name}: log Z_Nf2 - log Z_quenched = {:.5} ± {:.5} (exact {:.5})",
            diff.0,
            diff.1,
            det2.ln()
        );
        assert_z(
            &format!("{name} ln <det D^2>_quenched"),
            diff,
            det2.ln(),
            0.0,
        );
    }
}

/// 4×4 at β = 2, κ = 0.24: flow Metropolis with a flow trained on the exact action, and HMC with
/// the exact determinant force, agree with pseudofermion HMC (the stochastic route to the same
/// weight) in ⟨cos θ_P⟩ and Σ.
#[test]
fn flow_metropolis_on_4x4_agrees_with_pseudofermion_hmc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (beta, kappa) = (2.0, 0.24);
    let model = "plugin = \"flow-u1\"\nlayers = 8\nhidden = [8, 8]\nkernel = 3\nmask_period = 4\ndtype = \"f64\"";
    let train = "[train]\nsteps = 200\nbatch = 64\nlearning_rate = 5e-3\nseed = 31";
    let flow = "[[chain]]\nkind = \"flow\"\nbatch = 256";
    let runs = "seed = 32\nthermalization = 200\nmeasurements = 8000";
    let text = card(
        d,
        &qcd(4, beta, kappa, "exact"),
        model,
        "f4.safetensors",
        train,
        flow,
        runs,
    );
    let json = run(d, "flow4", &text, &["--train"]);
    println!("4x4: flow acceptance {}", json["acceptance"]["flow"]);
    let (fp, fs) = (
        scalar(&json, "plaquette"),
        scalar(&json, "chiral_condensate"),
    );

    let hmc = |determinant: &str, seed: u64| {
        let chain = "[[chain]]\nkind = \"hmc\"\ntrajectory_length = 1.0\nmd_steps = 4\ntime_scales = [2]\nintegrator = \"omelyan2\"";
        let text = format!(
            "[theory]\n{}\n\n{chain}\n\n[run]\noutput = \"{{OUT}}\"\nsave_every = 0\nseed = {seed}\nthermalization = 200\nmeasurements = 8000\n",
            qcd(4, beta, kappa, determinant)
        );
        let json = run(d, &format!("hmc_{determinant}"), &text, &[]);
        (
            scalar(&json, "plaquette"),
            scalar(&json, "chiral_condensate"),
        )
    };
    let (hp, hs) = hmc("pseudofermion", 33);
    let (ep, es) = hmc("exact", 34);
    for (what, f, e, h) in [("<cos theta_P>", fp, ep, hp), ("Sigma", fs, es, hs)] {
        println!(
            "4x4 {what}: flow {:.5} ± {:.5}, exact-det HMC {:.5} ± {:.5}, pseudofermion HMC {:.5} ± {:.5}",
            f.0, f.1, e.0, e.1, h.0, h.1
        );
        assert_z(
            &format!("4x4 flow vs pseudofermion HMC {what}"),
            f,
            h.0,
            h.1,
        );
        assert_z(
            &format!("4x4 exact-det HMC vs pseudofermion HMC {what}"),
            e,
            h.0,
            h.1,
        );
    }
}

/// SU(2), 2D, 2×2 at β = 2, κ = 0.2: a flow-sun model trains on the exact action through its
/// ambient (Re, Im) gradient, and flow Metropolis agrees with HMC on the exact action (the
/// dense determinant force) in ⟨Re Tr U_P⟩/2 and Σ.
#[test]
fn flow_sun_trains_on_the_exact_su2_action() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let theory = "plugin = \"qcd\"\ngroup = \"su2\"\nlattice = [2, 2]\nbeta = 2.0\nkappa = 0.2\n\
                  determinant = \"exact\"\ncondensate = { exact = true }\npion_correlator = false";
    let model = "plugin = \"flow-sun\"\nlayers = 4\nhidden = [4]\nkernel = 1\nmask_period = 2\ndtype = \"f64\"";
    let train = "[train]\nsteps = 100\nbatch = 64\nlearning_rate = 1e-2\nseed = 41";
    let flow = "[[chain]]\nkind = \"flow\"\nbatch = 256";
    let text = card(
        d,
        theory,
        model,
        "su2.safetensors",
        train,
        flow,
        "seed = 42\nthermalization = 100\nmeasurements = 8000",
    );
    let json = run(d, "su2_flow", &text, &["--train"]);
    println!("SU(2) 2x2: flow acceptance {}", json["acceptance"]["flow"]);
    let (fp, fs) = (
        scalar(&json, "plaquette"),
        scalar(&json, "chiral_condensate"),
    );

    let chain = "[[chain]]\nkind = \"hmc\"\ntrajectory_length = 1.0\nmd_steps = 4\ntime_scales = [2]\nintegrator = \"omelyan2\"";
    let text = format!(
        "[theory]\n{theory}\n\n{chain}\n\n[run]\noutput = \"{{OUT}}\"\nsave_every = 0\nseed = 43\nthermalization = 200\nmeasurements = 8000\n"
    );
    let json = run(d, "su2_hmc", &text, &[]);
    let (hp, hs) = (
        scalar(&json, "plaquette"),
        scalar(&json, "chiral_condensate"),
    );
    for (what, f, h) in [("plaquette", fp, hp), ("Sigma", fs, hs)] {
        println!(
            "SU(2) 2x2 {what}: flow {:.5} ± {:.5}, exact-det HMC {:.5} ± {:.5}",
            f.0, f.1, h.0, h.1
        );
        assert_z(
            &format!("SU(2) 2x2 flow vs exact-det HMC {what}"),
            f,
            h.0,
            h.1,
        );
    }
}

/// The exact-action contract end to end: with `determinant = "pseudofermion"` the qcd action is
/// only a stochastic estimate, so a flow step, a reweighting step and plain replica swaps are
/// each refused with a clear error naming the plugin and the step (the same model and ladder
/// run when the determinant is exact). Nothing is left behind that blocks a rerun.
#[test]
fn exact_samplers_refuse_a_pseudofermion_action() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = "[train]\nsteps = 3\nbatch = 16\nlearning_rate = 1e-2\nseed = 51";
    let exact = qcd(2, 1.0, 0.25, "exact");
    let stochastic = qcd(2, 1.0, 0.25, "pseudofermion");
    let short = "seed = 52\nmeasurements = 20";
    for (kind, step) in [("flow", "a 'flow' step"), ("reweight", "a 'reweight' step")] {
        let chain = format!("[[chain]]\nkind = \"{kind}\"\nbatch = 8");
        // the exact determinant: the step runs (and trains the weights the refusal reuses)
        let text = card(d, &exact, FLOW_2X2, "w.safetensors", train, &chain, short);
        let (c, _) = write_card(d, &format!("{kind}_exact"), &text);
        run_ok(&["run", c.to_str().unwrap(), "-q", "--train", "--force"]);
        let text = card(d, &stochastic, FLOW_2X2, "w.safetensors", "", &chain, short);
        let (c, _) = write_card(d, &format!("{kind}_pf"), &text);
        let needles = ["'qcd'", "computes its action only stochastically", step, "use HMC steps"];
        expect_failure(&["run", c.to_str().unwrap(), "-q"], &needles);
        // refused again, identically, without --force: the failed run blocks nothing
        expect_failure(&["run", c.to_str().unwrap(), "-q"], &needles);
    }
    // replica swaps and anneal steps build their acceptance from S itself
    let hmc = "[[chain]]\nkind = \"hmc\"\ntrajectory_length = 1.0\nmd_steps = 4";
    let ladder = format!("[ladder]\nparameter = \"beta\"\nvalues = [1.0, 1.5]\n\n{hmc}\n\n[[chain]]\nkind = \"replica_exchange\"");
    let anneal = format!("{hmc}\n\n[[chain]]\nkind = \"anneal\"\nparameter = \"beta\"\nto = 0.5\nstages = 2\nhmc = {{ md_steps = 4 }}");
    for (name, chain, step) in [("ladder", ladder, "a replica swap"), ("anneal", anneal, "an 'anneal' step")] {
        for (determinant, ok) in [("exact", true), ("pseudofermion", false)] {
            let theory = qcd(2, 1.0, 0.25, determinant);
            let text = format!("[theory]\n{theory}\n\n{chain}\n\n[run]\noutput = \"{{OUT}}\"\nsave_every = 0\n{short}\n");
            let (c, _) = write_card(d, &format!("{name}_{determinant}"), &text);
            if ok {
                run_ok(&["run", c.to_str().unwrap(), "-q"]);
            } else {
                let needles = ["'qcd'", "computes its action only stochastically", step];
                expect_failure(&["run", c.to_str().unwrap(), "-q"], &needles);
            }
        }
    }
}
