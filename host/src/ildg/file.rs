//! ILDG files: one SU(3) configuration in a LIME container.
//!
//! # What latflow writes
//! Three LIME messages, every XML document UTF-8 with an `<?xml?>` declaration:
//!
//! 1. `scidac-private-file-xml` (`<scidacFile>`: version 1.1, spacetime 4, dims "lx ly lz lt",
//!    volfmt 0) and `scidac-file-xml` (`<latflowFile>`: provenance: latflow version, source
//!    ensemble, configuration index and sweep, plugin, seed, card hash, theory parameters,
//!    creation time);
//! 2. `scidac-private-record-xml` (`<scidacRecord>`: datatype `QDP_D3_ColorMatrix` or
//!    `QDP_F3_ColorMatrix`, precision D/F, colors 3, spins 4, typesize 144/72, datacount 4),
//!    `scidac-record-xml` (`<latflowRecord>`: `plaquette` and `linkTrace` of the data as
//!    stored), `ildg-format`, `ildg-binary-data` and `scidac-checksum`;
//! 3. `ildg-data-lfn` (the logical file name).
//!
//! `ildg-format` is `<ildgFormat xmlns="http://www.lqcd.org/ildg">` with version 1.0, field
//! `su3gauge`, precision 32 or 64 and lx, ly, lz, lt. `ildg-binary-data` holds the
//! V·4·3·3 complex numbers big-endian, sites t slowest and x fastest, then μ = 0..3, then
//! the matrix row-major (re, im): 576 bytes per site at 32 bits, 1152 at 64.
//!
//! # What latflow reads
//! Any LIME file with one `ildg-format` and one `ildg-binary-data` record. The SciDAC records
//! are checked where present (dims against lx…lt, precision, colours), and so is a
//! `scidac-checksum`; a `latflowRecord` plaquette is compared with the data's to 10⁻¹².
//! 64-bit links must lie within [`SU_TOLERANCE`] of SU(3); 32-bit ones within
//! [`SINGLE_TOLERANCE`], and are then reunitarised.

use std::path::Path;

use super::scidac::{parse_hex, Checksum};
use super::xml::{self, Element};
use super::*;

/// The contents of an ILDG file.
#[derive(Debug, Clone)]
pub struct IldgFile {
    pub config: GaugeConfig,
    pub precision: Precision,
    /// The `ildg-data-lfn` record, if any.
    pub lfn: Option<String>,
    /// The `scidac-file-xml` record, if any.
    pub file_xml: Option<String>,
    /// The `scidac-record-xml` record, if any.
    pub record_xml: Option<String>,
    /// The SciDAC checksum, when the file has one (it was verified).
    pub checksum: Option<Checksum>,
    /// For 32-bit files: the largest deviation from SU(3) before reunitarisation.
    pub reunitarized: Option<f64>,
    /// The plaquette of the links exactly as stored (before any reunitarisation).
    pub stored_plaquette: f64,
}

/// What goes into a written file besides the links.
#[derive(Debug, Clone, Default)]
pub struct WriteMeta {
    /// The `ildg-data-lfn` record.
    pub lfn: String,
    /// Provenance elements of `<latflowFile>` (name, text; the text is escaped here).
    pub file_fields: Vec<(String, String)>,
    /// Extra elements of `<latflowRecord>` after `plaquette` and `linkTrace`.
    pub record_fields: Vec<(String, String)>,
}

/// A file image and the plaquette of the links as written.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// ⟨Re Tr U_P⟩/3 of the stored links (after rounding to 32 bits, at single precision),
    /// computed in double precision.
    pub plaquette: f64,
    pub checksum: Checksum,
}

fn tagged(root: &str, fields: &[(String, String)]) -> String {
    let mut s = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><{root}>");
    for (k, v) in fields {
        s.push_str(&format!("<{k}>{}</{k}>", xml::escape(v)));
    }
    s.push_str(&format!("</{root}>"));
    s
}

