//! The theory's own Markov steps: `heatbath` (one Cabibbo–Marinari sweep with
//! Kennedy–Pendleton SU(2) draws) and `overrelax` (one overrelaxation sweep), both from core's
//! [`latflow_core::gauge::heatbath`], for the Wilson action. Each application is one sweep
//! over every link and records the action after it (`action`).

use latflow_core::abi::PluginError;
use latflow_core::gauge::flat::view_mut;
use latflow_core::gauge::{heatbath_sweep, heatbath_sweep_split, overrelax_sweep, overrelax_sweep_split, HeatbathError};
use latflow_core::sdk::unknown_step;
use latflow_core::{ErrorKind, Stream};

use crate::kernel::SunGroup;
use crate::Sun;

/// The step kinds, as written in run cards.
pub const KINDS: [&str; 2] = ["heatbath", "overrelax"];

/// Checks that `kind` applies to this theory: no options besides `repeat`, the Wilson action
/// (the sweeps sample e^{−S} only for it), and even extents (links of one parity are updated
/// together). Returns the recorded columns.
pub fn columns(t: &Sun, kind: &str, options: &serde_json::Value) -> Result<Vec<String>, PluginError> {
    if !KINDS.contains(&kind) {
        return Err(unknown_step("sun", kind, &KINDS));
    }
    if let Some(key) = options.as_object().and_then(|o| o.keys().next()) {
        return Err(PluginError::config(format!(
            "{key}: a '{kind}' step takes no options besides repeat (one application is one sweep over every link)"
        )));
    }
    if t.coefficients().c1 != 0.0 {
        return Err(PluginError::config(format!(
            "action: '{kind}' steps sample the Wilson action only, but action = \"{}\" has a rectangle term; \
             use kind = \"hmc\" for improved actions",
            t.action_name()
        )));
    }
    if let Some((axis, &extent)) = t.lattice().shape().iter().enumerate().find(|(_, &l)| l % 2 != 0) {
        return Err(PluginError::config(format!(
            "lattice: '{kind}' updates the links of one parity at a time and needs every extent even, \
             but extent {extent} along axis {axis} is odd"
        )));
    }
    Ok(vec!["action".into()])
}

/// One sweep of `kind` on the links of `config` (on a split lattice, of this rank's slab:
/// core's split sweeps, the same links as on one rank).
pub fn apply<G: SunGroup>(t: &Sun, kind: &str, config: &mut [f64], rng: &mut Stream) -> Result<(), PluginError> {
    if !KINDS.contains(&kind) {
        return Err(unknown_step("sun", kind, &KINDS));
    }
    let (lat, beta) = (t.lattice(), t.coefficients().beta);
    let done = match &t.split {
        None => {
            let u: &mut [G] = view_mut(config).map_err(|e| PluginError::shape(e.to_string()))?;
            if kind == "heatbath" { heatbath_sweep(lat, u, beta, rng) } else { overrelax_sweep(lat, u, beta) }
        }
        Some(s) => s.with_stored::<G, _>(config, |sites, u| {
            if kind == "heatbath" {
                heatbath_sweep_split(lat, &sites, u, beta, rng)
            } else {
                overrelax_sweep_split(lat, &sites, u, beta)
            }
        })?,
    };
    done.map_err(|e| {
        let kind_of = match e {
            HeatbathError::NotFinite { .. } => ErrorKind::Numerical,
            HeatbathError::Beta(_) | HeatbathError::OddExtent { .. } | HeatbathError::Length { .. } => ErrorKind::Config,
            _ => ErrorKind::Internal,
        };
        PluginError::new(kind_of, format!("{kind}: {e}"))
    })
}
