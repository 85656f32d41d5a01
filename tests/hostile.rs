//! The hostile-node suite (issue 8): nodes that misbehave on purpose, served by the crate's simulator, scanned by
//! the real binary in one fleet with well-behaved nodes. Each hostile node must yield exactly one `unreachable` or
//! `invalid` finding of its own whose reason names the problem, within the timeout and with bounded memory, and
//! the well-behaved nodes of the same scan must be compared as usual.
//!
//! Memory is bounded twice: plumb runs under `prlimit --as=2GiB` (util-linux), so a blow-up fails the allocation
//! instead of taking the machine, and its peak resident size (`VmHWM` in /proc/PID/status, a high-water mark, read
//! every 2 ms until it exits) is asserted under 256 MiB. A debug build with mimalloc peaks near 45 MiB for one
//! node, about 100 MiB while it reads a body up to the 16 MiB cap, about 140 MiB for the whole hostile fleet.

mod common;

use common::{Run, expect_keys, findings, json_body, keys, sim_node, the_finding, write_tree};
use plumb::sim::{self, Behavior, Fleet, ServerCert, TlsMaterial};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// plumb's address-space limit under `prlimit --as`: far above what a bounded scan needs, far below a blow-up.
const ADDRESS_SPACE: u64 = 2 << 30;
/// The peak resident size asserted for a scan with hostile nodes.
const PEAK_RSS: u64 = 256 << 20;
/// The per-attempt timeout of the test configs.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts at a transient failure (a timeout): `retries = 1`.
const ATTEMPTS: u32 = 2;

/// A finished plumb run and its peak resident size in bytes.
struct Bounded {
    run: Run,
    peak_rss: u64,
}

/// `VmHWM` of a live process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Run plumb in `dir` under `prlimit --as=ADDRESS_SPACE`, sampling its peak resident size until it exits.
fn run_bounded(dir: &Path, args: &[&str]) -> Bounded {
    let t0 = Instant::now();
    let mut child = Command::new("prlimit")
        .arg(format!("--as={ADDRESS_SPACE}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        // Should plumb use glibc's allocator: it reserves 64 MiB of address space per arena, up to 8 per core;
        // keep the address space a function of what plumb uses, not of the core count. (mimalloc ignores it.)
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prlimit (util-linux) with plumb");
    let (out, err) = common::capture(&mut child);
    let pid = child.id();
    let mut peak = 0;
    let mut execed = false;
    let status = loop {
        // prlimit sets the limit on itself and execs plumb: the same pid, plumb's memory once it runs.
        if !execed {
            execed = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.file_name().is_some_and(|n| n == "plumb"));
        }
        if execed && let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
        }
        if let Some(s) = child.try_wait().expect("wait for plumb") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("plumb {args:?} did not finish within 60s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let run = Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed: t0.elapsed(),
    };
    assert!(
        execed && peak > 0,
        "could not read plumb's peak memory\n{run}"
    );
    Bounded {
        run,
        peak_rss: peak,
    }
}

async fn run_bounded_async(dir: &Path, args: &[&str]) -> Bounded {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bounded(&dir, &a)
    })
    .await
    .expect("plumb thread")
}

/// JSON nested `depth` levels deep: `[[[…]]]`.
fn deep_json(depth: usize) -> Vec<u8> {
    let mut v = vec![b'['; depth];
    v.extend(std::iter::repeat_n(b']', depth));
    v
}

/// One object with `n` keys, `{"k0000000":0,…}` (12 bytes a key: a million keys fit the default max_body).
fn many_keys(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * 13 + 2);
    v.push(b'{');
    for i in 0..n {
        if i > 0 {
            v.push(b',');
        }
        v.extend_from_slice(format!("\"k{i:07}\":0").as_bytes());
    }
    v.push(b'}');
    v
}

const GOOD: &str = r#"{"port": 80}"#;

