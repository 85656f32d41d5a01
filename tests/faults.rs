//! Fault injection (issue 8) through the real binary: the store on a full and on a read-only file system, webhook
//! and SMTP sinks that hang, reset the connection or answer garbage, plumb.toml replaced while the daemon scans, and
//! `kill -9` during outbox delivery. (`kill -9` during a scan is `tests/store.rs`, "12. kill -9".)
//!
//! Every scenario checks three things: the exit code and an error that names the file or sink and what is wrong;
//! nothing lost (alerts stay in the durable outbox and arrive once the sink is healthy again); nothing corrupted
//! (`PRAGMA integrity_check` is `ok`, and the next scan works and gives the right findings).
//!
//! The disk faults are real: the store directory is a small tmpfs, or a tmpfs remounted read-only, mounted inside a
//! private mount namespace (`unshare --mount`) that lives as long as a holder process; plumb runs inside it through
//! `nsenter`. Nothing is visible outside the namespace and nothing outlives the test: the holder ends when its
//! stdin closes, even when the test process is killed. This needs root (CAP_SYS_ADMIN), as CI has; without it the
//! tests fail, never skip.

mod common;

use common::receiver::{Answer, Receiver};
use common::smtp::{Mode, SmtpServer};
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

const PLUMB: &str = env!("CARGO_BIN_EXE_plumb");

/// Run a command to its end (at most a minute), capturing stdout and stderr, as [`Run`].
fn run_cmd(mut cmd: Command, shown: &[&str]) -> Run {
    let t0 = Instant::now();
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {shown:?}: {e}"));
    let (out, err) = common::capture(&mut child);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        args: shown.iter().map(|s| s.to_string()).collect(),
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed: t0.elapsed(),
    }
}

/// A private mount namespace in which `dir/.plumb` (the store's directory) is a tmpfs of `size`, alive as long as
/// its holder process (`cat`, reading a pipe only this value writes to).
struct Disk {
    holder: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
}

