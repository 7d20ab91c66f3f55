//! ILDG and NERSC gauge configuration files: `latflow export --ildg`, `latflow import`, and
//! runs that start from a stored configuration (`[run] start = { file = … }`).
//!
//! # Axes and orders
//! latflow's axes (a0, a1, a2, a3) are ILDG's (x, y, z, t) and the link directions μ = 0..3
//! likewise. latflow stores sites with the *last* axis fastest (`[a0][a1][a2][a3]`), ILDG and
//! NERSC with x fastest and t slowest (`[t][z][y][x]`); within a site both store the four
//! links μ = 0..3, each a 3×3 matrix row-major with (re, im) pairs. Converting is therefore a
//! reversal of the site coordinates; links and matrices are copied as they are.
//!
//! # What is read and written
//! * [`mod@file`]: ILDG/LIME files (records `ildg-format`, `ildg-binary-data` big-endian at 32 or
//!   64 bits, `ildg-data-lfn`, the SciDAC private and user XML records and the
//!   `scidac-checksum`), see [`lime`], [`scidac`] and [`xml`].
//! * [`nersc`]: NERSC files (reading only): `4D_SU3_GAUGE` and `4D_SU3_GAUGE_3x3`, 32 or 64
//!   bits, either byte order, with the header's CHECKSUM, LINK_TRACE and PLAQUETTE checked.
//! * [`convert`]: the `export` and `import` commands.
//! * [`start`]: a run's first configuration from an ILDG, NERSC or latflow ensemble file.
//!
//! Only SU(3) in four dimensions exists in these formats (ILDG's `su3gauge`); other
//! ensembles (SU(2), d ≠ 4) are refused with a message saying so.
//!
//! Every reader takes arbitrary bytes: a damaged file is an [`IldgError`], never a panic.

use std::path::{Path, PathBuf};

use latflow_core::gauge::{mean_plaquette, su3, GaugeGroup, Su3};
use latflow_core::lattice::Lattice;
use latflow_core::layout::{ElementKind, FieldLayout, Support};

pub mod cli;
pub mod convert;
pub mod file;
pub mod lime;
pub mod nersc;
pub mod scidac;
pub mod start;
#[cfg(test)]
mod tests;
pub mod xml;

/// Reals per SU(3) link: 3×3 complex.
pub const LINK_REALS: usize = 18;
/// Reals per site: four links.
pub const SITE_REALS: usize = 4 * LINK_REALS;
/// Largest accepted distance from SU(3), ‖U†U − 1‖_F + |det U − 1|, of a link read at
/// 64 bits (or exported).
pub const SU_TOLERANCE: f64 = 1e-10;
/// The same for links read at 32 bits, whose rounding alone gives about 5·10⁻⁷; such links
/// are reunitarised after the check.
pub const SINGLE_TOLERANCE: f64 = 1e-5;

/// Why a file could not be read, written or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operating system could not read or write the file.
    Io,
    /// The file ends before its declared contents do.
    Truncated,
    /// A LIME or NERSC header, or a required record, is missing or malformed.
    Format,
    /// An XML record is malformed or lacks a required element.
    Xml,
    /// The lattice size is unsupported or does not match the data or what is expected.
    Lattice,
    /// The precision is unsupported or does not match the data.
    Precision,
    /// A stored checksum does not match the data.
    Checksum,
    /// A link is not an SU(3) matrix (or not finite).
    NotSun,
    /// A stored plaquette or link trace does not match the data.
    Mismatch,
    /// The file or ensemble is valid but not something these formats can hold.
    Unsupported,
}

/// An error naming the file, the part of it involved and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {what}: {detail}", .path.display())]
pub struct IldgError {
    pub path: PathBuf,
    pub kind: ErrorKind,
    /// The record, header key or object involved, e.g. `record ildg-format`.
    pub what: String,
    pub detail: String,
}

impl IldgError {
    /// An error about `path`.
    pub fn new(
        path: &Path,
        kind: ErrorKind,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.to_owned(),
            kind,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Bits per real in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// IEEE-754 binary32.
    Single,
    /// IEEE-754 binary64.
    Double,
}

impl Precision {
    /// 32 or 64.
    pub fn bits(self) -> u32 {
        match self {
            Precision::Single => 32,
            Precision::Double => 64,
        }
    }

