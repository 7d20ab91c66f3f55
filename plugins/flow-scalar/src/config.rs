//! The `[model]` section: parsing, validation, and the architecture record.

use latflow_core::abi::{parse_config, PluginError};
use latflow_core::layout::{ElementKind, FieldLayout, FieldRole, Support};
use latflow_core::Lattice;
use serde::{Deserialize, Serialize};

pub use latflow_flow_common::config::{Activation, DTypeCfg, DeviceCfg};

/// The base distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorKind {
    /// N(0, 1) per site.
    #[default]
    #[serde(alias = "gaussian")]
    Normal,
    /// The free field e^{−S₀}, S₀ = Σ_x [Σ_μ (φ(x+μ̂) − φ(x))² + m² φ²] (convention B), m² = `prior_m2`.
    Free,
}

/// The coupling transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coupling {
    #[default]
    Affine,
    /// Monotone rational-quadratic splines with linear tails (Durkan et al. 2019), see
    /// [`crate::spline`].
    Spline,
}

/// The φ → −φ symmetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Z2 {
    #[default]
    None,
    /// Sample φ, then flip its sign with probability ½; log q_sym = logsumexp(log q(φ), log q(−φ)) − ln 2.
    Symmetrize,
    /// A Z₂-equivariant network (affine couplings only): every conditioner output is split into
    /// its even part s(x) = ½(n_s(x) + n_s(−x)) and odd part t(x) = ½(n_t(x) − n_t(−x)), so each
    /// layer obeys f(−x) = −f(x) with an even log-determinant, and with the symmetric priors
    /// q(−φ) = q(φ) exactly, in training as in sampling. It costs two conditioner passes.
    Equivariant,
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
    dtype: DTypeCfg,
    #[serde(default)]
    device: DeviceCfg,
    #[serde(default)]
    prior: PriorKind,
    prior_m2: Option<f64>,
    #[serde(default)]
    init_seed: u64,
    #[serde(default)]
    coupling: Coupling,
    #[serde(default)]
    z2: Z2,
    spline_bins: Option<i64>,
    spline_bound: Option<f64>,
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

/// Default number of spline bins K.
pub const DEFAULT_SPLINE_BINS: usize = 8;
/// Default half-width B of the spline interval [−B, B] (fields of O(1); identity outside).
pub const DEFAULT_SPLINE_BOUND: f64 = 4.0;
/// Largest K: the minimum bin size (10⁻³ of the interval) needs K · 10⁻³ < 1.
pub const MAX_SPLINE_BINS: usize = 256;

/// Largest volume for `prior = "free"`: its square-root covariance is a dense V×V matrix in f64
/// (8·V² bytes: 128 MiB at V = 4096) and every draw costs V² multiply-adds.
pub const MAX_FREE_PRIOR_VOLUME: usize = 4096;

/// Everything that determines the model: the architecture (what the weights mean) plus the
/// run-time choices (device, initial seed) that do not.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub device: DeviceCfg,
    pub init_seed: u64,
}

/// What determines the weights' shapes and meaning. Stored in saved weights as JSON and
/// compared on `load`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub model: String,
    pub coupling: Coupling,
    pub layers: usize,
    pub hidden: Vec<usize>,
    pub kernel: usize,
    pub activation: Activation,
    pub scale_bound: String,
    pub masks: String,
    pub dtype: DTypeCfg,
    pub prior: PriorKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prior_m2: Option<f64>,
    pub z2: Z2,
    pub lattice: Vec<usize>,
    /// K, with `coupling = "spline"` only (absent for affine, so affine records are unchanged).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub spline_bins: Option<usize>,
    /// B, with `coupling = "spline"` only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub spline_bound: Option<f64>,
}

impl Architecture {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("architecture serialises")
    }

    /// Output channels of a conditioner: (s, t) for affine, 3K − 1 spline parameters.
    pub fn conditioner_outputs(&self) -> usize {
        match self.coupling {
            Coupling::Affine => 2,
            Coupling::Spline => 3 * self.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS) - 1,
        }
    }
}

