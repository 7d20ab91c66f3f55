//! latflow model plugin `flow-sun`: a gauge-equivariant normalizing flow for SU(2) and SU(3)
//! gauge fields on periodic lattices of two or more dimensions, written with candle.
//!
//! The architecture is the spectral flow of Boyda et al. (PRD 103, 074504 (2021)), with the
//! hyperplane masks of Abbott et al. (arXiv 2305.02402) beyond two dimensions: a Haar prior on
//! every link, then `layers` coupling layers. Layer ℓ updates the links U_μ(x) on a stack of
//! hyperplanes x_ν ≡ o (mod p) ([`geometry`]; in 2D the stripes of flow-u1) through the untraced
//! plaquette W of the (μ, ν) plane that starts at each updated link: W's eigenphases move by a
//! permutation-equivariant spline map of the Weyl alcove, conditioned on the traces of the
//! frozen plaquettes of every plane through a periodic D-dimensional CNN, its eigenvectors stay,
//! and the link follows (U ← W′W† U). See [`geometry`] for the masks, [`flow`] for the layers,
//! [`spectral`] for the eigenphase map and its Haar log-determinant, [`eig`] for the
//! closed-form eigenphases and [`ctensor`] for the complex tensor algebra.
//!
//! **Configurations** are the sun theory's layout: one dynamical component "links", an N×N
//! complex matrix per link (2N² reals, row-major, (re, im) interleaved), flat link index
//! `D·x + μ`, sites x row-major. Inputs must be SU(N) matrices (checked to 1e-8 in f64, 1e-4 in
//! f32, [`unitarity_tolerance`]).
//!
//! **Measure.** log q is a density with respect to the **normalised Haar measure** on every link
//! (Π_links dU with ∫dU = 1): the prior has log q₀ = 0 and log q = −Σ_layers ln J. A flow's
//! log Ẑ estimate (−S − log q averaged) therefore estimates the log Z of the normalised Haar
//! measure directly, the convention of the sun theory's exact 2D values.
//!
//! **Latent maps** (`to_latent`, `from_latent`, for flow-assisted replica swaps): the latent
//! space is the Haar prior (links in the layout's order), with U = F(z) the flow and log q(U)
//! exactly `log_prob`'s value. Both maps are gauge covariant.
//!
//! `[model]` keys (all optional): `layers` (16; in D ≥ 4 dimensions D·p·⌈(D − 1)/2⌉, 32 in
//! 4D, so that every plane has active loops: [`config::default_layers`]), `hidden` ([8, 8]),
//! `kernel` (3, odd, ≤ the smallest extent), `activation`, `coupling` ("spectral_spline"), `spline_bins` (8),
//! `mask_period` (4; each extent a multiple of it), `n` (2 | 3: refused unless it is the
//! theory's), `dtype` ("f32" | "f64"), `device` ("cpu"), `init_seed` (0).
//!
//! **Training** follows the host's surrogate route: `train_sample` draws a batch and keeps its
//! graph; the host returns S and the ambient gradient G = ∂S/∂(Re U, Im U) (flat, the layout's
//! order); `train_step` backpropagates mean(log q + Σ U·stopgrad(G)) and takes an Adam step. The
//! contraction Σ U·G is the directional derivative of S along any variation of the links that
//! stays on the group (every variation of the flow's output does), so it does not matter how
//! the theory extends S off the group: the parameter gradient equals that of mean(log q + S)
//! (tested against finite differences). With `path_gradients`, the score of log q at fixed
//! weights is added to G instead (see `batch_gradients`).
//!
//! **Precision.** The flow runs in `dtype`; prior links are drawn in f64 (Haar, 2N² normals each,
//! configuration by configuration, link by link) and rounded to the dtype; the eigenphases are
//! computed in f64 whatever the dtype.
//!
//! **Threads**: `set_threads(n)` gives the model its own rayon pool (0: the global pool).
//! Results do not depend on the thread count.

pub mod cmatmul;
pub mod config;
pub mod ctensor;
pub mod eig;
pub mod flow;
pub mod geometry;
pub mod spectral;

