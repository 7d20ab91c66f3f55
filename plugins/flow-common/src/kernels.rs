//! Fused CPU convolution kernels (candle custom ops with hand-written backward passes).
//!
//! A periodic convolution is written as a gather: output site m of a convolution reads input
//! rows `table[m·K + o]` for the K kernel offsets o (see [`Table`] and [`crate::periodic`] for
//! the builders). The generic formulation (`index_select` im2col + matmul, activation as a
//! candle op, see [`conv_generic`]) runs on every device and is the reference; on the CPU it is
//! dominated by per-op overhead and by the K-fold im2col copies, so CPU models use
//!
//! * [`conv`]: `act(bias + Σ_{o, c} in[b, table[m, o], c] · W[o·C_in + c, :])` evaluated
//!   directly from the gather table (no im2col buffer), with the activation fused (identity,
//!   leaky ReLU, ReLU or tanh, whose derivatives follow from the output). Table entries ≥ N_in
//!   read zeros (masked input sites). Its backward pass (∂L/∂in as a gather over the
//!   transposed table, ∂L/∂W and ∂L/∂bias as block sums) is hand-written.
//!
//! The convolutions split the batch into fixed blocks of [`BLOCK`] configurations that run in
//! parallel on the current rayon pool (a model's own pool after `set_threads`); each block's
//! arithmetic and the order in which block sums are added are fixed, so results do not depend
//! on the thread count. Gradients are checked against the generic formulation in the tests.
//!
//! Plugins write their own element-wise custom ops with the helpers exported here: the
//! [`Real`] trait (f32/f64 arithmetic and the transcendental functions), [`cpu_slice`] (a
//! contiguous input as a slice), [`IntoStorage`] and the [`dispatch_float!`] macro.

#[cfg(target_arch = "x86_64")]
mod avx2;

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Error, Layout, Result, Shape, Tensor};

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
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + Send
    + Sync
    + 'static
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn floor(self) -> Self;
    fn round(self) -> Self;
    /// The angle of (x = `other`, y = `self`), in (−π, π].
    fn atan2(self, other: Self) -> Self;
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

/// Implements [`Real`] for a primitive float type with its inherent methods (`$unary`: the
/// methods of one argument that return `Self`).
macro_rules! impl_real {
    ($t:ty; $($unary:ident)*) => {
        impl Real for $t {
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            $(fn $unary(self) -> Self { <$t>::$unary(self) })*
            fn atan2(self, other: Self) -> Self {
                <$t>::atan2(self, other)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}

impl_real!(f32; exp ln tanh sin cos sqrt abs floor round);
impl_real!(f64; exp ln tanh sin cos sqrt abs floor round);

/// The f32 slice behind `s` when `T` is `f32` (for kernels written for f32 only); `None` for f64.
pub fn as_f32<T: Real>(s: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, so the slice's memory holds s.len() f32 values.
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
}

/// [`as_f32`] for a mutable slice.
pub fn as_f32_mut<T: Real>(s: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, so the slice's memory holds s.len() f32 values.
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) })
}

/// Whether the convolution kernels use the AVX2 + FMA versions (x86-64 CPUs that have both,
/// checked once at run time; the portable versions otherwise). The two round differently
/// (fused multiply-adds), so results are reproducible bit for bit on one kind of CPU.
pub fn simd_kernels() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(latflow_core::simd::avx2_fma)
}

/// Configurations per parallel task of the kernels (fixed: results do not depend on the
/// thread count).
pub const BLOCK: usize = 16;

