#![no_main]
//! Fuzzes [`latflow_host::fuzzing::train_checkpoint`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| latflow_host::fuzzing::train_checkpoint(data));
