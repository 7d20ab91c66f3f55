//! Counter-based, explicitly seeded random streams.
//!
//! A [`Stream`] is ChaCha8 keyed by a 64-bit run seed, with a 64-bit *stream id* that names
//! its purpose (chain, step, replica, …: ids are made only by the registry [`crate::streams`])
//! and a 128-bit word counter. Streams with different ids are independent; a stream's whole
//! state is `(key, stream id, counter)`, which crosses the plugin boundary as [`RngState`] and
//! is stored in checkpoints. There is no global or implicit RNG anywhere in latflow: every
//! random draw comes from a stream passed in.

use abi_stable::StableAbi;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::streams::{stream_id, Purpose, StreamIndexError};

/// The plain-data state of a [`Stream`]: it crosses the plugin boundary and goes into
/// checkpoints. Restoring it continues the exact same sequence.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// ChaCha key, derived from the run seed.
    pub key: [u8; 32],
    /// Stream id (purpose).
    pub stream: u64,
    /// Word counter, low 64 bits.
    pub counter_lo: u64,
    /// Word counter, high 64 bits.
    pub counter_hi: u64,
}

/// A random stream. See the module docs.
#[derive(Clone, Debug)]
pub struct Stream {
    rng: ChaCha8Rng,
}

impl Stream {
    /// The stream `stream` of the run seeded with `seed`, at counter 0.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { rng }
    }

    /// The stream `purpose` (step, replica, index) of the run seeded with `seed`, at counter 0;
    /// fails when an index does not fit in a stream id (see [`crate::streams`]).
    pub fn for_purpose(
        seed: u64,
        purpose: Purpose,
        step: u64,
        replica: u64,
        index: u64,
    ) -> Result<Self, StreamIndexError> {
        Ok(Self::new(seed, stream_id(purpose, step, replica, index)?))
    }

    /// Restores a stream from its state.
    pub fn from_state(s: &RngState) -> Self {
        let mut rng = ChaCha8Rng::from_seed(s.key);
        rng.set_stream(s.stream);
        rng.set_word_pos((u128::from(s.counter_hi) << 64) | u128::from(s.counter_lo));
        Self { rng }
    }

    /// The current state.
    pub fn state(&self) -> RngState {
        let pos = self.rng.get_word_pos();
        RngState {
            key: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            counter_lo: pos as u64,
            counter_hi: (pos >> 64) as u64,
        }
    }

    /// The position in the stream, in 32-bit ChaCha words (the counter of [`RngState`]).
    pub fn word_pos(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// The same stream (key and stream id) at word position `pos`: what parallel fills and
    /// data-parallel chunks cut a stream into. `pos` must be below 2⁶⁸ (the counter's range).
    pub fn at_word_pos(&self, pos: u128) -> Self {
        let mut rng = self.rng.clone();
        rng.set_word_pos(pos);
        Self { rng }
    }

    /// A uniform deviate in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// A standard normal deviate N(0, 1).
    #[inline]
    pub fn normal(&mut self) -> f64 {
        self.rng.sample(StandardNormal)
    }

    /// Fills `out` with N(0, 1) deviates.
    pub fn fill_normal(&mut self, out: &mut [f64]) {
        for v in out {
            *v = self.normal();
        }
    }

    /// A raw 64-bit word.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Access to the underlying generator for `rand` distributions.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_continues_sequence() {
        let mut a = Stream::new(42, 7);
        for _ in 0..13 {
            a.normal();
        }
        let st = a.state();
        let mut b = Stream::from_state(&st);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert_eq!(a.uniform().to_bits(), b.uniform().to_bits());
        }
    }

    #[test]
    fn streams_differ_and_are_deterministic() {
        let x: Vec<u64> = (0..4).map({ let mut s = Stream::new(1, 0); move |_| s.next_u64() }).collect();
        let y: Vec<u64> = (0..4).map({ let mut s = Stream::new(1, 1); move |_| s.next_u64() }).collect();
        let z: Vec<u64> = (0..4).map({ let mut s = Stream::new(1, 0); move |_| s.next_u64() }).collect();
        assert_ne!(x, y);
        assert_eq!(x, z);
    }

    #[test]
    fn normal_moments() {
        let mut s = Stream::new(3, 0);
        let n = 200_000;
        let (mut m1, mut m2) = (0.0, 0.0);
        for _ in 0..n {
            let v = s.normal();
            m1 += v;
            m2 += v * v;
        }
        m1 /= n as f64;
        m2 /= n as f64;
        // standard errors: 1/sqrt(n) and sqrt(2/n)
        assert!(m1.abs() < 4.0 / (n as f64).sqrt(), "{m1}");
        assert!((m2 - 1.0).abs() < 4.0 * (2.0 / n as f64).sqrt(), "{m2}");
    }
}
