//! The finding lifecycle: from what a scan observed and what the store remembers, the next state of every
//! fingerprint (`new` → `ongoing` → `resolved`, `reopened` as a `regression`, `flapping`, `acknowledged`), the
//! persistence gate, and which acknowledgements ended.
//!
//! Pure: no I/O, no clock (`now` is given). A target that was not read keeps its findings exactly as they were.

use crate::finding::{AckInfo, Finding, Kind, State};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What the store remembers of one fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The finding as last reported (its `state`, `kind`, value fields).
    pub finding: Finding,
    /// The kind that identifies it (drift stays the base kind of a regression).
    pub base_kind: Kind,
    /// Whether the problem was observed in the latest scan that read its target.
    pub present: bool,
    /// Start of the current episode (first_seen is the first episode's start).
    pub since: String,
    /// Consecutive scans that observed it in this episode.
    pub scans_seen: u32,
    /// When it was last resolved.
    pub resolved_at: Option<String>,
    /// Times (RFC 3339) the finding appeared or disappeared, within the flapping window.
    pub changes: Vec<String>,
    /// Set while flapping.
    pub flapping_since: Option<String>,
}

/// An acknowledgement: a finding that stays visible but raises no alerts until it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub fingerprint: String,
    pub owner: String,
    pub reason: String,
    /// RFC 3339; every ack ends.
    pub until: String,
    /// End as soon as the observed value differs from `value`.
    pub value_only: bool,
    /// The observed value when acknowledged.
    pub value: Value,
    pub created_at: String,
}

/// How long a finding must persist before it is alertable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Scans(u32),
    For(std::time::Duration),
}

impl Gate {
    /// Parse `"2 scans"` or a duration such as `"10m"`.
    pub fn parse(s: &str) -> Result<Gate, String> {
        let t = s.trim();
        if let Some(n) = t.strip_suffix("scans").or_else(|| t.strip_suffix("scan")) {
            return n
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Gate::Scans)
                .ok_or_else(|| format!("`{s}`: expected \"N scans\" with N ≥ 1, or a duration"));
        }
        crate::units::parse_duration(t)
            .map(Gate::For)
            .map_err(|e| format!("`for`: {e} (or \"N scans\")"))
    }
}

/// Lifecycle settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// More than this many appear/disappear changes within `flap_window` make a finding flapping.
    pub flap_changes: usize,
    pub flap_window: Duration,
    /// A flapping finding clears after this long without a change.
    pub flap_quiet: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            flap_changes: 4,
            flap_window: Duration::hours(1),
            flap_quiet: Duration::hours(1),
        }
    }
}

/// Everything one lifecycle step needs.
pub struct StepInput<'a> {
    pub now: DateTime<Utc>,
    pub settings: Settings,
    /// Stored records of the scanned targets, by fingerprint.
    pub prior: &'a HashMap<String, Record>,
    /// This scan's findings.
    pub observed: Vec<Finding>,
    /// How this scan covered the target (node, config): asked only of the targets of observed findings that have
    /// no record yet and of the targets of records not observed again, so that a scan of a large fleet builds no
    /// set of every target it covered.
    pub coverage: &'a dyn Fn(&str, &str) -> Coverage,
    pub acks: &'a HashMap<String, Ack>,
    /// The persistence gate of a finding, if its config or rule has one.
    pub gate: &'a dyn Fn(&Finding) -> Option<Gate>,
}

/// How a scan covered one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// The target was part of the scan.
    pub scanned: bool,
    /// Its content was read.
    pub read: bool,
    /// The store knew nothing of it before the scan: its findings form the initial inventory.
    pub first_time: bool,
}

/// The outcome of one step.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// Records to write (new or changed).
    pub records: Vec<Record>,
    /// Findings observed in this scan, with their lifecycle state (the report's findings).
    pub current: Vec<Finding>,
    /// Findings that resolved in this scan.
    pub resolved: Vec<Finding>,
    /// Fingerprints that became flapping in this scan (reported once).
    pub started_flapping: Vec<String>,
    /// Acknowledgements that ended in this scan (expired, or the value changed under `value_only`).
    pub ended_acks: Vec<String>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Compute the next lifecycle step.
