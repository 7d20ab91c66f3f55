//! The `latflow` command, built by this crate so that its tests can run it
//! (`CARGO_BIN_EXE_latflow-tested`); see tests/Cargo.toml.
fn main() -> std::process::ExitCode {
    latflow_host::cli::main()
}