/// The plain (http) nodes: each hostile case, and well-behaved nodes around them.
fn plain_nodes() -> Vec<plumb::sim::NodeSpec> {
    let good = || json_body(&json!({"port": 80}));
    vec![
        // Well-behaved: clean, drifted, and three that look odd but are fine.
        sim_node("good", vec![("/c", good())]),
        sim_node("drifted", vec![("/c", json_body(&json!({"port": 81})))]),
        sim_node(
            "html-but-json",
            vec![("/c", Behavior::serve("text/html", GOOD))],
        ),
        sim_node(
            "http10",
            vec![(
                "/c",
                Behavior::Http10 {
                    content_type: "application/json".into(),
                    body: Arc::new(GOOD.as_bytes().to_vec()),
                },
            )],
        ),
        sim_node(
            "moved",
            vec![("/c", Behavior::redirect("/new")), ("/new", good())],
        ),
        // Redirected to https on the same host (the tls-good node; set once the fleets run).
        sim_node("upgraded", vec![]),
        // Hostile.
        sim_node(
            "endless",
            vec![(
                "/c",
                Behavior::Endless {
                    content_type: "application/json".into(),
                    fill: b' ',
                },
            )],
        ),
        sim_node(
            "slowloris",
            vec![(
                "/c",
                Behavior::Dribble {
                    interval: Duration::from_secs(1),
                },
            )],
        ),
        sim_node(
            "gzip-bomb",
            vec![(
                "/c",
                Behavior::GzipBomb {
                    content_type: "application/json".into(),
                    fill: b' ',
                    // 6.5 MB on the wire (under max_body), 1 GiB inflated (over the memory bound).
                    inflated: 1 << 30,
                },
            )],
        ),
        sim_node(
            "deep-json",
            vec![(
                "/c",
                Behavior::serve("application/json", deep_json(100_000)),
            )],
        ),
        sim_node(
            "bad-utf8",
            vec![(
                "/c",
                Behavior::serve("application/json", b"{\"port\": \"8\xff\xfe0\"}".to_vec()),
            )],
        ),
        sim_node(
            "redirect-loop",
            vec![
                ("/c", Behavior::redirect("/a")),
                ("/a", Behavior::redirect("/b")),
                ("/b", Behavior::redirect("/a")),
            ],
        ),
        sim_node(
            "redirect-chain",
            vec![
                ("/c", Behavior::redirect("/1")),
                ("/1", Behavior::redirect("/2")),
                ("/2", Behavior::redirect("/3")),
                ("/3", Behavior::redirect("/4")),
                ("/4", Behavior::serve("application/json", GOOD)),
            ],
        ),
        // Their Locations are set once the fleets run: to the good node under another name (localhost), to
        // another port of the same host, and to https and from there back to http.
        sim_node("other-host", vec![]),
        sim_node("other-port", vec![]),
        sim_node("downgrade", vec![]),
        sim_node(
            "http10-too-big",
            vec![(
                "/c",
                Behavior::Http10 {
                    content_type: "application/json".into(),
                    body: Arc::new(vec![b' '; (16 << 20) + 1]),
                },
            )],
        ),
        sim_node(
            "html",
            vec![(
                "/c",
                Behavior::serve(
                    "text/html; charset=utf-8",
                    "<!DOCTYPE html>\n<html><body><h1>Please log in</h1></body></html>\n",
                ),
            )],
        ),
    ]
}

/// A running hostile fleet: the plain one and one TLS fleet per server certificate.
struct Hostile {
    plain: Fleet,
    tls: Vec<(Fleet, TlsMaterial)>,
}

impl Hostile {
    async fn start() -> Hostile {
        let plain = sim::start(plain_nodes(), None).await.unwrap();
        let good = plain.addr("good").unwrap();
        plain.set(
            "other-host",
            "/c",
            Behavior::redirect(format!("http://localhost:{}/c", good.port())),
        );
        plain.set(
            "other-port",
            "/c",
            Behavior::redirect(format!("http://127.0.0.1:{}/c", good.port())),
        );
        let mut tls = Vec::new();
        for (name, cert) in [
            ("tls-good", ServerCert::Valid),
            ("tls-expired", ServerCert::Expired),
            ("tls-self-signed", ServerCert::SelfSigned),
        ] {
            let m = TlsMaterial::generate_with(false, cert).unwrap();
            let node = sim_node(
                name,
                vec![("/c", Behavior::serve("application/json", GOOD))],
            );
            let f = sim::start(vec![node], Some(m.server.clone()))
                .await
                .unwrap();
            tls.push((f, m));
        }
        let tls_good = tls[0].0.addr("tls-good").unwrap();
        plain.set(
            "upgraded",
            "/c",
            Behavior::redirect(format!("https://{tls_good}/c")),
        );
        plain.set(
            "downgrade",
            "/c",
            Behavior::redirect(format!("https://{tls_good}/down")),
        );
        let back = plain.addr("downgrade").unwrap();
        tls[0].0.set(
            "tls-good",
            "/down",
            Behavior::redirect(format!("http://{back}/c")),
        );
        Hostile { plain, tls }
    }

