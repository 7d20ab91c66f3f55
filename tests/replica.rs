//! Replica exchange (parallel tempering), plain and flow-assisted, through the whole pipeline:
//! card → one theory object per coupling → parallel chains + swaps → HDF5 (one ensemble per
//! coupling) → `analyze --json`. Fixed seeds; every coupling's observables against exact values
//! with |z| < 4 (Γ-method errors), ⟨e^{log r}⟩ = 1 for every swap step, the stored replica paths
//! against the swap records, bit-identity for 1 and 2 threads and after SIGKILL + resume, and the
//! bad cards that must be refused.
//!
//! The helpers are generic in the theory (plugin, ladder parameter, observable), so that other
//! theories' ladders (e.g. U(1) over β) are one card and one table of exact values away.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_z, exact_wilson_loop, expect_failure, run_ok, write_card};
use latflow_host::ensemble::{read_replica_ensemble, EnsembleFile};
use serde_json::Value;

/// A replica-exchange card: `[theory]` keys (including `plugin`), the ladder (`[ladder]` or
/// `[[replicas]]`), an optional `[model]` section, the `[[chain]]` steps and the `[run]` keys
/// (`output` is added).
pub fn card(theory: &str, ladder: &str, model: &str, chain: &str, run: &str) -> String {
    format!("[theory]\n{theory}\n\n{ladder}\n\n{model}\n\n{chain}\n\n[run]\noutput = \"{{OUT}}\"\n{run}\n")
}

/// Runs a card in `dir` and returns `analyze --json` and the output path.
pub fn run_card(dir: &Path, name: &str, text: &str) -> (Value, PathBuf) {
    let (c, out) = write_card(dir, name, text);
    run_ok(&["run", c.to_str().unwrap(), "-q"]);
    (common::analyze_json(&out), out)
}

/// (mean, error) of a scalar observable at coupling k.
pub fn at(json: &Value, k: usize, name: &str) -> (f64, f64) {
    common::scalar(&json["replicas"][k], name)
}

/// Every coupling's `observable` against `expected[k] = (value, error)`, with |z| < 4.
pub fn check_ladder(json: &Value, what: &str, observable: &str, expected: &[(f64, f64)]) {
    let reps = json["replicas"].as_array().expect("a replica-exchange analysis");
    assert_eq!(reps.len(), expected.len(), "{what}: number of couplings");
    let parameter = json["replica_exchange"]["parameter"].as_str().unwrap();
    for (k, &(value, error)) in expected.iter().enumerate() {
        let v = reps[k]["value"].as_f64().unwrap();
        assert_z(&format!("{what} {parameter} = {v}: {observable}"), at(json, k, observable), value, error);
    }
}

/// The swap statistics of step `label`: every neighbour pair was attempted, with acceptance
/// strictly between 0 and 1, the acceptance matrix is consistent, and ⟨e^{log r}⟩ = 1 (|z| < 4).
/// Returns the overall acceptance.
pub fn check_swaps(json: &Value, label: &str) -> f64 {
    check_swap_counts(json, label);
    let sw = &json["replica_exchange"]["swaps"][label];
    let e = &sw["exp_log_ratio"];
    assert_z(&format!("{label} <exp(log r)>"), (e[0].as_f64().unwrap(), e[1].as_f64().unwrap()), 1.0, 0.0);
    sw["acceptance"].as_f64().unwrap()
}

