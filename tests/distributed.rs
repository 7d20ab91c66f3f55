//! Runs spread over several ranks give the bits of a one-rank run. The ranks here are threads
//! of the test process (`latflow_core::comm::threads`), each with its own `Job` and its own
//! theory and model objects, so every line of the multi-rank code runs without MPI; the MPI
//! build runs the same cards under `mpirun` (tools/mpi_check.sh).

mod common;

use std::path::{Path, PathBuf};

use common::{all_bits, write_card};
use latflow_core::comm;
use latflow_host::job::Job;
use latflow_host::run::{run, RunOptions};

/// The in-tree plugins' directory: beside this test binary (target/<profile>/deps).
fn plugin_dirs() -> Vec<PathBuf> {
    vec![std::env::current_exe().unwrap().parent().unwrap().to_path_buf()]
}

/// Runs `f(rank, job)` on `ranks` thread-ranks, each with its own `Job`; every rank's result,
/// an error as its text. A panicking rank fails the test.
fn on_thread_ranks<T: Send>(ranks: u32, f: impl Fn(usize, Job) -> anyhow::Result<T> + Sync) -> Vec<Result<T, String>> {
    common::latflow(); // checks that the plugins the ranks load are fresh
    let comms = comm::threads(ranks);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, c)| s.spawn(move || f(rank, Job::new(c)).map_err(|e| format!("{e:#}"))))
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}

/// Runs `card` on `ranks` thread-ranks (fresh, or `--resume`); returns every rank's result.
fn run_on_ranks(card: &Path, ranks: u32, resume: bool) -> Vec<Result<PathBuf, String>> {
    on_thread_ranks(ranks, |_, job| {
        run(card, &RunOptions { resume, quiet: true, force: false, plugin_dirs: plugin_dirs(), job, read_limit: None })
    })
}

fn ok_on_every_rank(results: Vec<Result<PathBuf, String>>) -> PathBuf {
    let mut out = None;
    for (rank, r) in results.into_iter().enumerate() {
        let p = r.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        out.get_or_insert(p);
    }
    out.expect("at least one rank")
}

fn ladder_card(dir: &Path, name: &str, chain: &str, model: &str, measurements: u64) -> (PathBuf, PathBuf) {
    let text = format!(
        "[theory]\nplugin = \"phi4\"\nlattice = [4, 4]\nm2 = 0.5\nlambda = 0.0\n\n\
         [ladder]\nparameter = \"m2\"\nvalues = [0.3, 0.5, 0.8, 1.2, 1.8]\n\n{model}\n\n{chain}\n\n\
         [run]\noutput = \"{{OUT}}\"\nseed = 17\nthermalization = 5\nmeasurements = {measurements}\nsave_every = 7\ncheckpoint_every = 11\nstart = \"hot\"\n"
    );
    write_card(dir, name, &text)
}

/// Accepted swaps of the pair (i, i + 1) in an ensemble (the first `replica_exchange` step).
fn accepted_swaps(out: &Path, i: usize) -> u64 {
    let json = common::analyze_json(out);
    let swaps = json["replica_exchange"]["swaps"].as_object().expect("swap statistics");
    let (_, step) = swaps.iter().next().expect("a replica_exchange step");
    step["accepts"][i][i + 1].as_u64().expect("an accept count")
}

const HMC_AND_SWAPS: &str = "[[chain]]\nkind = \"hmc\"\nmd_steps = 5\ntrajectory_length = 1.0\n\n\
                             [[chain]]\nkind = \"replica_exchange\"\nrepeat = 2";

