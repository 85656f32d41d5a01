//! The daemon (`plumb run`): schedules, scans, alert delivery, reloads that fail small, and the HTTP listener for
//! `/healthz`, `/readyz`, `/metrics` and `POST /scan`.
//!
//! Shape: `run(config_path, options, shutdown)` owns four loops — the scheduler (`sleep_until` the next fire, woken
//! by a reload), the reload watcher (SIGHUP or a changed plumb.toml, `baselines/`, `rules/`), the outbox
//! dispatcher, and the listener. Each scan opens its own store connection (SQLite WAL) and records its results in
//! one transaction. A schedule never overlaps itself. On shutdown no new scan starts, in-flight scans get a short
//! deadline, and the outbox stays as durable as ever.

mod http;
pub mod metrics;

use crate::collect::Collector;
use crate::config::{self, Plan};
use crate::inventory::Selector;
use crate::notify::dispatch::{Dispatcher, Policy};
use crate::scan::{self, ScanOptions};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;
use chrono::Utc;
use metrics::Metrics;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error("invalid configuration:\n{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// Options of `plumb run`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Another store file than `[store] path`.
    pub store: Option<PathBuf>,
    /// Run every schedule's scan once, deliver its alerts, and return.
    pub once: bool,
    /// How long in-flight scans may go on after a shutdown signal.
    pub grace: Option<Duration>,
    /// How often to look for changed files.
    pub watch_interval: Option<Duration>,
}

/// The last reload's outcome.
#[derive(Debug, Clone, Default)]
pub struct ReloadState {
    pub ok: bool,
    pub error: Option<String>,
    /// RFC 3339 of the last good configuration.
    pub last_good_at: String,
    pub last_attempt_at: String,
}

/// State shared by the loops and the listener.
pub struct Shared {
    pub config_path: PathBuf,
    pub store_path: RwLock<PathBuf>,
    pub plan: RwLock<Arc<Plan>>,
    pub metrics: Mutex<Metrics>,
    pub reload: Mutex<ReloadState>,
    /// Schedules (and `adhoc`) with a scan in flight.
    pub running: Mutex<HashSet<String>>,
    /// Wakes the scheduler after a reload.
    pub reloaded: Notify,
    /// Wakes the dispatcher after a scan.
    pub queued: Notify,
    pub ready: std::sync::atomic::AtomicBool,
    pub stopping: std::sync::atomic::AtomicBool,
    store_override: Option<PathBuf>,
    /// The store's `targets` table as the last scan left it, for the next scan's connection
    /// (`SqliteStore::keep`): a warm scan does not read every row again.
    kept: Mutex<crate::store::sqlite::KeptTargets>,
}

