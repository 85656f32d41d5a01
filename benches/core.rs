//! The pure core in MB/s, without network or store: normalize per format, compare, rules. A slowdown in the core
//! shows here without the noise of a fleet on loopback.
//!
//! `cargo bench --bench core` (all, about a minute and a half); `cargo bench --bench core -- normalize/yaml` (a
//! filter). Throughput is bytes of the input document per second (decimal MB/s), at about 2 KB, 50 KB and 500 KB:
//!
//! - `normalize/<format>/<size>`: `Normalizer::plain(format).normalize(bytes)`, the scan's entry point (parse and
//!   canonicalize), for json (compact, as an API serves it), yaml, toml, ini, kv (sysctl style) and text (lines).
//! - `compare/<case>/<size>`: `compare::compare` of two normalized gateway configs (the document of `plumb bench`:
//!   settings, keyed upstreams, features and routes) that are equal, or 1% drifted (every hundredth route and
//!   feature changed, at least one); and of two text documents equal or with every hundredth line changed.
//!   Throughput counts the bytes of one side's source text. `compare/tree-unified-diff` is the part of a drifted
//!   tree comparison that is for humans: both canonical texts and their unified diff.
//! - `rules/20/<size>`: the 20-rule pack of `plumb bench` (ten assertion kinds) evaluated on a parsed gateway
//!   config, as a scan does (rules never re-parse). Throughput counts the document's compact JSON bytes.
//! - `fast/<case>/<size>`: the matching fast path (`classify::fast`) on a gateway config equal to its templated
//!   baseline (`${node.name}` in two places): `match-parse` compares the body with the compiled baseline while
//!   serde_json reads it (no tree), `match-layout` compares its bytes with a learned layout and gives the body's
//!   identity, `blake3` hashes the body for reference (what a body without a layout costs for its identity).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plumb::compare::{self, CompareOptions};
use plumb::inventory::Node;
use plumb::normalize::{Document, Format, Normalizer};
use plumb::rules::{self, CelCache, Input, Outcome};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

/// Target sizes: label and bytes.
const SIZES: [(&str, usize); 3] = [("2KB", 2_000), ("50KB", 50_000), ("500KB", 500_000)];

/// The gateway config of `plumb bench` (src/bench.rs) with `n` items (routes, upstreams, features in the ratio
/// 17:2:1). A drifted one has every hundredth route's timeout and feature's rollout changed (at least one each).
fn gateway(n: usize, drifted: bool) -> Value {
    let (mut routes, mut ups, mut feats) = (Vec::new(), Vec::new(), Vec::new());
    for j in 0..n {
        if j % 20 == 0 {
            let k = ups.len();
            ups.push(json!({"name": format!("up-{k}"), "url": format!("http://10.{}.{}.1:8080", k / 250, k % 250),
                            "weight": 10 + k % 5, "healthy": true,
                            "health": {"path": "/healthz", "interval_ms": 10000, "timeout_ms": 2000}}));
        } else if j % 10 == 5 {
            let k = feats.len();
            let rollout = if drifted && k % 100 == 1 { 77 } else { k % 100 };
            feats.push(
                json!({"name": format!("feature-{k}"), "enabled": k % 3 != 0, "rollout": rollout}),
            );
        } else {
            let k = routes.len();
            let timeout = if drifted && k % 100 == 1 {
                9000
            } else {
                500 + (k % 10) * 100
            };
            routes.push(json!({"id": format!("route-{k}"), "path": format!("/svc/{k}/api"),
                               "upstream": format!("up-{}", k % 16), "timeout_ms": timeout, "retries": 2,
                               "methods": ["GET", "POST"], "headers": {"x-route": format!("r{k}")}}));
        }
    }
    json!({
        "node": {"name": "node-000042", "address": "10.0.0.42:8080", "hostname": "node-000042.fleet.example.net"},
        "version": 42,
        "settings": {
            "max_connections": 1000, "timeout_ms": 3000, "tls_min": "1.2", "log_level": "info", "keepalive": true,
            "workers": 8, "buffer_kb": 64, "access_log": "/var/log/gateway/access.log"
        },
        "upstreams": ups,
        "features": feats,
        "routes": routes,
    })
}

/// An INI file: a `[global]` section, then one section per upstream and route.
fn ini(n: usize) -> String {
    let mut s = String::from(
        "; gateway.ini\n[global]\nworkers = 8\nmax_connections = 1000\ntls_min = 1.2\nlog_level = info\n\n",
    );
    for k in 0..n {
        if k % 10 == 0 {
            let _ = write!(
                s,
                "[upstream up-{k}]\nurl = \"http://10.{}.{}.1:8080\"\nweight = {}\nhealth_path = /healthz\n\n",
                k / 250 % 250,
                k % 250,
                10 + k % 5
            );
        } else {
            let _ = write!(
                s,
                "[route route-{k}]\npath = /svc/{k}/api\nupstream = up-{}\ntimeout_ms = {}\nretries = 2\nmethods = GET,POST\n# route {k}\n\n",
                k % 16,
                500 + (k % 10) * 100
            );
        }
    }
    s
}

