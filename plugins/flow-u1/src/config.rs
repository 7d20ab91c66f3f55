//! The `[model]` section: parsing, validation, the layout check, and the architecture record.

use latflow_core::abi::{parse_config, PluginError};
use latflow_core::layout::{ElementKind, FieldLayout, FieldRole, Support};
use serde::{Deserialize, Serialize};

use crate::ncp::MAX_N_MIX;

pub use latflow_flow_common::config::{Activation, DTypeCfg, DeviceCfg};

/// The circle map applied to the active plaquettes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coupling {
    /// A mixture of `n_mix` non-compact projections plus a rotation ([`crate::ncp`]).
    #[default]
    Ncp,
    /// A circular rational-quadratic spline of `spline_bins` bins plus a rotation
    /// ([`crate::spline`]).
    Spline,
}

/// The run card's `[model]` section (minus `plugin` and the host's keys), as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_layers")]
    layers: i64,
    #[serde(default = "default_hidden")]
    hidden: Vec<i64>,
    #[serde(default = "default_kernel")]
    kernel: i64,
    #[serde(default)]
    activation: Activation,
    #[serde(default)]
    coupling: Coupling,
    n_mix: Option<i64>,
    spline_bins: Option<i64>,
    #[serde(default = "default_mask_period")]
    mask_period: i64,
    #[serde(default)]
    dtype: DTypeCfg,
    #[serde(default)]
    device: DeviceCfg,
    #[serde(default)]
    init_seed: u64,
}

fn default_layers() -> i64 {
    16
}
fn default_hidden() -> Vec<i64> {
    vec![8, 8]
}
fn default_kernel() -> i64 {
    3
}
fn default_mask_period() -> i64 {
    4
}

/// Default number of NCP mixture components (the peer's).
pub const DEFAULT_N_MIX: usize = 2;
/// Default number of spline bins K.
pub const DEFAULT_SPLINE_BINS: usize = 8;
/// Largest K: the minimum bin size (10⁻³ of 2π) needs K · 10⁻³ < 1.
pub const MAX_SPLINE_BINS: usize = 256;

/// Everything that determines the model: the architecture (what the weights mean) plus the
/// run-time choices (device, initial seed) that do not.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub device: DeviceCfg,
    pub init_seed: u64,
}

/// What determines the weights' shapes and meaning. Stored in saved weights as JSON; `load`
/// requires equality, `init_from` equality up to `lattice` and `dtype`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub model: String,
    pub coupling: Coupling,
    pub layers: usize,
    pub hidden: Vec<usize>,
    pub kernel: usize,
    pub activation: Activation,
    /// n, with `coupling = "ncp"` only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n_mix: Option<usize>,
    /// K, with `coupling = "spline"` only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub spline_bins: Option<usize>,
    pub mask_period: usize,
    /// "stripes": Kanwar et al.'s masks (see [`crate::geometry`]).
    pub masks: String,
    /// What the CNN reads: "cos_sin_frozen" (cos P, sin P on frozen plaquettes, (1, 0) elsewhere).
    pub inputs: String,
    pub dtype: DTypeCfg,
    pub lattice: Vec<usize>,
}

impl Architecture {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("architecture serialises")
    }

    /// Output channels of a conditioner: n + 1 (NCP) or 3K + 1 (spline).
    pub fn conditioner_outputs(&self) -> usize {
        match self.coupling {
            Coupling::Ncp => self.n_mix.unwrap_or(DEFAULT_N_MIX) + 1,
            Coupling::Spline => 3 * self.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS) + 1,
        }
    }

    /// (C_in, C_out) of each convolution of a conditioner: 2 → hidden … → outputs.
    pub fn channels(&self) -> Vec<(usize, usize)> {
        let mut sizes = vec![2usize];
        sizes.extend(&self.hidden);
        sizes.push(self.conditioner_outputs());
        sizes.windows(2).map(|w| (w[0], w[1])).collect()
    }
}

/// Describes a layout's dynamical components for error messages.
fn describe(layout: &FieldLayout) -> String {
    let dynamical: Vec<_> = layout.components.iter().filter(|c| c.role == FieldRole::Dynamical).collect();
    let list = dynamical
        .iter()
        .map(|c| format!("'{}': {:?} per {:?}", c.name, c.element, c.support))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} dynamical component{} ({list}) on the lattice {:?}",
        dynamical.len(),
        if dynamical.len() == 1 { "" } else { "s" },
        layout.shape()
    )
}