/// [`check_swaps`] without ⟨e^{log r}⟩ = 1: for ladders with a pair that swaps rarely (≲ 1%),
/// e^{log r} is dominated by rare huge values, and its mean over a short run comes out low with
/// an error bar that does not see the tail (as ⟨e^{−ΔH}⟩ does for HMC with large ΔH).
pub fn check_swap_counts(json: &Value, label: &str) -> f64 {
    let sw = &json["replica_exchange"]["swaps"][label];
    let k = json["replicas"].as_array().unwrap().len();
    let attempts = sw["attempts"].as_array().unwrap();
    let accepts = sw["accepts"].as_array().unwrap();
    let mut total = (0, 0);
    for i in 0..k - 1 {
        let (n, a) = (attempts[i][i + 1].as_u64().unwrap(), accepts[i][i + 1].as_u64().unwrap());
        assert_eq!(attempts[i + 1][i].as_u64().unwrap(), n, "attempts matrix is symmetric");
        let acc = sw["pair_acceptance"][i].as_f64().unwrap();
        println!("{label}: pair ({i}, {}) acceptance {acc:.4} ({a}/{n})", i + 1);
        assert!(n > 0 && a > 0 && a < n, "pair ({i}, {}): {a} of {n} swaps accepted", i + 1);
        total = (total.0 + n, total.1 + a);
    }
    for i in 0..k {
        for j in 0..k {
            if j + 1 != i && i + 1 != j {
                assert_eq!(attempts[i][j].as_u64(), Some(0), "only neighbours are swapped");
            }
        }
    }
    assert_eq!(sw["n"].as_u64().unwrap(), total.0);
    sw["acceptance"].as_f64().unwrap()
}

/// Replays the swap records of the only `replica_exchange` step (applied `repeat` times per
/// sweep) on the stored replica paths: every row is a permutation, and each row follows from the
/// previous one by the accepted swaps of its sweep (pairs (i, i+1) with i ≡ application (mod 2)).
pub fn check_paths(ens: &EnsembleFile, repeat: u64) {
    let ens = ens.ladder().expect("a replica-exchange ensemble");
    let k = ens.values.len();
    let rows: Vec<&[u64]> = ens.replica_coupling.chunks(k).collect();
    assert_eq!(ens.swaps.len(), 1);
    let sw = &ens.swaps[0];
    let pairs = &sw.columns.iter().find(|(c, _)| c == "pair").unwrap().1;
    let mut next = 0;
    for (row, &sweep) in rows.iter().zip(&ens.path_sweeps) {
        let mut sorted = row.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..k as u64).collect::<Vec<_>>(), "sweep {sweep}: not a permutation");
    }
    let mut state: Vec<u64> = rows[0].to_vec();
    for (i, &sweep) in ens.path_sweeps.iter().enumerate() {
        for r in 0..repeat {
            let parity = ((sweep * repeat + r) % 2) as usize;
            for p in (parity..k - 1).step_by(2) {
                assert_eq!(pairs[next] as usize, p, "sweep {sweep}: swap record {next} is for the wrong pair");
                if i > 0 && sw.accepted[next] == 1 {
                    for c in state.iter_mut() {
                        if *c == p as u64 {
                            *c = p as u64 + 1;
                        } else if *c == p as u64 + 1 {
                            *c = p as u64;
                        }
                    }
                }
                next += 1;
            }
        }
        assert_eq!(state.as_slice(), rows[i], "sweep {sweep}: the path does not follow the accepted swaps");
    }
    assert_eq!(next, pairs.len(), "every swap record was replayed");
}

/// ⟨φ²⟩ of the free field in convention B on an L×L torus: G_B(0) = (1/2V) Σ_p 1/(p̂² + m²)
/// (docs/reference.md §1).
fn free_phi2(l: usize, m2: f64) -> f64 {
    let s2 = |n: usize| 4.0 * (std::f64::consts::PI * n as f64 / l as f64).sin().powi(2);
    let mut sum = 0.0;
    for a in 0..l {
        for b in 0..l {
            sum += 1.0 / (s2(a) + s2(b) + m2);
        }
    }
    sum / (2.0 * (l * l) as f64)
}

