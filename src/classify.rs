//! Classify: turn one target's fetch outcome into findings (drift, violation, unreachable, invalid, unbaselined).
//!
//! Pure: no I/O, no clock (the scan passes `now`). A node that could not be read yields only its coverage finding:
//! nothing about its content is invented.

use crate::baseline::Scope;
use crate::compare::{self, Difference};
use crate::config::{ConfigPlan, Plan};
use crate::finding::{Change, Finding, Kind, Severity, fingerprint};
use crate::inventory::Node;
use crate::normalize::Document;
use crate::rules::{CelCache, Input, Outcome};
use serde_json::Value;
use std::path::PathBuf;

/// What a scan learned about one config of one node.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub node: String,
    pub config: String,
    /// Whether live content was fetched and parsed.
    pub read: bool,
    pub findings: Vec<Finding>,
    /// Unified diff baseline → live, empty when equal or unknown.
    pub unified: String,
    /// The normalized live document, when the caller asked to keep it.
    pub document: Option<Document>,
    /// The baseline file that applied, if any.
    pub baseline: Option<(Scope, PathBuf)>,
    /// The snapshot hash of the redacted live content, and the content itself when it changed since the last scan.
    pub snapshot: Option<(String, Option<String>)>,
    /// How long the fetch took, retries included.
    pub fetch_seconds: f64,
}

/// Evaluate one fetched (or failed) target against its baseline.
pub fn evaluate(
    plan: &Plan,
    node: &Node,
    cfg: &ConfigPlan,
    fetched: Result<Vec<u8>, String>,
    now: &str,
    keep_document: bool,
    ctx: &Context,
) -> TargetResult {
    let mut r = TargetResult {
        node: node.name.clone(),
        config: cfg.name.clone(),
        read: false,
        findings: Vec::new(),
        unified: String::new(),
        document: None,
        baseline: None,
        snapshot: None,
        fetch_seconds: 0.0,
    };
    let bytes = match fetched {
        Ok(b) => b,
        Err(reason) => {
            r.findings.push(coverage(
                Kind::Unreachable,
                node,
                cfg,
                format!("{}/{}: unreachable: {reason}", node.name, cfg.name),
                now,
            ));
            return r;
        }
    };
    let mut live = match cfg.normalizer.normalize(&bytes) {
        Ok(d) => d,
        Err(e) => {
            r.findings.push(coverage(
                Kind::Invalid,
                node,
                cfg,
                format!("{}/{}: invalid: {e}", node.name, cfg.name),
                now,
            ));
            return r;
        }
    };
    r.read = true;
    let raw_len = bytes.len();
    drop(bytes);
    // Secrets are replaced before anything is compared, stored, printed or sent.
    if let Some(red) = &ctx.redactor {
        red.redact(&mut live);
    }
    let text = live.canonical_text();
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    let target = (node.name.clone(), cfg.name.clone());
    let unchanged = ctx
        .previous
        .get(&target)
        .is_some_and(|h| h.as_deref() == Some(hash.as_str()));
    r.snapshot = Some((hash, if unchanged { None } else { Some(text) }));
    let mut baseline = plan.baselines.for_node(&cfg.name, node);
    if let (Some(red), Some((_, _, doc))) = (&ctx.redactor, baseline.as_mut()) {
        red.redact(doc);
    }
    // Rules run on the same normalized tree as the comparison, parsed once.
    let mut cel = CelCache::default();
    for rule in plan.rules.for_target(&cfg.name, node) {
        let input = Input {
            node,
            config: &cfg.name,
            doc: &live,
            baseline: baseline.as_ref().map(|(_, _, d)| d),
            raw_len,
        };
        match rule.evaluate(&input, &mut cel) {
            Outcome::Pass => {}
            Outcome::Fail {
                path,
                actual,
                expected,
                message,
            } => {
                let mut f = Finding::observed(
                    Kind::Violation,
                    rule.severity,
                    &node.name,
                    &cfg.name,
                    path,
                    &rule.id,
                    message,
                    now,
                );
                f.expected = expected;
                f.actual = actual;
                f.rule = Some(rule.id.clone());
                r.findings.push(f);
            }
            Outcome::Error(e) => {
                let mut f = coverage(
                    Kind::Invalid,
                    node,
                    cfg,
                    format!(
                        "{}/{}: rule {} could not be evaluated: {e}",
                        node.name, cfg.name, rule.id
                    ),
                    now,
                );
                f.fingerprint = fingerprint(
                    Kind::Invalid,
                    &node.name,
                    &cfg.name,
                    &format!("rule:{}", rule.id),
                );
                f.rule = Some(rule.id.clone());
                r.findings.push(f);
            }
        }
    }
    match baseline {
        None => {
            r.findings.push(coverage(
                Kind::Unbaselined,
                node,
                cfg,
                format!(
                    "{}/{}: no baseline (add baselines/{}/default.<ext> or run `plumb approve {} {}`)",
                    node.name, cfg.name, cfg.name, node.name, cfg.name
                ),
                now,
            ));
        }
        Some((scope, file, expected)) => {
            r.baseline = Some((scope, file.path.clone()));
            let cmp = compare::compare(&expected, &live, &cfg.compare);
            let old = ctx.history.versions(&file.path);
            r.findings.extend(cmp.differences.into_iter().map(|d| {
                let back_to = regressed_to(&d, old, node, ctx.redactor.as_deref());
                let mut f = drift(d, node, cfg, now);
                if let Some(v) = back_to {
                    f.kind = Kind::Regression;
                    f.severity = f.severity.max(Kind::Regression.default_severity());
                    f.message = format!("{} (back to the superseded baseline {v})", f.message);
                    f.regression_of = Some(v);
                }
                f
            }));
            r.unified = cmp.unified;
        }
    }
    if keep_document {
        r.document = Some(live);
    }
    r
}