/// Encodes a configuration as an ILDG file at `precision` (see the module documentation).
/// The links are written as they are; callers check them first ([`GaugeConfig::check_su3`]).
pub fn encode(
    config: &GaugeConfig,
    precision: Precision,
    meta: &WriteMeta,
) -> Result<Encoded, String> {
    let [lx, ly, lz, lt] = config.shape;
    let expected = config.volume() * SITE_REALS;
    if config.links.len() != expected {
        return Err(format!(
            "configuration has {} reals, a {} lattice needs {expected}",
            config.links.len(),
            fmt_shape(config.shape)
        ));
    }
    // the stored values, and the plaquette of exactly those
    let stored = match precision {
        Precision::Double => config.clone(),
        Precision::Single => GaugeConfig {
            shape: config.shape,
            links: config.links.iter().map(|&x| x as f32 as f64).collect(),
        },
    };
    let plaquette = stored.plaquette();
    let site_bytes = SITE_REALS * precision.bytes();
    let mut data = Vec::with_capacity(config.volume() * site_bytes);
    let mut checksum = Checksum::default();
    for_each_site(config.shape, |rank, s| {
        let start = data.len();
        for &x in &stored.links[s * SITE_REALS..(s + 1) * SITE_REALS] {
            match precision {
                Precision::Double => data.extend_from_slice(&x.to_be_bytes()),
                Precision::Single => data.extend_from_slice(&(x as f32).to_be_bytes()),
            }
        }
        checksum.add_site(rank as u64, &data[start..]);
    });

    let (p, tag) = match precision {
        Precision::Double => ("D", "QDP_D3_ColorMatrix"),
        Precision::Single => ("F", "QDP_F3_ColorMatrix"),
    };
    let private_file = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><scidacFile><version>1.1</version><spacetime>4</spacetime>\
         <dims>{lx} {ly} {lz} {lt} </dims><volfmt>0</volfmt></scidacFile>"
    );
    let file_xml = tagged("latflowFile", &meta.file_fields);
    let date = chrono::Utc::now().format("%a %b %e %H:%M:%S %Y UTC");
    let private_record = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><scidacRecord><version>1.1</version><date>{date}</date>\
         <recordtype>0</recordtype><datatype>{tag}</datatype><precision>{p}</precision><colors>3</colors>\
         <spins>4</spins><typesize>{}</typesize><datacount>4</datacount></scidacRecord>",
        LINK_REALS * precision.bytes()
    );
    let mut record_fields = vec![
        ("plaquette".to_string(), format!("{plaquette:e}")),
        (
            "linkTrace".to_string(),
            format!("{:e}", stored.link_trace()),
        ),
    ];
    record_fields.extend(meta.record_fields.iter().cloned());
    let record_xml = tagged("latflowRecord", &record_fields);
    let format = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ildgFormat xmlns=\"http://www.lqcd.org/ildg\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:schemaLocation=\"http://www.lqcd.org/ildg http://www.lqcd.org/ildg/ildg-format.xsd\">\
         <version>1.0</version><field>su3gauge</field><precision>{}</precision>\
         <lx>{lx}</lx><ly>{ly}</ly><lz>{lz}</lz><lt>{lt}</lt></ildgFormat>",
        precision.bits()
    );
    let sum = checksum.to_xml();
    let mut w = lime::Writer::new();
    w.message(&[
        ("scidac-private-file-xml", private_file.as_bytes()),
        ("scidac-file-xml", file_xml.as_bytes()),
    ])?;
    w.message(&[
        ("scidac-private-record-xml", private_record.as_bytes()),
        ("scidac-record-xml", record_xml.as_bytes()),
        ("ildg-format", format.as_bytes()),
        ("ildg-binary-data", &data),
        ("scidac-checksum", sum.as_bytes()),
    ])?;
    w.message(&[("ildg-data-lfn", meta.lfn.as_bytes())])?;
    Ok(Encoded {
        bytes: w.bytes,
        plaquette,
        checksum,
    })
}

