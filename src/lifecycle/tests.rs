//! Lifecycle unit tests: a small harness replays scans against an in-memory "store" of records.

use super::*;
use crate::finding::Severity;

struct Sim {
    records: HashMap<String, Record>,
    acks: HashMap<String, Ack>,
    now: DateTime<Utc>,
    scanned_before: HashSet<(String, String)>,
    gate: Option<Gate>,
}

fn drift(node: &str, value: i64) -> Finding {
    let mut f = Finding::observed(
        Kind::Drift,
        Severity::Medium,
        node,
        "c",
        "$.a".into(),
        "$.a",
        "m".into(),
        "",
    );
    f.actual = Value::from(value);
    f
}

impl Sim {
    fn new() -> Sim {
        Sim {
            records: HashMap::new(),
            acks: HashMap::new(),
            now: DateTime::parse_from_rfc3339("2026-11-26T06:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            scanned_before: HashSet::new(),
            gate: None,
        }
    }

    /// One scan of node `n1`: `read` says whether it was read, `observed` what was found.
    fn scan(&mut self, read: bool, observed: Vec<Finding>) -> StepOutput {
        let target = ("n1".to_string(), "c".to_string());
        let first_time = !self.scanned_before.contains(&target);
        let coverage = move |node: &str, config: &str| {
            let scanned = (node, config) == ("n1", "c");
            Coverage {
                scanned,
                read: scanned && read,
                first_time: scanned && first_time,
            }
        };
        let gate = self.gate;
        let out = step(StepInput {
            now: self.now,
            settings: Settings::default(),
            prior: &self.records,
            observed,
            coverage: &coverage,
            acks: &self.acks,
            gate: &move |_| gate,
        });
        self.scanned_before.insert(target);
        for r in &out.records {
            self.records
                .insert(r.finding.fingerprint.clone(), r.clone());
        }
        for a in &out.ended_acks {
            self.acks.remove(a);
        }
        self.now += Duration::minutes(5);
        out
    }

    fn state(&self) -> State {
        self.records
            .values()
            .next()
            .map(|r| r.finding.state)
            .unwrap_or(State::New)
    }
}

#[test]
fn new_ongoing_resolved_reopened_as_regression() {
    let mut s = Sim::new();
    let out = s.scan(true, vec![drift("n1", 1)]);
    assert_eq!(out.current[0].state, State::New);
    assert!(
        out.current[0].initial,
        "the first scan of a target is the initial inventory"
    );
    let out = s.scan(true, vec![drift("n1", 1)]);
    assert_eq!(out.current[0].state, State::Ongoing);
    assert!(!out.current[0].initial);
    let first_seen = out.current[0].first_seen.clone();
    let out = s.scan(true, vec![]);
    assert_eq!(out.resolved.len(), 1);
    assert_eq!(s.state(), State::Resolved);
    let fixed = s.records.values().next().unwrap().resolved_at.clone();
    let out = s.scan(true, vec![drift("n1", 2)]);
    let f = &out.current[0];
    assert_eq!((f.state, f.kind), (State::Reopened, Kind::Regression));
    assert_eq!(
        f.fixed_at, fixed,
        "a reopened finding says when it was fixed"
    );
    assert_eq!(f.first_seen, first_seen);
    assert_eq!(
        f.fingerprint,
        drift("n1", 2).fingerprint,
        "identity survives the kind change"
    );
    let out = s.scan(true, vec![drift("n1", 2)]);
    assert_eq!(
        (out.current[0].state, out.current[0].kind),
        (State::Ongoing, Kind::Regression)
    );
}

#[test]
fn an_unreadable_target_keeps_its_findings() {
    let mut s = Sim::new();
    s.scan(true, vec![drift("n1", 1)]);
    let before = s.records.clone();
    let out = s.scan(false, vec![]);
    assert!(out.records.is_empty() && out.resolved.is_empty(), "{out:?}");
    assert_eq!(s.records, before);
}

#[test]
fn flapping_after_more_than_four_changes_in_an_hour_then_clears() {
    let mut s = Sim::new();
    let mut started = 0;
    for i in 0..6 {
        let obs = if i % 2 == 0 {
            vec![drift("n1", 1)]
        } else {
            vec![]
        };
        started += s.scan(true, obs).started_flapping.len();
    }
    assert_eq!(started, 1, "reported once");
    assert_eq!(s.state(), State::Flapping);
    // Quiet: present and unchanged for over an hour.
    s.scan(true, vec![drift("n1", 1)]);
    for _ in 0..13 {
        s.scan(true, vec![drift("n1", 1)]);
    }
    assert_eq!(s.state(), State::Ongoing);
}

#[test]
fn acks_hold_until_they_end() {
    let mut s = Sim::new();
    s.scan(true, vec![drift("n1", 1)]);
    let fp = drift("n1", 1).fingerprint;
    let until = (s.now + Duration::minutes(8)).to_rfc3339();
    s.acks.insert(
        fp.clone(),
        Ack {
            fingerprint: fp.clone(),
            owner: "ops".into(),
            reason: "change 42".into(),
            until,
            value_only: false,
            value: Value::from(1),
            created_at: String::new(),
        },
    );
    let out = s.scan(true, vec![drift("n1", 1)]);
    assert_eq!(out.current[0].state, State::Acknowledged);
    assert!(!out.current[0].alertable);
    assert_eq!(
        out.current[0].ack.as_ref().map(|a| a.owner.as_str()),
        Some("ops")
    );
    s.scan(true, vec![drift("n1", 1)]);
    let out = s.scan(true, vec![drift("n1", 1)]);
    assert_eq!(out.ended_acks, vec![fp.clone()], "expired after 8 minutes");
    assert_eq!(out.current[0].state, State::Ongoing);
    assert!(out.current[0].alertable);
}

#[test]
fn value_only_acks_end_when_the_value_moves() {
    let mut s = Sim::new();
    s.scan(true, vec![drift("n1", 1)]);
    let fp = drift("n1", 1).fingerprint;
    s.acks.insert(
        fp.clone(),
        Ack {
            fingerprint: fp.clone(),
            owner: "ops".into(),
            reason: "known".into(),
            until: (s.now + Duration::days(30)).to_rfc3339(),
            value_only: true,
            value: Value::from(1),
            created_at: String::new(),
        },
    );
    assert_eq!(
        s.scan(true, vec![drift("n1", 1)]).current[0].state,
        State::Acknowledged
    );
    let out = s.scan(true, vec![drift("n1", 7)]);
    assert_eq!(out.ended_acks, vec![fp]);
    assert_eq!(out.current[0].state, State::Ongoing);
}

#[test]
fn persistence_gates() {
    let mut s = Sim::new();
    s.gate = Some(Gate::Scans(2));
    assert!(!s.scan(true, vec![drift("n1", 1)]).current[0].alertable);
    assert!(s.scan(true, vec![drift("n1", 1)]).current[0].alertable);

    let mut s = Sim::new();
    s.gate = Some(Gate::For(std::time::Duration::from_secs(600)));
    assert!(
        !s.scan(true, vec![drift("n1", 1)]).current[0].alertable,
        "0 min"
    );
    assert!(
        !s.scan(true, vec![drift("n1", 1)]).current[0].alertable,
        "5 min"
    );
    assert!(
        s.scan(true, vec![drift("n1", 1)]).current[0].alertable,
        "10 min"
    );
    assert_eq!(Gate::parse("2 scans"), Ok(Gate::Scans(2)));
    assert_eq!(
        Gate::parse("10m"),
        Ok(Gate::For(std::time::Duration::from_secs(600)))
    );
    assert!(Gate::parse("0 scans").is_err() && Gate::parse("soon").is_err());
}

#[test]
fn inventory_summarizes_initial_findings_per_config() {
    let mut a = drift("n1", 1);
    a.initial = true;
    let mut b = drift("n2", 1);
    b.initial = true;
    let c = drift("n3", 1);
    let inv = inventory(&[a, b, c]);
    assert_eq!(inv.len(), 1);
    assert_eq!((inv[0].nodes, inv[0].findings), (2, 2));
    assert_eq!(inv[0].by_kind["drift"], 2);
}

#[test]
fn coverage_is_asked_per_target_and_only_a_read_target_resolves_what_it_no_longer_shows() {
    // Findings on three nodes; the next scan covers n1 (read), n2 (not read), and not n3.
    let now = DateTime::parse_from_rfc3339("2026-11-26T06:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let prior: HashMap<String, Record> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|n| {
            let f = drift(n, 1);
            let r = Record {
                finding: f.clone(),
                base_kind: Kind::Drift,
                present: true,
                since: "2026-11-26T05:00:00Z".into(),
                scans_seen: 1,
                resolved_at: None,
                changes: vec!["2026-11-26T05:00:00Z".into()],
                flapping_since: None,
            };
            (f.fingerprint.clone(), r)
        })
        .collect();
    let asked = std::cell::RefCell::new(Vec::new());
    let coverage = |node: &str, config: &str| {
        asked.borrow_mut().push(format!("{node}/{config}"));
        match node {
            "n1" => Coverage {
                scanned: true,
                read: true,
                first_time: false,
            },
            "n2" => Coverage {
                scanned: true,
                read: false,
                first_time: false,
            },
            "n4" => Coverage {
                scanned: true,
                read: true,
                first_time: true,
            },
            _ => Coverage::default(),
        }
    };
    // n4 is new: its finding is part of the initial inventory.
    let out = step(StepInput {
        now,
        settings: Settings::default(),
        prior: &prior,
        observed: vec![drift("n4", 2)],
        coverage: &coverage,
        acks: &HashMap::new(),
        gate: &|_| None,
    });
    let resolved: Vec<&str> = out.resolved.iter().map(|f| f.node.as_str()).collect();
    assert_eq!(resolved, ["n1"], "only the read target resolves");
    assert_eq!(out.current.len(), 1);
    assert!(
        out.current[0].initial,
        "a first-time target's finding is initial"
    );
    // Asked once per unobserved prior record and once for the new finding, never of every target.
    let mut asked = asked.into_inner();
    asked.sort();
    assert_eq!(asked, ["n1/c", "n2/c", "n3/c", "n4/c"]);
    // Records are written for what changed: n1 resolved and n4 new.
    let mut written: Vec<&str> = out
        .records
        .iter()
        .map(|r| r.finding.node.as_str())
        .collect();
    written.sort();
    assert_eq!(written, ["n1", "n4"]);
}