/// The replica-exchange ensemble's every number, as bits.
fn replica_bits(path: &Path) -> Vec<u64> {
    let ens = read_replica_ensemble(path).unwrap();
    let mut bits = Vec::new();
    for (k, r) in ens.couplings.iter().enumerate() {
        bits.extend(&r.sweeps);
        for o in &r.observables {
            bits.extend(o.values.iter().map(|v| v.to_bits()));
        }
        for s in &r.steps {
            bits.extend(s.accepted.iter().map(|&a| u64::from(a)));
            for (_, v) in &s.columns {
                bits.extend(v.iter().map(|x| x.to_bits()));
            }
        }
        let n = r.configs.as_ref().expect("configurations are stored").count;
        assert!(n > 0);
        bits.extend(ens.read_configs(k, 0, n).unwrap().iter().map(|x| x.to_bits()));
    }
    let ladder = ens.ladder().expect("a replica-exchange ensemble");
    bits.extend(&ladder.path_sweeps);
    bits.extend(&ladder.replica_coupling);
    for s in &ladder.swaps {
        bits.extend(s.accepted.iter().map(|&a| u64::from(a)));
        for (_, v) in &s.columns {
            bits.extend(v.iter().map(|x| x.to_bits()));
        }
    }
    bits
}

fn assert_same_replica_bits(a: &Path, b: &Path) {
    let (x, y) = (replica_bits(a), replica_bits(b));
    assert_eq!(x.len(), y.len(), "{} and {} differ in size", a.display(), b.display());
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

const FREE_L4: &str = "plugin = \"phi4\"\nlattice = [4, 4]\nm2 = 1.0\nlambda = 0.0";
/// HMC with a randomised trajectory length (fixed-length HMC is not ergodic on the free field's
/// near-harmonic modes; see tests/exact_phi4.rs).
const HMC: &str = "[[chain]]\nkind = \"hmc\"\nmd_steps = 8\ntrajectory_jitter = 0.5";

/// Plain replica exchange over a ladder in m² of the free field (L = 4): every coupling
/// reproduces its exact ⟨φ²⟩ and ⟨S⟩/V = 1/2; every pair swaps with acceptance in (0, 1) and
/// ⟨e^{log r}⟩ = 1; the stored paths follow the swap records; replicas make round trips.
#[test]
fn plain_replica_exchange_reproduces_every_coupling() {
    let dir = tempfile::tempdir().unwrap();
    assert!((free_phi2(4, 1.0) - 0.263492063492 / 2.0).abs() < 1e-12, "the exact formula matches docs/reference.md §1");
    let masses = [0.5, 0.8, 1.2, 1.8];
    let ladder = "[ladder]\nparameter = \"m2\"\nvalues = [0.5, 0.8, 1.2, 1.8]";
    let chain = format!("{HMC}\n\n[[chain]]\nkind = \"replica_exchange\"");
    let text = card(FREE_L4, ladder, "", &chain, "seed = 3\nthermalization = 200\nmeasurements = 20000");
    let (json, out) = run_card(dir.path(), "plain", &text);
    let exact: Vec<(f64, f64)> = masses.iter().map(|&m| (free_phi2(4, m), 0.0)).collect();
    check_ladder(&json, "plain RE", "phi2", &exact);
    check_ladder(&json, "plain RE", "action_density", &[(0.5, 0.0); 4]);
    let acc = check_swaps(&json, "replica_exchange");
    println!("plain swap acceptance over m2 = {masses:?}: {acc:.4}");
    let rt = &json["replica_exchange"]["round_trips"];
    println!("round trips: {} (mean {:.2} sweeps)", rt["count"], rt["mean"].as_f64().unwrap());
    assert!(rt["count"].as_u64().unwrap() > 100, "{rt}");
    let ens = read_replica_ensemble(&out).unwrap();
    assert_eq!(ens.ladder().unwrap().values, masses);
    check_paths(&ens, 1);
    // every coupling's ensemble carries its own parameters; inspect lists every group
    for (k, r) in ens.couplings.iter().enumerate() {
        let p: Value = serde_json::from_str(&r.provenance.theory_params).unwrap();
        assert_eq!(p["m2"].as_f64(), Some(masses[k]));
    }
    let inspect = run_ok(&["inspect", out.to_str().unwrap()]);
    for needle in ["schema version  2", "/replicas/3/observables/phi2", "/replica_exchange/steps/replica_exchange", "m2 = 1.8"] {
        assert!(inspect.contains(needle), "'{needle}' missing from inspect:\n{inspect}");
    }
    let text = run_ok(&["analyze", out.to_str().unwrap()]);
    assert!(text.contains("== replica 3: m2 = 1.8") && text.contains("round trips"), "{text}");
}

/// Plain replica exchange on 2D U(1), L = 8, over β ∈ {1, 2, 3, 4}: every coupling reproduces
/// its exact plaquette and χ_top = ⟨Q²⟩/V (docs/reference.md §3), and every neighbour pair swaps with
/// an acceptance strictly between 0 and 1.
#[test]
fn u1_replica_exchange_reproduces_every_beta() {
    let dir = tempfile::tempdir().unwrap();
    let theory = "plugin = \"u1\"\nlattice = [8, 8]\nbeta = 1.0";
    let ladder = "[ladder]\nparameter = \"beta\"\nvalues = [1.0, 2.0, 3.0, 4.0]";
    let hmc = "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\ntrajectory_length = 1.0\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3";
    let chain = format!("{hmc}\n\n[[chain]]\nkind = \"replica_exchange\"");
    let text = card(theory, ladder, "", &chain, "seed = 17\nthermalization = 200\nmeasurements = 20000\nstart = \"hot\"");
    let (json, out) = run_card(dir.path(), "u1", &text);
    let plaquette = [0.4463899659, 0.6977746580, 0.8099855474, 0.8635300425];
    let chi_top = [0.04063623611, 0.01936404548, 0.01106004700, 0.007531498899];
    check_ladder(&json, "U(1) RE", "plaquette", &plaquette.map(|p| (p, 0.0)));
    check_ladder(&json, "U(1) RE", "topological_susceptibility", &chi_top.map(|c| (c, 0.0)));
    // the β = 1 ↔ 2 pair swaps ~0.6% of the time at L = 8: see check_swap_counts
    let acc = check_swap_counts(&json, "replica_exchange");
    println!("U(1) swap acceptance over beta = 1, 2, 3, 4 (L = 8): {acc:.4}");
    check_paths(&read_replica_ensemble(&out).unwrap(), 1);
}

/// Flow-assisted swaps between free fields at m² = 1.0 and 1.5 (L = 4), with a small flow
/// trained at each coupling: both couplings stay exact, ⟨e^{log r}⟩ = 1, and the swaps are
/// accepted more often than plain swaps between the same couplings. The two flows start from the
/// same initial weights and train with the same stream, so that their errors are correlated and
/// largely cancel in T = F_j ∘ F_i⁻¹ (0.92 against 0.84 with different training seeds).
#[test]
fn flow_assisted_swaps_are_exact_and_beat_plain_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = "[model]\nplugin = \"flow-scalar\"\nlayers = 4\nhidden = [8]";
    let mut weights = Vec::new();
    for (i, m2) in [1.0, 1.5].iter().enumerate() {
        let w = d.join(format!("m2_{i}.safetensors"));
        let text = format!(
            "[theory]\nplugin = \"phi4\"\nlattice = [4, 4]\nm2 = {m2}\nlambda = 0.0\n\n{model}\nweights = \"{}\"\n\n\
             [train]\nsteps = 500\nbatch = 64\nlearning_rate = 3e-3\nseed = 2\n\n[[chain]]\nkind = \"flow\"\n\n\
             [run]\nseed = 1\nmeasurements = 1\noutput = \"{{OUT}}\"\n",
            w.display(),
        );
        let (c, _) = write_card(d, &format!("train_{i}"), &text);
        println!("{}", run_ok(&["train", c.to_str().unwrap(), "-q"]).trim());
        weights.push(w);
    }
    let replicas = format!(
        "[[replicas]]\nm2 = 1.0\nweights = \"{}\"\n\n[[replicas]]\nm2 = 1.5\nweights = \"{}\"",
        weights[0].display(),
        weights[1].display()
    );
    let exact = [(free_phi2(4, 1.0), 0.0), (free_phi2(4, 1.5), 0.0)];
    let mut acceptance = Vec::new();
    for flow in [false, true] {
        let chain = format!("{HMC}\n\n[[chain]]\nkind = \"replica_exchange\"\nflow = {flow}\nrepeat = 2");
        let text = card(FREE_L4, &replicas, model, &chain, "seed = 5\nthermalization = 100\nmeasurements = 20000\nstart = \"cold\"");
        let name = if flow { "flow" } else { "plain" };
        let (json, out) = run_card(d, name, &text);
        check_ladder(&json, name, "phi2", &exact);
        check_ladder(&json, name, "action_density", &[(0.5, 0.0); 2]);
        acceptance.push(check_swaps(&json, "replica_exchange"));
        assert_eq!(json["replica_exchange"]["swaps"]["replica_exchange"]["flow"], flow);
        check_paths(&read_replica_ensemble(&out).unwrap(), 2);
    }
    println!("swap acceptance m2 = 1.0 <-> 1.5 (L = 4): plain {:.4}, flow-assisted {:.4}", acceptance[0], acceptance[1]);
    assert!(acceptance[1] > acceptance[0], "flow-assisted {} ≤ plain {}", acceptance[1], acceptance[0]);
}

