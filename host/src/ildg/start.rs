//! A run's first configuration from a file: `[run] start = { file = "…", index = k }`.
//!
//! The file may be an ILDG/LIME or NERSC gauge file (one configuration; `index` must be
//! absent or 0) or a latflow ensemble (HDF5; `index` picks a row of `/configs`, the last one
//! by default). The format is recognised from the first bytes. The configuration must match
//! the theory's field layout exactly — lattice extents, support (sites or links), element
//! kind and N — and, for SU(2) or SU(3) links, lie within [`SU_TOLERANCE`] of the group;
//! anything else is refused with a message that names both layouts.

use std::path::Path;

use anyhow::{bail, Result};
use latflow_core::gauge::{GaugeGroup, Su2, Su3};
use latflow_core::layout::{Element, FieldLayout, FieldRole, Support};

use super::convert::read_gauge_file;
use super::*;
use crate::ensemble;

/// The HDF5 file signature.
const HDF5_SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";

/// A configuration to start from and a description of where it came from.
#[derive(Debug, Clone)]
pub struct StartConfig {
    /// The flat configuration in the theory's layout.
    pub config: Vec<f64>,
    /// E.g. "conf.lime (ILDG, 64 bits, SciDAC checksum verified)".
    pub description: String,
}

/// Loads the configuration a run starts from and checks it against the theory's `layout`
/// (see the module documentation). Errors name the file.
pub fn load(path: &Path, index: Option<u64>, layout: &FieldLayout) -> Result<StartConfig> {
    let shown = path.display();
    let mut head = [0u8; 8];
    let n = {
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{shown}: cannot open: {e}"))?;
        f.read(&mut head)
            .map_err(|e| anyhow::anyhow!("{shown}: cannot read: {e}"))?
    };
    let (config, file_layout, description) = if &head[..n] == HDF5_SIGNATURE {
        from_ensemble(path, index)?
    } else {
        if let Some(i) = index.filter(|&i| i != 0) {
            bail!("{shown}: index = {i}: an ILDG or NERSC file holds one configuration (index 0); index picks a configuration of a latflow ensemble");
        }
        let l = read_gauge_file(path)?;
        let file_layout = l.config.layout();
        (
            l.config.links,
            file_layout,
            format!("{shown} ({})", l.description),
        )
    };
    if let Err(diff) = file_layout.check_compatible(layout) {
        bail!(
            "{shown}: the configuration does not fit the theory: the file holds {}, the theory needs {} ({diff})",
            describe_layout(&file_layout),
            describe_layout(layout)
        );
    }
    if config.len() != layout.config_len() {
        bail!(
            "{shown}: the configuration has {} reals, the theory needs {}",
            config.len(),
            layout.config_len()
        );
    }
    check_group(path, layout, &config)?;
    Ok(StartConfig {
        config,
        description,
    })
}

/// Configuration `index` (default: the last) of a plain latflow ensemble, with its layout.
fn from_ensemble(path: &Path, index: Option<u64>) -> Result<(Vec<f64>, FieldLayout, String)> {
    let shown = path.display();
    let f = ensemble::read(path)?;
    if f.ladder.is_some() {
        bail!("{shown}: a replica-exchange ensemble; start from a plain ensemble, or from an ILDG file exported from one coupling");
    }
    let Some(info) = f.couplings.first().and_then(|e| e.configs.clone()) else {
        bail!("{shown}: stores no configurations (the run had save_every = 0)");
    };
    if info.count == 0 {
        bail!("{shown}: stores no configurations yet");
    }
    let i = match index {
        None => info.count - 1,
        Some(i) if (i as usize) < info.count && i <= usize::MAX as u64 => i as usize,
        Some(i) => bail!(
            "{shown}: index = {i} is out of range: the file stores {} configurations (0..{})",
            info.count,
            info.count
        ),
    };
    let layout: FieldLayout = serde_json::from_str(&info.layout).map_err(|e| {
        anyhow::anyhow!("{shown}: attribute layout of /configs: not a field layout ({e})")
    })?;
    let config = f.read_configs(0, i, 1)?;
    Ok((
        config,
        layout,
        format!("{shown}, configuration {i} of {}", info.count),
    ))
}

/// Finite reals everywhere; SU(2)/SU(3) link components within [`SU_TOLERANCE`] of the group.
fn check_group(path: &Path, layout: &FieldLayout, config: &[f64]) -> Result<()> {
    if let Some(i) = config.iter().position(|x| !x.is_finite()) {
        bail!(
            "{}: the configuration's value {i} is {}",
            path.display(),
            config[i]
        );
    }
    let mut offset = 0;
    for c in layout
        .components
        .iter()
        .filter(|c| c.role == FieldRole::Dynamical)
    {
        let len = layout.component_len(c);
        let part = &config[offset..offset + len];
        offset += len;
        let bad = match (c.support, c.element.shape()) {
            (Support::Link, Element::ComplexMatrix { n: 2 }) => worst::<Su2>(part),
            (Support::Link, Element::ComplexMatrix { n: 3 }) => worst::<Su3>(part),
            _ => None,
        };
        if let Some((link, dev)) = bad {
            bail!(
                "{}: component '{}': link {link} is not an SU(N) matrix: ‖U†U − 1‖ + |det U − 1| = {dev:e} exceeds {SU_TOLERANCE:e}",
                path.display(),
                c.name
            );
        }
    }
    Ok(())
}

fn worst<G: GaugeGroup>(reals: &[f64]) -> Option<(usize, f64)> {
    reals.chunks_exact(G::REALS).enumerate().find_map(|(i, r)| {
        let d = G::from_reals(r).deviation();
        (d.is_nan() || d > SU_TOLERANCE).then_some((i, d))
    })
}
