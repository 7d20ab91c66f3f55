//! The rational-quadratic splines of [`crate::spline`] as one fused CPU op with a hand-written
//! backward pass, straight from the conditioner's raw parameters: knot softmaxes and cumulative
//! sums, softplus derivatives, bin search, the map (or its inverse) and its log-derivative,
//! which [`crate::spline::knots_from_raw`] and [`crate::spline::apply_bins`] compute with about
//! 40 candle ops. Each element is done in f64 (the softmaxes' exponentials in the dtype, as
//! the candle ops do) and rounded to the dtype once. A [`SplineSpec`] says how the knots are
//! parameterised.
//!
//! **Derivatives.** Per element, the forward formula is evaluated in forward-mode dual numbers
//! (`Dual`) with seven tangents: the argument x and the bin's six knot values (x_k, x_{k+1},
//! y_k, y_{k+1}, d_k, d_{k+1}). That gives ∂y/∂· and ∂ln y′/∂· exactly (to rounding). The
//! inverse x = g⁻¹(y) is solved as in the generic formulation (the cancellation-free root of
//! the quadratic) and differentiated implicitly from the same forward tangents:
//!
//! ```text
//! ∂x/∂y = 1/g′(x),   ∂x/∂p = −(∂g/∂p)/g′(x),   ∂(−ln g′)/∂q = −(∂ln g′/∂q + ∂ln g′/∂x · ∂x/∂q)
//! ```
//!
//! The backward op writes ∂L/∂v and ∂L/∂knots (six non-zero entries per spline). It has no
//! backward itself (no second derivatives through the splines). Elements are independent, so
//! results do not depend on the thread count; the bin search compares in the dtype (as the
//! generic one does), the arithmetic is f64, rounded to the dtype at the end.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::kernels::{cpu_slice, to_storage, Real};

/// Number of tangent directions: the argument and six knot values.
const NT: usize = 7;

/// A forward-mode dual number with [`NT`] tangents.
#[derive(Clone, Copy, Debug)]
struct Dual {
    v: f64,
    d: [f64; NT],
}

impl Dual {
    fn var(v: f64, i: usize) -> Self {
        let mut d = [0.0; NT];
        d[i] = 1.0;
        Self { v, d }
    }
    fn map(self, v: f64, dv: f64) -> Self {
        Self { v, d: self.d.map(|x| x * dv) }
    }
    fn ln(self) -> Self {
        self.map(self.v.ln(), 1.0 / self.v)
    }
    fn scale(self, c: f64) -> Self {
        self.map(self.v * c, c)
    }
    fn one_minus(self) -> Self {
        Self { v: 1.0 - self.v, d: self.d.map(|x| -x) }
    }
}

impl std::ops::Add for Dual {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self { v: self.v + o.v, d: std::array::from_fn(|i| self.d[i] + o.d[i]) }
    }
}
impl std::ops::Sub for Dual {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self { v: self.v - o.v, d: std::array::from_fn(|i| self.d[i] - o.d[i]) }
    }
}
// the product and quotient rules: `+`, `-` and `*` inside these impls are intended
#[allow(clippy::suspicious_arithmetic_impl)]
impl std::ops::Mul for Dual {
    type Output = Self;
    fn mul(self, o: Self) -> Self {
        Self { v: self.v * o.v, d: std::array::from_fn(|i| self.d[i] * o.v + self.v * o.d[i]) }
    }
}
#[allow(clippy::suspicious_arithmetic_impl)]
impl std::ops::Div for Dual {
    type Output = Self;
    fn div(self, o: Self) -> Self {
        let q = self.v / o.v;
        Self { v: q, d: std::array::from_fn(|i| (self.d[i] - q * o.d[i]) / o.v) }
    }
}

/// The arithmetic [`bin_map`] needs: plain f64 values, or [`Dual`]s that carry derivatives.
trait BinNum:
    Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> + std::ops::Div<Output = Self>
{
    fn scale(self, c: f64) -> Self;
    fn one_minus(self) -> Self;
    fn ln(self) -> Self;
}