/// Flow-assisted swaps between 2D U(1) at β = 1.5 and 2.0 (L = 8), with a small
/// gauge-equivariant flow (flow-u1, whose latent space is its Haar prior) trained at each β:
/// both couplings keep their exact plaquette, and the swaps are accepted more often than plain
/// swaps between the same couplings. As in the φ⁴ test, the two flows start from the same initial
/// weights and train with the same stream. (β = 2.0 ↔ 2.5 is too close for flows this small:
/// plain swaps are already accepted as often as the flows' errors allow, about 0.30 for both.)
/// ⟨e^{log r}⟩ = 1 is checked for the flow-assisted swaps only: the plain swaps' e^{log r}
/// between these couplings has the heavy tail described at [`check_swap_counts`].
#[test]
fn u1_flow_assisted_swaps_are_exact_and_beat_plain_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let betas = [1.5, 2.0];
    let theory = "plugin = \"u1\"\nlattice = [8, 8]\nbeta = 1.5";
    let model = "[model]\nplugin = \"flow-u1\"\nlayers = 8\nhidden = [8, 8]\nkernel = 3\ndtype = \"f64\"";
    let weights: Vec<PathBuf> = (0..betas.len()).map(|i| d.join(format!("beta_{i}.safetensors"))).collect();
    // the trainings are independent (and single-threaded): run them side by side
    std::thread::scope(|s| {
        for (i, (beta, w)) in betas.iter().zip(&weights).enumerate() {
            let text = format!(
                "[theory]\nplugin = \"u1\"\nlattice = [8, 8]\nbeta = {beta}\n\n{model}\nweights = \"{}\"\n\n\
                 [train]\nsteps = 200\nbatch = 64\nlearning_rate = 3e-3\nseed = 3\n\n[[chain]]\nkind = \"flow\"\n\n\
                 [run]\nseed = 1\nmeasurements = 1\noutput = \"{{OUT}}\"\n",
                w.display(),
            );
            let (c, _) = write_card(d, &format!("u1_train_{i}"), &text);
            s.spawn(move || println!("beta = {beta}: {}", run_ok(&["train", c.to_str().unwrap(), "-q"]).trim()));
        }
    });
    let replicas = format!(
        "[[replicas]]\nbeta = {}\nweights = \"{}\"\n\n[[replicas]]\nbeta = {}\nweights = \"{}\"",
        betas[0],
        weights[0].display(),
        betas[1],
        weights[1].display()
    );
    // ⟨cos θ_P⟩ on the 8×8 torus (V = 64 plaquettes), docs/reference.md §3
    assert!((exact_wilson_loop(2.0, 64, 1) - 0.6977746580).abs() < 1e-9, "the exact formula matches docs/reference.md §3");
    let exact = betas.map(|b| (exact_wilson_loop(b, 64, 1), 0.0));
    let hmc = "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\ntrajectory_length = 1.0\nintegrator = \"omelyan2\"\ntrajectory_jitter = 0.3";
    let mut acceptance = Vec::new();
    for flow in [false, true] {
        let chain = format!("{hmc}\n\n[[chain]]\nkind = \"replica_exchange\"\nflow = {flow}\nrepeat = 2");
        let text = card(theory, &replicas, model, &chain, "seed = 5\nthermalization = 100\nmeasurements = 5000\nstart = \"hot\"");
        let name = if flow { "u1_flow" } else { "u1_plain" };
        let (json, out) = run_card(d, name, &text);
        check_ladder(&json, name, "plaquette", &exact);
        acceptance.push(if flow { check_swaps(&json, "replica_exchange") } else { check_swap_counts(&json, "replica_exchange") });
        assert_eq!(json["replica_exchange"]["swaps"]["replica_exchange"]["flow"], flow);
        check_paths(&read_replica_ensemble(&out).unwrap(), 2);
    }
    println!("U(1) swap acceptance beta = 1.5 <-> 2.0 (L = 8): plain {:.4}, flow-assisted {:.4}", acceptance[0], acceptance[1]);
    assert!(acceptance[1] > acceptance[0], "flow-assisted {} ≤ plain {}", acceptance[1], acceptance[0]);
}