/// Reads an ILDG file from disk ([`decode`]).
pub fn read(path: &Path) -> Result<IldgFile, IldgError> {
    let bytes = std::fs::read(path)
        .map_err(|e| IldgError::new(path, ErrorKind::Io, "file", format!("cannot read: {e}")))?;
    decode(path, &bytes)
}

/// The one record of type `kind`; an error if there are several, `None` if there is none.
fn single<'a>(
    path: &Path,
    records: &'a [lime::Record],
    kind: &str,
) -> Result<Option<&'a lime::Record>, IldgError> {
    let mut it = records.iter().filter(|r| r.kind == kind);
    match (it.next(), it.next()) {
        (Some(_), Some(_)) => Err(IldgError::new(
            path,
            ErrorKind::Format,
            format!("record {kind}"),
            "appears more than once (files holding several configurations are not supported)",
        )),
        (r, _) => Ok(r),
    }
}

fn parse_xml(path: &Path, rec: &lime::Record, bytes: &[u8]) -> Result<Element, IldgError> {
    xml::parse(rec.data(bytes))
        .map_err(|e| IldgError::new(path, ErrorKind::Xml, format!("record {}", rec.kind), e))
}

/// A required positive integer element of `el`.
fn int_field(path: &Path, what: &str, el: &Element, name: &str) -> Result<usize, IldgError> {
    let text = el.child_text(name).ok_or_else(|| {
        IldgError::new(
            path,
            ErrorKind::Xml,
            what,
            format!("missing element <{name}>"),
        )
    })?;
    text.parse::<usize>().map_err(|_| {
        IldgError::new(
            path,
            ErrorKind::Xml,
            what,
            format!("<{name}> is {text:?}, expected a non-negative integer"),
        )
    })
}

/// The lattice and precision of the `ildg-format` record.
fn read_format(
    path: &Path,
    rec: &lime::Record,
    bytes: &[u8],
) -> Result<([usize; 4], Precision), IldgError> {
    let what = "record ildg-format";
    let root = parse_xml(path, rec, bytes)?;
    if root.name != "ildgFormat" {
        return Err(IldgError::new(
            path,
            ErrorKind::Xml,
            what,
            format!("root element is <{}>, expected <ildgFormat>", root.name),
        ));
    }
    let field = root
        .child_text("field")
        .ok_or_else(|| IldgError::new(path, ErrorKind::Xml, what, "missing element <field>"))?;
    if field != "su3gauge" {
        return Err(IldgError::new(
            path,
            ErrorKind::Unsupported,
            what,
            format!("field is {field:?}; only su3gauge is supported"),
        ));
    }
    let bits = int_field(path, what, &root, "precision")?;
    let precision = u32::try_from(bits)
        .ok()
        .and_then(Precision::from_bits)
        .ok_or_else(|| {
            IldgError::new(
                path,
                ErrorKind::Precision,
                what,
                format!("precision is {bits}; ILDG allows 32 or 64"),
            )
        })?;
    let mut shape = [0; 4];
    for (l, name) in shape.iter_mut().zip(["lx", "ly", "lz", "lt"]) {
        *l = int_field(path, what, &root, name)?;
    }
    check_extents(path, what, shape)?;
    Ok((shape, precision))
}

