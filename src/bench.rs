//! `plumb bench`: plumb against the raw fetch limit at fleet scale, in one run.
//!
//! Starts the simulator with N nodes serving JSON documents of about SIZE bytes with node-specific values (name,
//! address) — DRIFT percent of them drifted — writes a generated plan into a temporary directory (plumb.toml, an
//! inventory, one templated baseline, N rules over the document) with a SQLite store there, then measures:
//!
//! (a) the raw sweep: the HTTP client plumb builds for that config fetching every node, bodies discarded, by as
//!     many workers as a scan has (`concurrency`), each taking the next node (run before and after each warm scan;
//!     the median counts);
//! (b) a cold full scan (`scan::prepare` + `scan::run` + `scan::record`) on an empty store;
//! (c) a warm full scan of the unchanged fleet.
//!
//! Every request opens a new TCP (and TLS) connection: the simulator answers `Connection: close`.
//!
//! Listeners are file descriptors, and this machine allows 20,000 per process: up to [`MAX_LISTENERS`] nodes each
//! get their own listener (their own loopback port); beyond that, nodes share listeners round-robin and are told
//! apart by their path (`/n/<name>`). Every fetch is still its own connection to its node's address, so the
//! client does the same work either way; what is shared is only the accept queue. Documents are generated on each
//! request from one shared template, so the simulator holds no per-node document (its memory stays small next to
//! the scanner's, which `peak_rss_bytes` measures together: one process).

use crate::collect::Collector;
use crate::config::{Plan, SourceSpec};
use crate::scan::{self, ScanOptions};
use crate::sim::{self, Behavior, Generator, NodeSpec};
use crate::store::sqlite::SqliteStore;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// At most this many listeners (file descriptors) for the simulated fleet.
pub const MAX_LISTENERS: usize = 8_000;

/// The first of the listeners' ports (`MAX_LISTENERS` of them; the default ephemeral range starts at 32768).
const LISTENER_PORTS: u16 = 20_000;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub nodes: usize,
    /// Approximate document size in bytes.
    pub size: usize,
    pub tls: bool,
    /// Percent of nodes whose document differs from the baseline.
    pub drift: f64,
    /// How many rules the plan has.
    pub rules: usize,
    /// `[scan] concurrency`, also the raw sweep's bound.
    pub concurrency: usize,
    /// Warm scans, each followed by a raw sweep (medians count).
    pub rounds: usize,
    /// Nodes send an `ETag` and honour `If-None-Match`: warm scans are conditional GETs answered `304`.
    pub etag: bool,
    /// Run the simulator as a child process of this executable (`plumb bench --serve-fleet`), so that the peak RSS
    /// measured is the scanner's alone; `None`: in this process (tests).
    pub simulator_exe: Option<PathBuf>,
}

/// The outcome, as the final JSON line prints it.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub nodes: usize,
    pub size: usize,
    pub raw_nodes_per_s: f64,
    pub cold_nodes_per_s: f64,
    pub warm_nodes_per_s: f64,
    pub cold_ratio: f64,
    pub warm_ratio: f64,
    pub peak_rss_bytes: u64,
    /// `VmRSS` after the simulator started and the plan loaded, before the first scan (same process).
    pub rss_before_scans_bytes: u64,
    /// plumb's own CPU time (user + system, 10 ms ticks), medians: a raw sweep after a warm scan, a warm scan.
    pub raw_cpu_ms: u64,
    pub warm_cpu_ms: u64,
}

