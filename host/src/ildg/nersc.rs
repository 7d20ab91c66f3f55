//! NERSC gauge configuration files (reading).
//!
//! A text header, `BEGIN_HEADER`, lines `KEY = VALUE`, `END_HEADER`, then the binary data.
//! Keys used: `DATATYPE` (`4D_SU3_GAUGE`: the first two rows of each matrix, the third
//! rebuilt as (r₀ × r₁)*; `4D_SU3_GAUGE_3x3`: all three), `DIMENSION_1..4` (x, y, z, t),
//! `FLOATING_POINT` (`IEEE32`, `IEEE32BIG`, `IEEE64BIG`, `IEEE32LITTLE`, `IEEE64LITTLE`), and,
//! checked when present, `CHECKSUM` (hexadecimal: the sum modulo 2³² of the stored reals seen
//! as 32-bit words of their IEEE representation, a double giving its low and high words),
//! `LINK_TRACE` (⟨Re Tr U⟩/3) and `PLAQUETTE` (⟨Re Tr U_P⟩/3), both to within
//! [`HEADER_TOLERANCE`]. Sites are stored like ILDG's: t slowest, x fastest, then μ, then the
//! rows, each (re, im).

use std::path::Path;

use latflow_core::gauge::Complex;

use super::scidac::parse_hex;
use super::*;

/// Largest accepted difference between the header's LINK_TRACE or PLAQUETTE and the value
/// computed from the data (headers print about ten digits; 32-bit data differ by ~10⁻⁷).
pub const HEADER_TOLERANCE: f64 = 1e-6;
/// Longest header accepted.
const MAX_HEADER: usize = 1 << 16;

/// The contents of a NERSC file.
#[derive(Debug, Clone)]
pub struct NerscFile {
    pub config: GaugeConfig,
    pub precision: Precision,
    /// `4D_SU3_GAUGE` or `4D_SU3_GAUGE_3x3`.
    pub datatype: String,
    /// The header's key–value pairs in order.
    pub header: Vec<(String, String)>,
    /// Whether the header had a CHECKSUM (it was verified).
    pub checksum_verified: bool,
    /// For 32-bit files: the largest deviation from SU(3) before reunitarisation.
    pub reunitarized: Option<f64>,
}

