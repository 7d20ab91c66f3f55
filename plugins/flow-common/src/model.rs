//! The state that every flow model keeps besides its flow: the thread pool, Adam's state, the
//! training settings and the training batch in flight, with the steps of the host's training
//! protocol (`train_begin`, `train_sample`, `train_step`) and of `load`/`init_from` that do not
//! depend on the flow.

use candle_core::Tensor;
use latflow_core::abi::{PluginError, TrainMetrics, TrainSettings};
use latflow_core::Workers;

use crate::io;
use crate::net::ConvNet;
use crate::optim::{self, AdamState};

/// The batch drawn by the last `train_sample`, with its autograd graph.
#[derive(Debug)]
pub struct TrainBatch {
    /// The configurations `[n, width]` in the flow's own order, attached to the graph.
    pub x: Tensor,
    /// log q of each configuration in the dtype, attached to the graph.
    pub logq: Tensor,
    /// log q in f64, as reported to the host.
    pub logq_host: Vec<f64>,
    pub n: usize,
}

/// Maps a batch of configurations to log q per configuration (an inverse pass).
pub type LogQ<'a> = &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

impl TrainBatch {
    /// The surrogate loss whose parameter gradient a model applies, given g = ∂S/∂x `[n, width]`
    /// (the host's stopgrad action gradient, in the flow's order):
    ///
    /// * reparameterised (`log_q_at` = None): mean(log q + Σ x·g), whose gradient is that of the
    ///   reverse KL mean(log q + S);
    /// * path gradients (Vaitl et al. 2022): mean(Σ x·(g + ∂log q_w/∂x)), with the score taken at
    ///   fixed weights: `log_q_at` maps a leaf copy of the batch to log q per configuration `[n]`
    ///   (an inverse pass with detached weights); the score term of zero mean is dropped.
    pub fn surrogate(
        &self,
        g: &Tensor,
        log_q_at: Option<LogQ<'_>>,
    ) -> candle_core::Result<Tensor> {
        let Some(log_q_at) = log_q_at else {
            return self.logq.add(&self.x.mul(g)?.sum(1)?)?.mean(0);
        };
        let leaf = candle_core::Var::from_tensor(&self.x.detach())?;
        let score = log_q_at(leaf.as_tensor())?
            .sum_all()?
            .backward()?
            .get(leaf.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient for the path-gradient leaf".into()))?
            .detach();
        self.x.mul(&g.add(&score)?)?.sum(1)?.mean(0)
    }
}

/// A model's state outside its flow.
#[derive(Debug)]
pub struct ModelState {
    /// The model's thread pool (`set_threads`).
    pub workers: Workers,
    pub adam: AdamState,
    pub settings: Option<TrainSettings>,
    pub pending: Option<TrainBatch>,
}

impl ModelState {
    /// Zero optimiser moments for `net`'s parameters, no training settings, the global pool.
    pub fn new(net: &ConvNet) -> Self {
        Self { workers: Workers::default(), adam: AdamState::zeros(&net.sizes()), settings: None, pending: None }
    }

    /// Gives the model its own rayon pool of `threads` threads (0: the global pool).
    pub fn set_threads(&mut self, threads: u32) -> Result<(), PluginError> {
        self.workers = Workers::new(threads)?;
        Ok(())
    }

    /// `train_begin`: validates and keeps the settings; other settings than before drop the
    /// pending batch. The optimiser's moments and step count are kept.
    pub fn begin(&mut self, settings: &TrainSettings) -> Result<(), PluginError> {
        optim::validate(settings)?;
        if self.settings.as_ref() != Some(settings) {
            self.pending = None;
        }
        self.settings = Some(settings.clone());
        Ok(())
    }

    /// The start of `train_sample`: the batch size, after dropping any pending batch; refused
    /// before `train_begin`.
    pub fn batch_size(&mut self) -> Result<usize, PluginError> {
        let settings =
            self.settings.as_ref().ok_or_else(|| PluginError::unsupported("train_sample: call train_begin first"))?;
        let n = settings.batch as usize;
        self.pending = None;
        Ok(n)
    }

    /// The start of `train_step`: checks the host's buffers (`width` reals per configuration,
    /// named `unit` in errors) against the pending batch, takes the batch (a batch is spent by
    /// its step) and computes the loss. Returns the settings, the batch and the loss.
    pub fn take_batch(
        &mut self,
        actions: &[f64],
        grad: &[f64],
        width: usize,
        unit: &str,
    ) -> Result<(TrainSettings, TrainBatch, f64), PluginError> {
        let settings =
            self.settings.clone().ok_or_else(|| PluginError::unsupported("train_step: call train_begin first"))?;
        optim::check_train_buffers(self.pending.as_ref().map(|p| p.n), actions, grad, width, unit)?;
        let pending = self.pending.take().expect("checked above");
        let loss = optim::batch_loss(&pending.logq_host, actions, grad)?;
        Ok((settings, pending, loss))
    }

