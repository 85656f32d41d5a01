//! Findings: what plumb reports about one node, with kinds, severities, lifecycle states and the stable fingerprint.
//!
//! Pure data. The fingerprint hashes identity only (kind, node, config, path or rule id), never the observed
//! value, so the same problem keeps the same fingerprint across scans while its value changes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// What kind of thing is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Live differs from the approved baseline.
    Drift,
    /// Live went back to a superseded value, or a resolved finding came back.
    Regression,
    /// A rule failed.
    Violation,
    /// The node could not be fetched.
    Unreachable,
    /// The node answered, but its content is not parseable as its format.
    Invalid,
    /// The node carries a config that has no baseline at all.
    Unbaselined,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 6] = [
        Kind::Drift,
        Kind::Regression,
        Kind::Violation,
        Kind::Unreachable,
        Kind::Invalid,
        Kind::Unbaselined,
    ];

    /// The lowercase name used in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Drift => "drift",
            Kind::Regression => "regression",
            Kind::Violation => "violation",
            Kind::Unreachable => "unreachable",
            Kind::Invalid => "invalid",
            Kind::Unbaselined => "unbaselined",
        }
    }

    /// Coverage findings say "plumb could not tell", not "something is wrong": exit code 3, not 1.
    pub fn is_coverage(self) -> bool {
        matches!(self, Kind::Unreachable | Kind::Invalid | Kind::Unbaselined)
    }

    /// The severity a finding of this kind gets unless a baseline or rule says otherwise.
    pub fn default_severity(self) -> Severity {
        match self {
            Kind::Drift => Severity::Medium,
            Kind::Regression => Severity::High,
            Kind::Violation => Severity::Medium,
            Kind::Unreachable | Kind::Invalid | Kind::Unbaselined => Severity::Medium,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown kind `{s}` (expected drift, regression, violation, unreachable, invalid or unbaselined)")
            })
    }
}

/// How bad a finding is. Ordered: `Info < Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The lowercase name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown severity `{s}` (expected info, low, medium, high or critical)")
            })
    }
}

/// Lifecycle state of a finding. Without a store every finding of a scan is `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    New,
    Ongoing,
    Resolved,
    Reopened,
    Acknowledged,
    Flapping,
}

impl State {
    /// The lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Ongoing => "ongoing",
            State::Resolved => "resolved",
            State::Reopened => "reopened",
            State::Acknowledged => "acknowledged",
            State::Flapping => "flapping",
        }
    }
}

/// For drift: what happened at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Present live, absent from the baseline.
    Added,
    /// In the baseline, absent live.
    Removed,
    /// Present in both with different values.
    Changed,
}

impl Change {
    /// The lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        }
    }
}

/// One thing wrong on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Hash of the stable identity: kind, node, config, path or rule id. Never the value.
    pub fingerprint: String,
    pub kind: Kind,
    pub severity: Severity,
    pub node: String,
    pub config: String,
    /// Where in the config (JSONPath-style for trees, `line N` for text); empty for node-level findings.
    pub path: String,
    /// For drift: added, removed or changed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub change: Option<Change>,
    /// The approved value (null when the path was added live).
    pub expected: Value,
    /// The observed value (null when removed or unreadable).
    pub actual: Value,
    /// The rule id, for violations.
    pub rule: Option<String>,
    /// A human sentence.
    pub message: String,
    /// RFC 3339 UTC.
    pub first_seen: String,
    /// RFC 3339 UTC.
    pub last_seen: String,
    pub state: State,
    /// For a reopened finding: when it had been fixed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fixed_at: Option<String>,
    /// For a regression by value: the superseded baseline version the live value went back to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub regression_of: Option<String>,
    /// Part of the initial inventory: found on the first scan of its node and config.
    #[serde(default)]
    pub initial: bool,
    /// Past its persistence gate and not acknowledged: it may raise an alert.
    #[serde(default)]
    pub alertable: bool,
    /// The acknowledgement in force, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ack: Option<AckInfo>,
}

/// What a report says about an acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckInfo {
    pub owner: String,
    pub reason: String,
    pub until: String,
}

impl Finding {
    /// A finding observed now, before the lifecycle gives it a state.
    #[allow(clippy::too_many_arguments)]
    pub fn observed(
        kind: Kind,
        severity: Severity,
        node: &str,
        config: &str,
        path: String,
        subject: &str,
        message: String,
        now: &str,
    ) -> Finding {
        Finding {
            fingerprint: fingerprint(kind, node, config, subject),
            kind,
            severity,
            node: node.to_string(),
            config: config.to_string(),
            path,
            change: None,
            expected: Value::Null,
            actual: Value::Null,
            rule: None,
            message,
            first_seen: now.to_string(),
            last_seen: now.to_string(),
            state: State::New,
            fixed_at: None,
            regression_of: None,
            initial: false,
            alertable: true,
            ack: None,
        }
    }
}

/// The stable fingerprint of a finding's identity.
///
/// `subject` is the path for drift and the rule id for violations; empty for node-level findings.
pub fn fingerprint(kind: Kind, node: &str, config: &str, subject: &str) -> String {
    let mut h = blake3::Hasher::new();
    for part in [kind.as_str(), node, config, subject] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex()[..24].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_identity_only() {
        let a = fingerprint(Kind::Drift, "n1", "caddy", "$.a");
        assert_eq!(a, fingerprint(Kind::Drift, "n1", "caddy", "$.a"));
        assert_ne!(a, fingerprint(Kind::Drift, "n2", "caddy", "$.a"));
        assert_ne!(a, fingerprint(Kind::Violation, "n1", "caddy", "$.a"));
        assert_ne!(a, fingerprint(Kind::Drift, "n1", "caddy", "$.b"));
        // Length-prefixing keeps field boundaries: ("ab","c") differs from ("a","bc").
        assert_ne!(
            fingerprint(Kind::Drift, "ab", "c", ""),
            fingerprint(Kind::Drift, "a", "bc", "")
        );
        assert_eq!(a.len(), 24);
    }

    #[test]
    fn severities_are_ordered_and_parse() {
        assert!(Severity::Info < Severity::Low && Severity::High < Severity::Critical);
        assert_eq!("high".parse::<Severity>(), Ok(Severity::High));
        assert!("severe".parse::<Severity>().is_err());
        assert_eq!("unbaselined".parse::<Kind>(), Ok(Kind::Unbaselined));
    }
}
