#![no_main]
//! Fuzzes [`latflow_host::fuzzing::gauge_file`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| latflow_host::fuzzing::gauge_file(data));
