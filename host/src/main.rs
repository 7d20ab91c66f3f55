fn main() -> std::process::ExitCode {
    latflow_host::cli::main()
}
