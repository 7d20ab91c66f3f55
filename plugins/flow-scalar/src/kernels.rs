//! Fused CPU kernels (candle custom ops with hand-written backward passes).
//!
//! The generic formulation of the flow (periodic convolution as `index_select` + matmul,
//! activations and the affine update as candle element-wise ops) runs on every device and is
//! kept as the reference (see `Flow::set_fused`). On the CPU it is dominated by per-op overhead
//! and by the K-fold im2col copies, so the CPU path uses these ops instead:
//!
//! * [`conv`]: `act(bias + Σ_o in[b, table[m, o], :] · W[o])` evaluated directly from the
//!   gather table (no im2col buffer), with the activation fused (identity, leaky ReLU, ReLU or
//!   tanh, whose derivatives follow from the output). Table entries ≥ N_in read zeros (the
//!   masked sites of a coupling layer's input).
//! * [`couple`], [`uncouple`]: `x e^s + t` and `(y − t) e^{−s}` from `st = [B, H, 2]`.
//! * [`sum_s`]: `±Σ_h s[b, h]`, the log-determinant.
//!
//! The convolutions split the batch into fixed blocks of [`BLOCK`] configurations that run in
//! parallel on the current rayon pool (the model's own pool after `set_threads`); each block's
//! arithmetic and the order in which block sums are added are fixed, so results do not depend
//! on the thread count. Gradients are checked against the generic formulation in the tests.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Error, Layout, Result, Shape, Tensor};

/// The activation fused into a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity,
    /// max(x, 0.01 x).
    LeakyRelu,
    Relu,
    Tanh,
}

/// Negative slope of the leaky ReLU (torch's default).
pub const LEAKY_SLOPE: f64 = 0.01;

/// Floating-point element types of the kernels.
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + Send
    + Sync
    + 'static
{
    fn from_f64(x: f64) -> Self;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// `self + a·b`, fused when `FMA` (only instantiated where the CPU has FMA).
    #[inline(always)]
    fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self {
        if FMA {
            a.mul_add(b, self)
        } else {
            self + a * b
        }
    }
}

impl Real for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
}

/// Whether the convolution kernels use the AVX2 + FMA versions (x86-64 CPUs that have both,
/// checked once at run time; the portable versions otherwise). The two round differently
/// (fused multiply-adds), so results are reproducible bit for bit on one kind of CPU.
pub fn simd_kernels() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Configurations per parallel task of the kernels (fixed: results do not depend on the
/// thread count).
pub const BLOCK: usize = 16;

/// A gather table: output site m reads input rows `idx[m·k + o]`, o < k; rows ≥ `n_in` are zero.
#[derive(Debug)]
pub struct Table {
    pub idx: Vec<u32>,
    pub m: usize,
    pub k: usize,
    pub n_in: usize,
    pub has_pad: bool,
    /// The transposed table (input row y, offset o) → output site, for ∂L/∂in as a gather.
    pub inv: Option<Arc<Table>>,
}

impl Table {
    pub fn new(idx: Vec<u32>, m: usize, k: usize, n_in: usize) -> Self {
        let mut t = Self::plain(idx, m, k, n_in);
        // For each offset o the map m → idx[m, o] is injective (a lattice translation), so
        // (y, o) determines m; pairs that no output reads get the zero row.
        let mut inv = vec![m as u32; n_in * k];
        for mi in 0..m {
            for o in 0..k {
                let y = t.idx[mi * k + o] as usize;
                if y < n_in {
                    debug_assert_eq!(inv[y * k + o] as usize, m);
                    inv[y * k + o] = mi as u32;
                }
            }
        }
        t.inv = Some(Arc::new(Self::plain(inv, n_in, k, m)));
        t
    }

    fn plain(idx: Vec<u32>, m: usize, k: usize, n_in: usize) -> Self {
        assert_eq!(idx.len(), m * k);
        let has_pad = idx.iter().any(|&i| i as usize >= n_in);
        Self { idx, m, k, n_in, has_pad, inv: None }
    }
}

fn slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(Error::Msg("flow-scalar kernel: non-contiguous input".into())),
    }
}

