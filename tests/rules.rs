//! Rules through the real binary: violations beside drift in one scan, `--fail-on` over both, CEL runtime errors
//! as `invalid` for that rule alone, bad rule files rejected with `file:line`, `plumb rules test`, and the
//! repository's starter pack passing its own tests.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;

const PLUMB_TOML: &str = r#"
[scan]
timeout = "2s"
retries = 0

[[node]]
name = "n1"
labels = { role = "edge" }

[[node]]
name = "n2"
labels = { role = "db" }

[[config]]
name = "app"
source.file = "live/${node.name}.json"
format = "json"

[[config]]
name = "web"
nodes = { role = "edge" }
source.file = "live/${node.name}.nginx"
format = "text"
"#;

const RULES: &str = r#"
[[rule]]
id = "limit"
config = "app"
severity = "critical"
path = "$.features[*]"
count_max = 3
message = "{node}: {actual} features, limit 3"

[[rule]]
id = "port-443"
config = "app"
nodes = { role = "edge" }
severity = "low"
path = "$.port"
equals = 443

[[rule]]
id = "growth"
config = "app"
severity = "high"
path = "$.features[*]"
max_growth = "50%"

[[rule]]
id = "cel-broken-at-runtime"
config = "app"
severity = "high"
expr = "config.port + 'x' == 1"

[[rule]]
id = "tokens"
config = "web"
severity = "medium"
line_absent = '^\s*server_tokens\s+on'
section = "http"
"#;

fn project(dir: &Path, n1: &str, n2: &str, rules: &str) {
    write_tree(
        dir,
        &[
            ("plumb.toml", PLUMB_TOML),
            ("rules/r.toml", rules),
            ("live/n1.json", n1),
            ("live/n2.json", n2),
            ("live/n1.nginx", "http {\n  server_tokens off;\n}\n"),
            (
                "baselines/app/default.json",
                r#"{"port": 443, "features": ["a", "b"]}"#,
            ),
            (
                "baselines/web/default.txt",
                "http {\n  server_tokens off;\n}\n",
            ),
        ],
    );
}

fn rule_findings(r: &serde_json::Value) -> Vec<(String, String, String)> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut v: Vec<_> = findings(r)
        .iter()
        .filter(|f| !f["rule"].is_null())
        .map(|f| (s(&f["kind"]), s(&f["node"]), s(&f["rule"])))
        .collect();
    v.sort();
    v
}

#[test]
fn violations_and_drift_are_reported_together_and_fail_on_covers_both() {
    let dir = tempfile::tempdir().unwrap();
    let clean = r#"{"port": 443, "features": ["a", "b"]}"#;
    let without_broken = RULES.replace(
        "[[rule]]\nid = \"cel-broken-at-runtime\"\nconfig = \"app\"\nseverity = \"high\"\nexpr = \"config.port + 'x' == 1\"\n",
        "",
    );
    project(dir.path(), clean, clean, &without_broken);
    let (run, r) = audit_json(dir.path(), &[]);
    run.expect_code(0);
    assert!(findings(&r).is_empty(), "{run}");

    // n1: four features (limit 3, growth 100%) and port 80 (a low rule, and drift); n2 the same, but the port
    // rule selects only role=edge.
    let bad = r#"{"port": 80, "features": ["a", "b", "c", "d"]}"#;
    project(dir.path(), bad, bad, &without_broken);
    let (run, r) = audit_json(dir.path(), &[]);
    run.expect_code(1);
    assert_eq!(
        rule_findings(&r),
        vec![
            ("violation".into(), "n1".into(), "growth".into()),
            ("violation".into(), "n1".into(), "limit".into()),
            ("violation".into(), "n1".into(), "port-443".into()),
            ("violation".into(), "n2".into(), "growth".into()),
            ("violation".into(), "n2".into(), "limit".into()),
        ],
        "{run}"
    );
    let limit = findings(&r)
        .iter()
        .find(|f| f["rule"] == "limit" && f["node"] == "n1")
        .unwrap();
    assert_eq!(limit["severity"], "critical");
    assert_eq!(limit["message"], "n1: 4 features, limit 3");
    assert_eq!(limit["actual"], json!(4));
    let port = findings(&r)
        .iter()
        .find(|f| f["rule"] == "port-443")
        .unwrap();
    assert_eq!(
        (port["path"].clone(), port["actual"].clone()),
        (json!("$.port"), json!(80))
    );
    // Drift is in the same report, at the same paths.
    let drift_at = |path: &str| {
        findings(&r)
            .iter()
            .filter(|f| f["kind"] == "drift" && f["node"] == "n1" && f["path"] == path)
            .count()
    };
    assert_eq!(
        (
            drift_at("$.port"),
            drift_at("$.features[2]"),
            drift_at("$.features[3]")
        ),
        (1, 1, 1),
        "{run}"
    );

    // --fail-on critical: the critical violation still fails the run; only drift (medium) would not.
    plumb(dir.path(), &["audit", "--fail-on", "critical"]).expect_code(1);
    let only_low = r#"{"port": 80, "features": ["a", "b"]}"#;
    project(dir.path(), only_low, clean, &without_broken);
    plumb(dir.path(), &["audit", "--fail-on", "high"]).expect_code(0);
    plumb(dir.path(), &["audit", "--fail-on", "low"]).expect_code(1);
}