#[test]
fn a_ladder_over_two_and_three_ranks_gives_the_bits_of_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (card, _) = ladder_card(dir.path(), "ladder", HMC_AND_SWAPS, "", 60);
    let one = ok_on_every_rank(run_on_ranks(&card, 1, false));
    let reference = all_bits(&one);
    // blocks over 2 ranks: {0, 1} | {2, 3, 4}; over 3: {0} | {1, 2} | {3, 4}: pairs (1, 2) and
    // (0, 1), (2, 3) cross ranks, and they did swap
    for pair in [0, 1, 2] {
        assert!(accepted_swaps(&one, pair) > 5, "pair {pair} hardly swapped: the test would not see a cross-rank swap");
    }
    let ck_one = std::fs::read(format!("{}.ckpt", one.display())).unwrap();
    assert!(!reference.is_empty());
    for ranks in [2, 3] {
        std::fs::rename(&one, dir.path().join("one.h5")).unwrap();
        let _ = std::fs::remove_file(format!("{}.ckpt", one.display()));
        let out = ok_on_every_rank(run_on_ranks(&card, ranks, false));
        assert!(all_bits(&out) == reference, "{ranks} ranks: the ensemble differs from the one-rank run");
        // the checkpoint (gathered from every rank) is the one-rank checkpoint, byte for byte
        let ck = std::fs::read(format!("{}.ckpt", out.display())).unwrap();
        assert!(ck == ck_one, "{ranks} ranks: the checkpoint differs from the one-rank run's");
        std::fs::rename(dir.path().join("one.h5"), &one).ok();
    }
}

#[test]
fn flow_assisted_swaps_split_between_ranks_give_the_bits_of_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let chain = "[[chain]]\nkind = \"hmc\"\nmd_steps = 4\ntrajectory_length = 1.0\n\n\
                 [[chain]]\nkind = \"replica_exchange\"\nflow = true";
    let model = "[model]\nplugin = \"flow-scalar\"\nlayers = 2\nhidden = [4]\ndtype = \"f64\"";
    let (card, out) = ladder_card(dir.path(), "flow", chain, model, 60);
    let one = ok_on_every_rank(run_on_ranks(&card, 1, false));
    let reference = all_bits(&one);
    assert!(accepted_swaps(&one, 1) > 0, "the cross-rank pair (1, 2) never swapped");
    std::fs::remove_file(&one).unwrap();
    std::fs::remove_file(format!("{}.ckpt", out.display())).unwrap();
    let two = ok_on_every_rank(run_on_ranks(&card, 2, false));
    assert!(all_bits(&two) == reference, "flow-assisted swaps over 2 ranks differ from 1 rank");
}

#[test]
fn a_run_killed_on_one_rank_resumes_on_two_with_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = ladder_card(dir.path(), "resume", HMC_AND_SWAPS, "", 20_000);
    let reference = all_bits(&ok_on_every_rank(run_on_ranks(&card, 1, false)));
    // Kill a one-rank run as soon as it has written a checkpoint, and resume it on two ranks.
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(format!("{}.ckpt", out.display())).unwrap();
    let mut child = common::latflow().args(["run", card.to_str().unwrap(), "-q"]).spawn().unwrap();
    let ckpt = PathBuf::from(format!("{}.ckpt", out.display()));
    let start = std::time::Instant::now();
    while !ckpt.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it could be killed: make it longer");
    let done = latflow_host::checkpoint::Checkpoint::load(&ckpt).expect("the checkpoint").sweeps_done;
    assert!(done < 20_000, "the checkpoint is of the finished run");
    let resumed = ok_on_every_rank(run_on_ranks(&card, 2, true));
    assert!(all_bits(&resumed) == reference, "a one-rank run resumed on two ranks differs from the uninterrupted run");
}

#[test]
fn bad_jobs_are_refused_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (card, _) = ladder_card(dir.path(), "ladder", HMC_AND_SWAPS, "", 60);
    // more ranks than couplings
    for r in run_on_ranks(&card, 6, false) {
        let e = r.unwrap_err();
        assert!(e.contains("the ladder has 5 couplings and the job 6 ranks"), "{e}");
    }
    // a plain chain of a theory without domain decomposition cannot be split over ranks
    let (plain, _) = write_card(
        dir.path(),
        "plain",
        "[theory]\nplugin = \"phi4\"\nlattice = [4, 4]\nm2 = 0.5\nlambda = 0.0\n\n\
         [[chain]]\nkind = \"hmc\"\nmd_steps = 5\n\n[run]\noutput = \"{OUT}\"\nseed = 1\nmeasurements = 10\n",
    );
    for r in run_on_ranks(&plain, 2, false) {
        let e = r.unwrap_err();
        assert!(e.contains("2 ranks") && e.contains("cannot be split") && e.contains("replica ladder"), "{e}");
    }
    // ranks started on different cards (another seed on rank 1)
    let (other, _) = ladder_card(dir.path(), "other", HMC_AND_SWAPS, "", 60);
    std::fs::write(&other, std::fs::read_to_string(&card).unwrap().replace("seed = 17", "seed = 18")).unwrap();
    let results = on_thread_ranks(2, |rank, job| {
        let path = if rank == 0 { &card } else { &other };
        run(path, &RunOptions { quiet: true, plugin_dirs: plugin_dirs(), job, ..Default::default() })
    });
    for r in results {
        let e = r.unwrap_err();
        assert!(e.contains("rank 1 was started with another card"), "{e}");
    }
}