#[inline(always)]
fn act_apply<T: Real>(act: Act, x: T) -> T {
    match act {
        Act::Identity => x,
        Act::LeakyRelu => {
            if x > T::default() {
                x
            } else {
                x * T::from_f64(LEAKY_SLOPE)
            }
        }
        Act::Relu => {
            if x > T::default() {
                x
            } else {
                T::default()
            }
        }
        Act::Tanh => x.tanh(),
    }
}

/// Rows of the input with a zero row appended when the table refers to padding.
fn padded<'a, T: Real>(inp: &'a [T], tab: &Table, b: usize, ci: usize) -> (std::borrow::Cow<'a, [T]>, usize) {
    if !tab.has_pad {
        return (std::borrow::Cow::Borrowed(inp), tab.n_in);
    }
    let rows = tab.n_in + 1;
    let mut v = vec![T::default(); b * rows * ci];
    for bi in 0..b {
        v[bi * rows * ci..bi * rows * ci + tab.n_in * ci]
            .copy_from_slice(&inp[bi * tab.n_in * ci..(bi + 1) * tab.n_in * ci]);
    }
    (std::borrow::Cow::Owned(v), rows)
}

#[inline(always)]
fn row_index(tab: &Table, m: usize, o: usize, rows: usize) -> usize {
    let i = tab.idx[m * tab.k + o] as usize;
    if i >= tab.n_in {
        rows - 1
    } else {
        i
    }
}

/// Gather convolution for a fixed output width CO, NB output sites at a time (NB independent
/// accumulator chains hide the FMA latency).
#[inline(always)]
fn gather_conv_co<T: Real, const CO: usize, const NB: usize, const FMA: bool>(
    x: &[T],
    rows: usize,
    w: &[T],
    bias: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    act: Act,
    out: &mut [T],
) {
    let (m, k) = (tab.m, tab.k);
    let bias: [T; CO] = bias.try_into().expect("bias width");
    assert!(x.len() >= b * rows * ci && w.len() >= k * ci * CO && out.len() >= b * m * CO);
    for bi in 0..b {
        let xb = &x[bi * rows * ci..(bi + 1) * rows * ci];
        let ob = &mut out[bi * m * CO..(bi + 1) * m * CO];
        let mut site = 0;
        while site < m {
            let nb = (m - site).min(NB);
            let mut acc = [bias; NB];
            for o in 0..k {
                let wo = &w[o * ci * CO..(o + 1) * ci * CO];
                // row offsets of the nb sites (the others repeat the first and are discarded)
                let mut r = [0usize; NB];
                for i in 0..NB {
                    r[i] = row_index(tab, site + i.min(nb - 1), o, rows) * ci;
                }
                for c in 0..ci {
                    let wr: &[T; CO] = wo[c * CO..(c + 1) * CO].try_into().expect("weight row");
                    for i in 0..NB {
                        // SAFETY: r[i] + c < rows·ci = xb.len() (row_index < rows, c < ci).
                        let a = unsafe { *xb.get_unchecked(r[i] + c) };
                        for q in 0..CO {
                            acc[i][q] = acc[i][q].madd::<FMA>(a, wr[q]);
                        }
                    }
                }
            }
            for i in 0..nb {
                let dst = &mut ob[(site + i) * CO..(site + i + 1) * CO];
                for q in 0..CO {
                    dst[q] = act_apply(act, acc[i][q]);
                }
            }
            site += nb;
        }
    }
}

#[inline(always)]
fn gather_conv_dyn<T: Real, const FMA: bool>(
    x: &[T],
    rows: usize,
    w: &[T],
    bias: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    act: Act,
    out: &mut [T],
) {
    let (m, k) = (tab.m, tab.k);
    let mut acc = vec![T::default(); co];
    for bi in 0..b {
        let xb = &x[bi * rows * ci..(bi + 1) * rows * ci];
        for s in 0..m {
            acc.copy_from_slice(bias);
            for o in 0..k {
                let ri = row_index(tab, s, o, rows);
                let r = &xb[ri * ci..(ri + 1) * ci];
                for c in 0..ci {
                    let a = r[c];
                    let wr = &w[(o * ci + c) * co..(o * ci + c + 1) * co];
                    for q in 0..co {
                        acc[q] = acc[q].madd::<FMA>(a, wr[q]);
                    }
                }
            }
            let dst = &mut out[(bi * m + s) * co..(bi * m + s + 1) * co];
            for q in 0..co {
                dst[q] = act_apply(act, acc[q]);
            }
        }
    }
}

