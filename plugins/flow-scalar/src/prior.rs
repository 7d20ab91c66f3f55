//! Base distributions. Everything here works in checkerboard order (see [`crate::geometry`]).
//!
//! * `normal`: N(0, 1) per site, log q₀(z) = Σ_x (−½ z² − ½ ln 2π).
//! * `free`: the free field q₀ ∝ e^{−S₀}, S₀ = Σ_x [Σ_μ (z(x+μ̂) − z(x))² + m² z²] = zᵀ K z
//!   (convention B), i.e. a Gaussian with precision P = 2K, whose eigenvalues are
//!   λ_p = 2(p̂² + m²), p̂² = Σ_μ 4 sin²(p_μ/2). Draws are z = P^{−1/2} ε with the symmetric
//!   square root P^{−1/2}(x, y) = V⁻¹ Σ_p cos(p·(x − y)) λ_p^{−1/2}, built once in f64 from
//!   its V distinct values (O(V²) work, no Cholesky and no FFT) and stored densely:
//!   8·V² bytes, and V² multiply-adds per draw, hence the volume cap
//!   [`crate::config::MAX_FREE_PRIOR_VOLUME`]. log q₀(z) = −S₀(z) + ½ Σ_p ln λ_p − (V/2) ln 2π;
//!   for a draw zᵀPz = εᵀε, so the sampler's log q₀ comes from ε exactly.

use candle_core::{DType, Device, Tensor};

use crate::geometry::Geometry;

/// ½ ln 2π.
pub const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

#[derive(Debug)]
pub enum Prior {
    Normal { volume: usize },
    Free(FreePrior),
}

#[derive(Debug)]
pub struct FreePrior {
    pub m2: f64,
    volume: usize,
    dim: usize,
    /// P^{−1/2} in checkerboard order, f64, [V, V].
    sqrt_cov: Tensor,
    /// ½ Σ_p ln λ_p − (V/2) ln 2π.
    log_norm: f64,
    /// Forward neighbours in checkerboard positions (host copy), d per position.
    fwd: Vec<u32>,
    /// The same on the device, as a flat U32 index.
    fwd_t: Tensor,
}

impl Prior {
    pub fn normal(geom: &Geometry) -> Self {
        Prior::Normal { volume: geom.volume }
    }

    /// The free-field prior with mass² `m2` > 0.
    pub fn free(geom: &Geometry, m2: f64, device: &Device) -> candle_core::Result<Self> {
        let lat = &geom.lattice;
        let v = geom.volume;
        let d = lat.dim();
        let shape = lat.shape();
        // eigenvalues λ_p over all momenta p (indexed like sites)
        let lambdas: Vec<f64> = (0..v)
            .map(|n| {
                let c = lat.coords(n);
                let phat2: f64 = c
                    .iter()
                    .zip(shape)
                    .map(|(&k, &l)| {
                        let s = (std::f64::consts::PI * k as f64 / l as f64).sin();
                        4.0 * s * s
                    })
                    .sum();
                2.0 * (phat2 + m2)
            })
            .collect();
        let momenta: Vec<Vec<f64>> = (0..v)
            .map(|n| {
                lat.coords(n)
                    .iter()
                    .zip(shape)
                    .map(|(&k, &l)| 2.0 * std::f64::consts::PI * k as f64 / l as f64)
                    .collect()
            })
            .collect();
        let inv_sqrt: Vec<f64> = lambdas.iter().map(|l| 1.0 / l.sqrt()).collect();
        // g(r) = V⁻¹ Σ_p cos(p·r) λ_p^{−1/2} for every displacement r (indexed like sites)
        let g: Vec<f64> = (0..v)
            .map(|r| {
                let rc = lat.coords(r);
                let mut acc = 0.0;
                for (p, w) in momenta.iter().zip(&inv_sqrt) {
                    let phase: f64 = p.iter().zip(&rc).map(|(&pm, &rm)| pm * rm as f64).sum();
                    acc += phase.cos() * w;
                }
                acc / v as f64
            })
            .collect();
        let coords: Vec<Vec<usize>> = geom.perm.iter().map(|&x| lat.coords(x)).collect();
        let mut mat = vec![0.0f64; v * v];
        let mut disp = vec![0usize; d];
        for i in 0..v {
            for j in 0..v {
                for mu in 0..d {
                    disp[mu] = (coords[i][mu] + shape[mu] - coords[j][mu]) % shape[mu];
                }
                mat[i * v + j] = g[lat.index(&disp)];
            }
        }
        let sqrt_cov = Tensor::from_vec(mat, (v, v), device)?;
        let log_norm = 0.5 * lambdas.iter().map(|l| l.ln()).sum::<f64>() - v as f64 * HALF_LN_2PI;
        let fwd = geom.fwd_positions();
        let fwd_t = Tensor::from_vec(fwd.clone(), fwd.len(), device)?;
        Ok(Prior::Free(FreePrior { m2, volume: v, dim: d, sqrt_cov, log_norm, fwd, fwd_t }))
    }