#[test]
fn a_cel_runtime_error_is_invalid_for_that_rule_and_the_other_rules_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"{"port": 443, "features": ["a", "b", "c", "d"]}"#;
    project(
        dir.path(),
        bad,
        r#"{"port": 443, "features": ["a", "b"]}"#,
        RULES,
    );
    let (run, r) = audit_json(dir.path(), &[]);
    run.expect_code(1);
    let kinds = rule_findings(&r);
    assert!(
        kinds.contains(&(
            "invalid".into(),
            "n1".into(),
            "cel-broken-at-runtime".into()
        )),
        "{run}"
    );
    assert!(
        kinds.contains(&(
            "invalid".into(),
            "n2".into(),
            "cel-broken-at-runtime".into()
        )),
        "{run}"
    );
    assert!(
        kinds.contains(&("violation".into(), "n1".into(), "limit".into())),
        "{run}"
    );
    let inv = findings(&r)
        .iter()
        .find(|f| f["kind"] == "invalid" && f["node"] == "n1")
        .unwrap();
    assert!(
        inv["message"]
            .as_str()
            .unwrap()
            .contains("could not be evaluated"),
        "{inv}"
    );
    // Both nodes were read: a rule error is not an unreadable node.
    assert_eq!(r["nodes"]["unreadable"], 0, "{run}");
}

#[test]
fn line_rules_look_inside_their_section() {
    let dir = tempfile::tempdir().unwrap();
    let clean = r#"{"port": 443, "features": ["a", "b"]}"#;
    project(dir.path(), clean, clean, RULES);
    write_tree(
        dir.path(),
        &[(
            "live/n1.nginx",
            "server_tokens on;\nhttp {\n  server {\n    server_tokens on;\n  }\n}\n",
        )],
    );
    let (run, r) = audit_json(dir.path(), &[]);
    let f = findings(&r)
        .iter()
        .find(|f| f["rule"] == "tokens")
        .unwrap_or_else(|| panic!("{run}"));
    assert_eq!(
        f["path"], "line 4",
        "the top-level line 1 is outside `http`\n{run}"
    );
    assert_eq!(f["actual"], "    server_tokens on;");
}

