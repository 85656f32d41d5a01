//! What each fuzz target does with its input. Every function takes the raw fuzzer bytes and must return without
//! panicking; where an invariant is obvious (canonical text re-parses to the same tree, an approved baseline parses
//! back to what was approved) it is asserted too. A crash found here becomes a test in tests/fuzz_regressions.rs.

use plumb::baseline;
use plumb::compare::{self, CompareOptions};
use plumb::config;
use plumb::inventory::{self, Node, Selector};
use plumb::normalize::{self, Decode, Document, Format, Normalizer};
use plumb::template::{Allow, Resolver, Template};
use plumb::units;
use serde_json::Value;
use serde_json_path::JsonPath;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// Trees deeper than this are not re-parsed as JSON (serde_json stops at 128 levels).
const MAX_REPARSE_DEPTH: usize = 100;

/// Decode chains tried on the string at `$.d` of a parsed tree (and on text documents).
const CHAINS: [&[Decode]; 5] = [
    &[Decode::Json],
    &[Decode::Yaml],
    &[Decode::Toml],
    &[Decode::Base64],
    &[Decode::Base64, Decode::Json],
];

static EXTRACT: LazyLock<JsonPath> = LazyLock::new(|| JsonPath::parse("$.d").unwrap());

/// The node every target substitutes and renders with.
pub fn node() -> Node {
    Node {
        name: "edge-1".into(),
        labels: [
            ("dc".to_string(), "ams".to_string()),
            ("role".to_string(), "edge".to_string()),
        ]
        .into(),
        vars: [
            ("host".to_string(), "10.0.0.1".to_string()),
            ("port".to_string(), "2019".to_string()),
        ]
        .into(),
    }
}

/// `${env:X}` is always set (to `v-X`); `${file:P}` reads nothing and gives `f-P`.
pub struct FuzzResolver;

impl Resolver for FuzzResolver {
    fn env(&self, name: &str) -> Option<String> {
        (!name.is_empty()).then(|| format!("v-{name}"))
    }
    fn file(&self, path: &str) -> Result<String, String> {
        if path.is_empty() {
            Err("empty path".into())
        } else {
            Ok(format!("f-{path}"))
        }
    }
}

