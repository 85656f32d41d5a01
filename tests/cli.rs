//! Black-box tests of the `plumb` binary: every format, every source, extract/decode, baseline precedence and node
//! variables, subset mode, ignores, masks, keyed arrays, every exit code, bad nodes (malformed, oversized, hanging,
//! 4xx/5xx, refused, TLS), `check`, `diff`, `approve`, inventory files and `plumb demo`. Each test writes a project
//! tree into a temporary directory and runs the real binary against files, commands and simulated HTTP nodes on
//! loopback.

mod common;

use common::*;
use plumb::sim::{self, Behavior, NodeSpec, TlsMaterial};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------------
// 1. Formats, through a `file` source
// ---------------------------------------------------------------------------------------------------------------

const FORMATS_TOML: &str = r#"
[scan]
retries = 0

[[node]]
name = "n1"

[[config]]
name = "j"
source.file = "live/${node.name}.json"
format = "json"

[[config]]
name = "y"
source.file = "live/${node.name}.yaml"
format = "yaml"

[[config]]
name = "t"
source.file = "live/${node.name}.toml"
format = "toml"

[[config]]
name = "i"
source.file = "live/${node.name}.ini"
format = "ini"

[[config]]
name = "k"
source.file = "live/${node.name}.conf"
format = "kv"

[[config]]
name = "x"
source.file = "live/${node.name}.txt"
format = "text"

# The same JSON live document against a YAML and a TOML baseline.
[[config]]
name = "json-vs-yaml"
source.file = "live/${node.name}.cross.json"
format = "json"

[[config]]
name = "json-vs-toml"
source.file = "live/${node.name}.cross.json"
format = "json"
"#;

