//! latflow model plugin `flow-scalar`: an affine- or spline-coupling normalizing flow for real
//! scalar fields on periodic lattices of any dimension, written with candle.
//!
//! The architecture is that of Albergo, Kanwar and Shanahan (arXiv 2101.08176) and of the
//! PyTorch peer `benches/peers/phi4_flow.py`: a prior (N(0, 1) per site, or optionally the free
//! field), then `layers` affine coupling layers with checkerboard masks of alternating parity
//! (layer ℓ updates the sites with Σ coords ≡ ℓ mod 2 — the peer's `mask = checker(ℓ % 2)` is 0
//! there), each conditioned by a small CNN of periodic convolutions whose last output is
//! (s, t) through tanh: `x' = frozen + (1 − m)(x e^s + t)`, `log J = Σ (1 − m) s`. See
//! [`flow`] for the layers, [`geometry`] for the periodic convolution as a gather and
//! [`prior`] for the base distributions.
//!
//! `[model]` keys (all optional): `layers` (16), `hidden` ([8, 8]), `kernel` (3, odd, ≤ the
//! smallest extent), `activation` ("leaky_relu" | "tanh" | "relu" | "gelu"), `dtype` ("f32" |
//! "f64"), `device` ("cpu" | "cuda", the latter with the `cuda` feature), `prior` ("normal" |
//! "free", the latter with `prior_m2` > 0), `init_seed` (0), `coupling` ("affine" | "spline":
//! rational-quadratic splines, [`spline`]), `spline_bins` (8) and `spline_bound` (4.0) with
//! splines only, `z2` ("none" | "symmetrize" | "mixture" | "equivariant", the last for affine couplings only;
//! "mixture" also trains the symmetrised density).
//!
//! Precision: the flow runs in `dtype`. Prior deviates are drawn in f64 (in a fixed order from
//! the caller's stream: all n·V normals, configuration by configuration in site order, then, with
//! `z2 = "symmetrize"` or `"mixture"`, n uniforms) and rounded to the dtype; log q₀ is computed in f64 from
//! them; the log-determinants are summed in the dtype per layer and across layers, then
//! converted to f64 and subtracted. In f32, log q is therefore good to about 1e-7 relative to
//! Σ|s| (measured at the peer's setup with initial weights: |Δ log J| ≤ 1.4e-6 and |Δφ| ≤ 8e-7
//! against the same model in f64), and the configurations are f32 values in f64.
//!
//! Speed: on the CPU the conditioners run as fused candle custom ops with hand-written
//! backward passes ([`kernels`]: latflow-flow-common's direct gather convolution with the
//! activation fused, AVX2+FMA when the CPU has them, and the affine update); elsewhere (CUDA) the
//! generic formulation ([`flow`]: a column gather as im2col + matmul, whose backward candle derives)
//! runs. Both compute the same function (tested
//! to 1e-12 in f64, gradients included).
//!
//! Threads: `set_threads(n)` gives the model its own rayon pool of n threads and runs every call
//! inside it (0: the global pool, sized by `RAYON_NUM_THREADS`). The kernels split a batch into
//! fixed blocks of 16 configurations and add block sums in order, so results do not depend on
//! the thread count (tested). Bits can differ between CPUs with and without FMA.

pub mod config;
pub mod flow;
pub mod geometry;
pub mod kernels;
pub mod prior;
pub mod spline;

/// Safetensors weights with latflow metadata (latflow-flow-common's); `latflow.plugin` is [`NAME`].
pub use latflow_flow_common::io;
/// Adam(W), learning-rate schedules, clipping and settings validation (latflow-flow-common's).
pub use latflow_flow_common::optim;

#[cfg(test)]
use abi_stable::std_types::RSlice;
use candle_core::{DType, Tensor};
#[cfg(doc)]
use latflow_core::abi::Model;
use latflow_core::abi::{batch_len, check_finite, PluginError, TrainGradient, TrainMetrics, TrainSettings};
use latflow_core::layout::FieldLayout;
use latflow_core::Stream;
use latflow_flow_common::model::{map_chunks, ModelState, TrainBatch};

use crate::config::{ModelConfig, Z2};
use crate::flow::{tensor_from_f64, tensor_to_f64, Flow};

/// The plugin's name in run cards.
pub const NAME: &str = "flow-scalar";

