//! The φ⁴ kernels: neighbour sums, action, gradient and observables on one configuration.
//!
//! Sites are processed in *rows* along the last axis (contiguous in memory). The neighbours of
//! a row along any other axis form another whole row, so the stencil is a handful of
//! contiguous slice additions that the compiler vectorises. Work is split into fixed chunks
//! of rows, independent of the thread count, and partial action sums are merged in chunk
//! order: results are bit-identical for any number of threads.

use latflow_core::sum::CompensatedSum;
use latflow_core::Lattice;
use rayon::prelude::*;

/// Below this volume a configuration is processed on the calling thread.
const PARALLEL_MIN_SITES: usize = 8192;
/// Sites per chunk (rounded to whole rows).
const CHUNK_SITES: usize = 2048;

/// Precomputed geometry for the row-wise stencil.
#[derive(Debug, Clone)]
pub struct Kernel {
    d: usize,
    volume: usize,
    row_len: usize,
    n_rows: usize,
    /// For each row and each axis μ < d−1, the index of the row at +μ̂ and at −μ̂.
    row_up: Vec<u32>,
    row_dn: Vec<u32>,
    rows_per_chunk: usize,
    time_extent: usize,
}

impl Kernel {
    /// Geometry for `lattice`.
    pub fn new(lattice: &Lattice) -> Self {
        let d = lattice.dim();
        let row_len = lattice.time_extent();
        let n_rows = lattice.volume() / row_len;
        let mut row_up = Vec::with_capacity(n_rows * (d - 1));
        let mut row_dn = Vec::with_capacity(n_rows * (d - 1));
        for r in 0..n_rows {
            let x0 = r * row_len;
            for mu in 0..d - 1 {
                row_up.push((lattice.fwd(x0, mu) / row_len) as u32);
                row_dn.push((lattice.bwd(x0, mu) / row_len) as u32);
            }
        }
        let rows_per_chunk = (CHUNK_SITES / row_len).max(1);
        Self { d, volume: lattice.volume(), row_len, n_rows, row_up, row_dn, rows_per_chunk, time_extent: row_len }
    }

    /// Number of sites.
    pub fn volume(&self) -> usize {
        self.volume
    }

    fn parallel(&self) -> bool {
        self.volume >= PARALLEL_MIN_SITES && rayon::current_num_threads() > 1
    }

