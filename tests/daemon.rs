//! The daemon (`plumb run`) and the rollout gate (`plumb converge`) through the real binary (issue 6): scans on a
//! cron schedule, `/healthz`, `/readyz` and `/metrics` (parsed by a Prometheus text-format parser), reloads that
//! fail small (a broken plumb.toml on SIGHUP, a broken baseline found by the file watcher), SIGTERM during a scan,
//! a schedule that never overlaps itself, the bearer token of `POST /scan`, `run --once`, and `converge` against
//! simulated nodes that converge one by one or never.
//!
//! The daemon runs as a child process with its log in `daemon.log` beside plumb.toml; a guard kills it when a test
//! ends early. Requests go over a raw `TcpStream`.

mod common;

use common::receiver::{Answer, Receiver};
use common::*;
use plumb::sim::{Behavior, Fleet};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr").port()
}

/// One HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// The header block, names as sent.
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Undo `Transfer-Encoding: chunked`.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        let end = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..end]);
        raw = &raw[(end + 2).min(raw.len())..];
    }
    out
}

/// One HTTP/1.1 request to the daemon on `port`; `headers` are extra header lines.
fn http(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header block in {raw:?}")))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in `{head}`")))?;
    let mut resp = Resp {
        status,
        head,
        body: String::new(),
    };
    let rest = &raw[split + 4..];
    let body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    resp.body = String::from_utf8_lossy(&body).into_owned();
    Ok(resp)
}

/// A parsed `/metrics` scrape.
struct Metrics {
    scrape: prometheus_parse::Scrape,
    text: String,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"));
        Metrics {
            scrape,
            text: text.to_string(),
        }
    }

    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The sum of every counter, gauge or untyped sample of `name` with these labels (others may differ); `None`
    /// when there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples(name, labels) {
            let v = match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a scalar: {other:?}"),
            };
            found = Some(found.unwrap_or(0.0) + v);
        }
        found
    }

    /// [`Metrics::get`], 0 when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The buckets of histogram `name` with these labels.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let hs: Vec<_> = self
            .samples(name, labels)
            .filter_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => {
                    Some(h.iter().map(|b| (b.less_than, b.count)).collect::<Vec<_>>())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            hs.len(),
            1,
            "one histogram {name} {labels:?}:\n{}",
            self.text
        );
        hs.into_iter().next().unwrap_or_default()
    }
}

