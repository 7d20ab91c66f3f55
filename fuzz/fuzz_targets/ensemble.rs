#![no_main]
//! Fuzzes [`latflow_host::fuzzing::ensemble`]: the input is written to one scratch file per
//! process, then read as an HDF5 ensemble.

use std::path::PathBuf;
use std::sync::OnceLock;

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = SCRATCH.get_or_init(|| std::env::temp_dir().join(format!("latflow-fuzz-{}.h5", std::process::id())));
    latflow_host::fuzzing::ensemble(data, path);
});