    fn volume(&self) -> usize {
        match self {
            Prior::Normal { volume } => *volume,
            Prior::Free(f) => f.volume,
        }
    }

    /// Turns standard normal deviates `eps` (n × V, checkerboard order) into prior draws in
    /// `dtype`, with their log q₀ in f64.
    pub fn draw(&self, eps: &[f64], dtype: DType, device: &Device) -> candle_core::Result<(Tensor, Vec<f64>)> {
        let v = self.volume();
        let n = eps.len() / v;
        let half_sq: Vec<f64> = eps.chunks(v).map(|e| -0.5 * e.iter().map(|x| x * x).sum::<f64>()).collect();
        match self {
            Prior::Normal { .. } => {
                let z = crate::flow::tensor_from_f64(eps, (n, v), dtype, device)?;
                let lq = half_sq.iter().map(|h| h - v as f64 * HALF_LN_2PI).collect();
                Ok((z, lq))
            }
            Prior::Free(f) => {
                let e = Tensor::from_slice(eps, (n, v), device)?;
                // rows: z = P^{-1/2} ε, i.e. Z = E · P^{-1/2} (symmetric)
                let z = e.matmul(&f.sqrt_cov)?.to_dtype(dtype)?;
                let lq = half_sq.iter().map(|h| h + f.log_norm).collect();
                Ok((z, lq))
            }
        }
    }

    /// log q₀ of prior-space points given on the host (n × V, checkerboard order), in f64.
    pub fn log_prob_host(&self, z: &[f64]) -> Vec<f64> {
        let v = self.volume();
        match self {
            Prior::Normal { .. } => {
                z.chunks(v).map(|c| -0.5 * c.iter().map(|x| x * x).sum::<f64>() - v as f64 * HALF_LN_2PI).collect()
            }
            Prior::Free(f) => z.chunks(v).map(|c| -f.action_host(c) + f.log_norm).collect(),
        }
    }

    /// log q₀ as a tensor expression (differentiable), [B] in the dtype of `z`.
    pub fn log_prob_tensor(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let v = self.volume();
        match self {
            Prior::Normal { .. } => z.sqr()?.sum(1)?.affine(-0.5, -(v as f64) * HALF_LN_2PI),
            Prior::Free(f) => {
                let (b, _) = z.dims2()?;
                let nb = z.index_select(&f.fwd_t, 1)?.reshape((b, v, f.dim))?;
                let diff = nb.broadcast_sub(&z.unsqueeze(2)?)?;
                let s0 = (diff.sqr()?.sum((1, 2))? + (z.sqr()?.sum(1)? * f.m2)?)?;
                s0.affine(-1.0, f.log_norm)
            }
        }
    }
}

impl FreePrior {
    /// S₀ of one configuration in checkerboard order, f64.
    fn action_host(&self, c: &[f64]) -> f64 {
        let d = self.dim;
        let mut s = 0.0;
        for (i, &x) in c.iter().enumerate() {
            let mut t = self.m2 * x * x;
            for mu in 0..d {
                let y = c[self.fwd[i * d + mu] as usize];
                t += (y - x) * (y - x);
            }
            s += t;
        }
        s
    }
}
