//! The store commands: `plumb findings`, `plumb history`, `plumb ack`, `plumb unack`, and the recorded scan that
//! `audit`, `diff`, `approve` and `demo` share.

use crate::collect::Collector;
use crate::config::Plan;
use crate::finding::State;
use crate::lifecycle::Ack;
use crate::report::{self, Style};
use crate::scan::{self, ScanOptions, ScanOutput};
use crate::store::{FindingFilter, Store, sqlite::SqliteStore};
use anyhow::{Context as _, Result, anyhow, bail};
use std::path::Path;
use std::sync::Arc;

/// Open the store: `--store` if given, else `[store] path` beside plumb.toml.
pub fn open(plan: &Plan, over: Option<&Path>) -> Result<SqliteStore> {
    let path = over.map_or_else(|| plan.store_path.clone(), Path::to_path_buf);
    // The error names the store file already.
    SqliteStore::open(&path).context("cannot open the store")
}

/// One scan with the store: redaction, baseline versions and regressions always; lifecycle states and the
/// write of the results when `record` is set; alerts into the outbox when `notify` is set too.
pub fn scan(
    rt: &tokio::runtime::Runtime,
    plan: Arc<Plan>,
    store: &mut dyn Store,
    mut opts: ScanOptions,
    record: bool,
    notify: bool,
) -> Result<(ScanOutput, usize)> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let memory = scan::prepare(&plan, store, &mut opts, &now).context("cannot start the scan")?;
    let mut output = rt.block_on(async {
        let collector = Arc::new(Collector::new(&plan)?);
        Ok::<_, anyhow::Error>(scan::run(plan.clone(), collector, opts).await?)
    })?;
    let mut queued = 0;
    if record {
        queued = scan::record(&plan, store, &memory, &mut output, notify)
            .context("the scan could not be recorded; nothing of it was stored (run it again)")?;
    }
    Ok((output, queued))
}

/// `plumb findings`.
pub fn findings(
    store: &mut dyn Store,
    filter: &FindingFilter,
    json: bool,
    st: Style,
) -> Result<String> {
    if let Some(s) = &filter.state {
        const STATES: [&str; 6] = [
            "new",
            "ongoing",
            "resolved",
            "reopened",
            "acknowledged",
            "flapping",
        ];
        if !STATES.contains(&s.as_str()) {
            bail!(
                "--state: unknown state `{s}` (expected {})",
                STATES.join(", ")
            );
        }
    }
    if let Some(k) = &filter.kind {
        k.parse::<crate::finding::Kind>()
            .map_err(|e| anyhow!("--kind: {e}"))?;
    }
    let records = store.findings(filter)?;
    if json {
        let list: Vec<_> = records.iter().map(|r| &r.finding).collect();
        return Ok(serde_json::to_string_pretty(&list)? + "\n");
    }
    let mut text = String::new();
    for r in &records {
        let f = &r.finding;
        text.push_str(&format!(
            "{:<12} {:<8} {:<11} {}/{} {}  since {}  {}\n",
            f.state.as_str(),
            f.severity.as_str(),
            f.kind.as_str(),
            f.node,
            f.config,
            if f.path.is_empty() {
                f.rule.as_deref().unwrap_or("")
            } else {
                &f.path
            },
            r.since,
            &f.fingerprint[..12.min(f.fingerprint.len())],
        ));
    }
    text.push_str(&format!("{} findings\n", records.len()));
    let _ = st;
    Ok(text)
}

/// `plumb history NODE [CONFIG]`: each config's snapshots, oldest first, with the diff from the one before.
pub fn history(
    store: &mut dyn Store,
    node: &str,
    config: Option<&str>,
    json: bool,
    st: Style,
) -> Result<String> {
    let entries = store.history(node, config)?;
    if entries.is_empty() {
        bail!(
            "no history for {node}{} (it has not been read by a recorded scan)",
            config.map(|c| format!("/{c}")).unwrap_or_default()
        );
    }
    let mut items = Vec::new();
    let mut text = String::new();
    let mut prev: Option<(&str, &str)> = None;
    for e in &entries {
        let content = e.content.as_deref().unwrap_or_default();
        let diff = match prev {
            Some((c, before)) if c == e.config => report::unified_diff_between(before, content),
            _ => String::new(),
        };
        if json {
            items.push(serde_json::json!({
                "node": e.node, "config": e.config, "at": e.at, "scan_id": e.scan_id, "hash": e.hash, "diff": diff,
            }));
        } else {
            text.push_str(&format!(
                "{} {}/{} {} (scan {})\n",
                e.at,
                e.node,
                e.config,
                &e.hash[..12.min(e.hash.len())],
                e.scan_id
            ));
            if prev.is_some_and(|(c, _)| c == e.config) {
                for line in report::paint_diff(&diff, st).lines() {
                    text.push_str(&format!("    {line}\n"));
                }
            } else {
                text.push_str("    first snapshot\n");
            }
        }
        prev = Some((&e.config, content));
    }
    if json {
        return Ok(serde_json::to_string_pretty(&items)? + "\n");
    }
    Ok(text)
}

