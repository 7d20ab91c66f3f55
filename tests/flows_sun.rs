//! Gauge-equivariant SU(N) flows inside exact samplers (flow-sun model plugin + sun theory
//! plugin, 2D, docs/reference.md §4): flow Metropolis, reweighting with log Ẑ, a hybrid HMC +
//! flow chain and flow-assisted swaps between two couplings, for SU(2) and SU(3) at β = 2 and 4
//! on an 8×8 torus, plus transfer and the bad inputs that must be refused. Fixed seeds; |z| < 4
//! against measured errors.

mod common;

use std::path::{Path, PathBuf};

use common::{analyze_json, assert_z, expect_failure, run_ok, scalar, write_card};

/// u = ⟨Re Tr U_P⟩/N on the 8×8 torus (the infinite-volume value to 10 digits).
fn exact_plaquette(n: u32, beta: f64) -> f64 {
    match (n, beta as u32) {
        (2, 2) => 0.4331274267,
        (2, 4) => 0.6580472674,
        (3, 2) => 0.1286277853,
        (3, 4) => 0.2796191494,
        _ => unreachable!(),
    }
}

/// log Z on the 8×8 torus with the normalised Haar measure.
fn exact_log_z(n: u32, beta: f64) -> Option<f64> {
    match (n, beta as u32) {
        (2, 2) => Some(29.704606307),
        (3, 2) => Some(7.8760895947),
        _ => None,
    }
}

/// The flow of the tests: the plugin's defaults (16 layers, hidden [8, 8], kernel 3, f32).
const FLOW: &str = "layers = 16\nhidden = [8, 8]\nkernel = 3";

fn card(n: u32, lattice: usize, beta: f64, model: &str, weights: &Path, train: &str, chain: &str, run: &str) -> String {
    format!(
        "[theory]\nplugin = \"sun\"\nlattice = [{lattice}, {lattice}]\nn = {n}\nbeta = {beta}\n\n\
         [model]\nplugin = \"flow-sun\"\nweights = \"{}\"\n{model}\n\n{train}\n\n{chain}\n\n[run]\noutput = \"{{OUT}}\"\n{run}\n",
        weights.display()
    )
}

/// Trains a flow for SU(n) at β (L = 8), from scratch or from other weights, and returns its
/// weights file.
fn train(d: &Path, n: u32, beta: f64, steps: usize, init: Option<&Path>) -> PathBuf {
    let w = d.join(format!("su{n}_b{beta}.safetensors"));
    let train = format!("[train]\nsteps = {steps}\nbatch = 64\nlearning_rate = 3e-3\nseed = 3");
    let model = match init {
        Some(p) => format!("{FLOW}\ninit_from = \"{}\"", p.display()),
        None => FLOW.to_string(),
    };
    let text = card(n, 8, beta, &model, &w, &train, "[[chain]]\nkind = \"flow\"", "seed = 1\nmeasurements = 1");
    let (c, _) = write_card(d, &format!("train_su{n}_b{beta}"), &text);
    println!("SU({n}) beta = {beta}: {}", run_ok(&["train", c.to_str().unwrap(), "-q"]).trim());
    w
}