use candle_core::Tensor;
#[cfg(doc)]
use latflow_core::abi::Model;
use latflow_core::abi::{batch_len, check_finite, PluginError, TrainGradient, TrainMetrics, TrainSettings};
use latflow_core::gauge::Matrix;
use latflow_core::layout::FieldLayout;
use latflow_core::Stream;
use latflow_flow_common::model::{map_chunks, ModelState, TrainBatch};
use latflow_flow_common::{optim, tensor_from_f64, tensor_to_f64};

use crate::config::ModelConfig;
use crate::flow::Flow;

/// The plugin's name in run cards.
pub const NAME: &str = "flow-sun";

/// Configurations per internal batch in `sample` and `log_prob`.
pub const CHUNK: usize = 128;

/// Largest accepted deviation max|U U† − 1| + |det U − 1| of an input link, by the model's
/// dtype: f32 flows produce links that are special unitary to single precision (about 1e-6
/// after 16 layers), f64 flows and HMC to about 1e-14.
pub fn unitarity_tolerance(dtype: candle_core::DType) -> f64 {
    if dtype == candle_core::DType::F32 {
        1e-4
    } else {
        1e-8
    }
}

/// Architecture keys that `init_from` ignores: conv weights do not depend on the lattice, and
/// values convert between f32 and f64.
pub const TRANSFER_IGNORES: [&str; 2] = ["lattice", "dtype"];

use latflow_flow_common::tensor::candle_error as ce;

/// The flow-sun model object. Its training batch holds the links `[n, D·V·2N²]`.
pub struct FlowSun {
    cfg: ModelConfig,
    layout: FieldLayout,
    flow: Flow,
    state: ModelState,
}

impl FlowSun {
    /// Builds the model for `layout` from the `[model]` section as JSON. Refuses layouts that
    /// are not SU(2)/SU(3) links in two or more dimensions, lattices that do not fit the masks, and unknown keys.
    pub fn from_json(json: &str, layout: &FieldLayout) -> Result<Self, PluginError> {
        let cfg = config::parse(json, layout)?;
        let flow = Flow::new(&cfg.arch, &cfg.device.device(NAME)?, cfg.init_seed).map_err(ce)?;
        let state = ModelState::new(&flow.net);
        Ok(Self { cfg, layout: layout.clone(), flow, state })
    }

    /// Reals per configuration: D·V · 2N².
    pub fn width(&self) -> usize {
        self.flow.width()
    }

    /// The flow itself (for tests and benchmarks).
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    fn tensor(&self, values: &[f64], n: usize) -> Result<Tensor, PluginError> {
        tensor_from_f64(values, (n, self.width()), self.flow.net.dtype, &self.flow.net.device).map_err(ce)
    }

    /// The flow itself (no prior): links `z` (n configurations) → (U, ln|det| w.r.t. Haar).
    pub fn push_forward(&self, z: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        self.check_links(z, "latent point")?;
        self.run_chunks(z, false, |ld| ld)
    }

    /// The inverse flow: U → (z, ln|det ∂z/∂U| w.r.t. Haar).
    pub fn pull_back(&self, links: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        self.check_links(links, "configuration")?;
        self.run_chunks(links, true, |ld| ld)
    }

    /// Checks a batch: whole configurations, finite, every link in SU(N) to
    /// [`unitarity_tolerance`] (with det ≈ 1).
    fn check_links(&self, x: &[f64], what: &str) -> Result<usize, PluginError> {
        let n = batch_len(x.len(), self.width())?;
        check_finite(what, x)?;
        let nn = self.flow.n();
        let per = 2 * nn * nn;
        let tol = unitarity_tolerance(self.flow.net.dtype);
        for (i, link) in x.chunks_exact(per).enumerate() {
            let dev = if nn == 2 { deviation::<2>(link) } else { deviation::<3>(link) };
            if dev > tol {
                let w = self.flow.n_links();
                return Err(PluginError::config(format!(
                    "{what} {}: link {} is not in SU({nn}) (max |U U† − 1| + |det U − 1| = {dev:.3e} > {tol:e})",
                    i / w,
                    i % w,
                )));
            }
        }
        Ok(n)
    }