    /// Bytes per real.
    pub fn bytes(self) -> usize {
        self.bits() as usize / 8
    }

    /// From 32 or 64.
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            32 => Some(Precision::Single),
            64 => Some(Precision::Double),
            _ => None,
        }
    }
}

/// An SU(3) gauge configuration on a 4D lattice in latflow's flat layout.
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeConfig {
    /// Lattice extents `[L0, L1, L2, L3]` = ILDG `(lx, ly, lz, lt)`.
    pub shape: [usize; 4],
    /// `V · 4 · 18` reals: `[site][μ][row][col][re, im]`, sites with the last axis fastest,
    /// i.e. the layout [`GaugeConfig::layout`] describes.
    pub links: Vec<f64>,
}

impl GaugeConfig {
    /// Number of sites.
    pub fn volume(&self) -> usize {
        self.shape.iter().product()
    }

    /// The latflow field layout of such a configuration (what the SU(N) theory declares):
    /// one link component `links` of 3×3 complex matrices.
    pub fn layout(&self) -> FieldLayout {
        FieldLayout::single(
            &self.shape,
            "links",
            Support::Link,
            ElementKind::complex_matrix(3),
        )
    }

    /// The links as SU(3) matrices, `[site][μ]`.
    pub fn matrices(&self) -> Vec<Su3> {
        self.links
            .chunks_exact(LINK_REALS)
            .map(Su3::from_reals)
            .collect()
    }

    /// The mean plaquette ⟨Re Tr U_P⟩/3 over all sites and the six planes. The extents must
    /// be at least 2 (as every reader here ensures).
    pub fn plaquette(&self) -> f64 {
        let extents: Vec<i64> = self.shape.iter().map(|&l| l as i64).collect();
        match Lattice::new(&extents) {
            Ok(lat) => mean_plaquette(&lat, self.matrices().as_slice()),
            Err(_) => f64::NAN,
        }
    }

    /// The mean link trace ⟨Re Tr U⟩/3 over all links (NERSC's LINK_TRACE).
    pub fn link_trace(&self) -> f64 {
        let n = self.links.len() / LINK_REALS;
        let sum: f64 = self
            .links
            .chunks_exact(LINK_REALS)
            .map(|u| u[0] + u[8] + u[16])
            .sum();
        sum / (3 * n.max(1)) as f64
    }

    /// The first link (in latflow's order) whose distance from SU(3) exceeds `tol` or is not
    /// finite: `(link index, deviation)`.
    pub fn worst_link(&self, tol: f64) -> Option<(usize, f64)> {
        self.links
            .chunks_exact(LINK_REALS)
            .enumerate()
            .find_map(|(i, r)| {
                if r.iter().any(|x| !x.is_finite()) {
                    return Some((i, f64::NAN));
                }
                let d = Su3::from_reals(r).deviation();
                (d.is_nan() || d > tol).then_some((i, d))
            })
    }

    /// Refuses a configuration with a link farther than `tol` from SU(3), naming the link by
    /// its site (x, y, z, t) and direction.
    pub fn check_su3(&self, path: &Path, what: &str, tol: f64) -> Result<(), IldgError> {
        match self.worst_link(tol) {
            None => Ok(()),
            Some((i, d)) => Err(IldgError::new(
                path,
                ErrorKind::NotSun,
                what,
                format!(
                    "link U_{}(x, y, z, t = {}) is not an SU(3) matrix: ‖U†U − 1‖ + |det U − 1| = {d:e} \
                     exceeds {tol:e}",
                    i % 4,
                    fmt_coords(&coords(self.shape, i / 4)),
                ),
            )),
        }
    }

    /// Projects every link onto SU(3) ([`su3::reunitarize`]); returns the largest deviation
    /// the links had.
    pub fn reunitarize(&mut self) -> f64 {
        let mut worst = 0.0f64;
        for r in self.links.chunks_exact_mut(LINK_REALS) {
            let mut u = Su3::from_reals(r);
            worst = worst.max(su3::reunitarize(&mut u));
            u.write_reals(r);
        }
        worst
    }
}