/// Flow Metropolis and reweighting (with log Ẑ where the exact log Z is known) at one point.
fn check_point(d: &Path, n: u32, beta: f64, w: &Path) {
    let u = exact_plaquette(n, beta);
    let name = format!("su{n}_b{beta}");
    let text = card(
        n,
        8,
        beta,
        FLOW,
        w,
        "",
        "[[chain]]\nkind = \"flow\"\nbatch = 256",
        "seed = 4\nthermalization = 50\nmeasurements = 6000",
    );
    let (c, out) = write_card(d, &format!("{name}_flow"), &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z(&format!("{name} flow Metropolis plaquette"), scalar(&json, "plaquette"), u, 0.0);
    let acc = json["acceptance"]["flow"].as_f64().unwrap();
    assert!(acc > 0.01 && acc < 1.0, "{name} acceptance {acc}");

    let text =
        card(n, 8, beta, FLOW, w, "", "[[chain]]\nkind = \"reweight\"\nbatch = 256", "seed = 5\nmeasurements = 6000");
    let (c, out) = write_card(d, &format!("{name}_reweight"), &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z(&format!("{name} reweighted plaquette"), scalar(&json, "plaquette"), u, 0.0);
    let rw = &json["reweighting"];
    let ess = rw["ess_per_sample"].as_f64().unwrap();
    println!("SU({n}) beta = {beta}: flow acceptance {acc:.3}, reweighting ESS per sample {ess:.3}");
    if let Some(log_z) = exact_log_z(n, beta) {
        assert_z(&format!("{name} log Z (normalised Haar measure)"), common::log_z(&json), log_z, 0.0);
    }
}

/// SU(2) and SU(3) at β = 2 and 4 (L = 8), with briefly trained flows (β = 4 starts from the
/// β = 2 weights: transfer in β): flow Metropolis and
/// reweighting reproduce the plaquette, log Ẑ the exact log Z at β = 2, a hybrid HMC + flow
/// chain the plaquette at β = 4, and flow-assisted swaps keep both plaquettes exact with
/// ⟨e^{log r}⟩ = 1 (SU(3) β = 2 ↔ 4; SU(2) β = 4 ↔ 4.3, see the comment there).
#[test]
fn sun_flows_are_exact_in_2d() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let points = [(2u32, 2.0), (2, 4.0), (3, 2.0), (3, 4.0)];
    // two independent single-threaded trainings side by side: β = 2, then β = 4 from it
    let weights: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = [2u32, 3]
            .into_iter()
            .map(|n| {
                s.spawn(move || {
                    let b2 = train(d, n, 2.0, 100, None);
                    let b4 = train(d, n, 4.0, 200, Some(&b2));
                    [b2, b4]
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    // the runs below are independent and mostly single-threaded: two at a time
    std::thread::scope(|s| {
        for pair in points.iter().zip(&weights).collect::<Vec<_>>().chunks(2) {
            let hs: Vec<_> = pair.iter().map(|&(&(n, beta), w)| s.spawn(move || check_point(d, n, beta, w))).collect();
            hs.into_iter().for_each(|h| h.join().unwrap());
        }
    });

    // hybrid HMC + flow at β = 4
    std::thread::scope(|s| {
        for (k, n) in [(1usize, 2u32), (3, 3)] {
            let weights = &weights;
            s.spawn(move || hybrid(d, n, &weights[k]));
        }
    });

    // flow-assisted swaps: SU(3) between β = 2 and 4 (two models), SU(2) between β = 4 and 4.3
    // (the β = 4 model for both: the SU(2) flows of this budget, ESS per sample 0.05 and 0.002,
    // overlap too little across β = 2 ↔ 4 for ⟨e^{log r}⟩ to be measurable: its sample mean is
    // then dominated by rare huge values, 0.11(3) at acceptance 0.056, as ⟨e^{−ΔH}⟩ is for HMC
    // with large ΔH)
    assert!(
        (exact_su2_plaquette(4.0) - exact_plaquette(2, 4.0)).abs() < 1e-9,
        "the Bessel ratio matches docs/reference.md §4"
    );
    std::thread::scope(|s| {
        for (n, betas, models) in [(3u32, [2.0, 4.0], [2usize, 3]), (2, [4.0, 4.3], [1, 1])] {
            let weights = &weights;
            s.spawn(move || swaps(d, n, betas, [&weights[models[0]], &weights[models[1]]]));
        }
    });
}

/// flow-sun in four dimensions through the host: SU(2) on a 2⁴ torus at β = 1 (hyperplane
/// stripes of period 2; a 1⁴ kernel, so each active loop is conditioned on the frozen
/// plaquettes of its own site's other planes; 16 layers = two partner directions), trained for
/// 200 steps, then reweighting and flow Metropolis against HMC on the same lattice. No exact
/// value is known at this size, so the two exact samplers must agree (|z| < 4 with both errors).
#[test]
fn sun_flow_is_exact_in_4d() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = d.join("su2_4d.safetensors");
    let head = format!(
        "[theory]\nplugin = \"sun\"\nlattice = [2, 2, 2, 2]\nn = 2\nbeta = 1.0\n\n[model]\nplugin = \"flow-sun\"\n\
         weights = \"{}\"\nlayers = 16\nhidden = [8]\nkernel = 1\nmask_period = 2\ndtype = \"f64\"\n\n",
        w.display()
    );
    let tail = |chain: &str, run: &str| format!("{head}{chain}\n\n[run]\noutput = \"{{OUT}}\"\n{run}\n");
    let train = tail(
        "[train]\nsteps = 200\nbatch = 64\nlearning_rate = 3e-3\nseed = 3\n\n[[chain]]\nkind = \"flow\"",
        "seed = 1\nmeasurements = 1",
    );
    let (c, _) = write_card(d, "train_4d", &train);
    println!("SU(2) 2^4 beta = 1: {}", run_ok(&["train", c.to_str().unwrap(), "-q"]).trim());
    let runs = [
        ("reweight", "[[chain]]\nkind = \"reweight\"\nbatch = 256", "seed = 5\nmeasurements = 6000"),
        ("flow", "[[chain]]\nkind = \"flow\"\nbatch = 256", "seed = 4\nthermalization = 50\nmeasurements = 6000"),
        (
            "hmc",
            "[[chain]]\nkind = \"hmc\"\nmd_steps = 8\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3",
            "seed = 6\nthermalization = 100\nmeasurements = 4000\nstart = \"hot\"",
        ),
    ];
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let hs: Vec<_> = runs
            .iter()
            .map(|&(name, chain, run)| {
                let text = tail(chain, run);
                s.spawn(move || {
                    let (c, out) = write_card(d, &format!("su2_4d_{name}"), &text);
                    run_ok(&["run", c.to_str().unwrap(), "-q"]);
                    analyze_json(&out)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let hmc = scalar(&results[2], "plaquette");
    let ess = results[0]["reweighting"]["ess_per_sample"].as_f64().unwrap();
    let acc = results[1]["acceptance"]["flow"].as_f64().unwrap();
    println!("SU(2) 2^4 beta = 1: reweighting ESS per sample {ess:.3}, flow acceptance {acc:.3}");
    assert!(acc > 0.05 && acc < 1.0, "4D flow acceptance {acc}");
    assert_z("SU(2) 2^4 reweighted plaquette against HMC", scalar(&results[0], "plaquette"), hmc.0, hmc.1);
    assert_z("SU(2) 2^4 flow Metropolis plaquette against HMC", scalar(&results[1], "plaquette"), hmc.0, hmc.1);
}

/// A hybrid HMC + flow chain of SU(n) at β = 4 reproduces the plaquette.
fn hybrid(d: &Path, n: u32, w: &Path) {
    let hybrid = "[[chain]]\nkind = \"hmc\"\nmd_steps = 5\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3\n\n[[chain]]\nkind = \"flow\"";
    let text = card(n, 8, 4.0, FLOW, w, "", hybrid, "seed = 6\nthermalization = 50\nmeasurements = 3000");
    let (c, out) = write_card(d, &format!("su{n}_hybrid"), &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    assert_z(&format!("SU({n}) beta = 4 hybrid plaquette"), scalar(&json, "plaquette"), exact_plaquette(n, 4.0), 0.0);
}

/// Flow-assisted swaps of SU(n) between two couplings `betas` with the models `w`: the swap
/// ratio ⟨e^{log r}⟩ = 1 and both plaquettes exact.
fn swaps(d: &Path, n: u32, betas: [f64; 2], w: [&PathBuf; 2]) {
    let text = format!(
        "[theory]\nplugin = \"sun\"\nlattice = [8, 8]\nn = {n}\nbeta = {b0}\n\n[model]\nplugin = \"flow-sun\"\n{FLOW}\n\n\
         [[replicas]]\nbeta = {b0}\nweights = \"{}\"\n\n[[replicas]]\nbeta = {b1}\nweights = \"{}\"\n\n\
         [[chain]]\nkind = \"hmc\"\nmd_steps = 5\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3\n\n\
         [[chain]]\nkind = \"replica_exchange\"\nflow = true\n\n\
         [run]\noutput = \"{{OUT}}\"\nseed = 7\nthermalization = 20\nmeasurements = 1500\nstart = \"hot\"\n",
        w[0].display(),
        w[1].display(),
        b0 = betas[0],
        b1 = betas[1],
    );
    let (c, out) = write_card(d, &format!("su{n}_swaps"), &text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    let json = analyze_json(&out);
    let sw = &json["replica_exchange"]["swaps"]["replica_exchange"];
    let e = &sw["exp_log_ratio"];
    let acc = sw["acceptance"].as_f64().unwrap();
    println!(
        "SU({n}) flow-assisted swaps beta = {} <-> {}: acceptance {acc:.4}, <exp(log r)> = {:.4}({:.4})",
        betas[0],
        betas[1],
        e[0].as_f64().unwrap(),
        e[1].as_f64().unwrap()
    );
    assert!(acc > 0.0 && acc < 1.0, "SU({n}) swap acceptance {acc}");
    assert_z(
        &format!("SU({n}) flow-assisted swaps <exp(log r)>"),
        (e[0].as_f64().unwrap(), e[1].as_f64().unwrap()),
        1.0,
        0.0,
    );
    for (r, beta) in betas.iter().enumerate() {
        let got = common::scalar(&json["replicas"][r], "plaquette");
        let exact = if *beta == 4.3 { exact_su2_plaquette(4.3) } else { exact_plaquette(n, *beta) };
        assert_z(&format!("SU({n}) swaps, beta = {beta}: plaquette"), got, exact, 0.0);
    }
}

/// u(β) = I₂(β)/I₁(β) for SU(2) in 2D (a_j/d_j = 2 I_{2j+1}(β)/β; the L = 8 torus agrees with
/// infinite volume to 10 digits at these couplings).
fn exact_su2_plaquette(beta: f64) -> f64 {
    common::bessel_i(2, beta) / common::bessel_i(1, beta)
}

/// Bad input: an SU(3) model on an SU(2) theory, a flow-sun model on the U(1) theory, lattices
/// that do not fit the masks, and weights of another N are refused with messages that name the
/// mismatch.
#[test]
fn bad_sun_model_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flow = "[[chain]]\nkind = \"flow\"";
    let short = "seed = 1\nmeasurements = 2";
    let none = d.join("none.safetensors");
    // the card says n = 3, the theory is SU(2)
    let text = card(2, 8, 2.0, "n = 3", &none, "", flow, short);
    let (c, _) = write_card(d, "n_mismatch", &text);
    expect_failure(&["run", c.to_str().unwrap(), "-q"], &["n:", "SU(3)", "SU(2)"]);
    // flow-sun on the U(1) theory
    let text = format!(
        "[theory]\nplugin = \"u1\"\nlattice = [8, 8]\nbeta = 2.0\n\n[model]\nplugin = \"flow-sun\"\n\n{flow}\n\n[run]\noutput = \"{{OUT}}\"\n{short}\n"
    );
    let (c, _) = write_card(d, "on_u1", &text);
    expect_failure(&["run", c.to_str().unwrap(), "-q"], &["flow-sun", "SU(N)", "Angle"]);
    // a lattice that does not fit the masks
    let text = card(3, 6, 2.0, "", &none, "", flow, short);
    let (c, _) = write_card(d, "l6", &text);
    expect_failure(&["run", c.to_str().unwrap(), "-q"], &["mask_period"]);
    // weights trained for SU(2), read by an SU(3) model
    let w2 = d.join("su2.safetensors");
    let text = card(2, 8, 2.0, "layers = 2\nhidden = [4]", &w2, "[train]\nsteps = 2\nbatch = 4\nseed = 1", flow, short);
    let (c, _) = write_card(d, "su2_weights", &text);
    run_ok(&["train", c.to_str().unwrap(), "-q"]);
    let text = card(3, 8, 2.0, "layers = 2\nhidden = [4]", &w2, "", flow, short);
    let (c, _) = write_card(d, "su3_reads_su2", &text);
    expect_failure(&["run", c.to_str().unwrap(), "-q"], &["weights are for n=2", "n=3"]);
}