/// Configurations per internal batch in `sample` and `log_prob` (bounds memory).
pub const CHUNK: usize = 1024;

const LN_2: f64 = std::f64::consts::LN_2;

use latflow_flow_common::tensor::candle_error as ce;

/// The flow-scalar model object. Its training batch holds φ `[n, V]` in checkerboard order.
pub struct FlowScalar {
    cfg: ModelConfig,
    layout: FieldLayout,
    flow: Flow,
    state: ModelState,
}

/// log(e^a + e^b), symmetric in a and b to the last bit.
fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// log q_sym = log ½(q(φ) + q(−φ)) of the Z₂ mixture from a = log q(φ) and b = log q(−φ).
fn log_mixture(a: f64, b: f64) -> f64 {
    log_add_exp(a, b) - LN_2
}

/// [`log_mixture`] elementwise and differentiable: max + log(e^{a − max} + e^{b − max}) − ln 2
/// with the maximum detached (its gradient cancels).
fn log_mixture_tensor(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let m = a.maximum(b)?.detach();
    let sum = a.broadcast_sub(&m)?.exp()?.add(&b.broadcast_sub(&m)?.exp()?)?;
    m.add(&sum.log()?)?.affine(1.0, -LN_2)
}

impl FlowScalar {
    /// Builds the model for `layout` from the `[model]` section as JSON.
    pub fn from_json(json: &str, layout: &FieldLayout) -> Result<Self, PluginError> {
        let (cfg, _lattice) = config::parse(json, layout)?;
        let flow = Flow::new(&cfg.arch, &cfg.device.device(NAME)?, cfg.init_seed).map_err(ce)?;
        let state = ModelState::new(&flow.net);
        Ok(Self { cfg, layout: layout.clone(), flow, state })
    }

    /// Number of sites V.
    pub fn volume(&self) -> usize {
        self.flow.volume()
    }

    /// Access to the flow (for tests and benchmarks inside this crate).
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// n configurations of V reals as a `[n, V]` tensor in the model's dtype and device.
    fn tensor(&self, values: &[f64], n: usize) -> candle_core::Result<Tensor> {
        tensor_from_f64(values, (n, self.volume()), self.flow.net.dtype, &self.flow.net.device)
    }

