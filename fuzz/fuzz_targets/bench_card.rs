#![no_main]
//! Fuzzes [`latflow_host::fuzzing::bench_card`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| latflow_host::fuzzing::bench_card(data));
