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

use crate::abi::{ErrorKind, PluginError};

/// An optional private thread pool.
#[derive(Debug, Default)]
pub struct Workers {
    pool: Option<rayon::ThreadPool>,
    /// `threads = 1`: run on the calling thread.
    serial: bool,
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
            return Ok(Self { pool: None, serial: threads == 1 });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads as usize)
            .build()
            .map_err(|e| PluginError::new(ErrorKind::Internal, format!("cannot start {threads} worker threads: {e}")))?;
        Ok(Self { pool: Some(pool), serial: false })
    }

    /// Runs `f` inside the private pool (so that rayon calls in `f` use it), on the calling
    /// thread alone for `threads = 1`, or directly for `threads = 0`.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None if self.serial => run_serial(f),
            None => f(),
        }
    }

    /// The number of threads the work runs on, or `None` for the caller's pool
    /// (`threads = 0`).
    pub fn threads(&self) -> Option<usize> {
        if self.serial {
            return Some(1);
        }
        self.pool.as_ref().map(|p| p.current_num_threads())
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
