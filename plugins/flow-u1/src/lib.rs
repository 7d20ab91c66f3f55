//! latflow model plugin `flow-u1`: a gauge-equivariant normalizing flow for compact U(1) gauge
//! fields on 2D periodic lattices, written with candle.
//!
//! The architecture is that of Kanwar et al. (PRL 125, 121601 (2020)) and Albergo et al.
//! (arXiv 2101.08176, section "U(1)"), as in the PyTorch peer `benches/peers/u1_flow.py`: a
//! uniform (Haar) prior on every link, then `layers` gauge-equivariant coupling layers. Layer ℓ
//! updates the links of direction μ = ℓ mod 2 on a stripe with offset ⌊ℓ/2⌋ mod p (p =
//! `mask_period`, 4): it transforms the *active* plaquettes (those that contain an updated
//! link) with an invertible circle map conditioned on the *frozen* plaquettes (which contain
//! none) and leaves the *passive* ones to follow (with `mask_period = 2` there is no frozen
//! stripe: the conditioner reads only its constant padding, so each layer's circle map is
//! learned but does not depend on the configuration; this allows lattices down to 2×2); see [`geometry`] for the masks and the
//! reasoning, [`flow`] for the layers, [`ncp`] and [`spline`] for the circle maps and [`ops`] for
//! the fused CPU ops.
//!
//! **Configurations** are the u1 theory's layout: one dynamical component "links", an `Angle`
//! per `Link`, flat index `2·x + μ` with sites x row-major (last axis fastest). Inputs may be any
//! representative of each angle; every output angle is wrapped into **[0, 2π)**.
//!
//! **Measure.** log q is a density with respect to the plain Lebesgue measure Π_links dθ on
//! [0, 2π)^{N_links}: the prior has log q₀ = −N_links ln 2π (N_links = 2V), and
//! log q = log q₀ − Σ_layers log J. With the normalised Haar measure Π dθ/2π the density would
//! be larger by N_links ln 2π; a flow's log Ẑ estimate (−S − log q averaged) therefore estimates
//! log Z + N_links ln 2π, where log Z is docs/reference.md §3's (normalised Haar measure).
//!
//! **Latent maps** (`to_latent`, `from_latent`, for flow-assisted replica swaps): the latent
//! space is this plugin's Haar prior — z uniform on [0, 2π)^{N_links}, the links in the layout's
//! order — with θ = F(z) the flow and log q(θ) exactly `log_prob`'s value. (flow-scalar's latent
//! space is N(0, 1) instead; a swap always pairs two models of the same plugin, so each plugin's
//! own prior is the right convention.) Both maps are gauge covariant: F⁻¹(g·θ) = g·F⁻¹(θ).
//!
//! `[model]` keys (all optional): `layers` (16), `hidden` ([8, 8]), `kernel` (3, odd, ≤ the
//! smallest extent), `activation` ("leaky_relu" | "tanh" | "relu" | "gelu"), `coupling` ("ncp" |
//! "spline"), `n_mix` (2, NCP only), `spline_bins` (8, spline only), `mask_period` (4, at least 2; each
//! extent must be a multiple of it), `dtype` ("f32" | "f64"), `device` ("cpu" | "cuda", the
//! latter with the `cuda` feature), `init_seed` (0).
//!
//! **Training** follows the host's surrogate route: `train_sample` draws a batch and keeps its
//! graph, the host computes S and ∂S/∂θ, and `train_step` backpropagates
//! mean(log q + Σ θ·stopgrad(∂S/∂θ)) and takes an Adam step (latflow-flow-common's). With
//! `path_gradients = true` (Vaitl et al. 2022) the score ∂log q/∂θ at fixed weights, from an
//! inverse pass (the NCP inverse differentiated implicitly), is added to ∂S/∂θ instead of
//! backpropagating log q.
//!
//! **Precision.** The flow runs in `dtype`. Prior angles are drawn in f64 (n·2V uniforms from
//! the caller's stream, configuration by configuration, link by link, times 2π) and rounded to
//! the dtype; log q₀ is exact; the log-determinants are summed in the dtype, converted to f64
//! and subtracted. The NCP inverse is solved in f64 whatever the dtype.
//!
//! **Threads**: `set_threads(n)` gives the model its own rayon pool of n threads and runs every
//! call inside it (0: the global pool, sized by `RAYON_NUM_THREADS`). The kernels split a batch
//! into fixed blocks of 16 configurations, so results do not depend on the thread count.

pub mod config;
pub mod flow;
pub use latflow_flow_common::stripes as geometry;
pub mod ncp;
pub mod ops;
pub mod spline;

