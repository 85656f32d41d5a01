//! Warm scans through the real binary: a target whose body, baseline, rules and settings are unchanged since the
//! last scan keeps its findings without being parsed again (a hash, not a parse), and gives exactly what a full
//! evaluation gives; an edit of the baseline, a rule or the body is evaluated anew; a fetch failure after a warm
//! scan is still `unreachable`; conditional GET (`ETag` / `Last-Modified`): a `304 Not Modified` counts as
//! unchanged.
//!
//! Each test writes a project into a temporary directory; the store is `.plumb/state.db` beside plumb.toml.

mod common;

use common::*;
use plumb::sim::{Behavior, Fleet};
use serde_json::{Value, json};
use std::path::Path;

const RULE: &str = r#"[[rule]]
id = "workers-max"
config = "c"
severity = "high"
path = "$.workers"
le = 8
message = "{node}: {actual} workers"
"#;

const BASELINE: &str = r#"{"port": 80, "workers": 4, "name": "${node.name}"}"#;

fn body(name: &str, port: u16, workers: u32) -> Value {
    json!({"port": port, "workers": workers, "name": name})
}

/// A project for the running fleet: config `c` over http, one baseline, one rule.
fn project(dir: &Path, fleet: &Fleet) {
    let mut toml = String::from(
        "[scan]\nretries = 0\ntimeout = \"2s\"\n\n[[config]]\nname = \"c\"\n\
         source.http = \"http://${node.vars.addr}/c\"\nformat = \"json\"\n",
    );
    for n in &fleet.nodes {
        toml.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nvars = {{ addr = \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/c/default.json", BASELINE),
            ("rules/c.toml", RULE),
        ],
    );
}

/// n1 matches; n2 drifts on its port; n3 runs too many workers (a drift and a violation).
fn fleet_of_three(tagged: bool) -> Sim {
    let serve = |name: &str, port: u16, workers: u32| {
        let b = body(name, port, workers).to_string();
        if tagged {
            Behavior::tagged("application/json", b, &format!("\"{name}-1\""))
        } else {
            Behavior::serve("application/json", b)
        }
    };
    start_fleet(vec![
        sim_node("n1", vec![("/c", serve("n1", 80, 4))]),
        sim_node("n2", vec![("/c", serve("n2", 81, 4))]),
        sim_node("n3", vec![("/c", serve("n3", 80, 16))]),
    ])
}

/// Every finding without its times: what a warm result must reproduce exactly.
fn timeless(r: &Value) -> Vec<Value> {
    let mut v: Vec<Value> = findings(r)
        .iter()
        .map(|f| {
            let mut f = f.clone();
            let o = f.as_object_mut().unwrap();
            o.remove("first_seen");
            o.remove("last_seen");
            o.remove("fixed_at");
            f
        })
        .collect();
    v.sort_by_key(|f| f["fingerprint"].as_str().unwrap_or_default().to_string());
    v
}

/// `(kind, node, path, state)` of every finding, sorted.
fn states(r: &Value) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut v: Vec<_> = findings(r)
        .iter()
        .map(|f| (s(&f["kind"]), s(&f["node"]), s(&f["path"]), s(&f["state"])))
        .collect();
    v.sort();
    v
}

fn expect(items: &[(&str, &str, &str, &str)]) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = items
        .iter()
        .map(|(k, n, p, s)| (k.to_string(), n.to_string(), p.to_string(), s.to_string()))
        .collect();
    v.sort();
    v
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(".plumb/state.db")).unwrap()
}

/// How many targets the store holds an input key for.
fn keyed(dir: &Path) -> i64 {
    db(dir)
        .query_row(
            "SELECT COUNT(*) FROM targets WHERE input_body IS NOT NULL AND input_context IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Change the stored message of `node`'s findings of `kind`: only a warm result repeats the stored finding, so
/// the marker shows which path a scan took.
fn plant(dir: &Path, node: &str, kind: &str, message: &str) {
    let n = db(dir)
        .execute(
            "UPDATE findings SET record = json_set(record, '$.finding.message', ?3) WHERE node = ?1 AND kind = ?2",
            rusqlite::params![node, kind, message],
        )
        .unwrap();
    assert!(n > 0, "no {kind} finding of {node} to plant a marker on");
}

fn message<'a>(r: &'a Value, node: &str, kind: &str) -> &'a str {
    findings(r)
        .iter()
        .find(|f| f["node"] == node && f["kind"] == kind)
        .and_then(|f| f["message"].as_str())
        .unwrap_or_else(|| panic!("no {kind} finding of {node}:\n{r:#}"))
}