impl Shared {
    fn plan(&self) -> Arc<Plan> {
        self.plan
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn store_path(&self) -> PathBuf {
        self.store_path
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_s() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Run the daemon until `shutdown` resolves (or, with `once`, until every schedule ran once).
pub async fn run(
    config_path: &Path,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let plan = config::load(config_path).map_err(|e| DaemonError::Config(e.to_string()))?;
    let store_path = opts
        .store
        .clone()
        .unwrap_or_else(|| plan.store_path.clone());
    // Open once up front: a store that cannot be opened is a start-up error, not a surprise at the first scan.
    drop(SqliteStore::open(&store_path)?);
    let shared = Arc::new(Shared {
        config_path: config_path.to_path_buf(),
        store_path: RwLock::new(store_path),
        plan: RwLock::new(Arc::new(plan)),
        metrics: Mutex::new(Metrics::default()),
        reload: Mutex::new(ReloadState {
            ok: true,
            error: None,
            last_good_at: now_s(),
            last_attempt_at: now_s(),
        }),
        running: Mutex::new(HashSet::new()),
        reloaded: Notify::new(),
        queued: Notify::new(),
        ready: std::sync::atomic::AtomicBool::new(false),
        stopping: std::sync::atomic::AtomicBool::new(false),
        store_override: opts.store.clone(),
        kept: Mutex::default(),
    });
    shared.metrics().reload(true, SystemTime::now());

    if opts.once {
        let plan = shared.plan();
        let mut handles = Vec::new();
        for s in &plan.schedules {
            let sh = shared.clone();
            let (name, sel) = (s.name.clone(), s.nodes.clone());
            handles.push(tokio::spawn(
                async move { scan_once(&sh, &name, sel).await },
            ));
        }
        for h in handles {
            let _ = h.await;
        }
        let mut store = SqliteStore::open(&shared.store_path())?;
        let d = Dispatcher::new(&plan.sinks, Policy::default()).map_err(DaemonError::Other)?;
        let stats = d.drain(&mut store, Duration::from_secs(60)).await?;
        tracing::info!(
            delivered = stats.delivered,
            pending = stats.pending,
            dead = stats.dead,
            "once: alerts delivered"
        );
        return Ok(());
    }

    let listen = shared.plan().listen.clone();
    let listener =
        tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| DaemonError::Listen {
                addr: listen.clone(),
                message: e.to_string(),
            })?;
    let addr = listener
        .local_addr()
        .map_or(listen.clone(), |a| a.to_string());
    tracing::info!(listen = %addr, schedules = shared.plan().schedules.len(), "plumb daemon started");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http::serve(listener, shared.clone(), stop_rx.clone()));
    let scheduler = tokio::spawn(scheduler(shared.clone(), stop_rx.clone()));
    // SIGHUP is caught from here on (registered before the daemon reports ready), not when the task first runs:
    // until then its default action would end the process.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hup = None;
    let watcher = tokio::spawn(watch(
        shared.clone(),
        stop_rx.clone(),
        hup,
        opts.watch_interval.unwrap_or(Duration::from_secs(2)),
    ));
    let dispatcher = tokio::spawn(dispatch_loop(shared.clone(), stop_rx.clone()));
    shared
        .ready
        .store(true, std::sync::atomic::Ordering::SeqCst);

    shutdown.await;
    tracing::info!("shutting down: no new scans; in-flight scans get a short deadline");
    shared
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let grace = opts.grace.unwrap_or(Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + grace;
    while !shared.running.lock().map(|r| r.is_empty()).unwrap_or(true) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "in-flight scans did not finish within {grace:?}; their results are not recorded"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scheduler.abort();
    watcher.abort();
    dispatcher.abort();
    server.abort();
    tracing::info!("plumb daemon stopped");
    Ok(())
}

/// Sleep until the next fire of any schedule (or a reload), fire due schedules, never overlapping one.
async fn scheduler(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last = Utc::now();
    loop {
        let plan = shared.plan();
        let mut next: Vec<(chrono::DateTime<Utc>, usize)> = plan
            .schedules
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.next_fire(last).map(|t| (t, i)))
            .collect();
        next.sort();
        let Some(&(when, _)) = next.first() else {
            tokio::select! {
                _ = shared.reloaded.notified() => continue,
                _ = stop.changed() => return,
            }
        };
        let wait = (when - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.reloaded.notified() => { continue; }
            _ = stop.changed() => return,
        }
        let fired_at = Utc::now();
        for (t, i) in next.iter().filter(|(t, _)| *t <= fired_at) {
            let Some(s) = plan.schedules.get(*i) else {
                continue;
            };
            let _ = t;
            let name = s.name.clone();
            let already = shared
                .running
                .lock()
                .map(|r| r.contains(&name))
                .unwrap_or(false);
            if already {
                tracing::warn!(schedule = %name, "previous run still going: this run is skipped");
                shared.metrics().scan_skipped(&name);
                continue;
            }
            let sh = shared.clone();
            let sel = s.nodes.clone();
            tokio::spawn(async move { scan_once(&sh, &name, sel).await });
        }
        // Fires are computed after the latest one already handled, so none repeats.
        last = next
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t <= fired_at)
            .max()
            .unwrap_or(fired_at)
            .max(last);
    }
}

