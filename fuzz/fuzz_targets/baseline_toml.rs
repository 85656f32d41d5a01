//! `baselines/<config>/baseline.toml` through `baseline::parse_settings`, applied to a comparison.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb_fuzz::check_baseline_toml(data));
