//! Fixed-chunk parallel loops over sites: fills, compensated reductions and random fills whose
//! results are bit-identical for any thread count.
//!
//! Work is cut into chunks of [`CHUNK_SITES`] sites (or [`RNG_CHUNK`] items for random fills)
//! that do not depend on the number of threads; per-chunk partial sums are merged in chunk
//! order. Small problems run on the calling thread, which changes nothing but speed: fewer than
//! [`PARALLEL_MIN_SITES`] sites for a loop of [`SiteWork::Light`] sites, fewer than
//! [`HEAVY_MIN_SITES`] for [`SiteWork::Heavy`] ones.

use std::fmt;

use crate::rng::Stream;
use crate::sum::CompensatedSum;

/// Sites per chunk of a fill or a reduction.
pub const CHUNK_SITES: usize = 1024;
/// Below this many sites, loops over [`SiteWork::Light`] sites run on the calling thread.
pub const PARALLEL_MIN_SITES: usize = 8192;
/// Below this many sites (two chunks), loops over [`SiteWork::Heavy`] sites run on the calling
/// thread.
pub const HEAVY_MIN_SITES: usize = 2 * CHUNK_SITES;
/// Items per chunk of a random fill: each chunk draws from its own counter range.
pub const RNG_CHUNK: usize = 256;
/// The counter range (in 32-bit ChaCha words) reserved for one chunk of a random fill, 2³⁶
/// words: far more than any chunk of [`RNG_CHUNK`] items draws.
pub const RNG_CHUNK_WORDS: u128 = 1 << 36;
/// The ChaCha word counter has 68 bits.
pub(crate) const WORD_POS_LIMIT: u128 = 1 << 68;

/// How much work the body of a site loop does. It decides only from how many sites the loop
/// is worth running in parallel (a parallel region costs a few to tens of microseconds to start
/// and join); the chunks, and so the bits, are the same either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteWork {
    /// Tens of nanoseconds per site: a U(1) plaquette, a kick, a copy. Parallel from
    /// [`PARALLEL_MIN_SITES`] sites.
    Light,
    /// A few hundred nanoseconds or more per site: SU(N) staples, forces, exponentials, a
    /// heat-bath or overrelaxation update. Parallel from [`HEAVY_MIN_SITES`] sites, so that an
    /// SU(3) force on 8⁴ (4096 sites, about 3.6 ms on one core) uses every thread.
    Heavy,
}

impl SiteWork {
    /// The work of a per-link update or staple in group `G`: [`SiteWork::Heavy`] for matrix
    /// groups (N ≥ 2), [`SiteWork::Light`] for U(1).
    pub fn of_group<G: super::GaugeGroup>() -> Self {
        if G::NC >= 2 { SiteWork::Heavy } else { SiteWork::Light }
    }

    /// The fewest sites at which a loop of this work runs in parallel.
    pub fn min_parallel_sites(self) -> usize {
        match self {
            SiteWork::Light => PARALLEL_MIN_SITES,
            SiteWork::Heavy => HEAVY_MIN_SITES,
        }
    }

    /// Whether a loop of `sites` sites of this work runs in parallel here: from
    /// [`SiteWork::min_parallel_sites`] sites, and on more than one thread.
    pub fn parallel(self, sites: usize) -> bool {
        sites >= self.min_parallel_sites() && crate::par::threads() > 1
    }
}

/// Fills `out` (`per_site` values per site) by `f(x, site's values, chunk sum)` in fixed
/// chunks of [`CHUNK_SITES`] sites, possibly in parallel, and returns the compensated chunk
/// sums merged in chunk order (`f` adds to the sum whatever the caller wants reduced). The
/// sites' work is [`SiteWork::Light`]; see [`fill_sites_as`].
pub fn fill_sites<T: Send>(
    out: &mut [T],
    per_site: usize,
    f: impl Fn(usize, &mut [T], &mut CompensatedSum) + Sync,
) -> f64 {
    fill_sites_as(SiteWork::Light, out, per_site, f)
}