/// Lines of sysctl style (`kv`); with `changed`, every hundredth line has another value (for the text compare).
fn sysctl(n: usize, changed: bool) -> String {
    const KEYS: [&str; 8] = [
        "rp_filter",
        "accept_redirects",
        "send_redirects",
        "accept_source_route",
        "log_martians",
        "forwarding",
        "arp_ignore",
        "arp_announce",
    ];
    let mut s = String::from("# /etc/sysctl.d/99-fleet.conf\n");
    for i in 0..n {
        let v = if changed && i % 100 == 1 { 7 } else { i % 3 };
        let _ = writeln!(
            s,
            "net.ipv4.conf.eth{}.{} = {v}",
            i / KEYS.len(),
            KEYS[i % KEYS.len()]
        );
    }
    s
}

/// The smallest `n` whose `make(n)` is at least `target` bytes.
fn fit(target: usize, make: impl Fn(usize) -> usize) -> usize {
    let mut hi = 1;
    while make(hi) < target {
        hi *= 2;
    }
    let mut lo = hi / 2;
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if make(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

fn compact(n: usize, drifted: bool) -> Vec<u8> {
    serde_json::to_vec(&gateway(n, drifted)).unwrap_or_default()
}

/// A document of about `target` bytes in `format`.
fn source(format: Format, target: usize) -> Vec<u8> {
    let text = |f: &dyn Fn(usize) -> String| f(fit(target, |n| f(n).len())).into_bytes();
    match format {
        Format::Json => compact(fit(target, |n| compact(n, false).len()), false),
        Format::Yaml => text(&|n| serde_saphyr::to_string(&gateway(n, false)).unwrap_or_default()),
        Format::Toml => text(&|n| toml::to_string(&gateway(n, false)).unwrap_or_default()),
        Format::Ini => text(&ini),
        Format::Kv => text(&|n| sysctl(n, false)),
        Format::Text => text(&|n| {
            // An nginx-like file: compared line by line.
            let mut s =
                String::from("worker_processes 8;\nevents { worker_connections 1024; }\nhttp {\n");
            for k in 0..n {
                let _ = write!(
                    s,
                    "    location /svc/{k}/api {{\n        proxy_pass http://up-{};\n        proxy_read_timeout {}ms;\n    }}\n",
                    k % 16,
                    500 + (k % 10) * 100
                );
            }
            s.push_str("}\n");
            s
        }),
    }
}

fn normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    for format in Format::ALL {
        for (label, size) in SIZES {
            let bytes = source(format, size);
            let normalizer = Normalizer::plain(format);
            assert!(
                normalizer.normalize(&bytes).is_ok(),
                "{format} source does not parse"
            );
            g.throughput(Throughput::BytesDecimal(bytes.len() as u64));
            g.bench_with_input(
                BenchmarkId::new(format.as_str(), label),
                &bytes,
                |b, bytes| b.iter(|| normalizer.normalize(black_box(bytes))),
            );
        }
    }
    g.finish();
}

fn parsed(format: Format, bytes: &[u8]) -> Document {
    Normalizer::plain(format)
        .normalize(bytes)
        .unwrap_or(Document::Text(Vec::new()))
}

fn compare(c: &mut Criterion) {
    let opts = CompareOptions {
        key_fields: CompareOptions::default_key_fields(),
        ..Default::default()
    };
    let mut g = c.benchmark_group("compare");
    for (label, size) in SIZES {
        let n = fit(size, |n| compact(n, false).len());
        let base_bytes = compact(n, false);
        let base = parsed(Format::Json, &base_bytes);
        let same = parsed(Format::Json, &base_bytes);
        let drifted = parsed(Format::Json, &compact(n, true));
        assert!(compare::compare(&base, &same, &opts).differences.is_empty());
        assert!(
            !compare::compare(&base, &drifted, &opts)
                .differences
                .is_empty()
        );
        g.throughput(Throughput::BytesDecimal(base_bytes.len() as u64));
        for (case, live) in [("tree-equal", &same), ("tree-drift1%", &drifted)] {
            g.bench_with_input(BenchmarkId::new(case, label), live, |b, live| {
                b.iter(|| compare::compare(black_box(&base), black_box(live), &opts))
            });
        }
        // The human part of a drifted comparison alone: both canonical texts and their unified diff.
        g.bench_with_input(
            BenchmarkId::new("tree-unified-diff", label),
            &drifted,
            |b, live| {
                b.iter(|| {
                    compare::unified_diff(
                        &black_box(&base).canonical_text(),
                        &black_box(live).canonical_text(),
                    )
                })
            },
        );

        let lines = fit(size, |n| sysctl(n, false).len());
        let text = sysctl(lines, false);
        let base = parsed(Format::Text, text.as_bytes());
        let same = parsed(Format::Text, text.as_bytes());
        let changed = parsed(Format::Text, sysctl(lines, true).as_bytes());
        g.throughput(Throughput::BytesDecimal(text.len() as u64));
        for (case, live) in [("text-equal", &same), ("text-drift1%", &changed)] {
            g.bench_with_input(BenchmarkId::new(case, label), live, |b, live| {
                b.iter(|| compare::compare(black_box(&base), black_box(live), &opts))
            });
        }
    }
    g.finish();
}

/// The 20-rule pack of `plumb bench`: ten assertion kinds, twice.
fn rule_pack() -> String {
    plumb::bench::rules_file(20)
}

fn rules(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("pack.toml"), rule_pack()).expect("the rule file");
    let set = rules::load_dir(dir.path(), &[("app".into(), true)]).expect("the rule pack loads");
    assert_eq!(set.rules.len(), 20);
    let node = Node {
        name: "node-000042".into(),
        labels: Default::default(),
        vars: Default::default(),
    };
    let mut g = c.benchmark_group("rules");
    for (label, size) in SIZES {
        let bytes = compact(fit(size, |n| compact(n, false).len()), false);
        let doc = parsed(Format::Json, &bytes);
        let input = Input {
            node: &node,
            config: "app",
            doc: &doc,
            baseline: Some(&doc),
            raw_len: bytes.len(),
        };
        let mut cel = CelCache::default();
        assert!(
            set.rules
                .iter()
                .all(|r| matches!(r.evaluate(&input, &mut cel), Outcome::Pass)),
            "every rule passes on the undrifted document"
        );
        g.throughput(Throughput::BytesDecimal(bytes.len() as u64));
        g.bench_function(BenchmarkId::new("20", label), |b| {
            b.iter(|| {
                let mut cel = CelCache::default();
                set.rules
                    .iter()
                    .filter(|r| !matches!(r.evaluate(black_box(&input), &mut cel), Outcome::Pass))
                    .count()
            })
        });
    }
    g.finish();
}