/// Checks that `layout` is a real scalar field and returns its lattice.
pub fn check_layout(layout: &FieldLayout) -> Result<Lattice, PluginError> {
    let dynamical: Vec<_> = layout.components.iter().filter(|c| c.role == FieldRole::Dynamical).collect();
    let describe = || {
        dynamical
            .iter()
            .map(|c| format!("'{}': {:?} {:?}", c.name, c.support, c.element))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if dynamical.len() != 1 {
        return Err(PluginError::config(format!(
            "flow-scalar models a real scalar field: the theory's layout must have exactly one dynamical \
             component, a Real per Site; it has {} ({})",
            dynamical.len(),
            describe()
        )));
    }
    let c = dynamical[0];
    if c.support != Support::Site || c.element != ElementKind::Real {
        return Err(PluginError::config(format!(
            "flow-scalar models a real scalar field: expected one Real per Site, but the theory's component {} is given",
            describe()
        )));
    }
    let extents: Vec<i64> = layout.lattice.iter().map(|&l| i64::try_from(l).unwrap_or(i64::MAX)).collect();
    let lattice = Lattice::new(&extents).map_err(|e| PluginError::config(format!("layout lattice: {e}")))?;
    Ok(lattice)
}

/// Parses and validates the `[model]` section (JSON) for `layout`.
pub fn parse(json: &str, layout: &FieldLayout) -> Result<(ModelConfig, Lattice), PluginError> {
    let raw: RawConfig = parse_config(json)?;
    let lattice = check_layout(layout)?;
    let (spline_bins, spline_bound) = match raw.coupling {
        Coupling::Affine => {
            if raw.spline_bins.is_some() || raw.spline_bound.is_some() {
                let key = if raw.spline_bins.is_some() { "spline_bins" } else { "spline_bound" };
                return Err(PluginError::config(format!(
                    "{key}: only used with coupling = \"spline\" (the coupling is \"affine\")"
                )));
            }
            (None, None)
        }
        Coupling::Spline => {
            if raw.z2 == Z2::Equivariant {
                return Err(PluginError::config(
                    "z2: \"equivariant\" needs coupling = \"affine\" (for splines use z2 = \"symmetrize\")",
                ));
            }
            let bins = raw.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS as i64);
            if !(2..=MAX_SPLINE_BINS as i64).contains(&bins) {
                return Err(PluginError::config(format!(
                    "spline_bins: must be between 2 and {MAX_SPLINE_BINS}, got {bins}"
                )));
            }
            let bound = raw.spline_bound.unwrap_or(DEFAULT_SPLINE_BOUND);
            if !(bound.is_finite() && bound > 0.0 && bound <= 1e6) {
                return Err(PluginError::config(format!(
                    "spline_bound: must be finite, > 0 and at most 1e6, got {bound}"
                )));
            }
            (Some(bins as usize), Some(bound))
        }
    };
    if raw.layers < 1 {
        return Err(PluginError::config(format!("layers: must be at least 1, got {}", raw.layers)));
    }
    if raw.layers > 1024 {
        return Err(PluginError::config(format!("layers: at most 1024, got {}", raw.layers)));
    }
    for (i, &h) in raw.hidden.iter().enumerate() {
        if !(1..=65536).contains(&h) {
            return Err(PluginError::config(format!(
                "hidden[{i}]: channel counts must be between 1 and 65536, got {h}"
            )));
        }
    }
    let min_extent = *lattice.shape().iter().min().expect("lattice has a dimension");
    if raw.kernel < 1 || raw.kernel % 2 == 0 {
        return Err(PluginError::config(format!("kernel: must be odd and at least 1, got {}", raw.kernel)));
    }
    if raw.kernel as usize > min_extent {
        return Err(PluginError::config(format!(
            "kernel: {} exceeds the smallest lattice extent {min_extent} (lattice {:?})",
            raw.kernel,
            lattice.shape()
        )));
    }
    let kvol = (raw.kernel as usize).checked_pow(lattice.dim() as u32).filter(|&k| k <= 1 << 20);
    if kvol.is_none() {
        return Err(PluginError::config(format!(
            "kernel: {} in {} dimensions gives too many offsets",
            raw.kernel,
            lattice.dim()
        )));
    }
    lattice.require_even().map_err(|e| {
        PluginError::config(format!(
            "lattice: the checkerboard masks need even extents: {e} (lattice {:?})",
            lattice.shape()
        ))
    })?;
    let prior_m2 = match (raw.prior, raw.prior_m2) {
        (PriorKind::Normal, None) => None,
        (PriorKind::Normal, Some(_)) => {
            return Err(PluginError::config("prior_m2: only used with prior = \"free\" (the prior is \"normal\")"))
        }
        (PriorKind::Free, None) => {
            return Err(PluginError::config("prior_m2: missing (prior = \"free\" needs the free field's mass² > 0)"))
        }
        (PriorKind::Free, Some(m2)) => {
            if !(m2.is_finite() && m2 > 0.0) {
                return Err(PluginError::config(format!("prior_m2: must be finite and > 0, got {m2}")));
            }
            if lattice.volume() > MAX_FREE_PRIOR_VOLUME {
                return Err(PluginError::config(format!(
                    "prior: \"free\" uses a dense V×V square-root covariance and supports volumes up to {MAX_FREE_PRIOR_VOLUME}; \
                     the lattice {:?} has V = {}",
                    lattice.shape(),
                    lattice.volume()
                )));
            }
            Some(m2)
        }
    };
    let arch = Architecture {
        model: crate::NAME.into(),
        coupling: raw.coupling,
        layers: raw.layers as usize,
        hidden: raw.hidden.iter().map(|&h| h as usize).collect(),
        kernel: raw.kernel as usize,
        activation: raw.activation,
        scale_bound: match raw.coupling {
            Coupling::Affine => "tanh".into(),
            Coupling::Spline => "none".into(),
        },
        masks: "checkerboard".into(),
        dtype: raw.dtype,
        prior: raw.prior,
        prior_m2,
        z2: raw.z2,
        lattice: lattice.shape().to_vec(),
        spline_bins,
        spline_bound,
    };
    Ok((ModelConfig { arch, device: raw.device, init_seed: raw.init_seed }, lattice))
}

/// Describes the first difference between two architecture records (as JSON objects), in the
/// form `"weights are for layers=8, this model has layers=16"`.
pub fn describe_difference(file: &serde_json::Value, ours: &serde_json::Value) -> Option<String> {
    let (Some(f), Some(o)) = (file.as_object(), ours.as_object()) else {
        return if file == ours { None } else { Some(format!("weights are for {file}, this model is {ours}")) };
    };
    let mut keys: Vec<&String> = f.keys().chain(o.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        // z2 symmetrisation wraps sampling and log q; it has no weights of its own, so weights
        // trained either way load into a model with either setting. An equivariant network is
        // another function of its weights, so it only takes weights trained equivariant.
        let equivariant = |v: &serde_json::Value| v.get("z2").and_then(|z| z.as_str()) == Some("equivariant");
        if k == "z2" && equivariant(file) == equivariant(ours) {
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