#[test]
fn every_format_is_clean_when_equal_and_one_change_is_one_finding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            ("plumb.toml", FORMATS_TOML),
            (
                "baselines/j/default.json",
                r#"{"server": {"port": 8080, "hosts": ["a.example", "b.example"]}, "odd.key": "x", "ratio": 0.5}"#,
            ),
            (
                "baselines/y/default.yaml",
                "country: no\nflag: off\nlisten:\n  port: 80\n  hosts: [a, b]\nenabled: true\n",
            ),
            (
                "baselines/t/default.toml",
                "title = \"t\"\n[server]\nport = 80\ntags = [\"a\", \"b\"]\n",
            ),
            (
                "baselines/i/default.ini",
                "; global\nuser = mysql\n[mysqld]\nport = 3306\nbind-address = 127.0.0.1\n",
            ),
            (
                "baselines/k/default.conf",
                "net.ipv4.ip_forward = 0\nvm.swappiness = 60\n",
            ),
            (
                "baselines/x/default.txt",
                "line one\nline two\nline three\n",
            ),
            (
                "baselines/json-vs-yaml/default.yaml",
                "country: no\nflag: off\nw: 1\nlist:\n  - 1\n  - 2\n",
            ),
            (
                "baselines/json-vs-toml/default.toml",
                "country = \"no\"\nflag = \"off\"\nw = 1\nlist = [1, 2]\n",
            ),
            // Live: same content, other key order and spelling.
            (
                "live/n1.json",
                r#"{"ratio":0.5,"odd.key":"x","server":{"hosts":["a.example","b.example"],"port":8080}}"#,
            ),
            (
                "live/n1.yaml",
                "# live\nenabled: true\nlisten:\n  hosts:\n    - a\n    - b\n  port: 80\nflag: off\ncountry: no\n",
            ),
            (
                "live/n1.toml",
                "title = 't'\n\n[server]\ntags = ['a', 'b']\nport = 80\n",
            ),
            (
                "live/n1.ini",
                "user=mysql\n\n[mysqld]\nbind-address: 127.0.0.1\nport=3306\n",
            ),
            (
                "live/n1.conf",
                "# sysctl\nvm.swappiness=60\nnet.ipv4.ip_forward=0\n",
            ),
            ("live/n1.txt", "line one\nline two\nline three\n"),
            (
                "live/n1.cross.json",
                r#"{"country": "no", "flag": "off", "w": 1.0, "list": [1, 2]}"#,
            ),
        ],
    );

    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");
    assert_eq!(r["nodes"], json!({"total": 1, "read": 1, "unreadable": 0}));
    assert!(r["diffs"].as_array().unwrap().is_empty());

    // One changed value per format.
    write_tree(
        dir,
        &[
            (
                "live/n1.json",
                r#"{"ratio":0.5,"odd.key":"x","server":{"hosts":["a.example","c.example"],"port":8080}}"#,
            ),
            (
                "live/n1.yaml",
                "enabled: true\nlisten:\n  hosts: [a, b]\n  port: 80\nflag: on\ncountry: no\n",
            ),
            (
                "live/n1.toml",
                "title = 't'\n[server]\ntags = ['a', 'b']\nport = 81\n",
            ),
            (
                "live/n1.ini",
                "user=mysql\n[mysqld]\nbind-address = 0.0.0.0\nport=3306\n",
            ),
            ("live/n1.conf", "vm.swappiness=60\nnet.ipv4.ip_forward=1\n"),
            ("live/n1.txt", "line one\nline TWO\nline three\n"),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        keys(&r),
        expect_keys(&[
            ("drift", "n1", "j", "$.server.hosts[1]"),
            ("drift", "n1", "y", "$.flag"),
            ("drift", "n1", "t", "$.server.port"),
            ("drift", "n1", "i", "$.mysqld['bind-address']"),
            ("drift", "n1", "k", "$['net.ipv4.ip_forward']"),
            ("drift", "n1", "x", "line 2"),
        ]),
        "{run}"
    );
    let medium = "medium";
    assert_drift(
        the_finding(&r, "n1", "j", "$.server.hosts[1]"),
        "changed",
        json!("b.example"),
        json!("c.example"),
        medium,
    );
    // YAML `off` and `on` are strings, not YAML 1.1 booleans.
    assert_drift(
        the_finding(&r, "n1", "y", "$.flag"),
        "changed",
        json!("off"),
        json!("on"),
        medium,
    );
    assert_drift(
        the_finding(&r, "n1", "t", "$.server.port"),
        "changed",
        json!(80),
        json!(81),
        medium,
    );
    assert_drift(
        the_finding(&r, "n1", "i", "$.mysqld['bind-address']"),
        "changed",
        json!("127.0.0.1"),
        json!("0.0.0.0"),
        medium,
    );
    assert_drift(
        the_finding(&r, "n1", "k", "$['net.ipv4.ip_forward']"),
        "changed",
        json!("0"),
        json!("1"),
        medium,
    );
    assert_drift(
        the_finding(&r, "n1", "x", "line 2"),
        "changed",
        json!("line two"),
        json!("line TWO"),
        medium,
    );
    // Each drifted target also has a unified diff for humans.
    let diffs = r["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 6, "{r:#}");
    let x = diffs.iter().find(|d| d["config"] == "x").unwrap();
    let text = x["diff"].as_str().unwrap();
    assert!(
        text.lines().any(|l| l == "-line two") && text.lines().any(|l| l == "+line TWO"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Sources: http, file, command
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn http_file_and_command_sources_are_read_and_compared() {
    let fleet = sim::start(
        vec![sim_node(
            "web",
            vec![("/config", json_body(&json!({"port": 80, "name": "web"})))],
        )],
        None,
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = format!(
        r#"
[scan]
retries = 0
timeout = "5s"

[[node]]
name = "web"
labels = {{ src = "http" }}
vars = {{ addr = "{addr}" }}

[[node]]
name = "f1"
labels = {{ src = "file" }}

[[node]]
name = "f2"
labels = {{ src = "file" }}

[[node]]
name = "c1"
labels = {{ src = "cmd" }}

[[config]]
name = "http"
nodes = {{ src = "http" }}
source.http = "http://${{node.vars.addr}}/config"
format = "json"

[[config]]
name = "file"
nodes = {{ src = "file" }}
source.file = "live/${{node.name}}.json"
format = "json"

[[config]]
name = "cat"
nodes = {{ src = "cmd" }}
source.command = ["cat", "live/${{node.name}}.json"]
format = "json"

[[config]]
name = "sh"
nodes = {{ src = "cmd" }}
source.command = ["sh", "-c", "printf '{{\"node\": \"%s\", \"pid\": %s}}' \"$1\" $$$$", "sh", "${{node.name}}"]
format = "json"
ignore = ["$.pid"]
"#,
        addr = fleet.addr("web").unwrap()
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            (
                "baselines/http/default.json",
                r#"{"port": 80, "name": "web"}"#,
            ),
            (
                "baselines/file/default.json",
                r#"{"v": 1, "host": "${node.name}"}"#,
            ),
            ("baselines/cat/default.json", r#"{"v": 2}"#),
            ("baselines/sh/default.json", r#"{"node": "${node.name}"}"#),
            ("live/f1.json", r#"{"v": 1, "host": "f1"}"#),
            ("live/f2.json", r#"{"v": 1, "host": "f2"}"#),
            ("live/c1.json", r#"{"v": 2}"#),
        ],
    );

    let (run, r) = audit_json_async(dir, &[]).await;
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");
    assert_eq!(r["nodes"], json!({"total": 4, "read": 4, "unreadable": 0}));

    // One change behind each source.
    fleet.set(
        "web",
        "/config",
        json_body(&json!({"port": 81, "name": "web"})),
    );
    write_tree(
        dir,
        &[
            ("live/f2.json", r#"{"v": 1, "host": "f1"}"#),
            ("live/c1.json", r#"{"v": 3}"#),
        ],
    );
    let (run, r) = audit_json_async(dir, &[]).await;
    run.expect_code(1);
    assert_eq!(
        keys(&r),
        expect_keys(&[
            ("drift", "web", "http", "$.port"),
            ("drift", "f2", "file", "$.host"),
            ("drift", "c1", "cat", "$.v"),
        ]),
        "{run}"
    );
    assert_drift(
        the_finding(&r, "web", "http", "$.port"),
        "changed",
        json!(80),
        json!(81),
        "medium",
    );
    assert_drift(
        the_finding(&r, "f2", "file", "$.host"),
        "changed",
        json!("f2"),
        json!("f1"),
        "medium",
    );
    assert_drift(
        the_finding(&r, "c1", "cat", "$.v"),
        "changed",
        json!(2),
        json!(3),
        "medium",
    );

    // Relative file paths and command working directories are beside plumb.toml, not the caller's directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = dir.join("plumb.toml");
    let run = plumb_async(
        elsewhere.path(),
        &[
            "audit",
            "--format",
            "json",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await;
    run.expect_code(1);
    assert_eq!(keys(&run.json()), keys(&r), "{run}");
    drop(fleet);
}

#[test]
fn a_failing_command_is_unreachable_with_its_last_stderr_line_and_dash_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "good"
vars = { state = "ok" }

[[node]]
name = "broken"
vars = { state = "bad" }

[[node]]
name = "sneaky"
vars = { state = "--version" }

[[config]]
name = "cmd"
source.command = ["sh", "-c", "if [ \"$1\" = ok ]; then echo '{\"a\": 1}'; else echo 'first line' >&2; echo 'fatal: no such table' >&2; exit 4; fi", "sh", "${node.vars.state}"]
format = "json"
"#,
            ),
            ("baselines/cmd/default.json", r#"{"a": 1}"#),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[
            ("unreachable", "broken", "cmd", ""),
            ("unreachable", "sneaky", "cmd", ""),
        ]),
        "{run}"
    );
    assert_eq!(r["nodes"], json!({"total": 3, "read": 1, "unreadable": 2}));
    let broken = the_finding(&r, "broken", "cmd", "");
    let msg = broken["message"].as_str().unwrap();
    assert!(
        msg.contains("status 4") && msg.ends_with("fatal: no such table"),
        "{msg}"
    );
    assert!(!msg.contains("first line"), "{msg}");
    assert_eq!(broken["severity"], "medium");
    assert_eq!(broken["actual"], Value::Null);
    // `--version` never reached sh: it was refused before anything ran.
    let sneaky = the_finding(&r, "sneaky", "cmd", "")["message"]
        .as_str()
        .unwrap();
    assert!(
        sneaky.contains("refused node value") && sneaky.contains("starts with `-`"),
        "{sneaky}"
    );
    assert!(!sneaky.contains("fatal"), "{sneaky}");
}

#[test]
fn env_and_file_placeholders_are_resolved_when_the_config_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"[[node]]
name = "n1"

[[config]]
name = "secret"
source.command = ["printf", "{\"token\": \"%s\", \"file\": \"%s\"}", "${env:PLUMB_CLI_TEST_TOKEN}", "${file:secret.txt}"]
format = "json"
"#,
            ),
            ("secret.txt", "s3cret\n"),
            (
                "baselines/secret/default.json",
                r#"{"token": "t0k", "file": "s3cret"}"#,
            ),
        ],
    );
    let args = ["audit", "--format", "json"];
    let run = run_with_env(dir, &args, &[("PLUMB_CLI_TEST_TOKEN", Some("t0k"))]);
    run.expect_code(0);
    assert_eq!(keys(&run.json()), expect_keys(&[]), "{run}");

    let run = run_with_env(dir, &args, &[("PLUMB_CLI_TEST_TOKEN", None)]);
    run.expect_code(2);
    run.expect_location("plumb.toml", 6);
    assert!(
        run.stderr.contains("`PLUMB_CLI_TEST_TOKEN` is not set"),
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3. extract + decode: YAML inside a JSON envelope, over http
// ---------------------------------------------------------------------------------------------------------------

fn envelope(resource_version: u32, yaml: &str) -> Behavior {
    json_body(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "resourceVersion": resource_version.to_string()},
        "data": {"app.yaml": yaml},
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn extract_and_decode_read_yaml_inside_a_json_envelope() {
    let fleet = sim::start(
        vec![sim_node(
            "db-1",
            vec![(
                "/app",
                envelope(
                    1,
                    "replicas: 3\nmaintenance: off\npool:\n  size: 20\n  timeout: 5s\n",
                ),
            )],
        )],
        None,
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = format!(
        r#"
[scan]
retries = 0

[[node]]
name = "db-1"
vars = {{ addr = "{}" }}

[[config]]
name = "app"
source.http = "http://${{node.vars.addr}}/app"
format = "json"
extract = "$.data['app.yaml']"
decode = "yaml"
"#,
        fleet.addr("db-1").unwrap()
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            (
                "baselines/app/default.yaml",
                "replicas: 3\nmaintenance: off\npool:\n  size: 20\n  timeout: 5s\n",
            ),
        ],
    );
    let (run, r) = audit_json_async(dir, &[]).await;
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");

    // The envelope's metadata is outside the extracted document; the YAML inside is what counts.
    fleet.set(
        "db-1",
        "/app",
        envelope(
            2,
            "replicas: 4\nmaintenance: off\npool:\n  size: 20\n  timeout: 5s\n",
        ),
    );
    let (run, r) = audit_json_async(dir, &[]).await;
    run.expect_code(1);
    assert_eq!(
        keys(&r),
        expect_keys(&[("drift", "db-1", "app", "$.replicas")]),
        "{run}"
    );
    assert_drift(
        the_finding(&r, "db-1", "app", "$.replicas"),
        "changed",
        json!(3),
        json!(4),
        "medium",
    );

    // The envelope without the key: extract selects nothing, which is `invalid`.
    fleet.set("db-1", "/app", json_body(&json!({"data": {}})));
    let (run, r) = audit_json_async(dir, &[]).await;
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[("invalid", "db-1", "app", "")]),
        "{run}"
    );
    drop(fleet);
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Baseline precedence and node variables
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn baseline_precedence_is_node_then_label_then_default_with_node_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "plain"
labels = { dc = "ams" }
vars = { ip = "10.0.0.1" }

[[node]]
name = "fra"
labels = { dc = "fra" }
vars = { ip = "10.0.0.2" }

[[node]]
name = "special"
labels = { dc = "fra" }
vars = { ip = "10.0.0.3" }

[[config]]
name = "svc"
source.file = "live/${node.name}.json"
format = "json"
"#,
            ),
            (
                "baselines/svc/default.json",
                r#"{"tier": "default", "host": "${node.name}.example.net", "ip": "${node.vars.ip}", "dc": "${node.labels.dc}"}"#,
            ),
            (
                "baselines/svc/dc=fra.json",
                r#"{"tier": "fra", "host": "${node.name}.fra.example.net", "ip": "${node.vars.ip}"}"#,
            ),
            ("baselines/svc/node/special.json", r#"{"tier": "special"}"#),
            // Each live document matches only the file meant for its node.
            (
                "live/plain.json",
                r#"{"tier": "default", "host": "plain.example.net", "ip": "10.0.0.1", "dc": "ams"}"#,
            ),
            (
                "live/fra.json",
                r#"{"tier": "fra", "host": "fra.fra.example.net", "ip": "10.0.0.2"}"#,
            ),
            ("live/special.json", r#"{"tier": "special"}"#),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");
    assert_eq!(r["nodes"]["read"], 3);

    // Substituted values are what the baseline expects.
    write_tree(
        dir,
        &[
            (
                "live/plain.json",
                r#"{"tier": "default", "host": "plain.example.net", "ip": "10.0.0.9", "dc": "ams"}"#,
            ),
            (
                "live/fra.json",
                r#"{"tier": "fra", "host": "fra.example.net", "ip": "10.0.0.2"}"#,
            ),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        keys(&r),
        expect_keys(&[
            ("drift", "plain", "svc", "$.ip"),
            ("drift", "fra", "svc", "$.host"),
        ]),
        "{run}"
    );
    assert_drift(
        the_finding(&r, "plain", "svc", "$.ip"),
        "changed",
        json!("10.0.0.1"),
        json!("10.0.0.9"),
        "medium",
    );
    assert_drift(
        the_finding(&r, "fra", "svc", "$.host"),
        "changed",
        json!("fra.fra.example.net"),
        json!("fra.example.net"),
        "medium",
    );
    // `plumb diff` names the file that applied.
    let d = plumb(dir, &["diff", "fra", "svc"]);
    d.expect_code(1);
    assert!(d.stdout.contains("baselines/svc/dc=fra.json"), "{d}");
    let d = plumb(dir, &["diff", "plain", "svc"]);
    d.expect_code(1);
    assert!(d.stdout.contains("baselines/svc/default.json"), "{d}");
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Subset mode, ignores, masks, keyed arrays
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn subset_mode_allows_extra_live_keys_but_not_missing_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "n1"

[[config]]
name = "app"
source.file = "live/${node.name}.json"
format = "json"
mode = "subset"
"#,
            ),
            (
                "baselines/app/default.json",
                r#"{"a": 1, "b": {"c": 2}, "list": [{"name": "x", "v": 1}]}"#,
            ),
            (
                "live/n1.json",
                r#"{"a": 1, "b": {"c": 2, "extra": 3}, "more": true, "list": [{"name": "y", "v": 9}, {"name": "x", "v": 1, "w": 0}]}"#,
            ),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");

    write_tree(
        dir,
        &[(
            "live/n1.json",
            r#"{"a": 1, "b": {"extra": 3}, "more": true, "list": [{"name": "x", "v": 1}]}"#,
        )],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        keys(&r),
        expect_keys(&[("drift", "n1", "app", "$.b.c")]),
        "{run}"
    );
    assert_drift(
        the_finding(&r, "n1", "app", "$.b.c"),
        "removed",
        json!(2),
        Value::Null,
        "medium",
    );
}

#[test]
fn ignores_and_masks_from_plumb_toml_and_baseline_toml_hide_volatile_content() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "n1"

[[config]]
name = "status"
source.file = "live/${node.name}.json"
format = "json"
ignore = ["$.metrics", "$.workers[*].pid"]
masks = [{ pattern = "up \\d+s", replace = "up Ns" }]

[[config]]
name = "log"
source.file = "live/${node.name}.txt"
format = "text"
"#,
            ),
            (
                "baselines/status/default.json",
                r#"{"version": "1.2", "uptime": "up 10s", "metrics": {"req": 1}, "workers": [{"name": "w1", "pid": 100, "state": "ok"}]}"#,
            ),
            (
                "baselines/log/baseline.toml",
                "# timestamps change on every start\nmasks = [{ pattern = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ', replace = '<time>' }]\nignore = []\n",
            ),
            (
                "baselines/log/default.txt",
                "started 2024-01-01T00:00:00Z\nmode = safe\n",
            ),
            (
                "live/n1.json",
                r#"{"version": "1.2", "uptime": "up 98765s", "metrics": {"req": 555, "new": 1}, "workers": [{"name": "w1", "pid": 4242, "state": "ok"}]}"#,
            ),
            ("live/n1.txt", "started 2025-06-30T12:34:56Z\nmode = safe\n"),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");

    // Real changes next to the masked and ignored ones are still found, and only they.
    write_tree(
        dir,
        &[
            (
                "live/n1.json",
                r#"{"version": "1.3", "uptime": "up 5s", "metrics": {"req": 7}, "workers": [{"name": "w1", "pid": 1, "state": "down"}]}"#,
            ),
            ("live/n1.txt", "started 2026-02-02T02:02:02Z\nmode = fast\n"),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        keys(&r),
        expect_keys(&[
            ("drift", "n1", "status", "$.version"),
            ("drift", "n1", "status", "$.workers[?@.name=='w1'].state"),
            ("drift", "n1", "log", "line 2"),
        ]),
        "{run}"
    );
    assert_drift(
        the_finding(&r, "n1", "log", "line 2"),
        "changed",
        json!("mode = safe"),
        json!("mode = fast"),
        "medium",
    );
}

#[test]
fn keyed_arrays_make_one_inserted_element_one_finding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = json!({
        "routes": [{"name": "api", "to": "api:8080"}, {"name": "web", "to": "web:80"}],
        "upstreams": [{"url": "http://a:1", "weight": 1}, {"url": "http://b:1", "weight": 1}],
    });
    let mut inserted = base.clone();
    inserted["routes"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"name": "debug", "to": "debug:9"}));
    let mut changed = base.clone();
    changed["routes"][0]["to"] = json!("canary:8080");
    let mut upstream = base.clone();
    upstream["upstreams"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"url": "http://z:1", "weight": 5}));
    upstream["upstreams"][2]["weight"] = json!(2);
    let mut reordered = base.clone();
    for k in ["routes", "upstreams"] {
        reordered[k].as_array_mut().unwrap().reverse();
    }
    let files = [
        ("live/ins.json", inserted.to_string()),
        ("live/chg.json", changed.to_string()),
        ("live/up.json", upstream.to_string()),
        ("live/rev.json", reordered.to_string()),
        ("baselines/proxy/default.json", base.to_string()),
    ];
    let mut tree: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    tree.push((
        "plumb.toml",
        r#"
[[node]]
name = "ins"
[[node]]
name = "chg"
[[node]]
name = "up"
[[node]]
name = "rev"

[[config]]
name = "proxy"
source.file = "live/${node.name}.json"
format = "json"
"#,
    ));
    tree.push((
        "baselines/proxy/baseline.toml",
        "keys = { \"$.upstreams\" = \"url\" }\n",
    ));
    write_tree(dir, &tree);

    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        keys(&r),
        expect_keys(&[
            ("drift", "ins", "proxy", "$.routes[?@.name=='debug']"),
            ("drift", "chg", "proxy", "$.routes[?@.name=='api'].to"),
            ("drift", "up", "proxy", "$.upstreams[?@.url=='http://z:1']"),
            (
                "drift",
                "up",
                "proxy",
                "$.upstreams[?@.url=='http://b:1'].weight"
            ),
        ]),
        "{run}"
    );
    assert_drift(
        the_finding(&r, "ins", "proxy", "$.routes[?@.name=='debug']"),
        "added",
        Value::Null,
        json!({"name": "debug", "to": "debug:9"}),
        "medium",
    );
    assert_drift(
        the_finding(&r, "chg", "proxy", "$.routes[?@.name=='api'].to"),
        "changed",
        json!("api:8080"),
        json!("canary:8080"),
        "medium",
    );
    assert_drift(
        the_finding(
            &r,
            "up",
            "proxy",
            "$.upstreams[?@.url=='http://b:1'].weight",
        ),
        "changed",
        json!(1),
        json!(2),
        "medium",
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Exit codes
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn exit_code_follows_fail_on_and_per_path_severity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "n1"

[[config]]
name = "app"
source.file = "live/app.json"
format = "json"

[[config]]
name = "edge"
source.file = "live/edge.json"
format = "json"
"#,
            ),
            ("baselines/app/default.json", r#"{"port": 80}"#),
            (
                "baselines/edge/default.json",
                r#"{"tls": {"min": "tls1.2"}, "port": 443}"#,
            ),
            (
                "baselines/edge/baseline.toml",
                "severity = { \"$.tls\" = \"critical\" }\n",
            ),
            ("live/app.json", r#"{"port": 80}"#),
            (
                "live/edge.json",
                r#"{"tls": {"min": "tls1.2"}, "port": 443}"#,
            ),
        ],
    );
    audit_json(dir, &[]).0.expect_code(0);

    // Medium drift only.
    write_tree(dir, &[("live/app.json", r#"{"port": 81}"#)]);
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(r["summary"]["by_severity"], json!({"medium": 1}), "{run}");
    audit_json(dir, &["--fail-on", "medium"]).0.expect_code(1);
    audit_json(dir, &["--fail-on", "high"]).0.expect_code(0);
    audit_json(dir, &["--fail-on", "critical"]).0.expect_code(0);

    // Drift under $.tls is critical; drift elsewhere in the same config keeps the default.
    write_tree(
        dir,
        &[(
            "live/edge.json",
            r#"{"tls": {"min": "tls1.0"}, "port": 8443}"#,
        )],
    );
    let (run, r) = audit_json(dir, &["--fail-on", "critical"]);
    run.expect_code(1);
    assert_drift(
        the_finding(&r, "n1", "edge", "$.tls.min"),
        "changed",
        json!("tls1.2"),
        json!("tls1.0"),
        "critical",
    );
    assert_eq!(
        the_finding(&r, "n1", "edge", "$.port")["severity"],
        "medium"
    );
    assert_eq!(
        r["summary"]["by_severity"],
        json!({"critical": 1, "medium": 2}),
        "{run}"
    );
}

#[test]
fn coverage_findings_exit_3_unless_drift_reaches_fail_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "ok"
[[node]]
name = "gone"
[[node]]
name = "garbage"
[[node]]
name = "drifted"
[[node]]
name = "fresh"
labels = { extra = "yes" }

[[config]]
name = "app"
source.file = "live/${node.name}.json"
format = "json"

# No baseline anywhere: unbaselined.
[[config]]
name = "new"
nodes = { extra = "yes" }
source.file = "live/${node.name}.json"
format = "json"
"#,
            ),
            ("baselines/app/default.json", r#"{"a": 1}"#),
            ("live/ok.json", r#"{"a": 1}"#),
            ("live/garbage.json", r#"{"a": 1,"#),
            ("live/drifted.json", r#"{"a": 2}"#),
            ("live/fresh.json", r#"{"a": 1}"#),
        ],
    );
    let only = |name: &str| format!("name={name}");

    let (run, r) = audit_json(dir, &["--nodes", &only("ok")]);
    run.expect_code(0);
    assert_eq!(r["nodes"]["total"], 1);

    let (run, r) = audit_json(dir, &["--nodes", &only("gone")]);
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[("unreachable", "gone", "app", "")]),
        "{run}"
    );
    assert!(
        the_finding(&r, "gone", "app", "")["message"]
            .as_str()
            .unwrap()
            .contains("gone.json"),
        "{run}"
    );

    let (run, r) = audit_json(dir, &["--nodes", &only("garbage")]);
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[("invalid", "garbage", "app", "")]),
        "{run}"
    );

    let (run, r) = audit_json(dir, &["--nodes", &only("fresh")]);
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[("unbaselined", "fresh", "new", "")]),
        "{run}"
    );
    assert_eq!(r["nodes"], json!({"total": 1, "read": 1, "unreadable": 0}));

    // Everything: drift wins over incomplete coverage, unless it is below --fail-on.
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(1);
    assert_eq!(
        r["summary"]["by_kind"],
        json!({"drift": 1, "unreachable": 1, "invalid": 1, "unbaselined": 1}),
        "{run}"
    );
    assert_eq!(r["nodes"], json!({"total": 5, "read": 3, "unreadable": 2}));
    audit_json(dir, &["--fail-on", "high"]).0.expect_code(3);
}