#[test]
fn a_build_without_mpi_refuses_to_run_as_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = ladder_card(dir.path(), "ladder", HMC_AND_SWAPS, "", 60);
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        let o = common::latflow().env(var, "2").args(["run", card.to_str().unwrap(), "-q"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("this build has no MPI support") && err.contains("--features mpi"), "{var}: {err}");
        assert!(!out.exists(), "nothing is written");
    }
    // one rank in the environment is one process
    let o = common::latflow().env("OMPI_COMM_WORLD_SIZE", "1").args(["run", card.to_str().unwrap(), "-q"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn chains_card(dir: &Path, name: &str, chains: u64) -> (PathBuf, PathBuf) {
    let text = format!(
        "[theory]\nplugin = \"phi4\"\nlattice = [4, 4]\nm2 = 0.5\nlambda = 0.0\n\n\
         [[chain]]\nkind = \"hmc\"\nmd_steps = 5\ntrajectory_length = 1.0\n\n\
         [run]\noutput = \"{{OUT}}\"\nseed = 5\nthermalization = 5\nmeasurements = 50\nsave_every = 10\nstart = \"hot\"\nchains = {chains}\n"
    );
    write_card(dir, name, &text)
}

#[test]
fn independent_chains_have_the_same_bits_on_any_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = chains_card(dir.path(), "chains", 3);
    let path = |c: u64| {
        let stem = out.file_stem().unwrap().to_string_lossy().into_owned();
        out.with_file_name(format!("{stem}.chain{c}.h5"))
    };
    ok_on_every_rank(run_on_ranks(&card, 1, false));
    let one: Vec<Vec<u64>> = (0..3).map(|c| all_bits(&path(c))).collect();
    assert!(one[0] != one[1] && one[1] != one[2], "the chains are not independent");
    // chain 0 is the plain run of the card with one chain
    let (single, single_out) = chains_card(dir.path(), "single", 1);
    ok_on_every_rank(run_on_ranks(&single, 1, false));
    assert!(all_bits(&single_out) == one[0], "chain 0 differs from the one-chain run");
    for ranks in [2, 3] {
        for c in 0..3 {
            std::fs::remove_file(path(c)).unwrap();
            std::fs::remove_file(format!("{}.ckpt", path(c).display())).unwrap();
        }
        ok_on_every_rank(run_on_ranks(&card, ranks, false));
        for c in 0..3 {
            assert!(all_bits(&path(c)) == one[c as usize], "{ranks} ranks: chain {c} differs");
        }
    }
    // more ranks than chains
    for r in run_on_ranks(&card, 4, false) {
        let e = r.unwrap_err();
        assert!(e.contains("the card has 3 chain(s) and the job 4 ranks"), "{e}");
    }
}

/// `latflow scaling` on thread-ranks: the domain-decomposed SU(3) HMC on 2 ranks gives the
/// trajectories of 1 rank (ΔH, acceptance and plaquette bit for bit: 8×4×8×8 has whole
/// reduction chunks on each rank); on 4 ranks (half chunks) the same accept decisions and ΔH
/// to rounding; a lattice that does not divide over the ranks is refused on every rank.
#[test]
fn the_decomposed_su3_hmc_gives_the_trajectories_of_one_rank() {
    use clap::Parser;
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        a: latflow_host::scaling::ScalingArgs,
    }
    let args = |extra: &[&str]| {
        let mut v = vec!["scaling", "--trajectories", "3", "--md-steps", "6", "--reps", "3"];
        v.extend_from_slice(extra);
        Args::parse_from(v).a
    };
    let on_ranks = |ranks: u32, a: latflow_host::scaling::ScalingArgs| {
        on_thread_ranks(ranks, |_, job| latflow_host::scaling::run(&a, &job))
    };
    let history = |r: &serde_json::Value| -> Vec<(f64, bool, f64)> {
        r["trajectories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["delta_h"].as_f64().unwrap(), t["accepted"].as_bool().unwrap(), t["plaquette"].as_f64().unwrap()))
            .collect()
    };
    let root = |mut v: Vec<Result<Option<serde_json::Value>, String>>| {
        let r = v.remove(0).unwrap().expect("the root's report");
        for other in v {
            assert!(other.unwrap().is_none(), "only the root reports");
        }
        r
    };
    let a = args(&["--lattice", "8,4,8,8"]);
    let one = root(on_ranks(1, a.clone()));
    let two = root(on_ranks(2, a.clone()));
    assert_eq!(two["ranks"], 2);
    assert_eq!(two["local_lattice"], serde_json::json!([4, 4, 8, 8]));
    let (h1, h2) = (history(&one), history(&two));
    assert!(h1.iter().any(|t| t.1), "no accepted trajectory");
    for (a, b) in h1.iter().zip(&h2) {
        assert!(a.0.to_bits() == b.0.to_bits() && a.1 == b.1 && a.2.to_bits() == b.2.to_bits(), "{a:?} vs {b:?}");
    }
    let four = history(&root(on_ranks(4, a.clone())));
    for (a, b) in h1.iter().zip(&four) {
        assert!((a.0 - b.0).abs() < 1e-9 && a.1 == b.1 && (a.2 - b.2).abs() < 1e-12, "{a:?} vs {b:?}");
    }
    // the model's figures are there and sane
    assert!(two["measured"]["latency_s"].as_f64().unwrap() > 0.0);
    assert!(two["per_trajectory"]["halo_exchanges"].as_f64().unwrap() >= 6.0);
    for net in two["model"].as_array().unwrap() {
        for p in net["predictions"].as_array().unwrap() {
            let e = p["weak_efficiency"].as_f64().unwrap();
            assert!(e > 0.0 && e <= 1.0, "{p}");
        }
    }
    for r in on_ranks(3, a.clone()) {
        let e = r.unwrap_err();
        assert!(e.contains("extent 8 along axis 0 is not divisible by the 3 ranks"), "{e}");
    }
}

/// A training card of a small flow (`chunks` chunks of a batch of `batch`), weights in `dir`.
fn train_card(dir: &Path, name: &str, chunks: u32, batch: u32, steps: u32) -> PathBuf {
    let text = format!(
        "[theory]\nplugin = \"phi4\"\nlattice = [4, 4]\nm2 = 0.5\nlambda = 0.5\n\n\
         [model]\nplugin = \"flow-scalar\"\nlayers = 2\nhidden = [4]\ndtype = \"f64\"\nweights = \"{{DIR}}/{name}.safetensors\"\n\n\
         [train]\nsteps = {steps}\nbatch = {batch}\nchunks = {chunks}\nlearning_rate = 0.01\ncheckpoint_every = 4\n\n\
         [[chain]]\nkind = \"flow\"\n\n\
         [run]\noutput = \"{{OUT}}\"\nseed = 3\nmeasurements = 10\n"
    )
    .replace("{DIR}", &dir.display().to_string());
    write_card(dir, name, &text).0
}

/// Trains `card` on `ranks` thread-ranks (fresh with --force, or --resume).
fn train_on(card: &Path, ranks: u32, resume: bool) -> Vec<Result<PathBuf, String>> {
    on_thread_ranks(ranks, |_, job| {
        let opts = latflow_host::train::TrainOptions { quiet: true, plugin_dirs: plugin_dirs(), resume, force: !resume, budget: None, job };
        latflow_host::train::train(card, &opts)
    })
}

/// The weights, and the training history without its timing column.
fn training_outputs(weights: &Path) -> (Vec<u8>, Vec<String>) {
    let w = std::fs::read(weights).unwrap();
    let hist = std::fs::read_to_string(format!("{}.history.csv", weights.display())).unwrap();
    let rows: Vec<String> = hist.lines().map(|l| l.rsplit_once(',').map_or(l, |(a, _)| a).to_string()).collect();
    (w, rows)
}

/// Data-parallel training: with `[train] chunks = k` each step's batch is k chunks with their
/// own streams, the ranks share the chunks, and the chunk gradients are averaged in chunk
/// order, so training on 2 or 4 ranks writes the weights (and history) of 1 rank, byte for
/// byte. Chunks that do not split over the ranks, or a batch that does not split into chunks,
/// are refused.
#[test]
fn data_parallel_training_gives_the_weights_of_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let card = |name: &str, chunks: u32, batch: u32| train_card(dir.path(), name, chunks, batch, 6);
    for (chunks, ranks) in [(2, 2), (4, 2), (4, 4)] {
        let c = card(&format!("dp{chunks}"), chunks, 8);
        let weights = ok_on_every_rank(train_on(&c, 1, false));
        let one = training_outputs(&weights);
        assert_eq!(one.1.len(), 7, "a header and 6 steps");
        std::fs::remove_file(&weights).unwrap();
        let again = ok_on_every_rank(train_on(&c, ranks, false));
        assert!(training_outputs(&again) == one, "{chunks} chunks on {ranks} ranks: the training differs from 1 rank");
    }
    // the chunks change the training (other streams), the rank count does not
    let whole = ok_on_every_rank(train_on(&card("whole", 1, 8), 1, false));
    let two = ok_on_every_rank(train_on(&card("dp2", 2, 8), 1, false));
    assert!(training_outputs(&whole).0 != training_outputs(&two).0);
    for r in train_on(&card("odd", 2, 8), 3, false) {
        let e = r.unwrap_err();
        assert!(e.contains("chunks = 2 does not split over the job's 3 ranks"), "{e}");
    }
    let e = train_on(&card("bad", 3, 8), 1, false).remove(0).unwrap_err();
    assert!(e.contains("the batch of 8 does not split into 3 chunks"), "{e}");
}

