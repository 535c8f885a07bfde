//! The `lpl` command line (`lpl::cli`).

fn main() -> std::process::ExitCode {
    lpl::cli::main()
}
