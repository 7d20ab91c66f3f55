//! Fused CPU custom ops of a coupling layer, with hand-written backward passes.
//!
//! The flow's state is one `[B, 2V + 1]` tensor: the 2V link angles in the layout's order
//! (`2·x + μ`) followed by the log-determinant accumulated so far. Each layer is then
//! [`features`] (cos and sin of its frozen plaquettes, the conditioner's input), the
//! conditioner's convolutions (`latflow_flow_common::kernels::conv`), and one update op: the
//! NCP coupling [`ncp_couple`] (forward) or [`ncp_inverse`] (inverse; [`ncp_inverse_tracked`]
//! with a backward pass by implicit differentiation).
//! Three ops per layer plus the convolutions replace some sixty small candle ops, whose
//! per-op overhead dominates at the peer's size (L = 8, batch 64).
//!
//! Every op works configuration by configuration; batches larger than
//! [`latflow_flow_common::kernels::BLOCK`] are split into fixed blocks over the current rayon
//! pool, so results do not depend on the thread count. The ops are tested against the generic
//! formulation (candle ops, autograd) in f64, gradients included.

use std::f64::consts::PI;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Error, Layout, Result, Shape, Tensor};
use latflow_flow_common::dispatch_float;
use latflow_flow_common::kernels::{cpu_slice, to_storage, Real, BLOCK};

use crate::geometry::PLAQ_SIGNS;
use crate::ncp;

/// What the fused ops of one mask need: plaquette link lists and the active links.
#[derive(Debug)]
pub struct OpGeom {
    /// 2V.
    pub n_links: usize,
    /// Link indices of the frozen plaquettes (conditioner input rows, in order).
    pub frozen: Vec<[u32; 4]>,
    /// Link indices of the active plaquettes (in order).
    pub active: Vec<[u32; 4]>,
    /// The active link of each active plaquette.
    pub active_links: Vec<u32>,
    /// σ_μ: the sign of the active link in its plaquette.
    pub sigma: f64,
}

impl OpGeom {
    fn width(&self) -> usize {
        self.n_links + 1
    }
}

#[inline(always)]
fn plaquette<T: Real>(links: &[T], l: &[u32; 4]) -> T {
    links[l[0] as usize] + links[l[1] as usize] - links[l[2] as usize] - links[l[3] as usize]
}

/// x − 2π·round(x/2π) ∈ [−π, π].
#[inline(always)]
fn wrap_pi<T: Real>(x: T) -> T {
    let two_pi = T::from_f64(2.0 * PI);
    x - two_pi * (x * T::from_f64(0.5 / PI)).round()
}

/// x − 2π·⌊x/2π⌋ ∈ [0, 2π].
#[inline(always)]
fn wrap_2pi<T: Real>(x: T) -> T {
    let two_pi = T::from_f64(2.0 * PI);
    x - two_pi * (x * T::from_f64(0.5 / PI)).floor()
}

/// Runs `f(config, out_row)` for every configuration, in fixed blocks in parallel when the
/// batch is larger than one block and the pool has several threads.
fn per_config<T: Real>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    let b = out.len() / width.max(1);
    if b > BLOCK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(BLOCK * width).enumerate().for_each(|(blk, rows)| {
            for (i, row) in rows.chunks_mut(width).enumerate() {
                f(blk * BLOCK + i, row);
            }
        });
    } else {
        for (i, row) in out.chunks_mut(width).enumerate() {
            f(i, row);
        }
    }
}

fn check_state(l: &Layout, g: &OpGeom, what: &str) -> Result<usize> {
    let (b, w) = l.shape().dims2()?;
    if w != g.width() {
        return Err(Error::Msg(format!("flow-u1 {what}: state has {w} columns, expected 2V + 1 = {}", g.width())));
    }
    Ok(b)
}

/// cos P and sin P of the frozen plaquettes: `[B, 2V + 1]` → `[B, N_frozen, 2]`.
struct Features(Arc<OpGeom>);