/// Checks the optional SciDAC private records against the ildg-format record.
fn check_private(
    path: &Path,
    records: &[lime::Record],
    bytes: &[u8],
    shape: [usize; 4],
    precision: Precision,
) -> Result<(), IldgError> {
    if let Some(rec) = single(path, records, "scidac-private-file-xml")? {
        let root = parse_xml(path, rec, bytes)?;
        let what = "record scidac-private-file-xml";
        if let Some(d) = root.child_text("spacetime").filter(|d| *d != "4") {
            return Err(IldgError::new(
                path,
                ErrorKind::Lattice,
                what,
                format!("spacetime is {d}; ILDG files are four-dimensional"),
            ));
        }
        if let Some(dims) = root.child_text("dims") {
            let got: Vec<usize> = dims
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if got != shape {
                return Err(IldgError::new(
                    path,
                    ErrorKind::Lattice,
                    what,
                    format!(
                        "dims {dims:?} differ from the ildg-format lattice {}",
                        fmt_shape(shape)
                    ),
                ));
            }
        }
    }
    if let Some(rec) = single(path, records, "scidac-private-record-xml")? {
        let root = parse_xml(path, rec, bytes)?;
        let what = "record scidac-private-record-xml";
        let want = if precision == Precision::Double {
            "D"
        } else {
            "F"
        };
        if let Some(p) = root.child_text("precision").filter(|p| *p != want) {
            return Err(IldgError::new(
                path,
                ErrorKind::Precision,
                what,
                format!(
                    "precision {p:?} contradicts ildg-format's {} bits ({want:?})",
                    precision.bits()
                ),
            ));
        }
        if let Some(c) = root.child_text("colors").filter(|c| *c != "3") {
            return Err(IldgError::new(
                path,
                ErrorKind::Unsupported,
                what,
                format!("colors is {c}; only 3 is supported"),
            ));
        }
    }
    Ok(())
}

/// Checks the binary record's length against lattice and precision, saying which is off.
fn check_data_len(
    path: &Path,
    len: usize,
    shape: [usize; 4],
    precision: Precision,
) -> Result<(), IldgError> {
    let what = "record ildg-binary-data";
    let expected = data_len(shape, LINK_REALS, precision.bytes()).unwrap_or(usize::MAX);
    if len == expected {
        return Ok(());
    }
    let other = if precision == Precision::Double {
        Precision::Single
    } else {
        Precision::Double
    };
    if data_len(shape, LINK_REALS, other.bytes()) == Some(len) {
        return Err(IldgError::new(
            path,
            ErrorKind::Precision,
            what,
            format!(
                "{len} bytes is the size of a {} lattice at {} bits, but ildg-format says precision {} ({expected} bytes)",
                fmt_shape(shape),
                other.bits(),
                precision.bits()
            ),
        ));
    }
    let sites = len as f64 / (SITE_REALS * precision.bytes()) as f64;
    Err(IldgError::new(
        path,
        ErrorKind::Lattice,
        what,
        format!(
            "{len} bytes, but a {} lattice at {} bits needs {expected} (the data holds {sites} sites, the lattice has {})",
            fmt_shape(shape),
            precision.bits(),
            shape.iter().product::<usize>()
        ),
    ))
}

/// Decodes the binary record into latflow's order and verifies the checksum when present.
fn decode_data(
    path: &Path,
    data: &[u8],
    shape: [usize; 4],
    precision: Precision,
    expected: Option<Checksum>,
) -> Result<GaugeConfig, IldgError> {
    let site_bytes = SITE_REALS * precision.bytes();
    let mut links = vec![0.0; shape.iter().product::<usize>() * SITE_REALS];
    let mut sum = Checksum::default();
    for_each_site(shape, |rank, s| {
        let bytes = &data[rank * site_bytes..(rank + 1) * site_bytes];
        sum.add_site(rank as u64, bytes);
        let out = &mut links[s * SITE_REALS..(s + 1) * SITE_REALS];
        match precision {
            Precision::Double => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                }
            }
            Precision::Single => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64;
                }
            }
        }
    });
    if let Some(e) = expected {
        if e != sum {
            return Err(IldgError::new(
                path,
                ErrorKind::Checksum,
                "record scidac-checksum",
                format!(
                    "suma {:x} sumb {:x} stored, but the data gives suma {:x} sumb {:x} (the binary data is damaged)",
                    e.suma, e.sumb, sum.suma, sum.sumb
                ),
            ));
        }
    }
    Ok(GaugeConfig { shape, links })
}