/// Data-parallel training on one rank with `[run] threads` > 1 differentiates the chunks side by
/// side, on one replica of the model per thread, and writes the weights and history of
/// `threads = 1`, byte for byte.
#[test]
fn chunks_side_by_side_on_threads_give_the_weights_of_one_thread() {
    let dir = tempfile::tempdir().unwrap();
    let outputs: Vec<_> = [1, 2, 3]
        .into_iter()
        .map(|threads| {
            let c = train_card(dir.path(), &format!("lanes{threads}"), 4, 8, 6);
            let text = std::fs::read_to_string(&c).unwrap().replace("[run]\n", &format!("[run]\nthreads = {threads}\n"));
            std::fs::write(&c, text).unwrap();
            training_outputs(&ok_on_every_rank(train_on(&c, 1, false)))
        })
        .collect();
    assert!(outputs[1] == outputs[0], "2 threads: the training differs from 1 thread");
    assert!(outputs[2] == outputs[0], "3 threads: the training differs from 1 thread");

    // stopped by a budget after its first step and resumed, on 2 threads: the replicas copy the
    // resumed model (weights and Adam's state) and keep in step with it
    let c = train_card(dir.path(), "stopped2", 4, 8, 6);
    let text = std::fs::read_to_string(&c).unwrap().replace("[run]\n", "[run]\nthreads = 2\n");
    std::fs::write(&c, text).unwrap();
    let budget = Some(std::time::Duration::from_nanos(1));
    let stopped = on_thread_ranks(1, |_, job| {
        let opts = latflow_host::train::TrainOptions { quiet: true, plugin_dirs: plugin_dirs(), resume: false, force: true, budget, job };
        latflow_host::train::train(&c, &opts)
    });
    let w = ok_on_every_rank(stopped);
    assert_eq!(latflow_host::train::checkpoint_steps(&PathBuf::from(format!("{}.train.ckpt", w.display()))).ok(), Some(1));
    let resumed = ok_on_every_rank(train_on(&c, 1, true));
    assert!(training_outputs(&resumed) == outputs[0], "stopped and resumed on 2 threads, the training differs");
}

