//! Batched products of small complex matrices as one candle op with a hand-written backward
//! pass (candle's own batched matmul costs about a microsecond per 3×3 product; this op costs
//! a few nanoseconds).
//!
//! Operands are `[.., N, N, 2]` tensors (row-major entries, (re, im) last) with equal shapes;
//! the op computes C = op_a(A) · op_b(B) per matrix, where op is the identity or the conjugate
//! transpose (†). **Backward**, with the gradient of a real loss written as the complex matrix
//! G = ∂L/∂Re C + i ∂L/∂Im C: for C = X Y, ∂L/∂X = G Y† and ∂L/∂Y = X† G; when X = A† the
//! gradient of A is (G Y†)† = Y G†, and likewise for Y = B†. Each of these is the same op with
//! other flags, so the backward pass is itself differentiable only to first order (the flow
//! needs first derivatives).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use latflow_flow_common::kernels::cpu_slice;
use rayon::prelude::*;

/// C = op_a(A) · op_b(B) for N×N complex matrices.
#[derive(Debug, Clone, Copy)]
pub struct CMatMul {
    pub n: usize,
    pub adj_a: bool,
    pub adj_b: bool,
}

/// Matrices per parallel task (fixed, so results do not depend on the thread count; each
/// product is computed by one task anyway).
const CHUNK: usize = 256;

trait Real:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
}

/// Entry (i, j) of op(M) for an N×N matrix stored as 2N² reals.
#[inline(always)]
fn at<T: Real, const N: usize>(m: &[T], adj: bool, i: usize, j: usize) -> (T, T) {
    if adj {
        let k = 2 * (j * N + i);
        (m[k], -m[k + 1])
    } else {
        let k = 2 * (i * N + j);
        (m[k], m[k + 1])
    }
}

/// The largest N the op supports.
pub const MAX_N: usize = 3;

/// op(M) as (re, im) arrays of N×N row-major entries.
#[inline(always)]
fn load<T: Real, const N: usize>(m: &[T], adj: bool) -> ([[T; N]; N], [[T; N]; N]) {
    let (mut re, mut im) = ([[T::ZERO; N]; N], [[T::ZERO; N]; N]);
    for i in 0..N {
        for j in 0..N {
            let (r, c) = at::<T, N>(m, adj, i, j);
            re[i][j] = r;
            im[i][j] = c;
        }
    }
    (re, im)
}

impl CMatMul {
    /// The products for one matrix size N (a compile-time constant, so the loops unroll and
    /// the operands stay in registers; the arithmetic and its order are those of the textbook
    /// loop).
    fn product_n<T: Real, const N: usize>(&self, a: &[T], b: &[T]) -> Vec<T> {
        let per = 2 * N * N;
        let mut out = vec![T::ZERO; a.len()];
        let (adj_a, adj_b) = (self.adj_a, self.adj_b);
        out.par_chunks_mut(per * CHUNK).enumerate().for_each(|(c, block)| {
            for (m, o) in block.chunks_exact_mut(per).enumerate() {
                let off = (c * CHUNK + m) * per;
                let (xr, xi) = load::<T, N>(&a[off..off + per], adj_a);
                let (yr, yi) = load::<T, N>(&b[off..off + per], adj_b);
                for i in 0..N {
                    for j in 0..N {
                        let (mut re, mut im) = (T::ZERO, T::ZERO);
                        for k in 0..N {
                            re = re + (xr[i][k] * yr[k][j] - xi[i][k] * yi[k][j]);
                            im = im + (xr[i][k] * yi[k][j] + xi[i][k] * yr[k][j]);
                        }
                        o[2 * (i * N + j)] = re;
                        o[2 * (i * N + j) + 1] = im;
                    }
                }
            }
        });
        out
    }

    fn product<T: Real>(&self, a: &[T], b: &[T]) -> Vec<T> {
        match self.n {
            1 => self.product_n::<T, 1>(a, b),
            2 => self.product_n::<T, 2>(a, b),
            _ => self.product_n::<T, 3>(a, b),
        }
    }
}

impl CustomOp2 for CMatMul {
    fn name(&self) -> &'static str {
        "complex_matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = self.n;
        let dims = l1.dims();
        if n == 0 || n > MAX_N || dims != l2.dims() || dims.len() < 3 || dims[dims.len() - 3..] != [n, n, 2] {
            candle_core::bail!(
                "complex matmul: operands [.., {n}, {n}, 2] of equal shape expected, got {dims:?} and {:?}",
                l2.dims()
            );
        }
        let storage = match (s1.dtype(), s2.dtype()) {
            (DType::F64, DType::F64) => {
                CpuStorage::F64(self.product(cpu_slice::<f64>(s1, l1)?, cpu_slice::<f64>(s2, l2)?))
            }
            (DType::F32, DType::F32) => {
                CpuStorage::F32(self.product(cpu_slice::<f32>(s1, l1)?, cpu_slice::<f32>(s2, l2)?))
            }
            (a, b) => {
                candle_core::bail!("complex matmul: f32 or f64 operands of one dtype expected, got {a:?} and {b:?}")
            }
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let n = self.n;
        let op = |x: &Tensor, y: &Tensor, adj_a: bool, adj_b: bool| x.apply_op2_no_bwd(y, &CMatMul { n, adj_a, adj_b });
        // C = X Y with X = op_a(A), Y = op_b(B)
        let ga = if a.track_op() {
            Some(if self.adj_a {
                op(b, &g, self.adj_b, true)? // Y G†
            } else {
                op(&g, b, false, !self.adj_b)? // G Y†
            })
        } else {
            None
        };
        let gb = if b.track_op() {
            Some(if self.adj_b {
                op(&g, a, true, self.adj_a)? // G† X
            } else {
                op(a, &g, !self.adj_a, false)? // X† G
            })
        } else {
            None
        };
        Ok((ga, gb))
    }
}

/// op_a(A) · op_b(B) for contiguous-able `[.., N, N, 2]` operands.
pub fn cmatmul(a: &Tensor, b: &Tensor, n: usize, adj_a: bool, adj_b: bool) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, CMatMul { n, adj_a, adj_b })
}
