//! Unit tests of rule compilation and evaluation.

use super::*;
use serde_json::json;

fn rules(toml_text: &str) -> Result<RuleSet, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("r.toml"), toml_text).map_err(|e| e.to_string())?;
    load_dir(dir.path(), &[("c".into(), true), ("t".into(), false)]).map_err(|e| {
        e.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn node() -> Node {
    Node {
        name: "n1".into(),
        labels: [("role".to_string(), "edge".to_string())].into(),
        vars: Default::default(),
    }
}

fn eval(set: &RuleSet, doc: &Document, baseline: Option<&Document>) -> Vec<Outcome> {
    let n = node();
    let input = Input {
        node: &n,
        config: "c",
        doc,
        baseline,
        raw_len: doc.canonical_text().len(),
    };
    set.rules
        .iter()
        .map(|r| r.evaluate(&input, &mut CelCache::default()))
        .collect()
}

fn one(assertion: &str, path: &str, doc: Value) -> Outcome {
    let set = rules(&format!(
        "[[rule]]\nid = \"x\"\nconfig = \"c\"\nseverity = \"high\"\npath = \"{path}\"\n{assertion}\n"
    ))
    .unwrap();
    eval(&set, &Document::Tree(doc), None).remove(0)
}

fn passes(assertion: &str, path: &str, doc: Value) -> bool {
    match one(assertion, path, doc) {
        Outcome::Pass => true,
        Outcome::Fail { .. } => false,
        Outcome::Error(e) => panic!("error: {e}"),
    }
}

#[test]
fn scalar_assertions() {
    let d = json!({"port": 443, "mode": "strict", "ip_forward": "0", "tls": "1.2", "t": "30s"});
    assert!(passes("equals = 443", "$.port", d.clone()));
    assert!(!passes("equals = 80", "$.port", d.clone()));
    assert!(
        passes("equals = 0", "$.ip_forward", d.clone()),
        "kv strings compare with numbers"
    );
    assert!(passes("not_equals = \"off\"", "$.mode", d.clone()));
    assert!(passes("in = [\"strict\", \"lax\"]", "$.mode", d.clone()));
    assert!(!passes("not_in = [\"strict\"]", "$.mode", d.clone()));
    assert!(passes("matches = \"^str\"", "$.mode", d.clone()));
    assert!(!passes("not_matches = \"ict$\"", "$.mode", d.clone()));
    assert!(passes("ge = \"1.2\"", "$.tls", d.clone()));
    assert!(
        !passes("gt = \"1.10\"", "$.tls", d.clone()),
        "versions, not decimals"
    );
    assert!(passes("le = \"1m\"", "$.t", d.clone()), "durations");
    assert!(passes("lt = 1000", "$.port", d.clone()));
    assert!(passes("type = \"integer\"", "$.port", d.clone()));
    assert!(!passes("type = \"string\"", "$.port", d.clone()));
    match one("lt = 5", "$.mode", d) {
        Outcome::Fail { message, .. } => {
            assert!(message.contains("cannot be compared"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn presence_counts_and_uniqueness() {
    let d = json!({"features": ["a", "b", "a"], "users": [{"name": "x"}, {"name": "y"}, {"name": "x"}]});
    assert!(passes("exists = true", "$.features", d.clone()));
    assert!(!passes("exists = true", "$.nope", d.clone()));
    assert!(passes("absent = true", "$.nope", d.clone()));
    assert!(passes("count_max = 3", "$.features[*]", d.clone()));
    assert!(!passes("count_max = 2", "$.features[*]", d.clone()));
    assert!(!passes("count_min = 4", "$.features[*]", d.clone()));
    match one("unique = true", "$.features[*]", d.clone()) {
        Outcome::Fail { path, actual, .. } => {
            assert_eq!(path, "$.features[2]");
            assert_eq!(actual, json!("a"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!passes("unique = \"name\"", "$.users[*]", d.clone()));
    assert!(passes("unique = \"name\"", "$.users[0:2]", d));
}

#[test]
fn when_missing_defaults_and_override() {
    let d = json!({});
    assert!(
        !passes("equals = 1", "$.a", d.clone()),
        "positive assertions fail on a missing path"
    );
    assert!(
        passes("not_equals = 1", "$.a", d.clone()),
        "negative assertions pass"
    );
    assert!(passes(
        "equals = 1\nwhen_missing = \"pass\"",
        "$.a",
        d.clone()
    ));
    assert!(!passes("not_in = [1]\nwhen_missing = \"fail\"", "$.a", d));
}

#[test]
fn growth_and_size() {
    let set = rules(
        "[[rule]]\nid = \"g\"\nconfig = \"c\"\nseverity = \"critical\"\npath = \"$.f[*]\"\nmax_growth = \"50%\"\n\
         [[rule]]\nid = \"b\"\nconfig = \"c\"\nseverity = \"low\"\nmax_bytes = \"40B\"\n",
    )
    .unwrap();
    let base = Document::Tree(json!({"f": [1, 2, 3, 4]}));
    let ok = Document::Tree(json!({"f": [1, 2, 3, 4, 5, 6]}));
    let doubled = Document::Tree(json!({"f": [1, 2, 3, 4, 5, 6, 7, 8]}));
    let r = eval(&set, &ok, Some(&base));
    assert_eq!(r[0], Outcome::Pass);
    let r = eval(&set, &doubled, Some(&base));
    assert!(
        matches!(&r[0], Outcome::Fail { actual, .. } if actual.as_str().is_some_and(|s| s.contains("+100%"))),
        "{r:?}"
    );
    assert!(
        matches!(r[1], Outcome::Fail { .. }),
        "canonical text of 8 items is over 40 bytes"
    );
    assert_eq!(
        eval(&set, &doubled, None)[0],
        Outcome::Pass,
        "no baseline, nothing to grow from"
    );
}

#[test]
fn cel_expressions() {
    let set = rules(
        "[[rule]]\nid = \"e\"\nconfig = \"c\"\nseverity = \"high\"\npath = \"$.servers[*]\"\n\
         expr = \"value.port == 443 || node.labels.role == 'internal'\"\nmessage = \"{node}: {path} is {actual}\"\n\
         [[rule]]\nid = \"w\"\nconfig = \"c\"\nseverity = \"low\"\nexpr = \"size(config.servers) <= size(baseline.servers) + 1\"\n\
         [[rule]]\nid = \"bad\"\nconfig = \"c\"\nseverity = \"low\"\nexpr = \"config.nope.deeper == 1\"\n",
    )
    .unwrap();
    let doc = Document::Tree(json!({"servers": [{"port": 443}, {"port": 80}]}));
    let base = Document::Tree(json!({"servers": [{"port": 443}]}));
    let r = eval(&set, &doc, Some(&base));
    match &r[0] {
        Outcome::Fail { path, message, .. } => {
            assert_eq!(path, "$.servers[1]");
            assert_eq!(message, "n1: $.servers[1] is {\"port\":80}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r[1], Outcome::Pass);
    assert!(
        matches!(&r[2], Outcome::Error(e) if e.contains("expr failed")),
        "{:?}",
        r[2]
    );
}

#[test]
fn line_rules_with_sections() {
    let set = rules(
        "[[rule]]\nid = \"tokens\"\nconfig = \"t\"\nseverity = \"low\"\nline_present = '^\\s*server_tokens\\s+off;'\nsection = \"http\"\n\
         [[rule]]\nid = \"old-tls\"\nconfig = \"t\"\nseverity = \"high\"\nline_absent = 'ssl_protocols.*TLSv1(\\.1)?[ ;]'\nsection = \"server\"\n\
         [[rule]]\nid = \"ini\"\nconfig = \"t\"\nseverity = \"low\"\nline_absent = '^bind-address\\s*=\\s*0\\.0\\.0\\.0'\nsection = \"[mysqld]\"\n",
    )
    .unwrap();
    let text = |s: &str| Document::Text(s.lines().map(str::to_string).collect());
    let good = text(
        "http {\n  server_tokens off;\n  server {\n    listen 443 ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n  }\n}\n\
         ssl_protocols TLSv1;\n[client]\nbind-address = 0.0.0.0\n[mysqld]\nport = 3306\n",
    );
    assert_eq!(
        eval(&set, &good, None),
        vec![Outcome::Pass, Outcome::Pass, Outcome::Pass]
    );
    let bad = text(
        "http {\n  server {\n    server_tokens off;\n    ssl_protocols TLSv1 TLSv1.2;\n  }\n}\n[mysqld]\nbind-address = 0.0.0.0\n",
    );
    let r = eval(&set, &bad, None);
    assert_eq!(
        r[0],
        Outcome::Pass,
        "server_tokens inside a nested block of http still counts"
    );
    assert!(
        matches!(&r[1], Outcome::Fail { path, .. } if path == "line 4"),
        "{:?}",
        r[1]
    );
    assert!(
        matches!(&r[2], Outcome::Fail { path, .. } if path == "line 8"),
        "{:?}",
        r[2]
    );
}

#[test]
fn load_errors_name_file_and_line() {
    let e = rules(
        "[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\npath = \"$.x\"\nequal = 1\n",
    )
    .unwrap_err();
    assert!(e.contains("r.toml:6:1: unknown field `equal`"), "{e}");
    let e = rules(
        "[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\npath = \"$[\"\nequals = 1\n",
    )
    .unwrap_err();
    assert!(
        e.contains("r.toml:2: rule `a`: path `$[` is not a valid JSONPath"),
        "{e}"
    );
    let e = rules("[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\npath = \"$.x\"\nmatches = \"(\"\n").unwrap_err();
    assert!(e.contains("not a valid regex"), "{e}");
    let e = rules("[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\nexpr = \"1 +\"\n")
        .unwrap_err();
    assert!(
        e.contains("r.toml:2: rule `a`: expr `1 +` is not valid CEL"),
        "{e}"
    );
    let e = rules("[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\npath = \"$.x\"\nequals = 1\nin = [1]\n")
        .unwrap_err();
    assert!(
        e.contains("one assertion per rule, found equals, in"),
        "{e}"
    );
    let e = rules(
        "[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\npath = \"$.x\"\nexists = true\n\n[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\npath = \"$.y\"\nexists = true\n",
    )
    .unwrap_err();
    assert!(
        e.contains("r.toml:9: rule id `a` is already used at") && e.contains("r.toml:2"),
        "{e}"
    );
    let e =
        rules("[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"low\"\nline_absent = \"x\"\n")
            .unwrap_err();
    assert!(e.contains("line rules need a text config"), "{e}");
    let e = rules("[[rule]]\nid = \"a\"\nconfig = \"c\"\nseverity = \"severe\"\npath = \"$.x\"\nexists = true\n").unwrap_err();
    assert!(e.contains("r.toml:4:12: unknown variant `severe`"), "{e}");
}

#[test]
fn rule_tests_run() {
    let set = rules(
        "[[rule]]\nid = \"fwd\"\nconfig = \"k\"\nseverity = \"high\"\npath = \"$['net.ipv4.ip_forward']\"\nequals = 0\nformat = \"kv\"\n\
         [[rule.test]]\ninput = \"net.ipv4.ip_forward = 0\\n\"\nexpect = \"pass\"\n\
         [[rule.test]]\nconfig = { 'net.ipv4.ip_forward' = \"1\" }\nexpect = \"fail\"\n\
         [[rule.test]]\nname = \"wrong on purpose\"\nconfig = { 'net.ipv4.ip_forward' = \"0\" }\nexpect = \"fail\"\n",
    )
    .unwrap();
    let r = run_tests(&set);
    assert_eq!(r.len(), 3);
    assert!(r[0].ok && r[1].ok);
    assert!(!r[2].ok);
    assert_eq!(r[2].test, "wrong on purpose");
}