use candle_core::Tensor;
#[cfg(doc)]
use latflow_core::abi::Model;
use latflow_core::abi::{batch_len, check_finite, PluginError, TrainGradient, TrainMetrics, TrainSettings};
use latflow_core::layout::FieldLayout;
use latflow_core::Stream;
use latflow_flow_common::model::{map_chunks, ModelState, TrainBatch};
use latflow_flow_common::{optim, tensor_from_f64, tensor_to_f64};

use crate::config::ModelConfig;
use crate::flow::Flow;
use crate::geometry::wrap_2pi;

/// The plugin's name in run cards.
pub const NAME: &str = "flow-u1";

/// Configurations per internal batch in `sample` and `log_prob`: bounds memory and keeps the
/// working set in cache (at L = 8, 256 drew about 15% faster than 1024).
pub const CHUNK: usize = 256;

/// ln 2π.
pub const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// Architecture keys that `init_from` ignores: conv weights do not depend on the lattice, and
/// values convert between f32 and f64.
pub const TRANSFER_IGNORES: [&str; 2] = ["lattice", "dtype"];

use latflow_flow_common::tensor::candle_error as ce;

/// The flow-u1 model object. Its training batch holds θ `[n, 2V]`, not wrapped: representatives
/// differ from the host's copy by multiples of 2π, which S and ∂S/∂θ do not see.
pub struct FlowU1 {
    cfg: ModelConfig,
    layout: FieldLayout,
    flow: Flow,
    state: ModelState,
}

impl FlowU1 {
    /// Builds the model for `layout` from the `[model]` section as JSON. Refuses layouts that
    /// are not 2D U(1) links, lattices that do not fit the masks, and unknown keys.
    pub fn from_json(json: &str, layout: &FieldLayout) -> Result<Self, PluginError> {
        let cfg = config::parse(json, layout)?;
        let flow = Flow::new(&cfg.arch, &cfg.device.device(NAME)?, cfg.init_seed).map_err(ce)?;
        let state = ModelState::new(&flow.net);
        Ok(Self { cfg, layout: layout.clone(), flow, state })
    }

    /// Reals per configuration: N_links = 2V.
    pub fn n_links(&self) -> usize {
        self.flow.n_links()
    }