fn read_checksum(
    path: &Path,
    records: &[lime::Record],
    bytes: &[u8],
) -> Result<Option<Checksum>, IldgError> {
    let Some(rec) = single(path, records, "scidac-checksum")? else {
        return Ok(None);
    };
    let root = parse_xml(path, rec, bytes)?;
    let what = "record scidac-checksum";
    let word = |name: &str| {
        let t = root.child_text(name).ok_or_else(|| {
            IldgError::new(
                path,
                ErrorKind::Xml,
                what,
                format!("missing element <{name}>"),
            )
        })?;
        parse_hex(t).ok_or_else(|| {
            IldgError::new(
                path,
                ErrorKind::Xml,
                what,
                format!("<{name}> is {t:?}, expected a 32-bit hexadecimal number"),
            )
        })
    };
    Ok(Some(Checksum {
        suma: word("suma")?,
        sumb: word("sumb")?,
    }))
}

fn utf8(rec: Option<&lime::Record>, bytes: &[u8]) -> Option<String> {
    rec.map(|r| {
        String::from_utf8_lossy(r.data(bytes))
            .trim_end_matches('\0')
            .to_string()
    })
}

/// Decodes an ILDG file image (see the module documentation for what is checked). `path`
/// only names the file in errors. Never panics, whatever the bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<IldgFile, IldgError> {
    let records = lime::parse(bytes).map_err(|e| {
        let kind = if e.starts_with("truncated") {
            ErrorKind::Truncated
        } else {
            ErrorKind::Format
        };
        IldgError::new(path, kind, "LIME structure", e)
    })?;
    let missing = |kind: &str| {
        IldgError::new(
            path,
            ErrorKind::Format,
            format!("record {kind}"),
            "missing (not an ILDG file)",
        )
    };
    let format = single(path, &records, "ildg-format")?.ok_or_else(|| missing("ildg-format"))?;
    let binary =
        single(path, &records, "ildg-binary-data")?.ok_or_else(|| missing("ildg-binary-data"))?;
    let (shape, precision) = read_format(path, format, bytes)?;
    check_private(path, &records, bytes, shape, precision)?;
    check_data_len(path, binary.len, shape, precision)?;
    let checksum = read_checksum(path, &records, bytes)?;
    let mut config = decode_data(path, binary.data(bytes), shape, precision, checksum)?;
    let tol = match precision {
        Precision::Double => SU_TOLERANCE,
        Precision::Single => SINGLE_TOLERANCE,
    };
    config.check_su3(path, "record ildg-binary-data", tol)?;
    let stored_plaquette = config.plaquette();
    let record = single(path, &records, "scidac-record-xml")?;
    check_record_plaquette(path, record, bytes, stored_plaquette)?;
    if let Some(rec) = single(path, &records, "scidac-file-xml")? {
        parse_xml(path, rec, bytes)?;
    }
    let reunitarized = (precision == Precision::Single).then(|| config.reunitarize());
    Ok(IldgFile {
        config,
        precision,
        lfn: utf8(single(path, &records, "ildg-data-lfn")?, bytes),
        file_xml: utf8(single(path, &records, "scidac-file-xml")?, bytes),
        record_xml: utf8(record, bytes),
        checksum,
        reunitarized,
        stored_plaquette,
    })
}

/// A `<latflowRecord>` (written by latflow) states the plaquette of the stored links: it must
/// match to 10⁻¹². Other record XML must be well-formed, and is kept but not interpreted.
fn check_record_plaquette(
    path: &Path,
    rec: Option<&lime::Record>,
    bytes: &[u8],
    plaquette: f64,
) -> Result<(), IldgError> {
    let Some(rec) = rec else { return Ok(()) };
    let root = parse_xml(path, rec, bytes)?;
    if root.name != "latflowRecord" {
        return Ok(());
    }
    let what = "record scidac-record-xml";
    let Some(text) = root.child_text("plaquette") else {
        return Ok(());
    };
    let stated: f64 = text.parse().map_err(|_| {
        IldgError::new(
            path,
            ErrorKind::Xml,
            what,
            format!("<plaquette> is {text:?}, expected a number"),
        )
    })?;
    if (stated - plaquette).abs() <= 1e-12 {
        Ok(())
    } else {
        Err(IldgError::new(
            path,
            ErrorKind::Mismatch,
            what,
            format!("the file states plaquette {stated}, but its links give {plaquette}"),
        ))
    }
}