impl BinNum for f64 {
    fn scale(self, c: f64) -> Self {
        self * c
    }
    fn one_minus(self) -> Self {
        1.0 - self
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

impl BinNum for Dual {
    fn scale(self, c: f64) -> Self {
        Dual::scale(self, c)
    }
    fn one_minus(self) -> Self {
        Dual::one_minus(self)
    }
    fn ln(self) -> Self {
        Dual::ln(self)
    }
}

/// The forward bin map at x with the bin's knot values (x_k, x_{k+1}, y_k, y_{k+1}, d_k,
/// d_{k+1}): (y, ln dy/dx). One formula for both number types, so a [`Dual`]'s value has the
/// bits of the plain evaluation.
fn bin_map<N: BinNum>(x: N, [xk, xk1, yk, yk1, d0, d1]: [N; 6]) -> (N, N) {
    let w = xk1 - xk;
    let h = yk1 - yk;
    let theta = (x - xk) / w;
    let delta = h / w;
    let om = theta.one_minus();
    let t1 = theta * om;
    let s = d0 + d1 - delta.scale(2.0);
    let den = delta + s * t1;
    let y = yk + h * (delta * theta * theta + d0 * t1) / den;
    let num = delta * delta * (d1 * theta * theta + delta.scale(2.0) * t1 + d0 * om * om);
    let lg = num.ln() - den.ln().scale(2.0);
    (y, lg)
}

/// The forward bin map at x with the bin's knot values `p`: (y, ln dy/dx) as duals in (x, p).
fn forward_dual(x: f64, p: &[f64; 6]) -> (Dual, Dual) {
    bin_map(Dual::var(x, 0), std::array::from_fn(|j| Dual::var(p[j], j + 1)))
}

/// [`forward_dual`]'s values alone, for calls that need no derivatives: sampling, and the
/// forward pass of training, whose backward pass evaluates the duals again.
fn forward_plain(x: f64, p: &[f64; 6]) -> (f64, f64) {
    bin_map(x, *p)
}

/// The inverse bin map's root x for y in the bin with knot values `p` (the generic
/// formulation's cancellation-free quadratic root).
fn inverse_root(y: f64, p: &[f64; 6]) -> f64 {
    let [xk, xk1, yk, yk1, d0, d1] = *p;
    let (w, h) = (xk1 - xk, yk1 - yk);
    let delta = h / w;
    let dy = y - yk;
    let s = d0 + d1 - 2.0 * delta;
    let a = h * (delta - d0) + dy * s;
    let b = h * d0 - dy * s;
    let c = -delta * dy;
    let sq = (b * b - 4.0 * a * c).max(0.0).sqrt();
    let theta = if b >= 0.0 { 2.0 * c / (-b - sq) } else { (sq - b) / (2.0 * a) };
    xk + theta * w
}

/// One element: (image, log-derivative) and, when `grads` is given, the derivatives of both
/// with respect to (v, the six knot values): `grads[0]` of the image, `grads[1]` of the
/// log-derivative.
fn element(v: f64, p: &[f64; 6], inverse: bool, grads: Option<&mut [[f64; NT]; 2]>) -> (f64, f64) {
    if grads.is_none() {
        return if inverse {
            let x = inverse_root(v, p);
            (x, -forward_plain(x, p).1)
        } else {
            forward_plain(v, p)
        };
    }
    if !inverse {
        let (y, lg) = forward_dual(v, p);
        if let Some(g) = grads {
            g[0] = y.d;
            g[1] = lg.d;
        }
        return (y.v, lg.v);
    }
    let x = inverse_root(v, p);
    let (y, lg) = forward_dual(x, p);
    if let Some(g) = grads {
        let dx_dy = 1.0 / y.d[0];
        let mut dx = [0.0; NT];
        dx[0] = dx_dy;
        for j in 1..NT {
            dx[j] = -y.d[j] * dx_dy;
        }
        let mut dl = [0.0; NT];
        dl[0] = -lg.d[0] * dx_dy;
        for j in 1..NT {
            dl[j] = -(lg.d[j] + lg.d[0] * dx[j]);
        }
        g[0] = dx;
        g[1] = dl;
    }
    (x, -lg.v)
}

/// Elements per parallel block (any split gives the same bits: elements are independent).
const BLOCK: usize = 1024;

/// How a spline's end-knot derivatives d_0 and d_K are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndDerivatives {
    /// Both are parameters: K + 1 derivative parameters (interval splines of flow-sun).
    Free,
    /// d_K = d_0, a parameter: K derivative parameters (circular splines of flow-u1).
    Periodic,
    /// d_0 = d_K = 1: K − 1 derivative parameters (linear tails, flow-scalar).
    One,
}

/// The knots' parameterisation, as [`crate::spline`] documents it: K bins on [lo, hi]; the
/// parameters of each spline are K bin widths, K bin heights, then the derivative parameters
/// ([`EndDerivatives`]). With `identity_outside`, values outside [lo, hi] map to themselves
/// with log-derivative 0 (linear tails).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplineSpec {
    pub bins: usize,
    pub lo: f64,
    pub hi: f64,
    pub ends: EndDerivatives,
    pub identity_outside: bool,
}

