//! Tests of LIME, the SciDAC checksum, the XML reader, ILDG and NERSC files and run starts
//! from them (the HDF5 side is tested in tests/ildg.rs).

use std::path::Path;

use latflow_core::gauge::{LinkField, Su3};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::rng::Stream;
use proptest::prelude::*;

use super::file::{self, WriteMeta};
use super::scidac::Checksum;
use super::*;

fn random_config(shape: [usize; 4], seed: u64) -> GaugeConfig {
    let v: usize = shape.iter().product();
    let mut rng = Stream::new(seed, 0);
    let field = LinkField::<Su3>::random(4, v, &mut rng).unwrap();
    let mut links = vec![0.0; v * SITE_REALS];
    field.write_reals(&mut links).unwrap();
    GaugeConfig { shape, links }
}

fn meta() -> WriteMeta {
    WriteMeta {
        lfn: "lfn://latflow/test/conf.00000.lime".into(),
        file_fields: vec![("creator".into(), "latflow tests <&>".into())],
        record_fields: vec![("sweep".into(), "7".into())],
    }
}

fn p() -> &'static Path {
    Path::new("conf.lime")
}

fn encode(c: &GaugeConfig, precision: Precision) -> Vec<u8> {
    file::encode(c, precision, &meta()).unwrap().bytes
}

/// The records of a file image, by type.
fn record<'a>(bytes: &'a [u8], kind: &str) -> (lime::Record, &'a [u8]) {
    let recs = lime::parse(bytes).unwrap();
    let r = recs.into_iter().find(|r| r.kind == kind).unwrap();
    let d = r.data(bytes);
    (r, d)
}

/// A file image with the data of record `kind` replaced (lengths and padding redone).
fn replace_record(bytes: &[u8], kind: &str, data: &[u8]) -> Vec<u8> {
    let mut w = lime::Writer::new();
    for r in lime::parse(bytes).unwrap() {
        let d = if r.kind == kind { data } else { r.data(bytes) };
        w.record(&r.kind, d, r.begin, r.end).unwrap();
    }
    w.bytes
}

/// A file image without the records of type `kind`.
fn without(bytes: &[u8], kind: &str) -> Vec<u8> {
    let mut w = lime::Writer::new();
    for r in lime::parse(bytes)
        .unwrap()
        .iter()
        .filter(|r| r.kind != kind)
    {
        w.record(&r.kind, r.data(bytes), r.begin, r.end).unwrap();
    }
    w.bytes
}

fn expect_err(r: Result<file::IldgFile, IldgError>, kind: ErrorKind, needles: &[&str]) {
    let e = r.expect_err("expected a refusal");
    let msg = e.to_string();
    assert_eq!(e.kind, kind, "{msg}");
    assert!(msg.starts_with("conf.lime: "), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "expected {n:?} in: {msg}");
    }
}

#[test]
fn lime_records_round_trip_with_flags_and_padding() {
    let mut w = lime::Writer::new();
    w.message(&[("a-type", b"12345"), ("b", b"")]).unwrap();
    w.record("c", &[7u8; 16], true, true).unwrap();
    let bytes = w.bytes;
    // 144 + 5 + 3 padding, 144 + 0, 144 + 16
    assert_eq!(bytes.len(), 152 + 144 + 160);
    assert_eq!(&bytes[..4], &[0x45, 0x67, 0x89, 0xab]);
    assert_eq!(&bytes[4..6], &[0, 1]);
    assert_eq!(&bytes[6..8], &[0x80, 0x00]); // MB only
    assert_eq!(&bytes[8..16], &5u64.to_be_bytes());
    assert_eq!(&bytes[16..22], b"a-type");
    assert!(bytes[22..144].iter().all(|&b| b == 0));
    assert_eq!(&bytes[149..152], &[0, 0, 0]);
    assert_eq!(&bytes[152 + 6..152 + 8], &[0x40, 0x00]); // ME only
    let recs = lime::parse(&bytes).unwrap();
    let summary: Vec<_> = recs
        .iter()
        .map(|r| (r.kind.as_str(), r.begin, r.end, r.len))
        .collect();
    assert_eq!(
        summary,
        [
            ("a-type", true, false, 5),
            ("b", false, true, 0),
            ("c", true, true, 16)
        ]
    );
    assert_eq!(recs[0].data(&bytes), b"12345");
    // the last record's padding may be missing
    let mut w = lime::Writer::new();
    w.record("x", b"abc", true, true).unwrap();
    let cut = &w.bytes[..144 + 3];
    assert_eq!(lime::parse(cut).unwrap()[0].data(cut), b"abc");
    // invalid types are refused
    assert!(lime::Writer::new().record("", b"", true, true).is_err());
    assert!(lime::Writer::new()
        .record(&"x".repeat(129), b"", true, true)
        .is_err());
    assert!(lime::Writer::new().record("a b", b"", true, true).is_err());
}

