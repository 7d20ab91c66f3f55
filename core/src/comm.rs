//! Communication between the processes (ranks) of one job: the one interface that replica
//! ladders, data-parallel training and domain-decomposed lattices are written against.
//!
//! [`Communicator`] is an ABI-stable trait object ([`CommBox`]), so the host can hand the same
//! object to a theory plugin (a domain-decomposed lattice exchanges halos through it). It has
//! two collective operations, both on `f64` payloads, and both *blocking* and *ordered*: every
//! rank of the job must make the same sequence of calls (the usual MPI rule), and messages
//! between a pair of ranks arrive in the order they were sent.
//!
//! * [`Communicator::sendrecv`]: send a buffer to one rank and receive one from another (a
//!   paired exchange: halo exchange, swaps of configurations);
//! * [`Communicator::allgather`]: every rank contributes a buffer, every rank gets all of them
//!   concatenated in rank order. Reductions are built on it ([`sum_in_rank_order`]) so that a
//!   sum is added up in the same order on every rank, whatever the rank count, and the result
//!   has the same bits everywhere.
//!
//! Implementations: [`single`] (one rank, no communication), [`threads`] (n ranks as threads of
//! one process, for tests of decomposed code without MPI), and the host's MPI communicator
//! (the `mpi` cargo feature of `latflow-host`).

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RBox, RResult, RSlice, RVec};
use abi_stable::sabi_trait;

use crate::abi::PluginError;
use crate::ErrorKind;

/// The processes of one job. Every method is collective or paired: see the module docs.
#[sabi_trait]
pub trait Communicator: Send + Sync {
    /// This process's rank, 0 ≤ rank < size.
    fn rank(&self) -> u32;

    /// The number of ranks (≥ 1).
    fn size(&self) -> u32;

