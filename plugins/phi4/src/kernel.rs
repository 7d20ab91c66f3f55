//! The φ⁴ kernels: neighbour sums, action, gradient and observables on one configuration.
//!
//! Sites are processed in *rows* along the last axis (contiguous in memory). The neighbours of
//! a row along any other axis form another whole row, so the stencil is a handful of
//! contiguous slice additions that the compiler vectorises. Work is split into fixed chunks
//! of rows, independent of the thread count, and partial action sums are merged in chunk
//! order: results are bit-identical for any number of threads.

use latflow_core::sum::CompensatedSum;
use latflow_core::Lattice;
use latflow_core::par;

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
        self.volume >= PARALLEL_MIN_SITES && par::threads() > 1
    }

    /// ∂S/∂φ(x) as a function of φ(x) and nb(x): 2(2d + m²) φ − 2 nb + 4λ φ³ (one expression,
    /// so that the gradient and the fused kicks round alike).
    fn force_whole(&self, m2: f64, lambda: f64) -> impl Fn(f64, f64) -> f64 + Sync + Copy {
        let c = 2.0 * (2.0 * self.d as f64 + m2);
        let l4 = 4.0 * lambda;
        move |p, nb| c * p - 2.0 * nb + l4 * p * p * p
    }

    /// The gradient term's force, 2(2d φ − nb).
    fn force_hopping(&self) -> impl Fn(f64, f64) -> f64 + Sync + Copy {
        let c = 4.0 * self.d as f64;
        move |p, nb| c * p - 2.0 * nb
    }

    /// The action's summand at x, φ(x) [ (2d + m²) φ(x) + λ φ(x)³ − nb(x) ].
    fn action_term(&self, m2: f64, lambda: f64) -> impl Fn(f64, f64) -> f64 + Sync + Copy {
        let c2 = 2.0 * self.d as f64 + m2;
        move |p, n| p * (c2 * p + lambda * p * p * p - n)
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
            par::chunks_mut(out, chunk, |c, block| body((c, block)));
        } else {
            out.chunks_mut(chunk).enumerate().for_each(body);
        }
    }

    /// Σ over sites of `term(φ(x), nb(x))`, with compensated partial sums per fixed chunk of
    /// rows, merged in chunk order.
    fn sum_sites(&self, phi: &[f64], term: impl Fn(f64, f64) -> f64 + Sync) -> f64 {
        let [s] = self.sum_sites_n(phi, |p, n| [term(p, n)]);
        s
    }

    /// `N` sums of [`Kernel::sum_sites`] in one sweep: sum k adds `term(φ(x), nb(x))[k]` over
    /// the sites, each with the bits it has alone.
    fn sum_sites_n<const N: usize>(&self, phi: &[f64], term: impl Fn(f64, f64) -> [f64; N] + Sync) -> [f64; N] {
        let n_chunks = self.n_rows.div_ceil(self.rows_per_chunk);
        let l = self.row_len;
        let chunk_sum = |c: usize| {
            let mut nb = vec![0.0; l];
            let mut s = [CompensatedSum::new(); N];
            let end = ((c + 1) * self.rows_per_chunk).min(self.n_rows);
            for r in c * self.rows_per_chunk..end {
                self.row_neighbour_sum(phi, r, &mut nb);
                for (&p, &n) in phi[r * l..(r + 1) * l].iter().zip(&nb) {
                    for (s, t) in s.iter_mut().zip(term(p, n)) {
                        s.add(t);
                    }
                }
            }
            s
        };
        let partials: Vec<[CompensatedSum; N]> = if self.parallel() {
            par::map(n_chunks, chunk_sum)
        } else {
            (0..n_chunks).map(chunk_sum).collect()
        };
        let mut total = [CompensatedSum::new(); N];
        for p in partials {
            for (t, p) in total.iter_mut().zip(p) {
                t.merge(p);
            }
        }
        total.map(|t| t.value())
    }

    /// S = Σ_x [ Σ_μ (φ(x+μ̂) − φ(x))² + m² φ² + λ φ⁴ ], evaluated as
    /// Σ_x φ(x) [ (2d + m²) φ(x) + λ φ(x)³ − nb(x) ].
    pub fn action(&self, phi: &[f64], m2: f64, lambda: f64) -> f64 {
        self.sum_sites(phi, self.action_term(m2, lambda))
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
        let force = self.force_whole(m2, lambda);
        let l = self.row_len;
        self.for_rows(out, |r, row| {
            self.row_neighbour_sum(phi, r, row);
            for (o, &p) in row.iter_mut().zip(&phi[r * l..(r + 1) * l]) {
                *o = force(p, *o);
            }
        });
    }

    /// Gradient of the gradient term: 2(2d φ − nb).
    pub fn gradient_hopping(&self, phi: &[f64], out: &mut [f64]) {
        let force = self.force_hopping();
        let l = self.row_len;
        self.for_rows(out, |r, row| {
            self.row_neighbour_sum(phi, r, row);
            for (o, &p) in row.iter_mut().zip(&phi[r * l..(r + 1) * l]) {
                *o = force(p, *o);
            }
        });
    }

    /// Gradient of the local potential: 2m² φ + 4λ φ³.
    pub fn gradient_local(&self, phi: &[f64], m2: f64, lambda: f64, out: &mut [f64]) {
        let (c, l4) = (2.0 * m2, 4.0 * lambda);
        self.for_rows(out, |r, row| {
            let l = row.len();
            for (o, &p) in row.iter_mut().zip(&phi[r * l..(r + 1) * l]) {
                *o = c * p + l4 * p * p * p;
            }
        });
    }

    /// The momentum kick of the whole action, mom ← mom − eps·∂S/∂φ, in one sweep: the same
    /// bits as [`Kernel::gradient`] followed by `mom[x] -= eps·grad[x]`, without the gradient
    /// buffer.
    pub fn kick(&self, phi: &[f64], m2: f64, lambda: f64, mom: &mut [f64], eps: f64) {
        self.kick_rows(phi, mom, eps, self.force_whole(m2, lambda));
    }

    /// The kick of the gradient term alone (the bits of [`Kernel::gradient_hopping`] and a
    /// kick).
    pub fn kick_hopping(&self, phi: &[f64], mom: &mut [f64], eps: f64) {
        self.kick_rows(phi, mom, eps, self.force_hopping());
    }

    /// The kick of the local potential alone (the bits of [`Kernel::gradient_local`] and a
    /// kick).
    pub fn kick_local(&self, phi: &[f64], m2: f64, lambda: f64, mom: &mut [f64], eps: f64) {
        let (c, l4) = (2.0 * m2, 4.0 * lambda);
        self.for_rows(mom, |r, row| {
            let l = row.len();
            for (q, &p) in row.iter_mut().zip(&phi[r * l..(r + 1) * l]) {
                *q -= eps * (c * p + l4 * p * p * p);
            }
        });
    }

    /// A kick of the whole action and a drift in one sweep: mom ← mom − eps_kick·∂S/∂φ, then
    /// new_phi ← φ + eps_drift·mom (the new field goes to `new_phi`, since the force at a site
    /// reads the old field at its neighbours). The same bits as [`Kernel::kick`] followed by
    /// the drift.
    pub fn kick_drift(&self, phi: &[f64], m2: f64, lambda: f64, mom: &mut [f64], eps: (f64, f64), new_phi: &mut [f64]) {
        self.kick_drift_rows(phi, mom, eps, new_phi, self.force_whole(m2, lambda));
    }

    /// [`Kernel::kick_drift`] for the gradient term alone.
    pub fn kick_drift_hopping(&self, phi: &[f64], mom: &mut [f64], eps: (f64, f64), new_phi: &mut [f64]) {
        self.kick_drift_rows(phi, mom, eps, new_phi, self.force_hopping());
    }

    /// A kick of the local potential and a drift, in place (the potential's force at a site
    /// reads that site alone): the bits of [`Kernel::kick_local`] followed by the drift.
    pub fn kick_drift_local(&self, phi: &mut [f64], m2: f64, lambda: f64, mom: &mut [f64], eps: (f64, f64)) {
        let (c, l4) = (2.0 * m2, 4.0 * lambda);
        let (eps_kick, eps_drift) = eps;
        let body = |(x, q): (&mut [f64], &mut [f64])| {
            for (x, q) in x.iter_mut().zip(q.iter_mut()) {
                let p = *x;
                *q -= eps_kick * (c * p + l4 * p * p * p);
                *x += eps_drift * *q;
            }
        };
        let chunk = self.rows_per_chunk * self.row_len;
        if self.parallel() {
            par::chunks_mut2(phi, chunk, mom, chunk, |_, x, q| body((x, q)));
        } else {
            phi.chunks_mut(chunk).zip(mom.chunks_mut(chunk)).for_each(body);
        }
    }

    /// mom[x] −= eps_kick·force(φ(x), nb(x)), then new_phi[x] = φ(x) + eps_drift·mom[x], for
    /// every site, in the fixed chunks of rows of [`Kernel::for_rows`].
    fn kick_drift_rows(
        &self,
        phi: &[f64],
        mom: &mut [f64],
        eps: (f64, f64),
        new_phi: &mut [f64],
        force: impl Fn(f64, f64) -> f64 + Sync + Copy,
    ) {
        let l = self.row_len;
        let chunk = self.rows_per_chunk * l;
        let body = |(c, (block, out)): (usize, (&mut [f64], &mut [f64]))| {
            // copies on this stack: the coefficients stay in registers in the vectorised loops
            let (force, (eps_kick, eps_drift)) = (force, eps);
            let mut nb = vec![0.0; l];
            for (j, (row, out)) in block.chunks_mut(l).zip(out.chunks_mut(l)).enumerate() {
                let r = c * self.rows_per_chunk + j;
                self.row_neighbour_sum(phi, r, &mut nb);
                let old = &phi[r * l..(r + 1) * l];
                for ((q, &p), &n) in row.iter_mut().zip(old).zip(&nb) {
                    *q -= eps_kick * force(p, n);
                }
                for ((x, &p), &q) in out.iter_mut().zip(old).zip(row.iter()) {
                    *x = p + eps_drift * q;
                }
            }
        };
        if self.parallel() {
            par::chunks_mut2(mom, chunk, new_phi, chunk, |c, block, out| body((c, (block, out))));
        } else {
            mom.chunks_mut(chunk).zip(new_phi.chunks_mut(chunk)).enumerate().for_each(body);
        }
    }

    /// mom[x] −= eps·force(φ(x), nb(x)) for every site, in the fixed chunks of rows of
    /// [`Kernel::for_rows`], each chunk with its own neighbour-sum row.
    fn kick_rows(&self, phi: &[f64], mom: &mut [f64], eps: f64, force: impl Fn(f64, f64) -> f64 + Sync + Copy) {
        let l = self.row_len;
        let chunk = self.rows_per_chunk * l;
        let body = |(c, block): (usize, &mut [f64])| {
            // a copy on this stack: its coefficients stay in registers in the vectorised loop
            let (force, eps) = (force, eps);
            let mut nb = vec![0.0; l];
            for (j, row) in block.chunks_mut(l).enumerate() {
                let r = c * self.rows_per_chunk + j;
                self.row_neighbour_sum(phi, r, &mut nb);
                for ((q, &p), &n) in row.iter_mut().zip(&phi[r * l..(r + 1) * l]).zip(&nb) {
                    *q -= eps * force(p, n);
                }
            }
        };
        if self.parallel() {
            par::chunks_mut(mom, chunk, |c, block| body((c, block)));
        } else {
            mom.chunks_mut(chunk).enumerate().for_each(body);
        }
    }

    /// Appends the observables of one configuration to `out`, in the plugin's order:
    /// action_density, phi2, magnetization, abs_magnetization, chi2, energy, correlator[T].
    pub fn observables(&self, phi: &[f64], m2: f64, lambda: f64, out: &mut Vec<f64>) {
        let v = self.volume as f64;
        let t_ext = self.time_extent;
        // the action and the hopping sum in one stencil sweep, each with its own bits
        let term = self.action_term(m2, lambda);
        let stencil = || self.sum_sites_n(phi, |p, n| [term(p, n), p * n]);
        let site_sums = || {
            // Σφ² and Σφ in site order; the zero-momentum correlator's time slices along the
            // last axis (site x = r·row_len + t is at time t), added row by row
            let (mut sum2, mut sum1) = (CompensatedSum::new(), CompensatedSum::new());
            let mut slice = vec![0.0; t_ext];
            for row in phi.chunks_exact(t_ext) {
                for (acc, &p) in slice.iter_mut().zip(row) {
                    sum2.add(p * p);
                    sum1.add(p);
                    *acc += p;
                }
            }
            (sum2, sum1, slice)
        };
        // the stencil sums (in parallel chunks) beside the one serial pass; each sum adds the
        // same terms in the same order on any thread count
        let ([s, hop_sum], (sum2, sum1, slice)) =
            if self.parallel() { par::join(stencil, site_sums) } else { (stencil(), site_sums()) };
        let phi2 = sum2.value() / v;
        let m = sum1.value();
        let hop = hop_sum / (2.0 * self.d as f64 * v);
        out.extend_from_slice(&[s / v, phi2, m / v, m.abs() / v, m * m / v, hop]);
        for t in 0..t_ext {
            let c: f64 = (0..t_ext).map(|t0| slice[t0] * slice[(t0 + t) % t_ext]).sum();
            out.push(c / v);
        }
    }
}
