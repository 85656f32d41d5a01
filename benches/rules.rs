//! Rule evaluation against parsing: 200 rules over one ~50 KB JSON config (about 2,800 leaves), each measured as
//! the median of many rounds in the same run. Issue 3's bar: evaluating the rules costs less than parsing.
//!
//! `cargo bench --bench rules -- [ROUNDS]` (default 200).

use plumb::inventory::Node;
use plumb::normalize::{self, Document, Format};
use plumb::rules::{self, CelCache, Input, Outcome};
use serde_json::json;
use std::time::{Duration, Instant};

fn document() -> Vec<u8> {
    let upstreams: Vec<_> = (0..120)
        .map(|i| json!({"name": format!("up-{i}"), "url": format!("http://10.0.{}.{}:8080", i / 200, i % 200),
                        "weight": i % 7 + 1, "health": {"path": "/healthz", "interval": "10s", "timeout": "2s"}}))
        .collect();
    let features: Vec<_> = (0..180).map(|i| json!(format!("feature-{i:04}"))).collect();
    let routes: Vec<_> = (0..150)
        .map(|i| json!({"id": format!("r{i}"), "match": {"host": [format!("h{i}.example.net")], "path": format!("/api/v{}/", i % 3)},
                        "to": format!("up-{}", i % 120), "tls": {"min": "1.2"}, "retries": i % 4, "limits": {"rps": 100 + i, "burst": 20}}))
        .collect();
    let doc = json!({"version": "2.11.3", "admin": {"listen": "localhost:2019"}, "upstreams": upstreams,
                     "features": features, "routes": routes, "logging": {"level": "info", "sinks": ["stdout"]}});
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

fn rule_file() -> String {
    let mut s = String::new();
    let mut add = |i: usize, body: &str| {
        s.push_str(&format!(
            "[[rule]]\nid = \"r{i}\"\nconfig = \"c\"\nseverity = \"medium\"\n{body}\n\n"
        ));
    };
    for i in 0..200 {
        let k = i % 120;
        match i % 10 {
            0 => add(i, &format!("path = \"$.upstreams[{k}].weight\"\nle = 10")),
            1 => add(
                i,
                &format!("path = \"$.routes[{k}].tls.min\"\nin = [\"1.2\", \"1.3\"]"),
            ),
            2 => add(
                i,
                &format!("path = \"$.upstreams[{k}].url\"\nmatches = '^http://10\\.'"),
            ),
            3 => add(i, "path = \"$.features[*]\"\ncount_max = 200"),
            4 => add(i, "path = \"$.upstreams[*]\"\nunique = \"name\""),
            5 => add(
                i,
                &format!("path = \"$.routes[?@.id == 'r{k}'].limits.rps\"\nge = 50"),
            ),
            6 => add(i, "path = \"$.admin.listen\"\nmatches = '^localhost:'"),
            7 => add(i, "path = \"$.features[*]\"\nmax_growth = \"50%\""),
            8 => add(
                i,
                &format!("path = \"$.routes[{k}].retries\"\nexpr = \"value <= 3\""),
            ),
            _ => add(
                i,
                &format!("path = \"$.upstreams[{k}].health.timeout\"\nlt = \"5s\""),
            ),
        }
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let bytes = document();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("bench.toml"), rule_file())?;
    let set = rules::load_dir(dir.path(), &[("c".into(), true)]).map_err(|e| format!("{e:?}"))?;
    assert_eq!(set.rules.len(), 200);
    let node = Node {
        name: "n".into(),
        labels: Default::default(),
        vars: Default::default(),
    };
    let doc = normalize::parse(Format::Json, &bytes)?;
    let baseline: Document = doc.clone();

    let mut parse = Vec::with_capacity(rounds);
    let mut eval = Vec::with_capacity(rounds);
    let mut failed = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let d = normalize::parse(Format::Json, &bytes)?;
        parse.push(t.elapsed());
        std::hint::black_box(&d);

        let t = Instant::now();
        let input = Input {
            node: &node,
            config: "c",
            doc: &doc,
            baseline: Some(&baseline),
            raw_len: bytes.len(),
        };
        let mut cel = CelCache::default();
        failed = 0;
        for r in &set.rules {
            if !matches!(r.evaluate(&input, &mut cel), Outcome::Pass) {
                failed += 1;
            }
        }
        eval.push(t.elapsed());
    }
    if std::env::var_os("PLUMB_BENCH_PER_KIND").is_some() {
        let input = Input {
            node: &node,
            config: "c",
            doc: &doc,
            baseline: Some(&baseline),
            raw_len: bytes.len(),
        };
        for kind in 0..10 {
            let t = Instant::now();
            for _ in 0..20 {
                let mut cel = CelCache::default();
                for r in set.rules.iter().skip(kind).step_by(10) {
                    std::hint::black_box(r.evaluate(&input, &mut cel));
                }
            }
            println!(
                "kind {kind} ({}): {:.3}ms per 20 rules",
                set.rules[kind].check.name(),
                t.elapsed().as_secs_f64() * 1e3 / 20.0
            );
        }
    }
    let (p, e) = (median(parse), median(eval));
    println!(
        "doc_bytes={} rules={} rounds={rounds} failing={failed} parse_median={:.3}ms eval_median={:.3}ms eval/parse={:.2}",
        bytes.len(),
        set.rules.len(),
        p.as_secs_f64() * 1e3,
        e.as_secs_f64() * 1e3,
        e.as_secs_f64() / p.as_secs_f64()
    );
    Ok(())
}
