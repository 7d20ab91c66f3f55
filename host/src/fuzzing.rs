//! Entry points for fuzzing the readers of untrusted input: run cards, bench cards, run and
//! training checkpoints, HDF5 ensembles and ILDG/NERSC gauge files. Each takes arbitrary bytes and must
//! return (a value or a clear error) without panicking, aborting or hanging; the results are
//! discarded. The coverage-guided targets in `fuzz/` call these, and so does the corpus replay
//! in `tests/fuzz_smoke.rs`, so a crash found by the fuzzer stays a regression test.

use std::path::Path;

/// A run card: UTF-8 text parsed and validated as `latflow run` does (no plugin is loaded).
pub fn run_card(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::card::RunCard::parse(Path::new("fuzz.toml"), text);
    }
}

/// A bench card: UTF-8 text parsed and validated as `latflow bench` does.
pub fn bench_card(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::bench::BenchCard::parse(Path::new("fuzz.toml"), text);
    }
}

/// A run checkpoint (`OUTPUT.ckpt`).
pub fn checkpoint(data: &[u8]) {
    let _ = crate::checkpoint::Checkpoint::decode(Path::new("fuzz.ckpt"), data);
}

/// A training checkpoint (`WEIGHTS.train.ckpt`): its header, and the model bytes it carries
/// (which the model plugin reads; the `weights` target covers that reader).
pub fn train_checkpoint(data: &[u8]) {
    let _ = crate::train::decode_checkpoint(Path::new("fuzz.train.ckpt"), data);
}

/// An ILDG (LIME) or NERSC gauge file, as `latflow import` and `start = { file }` read it.
pub fn gauge_file(data: &[u8]) {
    let _ = crate::ildg::convert::decode_gauge_file(Path::new("fuzz.lime"), data);
}

/// An HDF5 ensemble: `data` is written to `scratch` (a file path the caller owns), then read
/// as `analyze` and `inspect` read it: the file, every coupling's analysis, its description,
/// and its first and last stored configurations.
pub fn ensemble(data: &[u8], scratch: &Path) {
    if std::fs::write(scratch, data).is_err() {
        return;
    }
    let Ok(file) = crate::ensemble::read(scratch) else { return };
    let _ = crate::analyze::analyze(&file);
    let _ = crate::inspect::describe(&file);
    for (k, c) in file.couplings.iter().enumerate() {
        if let Some(info) = &c.configs {
            let _ = file.read_configs(k, 0, 1.min(info.count));
            let _ = file.read_configs(k, info.count.saturating_sub(1), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fuzz targets' smoke run: every committed seed and regression input under `fuzz/`,
    //! plus deterministic mutations of each, through the same entry points.

    use std::path::PathBuf;

    use latflow_core::testkit::mutations;

    /// The seeds and regression inputs of target `name`, with their file names.
    fn inputs(name: &str) -> Vec<(String, Vec<u8>)> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut all = Vec::new();
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else { continue };
            for e in entries.flatten() {
                all.push((format!("{dir}/{name}/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap()));
            }
        }
        all.sort();
        all
    }

    /// Runs `target` on every input of `name` and on `per_input` mutations of each.
    fn smoke(name: &str, per_input: usize, mut target: impl FnMut(&[u8])) {
        let inputs = inputs(name);
        assert!(!inputs.is_empty(), "fuzz/seeds/{name} is empty");
        for (i, (_, bytes)) in inputs.iter().enumerate() {
            target(bytes);
            for m in mutations(bytes, per_input, 1000 + i as u64) {
                target(&m);
            }
        }
    }

    #[test]
    fn run_card() {
        smoke("run_card", 2000, super::run_card);
    }

    #[test]
    fn bench_card() {
        smoke("bench_card", 2000, super::bench_card);
    }

    #[test]
    fn checkpoint() {
        smoke("checkpoint", 2000, super::checkpoint);
    }

    #[test]
    fn train_checkpoint() {
        smoke("train_checkpoint", 2000, super::train_checkpoint);
    }

    #[test]
    fn gauge_file() {
        smoke("gauge_file", 1000, super::gauge_file);
    }

    #[test]
    fn ensemble() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("fuzz.h5");
        smoke("ensemble", 150, |d| super::ensemble(d, &scratch));
    }
}
