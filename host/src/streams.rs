//! The host's random streams: which stream of the core registry ([`latflow_core::streams`])
//! each part of a run draws from. Every `Stream` the host makes comes from [`stream`], so
//! [`card_streams`] can list all streams a card uses and tests can check they are distinct.

use latflow_core::streams::{stream_id, Purpose, StreamIndexError};
use latflow_core::Stream;

use crate::card::{RunCard, StepCard};

/// Whose chain a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Independent chain c of a plain card (`[run] chains`; a card with one chain is chain 0,
    /// whose ids are those of every plain run before chains existed).
    Chain(usize),
    /// Coupling slot k of a replica ladder.
    Coupling(usize),
}

/// A use of a random stream in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUse {
    /// The starting configuration of a plain chain or of a coupling slot.
    Init { slot: Slot },
    /// The chain step at card index `step` of a plain chain or at a coupling slot.
    Step { step: usize, slot: Slot },
    /// The accept/reject uniforms of the `replica_exchange` step at card index `step`.
    Swap { step: usize },
    /// The model's samples during training.
    Train,
    /// The uniforms of training's acceptance estimate.
    TrainMetrics,
}

impl StreamUse {
    /// The registry id of this use; fails when an index does not fit in a stream id.
    pub fn id(self) -> Result<u64, StreamIndexError> {
        let u = |i: usize| i as u64; // usize → u64 is lossless on every supported target
        match self {
            StreamUse::Init { slot: Slot::Chain(c) } => stream_id(Purpose::Init, 0, 0, u(c)),
            StreamUse::Init { slot: Slot::Coupling(k) } => stream_id(Purpose::ReplicaInit, 0, u(k), 0),
            StreamUse::Step { step, slot: Slot::Chain(c) } => stream_id(Purpose::Step, u(step), 0, u(c)),
            StreamUse::Step { step, slot: Slot::Coupling(k) } => stream_id(Purpose::ReplicaStep, u(step), u(k), 0),
            StreamUse::Swap { step } => stream_id(Purpose::Swap, u(step), 0, 0),
            StreamUse::Train => stream_id(Purpose::Train, 0, 0, 0),
            StreamUse::TrainMetrics => stream_id(Purpose::TrainMetrics, 0, 0, 0),
        }
    }
}

/// The stream of `what` under `seed`, at counter 0.
pub fn stream(seed: u64, what: StreamUse) -> Result<Stream, StreamIndexError> {
    Ok(Stream::new(seed, what.id()?))
}

/// The training seed of a card: `[train].seed`, else `[run].seed`.
pub fn train_seed(card: &RunCard) -> u64 {
    card.train.as_ref().and_then(|t| t.seed).unwrap_or(card.run.seed)
}

