//! `latflow export FILE.h5 --ildg DIR` and `latflow import FILE… --output OUT.h5`.
//!
//! Export writes one ILDG file per chosen configuration, named
//! `DIR/<stem>.<index>.lime` (`<stem>` the ensemble's file stem, `<index>` the
//! configuration's row in `/configs`, five digits) and, for coupling k of a replica-exchange
//! ensemble, `DIR/<stem>.c<k>.<index>.lime`. Its LFN is `<prefix>/<file name>` with the prefix
//! `lfn://latflow/<stem>` unless one is given.
//!
//! Import reads ILDG and NERSC files (the format is recognised from the first bytes) into a
//! new plain ensemble: one stored configuration per file, in the order given, with the
//! observables `plaquette` and `link_trace` measured on each (sweep = position in the list).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use latflow_core::layout::{Element, FieldLayout, Support};

use super::file::{self, WriteMeta};
use super::*;
use crate::ensemble::{self, ConfigDef, EnsembleWriter, ObservableDef, Provenance};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The directory the files go to (created when missing).
    pub dir: PathBuf,
    pub precision: Precision,
    /// Configuration indices (rows of `/configs`; repeats are exported once); `None`: all.
    pub indices: Option<Vec<usize>>,
    /// The coupling of a replica-exchange ensemble (0 for a plain one).
    pub coupling: usize,
    /// The LFN prefix; `None`: `lfn://latflow/<stem>`.
    pub lfn_prefix: Option<String>,
    /// Overwrite existing files.
    pub force: bool,
    /// How long HDF5 may take to open the ensemble before the process ends with an error naming
    /// it ([`ensemble::exit_if_stuck`]); `None`: no limit.
    pub read_limit: Option<std::time::Duration>,
}

/// One exported configuration.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    /// Row in `/configs`.
    pub index: usize,
    pub sweep: u64,
    /// ⟨Re Tr U_P⟩/3 of the links as stored in the file.
    pub plaquette: f64,
}

/// Checks that an ensemble's layout is what ILDG can hold: one dynamical link component of
/// 3×3 complex matrices on a 4D lattice. Returns the lattice.
pub fn ildg_shape(layout: &FieldLayout) -> Result<[usize; 4], String> {
    let dynamical: Vec<_> = layout
        .components
        .iter()
        .filter(|c| c.role == latflow_core::layout::FieldRole::Dynamical)
        .collect();
    let [c] = dynamical.as_slice() else {
        return Err(format!(
            "ILDG files hold one gauge field; this ensemble's configurations are {}",
            describe_layout(layout)
        ));
    };
    let n = match (c.support, c.element.shape()) {
        (Support::Link, Element::ComplexMatrix { n }) => n,
        _ => {
            return Err(format!(
                "ILDG files hold SU(3) link matrices; this ensemble's configurations are {}",
                describe_layout(layout)
            ))
        }
    };
    if n != 3 {
        return Err(format!(
            "ILDG defines only su3gauge (3×3 links); this ensemble has SU({n}) links, which the format cannot hold"
        ));
    }
    let shape = layout.shape();
    match <[usize; 4]>::try_from(shape.as_slice()) {
        Ok(s) => Ok(s),
        Err(_) => Err(format!(
            "ILDG files are four-dimensional; this ensemble's lattice is {shape:?} (d = {})",
            shape.len()
        )),
    }
}

/// The sweep of every stored configuration of coupling `k` (`None`: a plain file).
fn config_sweeps(path: &Path, ladder: bool, k: usize) -> Result<Vec<u64>> {
    let name = if ladder {
        format!("{}/configs_sweep", ensemble::replica_group(k))
    } else {
        "configs_sweep".into()
    };
    let f = hdf5::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    ensemble::close_on_exec(path, &f)?;
    let ds = f
        .dataset(&name)
        .with_context(|| format!("{}: dataset {name}", path.display()))?;
    ds.read_raw::<u64>()
        .with_context(|| format!("{}: dataset {name} (read)", path.display()))
}

