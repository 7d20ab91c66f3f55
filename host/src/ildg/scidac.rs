//! The SciDAC checksum (the `scidac-checksum` record of QIO/ILDG files).
//!
//! For every site, with `rank` its lexicographic index in the file's site order (x fastest,
//! t slowest: rank = x + Lx (y + Ly (z + Lz t))), the CRC-32 (zlib's polynomial, initial
//! value 0) of the site's bytes exactly as stored (all four links, big-endian) is rotated left
//! by `rank mod 29` and XORed into `suma`, and rotated left by `rank mod 31` and XORed into
//! `sumb`. Both start at 0. The record holds them in lowercase hexadecimal:
//! `<scidacChecksum><version>1.0</version><suma>…</suma><sumb>…</sumb></scidacChecksum>`.

/// The running checksum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    pub suma: u32,
    pub sumb: u32,
}

impl Checksum {
    /// Adds the bytes of the site of lexicographic rank `rank`.
    pub fn add_site(&mut self, rank: u64, bytes: &[u8]) {
        let crc = crc32fast::hash(bytes);
        self.suma ^= crc.rotate_left((rank % 29) as u32);
        self.sumb ^= crc.rotate_left((rank % 31) as u32);
    }

    /// The checksum of a whole binary record of `sites` sites of `site_bytes` each (the
    /// record's bytes, sites in file order). `data.len()` must be `sites · site_bytes`.
    pub fn of_sites(data: &[u8], site_bytes: usize) -> Self {
        let mut c = Self::default();
        if site_bytes == 0 {
            return c;
        }
        for (rank, site) in data.chunks_exact(site_bytes).enumerate() {
            c.add_site(rank as u64, site);
        }
        c
    }

    /// The `scidac-checksum` record's XML.
    pub fn to_xml(&self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><scidacChecksum><version>1.0</version><suma>{:x}</suma><sumb>{:x}</sumb></scidacChecksum>",
            self.suma, self.sumb
        )
    }
}

/// Parses a hexadecimal checksum word (optionally `0x`-prefixed, surrounding blanks allowed).
pub fn parse_hex(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.is_empty() || t.len() > 8 {
        return None;
    }
    u32::from_str_radix(t, 16).ok()
}