#[inline(always)]
fn gather_conv_impl<T: Real, const FMA: bool>(
    x: &[T],
    rows: usize,
    w: &[T],
    bias: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    act: Act,
    out: &mut [T],
) {
    // 8 chains while 8 accumulators of CO values fit in 8 AVX registers, else 4
    let wide = std::mem::size_of::<T>() * co <= 32;
    match (co, wide) {
        (1, _) => gather_conv_co::<T, 1, 8, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (2, _) => gather_conv_co::<T, 2, 8, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (4, _) => gather_conv_co::<T, 4, 8, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (8, true) => gather_conv_co::<T, 8, 8, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (8, false) => gather_conv_co::<T, 8, 4, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (16, _) => gather_conv_co::<T, 16, 4, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        // the spline conditioners' 3K − 1 outputs for K = 4 and 8
        (11, _) => gather_conv_co::<T, 11, 8, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (23, _) => gather_conv_co::<T, 23, 2, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        _ => gather_conv_dyn::<T, FMA>(x, rows, w, bias, tab, b, ci, co, act, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gather_conv_avx2<T: Real>(
    x: &[T],
    rows: usize,
    w: &[T],
    bias: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    act: Act,
    out: &mut [T],
) {
    gather_conv_impl::<T, true>(x, rows, w, bias, tab, b, ci, co, act, out)
}

/// `out[b, m, :] = act(bias + Σ_{o, c} in[b, table[m, o], c] · w[o·ci + c, :])`.
fn gather_conv<T: Real>(
    inp: &[T],
    w: &[T],
    bias: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    act: Act,
) -> Vec<T> {
    use rayon::prelude::*;
    let (x, rows) = padded(inp, tab, b, ci);
    let mut out = vec![T::default(); b * tab.m * co];
    let (per_in, per_out) = (rows * ci, tab.m * co);
    let run = |xs: &[T], os: &mut [T]| {
        let nb = os.len() / per_out;
        #[cfg(target_arch = "x86_64")]
        if simd_kernels() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            unsafe { gather_conv_avx2(xs, rows, w, bias, tab, nb, ci, co, act, os) };
            return;
        }
        gather_conv_impl::<T, false>(xs, rows, w, bias, tab, nb, ci, co, act, os);
    };
    // configurations are independent: any split gives the same bits
    if b > BLOCK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(BLOCK * per_out).zip(x.par_chunks(BLOCK * per_in)).for_each(|(os, xs)| run(xs, os));
    } else {
        run(&x, &mut out);
    }
    out
}

fn conv_fwd<T: Real>(inp: &[T], w: &[T], bias: &[T], tab: &Table, b: usize, ci: usize, co: usize, act: Act) -> Vec<T> {
    gather_conv(inp, w, bias, tab, b, ci, co, act)
}

/// ∂L/∂in as a gather over the transposed table: `Σ_o Wᵀ[o] · g[b, inv[y, o], :]`.
fn conv_back_input<T: Real>(g: &[T], w: &[T], tab: &Table, b: usize, ci: usize, co: usize) -> Vec<T> {
    let k = tab.k;
    let inv = tab.inv.as_ref().expect("table has its transpose");
    // Wt[o·co + q][c] = W[o·ci + c][q]
    let mut wt = vec![T::default(); k * co * ci];
    for o in 0..k {
        for c in 0..ci {
            for q in 0..co {
                wt[(o * co + q) * ci + c] = w[(o * ci + c) * co + q];
            }
        }
    }
    let zero = vec![T::default(); ci];
    gather_conv(g, &wt, &zero, inv, b, co, ci, Act::Identity)
}

#[inline(always)]
fn back_weight_blk<T: Real, const CI: usize, const CO: usize, const FMA: bool>(
    x: &[T],
    rows: usize,
    g: &[T],
    tab: &Table,
    b: usize,
    gw: &mut [T],
) {
    let (m, k) = (tab.m, tab.k);
    for o in 0..k {
        let mut acc = [[T::default(); CO]; CI];
        for bi in 0..b {
            let xb = &x[bi * rows * CI..(bi + 1) * rows * CI];
            let gb = &g[bi * m * CO..(bi + 1) * m * CO];
            for s in 0..m {
                let ri = row_index(tab, s, o, rows);
                let r: &[T; CI] = xb[ri * CI..(ri + 1) * CI].try_into().expect("input row");
                let gs: &[T; CO] = gb[s * CO..(s + 1) * CO].try_into().expect("grad row");
                for c in 0..CI {
                    for q in 0..CO {
                        acc[c][q] = acc[c][q].madd::<FMA>(r[c], gs[q]);
                    }
                }
            }
        }
        for c in 0..CI {
            gw[(o * CI + c) * CO..(o * CI + c + 1) * CO].copy_from_slice(&acc[c]);
        }
    }
}

#[inline(always)]
fn back_weight_dyn<T: Real, const FMA: bool>(
    x: &[T],
    rows: usize,
    g: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    gw: &mut [T],
) {
    let (m, k) = (tab.m, tab.k);
    for o in 0..k {
        for bi in 0..b {
            let xb = &x[bi * rows * ci..(bi + 1) * rows * ci];
            for s in 0..m {
                let gs = &g[(bi * m + s) * co..(bi * m + s + 1) * co];
                let ri = row_index(tab, s, o, rows);
                for c in 0..ci {
                    let a = xb[ri * ci + c];
                    let dst = &mut gw[(o * ci + c) * co..(o * ci + c + 1) * co];
                    for q in 0..co {
                        dst[q] = dst[q].madd::<FMA>(a, gs[q]);
                    }
                }
            }
        }
    }
}

macro_rules! back_weight_match {
    ($fma:literal, $x:expr, $rows:expr, $g:expr, $tab:expr, $b:expr, $ci:expr, $co:expr, $gw:expr; $(($i:literal, $o:literal)),*) => {
        match ($ci, $co) {
            $(($i, $o) => back_weight_blk::<T, $i, $o, $fma>($x, $rows, $g, $tab, $b, $gw),)*
            _ => back_weight_dyn::<T, $fma>($x, $rows, $g, $tab, $b, $ci, $co, $gw),
        }
    };
}

macro_rules! back_weight_impl {
    ($name:ident, $fma:literal) => {
        #[inline(always)]
        fn $name<T: Real>(x: &[T], rows: usize, g: &[T], tab: &Table, b: usize, ci: usize, co: usize, gw: &mut [T]) {
            back_weight_match!($fma, x, rows, g, tab, b, ci, co, gw;
                (1, 1), (1, 2), (1, 4), (1, 8), (1, 16),
                (2, 1), (2, 2), (2, 4), (2, 8), (2, 16),
                (4, 1), (4, 2), (4, 4), (4, 8), (4, 16),
                (8, 1), (8, 2), (8, 4), (8, 8), (8, 16),
                (16, 1), (16, 2), (16, 4), (16, 8), (16, 16),
                (4, 11), (8, 11), (16, 11), (4, 23), (8, 23), (16, 23))
        }
    };
}

back_weight_impl!(back_weight_portable, false);
back_weight_impl!(back_weight_fma, true);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn back_weight_avx2<T: Real>(
    x: &[T],
    rows: usize,
    g: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    gw: &mut [T],
) {
    back_weight_fma::<T>(x, rows, g, tab, b, ci, co, gw)
}

/// ∂L/∂W[o, c, q] = Σ_{b, m} in[b, table[m, o], c] · g[b, m, q], and ∂L/∂bias appended as a last
/// row. Partial sums over fixed blocks of [`BLOCK`] configurations are added in block order, so
/// the result does not depend on the thread count.
fn conv_back_weight<T: Real>(inp: &[T], g: &[T], tab: &Table, b: usize, ci: usize, co: usize) -> Vec<T> {
    use rayon::prelude::*;
    let (x, rows) = padded(inp, tab, b, ci);
    let nw = tab.k * ci * co;
    let (per_in, per_g) = (rows * ci, tab.m * co);
    let partial = |blk: usize| -> Vec<T> {
        let b0 = blk * BLOCK;
        let nb = BLOCK.min(b - b0);
        let xs = &x[b0 * per_in..(b0 + nb) * per_in];
        let gs = &g[b0 * per_g..(b0 + nb) * per_g];
        let mut gw = vec![T::default(); nw + co];
        let (w_part, b_part) = gw.split_at_mut(nw);
        #[cfg(target_arch = "x86_64")]
        let done = if simd_kernels() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            unsafe { back_weight_avx2(xs, rows, gs, tab, nb, ci, co, w_part) };
            true
        } else {
            false
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            back_weight_portable(xs, rows, gs, tab, nb, ci, co, w_part);
        }
        for row in gs.chunks_exact(co) {
            for q in 0..co {
                b_part[q] += row[q];
            }
        }
        gw
    };
    let nblk = b.div_ceil(BLOCK).max(1);
    let parts: Vec<Vec<T>> = if nblk > 1 && rayon::current_num_threads() > 1 {
        (0..nblk).into_par_iter().map(partial).collect()
    } else {
        (0..nblk).map(partial).collect()
    };
    let mut it = parts.into_iter();
    let mut total = it.next().expect("at least one block");
    for p in it {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

macro_rules! dispatch_float {
    ($s:expr, $name:literal, $t:ident => $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => Err(Error::Msg(format!("{}: unsupported dtype {:?}", $name, other.dtype()))),
        }
    };
}

fn storage<T: Real>(v: Vec<T>) -> CpuStorage
where
    Vec<T>: IntoStorage,
{
    v.into_storage()
}

pub trait IntoStorage {
    fn into_storage(self) -> CpuStorage;
}
impl IntoStorage for Vec<f32> {
    fn into_storage(self) -> CpuStorage {
        CpuStorage::F32(self)
    }
}
impl IntoStorage for Vec<f64> {
    fn into_storage(self) -> CpuStorage {
        CpuStorage::F64(self)
    }
}

/// The fused convolution: `[B, N_in, C_in]`, `[K·C_in, C_out]`, `[C_out]` → `[B, M, C_out]`.
struct ConvOp {
    tab: Arc<Table>,
    act: Act,
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "flow-scalar-conv"
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
        let (b, n_in, ci) = l1.shape().dims3()?;
        let (kci, co) = l2.shape().dims2()?;
        if n_in != self.tab.n_in || kci != self.tab.k * ci || l3.shape().elem_count() != co {
            return Err(Error::Msg(format!(
                "flow-scalar conv: shapes {:?} {:?} {:?} do not fit the table (n_in {}, k {})",
                l1.shape(),
                l2.shape(),
                l3.shape(),
                self.tab.n_in,
                self.tab.k
            )));
        }
        let shape = Shape::from((b, self.tab.m, co));
        dispatch_float!(s1, "conv", T => {
            let out = conv_fwd::<T>(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, &self.tab, b, ci, co, self.act);
            Ok((storage(out), shape))
        })
    }

    fn bwd(
        &self,
        inp: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gpre = if self.act == Act::Identity {
            grad
        } else {
            grad.apply_op2_no_bwd(&res.contiguous()?, &ActBack { act: self.act })?
        };
        let gin = if inp.track_op() {
            Some(gpre.apply_op2_no_bwd(&w.contiguous()?, &ConvBackInput { tab: self.tab.clone() })?)
        } else {
            None
        };
        let (gw, gb) = if w.track_op() || bias.track_op() {
            let (kci, co) = w.dims2()?;
            let both = inp.contiguous()?.apply_op2_no_bwd(&gpre, &ConvBackWeight { tab: self.tab.clone() })?;
            let gw = both.narrow(0, 0, kci)?;
            let gb = both.narrow(0, kci, 1)?.reshape(co)?;
            (Some(gw), Some(gb))
        } else {
            (None, None)
        };
        Ok((gin, gw, gb))
    }
}

