//! The processes of one `latflow` job and what they agree on.
//!
//! A [`Job`] is this process's place among the ranks of a job: one rank (the default), ranks
//! of an MPI job (`mpirun -np R latflow …`, the `mpi` cargo feature, see [`crate::mpi`]), or
//! ranks that are threads of one process (`latflow_core::comm::threads`, which the tests use to
//! check that a decomposed run gives the bits of a one-rank run without MPI). Everything that
//! crosses ranks goes through the job's [`CommBox`], whose operations are collective: every
//! rank makes the same calls in the same order.
//!
//! Conventions of a multi-rank run:
//! * rank 0 (the *root*) writes every file (ensemble, checkpoint, weights); the other ranks
//!   write nothing, so the files are those of a one-rank run;
//! * decisions that depend on a rank's clock (a time-based checkpoint) are the root's and are
//!   shared ([`Job::root_decides`]), so every rank takes the same branch;
//! * work is split in contiguous blocks ([`Job::block`]), and results come back in rank order
//!   ([`Job::gather`]), which is the order of the work items.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RSlice;
use anyhow::{bail, Result};
use latflow_core::comm::{self, CommBox};

/// This process's rank in a job, and the communicator to the others.
#[derive(Clone)]
pub struct Job {
    comm: Arc<CommBox>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Job {{ rank: {}, size: {} }}", self.rank(), self.size())
    }
}

impl Default for Job {
    fn default() -> Self {
        Self::single()
    }
}

/// A failed collective call as an error of the command.
pub(crate) fn comm_error(e: latflow_core::PluginError) -> anyhow::Error {
    anyhow::anyhow!("communication between ranks failed: {}", e.message)
}

impl Job {
    /// A job of one rank.
    pub fn single() -> Self {
        Self::new(comm::single())
    }

    /// The job of the communicator's rank.
    pub fn new(comm: CommBox) -> Self {
        Self { comm: Arc::new(comm) }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size() as usize
    }

    /// Whether this is rank 0, which writes the files.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The communicator.
    pub fn comm(&self) -> &CommBox {
        &self.comm
    }

    /// An owned handle on this job's communicator, to hand to a plugin (a theory split over
    /// the ranks: [`latflow_core::abi::Theory::set_communicator`]). It sends through the same
    /// channels as the job, so the host and the plugin must not communicate at the same time
    /// (they take turns: the host calls the plugin and waits for it).
    pub fn comm_handle(&self) -> CommBox {
        latflow_core::comm::Communicator_TO::from_value(SharedComm(Arc::clone(&self.comm)), TD_Opaque)
    }

    /// Items `[lo, hi)` of `n` that this rank owns: contiguous blocks in rank order, sizes
    /// differing by at most one (rank r owns `[r·n/R, (r+1)·n/R)`).
    pub fn block(&self, n: usize) -> Range<usize> {
        block_of(self.rank(), self.size(), n)
    }

    /// The rank that owns item `i` of `n` under [`Job::block`].
    pub fn owner(&self, i: usize, n: usize) -> usize {
        (0..self.size()).find(|&r| block_of(r, self.size(), n).contains(&i)).unwrap_or(0)
    }

    /// Every rank's `data` (any length), in rank order.
    pub fn gather(&self, data: &[f64]) -> Result<Vec<Vec<f64>>> {
        if self.size() == 1 {
            return Ok(vec![data.to_vec()]);
        }
        let lens = self.comm.allgather(RSlice::from_slice(&[data.len() as f64])).into_result().map_err(comm_error)?;
        let max = lens.iter().fold(0.0f64, |a, &b| a.max(b)) as usize;
        let mut padded = data.to_vec();
        padded.resize(max, 0.0);
        let all = self.comm.allgather(RSlice::from_slice(&padded)).into_result().map_err(comm_error)?;
        Ok(all.chunks(max.max(1)).zip(lens.iter()).map(|(c, &n)| c[..n as usize].to_vec()).take(self.size()).collect())
    }

    /// Sends `data` to rank `peer` and receives `recv_len` reals from it (both ranks call this
    /// with each other as `peer`).
    pub fn exchange(&self, data: &[f64], peer: usize, recv_len: usize) -> Result<Vec<f64>> {
        let got = self
            .comm
            .sendrecv(RSlice::from_slice(data), peer as u32, peer as u32, recv_len as u64)
            .into_result()
            .map_err(comm_error)?;
        Ok(got.into_vec())
    }

    /// The root's `flag`, on every rank.
    pub fn root_decides(&self, flag: bool) -> Result<bool> {
        if self.size() == 1 {
            return Ok(flag);
        }
        let all = self.comm.allgather(RSlice::from_slice(&[flag as u8 as f64])).into_result().map_err(comm_error)?;
        Ok(all[0] != 0.0)
    }

    /// Collective: the first rank whose `ok` is false, if any. Ranks call it after a step that
    /// may fail on some of them only, so that all leave together instead of some waiting
    /// forever for the others.
    pub fn first_failure(&self, ok: bool) -> Result<Option<usize>> {
        if self.size() == 1 {
            return Ok((!ok).then_some(0));
        }
        let all = self.comm.allgather(RSlice::from_slice(&[ok as u8 as f64])).into_result().map_err(comm_error)?;
        Ok(all.iter().position(|&f| f == 0.0))
    }