fn fast(c: &mut Criterion) {
    use plumb::baseline::BaselineFile;
    use plumb::classify::fast::Compiled;
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("pack.toml"), rule_pack()).expect("the rule file");
    let set = rules::load_dir(dir.path(), &[("app".into(), true)]).expect("the rule pack loads");
    let node = Node {
        name: "node-000042".into(),
        labels: Default::default(),
        vars: Default::default(),
    };
    let mut g = c.benchmark_group("fast");
    for (label, size) in SIZES {
        let n = fit(size, |n| compact(n, false).len());
        let body = compact(n, false);
        let mut template = gateway(n, false);
        template["node"]["name"] = json!("${node.name}");
        template["node"]["hostname"] = json!("${node.name}.fleet.example.net");
        let Document::Tree(doc) = parsed(Format::Json, template.to_string().as_bytes()) else {
            unreachable!("json is a tree")
        };
        let file = BaselineFile {
            path: dir.path().join("default.json"),
            format: Format::Json,
            doc: Document::Tree(doc),
            templated: true,
            placeholders: vec![
                "${node.name}".into(),
                "${node.name}.fleet.example.net".into(),
            ],
        };
        let compiled = Compiled::new(&file, None, &set, "app", &node).expect("compiles");
        let values = compiled.prepare(&node).expect("the node fills its slots");
        let plain = compiled.values(&node).expect("the node fills its slots");
        assert!(compiled.matches(&body, &plain), "the body matches");
        assert!(
            compiled.matches_learning(&body, &plain, &values),
            "and its layout is learned"
        );
        let chunks = plumb::collect::Body::from(body.clone());
        assert!(compiled.fit(&chunks, &values).is_some(), "the layout fits");
        g.throughput(Throughput::BytesDecimal(body.len() as u64));
        g.bench_function(BenchmarkId::new("match-parse", label), |b| {
            b.iter(|| compiled.matches(black_box(&body), &plain))
        });
        g.bench_function(BenchmarkId::new("match-layout", label), |b| {
            b.iter(|| compiled.fit(black_box(&chunks), &values))
        });
        g.bench_function(BenchmarkId::new("blake3", label), |b| {
            b.iter(|| blake3::hash(black_box(&body)))
        });
    }
    g.finish();
}

criterion_group! {
    name = core;
    // Short runs: the whole bench in about a minute and a half on 2 cores; compare ratios within one run.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000));
    targets = normalize, compare, rules, fast
}
criterion_main!(core);