impl SplineSpec {
    /// Derivative parameters per spline.
    pub fn n_derivatives(&self) -> usize {
        match self.ends {
            EndDerivatives::Free => self.bins + 1,
            EndDerivatives::Periodic => self.bins,
            EndDerivatives::One => self.bins - 1,
        }
    }

    /// Parameters per spline.
    pub fn n_params(&self) -> usize {
        2 * self.bins + self.n_derivatives()
    }
}

/// Largest number of bins of the fused op (the configs' limit).
const MAX_K1: usize = crate::config::MAX_SPLINE_BINS + 1;

/// One spline's knot positions in f64 (K + 1 each), with the softmax weights of widths and
/// heights (K each) kept for the backward pass: a scratch buffer reused for every element of a
/// block.
struct SplineKnots {
    xs: Vec<f64>,
    ys: Vec<f64>,
    sw: Vec<f64>,
    sh: Vec<f64>,
}

/// softmax of `u` into `sm` (exponentials in the dtype, as the generic formulation), then knot
/// positions lo + (hi − lo) Σ_{j<i} w_j with w = m + (1 − K m) sm, the ends exact.
fn positions<T: Real>(u: &[T], m: f64, lo: f64, hi: f64, sm: &mut [f64], out: &mut [f64]) {
    let k = u.len();
    let mx = u.iter().fold(u[0], |a, &x| if x > a { x } else { a });
    let mut z = 0.0;
    for (s, &x) in sm.iter_mut().zip(u) {
        *s = (x - mx).exp().to_f64();
        z += *s;
    }
    let (scale, a, inv_z) = (hi - lo, 1.0 - k as f64 * m, 1.0 / z);
    let mut c = 0.0;
    out[0] = lo;
    for i in 0..k {
        sm[i] *= inv_z;
        c += m + a * sm[i];
        out[i + 1] = lo + scale * c;
    }
    out[k] = hi;
}

/// m_d + softplus(r + shift).
fn derivative(r: f64) -> f64 {
    let v = r + crate::spline::derivative_shift();
    MIN_DERIVATIVE + v.max(0.0) + (-v.abs()).exp().ln_1p()
}

use crate::spline::{MIN_BIN_HEIGHT, MIN_BIN_WIDTH, MIN_DERIVATIVE};

/// The derivative parameter that sets knot derivative d_i, if any (`None`: fixed at 1).
fn derivative_slot(sp: &SplineSpec, i: usize) -> Option<usize> {
    let k = sp.bins;
    match sp.ends {
        EndDerivatives::Free => Some(i),
        EndDerivatives::Periodic => Some(i % k),
        EndDerivatives::One if i == 0 || i == k => None,
        EndDerivatives::One => Some(i - 1),
    }
}

