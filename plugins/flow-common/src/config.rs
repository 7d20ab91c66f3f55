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