impl NerscFile {
    /// The value of a header key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether `bytes` begin like a NERSC file.
pub fn is_nersc(bytes: &[u8]) -> bool {
    bytes.starts_with(b"BEGIN_HEADER")
}

/// Reads a NERSC file from disk ([`decode`]).
pub fn read(path: &Path) -> Result<NerscFile, IldgError> {
    let bytes = std::fs::read(path)
        .map_err(|e| IldgError::new(path, ErrorKind::Io, "file", format!("cannot read: {e}")))?;
    decode(path, &bytes)
}

/// The header lines and the offset of the data.
fn header(path: &Path, bytes: &[u8]) -> Result<(Vec<(String, String)>, usize), IldgError> {
    let err = |d: String| IldgError::new(path, ErrorKind::Format, "NERSC header", d);
    if !is_nersc(bytes) {
        return Err(err(
            "does not begin with BEGIN_HEADER (not a NERSC file)".into()
        ));
    }
    let head = &bytes[..bytes.len().min(MAX_HEADER)];
    let mut pairs = Vec::new();
    // past the BEGIN_HEADER line
    let mut at = head
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |i| i + 1);
    loop {
        let Some(nl) = head[at..].iter().position(|&b| b == b'\n') else {
            let detail = if bytes.len() < MAX_HEADER {
                "no END_HEADER line (truncated file)".to_string()
            } else {
                format!("no END_HEADER line in the first {MAX_HEADER} bytes")
            };
            return Err(IldgError::new(
                path,
                if bytes.len() < MAX_HEADER {
                    ErrorKind::Truncated
                } else {
                    ErrorKind::Format
                },
                "NERSC header",
                detail,
            ));
        };
        let raw = &head[at..at + nl];
        at += nl + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| err(format!("line {} is not text", pairs.len() + 2)))?
            .trim();
        match line {
            "END_HEADER" => return Ok((pairs, at)),
            "" => {}
            l => {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| err(format!("line {l:?} is not KEY = VALUE")))?;
                pairs.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
}

/// Parses the data layout keys: (lattice, precision, little endian, rows stored).
fn layout_keys(
    path: &Path,
    get: impl Fn(&str) -> Option<String>,
) -> Result<([usize; 4], Precision, bool, usize, String), IldgError> {
    let need = |k: &str| {
        get(k).ok_or_else(|| {
            IldgError::new(
                path,
                ErrorKind::Format,
                format!("NERSC header key {k}"),
                "missing",
            )
        })
    };
    let datatype = need("DATATYPE")?;
    let rows = match datatype.as_str() {
        "4D_SU3_GAUGE" => 2,
        "4D_SU3_GAUGE_3x3" => 3,
        other => {
            return Err(IldgError::new(
                path,
                ErrorKind::Unsupported,
                "NERSC header key DATATYPE",
                format!("{other:?}; supported are 4D_SU3_GAUGE and 4D_SU3_GAUGE_3x3"),
            ))
        }
    };
    let mut shape = [0; 4];
    for (i, l) in shape.iter_mut().enumerate() {
        let key = format!("DIMENSION_{}", i + 1);
        let v = need(&key)?;
        *l = v.parse().map_err(|_| {
            IldgError::new(
                path,
                ErrorKind::Format,
                format!("NERSC header key {key}"),
                format!("{v:?} is not a non-negative integer"),
            )
        })?;
    }
    check_extents(path, "NERSC header", shape)?;
    let fp = need("FLOATING_POINT")?;
    let (precision, little) = match fp.as_str() {
        "IEEE32" | "IEEE32BIG" => (Precision::Single, false),
        "IEEE64BIG" => (Precision::Double, false),
        "IEEE32LITTLE" => (Precision::Single, true),
        "IEEE64LITTLE" => (Precision::Double, true),
        other => {
            return Err(IldgError::new(
                path,
                ErrorKind::Precision,
                "NERSC header key FLOATING_POINT",
                format!("{other:?}; supported are IEEE32, IEEE32BIG, IEEE64BIG, IEEE32LITTLE and IEEE64LITTLE"),
            ))
        }
    };
    Ok((shape, precision, little, rows, datatype))
}

/// Decodes a NERSC file image; `path` only names the file in errors. Never panics.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<NerscFile, IldgError> {
    let (header, offset) = header(path, bytes)?;
    let get = |k: &str| {
        header
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let (shape, precision, little, rows, datatype) = layout_keys(path, get)?;
    let per_link = rows * 6;
    let expected = data_len(shape, per_link, precision.bytes()).unwrap_or(usize::MAX);
    let data = &bytes[offset..];
    if data.len() != expected {
        let (kind, detail) = if data.len() < expected {
            (ErrorKind::Truncated, format!("{} data bytes, but {datatype} on a {} lattice at {} bits needs {expected} (truncated file)", data.len(), fmt_shape(shape), precision.bits()))
        } else {
            (
                ErrorKind::Lattice,
                format!(
                    "{} data bytes, but {datatype} on a {} lattice at {} bits needs {expected}",
                    data.len(),
                    fmt_shape(shape),
                    precision.bits()
                ),
            )
        };
        return Err(IldgError::new(path, kind, "NERSC data", detail));
    }
    let (values, sum) = read_values(data, precision, little);
    if let Some(text) = get("CHECKSUM") {
        let stated = parse_hex(&text).ok_or_else(|| {
            IldgError::new(
                path,
                ErrorKind::Format,
                "NERSC header key CHECKSUM",
                format!("{text:?} is not a 32-bit hexadecimal number"),
            )
        })?;
        if stated != sum {
            return Err(IldgError::new(
                path,
                ErrorKind::Checksum,
                "NERSC header key CHECKSUM",
                format!("{stated:x} stated, but the data sum to {sum:x} (the data are damaged)"),
            ));
        }
    }
    let mut config = GaugeConfig {
        shape,
        links: vec![0.0; shape.iter().product::<usize>() * SITE_REALS],
    };
    for_each_site(shape, |rank, s| {
        for mu in 0..4 {
            let src = &values[(rank * 4 + mu) * per_link..(rank * 4 + mu + 1) * per_link];
            let out = &mut config.links[(s * 4 + mu) * LINK_REALS..(s * 4 + mu + 1) * LINK_REALS];
            out[..per_link].copy_from_slice(src);
            if rows == 2 {
                third_row(out);
            }
        }
    });
    let tol = if precision == Precision::Double {
        SU_TOLERANCE
    } else {
        SINGLE_TOLERANCE
    };
    config.check_su3(path, "NERSC data", tol)?;
    let reunitarized = (precision == Precision::Single).then(|| config.reunitarize());
    check_stated(path, get("LINK_TRACE"), "LINK_TRACE", config.link_trace())?;
    check_stated(path, get("PLAQUETTE"), "PLAQUETTE", config.plaquette())?;
    let checksum_verified = get("CHECKSUM").is_some();
    Ok(NerscFile {
        config,
        precision,
        datatype,
        header,
        checksum_verified,
        reunitarized,
    })
}

/// The stored reals as f64, and the NERSC checksum of them.
fn read_values(data: &[u8], precision: Precision, little: bool) -> (Vec<f64>, u32) {
    let mut sum = 0u32;
    let values = match precision {
        Precision::Double => data
            .chunks_exact(8)
            .map(|b| {
                let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                let x = if little {
                    f64::from_le_bytes(a)
                } else {
                    f64::from_be_bytes(a)
                };
                let bits = x.to_bits();
                sum = sum
                    .wrapping_add(bits as u32)
                    .wrapping_add((bits >> 32) as u32);
                x
            })
            .collect(),
        Precision::Single => data
            .chunks_exact(4)
            .map(|b| {
                let a = [b[0], b[1], b[2], b[3]];
                let x = if little {
                    f32::from_le_bytes(a)
                } else {
                    f32::from_be_bytes(a)
                };
                sum = sum.wrapping_add(x.to_bits());
                x as f64
            })
            .collect(),
    };
    (values, sum)
}

/// Fills the third row of a link whose first two rows are set: (r₀ × r₁)*.
fn third_row(link: &mut [f64]) {
    let z = |i: usize| Complex::new(link[2 * i], link[2 * i + 1]);
    let (a, b) = ([z(0), z(1), z(2)], [z(3), z(4), z(5)]);
    let c = [
        (a[1] * b[2] - a[2] * b[1]).conj(),
        (a[2] * b[0] - a[0] * b[2]).conj(),
        (a[0] * b[1] - a[1] * b[0]).conj(),
    ];
    for (j, v) in c.iter().enumerate() {
        link[12 + 2 * j] = v.re;
        link[12 + 2 * j + 1] = v.im;
    }
}

/// Compares a header value with the one computed from the data.
fn check_stated(
    path: &Path,
    text: Option<String>,
    key: &str,
    computed: f64,
) -> Result<(), IldgError> {
    let Some(text) = text else { return Ok(()) };
    let what = format!("NERSC header key {key}");
    let stated: f64 = text.parse().map_err(|_| {
        IldgError::new(
            path,
            ErrorKind::Format,
            what.as_str(),
            format!("{text:?} is not a number"),
        )
    })?;
    if (stated - computed).abs() <= HEADER_TOLERANCE {
        Ok(())
    } else {
        Err(IldgError::new(
            path,
            ErrorKind::Mismatch,
            what,
            format!("{stated} stated, but the data give {computed}"),
        ))
    }
}