impl SplineKnots {
    fn new(k: usize) -> Self {
        Self { xs: vec![0.0; k + 1], ys: vec![0.0; k + 1], sw: vec![0.0; k], sh: vec![0.0; k] }
    }

    /// Fills the positions from one spline's parameters.
    fn fill<T: Real>(&mut self, raw: &[T], sp: &SplineSpec) {
        let k = sp.bins;
        positions(&raw[..k], MIN_BIN_WIDTH, sp.lo, sp.hi, &mut self.sw, &mut self.xs);
        positions(&raw[k..2 * k], MIN_BIN_HEIGHT, sp.lo, sp.hi, &mut self.sh, &mut self.ys);
    }

    /// The bin of `v` among the knots (x or, for the inverse, y) and its six knot values
    /// (the two derivatives computed here, from `raw`).
    fn bin<T: Real>(&self, v: f64, raw: &[T], sp: &SplineSpec, inverse: bool) -> (usize, [f64; 6]) {
        let k = sp.bins;
        let src = if inverse { &self.ys } else { &self.xs };
        let b = src[1..k].iter().filter(|&&x| v >= x).count();
        let d = |i: usize| derivative_slot(sp, i).map_or(1.0, |j| derivative(raw[2 * k + j].to_f64()));
        (b, [self.xs[b], self.xs[b + 1], self.ys[b], self.ys[b + 1], d(b), d(b + 1)])
    }
}

/// The fused spline from its raw parameters (see [`rq_spline_raw`]).
struct RqSplineRaw {
    spec: SplineSpec,
    inverse: bool,
}

/// Checks `v` `[B, N]` against `raw` `[B, N, P]`; returns (elements, P).
fn raw_dims(l1: &Layout, l2: &Layout, sp: &SplineSpec) -> Result<(usize, usize)> {
    let (b, n) = l1.shape().dims2()?;
    let (b2, n2, c) = l2.shape().dims3()?;
    if b2 != b || n2 != n || c != sp.n_params() {
        return Err(candle_core::Error::Msg(format!(
            "rq-spline op: values {:?} and parameters {:?} do not match {} parameters per spline",
            l1.shape(),
            l2.shape(),
            sp.n_params()
        )));
    }
    Ok((b * n, c))
}

/// Runs `f(element, output row)` over `ne` elements with `width` outputs each, in fixed blocks
/// (in parallel on the current rayon pool when there are several).
fn for_elements<T: Send>(
    out: &mut [T],
    width: usize,
    ne: usize,
    k: usize,
    f: impl Fn(usize, &mut [T], &mut SplineKnots) + Sync,
) {
    use rayon::prelude::*;
    let run = |start: usize, os: &mut [T]| {
        let mut kn = SplineKnots::new(k);
        for (j, o) in os.chunks_mut(width).enumerate() {
            f(start + j, o, &mut kn);
        }
    };
    if ne > BLOCK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(width * BLOCK).enumerate().for_each(|(c, os)| run(c * BLOCK, os));
    } else {
        run(0, out);
    }
}

