//! The store through the real binary: the finding lifecycle across scans (new, ongoing, resolved, reopened), the
//! initial inventory, unreadable nodes keeping their findings, regressions by value after a baseline edit,
//! flapping, persistence gates, acknowledgements, fleet-wide groups, `plumb findings` filters, `plumb history`,
//! retention, secrets that never reach any output or the store file, and `kill -9` at random points of a scan.
//!
//! Each test writes a project into a temporary directory; the store is `.plumb/state.db` beside plumb.toml.

mod common;

use common::*;
use plumb::sim::Behavior;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// One file-source node `n1` (more with `extra_nodes`), config `app` read from `live/<node>.json`.
fn app_toml(nodes: &[&str], extra: &str) -> String {
    let mut t = String::from("[scan]\nretries = 0\ntimeout = \"2s\"\n");
    t.push_str(extra);
    for n in nodes {
        t.push_str(&format!("\n[[node]]\nname = \"{n}\"\n"));
    }
    t.push_str(
        r#"
[[config]]
name = "app"
source.file = "live/${node.name}.json"
format = "json"
"#,
    );
    t
}

/// `(node, config, path, kind, state)` of every finding in a list, sorted.
fn states(list: &[Value]) -> Vec<(String, String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut v: Vec<_> = list
        .iter()
        .map(|f| {
            (
                s(&f["node"]),
                s(&f["config"]),
                s(&f["path"]),
                s(&f["kind"]),
                s(&f["state"]),
            )
        })
        .collect();
    v.sort();
    v
}