/// What a scan knows beyond the plan: the redactor, each target's last snapshot hash, superseded baselines.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub redactor: Option<std::sync::Arc<crate::redact::Redactor>>,
    pub previous: std::sync::Arc<std::collections::HashMap<(String, String), Option<String>>>,
    pub history: std::sync::Arc<crate::baseline::BaselineHistory>,
}

/// The superseded baseline version `d`'s live value went back to, if any (newest first).
fn regressed_to(
    d: &Difference,
    old: &[crate::baseline::OldBaseline],
    node: &Node,
    redactor: Option<&crate::redact::Redactor>,
) -> Option<String> {
    if old.is_empty() || !d.path.starts_with('$') {
        return None;
    }
    let path = serde_json_path::JsonPath::parse(&d.path).ok()?;
    for v in old {
        let Ok(mut doc) = crate::baseline::substitute_doc(&v.doc, node) else {
            continue;
        };
        if let Some(red) = redactor {
            red.redact(&mut doc);
        }
        let Some(tree) = doc.as_tree() else {
            continue;
        };
        let found = path.query(tree).all();
        let back = match (&d.actual, found.as_slice()) {
            (Some(a), [one]) => *one == a,
            (None, []) => true,
            _ => false,
        };
        if back {
            return Some(format!(
                "{}@{} (superseded {})",
                v.file,
                &v.hash[..8.min(v.hash.len())],
                v.superseded_at
            ));
        }
    }
    None
}

/// The result for a target whose evaluation panicked: an `invalid` finding, the scan goes on.
pub fn crashed(node: &Node, cfg: &ConfigPlan, now: &str) -> TargetResult {
    TargetResult {
        node: node.name.clone(),
        config: cfg.name.clone(),
        read: false,
        findings: vec![coverage(
            Kind::Invalid,
            node,
            cfg,
            format!(
                "{}/{}: invalid: plumb could not process this content (internal error)",
                node.name, cfg.name
            ),
            now,
        )],
        unified: String::new(),
        document: None,
        baseline: None,
        snapshot: None,
        fetch_seconds: 0.0,
    }
}

fn coverage(kind: Kind, node: &Node, cfg: &ConfigPlan, message: String, now: &str) -> Finding {
    Finding::observed(
        kind,
        kind.default_severity(),
        &node.name,
        &cfg.name,
        String::new(),
        "",
        message,
        now,
    )
}

/// A short, one-line rendering of a value for messages.
pub fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn drift(d: Difference, node: &Node, cfg: &ConfigPlan, now: &str) -> Finding {
    let expected = d.expected.unwrap_or(Value::Null);
    let actual = d.actual.unwrap_or(Value::Null);
    let what = match d.change {
        Change::Added => format!("added {}", short(&actual)),
        Change::Removed => format!("removed (was {})", short(&expected)),
        Change::Changed => format!("{} → {}", short(&expected), short(&actual)),
    };
    let severity: Severity = d.severity.unwrap_or(Kind::Drift.default_severity());
    let message = format!("{}/{} {}: {what}", node.name, cfg.name, d.path);
    let mut f = Finding::observed(
        Kind::Drift,
        severity,
        &node.name,
        &cfg.name,
        d.path.clone(),
        &d.path,
        message,
        now,
    );
    f.change = Some(d.change);
    f.expected = expected;
    f.actual = actual;
    f
}
