//! The `[model]` section: parsing, validation, the layout check, and the architecture record.

use latflow_core::abi::{parse_config, PluginError};
use latflow_core::layout::{Element, FieldLayout, Support};
use serde::{Deserialize, Serialize};

pub use latflow_flow_common::config::{Activation, DTypeCfg, DeviceCfg};

use crate::spectral::loop_params;

/// The map applied to the active loops' eigenphases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coupling {
    /// Interval rational-quadratic splines on the alcove coordinates ([`crate::spectral`]).
    #[default]
    SpectralSpline,
}

latflow_flow_common::model_keys! {
    /// The run card's `[model]` section (minus `plugin` and the host's keys), as written.
    RawConfig {
        #[serde(default)]
        coupling: Coupling,
        /// The gauge group's N, if the card states it (checked against the theory).
        n: Option<i64>,
        spline_bins: Option<i64>,
        #[serde(default = "default_mask_period")]
        mask_period: i64,
    }
}

fn default_mask_period() -> i64 {
    4
}

pub use latflow_flow_common::config::DEFAULT_SPLINE_BINS;

/// Everything that determines the model: the architecture plus the device and initial seed.
pub type ModelConfig = latflow_flow_common::config::ModelConfig<Architecture>;

/// What determines the weights' shapes and meaning. Stored in saved weights as JSON; `load`
/// requires equality, `init_from` equality up to `lattice` and `dtype`.
pub type Architecture = latflow_flow_common::config::Architecture<Coupling, SunArch>;

/// flow-sun's own part of the architecture record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SunArch {
    /// The gauge group SU(n), n = 2 or 3.
    pub n: usize,
    pub spline_bins: usize,
    pub mask_period: usize,
    /// "stripes": the masks of [`crate::geometry`] (in 2D those of `latflow_flow_common::stripes`,
    /// in D dimensions stripes of hyperplanes x_ν ≡ o).
    pub masks: String,
    /// The active loops: "plaquette".
    pub loops: String,
    /// What the CNN reads: "trace_frozen" (Re Tr P/N, and Im Tr P/N for SU(3), of every plane
    /// on the frozen plaquettes; the identity's values elsewhere).
    pub inputs: String,
    pub dtype: DTypeCfg,
    pub lattice: Vec<usize>,
}

/// Input channels of a conditioner per plane: Re Tr P/N (and Im Tr P/N for SU(3)).
pub fn input_channels(n: usize) -> usize {
    if n == 2 {
        1
    } else {
        2
    }
}

/// (C_in, C_out) of each convolution of a conditioner: inputs (per plane, D(D − 1)/2 planes) →
/// hidden … → loop parameters.
pub fn channels(arch: &Architecture) -> Vec<(usize, usize)> {
    let d = arch.lattice.len();
    let mut sizes = vec![input_channels(arch.n) * d * (d - 1) / 2];
    sizes.extend(&arch.hidden);
    sizes.push(loop_params(arch.n, arch.spline_bins));
    sizes.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Checks that `layout` is SU(2) or SU(3) links in two or more dimensions (one dynamical
/// component, an N×N complex matrix per link) and returns (shape, N).
pub fn check_layout(layout: &FieldLayout) -> Result<(Vec<usize>, usize), PluginError> {
    let dynamical = latflow_flow_common::config::dynamical(layout);
    let n = match dynamical.as_slice() {
        [c] if c.support == Support::Link => match c.element.shape() {
            Element::ComplexMatrix { n } => Some(n as usize),
            _ => None,
        },
        _ => None,
    };
    let list: Vec<_> =
        dynamical.iter().map(|c| format!("'{}': {:?} per {:?}", c.name, c.element.shape(), c.support)).collect();
    let Some(n) = n else {
        return Err(PluginError::config(format!(
            "flow-sun needs SU(N) links (one dynamical component: a ComplexMatrix per Link, as the sun theory \
             has); the theory's layout has [{}]",
            list.join(", ")
        )));
    };
    if n != 2 && n != 3 {
        return Err(PluginError::config(format!(
            "flow-sun supports SU(2) and SU(3) (closed-form eigenphases); the theory's links are {n}×{n} matrices"
        )));
    }
    if layout.dim() < 2 {
        return Err(PluginError::config(format!(
            "flow-sun needs a lattice of two or more dimensions (its loops are plaquettes); the theory's lattice is \
             {:?} ({}D)",
            layout.shape(),
            layout.dim()
        )));
    }
    Ok((layout.shape().to_vec(), n))
}

/// The default `layers` on a D-dimensional lattice with mask period p: 16, or in D ≥ 4 the
/// fewest whole blocks of D·p layers that give every plane active loops, D·p·⌈(D − 1)/2⌉ (32
/// in 4D with p = 4). The first block's loops lie in the planes (μ, μ + 1), block k's in
/// (μ, μ + 1 + k) ([`crate::geometry`]), and the differences ±1, …, ±⌈(D − 1)/2⌉ modulo D
/// reach every pair of directions; in 2D and 3D the first block already does.
pub fn default_layers(dim: usize, mask_period: usize) -> usize {
    let blocks = dim.saturating_sub(1).div_ceil(2).max(1);
    (dim * mask_period * blocks).max(latflow_flow_common::config::default_layers() as usize)
}

/// Whether the `[model]` section (JSON) sets `layers` itself.
fn layers_given(json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json).ok().is_some_and(|v| v.get("layers").is_some())
}

/// Parses and validates the `[model]` section (JSON) for `layout`.
pub fn parse(json: &str, layout: &FieldLayout) -> Result<ModelConfig, PluginError> {
    let raw: RawConfig = parse_config(json)?;
    let (shape, n) = check_layout(layout)?;
    if let Some(want) = raw.n {
        if want != n as i64 {
            return Err(PluginError::config(format!(
                "n: the model is for SU({want}) but the theory's links are SU({n}) ({n}×{n} matrices)"
            )));
        }
    }
    if raw.device != DeviceCfg::Cpu {
        return Err(PluginError::config(
            "device: flow-sun runs on the CPU only (its eigenphase op has no GPU kernel yet); use device = \"cpu\"",
        ));
    }
    let spline_bins = latflow_flow_common::config::spline_bins(raw.spline_bins)?;
    let p = latflow_flow_common::config::check_mask_period(raw.mask_period, &shape)?;
    let layers = if layers_given(json) { raw.layers } else { default_layers(shape.len(), p) as i64 };
    let net = latflow_flow_common::config::check_network(layers, &raw.hidden, raw.kernel, 4096, &shape)?;
    let own = SunArch {
        n,
        spline_bins,
        mask_period: p,
        masks: "stripes".into(),
        loops: "plaquette".into(),
        inputs: "trace_frozen".into(),
        dtype: raw.dtype,
        lattice: shape.to_vec(),
    };
    let arch = Architecture::new(crate::NAME, raw.coupling, net, raw.activation, own);
    Ok(ModelConfig { arch, device: raw.device, init_seed: raw.init_seed })
}