/// The latflow coordinates (a0, a1, a2, a3) of latflow site `s` (last axis fastest).
pub fn coords(shape: [usize; 4], s: usize) -> [usize; 4] {
    let mut c = [0; 4];
    let mut r = s;
    for a in (0..4).rev() {
        c[a] = r % shape[a].max(1);
        r /= shape[a].max(1);
    }
    c
}

fn fmt_coords(c: &[usize; 4]) -> String {
    format!("{}, {}, {}, {}", c[0], c[1], c[2], c[3])
}

/// Calls `f(file_rank, latflow_site)` for every site in file order (x fastest, t slowest):
/// file rank r = x + Lx (y + Ly (z + Lz t)), latflow site s = ((x Ly + y) Lz + z) Lt + t.
pub fn for_each_site(shape: [usize; 4], mut f: impl FnMut(usize, usize)) {
    let [lx, ly, lz, lt] = shape;
    let mut rank = 0;
    for t in 0..lt {
        for z in 0..lz {
            for y in 0..ly {
                for x in 0..lx {
                    f(rank, ((x * ly + y) * lz + z) * lt + t);
                    rank += 1;
                }
            }
        }
    }
}

/// The byte length of a four-dimensional SU(3) field of `shape` with `reals_per_link` reals
/// per link at `bytes` bytes each, or `None` on overflow.
pub fn data_len(shape: [usize; 4], reals_per_link: usize, bytes: usize) -> Option<usize> {
    shape
        .iter()
        .try_fold(4 * reals_per_link * bytes, |acc, &l| acc.checked_mul(l))
}

/// Checks lattice extents read from a file: each at least 2 (latflow's lattices need
/// distinct periodic neighbours) and a volume that fits in memory addressing.
pub fn check_extents(path: &Path, what: &str, shape: [usize; 4]) -> Result<(), IldgError> {
    if let Some(l) = shape.iter().find(|&&l| l < 2) {
        return Err(IldgError::new(
            path,
            ErrorKind::Lattice,
            what,
            format!(
                "lattice {} has an extent {l}: every extent must be at least 2",
                fmt_shape(shape)
            ),
        ));
    }
    if data_len(shape, LINK_REALS, 8).is_none() {
        return Err(IldgError::new(
            path,
            ErrorKind::Lattice,
            what,
            format!("lattice {} is too large", fmt_shape(shape)),
        ));
    }
    Ok(())
}

/// `4×4×4×8` (x × y × z × t).
pub fn fmt_shape(shape: [usize; 4]) -> String {
    format!(
        "{}×{}×{}×{} (x×y×z×t)",
        shape[0], shape[1], shape[2], shape[3]
    )
}

/// A readable description of a layout, e.g. "3×3 complex matrices on the links of a
/// [4, 4, 4, 8] lattice", for messages comparing two layouts.
pub fn describe_layout(l: &FieldLayout) -> String {
    let parts: Vec<String> = l
        .components
        .iter()
        .filter(|c| c.role == latflow_core::layout::FieldRole::Dynamical)
        .map(|c| {
            let what = match c.element.shape() {
                latflow_core::layout::Element::ComplexMatrix { n } => {
                    format!("{n}×{n} complex matrices")
                }
                latflow_core::layout::Element::Angle => "angles".into(),
                latflow_core::layout::Element::Real => "reals".into(),
                latflow_core::layout::Element::RealVector { n } => format!("real {n}-vectors"),
                latflow_core::layout::Element::ComplexVector { n } => {
                    format!("complex {n}-vectors")
                }
                latflow_core::layout::Element::Unknown { code, .. } => {
                    format!("elements of unknown kind {code}")
                }
            };
            let on = if c.support == Support::Link {
                "links"
            } else {
                "sites"
            };
            format!("{what} on the {on}")
        })
        .collect();
    format!("{} of a {:?} lattice", parts.join(" and "), l.shape())
}
