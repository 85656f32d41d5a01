//! `plumb.toml`: the raw file (serde, unknown keys rejected) and the validated [`Plan`] built from it.
//!
//! Loading is all-or-nothing: every error found (with `file:line:col`) is returned together, and a plan exists
//! only when plumb.toml, the inventory, `baselines/` and `rules/` are all valid (every JSONPath, regex and CEL
//! expression compiled). Nothing here contacts a node.

use crate::baseline::{self, BaselineSet};
use crate::compare::{CompareOptions, Mask, Mode};
use crate::finding::Severity;
use crate::inventory::{self, Node, Selector};
use crate::normalize::{Decode, Format, Normalizer, line_col};
use crate::template::{Allow, Resolver, SystemResolver, Template};
use crate::units::{parse_duration, parse_size};
use serde::Deserialize;
use serde_json_path::JsonPath;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem in a config file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    /// An error at a known location.
    pub fn at(
        file: &Path,
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// A TOML parse error of `file`, placed at its span.
    pub fn from_toml(file: &Path, text: &str, e: &toml::de::Error) -> Self {
        let (l, c) = e
            .span()
            .map(|s| line_col(text, s.start))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigError::at(file, l, c, e.message().trim_end().to_string())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading; the plan is rejected as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError(pub Vec<ConfigError>);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn default_concurrency() -> usize {
    256
}
fn default_timeout() -> String {
    "10s".into()
}
fn default_retries() -> u32 {
    2
}
fn default_max_body() -> String {
    "16MiB".into()
}
fn default_backoff() -> String {
    "200ms".into()
}
fn default_store_path() -> String {
    ".plumb/state.db".into()
}
fn default_listen() -> String {
    "127.0.0.1:9477".into()
}

/// The raw plumb.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub scan: RawScan,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub daemon: RawDaemon,
    pub inventory: Option<RawInventory>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<Node>,
    #[serde(default, rename = "config")]
    pub configs: Vec<RawConfigDef>,
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<RawSchedule>,
    /// Secrets to replace before anything is stored, compared for display, printed or sent.
    #[serde(default)]
    pub redact: crate::redact::RedactSettings,
    #[serde(default)]
    pub findings: RawFindings,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<crate::notify::sinks::RawSink>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub notify: RawNotify,
}

/// `[notify]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Where a scan's full report can be read; `{scan_id}` is replaced. Linked from every alert.
    pub report_url: Option<String>,
}

/// `[[route]]`: which findings go to which sinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(default)]
    pub kinds: Vec<crate::finding::Kind>,
    pub min_severity: Option<Severity>,
    #[serde(default)]
    pub configs: Vec<String>,
    pub nodes: Option<BTreeMap<String, String>>,
    pub sinks: Vec<String>,
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Default 4h; "0s" sends no reminders.
    pub repeat_interval: Option<String>,
    /// Default true.
    pub send_resolved: Option<bool>,
}

/// `[findings]`: lifecycle settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFindings {
    /// More than this many appear/disappear changes within `flap_window` make a finding flapping (default 4).
    pub flap_changes: Option<usize>,
    /// Default 1h.
    pub flap_window: Option<String>,
    /// A flapping finding clears after this long without a change (default 1h).
    pub flap_quiet: Option<String>,
}

/// `[scan]`: how a scan fetches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// Fetches in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Whole fetch per attempt: connect, headers and body.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Extra attempts on connect errors, timeouts and 5xx.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First retry delay; doubles on each further attempt, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff: String,
    /// Largest body accepted.
    #[serde(default = "default_max_body")]
    pub max_body: String,
}

impl Default for RawScan {
    fn default() -> Self {
        RawScan {
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            retries: default_retries(),
            backoff: default_backoff(),
            max_body: default_max_body(),
        }
    }
}

/// `[store]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default = "default_store_path")]
    pub path: String,
    /// Retention of history.
    pub keep: Option<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: default_store_path(),
            keep: None,
        }
    }
}

/// `[daemon]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// `/healthz`, `/readyz`, `/metrics`, `POST /scan`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token for `POST /scan` (required when `listen` is not a loopback address).
    pub token: Option<String>,
}

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            listen: default_listen(),
            token: None,
        }
    }
}

/// `[inventory]`: nodes from a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    /// `nodes.csv` or `nodes.json`, beside plumb.toml.
    pub file: String,
}

/// `source.http`, `source.file` or `source.command`: exactly one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub http: Option<String>,
    pub file: Option<String>,
    pub command: Option<Vec<String>>,
}

/// `decode = "yaml"` or `decode = ["base64", "yaml"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// A regex mask: `{ pattern = "...", replace = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMask {
    pub pattern: String,
    #[serde(default)]
    pub replace: String,
}

/// Comparison settings shared by `[[config]]` and `baselines/<config>/baseline.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    pub mode: Option<Mode>,
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(default)]
    pub masks: Vec<RawMask>,
    /// Key field tried first on every array of objects.
    pub key: Option<String>,
    /// JSONPath of an array → its key field.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// JSONPath → severity of drift at or under it.
    #[serde(default)]
    pub severity: BTreeMap<String, Severity>,
}