    /// Sends `send` to rank `dest` and receives a buffer of exactly `recv_len` reals from rank
    /// `source`. `dest` and `source` may equal this rank (a local copy). A received buffer of
    /// another length is an [`ErrorKind::Shape`] error; a rank out of range is a
    /// [`ErrorKind::Config`] error.
    fn sendrecv(&self, send: RSlice<'_, f64>, dest: u32, source: u32, recv_len: u64) -> RResult<RVec<f64>, PluginError>;

    /// Every rank contributes `send`, of the same length on every rank; returns the
    /// contributions concatenated in rank order (size × len reals). A rank whose contribution
    /// has another length makes every rank fail with an [`ErrorKind::Shape`] error.
    #[sabi(last_prefix_field)]
    fn allgather(&self, send: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError>;
}

/// An owned communicator.
pub type CommBox = Communicator_TO<'static, RBox<()>>;

/// The sum over ranks of one value per rank, added in rank order (so every rank gets the same
/// bits, and a decomposition of a sum into per-rank parts is combined the same way on every
/// rank).
pub fn sum_in_rank_order(comm: &CommBox, value: f64) -> Result<f64, PluginError> {
    let all = comm.allgather(RSlice::from_slice(&[value])).into_result()?;
    Ok(all.iter().sum())
}

/// The largest of one value per rank, on every rank (NaN-free inputs; a max does not depend
/// on the order, so every rank count gives the same bits).
pub fn max_over_ranks(comm: &CommBox, value: f64) -> Result<f64, PluginError> {
    let all = comm.allgather(RSlice::from_slice(&[value])).into_result()?;
    Ok(all.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

/// The job of one rank: no communication (`sendrecv` to itself copies, `allgather` returns its
/// input).
pub fn single() -> CommBox {
    Communicator_TO::from_value(Single, TD_Opaque)
}

#[derive(Debug)]
struct Single;

impl Communicator for Single {
    fn rank(&self) -> u32 {
        0
    }

    fn size(&self) -> u32 {
        1
    }

    fn sendrecv(&self, send: RSlice<'_, f64>, dest: u32, source: u32, recv_len: u64) -> RResult<RVec<f64>, PluginError> {
        check_rank(dest, 1)
            .and_then(|_| check_rank(source, 1))
            .and_then(|_| check_len(send.len(), recv_len, source))
            .map(|_| RVec::from(send.as_slice()))
            .into()
    }

    fn allgather(&self, send: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        RResult::ROk(RVec::from(send.as_slice()))
    }
}

fn check_rank(rank: u32, size: u32) -> Result<(), PluginError> {
    if rank < size {
        Ok(())
    } else {
        Err(PluginError::config(format!("rank {rank} does not exist in a job of {size} ranks")))
    }
}

fn check_len(got: usize, expected: u64, source: u32) -> Result<(), PluginError> {
    if got as u64 == expected {
        Ok(())
    } else {
        Err(PluginError::shape(format!("received {got} reals from rank {source}, expected {expected}")))
    }
}

/// How long a [`threads`] rank waits for a message before failing (a peer that never sends is
/// a bug in the decomposed code, reported as an error instead of a hang).
pub const THREADS_TIMEOUT: Duration = Duration::from_secs(120);

/// `n` communicators for `n` ranks that live as threads of this process: give one to each
/// thread. Messages go through channels, one per ordered pair of ranks; a receive waits at most
/// [`THREADS_TIMEOUT`]. For tests of decomposed code without MPI. `n = 0` is treated as 1.
pub fn threads(n: u32) -> Vec<CommBox> {
    let n = n.max(1) as usize;
    // senders[i][j]: from i to j; receivers[j][i]: at j, from i.
    let mut senders: Vec<Vec<Sender<Vec<f64>>>> = (0..n).map(|_| Vec::with_capacity(n)).collect();
    let mut receivers: Vec<Vec<Option<Receiver<Vec<f64>>>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (i, row) in senders.iter_mut().enumerate() {
        for inbox in receivers.iter_mut() {
            let (tx, rx) = channel();
            row.push(tx);
            inbox[i] = Some(rx);
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(rank, (to, from))| {
            let from = from.into_iter().map(|r| Mutex::new(r.expect("every pair has a channel"))).collect();
            Communicator_TO::from_value(ThreadRank { rank: rank as u32, size: n as u32, to, from }, TD_Opaque)
        })
        .collect()
}

struct ThreadRank {
    rank: u32,
    size: u32,
    to: Vec<Sender<Vec<f64>>>,
    from: Vec<Mutex<Receiver<Vec<f64>>>>,
}

impl ThreadRank {
    fn send(&self, dest: u32, data: Vec<f64>) -> Result<(), PluginError> {
        self.to[dest as usize]
            .send(data)
            .map_err(|_| PluginError::new(ErrorKind::Internal, format!("rank {dest} has gone away")))
    }

    fn recv(&self, source: u32) -> Result<Vec<f64>, PluginError> {
        let inbox = self.from[source as usize].lock().map_err(|_| PluginError::new(ErrorKind::Internal, "a rank panicked"))?;
        inbox.recv_timeout(THREADS_TIMEOUT).map_err(|e| {
            let why = match e {
                RecvTimeoutError::Timeout => format!("nothing arrived within {} s", THREADS_TIMEOUT.as_secs()),
                RecvTimeoutError::Disconnected => "it has gone away".to_string(),
            };
            PluginError::new(ErrorKind::Internal, format!("rank {}: no message from rank {source}: {why}", self.rank))
        })
    }
}

impl Communicator for ThreadRank {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn sendrecv(&self, send: RSlice<'_, f64>, dest: u32, source: u32, recv_len: u64) -> RResult<RVec<f64>, PluginError> {
        let run = || {
            check_rank(dest, self.size)?;
            check_rank(source, self.size)?;
            self.send(dest, send.to_vec())?;
            let got = self.recv(source)?;
            check_len(got.len(), recv_len, source)?;
            Ok(RVec::from(got))
        };
        run().into()
    }

    fn allgather(&self, send: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
        let run = || {
            for dest in 0..self.size {
                self.send(dest, send.to_vec())?;
            }
            let mut out = Vec::with_capacity(send.len() * self.size as usize);
            let mut mismatch = None;
            for source in 0..self.size {
                let got = self.recv(source)?;
                if got.len() != send.len() {
                    mismatch = Some((source, got.len()));
                }
                out.extend_from_slice(&got);
            }
            match mismatch {
                Some((source, len)) => Err(PluginError::shape(format!(
                    "allgather: rank {source} contributed {len} reals, rank {} {}",
                    self.rank,
                    send.len()
                ))),
                None => Ok(RVec::from(out)),
            }
        };
        run().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<T: Send>(n: u32, f: impl Fn(CommBox) -> T + Sync) -> Vec<T> {
        let comms = threads(n);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
            handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
        })
    }

    #[test]
    fn single_rank_copies() {
        let c = single();
        assert_eq!((c.rank(), c.size()), (0, 1));
        assert_eq!(c.sendrecv(RSlice::from_slice(&[1.0, 2.0]), 0, 0, 2).unwrap().as_slice(), &[1.0, 2.0]);
        assert_eq!(c.allgather(RSlice::from_slice(&[3.0])).unwrap().as_slice(), &[3.0]);
        let e = c.sendrecv(RSlice::from_slice(&[1.0]), 1, 0, 1).unwrap_err();
        assert!(e.message.contains("rank 1 does not exist"), "{e}");
        let e = c.sendrecv(RSlice::from_slice(&[1.0]), 0, 0, 2).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Shape);
    }

    #[test]
    fn thread_ranks_exchange_in_a_ring_and_gather_in_rank_order() {
        let out = on_ranks(3, |c| {
            let r = c.rank();
            let right = (r + 1) % c.size();
            let left = (r + c.size() - 1) % c.size();
            let got = c.sendrecv(RSlice::from_slice(&[r as f64; 2]), right, left, 2).unwrap();
            let all = c.allgather(RSlice::from_slice(&[10.0 * r as f64])).unwrap();
            let sum = sum_in_rank_order(&c, r as f64 + 0.5).unwrap();
            (got.to_vec(), all.to_vec(), sum)
        });
        for (r, (got, all, sum)) in out.into_iter().enumerate() {
            let left = (r + 2) % 3;
            assert_eq!(got, vec![left as f64; 2]);
            assert_eq!(all, vec![0.0, 10.0, 20.0]);
            assert_eq!(sum, 4.5);
        }
    }

    #[test]
    fn a_gather_of_unequal_lengths_fails_on_every_rank() {
        let out = on_ranks(2, |c| {
            let data = vec![1.0; 1 + c.rank() as usize];
            c.allgather(RSlice::from_slice(&data)).into_result().map(|v| v.len())
        });
        for r in out {
            let e = r.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Shape, "{e}");
        }
    }
}
