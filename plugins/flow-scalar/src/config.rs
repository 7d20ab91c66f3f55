//! The `[model]` section: parsing, validation, and the architecture record.

use latflow_core::abi::{parse_config, PluginError};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
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
    /// Sampling only: training minimises the reverse KL of the unsymmetrised q.
    Symmetrize,
    /// The model is the mixture q_sym(φ) = ½(q(φ) + q(−φ)) in training as in sampling: sampling as
    /// with `Symmetrize`, and training minimises the reverse KL of q_sym itself, so the flow is
    /// never penalised for favouring one sign (each step costs one more inverse pass, two with
    /// path gradients). Weights are interchangeable with `None` and `Symmetrize`.
    Mixture,
    /// A Z₂-equivariant network (affine couplings only): every conditioner output is split into
    /// its even part s(x) = ½(n_s(x) + n_s(−x)) and odd part t(x) = ½(n_t(x) − n_t(−x)), so each
    /// layer obeys f(−x) = −f(x) with an even log-determinant, and with the symmetric priors
    /// q(−φ) = q(φ) exactly, in training as in sampling. It costs two conditioner passes.
    Equivariant,
}

latflow_flow_common::model_keys! {
    /// The run card's `[model]` section (minus `plugin` and the host's keys), as written.
    RawConfig {
        #[serde(default)]
        prior: PriorKind,
        prior_m2: Option<f64>,
        #[serde(default)]
        coupling: Coupling,
        #[serde(default)]
        z2: Z2,
        spline_bins: Option<i64>,
        spline_bound: Option<f64>,
    }
}

pub use latflow_flow_common::config::{DEFAULT_SPLINE_BINS, MAX_SPLINE_BINS};

/// Default half-width B of the spline interval [−B, B] (fields of O(1); identity outside).
pub const DEFAULT_SPLINE_BOUND: f64 = 4.0;
/// Largest volume for `prior = "free"`: its square-root covariance is a dense V×V matrix in f64
/// (8·V² bytes: 128 MiB at V = 4096) and every draw costs V² multiply-adds.
pub const MAX_FREE_PRIOR_VOLUME: usize = 4096;

/// Everything that determines the model: the architecture plus the device and initial seed.
pub type ModelConfig = latflow_flow_common::config::ModelConfig<Architecture>;

/// What determines the weights' shapes and meaning. Stored in saved weights as JSON and
/// compared on `load`.
pub type Architecture = latflow_flow_common::config::Architecture<Coupling, ScalarArch>;

/// flow-scalar's own part of the architecture record, after the shared fields (model, coupling,
/// layers, hidden, kernel, activation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalarArch {
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

/// Output channels of a conditioner: (s, t) for affine, 3K − 1 spline parameters.
pub fn conditioner_outputs(arch: &Architecture) -> usize {
    match arch.coupling {
        Coupling::Affine => 2,
        Coupling::Spline => 3 * arch.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS) - 1,
    }
}

/// Checks that `layout` is a real scalar field and returns its lattice.
pub fn check_layout(layout: &FieldLayout) -> Result<Lattice, PluginError> {
    let dynamical = latflow_flow_common::config::dynamical(layout);
    let describe = || {
        let list: Vec<_> = dynamical.iter().map(|c| format!("'{}': {:?} {:?}", c.name, c.support, c.element)).collect();
        list.join(", ")
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
            let bins = latflow_flow_common::config::spline_bins(raw.spline_bins)?;
            let bound = raw.spline_bound.unwrap_or(DEFAULT_SPLINE_BOUND);
            if !(bound.is_finite() && bound > 0.0 && bound <= 1e6) {
                return Err(PluginError::config(format!(
                    "spline_bound: must be finite, > 0 and at most 1e6, got {bound}"
                )));
            }
            (Some(bins), Some(bound))
        }
    };
    let net = latflow_flow_common::config::check_network(raw.layers, &raw.hidden, raw.kernel, 65536, lattice.shape())?;
    let kvol = net.kernel.checked_pow(lattice.dim() as u32).filter(|&k| k <= 1 << 20);
    if kvol.is_none() {
        return Err(PluginError::config(format!(
            "kernel: {} in {} dimensions gives too many offsets",
            net.kernel,
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
    let own = ScalarArch {
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
    let arch = Architecture::new(crate::NAME, raw.coupling, net, raw.activation, own);
    Ok((ModelConfig { arch, device: raw.device, init_seed: raw.init_seed }, lattice))
}

/// The architecture keys that `load` skips when comparing records `file` and `ours`: z2
/// symmetrisation wraps sampling and log q and has no weights of its own, so weights trained
/// either way load into a model with either setting; an equivariant network is another function
/// of its weights, so it only takes weights trained equivariant.
pub fn load_ignores(file: &serde_json::Value, ours: &serde_json::Value) -> &'static [&'static str] {
    let equivariant = |v: &serde_json::Value| v.get("z2").and_then(|z| z.as_str()) == Some("equivariant");
    if equivariant(file) == equivariant(ours) {
        &["z2"]
    } else {
        &[]
    }
}