/// A project whose only config runs a command that creates `marker`: if the marker exists, a node was contacted.
fn marker_project(dir: &Path) -> std::path::PathBuf {
    let marker = dir.join("contacted");
    let toml = format!(
        r#"[scan]
retries = 0

[[node]]
name = "n1"
vars = {{ marker = "{}" }}

[[config]]
name = "probe"
source.command = ["sh", "-c", "touch \"$1\"; echo '{{}}'", "sh", "${{node.vars.marker}}"]
format = "json"
"#,
        marker.display()
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/probe/default.json", "{}\n"),
        ],
    );
    marker
}

#[test]
fn bad_configuration_exits_2_with_a_location_and_contacts_no_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let marker = marker_project(dir);
    let good = std::fs::read_to_string(dir.join("plumb.toml")).unwrap();
    let good_lines = good.lines().count();

    // Control: the good project does contact its node.
    audit_json(dir, &[]).0.expect_code(0);
    assert!(marker.exists(), "the probe command should have run");
    std::fs::remove_file(&marker).unwrap();

    let expect_rejected = |run: &common::Run| {
        run.expect_code(2);
        assert!(run.stdout.is_empty(), "{run}");
        assert!(!marker.exists(), "a node was contacted\n{run}");
    };

    // Malformed TOML: an unclosed table header on the last line.
    write_tree(dir, &[("plumb.toml", &format!("{good}\n[scan\n"))]);
    let run = plumb(dir, &["audit", "--format", "json"]);
    expect_rejected(&run);
    run.expect_location("plumb.toml", good_lines + 2);

    // Unknown keys: in [scan], in a [[config]], in baseline.toml.
    let with_typo = good.replacen("retries = 0", "retries = 0\ntimeot = \"1s\"", 1);
    write_tree(dir, &[("plumb.toml", &with_typo)]);
    let run = plumb(dir, &["audit"]);
    expect_rejected(&run);
    assert!(
        run.stderr
            .contains("plumb.toml:3:1: unknown field `timeot`"),
        "{run}"
    );

    let with_typo = good.replacen(
        "format = \"json\"",
        "format = \"json\"\nformt = \"yaml\"",
        1,
    );
    write_tree(dir, &[("plumb.toml", &with_typo)]);
    let run = plumb(dir, &["audit"]);
    expect_rejected(&run);
    // serde places an unknown key of a [[config]] at its table header (line 8 of `good`).
    assert!(
        run.stderr.contains("plumb.toml:8:1: unknown field `formt`"),
        "{run}"
    );

    write_tree(
        dir,
        &[
            ("plumb.toml", &good),
            (
                "baselines/probe/baseline.toml",
                "mode = \"subset\"\nignores = []\n",
            ),
        ],
    );
    let run = plumb(dir, &["audit"]);
    expect_rejected(&run);
    assert!(run.stderr.contains("ignores"), "{run}");
    run.expect_location("baselines/probe/baseline.toml", 2);
    std::fs::remove_file(dir.join("baselines/probe/baseline.toml")).unwrap();

    // A malformed baseline file: named, with its line.
    write_tree(
        dir,
        &[(
            "baselines/probe/default.json",
            "{\n  \"a\": 1,\n  oops\n}\n",
        )],
    );
    let run = plumb(dir, &["audit"]);
    expect_rejected(&run);
    run.expect_location("baselines/probe/default.json", 3);
    write_tree(dir, &[("baselines/probe/default.json", "{}\n")]);

    // Bad arguments.
    let run = plumb(dir, &["audit", "--fail-on", "severe"]);
    expect_rejected(&run);
    assert!(run.stderr.contains("--fail-on"), "{run}");
    let run = plumb(dir, &["audit", "--nodes", "role"]);
    expect_rejected(&run);
    assert!(run.stderr.contains("--nodes"), "{run}");
    let run = plumb(dir, &["audit", "--format", "xml"]);
    expect_rejected(&run);

    // And the repaired project runs again.
    audit_json(dir, &[]).0.expect_code(0);
    assert!(marker.exists());
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Bad nodes: each a finding of its own, the rest of the fleet still scanned
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_nodes_are_findings_of_their_own_and_the_healthy_node_is_still_compared() {
    let doc = |port: u16| json_body(&json!({"port": port}));
    let mut specs = vec![
        sim_node("good", vec![("/c", doc(81))]),
        sim_node(
            "garbage",
            vec![("/c", Behavior::serve("application/json", "{\"port\": 8"))],
        ),
        sim_node(
            "big",
            vec![(
                "/c",
                json_body(&json!({"port": 80, "pad": "x".repeat(4096)})),
            )],
        ),
        sim_node("hang", vec![("/c", Behavior::Hang)]),
        sim_node("missing", vec![]),
        sim_node("flaky", vec![("/c", Behavior::Status(503))]),
    ];
    specs.push(NodeSpec {
        down: true,
        ..sim_node("down", vec![("/c", doc(80))])
    });
    let fleet = sim::start(specs, None).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut toml = String::from(
        r#"[scan]
timeout = "1s"
retries = 0
backoff = "50ms"
max_body = "1KiB"

[[config]]
name = "c"
nodes = { retry = "no" }
source.http = "http://${node.vars.addr}/c"
format = "json"

[[config]]
name = "c5"
nodes = { retry = "yes" }
source.http = "http://${node.vars.addr}/c"
format = "json"
retries = 1
"#,
    );
    for n in &fleet.nodes {
        let retry = if n.name == "flaky" { "yes" } else { "no" };
        toml.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nlabels = {{ retry = \"{retry}\" }}\nvars = {{ addr = \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/c/default.json", r#"{"port": 80}"#),
            ("baselines/c5/default.json", r#"{"port": 80}"#),
        ],
    );

    let t0 = Instant::now();
    let (run, r) = audit_json_async(dir, &[]).await;
    let took = t0.elapsed();
    run.expect_code(1);
    assert!(
        took < Duration::from_secs(6),
        "a hanging node held the audit for {took:?}"
    );
    assert_eq!(
        keys(&r),
        expect_keys(&[
            ("drift", "good", "c", "$.port"),
            ("invalid", "garbage", "c", ""),
            ("unreachable", "big", "c", ""),
            ("unreachable", "hang", "c", ""),
            ("unreachable", "missing", "c", ""),
            ("unreachable", "flaky", "c5", ""),
            ("unreachable", "down", "c", ""),
        ]),
        "{run}"
    );
    assert_eq!(r["nodes"], json!({"total": 7, "read": 1, "unreadable": 6}));
    assert_drift(
        the_finding(&r, "good", "c", "$.port"),
        "changed",
        json!(80),
        json!(81),
        "medium",
    );
    let msg = |node: &str, config: &str| {
        the_finding(&r, node, config, "")["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let m = msg("garbage", "c");
    assert!(m.contains("not valid json"), "{m}");
    let m = msg("big", "c");
    assert!(m.contains("1024-byte limit"), "{m}");
    let m = msg("hang", "c");
    assert!(m.contains("timed out"), "{m}");
    let m = msg("missing", "c");
    assert!(m.contains("404"), "{m}");
    let m = msg("flaky", "c5");
    assert!(m.contains("503"), "{m}");
    let m = msg("down", "c");
    assert!(m.to_lowercase().contains("refused"), "{m}");
    drop(fleet);
}

#[test]
fn a_5xx_is_retried_and_a_4xx_is_not() {
    let ok = r#"{"a": 1}"#;
    let flaky = Scripted::start(&[(503, ""), (200, ok)]);
    let gone = Scripted::start(&[(404, ""), (200, ok)]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = format!(
        r#"[scan]
retries = 1
backoff = "10ms"

[[node]]
name = "flaky"
vars = {{ addr = "{}" }}

[[node]]
name = "gone"
vars = {{ addr = "{}" }}

[[config]]
name = "c"
source.http = "http://${{node.vars.addr}}/c"
format = "json"
"#,
        flaky.addr, gone.addr
    );
    write_tree(
        dir,
        &[("plumb.toml", &toml), ("baselines/c/default.json", ok)],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[("unreachable", "gone", "c", "")]),
        "{run}"
    );
    assert_eq!(flaky.hits(), 2, "the 503 is retried once, then read");
    assert_eq!(gone.hits(), 1, "a 404 is final");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_verified_and_an_extra_ca_makes_it_trusted() {
    let tls = TlsMaterial::generate(false).unwrap();
    let fleet = sim::start(
        vec![sim_node(
            "secure",
            vec![("/c", json_body(&json!({"a": 1})))],
        )],
        Some(tls.server.clone()),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = format!(
        r#"[scan]
retries = 0
timeout = "5s"

[[node]]
name = "secure"
vars = {{ addr = "{}" }}

[[config]]
name = "untrusted"
source.http = "https://${{node.vars.addr}}/c"
format = "json"

[[config]]
name = "trusted"
source.http = "https://${{node.vars.addr}}/c"
format = "json"
ca = "ca.pem"
"#,
        fleet.addr("secure").unwrap()
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("ca.pem", &tls.ca_pem),
            ("baselines/untrusted/default.json", r#"{"a": 1}"#),
            ("baselines/trusted/default.json", r#"{"a": 1}"#),
        ],
    );
    let (run, r) = audit_json_async(dir, &[]).await;
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[("unreachable", "secure", "untrusted", "")]),
        "{run}"
    );
    let m = the_finding(&r, "secure", "untrusted", "")["message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(m.contains("tls") && m.contains("certificate"), "{m}");
    // With the CA the same node is read and matches.
    let run = plumb_async(dir, &["diff", "secure", "trusted"]).await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("secure/trusted: matches its baseline"),
        "{run}"
    );
    drop(fleet);
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_needs_the_client_certificate() {
    let tls = TlsMaterial::generate(true).unwrap();
    let fleet = sim::start(
        vec![sim_node("mtls", vec![("/c", json_body(&json!({"a": 1})))])],
        Some(tls.server.clone()),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = format!(
        r#"[scan]
retries = 0
timeout = "5s"

[[node]]
name = "mtls"
vars = {{ addr = "{}" }}

[[config]]
name = "anonymous"
source.http = "https://${{node.vars.addr}}/c"
format = "json"
ca = "ca.pem"

[[config]]
name = "identified"
source.http = "https://${{node.vars.addr}}/c"
format = "json"
ca = "ca.pem"
client_cert = "client.pem"
"#,
        fleet.addr("mtls").unwrap()
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("ca.pem", &tls.ca_pem),
            ("client.pem", &tls.client_pem),
            ("baselines/anonymous/default.json", r#"{"a": 1}"#),
            ("baselines/identified/default.json", r#"{"a": 1}"#),
        ],
    );
    let (run, r) = audit_json_async(dir, &[]).await;
    run.expect_code(3);
    assert_eq!(
        keys(&r),
        expect_keys(&[("unreachable", "mtls", "anonymous", "")]),
        "{run}"
    );
    let m = the_finding(&r, "mtls", "anonymous", "")["message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(m.contains("certificate"), "{m}");
    let run = plumb_async(dir, &["diff", "mtls", "identified"]).await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("mtls/identified: matches its baseline"),
        "{run}"
    );
    drop(fleet);
}

// ---------------------------------------------------------------------------------------------------------------
// 8. check, diff, approve
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn check_validates_everything_and_contacts_no_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let marker = marker_project(dir);
    let run = plumb(dir, &["check"]);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("plumb.toml: ok (1 nodes, 1 configs, 1 baseline files"),
        "{run}"
    );
    assert!(!marker.exists(), "check contacted a node");

    write_tree(
        dir,
        &[("baselines/probe/node/n1.yaml", "a: 1\nb: [1, 2\nc: 3\n")],
    );
    let run = plumb(dir, &["check"]);
    run.expect_code(2);
    run.expect_location("baselines/probe/node/n1.yaml", 3);
    assert!(!marker.exists(), "check contacted a node");

    write_tree(
        dir,
        &[
            ("baselines/probe/node/n1.yaml", "{}\n"),
            (
                "plumb.toml",
                "[[node]]\nname = \"n1\"\n\n[[config]]\nname = \"probe\"\nformat = \"json\"\n",
            ),
        ],
    );
    let run = plumb(dir, &["check"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("plumb.toml:4:1: missing field `source`"),
        "{run}"
    );
}

#[test]
fn diff_prints_a_unified_diff_and_exits_like_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "n1"
[[node]]
name = "n2"

[[config]]
name = "alpha"
source.file = "live/${node.name}.json"
format = "json"

[[config]]
name = "beta"
source.file = "live/${node.name}.beta.json"
format = "json"
"#,
            ),
            (
                "baselines/alpha/default.json",
                r#"{"port": 80, "host": "a"}"#,
            ),
            ("baselines/beta/default.json", r#"{"b": true}"#),
            ("live/n1.json", r#"{"port": 81, "host": "a"}"#),
            ("live/n2.json", r#"{"port": 80, "host": "a"}"#),
            ("live/n2.beta.json", r#"{"b": true}"#),
        ],
    );
    let run = plumb(dir, &["diff", "n1", "alpha"]);
    run.expect_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('-') && !l.starts_with("---") && l.contains("\"port\": 80")),
        "{run}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('+') && !l.starts_with("+++") && l.contains("\"port\": 81")),
        "{run}"
    );
    assert!(
        !run.stdout.contains('\x1b'),
        "no colors off a terminal\n{run}"
    );

    let run = plumb(dir, &["diff", "n2", "alpha"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("n2/alpha: matches its baseline"),
        "{run}"
    );

    // All configs of n1: alpha drifts, beta cannot be read; drift decides the exit code, as in audit.
    let run = plumb(dir, &["diff", "n1"]);
    run.expect_code(1);
    assert!(run.stdout.contains("+  \"port\": 81"), "{run}");
    assert!(run.stdout.contains("n1/beta: unreachable"), "{run}");
    audit_json(dir, &["--nodes", "name=n1"]).0.expect_code(1);

    let run = plumb(dir, &["diff", "nobody"]);
    run.expect_code(2);
    assert!(run.stderr.contains("nobody"), "{run}");
}

#[test]
fn approve_writes_the_node_baseline_and_the_next_audit_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "n1"
[[node]]
name = "n2"

[[config]]
name = "app"
source.file = "live/${node.name}.json"
format = "json"
"#,
            ),
            ("baselines/app/default.json", r#"{"port": 80}"#),
            ("live/n1.json", r#"{"port": 81, "debug": true}"#),
            ("live/n2.json", r#"{"port": 80}"#),
        ],
    );
    audit_json(dir, &[]).0.expect_code(1);

    let run = plumb(dir, &["approve", "n1", "app"]);
    run.expect_code(0);
    let written = dir.join("baselines/app/node/n1.json");
    assert!(written.exists(), "{run}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("+  \"debug\": true")),
        "{run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("wrote ") && l.ends_with("baselines/app/node/n1.json")),
        "{run}"
    );
    let content: Value = serde_json::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
    assert_eq!(content, json!({"port": 81, "debug": true}));
    // The default still holds for n2.
    assert_eq!(
        std::fs::read_to_string(dir.join("baselines/app/default.json")).unwrap(),
        r#"{"port": 80}"#
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");

    // Approving again changes nothing.
    let run = plumb(dir, &["approve", "n1", "app"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("already holds the live config"),
        "{run}"
    );
}

#[test]
fn approve_to_default_creates_the_shared_baseline_in_the_config_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let yaml = "country: no\nport: \"8080\"\nworkers: 4\nflag: on\nlist: [a, b]\n";
    write_tree(
        dir,
        &[
            (
                "plumb.toml",
                r#"
[[node]]
name = "k1"
[[node]]
name = "k2"

[[config]]
name = "sysctl"
source.file = "live/${node.name}.conf"
format = "kv"

[[config]]
name = "app"
source.file = "live/app.yaml"
format = "yaml"

[[config]]
name = "motd"
source.file = "live/motd.txt"
format = "text"
"#,
            ),
            (
                "live/k1.conf",
                "net.ipv4.ip_forward = 0\nHostKey /a\nHostKey /b\n",
            ),
            (
                "live/k2.conf",
                "HostKey /a\nnet.ipv4.ip_forward=0\nHostKey /b\n",
            ),
            ("live/app.yaml", yaml),
            ("live/motd.txt", "Welcome\n\n  indented line\n"),
        ],
    );
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(3);
    assert_eq!(r["summary"]["by_kind"], json!({"unbaselined": 6}), "{run}");

    let run = plumb(dir, &["approve", "k1", "--to", "default"]);
    run.expect_code(0);
    for f in [
        "baselines/sysctl/default.conf",
        "baselines/app/default.yaml",
        "baselines/motd/default.txt",
    ] {
        assert!(dir.join(f).exists(), "{f} not written\n{run}");
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("wrote ") && l.ends_with(f)),
            "{run}"
        );
    }
    assert!(run.stdout.contains("/dev/null"), "{run}");
    let (run, r) = audit_json(dir, &[]);
    run.expect_code(0);
    assert_eq!(keys(&r), expect_keys(&[]), "{run}");
}