/// A gather table: output site m reads input rows `idx[m·k + o]`, o < k; entries ≥ `n_in` read
/// the pad row (zeros, or [`conv_padded`]'s constants) and are stored as `n_in`.
///
/// Contract (checked by [`Table::new`]): for each offset o, distinct output sites read distinct
/// rows among those < `n_in`. Periodic convolutions satisfy it (offset o is a lattice
/// translation), also restricted to subsets of sites; it makes the transposed table, and so
/// ∂L/∂in, a gather.
#[derive(Debug)]
pub struct Table {
    pub idx: Vec<u32>,
    /// Output sites.
    pub m: usize,
    /// Kernel offsets per output site.
    pub k: usize,
    /// Input rows (entries ≥ n_in are padding).
    pub n_in: usize,
    /// Whether any entry is padding.
    pub has_pad: bool,
    /// The transposed table (input row y, offset o) → output site, for ∂L/∂in as a gather.
    pub inv: Option<Arc<Table>>,
}

impl Table {
    /// Builds the table and its transpose. Panics if `idx.len() != m·k` or if the contract above
    /// is violated.
    pub fn new(idx: Vec<u32>, m: usize, k: usize, n_in: usize) -> Self {
        let mut t = Self::plain(idx, m, k, n_in);
        // (y, o) determines m; pairs that no output reads get the zero row m.
        let mut inv = vec![m as u32; n_in * k];
        for mi in 0..m {
            for o in 0..k {
                let y = t.idx[mi * k + o] as usize;
                if y < n_in {
                    assert_eq!(
                        inv[y * k + o] as usize,
                        m,
                        "gather table: input row {y} is read at offset {o} by two output sites"
                    );
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
        let idx = idx.into_iter().map(|i| i.min(n_in as u32)).collect();
        Self { idx, m, k, n_in, has_pad, inv: None }
    }
}

/// The elements of a contiguous CPU tensor argument of a custom op, as a slice.
pub fn cpu_slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(Error::Msg("latflow kernel: non-contiguous input (call .contiguous() first)".into())),
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

/// Rows of the input with the pad row appended when the table refers to padding: zeros, or
/// the per-channel constants `pad` (length C_in).
fn padded<'a, T: Real>(
    inp: &'a [T],
    tab: &Table,
    b: usize,
    ci: usize,
    pad: Option<&[f64]>,
) -> (std::borrow::Cow<'a, [T]>, usize) {
    if !tab.has_pad {
        return (std::borrow::Cow::Borrowed(inp), tab.n_in);
    }
    let rows = tab.n_in + 1;
    let mut v = vec![T::default(); b * rows * ci];
    for bi in 0..b {
        v[bi * rows * ci..bi * rows * ci + tab.n_in * ci]
            .copy_from_slice(&inp[bi * tab.n_in * ci..(bi + 1) * tab.n_in * ci]);
        if let Some(p) = pad {
            for c in 0..ci {
                v[(bi * rows + tab.n_in) * ci + c] = T::from_f64(p[c]);
            }
        }
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
        // U(1) conditioners: NCP mixtures (n_mix + 1 = 3, 5) and circular splines (3K + 1 = 13, 25)
        (3, _) => gather_conv_co::<T, 3, 8, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (5, _) => gather_conv_co::<T, 5, 8, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (13, _) => gather_conv_co::<T, 13, 4, FMA>(x, rows, w, bias, tab, b, ci, act, out),
        (25, _) => gather_conv_co::<T, 25, 2, FMA>(x, rows, w, bias, tab, b, ci, act, out),
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
    pad: Option<&[f64]>,
) -> Vec<T> {
    use rayon::prelude::*;
    let (x, rows) = padded(inp, tab, b, ci, pad);
    let mut out = vec![T::default(); b * tab.m * co];
    let (per_in, per_out) = (rows * ci, tab.m * co);
    let run = |xs: &[T], os: &mut [T]| {
        let nb = os.len() / per_out;
        #[cfg(target_arch = "x86_64")]
        if simd_kernels() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            if unsafe { avx2::gather_conv_f32(xs, rows, w, bias, tab, nb, ci, co, act, os) } {
                return;
            }
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

fn conv_fwd<T: Real>(
    inp: &[T],
    w: &[T],
    bias: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    act: Act,
    pad: Option<&[f64]>,
) -> Vec<T> {
    gather_conv(inp, w, bias, tab, b, ci, co, act, pad)
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
    gather_conv(g, &wt, &zero, inv, b, co, ci, Act::Identity, None)
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
                (4, 11), (8, 11), (16, 11), (4, 23), (8, 23), (16, 23),
                (4, 3), (8, 3), (16, 3), (4, 5), (8, 5), (16, 5),
                (4, 13), (8, 13), (16, 13), (4, 25), (8, 25), (16, 25))
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
fn conv_back_weight<T: Real>(
    inp: &[T],
    g: &[T],
    tab: &Table,
    b: usize,
    ci: usize,
    co: usize,
    pad: Option<&[f64]>,
) -> Vec<T> {
    use rayon::prelude::*;
    let (x, rows) = padded(inp, tab, b, ci, pad);
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
            if !unsafe { avx2::back_weight_f32(xs, rows, gs, tab, nb, ci, co, w_part) } {
                // SAFETY: as above.
                unsafe { back_weight_avx2(xs, rows, gs, tab, nb, ci, co, w_part) };
            }
            true
        } else {
            false
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            back_weight_portable(xs, rows, gs, tab, nb, ci, co, w_part);
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        let done = simd_kernels() && unsafe { avx2::sum_rows8(gs, b_part) };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            for row in gs.chunks_exact(co) {
                for q in 0..co {
                    b_part[q] += row[q];
                }
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

/// Runs `$body` with the type alias `$t` set to the float type of a CPU storage (f32 or f64),
/// and errors for other dtypes: `crate::dispatch_float!(storage, "op name", T => { … })`.
#[macro_export]
macro_rules! dispatch_float {
    ($s:expr, $name:literal, $t:ident => $body:expr) => {
        match $s {
            $crate::candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            $crate::candle_core::CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => Err($crate::candle_core::Error::Msg(format!(
                "{}: unsupported dtype {:?}",
                $name,
                $crate::candle_core::backend::BackendStorage::dtype(other)
            ))),
        }
    };
}

/// Wraps a vector of f32 or f64 as CPU storage.
pub fn to_storage<T: Real>(v: Vec<T>) -> CpuStorage
where
    Vec<T>: IntoStorage,
{
    v.into_storage()
}

/// Vectors that are candle CPU storage (f32, f64).
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
    pad: Option<Arc<[f64]>>,
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "latflow-conv"
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
        if n_in != self.tab.n_in
            || kci != self.tab.k * ci
            || l3.shape().elem_count() != co
            || self.pad.as_ref().is_some_and(|p| p.len() != ci)
        {
            return Err(Error::Msg(format!(
                "latflow conv: shapes {:?} {:?} {:?} do not fit the table (n_in {}, k {})",
                l1.shape(),
                l2.shape(),
                l3.shape(),
                self.tab.n_in,
                self.tab.k
            )));
        }
        let shape = Shape::from((b, self.tab.m, co));
        crate::dispatch_float!(s1, "conv", T => {
            let out = conv_fwd::<T>(
                cpu_slice(s1, l1)?,
                cpu_slice(s2, l2)?,
                cpu_slice(s3, l3)?,
                &self.tab,
                b,
                ci,
                co,
                self.act,
                self.pad.as_deref(),
            );
            Ok((to_storage(out), shape))
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
            let both = inp
                .contiguous()?
                .apply_op2_no_bwd(&gpre, &ConvBackWeight { tab: self.tab.clone(), pad: self.pad.clone() })?;
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
        "latflow-act-back"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        crate::dispatch_float!(s1, "act-back", T => {
            let g: &[T] = cpu_slice(s1, l1)?;
            let y: &[T] = cpu_slice(s2, l2)?;
            let zero = T::default();
            let slope = T::from_f64(LEAKY_SLOPE);
            let one = T::from_f64(1.0);
            let out: Vec<T> = match self.act {
                Act::Identity => g.to_vec(),
                Act::LeakyRelu => g.iter().zip(y).map(|(&g, &y)| if y > zero { g } else { g * slope }).collect(),
                Act::Relu => g.iter().zip(y).map(|(&g, &y)| if y > zero { g } else { zero }).collect(),
                Act::Tanh => g.iter().zip(y).map(|(&g, &y)| g * (one - y * y)).collect(),
            };
            Ok((to_storage(out), l1.shape().clone()))
        })
    }
}

/// (g [B, M, C_out], W) → ∂L/∂in [B, N_in, C_in].
struct ConvBackInput {
    tab: Arc<Table>,
}

impl CustomOp2 for ConvBackInput {
    fn name(&self) -> &'static str {
        "latflow-conv-back-input"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, _m, co) = l1.shape().dims3()?;
        let (kci, _) = l2.shape().dims2()?;
        let ci = kci / self.tab.k;
        let shape = Shape::from((b, self.tab.n_in, ci));
        crate::dispatch_float!(s1, "conv-back-input", T => {
            let out = conv_back_input::<T>(cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, &self.tab, b, ci, co);
            Ok((to_storage(out), shape))
        })
    }
}

/// (in, g) → [∂L/∂W; ∂L/∂bias] as `[K·C_in + 1, C_out]`.
struct ConvBackWeight {
    tab: Arc<Table>,
    pad: Option<Arc<[f64]>>,
}

impl CustomOp2 for ConvBackWeight {
    fn name(&self) -> &'static str {
        "latflow-conv-back-weight"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, _n_in, ci) = l1.shape().dims3()?;
        let (_, _, co) = l2.shape().dims3()?;
        let shape = Shape::from((self.tab.k * ci + 1, co));
        crate::dispatch_float!(s1, "conv-back-weight", T => {
            let out =
                conv_back_weight::<T>(cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, &self.tab, b, ci, co, self.pad.as_deref());
            Ok((to_storage(out), shape))
        })
    }
}

/// The periodic convolution with fused activation (CPU): `act(bias + Σ_{o, c} in[b, table[m, o],
/// c] · w[o·C_in + c, :])` with `inp` `[B, N_in, C_in]`, `w` `[K·C_in, C_out]`, `bias` `[C_out]`
/// → `[B, M, C_out]`. Table entries ≥ N_in read zeros.
pub fn conv(inp: &Tensor, w: &Tensor, bias: &Tensor, tab: &Arc<Table>, act: Act) -> Result<Tensor> {
    inp.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, ConvOp { tab: tab.clone(), act, pad: None })
}

/// [`conv`] whose table entries ≥ N_in read the constant row `pad` (one value per input channel)
/// instead of zeros; no gradient flows into `pad`. This is a masked input whose masked sites
/// hold a constant (e.g. cos 0 = 1, sin 0 = 0).
pub fn conv_padded(inp: &Tensor, w: &Tensor, bias: &Tensor, tab: &Arc<Table>, act: Act, pad: &[f64]) -> Result<Tensor> {
    let pad: Arc<[f64]> = pad.into();
    inp.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, ConvOp { tab: tab.clone(), act, pad: Some(pad) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periodic;
    use crate::tensor::{conv_generic, tensor_from_f64, tensor_to_f64, ColumnGather};
    use crate::testing::uniform_values as values;
    use candle_core::{DType, Device, Var};


    fn generic_act(y: &Tensor, act: Act) -> Result<Tensor> {
        match act {
            Act::Identity => Ok(y.clone()),
            Act::LeakyRelu => y.maximum(&y.affine(LEAKY_SLOPE, 0.0)?),
            Act::Relu => y.relu(),
            Act::Tanh => y.tanh(),
        }
    }

    struct Case {
        shape: Vec<usize>,
        kernel: usize,
        ci: usize,
        co: usize,
        /// Output sites (the inputs are every other site along the last axis, the rest padding).
        outputs: Vec<usize>,
        pad: Option<Vec<f64>>,
    }

    /// Output, and gradients of Σ out·u w.r.t. (input, weight, bias), by the fused op and by the
    /// generic formulation.
    fn both(case: &Case, act: Act, b: usize, dtype: DType) -> [Vec<Vec<f64>>; 2] {
        let dev = Device::Cpu;
        let v: usize = case.shape.iter().product();
        let last = *case.shape.last().unwrap();
        let inputs: Vec<usize> = (0..v).filter(|x| (x % last).is_multiple_of(2)).collect();
        let k = case.kernel.pow(case.shape.len() as u32);
        let tab = Arc::new(periodic::table(&case.shape, case.kernel, &case.outputs, &inputs));
        let idx = periodic::gather_indices(
            &case.shape,
            case.kernel,
            &case.outputs,
            &periodic::rows_of(v, &inputs),
            inputs.len(),
        );
        let idx = ColumnGather::new(&idx, inputs.len() + 1, &dev).unwrap();
        let x = values(b * inputs.len() * case.ci, 1);
        let w = values(k * case.ci * case.co, 2);
        let bias = values(case.co, 3);
        let u = values(b * case.outputs.len() * case.co, 4);
        let u = tensor_from_f64(&u, (b, case.outputs.len(), case.co), dtype, &dev).unwrap();
        let run = |fused: bool| -> Vec<Vec<f64>> {
            let xv = Var::from_tensor(&tensor_from_f64(&x, (b, inputs.len(), case.ci), dtype, &dev).unwrap()).unwrap();
            let wv = Var::from_tensor(&tensor_from_f64(&w, (k * case.ci, case.co), dtype, &dev).unwrap()).unwrap();
            let bv = Var::from_tensor(&tensor_from_f64(&bias, case.co, dtype, &dev).unwrap()).unwrap();
            let out = if fused {
                match &case.pad {
                    Some(p) => conv_padded(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), &tab, act, p).unwrap(),
                    None => conv(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), &tab, act).unwrap(),
                }
            } else {
                let y =
                    conv_generic(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), &idx, case.pad.as_deref()).unwrap();
                generic_act(&y, act).unwrap()
            };
            let g = out.mul(&u).unwrap().sum_all().unwrap().backward().unwrap();
            vec![
                tensor_to_f64(&out).unwrap(),
                tensor_to_f64(g.get(xv.as_tensor()).unwrap()).unwrap(),
                tensor_to_f64(g.get(wv.as_tensor()).unwrap()).unwrap(),
                tensor_to_f64(g.get(bv.as_tensor()).unwrap()).unwrap(),
            ]
        };
        [run(true), run(false)]
    }

