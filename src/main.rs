//! The `plumb` binary: parses arguments and hands over to [`plumb::cli`].
#![forbid(unsafe_code)]

/// mimalloc: parsing and dropping config trees is allocation-bound, and it is 1.4-1.6x faster there than the
/// system allocator (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    plumb::cli::main()
}