/// [`fill_sites`] for sites whose body does `work`: the same chunks and the same bits, in
/// parallel from [`SiteWork::min_parallel_sites`] sites.
pub fn fill_sites_as<T: Send>(
    work: SiteWork,
    out: &mut [T],
    per_site: usize,
    f: impl Fn(usize, &mut [T], &mut CompensatedSum) + Sync,
) -> f64 {
    let body = |(c, block): (usize, &mut [T])| {
        let mut s = CompensatedSum::new();
        for (j, site) in block.chunks_mut(per_site).enumerate() {
            f(c * CHUNK_SITES + j, site, &mut s);
        }
        s
    };
    let sites = out.len() / per_site.max(1);
    let partials =
        crate::par::chunks_mut_when(work.parallel(sites), out, CHUNK_SITES * per_site, |c, block| body((c, block)));
    let mut total = CompensatedSum::new();
    for p in partials {
        total.merge(p);
    }
    total.value()
}

/// Σ_x terms over `sites` sites: `f(x, sum)` adds site x's terms; chunks of [`CHUNK_SITES`]
/// sites are summed with compensation and merged in order. The sites' work is
/// [`SiteWork::Light`]; see [`sum_sites_as`].
pub fn sum_sites(sites: usize, f: impl Fn(usize, &mut CompensatedSum) + Sync) -> f64 {
    sum_sites_as(SiteWork::Light, sites, f)
}

/// [`sum_sites`] for sites whose terms take `work` to compute (the same chunks, the same bits).
pub fn sum_sites_as(work: SiteWork, sites: usize, f: impl Fn(usize, &mut CompensatedSum) + Sync) -> f64 {
    let mut total = CompensatedSum::new();
    for p in chunk_sums_as(work, sites, f) {
        total.merge(p);
    }
    total.value()
}

/// The per-chunk partial sums of [`sum_sites`], in chunk order (chunk c holds the terms of
/// sites c·[`CHUNK_SITES`] up to the next chunk). Merging them in order from an empty sum is
/// [`sum_sites`]; a decomposed lattice whose ranks hold whole chunks merges every rank's
/// partials in rank order and gets the same bits as one rank. The sites' work is
/// [`SiteWork::Light`]; see [`chunk_sums_as`].
pub fn chunk_sums(sites: usize, f: impl Fn(usize, &mut CompensatedSum) + Sync) -> Vec<CompensatedSum> {
    chunk_sums_as(SiteWork::Light, sites, f)
}

/// [`chunk_sums`] for sites whose terms take `work` to compute (the same chunks, the same
/// bits).
pub fn chunk_sums_as(work: SiteWork, sites: usize, f: impl Fn(usize, &mut CompensatedSum) + Sync) -> Vec<CompensatedSum> {
    let n_chunks = sites.div_ceil(CHUNK_SITES);
    let chunk = |c: usize| {
        let mut s = CompensatedSum::new();
        for x in c * CHUNK_SITES..((c + 1) * CHUNK_SITES).min(sites) {
            f(x, &mut s);
        }
        s
    };
    if work.parallel(sites) {
        crate::par::map(n_chunks, chunk)
    } else {
        (0..n_chunks).map(chunk).collect()
    }
}

/// Why a random fill could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RngFillError {
    /// The field needs more counter ranges than the stream has left.
    StreamExhausted { chunks: usize },
    /// A chunk drew more than the `limit` words reserved for it ([`RNG_CHUNK_WORDS`] for
    /// [`fill_random`]; its draws would overlap the next chunk's).
    ChunkOverrun { chunk: usize, words: u128, limit: u128 },
}

impl fmt::Display for RngFillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RngFillError::StreamExhausted { chunks } => {
                write!(f, "a random fill of {chunks} chunks would run past the end of the random stream")
            }
            RngFillError::ChunkOverrun { chunk, words, limit } => write!(
                f,
                "chunk {chunk} of a random fill drew {words} words, more than the {limit} reserved per chunk"
            ),
        }
    }
}

impl std::error::Error for RngFillError {}