/// Every stream the card's `run` and `train` would draw from, as (use, seed, id): the starting
/// configuration(s), one stream per chain step (per coupling slot on a ladder), one per
/// `replica_exchange` step, and the two training streams when the card has `[train]`.
pub fn card_streams(card: &RunCard) -> Result<Vec<(StreamUse, u64, u64)>, StreamIndexError> {
    let seed = card.run.seed;
    let mut uses = Vec::new();
    match &card.ladder {
        None => {
            for c in 0..card.run.chains as usize {
                uses.push(StreamUse::Init { slot: Slot::Chain(c) });
                uses.extend((0..card.chain.len()).map(|step| StreamUse::Step { step, slot: Slot::Chain(c) }));
            }
        }
        Some(ladder) => {
            for k in 0..ladder.len() {
                uses.push(StreamUse::Init { slot: Slot::Coupling(k) });
                for (step, s) in card.chain.iter().enumerate() {
                    if !matches!(s, StepCard::ReplicaExchange(_)) {
                        uses.push(StreamUse::Step { step, slot: Slot::Coupling(k) });
                    }
                }
            }
            for (step, s) in card.chain.iter().enumerate() {
                if matches!(s, StepCard::ReplicaExchange(_)) {
                    uses.push(StreamUse::Swap { step });
                }
            }
        }
    }
    let mut out: Vec<(StreamUse, u64, u64)> = uses.into_iter().map(|u| Ok((u, seed, u.id()?))).collect::<Result<_, _>>()?;
    if card.train.is_some() {
        let ts = train_seed(card);
        for u in [StreamUse::Train, StreamUse::TrainMetrics] {
            out.push((u, ts, u.id()?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    const THEORY: &str = "[theory]\nplugin = \"phi4\"\nlattice = [4, 4]\nm2 = -1.0\nlambda = 1.0\n";

    fn card(text: &str) -> RunCard {
        RunCard::parse(Path::new("c.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Fails when two uses share (seed, id).
    fn assert_distinct(c: &RunCard) -> usize {
        let all = card_streams(c).unwrap();
        let mut seen: HashMap<(u64, u64), StreamUse> = HashMap::new();
        for (u, seed, id) in &all {
            if let Some(prev) = seen.insert((*seed, *id), *u) {
                panic!("{prev:?} and {u:?} share stream {id:#x} of seed {seed}");
            }
        }
        all.len()
    }

    #[test]
    fn plain_ladder_and_training_streams_are_distinct() {
        let model = "[model]\nplugin = \"flow-scalar\"\nweights = \"w.safetensors\"\n\
                     [train]\nsteps = 10\nbatch = 8\n";
        let steps = "[[chain]]\nkind = \"hmc\"\ntrajectory_length = 1.0\nmd_steps = 5\n\
                     [[chain]]\nkind = \"flow\"\n[[chain]]\nkind = \"hmc\"\ntrajectory_length = 1.0\nmd_steps = 5\n";
        let plain = format!("[run]\nseed = 3\nmeasurements = 10\noutput = \"o.h5\"\n{THEORY}{model}{steps}");
        // init + 3 steps + 2 training streams
        assert_eq!(assert_distinct(&card(&plain)), 6);
        // three independent chains: 3 × (init + 3 steps) + 2 training streams
        let chains = plain.replace("seed = 3\n", "seed = 3\nchains = 3\n");
        assert_eq!(assert_distinct(&card(&chains)), 3 * 4 + 2);

        let ladder = format!(
            "[run]\nseed = 3\nmeasurements = 10\noutput = \"o.h5\"\n{THEORY}{model}\
             [ladder]\nparameter = \"m2\"\nvalues = [-1.0, -0.8, -0.6, -0.4]\n{steps}\
             [[chain]]\nkind = \"replica_exchange\"\n[[chain]]\nkind = \"replica_exchange\"\n"
        );
        let c = card(&ladder);
        // 4 slots × (init + 3 steps) + 2 swap streams + 2 training streams
        assert_eq!(assert_distinct(&c), 4 * 4 + 2 + 2);
        // The 0.1 collision: training and coupling 0's first step under the same seed.
        let all = card_streams(&c).unwrap();
        let id_of = |w: StreamUse| all.iter().find(|(u, _, _)| *u == w).map(|(_, s, id)| (*s, *id)).unwrap();
        assert_ne!(id_of(StreamUse::Train), id_of(StreamUse::Step { step: 0, slot: Slot::Coupling(0) }));
    }

    #[test]
    fn indices_beyond_a_stream_id_are_refused() {
        let e = StreamUse::Step { step: 1, slot: Slot::Coupling(70_000) }.id().unwrap_err();
        assert!(e.to_string().contains("replica 70000"), "{e}");
        assert!(StreamUse::Swap { step: 65_536 }.id().is_err());
        assert!(StreamUse::Init { slot: Slot::Coupling(65_535) }.id().is_ok());
    }

    #[test]
    fn plain_and_replica_ids_are_unchanged_since_0_1() {
        // Plain runs and replica ladders keep their bits: the ids 0.1 used for them.
        let old = |p: u64, a: u64, b: u64| (p << 48) | (a << 32) | (b << 16);
        assert_eq!(StreamUse::Step { step: 2, slot: Slot::Chain(0) }.id().unwrap(), old(1, 2, 0));
        assert_eq!(StreamUse::Init { slot: Slot::Chain(0) }.id().unwrap(), old(2, 0, 0));
        // independent chain c: the index field, so chain 0 keeps the ids above
        assert_eq!(StreamUse::Step { step: 2, slot: Slot::Chain(5) }.id().unwrap(), old(1, 2, 0) | 5);
        assert_eq!(StreamUse::Init { slot: Slot::Chain(5) }.id().unwrap(), old(2, 0, 0) | 5);
        assert_eq!(StreamUse::Step { step: 2, slot: Slot::Coupling(3) }.id().unwrap(), old(3, 2, 3));
        assert_eq!(StreamUse::Init { slot: Slot::Coupling(3) }.id().unwrap(), old(4, 0, 3));
        assert_eq!(StreamUse::Swap { step: 4 }.id().unwrap(), old(5, 4, 0));
    }
}
