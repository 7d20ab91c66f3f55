//! The affine coupling's fused CPU ops (candle custom ops with hand-written backward passes).
//!
//! The generic formulation of the flow (periodic convolution as a column gather + matmul,
//! activations and the affine update as candle element-wise ops) runs on every device and is
//! kept as the reference (see `Flow::set_fused`). On the CPU it is dominated by per-op overhead
//! and by the K-fold im2col copies, so the CPU path uses fused ops instead: the conditioners'
//! periodic convolutions are latflow-flow-common's ([`latflow_flow_common::kernels::conv`],
//! re-exported here with its [`Act`] and [`Table`]), and the affine update is
//!
//! * [`couple`], [`uncouple`]: `x e^s + t` and `(y − t) e^{−s}` from `st = [B, H, 2]`;
//! * [`sum_s`]: `±Σ_h s[b, h]`, the log-determinant.
//!
//! Gradients are checked against the generic formulation in the tests.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Error, Layout, Result, Shape, Tensor};
use latflow_flow_common::dispatch_float;
use latflow_flow_common::kernels::{cpu_slice, to_storage};

pub use latflow_flow_common::kernels::{conv, Act, Table, LEAKY_SLOPE};

/// Which affine update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// y = x e^s + t.
    Forward,
    /// x = (y − t) e^{−s}.
    Inverse,
}

struct CoupleOp {
    dir: Dir,
}

impl CustomOp2 for CoupleOp {
    fn name(&self) -> &'static str {
        "flow-scalar-couple"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l1.shape().elem_count();
        if l2.shape().elem_count() != 2 * n {
            return Err(Error::Msg("flow-scalar couple: st must be [B, H, 2]".into()));
        }
        dispatch_float!(s1, "couple", T => {
            let x: &[T] = cpu_slice(s1, l1)?;
            let st: &[T] = cpu_slice(s2, l2)?;
            let out: Vec<T> = match self.dir {
                Dir::Forward => x.iter().zip(st.chunks_exact(2)).map(|(&x, st)| x * st[0].exp() + st[1]).collect(),
                Dir::Inverse => x.iter().zip(st.chunks_exact(2)).map(|(&y, st)| (y - st[1]) * (-st[0]).exp()).collect(),
            };
            Ok((to_storage(out), l1.shape().clone()))
        })
    }
    fn bwd(&self, x: &Tensor, st: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let st = st.contiguous()?;
        let gx = if x.track_op() { Some(grad.apply_op2_no_bwd(&st, &CoupleBackX { dir: self.dir })?) } else { None };
        let gst = if st.track_op() {
            // forward: ∂y/∂s = x e^s, ∂y/∂t = 1; inverse: ∂x/∂s = −x (x = res), ∂x/∂t = −e^{−s}
            let src = match self.dir {
                Dir::Forward => x.contiguous()?,
                Dir::Inverse => res.contiguous()?,
            };
            Some(grad.apply_op3_no_bwd(&src, &st, &CoupleBackSt { dir: self.dir })?)
        } else {
            None
        };
        Ok((gx, gst))
    }
}

/// g ⊙ e^{±s}.
struct CoupleBackX {
    dir: Dir,
}

impl CustomOp2 for CoupleBackX {
    fn name(&self) -> &'static str {
        "flow-scalar-couple-back-x"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s1, "couple-back-x", T => {
            let g: &[T] = cpu_slice(s1, l1)?;
            let st: &[T] = cpu_slice(s2, l2)?;
            let out: Vec<T> = match self.dir {
                Dir::Forward => g.iter().zip(st.chunks_exact(2)).map(|(&g, st)| g * st[0].exp()).collect(),
                Dir::Inverse => g.iter().zip(st.chunks_exact(2)).map(|(&g, st)| g * (-st[0]).exp()).collect(),
            };
            Ok((to_storage(out), l1.shape().clone()))
        })
    }
}

/// (g, x or res, st) → ∂L/∂st `[B, H, 2]`.
struct CoupleBackSt {
    dir: Dir,
}

impl CustomOp3 for CoupleBackSt {
    fn name(&self) -> &'static str {
        "flow-scalar-couple-back-st"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s1, "couple-back-st", T => {
            let g: &[T] = cpu_slice(s1, l1)?;
            let src: &[T] = cpu_slice(s2, l2)?;
            let st: &[T] = cpu_slice(s3, l3)?;
            let mut out = vec![T::default(); 2 * g.len()];
            for (i, o) in out.chunks_exact_mut(2).enumerate() {
                match self.dir {
                    Dir::Forward => {
                        o[0] = g[i] * src[i] * st[2 * i].exp();
                        o[1] = g[i];
                    }
                    Dir::Inverse => {
                        o[0] = -(g[i] * src[i]);
                        o[1] = -(g[i] * (-st[2 * i]).exp());
                    }
                }
            }
            Ok((to_storage(out), l3.shape().clone()))
        })
    }
}

/// ±Σ_h s[b, h] from `st = [B, H, 2]` → `[B]`.
struct SumSOp {
    negate: bool,
}

impl CustomOp1 for SumSOp {
    fn name(&self) -> &'static str {
        "flow-scalar-sum-s"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, two) = l.shape().dims3()?;
        if two != 2 {
            return Err(Error::Msg("flow-scalar sum_s: st must be [B, H, 2]".into()));
        }
        dispatch_float!(s, "sum-s", T => {
            let st: &[T] = cpu_slice(s, l)?;
            let out: Vec<T> = (0..b)
                .map(|bi| {
                    let mut acc = T::default();
                    for hi in 0..h {
                        acc += st[(bi * h + hi) * 2];
                    }
                    if self.negate {
                        -acc
                    } else {
                        acc
                    }
                })
                .collect();
            Ok((to_storage(out), Shape::from(b)))
        })
    }
    fn bwd(&self, st: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, _) = st.dims3()?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&SumSBack { h, negate: self.negate })?))
    }
}

struct SumSBack {
    h: usize,
    negate: bool,
}

impl CustomOp1 for SumSBack {
    fn name(&self) -> &'static str {
        "flow-scalar-sum-s-back"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = l.shape().elem_count();
        dispatch_float!(s, "sum-s-back", T => {
            let g: &[T] = cpu_slice(s, l)?;
            let mut out = vec![T::default(); b * self.h * 2];
            for bi in 0..b {
                let v = if self.negate { -g[bi] } else { g[bi] };
                for hi in 0..self.h {
                    out[(bi * self.h + hi) * 2] = v;
                }
            }
            Ok((to_storage(out), Shape::from((b, self.h, 2))))
        })
    }
}

/// y = x e^s + t (CPU), with `st = [B, H, 2]`.
pub fn couple(x: &Tensor, st: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&st.contiguous()?, CoupleOp { dir: Dir::Forward })
}

/// x = (y − t) e^{−s} (CPU).
pub fn uncouple(y: &Tensor, st: &Tensor) -> Result<Tensor> {
    y.contiguous()?.apply_op2(&st.contiguous()?, CoupleOp { dir: Dir::Inverse })
}

/// Σ_h s (or −Σ_h s) per configuration (CPU).
pub fn sum_s(st: &Tensor, negate: bool) -> Result<Tensor> {
    st.contiguous()?.apply_op1(SumSOp { negate })
}
