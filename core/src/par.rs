//! Data-parallel loops over fixed tasks, on a rayon pool or on a spinning [`Team`].
//!
//! Kernels cut their work into tasks that do not depend on the thread count (fixed chunks of
//! sites) and reduce per-task results in task order, so any thread count gives the same bits.
//! The functions here run such tasks on whatever the calling thread has been given:
//!
//! * by default the caller's rayon pool (a plugin's private pool inside
//!   [`Workers::install`](crate::workers::Workers::install), else the global one);
//! * inside [`Team::enter`], the team: a fixed set of threads that split the tasks statically
//!   (member t takes the t-th contiguous share) and *spin* for a while between regions before
//!   they park. A rayon pool puts its idle workers to sleep within tens of microseconds and
//!   wakes them through the kernel, which dominates loops of a few flops per site: φ⁴ HMC at
//!   L = 128 runs about fifty regions of ~12 µs each per trajectory. OpenMP teams wait
//!   actively for the same reason.
//! * inside a task of a team, one thread: nested loops run serially on it.
//!
//! Which one is current is a property of the calling thread (as rayon's current pool is), set
//! for the duration of [`Team::enter`]; nothing global.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long an idle member spins for the next region before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// What parallel loops on this thread run on.
#[derive(Clone, Copy)]
enum Current {
    /// The caller's rayon pool.
    Rayon,
    /// This team (the pointer is valid for the duration of [`Team::enter`]).
    Team(*const Team),
    /// This thread alone (inside a task of a team).
    Serial,
}

thread_local! {
    static CURRENT: Cell<Current> = const { Cell::new(Current::Rayon) };
}

/// Restores the thread's previous [`Current`] when dropped (also on unwinding).
struct Restore(Current);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

fn set_current(new: Current) -> Restore {
    Restore(CURRENT.with(|c| c.replace(new)))
}

/// The number of threads that parallel loops on this thread run on: the team's size inside
/// [`Team::enter`], 1 inside a team's task, else rayon's current pool size.
pub fn threads() -> usize {
    match CURRENT.with(Cell::get) {
        Current::Rayon => rayon::current_num_threads(),
        // SAFETY: the pointer is set by `Team::enter` for the duration of its borrow
        Current::Team(t) => unsafe { (*t).size },
        Current::Serial => 1,
    }
}

/// `f(i)` for i in 0..n, in parallel, results in index order. Each index is visited exactly
/// once.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    match CURRENT.with(Cell::get) {
        Current::Rayon => (0..n).into_par_iter().map(&f).collect(),
        // SAFETY: as in `threads`
        Current::Team(t) => unsafe { &*t }.map(n, &f),
        Current::Serial => (0..n).map(f).collect(),
    }
}

/// A raw pointer that may cross threads: the callers below hand each task a disjoint part.
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Elements `start .. start + len` as a slice.
    ///
    /// # Safety
    /// The range must lie in the allocation, and no other live reference may overlap it.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: the caller's contract
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// `f(k, chunk k)` for the chunks of `chunk` elements of `data` (the last may be shorter), in
/// parallel, results in chunk order: the read-only twin of [`chunks_mut`].
pub fn chunks<T: Sync, R: Send>(data: &[T], chunk: usize, f: impl Fn(usize, &[T]) -> R + Sync) -> Vec<R> {
    assert!(chunk > 0, "empty chunks");
    map(data.len().div_ceil(chunk), |k| {
        let start = k * chunk;
        f(k, &data[start..(start + chunk).min(data.len())])
    })
}

/// `f(k, chunk k)` for the chunks of `chunk` elements of `data` (the last may be shorter), in
/// parallel, results in chunk order.
pub fn chunks_mut<T: Send, R: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) -> R + Sync) -> Vec<R> {
    assert!(chunk > 0, "empty chunks");
    let len = data.len();
    let ptr = SendPtr(data.as_mut_ptr());
    map(len.div_ceil(chunk), |k| {
        let start = k * chunk;
        // SAFETY: `map` visits each k once and the chunks of distinct k are disjoint parts of
        // `data`, which stays mutably borrowed for this call
        let part = unsafe { ptr.slice(start, chunk.min(len - start)) };
        f(k, part)
    })
}

/// [`chunks_mut`] when `parallel`, else the same chunks in order on the calling thread: for
/// loops that split only when the work is worth a parallel region (the chunks, and so the
/// bits, are the same either way).
pub fn chunks_mut_when<T: Send, R: Send>(
    parallel: bool,
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    if parallel {
        chunks_mut(data, chunk, f)
    } else {
        assert!(chunk > 0, "empty chunks");
        data.chunks_mut(chunk).enumerate().map(|(k, c)| f(k, c)).collect()
    }
}