    /// Fails on every rank unless every rank has the same `digest` (hex, e.g. the card's
    /// SHA-256): ranks started on different cards must not run together. `what` names it.
    pub fn check_same(&self, what: &str, digest: &str) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let words = pack_bytes(digest.as_bytes());
        let all = self.gather(&words)?;
        if let Some(r) = all.iter().position(|w| w != &all[0]) {
            let theirs = String::from_utf8_lossy(&unpack_bytes(&all[r])).into_owned();
            let root = String::from_utf8_lossy(&unpack_bytes(&all[0])).into_owned();
            bail!(
                "rank {r} was started with another {what} than rank 0 ({} against {}): every rank must get the same card",
                short(&theirs),
                short(&root)
            );
        }
        Ok(())
    }
}

/// A job's communicator shared with a plugin: every call forwards to the job's.
struct SharedComm(Arc<CommBox>);

impl latflow_core::comm::Communicator for SharedComm {
    fn rank(&self) -> u32 {
        self.0.rank()
    }
    fn size(&self) -> u32 {
        self.0.size()
    }
    fn sendrecv(
        &self,
        send: RSlice<'_, f64>,
        dest: u32,
        source: u32,
        recv_len: u64,
    ) -> abi_stable::std_types::RResult<abi_stable::std_types::RVec<f64>, latflow_core::PluginError> {
        self.0.sendrecv(send, dest, source, recv_len)
    }
    fn allgather(
        &self,
        send: RSlice<'_, f64>,
    ) -> abi_stable::std_types::RResult<abi_stable::std_types::RVec<f64>, latflow_core::PluginError> {
        self.0.allgather(send)
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// Rank r's block of n items among `size` ranks.
pub fn block_of(rank: usize, size: usize, n: usize) -> Range<usize> {
    (rank * n / size)..((rank + 1) * n / size)
}

/// Bytes as f64 words for the communicator: the length, then 8 bytes per word (the words'
/// bit patterns; they are moved, never computed with, so every bit survives).
pub fn pack_bytes(bytes: &[u8]) -> Vec<f64> {
    let mut out = vec![bytes.len() as f64];
    out.extend(bytes.chunks(8).map(|c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        f64::from_bits(u64::from_le_bytes(w))
    }));
    out
}

/// The bytes of [`pack_bytes`] (an empty result for a malformed buffer).
pub fn unpack_bytes(words: &[f64]) -> Vec<u8> {
    let Some((&n, rest)) = words.split_first() else { return Vec::new() };
    let mut out: Vec<u8> = rest.iter().flat_map(|w| w.to_bits().to_le_bytes()).collect();
    out.truncate(n as usize);
    out
}

/// Builds a message of several arrays (each as its length, then its values).
#[derive(Debug, Default)]
pub struct Packer(pub Vec<f64>);

impl Packer {
    /// Appends one array.
    pub fn push(&mut self, values: &[f64]) {
        self.0.push(values.len() as f64);
        self.0.extend_from_slice(values);
    }

    /// Appends bytes (see [`pack_bytes`]).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.push(&pack_bytes(bytes));
    }
}

/// Reads a [`Packer`]'s arrays back in order.
#[derive(Debug)]
pub struct Unpacker<'a>(&'a [f64]);

impl<'a> Unpacker<'a> {
    /// Reads `words`.
    pub fn new(words: &'a [f64]) -> Self {
        Self(words)
    }

    /// The next array; an error when the message is shorter than its lengths say.
    pub fn array(&mut self) -> Result<&'a [f64]> {
        let Some((&n, rest)) = self.0.split_first() else { bail!("a message between ranks ended early") };
        let n = n as usize;
        if rest.len() < n {
            bail!("a message between ranks is shorter than its header says");
        }
        let (head, tail) = rest.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// The next bytes (see [`Packer::push_bytes`]).
    pub fn next_bytes(&mut self) -> Result<Vec<u8>> {
        Ok(unpack_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_item_once_in_rank_order() {
        for size in 1..5 {
            for n in size..12 {
                let mut all = Vec::new();
                for r in 0..size {
                    let b = block_of(r, size, n);
                    assert!(!b.is_empty());
                    all.extend(b);
                }
                assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn packed_messages_round_trip_every_bit() {
        let bytes = b"{\"key\": [1, 2, 3]} and a tail".to_vec();
        let mut p = Packer::default();
        p.push(&[f64::NAN, -0.0, 1e-310, f64::INFINITY]);
        p.push_bytes(&bytes);
        p.push(&[]);
        let mut u = Unpacker::new(&p.0);
        let a = u.array().unwrap();
        assert_eq!(a.len(), 4);
        assert!(a[0].is_nan() && a[1].to_bits() == (-0.0f64).to_bits() && a[2] == 1e-310);
        assert_eq!(u.next_bytes().unwrap(), bytes);
        assert!(u.array().unwrap().is_empty());
        assert!(u.array().is_err());
    }

    #[test]
    fn thread_ranks_gather_agree_and_refuse_other_cards() {
        let comms = comm::threads(3);
        let out: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let job = Job::new(c);
                        let r = job.rank();
                        let g = job.gather(&vec![r as f64; r + 1]).unwrap();
                        let d = job.root_decides(r == 0).unwrap();
                        let same = job.check_same("card", "abc").is_ok();
                        let other = job.check_same("card", if r == 2 { "abd" } else { "abc" }).map_err(|e| e.to_string());
                        (g, d, same, other)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (g, d, same, other) in out {
            assert_eq!(g, vec![vec![0.0], vec![1.0, 1.0], vec![2.0, 2.0, 2.0]]);
            assert!(d && same);
            let e = other.unwrap_err();
            assert!(e.contains("rank 2 was started with another card"), "{e}");
        }
    }
}
