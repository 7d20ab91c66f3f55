//! Dynamical Wilson fermions through the whole pipeline — card → qcd plugin .so → pseudofermion
//! HMC → HDF5 → Γ-method analysis — against the exact 2×2 Schwinger-model values (2D U(1),
//! Nf = 2 Wilson fermions, antiperiodic in time): ⟨cos θ_P⟩ and Σ = (1/V)⟨Tr D_m⁻¹⟩,
//! D_m = D/(2κ), from numerical integration over the 8 link angles (converged to 1e−10), and
//! for one flavour (`nf = 1`, rational HMC) the same integration with weight |det D|. Fixed
//! seeds; |z| < 4 against the measured errors. Also: the per-trajectory CG iterations in the
//! ensemble file, and bad cards refused with exit code 1, naming the key.
//!
//! The plugin's .so must be built (`cargo build --workspace`, or `cargo test --workspace`).

mod common;

use common::{analyze_json, assert_z, contents, expect_failure, run_ok, scalar, write_card};

fn card(theory: &str, chain: &str, seed: u64, therm: u64, meas: u64) -> String {
    format!(
        r#"
[theory]
plugin = "qcd"
group = "u1"
lattice = [2, 2]
{theory}

{chain}

[run]
seed = {seed}
thermalization = {therm}
measurements = {meas}
save_every = 0
output = "{{OUT}}"
"#
    )
}

/// Two time scales: 4 outer (fermion) steps, 2 gauge sub-steps each.
const HMC: &str = r#"
[[chain]]
kind = "hmc"
trajectory_length = 1.0
md_steps = 4
time_scales = [2]
integrator = "omelyan2"
"#;

/// Three time scales with one Hasenbusch mass.
const HMC3: &str = r#"
[[chain]]
kind = "hmc"
trajectory_length = 1.0
md_steps = 3
time_scales = [2, 2]
integrator = "omelyan2"
"#;

fn run(name: &str, text: &str) -> (serde_json::Value, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(dir.path(), name, text);
    run_ok(&["run", card.to_str().unwrap(), "--quiet"]);
    (analyze_json(&out), out, dir)
}

/// (β, κ, ⟨cos θ_P⟩, Σ) of the exact 2×2 table.
const EXACT: [(f64, f64, f64, f64); 3] = [
    (1.0, 0.25, 0.6042904459, 0.7631221705),
    (2.0, 0.25, 0.8074031649, 0.7334884523),
    (2.0, 0.276, 0.8127516480, 0.7425785691),
];

/// Host HMC (nested time scales; with a Hasenbusch mass at κ = 0.276), exact condensate trace.
#[test]
fn pseudofermion_hmc_reproduces_the_2x2_schwinger_table() {
    for (i, &(beta, kappa, plaq, sigma)) in EXACT.iter().enumerate() {
        let (extra, chain) = if kappa > 0.26 {
            ("hasenbusch = [0.2]", HMC3)
        } else {
            ("", HMC)
        };
        let theory =
            format!("beta = {beta}\nkappa = {kappa}\n{extra}\ncondensate = {{ exact = true }}");
        let name = format!("schwinger_b{beta}_k{kappa}");
        let (json, _, _dir) = run(&name, &card(&theory, chain, 40 + i as u64, 200, 12000));
        let st = &json["steps"]["hmc"];
        let e = (
            st["exp_minus_delta_h"][0].as_f64().unwrap(),
            st["exp_minus_delta_h"][1].as_f64().unwrap(),
        );
        assert_z(&format!("{name} <exp(-dH)>"), e, 1.0, 0.0);
        println!("{name}: acceptance {}", json["acceptance"]["hmc"]);
        assert_z(
            &format!("{name} <cos theta_P>"),
            scalar(&json, "plaquette"),
            plaq,
            0.0,
        );
        assert_z(
            &format!("{name} Sigma"),
            scalar(&json, "chiral_condensate"),
            sigma,
            0.0,
        );
    }
}

/// One flavour (`nf = 1`, rational HMC) through the whole pipeline against the exact
/// one-flavour 2×2 values at β = 1, κ = 0.25 (⟨cos θ_P⟩ = 0.5524883994, Σ = 0.8073295314,
/// from the trapezoidal integration of the qcd plugin's unit tests, which reproduces the
/// two-flavour table to 1e−9); the run's parameters record the approximation and its error.
#[test]
fn rational_hmc_reproduces_the_one_flavour_2x2_values() {
    let theory = "beta = 1.0\nkappa = 0.25\nnf = 1\nrhmc = { lambda_min = 1e-5, degree = 24 }\ncondensate = { exact = true }";
    let (json, out, _dir) = run("schwinger_nf1", &card(theory, HMC, 60, 200, 8000));
    assert_z("nf = 1 <cos theta_P>", scalar(&json, "plaquette"), 0.5524883994, 0.0);
    assert_z("nf = 1 Sigma", scalar(&json, "chiral_condensate"), 0.8073295314, 0.0);
    let (ens, _) = contents(&out);
    let params: serde_json::Value = serde_json::from_str(&ens.provenance.theory_params).unwrap();
    assert_eq!(params["nf"], 1, "{params}");
    let err = params["rhmc"]["relative_error"].as_f64().unwrap();
    println!("nf = 1: the approximation's relative error {err:e}");
    assert!(err > 0.0 && err < 1e-10, "{params}");
}