/// One recorded, notifying scan for a schedule (or `adhoc`). Returns the scan id.
pub async fn scan_once(shared: &Arc<Shared>, schedule: &str, selector: Selector) -> Option<String> {
    {
        let Ok(mut r) = shared.running.lock() else {
            return None;
        };
        if !r.insert(schedule.to_string()) {
            shared.metrics().scan_skipped(schedule);
            return None;
        }
    }
    let result = scan_inner(shared, schedule, selector).await;
    if let Ok(mut r) = shared.running.lock() {
        r.remove(schedule);
    }
    match result {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(schedule = %schedule, error = %e, "scan could not run");
            shared.metrics().scan_failed(schedule);
            let plan = shared.plan();
            if let Ok(mut store) = SqliteStore::open(&shared.store_path())
                && let Ok(d) = Dispatcher::new(&plan.sinks, Policy::default())
            {
                let _ = d.self_alert(
                    &mut store,
                    "",
                    &format!("scheduled scan `{schedule}` could not run: {e}"),
                    Utc::now(),
                );
                shared.queued.notify_one();
            }
            None
        }
    }
}

async fn scan_inner(
    shared: &Arc<Shared>,
    schedule: &str,
    selector: Selector,
) -> Result<String, String> {
    let plan = shared.plan();
    let t0 = std::time::Instant::now();
    let path = shared.store_path();
    let mut store = SqliteStore::open(&path).map_err(|e| e.to_string())?;
    if let Ok(mut kept) = shared.kept.lock() {
        store.keep(std::mem::take(&mut *kept));
    }
    let mut opts = ScanOptions {
        selector,
        ..Default::default()
    };
    let now = now_s();
    let memory = scan::prepare(&plan, &mut store, &mut opts, &now).map_err(|e| e.to_string())?;
    let collector = Arc::new(Collector::new(&plan).map_err(|e| e.to_string())?);
    let mut out = scan::run(plan.clone(), collector, opts)
        .await
        .map_err(|e| e.to_string())?;
    let fetches: Vec<f64> = out.targets.iter().map(|t| t.fetch_seconds).collect();
    // The results are recorded even during shutdown: the scan is done and recording is one short transaction.
    let queued =
        scan::record(&plan, &mut store, &memory, &mut out, true).map_err(|e| e.to_string())?;
    drop(memory);
    if let Ok(mut kept) = shared.kept.lock() {
        *kept = store.take_kept();
    }
    let r = &out.report;
    tracing::info!(
        schedule = %schedule,
        scan_id = %r.scan_id,
        nodes = r.nodes.total,
        unreadable = r.nodes.unreadable,
        findings = r.summary.total,
        alerts = queued,
        seconds = t0.elapsed().as_secs_f64(),
        "scan finished"
    );
    let mut findings = std::collections::BTreeMap::new();
    if let Ok(all) = store.findings(&Default::default()) {
        for rec in all {
            let f = rec.finding;
            *findings
                .entry((
                    f.kind.to_string(),
                    f.severity.to_string(),
                    f.state.as_str().to_string(),
                ))
                .or_insert(0u64) += 1;
        }
    }
    shared.metrics().scan_done(
        schedule,
        t0.elapsed(),
        r.nodes.read,
        r.nodes.unreadable,
        &fetches,
        findings,
    );
    if queued > 0 {
        shared.queued.notify_one();
    }
    Ok(r.scan_id.clone())
}

