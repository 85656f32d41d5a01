//! `normalize::parse(Format::Toml, _)` and the `Normalizer` chain (extract, decode) over arbitrary bytes; see
//! `plumb_fuzz::check_format` for the invariants checked beyond "no panic".
#![no_main]

use libfuzzer_sys::fuzz_target;
use plumb::normalize::Format;

fuzz_target!(|data: &[u8]| plumb_fuzz::check_format(Format::Toml, data));
