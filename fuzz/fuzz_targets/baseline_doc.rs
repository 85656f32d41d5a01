//! A baseline document (first byte: the format) with `${node.*}` substitution and rendering, and the same text as a
//! `${...}` template.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb_fuzz::check_baseline_doc(data));
