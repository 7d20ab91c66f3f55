//! Checkpoints: everything needed to continue a run exactly as if it had never stopped.
//!
//! A checkpoint holds the configuration, every random stream's state, the sweep counter and
//! the row counts that the ensemble file held when it was flushed. It is written after the
//! ensemble is flushed, to a temporary file that is synced and then renamed over the old one,
//! so that a kill at any moment leaves either the old or the new checkpoint, never a torn one.
//!
//! File format (little-endian): the 8-byte magic `LFCKPT01`, a u64 header length, a JSON header
//! ([`Checkpoint`] without the configuration), then the configuration as raw f64 (exact bits).
//!
//! The header names the driver that wrote it: `"kind": "plain"` or `"replica"`. Checkpoints
//! written before the field existed (0.1) have no `kind`; it is inferred from the presence of
//! the replica state, so they still resume.

use std::io::{Read, Write};
use std::path::Path;

use latflow_core::RngState;
use serde::{Deserialize, Serialize};

use crate::ensemble::Counts;

const MAGIC: &[u8; 8] = b"LFCKPT01";

/// Which driver wrote a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A plain chain: `config`, `step_rngs` and `step_states` hold its state.
    #[default]
    Plain,
    /// A replica ladder: `replica` and `step_states` hold its state.
    Replica,
}

impl CheckpointKind {
    /// The kind as written in the header and in messages.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointKind::Plain => "plain",
            CheckpointKind::Replica => "replica",
        }
    }
}

/// The resumable state of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Which driver wrote it (inferred for checkpoints without the field, see the module docs).
    #[serde(default)]
    pub kind: CheckpointKind,
    /// [`crate::card::RunCard::hash`] of the card that produced it.
    pub card_hash: String,
    /// Sweeps completed (thermalization and measurement).
    pub sweeps_done: u64,
    /// Rows on disk in the ensemble when this checkpoint was taken.
    pub counts: Counts,
    /// One stream per chain step, in card order.
    pub step_rngs: Vec<RngState>,
    /// The current configuration (not in the JSON header; stored as raw f64 bits).
    #[serde(skip)]
    pub config: Vec<f64>,
    /// Each chain step's internal state (e.g. unused flow proposals), raw f64 bits. In a
    /// replica-exchange run: for each coupling slot in ladder order, its configuration followed by
    /// its chain steps' states (`config` is then empty).
    #[serde(skip)]
    pub step_states: Vec<Vec<f64>>,
    /// The state of a replica-exchange run beyond the arrays (absent for other runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaCheckpoint>,
}

/// What a replica-exchange checkpoint holds besides the configurations and step states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaCheckpoint {
    /// Rows on disk in each coupling's group (`/replicas/<k>`).
    pub counts: Vec<Counts>,
    /// Rows on disk under `/replica_exchange`: `measurements` = rows of the replica paths,
    /// `steps` = swap records of each `replica_exchange` step.
    pub exchange_counts: Counts,
    /// For each coupling slot, the stream of each of its chain steps.
    pub rngs: Vec<Vec<RngState>>,
    /// The accept/reject stream of each `replica_exchange` step, in card order.
    pub swap_rngs: Vec<RngState>,
    /// How often each `replica_exchange` step has been applied (its parity).
    pub swap_applications: Vec<u64>,
    /// The replica (walker) at each coupling: the replica ↔ coupling permutation.
    pub walker_at: Vec<u64>,
}

/// Checkpoint I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no checkpoint at '{0}': nothing to resume (run without --resume to start)")]
    Missing(String),
    #[error("checkpoint '{path}' is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("cannot write checkpoint '{path}': {source}")]
    Io { path: String, source: std::io::Error },
}