#[test]
fn bad_rule_files_exit_2_with_file_and_line_and_contact_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let clean = r#"{"port": 443, "features": ["a", "b"]}"#;
    let cases: &[(&str, usize, &str)] = &[
        (
            "[[rule]]\nid = \"a\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$.x\"\nequal = 1\n",
            6,
            "unknown field `equal`",
        ),
        (
            "[[rule]]\nid = \"a\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$..[\"\nexists = true\n",
            2,
            "not a valid JSONPath",
        ),
        (
            "[[rule]]\nid = \"a\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$.x\"\nmatches = \"[z-a]\"\n",
            2,
            "not a valid regex",
        ),
        (
            "[[rule]]\nid = \"a\"\nconfig = \"app\"\nseverity = \"low\"\nexpr = \"config.(\"\n",
            2,
            "not valid CEL",
        ),
        (
            "\n[[rule]]\nid = \"a\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$.x\"\n",
            3,
            "no assertion",
        ),
        (
            "[[rule]]\nid = \"a\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$.x\"\nexists = true\n[[rule]]\nid = \"a\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$.y\"\nexists = true\n",
            8,
            "already used",
        ),
    ];
    for (rules, line, what) in cases {
        project(dir.path(), clean, clean, rules);
        // A marker proves no node was contacted: the command source would create it.
        let marker = dir.path().join("contacted");
        let toml = format!(
            "{PLUMB_TOML}\n[[config]]\nname = \"probe\"\nsource.command = [\"touch\", \"{}\"]\nformat = \"text\"\n",
            marker.display()
        );
        write_tree(dir.path(), &[("plumb.toml", &toml)]);
        for args in [&["audit"][..], &["check"][..], &["rules", "test"][..]] {
            let run = plumb(dir.path(), args);
            run.expect_code(2);
            assert!(
                run.stderr.contains(&format!("r.toml:{line}")),
                "want r.toml:{line}\n{run}"
            );
            assert!(run.stderr.contains(what), "want {what}\n{run}");
        }
        assert!(
            !marker.exists(),
            "a node was contacted despite a bad rule file"
        );
    }
}

#[test]
fn rules_test_reports_each_case_and_fails_on_a_wrong_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let clean = r#"{"port": 443, "features": ["a", "b"]}"#;
    let rules = r#"
[[rule]]
id = "limit"
config = "app"
severity = "critical"
path = "$.features[*]"
count_max = 2

[[rule.test]]
name = "two is fine"
config = { features = ["a", "b"] }
expect = "pass"

[[rule.test]]
name = "three is too many"
config = { features = ["a", "b", "c"] }
expect = "fail"
"#;
    project(dir.path(), clean, clean, rules);
    let run = plumb(dir.path(), &["rules", "test"]);
    run.expect_code(0);
    assert!(run.stdout.contains("ok   limit / two is fine"), "{run}");
    assert!(
        run.stdout.contains("ok   limit / three is too many"),
        "{run}"
    );
    assert!(run.stdout.contains("2 passed, 0 failed"), "{run}");

    let wrong = rules.replace("expect = \"fail\"", "expect = \"pass\"");
    project(dir.path(), clean, clean, &wrong);
    let run = plumb(dir.path(), &["rules", "test"]);
    run.expect_code(1);
    assert!(
        run.stdout
            .contains("FAIL limit / three is too many: expected Pass, got fail"),
        "{run}"
    );
    assert!(run.stdout.contains("1 passed, 1 failed"), "{run}");
}

#[test]
fn the_starter_pack_passes_its_own_tests() {
    let run = run_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["rules", "test"]);
    run.expect_code(0);
    // Every rule of the pack carries tests, and each software named in the issue is covered.
    for id in [
        "caddy-admin-localhost",
        "caddy-tls-min-1.2",
        "sshd-no-root-login",
        "sshd-no-password-auth",
        "sysctl-no-ip-forward",
        "nginx-server-tokens-off",
        "nginx-no-tls1-tls11",
        "k8s-no-privileged",
        "k8s-resource-limits",
        "features-count-limit",
        "features-unique",
        "features-growth",
    ] {
        assert!(
            run.stdout.contains(&format!("ok   {id} / ")),
            "{id} has no passing test\n{run}"
        );
    }
    assert!(!run.stdout.contains("FAIL"), "{run}");
    let check = run_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["check"]);
    check.expect_code(0);
    assert!(check.stdout.contains("rules"), "{check}");
}
