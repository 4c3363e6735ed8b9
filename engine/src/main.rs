fn main() -> std::process::ExitCode {
    beamflow::cli::main()
}
