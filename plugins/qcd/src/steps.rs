//! The theory's own step kind `pf_hmc`: one pseudofermion HMC trajectory (the same action
//! levels and core integrator as the host's `kind = "hmc"`) that also records the CG
//! iterations it spent. Columns per trajectory: `metropolis_accepted` (1 or 0; the host reserves `accepted`), `delta_h`, `cg_iterations`
//! (every CG iteration of the trajectory: heat-bath, action and force solves of all terms).
//!
//! The host counts a theory step's applications as accepted, so the acceptance rate of a
//! `pf_hmc` step is the mean of its `metropolis_accepted` column, not the step's acceptance summary.
//!
//! Options (the `[[chain]]` entry's keys besides `kind` and `repeat`): `trajectory_length`
//! (default 1), `md_steps` (outer steps, default 10), `inner_steps` (sub-steps of each inner
//! level, default 1 each), `integrator` (`leapfrog`, `omelyan2` (default), `omelyan4`,
//! `force_gradient`).

use std::cell::Cell;
use std::rc::Rc;

use latflow_core::abi::{HmcParams, IntegratorKind, PluginError};
use latflow_core::gauge::fermion::WilsonGroup;
use latflow_core::hmc::{hmc_trajectory, LeveledAction};
use latflow_core::sdk::{hmc_error, unknown_step, Physics};
use latflow_core::Stream;
use serde::Deserialize;

use crate::{with_theory, Group, Qcd, QcdSpace};

/// The step kinds, as written in run cards.
pub const KINDS: [&str; 1] = ["pf_hmc"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "one")]
    trajectory_length: f64,
    #[serde(default = "ten")]
    md_steps: u32,
    #[serde(default)]
    inner_steps: Vec<u32>,
    #[serde(default = "omelyan2")]
    integrator: String,
}

fn one() -> f64 {
    1.0
}

fn ten() -> u32 {
    10
}

fn omelyan2() -> String {
    "omelyan2".into()
}

/// The HMC parameters of a `pf_hmc` step's options, validated against the theory's levels.
pub fn params(t: &Qcd, options: &serde_json::Value) -> Result<HmcParams, PluginError> {
    let o: Options = latflow_core::abi::parse_config(&options.to_string())?;
    let integrator = IntegratorKind::KNOWN.iter().copied().find(|k| k.describe() == o.integrator).ok_or_else(|| {
        PluginError::config(format!(
            "integrator: unknown integrator '{}' (expected leapfrog, omelyan2, omelyan4 or force_gradient)",
            o.integrator
        ))
    })?;
    let p = HmcParams {
        trajectory_length: o.trajectory_length,
        md_steps: o.md_steps,
        integrator,
        inner_steps: o.inner_steps.into(),
        ..HmcParams::default()
    };
    t.schedule(&p, t.kappas().len() + 1)?;
    Ok(p)
}

/// Checks `kind` and its options; returns the columns.
pub fn columns(
    t: &Qcd,
    kind: &str,
    options: &serde_json::Value,
) -> Result<Vec<String>, PluginError> {
    if !KINDS.contains(&kind) {
        return Err(unknown_step("qcd", kind, &KINDS));
    }
    params(t, options)?;
    Ok(vec![
        "metropolis_accepted".into(),
        "delta_h".into(),
        "cg_iterations".into(),
    ])
}

fn trajectory<G, const NS: usize>(
    t: &Qcd,
    p: &HmcParams,
    config: &mut [f64],
    rng: &mut Stream,
    out: &mut Vec<f64>,
) -> Result<(), PluginError>
where
    G: WilsonGroup + bytemuck::Pod,
    G::Algebra: bytemuck::Pod,
{
    let count = Rc::new(Cell::new(0));
    let mut action: LeveledAction<'_, QcdSpace> = t.levels_counted::<G, NS>(count.clone())?;
    let schedule = t.schedule(p, action.levels())?;
    let mut u = config.to_vec();
    let rec =
        hmc_trajectory(&t.space(), &mut action, &mut u, &schedule, true, rng).map_err(hmc_error)?;
    config.copy_from_slice(&u);
    out.extend([
        f64::from(u8::from(rec.accepted)),
        rec.delta_h,
        count.get() as f64,
    ]);
    Ok(())
}

/// One application of `kind` (validated by [`columns`]).
pub fn apply(
    t: &Qcd,
    kind: &str,
    options: &serde_json::Value,
    config: &mut [f64],
    rng: &mut Stream,
    out: &mut Vec<f64>,
) -> Result<(), PluginError> {
    if !KINDS.contains(&kind) {
        return Err(unknown_step("qcd", kind, &KINDS));
    }
    let p = params(t, options)?;
    with_theory!(t, G, NS => trajectory::<G, NS>(t, &p, config, rng, out))
}