    /// Write plumb.toml, the CA bundle (the CAs of the valid and the expired node: only expiry fails there) and
    /// the baselines. Every node carries `case=<its name>` for `--nodes`.
    fn project(&self, dir: &Path) {
        let mut toml = format!(
            r#"[scan]
timeout = "{}s"
retries = {}
backoff = "50ms"

[[config]]
name = "c"
nodes = {{ proto = "http" }}
source.http = "http://${{node.vars.addr}}/c"
format = "json"
ca = "ca.pem"

[[config]]
name = "t"
nodes = {{ proto = "https" }}
source.http = "https://${{node.vars.addr}}/c"
format = "json"
ca = "ca.pem"
"#,
            TIMEOUT.as_secs(),
            ATTEMPTS - 1
        );
        let mut node = |name: &str, addr: std::net::SocketAddr, proto: &str| {
            toml.push_str(&format!(
                "\n[[node]]\nname = \"{name}\"\nlabels = {{ proto = \"{proto}\", case = \"{name}\" }}\nvars = {{ addr = \"{addr}\" }}\n"
            ));
        };
        for n in &self.plain.nodes {
            node(&n.name, n.addr, "http");
        }
        for (f, _) in &self.tls {
            for n in &f.nodes {
                node(&n.name, n.addr, "https");
            }
        }
        let cas: String = self.tls[..2]
            .iter()
            .map(|(_, m)| m.ca_pem.clone())
            .collect();
        write_tree(
            dir,
            &[
                ("plumb.toml", &toml),
                ("ca.pem", &cas),
                ("baselines/c/default.json", GOOD),
                ("baselines/t/default.json", GOOD),
            ],
        );
    }
}

/// The reason of the one finding of `node` (config `c` or `t`), which must be of `kind`.
fn reason(r: &Value, node: &str, kind: &str) -> String {
    let config = if node.starts_with("tls-") { "t" } else { "c" };
    let f = the_finding(r, node, config, "");
    assert_eq!(f["kind"], kind, "{node}: {f:#}");
    let m = f["message"].as_str().unwrap();
    let prefix = format!("{node}/{config}: {kind}: ");
    m.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{node}: message without `{prefix}`: {m}"))
        .to_string()
}

/// Every hostile node and the kind of its one finding.
const HOSTILE: [(&str, &str); 15] = [
    ("endless", "unreachable"),
    ("slowloris", "unreachable"),
    ("gzip-bomb", "unreachable"),
    ("deep-json", "invalid"),
    ("bad-utf8", "invalid"),
    ("http10-too-big", "unreachable"),
    ("redirect-loop", "unreachable"),
    ("redirect-chain", "unreachable"),
    ("other-host", "unreachable"),
    ("other-port", "unreachable"),
    ("downgrade", "unreachable"),
    ("html", "unreachable"),
    ("tls-expired", "unreachable"),
    ("tls-self-signed", "unreachable"),
    ("drifted", "drift"),
];