    /// The flow itself (no prior, no symmetrisation): prior-space points `z` (n × V, site order)
    /// → (φ, log|det ∂φ/∂z|) per configuration, computed in the model's dtype.
    pub fn push_forward(&self, z: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let v = self.volume();
        let n = batch_len(z.len(), v)?;
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            let zt = self.tensor(&self.flow.geom.to_checkerboard(z), n).map_err(ce)?;
            let (phi, ld) = self.flow.forward(&zt, &params).map_err(ce)?;
            Ok((self.flow.geom.to_sites(&tensor_to_f64(&phi).map_err(ce)?), tensor_to_f64(&ld).map_err(ce)?))
        })
    }

    /// The inverse flow: φ (n × V, site order) → (z, log|det ∂z/∂φ|).
    pub fn pull_back(&self, phi: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let v = self.volume();
        let n = batch_len(phi.len(), v)?;
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            let pt = self.tensor(&self.flow.geom.to_checkerboard(phi), n).map_err(ce)?;
            let (z, ld) = self.flow.inverse(&pt, &params).map_err(ce)?;
            Ok((self.flow.geom.to_sites(&tensor_to_f64(&z).map_err(ce)?), tensor_to_f64(&ld).map_err(ce)?))
        })
    }

    /// log q of the unsymmetrised flow for a batch tensor in checkerboard order (inverse pass).
    fn log_prob_cb(&self, phi: &Tensor, params: &[Tensor]) -> candle_core::Result<Vec<f64>> {
        let (z, ld) = self.flow.inverse(phi, params)?;
        self.flow.log_q_host(&z, &ld)
    }

    /// Whether log q and sampling are those of the Z₂ mixture ½(q(φ) + q(−φ)).
    fn symmetrised(&self) -> bool {
        matches!(self.cfg.arch.z2, Z2::Symmetrize | Z2::Mixture)
    }

    fn draw_eps(&self, n: usize, rng: &mut Stream) -> Vec<f64> {
        let mut eps = vec![0.0; n * self.volume()];
        rng.fill_normal(&mut eps);
        self.flow.geom.to_checkerboard(&eps)
    }

    /// `n` proposals and their log q; advances `rng`.
    pub fn sample_with(&self, n: usize, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let v = self.volume();
        let eps = self.draw_eps(n, rng);
        let z2 = self.symmetrised();
        let flips: Vec<bool> = if z2 { (0..n).map(|_| rng.uniform() < 0.5).collect() } else { Vec::new() };
        let (mut configs, logq) = self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            map_chunks(&eps, CHUNK * v, |chunk| {
                let (phi, mut lq) = self.forward_cb(chunk, &params)?;
                if z2 {
                    let lq_neg = self.log_prob_cb(&phi.neg().map_err(ce)?, &params).map_err(ce)?;
                    for (a, b) in lq.iter_mut().zip(&lq_neg) {
                        *a = log_mixture(*a, *b);
                    }
                }
                Ok((self.flow.geom.to_sites(&tensor_to_f64(&phi).map_err(ce)?), lq))
            })
        })?;
        for (cfg, &flip) in configs.chunks_mut(v).zip(&flips) {
            if flip {
                cfg.iter_mut().for_each(|x| *x = -*x);
            }
        }
        Ok((configs, logq))
    }

    /// Prior deviates ε (checkerboard order) of a chunk → (φ `[n, V]`, log q(φ) = log q₀ − log J).
    fn forward_cb(&self, eps: &[f64], params: &[Tensor]) -> Result<(Tensor, Vec<f64>), PluginError> {
        let (z, lq0) = self.flow.prior.draw(eps, self.flow.net.dtype, &self.flow.net.device).map_err(ce)?;
        let (phi, ld) = self.flow.forward(&z, params).map_err(ce)?;
        let ld = tensor_to_f64(&ld).map_err(ce)?;
        Ok((phi, lq0.iter().zip(&ld).map(|(a, b)| a - b).collect()))
    }

    /// log q of each configuration of a batch (site order).
    pub fn log_prob_vec(&self, configs: &[f64]) -> Result<Vec<f64>, PluginError> {
        let v = self.volume();
        batch_len(configs.len(), v)?;
        check_finite("configuration", configs)?;
        let cb = self.flow.geom.to_checkerboard(configs);
        let z2 = self.symmetrised();
        let (_, out) = self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            map_chunks(&cb, CHUNK * v, |chunk| {
                let t = self.tensor(chunk, chunk.len() / v).map_err(ce)?;
                let mut lq = self.log_prob_cb(&t, &params).map_err(ce)?;
                if z2 {
                    let lq_neg = self.log_prob_cb(&t.neg().map_err(ce)?, &params).map_err(ce)?;
                    for (a, b) in lq.iter_mut().zip(&lq_neg) {
                        *a = log_mixture(*a, *b);
                    }
                }
                Ok((Vec::new(), lq))
            })
        })?;
        Ok(out)
    }

    /// The latent map of flow-assisted replica swaps ([`Model::to_latent`]): φ (n × V, site
    /// order) → (ε, log q(φ)), where ε is the standard-normal latent point (site order) with
    /// φ = F(ε). F is the prior's whitening map followed by the flow: ε itself for the normal
    /// prior, z = P^{−1/2} ε for the free-field prior. So every flow-scalar model shares the latent
    /// density N(0, 1), whatever its prior, and F_b ∘ F_a⁻¹ is a bijection between any two of
    /// them. With `z2 = "symmetrize"` the bijection is the unsymmetrised flow, and log q is its
    /// density (consistently with [`FlowScalar::from_latent_with`]).
    pub fn to_latent_with(&self, configs: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let v = self.volume();
        batch_len(configs.len(), v)?;
        check_finite("configuration", configs)?;
        let cb = self.flow.geom.to_checkerboard(configs);
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            map_chunks(&cb, CHUNK * v, |chunk| {
                let t = self.tensor(chunk, chunk.len() / v).map_err(ce)?;
                let (z, ld) = self.flow.inverse(&t, &params).map_err(ce)?;
                let z = tensor_to_f64(&z).map_err(ce)?;
                let lq0 = self.flow.prior.log_prob_host(&z);
                let ld = tensor_to_f64(&ld).map_err(ce)?;
                let lq = lq0.iter().zip(&ld).map(|(a, b)| a + b).collect();
                Ok((self.flow.geom.to_sites(&self.whiten(&z)?), lq))
            })
        })
    }

    /// The inverse of [`FlowScalar::to_latent_with`] ([`Model::from_latent`]): standard-normal
    /// latent points ε (n × V, site order) → (φ, log q(φ)), computed exactly as `sample` computes
    /// a proposal from its normal deviates (without the Z₂ flip).
    pub fn from_latent_with(&self, latent: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let v = self.volume();
        batch_len(latent.len(), v)?;
        check_finite("latent point", latent)?;
        let eps = self.flow.geom.to_checkerboard(latent);
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            map_chunks(&eps, CHUNK * v, |chunk| {
                let (phi, lq) = self.forward_cb(chunk, &params)?;
                Ok((self.flow.geom.to_sites(&tensor_to_f64(&phi).map_err(ce)?), lq))
            })
        })
    }

    /// Prior space → standard-normal latent space, n × V in checkerboard order: the identity for
    /// the normal prior; ε = P^{1/2} z = P (P^{−1/2} z) for the free-field prior, with
    /// P = 2K, (K w)(x) = (2d + m²) w(x) − Σ_μ [w(x + μ̂) + w(x − μ̂)] (in f64).
    fn whiten(&self, z: &[f64]) -> Result<Vec<f64>, PluginError> {
        let f = match &self.flow.prior {
            prior::Prior::Normal { .. } => return Ok(z.to_vec()),
            prior::Prior::Free(f) => f,
        };
        let v = self.volume();
        let d = self.flow.geom.lattice.dim();
        // P^{−1/2} z: the prior's draw applies its square-root covariance to "deviates"
        let (w, _) = self.flow.prior.draw(z, DType::F64, &self.flow.net.device).map_err(ce)?;
        let w = tensor_to_f64(&w).map_err(ce)?;
        let fwd = self.flow.geom.fwd_positions();
        let mut bwd = vec![0usize; fwd.len()];
        for i in 0..v {
            for mu in 0..d {
                bwd[fwd[i * d + mu] as usize * d + mu] = i;
            }
        }
        let diag = 2.0 * d as f64 + f.m2;
        let mut eps = vec![0.0; w.len()];
        for (e, c) in eps.chunks_mut(v).zip(w.chunks(v)) {
            for i in 0..v {
                let nb: f64 = (0..d).map(|mu| c[fwd[i * d + mu] as usize] + c[bwd[i * d + mu]]).sum();
                e[i] = 2.0 * (diag * c[i] - nb);
            }
        }
        Ok(eps)
    }

    /// Sets up training (validated settings). The optimiser's moments and step count live in
    /// the model and are kept across calls (and restored by `load`); `init_from` resets them.
    pub fn train_begin_with(&mut self, settings: &TrainSettings) -> Result<(), PluginError> {
        self.state.begin(settings)
    }

    /// Draws a training batch and keeps its graph. The configurations are the flow's own, never
    /// sign-flipped; log q is the unsymmetrised flow's, except with `z2 = "mixture"`, where it is
    /// log q_sym (whose expectation over q equals that over q_sym, S and q_sym being even).
    pub fn train_sample_with(&mut self, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let n = self.state.batch_size()?;
        let eps = self.draw_eps(n, rng);
        let mixture = self.cfg.arch.z2 == Z2::Mixture;
        let (flow, net) = (&self.flow, &self.flow.net);
        let pending = self.state.workers.install(|| -> candle_core::Result<TrainBatch> {
            let params = flow.params(true)?;
            let (z, lq0) = flow.prior.draw(&eps, net.dtype, &net.device)?;
            let (phi, ld) = flow.forward(&z, &params)?;
            let ld_host = tensor_to_f64(&ld)?;
            let mut logq_host: Vec<f64> = lq0.iter().zip(&ld_host).map(|(a, b)| a - b).collect();
            let mut logq = tensor_from_f64(&lq0, n, net.dtype, &net.device)?.sub(&ld)?;
            if mixture {
                // log q(−φ) through an inverse pass that keeps the graph (weights and φ)
                let (z_neg, ld_neg) = flow.inverse(&phi.neg()?, &params)?;
                let logq_neg = flow.prior.log_prob_tensor(&z_neg)?.add(&ld_neg)?;
                logq = log_mixture_tensor(&logq, &logq_neg)?;
                for (a, b) in logq_host.iter_mut().zip(&flow.log_q_host(&z_neg, &ld_neg)?) {
                    *a = log_mixture(*a, *b);
                }
            }
            Ok(TrainBatch { x: phi, logq, logq_host, n })
        });
        let pending = pending.map_err(ce)?;
        let phi_host = self.state.workers.install(|| tensor_to_f64(&pending.x)).map_err(ce)?;
        let configs = self.flow.geom.to_sites(&phi_host);
        let logq = pending.logq_host.clone();
        self.state.pending = Some(pending);
        Ok((configs, logq))
    }

    /// One optimiser step from S and ∂S/∂φ of the last training batch: [`Self::train_gradient_with`]
    /// then [`Self::train_apply_with`].
    pub fn train_step_with(&mut self, actions: &[f64], grad: &[f64]) -> Result<TrainMetrics, PluginError> {
        let g = self.train_gradient_with(actions, grad)?;
        self.train_apply_with(&g.gradient, g.loss)
    }

    /// The flattened parameter gradient and the loss of the last training batch (nothing applied).
    pub fn train_gradient_with(&mut self, actions: &[f64], grad: &[f64]) -> Result<TrainGradient, PluginError> {
        let (settings, pending, loss) = self.state.take_batch(actions, grad, self.volume(), "reals")?;
        let g_cb = self.flow.geom.to_checkerboard(grad);
        let grads = self
            .state
            .workers
            .install(|| self.batch_gradients(&pending, &g_cb, settings.path_gradients))
            .map_err(ce)?;
        Ok(TrainGradient { gradient: grads.concat().into(), loss })
    }

    /// One optimiser step with a flattened gradient.
    pub fn train_apply_with(&mut self, gradient: &[f64], loss: f64) -> Result<TrainMetrics, PluginError> {
        self.state.apply_flat(&self.flow.net, gradient, loss)
    }

    /// The parameter gradients of the surrogate loss of a pending batch, given ∂S/∂φ in
    /// checkerboard order: mean(log q + Σ φ·g) (reparameterised), or with `path`,
    /// mean(Σ φ·stopgrad(g + ∂_φ log q_θ(φ))) with θ fixed in the score (Vaitl et al. 2022).
    fn batch_gradients(&self, pending: &TrainBatch, g_cb: &[f64], path: bool) -> candle_core::Result<Vec<Vec<f64>>> {
        let flow = &self.flow;
        let g = self.tensor(g_cb, pending.n)?;
        // ∂/∂φ log q_θ(φ) at fixed θ: an inverse pass with detached weights on a leaf copy of φ
        // (two with `z2 = "mixture"`, whose score is that of log q_sym: the path gradient of the
        // mixture's reverse KL, taken at the unflipped sample, to which a flipped one contributes
        // the same since S and q_sym are even)
        let mixture = self.cfg.arch.z2 == Z2::Mixture;
        let log_q = |x: &Tensor| {
            let params = flow.params(false)?;
            let one = |x: &Tensor| {
                let (z, ld_inv) = flow.inverse(x, &params)?;
                flow.prior.log_prob_tensor(&z)?.add(&ld_inv)
            };
            if mixture {
                log_mixture_tensor(&one(x)?, &one(&x.neg()?)?)
            } else {
                one(x)
            }
        };
        let surrogate = pending.surrogate(&g, if path { Some(&log_q) } else { None })?;
        flow.net.gradients(&surrogate.backward()?)
    }

    /// Loads weights saved by a model of the same architecture (and Adam's state, if saved;
    /// otherwise the optimiser restarts from zero moments). Nothing changes on error.
    pub fn load_bytes(&mut self, bytes: &[u8]) -> Result<(), PluginError> {
        let file = io::parse(bytes)?;
        let ours = serde_json::to_value(&self.cfg.arch).expect("architecture serialises");
        let theirs = file.metadata.get(io::KEY_ARCH).and_then(|a| serde_json::from_str(a).ok());
        let ignore = config::load_ignores(theirs.as_ref().unwrap_or(&serde_json::Value::Null), &ours);
        io::check_architecture(&file, "weights", NAME, &ours, ignore)?;
        self.state.load(&self.flow.net, &file)
    }

    /// Transfer: copies every tensor of the file whose name and shape match a parameter
    /// (converting F32/F64 to the model's dtype), ignoring the architecture metadata, and resets
    /// the optimiser. Errors if nothing matches.
    pub fn init_from_bytes(&mut self, bytes: &[u8]) -> Result<usize, PluginError> {
        let file = io::parse(bytes)?;
        let vars = &self.flow.net.vars;
        let mut params = self.flow.net.values()?;
        let mut matched = 0;
        for (nv, p) in vars.iter().zip(params.iter_mut()) {
            if let Some(t) = file.tensors.get(&nv.name).filter(|t| t.shape == nv.var.dims()) {
                p.clone_from(&t.values);
                matched += 1;
            }
        }
        if matched == 0 {
            let mut names: Vec<_> = file.tensors.iter().map(|(n, t)| format!("'{n}' {:?}", t.shape)).collect();
            names.sort();
            names.truncate(3);
            return Err(PluginError::config(format!(
                "init_from: no tensor of the file matches this model by name and shape (the file has {} tensors{}{}; \
                 this model expects e.g. '{}' {:?})",
                file.tensors.len(),
                if names.is_empty() { "" } else { ", e.g. " },
                names.join(", "),
                vars[0].name,
                vars[0].var.dims()
            )));
        }
        self.state.restart(&self.flow.net, &params)?;
        Ok(matched)
    }
}