/// Fills every item of `out` with `draw(stream, item)`, in parallel and bit-identically for
/// any thread count.
///
/// How the stream advances: with the caller's stream at word counter c, items are cut into
/// chunks of [`RNG_CHUNK`] items; chunk k draws from the same key and stream id starting at
/// counter c + k·[`RNG_CHUNK_WORDS`], items in order. Afterwards the caller's stream is at
/// c + n_chunks·[`RNG_CHUNK_WORDS`] (unchanged for an empty `out`), whatever was drawn.
pub fn fill_random<T: Send + Clone>(
    out: &mut [T],
    rng: &mut Stream,
    draw: impl Fn(&mut Stream, &mut T) + Sync,
) -> Result<(), RngFillError> {
    let total = out.len();
    fill_random_part(out, 0, total, rng, draw)
}

/// The part `first .. first + out.len()` of a [`fill_random`] of `total` items: `out` gets
/// exactly the values that items `first ..` of the whole fill get, and the caller's stream
/// advances as for the whole fill. This is how a rank of a decomposed lattice draws its share
/// of a field (momenta, pseudofermions) with the bits of one rank. A chunk that begins before
/// `first` is drawn from its start, the items before `first` into scratch (at most
/// [`RNG_CHUNK`] − 1 extra draws per part), so this is exact only for draws whose consumption
/// of the stream does not depend on the item's value (a Gaussian per item: yes; a rejection
/// sampler conditioned on the item, like the heat-bath: no — use [`fill_random_blocks`] with
/// one item per block). `first + out.len()` must not exceed `total` (a caller's bug: panics).
pub fn fill_random_part<T: Send + Clone>(
    out: &mut [T],
    first: usize,
    total: usize,
    rng: &mut Stream,
    draw: impl Fn(&mut Stream, &mut T) + Sync,
) -> Result<(), RngFillError> {
    fill_random_blocks(out, first, total, RNG_CHUNK, RNG_CHUNK_WORDS, rng, draw)
}