// ---------------------------------------------------------------------------------------------------------------
// 9. Inventory files and --nodes
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn csv_and_json_inventories_load_and_nodes_selects() {
    let fleet = sim::start(
        vec![
            sim_node("edge-1", vec![("/c", json_body(&json!({"v": 1})))]),
            sim_node("edge-2", vec![("/c", json_body(&json!({"v": 1})))]),
            sim_node("db-1", vec![("/c", json_body(&json!({"v": 2})))]),
        ],
        None,
    )
    .await
    .unwrap();
    let role = |n: &str| if n.starts_with("edge") { "edge" } else { "db" };
    let mut csv = String::from("name,role,vars.addr\n");
    let mut inv = Vec::new();
    for n in &fleet.nodes {
        csv.push_str(&format!("{},{},{}\n", n.name, role(&n.name), n.addr));
        inv.push(json!({"name": n.name, "labels": {"role": role(&n.name)}, "vars": {"addr": n.addr.to_string()}}));
    }
    let toml = |file: &str| {
        format!(
            r#"[inventory]
file = "{file}"

[[config]]
name = "c"
source.http = "http://${{node.vars.addr}}/c"
format = "json"
"#
        )
    };
    for (file, content) in [
        ("nodes.csv", csv.clone()),
        ("nodes.json", serde_json::to_string_pretty(&inv).unwrap()),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_tree(
            dir,
            &[
                ("plumb.toml", &toml(file)),
                (file, &content),
                ("baselines/c/default.json", r#"{"v": 1}"#),
            ],
        );
        let (run, r) = audit_json_async(dir, &[]).await;
        run.expect_code(1);
        assert_eq!(r["nodes"]["total"], 3, "{file}\n{run}");
        assert_eq!(
            keys(&r),
            expect_keys(&[("drift", "db-1", "c", "$.v")]),
            "{file}\n{run}"
        );

        let (run, r) = audit_json_async(dir, &["--nodes", "role=edge"]).await;
        run.expect_code(0);
        assert_eq!(
            r["nodes"],
            json!({"total": 2, "read": 2, "unreadable": 0}),
            "{file}\n{run}"
        );
        assert_eq!(keys(&r), expect_keys(&[]), "{file}\n{run}");

        let (run, r) = audit_json_async(dir, &["--nodes", "role=db"]).await;
        run.expect_code(1);
        assert_eq!(r["nodes"]["total"], 1, "{file}\n{run}");
    }

    // A broken inventory is a configuration error naming its line.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml("nodes.csv")),
            ("nodes.csv", "name,role,vars.addr\nedge-1,edge\n"),
        ],
    );
    let run = plumb_async(dir, &["audit"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("nodes.csv:2"), "{run}");
    drop(fleet);
}