impl CustomOp2 for RqSplineRaw {
    fn name(&self) -> &'static str {
        "latflow-rq-spline-raw"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let sp = self.spec;
        let (ne, np) = raw_dims(l1, l2, &sp)?;
        let (b, n) = l1.shape().dims2()?;
        let inverse = self.inverse;
        crate::dispatch_float!(s1, "rq-spline-raw", T => {
            let v: &[T] = cpu_slice(s1, l1)?;
            let raw: &[T] = cpu_slice(s2, l2)?;
            let mut out = vec![T::default(); 2 * ne];
            for_elements(&mut out, 2, ne, sp.bins, |e, o, kn| {
                let x = v[e].to_f64();
                if sp.identity_outside && !(x >= sp.lo && x <= sp.hi) {
                    o[0] = v[e];
                    return;
                }
                let r = &raw[e * np..(e + 1) * np];
                kn.fill(r, &sp);
                let (_, p) = kn.bin(x, r, &sp, inverse);
                let (img, ld) = element(x, &p, inverse, None);
                o[0] = T::from_f64(img);
                o[1] = T::from_f64(ld);
            });
            Ok((to_storage(out), Shape::from((b, n, 2))))
        })
    }

    fn bwd(&self, v: &Tensor, raw: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !v.track_op() && !raw.track_op() {
            return Ok((None, None));
        }
        let (b, n) = v.dims2()?;
        let np = self.spec.n_params();
        let both = v.contiguous()?.apply_op3_no_bwd(
            &raw.contiguous()?,
            &grad.contiguous()?,
            &RqSplineRawBack { spec: self.spec, inverse: self.inverse },
        )?;
        Ok((Some(both.narrow(2, 0, 1)?.reshape((b, n))?), Some(both.narrow(2, 1, np)?)))
    }
}

/// (v, raw, ∂L/∂out) → `[B, N, 1 + P]`: ∂L/∂v, then ∂L/∂raw.
struct RqSplineRawBack {
    spec: SplineSpec,
    inverse: bool,
}

/// ∂L/∂u of the softmax-parameterised positions, given ∂L/∂(knot i) for the two knots `at`
/// (only interior knots depend on u): knot i = lo + scale Σ_{j<i} (m + a sm_j), so
/// ∂L/∂w_j = scale Σ_{interior i ∈ at, i > j} g_i, and softmax's backward gives
/// ∂L/∂u_j = a sm_j (∂L/∂w_j − Σ_l sm_l ∂L/∂w_l). Written into `gu` (K values).
fn positions_back<T: Real>(sm: &[f64], m: f64, scale: f64, at: [(usize, f64); 2], gu: &mut [T]) {
    let k = sm.len();
    let a = 1.0 - k as f64 * m;
    let g = at.map(|(i, g)| if i >= 1 && i < k { (i, scale * g) } else { (0, 0.0) });
    let gw = |j: usize| g.iter().filter(|&&(i, _)| j < i).map(|&(_, v)| v).sum::<f64>();
    let dot: f64 = sm.iter().enumerate().map(|(j, s)| s * gw(j)).sum();
    for (j, out) in gu.iter_mut().enumerate() {
        *out = T::from_f64(a * sm[j] * (gw(j) - dot));
    }
}

impl CustomOp3 for RqSplineRawBack {
    fn name(&self) -> &'static str {
        "latflow-rq-spline-raw-back"
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
        let sp = self.spec;
        let (ne, np) = raw_dims(l1, l2, &sp)?;
        let (b, n) = l1.shape().dims2()?;
        let (inverse, k) = (self.inverse, sp.bins);
        let width = 1 + np;
        crate::dispatch_float!(s1, "rq-spline-raw-back", T => {
            let v: &[T] = cpu_slice(s1, l1)?;
            let raw: &[T] = cpu_slice(s2, l2)?;
            let g: &[T] = cpu_slice(s3, l3)?;
            let mut out = vec![T::default(); width * ne];
            for_elements(&mut out, width, ne, k, |e, o, kn| {
                let x = v[e].to_f64();
                let (gi, gl) = (g[2 * e].to_f64(), g[2 * e + 1].to_f64());
                if sp.identity_outside && !(x >= sp.lo && x <= sp.hi) {
                    o[0] = T::from_f64(gi);
                    return;
                }
                let r = &raw[e * np..(e + 1) * np];
                kn.fill(r, &sp);
                let (bn, p) = kn.bin(x, r, &sp, inverse);
                let mut d = [[0.0; NT]; 2];
                element(x, &p, inverse, Some(&mut d));
                let gp: [f64; 7] = std::array::from_fn(|j| gi * d[0][j] + gl * d[1][j]);
                o[0] = T::from_f64(gp[0]);
                let scale = sp.hi - sp.lo;
                positions_back(&kn.sw, MIN_BIN_WIDTH, scale, [(bn, gp[1]), (bn + 1, gp[2])], &mut o[1..1 + k]);
                positions_back(&kn.sh, MIN_BIN_HEIGHT, scale, [(bn, gp[3]), (bn + 1, gp[4])], &mut o[1 + k..1 + 2 * k]);
                // derivatives: ∂d/∂r = sigmoid(r + shift)
                for (i, gd) in [(bn, gp[5]), (bn + 1, gp[6])] {
                    if let Some(j) = derivative_slot(&sp, i) {
                        let z = r[2 * k + j].to_f64() + crate::spline::derivative_shift();
                        let sig = 1.0 / (1.0 + (-z).exp());
                        let slot = &mut o[1 + 2 * k + j];
                        *slot = T::from_f64(slot.to_f64() + gd * sig);
                    }
                }
            });
            Ok((to_storage(out), Shape::from((b, n, width))))
        })
    }
}