#[test]
fn lime_refuses_damaged_headers() {
    let mut w = lime::Writer::new();
    w.record("x", b"abcdefgh", true, true).unwrap();
    let good = w.bytes;
    let mut bad = good.clone();
    bad[0] = 0;
    assert!(lime::parse(&bad).unwrap_err().contains("magic number"));
    let mut bad = good.clone();
    bad[5] = 2;
    assert!(lime::parse(&bad).unwrap_err().contains("version 2"));
    let mut bad = good.clone();
    bad[7] = 1;
    assert!(lime::parse(&bad).unwrap_err().contains("reserved flag"));
    let mut bad = good.clone();
    bad[15] = 9;
    assert!(lime::parse(&bad).unwrap_err().starts_with("truncated"));
    assert!(lime::parse(&good[..100])
        .unwrap_err()
        .starts_with("truncated"));
    let mut bad = good.clone();
    bad[17] = 0xff;
    assert!(lime::parse(&bad).unwrap_err().contains("printable ASCII"));
    let mut bad = good;
    bad.extend_from_slice(&[0; 10]);
    assert!(lime::parse(&bad).unwrap_err().starts_with("truncated"));
}

#[test]
#[allow(clippy::manual_rotate)] // the rotation written out, as the definition states it
fn scidac_checksum_follows_its_definition() {
    // zlib's CRC-32 check value
    assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
    let site = |r: u8| vec![r, 1, 2, 3];
    let mut c = Checksum::default();
    let (mut a, mut b) = (0u32, 0u32);
    for rank in 0..70u64 {
        c.add_site(rank, &site(rank as u8));
        let crc = crc32fast::hash(&site(rank as u8));
        // rotations by rank mod 29 and mod 31, written out
        let ra = (rank % 29) as u32;
        let rb = (rank % 31) as u32;
        a ^= if ra == 0 {
            crc
        } else {
            (crc << ra) | (crc >> (32 - ra))
        };
        b ^= if rb == 0 {
            crc
        } else {
            (crc << rb) | (crc >> (32 - rb))
        };
    }
    assert_eq!((c.suma, c.sumb), (a, b));
    let data: Vec<u8> = (0..70u8).flat_map(site).collect();
    assert_eq!(Checksum::of_sites(&data, 4), c);
    let x = xml::parse(c.to_xml().as_bytes()).unwrap();
    assert_eq!(scidac::parse_hex(x.child_text("suma").unwrap()), Some(a));
    assert_eq!(scidac::parse_hex(" 0xFF "), Some(255));
    assert_eq!(scidac::parse_hex("123456789"), None);
    assert_eq!(scidac::parse_hex("xyz"), None);
}

#[test]
fn xml_reader_reads_what_ildg_writes_and_refuses_malformed_documents() {
    let doc = br#"<?xml version="1.0"?><!-- c --><ildg:ildgFormat xmlns:ildg="x" a='1'>
      <version>1.0</version><field>su3gauge</field><lx> 4 </lx><e/><t>a&lt;b&amp;&#x41;<![CDATA[<raw>]]></t>
      </ildg:ildgFormat>"#;
    let r = xml::parse(doc).unwrap();
    assert_eq!(r.name, "ildgFormat");
    assert_eq!(r.child_text("lx"), Some("4"));
    assert_eq!(r.child_text("t"), Some("a<b&A<raw>"));
    assert_eq!(r.child_text("e"), Some(""));
    assert!(r.child("missing").is_none());
    let mut nul = b"<a>1</a>".to_vec();
    nul.extend_from_slice(&[0, 0]);
    assert_eq!(xml::parse(&nul).unwrap().text, "1");
    for (bad, needle) in [
        (&b"<a><b></a>"[..], "does not match"),
        (b"<a>", "not closed"),
        (b"<a></a><b/>", "after the root"),
        (b"text", "root element"),
        (b"<a x=1></a>", "quoted"),
        (b"<a>&bogus;</a>", "entity"),
        (b"<a", "unterminated"),
        (b"<!-- x", "unterminated comment"),
        (b"\xff<a/>", "UTF-8"),
        (b"", "root element"),
    ] {
        let e = xml::parse(bad).unwrap_err();
        assert!(
            e.contains(needle),
            "{:?}: {e}",
            String::from_utf8_lossy(bad)
        );
    }
    let deep = "<a>".repeat(100) + &"</a>".repeat(100);
    assert!(xml::parse(deep.as_bytes()).unwrap_err().contains("deeply"));
    assert_eq!(
        xml::escape("<a & 'b'>\""),
        "&lt;a &amp; &apos;b&apos;&gt;&quot;"
    );
}