    /// Runs the flow (or its inverse) over chunks of [`CHUNK`] configurations: (links, f(ln J)).
    fn run_chunks(
        &self,
        x: &[f64],
        inverse: bool,
        f: impl Fn(f64) -> f64 + Copy + Sync,
    ) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let w = self.width();
        self.state.workers.install(|| {
            let params = self.flow.params(false).map_err(ce)?;
            map_chunks(x, CHUNK * w, |chunk| {
                let links = self.flow.links(&self.tensor(chunk, chunk.len() / w)?).map_err(ce)?;
                let (y, ld) =
                    if inverse { self.flow.inverse(&links, &params) } else { self.flow.forward(&links, &params) }
                        .map_err(ce)?;
                let out = tensor_to_f64(&self.flow.flat(&y).map_err(ce)?).map_err(ce)?;
                let ld = tensor_to_f64(&ld).map_err(ce)?;
                check_finite("flow-sun output", &out)?;
                check_finite("flow-sun log-determinant", &ld)?;
                Ok((out, ld.into_iter().map(f).collect()))
            })
        })
    }

    /// n Haar-random configurations, drawn in order from `rng` (configuration by configuration,
    /// link by link, 2N² normals each).
    fn draw_prior(&self, n: usize, rng: &mut Stream) -> Vec<f64> {
        let nn = self.flow.n();
        let per = 2 * nn * nn;
        let mut out = vec![0.0; n * self.width()];
        for link in out.chunks_exact_mut(per) {
            if nn == 2 {
                Matrix::<2>::random_haar(rng).write_reals(link);
            } else {
                Matrix::<3>::random_haar(rng).write_reals(link);
            }
        }
        out
    }

    /// `n` proposals and their log q (normalised Haar measure); advances `rng` by the prior draw.
    pub fn sample_with(&self, n: usize, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let z = self.draw_prior(n, rng);
        self.run_chunks(&z, false, |ld| -ld)
    }

    /// log q of each configuration of a batch (inverse pass).
    pub fn log_prob_vec(&self, configs: &[f64]) -> Result<Vec<f64>, PluginError> {
        self.check_links(configs, "configuration")?;
        Ok(self.run_chunks(configs, true, |ld| ld)?.1)
    }

    /// The latent map of flow-assisted replica swaps ([`Model::to_latent`]): U → (z = F⁻¹(U), a
    /// point of the Haar prior; log q(U), exactly `log_prob`'s value).
    pub fn to_latent_with(&self, configs: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        self.check_links(configs, "configuration")?;
        self.run_chunks(configs, true, |ld| ld)
    }

    /// The inverse of [`FlowSun::to_latent_with`] ([`Model::from_latent`]): z → (U = F(z),
    /// log q(U)), computed as `sample` computes a proposal from its prior draw.
    pub fn from_latent_with(&self, latent: &[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        self.check_links(latent, "latent point")?;
        self.run_chunks(latent, false, |ld| -ld)
    }

    /// Sets up training (validated settings).
    pub fn train_begin_with(&mut self, settings: &TrainSettings) -> Result<(), PluginError> {
        optim::validate(settings)?;
        self.state.begin(settings)
    }

    /// Draws a training batch and keeps its graph.
    pub fn train_sample_with(&mut self, rng: &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
        let n = self.state.batch_size()?;
        let z = self.draw_prior(n, rng);
        let zt = self.tensor(&z, n)?;
        let flow = &self.flow;
        let pending = self
            .state
            .workers
            .install(|| -> candle_core::Result<TrainBatch> {
                let params = flow.params(true)?;
                let (links, ld) = flow.forward(&flow.links(&zt)?, &params)?;
                let logq_host: Vec<f64> = tensor_to_f64(&ld)?.into_iter().map(|l| -l).collect();
                Ok(TrainBatch { x: flow.flat(&links)?, logq: ld.neg()?, logq_host, n })
            })
            .map_err(ce)?;
        let configs = tensor_to_f64(&pending.x).map_err(ce)?;
        check_finite("flow-sun training sample", &configs)?;
        check_finite("flow-sun training log q", &pending.logq_host)?;
        let logq = pending.logq_host.clone();
        self.state.pending = Some(pending);
        Ok((configs, logq))
    }

    /// One optimiser step from S and ∂S/∂(Re U, Im U) (flat) of the last training batch.
    pub fn train_step_with(&mut self, actions: &[f64], grad: &[f64]) -> Result<TrainMetrics, PluginError> {
        let g = self.train_gradient_with(actions, grad)?;
        self.train_apply_with(&g.gradient, g.loss)
    }

    /// The flattened parameter gradient and the loss of the last training batch (nothing applied).
    pub fn train_gradient_with(&mut self, actions: &[f64], grad: &[f64]) -> Result<TrainGradient, PluginError> {
        let (settings, pending, loss) = self.state.take_batch(actions, grad, self.width(), "link reals")?;
        let path = settings.path_gradients;
        let grads = self.state.workers.install(|| self.batch_gradients(&pending, grad, path)).map_err(ce)?;
        Ok(TrainGradient { gradient: grads.concat().into(), loss })
    }

    /// One optimiser step with a flattened gradient.
    pub fn train_apply_with(&mut self, gradient: &[f64], loss: f64) -> Result<TrainMetrics, PluginError> {
        self.state.apply_flat(&self.flow.net, gradient, loss)
    }

    /// The parameter gradients of a pending batch, given G = ∂S/∂(Re U, Im U):
    ///
    /// * reparameterised (default): of the surrogate mean(log q + Σ U·G);
    /// * path gradients (Vaitl et al. 2022): of mean(Σ U·(G + ∂log q_θ/∂U)) with the score
    ///   ∂log q_θ/∂U taken at fixed weights (an inverse pass with detached weights on a leaf copy
    ///   of U), which drops the score term of zero mean. The ambient score is a valid stand-in for
    ///   the gradient on the group for the same reason G is: it is contracted with variations
    ///   that stay on the group.
    fn batch_gradients(&self, pending: &TrainBatch, grad: &[f64], path: bool) -> candle_core::Result<Vec<Vec<f64>>> {
        let net = &self.flow.net;
        let g = tensor_from_f64(grad, (pending.n, self.width()), net.dtype, &net.device)?;
        // log q = log J⁻¹ (the Haar prior has log q = 0)
        let log_q = |x: &Tensor| Ok(self.flow.inverse(&self.flow.links(x)?, &self.flow.params(false)?)?.1);
        let surrogate = pending.surrogate(&g, if path { Some(&log_q) } else { None })?;
        net.gradients(&surrogate.backward()?)
    }

    /// Loads weights saved by a model of the same architecture (N, lattice and dtype included)
    /// and Adam's state if saved. Nothing changes on error.
    pub fn load_bytes(&mut self, bytes: &[u8]) -> Result<(), PluginError> {
        let arch = self.architecture_json();
        self.state.load_bytes(&self.flow.net, NAME, &arch, bytes)
    }

    /// The architecture record as JSON, for the weights checks.
    fn architecture_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg.arch).expect("architecture serialises")
    }

    /// Transfer: starts from weights trained for another lattice size, dtype or coupling
    /// constant; the architecture (N included) must otherwise be the same. The optimiser is
    /// reset. Returns the number of tensors copied.
    pub fn init_from_bytes(&mut self, bytes: &[u8]) -> Result<usize, PluginError> {
        let arch = self.architecture_json();
        self.state.init_from_bytes(&self.flow.net, NAME, &arch, bytes, &TRANSFER_IGNORES)
    }
}

/// max |U U† − 1| + |det U − 1| of one link's reals.
fn deviation<const N: usize>(reals: &[f64]) -> f64 {
    let m = Matrix::<N>::from_reals(reals);
    m.unitarity_deviation() + (m.det() - latflow_core::gauge::Complex::ONE).abs()
}

latflow_flow_common::impl_flow_model!(FlowSun, NAME);

latflow_flow_common::impl_flow_accessors!(FlowSun, NAME, config::Architecture);

latflow_flow_common::export_flow_plugin!(
    FlowSun,
    NAME,
    "gauge-equivariant normalizing flow for SU(2) and SU(3) links in D >= 2 dimensions (stripe masks, spectral \
     spline couplings on untraced plaquettes, periodic CNNs), candle",
    keys: "layers hidden kernel activation coupling spline_bins mask_period n dtype device init_seed",
    layouts: "one ComplexMatrix (N = 2 or 3) per Link, D >= 2, extents multiples of mask_period",
);

#[cfg(test)]
mod tests;