/// Whether `v` nests deeper than `max` (iterative: the tree may be very deep).
fn deeper_than(v: &Value, max: usize) -> bool {
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        if d > max {
            return true;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    false
}

/// Equal documents, except that floats may differ in their last bits: serde_json (without its `float_roundtrip`
/// feature, which plumb does not enable) may read the shortest text of an f64 back as a neighbouring f64. That is
/// reported in tests/fuzz_regressions.rs (`json_float_round_trip`), not re-found here on every run.
pub fn same(a: &Document, b: &Document) -> bool {
    fn close(x: &Value, y: &Value) -> bool {
        match (x, y) {
            (Value::Number(m), Value::Number(n)) if m.is_f64() || n.is_f64() => {
                match (m.as_f64(), n.as_f64()) {
                    (Some(p), Some(q)) => p == q || (p - q).abs() <= 1e-15 * p.abs().max(q.abs()),
                    _ => false,
                }
            }
            (Value::Array(p), Value::Array(q)) => {
                p.len() == q.len() && p.iter().zip(q).all(|(x, y)| close(x, y))
            }
            (Value::Object(p), Value::Object(q)) => {
                p.len() == q.len()
                    && p.iter()
                        .zip(q)
                        .all(|((k, x), (l, y))| k == l && close(x, y))
            }
            _ => x == y,
        }
    }
    match (a, b) {
        (Document::Tree(x), Document::Tree(y)) => close(x, y),
        _ => a == b,
    }
}

/// One normalizer format: parse, re-parse the canonical text, render as a baseline and parse that back, and run the
/// extract/decode chains.
pub fn check_format(format: Format, data: &[u8]) {
    let doc = match normalize::parse(format, data) {
        Ok(d) => d,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    match &doc {
        Document::Tree(tree) => {
            let shallow = !deeper_than(tree, MAX_REPARSE_DEPTH);
            if shallow {
                // The store keeps canonical text and reads it back as JSON.
                let canonical = doc.canonical_text();
                let again =
                    normalize::parse(Format::Json, canonical.as_bytes()).unwrap_or_else(|e| {
                        panic!("canonical text does not re-parse: {e}\n{canonical}")
                    });
                assert!(
                    same(&again, &doc),
                    "canonical text re-parses to another tree:\n{again:?}\n{doc:?}"
                );
                // `plumb approve` writes the tree in the config's format; loading it must give the same tree.
                if matches!(format, Format::Json | Format::Yaml | Format::Toml) {
                    let rendered = baseline::render(&doc, format);
                    // Documents TOML cannot hold (a null, a non-table root) fall back to canonical JSON by design.
                    if format == Format::Json || rendered != canonical {
                        match normalize::parse(format, rendered.as_bytes()) {
                            Ok(back) => assert!(
                                same(&back, &doc),
                                "rendered {format} baseline parses to another tree:\n{rendered}\n{back:?}\n{doc:?}"
                            ),
                            Err(e) => {
                                panic!("rendered {format} baseline does not parse: {e}\n{rendered}")
                            }
                        }
                    }
                } else {
                    let _ = baseline::render(&doc, format);
                }
            }
            let _ = baseline::substitute_doc(&doc, &node());
            if matches!(tree.get("d"), Some(Value::String(_))) {
                for chain in CHAINS {
                    let n = Normalizer {
                        format,
                        extract: Some(("$.d".into(), EXTRACT.clone())),
                        decode: chain.to_vec(),
                    };
                    let _ = n.normalize(data);
                }
            }
        }
        Document::Text(lines) => {
            // Empty text and lines ending in `\r` do not survive a round trip by design (CRLF is one terminator).
            if !lines.is_empty() && !lines.iter().any(|l| l.ends_with('\r')) {
                let canonical = doc.canonical_text();
                let again = normalize::parse(Format::Text, canonical.as_bytes()).unwrap();
                assert_eq!(again, doc, "canonical text re-parses to other lines");
            }
            let _ = baseline::render(&doc, Format::Text);
            let _ = baseline::substitute_doc(&doc, &node());
            let n = Normalizer {
                format,
                extract: Some(("$.d".into(), EXTRACT.clone())),
                decode: Vec::new(),
            };
            assert!(n.normalize(data).is_err(), "extract on text must fail");
            for chain in CHAINS {
                let n = Normalizer {
                    format,
                    extract: None,
                    decode: chain.to_vec(),
                };
                let _ = n.normalize(data);
            }
        }
    }
}

/// plumb.toml text through `config::load_str` (root: a directory that does not exist, so no baselines or rules are
/// read), plus the small parsers its values go through: durations, sizes, selectors, the CSV inventory.
pub fn check_plumb_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = Path::new("/nonexistent/plumb-fuzz");
    match config::load_str(&root.join("plumb.toml"), text, root, &FuzzResolver) {
        Ok(plan) => {
            let _ = plan.configs.len();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = units::parse_duration(text);
    let _ = units::parse_size(text);
    let _ = Selector::parse(text).map(|s| s.matches(&node()));
    let _ = inventory::parse_csv(text);
    let _ = inventory::valid_name(text);
}

/// `baselines/<config>/baseline.toml` text, then its settings applied to a comparison of two small documents.
pub fn check_baseline_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(settings) = baseline::parse_settings(Path::new("baseline.toml"), text) else {
        return;
    };
    let mut opts = CompareOptions::default();
    settings.apply(&mut opts);
    static DOCS: LazyLock<(Document, Document)> = LazyLock::new(|| {
        let a = serde_json::json!({"apps": {"http": {"servers": {"s": {
            "routes": [{"@id": "a", "match": "x"}, {"@id": "b", "match": "y"}],
            "metrics": {"up": 1}, "listen": [":443"]}}}}, "token": "abc", "n": 1});
        let b = serde_json::json!({"apps": {"http": {"servers": {"s": {
            "routes": [{"@id": "b", "match": "y"}, {"@id": "c", "match": "z"}],
            "metrics": {"up": 2}, "listen": [":443", ":80"]}}}}, "token": "abd", "n": 2});
        (Document::Tree(a), Document::Tree(b))
    });
    let (a, b) = &*DOCS;
    let c = compare::compare(a, b, &opts);
    let _ = format!("{c:?}");
}

/// A baseline document: the first byte picks the format, the rest is the file. Parsed, `${node.*}` substituted
/// (tree and raw text) and rendered back; the same text is also parsed as a plumb.toml template.
pub fn check_baseline_doc(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let format = Format::ALL[usize::from(sel) % Format::ALL.len()];
    let node = node();
    if let Ok(doc) = normalize::parse(format, body) {
        let _ = baseline::substitute_doc(&doc, &node);
        let _ = baseline::render(&doc, format);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if let Ok(s) = baseline::substitute(text, &node)
        && !text.contains("${node.")
    {
        assert_eq!(
            s, text,
            "text without placeholders must come back unchanged"
        );
    }
    for allow in [Allow::All, Allow::Secrets, Allow::Node] {
        if let Ok(t) = Template::parse(text, allow, &FuzzResolver) {
            let _ = t.render_plain();
            let _ = t.is_per_node();
            let _ = t.render(&node);
            let _ = t.render_with(&node, &|v: &str| {
                if v.starts_with('-') {
                    Err("option-like".into())
                } else {
                    Ok(())
                }
            });
        }
    }
}

/// The directory the rules target writes its one file into (rules are only loaded from a directory).
static RULES_DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("plumb-fuzz-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the rules directory");
    dir
});

/// A rule file: loaded (JSONPath, regex, CEL compiled, inline tests parsed) and, when valid, its tests run.
pub fn check_rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    std::fs::write(RULES_DIR.join("fuzz.toml"), text).expect("write the rule file");
    let configs = [
        ("caddy".to_string(), true),
        ("app".to_string(), true),
        ("sshd".to_string(), false),
        ("motd".to_string(), false),
    ];
    match plumb::rules::load_dir(&RULES_DIR, &configs) {
        Ok(set) => {
            for r in plumb::rules::run_tests(&set) {
                let _ = format!("{:?}", r.got);
            }
        }
        Err(errs) => {
            for e in errs {
                let _ = e.to_string();
            }
        }
    }
}