    fn cases() -> Vec<Case> {
        let all64: Vec<usize> = (0..64).collect();
        let stripe: Vec<usize> = (0..64).filter(|x| x % 8 == 3).collect();
        let odd: Vec<usize> = (0..64).filter(|x| x % 2 == 1).collect();
        vec![
            // the U(1) conditioner's shapes: 2 → 8 with the constant (1, 0) pad row, 8 → 8, 8 → 3 on a stripe
            Case { shape: vec![8, 8], kernel: 3, ci: 2, co: 8, outputs: all64.clone(), pad: Some(vec![1.0, 0.0]) },
            Case {
                shape: vec![8, 8],
                kernel: 3,
                ci: 8,
                co: 8,
                outputs: periodic::dilate(&[8, 8], 3, &stripe),
                pad: None,
            },
            Case { shape: vec![8, 8], kernel: 3, ci: 8, co: 3, outputs: stripe.clone(), pad: None },
            Case { shape: vec![8, 8], kernel: 3, ci: 8, co: 25, outputs: stripe, pad: Some(vec![0.5; 8]) },
            // the φ⁴ conditioner's shapes: 1 → 8 from the frozen half with zero padding, 8 → 2 on
            // the active half; and 8 → 1 (the f32 AVX2 kernels' (ci, co) = (8, 1) cases); 61 and
            // 29 output sites leave tails after the kernels' blocks of 2, 4, 7 and 8 sites
            Case { shape: vec![8, 8], kernel: 3, ci: 1, co: 8, outputs: (0..61).collect(), pad: Some(vec![0.0]) },
            Case { shape: vec![8, 8], kernel: 3, ci: 8, co: 2, outputs: odd.clone(), pad: None },
            Case { shape: vec![8, 8], kernel: 3, ci: 8, co: 1, outputs: odd[..29].to_vec(), pad: Some(vec![0.25; 8]) },
            // spline conditioners' last convolutions (3K − 1 = 23 and 47 for φ⁴, 3K + 1 = 13 for U(1))
            Case { shape: vec![8, 8], kernel: 3, ci: 8, co: 23, outputs: odd[..31].to_vec(), pad: None },
            Case { shape: vec![8, 8], kernel: 3, ci: 16, co: 47, outputs: odd[..29].to_vec(), pad: None },
            Case { shape: vec![8, 8], kernel: 3, ci: 3, co: 13, outputs: odd[..30].to_vec(), pad: Some(vec![0.5; 3]) },
            // the generic loops (no specialisation for 3 → 7) in 1D and 3D
            Case {
                shape: vec![12],
                kernel: 5,
                ci: 3,
                co: 7,
                outputs: (0..12).collect(),
                pad: Some(vec![0.1, 0.2, 0.3]),
            },
            Case { shape: vec![4, 2, 4], kernel: 1, ci: 1, co: 2, outputs: (0..32).step_by(3).collect(), pad: None },
        ]
    }

