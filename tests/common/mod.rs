//! Helpers for the black-box tests: write a project tree, run the real `plumb` binary in it, read its JSON report,
//! and serve configs from the crate's own fleet simulator.
#![allow(dead_code)]

pub mod receiver;
pub mod receiver_tickets;
pub mod smtp;

use plumb::sim::{Behavior, NodeSpec};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A simulated fleet with its own runtime, so blocking tests can run the binary while the fleet serves.
pub struct Sim {
    pub fleet: plumb::sim::Fleet,
    _rt: tokio::runtime::Runtime,
}

/// Start `specs` on loopback (plain HTTP) in a runtime of their own.
pub fn start_fleet(specs: Vec<NodeSpec>) -> Sim {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the fleet");
    let fleet = rt
        .block_on(plumb::sim::start(specs, None))
        .expect("start the fleet");
    Sim { fleet, _rt: rt }
}

/// How long one plumb invocation may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Write `(relative path, content)` pairs under `root`, creating directories as needed.
pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let p = root.join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

/// One finished plumb invocation.
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plumb {} exited {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

impl Run {
    /// Fail unless plumb exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
        self
    }

    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }

    /// Fail unless stderr holds `file:line:col:` for this file and line (any column).
    pub fn expect_location(&self, file: &str, line: usize) {
        let needle = format!("{file}:{line}:");
        let ok = self.stderr.match_indices(&needle).any(|(i, _)| {
            let rest = &self.stderr[i + needle.len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with(':')
        });
        assert!(ok, "stderr should name {file}:{line}:COL:\n{self}");
    }
}

/// Run the real binary in `dir` (so `./plumb.toml` is the config) with `args`.
/// Read a started child's stdout and stderr on their own threads (so neither pipe fills up), to join at its end.
pub fn capture(
    child: &mut std::process::Child,
) -> (
    std::thread::JoinHandle<String>,
    std::thread::JoinHandle<String>,
) {
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = match child.stdout.take() {
        Some(o) => pipe(Box::new(o)),
        None => std::thread::spawn(String::new),
    };
    let err = match child.stderr.take() {
        Some(e) => pipe(Box::new(e)),
        None => std::thread::spawn(String::new),
    };
    (out, err)
}

pub fn plumb(dir: &Path, args: &[&str]) -> Run {
    run_in(dir, args)
}

/// Run the real binary with `dir` as its working directory.
pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    run_with_env(dir, args, &[])
}

/// [`run_in`] with environment changes: `(name, Some(value))` sets, `(name, None)` removes.
pub fn run_with_env(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Run {
    let t0 = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plumb");
    let (out, err) = capture(&mut child);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for plumb") {
            break s;
        }
        if t0.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("plumb {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed: t0.elapsed(),
    }
}

/// The same from an async test: the binary runs on a blocking thread, so the simulated fleet keeps serving.
pub async fn plumb_async(dir: &Path, args: &[&str]) -> Run {
    let dir: PathBuf = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in(&dir, &a)
    })
    .await
    .expect("plumb thread")
}

fn audit_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["audit", "--format", "json"];
    a.extend_from_slice(extra);
    a
}

/// `plumb audit --format json EXTRA…` in `dir`: the run and its parsed report.
pub fn audit_json(dir: &Path, extra: &[&str]) -> (Run, Value) {
    let run = plumb(dir, &audit_args(extra));
    let report = run.json();
    check_report_shape(&report, &run);
    (run, report)
}

/// [`audit_json`] from an async test.
pub async fn audit_json_async(dir: &Path, extra: &[&str]) -> (Run, Value) {
    let run = plumb_async(dir, &audit_args(extra)).await;
    let report = run.json();
    check_report_shape(&report, &run);
    (run, report)
}