#[test]
fn ildg_round_trip_is_bit_identical_at_64_bits() {
    let c = random_config([4, 2, 3, 6], 11);
    let enc = file::encode(&c, Precision::Double, &meta()).unwrap();
    assert_eq!(enc.plaquette.to_bits(), c.plaquette().to_bits());
    let f = file::decode(p(), &enc.bytes).unwrap();
    assert_eq!(f.precision, Precision::Double);
    assert_eq!(f.config.shape, c.shape);
    let same = f
        .config
        .links
        .iter()
        .zip(&c.links)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same && f.config.links.len() == c.links.len());
    assert_eq!(f.checksum, Some(enc.checksum));
    assert_eq!(f.lfn.as_deref(), Some("lfn://latflow/test/conf.00000.lime"));
    assert!(f.file_xml.unwrap().contains("latflow tests &lt;&amp;&gt;"));
    assert!(f.record_xml.unwrap().contains("<sweep>7</sweep>"));
    assert!(f.reunitarized.is_none());
    // what a reader of the file sees: the ildg-format record
    let (_, fmt) = record(&enc.bytes, "ildg-format");
    let x = xml::parse(fmt).unwrap();
    let got: Vec<_> = ["field", "precision", "lx", "ly", "lz", "lt"]
        .iter()
        .map(|k| x.child_text(k).unwrap())
        .collect();
    assert_eq!(got, ["su3gauge", "64", "4", "2", "3", "6"]);
    // message structure: three messages
    let recs = lime::parse(&enc.bytes).unwrap();
    let begins: Vec<_> = recs
        .iter()
        .filter(|r| r.begin)
        .map(|r| r.kind.as_str())
        .collect();
    let ends: Vec<_> = recs
        .iter()
        .filter(|r| r.end)
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(
        begins,
        [
            "scidac-private-file-xml",
            "scidac-private-record-xml",
            "ildg-data-lfn"
        ]
    );
    assert_eq!(
        ends,
        ["scidac-file-xml", "scidac-checksum", "ildg-data-lfn"]
    );
}

#[test]
fn ildg_binary_data_is_big_endian_x_fastest_then_mu_then_rows() {
    let shape = [2, 3, 4, 5];
    let c = random_config(shape, 5);
    let bytes = encode(&c, Precision::Double);
    let (_, data) = record(&bytes, "ildg-binary-data");
    assert_eq!(data.len(), 2 * 3 * 4 * 5 * 4 * 18 * 8);
    let [lx, ly, lz, lt] = shape;
    for (x, y, z, t) in [
        (0, 0, 0, 0),
        (1, 0, 0, 0),
        (0, 2, 1, 3),
        (1, 2, 3, 4),
        (1, 1, 2, 0),
    ] {
        for mu in 0..4 {
            let rank = ((t * lz + z) * ly + y) * lx + x;
            let site = ((x * ly + y) * lz + z) * lt + t;
            for k in 0..18 {
                let at = ((rank * 4 + mu) * 18 + k) * 8;
                let v = f64::from_be_bytes(data[at..at + 8].try_into().unwrap());
                assert_eq!(
                    v.to_bits(),
                    c.links[(site * 4 + mu) * 18 + k].to_bits(),
                    "x {x} y {y} z {z} t {t} mu {mu} k {k}"
                );
            }
        }
    }
    assert_eq!(
        coords(shape, ((ly + 2) * lz + 3) * lt + 4),
        [1, 2, 3, 4]
    );
}