impl Checkpoint {
    /// Writes atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.display().to_string(), source };
        let header = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
            f.write_all(MAGIC).map_err(io)?;
            f.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
            f.write_all(&header).map_err(io)?;
            let arrays = std::iter::once(&self.config).chain(&self.step_states);
            f.write_all(&(1 + self.step_states.len() as u64).to_le_bytes()).map_err(io)?;
            for a in arrays {
                f.write_all(&(a.len() as u64).to_le_bytes()).map_err(io)?;
                for x in a {
                    f.write_all(&x.to_le_bytes()).map_err(io)?;
                }
            }
            let f = f.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Reads a checkpoint, with clear errors for a missing or damaged file.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let name = path.display().to_string();
        let corrupt = |reason: String| CheckpointError::Corrupt { path: name.clone(), reason };
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CheckpointError::Missing(name)),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(|e| corrupt(e.to_string()))?;
        Self::decode(path, &bytes)
    }

    /// Decodes a checkpoint file's bytes (`path` names it in errors). Any input gives a
    /// checkpoint or a `Corrupt` error, never a panic.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, CheckpointError> {
        let name = path.display().to_string();
        let corrupt = |reason: String| CheckpointError::Corrupt { path: name.clone(), reason };
        let mut rest: &[u8] = bytes;
        let mut take = |n: usize| -> Result<&[u8], CheckpointError> {
            if rest.len() < n {
                return Err(corrupt("file is truncated".into()));
            }
            let (a, b) = rest.split_at(n);
            rest = b;
            Ok(a)
        };
        if take(8)? != MAGIC {
            return Err(corrupt("not a latflow checkpoint (bad magic)".into()));
        }
        let hlen = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(take(hlen)?).map_err(|e| corrupt(format!("bad header: {e}")))?;
        let has_kind = header.get("kind").is_some();
        let mut ck: Checkpoint = serde_json::from_value(header).map_err(|e| corrupt(format!("bad header: {e}")))?;
        if !has_kind && ck.replica.is_some() {
            ck.kind = CheckpointKind::Replica;
        }
        if (ck.kind == CheckpointKind::Replica) != ck.replica.is_some() {
            return Err(corrupt(format!("a '{}' checkpoint with{} replica state", ck.kind.name(), if ck.replica.is_some() { "" } else { "out" })));
        }
        let n_arrays = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        if n_arrays == 0 {
            return Err(corrupt("no configuration".into()));
        }
        let mut arrays = Vec::new();
        for _ in 0..n_arrays {
            let n = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
            let raw = take(n.checked_mul(8).ok_or_else(|| corrupt("bad length".into()))?)?;
            arrays.push(raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect());
        }
        if !rest.is_empty() {
            return Err(corrupt("trailing bytes".into()));
        }
        ck.config = arrays.remove(0);
        ck.step_states = arrays;
        Ok(ck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latflow_core::Stream;

    #[test]
    fn round_trip_is_bit_exact_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ckpt");
        assert!(matches!(Checkpoint::load(&path), Err(CheckpointError::Missing(_))));
        let ck = Checkpoint {
            kind: CheckpointKind::Plain,
            card_hash: "abc".into(),
            sweeps_done: 17,
            counts: Counts { measurements: 5, steps: vec![5, 10], configs: 2 },
            step_rngs: vec![Stream::new(1, 2).state()],
            config: vec![0.1, -0.0, f64::MIN_POSITIVE, 1e300],
            step_states: vec![vec![], vec![3.0, f64::NAN]],
            replica: None,
        };
        ck.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.config, ck.config);
        assert_eq!(back.step_rngs, ck.step_rngs);
        assert_eq!(back.step_states[0], Vec::<f64>::new());
        assert_eq!(back.step_states[1][1].to_bits(), f64::NAN.to_bits());
        assert!(back.config.iter().zip(&ck.config).all(|(a, b)| a.to_bits() == b.to_bits()));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(Checkpoint::load(&path), Err(CheckpointError::Corrupt { .. })));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(Checkpoint::load(&path), Err(CheckpointError::Corrupt { .. })));
    }

    /// A header as 0.1 wrote it: no `kind`, inferred from the replica state.
    #[test]
    fn checkpoints_without_a_kind_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.ckpt");
        let replica = ReplicaCheckpoint {
            counts: vec![Counts::default(); 2],
            exchange_counts: Counts::default(),
            rngs: vec![vec![Stream::new(1, 3).state()]; 2],
            swap_rngs: vec![Stream::new(1, 5).state()],
            swap_applications: vec![4],
            walker_at: vec![1, 0],
        };
        for (replica, kind) in [(None, CheckpointKind::Plain), (Some(replica), CheckpointKind::Replica)] {
            let ck = Checkpoint {
                kind,
                card_hash: "abc".into(),
                sweeps_done: 3,
                counts: Counts::default(),
                step_rngs: vec![],
                config: vec![1.0],
                step_states: vec![],
                replica,
            };
            ck.save(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
            let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + hlen]).unwrap();
            assert_eq!(header["kind"], kind.name());
            header.as_object_mut().unwrap().remove("kind");
            let header = serde_json::to_vec(&header).unwrap();
            let mut old = bytes[..8].to_vec();
            old.extend_from_slice(&(header.len() as u64).to_le_bytes());
            old.extend_from_slice(&header);
            old.extend_from_slice(&bytes[16 + hlen..]);
            std::fs::write(&path, &old).unwrap();
            let back = Checkpoint::load(&path).unwrap();
            assert_eq!(back.kind, kind);
            assert_eq!(back, ck);
        }
        // a kind that contradicts the state is refused
        let ck = Checkpoint {
            kind: CheckpointKind::Replica,
            card_hash: "abc".into(),
            sweeps_done: 3,
            counts: Counts::default(),
            step_rngs: vec![],
            config: vec![1.0],
            step_states: vec![],
            replica: None,
        };
        ck.save(&path).unwrap();
        let e = Checkpoint::load(&path).unwrap_err();
        assert!(e.to_string().contains("'replica' checkpoint without replica state"), "{e}");
    }
}