/// `[[config]]`: one named document and how to fetch and compare it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfigDef {
    pub name: String,
    /// Label selector; absent means every node.
    pub nodes: Option<BTreeMap<String, String>>,
    pub source: RawSource,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub format: Format,
    pub extract: Option<String>,
    pub decode: Option<OneOrMany<Decode>>,
    /// Overrides `[scan] timeout` for this config.
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub max_body: Option<String>,
    /// Extra PEM trust roots for https sources.
    pub ca: Option<String>,
    /// PEM client certificate (and `client_key`) for mutual TLS.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Redirects followed at most (default 3).
    pub max_redirects: Option<usize>,
    /// Directories a `file` source may read below (default: anywhere the template points).
    #[serde(default)]
    pub allowed_roots: Vec<String>,
    /// Persistence gate: `"2 scans"` or a duration; findings become alertable only after persisting that long.
    #[serde(rename = "for")]
    pub for_: Option<String>,
    #[serde(flatten)]
    pub compare: RawCompare,
}

/// `[[schedule]]`, validated in full by the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub name: String,
    pub cron: String,
    pub timezone: Option<String>,
    pub nodes: Option<BTreeMap<String, String>>,
    pub jitter: Option<String>,
}

/// Scan settings after validation.
#[derive(Debug, Clone)]
pub struct ScanSettings {
    pub concurrency: usize,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub max_body: u64,
}

/// How a config is fetched.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    Http {
        url: Template,
        headers: Vec<(String, Template)>,
        tls: TlsSettings,
        max_redirects: usize,
    },
    File {
        path: Template,
        allowed_roots: Vec<PathBuf>,
    },
    Command {
        argv: Vec<Template>,
    },
}

impl SourceSpec {
    /// `http`, `file` or `command`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Http { .. } => "http",
            SourceSpec::File { .. } => "file",
            SourceSpec::Command { .. } => "command",
        }
    }
}

/// TLS material for an https source, as PEM bytes read at load time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<Vec<u8>>,
}

/// One validated `[[config]]`.
#[derive(Debug, Clone)]
pub struct ConfigPlan {
    pub name: String,
    pub selector: Selector,
    pub source: SourceSpec,
    pub normalizer: Normalizer,
    pub compare: CompareOptions,
    pub timeout: Duration,
    pub retries: u32,
    pub max_body: u64,
    /// Persistence gate for this config's findings.
    pub gate: Option<crate::lifecycle::Gate>,
}

/// Everything a scan needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plumb.toml this came from.
    pub path: PathBuf,
    /// Its directory: relative paths, `baselines/` and `rules/` are found here.
    pub root: PathBuf,
    pub scan: ScanSettings,
    pub store_path: PathBuf,
    pub listen: String,
    pub nodes: Vec<Node>,
    pub configs: Vec<ConfigPlan>,
    pub baselines: BaselineSet,
    pub rules: crate::rules::RuleSet,
    pub schedules: Vec<crate::schedule::Schedule>,
    /// `[daemon] token`: required for `POST /scan` when listening beyond loopback.
    pub token: Option<String>,
    /// Redaction settings, validated (the key comes from the store).
    pub redact: crate::redact::RedactSettings,
    pub lifecycle: crate::lifecycle::Settings,
    /// `[store] keep`: history older than this is pruned after each recorded scan.
    pub keep: Option<Duration>,
    pub sinks: Vec<crate::notify::sinks::SinkPlan>,
    pub routes: Vec<crate::notify::plan::Route>,
    pub report_url: Option<String>,
    /// What this plan's scans compile and learn, kept for the next scan (see [`Scratch`]).
    pub scratch: Scratch,
}

/// Kept as long as its plan, shared by the plan's scans: the baselines compiled for the matching fast path, with the
/// byte layouts they learned (`classify::fast`), for one redaction key at a time. Its keys are addresses inside the
/// plan, so a clone of the plan starts with an empty one.
#[derive(Debug, Default)]
pub struct Scratch {
    compiled: std::sync::Mutex<Option<([u8; 32], std::sync::Arc<crate::classify::fast::Cache>)>>,
    /// The last scan's input digests, with the target context digests they computed.
    digests: std::sync::Mutex<Option<std::sync::Arc<crate::classify::InputDigests>>>,
}

impl Clone for Scratch {
    fn clone(&self) -> Scratch {
        Scratch::default()
    }
}

impl Scratch {
    /// The input digests for a scan: the kept ones when `fresh` has the same inputs (with the target context
    /// digests they computed), else `fresh`, kept for the next scan.
    pub fn digests(
        &self,
        fresh: crate::classify::InputDigests,
    ) -> std::sync::Arc<crate::classify::InputDigests> {
        let Ok(mut kept) = self.digests.lock() else {
            return std::sync::Arc::new(fresh);
        };
        match &*kept {
            Some(k) if **k == fresh => k.clone(),
            _ => {
                let fresh = std::sync::Arc::new(fresh);
                *kept = Some(fresh.clone());
                fresh
            }
        }
    }