/// `plumb run` as a child process; killed on drop if still running.
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
    started: Instant,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    /// Start `plumb run` in `dir` with these environment variables; the daemon listens on `port`.
    fn start(dir: &Path, port: u16, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join("daemon.log");
        let file = std::fs::File::create(&log).expect("create daemon.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("run")
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start plumb run");
        Daemon {
            child,
            port,
            log,
            started: Instant::now(),
        }
    }

    /// Start and wait until `/readyz` answers 200.
    fn ready(dir: &Path, port: u16, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::start(dir, port, env);
        d.until("/readyz to answer 200", Duration::from_secs(10), |d| {
            d.get("/readyz").ok().filter(|r| r.status == 200)
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> std::io::Result<Resp> {
        http(self.port, "GET", path, &[])
    }

    fn post(&self, target: &str, headers: &[(&str, &str)]) -> Resp {
        http(self.port, "POST", target, headers)
            .unwrap_or_else(|e| panic!("POST {target}: {e}\n--- daemon log ---\n{}", self.log()))
    }

    fn healthz(&self) -> Value {
        let r = self
            .get("/healthz")
            .unwrap_or_else(|e| panic!("GET /healthz: {e}\n--- daemon log ---\n{}", self.log()));
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    fn metrics(&self) -> Metrics {
        let r = self
            .get("/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\n--- daemon log ---\n{}", self.log()));
        assert_eq!(r.status, 200, "{r:?}");
        Metrics::parse(&r.body)
    }

    /// Completed scans of `schedule` with `result` (ok, error, skipped).
    fn scans(&self, schedule: &str, result: &str) -> f64 {
        self.metrics().value(
            "plumb_scans_total",
            &[("schedule", schedule), ("result", result)],
        )
    }

    /// `kill -SIG pid`.
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    /// Poll `f` every 100 ms until it gives a value; fail after `limit` or when the daemon has exited.
    fn until<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Daemon) -> Option<T>,
    ) -> T {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited ({status}) while waiting for {what}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {what} within {limit:?} ({:?} after start)\n--- daemon log ---\n{}",
                self.started.elapsed(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait for the process to end.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// `[[node]]`s for the simulated nodes, each with `role` and its address in `vars.addr`.
fn sim_nodes_toml(fleet: &Fleet, role: impl Fn(&str) -> &'static str) -> String {
    let mut t = String::new();
    for n in &fleet.nodes {
        t.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nlabels = {{ role = \"{}\" }}\nvars = {{ addr = \"{}\" }}\n",
            n.name,
            role(&n.name),
            n.addr
        ));
    }
    t
}

/// Config `c` over HTTP from each node's `/c`.
const SIM_CONFIG: &str = r#"
[[config]]
name = "c"
source.http = "http://${node.vars.addr}/c"
format = "json"
"#;

fn port_body(port: u16) -> Behavior {
    json_body(&json!({ "port": port }))
}

/// A file-source project: nodes `(name, role)`, config `app` from `live/<node>.json`, baseline `{"port": 80}`.
fn file_toml(port: u16, nodes: &[(&str, &str)], extra: &str) -> String {
    let mut t = format!(
        "[scan]\nretries = 0\ntimeout = \"2s\"\n\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n{extra}"
    );
    for (n, role) in nodes {
        t.push_str(&format!(
            "\n[[node]]\nname = \"{n}\"\nlabels = {{ role = \"{role}\" }}\n"
        ));
    }
    t.push_str(
        r#"
[[config]]
name = "app"
source.file = "live/${node.name}.json"
format = "json"
"#,
    );
    t
}

const EVERY_SECOND: &str = r#"
[[schedule]]
name = "fast"
cron = "*/1 * * * * *"
timezone = "Europe/Amsterdam"
nodes = { role = "edge" }
"#;

const BASELINE: &str = r#"{"port": 80, "debug": false}"#;

/// Replace a file's content and keep its modification time, so only a signal can make the daemon notice. Written
/// beside it and renamed over it: the file watcher never sees a half-written file or a new time.
fn replace_keeping_mtime(path: &Path, content: &str) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `plumb findings --format json` (while the daemon may be running: the store is SQLite in WAL mode).
fn stored(dir: &Path, env: &[(&str, Option<&str>)]) -> Vec<Value> {
    let run = run_with_env(dir, &["findings", "--format", "json"], env);
    run.expect_code(0);
    run.json().as_array().cloned().unwrap_or_default()
}

/// `(node, kind)` of each stored finding, sorted.
fn node_kinds(list: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|f| {
            (
                f["node"].as_str().unwrap_or_default().to_string(),
                f["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Schedules, /healthz, /readyz, /metrics
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn daemon_scans_on_schedule_and_serves_health_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                &file_toml(port, &[("n1", "edge"), ("x1", "other")], EVERY_SECOND),
            ),
            ("baselines/app/default.json", BASELINE),
            ("live/n1.json", r#"{"port": 81, "debug": false}"#),
            // Not on the schedule's selector: never scanned, so its drift never shows.
            ("live/x1.json", r#"{"port": 82, "debug": false}"#),
        ],
    );
    let mut d = Daemon::ready(dir, port, &[]);
    let t0 = Instant::now();

    let ready = d.get("/readyz").unwrap();
    assert_eq!(
        (ready.status, ready.body.trim()),
        (200, "ready"),
        "{ready:?}"
    );

    d.until("two scheduled scans", Duration::from_secs(10), |d| {
        (d.scans("fast", "ok") >= 2.0).then_some(())
    });

    let h = d.healthz();
    assert_eq!(h["status"], "ok", "{h:#}");
    assert_eq!(h["config"]["ok"], true, "{h:#}");
    assert_eq!(h["config"]["error"], Value::Null, "{h:#}");
    assert_eq!(h["config"]["path"], "plumb.toml", "{h:#}");
    for k in ["last_good_at", "last_attempt_at"] {
        let t = h["config"][k].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "config.{k} is RFC 3339: {h:#}"
        );
    }
    let schedules = h["schedules"].as_array().expect("schedules");
    assert_eq!(schedules.len(), 1, "{h:#}");
    let s = &schedules[0];
    assert_eq!(s["name"], "fast");
    assert_eq!(s["cron"], "*/1 * * * * *");
    assert_eq!(s["timezone"], "Europe/Amsterdam");
    assert!(s["running"].is_boolean(), "{h:#}");
    let next = chrono::DateTime::parse_from_rfc3339(s["next"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("next is RFC 3339 ({e}): {h:#}"));
    let ahead = next.timestamp_millis() as f64 / 1000.0 - unix_now();
    assert!(
        (-0.5..=1.5).contains(&ahead),
        "an every-second schedule fires within a second: {ahead} s ahead\n{h:#}"
    );

    let raw = d.get("/metrics").unwrap();
    assert!(
        raw.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{raw:?}"
    );
    let m = Metrics::parse(&raw.body);
    let ok = m.value(
        "plumb_scans_total",
        &[("schedule", "fast"), ("result", "ok")],
    );
    assert!(ok >= 2.0, "{}", m.text);
    // A schedule every second fires once a second, not more.
    let secs = d.started.elapsed().as_secs_f64();
    assert!(
        ok <= secs + 1.0,
        "{ok} scans in {secs:.1} s\n{}\n--- daemon log ---\n{}",
        m.text,
        d.log()
    );
    assert_eq!(
        m.get(
            "plumb_scans_total",
            &[("schedule", "fast"), ("result", "error")]
        ),
        None,
        "{}",
        m.text
    );
    // One drift (on n1; x1 is not on the schedule), whatever its lifecycle state by now.
    assert_eq!(
        m.value(
            "plumb_findings",
            &[("kind", "drift"), ("severity", "medium")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(m.value("plumb_findings", &[]), 1.0, "{}", m.text);
    assert_eq!(
        m.get("plumb_nodes_read", &[("schedule", "fast")]),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("plumb_nodes_unreadable", &[("schedule", "fast")]),
        Some(0.0),
        "{}",
        m.text
    );
    // Histograms: every bucket, cumulative, +Inf equal to the count.
    for (name, labels) in [
        ("plumb_scan_duration_seconds", &[("schedule", "fast")][..]),
        ("plumb_fetch_duration_seconds", &[][..]),
    ] {
        let h = m.histogram(name, labels);
        assert_eq!(h.len(), 13, "12 buckets and +Inf: {h:?}");
        assert!(
            h.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name}: {h:?}"
        );
        let inf = h.last().unwrap();
        assert!(inf.0.is_infinite(), "{h:?}");
        assert!(inf.1 >= 2.0, "{name}: {h:?}");
        let count = m.get(&format!("{name}_count"), labels);
        assert_eq!(count, Some(inf.1), "{}", m.text);
        assert!(
            m.get(&format!("{name}_sum"), labels).is_some(),
            "{}",
            m.text
        );
    }
    let last = m
        .get(
            "plumb_last_successful_scan_timestamp_seconds",
            &[("schedule", "fast")],
        )
        .expect("last successful scan");
    assert!((unix_now() - last).abs() < 5.0, "{last}");
    assert_eq!(
        m.get("plumb_config_reloads_total", &[("result", "ok")]),
        Some(1.0),
        "the start-up load counts as a good one\n{}",
        m.text
    );
    assert_eq!(
        m.value("plumb_config_reloads_total", &[("result", "rejected")]),
        0.0
    );
    assert_eq!(m.get("plumb_config_last_reload_successful", &[]), Some(1.0));
    let good = m
        .get("plumb_config_last_good_timestamp_seconds", &[])
        .expect("last good config time");
    assert!(
        unix_now() - good < t0.elapsed().as_secs_f64() + 10.0,
        "{good}"
    );
    assert_eq!(m.get("plumb_outbox_pending", &[]), Some(0.0));
    assert_eq!(m.get("plumb_outbox_dead_letters", &[]), Some(0.0));
    for name in [
        "plumb_scans_total",
        "plumb_scan_duration_seconds",
        "plumb_findings",
        "plumb_config_reloads_total",
    ] {
        assert!(m.scrape.docs.contains_key(name), "# HELP {name}");
    }

    // What was recorded: the drift on n1 only.
    assert_eq!(
        node_kinds(&stored(dir, &[])),
        pairs(&[("n1", "drift")]),
        "--- daemon log ---\n{}",
        d.log()
    );

    // SIGINT stops it cleanly too (SIGTERM is the next test's).
    d.signal("INT");
    let status = d.wait_exit(Duration::from_secs(12));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n--- daemon log ---\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Reloads that fail small
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_broken_reload_keeps_the_last_good_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let good = file_toml(port, &[("n1", "edge")], EVERY_SECOND);
    write_tree(
        dir,
        &[
            ("plumb.toml", &good),
            ("baselines/app/default.json", BASELINE),
            ("live/n1.json", r#"{"port": 81, "debug": false}"#),
            ("live/n2.json", BASELINE),
        ],
    );
    let mut d = Daemon::ready(dir, port, &[]);
    d.until("a first scan", Duration::from_secs(8), |d| {
        (d.scans("fast", "ok") >= 1.0).then_some(())
    });
    let h0 = d.healthz();
    let good_at = h0["config"]["last_good_at"].clone();
    let good_ts = d
        .metrics()
        .get("plumb_config_last_good_timestamp_seconds", &[])
        .unwrap();

    // plumb.toml gets an unknown key; its modification time is kept, so only SIGHUP can trigger the reload.
    let broken = good.replacen("retries = 0\n", "retries = 0\nbogus = true\n", 1);
    let line = broken.lines().position(|l| l.starts_with("bogus")).unwrap() + 1;
    replace_keeping_mtime(&dir.join("plumb.toml"), &broken);
    d.signal("HUP");
    let h = d.until("a degraded /healthz", Duration::from_secs(5), |d| {
        let h = d.healthz();
        (h["status"] == "degraded").then_some(h)
    });
    let err = h["config"]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(&format!("plumb.toml:{line}:")) && err.contains("bogus"),
        "config.error names plumb.toml:{line}: {h:#}"
    );
    assert_eq!(h["config"]["ok"], false, "{h:#}");
    assert_eq!(h["config"]["last_good_at"], good_at, "{h:#}");
    assert_eq!(h["schedules"][0]["name"], "fast", "{h:#}");
    let m = d.metrics();
    assert_eq!(
        m.get("plumb_config_reloads_total", &[("result", "rejected")]),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("plumb_config_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(m.get("plumb_config_last_reload_successful", &[]), Some(0.0));
    assert_eq!(
        m.get("plumb_config_last_good_timestamp_seconds", &[]),
        Some(good_ts),
        "the config in force is still the first one"
    );
    assert!(
        d.log().contains(&format!("plumb.toml:{line}:")),
        "the log names the file and line:\n{}",
        d.log()
    );
    // Still scanning, on the old configuration; still ready.
    let before = d.scans("fast", "ok");
    d.until("scans on the old config", Duration::from_secs(5), |d| {
        (d.scans("fast", "ok") >= before + 2.0).then_some(())
    });
    assert_eq!(d.get("/readyz").unwrap().status, 200);
    assert_eq!(d.scans("fast", "error"), 0.0);

    // plumb.toml is good again (unnoticed: same modification time), but a baseline breaks: the file watcher
    // notices without a signal.
    replace_keeping_mtime(&dir.join("plumb.toml"), &good);
    write_tree(dir, &[("baselines/app/default.json", "{\"port\": 80,\n")]);
    let h = d.until(
        "the broken baseline in /healthz",
        Duration::from_secs(5),
        |d| {
            let h = d.healthz();
            h["config"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("baselines/app/default.json:"))
                .then_some(h)
        },
    );
    assert_eq!(h["status"], "degraded", "{h:#}");
    let m = d.metrics();
    assert_eq!(
        m.get("plumb_config_reloads_total", &[("result", "rejected")]),
        Some(2.0),
        "{}",
        m.text
    );
    assert_eq!(m.get("plumb_config_last_reload_successful", &[]), Some(0.0));
    // The baselines in force are the old ones: the drift is still the one drift, nothing else.
    let before = d.scans("fast", "ok");
    d.until("scans on the old baselines", Duration::from_secs(5), |d| {
        (d.scans("fast", "ok") >= before + 2.0).then_some(())
    });
    let m = d.metrics();
    assert_eq!(
        m.value("plumb_findings", &[("kind", "drift")]),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(m.value("plumb_findings", &[]), 1.0, "{}", m.text);

    // Fixed, and a second node added: the baseline first, then plumb.toml, so every state in between is valid.
    write_tree(dir, &[("baselines/app/default.json", BASELINE)]);
    let two = file_toml(port, &[("n1", "edge"), ("n2", "edge")], EVERY_SECOND);
    write_tree(dir, &[("plumb.toml", &two)]);
    d.until("the new node scanned", Duration::from_secs(8), |d| {
        let m = d.metrics();
        (m.get("plumb_nodes_read", &[("schedule", "fast")]) == Some(2.0)).then_some(())
    });
    let h = d.healthz();
    assert_eq!(h["status"], "ok", "{h:#}");
    assert_eq!(h["config"]["ok"], true, "{h:#}");
    assert_eq!(h["config"]["error"], Value::Null, "{h:#}");
    assert_ne!(h["config"]["last_good_at"], good_at, "{h:#}");
    let m = d.metrics();
    assert!(
        m.value("plumb_config_reloads_total", &[("result", "ok")]) >= 2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get("plumb_config_reloads_total", &[("result", "rejected")]),
        Some(2.0),
        "no broken state in between\n{}",
        m.text
    );
    assert_eq!(m.get("plumb_config_last_reload_successful", &[]), Some(1.0));
    assert!(
        m.get("plumb_config_last_good_timestamp_seconds", &[])
            .unwrap()
            > good_ts
    );
    assert_eq!(
        m.value("plumb_findings", &[("kind", "drift")]),
        1.0,
        "{}",
        m.text
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3. SIGTERM during a scan
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn sigterm_during_a_scan_exits_zero() {
    // Three nodes answer one byte per 250 ms (about 3 s), one never answers (the 5 s timeout).
    let slow = || Behavior::Slow {
        body: Arc::new(br#"{"port":81}"#.to_vec()),
        interval: Duration::from_millis(250),
    };
    let sim = start_fleet(vec![
        sim_node("s1", vec![("/c", slow())]),
        sim_node("s2", vec![("/c", slow())]),
        sim_node("s3", vec![("/c", slow())]),
        sim_node("h1", vec![("/c", Behavior::Hang)]),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let toml = format!(
        "[scan]\nretries = 0\ntimeout = \"5s\"\n\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n{}{SIM_CONFIG}",
        sim_nodes_toml(&sim.fleet, |_| "edge")
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/c/default.json", r#"{"port": 80}"#),
        ],
    );
    let mut d = Daemon::ready(dir, port, &[]);

    let scan = std::thread::spawn(move || http(port, "POST", "/scan", &[]));
    let posted = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !scan.is_finished(),
        "the scan is still running when SIGTERM comes"
    );
    d.signal("TERM");
    let termed = Instant::now();
    // No new scans once stopping: refused, or 503.
    std::thread::sleep(Duration::from_millis(100));
    if let Ok(r) = http(port, "POST", "/scan", &[]) {
        assert_ne!(r.status, 200, "a scan started after SIGTERM: {r:?}");
    }
    let status = d.wait_exit(Duration::from_secs(12));
    let took = termed.elapsed();
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "exit {status:?} {took:?} after SIGTERM\n--- daemon log ---\n{}",
        d.log()
    );
    // It waited for the scan in flight (the hung node's 5 s timeout) instead of dropping it.
    assert!(
        posted.elapsed() >= Duration::from_millis(4500),
        "exited {:?} after the scan began\n--- daemon log ---\n{}",
        posted.elapsed(),
        d.log()
    );
    let answer = scan.join().unwrap();
    println!("POST /scan answered: {answer:?}");

    // The scan in flight was recorded whole; the store is sound.
    assert_eq!(
        node_kinds(&stored(dir, &[])),
        pairs(&[
            ("h1", "unreachable"),
            ("s1", "drift"),
            ("s2", "drift"),
            ("s3", "drift")
        ]),
        "--- daemon log ---\n{}",
        d.log()
    );
    let store = plumb::store::sqlite::SqliteStore::open(&dir.join(".plumb/state.db")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    drop(sim);
}

// ---------------------------------------------------------------------------------------------------------------
// 4. No overlap
// ---------------------------------------------------------------------------------------------------------------

/// A node that answers each request after `delay` and counts requests in flight at once.
struct SlowNode {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl SlowNode {
    fn start(delay: Duration, body: &'static str) -> SlowNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (h, m) = (hits.clone(), max_in_flight.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (h, m, f) = (h.clone(), m.clone(), in_flight.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    f.fetch_sub(1, Ordering::SeqCst);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        SlowNode {
            addr,
            hits,
            max_in_flight,
        }
    }
}

#[test]
fn a_schedule_never_overlaps_itself() {
    let node = SlowNode::start(Duration::from_millis(2500), r#"{"port": 80}"#);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let toml = format!(
        r#"[scan]
retries = 0
timeout = "5s"

[daemon]
listen = "127.0.0.1:{port}"

[[node]]
name = "slow"
labels = {{ role = "edge" }}
vars = {{ addr = "{}" }}
{SIM_CONFIG}{EVERY_SECOND}"#,
        node.addr
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/c/default.json", r#"{"port": 80}"#),
        ],
    );
    let mut d = Daemon::ready(dir, port, &[]);
    let mut seen_running = false;
    d.until(
        "two scans and a skipped run",
        Duration::from_secs(12),
        |d| {
            seen_running |= d.healthz()["schedules"][0]["running"] == true;
            (d.scans("fast", "ok") >= 2.0 && d.scans("fast", "skipped") >= 1.0).then_some(())
        },
    );
    let m = d.metrics();
    let ok = m.value(
        "plumb_scans_total",
        &[("schedule", "fast"), ("result", "ok")],
    );
    let hits = node.hits.load(Ordering::SeqCst) as f64;
    assert_eq!(
        node.max_in_flight.load(Ordering::SeqCst),
        1,
        "two scans of one schedule ran at once\n--- daemon log ---\n{}",
        d.log()
    );
    assert!(
        hits >= ok && hits <= ok + 1.0,
        "{hits} fetches for {ok} finished scans"
    );
    assert!(seen_running, "/healthz showed the schedule running");
    // Each scan took its 2.5 s; the skipped fires were counted, not queued.
    let sum = m.value("plumb_scan_duration_seconds_sum", &[("schedule", "fast")]);
    let count = m.value("plumb_scan_duration_seconds_count", &[("schedule", "fast")]);
    assert_eq!(count, ok, "{}", m.text);
    assert!(sum / count >= 2.4, "{}", m.text);
    assert!(
        d.log().contains("skipped"),
        "the skip is logged:\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. POST /scan and its token
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn post_scan_needs_the_token_when_one_is_set() {
    const TOKEN: &str = "t0ken-for-the-daemon-test";
    let env_set = [("PLUMB_TEST_DAEMON_TOKEN", Some(TOKEN))];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                &file_toml(
                    port,
                    &[("e1", "edge"), ("d1", "db")],
                    "token = \"${env:PLUMB_TEST_DAEMON_TOKEN}\"\n",
                ),
            ),
            ("baselines/app/default.json", BASELINE),
            ("live/e1.json", r#"{"port": 81, "debug": false}"#),
            ("live/d1.json", r#"{"port": 82, "debug": false}"#),
        ],
    );
    let d = Daemon::ready(dir, port, &[("PLUMB_TEST_DAEMON_TOKEN", TOKEN)]);

    let r = d.post("/scan?nodes=role=edge", &[]);
    assert_eq!(r.status, 401, "no token: {r:?}");
    let r = d.post(
        "/scan?nodes=role=edge",
        &[("Authorization", "Bearer not-the-token")],
    );
    assert_eq!(r.status, 401, "wrong token: {r:?}");
    let r = d.post("/scan?nodes=role=edge", &[("Authorization", TOKEN)]);
    assert_eq!(r.status, 401, "no Bearer scheme: {r:?}");
    assert!(!r.body.contains(TOKEN), "the token is never echoed: {r:?}");
    // Nothing ran yet.
    assert!(stored(dir, &env_set).is_empty());

    let bearer = format!("Bearer {TOKEN}");
    let r = d.post("/scan?nodes=bad", &[("Authorization", &bearer)]);
    assert_eq!(r.status, 400, "a selector that is not key=value: {r:?}");

    let r = d.post("/scan?nodes=role=edge", &[("Authorization", &bearer)]);
    assert_eq!(r.status, 200, "{r:?}\n--- daemon log ---\n{}", d.log());
    let id = r.json()["scan_id"].as_str().unwrap_or_default().to_string();
    assert!(!id.is_empty(), "{r:?}");
    // Only the selected node was scanned.
    assert_eq!(
        node_kinds(&stored(dir, &env_set)),
        pairs(&[("e1", "drift")])
    );
    let m = d.metrics();
    assert_eq!(
        m.get(
            "plumb_scans_total",
            &[("schedule", "adhoc"), ("result", "ok")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    // The read-only endpoints need no token.
    assert_eq!(d.get("/healthz").unwrap().status, 200);
    drop(d);

    // Beyond loopback without a token: `plumb check` refuses, naming the line of `[daemon] listen`.
    let open = tempfile::tempdir().unwrap();
    let toml = "[daemon]\nlisten = \"0.0.0.0:9477\"\n\n[[node]]\nname = \"n1\"\n";
    write_tree(open.path(), &[("plumb.toml", toml)]);
    let run = plumb(open.path(), &["check"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("plumb.toml:2:")
            && run.stderr.contains("[daemon] listen")
            && run.stderr.contains("token"),
        "{run}"
    );
    // With a token it is fine.
    let toml = "[daemon]\nlisten = \"0.0.0.0:9477\"\ntoken = \"${env:PLUMB_TEST_DAEMON_TOKEN}\"\n\n[[node]]\nname = \"n1\"\n";
    write_tree(open.path(), &[("plumb.toml", toml)]);
    run_with_env(open.path(), &["check"], &env_set).expect_code(0);
}

// ---------------------------------------------------------------------------------------------------------------
// 6. run --once
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn run_once_scans_every_schedule_and_exits() {
    let hook = Receiver::start(vec![Answer::status(200)]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let schedules = format!(
        r#"
[[schedule]]
name = "edge"
cron = "@daily"
nodes = {{ role = "edge" }}

[[schedule]]
name = "db"
cron = "0 3 * * 1"
timezone = "America/New_York"
nodes = {{ role = "db" }}
jitter = "10m"

[[sink]]
name = "hook"
type = "webhook"
url = "{}"

[[route]]
name = "all"
sinks = ["hook"]
"#,
        hook.url("/plumb")
    );
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                &file_toml(
                    free_port(),
                    &[("e1", "edge"), ("d1", "db"), ("x1", "cache")],
                    &schedules,
                ),
            ),
            ("baselines/app/default.json", BASELINE),
            ("live/e1.json", r#"{"port": 81, "debug": false}"#),
            ("live/d1.json", r#"{"port": 82, "debug": false}"#),
            ("live/x1.json", r#"{"port": 83, "debug": false}"#),
        ],
    );
    let run = plumb(dir, &["run", "--once"]);
    run.expect_code(0);
    assert!(run.elapsed < Duration::from_secs(10), "{run}");
    // Both schedules' nodes, and nothing of x1 (on no schedule).
    assert_eq!(
        node_kinds(&stored(dir, &[])),
        pairs(&[("d1", "drift"), ("e1", "drift")]),
        "{run}"
    );
    // Its alerts were delivered before it exited.
    let mut alerted: Vec<String> = Vec::new();
    for req in hook.requests().iter().filter(|q| q.method == "POST") {
        let v = req.json();
        for item in v["items"].as_array().cloned().unwrap_or_default() {
            alerted.push(item["node"].as_str().unwrap_or_default().to_string());
        }
    }
    alerted.sort();
    assert_eq!(alerted, vec!["d1", "e1"], "{run}");
}

// ---------------------------------------------------------------------------------------------------------------
// 7-8. converge
// ---------------------------------------------------------------------------------------------------------------

/// A project over simulated nodes: `e*` are role=edge, the rest role=db; baseline `{"port": 80}`.
fn converge_project(dir: &Path, fleet: &Fleet) {
    let toml = format!(
        "[scan]\nretries = 0\ntimeout = \"2s\"\n{}{SIM_CONFIG}",
        sim_nodes_toml(fleet, |n| if n.starts_with('e') { "edge" } else { "db" })
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/c/default.json", r#"{"port": 80}"#),
        ],
    );
}

/// The ready counts of converge's polls, from its stderr.
fn ready_counts(run: &Run) -> Vec<(usize, usize)> {
    run.stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("converge: poll ")?;
            let (_, rest) = rest.split_once(": ")?;
            let (ready, rest) = rest.split_once('/')?;
            let total = rest.split_whitespace().next()?;
            Some((ready.parse().ok()?, total.parse().ok()?))
        })
        .collect()
}

#[test]
fn converge_waits_for_nodes_to_come_back_one_by_one() {
    let sim = start_fleet(vec![
        sim_node("e1", vec![("/c", port_body(81))]),
        sim_node("e2", vec![("/c", port_body(81))]),
        sim_node("e3", vec![("/c", port_body(81))]),
        // Not selected: its drift does not hold the gate.
        sim_node("d1", vec![("/c", port_body(81))]),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    converge_project(dir, &sim.fleet);

    let fleet = &sim.fleet;
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            for n in ["e1", "e2", "e3"] {
                std::thread::sleep(Duration::from_millis(1000));
                assert!(fleet.set(n, "/c", port_body(80)));
            }
        });
        plumb(
            dir,
            &[
                "converge",
                "--nodes",
                "role=edge",
                "--timeout",
                "20s",
                "--interval",
                "300ms",
            ],
        )
    });
    run.expect_code(0);
    assert!(
        run.elapsed >= Duration::from_millis(2900),
        "it waited for the third node: {run}"
    );
    assert!(run.stdout.contains("converged: 3/3"), "{run}");
    let counts = ready_counts(&run);
    assert!(counts.iter().all(|(_, t)| *t == 3), "{counts:?}\n{run}");
    let ready: Vec<usize> = counts.iter().map(|(r, _)| *r).collect();
    assert!(
        ready.windows(2).all(|w| w[0] <= w[1]),
        "ready counts never go down: {ready:?}\n{run}"
    );
    assert_eq!(ready.first(), Some(&0), "{run}");
    assert_eq!(ready.last(), Some(&3), "{run}");
    for n in [1, 2] {
        assert!(
            ready.contains(&n),
            "a poll saw {n}/3 ready: {ready:?}\n{run}"
        );
    }
    drop(sim);
}

#[test]
fn converge_times_out_listing_what_is_off() {
    let sim = start_fleet(vec![
        sim_node("e1", vec![("/c", port_body(80))]),
        sim_node("e2", vec![("/c", port_body(80))]),
        sim_node("e3", vec![("/c", port_body(81))]),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    converge_project(dir, &sim.fleet);
    let args = [
        "converge",
        "--nodes",
        "role=edge",
        "--timeout",
        "2s",
        "--interval",
        "300ms",
    ];

    let run = plumb(dir, &args);
    run.expect_code(1);
    assert!(
        run.elapsed >= Duration::from_millis(1500) && run.elapsed < Duration::from_secs(7),
        "gave up after its timeout: {run}"
    );
    assert!(ready_counts(&run).len() >= 3, "it kept polling: {run}");
    assert!(run.stdout.contains("1 of 3 nodes are off"), "{run}");
    let off: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(off.len(), 1, "only e3 is listed: {run}");
    assert!(
        off[0].trim_start().starts_with("e3:") && off[0].contains("c drift $.port"),
        "e3, its config, kind and path: {run}"
    );

    // One node off is allowed: the gate opens at once.
    let mut relaxed = args.to_vec();
    relaxed.extend(["--max-unready", "1"]);
    let run = plumb(dir, &relaxed);
    run.expect_code(0);
    assert!(run.stdout.contains("converged: 2/3"), "{run}");
    assert!(run.elapsed < Duration::from_secs(2), "{run}");

    // Unreachable counts as off too, and says so.
    sim.fleet.set("e3", "/c", Behavior::Status(503));
    let run = plumb(dir, &args);
    run.expect_code(1);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("e3:") && l.contains("c unreachable")),
        "{run}"
    );
    drop(sim);
}