    /// The end of `train_step`: the checked Adam step of `net` with the parameter gradients
    /// `grads` ([`optim::checked_step`]), installed only if it succeeds.
    pub fn step(
        &mut self,
        net: &ConvNet,
        grads: Vec<Vec<f64>>,
        settings: &TrainSettings,
        loss: f64,
    ) -> Result<TrainMetrics, PluginError> {
        let names = net.vars.iter().map(|nv| nv.name.as_str());
        let step = optim::checked_step(names, grads, || net.values(), &self.adam, settings)?;
        net.set_values(&step.params)?;
        self.adam = step.adam;
        Ok(TrainMetrics { loss, grad_norm: step.grad_norm, learning_rate: step.learning_rate })
    }

    /// `train_apply`: one optimiser step with a flattened gradient (the parameters in `net`'s
    /// order, each row-major, as `train_gradient` returns them). Errors on a wrong length or
    /// before `train_begin`; non-finite gradients are refused by the optimiser's checks.
    pub fn apply_flat(&mut self, net: &ConvNet, flat: &[f64], loss: f64) -> Result<TrainMetrics, PluginError> {
        let settings =
            self.settings.clone().ok_or_else(|| PluginError::unsupported("train_apply: call train_begin first"))?;
        let sizes = net.sizes();
        let total: usize = sizes.iter().sum();
        if flat.len() != total {
            return Err(PluginError::shape(format!(
                "train_apply: the gradient has {} reals, the model {total} parameters",
                flat.len()
            )));
        }
        let mut grads = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for n in sizes {
            grads.push(flat[at..at + n].to_vec());
            at += n;
        }
        self.step(net, grads, &settings, loss)
    }

    /// `load` after the architecture check: every parameter in the model's dtype and Adam's
    /// state (zero moments if not saved). Nothing changes on error.
    pub fn load(&mut self, net: &ConvNet, file: &io::WeightsFile) -> Result<(), PluginError> {
        let want = if net.dtype == candle_core::DType::F64 { safetensors::Dtype::F64 } else { safetensors::Dtype::F32 };
        let params = io::fetch_params(file, "weights", &net.vars, Some(want))?;
        let adam = io::fetch_adam(file, "weights", &net.vars)?;
        net.set_values(&params)?;
        self.adam = adam;
        self.pending = None;
        Ok(())
    }

    /// `load` from a weights file's bytes: the file's architecture record must equal `arch`
    /// (the model's, as JSON) and name `plugin`; then [`ModelState::load`]. Nothing changes on
    /// error.
    pub fn load_bytes(
        &mut self,
        net: &ConvNet,
        plugin: &str,
        arch: &serde_json::Value,
        bytes: &[u8],
    ) -> Result<(), PluginError> {
        let file = io::parse(bytes)?;
        io::check_architecture(&file, "weights", plugin, arch, &[])?;
        self.load(net, &file)
    }

    /// `init_from` a weights file's bytes: the architecture must equal `arch` up to the keys in
    /// `ignore`; every parameter is copied (converted to the model's dtype) and the optimiser
    /// restarts. Returns the number of tensors copied; nothing changes on error.
    pub fn init_from_bytes(
        &mut self,
        net: &ConvNet,
        plugin: &str,
        arch: &serde_json::Value,
        bytes: &[u8],
        ignore: &[&str],
    ) -> Result<usize, PluginError> {
        let file = io::parse(bytes)?;
        io::check_architecture(&file, "init_from", plugin, arch, ignore)?;
        let params = io::fetch_params(&file, "init_from", &net.vars, None)?;
        self.restart(net, &params)?;
        Ok(params.len())
    }

    /// The end of `init_from`: installs `params` and restarts the optimiser.
    pub fn restart(&mut self, net: &ConvNet, params: &[Vec<f64>]) -> Result<(), PluginError> {
        net.set_values(params)?;
        self.adam = AdamState::zeros(&params.iter().map(|p| p.len()).collect::<Vec<_>>());
        self.pending = None;
        Ok(())
    }
}

/// Runs `f` on consecutive chunks of `data` of at most `chunk` reals and concatenates the two
/// vectors it returns per chunk (e.g. configurations and log q), in order.
pub fn map_chunks(
    data: &[f64],
    chunk: usize,
    mut f: impl FnMut(&[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError>,
) -> Result<(Vec<f64>, Vec<f64>), PluginError> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for c in data.chunks(chunk.max(1)) {
        let (x, y) = f(c)?;
        a.extend(x);
        b.extend(y);
    }
    Ok((a, b))
}