/// g ⊙ act'(y).
struct ActBack {
    act: Act,
}

impl CustomOp2 for ActBack {
    fn name(&self) -> &'static str {
        "flow-scalar-act-back"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s1, "act-back", T => {
            let g: &[T] = slice(s1, l1)?;
            let y: &[T] = slice(s2, l2)?;
            let zero = T::default();
            let slope = T::from_f64(LEAKY_SLOPE);
            let one = T::from_f64(1.0);
            let out: Vec<T> = match self.act {
                Act::Identity => g.to_vec(),
                Act::LeakyRelu => g.iter().zip(y).map(|(&g, &y)| if y > zero { g } else { g * slope }).collect(),
                Act::Relu => g.iter().zip(y).map(|(&g, &y)| if y > zero { g } else { zero }).collect(),
                Act::Tanh => g.iter().zip(y).map(|(&g, &y)| g * (one - y * y)).collect(),
            };
            Ok((storage(out), l1.shape().clone()))
        })
    }
}

/// (g [B, M, C_out], W) → ∂L/∂in [B, N_in, C_in].
struct ConvBackInput {
    tab: Arc<Table>,
}

impl CustomOp2 for ConvBackInput {
    fn name(&self) -> &'static str {
        "flow-scalar-conv-back-input"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, _m, co) = l1.shape().dims3()?;
        let (kci, _) = l2.shape().dims2()?;
        let ci = kci / self.tab.k;
        let shape = Shape::from((b, self.tab.n_in, ci));
        dispatch_float!(s1, "conv-back-input", T => {
            let out = conv_back_input::<T>(slice(s1, l1)?, slice(s2, l2)?, &self.tab, b, ci, co);
            Ok((storage(out), shape))
        })
    }
}

