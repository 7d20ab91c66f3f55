//! A plugin's worker threads: an optional private rayon pool, set by `Theory::set_threads` /
//! `Model::set_threads`.
//!
//! `threads = 0` means no private pool: work runs on the caller's (global) rayon pool, sized
//! by `RAYON_NUM_THREADS` or the number of cores. Results never depend on the pool: kernels
//! split work into fixed chunks, so any thread count gives the same bits.
//!
//! `threads = 1` runs the work on the calling thread itself, with no worker thread: a private
//! pool of one thread would hand every call over to its worker and back, and rayon workers
//! spin (`sched_yield`) for a while after each job before they sleep, so a run of many short
//! calls kept a second core busy and spent most of its time in the kernel. Instead the calling
//! thread is made the one worker of a one-thread pool of its own (rayon's
//! `use_current_thread`), so rayon calls inside the work see one thread and run inline.
//!
//! A theory of many short parallel regions asks for a spinning [`Team`] instead of a pool
//! (`Physics::short_parallel_regions`, [`Workers::with_team`]): its loops go through
//! [`crate::par`], and the calling thread leads the team.

use crate::abi::{ErrorKind, PluginError};
use crate::par::Team;

/// An optional private thread pool.
#[derive(Debug, Default)]
pub struct Workers {
    pool: Option<rayon::ThreadPool>,
    /// `threads = 1`: run on the calling thread.
    serial: bool,
    /// A spinning team for the loops of [`crate::par`], instead of the pool (see
    /// [`Workers::with_team`]).
    team: Option<Team>,
}

thread_local! {
    /// The one-thread pool whose only worker is this thread (see the module documentation);
    /// made on the first serial call of a thread that is in no rayon pool, kept for the
    /// thread's life (rayon never unregisters a current-thread worker).
    static SERIAL_POOL: std::cell::OnceCell<Option<rayon::ThreadPool>> = const { std::cell::OnceCell::new() };
}

/// Runs `f` on the calling thread such that rayon calls inside it see a single thread (unless
/// the caller is a worker of a larger rayon pool: then they use that pool).
fn run_serial<R>(f: impl FnOnce() -> R) -> R {
    if rayon::current_thread_index().is_some() {
        // a rayon worker already: of a one-thread pool (everything runs inline), or of a
        // larger pool, which a thread cannot leave; the work runs here either way, and rayon
        // calls in it use that pool (same bits, by the chunking rule above)
        return f();
    }
    // with the thread registered, rayon calls in `f` run inline on it; should registering have
    // failed, `f` still runs here and its rayon calls go to the global pool (same bits)
    SERIAL_POOL.with(|cell| {
        cell.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(1).use_current_thread().build().ok());
    });
    f()
}

impl Workers {
    /// A private pool of `threads` threads; none for `threads = 0` (the caller's pool) and
    /// for `threads = 1` (the calling thread alone, see the module documentation).
    pub fn new(threads: u32) -> Result<Self, PluginError> {
        if threads <= 1 {
            return Ok(Self { pool: None, serial: threads == 1, team: None });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads as usize)
            .build()
            .map_err(|e| PluginError::new(ErrorKind::Internal, format!("cannot start {threads} worker threads: {e}")))?;
        Ok(Self { pool: Some(pool), serial: false, team: None })
    }

    /// Like [`Workers::new`], but for `threads ≥ 2` a [`Team`] of `threads` threads instead of
    /// a rayon pool: [`Workers::install`] runs the work on the calling thread, which leads the
    /// team, and the loops of [`crate::par`] in it run on the team (direct rayon calls would
    /// run on the global pool, so such work must use [`crate::par`]). For theories whose work
    /// is many short parallel regions (a stencil of a few flops per site): the team's threads
    /// wait actively between regions, and no call hands its work to another thread, where a
    /// rayon pool's workers sleep between regions and each call wakes one through the kernel.
    /// The bits are the same either way.
    pub fn with_team(threads: u32) -> Result<Self, PluginError> {
        if threads <= 1 {
            return Self::new(threads);
        }
        let team = Team::new(threads as usize)
            .map_err(|e| PluginError::new(ErrorKind::Internal, format!("cannot start {threads} team threads: {e}")))?;
        Ok(Self { pool: None, serial: false, team: Some(team) })
    }