/// Assert the reason plumb gives for hostile node `case` in report `r`.
fn check_reason(r: &Value, fleet: &Hostile, case: &str) {
    let kind = HOSTILE.iter().find(|(c, _)| *c == case).unwrap().1;
    let m = if kind == "drift" {
        String::new()
    } else {
        reason(r, case, kind)
    };
    let good = fleet.plain.addr("good").unwrap();
    let back = fleet.plain.addr("downgrade").unwrap();
    let too_big = "body exceeds max_body 16 MiB (the 16777216-byte limit)";
    match case {
        "endless" | "http10-too-big" => assert_eq!(m, too_big),
        "slowloris" => assert_eq!(m, format!("timed out after {TIMEOUT:?}")),
        "gzip-bomb" => assert_eq!(
            m,
            "Content-Encoding gzip refused (plumb asks for identity and never decompresses)"
        ),
        // Today serde_json's recursion limit (128) says so; the normalizer's own parser must name the depth.
        "deep-json" => assert!(
            m.starts_with("not valid json at line 1 column ")
                && (m.ends_with(": recursion limit exceeded")
                    || m.ends_with(": nested deeper than 128 levels")),
            "{m}"
        ),
        "bad-utf8" => assert_eq!(m, "not valid UTF-8 (at byte 11)"),
        "redirect-loop" => assert_eq!(m, "redirect loop: /c → /a → /b → /a"),
        "redirect-chain" => assert_eq!(
            m,
            "more than 3 redirects (max_redirects = 3): /c → /1 → /2 → /3 → /4"
        ),
        "other-host" => assert_eq!(
            m,
            format!(
                "redirected to another host: http://localhost:{}/c (plumb follows redirects only within the \
                 same host)",
                good.port()
            )
        ),
        "other-port" => assert_eq!(
            m,
            format!(
                "redirected to another port or scheme: http://{good}/c (plumb follows redirects only to the \
                 same scheme and port, or to https on the same host)"
            )
        ),
        "downgrade" => assert_eq!(
            m,
            format!("redirected from https to http: http://{back}/c (plumb does not downgrade)")
        ),
        "html" => assert_eq!(
            m,
            "Content-Type text/html; charset=utf-8, expected JSON: not valid json at line 1 column 1: \
             expected value"
        ),
        "tls-expired" => assert_eq!(
            m,
            "TLS failed: certificate expired (not valid after 2021-01-01 00:00:00 UTC)"
        ),
        "tls-self-signed" => assert_eq!(
            m,
            "TLS failed: self-signed / unknown issuer: the certificate is not signed by a CA plumb trusts \
             (give its CA with `ca`)"
        ),
        "drifted" => assert_eq!(
            the_finding(r, "drifted", "c", "$.port")["actual"],
            json!(81)
        ),
        other => panic!("no expected reason for {other}"),
    }
}