/// Deliver the outbox after each scan and at least every few seconds; keep the outbox gauges current.
async fn dispatch_loop(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let plan = shared.plan();
        if let Ok(mut store) = SqliteStore::open(&shared.store_path()) {
            if let Ok(d) = Dispatcher::new(&plan.sinks, Policy::default()) {
                match d.tick(&mut store, Utc::now()).await {
                    Ok(s) if s.delivered + s.dead + s.retried > 0 => {
                        tracing::info!(
                            delivered = s.delivered,
                            retried = s.retried,
                            dead = s.dead,
                            "alerts"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "outbox"),
                }
            }
            if let Ok(rows) = store.outbox_list() {
                let pending = rows.iter().filter(|r| r.status == "pending").count();
                shared.metrics().outbox(pending, rows.len() - pending);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shared.queued.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// What the watcher compares: the path, modification time and size of plumb.toml, the inventory, and everything
/// under baselines/ and rules/, hashed. Not the newest time alone: file times are coarse (a clock tick), so an
/// editor's second write can keep the time of its first, and a file moved into place keeps its own older time.
fn config_stamp(config_path: &Path) -> blake3::Hash {
    fn walk(p: &Path, h: &mut blake3::Hasher, depth: usize) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        h.update(p.as_os_str().as_encoded_bytes());
        let nanos = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(&nanos.to_le_bytes());
        h.update(&meta.len().to_le_bytes());
        if meta.is_dir()
            && depth < 4
            && let Ok(rd) = std::fs::read_dir(p)
        {
            let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for e in entries {
                walk(&e, h, depth + 1);
            }
        }
    }
    let root = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut h = blake3::Hasher::new();
    walk(config_path, &mut h, 0);
    for d in ["baselines", "rules", "nodes.csv", "nodes.json"] {
        walk(&root.join(d), &mut h, 0);
    }
    h.finalize()
}

/// How long the configuration files must stay unchanged before the watcher reloads them.
const SETTLE: Duration = Duration::from_millis(300);

/// Reload on SIGHUP or when a file changed. A bad configuration is rejected whole: the daemon keeps its last good
/// one, logs every `file:line`, shows it in `/healthz` and `/metrics`, and raises a self-alert.
async fn watch(
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    #[cfg(unix)] mut hup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] _hup: Option<()>,
    every: Duration,
) {
    let mut seen = config_stamp(&shared.config_path);
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<()>();
        let by_signal = tokio::select! {
            _ = hup_fut => true,
            _ = tokio::time::sleep(every) => false,
            _ = stop.changed() => return,
        };
        let mut now_m = config_stamp(&shared.config_path);
        if !by_signal && now_m == seen {
            continue;
        }
        if !by_signal {
            // Wait until the files are still: an editor's save (truncate, write, write…) or a checkout of several
            // files is taken in when it is done, not half-way (an empty plumb.toml is a valid one).
            for _ in 0..10 {
                tokio::select! {
                    _ = tokio::time::sleep(SETTLE) => {}
                    _ = stop.changed() => return,
                }
                let again = config_stamp(&shared.config_path);
                if again == now_m {
                    break;
                }
                now_m = again;
            }
        }
        seen = now_m;
        reload(
            &shared,
            if by_signal {
                "SIGHUP"
            } else {
                "a changed file"
            },
        );
    }
}

/// Validate the configuration in full and swap it in, or keep the old one.
pub fn reload(shared: &Arc<Shared>, why: &str) {
    let at = now_s();
    match config::load(&shared.config_path) {
        Ok(plan) => {
            let store_path = shared
                .store_override
                .clone()
                .unwrap_or_else(|| plan.store_path.clone());
            if let Ok(mut p) = shared.plan.write() {
                *p = Arc::new(plan);
            }
            if let Ok(mut s) = shared.store_path.write() {
                *s = store_path;
            }
            if let Ok(mut r) = shared.reload.lock() {
                *r = ReloadState {
                    ok: true,
                    error: None,
                    last_good_at: at.clone(),
                    last_attempt_at: at,
                };
            }
            shared.metrics().reload(true, SystemTime::now());
            shared.reloaded.notify_one();
            tracing::info!(trigger = why, "configuration reloaded");
        }
        Err(e) => {
            let text = e.to_string();
            for line in text.lines() {
                tracing::error!(trigger = why, error = %line, "configuration rejected; still running on the last good one");
            }
            if let Ok(mut r) = shared.reload.lock() {
                r.ok = false;
                r.error = Some(text.clone());
                r.last_attempt_at = at;
            }
            shared.metrics().reload(false, SystemTime::now());
            let plan = shared.plan();
            if let Ok(mut store) = SqliteStore::open(&shared.store_path())
                && let Ok(d) = Dispatcher::new(&plan.sinks, Policy::default())
            {
                let first = text.lines().next().unwrap_or_default();
                let _ = d.self_alert(
                    &mut store,
                    "",
                    &format!(
                        "configuration reload rejected, still running on the last good one: {first}"
                    ),
                    Utc::now(),
                );
                shared.queued.notify_one();
            }
        }
    }
}