#[test]
fn ildg_round_trip_at_32_bits_is_within_float_rounding() {
    let c = random_config([2, 2, 2, 4], 3);
    let enc = file::encode(&c, Precision::Single, &meta()).unwrap();
    let (_, data) = record(&enc.bytes, "ildg-binary-data");
    assert_eq!(data.len(), 32 * 4 * 18 * 4);
    let rounded = GaugeConfig {
        shape: c.shape,
        links: c.links.iter().map(|&x| x as f32 as f64).collect(),
    };
    assert_eq!(enc.plaquette.to_bits(), rounded.plaquette().to_bits());
    let f = file::decode(p(), &enc.bytes).unwrap();
    assert_eq!(f.precision, Precision::Single);
    assert_eq!(f.stored_plaquette.to_bits(), enc.plaquette.to_bits());
    let dev = f.reunitarized.unwrap();
    assert!(dev > 0.0 && dev < 2e-6, "{dev}");
    // every value within float32 rounding of the original, links back in SU(3)
    for (a, b) in f.config.links.iter().zip(&c.links) {
        assert!((a - b).abs() <= 4.0 * f32::EPSILON as f64, "{a} vs {b}");
    }
    assert!(f.config.worst_link(1e-14).is_none());
    assert!((f.config.plaquette() - c.plaquette()).abs() < 1e-6);
}

#[test]
fn refuses_a_wrong_precision() {
    let c = random_config([2, 2, 2, 2], 1);
    let bytes = encode(&c, Precision::Double);
    let (_, fmt) = record(&bytes, "ildg-format");
    let text = String::from_utf8(fmt.to_vec()).unwrap();
    // the format says 32 bits, the data are 64-bit
    let lie = replace_record(
        &bytes,
        "ildg-format",
        text.replace("<precision>64", "<precision>32").as_bytes(),
    );
    expect_err(
        file::decode(p(), &lie),
        ErrorKind::Precision,
        &["scidac-private-record-xml", "precision \"D\" contradicts"],
    );
    let lie = without(&lie, "scidac-private-record-xml");
    expect_err(
        file::decode(p(), &lie),
        ErrorKind::Precision,
        &["ildg-binary-data", "at 64 bits", "says precision 32"],
    );
    let odd = replace_record(
        &bytes,
        "ildg-format",
        text.replace("<precision>64", "<precision>48").as_bytes(),
    );
    expect_err(
        file::decode(p(), &odd),
        ErrorKind::Precision,
        &["ildg-format", "precision is 48", "32 or 64"],
    );
    // the SciDAC private record contradicts
    let (_, pr) = record(&bytes, "scidac-private-record-xml");
    let t = String::from_utf8(pr.to_vec())
        .unwrap()
        .replace("<precision>D", "<precision>F");
    let contra = replace_record(&bytes, "scidac-private-record-xml", t.as_bytes());
    expect_err(
        file::decode(p(), &contra),
        ErrorKind::Precision,
        &["scidac-private-record-xml", "\"F\""],
    );
}

#[test]
fn refuses_a_wrong_lattice_size() {
    let c = random_config([2, 2, 2, 4], 2);
    let bytes = encode(&c, Precision::Double);
    let (_, fmt) = record(&bytes, "ildg-format");
    let text = String::from_utf8(fmt.to_vec()).unwrap();
    let wrong = replace_record(
        &bytes,
        "ildg-format",
        text.replace("<lt>4</lt>", "<lt>6</lt>").as_bytes(),
    );
    // the private file record's dims disagree first
    expect_err(
        file::decode(p(), &wrong),
        ErrorKind::Lattice,
        &["scidac-private-file-xml", "dims", "2×2×2×6"],
    );
    // without it, the data length does
    expect_err(
        file::decode(p(), &without(&wrong, "scidac-private-file-xml")),
        ErrorKind::Lattice,
        &[
            "ildg-binary-data",
            "2×2×2×6",
            "needs 27648",
            "18432 bytes",
            "32 sites",
        ],
    );
    let one = replace_record(
        &bytes,
        "ildg-format",
        text.replace("<lx>2</lx>", "<lx>1</lx>").as_bytes(),
    );
    expect_err(
        file::decode(p(), &one),
        ErrorKind::Lattice,
        &["ildg-format", "at least 2"],
    );
    let missing = replace_record(
        &bytes,
        "ildg-format",
        text.replace("<lz>2</lz>", "").as_bytes(),
    );
    expect_err(
        file::decode(p(), &missing),
        ErrorKind::Xml,
        &["missing element <lz>"],
    );
    let huge = replace_record(
        &bytes,
        "ildg-format",
        text.replace("<lt>4</lt>", "<lt>99999999999999999</lt>")
            .as_bytes(),
    );
    assert!(file::decode(p(), &huge).is_err());
}