/// The middle value (the upper one of an even count); the default of an empty list.
fn median<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(|e| e.to_string())?;
        let p = std::env::temp_dir().join(format!(
            "plumb-bench-{}-{}",
            std::process::id(),
            r.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NAME: &str = "@@NODE_NAME@@";
const ADDR: &str = "@@NODE_ADDR@@";

/// A document of about `size` bytes (compact JSON) with [`NAME`] and [`ADDR`] placeholders: the shape of a
/// gateway config (settings, upstreams, feature flags, routes). A drifted one has two changed values, one of which
/// breaks the `max_connections` rules.
fn document(size: usize, drifted: bool) -> Value {
    let mut doc = json!({
        "node": {"name": NAME, "address": ADDR, "hostname": format!("{NAME}.fleet.example.net")},
        "version": 42,
        "settings": {
            "max_connections": if drifted { 5000 } else { 1000 },
            "timeout_ms": 3000, "tls_min": "1.2", "log_level": "info", "keepalive": true, "workers": 8,
            "buffer_kb": 64, "access_log": "/var/log/gateway/access.log"
        },
        "upstreams": [],
        "features": [],
        "routes": [],
    });
    let mut len = doc.to_string().len();
    let (mut routes, mut ups, mut feats) = (Vec::new(), Vec::new(), Vec::new());
    let mut j = 0usize;
    while len < size {
        let item = if j.is_multiple_of(20) {
            let k = ups.len();
            let v = json!({"name": format!("up-{k}"), "url": format!("http://10.{}.{}.1:8080", k / 250, k % 250),
                           "weight": 10 + k % 5, "healthy": true,
                           "health": {"path": "/healthz", "interval_ms": 10000, "timeout_ms": 2000}});
            ups.push(v);
            ups.last()
        } else if j % 10 == 5 {
            let k = feats.len();
            feats.push(
                json!({"name": format!("feature-{k}"), "enabled": k % 3 != 0, "rollout": k % 100}),
            );
            feats.last()
        } else {
            let k = routes.len();
            let timeout = if drifted && k == 1 {
                9000
            } else {
                500 + (k % 10) * 100
            };
            routes.push(json!({"id": format!("route-{k}"), "path": format!("/svc/{k}/api"),
                               "upstream": format!("up-{}", k % 16), "timeout_ms": timeout, "retries": 2,
                               "methods": ["GET", "POST"], "headers": {"x-route": format!("r{k}")}}));
            routes.last()
        };
        len += item.map_or(0, |v| v.to_string().len() + 1);
        j += 1;
    }
    doc["upstreams"] = Value::Array(ups);
    doc["features"] = Value::Array(feats);
    doc["routes"] = Value::Array(routes);
    doc
}

/// A document split at its placeholders: literal pieces, with a name or an address between them.
struct Template {
    pieces: Vec<Vec<u8>>,
    /// For each gap, whether it takes the address (else the name).
    gaps: Vec<bool>,
    len: usize,
}

impl Template {
    fn new(doc: &Value) -> Template {
        let text = doc.to_string();
        let mut pieces = Vec::new();
        let mut gaps = Vec::new();
        let mut rest = text.as_str();
        loop {
            let n = rest.find(NAME);
            let a = rest.find(ADDR);
            let (at, is_addr, skip) = match (n, a) {
                (Some(n), Some(a)) if a < n => (a, true, ADDR.len()),
                (Some(n), _) => (n, false, NAME.len()),
                (None, Some(a)) => (a, true, ADDR.len()),
                (None, None) => break,
            };
            pieces.push(rest.as_bytes()[..at].to_vec());
            gaps.push(is_addr);
            rest = &rest[at + skip..];
        }
        pieces.push(rest.as_bytes().to_vec());
        Template {
            pieces,
            gaps,
            len: text.len(),
        }
    }

    fn render(&self, name: &str, addr: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len + 64);
        for (i, p) in self.pieces.iter().enumerate() {
            out.extend_from_slice(p);
            if let Some(&is_addr) = self.gaps.get(i) {
                out.extend_from_slice(if is_addr { addr } else { name }.as_bytes());
            }
        }
        out
    }
}

/// `count` rules over the document, cycling through ten assertion kinds (also the rule pack of `benches/core.rs`).
pub fn rules_file(count: usize) -> String {
    let kinds: [&str; 10] = [
        "path = \"$.settings.max_connections\"\nle = 2000",
        "path = \"$.settings.tls_min\"\nin = [\"1.2\", \"1.3\"]",
        "path = \"$.settings.log_level\"\nmatches = '^(debug|info|warn|error)$'",
        "path = \"$.routes[*].timeout_ms\"\nle = 30000",
        "path = \"$.upstreams[*].weight\"\nge = 1",
        "path = \"$.routes[*]\"\ncount_max = 1000000",
        "path = \"$.upstreams[*]\"\nunique = \"name\"",
        "path = \"$.node.name\"\nexists = true",
        "path = \"$.routes[*].path\"\nmatches = '^/'",
        "path = \"$.features[*].name\"\nnot_matches = '^internal-'",
    ];
    let mut s = String::new();
    for i in 0..count {
        s.push_str(&format!(
            "[[rule]]\nid = \"bench-{i}\"\nconfig = \"app\"\nseverity = \"high\"\n{}\n\n",
            kinds[i % kinds.len()]
        ));
    }
    s
}

fn node_name(i: usize) -> String {
    format!("node-{i:06}")
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`, `VmRSS`), in bytes; 0 when it cannot be read.
fn status_bytes(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    status_bytes("self", "VmHWM:")
}

/// Resident set size of this process now (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    status_bytes("self", "VmRSS:")
}

/// CPU time (user + system, every thread, living or ended) a process has used, in clock ticks of 10 ms (Linux's
/// `USER_HZ`): fields 14 and 15 of `/proc/<pid>/stat`. 0 when it cannot be read.
fn cpu_ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces; the fields after it follow its closing parenthesis.
            let rest = s.get(s.rfind(')')? + 1..)?;
            let mut f = rest.split_whitespace().skip(11);
            let user = f.next()?.parse::<u64>().ok()?;
            let system = f.next()?.parse::<u64>().ok()?;
            Some(user + system)
        })
        .unwrap_or(0)
}

/// CPU time used by this process and by the simulator child (if any) over some stretch, in ms.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    own_ms: u64,
    /// `None`: the simulator runs in this process, and `own_ms` includes it.
    sim_ms: Option<u64>,
}

/// Reads the two processes' CPU clocks.
struct CpuMeter {
    sim_pid: Option<String>,
}

impl CpuMeter {
    fn now(&self) -> Cpu {
        Cpu {
            own_ms: cpu_ticks("self") * 10,
            sim_ms: self.sim_pid.as_deref().map(|p| cpu_ticks(p) * 10),
        }
    }

    fn since(&self, start: Cpu) -> Cpu {
        let end = self.now();
        Cpu {
            own_ms: end.own_ms.saturating_sub(start.own_ms),
            sim_ms: end
                .sim_ms
                .zip(start.sim_ms)
                .map(|(e, s)| e.saturating_sub(s)),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sim_ms {
            Some(sim) => write!(f, "CPU: plumb {} ms, simulator {sim} ms", self.own_ms),
            None => write!(f, "CPU: plumb and simulator {} ms", self.own_ms),
        }
    }
}

/// A started fleet.
struct Started {
    fleet: sim::Fleet,
    listen: Vec<SocketAddr>,
    ca_pem: Option<String>,
    doc_len: usize,
    drifted: usize,
}

/// Build and start the simulated fleet of `opts`.
async fn start_fleet(opts: &BenchOptions) -> Result<Started, String> {
    let n = opts.nodes;
    let drifted = |i: usize| -> bool {
        // Spread evenly: node i drifts when the running count of drift crosses an integer.
        let p = opts.drift / 100.0;
        ((i + 1) as f64 * p).floor() > (i as f64 * p).floor()
    };
    let clean = Arc::new(Template::new(&document(opts.size, false)));
    let drift_t = Arc::new(Template::new(&document(opts.size, true)));

    // The fleet: min(N, MAX_LISTENERS) listeners; node i on listener i % L at path /n/<name>.
    let listeners = n.min(MAX_LISTENERS);
    let addrs: Vec<Arc<OnceLock<String>>> =
        (0..listeners).map(|_| Arc::new(OnceLock::new())).collect();
    let mut specs: Vec<NodeSpec> = (0..listeners)
        .map(|k| NodeSpec {
            name: format!("listener-{k}"),
            // Fixed ports below the kernel's ephemeral range: a run right after another finds the last run's
            // ports in TIME_WAIT (the simulator closes first), which a listener may bind again, whereas picking
            // 8,000 free ephemeral ports among them and the client's can fail. A port that is taken falls back to
            // any free one.
            bind: u16::try_from(k)
                .ok()
                .and_then(|k| LISTENER_PORTS.checked_add(k))
                .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            routes: HashMap::new(),
            down: false,
        })
        .collect();
    for i in 0..n {
        let k = i % listeners;
        let name = node_name(i);
        let t = if drifted(i) {
            drift_t.clone()
        } else {
            clean.clone()
        };
        let addr = addrs[k].clone();
        let who = name.clone();
        let make = Generator(Arc::new(move || {
            t.render(&who, addr.get().map(String::as_str).unwrap_or_default())
        }));
        specs[k].routes.insert(
            format!("/n/{name}"),
            Behavior::Generated {
                content_type: "application/json".into(),
                make,
                etag: opts.etag.then(|| format!("\"{name}-1\"")),
            },
        );
    }
    let tls = if opts.tls {
        Some(sim::TlsMaterial::generate(false)?)
    } else {
        None
    };
    let fleet = sim::start(specs, tls.as_ref().map(|m| m.server.clone()))
        .await
        .map_err(|e| format!("cannot start the simulated fleet: {e}"))?;
    let listen: Vec<SocketAddr> = fleet.nodes.iter().map(|l| l.addr).collect();
    for (k, a) in listen.iter().enumerate() {
        let _ = addrs[k].set(a.to_string());
    }
    Ok(Started {
        fleet,
        listen,
        ca_pem: tls.map(|m| m.ca_pem),
        doc_len: clean.len,
        drifted: (0..n).filter(|&i| drifted(i)).count(),
    })
}

/// `plumb bench --serve-fleet`: the simulator alone, for a parent `plumb bench`. Prints `listen ADDR` per listener,
/// `ca BASE64` with TLS, `doc_len N`, `drifted N`, then `ready`; serves until its stdin closes.
pub async fn serve_fleet(opts: &BenchOptions) -> Result<(), String> {
    use base64::Engine as _;
    use std::io::Write as _;
    let started = start_fleet(opts).await?;
    let mut out = String::new();
    for a in &started.listen {
        out.push_str(&format!("listen {a}\n"));
    }
    if let Some(ca) = &started.ca_pem {
        let b64 = base64::engine::general_purpose::STANDARD.encode(ca);
        out.push_str(&format!("ca {b64}\n"));
    }
    out.push_str(&format!(
        "doc_len {}\ndrifted {}\nready\n",
        started.doc_len, started.drifted
    ));
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| e.to_string())?;
    drop(stdout);
    // Until the parent closes our stdin (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
    drop(started.fleet);
    Ok(())
}

/// The simulator child process, as the parent sees it.
struct SimChild {
    child: tokio::process::Child,
    pid: u32,
    listen: Vec<SocketAddr>,
    ca_pem: Option<String>,
    doc_len: usize,
    drifted: usize,
}

impl SimChild {
    async fn spawn(exe: &Path, opts: &BenchOptions) -> Result<SimChild, String> {
        use base64::Engine as _;
        use tokio::io::AsyncBufReadExt as _;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args([
            "bench",
            "--serve-fleet",
            "--nodes",
            &opts.nodes.to_string(),
            "--size",
            &opts.size.to_string(),
            "--drift",
            &opts.drift.to_string(),
        ]);
        if opts.tls {
            cmd.arg("--tls");
        }
        if opts.etag {
            cmd.arg("--etag");
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the simulator process: {e}"))?;
        let pid = child.id().unwrap_or_default();
        let stdout = child
            .stdout
            .take()
            .ok_or("the simulator process has no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let (mut listen, mut ca_pem, mut doc_len, mut drifted) = (Vec::new(), None, 0, 0);
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(|e| format!("simulator process: {e}"))?
                .ok_or("the simulator process ended before it was ready (see its error above)")?;
            let (key, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let bad = || format!("simulator process: unexpected line `{line}`");
            match key {
                "listen" => listen.push(value.parse().map_err(|_| bad())?),
                "ca" => {
                    let pem = base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .map_err(|_| bad())?;
                    ca_pem = Some(String::from_utf8(pem).map_err(|_| bad())?);
                }
                "doc_len" => doc_len = value.parse().map_err(|_| bad())?,
                "drifted" => drifted = value.parse().map_err(|_| bad())?,
                "ready" => break,
                _ => return Err(bad()),
            }
        }
        Ok(SimChild {
            child,
            pid,
            listen,
            ca_pem,
            doc_len,
            drifted,
        })
    }

    /// The child's peak RSS (`VmHWM`), read while it still runs.
    fn peak_rss_bytes(&self) -> u64 {
        status_bytes(&self.pid.to_string(), "VmHWM:")
    }

    /// Close its stdin and wait for it to end.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Run the benchmark; `say` receives the human lines as they come. Must run inside a multi-thread tokio runtime.
pub async fn run(opts: &BenchOptions, say: &dyn Fn(&str)) -> Result<BenchResult, String> {
    if opts.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if !(0.0..=100.0).contains(&opts.drift) {
        return Err("--drift is a percentage, 0 to 100".into());
    }
    let dir = TempDir::new()?;
    let root = dir.0.clone();
    let n = opts.nodes;
    // The simulator runs in a child process (this binary, `plumb bench --serve-fleet`), so that this process's
    // memory is the scanner's alone; it shares the machine's cores as a real fleet's load would not.
    let t = Instant::now();
    let (child, local) = match &opts.simulator_exe {
        Some(exe) => (Some(SimChild::spawn(exe, opts).await?), None),
        None => (None, Some(start_fleet(opts).await?)),
    };
    let (listen, tls_ca, doc_len, drifted_count, where_) = match (&child, &local) {
        (Some(c), _) => (
            c.listen.clone(),
            c.ca_pem.clone(),
            c.doc_len,
            c.drifted,
            format!("simulator process {}", c.pid),
        ),
        (_, Some(l)) => (
            l.listen.clone(),
            l.ca_pem.clone(),
            l.doc_len,
            l.drifted,
            "simulator in this process".to_string(),
        ),
        _ => return Err("no fleet".into()),
    };
    let listeners = listen.len();
    say(&format!(
        "fleet: {n} nodes on {listeners} loopback listeners{}{}, documents of {} bytes ({} drifted), started in {:.2} s \
         ({where_})",
        if opts.tls { " over TLS" } else { "" },
        if opts.etag { " with ETags" } else { "" },
        doc_len,
        drifted_count,
        t.elapsed().as_secs_f64(),
    ));

    // The plan.
    let scheme = if opts.tls { "https" } else { "http" };
    let mut toml = format!(
        "[scan]\nconcurrency = {}\ntimeout = \"60s\"\nmax_body = \"256MiB\"\n\n[store]\npath = \"state.db\"\n\n\
         [inventory]\nfile = \"nodes.csv\"\n\n[[config]]\nname = \"app\"\n\
         source.http = \"{scheme}://${{node.vars.addr}}/n/${{node.name}}\"\nformat = \"json\"\n",
        opts.concurrency
    );
    if let Some(ca) = &tls_ca {
        std::fs::write(root.join("ca.pem"), ca).map_err(|e| e.to_string())?;
        toml.push_str("ca = \"ca.pem\"\n");
    }
    let mut csv = String::with_capacity(n * 40);
    csv.push_str("name,vars.addr\n");
    for i in 0..n {
        csv.push_str(&format!("{},{}\n", node_name(i), listen[i % listeners]));
    }
    let baseline = document(opts.size, false)
        .to_string()
        .replace(NAME, "${node.name}")
        .replace(ADDR, "${node.vars.addr}");
    let files: [(&str, String); 4] = [
        ("plumb.toml", toml),
        ("nodes.csv", csv),
        ("baselines/app/default.json", baseline),
        ("rules/bench.toml", rules_file(opts.rules)),
    ];
    for (rel, content) in &files {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, content).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let plan = crate::config::load(&root.join("plumb.toml"))
        .map(Arc::new)
        .map_err(|e| format!("the generated plan does not load:\n{e}"))?;

    // (a) The raw sweep, first before the scans, then alternating with the warm scans; (b) the cold scan on an
    // empty store on disk; (c) warm scans of the unchanged fleet. Ratios use the medians.
    let meter = CpuMeter {
        sim_pid: child.as_ref().map(|c| c.pid.to_string()),
    };
    let raw_line = |d: (Duration, usize), cpu: Cpu| {
        format!(
            "raw sweep:  {:>9.1} ms  {:>9.0} nodes/s  ({} failed; {cpu})",
            d.0.as_secs_f64() * 1e3,
            n as f64 / d.0.as_secs_f64(),
            d.1
        )
    };
    let c = meter.now();
    let mut raws = vec![raw_sweep(&plan).await?];
    say(&raw_line(raws[0], meter.since(c)));
    // What the simulator, the plan and the runtime hold before any scan: the scanner's own share is the rest.
    let before_scans = rss_bytes();
    say(&format!(
        "RSS before the scans (plan, client, runtime): {:.1} MB",
        before_scans as f64 / 1e6
    ));
    let mut store = SqliteStore::open(&plan.store_path).map_err(|e| e.to_string())?;
    // Built once, before the clocks, as the raw sweep builds its client before its own.
    let collector = Arc::new(Collector::new(&plan).map_err(|e| e.to_string())?);
    let c = meter.now();
    let cold = recorded(&plan, &collector, &mut store).await?;
    say(&format!(
        "{}; {}; peak RSS so far {:.1} MB",
        cold.line("cold scan:", n),
        meter.since(c),
        peak_rss_bytes() as f64 / 1e6
    ));
    let mut warms = Vec::new();
    // The scanner's CPU time in each warm scan and each raw sweep after one (ms): steadier than wall time on a
    // busy machine, since with the simulator on the same cores every CPU millisecond plumb spends is one the
    // fleet cannot.
    let (mut warm_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
    for _ in 0..opts.rounds.max(1) {
        let c = meter.now();
        let warm = recorded(&plan, &collector, &mut store).await?;
        let cpu = meter.since(c);
        say(&format!("{}; {cpu}", warm.line("warm scan:", n)));
        if warm.findings != cold.findings || warm.unchanged != n {
            return Err(format!(
                "the warm scan reported {} findings and {} unchanged targets; the cold one {} findings",
                warm.findings, warm.unchanged, cold.findings
            ));
        }
        warms.push(warm.total);
        warm_cpu.push(cpu.own_ms);
        let c = meter.now();
        let raw = raw_sweep(&plan).await?;
        let cpu = meter.since(c);
        say(&raw_line(raw, cpu));
        raws.push(raw);
        raw_cpu.push(cpu.own_ms);
    }
    if let Some(child) = child {
        let sim_peak = child.peak_rss_bytes();
        child.stop().await;
        say(&format!(
            "simulator process peak RSS: {:.1} MB (not counted below)",
            sim_peak as f64 / 1e6
        ));
    }
    drop(local);
    if raws.iter().any(|r| r.1 > 0) || cold.unreadable > 0 {
        say("warning: some fetches failed; the figures are not comparable");
    }
    let raw = median(raws.iter().map(|r| r.0).collect());
    let warm = median(warms);
    let per_s = |d: Duration| n as f64 / d.as_secs_f64();
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    let result = BenchResult {
        nodes: n,
        size: doc_len,
        raw_nodes_per_s: round(per_s(raw), 0),
        cold_nodes_per_s: round(per_s(cold.total), 0),
        warm_nodes_per_s: round(per_s(warm), 0),
        cold_ratio: round(raw.as_secs_f64() / cold.total.as_secs_f64(), 3),
        warm_ratio: round(raw.as_secs_f64() / warm.as_secs_f64(), 3),
        peak_rss_bytes: peak_rss_bytes(),
        rss_before_scans_bytes: before_scans,
        raw_cpu_ms: median(raw_cpu),
        warm_cpu_ms: median(warm_cpu),
    };
    say(&format!(
        "medians: raw {:.1} ms, warm {:.1} ms; cold / raw rate: {:.3}   warm / raw rate: {:.3}   peak RSS: {:.1} MB",
        raw.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        result.cold_ratio,
        result.warm_ratio,
        result.peak_rss_bytes as f64 / 1e6
    ));
    say(&format!(
        "plumb's CPU, medians: raw sweep {} ms, warm scan {} ms",
        result.raw_cpu_ms, result.warm_cpu_ms
    ));
    Ok(result)
}

/// One recorded scan, timed from `prepare` to the end of the write.
struct Recorded {
    total: Duration,
    prepare: Duration,
    run: Duration,
    record: Duration,
    findings: usize,
    unreadable: usize,
    unchanged: usize,
}

impl Recorded {
    fn line(&self, what: &str, n: usize) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "{what}  {:>9.1} ms  {:>9.0} nodes/s  (prepare {:.1} ms, fetch+evaluate {:.1} ms, record {:.1} ms; \
             {} findings, {} unreadable, {} targets unchanged)",
            ms(self.total),
            n as f64 / self.total.as_secs_f64(),
            ms(self.prepare),
            ms(self.run),
            ms(self.record),
            self.findings,
            self.unreadable,
            self.unchanged
        )
    }
}

async fn recorded(
    plan: &Arc<Plan>,
    collector: &Arc<Collector>,
    store: &mut SqliteStore,
) -> Result<Recorded, String> {
    let t = Instant::now();
    let mut opts = ScanOptions::default();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let memory = scan::prepare(plan, store, &mut opts, &now).map_err(|e| e.to_string())?;
    let prepare = t.elapsed();
    let mut out = scan::run(plan.clone(), collector.clone(), opts)
        .await
        .map_err(|e| e.to_string())?;
    let run = t.elapsed() - prepare;
    let unchanged = out.targets.iter().filter(|t| t.unchanged).count();
    scan::record(plan, store, &memory, &mut out, false).map_err(|e| e.to_string())?;
    let total = t.elapsed();
    Ok(Recorded {
        total,
        prepare,
        run,
        record: total - prepare - run,
        findings: out.report.findings.len(),
        unreadable: out.report.nodes.unreadable,
        unchanged,
    })
}

/// Fetch every node once with the client plumb builds for the config, discarding bodies: (time, failures).
async fn raw_sweep(plan: &Arc<Plan>) -> Result<(Duration, usize), String> {
    let cfg = &plan.configs[0];
    let SourceSpec::Http {
        url,
        tls,
        max_redirects,
        ..
    } = &cfg.source
    else {
        return Err("the bench config is not http".into());
    };
    let client = crate::collect::http_client(tls, *max_redirects).map_err(|e| e.to_string())?;
    let urls: Vec<String> = plan
        .nodes
        .iter()
        .map(|n| url.render(n))
        .collect::<Result<_, _>>()?;
    let urls = Arc::new(urls);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    // As the scan does: `concurrency` workers, each fetching the next node until none is left.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..plan.scan.concurrency.clamp(1, urls.len().max(1)) {
        let (c, urls, next) = (client.clone(), urls.clone(), next.clone());
        set.spawn(async move {
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(u) = urls.get(i) else {
                    break;
                };
                let fetched = async {
                    let mut resp = c.get(u).send().await.ok()?;
                    if !resp.status().is_success() {
                        return None;
                    }
                    let mut len = 0usize;
                    while let Ok(Some(chunk)) = resp.chunk().await {
                        len += chunk.len();
                    }
                    Some(len)
                }
                .await;
                failed += usize::from(fetched.is_none());
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        // A worker that failed counts as one failure more than it could report.
        failed += r.unwrap_or(1);
    }
    Ok((t.elapsed(), failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_size_asked_and_node_values() {
        for size in [2_000, 50_000] {
            let t = Template::new(&document(size, false));
            let body = t.render("node-000001", "127.0.0.1:4000");
            assert!(
                body.len() >= size && body.len() < size + 400,
                "{size}: {}",
                body.len()
            );
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["node"]["name"], "node-000001");
            assert_eq!(v["node"]["address"], "127.0.0.1:4000");
            assert_eq!(v["node"]["hostname"], "node-000001.fleet.example.net");
        }
        let a = Template::new(&document(50_000, true)).render("a", "b");
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["settings"]["max_connections"], 5000);
        assert_eq!(v["routes"][1]["timeout_ms"], 9000);
    }

    #[test]
    fn a_small_bench_runs_and_a_warm_scan_reuses_everything() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let opts = BenchOptions {
            nodes: 40,
            size: 3_000,
            tls: true,
            drift: 10.0,
            rules: 20,
            concurrency: 16,
            rounds: 2,
            etag: false,
            simulator_exe: None,
        };
        let lines = std::sync::Mutex::new(Vec::new());
        let r = rt
            .block_on(run(&opts, &|l| lines.lock().unwrap().push(l.to_string())))
            .unwrap();
        let text = lines.into_inner().unwrap().join("\n");
        assert_eq!(r.nodes, 40);
        assert!(r.raw_nodes_per_s > 0.0 && r.cold_ratio > 0.0 && r.warm_ratio > 0.0);
        // 4 drifted nodes: 2 drifts and 2 max_connections violations each.
        assert!(
            text.contains("cold scan:") && text.contains("16 findings, 0 unreadable"),
            "{text}"
        );
        assert!(text.contains("40 targets unchanged"), "{text}");
        assert!(
            text.contains("(0 failed; CPU: plumb and simulator"),
            "{text}"
        );
        assert!(r.peak_rss_bytes > 0);
    }
}