/// A data-parallel training killed on one process after a checkpoint and resumed on two ranks
/// writes the weights of the uninterrupted training.
#[test]
fn a_killed_data_parallel_training_resumes_on_two_ranks_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let card = train_card(dir.path(), "long", 2, 8, 3000);
    let weights = ok_on_every_rank(train_on(&card, 1, false));
    let reference = training_outputs(&weights);
    std::fs::remove_file(&weights).unwrap();
    let ckpt = PathBuf::from(format!("{}.train.ckpt", weights.display()));
    let _ = std::fs::remove_file(&ckpt);
    let mut child = common::latflow().args(["train", card.to_str().unwrap(), "-q"]).spawn().unwrap();
    let start = std::time::Instant::now();
    while !ckpt.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the training finished before it could be killed: make it longer");
    assert!(!weights.exists(), "the killed training wrote its final weights");
    let done = latflow_host::train::checkpoint_steps(&ckpt).expect("the checkpoint");
    assert!(done > 0 && done < 3000, "the checkpoint is at step {done}");
    let resumed = ok_on_every_rank(train_on(&card, 2, true));
    assert!(training_outputs(&resumed) == reference, "resumed on 2 ranks, the training differs from the uninterrupted one");
}

/// A card of one SU(N) chain: HMC from a hot start, every observable, configurations saved.
fn sun_card(dir: &Path, name: &str, theory: &str, chain: &str, measurements: u64) -> (PathBuf, PathBuf) {
    let text = format!(
        "[theory]\nplugin = \"sun\"\n{theory}\nwilson_loops = [[1, 1], [2, 1]]\n\n{chain}\n\n\
         [run]\noutput = \"{{OUT}}\"\nseed = 9\nthermalization = 2\nmeasurements = {measurements}\nsave_every = 3\ncheckpoint_every = 4\nstart = \"hot\"\n"
    );
    write_card(dir, name, &text)
}