    /// The compiled baselines for a scan whose redactor has id `redactor` (another key starts them anew).
    pub fn compiled(&self, redactor: [u8; 32]) -> std::sync::Arc<crate::classify::fast::Cache> {
        let Ok(mut kept) = self.compiled.lock() else {
            return std::sync::Arc::default();
        };
        match &*kept {
            Some((id, cache)) if *id == redactor => cache.clone(),
            _ => {
                let cache = std::sync::Arc::new(crate::classify::fast::Cache::default());
                *kept = Some((redactor, cache.clone()));
                cache
            }
        }
    }
}

/// The index of `x` in `v` when `x` is one of its elements (by address), else `None`.
fn index_in<T>(v: &[T], x: &T) -> Option<usize> {
    let size = std::mem::size_of::<T>().max(1);
    let offset = std::ptr::from_ref(x)
        .addr()
        .checked_sub(v.as_ptr().addr())?;
    let i = offset / size;
    v.get(i).filter(|y| std::ptr::eq(*y, x)).map(|_| i)
}

impl Plan {
    /// The place of (node, config) among this plan's targets (node-major), when both are this plan's own (by
    /// address; a copy of either is not): a key for what is kept per target ([`Scratch`]).
    pub fn target_index(&self, node: &Node, cfg: &ConfigPlan) -> Option<usize> {
        let n = index_in(&self.nodes, node)?;
        let c = index_in(&self.configs, cfg)?;
        Some(n * self.configs.len() + c)
    }

    /// The configs node `node` carries.
    pub fn configs_for<'a>(&'a self, node: &'a Node) -> impl Iterator<Item = &'a ConfigPlan> + 'a {
        self.configs
            .iter()
            .filter(move |c| c.selector.matches(node))
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A config by name.
    pub fn config(&self, name: &str) -> Option<&ConfigPlan> {
        self.configs.iter().find(|c| c.name == name)
    }
}

/// Load and validate `plumb.toml` at `path`, its inventory, `baselines/` and `rules/`.
pub fn load(path: &Path) -> Result<Plan, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        LoadError(vec![ConfigError::at(
            path,
            None,
            None,
            format!("cannot read: {e}"),
        )])
    })?;
    let root = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let resolver = SystemResolver { base: &root };
    load_str(path, &text, &root, &resolver)
}