/// Exports configurations of the ensemble `path` as ILDG files (see the module
/// documentation). Refuses an ensemble that is not SU(3) in 4D, indices out of range, links
/// farther than [`SU_TOLERANCE`] from SU(3), and existing files unless `force`.
/// The metadata of one exported configuration: its logical file name `lfn`, the creator, the
/// source ensemble `path` and its provenance, and the configuration's index and sweep.
fn write_meta(lfn: String, path: &Path, p: &Provenance, index: usize, sweep: u64) -> WriteMeta {
    let field = |a: &str, b: String| (a.to_string(), b);
    WriteMeta {
        lfn,
        file_fields: vec![
            field("creator", format!("latflow {}", env!("CARGO_PKG_VERSION"))),
            field("created", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            field("ensemble", path.display().to_string()),
            field("ensembleCreated", p.created.clone()),
            field("plugin", format!("{} {}", p.plugin_name, p.plugin_version)),
            field("theoryParams", p.theory_params.clone()),
            field("seed", p.seed.to_string()),
            field("cardHash", p.card_hash.clone()),
            field("axes", "latflow axes (a0, a1, a2, a3) = ILDG (x, y, z, t)".into()),
        ],
        record_fields: vec![field("configIndex", index.to_string()), field("sweep", sweep.to_string())],
    }
}

pub fn export(path: &Path, opts: &ExportOptions) -> Result<Vec<Exported>> {
    let f = ensemble::exit_if_stuck(path, opts.read_limit, || ensemble::read(path))?;
    let shown = path.display();
    let k = opts.coupling;
    let Some(ens) = f.couplings.get(k) else {
        bail!(
            "{shown}: --coupling {k}: the file has {} coupling(s)",
            f.couplings.len()
        );
    };
    let Some(info) = &ens.configs else {
        bail!("{shown}: stores no configurations (the run had save_every = 0)");
    };
    let layout: FieldLayout = serde_json::from_str(&info.layout).map_err(|e| {
        anyhow::anyhow!("{shown}: attribute layout of /configs: not a field layout ({e})")
    })?;
    let shape =
        ildg_shape(&layout).map_err(|e| anyhow::anyhow!("{shown}: cannot export as ILDG: {e}"))?;
    let mut indices: Vec<usize> = opts
        .indices
        .clone()
        .unwrap_or_else(|| (0..info.count).collect());
    // each configuration once, in the order first asked for
    let mut seen = std::collections::HashSet::new();
    indices.retain(|i| seen.insert(*i));
    if let Some(i) = indices.iter().find(|&&i| i >= info.count) {
        bail!(
            "{shown}: configuration index {i} out of range: the file stores {} (indices 0..{})",
            info.count,
            info.count
        );
    }
    let sweeps = config_sweeps(path, f.ladder.is_some(), k)?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("--ildg {}: cannot create the directory", opts.dir.display()))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let prefix = opts
        .lfn_prefix
        .clone()
        .unwrap_or_else(|| format!("lfn://latflow/{stem}"));
    let mut done = Vec::with_capacity(indices.len());
    for &i in &indices {
        let name = if f.ladder.is_some() {
            format!("{stem}.c{k}.{i:05}.lime")
        } else {
            format!("{stem}.{i:05}.lime")
        };
        let out = opts.dir.join(&name);
        if out.exists() && !opts.force {
            bail!(
                "{}: already exists (refusing to overwrite it; --force replaces it)",
                out.display()
            );
        }
        let links = f.read_configs(k, i, 1)?;
        let config = GaugeConfig { shape, links };
        let what = format!("configuration {i}");
        config.check_su3(path, &what, SU_TOLERANCE)?;
        let sweep = sweeps.get(i).copied().unwrap_or(0);
        let meta = write_meta(format!("{prefix}/{name}"), path, &ens.provenance, i, sweep);
        let enc = file::encode(&config, opts.precision, &meta)
            .map_err(|e| anyhow::anyhow!("{shown}: configuration {i}: {e}"))?;
        std::fs::write(&out, &enc.bytes)
            .with_context(|| format!("{}: cannot write", out.display()))?;
        done.push(Exported {
            path: out,
            index: i,
            sweep,
            plaquette: enc.plaquette,
        });
    }
    Ok(done)
}

/// A configuration read from an ILDG or NERSC file, with a one-line description of what was
/// read and checked.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: GaugeConfig,
    pub description: String,
}

/// Reads an ILDG/LIME or NERSC file, recognised by its first bytes.
pub fn read_gauge_file(path: &Path) -> Result<Loaded, IldgError> {
    let bytes = std::fs::read(path)
        .map_err(|e| IldgError::new(path, ErrorKind::Io, "file", format!("cannot read: {e}")))?;
    decode_gauge_file(path, &bytes)
}

