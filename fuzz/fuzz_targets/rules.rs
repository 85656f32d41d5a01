//! A `rules/*.toml` file through `rules::load_dir` (JSONPath, regex, CEL compiled; inline tests parsed), then its
//! inline tests run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // plumb catches a panicking CEL evaluation as that rule's error (see rules::evaluate); libfuzzer-sys's hook
        // would abort on it even though it is caught. Print instead: an uncaught panic still aborts the run.
        std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    },
    |data: &[u8]| plumb_fuzz::check_rules(data)
);
