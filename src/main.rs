//! The `plumb` binary: parses arguments and hands over to [`plumb::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    plumb::cli::main()
}
