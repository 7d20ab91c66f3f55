//! Checkerboard ordering and the gather tables of the periodic convolutions.
//!
//! Inside the flow a configuration is stored in *checkerboard order*: the even sites (Σ coords
//! even) in increasing site order, then the odd sites. A coupling layer of parity p updates the
//! sites of parity p (the peer's `mask = checker(p)` is 0 there) from the frozen sites of
//! parity 1 − p, so its two halves are plain `narrow`s and no mask multiplications are needed.
//!
//! A periodic convolution with kernel size k = 2r + 1 in d dimensions has K = k^d offsets
//! o ∈ [−r, r]^d, enumerated row-major (last axis fastest), which is also the order of the
//! weight tensor's leading axes `[k, …, k, C_in, C_out]` (torch's `Conv{d}d` weight
//! `W[c_out, c_in, k_0, …]` permuted). It computes
//! `out[b, x, :] = bias + Σ_{o, c} in[b, x + o, c] · W[o, c, :]` (a cross-correlation, as torch's),
//! as a column gather `in[:, table]` (`ColumnGather`) → `[B·M, K·C_in]` → matmul `[K·C_in, C_out]`, where
//! `table[m·K + o]` is the position of the neighbour x_m + o of the m-th output site.

use latflow_core::Lattice;
use latflow_flow_common::periodic;

/// Where a convolution reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The frozen half of a layer of parity p, followed by one zero column (index H), which
    /// stands for the masked (active) sites: `[x_frozen (H) | 0]`.
    FrozenPadded,
    /// A full field in checkerboard order (V positions).
    Full,
}

/// Which sites a convolution computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// Every site, in checkerboard order.
    All,
    /// The H active sites of the layer (parity p), in checkerboard order.
    Active,
}

/// Checkerboard ordering, kernel offsets and neighbour lookups.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub lattice: Lattice,
    pub volume: usize,
    /// V / 2 (extents are even).
    pub half: usize,
    /// `perm[i]` is the site at checkerboard position i.
    pub perm: Vec<usize>,
    /// `pos[x]` is the checkerboard position of site x.
    pub pos: Vec<usize>,
    /// The K kernel offsets, row-major over [−r, r]^d ([`periodic::kernel_offsets`]).
    pub offsets: Vec<Vec<i64>>,
    parity: Vec<usize>,
    coords: Vec<Vec<usize>>,
}

impl Geometry {
    /// Requires even extents (checked by the caller) and an odd kernel.
    pub fn new(lattice: &Lattice, kernel: usize) -> Self {
        let v = lattice.volume();
        let d = lattice.dim();
        let parity: Vec<usize> = (0..v).map(|x| lattice.parity(x)).collect();
        let coords: Vec<Vec<usize>> = (0..v).map(|x| lattice.coords(x)).collect();
        let mut perm: Vec<usize> = (0..v).filter(|&x| parity[x] == 0).collect();
        perm.extend((0..v).filter(|&x| parity[x] == 1));
        let mut pos = vec![0; v];
        for (i, &x) in perm.iter().enumerate() {
            pos[x] = i;
        }
        let offsets = periodic::kernel_offsets(d, kernel);
        Self { lattice: lattice.clone(), volume: v, half: v / 2, perm, pos, offsets, parity, coords }
    }

    /// Number of kernel offsets K.
    pub fn kvol(&self) -> usize {
        self.offsets.len()
    }

    /// The site x + o (periodic).
    pub fn shift(&self, x: usize, o: &[i64]) -> usize {
        let shape = self.lattice.shape();
        let c: Vec<usize> = self.coords[x]
            .iter()
            .zip(o)
            .zip(shape)
            .map(|((&c, &o), &l)| (c as i64 + o).rem_euclid(l as i64) as usize)
            .collect();
        self.lattice.index(&c)
    }

    /// Parity (0 even, 1 odd) of site x.
    pub fn parity(&self, x: usize) -> usize {
        self.parity[x]
    }

    /// The gather table of a convolution of a layer of parity `p` (see the module docs).
    pub fn table(&self, source: Source, outputs: Outputs, p: usize) -> Vec<u32> {
        let h = self.half;
        let out_positions: Vec<usize> = match outputs {
            Outputs::All => (0..self.volume).collect(),
            Outputs::Active => (p * h..p * h + h).collect(),
        };
        let mut t = Vec::with_capacity(out_positions.len() * self.kvol());
        for &i in &out_positions {
            let x = self.perm[i];
            for o in &self.offsets {
                let y = self.shift(x, o);
                let idx = match source {
                    Source::Full => self.pos[y],
                    Source::FrozenPadded => {
                        if self.parity[y] == 1 - p {
                            self.pos[y] - (1 - p) * h
                        } else {
                            h
                        }
                    }
                };
                t.push(idx as u32);
            }
        }
        t
    }

    /// Forward neighbours in checkerboard positions: `[pos(x_i + μ̂) for i, μ]`, d per position.
    pub fn fwd_positions(&self) -> Vec<u32> {
        let d = self.lattice.dim();
        let mut t = Vec::with_capacity(self.volume * d);
        for i in 0..self.volume {
            let x = self.perm[i];
            for mu in 0..d {
                t.push(self.pos[self.lattice.fwd(x, mu)] as u32);
            }
        }
        t
    }

    /// Site order → checkerboard order, for `n` configurations back to back.
    pub fn to_checkerboard(&self, site_ordered: &[f64]) -> Vec<f64> {
        let v = self.volume;
        let mut out = Vec::with_capacity(site_ordered.len());
        for cfg in site_ordered.chunks(v) {
            out.extend(self.perm.iter().map(|&x| cfg[x]));
        }
        out
    }

    /// Checkerboard order → site order, for `n` configurations back to back.
    pub fn to_sites(&self, cb_ordered: &[f64]) -> Vec<f64> {
        let v = self.volume;
        let mut out = vec![0.0; cb_ordered.len()];
        for (dst, src) in out.chunks_mut(v).zip(cb_ordered.chunks(v)) {
            for (i, &x) in self.perm.iter().enumerate() {
                dst[x] = src[i];
            }
        }
        out
    }
}
