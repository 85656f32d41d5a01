//! Reports: the stable JSON schema of a scan, the human rendering (colored diffs on a terminal, plain otherwise),
//! and the exit code rule of DESIGN.md.

use crate::classify::TargetResult;
use crate::finding::{Finding, Kind, Severity};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Node counts of a scan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeCounts {
    pub total: usize,
    pub read: usize,
    pub unreadable: usize,
}

/// Finding counts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Summary {
    pub total: usize,
    pub by_kind: BTreeMap<String, usize>,
    pub by_severity: BTreeMap<String, usize>,
}

/// One node/config's unified diff, for humans.
#[derive(Debug, Clone, Serialize)]
pub struct TargetDiff {
    pub node: String,
    pub config: String,
    pub diff: String,
}

/// The result of one scan, as `--format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scan_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub nodes: NodeCounts,
    pub summary: Summary,
    pub findings: Vec<Finding>,
    /// Unified diffs of drifted targets.
    pub diffs: Vec<TargetDiff>,
    /// Identical drift (same config, path, expected and actual) on several nodes, reported once.
    pub groups: Vec<Group>,
    /// Findings that resolved in this scan (with the store).
    pub resolved: Vec<Finding>,
    /// The initial inventory: per config, what was already wrong on targets scanned for the first time.
    pub inventory: Vec<crate::lifecycle::InventoryEntry>,
    /// Fingerprints that became flapping in this scan.
    pub flapping_started: Vec<String>,
    /// Fingerprints whose acknowledgement ended in this scan.
    pub acks_ended: Vec<String>,
}

/// The same drift on several nodes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    pub kind: Kind,
    pub config: String,
    pub path: String,
    pub expected: serde_json::Value,
    pub actual: serde_json::Value,
    pub count: usize,
    pub nodes: Vec<String>,
}

/// Group identical drift across nodes.
pub fn groups(findings: &[Finding]) -> Vec<Group> {
    let mut by: BTreeMap<(String, String, String, String, &str), Vec<String>> = BTreeMap::new();
    for f in findings
        .iter()
        .filter(|f| matches!(f.kind, Kind::Drift | Kind::Regression))
    {
        by.entry((
            f.config.clone(),
            f.path.clone(),
            f.expected.to_string(),
            f.actual.to_string(),
            f.kind.as_str(),
        ))
        .or_default()
        .push(f.node.clone());
    }
    let mut out: Vec<Group> = by
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .filter_map(|((config, path, e, a, kind), mut nodes)| {
            nodes.sort();
            Some(Group {
                kind: kind.parse().ok()?,
                config,
                path,
                expected: serde_json::from_str(&e).ok()?,
                actual: serde_json::from_str(&a).ok()?,
                count: nodes.len(),
                nodes,
            })
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
    out
}

impl Report {
    /// Build from the targets of a scan.
    pub fn build(
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        nodes: usize,
        targets: &[TargetResult],
    ) -> Report {
        let mut unreadable = std::collections::BTreeSet::new();
        let mut findings = Vec::new();
        let mut diffs = Vec::new();
        for t in targets {
            if !t.read {
                unreadable.insert(t.node.clone());
            }
            findings.extend(t.findings.iter().cloned());
            if !t.unified.is_empty() {
                diffs.push(TargetDiff {
                    node: t.node.clone(),
                    config: t.config.clone(),
                    diff: t.unified.clone(),
                });
            }
        }
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let id_hash =
            blake3::hash(format!("{}{:?}", fmt(started), std::time::Instant::now()).as_bytes());
        let mut report = Report {
            scan_id: format!(
                "{}-{}",
                started.format("%Y%m%dT%H%M%SZ"),
                &id_hash.to_hex()[..8]
            ),
            started_at: fmt(started),
            finished_at: fmt(finished),
            duration_ms: (finished - started).num_milliseconds().max(0) as u64,
            nodes: NodeCounts {
                total: nodes,
                read: nodes - unreadable.len().min(nodes),
                unreadable: unreadable.len(),
            },
            summary: Summary::default(),
            findings: Vec::new(),
            diffs,
            groups: Vec::new(),
            resolved: Vec::new(),
            inventory: Vec::new(),
            flapping_started: Vec::new(),
            acks_ended: Vec::new(),
        };
        report.set_findings(findings);
        report
    }

    /// Replace the findings (after the lifecycle gave them states): sort, count, group.
    pub fn set_findings(&mut self, mut findings: Vec<Finding>) {
        findings.sort_by(|a, b| {
            (&a.node, &a.config, a.kind, &a.path).cmp(&(&b.node, &b.config, b.kind, &b.path))
        });
        let mut summary = Summary {
            total: findings.len(),
            ..Default::default()
        };
        for f in &findings {
            *summary.by_kind.entry(f.kind.to_string()).or_default() += 1;
            *summary
                .by_severity
                .entry(f.severity.to_string())
                .or_default() += 1;
        }
        self.summary = summary;
        self.groups = groups(&findings);
        self.inventory = crate::lifecycle::inventory(&findings);
        self.findings = findings;
    }

    /// DESIGN.md's exit code: 1 for drift, regression or violation at or above `fail_on`; else 3 when coverage is
    /// incomplete; else 0.
    pub fn exit_code(&self, fail_on: Severity) -> u8 {
        if self
            .findings
            .iter()
            .any(|f| !f.kind.is_coverage() && f.severity >= fail_on)
        {
            1
        } else if self.findings.iter().any(|f| f.kind.is_coverage()) {
            3
        } else {
            0
        }
    }
}

/// ANSI colors, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn severity(&self, s: Severity) -> String {
        let code = match s {
            Severity::Critical => "1;31",
            Severity::High => "31",
            Severity::Medium => "33",
            Severity::Low => "36",
            Severity::Info => "2",
        };
        self.paint(code, &format!("{:<8}", s.as_str()))
    }
}