/// The same bits for 1 and 2 threads, and after SIGKILLs + resume (every replica's state, its
/// streams and the permutation are in the checkpoint).
#[test]
fn replica_runs_are_bit_identical_across_threads_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ladder = "[ladder]\nparameter = \"lambda\"\nvalues = [0.0, 0.3, 0.7]";
    let chain = format!("{HMC}\n\n[[chain]]\nkind = \"replica_exchange\"\nrepeat = 3");
    let theory = "plugin = \"phi4\"\nlattice = [4, 4]\nm2 = 0.5\nlambda = 0.0";
    let make = |threads: u32, extra: &str| {
        card(
            theory,
            ladder,
            "",
            &chain,
            &format!("seed = 9\nstart = \"hot\"\nthermalization = 10\nmeasurements = 15000\nsave_every = 7\nthreads = {threads}\n{extra}"),
        )
    };
    let (c1, o1) = write_card(d, "t1", &make(1, ""));
    let (c2, o2) = write_card(d, "t2", &make(2, ""));
    run_ok(&["run", c1.to_str().unwrap(), "-q"]);
    run_ok(&["run", c2.to_str().unwrap(), "-q"]);
    assert_same_replica_bits(&o1, &o2);

    let (c, out) = write_card(d, "killed", &make(2, "checkpoint_every = 97"));
    let card = c.to_str().unwrap();
    let ckpt = PathBuf::from(format!("{}.ckpt", out.display()));
    let mut kills = 0;
    for delay in [400u64, 700, 500] {
        let mut cmd = common::latflow();
        cmd.args(["run", card, "-q", if ckpt.exists() { "--resume" } else { "--force" }]);
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    run_ok(&["run", card, "-q", if ckpt.exists() { "--resume" } else { "--force" }]);
    println!("killed {kills} times");
    assert!(kills >= 1, "the run finished before it could be killed");
    assert_same_replica_bits(&o2, &out);
}

