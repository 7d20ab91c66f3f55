//! The conditioners' parameters of a coupling flow, and the convolution stacks that use them.
//!
//! [`ConvNet`] owns a flow's parameters: per coupling layer, a stack of periodic convolutions
//! (`layers.{ℓ}.conv{j}.weight` `[k, …, k, C_in, C_out]`, then `layers.{ℓ}.conv{j}.bias`
//! `[C_out]`), with PyTorch's default initialisation drawn from a fixed random stream. It also
//! holds the device, the dtype and the choice between the fused CPU kernels and the generic
//! (any-device) formulation, and moves parameter values and gradients between candle and f64.
//! [`ConvNet::stack`] evaluates one layer's stack in either formulation ([`Gather`]); both
//! compute the same function.

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use latflow_core::abi::PluginError;
use latflow_core::Stream;

use crate::config::Activation;
use crate::kernels::{self, Act, Table};
use crate::tensor::{candle_error, conv_generic, conv_params, tensor_from_f64, tensor_to_f64, ColumnGather, NamedVar};

/// A flow's conditioner parameters and where they live.
#[derive(Debug)]
pub struct ConvNet {
    pub device: Device,
    pub dtype: DType,
    /// `(C_in, C_out)` of each convolution of a conditioner.
    pub channels: Vec<(usize, usize)>,
    /// Kernel offsets K = k^d of every convolution.
    pub kvol: usize,
    /// Ordered parameters: per layer, per convolution, weight then bias.
    pub vars: Vec<NamedVar>,
    /// Whether to use the fused CPU kernels (default: on the CPU).
    fused: bool,
}

impl ConvNet {
    /// `layers` stacks of convolutions of kernel size `kernel` in `dim` dimensions with the
    /// given channels, initialised as PyTorch's default convolution (kaiming-uniform with
    /// a = √5: weights and biases U(−1/√fan_in, 1/√fan_in), fan_in = C_in·k^d), drawn in f64
    /// from the stream (`init_seed`, `stream`) layer by layer, convolution by convolution,
    /// weights (in storage order) before biases, then rounded to `dtype`.
    pub fn new(
        layers: usize,
        kernel: usize,
        dim: usize,
        channels: Vec<(usize, usize)>,
        dtype: DType,
        device: &Device,
        (init_seed, stream): (u64, u64),
    ) -> candle_core::Result<Self> {
        let kvol = kernel.pow(dim as u32);
        let mut rng = Stream::new(init_seed, stream);
        let mut vars = Vec::with_capacity(layers * channels.len() * 2);
        for l in 0..layers {
            for (j, &(cin, cout)) in channels.iter().enumerate() {
                let bound = 1.0 / ((cin * kvol) as f64).sqrt();
                let mut wshape = vec![kernel; dim];
                wshape.extend([cin, cout]);
                let w: Vec<f64> = (0..kvol * cin * cout).map(|_| bound * (2.0 * rng.uniform() - 1.0)).collect();
                let b: Vec<f64> = (0..cout).map(|_| bound * (2.0 * rng.uniform() - 1.0)).collect();
                vars.push(NamedVar {
                    name: format!("layers.{l}.conv{j}.weight"),
                    var: Var::from_tensor(&tensor_from_f64(&w, wshape, dtype, device)?)?,
                });
                vars.push(NamedVar {
                    name: format!("layers.{l}.conv{j}.bias"),
                    var: Var::from_tensor(&tensor_from_f64(&b, cout, dtype, device)?)?,
                });
            }
        }
        Ok(Self { device: device.clone(), dtype, channels, kvol, vars, fused: device.is_cpu() })
    }

    /// The parameters as the flow uses them (weights as `[K·C_in, C_out]`): tracked by
    /// autograd when `track` is true, detached otherwise (no graph is recorded then).
    pub fn params(&self, track: bool) -> candle_core::Result<Vec<Tensor>> {
        conv_params(&self.vars, &self.channels, self.kvol, track)
    }