/// A unified diff of two texts, `before` against `after`.
pub fn unified_diff_between(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header("before", "after")
        .to_string()
}

/// Color a unified diff line by line.
pub fn paint_diff(diff: &str, style: Style) -> String {
    let mut out = String::new();
    for line in diff.lines() {
        let painted = if line.starts_with("+++") || line.starts_with("---") {
            style.paint("1", line)
        } else if line.starts_with('+') {
            style.paint("32", line)
        } else if line.starts_with('-') {
            style.paint("31", line)
        } else if line.starts_with("@@") {
            style.paint("36", line)
        } else {
            line.to_string()
        };
        out.push_str(&painted);
        out.push('\n');
    }
    out
}

/// The human report: findings grouped by node and config, each drifted target's diff, then a summary.
pub fn human(report: &Report, style: Style) -> String {
    let mut out = String::new();
    let mut current: Option<(&str, &str)> = None;
    // The first scan of a target reports what is already wrong as an inventory, not as a flood of new findings.
    if !report.inventory.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            style.paint("1", "initial inventory (first scan of these nodes)")
        );
        for e in &report.inventory {
            let kinds: Vec<String> = e.by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(
                out,
                "  {:<16} {} findings on {} nodes ({}); `plumb findings --for-config {}` lists them",
                e.config,
                e.findings,
                e.nodes,
                kinds.join(", "),
                e.config
            );
        }
    }
    for f in report.findings.iter().filter(|f| !f.initial) {
        if current != Some((&f.node, &f.config)) {
            current = Some((&f.node, &f.config));
            let _ = writeln!(
                out,
                "\n{}",
                style.paint("1", &format!("{} / {}", f.node, f.config))
            );
            if let Some(d) = report
                .diffs
                .iter()
                .find(|d| d.node == f.node && d.config == f.config)
            {
                for line in paint_diff(&d.diff, style).lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        let detail = match f.kind {
            Kind::Drift | Kind::Regression => {
                let what = match f.change {
                    Some(crate::finding::Change::Added) => {
                        format!("added {}", crate::classify::short(&f.actual))
                    }
                    Some(crate::finding::Change::Removed) => {
                        format!("removed, was {}", crate::classify::short(&f.expected))
                    }
                    _ => format!(
                        "{} → {}",
                        crate::classify::short(&f.expected),
                        crate::classify::short(&f.actual)
                    ),
                };
                format!("{}  {}", f.path, what)
            }
            _ => f
                .message
                .split_once(": ")
                .map(|(_, m)| m.to_string())
                .unwrap_or_else(|| f.message.clone()),
        };
        let mut extra = String::new();
        if let Some(v) = &f.regression_of {
            extra.push_str(&format!("  back to {v}"));
        } else if let Some(t) = &f.fixed_at {
            extra.push_str(&format!("  (had been fixed at {t})"));
        }
        if let Some(a) = &f.ack {
            extra.push_str(&format!(
                "  acknowledged by {} until {}: {}",
                a.owner, a.until, a.reason
            ));
        }
        let _ = writeln!(
            out,
            "  {} {:<11} {:<9} {}{}  {}",
            style.severity(f.severity),
            f.kind.as_str(),
            f.state.as_str(),
            detail,
            extra,
            style.paint("2", &f.fingerprint[..12.min(f.fingerprint.len())])
        );
    }
    if !report.groups.is_empty() {
        let _ = writeln!(out, "\n{}", style.paint("1", "fleet-wide"));
        for g in &report.groups {
            let _ = writeln!(
                out,
                "  {} nodes  {} {}  {} → {}  ({})",
                g.count,
                g.config,
                g.path,
                crate::classify::short(&g.expected),
                crate::classify::short(&g.actual),
                g.nodes.join(", ")
            );
        }
    }
    if !report.resolved.is_empty() {
        let _ = writeln!(out, "\n{}", style.paint("1;32", "resolved"));
        for f in &report.resolved {
            let _ = writeln!(
                out,
                "  {}/{} {} {}  {}",
                f.node,
                f.config,
                f.kind.as_str(),
                if f.path.is_empty() {
                    f.rule.as_deref().unwrap_or("")
                } else {
                    &f.path
                },
                style.paint("2", &f.fingerprint[..12.min(f.fingerprint.len())])
            );
        }
    }
    let s = &report.summary;
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .filter_map(|k| s.by_kind.get(k.as_str()).map(|n| format!("{n} {k}")))
        .collect();
    let _ = writeln!(
        out,
        "\n{} nodes scanned ({} read, {} unreadable) in {} ms: {}",
        report.nodes.total,
        report.nodes.read,
        report.nodes.unreadable,
        report.duration_ms,
        if kinds.is_empty() {
            style.paint("32", "no findings")
        } else {
            format!("{} findings ({})", s.total, kinds.join(", "))
        }
    );
    if !report.resolved.is_empty() {
        let _ = writeln!(out, "{} resolved in this scan", report.resolved.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: Kind, severity: Severity) -> Finding {
        Finding::observed(
            kind,
            severity,
            "n",
            "c",
            "$.a".into(),
            "$.a",
            "m".into(),
            "",
        )
    }

    fn report(findings: Vec<Finding>) -> Report {
        let t = Utc::now();
        let target = TargetResult {
            node: "n".into(),
            config: "c".into(),
            read: true,
            findings,
            unified: String::new(),
            document: None,
            baseline: None,
            snapshot: None,
            fetch_seconds: 0.0,
            unchanged: false,
            spooled: false,
            input: None,
        };
        Report::build(t, t, 1, &[target])
    }

    #[test]
    fn exit_codes() {
        assert_eq!(report(vec![]).exit_code(Severity::Low), 0);
        assert_eq!(
            report(vec![finding(Kind::Drift, Severity::Medium)]).exit_code(Severity::Low),
            1
        );
        assert_eq!(
            report(vec![finding(Kind::Drift, Severity::Medium)]).exit_code(Severity::High),
            0
        );
        assert_eq!(
            report(vec![finding(Kind::Drift, Severity::Info)]).exit_code(Severity::Low),
            0
        );
        assert_eq!(
            report(vec![finding(Kind::Unreachable, Severity::Medium)]).exit_code(Severity::Low),
            3
        );
        assert_eq!(
            report(vec![
                finding(Kind::Drift, Severity::Low),
                finding(Kind::Invalid, Severity::Medium)
            ])
            .exit_code(Severity::Low),
            1
        );
        assert_eq!(
            report(vec![
                finding(Kind::Drift, Severity::Low),
                finding(Kind::Unbaselined, Severity::Medium)
            ])
            .exit_code(Severity::Medium),
            3
        );
    }

    #[test]
    fn summary_counts() {
        let r = report(vec![
            finding(Kind::Drift, Severity::Medium),
            finding(Kind::Drift, Severity::High),
        ]);
        assert_eq!(r.summary.total, 2);
        assert_eq!(r.summary.by_kind["drift"], 2);
        assert_eq!(r.summary.by_severity["high"], 1);
        let text = human(&r, Style { color: false });
        assert!(text.contains("2 findings (2 drift)"), "{text}");
        assert!(!text.contains('\x1b'));
    }
}
