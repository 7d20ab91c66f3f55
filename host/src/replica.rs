//! Replica exchange (parallel tempering), plain and flow-assisted.
//!
//! A card with a `[ladder]` (or `[[replicas]]`) runs one replica per coupling: coupling k is the
//! card's `[theory]` with the ladder parameter set to `values[k]` (`Theory::set_parameter`). Each
//! coupling slot owns a theory object at its coupling, its model (if any), its configuration, and
//! its own chain: the card's `hmc`/`flow` steps, each with its own stream
//! `StreamUse::Step { step, slot: Slot::Coupling(k) }` (see [`crate::streams`]). The slots run their chain steps in parallel
//! (rayon, `[run].threads` workers); every slot's numbers depend only on its own streams, so the
//! result is bit-identical for any thread count.
//!
//! A `replica_exchange` step is the swap phase. Application a attempts the pairs (i, i+1) with
//! i ≡ a (mod 2) — even and odd pairs alternate — computing their log-ratios in parallel and then
//! accepting or rejecting them in pair order with [`metropolis_accept`] on the step's own stream.
//!
//! **What is exchanged.** Configurations move between coupling slots; the couplings (theory
//! objects, models, chains and their streams) stay put. So the ensemble stored for slot k is
//! always the ensemble at coupling k, and a *replica* (walker) is the identity of a configuration
//! as it travels along the ladder: the permutation `walker_at[k]` (which replica sits at coupling
//! k) swaps with every accepted exchange, and the path of every replica is stored.
//!
//! **Plain swaps** exchange x_i and x_{i+1} as they are: with theories S_i, S_j (j = i + 1) at
//! their own couplings, log r = −S_i(x_j) − S_j(x_i) + S_i(x_i) + S_j(x_j).
//!
//! **Flow-assisted swaps** (`flow = true`). Each coupling k has a model q_k, the push-forward of a
//! latent density r (the plugin's own prior, shared by every model built from the card's one
//! `[model]` section: N(0, 1) for flow-scalar, uniform angles for flow-u1) through a bijection F_k. The swap proposes
//!
//! ```text
//!     (x_i, x_j) → (x_i', x_j') = (T⁻¹ x_j, T x_i),     T = F_j ∘ F_i⁻¹,
//! ```
//!
//! a deterministic involution of the pair space (applying it twice gives back (x_i, x_j)), so
//! Metropolis–Hastings accepts it with
//!
//! ```text
//!     r = p_i(x_i') p_j(x_j') / (p_i(x_i) p_j(x_j)) · |det J_T(x_i)| · |det J_{T⁻¹}(x_j)|.
//! ```
//!
//! With z = F_i⁻¹(x), q_i(x) = r(z) / |det F_i'(z)| and q_j(T x) = r(z) / |det F_j'(z)|, so
//! |det J_T(x)| = |det F_j'(z)| / |det F_i'(z)| = q_i(x) / q_j(T x), and likewise
//! |det J_{T⁻¹}(y)| = q_j(y) / q_i(T⁻¹ y). With p_k ∝ e^{−S_k} and log w_k = −S_k − log q_k, the
//! normalisations cancel between numerator and denominator and
//!
//! ```text
//!     log r = log w_j(T x_i) − log w_i(x_i) + log w_i(T⁻¹ x_j) − log w_j(x_j)
//!           = [S_i(x_i) − S_i(x_i')] + [S_j(x_j) − S_j(x_j')]              (delta_s)
//!           + [log q_i(x_i) − log q_j(x_j')] + [log q_j(x_j) − log q_i(x_i')]  (delta_log_q).
//! ```
//!
//! **Over several ranks** (an MPI job, see [`crate::job`]) each rank owns a contiguous block of
//! couplings ([`Job::block`]; a rank with none is refused) and runs only their chains; every
//! rank holds the theory objects (and models) of every coupling, which are cheap, but only its
//! own configurations. A pair split between two ranks is proposed in two halves
//! ([`crate::steps::swap::half`]): each rank computes, from its own configuration, the actions
//! (and for flow swaps the log q) the other needs, the two ranks exchange these four numbers,
//! every rank learns every pair's log-ratio (one gather) and draws the same accept decisions
//! from the step's one stream, and only an accepted pair's configurations cross ranks. The
//! root gathers what it stores (measurements every measured sweep, records, configurations
//! when saved) and the checkpoint; the run's files and bits are those of a one-rank run.
//!
//! The models provide z = F⁻¹(x) with log q(x) (`Model::to_latent`) and x = F(z) with log q(x)
//! (`Model::from_latent`). When q_k = p_k exactly, T maps p_i onto p_j and every swap is
//! accepted; plain swaps are the special case T = identity (the swap records' `delta_log_q` is 0).
//! The involution is exact up to the models' floating-point round-off (f32 by default).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use latflow_core::hmc::metropolis_accept;
use latflow_core::Stream;
use rayon::prelude::*;