/// Checks that `layout` is 2D U(1) links (one dynamical component, an Angle per Link) and
/// returns the lattice shape.
pub fn check_layout(layout: &FieldLayout) -> Result<[usize; 2], PluginError> {
    let dynamical: Vec<_> = layout.components.iter().filter(|c| c.role == FieldRole::Dynamical).collect();
    let ok =
        dynamical.len() == 1 && dynamical[0].support == Support::Link && dynamical[0].element == ElementKind::Angle;
    if !ok {
        return Err(PluginError::config(format!(
            "flow-u1 needs U(1) link angles (one dynamical component: an Angle per Link, on a 2D lattice); \
             the theory's layout has {}",
            describe(layout)
        )));
    }
    if layout.dim() != 2 {
        return Err(PluginError::config(format!(
            "flow-u1 needs a 2D lattice (its masks and plaquettes are those of two dimensions); the theory's \
             lattice is {:?} ({}D)",
            layout.shape(),
            layout.dim()
        )));
    }
    let s = layout.shape();
    Ok([s[0], s[1]])
}

/// Parses and validates the `[model]` section (JSON) for `layout`.
pub fn parse(json: &str, layout: &FieldLayout) -> Result<ModelConfig, PluginError> {
    let raw: RawConfig = parse_config(json)?;
    let shape = check_layout(layout)?;
    let (n_mix, spline_bins) = match raw.coupling {
        Coupling::Ncp => {
            if raw.spline_bins.is_some() {
                return Err(PluginError::config(
                    "spline_bins: only used with coupling = \"spline\" (the coupling is \"ncp\")",
                ));
            }
            let n = raw.n_mix.unwrap_or(DEFAULT_N_MIX as i64);
            if !(1..=MAX_N_MIX as i64).contains(&n) {
                return Err(PluginError::config(format!("n_mix: must be between 1 and {MAX_N_MIX}, got {n}")));
            }
            (Some(n as usize), None)
        }
        Coupling::Spline => {
            if raw.n_mix.is_some() {
                return Err(PluginError::config(
                    "n_mix: only used with coupling = \"ncp\" (the coupling is \"spline\")",
                ));
            }
            let k = raw.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS as i64);
            if !(2..=MAX_SPLINE_BINS as i64).contains(&k) {
                return Err(PluginError::config(format!(
                    "spline_bins: must be between 2 and {MAX_SPLINE_BINS}, got {k}"
                )));
            }
            (None, Some(k as usize))
        }
    };
    if raw.layers < 1 {
        return Err(PluginError::config(format!("layers: must be at least 1, got {}", raw.layers)));
    }
    if raw.layers > 1024 {
        return Err(PluginError::config(format!("layers: at most 1024, got {}", raw.layers)));
    }
    for (i, &h) in raw.hidden.iter().enumerate() {
        if !(1..=4096).contains(&h) {
            return Err(PluginError::config(format!(
                "hidden[{i}]: channel counts must be between 1 and 4096, got {h}"
            )));
        }
    }
    let p = raw.mask_period;
    if !(3..=1 << 16).contains(&p) {
        return Err(PluginError::config(format!(
            "mask_period: must be at least 3 (an active, a passive and at least one frozen stripe), got {p}"
        )));
    }
    let p = p as usize;
    if shape.iter().any(|&l| l < p || l % p != 0) {
        return Err(PluginError::config(format!(
            "lattice: each extent must be a multiple of mask_period = {p} and at least {p} (the stripe masks repeat \
             with period {p}); the lattice is {shape:?}"
        )));
    }
    let min_extent = shape[0].min(shape[1]);
    if raw.kernel < 1 || raw.kernel % 2 == 0 {
        return Err(PluginError::config(format!("kernel: must be odd and at least 1, got {}", raw.kernel)));
    }
    if raw.kernel as usize > min_extent {
        return Err(PluginError::config(format!(
            "kernel: {} exceeds the smallest lattice extent {min_extent} (lattice {shape:?})",
            raw.kernel
        )));
    }
    let arch = Architecture {
        model: crate::NAME.into(),
        coupling: raw.coupling,
        layers: raw.layers as usize,
        hidden: raw.hidden.iter().map(|&h| h as usize).collect(),
        kernel: raw.kernel as usize,
        activation: raw.activation,
        n_mix,
        spline_bins,
        mask_period: p,
        masks: "stripes".into(),
        inputs: "cos_sin_frozen".into(),
        dtype: raw.dtype,
        lattice: shape.to_vec(),
    };
    Ok(ModelConfig { arch, device: raw.device, init_seed: raw.init_seed })
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