    /// Layer `l`'s weights and biases within [`ConvNet::params`]' output.
    pub fn layer<'a>(&self, params: &'a [Tensor], l: usize) -> &'a [Tensor] {
        let n = 2 * self.channels.len();
        &params[l * n..(l + 1) * n]
    }

    /// Chooses the fused CPU kernels (`true`, the default on the CPU) or the generic candle
    /// formulation (`false`, the only one on other devices). Both compute the same function.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused && self.device.is_cpu();
    }

    /// Whether the fused CPU kernels run.
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// The parameters' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.vars.iter().map(|v| v.name.clone()).collect()
    }

    /// The number of reals of each parameter, in order.
    pub fn sizes(&self) -> Vec<usize> {
        self.vars.iter().map(|v| v.var.elem_count()).collect()
    }

    /// Every parameter's current values as f64, in order.
    pub fn values(&self) -> Result<Vec<Vec<f64>>, PluginError> {
        self.vars.iter().map(|nv| tensor_to_f64(nv.var.as_tensor())).collect::<Result<_, _>>().map_err(candle_error)
    }

    /// Sets every parameter from f64 values (rounded to the dtype), in order.
    pub fn set_values(&self, values: &[Vec<f64>]) -> Result<(), PluginError> {
        for (nv, p) in self.vars.iter().zip(values) {
            let t = tensor_from_f64(p, nv.var.shape().clone(), self.dtype, &self.device).map_err(candle_error)?;
            nv.var.set(&t).map_err(candle_error)?;
        }
        Ok(())
    }

    /// Every parameter's gradient in `store` as f64 (zeros for a parameter without one).
    pub fn gradients(&self, store: &GradStore) -> candle_core::Result<Vec<Vec<f64>>> {
        self.vars
            .iter()
            .map(|nv| match store.get(nv.var.as_tensor()) {
                Some(t) => tensor_to_f64(t),
                None => Ok(vec![0.0; nv.var.elem_count()]),
            })
            .collect()
    }

    /// One layer's convolution stack: convolution j (weights `layer[2j]`, bias `layer[2j + 1]`)
    /// gathers through `gather`'s table j, the first one reads the constant row `pad` at padded
    /// entries (zeros without), `activation` follows every convolution but the last, and `last`
    /// follows the last. The fused kernels fuse the activations (GELU follows as a candle op);
    /// the generic formulation ([`conv_generic`]) applies them as candle ops.
    pub fn stack(
        &self,
        x: &Tensor,
        layer: &[Tensor],
        gather: Gather<'_>,
        activation: Activation,
        pad: Option<&[f64]>,
        last: Act,
    ) -> candle_core::Result<Tensor> {
        let n = self.channels.len();
        let mut act = x.clone();
        for j in 0..n {
            let (w, bias, pad) = (&layer[2 * j], &layer[2 * j + 1], if j == 0 { pad } else { None });
            let a = if j == n - 1 { last } else { activation.fused() };
            act = match &gather {
                Gather::Fused(table) => match pad {
                    Some(p) => kernels::conv_padded(&act, w, bias, table(j), a, p)?,
                    None => kernels::conv(&act, w, bias, table(j), a)?,
                },
                Gather::Generic(idx) => {
                    let y = conv_generic(&act, w, bias, idx(j), pad)?;
                    if j == n - 1 {
                        apply_act(last, &y)?
                    } else {
                        activation.apply(&y)?
                    }
                }
            };
            if j < n - 1 && activation == Activation::Gelu && matches!(gather, Gather::Fused(_)) {
                act = act.gelu_erf()?;
            }
        }
        Ok(act)
    }
}

/// The gather tables of a convolution stack, by convolution: [`Table`]s for the fused CPU
/// kernels, or [`ColumnGather`]s for the generic formulation.
pub enum Gather<'t> {
    Fused(&'t dyn Fn(usize) -> &'t Arc<Table>),
    Generic(&'t dyn Fn(usize) -> &'t ColumnGather),
}

/// A fused activation written with candle ops.
fn apply_act(act: Act, y: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        Act::Identity => Ok(y.clone()),
        Act::LeakyRelu => Activation::LeakyRelu.apply(y),
        Act::Relu => y.relu(),
        Act::Tanh => y.tanh(),
    }
}