/// How long the scan of `r` lasted, as it reports.
fn scan_time(r: &Value) -> Duration {
    Duration::from_millis(r["duration_ms"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_node_is_one_bounded_finding_and_the_rest_of_the_fleet_is_scanned() {
    let fleet = Hostile::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fleet.project(dir);

    let b = run_bounded_async(dir, &["audit", "--format", "json"]).await;
    let run = &b.run;
    run.expect_code(1);
    let r = run.json();
    eprintln!(
        "hostile fleet: scan {:?}, plumb {:?}, peak RSS {} MiB",
        scan_time(&r),
        run.elapsed,
        b.peak_rss >> 20
    );
    for f in findings(&r) {
        eprintln!("  {}", f["message"].as_str().unwrap_or_default());
    }
    let expected: Vec<_> = HOSTILE
        .iter()
        .map(|(case, kind)| {
            let config = if case.starts_with("tls-") { "t" } else { "c" };
            let path = if *kind == "drift" { "$.port" } else { "" };
            (*kind, *case, config, path)
        })
        .collect();
    assert_eq!(keys(&r), expect_keys(&expected), "{run}");
    // The well-behaved nodes were read and compared: good, html-but-json, http10, moved, upgraded and tls-good are
    // clean, drifted has its drift.
    assert_eq!(
        r["nodes"],
        json!({"total": 21, "read": 7, "unreadable": 14}),
        "{run}"
    );
    for (case, _) in HOSTILE {
        check_reason(&r, &fleet, case);
    }
    // The scan lasts the slowloris node's attempts (each cut at the timeout, plus a 50 ms backoff), no more.
    let scan = scan_time(&r);
    assert!(
        scan >= TIMEOUT * ATTEMPTS && scan < TIMEOUT * ATTEMPTS + Duration::from_millis(1500),
        "the scan took {scan:?}\n{run}"
    );
    assert!(
        b.peak_rss < PEAK_RSS,
        "peak RSS {} MiB\n{run}",
        b.peak_rss >> 20
    );
    drop(fleet);
}

/// Each hostile node scanned alone: its one finding and reason, its time (cut at the timeout only for the
/// slowloris node; every other case ends on its own check, well within one timeout) and its peak memory.
#[tokio::test(flavor = "multi_thread")]
async fn each_hostile_node_alone_is_quick_and_within_the_memory_bound() {
    let fleet = Hostile::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fleet.project(dir);
    for (case, kind) in HOSTILE {
        let selector = format!("case={case}");
        let b = run_bounded_async(dir, &["audit", "--format", "json", "--nodes", &selector]).await;
        let r = b
            .run
            .expect_code(if kind == "drift" { 1 } else { 3 })
            .json();
        assert_eq!(findings(&r).len(), 1, "{}", b.run);
        check_reason(&r, &fleet, case);
        let scan = scan_time(&r);
        eprintln!(
            "{case}: scan {scan:?}, plumb {:?}, peak RSS {} MiB",
            b.run.elapsed,
            b.peak_rss >> 20
        );
        if case == "slowloris" {
            assert!(
                scan >= TIMEOUT * ATTEMPTS
                    && scan < TIMEOUT * ATTEMPTS + Duration::from_millis(1500),
                "{case}: the scan took {scan:?}"
            );
        } else {
            assert!(scan < TIMEOUT, "{case}: the scan took {scan:?}");
        }
        assert!(
            b.peak_rss < PEAK_RSS,
            "{case}: peak RSS {} MiB\n{}",
            b.peak_rss >> 20,
            b.run
        );
    }
    drop(fleet);
}

/// A million keys in one object (12 MB, within the default max_body): the JSON parser refuses objects over its key
/// limit (100,000), so it is one `invalid` finding, fast and small, not a million differences.
#[tokio::test(flavor = "multi_thread")]
async fn a_million_keys_is_one_invalid_finding_and_the_good_node_is_scanned() {
    let fleet = sim::start(
        vec![
            sim_node("good", vec![("/c", json_body(&json!({"port": 80})))]),
            sim_node(
                "million-keys",
                vec![(
                    "/c",
                    Behavior::serve("application/json", many_keys(1_000_000)),
                )],
            ),
        ],
        None,
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut toml = format!(
        r#"[scan]
timeout = "{}s"
retries = 0

[[config]]
name = "c"
source.http = "http://${{node.vars.addr}}/c"
format = "json"
"#,
        TIMEOUT.as_secs()
    );
    for n in &fleet.nodes {
        toml.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nvars = {{ addr = \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    write_tree(
        dir,
        &[("plumb.toml", &toml), ("baselines/c/default.json", GOOD)],
    );
    let b = run_bounded_async(dir, &["audit", "--format", "json"]).await;
    let r = b.run.expect_code(3).json();
    assert_eq!(
        keys(&r),
        expect_keys(&[("invalid", "million-keys", "c", "")]),
        "{}",
        b.run
    );
    assert_eq!(r["nodes"], json!({"total": 2, "read": 1, "unreadable": 1}));
    let m = reason(&r, "million-keys", "invalid");
    assert!(
        m.starts_with("not valid json at line 1 column ")
            && m.ends_with(": object has more than 100000 keys"),
        "{m}"
    );
    let scan = Duration::from_millis(r["duration_ms"].as_u64().unwrap());
    assert!(scan < TIMEOUT, "the scan took {scan:?}");
    assert!(
        b.peak_rss < PEAK_RSS,
        "peak RSS {} MiB\n{}",
        b.peak_rss >> 20,
        b.run
    );
    drop(fleet);
}

/// 90,000 new keys (under the key limit): plumb lists 1,000 differences and counts the rest in one finding, in a
/// bounded time and memory, instead of 90,000 findings.
#[tokio::test(flavor = "multi_thread")]
async fn many_differences_are_listed_up_to_a_cap_and_counted() {
    let fleet = sim::start(
        vec![sim_node(
            "wide",
            vec![("/c", Behavior::serve("application/json", many_keys(90_000)))],
        )],
        None,
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addr = fleet.nodes[0].addr;
    let toml = format!(
        "[scan]\ntimeout = \"{}s\"\nretries = 0\n\n[[config]]\nname = \"c\"\n\
         source.http = \"http://${{node.vars.addr}}/c\"\nformat = \"json\"\n\n\
         [[node]]\nname = \"wide\"\nvars = {{ addr = \"{addr}\" }}\n",
        TIMEOUT.as_secs()
    );
    write_tree(
        dir,
        &[("plumb.toml", &toml), ("baselines/c/default.json", "{}")],
    );
    let b = run_bounded_async(dir, &["audit", "--format", "json"]).await;
    let r = b.run.expect_code(1).json();
    let list = findings(&r);
    let drifts = list
        .iter()
        .filter(|f| f["kind"] == "drift" && f["path"] != "")
        .count();
    assert_eq!(drifts, 1_000, "listed differences");
    let more = list
        .iter()
        .find(|f| f["path"] == "")
        .expect("the summary finding");
    assert_eq!(more["kind"], "drift");
    let m = more["message"].as_str().unwrap();
    assert!(m.contains("89000 more differences not listed"), "{m}");
    assert!(b.peak_rss < PEAK_RSS, "peak RSS {} MiB", b.peak_rss >> 20);
    drop(fleet);
}