/// The documented schema: every top-level field, and summary counts that agree with the findings.
fn check_report_shape(r: &Value, run: &Run) {
    for k in [
        "scan_id",
        "started_at",
        "finished_at",
        "duration_ms",
        "nodes",
        "summary",
        "findings",
        "diffs",
    ] {
        assert!(r.get(k).is_some(), "report has no `{k}`\n{run}");
    }
    let findings = r["findings"].as_array().expect("findings is an array");
    assert_eq!(
        r["summary"]["total"],
        findings.len(),
        "summary.total\n{run}"
    );
    for f in findings {
        for k in [
            "fingerprint",
            "kind",
            "severity",
            "node",
            "config",
            "path",
            "expected",
            "actual",
            "rule",
            "message",
            "first_seen",
            "last_seen",
            "state",
        ] {
            assert!(f.get(k).is_some(), "finding has no `{k}`: {f}\n{run}");
        }
    }
}

/// The findings of a report.
pub fn findings(r: &Value) -> &[Value] {
    r["findings"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Each finding as `(kind, node, config, path)`, sorted: compare a whole report in one assertion.
pub fn keys(r: &Value) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut v: Vec<_> = findings(r)
        .iter()
        .map(|f| (s(&f["kind"]), s(&f["node"]), s(&f["config"]), s(&f["path"])))
        .collect();
    v.sort();
    v
}

/// Build the expected side of [`keys`].
pub fn expect_keys(items: &[(&str, &str, &str, &str)]) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = items
        .iter()
        .map(|(k, n, c, p)| (k.to_string(), n.to_string(), c.to_string(), p.to_string()))
        .collect();
    v.sort();
    v
}

/// The one finding for `node`/`config` at `path`; fails when there is none or several.
pub fn the_finding<'a>(r: &'a Value, node: &str, config: &str, path: &str) -> &'a Value {
    let hits: Vec<&Value> = findings(r)
        .iter()
        .filter(|f| f["node"] == node && f["config"] == config && f["path"] == path)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one finding for {node}/{config} at `{path}`, report:\n{r:#}"
    );
    hits[0]
}

/// The one `drift` finding for `node`/`config` at `path` (a rule may report a violation at the same path).
pub fn the_drift<'a>(r: &'a Value, node: &str, config: &str, path: &str) -> &'a Value {
    let hits: Vec<&Value> = findings(r)
        .iter()
        .filter(|f| {
            f["kind"] == "drift" && f["node"] == node && f["config"] == config && f["path"] == path
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one drift for {node}/{config} at `{path}`, report:\n{r:#}"
    );
    hits[0]
}

/// Assert a drift finding: its change, expected and actual values, and severity.
pub fn assert_drift(f: &Value, change: &str, expected: Value, actual: Value, severity: &str) {
    assert_eq!(f["kind"], "drift", "{f:#}");
    assert_eq!(f["change"], change, "{f:#}");
    assert_eq!(f["expected"], expected, "{f:#}");
    assert_eq!(f["actual"], actual, "{f:#}");
    assert_eq!(f["severity"], severity, "{f:#}");
}

/// A simulated node serving `routes` (path → behavior).
pub fn sim_node(name: &str, routes: Vec<(&str, Behavior)>) -> NodeSpec {
    NodeSpec {
        name: name.to_string(),
        bind: None,
        routes: routes
            .into_iter()
            .map(|(p, b)| (p.to_string(), b))
            .collect::<HashMap<_, _>>(),
        down: false,
    }
}

/// A 200 JSON answer.
pub fn json_body(v: &Value) -> Behavior {
    Behavior::serve("application/json", v.to_string())
}

/// A minimal HTTP/1.1 server on loopback that answers its n-th request with the n-th scripted answer (the last one
/// repeats) and counts requests: what the simulator cannot tell, how often plumb asked.
pub struct Scripted {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Scripted {
    /// Start serving `answers` of `(status, body)`.
    pub fn start(answers: &[(u16, &str)]) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let answers: Vec<(u16, String)> =
            answers.iter().map(|(c, b)| (*c, b.to_string())).collect();
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (code, body) = &answers[n.min(answers.len() - 1)];
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Scripted { addr, hits }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