/// Load from text already read; `root` is where relative paths point.
pub fn load_str(path: &Path, text: &str, root: &Path, r: &dyn Resolver) -> Result<Plan, LoadError> {
    let raw: RawConfig = toml::from_str(text)
        .map_err(|e| LoadError(vec![ConfigError::from_toml(path, text, &e)]))?;
    let mut errs = Vec::new();
    // Locate a needle in the raw text for errors that serde cannot place.
    let locate = |needle: &str| -> (Option<usize>, Option<usize>) {
        text.find(needle)
            .map(|off| line_col(text, off))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)))
    };
    let mut err = |needle: &str, msg: String| {
        let (l, c) = locate(needle);
        errs.push(ConfigError::at(path, l, c, msg));
    };

    let scan = ScanSettings {
        concurrency: raw.scan.concurrency.max(1),
        timeout: parse_duration(&raw.scan.timeout).unwrap_or_else(|e| {
            err("timeout", format!("[scan] timeout: {e}"));
            Duration::from_secs(10)
        }),
        retries: raw.scan.retries,
        backoff: parse_duration(&raw.scan.backoff).unwrap_or_else(|e| {
            err("backoff", format!("[scan] backoff: {e}"));
            Duration::from_millis(200)
        }),
        max_body: parse_size(&raw.scan.max_body).unwrap_or_else(|e| {
            err("max_body", format!("[scan] max_body: {e}"));
            16 << 20
        }),
    };
    if raw.scan.concurrency == 0 {
        err(
            "concurrency",
            "[scan] concurrency must be at least 1".into(),
        );
    }
    let keep = match &raw.store.keep {
        None => None,
        Some(k) => match parse_duration(k) {
            Ok(d) => Some(d),
            Err(e) => {
                err("keep", format!("[store] keep: {e}"));
                None
            }
        },
    };
    let mut lifecycle = crate::lifecycle::Settings::default();
    if let Some(n) = raw.findings.flap_changes {
        lifecycle.flap_changes = n;
    }
    for (val, slot, name) in [
        (
            &raw.findings.flap_window,
            &mut lifecycle.flap_window,
            "flap_window",
        ),
        (
            &raw.findings.flap_quiet,
            &mut lifecycle.flap_quiet,
            "flap_quiet",
        ),
    ] {
        if let Some(v) = val {
            match parse_duration(v).map(chrono::Duration::from_std) {
                Ok(Ok(d)) => *slot = d,
                _ => err(name, format!("[findings] {name}: `{v}` is not a duration")),
            }
        }
    }
    if let Err(bad) = crate::redact::Redactor::new([0; 32], &raw.redact) {
        for (pattern, message) in bad {
            err(&pattern, format!("[redact] `{pattern}`: {message}"));
        }
    }

    // Nodes: inline and from the inventory file.
    let mut nodes = raw.nodes;
    if let Some(inv) = &raw.inventory {
        let p = root.join(&inv.file);
        match std::fs::read_to_string(&p) {
            Err(e) => err(&inv.file, format!("[inventory] file {}: {e}", p.display())),
            Ok(body) => {
                let parsed = if inv.file.ends_with(".json") {
                    serde_json::from_str::<Vec<Node>>(&body).map_err(|e| {
                        ConfigError::at(
                            &p,
                            Some(e.line()),
                            Some(e.column()),
                            strip_at(&e.to_string()),
                        )
                    })
                } else if inv.file.ends_with(".csv") {
                    inventory::parse_csv(&body)
                        .map_err(|(l, m)| ConfigError::at(&p, Some(l), None, m))
                } else {
                    Err(ConfigError::at(
                        &p,
                        None,
                        None,
                        "inventory file must end in .csv or .json",
                    ))
                };
                match parsed {
                    Ok(more) => nodes.extend(more),
                    Err(e) => errs.push(e),
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for n in &nodes {
        if !inventory::valid_name(&n.name) {
            errs.push(ConfigError::at(
                path,
                locate(&n.name).0,
                None,
                format!(
                    "node name `{}` must be letters, digits and . _ - : @ only",
                    n.name
                ),
            ));
        } else if !seen.insert(n.name.clone()) {
            let needle = format!("\"{}\"", n.name);
            let (l, c) = text
                .rfind(&needle)
                .map(|o| line_col(text, o))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            errs.push(ConfigError::at(
                path,
                l,
                c,
                format!("node `{}` is defined twice", n.name),
            ));
        }
    }

    // Configs.
    let mut configs = Vec::new();
    let mut config_names = BTreeSet::new();
    for c in raw.configs {
        let needle = format!("\"{}\"", c.name);
        let mut cerr = |m: String| {
            let (l, col) = locate(&needle);
            errs.push(ConfigError::at(
                path,
                l,
                col,
                format!("config `{}`: {m}", c.name),
            ));
        };
        if !inventory::valid_name(&c.name) {
            cerr("the name must be letters, digits and . _ - : @ only".into());
            continue;
        }
        if !config_names.insert(c.name.clone()) {
            cerr("defined twice".into());
            continue;
        }
        match build_config(c, &scan, root, r) {
            Ok(cp) => configs.push(cp),
            Err(msgs) => {
                for (needle2, m) in msgs {
                    let (l, col) = needle2.as_deref().map_or((None, None), &locate);
                    let (l, col) = if l.is_some() {
                        (l, col)
                    } else {
                        locate(&needle)
                    };
                    errs.push(ConfigError::at(path, l, col, m));
                }
            }
        }
    }

    // Every selected node must have what the templates need.
    for c in &configs {
        for n in nodes.iter().filter(|n| c.selector.matches(n)) {
            if let Err(m) = check_templates(&c.source, n) {
                let (l, col) = locate(&format!("\"{}\"", c.name));
                errs.push(ConfigError::at(
                    path,
                    l,
                    col,
                    format!("config `{}`: {m}", c.name),
                ));
            }
        }
    }

    // Schedules: names unique, cron expressions, time zones and jitter valid.
    let mut sched_names = BTreeSet::new();
    let mut schedules = Vec::new();
    for s in &raw.schedules {
        let (l, col) = locate(&format!("\"{}\"", s.name));
        if !sched_names.insert(s.name.clone()) {
            errs.push(ConfigError::at(
                path,
                l,
                col,
                format!("schedule `{}` is defined twice", s.name),
            ));
            continue;
        }
        let jitter = match s.jitter.as_deref().map(parse_duration).transpose() {
            Ok(j) => j,
            Err(m) => {
                errs.push(ConfigError::at(
                    path,
                    l,
                    col,
                    format!("schedule `{}`: jitter: {m}", s.name),
                ));
                continue;
            }
        };
        match crate::schedule::Schedule::new(
            &s.name,
            &s.cron,
            s.timezone.as_deref(),
            Selector(s.nodes.clone().unwrap_or_default()),
            jitter,
        ) {
            Ok(sc) => schedules.push(sc),
            Err(m) => {
                let (l2, c2) = locate(&s.cron);
                errs.push(ConfigError::at(
                    path,
                    l2.or(l),
                    c2.or(col),
                    format!("schedule `{}`: {m}", s.name),
                ));
            }
        }
    }
    let token = match &raw.daemon.token {
        None => None,
        Some(t) => match Template::parse(t, Allow::Secrets, r) {
            Ok(t) => Some(t.render_plain()),
            Err(m) => {
                errs.push(ConfigError::at(
                    path,
                    locate("token").0,
                    None,
                    format!("[daemon] token: {m}"),
                ));
                None
            }
        },
    };
    match raw.daemon.listen.parse::<std::net::SocketAddr>() {
        Err(_) => errs.push(ConfigError::at(
            path,
            locate("listen").0,
            None,
            format!(
                "[daemon] listen `{}` is not host:port (an IP address and a port)",
                raw.daemon.listen
            ),
        )),
        Ok(a) if !a.ip().is_loopback() && token.is_none() => errs.push(ConfigError::at(
            path,
            locate("listen").0,
            None,
            "[daemon] listening beyond loopback needs `token` (a bearer token for POST /scan)"
                .to_string(),
        )),
        Ok(_) => {}
    }

    // Sinks and routes.
    let at = |needle: &str, msg: String| {
        let (l, c) = locate(needle);
        ConfigError::at(path, l, c, msg)
    };
    let mut sinks = Vec::new();
    for raw_sink in &raw.sinks {
        match build_sink(raw_sink, root, r) {
            Ok(sp) => {
                if sinks
                    .iter()
                    .any(|x: &crate::notify::sinks::SinkPlan| x.name == sp.name)
                {
                    errs.push(at(
                        &format!("\"{}\"", sp.name),
                        format!("sink `{}` is defined twice", sp.name),
                    ));
                }
                sinks.push(sp);
            }
            Err(m) => errs.push(at(
                &format!("\"{}\"", raw_sink.name),
                format!("sink `{}`: {m}", raw_sink.name),
            )),
        }
    }
    let mut routes = Vec::new();
    for (i, rr) in raw.routes.iter().enumerate() {
        let name = rr
            .name
            .clone()
            .unwrap_or_else(|| format!("route-{}", i + 1));
        let needle = rr
            .sinks
            .first()
            .map(|s| format!("\"{s}\""))
            .unwrap_or_else(|| "[[route]]".into());
        if rr.sinks.is_empty() {
            errs.push(at(
                "[[route]]",
                format!("route `{name}`: needs at least one sink"),
            ));
        }
        for s in &rr.sinks {
            if !raw.sinks.iter().any(|x| &x.name == s) {
                errs.push(at(
                    &format!("\"{s}\""),
                    format!("route `{name}`: no [[sink]] named `{s}`"),
                ));
            }
        }
        for g in &rr.group_by {
            if !["config", "node", "kind", "severity", "rule"].contains(&g.as_str()) {
                errs.push(at(&format!("\"{g}\""), format!("route `{name}`: group_by `{g}` is not one of config, node, kind, severity, rule")));
            }
        }
        let repeat = match rr.repeat_interval.as_deref().unwrap_or("4h") {
            "0" | "0s" => None,
            v => match parse_duration(v) {
                Ok(d) => Some(d),
                Err(m) => {
                    errs.push(at(v, format!("route `{name}`: repeat_interval: {m}")));
                    None
                }
            },
        };
        if routes
            .iter()
            .any(|x: &crate::notify::plan::Route| x.name == name)
        {
            errs.push(at(&needle, format!("route `{name}` is defined twice")));
        }
        routes.push(crate::notify::plan::Route {
            name,
            kinds: rr.kinds.clone(),
            min_severity: rr.min_severity.unwrap_or(Severity::Info),
            configs: rr.configs.clone(),
            nodes: Selector(rr.nodes.clone().unwrap_or_default()),
            sinks: rr.sinks.clone(),
            group_by: rr.group_by.clone(),
            repeat_interval: repeat,
            send_resolved: rr.send_resolved.unwrap_or(true),
        });
    }
    let report_url = match &raw.notify.report_url {
        None => None,
        Some(u) => match Template::parse(u, Allow::Secrets, r) {
            Ok(t) => Some(t.render_plain()),
            Err(m) => {
                errs.push(at(u, format!("[notify] report_url: {m}")));
                None
            }
        },
    };

    let shapes: Vec<(String, bool)> = configs
        .iter()
        .map(|c| (c.name.clone(), !c.normalizer.output_is_text()))
        .collect();
    let rules = match crate::rules::load_dir(&root.join("rules"), &shapes) {
        Ok(r) => Some(r),
        Err(mut e) => {
            errs.append(&mut e);
            None
        }
    };
    let baselines = match baseline::load_dir(&root.join("baselines"), &configs, &nodes) {
        Ok(b) => Some(b),
        Err(mut e) => {
            errs.append(&mut e);
            None
        }
    };

    if !errs.is_empty() {
        return Err(LoadError(errs));
    }
    let mut plan = Plan {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
        scan,
        store_path: root.join(&raw.store.path),
        listen: raw.daemon.listen,
        nodes,
        configs,
        baselines: baselines.unwrap_or_default(),
        rules: rules.unwrap_or_default(),
        schedules,
        token,
        redact: raw.redact,
        lifecycle,
        keep,
        sinks,
        routes,
        report_url,
        scratch: Scratch::default(),
    };
    // baseline.toml settings extend the config's own.
    for c in &mut plan.configs {
        if let Some(extra) = plan.baselines.settings.get(&c.name) {
            extra.apply(&mut c.compare);
        }
    }
    Ok(plan)
}

fn strip_at(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

type Located = Vec<(Option<String>, String)>;

fn build_config(
    c: RawConfigDef,
    scan: &ScanSettings,
    root: &Path,
    r: &dyn Resolver,
) -> Result<ConfigPlan, Located> {
    let mut errs: Located = Vec::new();
    let name = c.name.clone();
    let mut e = |needle: &str, m: String| {
        errs.push((Some(needle.to_string()), format!("config `{name}`: {m}")))
    };
    let tmpl = |s: &str, allow: Allow, what: &str, e: &mut dyn FnMut(&str, String)| {
        Template::parse(s, allow, r)
            .map_err(|m| e(s, format!("{what}: {m}")))
            .ok()
    };

    let n_sources = [
        c.source.http.is_some(),
        c.source.file.is_some(),
        c.source.command.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if n_sources != 1 {
        e(
            "source",
            format!(
                "needs exactly one of source.http, source.file, source.command (found {n_sources})"
            ),
        );
    }
    let read_pem = |p: &str, e: &mut dyn FnMut(&str, String)| -> Option<Vec<u8>> {
        let full = root.join(p);
        std::fs::read(&full)
            .map_err(|err| e(p, format!("cannot read {}: {err}", full.display())))
            .ok()
    };
    let source = if let Some(url) = &c.source.http {
        let url_t = tmpl(url, Allow::All, "source.http", &mut e);
        if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("${")) {
            e(
                url,
                format!("source.http `{url}` must start with http:// or https://"),
            );
        }
        let mut headers = Vec::new();
        for (k, v) in &c.headers {
            if let Some(t) = tmpl(v, Allow::All, &format!("header {k}"), &mut e) {
                headers.push((k.clone(), t));
            }
        }
        let ca = c.ca.as_deref().and_then(|p| read_pem(p, &mut e));
        let identity = match (&c.client_cert, &c.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read_pem(cert, &mut e).unwrap_or_default();
                pem.push(b'\n');
                pem.extend(read_pem(key, &mut e).unwrap_or_default());
                Some(pem)
            }
            (Some(cert), None) => read_pem(cert, &mut e),
            (None, Some(k)) => {
                e(k, "client_key needs client_cert".into());
                None
            }
            (None, None) => None,
        };
        url_t.map(|url| SourceSpec::Http {
            url,
            headers,
            tls: TlsSettings { ca, identity },
            max_redirects: c.max_redirects.unwrap_or(3),
        })
    } else if let Some(p) = &c.source.file {
        tmpl(p, Allow::All, "source.file", &mut e).map(|path| SourceSpec::File {
            path,
            allowed_roots: c.allowed_roots.iter().map(|r| root.join(r)).collect(),
        })
    } else if let Some(argv) = &c.source.command {
        if argv.is_empty() {
            e(
                "command",
                "source.command needs at least the program".into(),
            );
        }
        let ts: Vec<Option<Template>> = argv
            .iter()
            .map(|a| tmpl(a, Allow::All, "source.command", &mut e))
            .collect();
        ts.into_iter()
            .collect::<Option<Vec<_>>>()
            .map(|argv| SourceSpec::Command { argv })
    } else {
        None
    };
    if !c.headers.is_empty() && c.source.http.is_none() {
        e("headers", "headers only apply to source.http".into());
    }

    let extract = c.extract.as_ref().and_then(|x| match JsonPath::parse(x) {
        Ok(p) => Some((x.clone(), p)),
        Err(err) => {
            e(x, format!("extract `{x}` is not a valid JSONPath: {err}"));
            None
        }
    });
    let decode = match c.decode {
        None => Vec::new(),
        Some(OneOrMany::One(d)) => vec![d],
        Some(OneOrMany::Many(d)) => d,
    };
    if (extract.is_some() || !decode.is_empty()) && c.format == Format::Text {
        e(
            "extract",
            "extract and decode need a structured format, not text".into(),
        );
    }
    let compare = compile_compare(&c.compare, &mut e);
    let dur =
        |s: &Option<String>, dflt: Duration, what: &str, e: &mut dyn FnMut(&str, String)| match s {
            None => dflt,
            Some(s) => parse_duration(s).unwrap_or_else(|m| {
                e(s, format!("{what}: {m}"));
                dflt
            }),
        };
    let timeout = dur(&c.timeout, scan.timeout, "timeout", &mut e);
    let gate = c
        .for_
        .as_ref()
        .and_then(|g| match crate::lifecycle::Gate::parse(g) {
            Ok(g) => Some(g),
            Err(m) => {
                e(g, format!("for: {m}"));
                None
            }
        });
    let max_body = match &c.max_body {
        None => scan.max_body,
        Some(s) => parse_size(s).unwrap_or_else(|m| {
            e(s, format!("max_body: {m}"));
            scan.max_body
        }),
    };
    match (source, errs.is_empty()) {
        (Some(source), true) => Ok(ConfigPlan {
            name: c.name,
            selector: Selector(c.nodes.unwrap_or_default()),
            source,
            normalizer: Normalizer {
                format: c.format,
                extract,
                decode,
            },
            compare,
            timeout,
            retries: c.retries.unwrap_or(scan.retries),
            max_body,
            gate,
        }),
        _ => Err(errs),
    }
}

/// Compile shared comparison settings, reporting bad JSONPaths and regexes through `e`.
pub fn compile_compare(raw: &RawCompare, e: &mut dyn FnMut(&str, String)) -> CompareOptions {
    let mut out = CompareOptions {
        key_fields: CompareOptions::default_key_fields(),
        ..Default::default()
    };
    PartialCompare::compile(raw, e).apply(&mut out);
    out
}

/// Comparison settings from one file, to be layered onto a config's.
#[derive(Debug, Clone, Default)]
pub struct PartialCompare {
    pub mode: Option<Mode>,
    pub ignore: Vec<JsonPath>,
    pub masks: Vec<Mask>,
    pub key: Option<String>,
    pub keys: Vec<(JsonPath, String)>,
    pub severities: Vec<(JsonPath, Severity)>,
}

impl PartialCompare {
    /// Compile, reporting each bad JSONPath or regex through `e(needle, message)`.
    pub fn compile(raw: &RawCompare, e: &mut dyn FnMut(&str, String)) -> PartialCompare {
        let mut jp = |s: &str, what: &str| match JsonPath::parse(s) {
            Ok(p) => Some(p),
            Err(err) => {
                e(s, format!("{what} `{s}` is not a valid JSONPath: {err}"));
                None
            }
        };
        let ignore = raw.ignore.iter().filter_map(|s| jp(s, "ignore")).collect();
        let keys = raw
            .keys
            .iter()
            .filter_map(|(p, k)| jp(p, "keys").map(|j| (j, k.clone())))
            .collect();
        let severities = raw
            .severity
            .iter()
            .filter_map(|(p, s)| jp(p, "severity").map(|j| (j, *s)))
            .collect();
        let masks = raw
            .masks
            .iter()
            .filter_map(|m| match regex::Regex::new(&m.pattern) {
                Ok(pattern) => Some(Mask {
                    pattern,
                    replacement: m.replace.clone(),
                }),
                Err(err) => {
                    e(
                        &m.pattern,
                        format!("mask `{}` is not a valid regex: {err}", m.pattern),
                    );
                    None
                }
            })
            .collect();
        PartialCompare {
            mode: raw.mode,
            ignore,
            masks,
            key: raw.key.clone(),
            keys,
            severities,
        }
    }

    /// Layer these settings onto `opts`: mode replaces, lists extend, `key` is tried first.
    pub fn apply(&self, opts: &mut CompareOptions) {
        if let Some(m) = self.mode {
            opts.mode = m;
        }
        opts.ignore.extend(self.ignore.iter().cloned());
        opts.masks.extend(self.masks.iter().cloned());
        opts.keys.extend(self.keys.iter().cloned());
        opts.severities.extend(self.severities.iter().cloned());
        if let Some(k) = &self.key {
            opts.key_fields.retain(|f| f != k);
            opts.key_fields.insert(0, k.clone());
        }
    }
}

/// Validate one `[[sink]]`: the keys its kind needs, secrets resolved, the CA read.
fn build_sink(
    raw: &crate::notify::sinks::RawSink,
    root: &Path,
    r: &dyn Resolver,
) -> Result<crate::notify::sinks::SinkPlan, String> {
    use crate::notify::sinks::{SinkKind, SinkPlan, default_url, required};
    if !inventory::valid_name(&raw.name) {
        return Err("the name must be letters, digits and . _ - : @ only".into());
    }
    let secret = |v: &Option<String>, what: &str| -> Result<Option<String>, String> {
        v.as_deref()
            .map(|s| {
                Template::parse(s, Allow::Secrets, r)
                    .map(|t| t.render_plain())
                    .map_err(|m| format!("{what}: {m}"))
            })
            .transpose()
    };
    let url = secret(&raw.url, "url")?.or_else(|| default_url(raw.kind).map(str::to_string));
    let token = secret(&raw.token, "token")?;
    let routing_key = secret(&raw.routing_key, "routing_key")?;
    for key in required(raw.kind) {
        let present = match *key {
            "url" => url.is_some(),
            "from" => raw.from.is_some(),
            "to" => !raw.to.is_empty(),
            "repo" => raw.repo.is_some(),
            "project" => raw.project.is_some(),
            "token" => token.is_some(),
            "routing_key" => routing_key.is_some(),
            _ => true,
        };
        if !present {
            return Err(format!("`{}` sinks need `{key}`", raw.kind.as_str()));
        }
    }
    let url = url.unwrap_or_default();
    match raw.kind {
        SinkKind::Email => {
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return Err(
                    "an email sink's url is smtp://host[:port] (STARTTLS) or smtps://host[:port]"
                        .into(),
                );
            }
        }
        _ => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!(
                    "url must be http:// or https:// (got a {}-character value)",
                    url.len()
                ));
            }
        }
    }
    let ca = match &raw.ca {
        None => None,
        Some(p) => Some(std::fs::read(root.join(p)).map_err(|e| format!("ca {p}: {e}"))?),
    };
    let timeout = match &raw.timeout {
        None => Duration::from_secs(10),
        Some(t) => parse_duration(t).map_err(|e| format!("timeout: {e}"))?,
    };
    Ok(SinkPlan {
        name: raw.name.clone(),
        kind: raw.kind,
        url,
        secret: secret(&raw.secret, "secret")?,
        username: secret(&raw.username, "username")?,
        password: secret(&raw.password, "password")?,
        token,
        user: secret(&raw.user, "user")?,
        from: raw.from.clone(),
        to: raw.to.clone(),
        ca,
        repo: raw.repo.clone(),
        project: raw.project.clone(),
        issue_type: raw.issue_type.clone().unwrap_or_else(|| "Task".into()),
        labels: raw.labels.clone(),
        close_transition: raw
            .close_transition
            .clone()
            .unwrap_or_else(|| "Done".into()),
        reopen_transition: raw
            .reopen_transition
            .clone()
            .unwrap_or_else(|| "Reopen".into()),
        routing_key,
        timeout,
    })
}