    #[test]
    fn fused_convolution_matches_the_generic_formulation_in_f64() {
        for case in cases() {
            for act in [Act::Identity, Act::LeakyRelu, Act::Relu, Act::Tanh] {
                let [f, g] = both(&case, act, 37, DType::F64);
                for (what, (a, b)) in ["output", "∂/∂in", "∂/∂W", "∂/∂bias"].iter().zip(f.iter().zip(&g)) {
                    assert_eq!(a.len(), b.len());
                    let scale = b.iter().fold(1.0f64, |s, x| s.max(x.abs()));
                    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                    assert!(
                        d < 1e-12 * scale,
                        "{:?} {}→{} {act:?}: {what} differs by {d} (scale {scale})",
                        case.shape,
                        case.ci,
                        case.co
                    );
                }
            }
        }
    }

    #[test]
    fn fused_convolution_in_f32_agrees_with_f64() {
        // (the f32 kernels, explicit-register AVX2 ones included, against the f64 ones that the
        // test above checks against the generic formulation)
        for case in cases() {
            for act in [Act::Identity, Act::LeakyRelu, Act::Relu, Act::Tanh] {
                let [a, _] = both(&case, act, 20, DType::F32);
                let [b, _] = both(&case, act, 20, DType::F64);
                for (what, (x, y)) in ["output", "∂/∂in", "∂/∂W", "∂/∂bias"].iter().zip(a.iter().zip(&b)) {
                    let scale = y.iter().fold(1.0f64, |s, v| s.max(v.abs()));
                    let d = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
                    assert!(
                        d < 1e-5 * scale,
                        "{:?} {}→{} {act:?}: f32 {what} differs by {d}",
                        case.shape,
                        case.ci,
                        case.co
                    );
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let case = &cases()[1];
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| both(case, Act::LeakyRelu, 70, DType::F32)[0].clone())
        };
        let one = run(1);
        for t in [2, 3] {
            let other = run(t);
            for (a, b) in one.iter().zip(&other) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{t} threads give other bits");
            }
        }
    }

    #[test]
    #[should_panic(expected = "read at offset")]
    fn tables_that_are_not_translations_are_refused() {
        // two outputs reading input row 0 at the same offset
        Table::new(vec![0, 0], 2, 1, 1);
    }
}
