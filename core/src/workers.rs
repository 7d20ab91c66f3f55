//! A plugin's worker threads: an optional private rayon pool, set by `Theory::set_threads` /
//! `Model::set_threads`.
//!
//! `threads = 0` means no private pool: work runs on the caller's (global) rayon pool, sized
//! by `RAYON_NUM_THREADS` or the number of cores. Results never depend on the pool: kernels
//! split work into fixed chunks, so any thread count gives the same bits.

use crate::abi::{ErrorKind, PluginError};

/// An optional private thread pool.
#[derive(Debug, Default)]
pub struct Workers {
    pool: Option<rayon::ThreadPool>,
}

impl Workers {
    /// A private pool of `threads` threads, or none for `threads = 0`.
    pub fn new(threads: u32) -> Result<Self, PluginError> {
        if threads == 0 {
            return Ok(Self { pool: None });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads as usize)
            .build()
            .map_err(|e| PluginError::new(ErrorKind::Internal, format!("cannot start {threads} worker threads: {e}")))?;
        Ok(Self { pool: Some(pool) })
    }

    /// Runs `f` inside the private pool (so that rayon calls in `f` use it), or directly.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// The private pool's size, or `None` without one.
    pub fn threads(&self) -> Option<usize> {
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
}