/// Render every template of a source for `node`, so a missing var is a load error, not a scan surprise.
fn check_templates(s: &SourceSpec, node: &Node) -> Result<(), String> {
    match s {
        SourceSpec::Http { url, headers, .. } => {
            url.render(node)?;
            for (_, h) in headers {
                h.render(node)?;
            }
        }
        SourceSpec::File { path, .. } => {
            path.render(node)?;
        }
        SourceSpec::Command { argv } => {
            for a in argv {
                a.render(node)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plans_scratch_keeps_compiled_baselines_for_one_key_at_a_time() {
        use std::sync::Arc;
        let s = Scratch::default();
        let a = s.compiled([1; 32]);
        assert!(Arc::ptr_eq(&a, &s.compiled([1; 32])), "the next scan's");
        let b = s.compiled([2; 32]);
        assert!(!Arc::ptr_eq(&a, &b), "another key starts anew");
        assert!(
            !Arc::ptr_eq(&b, &s.clone().compiled([2; 32])),
            "a clone starts empty"
        );
    }
    use crate::template::tests::MapResolver;

    fn load_text(text: &str) -> Result<Plan, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let r = MapResolver([("TOKEN".to_string(), "t0k".to_string())].into());
        load_str(&dir.path().join("plumb.toml"), text, dir.path(), &r)
    }

    #[test]
    fn a_full_config_loads() {
        let plan = load_text(
            r#"
[scan]
concurrency = 8
timeout = "2s"
retries = 1
max_body = "1MiB"

[[node]]
name = "edge-1"
labels = { role = "edge" }
vars = { host = "127.0.0.1:1" }

[[node]]
name = "db-1"
labels = { role = "db" }

[[config]]
name = "caddy"
nodes = { role = "edge" }
source.http = "http://${node.vars.host}/config/"
headers = { Authorization = "Bearer ${env:TOKEN}" }
format = "json"
ignore = ["$.apps.http.servers.*.metrics"]
mode = "subset"
masks = [{ pattern = "\\d+s", replace = "Ns" }]
keys = { "$.upstreams" = "url" }

[[config]]
name = "sysctl"
source.command = ["cat", "/etc/sysctl.d/${node.name}.conf"]
format = "kv"
"#,
        )
        .unwrap();
        assert_eq!(plan.scan.concurrency, 8);
        assert_eq!(plan.scan.timeout, Duration::from_secs(2));
        assert_eq!(plan.scan.max_body, 1 << 20);
        assert_eq!(plan.nodes.len(), 2);
        let caddy = plan.config("caddy").unwrap();
        assert_eq!(caddy.compare.mode, Mode::Subset);
        assert_eq!(caddy.compare.ignore.len(), 1);
        let edge = plan.node("edge-1").unwrap();
        assert_eq!(plan.configs_for(edge).count(), 2);
        assert_eq!(plan.configs_for(plan.node("db-1").unwrap()).count(), 1);
        let SourceSpec::Http { headers, .. } = &caddy.source else {
            panic!("http source expected");
        };
        assert_eq!(headers[0].1.render(edge).unwrap(), "Bearer t0k");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let e = load_text("[scan]\nconcurrency = 4\ntimeot = \"1s\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("plumb.toml:3:1: unknown field `timeot`"), "{s}");
        let e = load_text("[[node]]\nname = \"a\"\ncolor = \"red\"\n").unwrap_err();
        assert!(e.to_string().contains(":3:1: unknown field `color`"), "{e}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let e = load_text(
            r#"[scan]
timeout = "soon"

[[node]]
name = "a"

[[node]]
name = "a"

[[config]]
name = "c"
source.http = "http://${node.vars.host}/"
format = "json"
ignore = ["$.[bad"]
"#,
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("plumb.toml:2:1: [scan] timeout: `soon` is not a duration"),
            "{s}"
        );
        assert!(
            s.contains("plumb.toml:8:8: node `a` is defined twice"),
            "{s}"
        );
        assert!(
            s.contains(":14:") && s.contains("ignore `$.[bad` is not a valid JSONPath"),
            "{s}"
        );
        let e = load_text("[[node]]\nname = \"a\"\n[[config]]\nname = \"c\"\nsource.http = \"http://${node.vars.host}/\"\nformat = \"json\"\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(":4:8: config `c`: node `a` has no var `host`"),
            "{e}"
        );
    }

    #[test]
    fn missing_env_is_an_error_naming_the_line() {
        let e = load_text(
            "[[config]]\nname = \"c\"\nsource.http = \"http://x/\"\nheaders = { A = \"${env:MISSING}\" }\nformat = \"json\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(":4:") && e.to_string().contains("`MISSING` is not set"),
            "{e}"
        );
    }

    #[test]
    fn exactly_one_source() {
        let e = load_text(
            "[[config]]\nname = \"c\"\nsource.http = \"http://x/\"\nsource.file = \"/x\"\nformat = \"json\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("exactly one of source.http"), "{e}");
    }
}
