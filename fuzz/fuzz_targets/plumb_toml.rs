//! plumb.toml through `config::load_str`, and durations, sizes, selectors and CSV inventories.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb_fuzz::check_plumb_toml(data));