/// Whether the fused op [`rq_spline_raw`] serves values on this tensor's device and dtype with
/// this spec (CPU, f32 or f64, K ≤ the configs' limit).
pub fn fused_available(v: &Tensor, sp: &SplineSpec) -> bool {
    v.device().is_cpu() && matches!(v.dtype(), candle_core::DType::F32 | candle_core::DType::F64) && sp.bins < MAX_K1
}

/// The splines of `spec` with parameters `raw` `[B, N, P]` (P = [`SplineSpec::n_params`]) on
/// values `v` `[B, N]` (or their inverses), as one fused CPU op with a hand-written backward
/// pass that reaches the raw parameters: (images, log-derivatives), each `[B, N]`. Equal to
/// building [`crate::spline::Knots`] from `raw` with candle ops and calling
/// [`crate::spline::apply_bins`] (tested, gradients included).
pub fn rq_spline_raw(v: &Tensor, raw: &Tensor, spec: SplineSpec, inverse: bool) -> Result<(Tensor, Tensor)> {
    let out = v.contiguous()?.apply_op2(&raw.contiguous()?, RqSplineRaw { spec, inverse })?;
    Ok((out.narrow(2, 0, 1)?.squeeze(2)?.contiguous()?, out.narrow(2, 1, 1)?.squeeze(2)?.contiguous()?))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use crate::{tensor_from_f64, tensor_to_f64};

    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
    }

    /// The raw-parameter op against knots built with candle ops and the generic bin map, for
    /// every kind of end derivatives, forward and inverse, values and gradients (f64).
    #[test]
    fn fused_raw_spline_matches_the_generic_formulation_with_gradients() {
        use crate::spline::{apply_raw, apply_raw_generic, EndDerivatives, SplineSpec};
        let (b, n) = (4, 9);
        for (ends, lo, hi, outside) in [
            (EndDerivatives::Free, 0.0, 1.0, false),
            (EndDerivatives::Periodic, 0.0, 2.0 * std::f64::consts::PI, false),
            (EndDerivatives::One, -3.0, 3.0, true),
        ] {
            for k in [1usize, 2, 8] {
                let spec = SplineSpec { bins: k, lo, hi, ends, identity_outside: outside };
                if spec.n_params() < 2 * k {
                    continue;
                }
                let mut s = latflow_core::Stream::new(k as u64, 9);
                let raw: Vec<f64> = (0..b * n * spec.n_params()).map(|_| 3.0 * (s.uniform() - 0.5)).collect();
                let span = if outside { 1.4 * (hi - lo) } else { hi - lo };
                let mut v0: Vec<f64> = (0..b * n).map(|_| 0.5 * (lo + hi) + span * (s.uniform() - 0.5)).collect();
                v0[0] = lo;
                v0[1] = hi;
                for inverse in [false, true] {
                    let go = |fused: bool| {
                        let rv = Var::from_tensor(&tensor_from_f64(&raw, (b, n, spec.n_params()), DType::F64, &Device::Cpu).unwrap()).unwrap();
                        let vv = Var::from_tensor(&tensor_from_f64(&v0, (b, n), DType::F64, &Device::Cpu).unwrap()).unwrap();
                        let f = if fused { apply_raw } else { apply_raw_generic };
                        let (img, ld) = f(vv.as_tensor(), rv.as_tensor(), &spec, inverse).unwrap();
                        let loss = img.affine(0.7, 0.0).unwrap().add(&ld.affine(-1.3, 0.0).unwrap()).unwrap().sum_all().unwrap();
                        let g = loss.backward().unwrap();
                        [
                            tensor_to_f64(&img).unwrap(),
                            tensor_to_f64(&ld).unwrap(),
                            tensor_to_f64(g.get(vv.as_tensor()).unwrap()).unwrap(),
                            g.get(rv.as_tensor()).map(|t| tensor_to_f64(t).unwrap()).unwrap_or_else(|| vec![0.0; raw.len()]),
                        ]
                    };
                    let (f, g) = (go(true), go(false));
                    for (j, name) in ["image", "log-derivative", "∂/∂v", "∂/∂raw"].iter().enumerate() {
                        let d = max_rel(&f[j], &g[j]);
                        assert!(d < 1e-10, "{ends:?} K = {k} inverse {inverse}: {name} differs by {d:e}");
                    }
                    if k > 1 {
                        assert!(f[3].iter().any(|x| x.abs() > 1e-3), "{ends:?} K = {k}: raw gradient not exercised");
                    }
                }
            }
        }
    }

    /// The derivative-free evaluation gives the bits of the dual numbers' values.
    #[test]
    fn plain_evaluation_has_the_bits_of_the_dual_values() {
        let mut s = latflow_core::Stream::new(8, 1);
        for _ in 0..100_000 {
            let xk = 4.0 * (s.uniform() - 0.5);
            let yk = 4.0 * (s.uniform() - 0.5);
            let p = [xk, xk + 1e-3 + s.uniform(), yk, yk + 1e-3 + s.uniform(), 1e-3 + 3.0 * s.uniform(), 1e-3 + 3.0 * s.uniform()];
            let x = p[0] + (p[1] - p[0]) * s.uniform();
            let (y, lg) = super::forward_dual(x, &p);
            let (yp, lgp) = super::forward_plain(x, &p);
            assert_eq!((y.v.to_bits(), lg.v.to_bits()), (yp.to_bits(), lgp.to_bits()), "x = {x}, knots {p:?}");
        }
    }

    #[test]
    fn fused_spline_inverts_and_its_log_derivatives_cancel() {
        use crate::spline::{apply_raw, EndDerivatives, SplineSpec};
        let spec = SplineSpec { bins: 8, lo: 0.0, hi: 1.0, ends: EndDerivatives::Free, identity_outside: false };
        let mut s = latflow_core::Stream::new(5, 3);
        let raw: Vec<f64> = (0..27 * spec.n_params()).map(|_| 3.0 * (s.uniform() - 0.5)).collect();
        let v0: Vec<f64> = (0..27).map(|_| s.uniform()).collect();
        let raw = tensor_from_f64(&raw, (3, 9, spec.n_params()), DType::F64, &Device::Cpu).unwrap();
        let v = tensor_from_f64(&v0, (3, 9), DType::F64, &Device::Cpu).unwrap();
        let (y, ld) = apply_raw(&v, &raw, &spec, false).unwrap();
        let (x, ld_inv) = apply_raw(&y, &raw, &spec, true).unwrap();
        assert!(max_rel(&tensor_to_f64(&x).unwrap(), &v0) < 1e-12, "round trip");
        let sum = tensor_to_f64(&ld.add(&ld_inv).unwrap()).unwrap();
        assert!(sum.iter().all(|s| s.abs() < 1e-11), "log-derivatives {sum:?}");
    }
}
