//! LIME, the record container of ILDG and SciDAC files.
//!
//! A LIME file is a sequence of records. Each record is a 144-byte header followed by its
//! data, zero-padded to a multiple of 8 bytes. The header (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic number `0x456789ab` |
//! | 4..6 | LIME version (1) |
//! | 6..8 | flags: bit 15 = MB (message begin), bit 14 = ME (message end), the rest 0 |
//! | 8..16 | data length in bytes, without the padding |
//! | 16..144 | the record type, ASCII, NUL-padded (at most 128 bytes) |
//!
//! Records are grouped into messages: the first record of a message has MB set, the last ME.

/// The LIME magic number.
pub const MAGIC: u32 = 0x4567_89ab;
/// The LIME format version written and accepted.
pub const VERSION: u16 = 1;
/// Bytes in a record header.
pub const HEADER_LEN: usize = 144;
/// Longest record type.
pub const TYPE_LEN: usize = 128;
const MB: u16 = 0x8000;
const ME: u16 = 0x4000;

/// One record of a parsed file: its type, flags, and where its data lies in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The LIME type, e.g. `ildg-binary-data`.
    pub kind: String,
    /// Message begin flag.
    pub begin: bool,
    /// Message end flag.
    pub end: bool,
    /// Byte offset of the data in the file.
    pub offset: usize,
    /// Length of the data in bytes (without padding).
    pub len: usize,
}

impl Record {
    /// The record's data, as a slice of the file it was parsed from.
    pub fn data<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.offset..self.offset + self.len]
    }
}

/// Padding after `len` data bytes, up to a multiple of 8.
pub fn padding(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Whether `bytes` begin like a LIME file (the magic number).
pub fn is_lime(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == MAGIC
}

/// Parses every record header of a LIME file held in memory. The whole file must be records:
/// an error (a readable description naming the byte offset) for a bad magic number or
/// version, reserved flag bits, a type that is not printable ASCII, a record whose data runs
/// past the end of the file (truncation), or trailing bytes that are not a full record. The
/// padding of the last record may be missing. Never panics.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let left = bytes.len() - at;
        if left < HEADER_LEN {
            return Err(format!(
                "truncated: {left} bytes at offset {at} where a {HEADER_LEN}-byte LIME record header should be"
            ));
        }
        let h = &bytes[at..at + HEADER_LEN];
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if magic != MAGIC {
            return Err(format!("record header at offset {at}: magic number {magic:#010x}, expected {MAGIC:#010x} (not a LIME file, or a damaged one)"));
        }
        let version = u16::from_be_bytes([h[4], h[5]]);
        if version != VERSION {
            return Err(format!("record header at offset {at}: LIME version {version}, only version {VERSION} is supported"));
        }
        let flags = u16::from_be_bytes([h[6], h[7]]);
        if flags & !(MB | ME) != 0 {
            return Err(format!(
                "record header at offset {at}: reserved flag bits set ({flags:#06x})"
            ));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&h[8..16]);
        let len = u64::from_be_bytes(len8);
        let kind = record_type(&h[16..HEADER_LEN])
            .map_err(|e| format!("record header at offset {at}: {e}"))?;
        let offset = at + HEADER_LEN;
        let room = (bytes.len() - offset) as u64;
        if len > room {
            return Err(format!(
                "truncated: record '{kind}' at offset {at} declares {len} data bytes, but only {room} remain in the file"
            ));
        }
        let len = len as usize;
        records.push(Record {
            kind,
            begin: flags & MB != 0,
            end: flags & ME != 0,
            offset,
            len,
        });
        // the last record's padding may be absent
        at = (offset + len + padding(len)).min(bytes.len());
    }
    Ok(records)
}

/// The record type from the 128 header bytes: up to the first NUL, printable ASCII, not empty.
fn record_type(b: &[u8]) -> Result<String, String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let t = &b[..end];
    if t.is_empty() {
        return Err("empty record type".into());
    }
    if !t.iter().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "record type {:?} is not printable ASCII",
            String::from_utf8_lossy(t)
        ));
    }
    if b[end..].iter().any(|&c| c != 0) {
        return Err("record type has bytes after its terminating NUL".into());
    }
    Ok(String::from_utf8_lossy(t).into_owned())
}

/// Appends LIME records to a byte buffer, tracking message boundaries.
#[derive(Debug, Default)]
pub struct Writer {
    /// The file written so far.
    pub bytes: Vec<u8>,
}

impl Writer {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one record: header, data, zero padding to 8 bytes. `begin`/`end` set the MB/ME
    /// flags. Errors for a type that is empty, longer than 128 bytes or not printable ASCII.
    pub fn record(
        &mut self,
        kind: &str,
        data: &[u8],
        begin: bool,
        end: bool,
    ) -> Result<(), String> {
        if kind.is_empty() || kind.len() > TYPE_LEN || !kind.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "invalid LIME record type {kind:?} (1 to {TYPE_LEN} printable ASCII characters)"
            ));
        }
        self.bytes.reserve(HEADER_LEN + data.len() + 8);
        self.bytes.extend_from_slice(&MAGIC.to_be_bytes());
        self.bytes.extend_from_slice(&VERSION.to_be_bytes());
        let flags = if begin { MB } else { 0 } | if end { ME } else { 0 };
        self.bytes.extend_from_slice(&flags.to_be_bytes());
        self.bytes
            .extend_from_slice(&(data.len() as u64).to_be_bytes());
        let mut t = [0u8; TYPE_LEN];
        t[..kind.len()].copy_from_slice(kind.as_bytes());
        self.bytes.extend_from_slice(&t);
        self.bytes.extend_from_slice(data);
        self.bytes
            .extend(std::iter::repeat_n(0u8, padding(data.len())));
        Ok(())
    }

    /// Appends a message: the records in order, MB on the first and ME on the last.
    pub fn message(&mut self, records: &[(&str, &[u8])]) -> Result<(), String> {
        let n = records.len();
        for (i, (kind, data)) in records.iter().enumerate() {
            self.record(kind, data, i == 0, i + 1 == n)?;
        }
        Ok(())
    }
}