const THREE: &[(&str, &str, &str, &str)] = &[
    ("drift", "n2", "$.port", "ongoing"),
    ("drift", "n3", "$.workers", "ongoing"),
    ("violation", "n3", "$.workers", "ongoing"),
];

#[test]
fn an_unchanged_fleet_keeps_exactly_its_findings() {
    let sim = fleet_of_three(false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project(dir, &sim.fleet);

    let (run, r1) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(&r1),
        expect(
            &THREE
                .iter()
                .map(|(k, n, p, _)| (*k, *n, *p, "new"))
                .collect::<Vec<_>>()
        ),
        "{run}"
    );
    assert_eq!(keyed(dir), 3, "every read target has its input key");

    // A copy of the store as it is now, without input keys: there the next scan evaluates everything in full.
    let full = tempfile::tempdir().unwrap();
    project(full.path(), &sim.fleet);
    std::fs::create_dir_all(full.path().join(".plumb")).unwrap();
    db(dir)
        .execute(
            "VACUUM INTO ?1",
            [full.path().join(".plumb/state.db").to_str().unwrap()],
        )
        .unwrap();
    db(full.path())
        .execute(
            "UPDATE targets SET input_body = NULL, input_context = NULL",
            [],
        )
        .unwrap();

    let (run, r2) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(states(&r2), expect(THREE), "{run}");
    let (run_full, r2_full) = audit_json(full.path(), &[]);
    run_full.expect_code(1);
    assert_eq!(
        timeless(&r2),
        timeless(&r2_full),
        "a warm scan reports exactly what a full evaluation does"
    );
    assert_eq!(r2["diffs"], r2_full["diffs"], "the same diffs");
    assert_eq!(r2["diffs"], r1["diffs"]);
    assert_eq!(r2["nodes"], r1["nodes"]);
    assert!(
        r2["resolved"].as_array().unwrap().is_empty(),
        "nothing resolves\n{run}"
    );
    for f in findings(&r2) {
        let before = findings(&r1)
            .iter()
            .find(|g| g["fingerprint"] == f["fingerprint"])
            .unwrap();
        assert_eq!(f["first_seen"], before["first_seen"], "{f:#}");
    }

    // The warm path was taken: a marker planted on a stored finding comes back as it is.
    plant(dir, "n2", "drift", "planted");
    let (run, r3) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(states(&r3), expect(THREE), "{run}");
    assert_eq!(message(&r3, "n2", "drift"), "planted");
    // The plain history is untouched: one snapshot per target, from the first scan.
    let history = plumb(dir, &["history", "n2", "c", "--format", "json"]);
    history.expect_code(0);
    assert_eq!(
        history.json().as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
}

#[test]
fn a_changed_baseline_rule_or_body_is_evaluated_again() {
    let sim = fleet_of_three(false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project(dir, &sim.fleet);
    audit_json(dir, &[]).0.expect_code(1);
    audit_json(dir, &[]).0.expect_code(1);
    plant(dir, "n3", "violation", "planted");
    plant(dir, "n3", "drift", "planted");

    // Only the rule's message template changes: a rule edit all the same.
    write_tree(
        dir,
        &[(
            "rules/c.toml",
            &RULE.replace("{actual} workers", "{actual} workers (max 8)"),
        )],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(states(&r), expect(THREE), "{run}");
    assert_eq!(
        message(&r, "n3", "violation"),
        "n3: 16 workers (max 8)",
        "{run}"
    );
    assert!(!message(&r, "n3", "drift").contains("planted"), "{run}");

    // n2's own baseline approves its port: n2 is evaluated again and its drift resolves; n3 stays warm.
    plant(dir, "n3", "drift", "planted");
    write_tree(
        dir,
        &[(
            "baselines/c/node/n2.json",
            r#"{"port": 81, "workers": 4, "name": "${node.name}"}"#,
        )],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(&r),
        expect(&[
            ("drift", "n3", "$.workers", "ongoing"),
            ("violation", "n3", "$.workers", "ongoing"),
        ]),
        "{run}"
    );
    let resolved = r["resolved"].as_array().unwrap();
    assert_eq!(resolved.len(), 1, "{run}");
    assert_eq!(resolved[0]["node"], "n2");
    assert_eq!(
        message(&r, "n3", "drift"),
        "planted",
        "n3 was not parsed again"
    );

    // Without it, and with a rule that allows 32 workers: n2's drift reopens, n3's violation resolves.
    std::fs::remove_file(dir.join("baselines/c/node/n2.json")).unwrap();
    write_tree(dir, &[("rules/c.toml", &RULE.replace("le = 8", "le = 32"))]);
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(&r),
        expect(&[
            ("regression", "n2", "$.port", "reopened"),
            ("drift", "n3", "$.workers", "ongoing"),
        ]),
        "{run}"
    );
    assert!(!message(&r, "n3", "drift").contains("planted"), "{run}");
    let resolved = r["resolved"].as_array().unwrap();
    assert_eq!(resolved.len(), 1, "{run}");
    assert_eq!(resolved[0]["kind"], "violation");

    // A body change: n1 has a new key, n2 is fixed; n3 (unchanged) stays warm.
    plant(dir, "n3", "drift", "planted");
    let mut changed = body("n1", 80, 4);
    changed["extra"] = json!(true);
    sim.fleet.set(
        "n1",
        "/c",
        Behavior::serve("application/json", changed.to_string()),
    );
    sim.fleet.set(
        "n2",
        "/c",
        Behavior::serve("application/json", body("n2", 80, 4).to_string()),
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(&r),
        expect(&[
            ("drift", "n1", "$.extra", "new"),
            ("drift", "n3", "$.workers", "ongoing"),
        ]),
        "{run}"
    );
    assert_eq!(
        message(&r, "n3", "drift"),
        "planted",
        "n3 was not parsed again"
    );
    let resolved = r["resolved"].as_array().unwrap();
    assert_eq!(resolved.len(), 1, "{run}");
    assert_eq!(resolved[0]["node"], "n2");

    // Node labels and variables choose and fill baselines and appear in messages: an inventory edit of a node
    // is evaluated again.
    let toml = std::fs::read_to_string(dir.join("plumb.toml")).unwrap();
    write_tree(
        dir,
        &[(
            "plumb.toml",
            &toml.replace(
                "name = \"n3\"\n",
                "name = \"n3\"\nlabels = { tier = \"b\" }\n",
            ),
        )],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert!(!message(&r, "n3", "drift").contains("planted"), "{run}");
}

#[test]
fn a_fetch_failure_after_a_warm_scan_is_unreachable() {
    let sim = fleet_of_three(false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project(dir, &sim.fleet);
    audit_json(dir, &[]).0.expect_code(1);
    audit_json(dir, &[]).0.expect_code(1);

    sim.fleet.set("n2", "/c", Behavior::Status(503));
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        states(&r),
        expect(&[
            ("unreachable", "n2", "", "new"),
            ("drift", "n3", "$.workers", "ongoing"),
            ("violation", "n3", "$.workers", "ongoing"),
        ]),
        "{run}"
    );
    assert!(r["resolved"].as_array().unwrap().is_empty(), "{run}");
    assert_eq!(r["nodes"]["unreadable"], 1);

    // Back with the very same body: warm again, and the unreachable finding resolves instead of being repeated.
    sim.fleet.set(
        "n2",
        "/c",
        Behavior::serve("application/json", body("n2", 81, 4).to_string()),
    );
    plant(dir, "n2", "drift", "planted");
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(states(&r), expect(THREE), "{run}");
    assert_eq!(message(&r, "n2", "drift"), "planted", "reused");
    let resolved: Vec<&Value> = r["resolved"].as_array().unwrap().iter().collect();
    assert_eq!(resolved.len(), 1, "{run}");
    assert_eq!(resolved[0]["kind"], "unreachable");

    // Garbage is `invalid`; the same good body afterwards is warm and resolves it.
    sim.fleet.set(
        "n2",
        "/c",
        Behavior::serve("application/json", "{\"port\": 8"),
    );
    let (run, r) = audit_json(dir, &[]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        states(&r).contains(&("invalid".into(), "n2".into(), "".into(), "new".into())),
        "{run}"
    );
    sim.fleet.set(
        "n2",
        "/c",
        Behavior::serve("application/json", body("n2", 81, 4).to_string()),
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(states(&r), expect(THREE), "{run}");
    assert_eq!(message(&r, "n2", "drift"), "planted", "reused");
}

#[test]
fn not_modified_counts_as_unchanged() {
    let sim = fleet_of_three(true);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project(dir, &sim.fleet);

    audit_json(dir, &[]).0.expect_code(1);
    assert_eq!(sim.fleet.counts(), (3, 0), "the first scan asks plainly");
    let etags: Vec<String> = {
        let c = db(dir);
        let mut st = c.prepare("SELECT etag FROM targets ORDER BY node").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert_eq!(etags, ["\"n1-1\"", "\"n2-1\"", "\"n3-1\""]);

    plant(dir, "n2", "drift", "planted");
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(sim.fleet.counts(), (6, 3), "every node answered 304\n{run}");
    assert_eq!(states(&r), expect(THREE), "{run}");
    assert_eq!(message(&r, "n2", "drift"), "planted");
    assert_eq!(r["nodes"]["read"], 3, "a 304 is a read node");

    // A new version of n1 (new etag): a full answer, evaluated.
    sim.fleet.set(
        "n1",
        "/c",
        Behavior::tagged(
            "application/json",
            body("n1", 8080, 4).to_string(),
            "\"n1-2\"",
        ),
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(sim.fleet.counts(), (9, 5), "{run}");
    assert!(
        states(&r).contains(&("drift".into(), "n1".into(), "$.port".into(), "new".into())),
        "{run}"
    );

    // A baseline edit: plumb needs the bodies again, so it does not ask conditionally.
    write_tree(
        dir,
        &[(
            "baselines/c/default.json",
            r#"{"port": 81, "workers": 4, "name": "${node.name}"}"#,
        )],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        sim.fleet.counts(),
        (12, 5),
        "no 304 after a baseline edit\n{run}"
    );
    assert_eq!(
        states(&r),
        expect(&[
            ("drift", "n1", "$.port", "ongoing"),
            // Back to the port of the superseded baseline: a regression by value.
            ("regression", "n3", "$.port", "new"),
            ("drift", "n3", "$.workers", "ongoing"),
            ("violation", "n3", "$.workers", "ongoing"),
        ]),
        "{run}"
    );
    // And the scan after that is conditional again.
    audit_json(dir, &[]).0.expect_code(1);
    assert_eq!(sim.fleet.counts(), (15, 8));
}

#[test]
fn last_modified_alone_makes_the_fetch_conditional() {
    let lm = "Wed, 21 Oct 2026 07:28:00 GMT";
    let tagged = Behavior::Tagged {
        content_type: "application/json".into(),
        body: std::sync::Arc::new(body("n1", 81, 4).to_string().into_bytes()),
        etag: None,
        last_modified: Some(lm.into()),
    };
    let sim = start_fleet(vec![sim_node("n1", vec![("/c", tagged)])]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project(dir, &sim.fleet);
    audit_json(dir, &[]).0.expect_code(1);
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(sim.fleet.counts(), (2, 1), "{run}");
    assert_eq!(
        states(&r),
        expect(&[("drift", "n1", "$.port", "ongoing")]),
        "{run}"
    );
    // `plumb diff` needs the live content: never a warm result there, the diff is real.
    let diff = plumb(dir, &["diff", "n1"]);
    diff.expect_code(1);
    assert!(diff.stdout.contains("81"), "{diff}");
    assert_eq!(
        sim.fleet.counts().1,
        2,
        "diff may ask conditionally: it only needs the diff"
    );
}
