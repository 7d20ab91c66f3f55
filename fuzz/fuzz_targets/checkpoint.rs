#![no_main]
//! Fuzzes [`latflow_host::fuzzing::checkpoint`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| latflow_host::fuzzing::checkpoint(data));
