//! The `ccb` binary: everything lives in the library; see `ccb::cli`.

fn main() -> std::process::ExitCode {
    ccb::cli::main()
}