const SUN_HMC: &str = "[[chain]]\nkind = \"hmc\"\nmd_steps = 6\ntrajectory_length = 1.0";

/// `latflow run` of one SU(3) chain on 2 ranks splits the lattice (domain decomposition) and
/// writes the ensemble of the one-rank run bit for bit: ΔH and every step column, every
/// observable, the saved configurations and the checkpoint (64×32: each rank holds whole
/// reduction chunks). A one-rank run killed after a checkpoint resumes on 2 ranks with the
/// bits of the uninterrupted run.
#[test]
fn a_split_su3_lattice_runs_the_chain_of_one_rank_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (card, out) = sun_card(dir.path(), "su3", "lattice = [64, 32]\nn = 3\nbeta = 4.0", SUN_HMC, 150);
    let one = ok_on_every_rank(run_on_ranks(&card, 1, false));
    let reference = all_bits(&one);
    let ck_one = std::fs::read(format!("{}.ckpt", one.display())).unwrap();
    let accepted = latflow_host::ensemble::read(&one).unwrap().couplings[0].steps[0].accepted.clone();
    let acc = accepted.iter().filter(|&&a| a != 0).count() as f64 / accepted.len() as f64;
    assert!(acc > 0.3 && acc < 1.0, "acceptance {acc}: the test needs accepted and rejected trajectories");
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(format!("{}.ckpt", out.display())).unwrap();
    let two = ok_on_every_rank(run_on_ranks(&card, 2, false));
    assert!(all_bits(&two) == reference, "2 ranks: the ensemble differs from the one-rank run");
    let ck = std::fs::read(format!("{}.ckpt", two.display())).unwrap();
    assert!(ck == ck_one, "2 ranks: the checkpoint differs from the one-rank run's");

    // killed on one rank after a checkpoint, resumed on two
    std::fs::remove_file(&out).unwrap();
    let ckpt = PathBuf::from(format!("{}.ckpt", out.display()));
    std::fs::remove_file(&ckpt).unwrap();
    let mut child = common::latflow().args(["run", card.to_str().unwrap(), "-q"]).spawn().unwrap();
    let start = std::time::Instant::now();
    while !ckpt.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill();
    assert!(!child.wait().unwrap().success(), "the run finished before it could be killed: make it longer");
    let resumed = ok_on_every_rank(run_on_ranks(&card, 2, true));
    assert!(all_bits(&resumed) == reference, "a one-rank run resumed on two ranks differs from the uninterrupted run");
}