/// (in, g) → [∂L/∂W; ∂L/∂bias] as `[K·C_in + 1, C_out]`.
struct ConvBackWeight {
    tab: Arc<Table>,
}

impl CustomOp2 for ConvBackWeight {
    fn name(&self) -> &'static str {
        "flow-scalar-conv-back-weight"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, _n_in, ci) = l1.shape().dims3()?;
        let (_, _, co) = l2.shape().dims3()?;
        let shape = Shape::from((self.tab.k * ci + 1, co));
        dispatch_float!(s1, "conv-back-weight", T => {
            let out = conv_back_weight::<T>(slice(s1, l1)?, slice(s2, l2)?, &self.tab, b, ci, co);
            Ok((storage(out), shape))
        })
    }
}

/// The periodic convolution with fused activation (CPU). `inp` `[B, N_in, C_in]`, `w`
/// `[K·C_in, C_out]`, `bias` `[C_out]`.
pub fn conv(inp: &Tensor, w: &Tensor, bias: &Tensor, tab: &Arc<Table>, act: Act) -> Result<Tensor> {
    inp.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, ConvOp { tab: tab.clone(), act })
}

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
            let x: &[T] = slice(s1, l1)?;
            let st: &[T] = slice(s2, l2)?;
            let out: Vec<T> = match self.dir {
                Dir::Forward => x.iter().zip(st.chunks_exact(2)).map(|(&x, st)| x * st[0].exp() + st[1]).collect(),
                Dir::Inverse => x.iter().zip(st.chunks_exact(2)).map(|(&y, st)| (y - st[1]) * (-st[0]).exp()).collect(),
            };
            Ok((storage(out), l1.shape().clone()))
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
            let g: &[T] = slice(s1, l1)?;
            let st: &[T] = slice(s2, l2)?;
            let out: Vec<T> = match self.dir {
                Dir::Forward => g.iter().zip(st.chunks_exact(2)).map(|(&g, st)| g * st[0].exp()).collect(),
                Dir::Inverse => g.iter().zip(st.chunks_exact(2)).map(|(&g, st)| g * (-st[0]).exp()).collect(),
            };
            Ok((storage(out), l1.shape().clone()))
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
            let g: &[T] = slice(s1, l1)?;
            let src: &[T] = slice(s2, l2)?;
            let st: &[T] = slice(s3, l3)?;
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
            Ok((storage(out), l3.shape().clone()))
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
            let st: &[T] = slice(s, l)?;
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
            Ok((storage(out), Shape::from(b)))
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
            let g: &[T] = slice(s, l)?;
            let mut out = vec![T::default(); b * self.h * 2];
            for bi in 0..b {
                let v = if self.negate { -g[bi] } else { g[bi] };
                for hi in 0..self.h {
                    out[(bi * self.h + hi) * 2] = v;
                }
            }
            Ok((storage(out), Shape::from((b, self.h, 2))))
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