#[test]
fn refuses_a_bad_checksum() {
    let c = random_config([2, 2, 2, 2], 4);
    let bytes = encode(&c, Precision::Double);
    let (rec, _) = record(&bytes, "ildg-binary-data");
    // one flipped bit in the last byte of a real (a change of 1 ulp: still SU(3) to 1e-10)
    let mut flipped = bytes.clone();
    flipped[rec.offset + 1000 * 8 + 7] ^= 1;
    expect_err(
        file::decode(p(), &flipped),
        ErrorKind::Checksum,
        &["scidac-checksum", "damaged"],
    );
    // a damaged checksum record
    let (_, sum) = record(&bytes, "scidac-checksum");
    let x = xml::parse(sum).unwrap();
    let a = x.child_text("suma").unwrap();
    let t = String::from_utf8(sum.to_vec())
        .unwrap()
        .replace(&format!(">{a}<"), ">1234abcd<");
    let bad = replace_record(&bytes, "scidac-checksum", t.as_bytes());
    expect_err(
        file::decode(p(), &bad),
        ErrorKind::Checksum,
        &["suma 1234abcd"],
    );
    let bad = replace_record(
        &bytes,
        "scidac-checksum",
        b"<scidacChecksum><suma>zz</suma></scidacChecksum>",
    );
    expect_err(file::decode(p(), &bad), ErrorKind::Xml, &["<suma>"]);
}

#[test]
fn refuses_a_truncated_file() {
    let c = random_config([2, 2, 2, 2], 6);
    let bytes = encode(&c, Precision::Double);
    let (rec, _) = record(&bytes, "ildg-binary-data");
    for cut in [
        10,
        144,
        150,
        rec.offset - 1,
        rec.offset + 100,
        bytes.len() - 200,
    ] {
        let e = file::decode(p(), &bytes[..cut]).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e.kind, ErrorKind::Truncated | ErrorKind::Format),
            "cut {cut}: {msg}"
        );
        assert!(
            msg.contains("truncated") || msg.contains("missing"),
            "cut {cut}: {msg}"
        );
    }
    expect_err(
        file::decode(p(), &bytes[..rec.offset + 100]),
        ErrorKind::Truncated,
        &["ildg-binary-data", "declares"],
    );
    expect_err(file::decode(p(), &[]), ErrorKind::Format, &["missing"]);
}

#[test]
fn refuses_non_su3_links() {
    for (scale, needle) in [(1.0 + 1e-9, "exceeds 1e-10"), (f64::NAN, "NaN")] {
        let mut c = random_config([2, 2, 2, 2], 8);
        // link U_2 at (x, y, z, t) = (1, 0, 1, 0): latflow site ((1·2 + 0)·2 + 1)·2 + 0 = 10
        let l = (10 * 4 + 2) * 18;
        for v in &mut c.links[l..l + 18] {
            *v *= scale;
        }
        let bytes = encode(&c, Precision::Double);
        expect_err(
            file::decode(p(), &bytes),
            ErrorKind::NotSun,
            &[
                "U_2(x, y, z, t = 1, 0, 1, 0)",
                "not an SU(3) matrix",
                needle,
            ],
        );
    }
    // a determinant off by a phase: unitary, not special
    let mut c = random_config([2, 2, 2, 2], 9);
    let (cs, sn) = (0.1f64.cos(), 0.1f64.sin());
    for k in 0..3 {
        let (re, im) = (c.links[2 * k], c.links[2 * k + 1]);
        c.links[2 * k] = re * cs - im * sn;
        c.links[2 * k + 1] = re * sn + im * cs;
    }
    expect_err(
        file::decode(p(), &encode(&c, Precision::Double)),
        ErrorKind::NotSun,
        &["U_0(x, y, z, t = 0, 0, 0, 0)"],
    );
}

