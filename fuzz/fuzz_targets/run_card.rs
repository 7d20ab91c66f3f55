#![no_main]
//! Fuzzes [`latflow_host::fuzzing::run_card`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| latflow_host::fuzzing::run_card(data));
