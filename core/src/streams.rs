//! The one registry of random-stream purposes.
//!
//! Every random stream of a latflow run is `Stream::new(seed, id)` with an id made here, from a
//! [`Purpose`] and up to three indices:
//!
//! ```text
//!     id = purpose tag << 48 | step << 32 | replica << 16 | index        (16 bits each)
//! ```
//!
//! Two streams with the same seed are independent exactly when their ids differ, so every
//! purpose has its own tag, fixed forever: a tag is never changed and never given to another
//! purpose (a retired purpose keeps its tag, unused). [`stream_id`] refuses indices that do not
//! fit in 16 bits instead of cutting them, so two different (purpose, step, replica, index)
//! tuples always give two different ids.
//!
//! | tag | purpose          | step             | replica        | index                  | seed        |
//! |-----|------------------|------------------|----------------|------------------------|-------------|
//! | 1   | [`Purpose::Step`]        | card step index  | 0              | 0                      | run seed    |
//! | 2   | [`Purpose::Init`]        | 0                | 0              | 0                      | run seed    |
//! | 3   | [`Purpose::ReplicaStep`] | card step index  | coupling slot  | 0                      | run seed    |
//! | 4   | [`Purpose::ReplicaInit`] | 0                | coupling slot  | 0                      | run seed    |
//! | 5   | [`Purpose::Swap`]        | card step index  | 0              | 0                      | run seed    |
//! | 6   | [`Purpose::Train`]       | 0                | 0              | 0                      | train seed  |
//! | 7   | [`Purpose::TrainMetrics`]| 0                | 0              | 0                      | train seed  |
//! | 8   | [`Purpose::ModelInit`]   | 0                | 0              | 0                      | `init_seed` |
//!
//! Until 0.2.0 the training sampler used tag 3 (step 0, replica 0), the very id of coupling 0's
//! first chain step, so with the default training seed (the run seed) a replica chain could
//! replay the normal draws the model was trained on; the flow plugins drew their initial weights
//! from ids of their own outside this table.

use thiserror::Error;

/// What a random stream is for. The discriminant is the purpose's tag in the stream id; see the
/// module docs for the table of tags and indices.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// A chain step of a plain run (step = the step's index in the card's `[[chain]]`).
    Step = 1,
    /// The starting configuration of a plain run.
    Init = 2,
    /// A chain step at one coupling slot of a replica ladder (step = card index, replica = slot).
    ReplicaStep = 3,
    /// The starting configuration of one coupling slot (replica = slot).
    ReplicaInit = 4,
    /// The accept/reject uniforms of a `replica_exchange` step (step = card index).
    Swap = 5,
    /// The model's samples during training (`latflow train`).
    Train = 6,
    /// The uniforms of training's acceptance estimate (kept apart so metrics never change the
    /// training itself).
    TrainMetrics = 7,
    /// A model plugin's initial weights (under the model's own `init_seed`).
    ModelInit = 8,
}

impl Purpose {
    /// Every purpose, in tag order.
    pub const ALL: [Purpose; 8] = [
        Purpose::Step,
        Purpose::Init,
        Purpose::ReplicaStep,
        Purpose::ReplicaInit,
        Purpose::Swap,
        Purpose::Train,
        Purpose::TrainMetrics,
        Purpose::ModelInit,
    ];

    /// The purpose's fixed tag (the top 16 bits of its stream ids).
    pub const fn tag(self) -> u16 {
        self as u16
    }

    /// The stream id for indices known to fit in 16 bits (usable in constants); see
    /// [`stream_id`] for indices that come from run cards.
    pub const fn id(self, step: u16, replica: u16, index: u16) -> u64 {
        ((self.tag() as u64) << 48) | ((step as u64) << 32) | ((replica as u64) << 16) | index as u64
    }
}

/// The largest step, replica or index a stream id can hold.
pub const MAX_INDEX: u64 = u16::MAX as u64;

/// An index too large for a stream id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} {value} is too large for a random-stream id of purpose {purpose:?} (at most {max})", max = MAX_INDEX)]
pub struct StreamIndexError {
    /// The purpose whose id was asked for.
    pub purpose: Purpose,
    /// Which index: "step", "replica" or "index".
    pub what: &'static str,
    /// The value that does not fit.
    pub value: u64,
}

/// The stream id of `purpose` with the given step, replica and index (each at most
/// [`MAX_INDEX`]), or an error naming the index that does not fit. Distinct arguments give
/// distinct ids.
pub fn stream_id(purpose: Purpose, step: u64, replica: u64, index: u64) -> Result<u64, StreamIndexError> {
    let fit = |what: &'static str, value: u64| {
        u16::try_from(value).map_err(|_| StreamIndexError { purpose, what, value })
    };
    Ok(purpose.id(fit("step", step)?, fit("replica", replica)?, fit("index", index)?))
}

/// The inverse of [`stream_id`]: (purpose, step, replica, index), or `None` for an id whose tag
/// is no registered purpose.
pub fn decode(id: u64) -> Option<(Purpose, u16, u16, u16)> {
    let b = id.to_be_bytes();
    let field = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let purpose = Purpose::ALL.into_iter().find(|p| p.tag() == field(0))?;
    Some((purpose, field(2), field(4), field(6)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tags_are_distinct_and_fixed() {
        let tags: Vec<u16> = Purpose::ALL.iter().map(|p| p.tag()).collect();
        // The tags are part of every stored stream state: they must never change.
        assert_eq!(tags, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(tags.iter().collect::<HashSet<_>>().len(), tags.len());
    }

    #[test]
    fn ids_are_distinct_and_decode() {
        let mut seen = HashSet::new();
        for p in Purpose::ALL {
            for (s, r, i) in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (65_535, 65_535, 65_535), (7, 3, 2)] {
                let id = stream_id(p, s, r, i).unwrap();
                assert!(seen.insert(id), "{p:?} {s} {r} {i} repeats id {id:#x}");
                let (s16, r16, i16) = (u16::try_from(s).unwrap(), u16::try_from(r).unwrap(), u16::try_from(i).unwrap());
                assert_eq!(decode(id), Some((p, s16, r16, i16)));
                assert_eq!(id, p.id(s16, r16, i16));
            }
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(0xffff << 48), None);
    }

    #[test]
    fn out_of_range_indices_are_refused() {
        let e = stream_id(Purpose::ReplicaStep, 1, 65_536, 0).unwrap_err();
        assert_eq!(e, StreamIndexError { purpose: Purpose::ReplicaStep, what: "replica", value: 65_536 });
        assert!(e.to_string().contains("replica 65536"), "{e}");
        assert!(stream_id(Purpose::Step, 70_000, 0, 0).is_err());
        assert!(stream_id(Purpose::Train, 0, 0, u64::MAX).is_err());
        assert!(stream_id(Purpose::Swap, MAX_INDEX, MAX_INDEX, MAX_INDEX).is_ok());
    }

    #[test]
    fn training_never_shares_a_chain_stream() {
        // The 0.1 bug: the training sampler had the id of coupling 0's first chain step.
        let train = stream_id(Purpose::Train, 0, 0, 0).unwrap();
        assert_ne!(train, stream_id(Purpose::ReplicaStep, 0, 0, 0).unwrap());
        assert_ne!(train, stream_id(Purpose::Step, 0, 0, 0).unwrap());
    }
}