    /// The flow itself (for tests and benchmarks).
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Mutable access to the flow (tests: switching between the fused and generic formulations).
    pub fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }

    /// log q₀ = −N_links ln 2π, the uniform prior's density with respect to Π dθ.
    pub fn log_q_prior(&self) -> f64 {
        -(self.n_links() as f64) * LN_2PI
    }

    fn tensor(&self, values: &[f64], n: usize) -> Result<Tensor, PluginError> {
        tensor_from_f64(values, (n, self.n_links()), self.flow.net.dtype, &self.flow.net.device).map_err(ce)
    }

    /// The flow itself (no prior): angles `z` (n × 2V, any representatives) → (θ wrapped into
    /// [0, 2π), log|det ∂θ/∂z|) per configuration, computed in the model's dtype.
    pub fn push_forward(&self, z: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let n = batch_len(z.len(), self.n_links())?;
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            let (theta, ld) = self.flow.forward(&self.tensor(z, n)?, &params).map_err(ce)?;
            Ok((wrapped(&theta)?, tensor_to_f64(&ld).map_err(ce)?))
        })
    }

    /// The inverse flow: θ (n × 2V) → (z wrapped into [0, 2π), log|det ∂z/∂θ|).
    pub fn pull_back(&self, theta: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let n = batch_len(theta.len(), self.n_links())?;
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            let (z, ld) = self.flow.inverse(&self.tensor(theta, n)?, &params).map_err(ce)?;
            Ok((wrapped(&z)?, tensor_to_f64(&ld).map_err(ce)?))
        })
    }

    /// n·2V prior angles, uniform on [0, 2π), drawn in order from `rng`.
    fn draw_prior(&self, n: usize, rng: &mut Stream) -> Vec<f64> {
        (0..n * self.n_links()).map(|_| 2.0 * std::f64::consts::PI * rng.uniform()).collect()
    }

    /// `n` proposals (angles in [0, 2π)) and their log q; advances `rng` by n·2V uniforms.
    pub fn sample_with(&self, n: usize, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let z = self.draw_prior(n, rng);
        self.forward_chunks(&z)
    }

    /// log q of each configuration of a batch (any representatives; inverse pass).
    pub fn log_prob_vec(&self, configs: &[f64]) -> Result<Vec<f64>, PluginError> {
        Ok(self.inverse_chunks(configs, false)?.1)
    }

    /// The latent map of flow-assisted replica swaps ([`Model::to_latent`]): θ (n × 2V, any
    /// representatives) → (z, log q(θ)), where z = F⁻¹(θ) is the point of the **Haar prior**
    /// (uniform link angles, wrapped into [0, 2π), the layout's link order) that the flow F maps
    /// to θ, and log q(θ) is exactly [`FlowU1::log_prob_vec`]'s value (the same inverse pass;
    /// density with respect to plain Π dθ).
    ///
    /// The latent density is this plugin's own prior, uniform on [0, 2π)^{2V} — not flow-scalar's
    /// N(0, 1): a flow-assisted swap always maps between two models of the same plugin (on the
    /// same layout), so F_b ∘ F_a⁻¹ only needs the two to share their latent density, which every
    /// flow-u1 model does, whatever its weights, coupling or dtype. The map is gauge covariant:
    /// every layer is gauge equivariant, so F⁻¹(g·θ) = g·F⁻¹(θ) (mod 2π) and log q(g·θ) = log q(θ).
    pub fn to_latent_with(&self, configs: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        self.inverse_chunks(configs, true)
    }

    /// The inverse of [`FlowU1::to_latent_with`] ([`Model::from_latent`]): latent angles z of the
    /// Haar prior (n × 2V, any representatives) → (θ = F(z) wrapped into [0, 2π), log q(θ)),
    /// computed exactly as `sample` computes a proposal from its prior draw (the same latent
    /// convention: uniform angles, not N(0, 1); see [`FlowU1::to_latent_with`]).
    pub fn from_latent_with(&self, latent: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        batch_len(latent.len(), self.n_links())?;
        check_finite("latent point", latent)?;
        self.forward_chunks(latent)
    }

    /// The forward pass of `sample` and `from_latent`, in chunks of [`CHUNK`] configurations:
    /// prior angles z (n × 2V) → (θ wrapped into [0, 2π), log q(θ) = log q₀ − log J).
    fn forward_chunks(&self, z: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let w = self.n_links();
        let lq0 = self.log_q_prior();
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            map_chunks(z, CHUNK * w, |chunk| {
                let (theta, ld) = self.flow.forward(&self.tensor(chunk, chunk.len() / w)?, &params).map_err(ce)?;
                Ok((wrapped(&theta)?, tensor_to_f64(&ld).map_err(ce)?.into_iter().map(|l| lq0 - l).collect()))
            })
        })
    }

    /// The inverse pass of `log_prob` and `to_latent`, in chunks of [`CHUNK`] configurations:
    /// θ (n × 2V) → (z wrapped into [0, 2π) if `latent`, else empty; log q(θ) = log q₀ + log|det ∂z/∂θ|).
    fn inverse_chunks(&self, configs: &[f64], latent: bool) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let w = self.n_links();
        batch_len(configs.len(), w)?;
        check_finite("configuration", configs)?;
        let lq0 = self.log_q_prior();
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            map_chunks(configs, CHUNK * w, |chunk| {
                let (zc, ld) = self.flow.inverse(&self.tensor(chunk, chunk.len() / w)?, &params).map_err(ce)?;
                let z = if latent { wrapped(&zc)? } else { Vec::new() };
                Ok((z, tensor_to_f64(&ld).map_err(ce)?.into_iter().map(|l| lq0 + l).collect()))
            })
        })
    }

    /// Sets up training (validated settings). The optimiser's moments and step count live in
    /// the model and are kept across calls (and restored by `load`); `init_from` resets them.
    pub fn train_begin_with(&mut self, settings: &TrainSettings) -> Result<(), PluginError> {
        optim::validate(settings)?;
        self.state.begin(settings)
    }

    /// Draws a training batch and keeps its graph.
    pub fn train_sample_with(&mut self, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let n = self.state.batch_size()?;
        let z = self.draw_prior(n, rng);
        let lq0 = self.log_q_prior();
        let zt = self.tensor(&z, n)?;
        let flow = &self.flow;
        let pending = self
            .state
            .workers
            .install(|| -> candle_core::Result<TrainBatch> {
                let params = flow.params(true)?;
                let (links, ld) = flow.forward(&zt, &params)?;
                let logq_host: Vec<f64> = tensor_to_f64(&ld)?.into_iter().map(|l| lq0 - l).collect();
                let logq = ld.affine(-1.0, lq0)?;
                Ok(TrainBatch { x: links, logq, logq_host, n })
            })
            .map_err(ce)?;
        let configs = self.state.workers.install(|| wrapped(&pending.x))?;
        let logq = pending.logq_host.clone();
        self.state.pending = Some(pending);
        Ok((configs, logq))
    }

    /// One optimiser step from S and ∂S/∂θ (flat, the layout's order) of the last training batch.
    pub fn train_step_with(&mut self, actions: &[f64], grad: &[f64]) -> Result<TrainMetrics, PluginError> {
        let g = self.train_gradient_with(actions, grad)?;
        self.train_apply_with(&g.gradient, g.loss)
    }

    /// The flattened parameter gradient and the loss of the last training batch (nothing applied).
    pub fn train_gradient_with(&mut self, actions: &[f64], grad: &[f64]) -> Result<TrainGradient, PluginError> {
        let (settings, pending, loss) = self.state.take_batch(actions, grad, self.n_links(), "links")?;
        let path = settings.path_gradients;
        let grads = self.state.workers.install(|| self.batch_gradients(&pending, grad, path)).map_err(ce)?;
        Ok(TrainGradient { gradient: grads.concat().into(), loss })
    }

    /// One optimiser step with a flattened gradient.
    pub fn train_apply_with(&mut self, gradient: &[f64], loss: f64) -> Result<TrainMetrics, PluginError> {
        self.state.apply_flat(&self.flow.net, gradient, loss)
    }

    /// The parameter gradients of a pending batch, given g = ∂S/∂θ (flat, n × 2V):
    ///
    /// * reparameterised (default): of the surrogate mean(log q + Σ θ·g), equal to the gradient
    ///   of mean(log q + S(θ)) (tested);
    /// * path gradients (Vaitl et al. 2022): of mean(Σ θ·(g + ∂log q_w/∂θ)) with the score
    ///   ∂log q_w/∂θ taken at fixed weights w, by an inverse pass with detached weights on a leaf
    ///   copy of the batch (the NCP inverse differentiated implicitly,
    ///   [`flow::Flow::ncp_inverse_tracked`]); this drops the score term ∂log q/∂w, whose mean is
    ///   zero, and equals the gradient of mean(log q_w₀(θ_w(z)) + S(θ_w(z))) at w = w₀ (tested).
    fn batch_gradients(&self, pending: &TrainBatch, grad: &[f64], path: bool) -> candle_core::Result<Vec<Vec<f64>>> {
        let net = &self.flow.net;
        let g = tensor_from_f64(grad, (pending.n, self.n_links()), net.dtype, &net.device)?;
        // log q = log q₀ + log J⁻¹; the constant log q₀ has no score
        let log_q = |x: &Tensor| Ok(self.flow.inverse(x, &self.flow.params(false)?)?.1);
        let surrogate = pending.surrogate(&g, if path { Some(&log_q) } else { None })?;
        net.gradients(&surrogate.backward()?)
    }

    /// Loads weights saved by a model of the same architecture (lattice and dtype included) and
    /// Adam's state, if saved (otherwise the optimiser restarts from zero moments). Bit exact;
    /// nothing changes on error.
    pub fn load_bytes(&mut self, bytes: &[u8]) -> Result<(), PluginError> {
        let arch = self.architecture_json();
        self.state.load_bytes(&self.flow.net, NAME, &arch, bytes)
    }

    /// The architecture record as JSON, for the weights checks.
    fn architecture_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg.arch).expect("architecture serialises")
    }

    /// Transfer: starts from weights trained for another lattice size, dtype or coupling
    /// constant (the convolutions do not depend on the lattice extent). The architecture must
    /// otherwise be the same (layers, hidden, kernel, activation, coupling, n_mix/spline_bins,
    /// mask_period); the optimiser is reset. Returns the number of tensors copied.
    pub fn init_from_bytes(&mut self, bytes: &[u8]) -> Result<usize, PluginError> {
        let arch = self.architecture_json();
        self.state.init_from_bytes(&self.flow.net, NAME, &arch, bytes, &TRANSFER_IGNORES)
    }
}

/// The links of a tensor as f64, wrapped into [0, 2π).
fn wrapped(t: &Tensor) -> Result<Vec<f64>, PluginError> {
    Ok(tensor_to_f64(t).map_err(ce)?.into_iter().map(wrap_2pi).collect())
}

latflow_flow_common::impl_flow_model!(FlowU1, NAME);

latflow_flow_common::impl_flow_accessors!(FlowU1, NAME, config::Architecture);

latflow_flow_common::export_flow_plugin!(
    FlowU1,
    NAME,
    "gauge-equivariant normalizing flow for 2D U(1) links (stripe masks, NCP or circular-spline \
     plaquette couplings, periodic CNNs), candle",
    keys: "layers hidden kernel activation coupling n_mix spline_bins mask_period dtype device init_seed",
    layouts: "one Angle per Link, 2D, extents multiples of mask_period",
);

#[cfg(test)]
mod tests;