use crate::card::{Ladder, RunCard, StartChoice, StepCard};
use crate::chain::{Chain, StepRecord};
use crate::checkpoint::{Checkpoint, CheckpointKind, ReplicaCheckpoint};
use crate::ensemble::{exit_if_stuck, ConfigDef, Counts, EnsembleWriter, FileCounts, LadderDef, ReplicaDef, StepDef};
use crate::plugin::{self, ModelHandle, PluginLoadError, SearchPath, TheoryHandle};
use crate::sampler::{chain_step_defs, initial_config, store_coupling, sweep_loop, Sampler};
use crate::setup::{
    build_model, load_checkpoint, observable_defs, provenance, refuse_existing_output, sha256_hex, step_labels, OutputFiles,
    RunOptions,
};
pub use crate::steps::swap::{ExchangeStep, SwapRecord, SWAP_COLUMNS};
use crate::job::{Job, Packer, Unpacker};
use crate::steps::swap::{combine, half, propose, PairSide, Proposal, Side, HALF_LEN};
use crate::steps::StepRecord as Record;
use crate::streams::{stream, StreamUse};

/// One coupling slot.
pub struct Replica {
    /// The theory at this coupling.
    pub theory: TheoryHandle,
    /// This coupling's model, if the card uses models.
    pub model: Option<Arc<ModelHandle>>,
    /// The card's chain steps other than `replica_exchange`, with this slot's streams.
    pub chain: Chain,
    /// The configuration now at this coupling.
    pub config: Vec<f64>,
    records: Vec<Vec<StepRecord>>,
}

impl Replica {
    /// This slot as one side of a swap.
    fn side(&self) -> PairSide<'_> {
        PairSide { theory: &self.theory, model: self.model.as_deref(), config: &self.config }
    }
}

/// A stretch of the sweep: chain steps (positions in every replica's chain) run in parallel, or
/// one `replica_exchange` step (index into [`ReplicaSet::exchange`]).
#[derive(Debug, Clone)]
enum Segment {
    Chains(std::ops::Range<usize>),
    Swap(usize),
}

/// Why a sweep failed.
#[derive(Debug)]
pub struct SweepError {
    /// The card step index.
    pub step: usize,
    /// The coupling slot, or the lower coupling of the pair.
    pub replica: usize,
    /// A plugin's error, or a failed exchange between ranks.
    pub error: anyhow::Error,
}

fn comm_failure(step: usize, replica: usize, error: anyhow::Error) -> SweepError {
    SweepError { step, replica, error }
}

/// All coupling slots, the swap steps, and the replica ↔ coupling permutation.
pub struct ReplicaSet {
    pub replicas: Vec<Replica>,
    pub exchange: Vec<ExchangeStep>,
    /// `walker_at[k]`: the replica (walker) now at coupling k.
    pub walker_at: Vec<usize>,
    plan: Vec<Segment>,
    pool: rayon::ThreadPool,
    /// This sweep's swap records, per exchange step.
    pub swap_records: Vec<Vec<SwapRecord>>,
    /// This process's rank.
    job: Job,
    /// The coupling slots this rank runs (all on one rank).
    owned: std::ops::Range<usize>,
    /// On the root of several ranks, after [`ReplicaSet::collect`]: every coupling's records of
    /// the last sweep and, when it was saved, configuration.
    collected: Vec<CollectedSweep>,
}

/// One coupling's last sweep as the root collects it: each step's records and, when it was
/// saved, the configuration.
type CollectedSweep = (Vec<Vec<StepRecord>>, Option<Vec<f64>>);

