//! `[model]` keys that every candle flow plugin reads the same way: the conditioners' shape
//! (`layers`, `hidden`, `kernel`), activation, dtype, device and `init_seed` ([`model_keys!`]
//! and [`check_network`]), the spline bin count, the architecture record's shared part
//! ([`Architecture`]) and its comparison ([`describe_difference`]).
//!
//! Contract: the enums (de)serialise as snake_case strings (`"leaky_relu"`, `"f64"`, `"cuda"`,
//! …) with the first variant as the default, both in run cards and in the
//! `latflow.architecture` record of saved weights; a plugin re-exports them from its own
//! `config` module, so the record's format is the plugin's as before.

use latflow_core::abi::PluginError;
use latflow_core::layout::{FieldComponent, FieldLayout, FieldRole};
use serde::{Deserialize, Serialize};

use crate::kernels::{Act, LEAKY_SLOPE};

/// Declares a plugin's `[model]` section as written (`struct $name`, unknown keys refused): the
/// shared keys `layers` (default 16), `hidden` ([8, 8]), `kernel` (3), `activation`, `dtype`,
/// `device` and `init_seed` (0), followed by the plugin's own fields as given.
#[macro_export]
macro_rules! model_keys {
    ($(#[$meta:meta])* $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            #[serde(default = "latflow_flow_common::config::default_layers")]
            layers: i64,
            #[serde(default = "latflow_flow_common::config::default_hidden")]
            hidden: Vec<i64>,
            #[serde(default = "latflow_flow_common::config::default_kernel")]
            kernel: i64,
            #[serde(default)]
            activation: $crate::config::Activation,
            #[serde(default)]
            dtype: $crate::config::DTypeCfg,
            #[serde(default)]
            device: $crate::config::DeviceCfg,
            #[serde(default)]
            init_seed: u64,
            $($own)*
        }
    };
}

/// Default `layers`.
pub fn default_layers() -> i64 {
    16
}

/// Default `hidden`.
pub fn default_hidden() -> Vec<i64> {
    vec![8, 8]
}

/// Default `kernel`.
pub fn default_kernel() -> i64 {
    3
}

/// Default number of spline bins K.
pub const DEFAULT_SPLINE_BINS: usize = 8;
/// Largest K: the minimum bin size (10⁻³ of the knot range) needs K · 10⁻³ < 1.
pub const MAX_SPLINE_BINS: usize = 256;

/// `spline_bins` as given (default [`DEFAULT_SPLINE_BINS`]), checked to lie in
/// 2..=[`MAX_SPLINE_BINS`].
pub fn spline_bins(given: Option<i64>) -> Result<usize, PluginError> {
    let k = given.unwrap_or(DEFAULT_SPLINE_BINS as i64);
    if !(2..=MAX_SPLINE_BINS as i64).contains(&k) {
        return Err(PluginError::config(format!("spline_bins: must be between 2 and {MAX_SPLINE_BINS}, got {k}")));
    }
    Ok(k as usize)
}

/// The conditioners' checked shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub layers: usize,
    pub hidden: Vec<usize>,
    pub kernel: usize,
}

/// Checks a stripe-mask period (`mask_period`, 2 to 2^16) against the lattice `shape`: each
/// extent must be a multiple of it and at least it. Errors name the key and the value; returns
/// the period.
pub fn check_mask_period(p: i64, shape: &[usize]) -> Result<usize, PluginError> {
    if !(2..=1 << 16).contains(&p) {
        return Err(PluginError::config(format!(
            "mask_period: must be at least 2 (an active and a passive stripe; with 2 there is no frozen stripe and \
             each layer's map does not depend on the configuration), got {p}"
        )));
    }
    let p = p as usize;
    if shape.iter().any(|&l| l < p || l % p != 0) {
        return Err(PluginError::config(format!(
            "lattice: each extent must be a multiple of mask_period = {p} and at least {p} (the stripe masks repeat \
             with period {p}); the lattice is {shape:?}"
        )));
    }
    Ok(p)
}

/// Checks `layers` (1 to 1024), `hidden` (channel counts 1 to `max_hidden`) and `kernel` (odd,
/// at least 1, at most the smallest extent of `shape`); errors name the key and the value.
pub fn check_network(
    layers: i64,
    hidden: &[i64],
    kernel: i64,
    max_hidden: i64,
    shape: &[usize],
) -> Result<Network, PluginError> {
    if layers < 1 {
        return Err(PluginError::config(format!("layers: must be at least 1, got {layers}")));
    }
    if layers > 1024 {
        return Err(PluginError::config(format!("layers: at most 1024, got {layers}")));
    }
    for (i, &h) in hidden.iter().enumerate() {
        if !(1..=max_hidden).contains(&h) {
            return Err(PluginError::config(format!(
                "hidden[{i}]: channel counts must be between 1 and {max_hidden}, got {h}"
            )));
        }
    }
    if kernel < 1 || kernel % 2 == 0 {
        return Err(PluginError::config(format!("kernel: must be odd and at least 1, got {kernel}")));
    }
    let min_extent = shape.iter().copied().min().unwrap_or(0);
    if kernel as usize > min_extent {
        return Err(PluginError::config(format!(
            "kernel: {kernel} exceeds the smallest lattice extent {min_extent} (lattice {shape:?})"
        )));
    }
    Ok(Network {
        layers: layers as usize,
        hidden: hidden.iter().map(|&h| h as usize).collect(),
        kernel: kernel as usize,
    })
}

