//! The `[model]` section: parsing, validation, the layout check, and the architecture record.

use latflow_core::abi::{parse_config, PluginError};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
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

latflow_flow_common::model_keys! {
    /// The run card's `[model]` section (minus `plugin` and the host's keys), as written.
    RawConfig {
        #[serde(default)]
        coupling: Coupling,
        n_mix: Option<i64>,
        spline_bins: Option<i64>,
        #[serde(default = "default_mask_period")]
        mask_period: i64,
    }
}

fn default_mask_period() -> i64 {
    4
}

/// Default number of NCP mixture components (the peer's).
pub const DEFAULT_N_MIX: usize = 2;
pub use latflow_flow_common::config::{DEFAULT_SPLINE_BINS, MAX_SPLINE_BINS};

/// Everything that determines the model: the architecture plus the device and initial seed.
pub type ModelConfig = latflow_flow_common::config::ModelConfig<Architecture>;

/// What determines the weights' shapes and meaning. Stored in saved weights as JSON; `load`
/// requires equality, `init_from` equality up to `lattice` and `dtype`.
pub type Architecture = latflow_flow_common::config::Architecture<Coupling, U1Arch>;

/// flow-u1's own part of the architecture record, after the shared fields (model, coupling,
/// layers, hidden, kernel, activation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct U1Arch {
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

/// Output channels of a conditioner: n + 1 (NCP) or 3K + 1 (spline).
pub fn conditioner_outputs(arch: &Architecture) -> usize {
    match arch.coupling {
        Coupling::Ncp => arch.n_mix.unwrap_or(DEFAULT_N_MIX) + 1,
        Coupling::Spline => 3 * arch.spline_bins.unwrap_or(DEFAULT_SPLINE_BINS) + 1,
    }
}

/// (C_in, C_out) of each convolution of a conditioner: 2 → hidden … → outputs.
pub fn channels(arch: &Architecture) -> Vec<(usize, usize)> {
    let mut sizes = vec![2usize];
    sizes.extend(&arch.hidden);
    sizes.push(conditioner_outputs(arch));
    sizes.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Describes a layout's dynamical components for error messages.
fn describe(layout: &FieldLayout) -> String {
    let dynamical = latflow_flow_common::config::dynamical(layout);
    let list: Vec<_> = dynamical.iter().map(|c| format!("'{}': {:?} per {:?}", c.name, c.element, c.support)).collect();
    let list = list.join(", ");
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
    let dynamical = latflow_flow_common::config::dynamical(layout);
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
            (None, Some(latflow_flow_common::config::spline_bins(raw.spline_bins)?))
        }
    };
    let p = latflow_flow_common::config::check_mask_period(raw.mask_period, &shape)?;
    let net = latflow_flow_common::config::check_network(raw.layers, &raw.hidden, raw.kernel, 4096, &shape)?;
    let own = U1Arch {
        n_mix,
        spline_bins,
        mask_period: p,
        masks: "stripes".into(),
        inputs: "cos_sin_frozen".into(),
        dtype: raw.dtype,
        lattice: shape.to_vec(),
    };
    let arch = Architecture::new(crate::NAME, raw.coupling, net, raw.activation, own);
    Ok(ModelConfig { arch, device: raw.device, init_seed: raw.init_seed })
}