#[test]
fn refuses_malformed_xml_and_missing_records() {
    let c = random_config([2, 2, 2, 2], 10);
    let bytes = encode(&c, Precision::Double);
    let broken = replace_record(
        &bytes,
        "ildg-format",
        b"<ildgFormat><field>su3gauge</field>",
    );
    expect_err(
        file::decode(p(), &broken),
        ErrorKind::Xml,
        &["record ildg-format", "malformed XML", "not closed"],
    );
    let other = replace_record(&bytes, "ildg-format", b"<other/>");
    expect_err(
        file::decode(p(), &other),
        ErrorKind::Xml,
        &["<other>", "<ildgFormat>"],
    );
    let (_, fmt) = record(&bytes, "ildg-format");
    let t = String::from_utf8(fmt.to_vec())
        .unwrap()
        .replace("su3gauge", "su2gauge");
    expect_err(
        file::decode(p(), &replace_record(&bytes, "ildg-format", t.as_bytes())),
        ErrorKind::Unsupported,
        &["su2gauge"],
    );
    let rec = replace_record(
        &bytes,
        "scidac-record-xml",
        b"<latflowRecord><plaquette>0.5",
    );
    expect_err(
        file::decode(p(), &rec),
        ErrorKind::Xml,
        &["scidac-record-xml"],
    );
    let plaq = replace_record(
        &bytes,
        "scidac-record-xml",
        b"<latflowRecord><plaquette>0.5</plaquette></latflowRecord>",
    );
    expect_err(
        file::decode(p(), &plaq),
        ErrorKind::Mismatch,
        &["plaquette 0.5"],
    );
    // foreign record XML is accepted
    let foreign = replace_record(
        &bytes,
        "scidac-record-xml",
        b"<info><plaquette>0.5</plaquette></info>",
    );
    assert!(file::decode(p(), &foreign).is_ok());
    expect_err(
        file::decode(p(), &without(&bytes, "ildg-format")),
        ErrorKind::Format,
        &["record ildg-format", "missing"],
    );
    let mut twice = bytes.clone();
    let mut w = lime::Writer::new();
    w.record("ildg-format", fmt, true, true).unwrap();
    twice.extend_from_slice(&w.bytes);
    expect_err(
        file::decode(p(), &twice),
        ErrorKind::Format,
        &["more than once"],
    );
}

/// A NERSC file image written from the format's definition (tests only).
fn nersc_image(
    c: &GaugeConfig,
    rows: usize,
    precision: Precision,
    little: bool,
    extra: &[(&str, String)],
    skip: &[&str],
) -> Vec<u8> {
    let mut data = Vec::new();
    let mut sum = 0u32;
    for_each_site(c.shape, |_, s| {
        for mu in 0..4 {
            let l = &c.links[(s * 4 + mu) * 18..(s * 4 + mu) * 18 + rows * 6];
            for &x in l {
                match (precision, little) {
                    (Precision::Double, false) => data.extend_from_slice(&x.to_be_bytes()),
                    (Precision::Double, true) => data.extend_from_slice(&x.to_le_bytes()),
                    (Precision::Single, false) => data.extend_from_slice(&(x as f32).to_be_bytes()),
                    (Precision::Single, true) => data.extend_from_slice(&(x as f32).to_le_bytes()),
                }
                match precision {
                    Precision::Double => {
                        sum = sum
                            .wrapping_add(x.to_bits() as u32)
                            .wrapping_add((x.to_bits() >> 32) as u32)
                    }
                    Precision::Single => sum = sum.wrapping_add((x as f32).to_bits()),
                }
            }
        }
    });
    let fp = format!(
        "IEEE{}{}",
        precision.bits(),
        if little { "LITTLE" } else { "BIG" }
    );
    let mut keys: Vec<(&str, String)> = vec![
        ("HDR_VERSION", "1.0".into()),
        (
            "DATATYPE",
            if rows == 2 {
                "4D_SU3_GAUGE".into()
            } else {
                "4D_SU3_GAUGE_3x3".into()
            },
        ),
        ("DIMENSION_1", c.shape[0].to_string()),
        ("DIMENSION_2", c.shape[1].to_string()),
        ("DIMENSION_3", c.shape[2].to_string()),
        ("DIMENSION_4", c.shape[3].to_string()),
        ("CHECKSUM", format!("{sum:8x}")),
        ("LINK_TRACE", format!("{:.10}", c.link_trace())),
        ("PLAQUETTE", format!("{:.10}", c.plaquette())),
        ("FLOATING_POINT", fp),
        ("BOUNDARY_1", "PERIODIC".into()),
    ];
    keys.retain(|(k, _)| !skip.contains(k));
    for (k, v) in extra {
        keys.retain(|(key, _)| key != k);
        keys.push((k, v.clone()));
    }
    let mut out = b"BEGIN_HEADER\n".to_vec();
    for (k, v) in keys {
        out.extend_from_slice(format!("{k} = {v}\n").as_bytes());
    }
    out.extend_from_slice(b"END_HEADER\n");
    out.extend_from_slice(&data);
    out
}