/// The dynamical components of a layout (those that configurations hold).
pub fn dynamical(layout: &FieldLayout) -> Vec<&FieldComponent> {
    layout.components.iter().filter(|c| c.role == FieldRole::Dynamical).collect()
}

/// A plugin's architecture record: what determines the weights' shapes and meaning, stored in
/// saved weights as JSON. The fields every plugin has come first, in this order; the plugin's
/// own record `X` follows (flattened, in its own order), and its fields read through `Deref`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture<C, X> {
    pub model: String,
    pub coupling: C,
    pub layers: usize,
    pub hidden: Vec<usize>,
    pub kernel: usize,
    pub activation: Activation,
    #[serde(flatten)]
    pub own: X,
}

impl<C, X> Architecture<C, X> {
    /// The record of plugin `model` with the given coupling, network and activation, and the
    /// plugin's own part `own`.
    pub fn new(model: &str, coupling: C, net: Network, activation: Activation, own: X) -> Self {
        let Network { layers, hidden, kernel } = net;
        Self { model: model.into(), coupling, layers, hidden, kernel, activation, own }
    }
}

impl<C: Serialize, X: Serialize> Architecture<C, X> {
    /// The record as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("architecture serialises")
    }
}

impl<C, X> std::ops::Deref for Architecture<C, X> {
    type Target = X;
    fn deref(&self) -> &X {
        &self.own
    }
}

/// Everything that determines a model: the architecture `A` (what the weights mean) plus the
/// run-time choices (device, initial seed) that do not.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig<A> {
    pub arch: A,
    pub device: DeviceCfg,
    pub init_seed: u64,
}

/// Describes the first difference between two architecture records (JSON objects), skipping
/// the keys in `ignore`, in the form `"weights are for layers=8, this model has layers=16"`.
pub fn describe_difference(file: &serde_json::Value, ours: &serde_json::Value, ignore: &[&str]) -> Option<String> {
    let (Some(f), Some(o)) = (file.as_object(), ours.as_object()) else {
        return if file == ours { None } else { Some(format!("weights are for {file}, this model is {ours}")) };
    };
    let mut keys: Vec<&String> = f.keys().chain(o.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if ignore.contains(&k.as_str()) {
            continue;
        }
        let a = f.get(k);
        let b = o.get(k);
        if a != b {
            let show = |v: Option<&serde_json::Value>| match v {
                None => "(absent)".to_string(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            return Some(format!("weights are for {k}={}, this model has {k}={}", show(a), show(b)));
        }
    }
    None
}

/// Nonlinearity between the convolutions of a conditioner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(x, 0.01 x), torch's `LeakyReLU()` default slope.
    #[default]
    LeakyRelu,
    Tanh,
    Relu,
    /// The exact (erf) GELU, torch's `GELU()` default.
    Gelu,
}

impl Activation {
    /// The activation as candle ops.
    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::LeakyRelu => x.maximum(&x.affine(LEAKY_SLOPE, 0.0)?),
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu_erf(),
        }
    }

    /// The activation that the fused kernels apply inside a convolution (GELU: none; it
    /// follows as a candle op).
    pub fn fused(self) -> Act {
        match self {
            Activation::LeakyRelu => Act::LeakyRelu,
            Activation::Relu => Act::Relu,
            Activation::Tanh => Act::Tanh,
            Activation::Gelu => Act::Identity,
        }
    }
}

/// Floating-point type of the weights and of the flow's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DTypeCfg {
    #[default]
    F32,
    F64,
}

impl DTypeCfg {
    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DTypeCfg::F32 => candle_core::DType::F32,
            DTypeCfg::F64 => candle_core::DType::F64,
        }
    }
}

/// Where the flow runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceCfg {
    #[default]
    Cpu,
    Cuda,
}

impl DeviceCfg {
    /// The candle device (CUDA: GPU 0). Without the `cuda` feature, `Cuda` is a configuration
    /// error that names the plugin (`plugin`, whose crate is `latflow-{plugin}`) to rebuild with
    /// `--features cuda`.
    pub fn device(self, plugin: &str) -> Result<candle_core::Device, latflow_core::PluginError> {
        match self {
            DeviceCfg::Cpu => Ok(candle_core::Device::Cpu),
            DeviceCfg::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    let _ = plugin;
                    candle_core::Device::new_cuda(0)
                        .map_err(|e| latflow_core::PluginError::config(format!("device: \"cuda\" is unavailable: {e}")))
                }
                #[cfg(not(feature = "cuda"))]
                {
                    Err(latflow_core::PluginError::config(format!(
                        "device: \"cuda\" needs {plugin} built with its `cuda` feature \
                         (cargo build --release -p latflow-{plugin} --features cuda); this build is CPU-only"
                    )))
                }
            }
        }
    }
}