/// Saved links, plaquettes and accept decisions of the first step of a one-coupling file.
fn links_and_plaquettes(p: &Path) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
    let f = latflow_host::ensemble::read(p).unwrap();
    let c = &f.couplings[0];
    let configs = f.read_configs(0, 0, c.configs.as_ref().unwrap().count).unwrap();
    let plaq = c.observables.iter().find(|o| o.name == "plaquette").unwrap().values.clone();
    let steps: Vec<bool> = c.steps[0].accepted.iter().map(|&a| a != 0).collect();
    (configs, plaq, steps)
}

/// Runs `card` on one rank and on `ranks`: the same saved links and accept decisions, the
/// plaquette to rounding (slabs without whole reduction chunks); returns the one-rank run's.
fn split_follows_one_rank(card: &Path, out: &Path, ranks: u32, what: &str) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
    let one = links_and_plaquettes(&ok_on_every_rank(run_on_ranks(card, 1, false)));
    std::fs::remove_file(out).unwrap();
    std::fs::remove_file(format!("{}.ckpt", out.display())).unwrap();
    let split = links_and_plaquettes(&ok_on_every_rank(run_on_ranks(card, ranks, false)));
    assert!(one.0 == split.0, "{what}, {ranks} ranks: the saved links differ from one rank's");
    assert_eq!(one.2, split.2, "{what}, {ranks} ranks: accept decisions");
    for (a, b) in one.1.iter().zip(&split.1) {
        assert!((a - b).abs() < 1e-13, "{what}, {ranks} ranks: plaquette {a} vs {b}");
    }
    one
}

/// Split lattices with partial reduction chunks follow the one-rank chain: SU(2) HMC on 3 ranks
/// of 6×4 (slabs of 2 slices); heat-bath and overrelaxation sweeps (core's split sweeps) with
/// HMC on 2 ranks; the Iwasaki action (rectangles: halos of two slices) on 2 ranks of 8×4 —
/// the same links and accept decisions as one rank, the plaquette to rounding. What a split
/// lattice cannot do is refused on every rank.
#[test]
fn split_lattices_follow_one_rank_and_refusals_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // coarse steps, so that some trajectories are rejected
    let coarse = "[[chain]]\nkind = \"hmc\"\nmd_steps = 2\ntrajectory_length = 2.0";
    let (card, out) = sun_card(dir.path(), "su2", "lattice = [6, 4]\nn = 2\nbeta = 2.0", coarse, 40);
    let one = split_follows_one_rank(&card, &out, 3, "SU(2) HMC");
    assert!(one.2.iter().any(|&a| a) && one.2.iter().any(|&a| !a), "the test needs accepted and rejected trajectories");

    let sweeps = "[[chain]]\nkind = \"heatbath\"\n\n[[chain]]\nkind = \"overrelax\"\nrepeat = 2\n\n\
                  [[chain]]\nkind = \"hmc\"\nmd_steps = 4";
    let (card, out) = sun_card(dir.path(), "sweeps", "lattice = [8, 4]\nn = 3\nbeta = 4.0", sweeps, 20);
    split_follows_one_rank(&card, &out, 2, "SU(3) heat-bath, overrelaxation and HMC");

    let (card, out) = sun_card(dir.path(), "iwasaki", "lattice = [8, 4]\nn = 3\nbeta = 4.0\naction = \"iwasaki\"", SUN_HMC, 20);
    split_follows_one_rank(&card, &out, 2, "SU(3) Iwasaki HMC");

    let refused = |name: &str, theory: &str, chain: &str, ranks: u32, want: &str| {
        let (c, _) = sun_card(dir.path(), name, theory, chain, 4);
        for r in run_on_ranks(&c, ranks, false) {
            let e = r.unwrap_err();
            assert!(e.contains(want), "{name}: {e}");
        }
    };
    refused("odd", "lattice = [6, 4]\nn = 2\nbeta = 2.0", SUN_HMC, 4, "extent 6 along axis 0 is not divisible by the 4 ranks");
    refused("thin", "lattice = [4, 4]\nn = 3\nbeta = 4.0\naction = \"dbw2\"", SUN_HMC, 4, "fewer than the halo of 2 slice(s)");
    let model = format!("{SUN_HMC}\n\n[model]\nplugin = \"flow-sun\"");
    refused("model", "lattice = [8, 4]\nn = 3\nbeta = 4.0", &model, 2, "a model needs whole configurations");
}