#[test]
fn nersc_files_are_read_in_every_variant() {
    let c = random_config([2, 4, 2, 3], 12);
    for rows in [3, 2] {
        for little in [false, true] {
            let img = nersc_image(&c, rows, Precision::Double, little, &[], &[]);
            let f = nersc::decode(p(), &img).unwrap();
            assert!(f.checksum_verified && f.reunitarized.is_none());
            assert_eq!(f.config.shape, c.shape);
            for (a, b) in f.config.links.iter().zip(&c.links) {
                if rows == 3 {
                    assert_eq!(a.to_bits(), b.to_bits());
                } else {
                    assert!((a - b).abs() < 1e-14, "reconstructed third row: {a} vs {b}");
                }
            }
            let img = nersc_image(&c, rows, Precision::Single, little, &[], &[]);
            let f = nersc::decode(p(), &img).unwrap();
            assert!(f.reunitarized.unwrap() < 2e-6);
            assert!(f.config.worst_link(1e-14).is_none());
            for (a, b) in f.config.links.iter().zip(&c.links) {
                assert!((a - b).abs() <= 4.0 * f32::EPSILON as f64);
            }
        }
    }
    // the checksum of the unit field, by hand: 1.0 = 0x3ff00000_00000000, three per link
    let unit = GaugeConfig {
        shape: [2, 2, 2, 2],
        links: (0..16 * 4)
            .flat_map(|_| {
                let mut l = [0.0; 18];
                l[0] = 1.0;
                l[8] = 1.0;
                l[16] = 1.0;
                l
            })
            .collect(),
    };
    let expected = (16u64 * 4 * 3 * 0x3ff0_0000u64) as u32;
    let img = nersc_image(
        &unit,
        3,
        Precision::Double,
        false,
        &[("CHECKSUM", format!("{expected:x}"))],
        &[],
    );
    assert!(nersc::decode(p(), &img).unwrap().checksum_verified);
    assert_eq!(
        nersc::decode(p(), &img).unwrap().get("DATATYPE"),
        Some("4D_SU3_GAUGE_3x3")
    );
    // without the optional checks
    let img = nersc_image(
        &c,
        3,
        Precision::Double,
        false,
        &[],
        &["CHECKSUM", "PLAQUETTE", "LINK_TRACE"],
    );
    assert!(!nersc::decode(p(), &img).unwrap().checksum_verified);
}

#[test]
fn nersc_refusals_name_the_problem() {
    let c = random_config([2, 2, 2, 2], 13);
    let bad = |extra: &[(&str, String)], skip: &[&str]| {
        nersc::decode(
            p(),
            &nersc_image(&c, 3, Precision::Double, false, extra, skip),
        )
        .unwrap_err()
    };
    let cases: Vec<(IldgError, ErrorKind, &str)> = vec![
        (
            bad(&[("CHECKSUM", "1".into())], &[]),
            ErrorKind::Checksum,
            "CHECKSUM",
        ),
        (
            bad(&[("PLAQUETTE", "0.9".into())], &[]),
            ErrorKind::Mismatch,
            "PLAQUETTE",
        ),
        (
            bad(&[("LINK_TRACE", "0.9".into())], &[]),
            ErrorKind::Mismatch,
            "LINK_TRACE",
        ),
        (
            bad(&[("DATATYPE", "4D_SU2_GAUGE".into())], &[]),
            ErrorKind::Unsupported,
            "4D_SU2_GAUGE",
        ),
        (
            bad(&[("FLOATING_POINT", "IEEE48BIG".into())], &[]),
            ErrorKind::Precision,
            "IEEE48BIG",
        ),
        (
            bad(&[("FLOATING_POINT", "IEEE32BIG".into())], &[]),
            ErrorKind::Lattice,
            "needs 4608",
        ),
        (
            bad(&[("DIMENSION_4", "3".into())], &[]),
            ErrorKind::Truncated,
            "truncated",
        ),
        (
            bad(&[("DIMENSION_4", "x".into())], &[]),
            ErrorKind::Format,
            "DIMENSION_4",
        ),
        (bad(&[], &["DIMENSION_2"]), ErrorKind::Format, "DIMENSION_2"),
    ];
    for (e, kind, needle) in cases {
        assert_eq!(e.kind, kind, "{e}");
        assert!(e.to_string().contains(needle), "{needle:?} in {e}");
    }
    let img = nersc_image(&c, 3, Precision::Double, false, &[], &[]);
    let cut = img.windows(10).position(|w| w == b"END_HEADER").unwrap() + 3;
    assert_eq!(
        nersc::decode(p(), &img[..cut]).unwrap_err().kind,
        ErrorKind::Truncated
    );
    assert_eq!(
        nersc::decode(p(), &img[..img.len() - 8]).unwrap_err().kind,
        ErrorKind::Truncated
    );
    let mut scaled = c.clone();
    scaled.links[5] *= 1.001;
    let img = nersc_image(
        &scaled,
        3,
        Precision::Double,
        false,
        &[],
        &["PLAQUETTE", "LINK_TRACE"],
    );
    assert_eq!(
        nersc::decode(p(), &img).unwrap_err().kind,
        ErrorKind::NotSun
    );
}