/// The theory's `pf_hmc` step records the Metropolis outcome, ΔH and the CG iterations of every trajectory in
/// the ensemble file; with noise sources for Σ it reproduces the table too.
#[test]
fn pf_hmc_steps_record_cg_iterations_and_reproduce_the_table() {
    let (beta, kappa, plaq, sigma) = EXACT[1];
    let chain = "[[chain]]\nkind = \"pf_hmc\"\nmd_steps = 4\ninner_steps = [2]\n";
    let theory =
        format!("beta = {beta}\nkappa = {kappa}\nsolver = {{ tol = 1e-12, force_tol = 1e-9 }}");
    let (json, out, _dir) = run("schwinger_pf_hmc", &card(&theory, chain, 50, 200, 8000));
    assert_z(
        "pf_hmc <cos theta_P>",
        scalar(&json, "plaquette"),
        plaq,
        0.0,
    );
    assert_z(
        "pf_hmc Sigma (noise)",
        scalar(&json, "chiral_condensate"),
        sigma,
        0.0,
    );
    let (ens, _) = contents(&out);
    let step = ens
        .steps
        .iter()
        .find(|s| s.kind == "pf_hmc")
        .expect("a pf_hmc step");
    let names: Vec<&str> = step.columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["metropolis_accepted", "delta_h", "cg_iterations"]);
    let iters = &step.columns[2].1;
    assert_eq!(iters.len(), 8000, "one record per measured trajectory");
    assert!(
        iters.iter().all(|&n| n >= 10.0 && n.fract() == 0.0),
        "{:?}",
        &iters[..10]
    );
    let mean_iters = iters.iter().sum::<f64>() / iters.len() as f64;
    let dh = &step.columns[1].1;
    let e: Vec<f64> = dh.iter().map(|d| (-d).exp()).collect();
    let (m, err) = batch_means(&e, 20);
    let acc = step.columns[0].1.iter().sum::<f64>() / dh.len() as f64;
    println!("pf_hmc: {mean_iters:.1} CG iterations per trajectory, acceptance {acc:.3}");
    assert_z("pf_hmc <exp(-dH)>", (m, err), 1.0, 0.0);
}

fn batch_means(x: &[f64], batches: usize) -> (f64, f64) {
    let size = x.len() / batches;
    let means: Vec<f64> = x
        .chunks(size)
        .take(batches)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let m = means.iter().sum::<f64>() / batches as f64;
    let var = means.iter().map(|b| (b - m).powi(2)).sum::<f64>() / (batches as f64 - 1.0);
    (m, (var / batches as f64).sqrt())
}

#[test]
fn bad_cards_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (theory, needles)) in [
        ("beta = 1.0\nkappa = 0.0", &["kappa", "> 0"][..]),
        ("beta = 1.0\nkappa = nan", &["kappa"][..]),
        ("beta = 1.0\nkappa = inf", &["kappa"][..]),
        ("beta = 1.0\nkappa = 0.2\nmu = -0.5", &["mu"][..]),
        (
            "beta = 1.0\nkappa = 0.2\nhasenbusch = [0.1, 0.15]",
            &["hasenbusch[1]"][..],
        ),
        (
            "beta = 1.0\nkappa = 0.2\nsolver = { tol = 0.0 }",
            &["solver.tol"][..],
        ),
        ("beta = 1.0\nkappa = 0.2\ncsw = 1.0", &["csw", "4D"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let (card, _) = write_card(dir.path(), &format!("bad{i}"), &card(theory, HMC, 1, 1, 1));
        expect_failure(&["run", card.to_str().unwrap(), "--quiet"], needles);
    }
    let odd =
        card("beta = 1.0\nkappa = 0.2\neven_odd = true", HMC, 1, 1, 1).replace("[2, 2]", "[3, 2]");
    let (c, _) = write_card(dir.path(), "odd", &odd);
    expect_failure(
        &["run", c.to_str().unwrap(), "--quiet"],
        &["even_odd", "odd"],
    );
    let unknown = card("beta = 1.0\nkappa = 0.2", HMC, 1, 1, 1).replace("\"u1\"", "\"u3\"");
    let (c, _) = write_card(dir.path(), "group", &unknown);
    expect_failure(&["run", c.to_str().unwrap(), "--quiet"], &["group", "u3"]);
}