impl CustomOp1 for Features {
    fn name(&self) -> &'static str {
        "flow-u1-features"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let b = check_state(l, g, "features")?;
        let nf = g.frozen.len();
        dispatch_float!(s, "flow-u1 features", T => {
            let x: &[T] = cpu_slice(s, l)?;
            let mut out = vec![T::default(); b * nf * 2];
            per_config(&mut out, nf * 2, |bi, row| {
                let links = &x[bi * g.width()..(bi + 1) * g.width()];
                for (i, pl) in g.frozen.iter().enumerate() {
                    let p = plaquette(links, pl);
                    row[2 * i] = p.cos();
                    row[2 * i + 1] = p.sin();
                }
            });
            Ok((to_storage(out), Shape::from((b, nf, 2))))
        })
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &FeaturesBack(self.0.clone()))?))
    }
}

/// (state, ∂L/∂features) → ∂L/∂state.
struct FeaturesBack(Arc<OpGeom>);

impl CustomOp2 for FeaturesBack {
    fn name(&self) -> &'static str {
        "flow-u1-features-back"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let b = check_state(l1, g, "features backward")?;
        let nf = g.frozen.len();
        let w = g.width();
        dispatch_float!(s1, "flow-u1 features backward", T => {
            let x: &[T] = cpu_slice(s1, l1)?;
            let gr: &[T] = cpu_slice(s2, l2)?;
            let mut out = vec![T::default(); b * w];
            per_config(&mut out, w, |bi, row| {
                let links = &x[bi * w..(bi + 1) * w];
                let gf = &gr[bi * nf * 2..(bi + 1) * nf * 2];
                for (i, pl) in g.frozen.iter().enumerate() {
                    let p = plaquette(links, pl);
                    let gp = gf[2 * i + 1] * p.cos() - gf[2 * i] * p.sin();
                    for j in 0..4 {
                        row[pl[j] as usize] += T::from_f64(PLAQ_SIGNS[j]) * gp;
                    }
                }
            });
            Ok((to_storage(out), l1.shape().clone()))
        })
    }
}

/// The conditioner's input: cos P and sin P of the frozen plaquettes, `[B, N_frozen, 2]`,
/// from the state `[B, 2V + 1]` (CPU).
pub fn features(state: &Tensor, g: &Arc<OpGeom>) -> Result<Tensor> {
    state.contiguous()?.apply_op1(Features(g.clone()))
}

/// The NCP coupling (forward): (state, raw `[B, N_active, n + 1]`) → state′.
struct NcpCouple {
    g: Arc<OpGeom>,
    n_mix: usize,
}

fn check_raw(l: &Layout, b: usize, g: &OpGeom, n_mix: usize) -> Result<()> {
    let (rb, a, c) = l.shape().dims3()?;
    if rb != b || a != g.active.len() || c != n_mix + 1 {
        return Err(Error::Msg(format!(
            "flow-u1 NCP: conditioner output {:?}, expected [{b}, {}, {}]",
            l.shape(),
            g.active.len(),
            n_mix + 1
        )));
    }
    Ok(())
}