pub fn step(mut input: StepInput<'_>) -> StepOutput {
    let now = input.now;
    let now_s = ts(now);
    let mut out = StepOutput::default();
    let mut seen = HashSet::new();
    let observed = std::mem::take(&mut input.observed);
    for mut f in observed {
        seen.insert(f.fingerprint.clone());
        let prev = input.prior.get(&f.fingerprint);
        let base_kind = prev.map_or(f.kind, |p| p.base_kind);
        let mut rec = match prev {
            None => Record {
                finding: f.clone(),
                base_kind,
                present: true,
                since: now_s.clone(),
                scans_seen: 1,
                resolved_at: None,
                changes: vec![now_s.clone()],
                flapping_since: None,
            },
            Some(p) => {
                let mut r = p.clone();
                if !p.present {
                    r.changes.push(now_s.clone());
                    r.since = now_s.clone();
                    r.scans_seen = 1;
                } else {
                    r.scans_seen = p.scans_seen.saturating_add(1);
                }
                r.present = true;
                r
            }
        };
        // The state the finding has by presence alone.
        let (state, kind) = match prev {
            None => (State::New, f.kind),
            Some(p) if !p.present => {
                let kind = match base_kind {
                    Kind::Drift | Kind::Violation => Kind::Regression,
                    k => k,
                };
                (State::Reopened, kind)
            }
            Some(p) => {
                // A regression stays one for its whole episode.
                let kind = if p.finding.kind == Kind::Regression {
                    Kind::Regression
                } else {
                    f.kind
                };
                (State::Ongoing, kind)
            }
        };
        f.kind = kind;
        if kind == Kind::Regression {
            // A regression is at least as severe as the kind's default, however it became one.
            f.severity = f.severity.max(Kind::Regression.default_severity());
        }
        f.state = state;
        f.first_seen = prev.map_or(now_s.clone(), |p| p.finding.first_seen.clone());
        f.last_seen = now_s.clone();
        if state == State::Reopened {
            f.fixed_at = prev.and_then(|p| p.resolved_at.clone());
        } else if let Some(p) = prev {
            f.fixed_at = p
                .finding
                .fixed_at
                .clone()
                .filter(|_| kind == Kind::Regression);
            if f.regression_of.is_none() && p.finding.kind == Kind::Regression {
                f.regression_of = p.finding.regression_of.clone();
            }
        }
        f.initial = prev.is_none() && (input.coverage)(&f.node, &f.config).first_time;
        rec.finding = f;
        overlay(&mut rec, &input, now, &mut out);
        out.current.push(rec.finding.clone());
        out.records.push(rec);
    }
    // Findings not observed: resolved when their target was read; kept as they were otherwise.
    let mut unobserved: Vec<&Record> = input
        .prior
        .values()
        .filter(|r| !seen.contains(&r.finding.fingerprint))
        .collect();
    unobserved.sort_by(|a, b| a.finding.fingerprint.cmp(&b.finding.fingerprint));
    for p in unobserved {
        let covered = (input.coverage)(&p.finding.node, &p.finding.config);
        if !covered.scanned || !covered.read {
            continue;
        }
        let mut rec = p.clone();
        let mut changed = false;
        if p.present {
            rec.present = false;
            rec.resolved_at = Some(now_s.clone());
            rec.changes.push(now_s.clone());
            rec.finding.state = State::Resolved;
            changed = true;
        }
        let before = (
            rec.finding.state,
            rec.flapping_since.clone(),
            rec.changes.len(),
        );
        overlay(&mut rec, &input, now, &mut out);
        if changed
            || before
                != (
                    rec.finding.state,
                    rec.flapping_since.clone(),
                    rec.changes.len(),
                )
        {
            if p.present && rec.finding.state == State::Resolved {
                out.resolved.push(rec.finding.clone());
            }
            out.records.push(rec);
        }
    }
    out
}

/// Flapping, acknowledgements and the persistence gate, over the presence state.
fn overlay(rec: &mut Record, input: &StepInput<'_>, now: DateTime<Utc>, out: &mut StepOutput) {
    let s = input.settings;
    let horizon = now - s.flap_window.max(s.flap_quiet);
    rec.changes
        .retain(|c| parse_ts(c).is_some_and(|t| t > horizon));
    let in_window = rec
        .changes
        .iter()
        .filter(|c| parse_ts(c).is_some_and(|t| t > now - s.flap_window))
        .count();
    let last_change = rec.changes.iter().filter_map(|c| parse_ts(c)).max();
    match &rec.flapping_since {
        None if in_window > s.flap_changes => {
            rec.flapping_since = Some(ts(now));
            out.started_flapping.push(rec.finding.fingerprint.clone());
        }
        Some(_) if last_change.is_none_or(|t| now - t >= s.flap_quiet) => {
            // The changes that made it flap are spent: with a quiet period shorter than the window they would
            // still count, and it would start flapping (and be reported) again at the next scan.
            rec.flapping_since = None;
            rec.changes.clear();
        }
        _ => {}
    }
    if rec.flapping_since.is_some() {
        rec.finding.state = State::Flapping;
    } else if !rec.present {
        rec.finding.state = State::Resolved;
    }

    rec.finding.ack = None;
    if let Some(a) = input.acks.get(&rec.finding.fingerprint) {
        let expired = parse_ts(&a.until).is_none_or(|u| now >= u);
        let value_moved = a.value_only && rec.present && rec.finding.actual != a.value;
        if expired || value_moved {
            out.ended_acks.push(a.fingerprint.clone());
        } else if rec.present {
            rec.finding.state = State::Acknowledged;
            rec.finding.ack = Some(AckInfo {
                owner: a.owner.clone(),
                reason: a.reason.clone(),
                until: a.until.clone(),
            });
        }
    }

    let gate_ok = match (input.gate)(&rec.finding) {
        None => true,
        Some(Gate::Scans(n)) => rec.scans_seen >= n,
        Some(Gate::For(d)) => parse_ts(&rec.since)
            .is_some_and(|t| now - t >= Duration::from_std(d).unwrap_or(Duration::MAX)),
    };
    rec.finding.alertable = rec.present && gate_ok && rec.finding.state != State::Acknowledged;
}

/// The initial inventory: findings of targets never scanned before, summarized per config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InventoryEntry {
    pub config: String,
    pub nodes: usize,
    pub findings: usize,
    pub by_kind: BTreeMap<String, usize>,
}

/// Summarize the initial findings per config.
pub fn inventory(findings: &[Finding]) -> Vec<InventoryEntry> {
    /// Per config: its nodes, its finding count, its counts by kind.
    type Tally<'a> = (HashSet<&'a str>, usize, BTreeMap<String, usize>);
    let mut by: BTreeMap<&str, Tally> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.initial) {
        let e = by.entry(&f.config).or_default();
        e.0.insert(&f.node);
        e.1 += 1;
        *e.2.entry(f.kind.to_string()).or_default() += 1;
    }
    by.into_iter()
        .map(|(config, (nodes, n, by_kind))| InventoryEntry {
            config: config.to_string(),
            nodes: nodes.len(),
            findings: n,
            by_kind,
        })
        .collect()
}

#[cfg(test)]
mod tests;
