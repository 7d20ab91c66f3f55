//! Starting a job: one rank, or the ranks of an MPI job (`mpirun -np R latflow run CARD`).
//!
//! MPI is the optional cargo feature `mpi` (rsmpi over the system's OpenMPI or MPICH). A build
//! without it runs as one process and refuses to be started as several: it reads the rank
//! count a launcher puts in the environment (`OMPI_COMM_WORLD_SIZE` of OpenMPI, `PMI_SIZE` of
//! MPICH's Hydra) and stops with a clear error instead of letting R copies write the same
//! files. With the feature, MPI is initialised only when a launcher started the process, and
//! the world communicator becomes the job's [`CommBox`] ([`crate::job`]).

use anyhow::{bail, Result};

use crate::job::Job;

/// The rank count a launcher gave this process, if any (more than 1 means an MPI job).
pub fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// What keeps MPI initialised: drop it (at the end of the command) to finalise.
pub struct Session {
    #[cfg(feature = "mpi")]
    universe: Option<::mpi::environment::Universe>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

impl Session {
    /// Ends every rank of the job with `code` after a failure on this one (the others may be
    /// waiting for it in a collective operation); on one rank, returns.
    pub fn abort_job(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some(u) = &self.universe {
            use ::mpi::traits::Communicator as _;
            let world = u.world();
            if world.size() > 1 {
                world.abort(code);
            }
        }
        let _ = code;
    }
}

/// The job this process belongs to. `command` names the command (for the error when it cannot
/// run on several ranks, `multi_rank` false).
pub fn start(command: &str, multi_rank: bool) -> Result<(Job, Session)> {
    let launched = launched_ranks().unwrap_or(1);
    #[cfg(not(feature = "mpi"))]
    {
        if launched > 1 {
            bail!(
                "latflow was started as {launched} ranks (by mpirun or a similar launcher), but this build has no MPI support: \
                 rebuild with `cargo build --release --features mpi`, or start one process"
            );
        }
        let _ = (command, multi_rank);
        Ok((Job::single(), Session {}))
    }
    #[cfg(feature = "mpi")]
    {
        if launched <= 1 {
            return Ok((Job::single(), Session { universe: None }));
        }
        if !multi_rank {
            bail!("`latflow {command}` runs on one process: start it without mpirun ({launched} ranks were started)");
        }
        let (universe, _) = ::mpi::initialize_with_threading(::mpi::Threading::Serialized)
            .ok_or_else(|| anyhow::anyhow!("MPI could not be initialised"))?;
        let job = Job::new(world::communicator(universe.world()));
        Ok((job, Session { universe: Some(universe) }))
    }
}

#[cfg(feature = "mpi")]
mod world {
    //! [`latflow_core::comm::Communicator`] over MPI's world communicator.

    use std::sync::Mutex;

    use ::mpi::point_to_point::send_receive_into;
    use ::mpi::topology::SimpleCommunicator;
    use ::mpi::traits::{Communicator as _, CommunicatorCollectives as _};
    use latflow_core::abi_stable::sabi_trait::TD_Opaque;
    use latflow_core::abi_stable::std_types::{RResult, RSlice, RVec};
    use latflow_core::comm::{CommBox, Communicator, Communicator_TO};
    use latflow_core::PluginError;

    struct World {
        comm: Mutex<SimpleCommunicator>,
        rank: u32,
        size: u32,
    }

    // SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED, which allows calls from any
    // thread as long as no two run at once; every call goes through the mutex.
    unsafe impl Send for World {}
    unsafe impl Sync for World {}

    pub(super) fn communicator(world: SimpleCommunicator) -> CommBox {
        let (rank, size) = (world.rank() as u32, world.size() as u32);
        Communicator_TO::from_value(World { comm: Mutex::new(world), rank, size }, TD_Opaque)
    }

    fn poisoned() -> PluginError {
        PluginError::new(latflow_core::ErrorKind::Internal, "a thread panicked during communication")
    }

    impl Communicator for World {
        fn rank(&self) -> u32 {
            self.rank
        }

        fn size(&self) -> u32 {
            self.size
        }

        fn sendrecv(&self, send: RSlice<'_, f64>, dest: u32, source: u32, recv_len: u64) -> RResult<RVec<f64>, PluginError> {
            if dest >= self.size || source >= self.size {
                return RResult::RErr(PluginError::config(format!(
                    "rank {} does not exist in a job of {} ranks",
                    dest.max(source),
                    self.size
                )));
            }
            let Ok(w) = self.comm.lock() else { return RResult::RErr(poisoned()) };
            let mut buf = vec![0.0f64; recv_len as usize];
            let status =
                send_receive_into(send.as_slice(), &w.process_at_rank(dest as i32), &mut buf[..], &w.process_at_rank(source as i32));
            let got = status.count(f64::equivalent_datatype_of());
            if got as u64 != recv_len {
                return RResult::RErr(PluginError::shape(format!("received {got} reals from rank {source}, expected {recv_len}")));
            }
            RResult::ROk(RVec::from(buf))
        }

        fn allgather(&self, send: RSlice<'_, f64>) -> RResult<RVec<f64>, PluginError> {
            let Ok(w) = self.comm.lock() else { return RResult::RErr(poisoned()) };
            let mut lens = vec![0u64; self.size as usize];
            w.all_gather_into(&(send.len() as u64), &mut lens[..]);
            if let Some(r) = lens.iter().position(|&n| n != send.len() as u64) {
                return RResult::RErr(PluginError::shape(format!(
                    "allgather: rank {r} contributed {} reals, rank {} {}",
                    lens[r],
                    self.rank,
                    send.len()
                )));
            }
            let mut out = vec![0.0f64; send.len() * self.size as usize];
            w.all_gather_into(send.as_slice(), &mut out[..]);
            RResult::ROk(RVec::from(out))
        }
    }

    trait Equivalent {
        fn equivalent_datatype_of() -> ::mpi::datatype::DatatypeRef<'static>;
    }

    impl Equivalent for f64 {
        fn equivalent_datatype_of() -> ::mpi::datatype::DatatypeRef<'static> {
            use ::mpi::datatype::Equivalence as _;
            f64::equivalent_datatype()
        }
    }
}