impl CustomOp2 for NcpCouple {
    fn name(&self) -> &'static str {
        "flow-u1-ncp"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let b = check_state(l1, g, "NCP")?;
        check_raw(l2, b, g, self.n_mix)?;
        let (w, n, na) = (g.width(), self.n_mix, g.active.len());
        dispatch_float!(s1, "flow-u1 NCP", T => {
            let x: &[T] = cpu_slice(s1, l1)?;
            let raw: &[T] = cpu_slice(s2, l2)?;
            let mut out = x.to_vec();
            let sigma = T::from_f64(g.sigma);
            per_config(&mut out, w, |bi, row| {
                let links = &x[bi * w..(bi + 1) * w];
                let r = &raw[bi * na * (n + 1)..(bi + 1) * na * (n + 1)];
                let mut ld = T::default();
                let mut update = |a: usize, p_w: T, h: T, log_dh: T| {
                    let delta = h + r[a * (n + 1) + n] - p_w;
                    let l = g.active_links[a] as usize;
                    row[l] = wrap_2pi(links[l] + sigma * delta);
                    ld += log_dh;
                };
                // eight plaquettes at a time in f32 with AVX2 (the same formulas, vectorised)
                let mut a0 = 0;
                #[cfg(target_arch = "x86_64")]
                if let (true, Some(rf)) =
                    (latflow_flow_common::kernels::simd_kernels(), latflow_flow_common::kernels::as_f32(r))
                {
                    while a0 + 8 <= na {
                        let mut p_w = [0f32; 8];
                        for (j, p) in p_w.iter_mut().enumerate() {
                            *p = wrap_pi(plaquette(links, &g.active[a0 + j])).to_f64() as f32;
                        }
                        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                        let Some((h, log_dh)) = (unsafe { ncp::eval8(&p_w, &rf[a0 * (n + 1)..], n) }) else {
                            break;
                        };
                        for j in 0..8 {
                            let f = |v: f32| T::from_f64(v as f64);
                            update(a0 + j, f(p_w[j]), f(h[j]), f(log_dh[j]));
                        }
                        a0 += 8;
                    }
                }
                for (a, pl) in g.active.iter().enumerate().skip(a0) {
                    let p_w = wrap_pi(plaquette(links, pl));
                    let (h, log_dh) = ncp::eval(p_w, &r[a * (n + 1)..a * (n + 1) + n]);
                    update(a, p_w, h, log_dh);
                }
                row[w - 1] += ld;
            });
            Ok((to_storage(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        state: &Tensor,
        raw: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = NcpBack { g: self.g.clone(), n_mix: self.n_mix };
        split_backward(state, raw, grad, &op, self.g.active.len(), self.n_mix)
    }
}

/// Runs a coupling layer's backward op `back` ((state, raw, ∂L/∂output) → [∂L/∂state | ∂L/∂raw]
/// packed as `[B, 2V + 1 + N_active·(n + 1)]`) and unpacks it for the inputs that need it.
fn split_backward(
    state: &Tensor,
    raw: &Tensor,
    grad: &Tensor,
    back: &impl CustomOp3,
    n_active: usize,
    n_mix: usize,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let both = state.contiguous()?.apply_op3_no_bwd(&raw.contiguous()?, &grad.contiguous()?, back)?;
    let (b, w) = state.dims2()?;
    let gs = if state.track_op() { Some(both.narrow(1, 0, w)?) } else { None };
    let gr = if raw.track_op() {
        Some(both.narrow(1, w, n_active * (n_mix + 1))?.reshape((b, n_active, n_mix + 1))?)
    } else {
        None
    };
    Ok((gs, gr))
}

/// (state, raw, ∂L/∂state′) → [∂L/∂state | ∂L/∂raw] as `[B, 2V + 1 + N_active·(n + 1)]`.
struct NcpBack {
    g: Arc<OpGeom>,
    n_mix: usize,
}

impl CustomOp3 for NcpBack {
    fn name(&self) -> &'static str {
        "flow-u1-ncp-back"
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
        let g = &self.g;
        let b = check_state(l1, g, "NCP backward")?;
        check_raw(l2, b, g, self.n_mix)?;
        let (w, n, na) = (g.width(), self.n_mix, g.active.len());
        let ow = w + na * (n + 1);
        dispatch_float!(s1, "flow-u1 NCP backward", T => {
            let x: &[T] = cpu_slice(s1, l1)?;
            let raw: &[T] = cpu_slice(s2, l2)?;
            let gr: &[T] = cpu_slice(s3, l3)?;
            let mut out = vec![T::default(); b * ow];
            let sigma = T::from_f64(g.sigma);
            per_config(&mut out, ow, |bi, row| {
                let links = &x[bi * w..(bi + 1) * w];
                let r = &raw[bi * na * (n + 1)..(bi + 1) * na * (n + 1)];
                let go = &gr[bi * w..(bi + 1) * w];
                let (gs, graw) = row.split_at_mut(w);
                gs.copy_from_slice(go);
                let g_ld = go[w - 1];
                for (a, pl) in g.active.iter().enumerate() {
                    let p_w = wrap_pi(plaquette(links, pl));
                    let ra = &r[a * (n + 1)..(a + 1) * (n + 1)];
                    let g_delta = sigma * go[g.active_links[a] as usize];
                    let gp = ncp::backward(p_w, &ra[..n], g_delta, g_ld, &mut graw[a * (n + 1)..(a + 1) * (n + 1)]);
                    for j in 0..4 {
                        gs[pl[j] as usize] += T::from_f64(PLAQ_SIGNS[j]) * gp;
                    }
                }
            });
            Ok((to_storage(out), Shape::from((b, ow))))
        })
    }
}

/// One NCP coupling layer on the state (CPU): every active link θ gets θ + σ(H(P) − P), wrapped
/// into [0, 2π), and the last column gains Σ_active ln H′(P). `raw` is the conditioner's output
/// `[B, N_active, n_mix + 1]` (s_1 … s_n, t).
pub fn ncp_couple(state: &Tensor, raw: &Tensor, g: &Arc<OpGeom>, n_mix: usize) -> Result<Tensor> {
    state.contiguous()?.apply_op2(&raw.contiguous()?, NcpCouple { g: g.clone(), n_mix })
}

/// The inverse NCP coupling. Its backward pass differentiates the solution implicitly (see
/// [`NcpInverseBack`]); [`ncp_inverse`] applies it without one.
struct NcpInverse {
    g: Arc<OpGeom>,
    n_mix: usize,
}

impl CustomOp2 for NcpInverse {
    fn name(&self) -> &'static str {
        "flow-u1-ncp-inverse"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let b = check_state(l1, g, "NCP inverse")?;
        check_raw(l2, b, g, self.n_mix)?;
        let (w, n, na) = (g.width(), self.n_mix, g.active.len());
        dispatch_float!(s1, "flow-u1 NCP inverse", T => {
            let x: &[T] = cpu_slice(s1, l1)?;
            let raw: &[T] = cpu_slice(s2, l2)?;
            let mut out = x.to_vec();
            per_config(&mut out, w, |bi, row| {
                let links = &x[bi * w..(bi + 1) * w];
                let r = &raw[bi * na * (n + 1)..(bi + 1) * na * (n + 1)];
                let mut s = [0.0f64; ncp::MAX_N_MIX];
                let mut ld = 0.0f64;
                for (a, pl) in g.active.iter().enumerate() {
                    let ra = &r[a * (n + 1)..(a + 1) * (n + 1)];
                    for k in 0..n {
                        s[k] = ra[k].to_f64();
                    }
                    let lk: [f64; 4] = std::array::from_fn(|j| links[pl[j] as usize].to_f64());
                    let p_new = crate::geometry::wrap_pi(lk[0] + lk[1] - lk[2] - lk[3]);
                    let y = crate::geometry::wrap_pi(p_new - ra[n].to_f64());
                    let (u, log_dh) = ncp::solve(y, &s[..n]);
                    let l = g.active_links[a] as usize;
                    row[l] = T::from_f64(crate::geometry::wrap_2pi(links[l].to_f64() + g.sigma * (u - p_new)));
                    ld -= log_dh;
                }
                row[w - 1] = T::from_f64(links[w - 1].to_f64() + ld);
            });
            Ok((to_storage(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        state: &Tensor,
        raw: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = NcpInverseBack { g: self.g.clone(), n_mix: self.n_mix };
        split_backward(state, raw, grad, &op, self.g.active.len(), self.n_mix)
    }
}

/// The inverse layer's backward pass: (state θ′, raw, ∂L/∂output) → [∂L/∂state | ∂L/∂raw] as
/// `[B, 2V + 1 + N_active·(n + 1)]`. Per active plaquette the solution u of H(u) = P′ (P′ the
/// plaquette of θ′, H including the rotation t) is found again by [`ncp::solve`]; the output
/// link is θ′_l + σ(u − P′) and the log-det column gains −ln H′(u). Implicitly, ∂u/∂P′ = 1/H′,
/// ∂u/∂s_k = −(∂H/∂s_k)/H′, ∂u/∂t = −1/H′, so with G_l, G_ld the output gradients
///
/// ```text
/// ∂L/∂u = σ G_l − G_ld ∂ln H′/∂u,      ∂L/∂P′ = −σ G_l + ∂L/∂u / H′
/// ∂L/∂(s_k, t) = [−∂L/∂u / H′] ∂H/∂(s_k, t) − G_ld ∂ln H′/∂(s_k, t)
/// ```
///
/// (the last line is [`ncp::backward`] with g_δ = −∂L/∂u / H′ and g_ld = −G_ld); every column
/// passes its own gradient through, and ∂L/∂P′ reaches the plaquette's four links.
struct NcpInverseBack {
    g: Arc<OpGeom>,
    n_mix: usize,
}

impl CustomOp3 for NcpInverseBack {
    fn name(&self) -> &'static str {
        "flow-u1-ncp-inverse-back"
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
        let g = &self.g;
        let b = check_state(l1, g, "NCP inverse backward")?;
        check_raw(l2, b, g, self.n_mix)?;
        let (w, n, na) = (g.width(), self.n_mix, g.active.len());
        let ow = w + na * (n + 1);
        dispatch_float!(s1, "flow-u1 NCP inverse backward", T => {
            let x: &[T] = cpu_slice(s1, l1)?;
            let raw: &[T] = cpu_slice(s2, l2)?;
            let gr: &[T] = cpu_slice(s3, l3)?;
            let mut out = vec![T::default(); b * ow];
            per_config(&mut out, ow, |bi, row| {
                let links = &x[bi * w..(bi + 1) * w];
                let r = &raw[bi * na * (n + 1)..(bi + 1) * na * (n + 1)];
                let go = &gr[bi * w..(bi + 1) * w];
                let (gs, graw) = row.split_at_mut(w);
                gs.copy_from_slice(go);
                let g_ld = go[w - 1].to_f64();
                let mut s = [0.0f64; ncp::MAX_N_MIX];
                let mut g_raw = [0.0f64; ncp::MAX_N_MIX + 1];
                for (a, pl) in g.active.iter().enumerate() {
                    let ra = &r[a * (n + 1)..(a + 1) * (n + 1)];
                    for k in 0..n {
                        s[k] = ra[k].to_f64();
                    }
                    let lk: [f64; 4] = std::array::from_fn(|j| links[pl[j] as usize].to_f64());
                    let p_new = crate::geometry::wrap_pi(lk[0] + lk[1] - lk[2] - lk[3]);
                    let y = crate::geometry::wrap_pi(p_new - ra[n].to_f64());
                    let (u, log_dh) = ncp::solve(y, &s[..n]);
                    let dh = log_dh.exp();
                    let dlog_du = ncp::backward(u, &s[..n], 0.0, 1.0, &mut g_raw[..n + 1]);
                    let g_l = go[g.active_links[a] as usize].to_f64();
                    let g_u = g.sigma * g_l - g_ld * dlog_du;
                    ncp::backward(u, &s[..n], -g_u / dh, -g_ld, &mut g_raw[..n + 1]);
                    for (o, v) in graw[a * (n + 1)..(a + 1) * (n + 1)].iter_mut().zip(&g_raw[..n + 1]) {
                        *o = T::from_f64(*v);
                    }
                    let g_p = -g.sigma * g_l + g_u / dh;
                    for j in 0..4 {
                        let c = &mut gs[pl[j] as usize];
                        *c = T::from_f64(c.to_f64() + PLAQ_SIGNS[j] * g_p);
                    }
                }
            });
            Ok((to_storage(out), Shape::from((b, ow))))
        })
    }
}

/// One inverse NCP coupling layer (CPU, no gradient): the active links are solved for (see
/// [`ncp::solve`]) and the last column gains −Σ_active ln H′ at the solutions (log J⁻¹).
pub fn ncp_inverse(state: &Tensor, raw: &Tensor, g: &Arc<OpGeom>, n_mix: usize) -> Result<Tensor> {
    state.contiguous()?.apply_op2_no_bwd(&raw.contiguous()?, &NcpInverse { g: g.clone(), n_mix })
}

/// [`ncp_inverse`] with its backward pass (implicit differentiation, [`NcpInverseBack`]): the
/// same values, and gradients with respect to the state and the conditioner output.
pub fn ncp_inverse_tracked(state: &Tensor, raw: &Tensor, g: &Arc<OpGeom>, n_mix: usize) -> Result<Tensor> {
    state.contiguous()?.apply_op2(&raw.contiguous()?, NcpInverse { g: g.clone(), n_mix })
}