    /// Runs `f` inside the private pool (so that rayon calls in `f` use it), on the calling
    /// thread as the leader of the team where there is one, on the calling thread alone for
    /// `threads = 1`, or directly for `threads = 0`.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match (&self.pool, &self.team) {
            (_, Some(t)) => t.enter(f),
            (Some(p), None) => p.install(f),
            (None, None) if self.serial => run_serial(f),
            (None, None) => f(),
        }
    }

    /// The number of threads the work runs on, or `None` for the caller's pool
    /// (`threads = 0`).
    pub fn threads(&self) -> Option<usize> {
        if self.serial {
            return Some(1);
        }
        if let Some(t) = &self.team {
            return Some(t.size());
        }
        self.pool.as_ref().map(|p| p.current_num_threads())
    }
}

/// Keeps freed heap memory in the process. By default glibc serves blocks over 128 KiB by mmap
/// and hands freed memory at the top of the heap back to the kernel, so a sampler that
/// allocates and frees the same large buffers every trajectory (momenta, forces, a copy of the
/// field) page-faults them in again each time: at L = 256 φ⁴ HMC spent 30% of its user time in
/// the kernel. Blocks up to 32 MiB now come from the heap, and up to 128 MiB of free heap is
/// kept. Only where the C library is glibc; the numbers never change, only the system time.
///
/// For executables (`latflow`, the benchmarks): call it first in `main`. A process-wide
/// setting, so libraries (plugins) never call it.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, under glibc's own locks; a refused
    // setting (return 0) leaves glibc's defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_run_work_on_their_threads() {
        assert_eq!(Workers::new(0).unwrap().threads(), None);
        let w = Workers::new(2).unwrap();
        assert_eq!(w.threads(), Some(2));
        assert_eq!(w.install(rayon::current_num_threads), 2);
        assert_eq!(Workers::default().install(|| 7), 7);
    }

    #[test]
    fn a_team_runs_the_work_on_the_caller_and_its_loops_on_the_team() {
        let w = Workers::with_team(3).unwrap();
        assert_eq!(w.threads(), Some(3));
        let caller = std::thread::current().id();
        let (on, threads, ids) = w.install(|| {
            let ids = crate::par::map(3, |_| std::thread::current().id());
            (std::thread::current().id(), crate::par::threads(), ids)
        });
        assert_eq!((on, threads), (caller, 3));
        assert_eq!(ids[0], caller, "the caller leads");
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 3);
        assert_eq!(Workers::with_team(1).unwrap().threads(), Some(1));
        assert_eq!(Workers::with_team(0).unwrap().threads(), None);
    }

    #[test]
    fn one_thread_runs_on_the_caller() {
        let w = Workers::new(1).unwrap();
        assert_eq!(w.threads(), Some(1));
        // from a plain thread, again (the thread's pool is reused), and inside a larger pool
        let caller = std::thread::current().id();
        assert_eq!(w.install(|| (rayon::current_num_threads(), std::thread::current().id())), (1, caller));
        assert_eq!(w.install(rayon::current_num_threads), 1);
        let big = Workers::new(2).unwrap();
        let on_big = big.install(|| (std::thread::current().id(), w.install(|| std::thread::current().id())));
        assert_eq!(on_big.0, on_big.1, "the one-thread work stays on the calling worker");
        // parallel iterators inside run inline and give the serial result
        let s: u64 = w.install(|| {
            use rayon::prelude::*;
            (0..1000u64).into_par_iter().map(|x| x * x).sum()
        });
        assert_eq!(s, (0..1000u64).map(|x| x * x).sum::<u64>());
    }
}