latflow_flow_common::impl_flow_accessors!(FlowScalar, NAME, config::Architecture);
latflow_flow_common::impl_flow_model!(FlowScalar, NAME);

latflow_flow_common::export_flow_plugin!(
    FlowScalar,
    NAME,
    "affine- or rational-quadratic-spline-coupling normalizing flow (checkerboard masks, periodic CNNs) for real scalar fields, candle",
    keys: "layers hidden kernel activation dtype device prior prior_m2 init_seed coupling spline_bins spline_bound z2",
    layouts: "one Real per Site, any dimension, even extents",
);

#[cfg(test)]
mod tests;

/// The latent maps of flow-assisted replica swaps (`to_latent`, `from_latent`).
#[cfg(test)]
mod latent_tests {
    use super::*;
    use latflow_core::layout::{ElementKind, Support};
    use latflow_core::ErrorKind;

    fn model(json: &str) -> FlowScalar {
        let layout = FieldLayout::single(&[4, 4], "phi", Support::Site, ElementKind::Real);
        FlowScalar::from_json(json, &layout).unwrap()
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// F(F⁻¹(φ)) = φ, log q agrees with `log_prob` and between the two directions, and the
    /// latent point of a sample is the standard-normal deviate it was drawn from — for both
    /// priors (so the free prior's whitening is exact), in f64.
    #[test]
    fn latent_round_trip_and_log_q() {
        for json in [r#"{"dtype":"f64","layers":4}"#, r#"{"dtype":"f64","layers":4,"prior":"free","prior_m2":1.5}"#] {
            let m = model(json);
            let mut rng = Stream::new(5, 1);
            let (phi, lq) = m.sample_with(7, &mut rng).unwrap();
            let mut again = Stream::new(5, 1);
            let mut eps = vec![0.0; 7 * 16];
            again.fill_normal(&mut eps);
            let (z, lq_inv) = m.to_latent_with(&phi).unwrap();
            assert!(max_abs_diff(&z, &eps) < 1e-10, "{json}: latent of a sample is its deviate");
            assert!(max_abs_diff(&lq_inv, &lq) < 1e-10, "{json}: log q from to_latent");
            assert!(max_abs_diff(&lq_inv, &m.log_prob_vec(&phi).unwrap()) < 1e-10, "{json}: log q vs log_prob");
            let (back, lq_fwd) = m.from_latent_with(&z).unwrap();
            assert!(max_abs_diff(&back, &phi) < 1e-10, "{json}: round trip");
            assert!(max_abs_diff(&lq_fwd, &lq) < 1e-10, "{json}: log q from from_latent");
        }
    }

    #[test]
    fn latent_maps_cross_the_abi() {
        let m = model(r#"{"layers":2}"#).into_box();
        let phi = vec![0.25; 32];
        let p = m.to_latent(RSlice::from_slice(&phi)).into_result().unwrap();
        assert_eq!((p.configs.len(), p.log_q.len()), (32, 2));
        let q = m.from_latent(RSlice::from_slice(&p.configs)).into_result().unwrap();
        assert!(max_abs_diff(&q.configs, &phi) < 1e-5, "f32 round trip");
        let e = m.to_latent(RSlice::from_slice(&phi[..5])).into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Shape);
    }
}