/// Parse `--until`: an RFC 3339 time, a date (midnight UTC), or a duration from now.
pub fn parse_until(
    s: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let t = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&chrono::Utc)
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| anyhow!("--until: `{s}` is not a date"))?
    } else {
        let d = crate::units::parse_duration(s).map_err(|e| {
            anyhow!("--until: `{s}` is neither a date (2026-12-31), a time (RFC 3339) nor a duration: {e}")
        })?;
        now + chrono::Duration::from_std(d)
            .map_err(|_| anyhow!("--until: `{s}` is too far away"))?
    };
    if t <= now {
        bail!("--until: {} is not in the future", t.to_rfc3339());
    }
    Ok(t)
}

/// Find one stored finding by fingerprint or unique prefix.
fn resolve_fingerprint(store: &mut dyn Store, fp: &str) -> Result<crate::lifecycle::Record> {
    let all = store.findings(&FindingFilter::default())?;
    let hits: Vec<_> = all
        .into_iter()
        .filter(|r| r.finding.fingerprint.starts_with(fp))
        .collect();
    match hits.len() {
        0 => bail!("no finding with fingerprint `{fp}` (see `plumb findings`)"),
        1 => Ok(hits
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no finding"))?),
        n => bail!("`{fp}` matches {n} fingerprints; give more of it"),
    }
}

/// `plumb ack FINGERPRINT --reason … --until … [--owner …] [--value-only]`.
pub fn ack(
    store: &mut dyn Store,
    fp: &str,
    reason: &str,
    until: &str,
    owner: Option<&str>,
    value_only: bool,
) -> Result<String> {
    if reason.trim().is_empty() {
        bail!("--reason must say why");
    }
    let now = chrono::Utc::now();
    let until = parse_until(until, now)?;
    let rec = resolve_fingerprint(store, fp)?;
    if rec.finding.state == State::Resolved {
        bail!(
            "finding {} is resolved; there is nothing to acknowledge",
            rec.finding.fingerprint
        );
    }
    let owner = owner
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let a = Ack {
        fingerprint: rec.finding.fingerprint.clone(),
        owner: owner.clone(),
        reason: reason.to_string(),
        until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        value_only,
        value: rec.finding.actual.clone(),
        created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    store.ack(&a)?;
    Ok(format!(
        "acknowledged {} ({}/{} {}) until {} by {owner}{}\n",
        a.fingerprint,
        rec.finding.node,
        rec.finding.config,
        rec.finding.path,
        a.until,
        if value_only {
            ", while the value stays the same"
        } else {
            ""
        }
    ))
}

/// `plumb ack --list`.
pub fn ack_list(store: &mut dyn Store, json: bool) -> Result<String> {
    // An ack past its `until` is no longer in force, even before a scan records that it ended.
    let now = chrono::Utc::now();
    let acks: Vec<Ack> = store
        .acks()?
        .into_iter()
        .filter(|a| chrono::DateTime::parse_from_rfc3339(&a.until).is_ok_and(|u| u > now))
        .collect();
    if json {
        return Ok(serde_json::to_string_pretty(&acks)? + "\n");
    }
    let mut text = String::new();
    for a in &acks {
        text.push_str(&format!(
            "{}  until {}  by {}: {}{}\n",
            a.fingerprint,
            a.until,
            a.owner,
            a.reason,
            if a.value_only { " (value only)" } else { "" }
        ));
    }
    text.push_str(&format!("{} acknowledgements in force\n", acks.len()));
    Ok(text)
}

/// `plumb unack FINGERPRINT`.
pub fn unack(store: &mut dyn Store, fp: &str) -> Result<String> {
    let full = store
        .acks()?
        .into_iter()
        .filter(|a| a.fingerprint.starts_with(fp))
        .map(|a| a.fingerprint)
        .collect::<Vec<_>>();
    let [one] = full.as_slice() else {
        if full.is_empty() {
            bail!("no acknowledgement in force for `{fp}` (see `plumb ack --list`)");
        }
        bail!(
            "`{fp}` matches {} acknowledgements; give more of it",
            full.len()
        );
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    store.unack(one, &now)?;
    Ok(format!("acknowledgement of {one} ended\n"))
}

/// Deliver the outbox until it is empty or `wait` has passed.
pub fn deliver(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    store: &mut dyn Store,
    wait: std::time::Duration,
) -> Result<crate::notify::dispatch::Stats> {
    let d = crate::notify::dispatch::Dispatcher::new(&plan.sinks, Default::default())
        .map_err(|e| anyhow!(e))?;
    // Every attempt is on record before anything is sent (see `Dispatcher::tick`).
    rt.block_on(d.drain(store, wait))
        .context("cannot deliver the outbox")
}

/// One line about a delivery run, for stderr.
pub fn delivery_summary(queued: usize, s: &crate::notify::dispatch::Stats) -> String {
    let mut line = format!(
        "alerts: {queued} queued, {} delivered, {} pending, {} dead letters",
        s.delivered, s.pending, s.dead
    );
    for (sink, why) in &s.failing {
        line.push_str(&format!("; sink {sink} failing: {why}"));
    }
    if s.pending > 0 {
        line.push_str(" (pending alerts stay in the outbox: `plumb alerts flush` or the next run delivers them)");
    }
    line
}

/// `plumb alerts test SINK`.
pub fn test_sink(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    store: &mut dyn Store,
    sink: &str,
    wait: std::time::Duration,
) -> Result<String> {
    let Some(s) = plan.sinks.iter().find(|s| s.name == sink) else {
        let names: Vec<&str> = plan.sinks.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no [[sink]] named `{sink}` (there are: {})",
            names.join(", ")
        );
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let msg = crate::notify::dispatch::test_message(s, &now);
    let id = msg.id().to_string();
    store.enqueue(std::slice::from_ref(&msg), &now)?;
    let only = vec![s.clone()];
    let d = crate::notify::dispatch::Dispatcher::new(&only, Default::default())
        .map_err(|e| anyhow!(e))?;
    rt.block_on(d.drain(store, wait))?;
    let row = store
        .outbox_list()?
        .into_iter()
        .find(|r| r.msg_id == id && r.sink == sink);
    Ok(match row {
        None => format!("delivered a test message to sink `{sink}`\n"),
        Some(r) if r.status == "dead" => format!(
            "sink `{sink}` refused the test message: {}\n",
            r.last_error.unwrap_or_default()
        ),
        Some(r) => format!(
            "the test message to sink `{sink}` is still pending after {} attempts: {} (it stays in the outbox)\n",
            r.attempts,
            r.last_error.unwrap_or_default()
        ),
    })
}

/// `plumb alerts outbox`.
pub fn outbox(store: &mut dyn Store, json: bool) -> Result<String> {
    let rows = store.outbox_list()?;
    if json {
        let items: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "msg_id": r.msg_id, "sink": r.sink, "status": r.status, "attempts": r.attempts,
                    "next_attempt_at": r.next_attempt_at, "last_error": r.last_error, "created_at": r.created_at,
                    "message": r.message,
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&items)? + "\n");
    }
    let mut text = String::new();
    for r in &rows {
        let what = match &r.message {
            crate::notify::Message::Digest(d) => d.title.clone(),
            crate::notify::Message::Ticket(t) => format!("{:?} ticket {}", t.action, t.key),
        };
        text.push_str(&format!(
            "{:>5} {:<8} {:<16} attempts {:<3} next {}  {}{}\n",
            r.id,
            r.status,
            r.sink,
            r.attempts,
            r.next_attempt_at,
            what,
            r.last_error
                .as_ref()
                .map(|e| format!("  (last error: {e})"))
                .unwrap_or_default()
        ));
    }
    let pending = rows.iter().filter(|r| r.status == "pending").count();
    text.push_str(&format!(
        "{pending} pending, {} dead letters\n",
        rows.len() - pending
    ));
    Ok(text)
}