/// [`fill_random_part`] with blocks of `block_items` items, each drawing from its own counter
/// range of `block_words` words (the stream advances by ⌈total / block_items⌉ · block_words).
/// With one item per block every item's draws start at a fixed position whatever the other
/// items drew, so any part of the fill gets the whole fill's values even for rejection
/// samplers whose consumption depends on the item.
pub fn fill_random_blocks<T: Send + Clone>(
    out: &mut [T],
    first: usize,
    total: usize,
    block_items: usize,
    block_words: u128,
    rng: &mut Stream,
    draw: impl Fn(&mut Stream, &mut T) + Sync,
) -> Result<(), RngFillError> {
    assert!(first + out.len() <= total, "items {first}..{} of a fill of {total}", first + out.len());
    assert!(block_items >= 1 && block_words >= 1, "empty random-fill blocks");
    let origin: &Stream = rng;
    let base = origin.word_pos();
    let chunks = total.div_ceil(block_items);
    let end = base + chunks as u128 * block_words;
    if end > WORD_POS_LIMIT {
        return Err(RngFillError::StreamExhausted { chunks });
    }
    // the local blocks: the first one ends at the first block boundary after `first`
    let skip = first % block_items;
    let head = (block_items - skip).min(out.len());
    let (head_block, rest) = out.split_at_mut(head);
    let first_chunk = first / block_items;
    let body = |(k, block): (usize, &mut [T]), skip: usize| {
        let start = base + k as u128 * block_words;
        let mut s = origin.at_word_pos(start);
        if skip > 0 {
            let mut scratch = block[0].clone();
            for _ in 0..skip {
                draw(&mut s, &mut scratch);
            }
        }
        for item in block {
            draw(&mut s, item);
        }
        let used = s.word_pos() - start;
        if used > block_words {
            Err(RngFillError::ChunkOverrun { chunk: k, words: used, limit: block_words })
        } else {
            Ok(())
        }
    };
    let mut results = Vec::with_capacity(rest.len().div_ceil(block_items) + 1);
    if !head_block.is_empty() {
        results.push(body((first_chunk, head_block), skip));
    }
    let tail = |(j, block): (usize, &mut [T])| body((first_chunk + 1 + j, block), 0);
    if rest.len() > block_items && crate::par::threads() > 1 {
        // tasks of at least RNG_CHUNK items, whatever the block size
        let per_task = block_items * RNG_CHUNK.div_ceil(block_items);
        let blocks_per_task = per_task / block_items;
        let per: Vec<Vec<Result<(), RngFillError>>> = crate::par::chunks_mut(rest, per_task, |t, task| {
            task.chunks_mut(block_items).enumerate().map(|(j, b)| tail((t * blocks_per_task + j, b))).collect()
        });
        results.extend(per.into_iter().flatten());
    } else {
        results.extend(rest.chunks_mut(block_items).enumerate().map(tail));
    }
    results.into_iter().collect::<Result<(), _>>()?;
    *rng = origin.at_word_pos(end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    #[test]
    fn random_fill_is_thread_count_independent_and_advances_as_documented() {
        let run = |threads: usize, n: usize| {
            in_pool(threads, || {
                let mut rng = Stream::new(77, 5);
                rng.normal();
                let mut v = vec![[0.0f64; 3]; n];
                fill_random(&mut v, &mut rng, |s, x| {
                    for e in x.iter_mut() {
                        *e = s.normal();
                    }
                })
                .unwrap();
                (v, rng.state())
            })
        };
        for n in [0, 1, 255, 256, 257, 5000] {
            let (a, sa) = run(1, n);
            let (b, sb) = run(2, n);
            let (c, _) = run(3, n);
            assert!(a.iter().zip(&b).all(|(x, y)| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())));
            assert!(a.iter().zip(&c).all(|(x, y)| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())));
            assert_eq!(sa, sb);
            let mut start = Stream::new(77, 5);
            start.normal();
            let s0 = start.state();
            let pos = |s: &crate::rng::RngState| (u128::from(s.counter_hi) << 64) | u128::from(s.counter_lo);
            assert_eq!(pos(&sa), pos(&s0) + n.div_ceil(RNG_CHUNK) as u128 * RNG_CHUNK_WORDS);
            // chunk k's first item is the first draw at its counter offset
            if n > RNG_CHUNK {
                let mut st = s0;
                let p = pos(&s0) + RNG_CHUNK_WORDS;
                st.counter_lo = p as u64;
                st.counter_hi = (p >> 64) as u64;
                let mut s = Stream::from_state(&st);
                assert_eq!(a[RNG_CHUNK][0].to_bits(), s.normal().to_bits());
            }
        }
        // the values are normal deviates
        let (v, _) = run(2, 20_000);
        let m2 = v.iter().flatten().map(|x| x * x).sum::<f64>() / 60_000.0;
        assert!((m2 - 1.0).abs() < 4.0 * (2.0f64 / 60_000.0).sqrt());
    }

    #[test]
    fn exhausted_stream_is_an_error() {
        let mut st = Stream::new(1, 1).state();
        let p = WORD_POS_LIMIT - RNG_CHUNK_WORDS;
        st.counter_lo = p as u64;
        st.counter_hi = (p >> 64) as u64;
        let mut rng = Stream::from_state(&st);
        let mut v = vec![0.0; 2 * RNG_CHUNK];
        assert_eq!(
            fill_random(&mut v, &mut rng, |s, x| *x = s.uniform()),
            Err(RngFillError::StreamExhausted { chunks: 2 })
        );
    }

    #[test]
    fn reductions_are_thread_count_independent() {
        let n = 3 * PARALLEL_MIN_SITES + 17;
        let term = |x: usize| ((x as f64) * 0.37).sin() * 1e3;
        let a = in_pool(1, || sum_sites(n, |x, s| s.add(term(x))));
        let b = in_pool(2, || sum_sites(n, |x, s| s.add(term(x))));
        assert_eq!(a.to_bits(), b.to_bits());
        let fill = |threads| {
            in_pool(threads, || {
                let mut out = vec![0.0; 2 * n];
                let s = fill_sites(&mut out, 2, |x, o, s| {
                    o[0] = term(x);
                    o[1] = -term(x);
                    s.add(term(x));
                });
                (out, s)
            })
        };
        let ((o1, s1), (o2, s2)) = (fill(1), fill(2));
        assert_eq!(o1, o2);
        assert_eq!(s1.to_bits(), s2.to_bits());
        assert_eq!(s1.to_bits(), a.to_bits());
        assert_eq!(o1[2 * 5000], term(5000));
    }
}
