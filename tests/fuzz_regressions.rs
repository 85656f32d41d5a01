//! Inputs the fuzz targets (fuzz/, scripts/fuzz) found, each fed to the same public API: every one must give a
//! clean error or result, and quickly. A new crash or hang becomes a test here, minimised, with the target that
//! found it.

use plumb::baseline;
use plumb::config;
use plumb::normalize::{self, Document, Format};
use plumb::template::Resolver;
use plumb::units;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every input here is small: a result must come back well within this.
const QUICK: Duration = Duration::from_secs(2);

/// Run `f`, asserting it returns within [`QUICK`].
fn quick<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < QUICK, "{what} took {:?}", start.elapsed());
    out
}

/// `${env:X}` is `v-X`; `${file:P}` reads nothing.
struct Fixed;

impl Resolver for Fixed {
    fn env(&self, name: &str) -> Option<String> {
        Some(format!("v-{name}"))
    }
    fn file(&self, path: &str) -> Result<String, String> {
        Ok(format!("f-{path}"))
    }
}

/// plumb.toml text loaded beside a directory that does not exist (no inventory, baselines or rules are read).
fn load_plumb_toml(text: &str) -> Result<config::Plan, config::LoadError> {
    let root = Path::new("/nonexistent/plumb-fuzz-regressions");
    config::load_str(&root.join("plumb.toml"), text, root, &Fixed)
}

// plumb_toml target: `Duration::from_secs_f64` panicked ("cannot convert float seconds to Duration") on a number
// of seconds too large for a Duration, e.g. `[scan] timeout = "1111…10s"` (90 digits).
#[test]
fn duration_too_large_for_a_duration_is_an_error() {
    let huge = format!("{}0s", "1".repeat(89));
    let e = quick("parse_duration", || units::parse_duration(&huge)).unwrap_err();
    assert!(e.contains("longer than 100 years"), "{e}");
    // A sum that overflows, and a value just beyond the cap (later arithmetic doubles backoffs and adds deadlines).
    assert!(units::parse_duration("18446744073709551615s18446744073709551615s").is_err());
    assert!(units::parse_duration("36501d").is_err());
    assert_eq!(
        units::parse_duration("36500d"),
        Ok(units::MAX_DURATION),
        "100 years is still accepted"
    );
    for key in ["timeout", "backoff"] {
        let text = format!("[scan]\n{key} = \"{huge}\"\n");
        let e = quick("load_str", || load_plumb_toml(&text)).unwrap_err();
        assert!(e.to_string().contains(&format!("[scan] {key}")), "{e}");
    }
    let text = format!("[store]\nkeep = \"{huge}\"\n[findings]\nflap_window = \"{huge}\"\n");
    let e = quick("load_str", || load_plumb_toml(&text)).unwrap_err();
    assert!(e.to_string().contains("keep"), "{e}");
    assert!(e.to_string().contains("flap_window"), "{e}");
}

// json, yaml and toml targets (an invariant, not a panic): serde_json, built without its `float_roundtrip`
// feature, read the shortest text of some f64 back as a neighbouring f64. The canonical text of a tree (what the
// store keeps and reads back for superseded baselines, and what `plumb approve` writes for a JSON config) then
// loaded as another value than the live one: a one-ULP drift. Fixed by that feature (Cargo.toml).
#[test]
fn float_canonical_text_round_trips() {
    let mut bad = Vec::new();
    for (format, text) in [
        (Format::Json, "[-922337203667440737095516]"),
        (Format::Yaml, "- 1866e33\n"),
        (Format::Toml, "x = -1.0666666666666667\n"),
    ] {
        let doc = quick("parse", || normalize::parse(format, text.as_bytes())).unwrap();
        let again = normalize::parse(Format::Json, doc.canonical_text().as_bytes()).unwrap();
        if again != doc {
            bad.push(format!("{format} {text:?}: {doc:?} became {again:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// Sanity for the helpers above: the seeds of every target still load cleanly.
#[test]
fn seeds_parse_quickly() {
    for format in Format::ALL {
        let doc = quick("parse", || normalize::parse(format, b"a = 1\n"));
        if let Ok(Document::Tree(_)) = doc {
            let _ = baseline::render(doc.as_ref().unwrap(), format);
        }
    }
}