    /// nb(x) = Σ_μ [φ(x+μ̂) + φ(x−μ̂)] for the sites of row `r`, written to `out` (len row_len).
    #[inline]
    fn row_neighbour_sum(&self, phi: &[f64], r: usize, out: &mut [f64]) {
        let l = self.row_len;
        let row = &phi[r * l..(r + 1) * l];
        // last axis: shifts within the row
        out[0] = row[1] + row[l - 1];
        for i in 1..l - 1 {
            out[i] = row[i + 1] + row[i - 1];
        }
        out[l - 1] = row[0] + row[l - 2];
        let k = self.d - 1;
        for mu in 0..k {
            let up = self.row_up[r * k + mu] as usize * l;
            let dn = self.row_dn[r * k + mu] as usize * l;
            let (a, b) = (&phi[up..up + l], &phi[dn..dn + l]);
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o += x + y;
            }
        }
    }

    /// Applies `f(row index, row slice of out)` to every row, in fixed chunks, possibly in
    /// parallel; each output row depends only on its own index.
    fn for_rows(&self, out: &mut [f64], f: impl Fn(usize, &mut [f64]) + Sync) {
        let chunk = self.rows_per_chunk * self.row_len;
        let body = |(c, block): (usize, &mut [f64])| {
            for (j, row) in block.chunks_mut(self.row_len).enumerate() {
                f(c * self.rows_per_chunk + j, row);
            }
        };
        if self.parallel() {
            out.par_chunks_mut(chunk).enumerate().for_each(body);
        } else {
            out.chunks_mut(chunk).enumerate().for_each(body);
        }
    }

    /// Σ over sites of `term(φ(x), nb(x))`, with compensated partial sums per fixed chunk of
    /// rows, merged in chunk order.
    fn sum_sites(&self, phi: &[f64], term: impl Fn(f64, f64) -> f64 + Sync) -> f64 {
        let n_chunks = self.n_rows.div_ceil(self.rows_per_chunk);
        let l = self.row_len;
        let chunk_sum = |c: usize| {
            let mut nb = vec![0.0; l];
            let mut s = CompensatedSum::new();
            let end = ((c + 1) * self.rows_per_chunk).min(self.n_rows);
            for r in c * self.rows_per_chunk..end {
                self.row_neighbour_sum(phi, r, &mut nb);
                for (&p, &n) in phi[r * l..(r + 1) * l].iter().zip(&nb) {
                    s.add(term(p, n));
                }
            }
            s
        };
        let partials: Vec<CompensatedSum> = if self.parallel() {
            (0..n_chunks).into_par_iter().map(chunk_sum).collect()
        } else {
            (0..n_chunks).map(chunk_sum).collect()
        };
        let mut total = CompensatedSum::new();
        for p in partials {
            total.merge(p);
        }
        total.value()
    }

    /// S = Σ_x [ Σ_μ (φ(x+μ̂) − φ(x))² + m² φ² + λ φ⁴ ], evaluated as
    /// Σ_x φ(x) [ (2d + m²) φ(x) + λ φ(x)³ − nb(x) ].
    pub fn action(&self, phi: &[f64], m2: f64, lambda: f64) -> f64 {
        let c2 = 2.0 * self.d as f64 + m2;
        self.sum_sites(phi, |p, n| p * (c2 * p + lambda * p * p * p - n))
    }

    /// The gradient term alone, Σ_x Σ_μ (φ(x+μ̂) − φ(x))².
    pub fn action_hopping(&self, phi: &[f64]) -> f64 {
        let c2 = 2.0 * self.d as f64;
        self.sum_sites(phi, |p, n| p * (c2 * p - n))
    }

    /// The local potential alone, Σ_x (m² φ² + λ φ⁴), a compensated sum.
    pub fn action_local(&self, phi: &[f64], m2: f64, lambda: f64) -> f64 {
        latflow_core::sum::compensated_sum(phi.iter().map(|p| p * p * (m2 + lambda * p * p)))
    }

    /// ∂S/∂φ(x) = 2(2d + m²) φ − 2 nb + 4λ φ³, written to `out`.
    pub fn gradient(&self, phi: &[f64], m2: f64, lambda: f64, out: &mut [f64]) {
        let c = 2.0 * (2.0 * self.d as f64 + m2);
        let l4 = 4.0 * lambda;
        let l = self.row_len;
        self.for_rows(out, |r, row| {
            self.row_neighbour_sum(phi, r, row);
            for (o, &p) in row.iter_mut().zip(&phi[r * l..(r + 1) * l]) {
                *o = c * p - 2.0 * *o + l4 * p * p * p;
            }
        });
    }

    /// Gradient of the gradient term: 2(2d φ − nb).
    pub fn gradient_hopping(&self, phi: &[f64], out: &mut [f64]) {
        let c = 4.0 * self.d as f64;
        let l = self.row_len;
        self.for_rows(out, |r, row| {
            self.row_neighbour_sum(phi, r, row);
            for (o, &p) in row.iter_mut().zip(&phi[r * l..(r + 1) * l]) {
                *o = c * p - 2.0 * *o;
            }
        });
    }

    /// Gradient of the local potential: 2m² φ + 4λ φ³.
    pub fn gradient_local(&self, phi: &[f64], m2: f64, lambda: f64, out: &mut [f64]) {
        let (c, l4) = (2.0 * m2, 4.0 * lambda);
        for (o, &p) in out.iter_mut().zip(phi) {
            *o = c * p + l4 * p * p * p;
        }
    }

    /// Appends the observables of one configuration to `out`, in the plugin's order:
    /// action_density, phi2, magnetization, abs_magnetization, chi2, energy, correlator[T].
    pub fn observables(&self, phi: &[f64], m2: f64, lambda: f64, out: &mut Vec<f64>) {
        let v = self.volume as f64;
        let s = self.action(phi, m2, lambda);
        // Σφ² and Σφ in one pass, each in site order as two separate sums would add them
        let (mut sum2, mut sum1) = (CompensatedSum::new(), CompensatedSum::new());
        for &p in phi {
            sum2.add(p * p);
            sum1.add(p);
        }
        let phi2 = sum2.value() / v;
        let m = sum1.value();
        let hop = self.sum_sites(phi, |p, n| p * n) / (2.0 * self.d as f64 * v);
        out.extend_from_slice(&[s / v, phi2, m / v, m.abs() / v, m * m / v, hop]);
        // zero-momentum correlator along the last axis: site x = r·row_len + t is at time t
        // (rows run along the last axis), added in site order
        let t_ext = self.time_extent;
        let mut slice = vec![0.0; t_ext];
        for row in phi.chunks_exact(t_ext) {
            for (acc, p) in slice.iter_mut().zip(row) {
                *acc += p;
            }
        }
        for t in 0..t_ext {
            let c: f64 = (0..t_ext).map(|t0| slice[t0] * slice[(t0 + t) % t_ext]).sum();
            out.push(c / v);
        }
    }
}