// ---------------------------------------------------------------------------------------------------------------
// 10. plumb demo
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn demo_reports_exactly_the_planted_deviations_in_seconds() {
    let t0 = Instant::now();
    let run = run_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["demo", "--format", "json"],
    );
    let took = t0.elapsed();
    run.expect_code(0);
    assert!(took < Duration::from_secs(10), "demo took {took:?}\n{run}");
    let r = run.json();
    assert_eq!(r["nodes"]["total"], 24, "{run}");
    assert_eq!(r["nodes"]["unreadable"], 2, "{run}");
    let found: Vec<(String, String, String)> =
        keys(&r).into_iter().map(|(k, n, c, _)| (k, n, c)).collect();
    // The JSON report is the demo's second scan: the first one was the initial inventory.
    let mut want: Vec<(String, String, String)> = [
        ("drift", "edge-fra-2", "caddy"),
        ("drift", "edge-fra-4", "caddy"),
        ("drift", "edge-ams-5", "sysctl"),
        ("drift", "db-3", "postgres"),
        ("drift", "db-5", "app"),
        ("regression", "edge-ams-7", "sysctl"),
        ("regression", "edge-fra-7", "sysctl"),
        ("violation", "edge-fra-4", "caddy"),
        ("violation", "edge-ams-5", "sysctl"),
        ("violation", "db-3", "postgres"),
        ("violation", "db-5", "app"),
        ("invalid", "edge-fra-6", "caddy"),
        ("unreachable", "db-7", "sysctl"),
        ("unreachable", "db-7", "postgres"),
        ("unreachable", "db-7", "app"),
    ]
    .iter()
    .map(|(k, n, c)| (k.to_string(), n.to_string(), c.to_string()))
    .collect();
    want.sort();
    assert_eq!(found, want, "{run}");
    // Lifecycle: what was there in scan 1 is ongoing, what appeared is new, the rolled-back canary resolved.
    let state_of = |node: &str, config: &str, kind: &str| {
        findings(&r)
            .iter()
            .find(|f| f["node"] == node && f["config"] == config && f["kind"] == kind)
            .map(|f| f["state"].clone())
    };
    assert_eq!(
        state_of("edge-fra-2", "caddy", "drift"),
        Some(json!("ongoing"))
    );
    assert_eq!(state_of("db-5", "app", "drift"), Some(json!("new")));
    assert!(findings(&r).iter().all(|f| f["initial"] == false), "{run}");
    let resolved: Vec<(&str, &str)> = r["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["node"].as_str().unwrap(), f["config"].as_str().unwrap()))
        .collect();
    assert_eq!(resolved, vec![("edge-ams-3", "caddy")], "{run}");
    // Regression by value: back to the superseded sysctl baseline, reported once fleet-wide too.
    let reg = findings(&r)
        .iter()
        .find(|f| f["kind"] == "regression" && f["node"] == "edge-ams-7")
        .unwrap();
    assert_eq!(reg["path"], "$['net.core.somaxconn']");
    assert_eq!(
        (reg["expected"].clone(), reg["actual"].clone()),
        (json!("4096"), json!("1024"))
    );
    assert!(
        reg["regression_of"]
            .as_str()
            .unwrap()
            .starts_with("baselines/sysctl/default.conf@"),
        "{reg}"
    );
    assert_eq!(reg["severity"], "high");
    let groups = r["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{run}");
    assert_eq!(groups[0]["nodes"], json!(["edge-ams-7", "edge-fra-7"]));
    assert_eq!(groups[0]["count"], 2);

    let route = the_drift(
        &r,
        "edge-fra-2",
        "caddy",
        "$.apps.http.servers.srv0.routes[?@['@id']=='debug']",
    );
    assert_eq!(route["change"], "added");
    assert_eq!(route["actual"]["@id"], "debug");
    let tls = the_drift(
        &r,
        "edge-fra-4",
        "caddy",
        "$.apps.http.servers.srv0.tls_connection_policies[0].protocol_min",
    );
    assert_drift(tls, "changed", json!("tls1.2"), json!("tls1.0"), "high");
    assert_drift(
        the_drift(&r, "edge-ams-5", "sysctl", "$['net.ipv4.ip_forward']"),
        "changed",
        json!("0"),
        json!("1"),
        "medium",
    );
    assert_drift(
        the_drift(&r, "db-3", "postgres", "$.max_connections"),
        "changed",
        json!("200"),
        json!("500"),
        "medium",
    );
    // The repository's rules/ run in the same scan, on the same trees.
    let rule_of = |node: &str| {
        findings(&r)
            .iter()
            .find(|f| f["kind"] == "violation" && f["node"] == node)
            .map(|f| (f["rule"].clone(), f["severity"].clone()))
    };
    assert_eq!(
        rule_of("edge-fra-4"),
        Some((json!("caddy-tls-min-1.2"), json!("high")))
    );
    assert_eq!(
        rule_of("edge-ams-5"),
        Some((json!("sysctl-no-ip-forward"), json!("high")))
    );
    assert_eq!(
        rule_of("db-3"),
        Some((json!("postgres-max-connections"), json!("medium")))
    );
}
