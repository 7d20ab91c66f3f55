//! The command-line arguments of `latflow export` and `latflow import`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::convert::{self, ExportOptions};
use super::Precision;

/// `latflow export FILE.h5 --ildg DIR [--precision 32|64] [--index I,J,…|--range A..B]`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The ensemble (HDF5) whose stored configurations are exported.
    pub file: PathBuf,
    /// The directory for the ILDG files (created when missing).
    #[arg(long, value_name = "DIR")]
    pub ildg: PathBuf,
    /// Bits per real in the files.
    #[arg(long, default_value = "64", value_parser = parse_precision, value_name = "32|64")]
    pub precision: Precision,
    /// Export these configurations (rows of /configs, comma-separated); default: all.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "I,J,…",
        conflicts_with = "range"
    )]
    pub index: Vec<usize>,
    /// Export configurations START..END (END excluded); default: all.
    #[arg(long, value_name = "START..END")]
    pub range: Option<String>,
    /// The coupling of a replica-exchange ensemble.
    #[arg(long, default_value_t = 0)]
    pub coupling: usize,
    /// The logical file name prefix (ildg-data-lfn is PREFIX/FILE_NAME); default
    /// lfn://latflow/STEM (STEM: the ensemble's file name without extension).
    #[arg(long, value_name = "PREFIX")]
    pub lfn: Option<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// `latflow import FILE… --output OUT.h5`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// ILDG/LIME or NERSC files, one configuration each, all on the same lattice.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The ensemble file to create.
    #[arg(long, short, value_name = "OUT.h5")]
    pub output: PathBuf,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// `--precision`: 32 or 64.
fn parse_precision(s: &str) -> Result<Precision, String> {
    s.trim()
        .parse::<u32>()
        .ok()
        .and_then(Precision::from_bits)
        .ok_or_else(|| format!("{s:?}: ILDG files store 32 or 64 bits per real"))
}

/// Parses `START..END` (END excluded, START < END).
pub fn parse_range(s: &str) -> Result<Vec<usize>> {
    let Some((a, b)) = s.split_once("..") else {
        bail!("--range {s:?}: expected START..END, e.g. 0..10")
    };
    let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) else {
        bail!("--range {s:?}: START and END must be non-negative integers");
    };
    if a >= b {
        bail!("--range {s:?}: START must be below END (END is excluded)");
    }
    Ok((a..b).collect())
}

/// Runs `latflow export`: one line per file with its configuration index, sweep and the
/// plaquette of the stored links.
pub fn export(args: &ExportArgs, read_limit: std::time::Duration) -> Result<()> {
    let indices = match (&args.range, args.index.is_empty()) {
        (Some(r), _) => Some(parse_range(r)?),
        (None, false) => Some(args.index.clone()),
        (None, true) => None,
    };
    let opts = ExportOptions {
        dir: args.ildg.clone(),
        precision: args.precision,
        indices,
        coupling: args.coupling,
        lfn_prefix: args.lfn.clone(),
        force: args.force,
        read_limit: Some(read_limit),
    };
    for e in convert::export(&args.file, &opts)? {
        println!(
            "{}  index {}  sweep {}  plaquette {}",
            e.path.display(),
            e.index,
            e.sweep,
            e.plaquette
        );
    }
    Ok(())
}

/// Runs `latflow import`: one line per file read, then the ensemble written.
pub fn import(args: &ImportArgs) -> Result<()> {
    for i in convert::import(&args.files, &args.output, args.force)? {
        println!(
            "{}: {}, plaquette {}",
            i.path.display(),
            i.description,
            i.plaquette
        );
    }
    println!("wrote {}", args.output.display());
    Ok(())
}