/// Bad replica cards: each is refused with exit code 1 and a message naming the card and the
/// field, and leaves no output behind.
#[test]
fn bad_replica_cards_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let re = "[[chain]]\nkind = \"replica_exchange\"";
    let chain = format!("{HMC}\n\n{re}");
    let run_keys = "seed = 1\nmeasurements = 10";
    let ladder = |values: &str| format!("[ladder]\nparameter = \"m2\"\nvalues = {values}");
    let model = "[model]\nplugin = \"flow-scalar\"\nlayers = 2\nhidden = [4]";
    let flow_chain = format!("{HMC}\n\n{re}\nflow = true");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("one", card(FREE_L4, &ladder("[1.0]"), "", &chain, run_keys), vec!["ladder.values", "at least 2 couplings, got 1"]),
        ("nonmono", card(FREE_L4, &ladder("[1.0, 2.0, 1.5]"), "", &chain, run_keys), vec!["ladder.values[2]", "not monotone"]),
        ("dup", card(FREE_L4, &ladder("[1.0, 1.0, 2.0]"), "", &chain, run_keys), vec!["ladder.values[1]", "duplicate"]),
        (
            "both",
            card(FREE_L4, &format!("{}\n\n[[replicas]]\nm2 = 1.0\n\n[[replicas]]\nm2 = 2.0", ladder("[1.0, 2.0]")), "", &chain, run_keys),
            vec!["replicas", "not both"],
        ),
        (
            "noparam",
            card(FREE_L4, "[ladder]\nparameter = \"mass\"\nvalues = [1.0, 2.0]", "", &chain, run_keys),
            vec!["ladder.parameter", "has no parameter 'mass'"],
        ),
        (
            "noparam_replicas",
            card(FREE_L4, "[[replicas]]\nmass = 1.0\n\n[[replicas]]\nmass = 2.0", "", &chain, run_keys),
            vec!["replicas[0].mass", "has no parameter 'mass'"],
        ),
        (
            "badvalue",
            card(FREE_L4, "[ladder]\nparameter = \"lambda\"\nvalues = [-1.0, 0.5]", "", &chain, run_keys),
            vec!["ladder.values[0]", "cannot set lambda = -1"],
        ),
        ("nomodel", card(FREE_L4, &ladder("[1.0, 2.0]"), "", &flow_chain, run_keys), vec!["chain[1].flow", "[model]"]),
        ("noladder", card(FREE_L4, "", "", &chain, run_keys), vec!["chain[1].kind", "needs a replica ladder"]),
        (
            "noweights",
            card(
                FREE_L4,
                &format!("[[replicas]]\nm2 = 1.0\n\n[[replicas]]\nm2 = 2.0\nweights = \"{}\"", d.join("missing.safetensors").display()),
                model,
                &flow_chain,
                run_keys,
            ),
            vec!["replicas[1].weights", "does not exist"],
        ),
    ];
    for (name, text, needles) in &cases {
        let (c, out) = write_card(d, name, text);
        let mut n = vec![c.file_name().unwrap().to_str().unwrap()];
        n.extend(needles);
        expect_failure(&["run", c.to_str().unwrap()], &n);
        assert!(!out.exists(), "{name}: a refused card left {}", out.display());
    }

    // a flow-assisted swap whose model does not fit the theory's layout (XY angles)
    let xy = common::xy_plugin_dir();
    let text = card(
        "plugin = \"xy\"\nlattice = [4, 4]\nbeta = 1.0",
        "[ladder]\nparameter = \"beta\"\nvalues = [0.5, 1.0]",
        "[model]\nplugin = \"flow-scalar\"",
        &format!("[[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n{re}\nflow = true"),
        run_keys,
    );
    let (c, out) = write_card(d, "xy_flow", &text);
    expect_failure(&["--plugin-dir", xy.to_str().unwrap(), "run", c.to_str().unwrap()], &["xy_flow.toml", "[model]", "flow-scalar"]);
    assert!(!out.exists());
}