impl ReplicaSet {
    /// Builds the slots' chains and the swap steps of a card, with fresh streams. `theories`,
    /// `models` and `configs` are per coupling.
    pub fn new(
        card: &RunCard,
        theories: Vec<TheoryHandle>,
        models: Vec<Option<Arc<ModelHandle>>>,
        configs: Vec<Vec<f64>>,
        job: Job,
    ) -> Result<Self, String> {
        let mut replicas = Vec::with_capacity(theories.len());
        for (k, ((theory, model), config)) in theories.into_iter().zip(models).zip(configs).enumerate() {
            let chain = Chain::for_replica(card, k, &theory, model.clone())?;
            let records = vec![Vec::new(); chain.steps().len()];
            replicas.push(Replica { theory, model, chain, config, records });
        }
        let mut exchange = Vec::new();
        let mut plan = Vec::new();
        let mut pos = 0;
        let mut start = 0;
        for (i, s) in card.chain.iter().enumerate() {
            if let StepCard::ReplicaExchange(x) = s {
                if pos > start {
                    plan.push(Segment::Chains(start..pos));
                }
                plan.push(Segment::Swap(exchange.len()));
                exchange.push(ExchangeStep {
                    card_index: i,
                    card: x.clone(),
                    applications: 0,
                    rng: stream(card.run.seed, StreamUse::Swap { step: i }).map_err(|e| format!("chain[{i}]: {e}"))?,
                });
                start = pos;
            } else {
                pos += 1;
            }
        }
        if pos > start {
            plan.push(Segment::Chains(start..pos));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(card.run.threads as usize)
            .build()
            .map_err(|e| format!("cannot start the replica thread pool: {e}"))?;
        let n = replicas.len();
        let swap_records = vec![Vec::new(); exchange.len()];
        let owned = job.block(n);
        Ok(Self { replicas, exchange, walker_at: (0..n).collect(), plan, pool, swap_records, job, owned, collected: Vec::new() })
    }

    /// The coupling index of each replica (the inverse of `walker_at`).
    pub fn coupling_of_replica(&self) -> Vec<u64> {
        let mut c = vec![0u64; self.walker_at.len()];
        for (k, &w) in self.walker_at.iter().enumerate() {
            c[w] = k as u64;
        }
        c
    }

    /// One sweep: the card's steps in order — chain steps on every slot in parallel, swap steps
    /// across slots. Clears and refills every slot's step records and `swap_records`.
    pub fn sweep(&mut self) -> Result<(), SweepError> {
        for r in &mut self.replicas {
            r.records.iter_mut().for_each(Vec::clear);
        }
        self.swap_records.iter_mut().for_each(Vec::clear);
        for seg in self.plan.clone() {
            match seg {
                Segment::Chains(range) => {
                    let first = self.owned.start;
                    let run = |(k, r): (usize, &mut Replica)| {
                        let k = k + first;
                        let Replica { chain, theory, config, records, .. } = r;
                        chain.sweep_range(range.clone(), theory, config, records).map_err(|(i, error)| SweepError {
                            step: chain.card_indices()[i],
                            replica: k,
                            error: error.into(),
                        })
                    };
                    let owned = &mut self.replicas[self.owned.clone()];
                    if self.pool.current_num_threads() == 1 {
                        owned.iter_mut().enumerate().try_for_each(run)?;
                    } else {
                        self.pool.install(|| owned.par_iter_mut().enumerate().try_for_each(run))?;
                    }
                }
                Segment::Swap(j) => {
                    for _ in 0..self.exchange[j].card.repeat {
                        self.swap(j)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One application of exchange step j.
    fn swap(&mut self, j: usize) -> Result<(), SweepError> {
        let n = self.replicas.len();
        let step = &self.exchange[j];
        let parity = (step.applications % 2) as usize;
        let flow = step.card.flow;
        let card_index = step.card_index;
        let pairs: Vec<usize> = (parity..n.saturating_sub(1)).step_by(2).collect();
        let owned = self.owned.clone();
        let local: Vec<usize> = pairs.iter().copied().filter(|i| owned.contains(i) && owned.contains(&(i + 1))).collect();
        let replicas = &self.replicas;
        let propose = |&i: &usize| {
            propose(flow, &replicas[i].side(), &replicas[i + 1].side())
                .map_err(|error| SweepError { step: card_index, replica: i, error: error.into() })
        };
        // (a fork-join costs more than one small pair)
        let proposals: Vec<Result<Proposal, SweepError>> = if self.pool.current_num_threads() == 1 || local.len() < 2 {
            local.iter().map(propose).collect()
        } else {
            self.pool.install(|| local.par_iter().map(propose).collect())
        };
        let mut proposals: Vec<Option<Proposal>> = {
            let mut all: Vec<Option<Proposal>> = (0..pairs.len()).map(|_| None).collect();
            for (i, p) in local.iter().zip(proposals) {
                all[pairs.iter().position(|q| q == i).unwrap_or_default()] = Some(p?);
            }
            all
        };
        // Pairs split between this rank and a neighbour: halves, exchanged in pair order.
        let mut outgoing: Vec<Option<(usize, Vec<f64>)>> = (0..pairs.len()).map(|_| None).collect();
        let mut ratios = vec![0.0; 3 * pairs.len()]; // (this rank reports it, delta_s, delta_log_q)
        for (p, &i) in pairs.iter().enumerate() {
            let side = match (owned.contains(&i), owned.contains(&(i + 1))) {
                (true, false) => Side::Lower,
                (false, true) => Side::Upper,
                (true, true) => {
                    let prop = proposals[p].as_ref().expect("a local pair has its proposal");
                    ratios[3 * p..3 * p + 3].copy_from_slice(&[1.0, prop.delta_s, prop.delta_log_q]);
                    continue;
                }
                (false, false) => continue,
            };
            let err = |error: PluginLoadError| SweepError { step: card_index, replica: i, error: error.into() };
            let mine = half(flow, side, &self.replicas[i].side(), &self.replicas[i + 1].side()).map_err(err)?;
            let peer = self.job.owner(if side == Side::Lower { i + 1 } else { i }, n);
            let theirs = self.job.exchange(&mine.values, peer, HALF_LEN).map_err(|e| comm_failure(card_index, i, e))?;
            let (lower, upper) = if side == Side::Lower { (&mine.values, &theirs) } else { (&theirs, &mine.values) };
            let (delta_s, delta_log_q) = combine(flow, lower, upper);
            if side == Side::Lower {
                ratios[3 * p..3 * p + 3].copy_from_slice(&[1.0, delta_s, delta_log_q]);
            }
            outgoing[p] = Some((peer, mine.outgoing));
        }
        // Every rank learns every pair's ratio (from the rank of its lower coupling).
        let all = self.job.gather(&ratios).map_err(|e| comm_failure(card_index, 0, e))?;
        let step = &mut self.exchange[j];
        for (p, &i) in pairs.iter().enumerate() {
            let row = all.iter().map(|r| &r[3 * p..3 * p + 3]).find(|r| r[0] == 1.0).unwrap_or(&[0.0, f64::NAN, 0.0]);
            let (delta_s, delta_log_q) = (row[1], row[2]);
            let log_ratio = delta_s + delta_log_q;
            let accepted = metropolis_accept(log_ratio, &mut step.rng);
            if accepted {
                if let Some(prop) = proposals[p].take() {
                    self.replicas[i].config = prop.lower;
                    self.replicas[i + 1].config = prop.upper;
                } else if let Some((peer, out)) = outgoing[p].take() {
                    let mine = if owned.contains(&i) { i } else { i + 1 };
                    let len = self.replicas[mine].config.len();
                    let got = self.job.exchange(&out, peer, len).map_err(|e| comm_failure(card_index, i, e))?;
                    self.replicas[mine].config = got;
                }
                self.walker_at.swap(i, i + 1);
            }
            self.swap_records[j].push(SwapRecord { pair: i, accepted, log_ratio, delta_s, delta_log_q });
        }
        step.applications += 1;
        Ok(())
    }

    /// Every slot's measurement (in parallel), in coupling order, on every rank (each rank
    /// measures its own couplings; the rows are gathered).
    pub fn measure(&self) -> Result<Vec<Vec<f64>>, (usize, anyhow::Error)> {
        let first = self.owned.start;
        let measure = |(k, r): (usize, &Replica)| r.theory.measure(&r.config).map_err(|e| (k + first, anyhow::Error::new(e)));
        let owned = &self.replicas[self.owned.clone()];
        let rows: Vec<Vec<f64>> = if self.pool.current_num_threads() == 1 {
            owned.iter().enumerate().map(measure).collect::<Result<_, _>>()?
        } else {
            self.pool.install(|| owned.par_iter().enumerate().map(measure).collect::<Result<_, _>>())?
        };
        if self.job.size() == 1 {
            return Ok(rows);
        }
        let all = self.job.gather(&rows.concat()).map_err(|e| (first, e))?;
        let width = rows.first().map_or(0, Vec::len);
        Ok(all.iter().flat_map(|r| r.chunks(width.max(1)).map(<[f64]>::to_vec)).collect())
    }

    /// Collective: brings every coupling's records of the last sweep (and its configuration,
    /// when `save_config`) to the root, for [`LadderSampler::store`]. Nothing on one rank.
    fn collect(&mut self, save_config: bool) -> anyhow::Result<()> {
        if self.job.size() == 1 {
            return Ok(());
        }
        let mut msg = Packer::default();
        for r in &self.replicas[self.owned.clone()] {
            for recs in &r.records {
                msg.push(&[recs.len() as f64]);
                for rec in recs {
                    msg.push(&[rec.accepted as u8 as f64]);
                    msg.push(&rec.columns);
                }
            }
            if save_config {
                msg.push(&r.config);
            }
        }
        let all = self.job.gather(&msg.0)?;
        if !self.job.is_root() {
            return Ok(());
        }
        let steps = self.replicas[0].records.len();
        self.collected.clear();
        for (rank, words) in all.iter().enumerate() {
            let mut u = Unpacker::new(words);
            for _ in crate::job::block_of(rank, self.job.size(), self.replicas.len()) {
                let mut records = Vec::with_capacity(steps);
                for _ in 0..steps {
                    let count = u.array()?[0] as usize;
                    let mut recs = Vec::with_capacity(count);
                    for _ in 0..count {
                        let accepted = u.array()?[0] != 0.0;
                        recs.push(Record { accepted, columns: u.array()?.to_vec() });
                    }
                    records.push(recs);
                }
                let config = if save_config { Some(u.array()?.to_vec()) } else { None };
                self.collected.push((records, config));
            }
        }
        Ok(())
    }

    /// The step records of slot k from the last sweep, per chain step.
    pub fn records(&self, k: usize) -> &[Vec<StepRecord>] {
        &self.replicas[k].records
    }

    /// The checkpoint state: (arrays, rngs, swap rngs, swap applications, walker_at). The arrays
    /// are, per slot, its configuration followed by its chain steps' states. Collective: on
    /// several ranks every rank's couplings are gathered (to every rank).
    fn checkpoint_parts(&self) -> anyhow::Result<(Vec<Vec<f64>>, ReplicaCheckpoint)> {
        let mut arrays = Vec::new();
        let mut rngs = Vec::new();
        if self.job.size() == 1 {
            for r in &self.replicas {
                arrays.push(r.config.clone());
                arrays.extend(r.chain.step_states());
                rngs.push(r.chain.rng_states());
            }
        } else {
            let mut msg = Packer::default();
            for r in &self.replicas[self.owned.clone()] {
                msg.push(&r.config);
                for s in r.chain.step_states() {
                    msg.push(&s);
                }
                msg.push_bytes(&serde_json::to_vec(&r.chain.rng_states())?);
            }
            let steps = self.replicas[0].chain.steps().len();
            for (rank, words) in self.job.gather(&msg.0)?.iter().enumerate() {
                let mut u = Unpacker::new(words);
                for _ in crate::job::block_of(rank, self.job.size(), self.replicas.len()) {
                    for _ in 0..=steps {
                        arrays.push(u.array()?.to_vec());
                    }
                    rngs.push(serde_json::from_slice(&u.next_bytes()?)?);
                }
            }
        }
        let ck = ReplicaCheckpoint {
            counts: Vec::new(),
            exchange_counts: Counts::default(),
            rngs,
            swap_rngs: self.exchange.iter().map(|x| x.rng.state()).collect(),
            swap_applications: self.exchange.iter().map(|x| x.applications).collect(),
            walker_at: self.walker_at.iter().map(|&w| w as u64).collect(),
        };
        Ok((arrays, ck))
    }

    /// Restores the state saved by a checkpoint.
    fn restore(&mut self, ck: &ReplicaCheckpoint, arrays: &[Vec<f64>]) -> Result<(), String> {
        let n = self.replicas.len();
        if ck.rngs.len() != n || ck.walker_at.len() != n {
            return Err(format!("checkpoint has {} replicas, the ladder has {n}", ck.rngs.len()));
        }
        if ck.swap_rngs.len() != self.exchange.len() || ck.swap_applications.len() != self.exchange.len() {
            return Err(format!("checkpoint has {} swap steps, the chain has {}", ck.swap_rngs.len(), self.exchange.len()));
        }
        let mut perm: Vec<u64> = ck.walker_at.clone();
        perm.sort_unstable();
        if perm.iter().enumerate().any(|(i, &w)| w != i as u64) {
            return Err("the replica permutation is not a permutation".into());
        }
        let per = 1 + self.replicas[0].chain.steps().len();
        if arrays.len() != n * per {
            return Err(format!("checkpoint has {} arrays, expected {}", arrays.len(), n * per));
        }
        for (k, (r, a)) in self.replicas.iter_mut().zip(arrays.chunks(per)).enumerate() {
            if a[0].len() != r.theory.config_len() {
                return Err(format!("replica {k}: configuration has {} reals, the theory needs {}", a[0].len(), r.theory.config_len()));
            }
            r.config = a[0].clone();
            r.chain.restore_rngs(&ck.rngs[k]).map_err(|e| format!("replica {k}: {e}"))?;
            r.chain.restore_states(&a[1..]).map_err(|e| format!("replica {k}: {e}"))?;
        }
        for (x, (st, apps)) in self.exchange.iter_mut().zip(ck.swap_rngs.iter().zip(&ck.swap_applications)) {
            x.rng = Stream::from_state(st);
            x.applications = *apps;
        }
        self.walker_at = ck.walker_at.iter().map(|&w| w as usize).collect();
        Ok(())
    }
}

/// The per-coupling models of a card: coupling k's weights are `[[replicas]]` k's `weights`, or
/// `[model].weights` (couplings with the same weights share one model object). Returns the
/// models, their provenance (JSON per coupling) and the weights' digests.
#[allow(clippy::type_complexity)]
fn load_models(
    card: &RunCard,
    ladder: &Ladder,
    theories: &[TheoryHandle],
    opts: &RunOptions,
) -> Result<(Vec<Option<Arc<ModelHandle>>>, Vec<String>, Vec<String>)> {
    let file = card.path.display().to_string();
    let Some(mc) = &card.model else { return Ok((vec![None; ladder.len()], vec![String::new(); ladder.len()], Vec::new())) };
    let mut cache: Vec<(Option<PathBuf>, Arc<ModelHandle>, String, String)> = Vec::new();
    let mut models = Vec::new();
    let mut provenance = Vec::new();
    let mut digests = Vec::new();
    for (k, theory) in theories.iter().enumerate() {
        let weights = ladder.weights[k].clone().or_else(|| mc.weights.clone());
        let field = ladder.weights_field(k);
        if let Some((_, m, p, d)) = cache.iter().find(|(w, ..)| *w == weights) {
            models.push(Some(m.clone()));
            provenance.push(p.clone());
            digests.push(d.clone());
            continue;
        }
        let mut handle = build_model(card, theory, &opts.plugin_dirs)?;
        let digest = match &weights {
            Some(w) => {
                if !w.exists() {
                    bail!(
                        "{file}: {field}: '{}' does not exist; train it first with `latflow train` on a card at {} = {}",
                        w.display(),
                        ladder.parameter,
                        ladder.values[k]
                    );
                }
                let bytes = std::fs::read(w).with_context(|| format!("{file}: {field}: cannot read '{}'", w.display()))?;
                handle.load(&bytes).with_context(|| format!("{file}: {field} ('{}')", w.display()))?;
                sha256_hex(&bytes)
            }
            None => {
                eprintln!("note: {file}: coupling {k} has no model weights: using the untrained model");
                sha256_hex(&handle.save(false)?)
            }
        };
        let prov = serde_json::json!({
            "plugin": handle.name, "version": handle.version, "path": handle.path,
            "architecture": serde_json::from_str::<serde_json::Value>(&handle.architecture()).unwrap_or_default(),
            "weights": weights, "weights_sha256": digest,
        })
        .to_string();
        let m = Arc::new(handle);
        cache.push((weights, m.clone(), prov.clone(), digest.clone()));
        models.push(Some(m));
        provenance.push(prov);
        digests.push(digest);
    }
    Ok((models, provenance, digests))
}

/// Runs (or resumes) a replica-exchange card. Returns the output path.
pub fn run(card: &RunCard, opts: &RunOptions) -> Result<PathBuf> {
    let ladder = card.ladder.as_ref().ok_or_else(|| anyhow::anyhow!("{}: not a replica-ladder card", card.path.display()))?;
    let file = card.path.display().to_string();
    let k_count = ladder.len();
    let job = &opts.job;
    if job.size() > k_count {
        bail!(
            "{file}: the ladder has {k_count} couplings and the job {} ranks: every rank needs at least one coupling (start at most {k_count} ranks)",
            job.size()
        );
    }
    let (theories, base_params) = ladder_theories(card, ladder, opts)?;

    // Models, where the chain needs them.
    let flow_swaps = card.chain.iter().any(|s| matches!(s, StepCard::ReplicaExchange(x) if x.flow));
    let needs_models = flow_swaps
        || card.chain.iter().any(|s| matches!(s, StepCard::Flow(_) | StepCard::Reweight(_)))
        || card.run.start == Some(StartChoice::Model);
    let (models, model_prov, digests) = if needs_models {
        load_models(card, ladder, &theories, opts)?
    } else {
        (vec![None; k_count], vec![String::new(); k_count], Vec::new())
    };
    let hash = if digests.is_empty() { card.hash() } else { sha256_hex(format!("{}{}", card.hash(), digests.join("")).as_bytes()) };

    // Output definitions.
    let observables = observable_defs(&theories[0]);
    let replica_defs: Vec<ReplicaDef> = theories
        .iter()
        .zip(&ladder.values)
        .zip(&model_prov)
        .map(|((t, &value), m)| ReplicaDef { value, theory_params: t.params_json(), model: m.clone() })
        .collect();
    let configs_def = (card.run.save_every > 0)
        .then(|| ConfigDef { config_len: theories[0].config_len(), shape: theories[0].layout().config_dims() });
    let out = OutputFiles::of(card);
    let model_json = if needs_models { format!("[{}]", model_prov.join(",")) } else { String::new() };
    let prov = provenance(card, &theories[0], &hash, base_params, model_json);
    job.check_same("card (or model weights)", &hash).with_context(|| file.to_string())?;
    let configs = initial_configs(card, &theories, &models, opts.read_limit)?;
    let mut set = ReplicaSet::new(card, theories, models, configs, job.clone()).map_err(|e| anyhow::anyhow!("{file}: chain: {e}"))?;
    let (steps, exchange_steps) = replica_step_defs(card, &set);

    // Only the root touches the files; every rank restores the checkpoint's state.
    let ladder_def = LadderDef { parameter: &ladder.parameter, replicas: &replica_defs, exchange_steps: &exchange_steps };
    let setup = (|| -> Result<(Option<EnsembleWriter>, u64)> {
    Ok(if opts.resume {
        let ck = load_checkpoint(card, &out, &hash, CheckpointKind::Replica)?;
        let Some(rk) = &ck.replica else {
            bail!("{file}: --resume: checkpoint '{}' holds no replica state", out.checkpoint.display());
        };
        set.restore(rk, &ck.step_states).map_err(|e| anyhow::anyhow!("{file}: --resume: {e}"))?;
        if !job.is_root() {
            return Ok((None, ck.sweeps_done));
        }
        let counts = FileCounts { couplings: rk.counts.clone(), exchange: Some(rk.exchange_counts.clone()) };
        let writer = exit_if_stuck(&out.output, opts.read_limit, || {
            EnsembleWriter::resume_ladder(&out.output, &hash, &ladder_def, &observables, &steps, configs_def.as_ref(), &counts)
        })
        .with_context(|| format!("{file}: run.output (--resume)"))?;
        (Some(writer), ck.sweeps_done)
    } else {
        if !job.is_root() {
            return Ok((None, 0));
        }
        let overwrite = refuse_existing_output(&file, &out.output, &out.checkpoint, opts)?;
        let writer = EnsembleWriter::create_ladder(&out.output, &prov, &ladder_def, &observables, &steps, configs_def.as_ref(), overwrite)
        .with_context(|| format!("{file}: run.output"))?;
        let _ = std::fs::remove_file(&out.checkpoint);
        (Some(writer), 0)
    })
    })();
    let setup = match job.first_failure(setup.is_ok())? {
        None => setup,
        Some(rank) => setup.and_then(|(writer, _)| {
            if writer.is_some() {
                drop(writer);
                out.discard_unless(opts.resume);
            }
            bail!("{file}: rank {rank} could not start the run (its message says why)")
        }),
    };
    let (writer, sweeps_done) = setup?;
    let checked = preflight(&file, &set);
    if let Some(rank) = job.first_failure(checked.is_ok())? {
        if let Some(w) = writer {
            drop(w);
            out.discard_unless(opts.resume);
        }
        return checked.and_then(|_| bail!("{file}: rank {rank} refused the starting state (its message says why)"));
    }
    let mut sampler = LadderSampler { set: &mut set, swap_accepted: 0, swap_attempted: 0 };
    sweep_loop(card, &out, &hash, &mut sampler, writer, sweeps_done, opts)?;
    Ok(out.output)
}

/// One theory object per coupling, at its ladder value; also the base theory's parameters (JSON).
fn ladder_theories(card: &RunCard, ladder: &Ladder, opts: &RunOptions) -> Result<(Vec<TheoryHandle>, String)> {
    let file = card.path.display().to_string();
    let search = SearchPath::new(&opts.plugin_dirs);
    let plugin = plugin::find(&search, &card.theory.plugin).with_context(|| format!("{file}: theory.plugin"))?;
    let base = plugin.new_theory(&card.theory_json()).with_context(|| format!("{file}: [theory]"))?;
    match base.parameter(&ladder.parameter) {
        Err(PluginLoadError::Call { error, .. }) if error.kind == latflow_core::ErrorKind::Unsupported => bail!(
            "{file}: {}: theory '{}' has no parameter '{}' to build a replica ladder on ({})",
            ladder.parameter_field(),
            base.name,
            ladder.parameter,
            error.message
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{file}: {}", ladder.parameter_field()))),
        Ok(_) => {}
    }
    let base_params = base.params_json();
    drop(base);
    let mut theories = Vec::with_capacity(ladder.len());
    let threads = theory_threads(card.run.threads, ladder.len());
    for (k, &v) in ladder.values.iter().enumerate() {
        let mut t = plugin.new_theory(&card.theory_json()).with_context(|| format!("{file}: [theory]"))?;
        t.set_threads(threads).with_context(|| format!("{file}: run.threads"))?;
        t.set_parameter(&ladder.parameter, v)
            .with_context(|| format!("{file}: {}: cannot set {} = {v}", ladder.value_field(k), ladder.parameter))?;
        theories.push(t);
    }
    Ok((theories, base_params))
}

/// The worker threads of each coupling's theory: the `[run] threads` shared among the couplings
/// that run at once (the slots run their chains in parallel on `threads` threads, so each of the
/// min(threads, slots) running at a time gets threads / that, at least 1). Nested pools larger
/// than this only oversubscribe the cores, and a theory whose workers spin between parallel
/// regions (φ⁴'s team) would wait on workers the kernel has descheduled. `0` (the caller's
/// pool) stays 0. The bits never depend on it.
fn theory_threads(threads: u32, slots: usize) -> u32 {
    if threads == 0 {
        return 0;
    }
    let running = (threads as usize).min(slots.max(1)) as u32;
    (threads / running).max(1)
}

/// The starting configuration of every coupling slot, each from its own stream (replaced by
/// the checkpoint's on resume).
fn initial_configs(
    card: &RunCard,
    theories: &[TheoryHandle],
    models: &[Option<Arc<ModelHandle>>],
    read_limit: Option<std::time::Duration>,
) -> Result<Vec<Vec<f64>>> {
    let slot = crate::streams::Slot::Coupling;
    theories.iter().zip(models).enumerate().map(|(k, (t, m))| initial_config(card, t, m.as_deref(), slot(k), read_limit)).collect()
}

/// The stored definitions of the per-coupling chain steps and of the swap steps.
fn replica_step_defs(card: &RunCard, set: &ReplicaSet) -> (Vec<StepDef>, Vec<StepDef>) {
    let kinds: Vec<&str> = card.chain.iter().map(StepCard::kind).collect();
    let labels = step_labels(&kinds);
    let steps = chain_step_defs(card, &set.replicas[0].chain);
    let exchange_steps = set
        .exchange
        .iter()
        .map(|x| StepDef {
            label: labels[x.card_index].clone(),
            kind: "replica_exchange".into(),
            index: x.card_index,
            params: serde_json::to_string(&x.card).unwrap_or_default(),
            columns: SWAP_COLUMNS.iter().map(|c| c.to_string()).collect(),
        })
        .collect();
    (steps, exchange_steps)
}

/// Checks the plugins on the starting state before the run: the action at every coupling, and
/// the models' latent maps for flow-assisted swaps (a model plugin without them is refused
/// here, by name).
fn preflight(file: &str, set: &ReplicaSet) -> Result<()> {
    for (k, r) in set.replicas.iter().enumerate().filter(|(k, _)| set.owned.contains(k)) {
        r.theory.action(&r.config).with_context(|| format!("{file}: [theory] (action of replica {k}'s configuration)"))?;
    }
    if let Some(x) = set.exchange.iter().find(|x| x.card.flow) {
        for (k, r) in set.replicas.iter().enumerate().filter(|(k, _)| set.owned.contains(k)) {
            let m = r.model.as_ref().ok_or_else(|| anyhow::anyhow!("{file}: chain[{}].flow: coupling {k} has no model", x.card_index))?;
            m.to_latent(&r.config).with_context(|| format!("{file}: chain[{}].flow (the model of coupling {k})", x.card_index))?;
        }
    }
    Ok(())
}

/// A replica-exchange run as a [`Sampler`]: the ladder's couplings and swaps, with the swap
/// acceptance so far.
struct LadderSampler<'a> {
    set: &'a mut ReplicaSet,
    swap_accepted: u64,
    swap_attempted: u64,
}

impl Sampler for LadderSampler<'_> {
    fn sweep(&mut self, file: &str, sweep: u64) -> Result<()> {
        self.set.sweep().map_err(|e| {
            let what = if self.set.exchange.iter().any(|x| x.card_index == e.step) {
                format!("pair ({}, {})", e.replica, e.replica + 1)
            } else {
                format!("replica {}", e.replica)
            };
            e.error.context(format!("{file}: chain[{}] ({what}, sweep {sweep})", e.step))
        })
    }

    fn measure(&self, file: &str, sweep: u64) -> Result<Vec<Vec<f64>>> {
        self.set
            .measure()
            .map_err(|(k, e)| e.context(format!("{file}: measurement (replica {k}, sweep {sweep})")))
    }

    fn tally(&mut self) {
        for recs in &self.set.swap_records {
            self.swap_accepted += recs.iter().filter(|r| r.accepted).count() as u64;
            self.swap_attempted += recs.len() as u64;
        }
    }

    /// Every coupling's records, measurement and configuration, then the swaps and the replica
    /// paths.
    fn collect(&mut self, save_config: bool) -> Result<()> {
        self.set.collect(save_config)
    }

    fn store(&self, writer: &mut EnsembleWriter, values: &[Vec<f64>], sweep: u64, save_config: bool) -> Result<()> {
        let set = &*self.set;
        for (k, row) in values.iter().enumerate() {
            if set.job.size() > 1 {
                let (records, config) = &set.collected[k];
                store_coupling(writer, k, records, sweep, row, config.as_deref())?;
                continue;
            }
            let config = save_config.then_some(set.replicas[k].config.as_slice());
            store_coupling(writer, k, set.records(k), sweep, row, config)?;
        }
        for (j, recs) in set.swap_records.iter().enumerate() {
            for r in recs {
                writer.push_swap_record(j, r.accepted, &r.columns())?;
            }
        }
        writer.push_path(sweep, &set.coupling_of_replica())?;
        Ok(())
    }

    fn checkpoint(&self, hash: &str, sweeps_done: u64, counts: FileCounts) -> Result<Checkpoint> {
        let (arrays, mut rk) = self.set.checkpoint_parts()?;
        rk.counts = counts.couplings;
        rk.exchange_counts = counts.exchange.unwrap_or_default();
        Ok(Checkpoint {
            kind: CheckpointKind::Replica,
            card_hash: hash.to_string(),
            sweeps_done,
            counts: Counts::default(),
            step_rngs: Vec::new(),
            config: Vec::new(),
            step_states: arrays,
            replica: Some(rk),
        })
    }

    fn progress(&self) -> String {
        format!("swap acceptance {:.3}", self.swap_accepted as f64 / self.swap_attempted.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_run_threads_are_shared_among_the_couplings_that_run_at_once() {
        use super::theory_threads;
        assert_eq!(theory_threads(2, 4), 1);
        assert_eq!(theory_threads(4, 2), 2);
        assert_eq!(theory_threads(8, 3), 2);
        assert_eq!(theory_threads(2, 1), 2);
        assert_eq!(theory_threads(1, 5), 1);
        assert_eq!(theory_threads(0, 5), 0);
    }
}
