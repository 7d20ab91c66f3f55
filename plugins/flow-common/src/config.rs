//! `[model]` keys that every candle flow plugin reads the same way: the conditioners'
//! activation, the dtype and the device.
//!
//! Contract: the enums (de)serialise as snake_case strings (`"leaky_relu"`, `"f64"`, `"cuda"`,
//! …) with the first variant as the default, both in run cards and in the
//! `latflow.architecture` record of saved weights; a plugin re-exports them from its own
//! `config` module, so the record's format is the plugin's as before.

use serde::{Deserialize, Serialize};

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

/// Floating-point type of the weights and of the flow's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DTypeCfg {
    #[default]
    F32,
    F64,
}

/// Where the flow runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceCfg {
    #[default]
    Cpu,
    Cuda,
}
