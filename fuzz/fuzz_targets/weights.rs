#![no_main]
//! Fuzzes the safetensors weights loader every model plugin uses
//! ([`latflow_flow_common::io::parse`]).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = latflow_flow_common::io::parse(data);
});