impl Disk {
    fn tmpfs(dir: &Path, size: &str) -> Disk {
        let store_dir = dir.join(".plumb");
        std::fs::create_dir_all(&store_dir).unwrap();
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1" plumb-faults "$2" && echo ready && exec cat >/dev/null"#)
            .args(["sh", size])
            .arg(&store_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let mut err = String::new();
            let _ = holder.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "cannot mount a tmpfs in a private mount namespace (the disk-fault tests need root, as CI has; \
                 they never skip): {err}"
            );
        }
        let stdin = holder.stdin.take();
        Disk {
            holder,
            stdin,
            dir: dir.to_path_buf(),
        }
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.holder.id().to_string())
            .arg("--mount")
            .arg(format!("--wdns={}", self.dir.display()))
            .arg("--");
        c
    }

    /// `plumb ARGS` inside the namespace, in the project directory.
    fn plumb(&self, args: &[&str]) -> Run {
        let mut c = self.nsenter();
        c.arg(PLUMB).args(args);
        run_cmd(c, args)
    }

    /// `plumb ARGS` inside the namespace, as a child process (nsenter executes plumb itself: its pid is plumb's).
    fn spawn_plumb(&self, args: &[&str]) -> Child {
        let mut c = self.nsenter();
        c.arg(PLUMB)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// A shell command inside the namespace, in the project directory.
    fn sh(&self, script: &str) -> Run {
        let mut c = self.nsenter();
        c.args(["sh", "-c", script]);
        run_cmd(c, &["sh", "-c", script])
    }

    /// Fill the file system: a reserve of `keep_kb` KiB, then a filler file written until the disk says no.
    fn fill(&self, keep_kb: usize) {
        let r = self.sh(&format!(
            "dd if=/dev/zero of=.plumb/reserve bs=1k count={keep_kb} 2>&1 && \
             dd if=/dev/zero of=.plumb/filler bs=16k 2>&1; df -k .plumb"
        ));
        assert!(
            r.stdout.contains("No space left on device"),
            "the filler did not fill the disk\n{r}"
        );
    }

    /// Give back the reserve: `keep_kb` KiB free.
    fn unreserve(&self) {
        self.sh("rm -f .plumb/reserve").expect_code(0);
    }

    fn free(&self) {
        self.sh("rm -f .plumb/filler .plumb/reserve").expect_code(0);
    }

    fn remount(&self, mode: &str) {
        self.sh(&format!("mount -o remount,{mode} .plumb"))
            .expect_code(0);
    }

    /// `PRAGMA integrity_check` of the store: its files are copied out of the namespace (no plumb is running) and
    /// opened there.
    fn integrity(&self) -> String {
        let copy = tempfile::tempdir().unwrap();
        self.sh(&format!("cp .plumb/state.db* {}/", copy.path().display()))
            .expect_code(0);
        let store = plumb::store::sqlite::SqliteStore::open(&copy.path().join("state.db")).unwrap();
        store.integrity_check().unwrap()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // EOF ends `cat`, and with it the namespace and its tmpfs.
        drop(self.stdin.take());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if matches!(self.holder.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A child process killed (SIGKILL) when the guard goes, so a failing test leaves no plumb running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address nothing listens on (at the time of asking).
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Three file-source nodes drifting on `$.port`, and a webhook sink `hook` at `url` that every finding goes to.
fn project(dir: &Path, hook_url: &str, sinks_extra: &str) {
    project_timeout(dir, hook_url, "5s", sinks_extra);
}

/// [`project`] with the `timeout` of sink `hook`.
fn project_timeout(dir: &Path, hook_url: &str, timeout: &str, sinks_extra: &str) {
    let toml = format!(
        r#"[scan]
retries = 0
timeout = "2s"

[[node]]
name = "n1"

[[node]]
name = "n2"

[[node]]
name = "n3"

[[config]]
name = "app"
source.file = "live/${{node.name}}.json"
format = "json"

[[sink]]
name = "hook"
type = "webhook"
url = "{hook_url}"
secret = "s3cret"
timeout = "{timeout}"
{sinks_extra}
[[route]]
name = "all"
sinks = ["hook"]
repeat_interval = "0s"
"#
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/app/default.json", r#"{"port": 443}"#),
            ("live/n1.json", r#"{"port": 80}"#),
            ("live/n2.json", r#"{"port": 80}"#),
            ("live/n3.json", r#"{"port": 80}"#),
        ],
    );
}

/// `(node, path, kind, state)` of each finding, sorted.
fn summary(list: &[Value]) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut v: Vec<_> = list
        .iter()
        .map(|f| (s(&f["node"]), s(&f["path"]), s(&f["kind"]), s(&f["state"])))
        .collect();
    v.sort();
    v
}

fn tuples(items: &[(&str, &str, &str, &str)]) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = items
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    v.sort();
    v
}

fn json_list(run: &Run) -> Vec<Value> {
    run.expect_code(0);
    run.json().as_array().cloned().unwrap_or_default()
}

type Items = Vec<Vec<(String, String, String)>>;

/// The items of every digest a receiver got, as `(trigger, node or nodes, path)`.
fn digest_items(reqs: &[common::receiver::Request]) -> Items {
    items_of(reqs.iter().map(|q| q.json()).collect())
}

fn items_of(digests: Vec<Value>) -> Items {
    digests
        .iter()
        .map(|d| {
            d["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let nodes = if i["nodes"].as_array().is_some_and(|a| !a.is_empty()) {
                        i["nodes"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|n| n.as_str().unwrap().to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    } else {
                        i["node"].as_str().unwrap_or_default().to_string()
                    };
                    (
                        i["trigger"].as_str().unwrap_or_default().to_string(),
                        nodes,
                        i["path"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn big_object(n: usize) -> String {
    let mut s = String::from("{\"port\": 81, \"tuning\": {");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("\"key{i:05}\": \"{}\"", "v".repeat(40)));
    }
    s.push_str("}}");
    s
}

// ---------------------------------------------------------------------------------------------------------------
// 1. The store on a full disk
// ---------------------------------------------------------------------------------------------------------------

const NO_SPACE: &str = "cannot write in ./.plumb: no space left on the device";
const READ_ONLY: &str = "cannot write in ./.plumb: the file system is read-only";

#[test]
fn a_full_disk_records_nothing_half_and_loses_no_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hook = Receiver::start(vec![Answer::status(200)]);
    project(dir, &hook.url("/plumb"), "");
    let disk = Disk::tmpfs(dir, "4m");

    // A store that cannot even be created: a clear error, no alert, nothing half-made that blocks the next run.
    disk.fill(0);
    let run = disk.plumb(&["audit", "--notify"]);
    println!("full disk, no store yet: {}", run.stderr.trim());
    run.expect_code(2);
    assert!(
        run.stderr.contains(".plumb/state.db") && run.stderr.contains(NO_SPACE),
        "the error names the store file and says the disk is full\n{run}"
    );
    assert!(
        hook.requests().is_empty(),
        "no alert without a record of it"
    );
    disk.free();
    let run = disk.plumb(&["audit", "--notify"]);
    run.expect_code(1);
    assert_eq!(hook.requests().len(), 1, "{run}");
    let before = json_list(&disk.plumb(&["findings", "--format", "json"]));
    assert_eq!(
        summary(&before),
        tuples(&[
            ("n1", "$.port", "drift", "new"),
            ("n2", "$.port", "drift", "new"),
            ("n3", "$.port", "drift", "new"),
        ])
    );

    // The disk fills up; then n1 is fixed and n2 grows a large new section, so the scan has much to write. With
    // no room at all, SQLite cannot even create its WAL index: the store does not open.
    disk.fill(96);
    write_tree(
        dir,
        &[
            ("live/n1.json", r#"{"port": 443}"#),
            ("live/n2.json", &big_object(3000)),
        ],
    );
    let run = disk.plumb(&["audit", "--notify", "--format", "json"]);
    println!("full disk, store in use: {}", run.stderr.trim());
    run.expect_code(2);
    assert!(
        run.stderr.contains(".plumb/state.db") && run.stderr.contains(NO_SPACE),
        "{run}"
    );
    assert!(
        run.stdout.is_empty(),
        "no report for a scan that was not recorded\n{run}"
    );
    assert_eq!(
        hook.requests().len(),
        1,
        "nothing sent for an unrecorded scan"
    );
    // Nothing of the failed scan is in the store: the findings are exactly as before, no alert is half-queued.
    let during = disk.plumb(&["findings", "--format", "json"]);
    if during.code == 0 {
        assert_eq!(json_list(&during), before, "{during}");
    } else {
        // Reading may need room for the WAL index; then it fails as clearly.
        assert!(during.stderr.contains(NO_SPACE), "{during}");
    }
    assert_eq!(disk.integrity(), "ok");

    // 96 KiB free: the store opens and the scan runs, but its results (a 150 KB snapshot among them) do not fit:
    // the write fails in the middle of the scan's transaction, and none of it stays.
    disk.unreserve();
    let run = disk.plumb(&["audit", "--notify", "--format", "json"]);
    println!("nearly full disk, failing commit: {}", run.stderr.trim());
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("the scan could not be recorded; nothing of it was stored")
            && run.stderr.contains("store ./.plumb/state.db: ")
            && run.stderr.contains(NO_SPACE),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");
    assert_eq!(hook.requests().len(), 1);
    assert_eq!(
        json_list(&disk.plumb(&["findings", "--format", "json"])),
        before,
        "nothing of the failed transaction is visible"
    );
    assert_eq!(disk.integrity(), "ok");

    // Room again: the store is as it was, and the next scan records everything the failed ones would have, alerts
    // included.
    disk.free();
    assert_eq!(
        json_list(&disk.plumb(&["findings", "--format", "json"])),
        before
    );
    let out = disk.plumb(&["alerts", "outbox", "--format", "json"]);
    assert!(json_list(&out).is_empty(), "nothing half-queued: {out}");
    let run = disk.plumb(&["audit", "--notify", "--format", "json"]);
    run.expect_code(1);
    let r = run.json();
    assert_eq!(r["resolved"].as_array().map(Vec::len), Some(1), "{run}");
    let now = json_list(&disk.plumb(&["findings", "--format", "json"]));
    assert_eq!(
        summary(&now),
        tuples(&[
            ("n1", "$.port", "drift", "resolved"),
            ("n2", "$.port", "drift", "ongoing"),
            ("n2", "$.tuning", "drift", "new"),
            ("n3", "$.port", "drift", "ongoing"),
        ]),
        "{run}"
    );
    let got = digest_items(&hook.requests());
    assert_eq!(got.len(), 2, "{got:?}\n{run}");
    assert!(
        got[1].contains(&("resolved".into(), "n1".into(), "$.port".into()))
            && got[1].contains(&("firing".into(), "n2".into(), "$.tuning".into())),
        "the alerts of the failed scan arrive with the next one: {got:?}"
    );
    assert!(run.stderr.contains("0 pending, 0 dead letters"), "{run}");
    assert_eq!(disk.integrity(), "ok");
    // And the scan after that is an ordinary one.
    let run = disk.plumb(&["audit", "--notify"]);
    run.expect_code(1);
    assert_eq!(hook.requests().len(), 2, "nothing new, nothing sent\n{run}");
}

/// `plumb_scans_total{schedule="fast",result=RESULT}` from `/metrics`.
fn scans(port: u16, result: &str) -> f64 {
    let (_, body) = http_raw(port, "GET", "/metrics").unwrap_or_default();
    body.lines()
        .find(|l| {
            l.starts_with(&format!(
                "plumb_scans_total{{schedule=\"fast\",result=\"{result}\"}} "
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_daemon_on_a_full_disk_keeps_running_and_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hook = Receiver::start(vec![Answer::status(200)]);
    let port = free_addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    project(
        dir,
        &hook.url("/plumb"),
        &format!(
            "\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n\n[[schedule]]\nname = \"fast\"\ncron = \"*/1 * * * * *\"\n"
        ),
    );
    let disk = Disk::tmpfs(dir, "4m");
    let log = dir.join("daemon.log");
    let mut c = disk.nsenter();
    c.args([PLUMB, "run"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let daemon = Killed(c.spawn().unwrap());
    let until = |what: &str, limit: Duration, f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < limit,
                "no {what} within {limit:?}\n--- daemon log ---\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("first scan and alert", Duration::from_secs(15), &|| {
        scans(port, "ok") >= 1.0 && !hook.requests().is_empty()
    });

    // The disk fills up while n1 is fixed and n2 grows: scans fail, the daemon says why and keeps going.
    disk.fill(0);
    write_tree(
        dir,
        &[
            ("live/n1.json", r#"{"port": 443}"#),
            ("live/n2.json", &big_object(3000)),
        ],
    );
    until("failed scans", Duration::from_secs(10), &|| {
        scans(port, "error") >= 2.0
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("scan could not run"))
        .unwrap_or_default()
        .to_string();
    println!("daemon log: {line}");
    assert!(
        line.contains("schedule=fast")
            && line.contains(NO_SPACE.trim_start_matches("cannot write in ./")),
        "the log names the schedule, the store and the full disk: {text}"
    );
    let (status, _) = http(port, "GET", "/readyz").unwrap();
    assert_eq!(status, 200, "still running");
    let resolved = |h: &Receiver| {
        digest_items(&h.requests())
            .iter()
            .any(|d| d.contains(&("resolved".into(), "n1".into(), "$.port".into())))
    };
    assert!(!resolved(&hook), "nothing of an unrecorded scan is sent");

    // Room again: the next scan records what the failed ones saw, and its alerts go out.
    disk.free();
    until(
        "a resolution after the disk has room",
        Duration::from_secs(15),
        &|| resolved(&hook),
    );
    drop(daemon);
    let mut now = summary(&json_list(&disk.plumb(&["findings", "--format", "json"])));
    for f in &mut now {
        // `new` in the scan that recorded it, `ongoing` if one more ran before the daemon was stopped.
        if f.1 == "$.tuning" && f.3 == "new" {
            f.3 = "ongoing".into();
        }
    }
    assert_eq!(
        now,
        tuples(&[
            ("n1", "$.port", "drift", "resolved"),
            ("n2", "$.port", "drift", "ongoing"),
            ("n2", "$.tuning", "drift", "ongoing"),
            ("n3", "$.port", "drift", "ongoing"),
        ])
    );
    assert_eq!(disk.integrity(), "ok");
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The store on a read-only file system
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_read_only_store_changes_nothing_and_sends_nothing_it_cannot_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addr = free_addr();
    project(dir, &format!("http://{addr}/plumb"), "");
    let disk = Disk::tmpfs(dir, "16m");

    // The sink is down: the digest waits in the outbox.
    let run = disk.plumb(&["audit", "--notify", "--notify-wait", "0s"]);
    run.expect_code(1);
    assert!(run.stderr.contains("1 pending"), "{run}");
    let before = json_list(&disk.plumb(&["findings", "--format", "json"]));
    assert_eq!(before.len(), 3);
    let hook = SlowHook::start_on(&addr, Duration::ZERO);

    // The file system turns read-only (as after an I/O error), the sink is back, n1 is fixed. SQLite cannot even
    // open the store (it has no WAL index and cannot create one): a clear error, nothing sent.
    disk.remount("ro");
    write_tree(dir, &[("live/n1.json", r#"{"port": 443}"#)]);
    let run = disk.plumb(&["audit", "--notify"]);
    run.expect_code(2);
    println!("read-only audit: {}", run.stderr.trim());
    assert!(
        run.stderr.contains("store ./.plumb/state.db: ") && run.stderr.contains(READ_ONLY),
        "the error names the store file and says it is read-only\n{run}"
    );
    let run = disk.plumb(&["alerts", "flush", "--wait", "3s"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("store ./.plumb/state.db: ") && run.stderr.contains(READ_ONLY),
        "{run}"
    );
    assert!(hook.keys().is_empty(), "{:?}", hook.keys());
    let during = disk.plumb(&["findings", "--format", "json"]);
    during.expect_code(2);
    assert!(during.stderr.contains(READ_ONLY), "{during}");

    // Writable again, and a plumb dies (kill -9) while delivering to a sink that hangs: it leaves the WAL and its
    // index behind. Then the file system turns read-only again: now SQLite opens the store and reads it, but
    // cannot write. Sending the alert then would mean sending it again on every try, as it could never be marked
    // as sent: plumb must refuse before sending anything.
    disk.remount("rw");
    hook.set_delay_ms(30_000);
    let child = Killed(disk.spawn_plumb(&["alerts", "flush", "--wait", "30s"]));
    let t0 = Instant::now();
    while hook.keys().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no delivery began");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(child); // kill -9
    let ls = disk.sh("ls .plumb");
    assert!(ls.stdout.contains("state.db-shm"), "{ls}");
    disk.remount("ro");
    hook.set_delay_ms(0);
    let run = disk.plumb(&["audit", "--notify"]);
    run.expect_code(2);
    println!("read-only audit, store readable: {}", run.stderr.trim());
    assert!(
        run.stderr.contains("store ./.plumb/state.db: ") && run.stderr.contains(READ_ONLY),
        "{run}"
    );
    let run = disk.plumb(&["alerts", "flush", "--wait", "3s"]);
    println!("read-only flush, store readable: {}", run.stderr.trim());
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("cannot deliver the outbox: store ./.plumb/state.db: ")
            && run.stderr.contains(READ_ONLY),
        "{run}"
    );
    assert_eq!(
        hook.keys().len(),
        1,
        "an alert was sent that the store could not record as sent\n{run}"
    );
    // Reading works now, and shows the store as it was.
    assert_eq!(
        json_list(&disk.plumb(&["findings", "--format", "json"])),
        before
    );
    let out = disk.plumb(&["alerts", "outbox"]);
    assert!(out.stdout.contains("1 pending, 0 dead letters"), "{out}");

    // Writable again: the pending alert goes out (a second time: the killed attempt reached the sink, with the
    // same Idempotency-Key), the scan that failed is done again, all is well.
    disk.remount("rw");
    let run = disk.plumb(&["alerts", "flush", "--wait", "20s"]);
    run.expect_code(0);
    let keys = hook.keys();
    assert_eq!(keys.len(), 2, "{run}");
    assert_eq!(keys[0], keys[1]);
    let run = disk.plumb(&["audit", "--notify", "--format", "json"]);
    run.expect_code(1);
    assert_eq!(
        hook.digests()[1..],
        vec![
            vec![("firing".into(), "n1,n2,n3".into(), "$.port".into())],
            vec![("resolved".into(), "n1".into(), "$.port".into())],
        ],
        "{run}"
    );
    assert_eq!(
        summary(&json_list(&disk.plumb(&["findings", "--format", "json"]))),
        tuples(&[
            ("n1", "$.port", "drift", "resolved"),
            ("n2", "$.port", "drift", "ongoing"),
            ("n3", "$.port", "drift", "ongoing"),
        ])
    );
    assert_eq!(disk.integrity(), "ok");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Sinks that hang, reset the connection, or answer garbage
// ---------------------------------------------------------------------------------------------------------------

/// How a fake peer misbehaves.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Accept, read what comes, never answer.
    Hang,
    /// Accept, take a few bytes, and close with unread data: the kernel answers with a RST.
    Reset,
    /// HTTP: read the request, answer bytes that are not HTTP.
    HttpGarbage,
    /// HTTP: a 503 whose body is 10 KB of junk with terminal escapes and line breaks.
    HttpJunk503,
    /// SMTP: a proper greeting, then a RST in the middle of the client's EHLO.
    SmtpReset,
    /// SMTP: a greeting that is not SMTP.
    SmtpGarbageGreeting,
    /// SMTP: a proper greeting, then garbage in reply to EHLO.
    SmtpGarbageReply,
}

/// A loopback listener that misbehaves as told, until stopped (then its port is free for a healthy server).
struct Faulty {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    conns: Arc<Mutex<usize>>,
}

impl Faulty {
    fn start(fault: Fault) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(0));
        let (st, cn) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        *cn.lock().unwrap() += 1;
                        let _ = s.set_nonblocking(false);
                        std::thread::spawn(move || misbehave(s, fault));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Faulty {
            addr,
            stop,
            thread: Some(thread),
            conns,
        }
    }

    fn connections(&self) -> usize {
        *self.conns.lock().unwrap()
    }

    /// Stop listening (the port can be bound again).
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_head(s: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

fn misbehave(mut s: TcpStream, fault: Fault) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    match fault {
        Fault::Hang => {
            // Read (and drop) whatever comes; answer nothing; hold the connection until the client gives up.
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
        Fault::Reset => {
            let mut buf = [0u8; 8];
            let _ = s.read(&mut buf);
            std::thread::sleep(Duration::from_millis(50));
            // Unread request bytes are still queued: closing now sends RST, not FIN.
        }
        Fault::SmtpReset => {
            let _ = s.write_all(b"220 relay.test ESMTP ready\r\n");
            let mut buf = [0u8; 4];
            let _ = s.read(&mut buf);
            std::thread::sleep(Duration::from_millis(50));
        }
        Fault::HttpGarbage => {
            read_head(&mut s);
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \x07\r\n\r\n");
        }
        Fault::HttpJunk503 => {
            read_head(&mut s);
            let mut body = b"\x1b[2J\x1b[31mFAKE\r\nplumb: all alerts delivered\r\n".to_vec();
            body.extend(std::iter::repeat_n(b'A', 10_000));
            let _ = write!(
                s,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
        Fault::SmtpGarbageGreeting => {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
        Fault::SmtpGarbageReply => {
            let _ = s.write_all(b"220 relay.test ESMTP ready\r\n");
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"\x00\x01\xfe{\"not\": \"smtp\"}\r\nlol\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[derive(Debug)]
struct OutboxRow {
    sink: String,
    status: String,
    attempts: u64,
    last_error: String,
    msg_id: String,
}

fn outbox(run: &Run) -> Vec<OutboxRow> {
    json_list(run)
        .iter()
        .map(|r| OutboxRow {
            sink: r["sink"].as_str().unwrap().to_string(),
            status: r["status"].as_str().unwrap().to_string(),
            attempts: r["attempts"].as_u64().unwrap(),
            last_error: r["last_error"].as_str().unwrap_or_default().to_string(),
            msg_id: r["msg_id"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn the_row<'a>(rows: &'a [OutboxRow], sink: &str) -> &'a OutboxRow {
    let hits: Vec<&OutboxRow> = rows.iter().filter(|r| r.sink == sink).collect();
    assert_eq!(hits.len(), 1, "one outbox item for {sink}: {rows:#?}");
    hits[0]
}

#[test]
fn webhooks_that_hang_reset_or_answer_garbage_keep_the_alert_until_they_are_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut hang = Faulty::start(Fault::Hang);
    let mut reset = Faulty::start(Fault::Reset);
    let mut garbage = Faulty::start(Fault::HttpGarbage);
    let mut junk = Faulty::start(Fault::HttpJunk503);
    let extra = format!(
        r#"
[[sink]]
name = "reset"
type = "webhook"
url = "http://{}/plumb"
timeout = "5s"

[[sink]]
name = "garbage"
type = "webhook"
url = "http://{}/plumb"
timeout = "5s"

[[sink]]
name = "junk"
type = "webhook"
url = "http://{}/plumb"
timeout = "5s"

[[route]]
name = "more"
sinks = ["reset", "garbage", "junk"]
repeat_interval = "0s"
"#,
        reset.addr, garbage.addr, junk.addr
    );
    project_timeout(dir, &format!("http://{}/plumb", hang.addr), "2s", &extra);

    let t0 = Instant::now();
    let run = plumb(dir, &["audit", "--notify", "--notify-wait", "1s"]);
    // The audit's own result is unchanged by failing sinks: drift, exit 1.
    run.expect_code(1);
    assert!(
        run.elapsed < Duration::from_secs(10),
        "a hanging sink is bounded by its timeout ({:?} after {:?})\n{run}",
        run.elapsed,
        t0.elapsed()
    );
    assert!(
        run.stderr.contains("4 queued, 0 delivered, 4 pending"),
        "{run}"
    );
    for (sink, why) in [
        ("hook", "timed out"),
        ("reset", "network error"),
        ("garbage", "network error"),
        ("junk", "HTTP 503: "),
    ] {
        assert!(
            run.stderr.contains(&format!("sink {sink} failing: {why}")),
            "stderr names sink {sink} and says `{why}`\n{run}"
        );
    }
    assert!(
        [&hang, &reset, &garbage, &junk]
            .iter()
            .all(|f| f.connections() >= 1)
    );
    // What a peer answers never reaches the terminal raw: no escapes, no line breaks, a bounded snippet.
    assert!(
        !run.stderr.contains('\x1b')
            && !run.stderr.contains("FAKE\r")
            && run.stderr.lines().count() < 40,
        "{run}"
    );
    let rows = outbox(&plumb(dir, &["alerts", "outbox", "--format", "json"]));
    println!("{rows:#?}");
    for (sink, what) in [
        ("hook", "timed out"),
        ("reset", "reset"),
        ("garbage", "invalid HTTP"),
        (
            "junk",
            "HTTP 503: [2J [31mFAKE  plumb: all alerts delivered",
        ),
    ] {
        let r = the_row(&rows, sink);
        assert!(
            !r.last_error.chars().any(char::is_control) && r.last_error.len() < 300,
            "one bounded line: {r:?}"
        );
        assert_eq!(r.status, "pending", "{r:?}");
        assert!(r.attempts >= 1, "{r:?}");
        assert!(
            r.last_error.to_lowercase().contains(&what.to_lowercase()),
            "the outbox says why {sink} failed (`{what}`): {r:?}"
        );
    }
    // The human listing says the same, with the sink.
    let out = plumb(dir, &["alerts", "outbox"]);
    assert!(
        out.stdout.contains("4 pending, 0 dead letters") && out.stdout.contains("last error"),
        "{out}"
    );

    // The four come back healthy on the same ports: each gets its digest exactly once, signed, with the
    // message id as its Idempotency-Key.
    let ids: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.sink.clone(), r.msg_id.clone()))
        .collect();
    let mut healthy = Vec::new();
    for f in [&mut hang, &mut reset, &mut garbage, &mut junk] {
        f.stop();
        healthy.push(Receiver::start_on(
            &f.addr.to_string(),
            vec![Answer::status(200)],
        ));
    }
    let run = plumb(dir, &["alerts", "flush", "--wait", "30s"]);
    run.expect_code(0);
    for (i, sink) in ["hook", "reset", "garbage", "junk"].iter().enumerate() {
        let reqs = healthy[i].requests();
        assert_eq!(reqs.len(), 1, "{sink}: {reqs:?}\n{run}");
        let id = &ids.iter().find(|(s, _)| s == sink).unwrap().1;
        assert_eq!(reqs[0].header("idempotency-key"), Some(id.as_str()));
        let d = reqs[0].json();
        assert_eq!(d["items"][0]["trigger"], "firing", "{d:#}");
        assert_eq!(
            d["items"][0]["nodes"],
            serde_json::json!(["n1", "n2", "n3"])
        );
    }
    let out = plumb(dir, &["alerts", "outbox"]);
    assert!(out.stdout.contains("0 pending, 0 dead letters"), "{out}");
    let store = plumb::store::sqlite::SqliteStore::open(&dir.join(".plumb/state.db")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn smtp_relays_that_hang_reset_or_answer_garbage_keep_the_mail_until_they_are_healthy() {
    let _ = common::smtp::python(); // fails (never skips) without aiosmtpd
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let faults = [
        ("hang", Fault::Hang, "timed out"),
        ("reset", Fault::SmtpReset, "reset"),
        ("greeting", Fault::SmtpGarbageGreeting, "SMTP connection to"),
        ("reply", Fault::SmtpGarbageReply, "SMTP connection to"),
    ];
    let mut servers: Vec<Faulty> = faults.iter().map(|(_, f, _)| Faulty::start(*f)).collect();
    let mut extra = String::new();
    for ((name, _, _), s) in faults.iter().zip(&servers) {
        extra.push_str(&format!(
            "\n[[sink]]\nname = \"{name}\"\ntype = \"email\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\nfrom = \"plumb@example.org\"\nto = [\"oncall@example.org\"]\ntimeout = \"{}\"\n",
            s.addr.port(),
            // Short where the relay hangs (that is the fault), ample for aiosmtpd later on a busy machine.
            if *name == "hang" { "2s" } else { "10s" }
        ));
    }
    extra.push_str(
        "\n[[route]]\nname = \"mail\"\nsinks = [\"hang\", \"reset\", \"greeting\", \"reply\"]\nrepeat_interval = \"0s\"\n",
    );
    let hook = Receiver::start(vec![Answer::status(200)]);
    project(dir, &hook.url("/plumb"), &extra);

    let run = plumb(dir, &["audit", "--notify", "--notify-wait", "1s"]);
    run.expect_code(1);
    let rows = outbox(&plumb(dir, &["alerts", "outbox", "--format", "json"]));
    println!("{rows:#?}");
    for (name, _, what) in &faults {
        let r = the_row(&rows, name);
        assert_eq!(r.status, "pending", "a misbehaving relay is retried: {r:?}");
        assert!(
            r.last_error.starts_with(&format!("email sink {name}: "))
                && r.last_error.contains(what),
            "the error names the sink and says what went wrong (`{what}`): {r:?}\n{run}"
        );
        assert!(
            run.stderr
                .contains(&format!("sink {name} failing: email sink {name}:")),
            "{run}"
        );
        assert!(
            !r.last_error.chars().any(char::is_control) && r.last_error.len() < 600,
            "what the server sent is kept to one bounded line: {r:?}"
        );
    }

    // Healthy relays (aiosmtpd) come back on the same ports: every mail arrives once.
    for s in &mut servers {
        s.stop();
    }
    let ports: Vec<u16> = servers.iter().map(|s| s.addr.port()).collect();
    let relays: Vec<SmtpServer> = ports
        .iter()
        .map(|&p| std::thread::spawn(move || SmtpServer::start_on(Mode::NoTls, None, p)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let run = plumb(dir, &["alerts", "flush", "--wait", "40s"]);
    let out = plumb(dir, &["alerts", "outbox", "--format", "json"]);
    let left: Vec<OutboxRow> = outbox(&out)
        .into_iter()
        .filter(|r| r.sink != "hook")
        .collect();
    assert!(left.is_empty(), "{left:#?}\n{run}");
    for (relay, (name, _, _)) in relays.iter().zip(&faults) {
        let mails = relay.wait_mails(1);
        assert!(
            mails[0].header("Subject").contains("firing"),
            "{name}: {:?}",
            mails[0].headers
        );
        assert!(mails[0].part("text/plain").contains("$.port"));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 4. plumb.toml replaced while the daemon scans
// ---------------------------------------------------------------------------------------------------------------

/// An HTTP node answering `{"port": PORT}` after an adjustable delay.
struct SlowNode {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
}

impl SlowNode {
    fn start(port: u16, delay: Duration) -> SlowNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let d = delay_ms.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let d = d.clone();
                std::thread::spawn(move || {
                    read_head(&mut s);
                    std::thread::sleep(Duration::from_millis(d.load(Ordering::SeqCst)));
                    let body = format!("{{\"port\": {port}}}");
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        SlowNode { addr, delay_ms }
    }

    fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

/// One HTTP/1.1 request to the daemon: `(status, body)`; a JSON body is cut out of any chunked framing.
fn http(port: u16, method: &str, target: &str) -> std::io::Result<(u16, String)> {
    let (status, body) = http_raw(port, method, target)?;
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b && !target.starts_with("/metrics") => body[a..=b].to_string(),
        _ => body,
    };
    Ok((status, body))
}

/// One HTTP/1.1 request to the daemon: `(status, raw body)`.
fn http_raw(port: u16, method: &str, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// `plumb run` as a child process, killed on drop.
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(dir: &Path, port: u16) -> Daemon {
        let log = dir.join("daemon.log");
        let child = Command::new(PLUMB)
            .arg("run")
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let d = Daemon { child, port, log };
        d.until("/readyz", Duration::from_secs(10), || {
            http(port, "GET", "/readyz").ok().filter(|(s, _)| *s == 200)
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn healthz(&self) -> Value {
        let (s, b) = http(self.port, "GET", "/healthz").unwrap();
        assert_eq!(s, 200, "{b}");
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}"))
    }

    fn until<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                t0.elapsed() < limit,
                "no {what} within {limit:?}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /scan` on a thread: the answer comes when the scan is recorded.
    fn scan(&self) -> std::thread::JoinHandle<std::io::Result<(u16, String)>> {
        let port = self.port;
        std::thread::spawn(move || http(port, "POST", "/scan"))
    }
}

fn daemon_toml(port: u16, slow: SocketAddr, fast: Option<SocketAddr>, severity: &str) -> String {
    let mut t = format!(
        r#"[scan]
retries = 0
timeout = "20s"

[daemon]
listen = "127.0.0.1:{port}"

[[node]]
name = "slow"
vars = {{ addr = "{slow}" }}
"#
    );
    if let Some(f) = fast {
        t.push_str(&format!(
            "\n[[node]]\nname = \"fast\"\nvars = {{ addr = \"{f}\" }}\n"
        ));
    }
    t.push_str(&format!(
        r#"
[[config]]
name = "c"
source.http = "http://${{node.vars.addr}}/c"
format = "json"
severity = {{ "$.port" = "{severity}" }}
"#
    ));
    t
}

/// Stored findings as `(node, severity)`, sorted. Read through the library: the CLI would refuse to start while
/// plumb.toml is half-written.
fn node_severities(dir: &Path) -> Vec<(String, String)> {
    use plumb::store::Store;
    let mut store = plumb::store::sqlite::SqliteStore::open(&dir.join(".plumb/state.db")).unwrap();
    let mut v: Vec<_> = store
        .findings(&Default::default())
        .unwrap()
        .into_iter()
        .map(|r| (r.finding.node, r.finding.severity.as_str().to_string()))
        .collect();
    v.sort();
    v
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn plumb_toml_replaced_during_a_scan_is_never_half_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let slow = SlowNode::start(81, Duration::from_millis(4500));
    let fast = SlowNode::start(82, Duration::ZERO);
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let v1 = daemon_toml(port, slow.addr, None, "low");
    let v2 = daemon_toml(port, slow.addr, Some(fast.addr), "high");
    write_tree(
        dir,
        &[
            ("plumb.toml", &v1),
            ("baselines/c/default.json", r#"{"port": 80}"#),
        ],
    );
    let d = Daemon::start(dir, port);

    // A scan starts on v1; while it waits for the slow node, plumb.toml is replaced (write beside, rename over)
    // by v2, with another node and another severity. The watcher takes v2 in while the scan still runs.
    let scan = d.scan();
    std::thread::sleep(Duration::from_millis(500));
    let tmp_file = dir.join("plumb.toml.new");
    std::fs::write(&tmp_file, &v2).unwrap();
    std::fs::rename(&tmp_file, dir.join("plumb.toml")).unwrap();
    d.until("the reload of v2", Duration::from_secs(6), || {
        d.log().contains("configuration reloaded").then_some(())
    });
    assert!(
        !scan.is_finished(),
        "the scan was still running when v2 came in\n{}",
        d.log()
    );
    let (status, body) = scan.join().unwrap().unwrap();
    assert_eq!(status, 200, "{body}\n{}", d.log());
    // That scan ran on v1 from start to end: one node, severity low. Nothing of v2 leaked into it.
    assert_eq!(node_severities(dir), pairs(&[("slow", "low")]));

    // The next scan runs on v2.
    slow.set_delay(Duration::ZERO);
    let (status, body) = d.scan().join().unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        node_severities(dir),
        pairs(&[("fast", "high"), ("slow", "high")])
    );

    // An editor rewrites plumb.toml in place, in two writes. The watcher sees the first half: a broken file,
    // refused with its line; the daemon keeps v2.
    let v3 = daemon_toml(port, slow.addr, Some(fast.addr), "medium");
    let cut =
        v3.find("[[config]]").unwrap() + "[[config]]\nname = \"c\"\nsource.http = \"http://".len();
    let half = &v3[..cut];
    let line = half.lines().count();
    std::fs::write(dir.join("plumb.toml"), half).unwrap();
    let written_at = std::fs::metadata(dir.join("plumb.toml"))
        .unwrap()
        .modified()
        .unwrap();
    let h = d.until(
        "the half-written file refused",
        Duration::from_secs(6),
        || {
            let h = d.healthz();
            (h["status"] == "degraded").then_some(h)
        },
    );
    let err = h["config"]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(&format!("plumb.toml:{line}:")),
        "the refusal names plumb.toml:{line}: {h:#}"
    );
    let (status, _) = d.scan().join().unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        node_severities(dir),
        pairs(&[("fast", "high"), ("slow", "high")]),
        "the last good configuration is kept"
    );
    // The second write completes the file within the same clock tick as the first (file times are coarse): the
    // modification time does not change, the content does. The daemon must not stay on the refused half.
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("plumb.toml"))
            .unwrap();
        f.write_all(&v3.as_bytes()[cut..]).unwrap();
        f.set_modified(written_at).unwrap();
    }
    d.until("v3 taken in", Duration::from_secs(8), || {
        (d.healthz()["status"] == "ok").then_some(())
    });
    let (status, _) = d.scan().join().unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        node_severities(dir),
        pairs(&[("fast", "medium"), ("slow", "medium")])
    );
    let store = plumb::store::sqlite::SqliteStore::open(&dir.join(".plumb/state.db")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn a_plumb_toml_read_without_its_sinks_keeps_their_queued_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addr = free_addr();
    let other = Receiver::start(vec![Answer::status(200)]);
    let extra = format!(
        "\n[[sink]]\nname = \"other\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        other.url("/other")
    );
    project(dir, &format!("http://{addr}/plumb"), &extra);
    plumb(dir, &["audit", "--notify", "--notify-wait", "0s"]).expect_code(1);

    // plumb.toml read half-written, cut before its [[sink]] tables: still a valid configuration, without the sink.
    let full = std::fs::read_to_string(dir.join("plumb.toml")).unwrap();
    let cut = &full[..full.find("[[sink]]").unwrap()];
    write_tree(dir, &[("plumb.toml", cut)]);
    plumb(dir, &["check"]).expect_code(0);
    let run = plumb(dir, &["alerts", "flush", "--wait", "10s"]);
    run.expect_code(1);
    assert!(
        run.stdout.contains(
            "1 pending, 0 dead letters; sink hook failing: no [[sink]] named `hook` in the configuration in force; \
             kept until it is back"
        ),
        "the alert waits for its sink, and says why\n{run}"
    );
    assert!(
        run.elapsed < Duration::from_secs(5),
        "no waiting for a sink that is not configured\n{run}"
    );
    let rows = outbox(&plumb(dir, &["alerts", "outbox", "--format", "json"]));
    assert!(rows.len() == 1 && rows[0].status == "pending", "{rows:#?}");

    // The whole file is back. `plumb alerts test` runs a dispatcher that knows only the sink under test: the
    // other sinks' alerts are left alone.
    write_tree(dir, &[("plumb.toml", &full)]);
    let run = plumb(dir, &["alerts", "test", "other"]);
    run.expect_code(0);
    let rows = outbox(&plumb(dir, &["alerts", "outbox", "--format", "json"]));
    assert!(
        rows.len() == 1 && rows[0].sink == "hook" && rows[0].status == "pending",
        "{rows:#?}"
    );
    // The sink is back: the alert goes out.
    let hook = Receiver::start_on(&addr, vec![Answer::status(200)]);
    let run = plumb(dir, &["alerts", "flush", "--wait", "20s"]);
    run.expect_code(0);
    assert_eq!(
        digest_items(&hook.requests()),
        vec![vec![("firing".into(), "n1,n2,n3".into(), "$.port".into())]]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. kill -9 during outbox delivery
// ---------------------------------------------------------------------------------------------------------------

/// `(Idempotency-Key, body)` of each request, in arrival order.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook receiver that records each request when it has read it, then answers 200 after an adjustable delay.
struct SlowHook {
    seen: Seen,
    delay_ms: Arc<AtomicU64>,
}

impl SlowHook {
    fn start_on(addr: &str, delay: Duration) -> SlowHook {
        let listener = TcpListener::bind(addr).unwrap();
        let seen: Seen = Arc::default();
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let (s2, d2) = (seen.clone(), delay_ms.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let (seen, d) = (s2.clone(), d2.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head_end, len) = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let key = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("idempotency-key")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .push((key, buf[head_end..head_end + len].to_vec()));
                    std::thread::sleep(Duration::from_millis(d.load(Ordering::SeqCst)));
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        SlowHook { seen, delay_ms }
    }

    fn keys(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Start `plumb alerts flush`, wait until the receiver has taken `n` requests in all, and `kill -9` plumb at once
/// (the receiver is still holding back its answer).
fn kill_during_delivery(dir: &Path, hook: &SlowHook, n: usize) {
    let mut child = Killed(
        Command::new(PLUMB)
            .args(["alerts", "flush", "--wait", "60s"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while hook.keys().len() < n {
        if let Ok(Some(s)) = child.0.try_wait() {
            panic!(
                "plumb ended ({s}) before delivery {n} began: {:?}",
                hook.keys()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "delivery {n} did not begin: {:?}",
            hook.keys()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.0.kill().unwrap(); // SIGKILL
    let status = child.0.wait().unwrap();
    assert_eq!(
        status.code(),
        None,
        "killed by a signal, not finished: {status}"
    );
}

#[test]
fn kill_minus_9_during_outbox_delivery_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addr = free_addr();
    project(dir, &format!("http://{addr}/plumb"), "");
    // Three digests queue up in order while nothing listens: firing, then n1 resolved, then n2 resolved.
    plumb(dir, &["audit", "--notify", "--notify-wait", "0s"]).expect_code(1);
    write_tree(dir, &[("live/n1.json", r#"{"port": 443}"#)]);
    plumb(dir, &["audit", "--notify", "--notify-wait", "0s"]).expect_code(1);
    write_tree(dir, &[("live/n2.json", r#"{"port": 443}"#)]);
    plumb(dir, &["audit", "--notify", "--notify-wait", "0s"]).expect_code(1);
    let queued: Vec<String> = outbox(&plumb(dir, &["alerts", "outbox", "--format", "json"]))
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, "pending");
            r.msg_id
        })
        .collect();
    assert_eq!(queued.len(), 3);

    // The sink is up but slow to answer. plumb is killed while the first digest is in flight...
    let hook = SlowHook::start_on(&addr, Duration::from_millis(3000));
    kill_during_delivery(dir, &hook, 1);
    let rows = outbox(&plumb(dir, &["alerts", "outbox", "--format", "json"]));
    assert_eq!(
        rows.iter().map(|r| r.msg_id.clone()).collect::<Vec<_>>(),
        queued,
        "nothing lost: {rows:#?}"
    );
    assert!(rows.iter().all(|r| r.status == "pending"));
    // The attempt cut short is on record: counted, and said to be unfinished.
    assert!(
        rows[0].attempts >= 1
            && rows[0].last_error.starts_with("delivery started at ")
            && rows[0].last_error.contains("outcome not recorded"),
        "{:?}",
        rows[0]
    );
    let out = plumb(dir, &["alerts", "outbox"]);
    println!("{}", out.stdout);
    // ...and again after the first was answered and recorded, while the second is in flight.
    hook.set_delay_ms(500); // under the sink's 5 s timeout
    kill_during_delivery(dir, &hook, 3);
    let rows = outbox(&plumb(dir, &["alerts", "outbox", "--format", "json"]));
    assert_eq!(
        rows.iter().map(|r| r.msg_id.clone()).collect::<Vec<_>>(),
        queued[1..].to_vec(),
        "the first is recorded as sent, the other two wait: {rows:#?}"
    );
    {
        let store = plumb::store::sqlite::SqliteStore::open(&dir.join(".plumb/state.db")).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    // A restart delivers the rest. Each digest arrived, in order; the ones in flight at a kill arrived twice, with
    // the same Idempotency-Key and the same bytes, so a receiver that drops replays by that key sees each once.
    hook.set_delay_ms(0);
    let run = plumb(dir, &["alerts", "flush", "--wait", "30s"]);
    run.expect_code(0);
    let keys = hook.keys();
    assert_eq!(
        keys,
        vec![
            queued[0].clone(),
            queued[0].clone(),
            queued[1].clone(),
            queued[1].clone(),
            queued[2].clone()
        ],
        "{run}"
    );
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen[0].1, seen[1].1, "a redelivery is the same message");
    assert_eq!(seen[2].1, seen[3].1);
    let mut first_seen: Vec<String> = Vec::new();
    for k in keys {
        if !first_seen.contains(&k) {
            first_seen.push(k);
        }
    }
    assert_eq!(first_seen, queued, "every digest, in order");
    let out = plumb(dir, &["alerts", "outbox"]);
    assert!(out.stdout.contains("0 pending, 0 dead letters"), "{out}");
    let store = plumb::store::sqlite::SqliteStore::open(&dir.join(".plumb/state.db")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    // The store still scans correctly afterwards.
    let (run, r) = audit_json(dir, &["--notify"]);
    run.expect_code(1);
    assert_eq!(
        keys_of(&r),
        vec![("n3".to_string(), "$.port".to_string())],
        "{run}"
    );
}

fn keys_of(r: &Value) -> Vec<(String, String)> {
    findings(r)
        .iter()
        .map(|f| {
            (
                f["node"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

impl SlowHook {
    fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    fn digests(&self) -> Items {
        let seen = self.seen.lock().unwrap().clone();
        items_of(
            seen.iter()
                .map(|(_, b)| serde_json::from_slice(b).unwrap())
                .collect(),
        )
    }
}