/// [`read_gauge_file`] on a file image.
pub fn decode_gauge_file(path: &Path, bytes: &[u8]) -> Result<Loaded, IldgError> {
    if lime::is_lime(bytes) {
        let f = file::decode(path, bytes)?;
        let mut d = format!("ILDG, {} bits", f.precision.bits());
        d.push_str(if f.checksum.is_some() {
            ", SciDAC checksum verified"
        } else {
            ", no SciDAC checksum in the file"
        });
        if let Some(dev) = f.reunitarized {
            d.push_str(&format!(", reunitarised (largest deviation {dev:.1e})"));
        }
        if let Some(lfn) = &f.lfn {
            d.push_str(&format!(", LFN {lfn}"));
        }
        Ok(Loaded {
            config: f.config,
            description: d,
        })
    } else if nersc::is_nersc(bytes) {
        let f = nersc::decode(path, bytes)?;
        let mut d = format!("NERSC {}, {} bits", f.datatype, f.precision.bits());
        d.push_str(if f.checksum_verified {
            ", checksum verified"
        } else {
            ", no CHECKSUM in the header"
        });
        if let Some(dev) = f.reunitarized {
            d.push_str(&format!(", reunitarised (largest deviation {dev:.1e})"));
        }
        Ok(Loaded {
            config: f.config,
            description: d,
        })
    } else {
        Err(IldgError::new(
            path,
            ErrorKind::Format,
            "file",
            "neither an ILDG/LIME file (magic 0x456789ab) nor a NERSC file (BEGIN_HEADER)",
        ))
    }
}

/// One imported file.
#[derive(Debug, Clone)]
pub struct Imported {
    pub path: PathBuf,
    pub description: String,
    pub plaquette: f64,
}

/// Imports gauge files into a new plain ensemble `output` (see the module documentation).
/// All files must have the same lattice. An existing `output` is replaced only if `force`.
pub fn import(files: &[PathBuf], output: &Path, force: bool) -> Result<Vec<Imported>> {
    if files.is_empty() {
        bail!("latflow import: no input files");
    }
    let mut loaded: Vec<Loaded> = Vec::with_capacity(files.len());
    let mut digests = String::new();
    let mut card = String::from(
        "# imported by `latflow import` (no run card); sources, one configuration each:\n",
    );
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f)
            .map_err(|e| IldgError::new(f, ErrorKind::Io, "file", format!("cannot read: {e}")))?;
        let l = decode_gauge_file(f, &bytes)?;
        if let Some(first) = loaded.first() {
            if l.config.shape != first.config.shape {
                bail!(
                    "{}: lattice {} differs from {} of {} (one ensemble holds one lattice)",
                    f.display(),
                    fmt_shape(l.config.shape),
                    fmt_shape(first.config.shape),
                    files[0].display()
                );
            }
        }
        digests.push_str(&crate::setup::sha256_hex(&bytes));
        card.push_str(&format!("# {i}: {} ({})\n", f.display(), l.description));
        loaded.push(l);
    }
    let layout = loaded[0].config.layout();
    let prov = Provenance {
        latflow_version: env!("CARGO_PKG_VERSION").into(),
        run_card: card,
        card_path: "(none: imported)".into(),
        card_hash: crate::setup::sha256_hex(digests.as_bytes()),
        seed: 0,
        plugin_name: "import".into(),
        plugin_version: env!("CARGO_PKG_VERSION").into(),
        plugin_path: String::new(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        theory_params: serde_json::json!({ "n": 3, "lattice": layout.shape() }).to_string(),
        layout: serde_json::to_string(&layout)?,
        model: String::new(),
    };
    let observables = [
        ObservableDef {
            name: "plaquette".into(),
            len: 1,
            description: "mean Re Tr U_P / N over all sites and planes".into(),
        },
        ObservableDef {
            name: "link_trace".into(),
            len: 1,
            description: "mean Re Tr U / N over all links".into(),
        },
    ];
    let configs = ConfigDef {
        config_len: layout.config_len(),
        shape: layout.config_dims(),
    };
    let mut w = EnsembleWriter::create(output, &prov, &observables, &[], Some(&configs), force)?;
    let mut out = Vec::with_capacity(files.len());
    for (i, (f, l)) in files.iter().zip(loaded).enumerate() {
        let plaquette = l.config.plaquette();
        w.push_measurement(0, i as u64, &[plaquette, l.config.link_trace()])?;
        w.push_config(0, i as u64, &l.config.links)?;
        out.push(Imported {
            path: f.clone(),
            description: l.description,
            plaquette,
        });
    }
    w.flush()?;
    Ok(out)
}