/// `f(k, chunk k of a, chunk k of b)` for the chunks of `chunk_a` elements of `a` and
/// `chunk_b` of `b`, which must have equally many chunks (else this panics), in parallel,
/// results in chunk order.
pub fn chunks_mut2<A: Send, B: Send, R: Send>(
    a: &mut [A],
    chunk_a: usize,
    b: &mut [B],
    chunk_b: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) -> R + Sync,
) -> Vec<R> {
    assert!(chunk_a > 0 && chunk_b > 0, "empty chunks");
    let (la, lb) = (a.len(), b.len());
    let n = la.div_ceil(chunk_a);
    assert_eq!(n, lb.div_ceil(chunk_b), "chunks_mut2: {la} and {lb} elements make different numbers of chunks");
    let (pa, pb) = (SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
    map(n, |k| {
        let (sa, sb) = (k * chunk_a, k * chunk_b);
        // SAFETY: as in `chunks_mut`, for each slice
        let (x, y) = unsafe { (pa.slice(sa, chunk_a.min(la - sa)), pb.slice(sb, chunk_b.min(lb - sb))) };
        f(k, x, y)
    })
}

/// A copy of `src`, written in parallel chunks of `chunk` elements (each by the thread that
/// takes that chunk in the loops of this module, so a team member's share of a field stays in
/// its cache).
pub fn copy_of<T: Copy + Send + Sync>(src: &[T], chunk: usize) -> Vec<T> {
    let n = src.len();
    let mut v: Vec<T> = Vec::with_capacity(n);
    chunks_mut(&mut v.spare_capacity_mut()[..n], chunk, |k, out| {
        for (o, &x) in out.iter_mut().zip(&src[k * chunk..]) {
            o.write(x);
        }
    });
    // SAFETY: `chunks_mut` ran the body on every chunk of the first n slots, which wrote each
    // slot (a panic would have unwound past this line)
    unsafe { v.set_len(n) };
    v
}

/// `n` copies of `value`, written in parallel chunks of `chunk` elements (see [`copy_of`]).
pub fn filled<T: Copy + Send + Sync>(n: usize, value: T, chunk: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    chunks_mut(&mut v.spare_capacity_mut()[..n], chunk, |_, out| {
        for o in out {
            o.write(value);
        }
    });
    // SAFETY: as in `copy_of`
    unsafe { v.set_len(n) };
    v
}

/// Runs `a` and `b`, possibly in parallel.
pub fn join<RA: Send, RB: Send>(a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
    match CURRENT.with(Cell::get) {
        Current::Rayon => rayon::join(a, b),
        Current::Serial => (a(), b()),
        Current::Team(t) => {
            let (a, b) = (Mutex::new(Some(a)), Mutex::new(Some(b)));
            let (ra, rb) = (Mutex::new(None), Mutex::new(None));
            // SAFETY: as in `threads`
            unsafe { &*t }.map(2, &|i: usize| {
                if i == 0 {
                    let f = a.lock().unwrap_or_else(|e| e.into_inner()).take();
                    *ra.lock().unwrap_or_else(|e| e.into_inner()) = f.map(|f| f());
                } else {
                    let f = b.lock().unwrap_or_else(|e| e.into_inner()).take();
                    *rb.lock().unwrap_or_else(|e| e.into_inner()) = f.map(|f| f());
                }
            });
            let ra = ra.into_inner().unwrap_or_else(|e| e.into_inner());
            let rb = rb.into_inner().unwrap_or_else(|e| e.into_inner());
            (ra.expect("join: the first half did not run"), rb.expect("join: the second half did not run"))
        }
    }
}

/// The job of one region, its lifetime erased: valid while the leader waits in [`Team::run`].
type Job = *const (dyn Fn(usize) + Sync);

/// The state a team's threads share. The fields the leader writes to start a region and those
/// the helpers write to finish one sit on separate cache lines, so a region costs a few line
/// transfers.
struct Shared {
    start: Padded<Start>,
    finish: Padded<Finish>,
    /// Helpers parked on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

#[repr(align(128))]
struct Padded<T>(T);

/// Written by the leader to start a region.
struct Start {
    /// Bumped to publish a region (SeqCst: see `park`).
    generation: AtomicU64,
    /// The region's job, written before `generation` is bumped and read by helpers only after
    /// they saw the bump; the leader rewrites it only once every helper is done with it.
    job: std::cell::UnsafeCell<Option<SendJob>>,
}

/// Written by the helpers as they finish a region.
struct Finish {
    /// Helpers still running the current region.
    remaining: AtomicUsize,
    /// A helper's task panicked in the current region.
    panicked: AtomicBool,
}

// SAFETY: `job` is accessed by the protocol above (written only while no helper reads it)
unsafe impl Sync for Start {}

#[derive(Clone, Copy)]
struct SendJob(Job);
unsafe impl Send for SendJob {}

/// A fixed team of threads for short parallel regions: the calling thread (the leader) and
/// `size − 1` helpers, which take static shares of each region's tasks and spin for
/// about 200 µs after a region before they park. Used through [`Team::enter`] and the loop
/// functions of this module. A region started while another is running (from another thread,
/// or nested) runs on the calling thread alone, so a team never deadlocks.
pub struct Team {
    size: usize,
    shared: Arc<Shared>,
    busy: AtomicBool,
    helpers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Team({} threads)", self.size)
    }
}

impl Team {
    /// A team of `size` threads (≥ 1): the caller and `size − 1` helpers started here.
    pub fn new(size: usize) -> std::io::Result<Self> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            start: Padded(Start { generation: AtomicU64::new(0), job: std::cell::UnsafeCell::new(None) }),
            finish: Padded(Finish { remaining: AtomicUsize::new(0), panicked: AtomicBool::new(false) }),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut team = Self { size, shared, busy: AtomicBool::new(false), helpers: Vec::new() };
        for member in 1..size {
            let shared = Arc::clone(&team.shared);
            let h = std::thread::Builder::new().name(format!("latflow-team-{member}")).spawn(move || helper(&shared, member))?;
            team.helpers.push(h);
        }
        Ok(team)
    }

    /// The number of threads, the leader included.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` with this team as the calling thread's target of parallel loops.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let _restore = set_current(Current::Team(self));
        f()
    }

    /// `f(i)` for i in 0..n on the team, results in index order.
    fn map<R: Send>(&self, n: usize, f: &(dyn Fn(usize) -> R + Sync)) -> Vec<R> {
        let size = self.size.min(n);
        let slots: Vec<Mutex<Vec<R>>> = (0..size).map(|_| Mutex::new(Vec::new())).collect();
        let share = |member: usize| {
            let range = member * n / size..(member + 1) * n / size;
            let out: Vec<R> = range.map(f).collect();
            *slots[member].lock().unwrap_or_else(|e| e.into_inner()) = out;
        };
        self.run(size, &share);
        slots.into_iter().flat_map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner())).collect()
    }

    /// `job(m)` for every member m < `members` (≤ size), the leader taking m = 0; returns when
    /// all have finished, re-raising a panic of any of them.
    fn run(&self, members: usize, job: &(dyn Fn(usize) + Sync)) {
        if members <= 1 {
            // one task: it runs here, and its own loops may still use the team
            return (0..members).for_each(job);
        }
        if self.busy.swap(true, Ordering::Acquire) {
            // the team is running another region (of another thread): all tasks run here
            let _restore = set_current(Current::Serial);
            return (0..members).for_each(job);
        }
        struct Free<'a>(&'a AtomicBool);
        impl Drop for Free<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _free = Free(&self.busy);
        let sh = &*self.shared;
        // helpers beyond `members` take an empty share
        let scoped = |m: usize| {
            if m < members {
                job(m)
            }
        };
        let scoped: &(dyn Fn(usize) + Sync) = &scoped;
        // SAFETY: the lifetime is erased only while this function waits below for every helper
        // to finish with the job (also when the leader's own share panics)
        let erased: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(scoped) };
        let (start, finish) = (&sh.start.0, &sh.finish.0);
        // SAFETY: no helper reads the job now: the previous region ended with `remaining` at 0
        // (observed with Acquire below), and the next bump of `generation` comes after this
        unsafe { *start.job.get() = Some(SendJob(erased)) };
        finish.panicked.store(false, Ordering::Relaxed);
        finish.remaining.store(self.size - 1, Ordering::Relaxed);
        start.generation.fetch_add(1, Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        let own = {
            let _restore = set_current(Current::Serial);
            catch_unwind(AssertUnwindSafe(|| scoped(0)))
        };
        let start = Instant::now();
        let mut spins = 0u32;
        while finish.remaining.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // the job's pointer dangles from here on; no helper reads it before the next region
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if finish.panicked.load(Ordering::Acquire) {
            panic!("a worker thread of the team panicked");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A helper's loop: wait for a region (spin, then park), run its share, report.
fn helper(sh: &Shared, member: usize) {
    let _restore = set_current(Current::Serial);
    let (start, finish) = (&sh.start.0, &sh.finish.0);
    let mut seen = 0u64;
    loop {
        // wait for the next generation
        let t0 = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            let g = start.generation.load(Ordering::Acquire);
            if g != seen || sh.shutdown.load(Ordering::Relaxed) {
                break g;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && t0.elapsed() > SPIN {
                park(sh, seen);
            } else {
                std::hint::spin_loop();
            }
        };
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = generation;
        // SAFETY: written before the bump this thread has seen (Acquire), and kept by the
        // leader until `remaining` reaches 0, which this thread's decrement below precedes
        if let Some(SendJob(job)) = unsafe { *start.job.get() } {
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(member))).is_err() {
                finish.panicked.store(true, Ordering::Release);
            }
        }
        finish.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Parks until the generation moves past `seen` or the team shuts down. The leader bumps the
/// generation and then reads `sleepers`; this thread counts itself in `sleepers` and then
/// reads the generation, both under the lock and in sequentially consistent order, so one of
/// the two sees the other and no wake-up is lost.
fn park(sh: &Shared, seen: u64) {
    let mut g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
    sh.sleepers.fetch_add(1, Ordering::SeqCst);
    while sh.start.0.generation.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst) {
        g = sh.wake.wait(g).unwrap_or_else(|e| e.into_inner());
    }
    sh.sleepers.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_give_the_same_results_on_rayon_a_team_and_one_thread() {
        let f = |i: usize| (i * i) as u64 % 97;
        let expect: Vec<u64> = (0..1000).map(f).collect();
        assert_eq!(map(1000, f), expect);
        for size in [1, 2, 3, 5] {
            let team = Team::new(size).unwrap();
            team.enter(|| {
                assert_eq!(threads(), size);
                for n in [0, 1, 2, 7, 1000] {
                    assert_eq!(map(n, f), expect[..n].to_vec(), "size {size}, n {n}");
                }
                let mut data: Vec<u64> = (0..1003).collect();
                let sums = chunks_mut(&mut data, 10, |k, c| {
                    c.iter_mut().for_each(|x| *x *= 2);
                    (k, c.len())
                });
                assert_eq!(sums.len(), 101);
                assert_eq!(sums[100], (100, 3));
                assert!(data.iter().enumerate().all(|(i, &x)| x == 2 * i as u64));
                let mut a = vec![1.0; 100];
                let mut b = vec![2.0; 50];
                chunks_mut2(&mut a, 10, &mut b, 5, |_, x, y| {
                    x.iter_mut().for_each(|v| *v += y[0]);
                    y.iter_mut().for_each(|v| *v = 0.0);
                });
                assert!(a.iter().all(|&v| v == 3.0) && b.iter().all(|&v| v == 0.0));
                let src: Vec<u64> = (0..1003).collect();
                assert_eq!(copy_of(&src, 64), src);
                assert_eq!(filled(1003, 7u8, 64), vec![7u8; 1003]);
                assert!(copy_of::<u64>(&[], 8).is_empty());
                // nested loops inside a task run on the task's thread, except inside a lone
                // task, which runs as the caller
                let nested = map(4, |_| (threads(), map(3, |j| j).iter().sum::<usize>()));
                assert!(nested.iter().all(|&(t, s)| t == 1 && s == 3));
                assert_eq!(map(1, |_| threads()), vec![size], "a lone task keeps the team");
                assert_eq!(join(|| 1, threads), (1, 1));
            });
            assert_eq!(threads(), rayon::current_num_threads(), "the team is left");
        }
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_team_goes_on() {
        let team = Team::new(2).unwrap();
        for bad in [0usize, 1] {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                team.enter(|| map(2, |i| if i == bad { panic!("task {i}") } else { i }))
            }));
            assert!(r.is_err(), "task {bad} panicked");
            assert_eq!(team.enter(|| map(4, |i| i + 1)), vec![1, 2, 3, 4]);
        }
    }

    #[test]
    fn parked_helpers_wake_for_the_next_region() {
        let team = Team::new(3).unwrap();
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            let ids = team.enter(|| map(3, |_| std::thread::current().id()));
            assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 3, "three threads took part");
        }
    }

    #[test]
    fn a_team_used_from_two_threads_at_once_stays_correct() {
        let team = Team::new(2).unwrap();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let team = &team;
                s.spawn(move || {
                    for _ in 0..200 {
                        let v = team.enter(|| map(64, |i| i as u64 * t));
                        assert_eq!(v, (0..64).map(|i| i * t).collect::<Vec<_>>());
                    }
                });
            }
        });
    }
}