fn expect_states(
    items: &[(&str, &str, &str, &str, &str)],
) -> Vec<(String, String, String, String, String)> {
    let mut v: Vec<_> = items
        .iter()
        .map(|(n, c, p, k, s)| {
            (
                n.to_string(),
                c.to_string(),
                p.to_string(),
                k.to_string(),
                s.to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn fingerprints(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|f| f["fingerprint"].as_str().unwrap().to_string())
        .collect()
}

/// `plumb findings --format json EXTRA…`: the stored findings.
fn stored(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["findings", "--format", "json"];
    args.extend_from_slice(extra);
    let run = plumb(dir, &args);
    run.expect_code(0);
    arr(&run.json())
}

fn parse_time(s: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(s.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("`{s}` is not RFC 3339: {e}"))
}

/// `started_at` of a report, truncated to whole seconds, as the lifecycle writes its times.
fn scan_second(r: &Value) -> String {
    let s = r["started_at"].as_str().unwrap();
    format!("{}Z", &s[..19])
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Lifecycle
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn lifecycle_new_ongoing_resolved_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            ("plumb.toml", &app_toml(&["n1"], "")),
            (
                "baselines/app/default.json",
                r#"{"port": 80, "debug": false}"#,
            ),
            ("live/n1.json", r#"{"port": 81, "debug": false}"#),
        ],
    );

    let (run, r1) = audit_json(dir, &[]);
    run.expect_code(1);
    let f1 = the_drift(&r1, "n1", "app", "$.port").clone();
    assert_eq!(f1["state"], "new", "{run}");
    assert_eq!(f1["initial"], true, "{run}");
    assert!(f1.get("fixed_at").is_none(), "{f1:#}");
    let fp = f1["fingerprint"].as_str().unwrap().to_string();
    assert!(arr(&r1["resolved"]).is_empty(), "{run}");
    assert!(
        dir.join(".plumb/state.db").exists(),
        "the store file is created"
    );

    let (run, r2) = audit_json(dir, &[]);
    run.expect_code(1);
    let f2 = the_drift(&r2, "n1", "app", "$.port");
    assert_eq!(f2["state"], "ongoing", "{run}");
    assert_eq!(f2["initial"], false, "{run}");
    assert_eq!(f2["fingerprint"], fp.as_str());
    assert_eq!(f2["first_seen"], f1["first_seen"], "first_seen is kept");
    assert!(arr(&r2["resolved"]).is_empty(), "{run}");

    // Fixed: no finding, and the drift is listed as resolved in this scan.
    write_tree(dir, &[("live/n1.json", r#"{"port": 80, "debug": false}"#)]);
    let (run, r3) = audit_json(dir, &[]);
    run.expect_code(0);
    assert!(findings(&r3).is_empty(), "{run}");
    let resolved = arr(&r3["resolved"]);
    assert_eq!(
        states(&resolved),
        expect_states(&[("n1", "app", "$.port", "drift", "resolved")]),
        "{run}"
    );
    assert_eq!(resolved[0]["fingerprint"], fp.as_str());
    assert_eq!(resolved[0]["expected"], 80);
    assert_eq!(
        resolved[0]["actual"], 81,
        "the resolved finding keeps its last value"
    );
    assert_eq!(
        states(&stored(dir, &[])),
        expect_states(&[("n1", "app", "$.port", "drift", "resolved")])
    );

    // Back: reopened, a regression, saying when it had been fixed.
    write_tree(dir, &[("live/n1.json", r#"{"port": 81, "debug": false}"#)]);
    let (run, r4) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(findings(&r4)),
        expect_states(&[("n1", "app", "$.port", "regression", "reopened")]),
        "{run}"
    );
    let f4 = &findings(&r4)[0];
    assert_eq!(
        f4["fingerprint"],
        fp.as_str(),
        "same fingerprint throughout"
    );
    assert_eq!(f4["initial"], false);
    assert_eq!(f4["first_seen"], f1["first_seen"]);
    assert_eq!(
        f4["severity"], "high",
        "a regression is at least high\n{run}"
    );
    let fixed_at = &f4["fixed_at"];
    assert!(fixed_at.as_str().is_some_and(|s| !s.is_empty()), "{f4:#}");
    assert_eq!(
        fixed_at.as_str().unwrap(),
        scan_second(&r3),
        "fixed_at is when the resolving scan ran"
    );
    let (first, fixed, last) = (
        parse_time(&f4["first_seen"]),
        parse_time(fixed_at),
        parse_time(&f4["last_seen"]),
    );
    assert!(first <= fixed && fixed <= last, "{f4:#}");
    assert!(arr(&r4["resolved"]).is_empty(), "{run}");

    // The store holds one record for it, reopened.
    let all = stored(dir, &[]);
    assert_eq!(fingerprints(&all), vec![fp.clone()]);
    assert_eq!(all[0]["state"], "reopened");

    // And the next scan: ongoing, still a regression.
    let (run, r5) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(findings(&r5)),
        expect_states(&[("n1", "app", "$.port", "regression", "ongoing")]),
        "{run}"
    );
    assert_eq!(findings(&r5)[0]["fingerprint"], fp.as_str());
    assert_eq!(findings(&r5)[0]["severity"], "high", "{run}");
    assert_eq!(findings(&r5)[0]["fixed_at"], *fixed_at, "{run}");
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Initial inventory
// ---------------------------------------------------------------------------------------------------------------

fn inventory_project(dir: &Path, nodes: &[&str]) {
    let mut toml = app_toml(nodes, "");
    toml.push_str(
        r#"
[[config]]
name = "extra"
source.file = "live/${node.name}.json"
format = "json"
"#,
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            (
                "baselines/app/default.json",
                r#"{"port": 80, "debug": false}"#,
            ),
            ("live/n1.json", r#"{"port": 81, "debug": true}"#),
            ("live/n2.json", r#"{"port": 81, "debug": false}"#),
            ("live/n3.json", r#"{"port": 80, "debug": false}"#),
            ("live/n4.json", r#"{"port": 80, "debug": true}"#),
        ],
    );
}

#[test]
fn initial_inventory_then_no_flood() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    inventory_project(dir, &["n1", "n2", "n3"]);

    // The human report of a first scan (in a store of its own): one summary per config, no finding lines.
    let run = plumb(dir, &["audit", "--store", "human.db"]);
    run.expect_code(1);
    assert!(run.stdout.contains("initial inventory"), "{run}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("app ")
                && l.contains("3 findings on 2 nodes (3 drift)")),
        "{run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("extra ")
                && l.contains("3 findings on 3 nodes (3 unbaselined)")),
        "{run}"
    );
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("medium ") || l.contains("no baseline")),
        "no per-finding lines\n{run}"
    );
    assert!(
        !run.stdout.contains("n1 / app"),
        "no per-target headers\n{run}"
    );
    assert!(!run.stdout.contains(" new "), "no `new` flood\n{run}");
    assert!(dir.join("human.db").exists(), "--store is used");

    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        r["inventory"],
        json!([
            {"config": "app", "nodes": 2, "findings": 3, "by_kind": {"drift": 3}},
            {"config": "extra", "nodes": 3, "findings": 3, "by_kind": {"unbaselined": 3}},
        ]),
        "{run}"
    );
    assert_eq!(findings(&r).len(), 6, "{run}");
    assert!(
        findings(&r)
            .iter()
            .all(|f| f["initial"] == true && f["state"] == "new"),
        "{run}"
    );

    // Second scan: nothing is initial any more, and the human report lists the findings.
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(r["inventory"], json!([]), "{run}");
    assert_eq!(findings(&r).len(), 6, "{run}");
    assert!(
        findings(&r)
            .iter()
            .all(|f| f["initial"] == false && f["state"] == "ongoing"),
        "{run}"
    );
    let run = plumb(dir, &["audit"]);
    run.expect_code(1);
    assert!(!run.stdout.contains("initial inventory"), "{run}");
    assert!(run.stdout.contains("n1 / app"), "{run}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("ongoing") && l.contains("$.port  80 → 81")),
        "{run}"
    );

    // A node added later: only its findings form the inventory.
    inventory_project(dir, &["n1", "n2", "n3", "n4"]);
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        r["inventory"],
        json!([
            {"config": "app", "nodes": 1, "findings": 1, "by_kind": {"drift": 1}},
            {"config": "extra", "nodes": 1, "findings": 1, "by_kind": {"unbaselined": 1}},
        ]),
        "{run}"
    );
    let initial: Vec<&str> = findings(&r)
        .iter()
        .filter(|f| f["initial"] == true)
        .map(|f| f["node"].as_str().unwrap())
        .collect();
    assert_eq!(initial, vec!["n4", "n4"], "{run}");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. An unreadable node keeps its findings
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn an_unreadable_node_keeps_its_findings() {
    let sim = start_fleet(vec![
        sim_node("web", vec![("/c", json_body(&json!({"port": 81})))]),
        sim_node("ok", vec![("/c", json_body(&json!({"port": 82})))]),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut toml = String::from(
        r#"[scan]
retries = 0
timeout = "2s"

[[config]]
name = "c"
source.http = "http://${node.vars.addr}/c"
format = "json"
"#,
    );
    for n in &sim.fleet.nodes {
        toml.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nvars = {{ addr = \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/c/default.json", r#"{"port": 80}"#),
        ],
    );

    let (run, r1) = audit_json(dir, &[]);
    run.expect_code(1);
    let drift = the_drift(&r1, "web", "c", "$.port").clone();
    let drift_fp = drift["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(drift["state"], "new");

    // web is down; ok is fixed.
    sim.fleet.set("web", "/c", Behavior::Status(503));
    sim.fleet.set("ok", "/c", json_body(&json!({"port": 80})));
    let (run, r2) = audit_json(dir, &[]);
    run.expect_code(3);
    assert_eq!(
        states(findings(&r2)),
        expect_states(&[("web", "c", "", "unreachable", "new")]),
        "nothing about web's content is invented or resolved\n{run}"
    );
    assert_eq!(
        states(&arr(&r2["resolved"])),
        expect_states(&[("ok", "c", "$.port", "drift", "resolved")]),
        "only the readable node's drift resolves\n{run}"
    );
    let unreachable_fp = findings(&r2)[0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let all = stored(dir, &[]);
    assert_eq!(
        states(&all),
        expect_states(&[
            ("ok", "c", "$.port", "drift", "resolved"),
            ("web", "c", "$.port", "drift", "new"),
            ("web", "c", "", "unreachable", "new"),
        ])
    );
    let kept = all
        .iter()
        .find(|f| f["fingerprint"] == drift_fp.as_str())
        .unwrap();
    assert_eq!(kept["last_seen"], drift["last_seen"], "untouched: {kept:#}");
    assert_eq!(kept["actual"], 81);

    // Still down: the drift stays as it was, the unreachable finding goes on.
    let (run, r3) = audit_json(dir, &[]);
    run.expect_code(3);
    assert_eq!(
        states(findings(&r3)),
        expect_states(&[("web", "c", "", "unreachable", "ongoing")]),
        "{run}"
    );
    assert!(arr(&r3["resolved"]).is_empty(), "{run}");
    assert_eq!(
        stored(dir, &["--node", "web", "--kind", "drift"])[0]["state"],
        "new"
    );

    // Back and fixed: both resolve.
    sim.fleet.set("web", "/c", json_body(&json!({"port": 80})));
    let (run, r4) = audit_json(dir, &[]);
    run.expect_code(0);
    assert!(findings(&r4).is_empty(), "{run}");
    let mut got = fingerprints(&arr(&r4["resolved"]));
    got.sort();
    let mut want = vec![drift_fp, unreachable_fp];
    want.sort();
    assert_eq!(got, want, "{run}");
    assert!(
        stored(dir, &[]).iter().all(|f| f["state"] == "resolved"),
        "{:#?}",
        stored(dir, &[])
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Regression by value
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn regression_by_value_after_a_baseline_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            ("plumb.toml", &app_toml(&["n1", "n2"], "")),
            ("baselines/app/default.json", r#"{"port": 80}"#),
            ("live/n1.json", r#"{"port": 80}"#),
            ("live/n2.json", r#"{"port": 80}"#),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert!(findings(&r).is_empty(), "{run}");

    // The fleet moves to 443: a new approved baseline version.
    write_tree(
        dir,
        &[
            ("baselines/app/default.json", r#"{"port": 443}"#),
            ("live/n1.json", r#"{"port": 443}"#),
            ("live/n2.json", r#"{"port": 443}"#),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert!(findings(&r).is_empty(), "{run}");

    // n1 goes back to the superseded value; n2 moves to a value no baseline ever had.
    write_tree(
        dir,
        &[
            ("live/n1.json", r#"{"port": 80}"#),
            ("live/n2.json", r#"{"port": 8080}"#),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(findings(&r)),
        expect_states(&[
            ("n1", "app", "$.port", "regression", "new"),
            ("n2", "app", "$.port", "drift", "new"),
        ]),
        "{run}"
    );
    let f = the_finding(&r, "n1", "app", "$.port");
    assert_eq!(f["expected"], 443);
    assert_eq!(f["actual"], 80);
    assert!(
        matches!(f["severity"].as_str(), Some("high" | "critical")),
        "{f:#}"
    );
    let of = f["regression_of"].as_str().unwrap_or_default();
    let rest = of
        .strip_prefix("baselines/app/default.json@")
        .unwrap_or_else(|| panic!("regression_of names the baseline file: {f:#}"));
    let (hash8, when) = rest.split_once(' ').unwrap();
    assert_eq!(hash8.len(), 8, "{of}");
    assert!(hash8.chars().all(|c| c.is_ascii_hexdigit()), "{of}");
    assert!(
        when.starts_with("(superseded ") && when.ends_with(')'),
        "{of}"
    );
    parse_time(&json!(&when["(superseded ".len()..when.len() - 1]));
    let d = the_finding(&r, "n2", "app", "$.port");
    assert!(d.get("regression_of").is_none(), "{d:#}");
    assert_eq!(d["severity"], "medium");

    // Still there next scan: an ongoing regression that still names the version.
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    let f = the_finding(&r, "n1", "app", "$.port");
    assert_eq!(f["kind"], "regression", "{run}");
    assert_eq!(f["state"], "ongoing", "{run}");
    assert_eq!(f["regression_of"].as_str(), Some(of), "{run}");
}

#[test]
fn approve_to_default_supersedes_the_old_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            ("plumb.toml", &app_toml(&["n1", "n2"], "")),
            ("baselines/app/default.json", r#"{"port": 80}"#),
            ("live/n1.json", r#"{"port": 80}"#),
            ("live/n2.json", r#"{"port": 80}"#),
        ],
    );
    audit_json(dir, &[]).0.expect_code(0);
    // n1 is moved to 443 and that becomes the fleet's approved value; n2 stays on the old one.
    write_tree(dir, &[("live/n1.json", r#"{"port": 443}"#)]);
    plumb(dir, &["approve", "n1", "app", "--to", "default"]).expect_code(0);
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(findings(&r)),
        expect_states(&[("n2", "app", "$.port", "regression", "new")]),
        "{run}"
    );
    let f = &findings(&r)[0];
    assert_eq!(
        (f["expected"].clone(), f["actual"].clone()),
        (json!(443), json!(80))
    );
    assert!(
        f["regression_of"]
            .as_str()
            .is_some_and(|s| s.starts_with("baselines/app/default.json@")),
        "{f:#}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Flapping
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn flapping_is_reported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let extra = "\n[findings]\nflap_changes = 2\nflap_window = \"1h\"\nflap_quiet = \"1h\"\n";
    write_tree(
        dir,
        &[
            ("plumb.toml", &app_toml(&["n1"], extra)),
            ("baselines/app/default.json", r#"{"port": 80}"#),
            ("live/n1.json", r#"{"port": 81}"#),
        ],
    );
    let bad = r#"{"port": 81}"#;
    let good = r#"{"port": 80}"#;
    let mut fp = String::new();
    let mut started = Vec::new();
    let mut seen_states = Vec::new();
    for (i, live) in [bad, good, bad, good, bad, good].into_iter().enumerate() {
        write_tree(dir, &[("live/n1.json", live)]);
        let (run, r) = audit_json(dir, &[]);
        if i == 0 {
            fp = the_drift(&r, "n1", "app", "$.port")["fingerprint"]
                .as_str()
                .unwrap()
                .to_string();
        }
        for s in arr(&r["flapping_started"]) {
            started.push((i, s.as_str().unwrap().to_string()));
        }
        let state = findings(&r)
            .first()
            .map(|f| f["state"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "-".into());
        seen_states.push(state);
        if i >= 2 {
            assert!(
                arr(&r["resolved"]).is_empty(),
                "a flapping finding is not resolved again and again\n{run}"
            );
        }
    }
    // Appear (1), disappear (2), appear (3 > 2): flapping from the third scan on, reported once.
    assert_eq!(started, vec![(2, fp.clone())]);
    assert_eq!(
        seen_states,
        vec!["new", "-", "flapping", "-", "flapping", "-"]
    );
    let all = stored(dir, &["--state", "flapping"]);
    assert_eq!(fingerprints(&all), vec![fp.clone()]);
}

#[test]
fn flapping_clears_after_a_quiet_period_and_is_not_reported_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A quiet period shorter than the window: the changes that made it flap are still inside the window when it
    // clears.
    let extra = "\n[findings]\nflap_changes = 2\nflap_window = \"1h\"\nflap_quiet = \"2s\"\n";
    write_tree(
        dir,
        &[
            ("plumb.toml", &app_toml(&["n1"], extra)),
            ("baselines/app/default.json", r#"{"port": 80}"#),
        ],
    );
    let mut started = Vec::new();
    let mut seen_states = Vec::new();
    let mut audit = |live: &str, started: &mut Vec<String>| {
        write_tree(dir, &[("live/n1.json", live)]);
        let (_, r) = audit_json(dir, &[]);
        started.extend(
            arr(&r["flapping_started"])
                .iter()
                .map(|s| s.as_str().unwrap().to_string()),
        );
        let state = findings(&r)
            .first()
            .map(|f| f["state"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "-".into());
        seen_states.push(state);
        r
    };
    let (bad, good) = (r#"{"port": 81}"#, r#"{"port": 80}"#);
    audit(bad, &mut started);
    audit(good, &mut started);
    audit(bad, &mut started);
    assert_eq!(started.len(), 1);
    // Present and unchanged through the quiet period: it clears, and stays cleared.
    std::thread::sleep(Duration::from_millis(2500));
    audit(bad, &mut started);
    let r = audit(bad, &mut started);
    audit(bad, &mut started);
    assert_eq!(
        seen_states,
        vec!["new", "-", "flapping", "ongoing", "ongoing", "ongoing"],
        "{r:#}"
    );
    assert_eq!(started.len(), 1, "flapping is reported once: {started:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Persistence gate
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn persistence_gate_for_two_scans() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = r#"
[scan]
retries = 0

[[node]]
name = "n1"

[[config]]
name = "gated"
source.file = "live/gated.json"
format = "json"
for = "2 scans"

[[config]]
name = "slow"
source.file = "live/slow.json"
format = "json"
for = "10m"

[[config]]
name = "plain"
source.file = "live/plain.json"
format = "json"
"#;
    let rules = r#"
[[rule]]
id = "port-443"
config = "plain"
severity = "high"
path = "$.port"
equals = 443
for = "2 scans"
"#;
    write_tree(
        dir,
        &[
            ("plumb.toml", toml),
            ("rules/r.toml", rules),
            ("baselines/gated/default.json", r#"{"v": 1}"#),
            ("baselines/slow/default.json", r#"{"v": 1}"#),
            (
                "baselines/plain/default.json",
                r#"{"port": 80, "name": "a"}"#,
            ),
            ("live/gated.json", r#"{"v": 2}"#),
            ("live/slow.json", r#"{"v": 2}"#),
            ("live/plain.json", r#"{"port": 80, "name": "b"}"#),
        ],
    );
    let alertable = |r: &Value| -> Vec<(String, String, bool)> {
        let mut v: Vec<_> = findings(r)
            .iter()
            .map(|f| {
                (
                    f["config"].as_str().unwrap().to_string(),
                    f["kind"].as_str().unwrap().to_string(),
                    f["alertable"].as_bool().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let row = |c: &str, k: &str, a: bool| (c.to_string(), k.to_string(), a);

    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        alertable(&r),
        vec![
            row("gated", "drift", false),
            row("plain", "drift", true),
            row("plain", "violation", false),
            row("slow", "drift", false),
        ],
        "gated findings are reported but not alertable yet\n{run}"
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        alertable(&r),
        vec![
            row("gated", "drift", true),
            row("plain", "drift", true),
            row("plain", "violation", true),
            row("slow", "drift", false),
        ],
        "two scans passed; ten minutes did not\n{run}"
    );

    // Fixed, then back: the gate starts over with the new episode.
    write_tree(dir, &[("live/gated.json", r#"{"v": 1}"#)]);
    audit_json(dir, &[]).0.expect_code(1);
    write_tree(dir, &[("live/gated.json", r#"{"v": 2}"#)]);
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    let f = the_finding(&r, "n1", "gated", "$.v");
    assert_eq!(f["state"], "reopened", "{run}");
    assert_eq!(f["alertable"], false, "{run}");
    let (run, r) = audit_json(dir, &[]);
    assert_eq!(
        the_finding(&r, "n1", "gated", "$.v")["alertable"],
        true,
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Acknowledgements
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn ack_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            ("plumb.toml", &app_toml(&["n1", "n2", "n3"], "")),
            ("baselines/app/default.json", r#"{"port": 80}"#),
            ("live/n1.json", r#"{"port": 81}"#),
            ("live/n2.json", r#"{"port": 81}"#),
            ("live/n3.json", r#"{"port": 81}"#),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    let fp_of = |r: &Value, node: &str| {
        the_drift(r, node, "app", "$.port")["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (fp1, fp2, fp3) = (fp_of(&r, "n1"), fp_of(&r, "n2"), fp_of(&r, "n3"));

    // Errors: exit 2 with a message, nothing stored.
    let errors: [(&[&str], &str); 6] = [
        (&["ack", &fp1, "--reason", "x"], "--until"),
        (&["ack", &fp1, "--until", "1d"], "--reason"),
        (
            &["ack", &fp1, "--reason", "x", "--until", "2020-01-01"],
            "not in the future",
        ),
        (
            &["ack", &fp1, "--reason", "x", "--until", "soon"],
            "--until",
        ),
        (
            &["ack", "ffffffffffffffff", "--reason", "x", "--until", "1d"],
            "no finding",
        ),
        (&["unack", "ffffffffffffffff"], "no acknowledgement"),
    ];
    for (args, needle) in errors {
        let run = plumb(dir, args);
        run.expect_code(2);
        assert!(
            run.stderr.contains(needle),
            "stderr should say `{needle}`\n{run}"
        );
    }
    let run = plumb(dir, &["ack", "--list", "--format", "json"]);
    run.expect_code(0);
    assert_eq!(run.json(), json!([]), "{run}");

    // Acknowledge n1 by a prefix of its fingerprint.
    let run = plumb(
        dir,
        &[
            "ack",
            &fp1[..10],
            "--reason",
            "planned migration",
            "--until",
            "1d",
            "--owner",
            "alice",
        ],
    );
    run.expect_code(0);
    assert!(run.stdout.contains(&fp1), "{run}");
    let run = plumb(dir, &["ack", "--list", "--format", "json"]);
    run.expect_code(0);
    let list = arr(&run.json());
    assert_eq!(list.len(), 1, "{run}");
    assert_eq!(list[0]["fingerprint"], fp1.as_str());
    assert_eq!(list[0]["owner"], "alice");
    assert_eq!(list[0]["reason"], "planned migration");
    assert_eq!(list[0]["value_only"], false);
    let until = parse_time(&list[0]["until"]);
    let in_a_day = chrono::Utc::now() + chrono::Duration::days(1);
    assert!(
        (until.with_timezone(&chrono::Utc) - in_a_day)
            .num_seconds()
            .abs()
            < 120,
        "{until}"
    );
    let run = plumb(dir, &["ack", "--list"]);
    assert!(run.stdout.contains("1 acknowledgements in force"), "{run}");

    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    let f = the_drift(&r, "n1", "app", "$.port");
    assert_eq!(f["state"], "acknowledged", "{run}");
    assert_eq!(f["alertable"], false, "{run}");
    assert_eq!(f["ack"]["owner"], "alice");
    assert_eq!(f["ack"]["reason"], "planned migration");
    assert_eq!(f["ack"]["until"], list[0]["until"]);
    let other = the_drift(&r, "n2", "app", "$.port");
    assert_eq!(other["state"], "ongoing");
    assert_eq!(other["alertable"], true);
    assert_eq!(
        stored(dir, &["--state", "acknowledged"])
            .iter()
            .map(|f| f["node"].clone())
            .collect::<Vec<_>>(),
        vec![json!("n1")]
    );

    // unack: live again.
    let run = plumb(dir, &["unack", &fp1]);
    run.expect_code(0);
    let run = plumb(dir, &["ack", "--list", "--format", "json"]);
    assert_eq!(run.json(), json!([]), "{run}");
    let (run, r) = audit_json(dir, &[]);
    let f = the_drift(&r, "n1", "app", "$.port");
    assert_eq!(f["state"], "ongoing", "{run}");
    assert_eq!(f["alertable"], true, "{run}");
    assert!(f.get("ack").is_none(), "{f:#}");

    // --value-only: ends as soon as the observed value changes.
    plumb(
        dir,
        &[
            "ack",
            &fp2,
            "--reason",
            "known",
            "--until",
            "7d",
            "--value-only",
        ],
    )
    .expect_code(0);
    let (run, r) = audit_json(dir, &[]);
    assert_eq!(
        the_drift(&r, "n2", "app", "$.port")["state"],
        "acknowledged",
        "{run}"
    );
    assert!(arr(&r["acks_ended"]).is_empty(), "{run}");
    write_tree(dir, &[("live/n2.json", r#"{"port": 82}"#)]);
    let (run, r) = audit_json(dir, &[]);
    let f = the_drift(&r, "n2", "app", "$.port");
    assert_eq!(f["state"], "ongoing", "{run}");
    assert_eq!(f["alertable"], true, "{run}");
    assert_eq!(f["actual"], 82);
    assert_eq!(r["acks_ended"], json!([fp2]), "{run}");
    let run = plumb(dir, &["ack", "--list", "--format", "json"]);
    assert_eq!(run.json(), json!([]), "{run}");

    // An ack that expires.
    plumb(dir, &["ack", &fp3, "--reason", "brief", "--until", "2s"]).expect_code(0);
    let run = plumb(dir, &["ack", "--list", "--format", "json"]);
    assert_eq!(fingerprints(&arr(&run.json())), vec![fp3.clone()], "{run}");
    let (run, r) = audit_json(dir, &[]);
    assert_eq!(
        the_drift(&r, "n3", "app", "$.port")["state"],
        "acknowledged",
        "{run}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let run = plumb(dir, &["ack", "--list", "--format", "json"]);
    assert_eq!(
        run.json(),
        json!([]),
        "an expired ack is no longer in force, scan or not\n{run}"
    );
    let (run, r) = audit_json(dir, &[]);
    let f = the_drift(&r, "n3", "app", "$.port");
    assert_eq!(f["state"], "ongoing", "{run}");
    assert_eq!(f["alertable"], true, "{run}");
    assert_eq!(r["acks_ended"], json!([fp3]), "{run}");
    let (run, r) = audit_json(dir, &[]);
    assert!(
        arr(&r["acks_ended"]).is_empty(),
        "an ended ack is reported once\n{run}"
    );

    // A resolved finding cannot be acknowledged.
    write_tree(dir, &[("live/n1.json", r#"{"port": 80}"#)]);
    audit_json(dir, &[]).0.expect_code(1);
    let run = plumb(dir, &["ack", &fp1, "--reason", "x", "--until", "1d"]);
    run.expect_code(2);
    assert!(run.stderr.contains("resolved"), "{run}");
}

// ---------------------------------------------------------------------------------------------------------------
// 8. Fleet-wide groups
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn fleet_wide_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                &app_toml(&["web-c", "web-a", "web-d", "web-b"], ""),
            ),
            ("baselines/app/default.json", r#"{"port": 80, "tls": true}"#),
            ("live/web-a.json", r#"{"port": 81, "tls": true}"#),
            ("live/web-b.json", r#"{"port": 82, "tls": true}"#),
            ("live/web-c.json", r#"{"port": 81, "tls": false}"#),
            ("live/web-d.json", r#"{"port": 81, "tls": true}"#),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(findings(&r).len(), 5, "{run}");
    assert_eq!(
        r["groups"],
        json!([{
            "kind": "drift",
            "config": "app",
            "path": "$.port",
            "expected": 80,
            "actual": 81,
            "count": 3,
            "nodes": ["web-a", "web-c", "web-d"],
        }]),
        "{run}"
    );
    // Still one group on the next scan, and the human report shows it with its nodes.
    let (run, r) = audit_json(dir, &[]);
    assert_eq!(arr(&r["groups"]).len(), 1, "{run}");
    let run = plumb(dir, &["audit"]);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("3 nodes") && l.contains("web-a, web-c, web-d")),
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 9. `plumb findings` filters and `plumb history`
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn findings_filters_and_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut toml = app_toml(&["n1", "n2"], "");
    toml.push_str(
        r#"
[[config]]
name = "web"
source.file = "live/${node.name}.txt"
format = "text"
"#,
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            (
                "baselines/app/default.json",
                r#"{"port": 80, "debug": false}"#,
            ),
            ("baselines/web/default.txt", "alpha\nbeta\n"),
            ("live/n1.json", r#"{"port": 81, "debug": true}"#),
            ("live/n2.json", r#"{"port": 81, "debug": false}"#),
            ("live/n1.txt", "alpha\nbeta\n"),
            ("live/n2.txt", "alpha\nGAMMA\n"),
        ],
    );
    let (run, r1) = audit_json(dir, &[]);
    run.expect_code(1);
    write_tree(dir, &[("live/n1.json", r#"{"port": 81, "debug": false}"#)]);
    let (run, r2) = audit_json(dir, &[]);
    run.expect_code(1);
    // Unchanged scans add no history.
    audit_json(dir, &[]).0.expect_code(1);
    audit_json(dir, &[]).0.expect_code(1);

    let sel = |extra: &[&str]| states(&stored(dir, extra));
    assert_eq!(
        sel(&[]),
        expect_states(&[
            ("n1", "app", "$.debug", "drift", "resolved"),
            ("n1", "app", "$.port", "drift", "ongoing"),
            ("n2", "app", "$.port", "drift", "ongoing"),
            ("n2", "web", "line 2", "drift", "ongoing"),
        ])
    );
    assert_eq!(
        sel(&["--state", "resolved"]),
        expect_states(&[("n1", "app", "$.debug", "drift", "resolved")])
    );
    assert_eq!(sel(&["--state", "ongoing"]).len(), 3);
    assert_eq!(sel(&["--state", "new"]), vec![]);
    assert_eq!(
        sel(&["--node", "n2"]),
        expect_states(&[
            ("n2", "app", "$.port", "drift", "ongoing"),
            ("n2", "web", "line 2", "drift", "ongoing"),
        ])
    );
    assert_eq!(
        sel(&["--for-config", "web"]),
        expect_states(&[("n2", "web", "line 2", "drift", "ongoing")])
    );
    assert_eq!(
        sel(&["--kind", "drift", "--node", "n1", "--state", "ongoing"]),
        expect_states(&[("n1", "app", "$.port", "drift", "ongoing")])
    );
    assert_eq!(sel(&["--kind", "regression"]), vec![]);
    assert_eq!(sel(&["--node", "nobody"]), vec![]);
    let run = plumb(dir, &["findings", "--state", "bogus"]);
    run.expect_code(2);
    assert!(run.stderr.contains("bogus"), "{run}");
    let run = plumb(dir, &["findings", "--kind", "bogus"]);
    run.expect_code(2);
    let run = plumb(dir, &["findings", "--node", "n2"]);
    run.expect_code(0);
    assert!(run.stdout.ends_with("2 findings\n"), "{run}");

    // History: one entry per content change.
    let history = |args: &[&str]| {
        let mut a = vec!["history"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--format", "json"]);
        let run = plumb(dir, &a);
        run.expect_code(0);
        arr(&run.json())
    };
    let h = history(&["n1", "app"]);
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[0]["scan_id"], r1["scan_id"]);
    assert_eq!(h[1]["scan_id"], r2["scan_id"]);
    assert_eq!(h[0]["diff"], "", "the first snapshot has no diff");
    assert_ne!(h[0]["hash"], h[1]["hash"]);
    let diff = h[1]["diff"].as_str().unwrap();
    assert!(
        diff.contains("--- before") && diff.contains("+++ after"),
        "{diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.starts_with('-') && l.contains("\"debug\": true")),
        "{diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.starts_with('+') && l.contains("\"debug\": false")),
        "{diff}"
    );
    assert!(
        !diff
            .lines()
            .any(|l| l.starts_with(['-', '+']) && l.contains("port")),
        "only the changed line: {diff}"
    );
    let all = history(&["n1"]);
    assert_eq!(
        all.iter()
            .map(|e| e["config"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["app", "app", "web"]
    );
    assert_eq!(history(&["n2", "web"]).len(), 1);
    let run = plumb(dir, &["history", "n1", "app"]);
    run.expect_code(0);
    assert!(run.stdout.contains("first snapshot"), "{run}");
    assert!(run.stdout.contains("+  \"debug\": false"), "{run}");

    let run = plumb(dir, &["history", "nobody"]);
    run.expect_code(2);
    assert!(run.stderr.contains("nobody"), "{run}");
    let run = plumb(dir, &["history", "n1", "nothing"]);
    run.expect_code(2);
}

// ---------------------------------------------------------------------------------------------------------------
// 10. Retention
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn retention_prunes_old_history_but_not_live_findings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                &app_toml(&["n1", "n2", "n3"], "\n[store]\nkeep = \"1s\"\n"),
            ),
            (
                "baselines/app/default.json",
                r#"{"port": 80, "debug": false}"#,
            ),
            ("live/n1.json", r#"{"port": 81, "debug": true}"#),
            ("live/n2.json", r#"{"port": 82, "debug": false}"#),
            ("live/n3.json", r#"{"port": 83, "debug": false}"#),
        ],
    );
    let history = |node: &str| {
        let run = plumb(dir, &["history", node, "app", "--format", "json"]);
        run.expect_code(0);
        arr(&run.json())
    };
    let (run, r1) = audit_json(dir, &[]);
    run.expect_code(1);
    let n2_drift = the_drift(&r1, "n2", "app", "$.port").clone();
    let n3_drift = the_drift(&r1, "n3", "app", "$.port").clone();
    assert_eq!(history("n1").len(), 1);

    // Older than the cut-off by the next scan: n1's $.debug resolves, n2 and n3 cannot be read.
    std::thread::sleep(Duration::from_millis(2200));
    write_tree(dir, &[("live/n1.json", r#"{"port": 81, "debug": false}"#)]);
    std::fs::remove_file(dir.join("live/n2.json")).unwrap();
    std::fs::remove_file(dir.join("live/n3.json")).unwrap();
    let (run, r2) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(&arr(&r2["resolved"])),
        expect_states(&[("n1", "app", "$.debug", "drift", "resolved")]),
        "{run}"
    );
    assert_eq!(
        states(&stored(dir, &["--state", "resolved"])),
        expect_states(&[("n1", "app", "$.debug", "drift", "resolved")]),
        "resolved in this scan: not older than `keep` yet, though last seen before the cut-off"
    );
    let h = history("n1");
    assert_eq!(h.len(), 1, "the old entry is pruned: {h:#?}");
    assert_eq!(h[0]["scan_id"], r2["scan_id"]);
    let h = history("n2");
    assert_eq!(
        h.len(),
        1,
        "a target keeps its latest entry, however old: {h:#?}"
    );
    assert_eq!(h[0]["scan_id"], r1["scan_id"]);

    std::thread::sleep(Duration::from_millis(2200));
    let (run, r3) = audit_json(dir, &[]);
    run.expect_code(1);
    let all = stored(dir, &[]);
    assert_eq!(
        states(&all),
        expect_states(&[
            ("n1", "app", "$.port", "drift", "ongoing"),
            ("n2", "app", "$.port", "drift", "new"),
            ("n2", "app", "", "unreachable", "ongoing"),
            ("n3", "app", "$.port", "drift", "new"),
            ("n3", "app", "", "unreachable", "ongoing"),
        ]),
        "the resolved finding is pruned; live ones stay, even unseen for longer than `keep`\n{run}"
    );
    let kept = all
        .iter()
        .find(|f| f["fingerprint"] == n2_drift["fingerprint"])
        .unwrap();
    assert_eq!(kept["last_seen"], n2_drift["last_seen"]);
    assert_eq!(history("n1")[0]["scan_id"], r2["scan_id"]);
    assert_eq!(history("n2")[0]["scan_id"], r1["scan_id"]);
    assert_eq!(findings(&r3).len(), 3, "{run}");

    // n2 comes back unchanged: its drift goes on from where it was, not as a new finding. n3 comes back fixed:
    // its drift resolves, and stays listed as resolved although it was last seen long ago.
    write_tree(
        dir,
        &[
            ("live/n2.json", r#"{"port": 82, "debug": false}"#),
            ("live/n3.json", r#"{"port": 80, "debug": false}"#),
        ],
    );
    let (run, r4) = audit_json(dir, &[]);
    run.expect_code(1);
    let f = the_drift(&r4, "n2", "app", "$.port");
    assert_eq!(f["state"], "ongoing", "{run}");
    assert_eq!(f["first_seen"], n2_drift["first_seen"], "{run}");
    assert_eq!(
        states(&arr(&r4["resolved"])),
        expect_states(&[
            ("n2", "app", "", "unreachable", "resolved"),
            ("n3", "app", "$.port", "drift", "resolved"),
            ("n3", "app", "", "unreachable", "resolved"),
        ]),
        "{run}"
    );
    let resolved = stored(dir, &["--node", "n3", "--kind", "drift"]);
    assert_eq!(
        fingerprints(&resolved),
        vec![n3_drift["fingerprint"].as_str().unwrap().to_string()]
    );
    assert_eq!(resolved[0]["state"], "resolved");
}

// ---------------------------------------------------------------------------------------------------------------
// 11. Secrets
// ---------------------------------------------------------------------------------------------------------------

const SECRETS: [&str; 6] = [
    "hunter2-SECRET",
    "AKIA-SECRET-KEY",
    "tok-SECRET-123",
    "swordfish-SECRET2",
    "hmac-SECRET-456",
    "SECRET",
];

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} leaks `{s}`:\n{text}");
    }
}

fn assert_no_secret_in_run(run: &Run) {
    assert_no_secret(
        &format!("stdout of plumb {}", run.args.join(" ")),
        &run.stdout,
    );
    assert_no_secret(
        &format!("stderr of plumb {}", run.args.join(" ")),
        &run.stderr,
    );
}

#[test]
fn secrets_never_leak() {
    let sim = start_fleet(vec![sim_node(
        "n1",
        vec![("/api", json_body(&json!({"ok": true})))],
    )]);
    let hook = common::receiver::Receiver::start(vec![common::receiver::Answer::status(200)]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = format!(
        r#"[scan]
retries = 0
timeout = "2s"

[[node]]
name = "n1"
vars = {{ addr = "{}" }}

[[config]]
name = "db"
source.file = "live/${{node.name}}.json"
format = "json"

[[config]]
name = "api"
source.http = "http://${{node.vars.addr}}/api"
headers = {{ Authorization = "Bearer ${{env:PLUMB_TEST_TOKEN}}" }}
format = "json"

[[sink]]
name = "hook"
type = "webhook"
url = "{}"
secret = "${{env:PLUMB_TEST_HOOK_SECRET}}"

[[route]]
name = "all"
sinks = ["hook"]
repeat_interval = "0s"

[[schedule]]
name = "all"
cron = "@daily"

[daemon]
listen = "127.0.0.1:0"
"#,
        sim.fleet.addr("n1").unwrap(),
        hook.url("/plumb")
    );
    let doc =
        r#"{"db": {"password": "hunter2-SECRET"}, "api_key": "AKIA-SECRET-KEY", "name": "x"}"#;
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/db/default.json", doc),
            ("baselines/api/default.json", r#"{"ok": true}"#),
            ("live/n1.json", doc),
        ],
    );
    let env = [
        ("PLUMB_TEST_TOKEN", Some("tok-SECRET-123")),
        ("PLUMB_TEST_HOOK_SECRET", Some("hmac-SECRET-456")),
        ("RUST_LOG", Some("debug")),
    ];
    let run = |args: &[&str]| {
        let r = run_with_env(dir, args, &env);
        assert_no_secret_in_run(&r);
        r
    };

    let r = run(&["audit", "--format", "json"]);
    r.expect_code(0);
    assert!(findings(&r.json()).is_empty(), "{r}");
    run(&["audit"]).expect_code(0);

    // The password changes: one drift, both sides markers.
    write_tree(
        dir,
        &[(
            "live/n1.json",
            r#"{"db": {"password": "swordfish-SECRET2"}, "api_key": "AKIA-SECRET-KEY", "name": "x"}"#,
        )],
    );
    let a = run(&["audit", "--format", "json"]);
    a.expect_code(1);
    let rep = a.json();
    assert_eq!(
        states(findings(&rep)),
        expect_states(&[("n1", "db", "$.db.password", "drift", "new")]),
        "{a}"
    );
    let f = &findings(&rep)[0];
    let marker = |v: &Value| {
        let s = v.as_str().unwrap_or_default().to_string();
        assert!(
            s.starts_with("<redacted:") && s.ends_with('>') && s.len() == "<redacted:>".len() + 8,
            "not a marker: {v}"
        );
        s
    };
    let (expected, actual) = (marker(&f["expected"]), marker(&f["actual"]));
    assert_ne!(expected, actual, "a changed secret is a change");
    let human = run(&["audit"]);
    human.expect_code(1);
    assert!(human.stdout.contains(&actual), "{human}");
    // Alert payloads: the drift goes to the webhook as markers; no body or header carries a secret (the webhook's
    // own secret only signs).
    write_tree(
        dir,
        &[(
            "live/n1.json",
            r#"{"db": {"password": "hunter2-SECRET"}, "api_key": "AKIA-SECRET-KEY", "name": "x"}"#,
        )],
    );
    run(&["audit", "--notify"]).expect_code(0);
    write_tree(
        dir,
        &[(
            "live/n1.json",
            r#"{"db": {"password": "swordfish-SECRET2"}, "api_key": "AKIA-SECRET-KEY", "name": "x"}"#,
        )],
    );
    run(&["audit", "--notify"]).expect_code(1);
    let reqs = hook.requests();
    assert!(!reqs.is_empty(), "the webhook got the alerts");
    let mut sent = String::new();
    for q in &reqs {
        sent.push_str(&String::from_utf8_lossy(&q.body));
        for (k, v) in &q.headers {
            sent.push_str(&format!("\n{k}: {v}"));
        }
    }
    assert!(
        sent.contains("<redacted:"),
        "the drift went out as markers:\n{sent}"
    );
    assert!(sent.contains("x-plumb-signature"), "signed:\n{sent}");
    assert_no_secret("the alert payloads and headers", &sent);
    // Log lines: the daemon at debug level, as text and as JSON, through a scan and its alerts.
    for format in ["text", "json"] {
        let d = run(&["run", "--once", "--log-format", format]);
        d.expect_code(0);
        assert!(d.stderr.lines().count() >= 3, "logs were written:\n{d}");
    }
    run(&["findings"]).expect_code(0);
    run(&["findings", "--format", "json"]).expect_code(0);
    let h = run(&["history", "n1"]);
    h.expect_code(0);
    assert!(h.stdout.contains("<redacted:"), "{h}");
    run(&["history", "n1", "db", "--format", "json"]).expect_code(0);
    let d = run(&["diff", "n1", "db"]);
    d.expect_code(1);
    assert!(
        d.stdout.contains(&expected) && d.stdout.contains(&actual),
        "{d}"
    );

    // Approve writes the markers, never the values; the next audit is clean.
    let ap = run(&["approve", "n1", "db"]);
    ap.expect_code(0);
    let written = dir.join("baselines/db/node/n1.json");
    let text = std::fs::read_to_string(&written).unwrap();
    assert_no_secret("the approved baseline", &text);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["db"]["password"], actual.as_str());
    assert_eq!(v["name"], "x");
    assert!(
        v["api_key"].as_str().unwrap().starts_with("<redacted:"),
        "{v}"
    );
    let r = run(&["audit", "--format", "json"]);
    r.expect_code(0);
    assert!(findings(&r.json()).is_empty(), "{r}");

    // The store holds no secret either, in any of its files.
    let mut files = 0;
    let mut markers = 0;
    for entry in std::fs::read_dir(dir.join(".plumb")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("state.db") {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&p).unwrap();
        let m = b"<redacted:";
        markers += bytes.windows(m.len()).filter(|w| w == m).count();
        for s in SECRETS {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{name} holds `{s}`"
            );
        }
    }
    assert!(files >= 1, "no store file found");
    assert!(
        markers > 0,
        "the store holds the redacted snapshots (what was searched is the real content)"
    );
    drop(sim);
}

// ---------------------------------------------------------------------------------------------------------------
// 12. kill -9
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn kill_minus_9_never_corrupts_the_store() {
    let mut specs = Vec::new();
    for i in 0..30 {
        let port = if i % 2 == 0 { 80 } else { 81 };
        let body = json!({"port": port}).to_string();
        let behavior = if i % 3 == 0 {
            Behavior::Slow {
                body: std::sync::Arc::new(body.into_bytes()),
                interval: Duration::from_millis(60),
            }
        } else {
            Behavior::serve("application/json", body)
        };
        specs.push(sim_node(&format!("n{i:02}"), vec![("/c", behavior)]));
    }
    let sim = start_fleet(specs);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut toml = String::from(
        r#"[scan]
retries = 0
timeout = "5s"

[[config]]
name = "c"
source.http = "http://${node.vars.addr}/c"
format = "json"
"#,
    );
    for n in &sim.fleet.nodes {
        toml.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nvars = {{ addr = \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/c/default.json", r#"{"port": 80}"#),
        ],
    );
    let drifted = 15;

    let mut lcg: u64 = 0;
    for i in 0..8u64 {
        lcg = lcg
            .wrapping_add(i)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = (lcg >> 33) % 900;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["audit", "--format", "json"])
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let status = child.wait().unwrap();
        println!("kill {i}: after {delay} ms (finished first: {finished}, {status})");
    }

    let db = dir.join(".plumb/state.db");
    {
        let store = plumb::store::sqlite::SqliteStore::open(&db).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(findings(&r).len(), drifted, "{run}");
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(findings(&r).len(), drifted, "{run}");
    assert!(
        findings(&r)
            .iter()
            .all(|f| f["state"] == "ongoing" && f["kind"] == "drift"),
        "{run}"
    );
    let fps: BTreeSet<String> = fingerprints(findings(&r)).into_iter().collect();
    assert_eq!(fps.len(), drifted, "no duplicates\n{run}");
    let all = stored(dir, &[]);
    assert_eq!(all.len(), drifted, "one record per fingerprint: {all:#?}");
    let stored_fps: BTreeSet<String> = fingerprints(&all).into_iter().collect();
    assert_eq!(stored_fps, fps);
    assert!(all.iter().all(|f| f["state"] == "ongoing"));
    let h = plumb(dir, &["history", "n01", "c", "--format", "json"]);
    h.expect_code(0);
    assert_eq!(
        arr(&h.json()).len(),
        1,
        "one snapshot, however many scans\n{h}"
    );
    {
        let store = plumb::store::sqlite::SqliteStore::open(&db).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }
    drop(sim);
}

// ---------------------------------------------------------------------------------------------------------------
// 13. The demo's store lives in memory
// ---------------------------------------------------------------------------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn demo_leaves_no_store_behind() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["plumb.toml", "nodes.csv"] {
        std::fs::copy(repo.join(f), dir.join(f)).unwrap();
    }
    for d in ["baselines", "rules"] {
        copy_dir(&repo.join(d), &dir.join(d));
    }
    let run = plumb(dir, &["demo", "--format", "json"]);
    run.expect_code(0);
    assert!(!findings(&run.json()).is_empty(), "{run}");
    assert!(
        !dir.join(".plumb").exists(),
        "the demo wrote a store file\n{run}"
    );
    // And it starts from scratch every time: the first scan is an initial inventory again.
    let run = plumb(dir, &["demo"]);
    run.expect_code(0);
    assert!(run.stdout.contains("initial inventory"), "{run}");
    assert!(!dir.join(".plumb").exists());
}