#[test]
fn a_start_file_must_match_the_theory_layout() {
    let dir = tempfile::tempdir().unwrap();
    let c = random_config([4, 4, 4, 8], 14);
    let path = dir.path().join("conf.lime");
    std::fs::write(&path, encode(&c, Precision::Double)).unwrap();
    let su3 = |shape: &[usize]| {
        FieldLayout::single(
            shape,
            "links",
            Support::Link,
            ElementKind::complex_matrix(3),
        )
    };
    let got = start::load(&path, None, &su3(&[4, 4, 4, 8])).unwrap();
    assert!(got
        .config
        .iter()
        .zip(&c.links)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(
        got.description
            .contains("ILDG, 64 bits, SciDAC checksum verified"),
        "{}",
        got.description
    );
    assert!(start::load(&path, Some(0), &su3(&[4, 4, 4, 8])).is_ok());
    let refusals = [
        (
            su3(&[4, 4, 4, 4]),
            "lattice [4, 4, 4, 8] differs from [4, 4, 4, 4]",
        ),
        (su3(&[8, 4, 4, 4]), "differs"),
        (
            FieldLayout::single(
                &[4, 4, 4, 8],
                "links",
                Support::Link,
                ElementKind::complex_matrix(2),
            ),
            "2×2 complex matrices",
        ),
        (
            FieldLayout::single(&[4, 4, 4, 8], "theta", Support::Link, ElementKind::Angle),
            "angles on the links",
        ),
        (
            FieldLayout::single(&[8, 8], "phi", Support::Site, ElementKind::Real),
            "reals on the sites of a [8, 8] lattice",
        ),
    ];
    for (layout, needle) in refusals {
        let e = format!("{:#}", start::load(&path, None, &layout).unwrap_err());
        assert!(
            e.contains("does not fit the theory")
                && e.contains("3×3 complex matrices on the links")
                && e.contains(needle),
            "{e}"
        );
    }
    let e = format!(
        "{:#}",
        start::load(&path, Some(2), &su3(&[4, 4, 4, 8])).unwrap_err()
    );
    assert!(
        e.contains("index = 2") && e.contains("one configuration"),
        "{e}"
    );
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello").unwrap();
    let e = format!(
        "{:#}",
        start::load(&junk, None, &su3(&[4, 4, 4, 8])).unwrap_err()
    );
    assert!(
        e.contains("neither an ILDG/LIME file") && e.contains("junk"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        start::load(&dir.path().join("none"), None, &su3(&[4, 4, 4, 8])).unwrap_err()
    );
    assert!(e.contains("cannot open"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random bytes, prefixes and bit flips of a valid file: every reader returns, never panics.
    #[test]
    fn readers_never_panic(seed in any::<u64>(), cut in 0usize..10_000, flips in proptest::collection::vec((0usize..10_000, 0u8..8), 0..4), junk in proptest::collection::vec(any::<u8>(), 0..600)) {
        let c = random_config([2, 2, 2, 2], seed % 4);
        let good = encode(&c, if seed % 2 == 0 { Precision::Double } else { Precision::Single });
        let mut damaged = good.clone();
        for (at, bit) in &flips {
            let i = at % damaged.len();
            damaged[i] ^= 1 << bit;
        }
        let cut = cut % (good.len() + 1);
        let nersc = nersc_image(&c, 2 + (seed % 2) as usize, Precision::Double, seed % 3 == 0, &[], &[]);
        let mut nersc_damaged = nersc.clone();
        for (at, bit) in &flips {
            let i = at % nersc_damaged.len();
            nersc_damaged[i] ^= 1 << bit;
        }
        let mut lime_junk = good[..144].to_vec();
        lime_junk.extend_from_slice(&junk);
        for bytes in [&good[..cut], &damaged[..], &junk[..], &lime_junk[..], &nersc[..cut.min(nersc.len())], &nersc_damaged[..]] {
            let _ = convert::decode_gauge_file(p(), bytes);
            let _ = file::decode(p(), bytes);
            let _ = nersc::decode(p(), bytes);
            let _ = xml::parse(bytes);
            let _ = lime::parse(bytes);
        }
        if flips.is_empty() {
            prop_assert!(file::decode(p(), &damaged).is_ok());
        }
    }
}
