//! Alerts end to end through the real binary: `audit --notify` plans digests through routes into the durable
//! outbox and delivers them to real HTTP receivers on loopback (429 + Retry-After, 400, a sink that is down and
//! comes back after a plumb restart), in order, without losing anything.

mod common;

use common::receiver::{Answer, Receiver};
use common::*;
use serde_json::Value;
use std::path::Path;

fn project(dir: &Path, hook: &str, chat: &str) {
    let toml = format!(
        r#"
[[node]]
name = "n1"
labels = {{ env = "prod" }}

[[node]]
name = "n2"
labels = {{ env = "prod" }}

[[node]]
name = "n3"
labels = {{ env = "dev" }}

[[config]]
name = "app"
source.file = "live/${{node.name}}.json"
format = "json"

[[sink]]
name = "hook"
type = "webhook"
url = "{hook}"
secret = "s3cret"

[[sink]]
name = "chat"
type = "slack"
url = "{chat}"

[[route]]
name = "prod"
nodes = {{ env = "prod" }}
sinks = ["hook", "chat"]
repeat_interval = "0s"
"#
    );
    write_tree(
        dir,
        &[
            ("plumb.toml", &toml),
            ("baselines/app/default.json", r#"{"port": 443}"#),
            ("live/n1.json", r#"{"port": 80}"#),
            ("live/n2.json", r#"{"port": 80}"#),
            ("live/n3.json", r#"{"port": 80}"#),
        ],
    );
}

fn digests(r: &Receiver) -> Vec<Value> {
    r.requests()
        .iter()
        .filter(|q| q.method == "POST")
        .map(|q| q.json())
        .collect()
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

#[test]
fn notify_sends_one_digest_per_route_and_sink_and_retries_429() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(vec![Answer::retry_after(429, "1"), Answer::status(200)]);
    let chat = Receiver::start(vec![Answer::status(200)]);
    project(dir.path(), &hook.url("/plumb"), &chat.url("/slack"));

    let run = plumb(dir.path(), &["audit", "--notify", "--format", "json"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("alerts: 2 queued, 2 delivered, 0 pending, 0 dead letters"),
        "{run}"
    );
    // The webhook was throttled once and got the same message again after Retry-After.
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].body, reqs[1].body);
    assert_eq!(
        reqs[0].header("idempotency-key"),
        reqs[1].header("idempotency-key")
    );
    let d = reqs[1].json();
    assert_eq!(d["type"], "digest");
    assert_eq!(d["route"], "prod");
    let items = d["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "the same drift on n1 and n2 is one item: {d:#}"
    );
    assert_eq!(items[0]["trigger"], "firing");
    assert_eq!(items[0]["nodes"], serde_json::json!(["n1", "n2"]));
    assert_eq!(items[0]["path"], "$.port");
    // n3 is env=dev: not on this route.
    assert!(!reqs[1].body.windows(2).any(|w| w == b"n3"), "{d:#}");
    assert_eq!(digests(&chat).len(), 1);

    // Nothing changed: nothing is sent.
    plumb(dir.path(), &["audit", "--notify"]).expect_code(1);
    assert_eq!(hook.requests().len(), 2);
    assert_eq!(digests(&chat).len(), 1);

    // n1 is fixed: one resolution digest per sink.
    write_tree(dir.path(), &[("live/n1.json", r#"{"port": 443}"#)]);
    let run = plumb(dir.path(), &["audit", "--notify"]);
    run.expect_code(1);
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 3, "{run}");
    let d = reqs[2].json();
    let items = d["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{d:#}");
    assert_eq!(
        (items[0]["trigger"].as_str(), items[0]["node"].as_str()),
        (Some("resolved"), Some("n1"))
    );
    let out = plumb(dir.path(), &["alerts", "outbox"]);
    out.expect_code(0);
    assert!(out.stdout.contains("0 pending, 0 dead letters"), "{out}");
}

#[test]
fn a_sink_that_is_down_loses_nothing_and_delivers_in_order_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let chat = Receiver::start(vec![Answer::status(200)]);
    project(
        dir.path(),
        &format!("http://{addr}/plumb"),
        &chat.url("/slack"),
    );

    let run = plumb(dir.path(), &["audit", "--notify", "--notify-wait", "1s"]);
    run.expect_code(1);
    assert!(run.stderr.contains("1 pending"), "{run}");
    assert!(
        run.stderr.contains("sink hook failing: network error"),
        "{run}"
    );
    // Resolve n1 and n2 while the sink is still down: the resolution queues behind the trigger.
    write_tree(
        dir.path(),
        &[
            ("live/n1.json", r#"{"port": 443}"#),
            ("live/n2.json", r#"{"port": 443}"#),
        ],
    );
    // (n3, on no route, still drifts: exit 1.)
    plumb(dir.path(), &["audit", "--notify", "--notify-wait", "1s"]).expect_code(1);
    let out = plumb(dir.path(), &["alerts", "outbox", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let pending: Vec<&Value> = rows.iter().filter(|r| r["sink"] == "hook").collect();
    assert_eq!(pending.len(), 2, "{out}");
    assert!(pending.iter().all(|r| r["status"] == "pending"));
    assert!(
        pending[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("network error"),
        "{out}"
    );
    // The chat sink was up all along and got both.
    assert_eq!(digests(&chat).len(), 2);

    // The sink comes back; a new plumb process (a restart) delivers both, in order.
    let hook = Receiver::start_on(&addr, vec![Answer::status(200)]);
    let run = plumb(dir.path(), &["alerts", "flush", "--wait", "30s"]);
    run.expect_code(0);
    let got = digests(&hook);
    assert_eq!(got.len(), 2, "{run}");
    assert_eq!(got[0]["items"][0]["trigger"], "firing");
    assert_eq!(
        got[1]["items"][0]["trigger"], "resolved",
        "a resolution never overtakes its trigger"
    );
    let out = plumb(dir.path(), &["alerts", "outbox"]);
    assert!(out.stdout.contains("0 pending, 0 dead letters"), "{out}");
}

#[test]
fn a_refused_alert_is_a_dead_letter_and_raises_a_self_alert() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(vec![Answer::body(400, "{\"error\":\"bad payload\"}")]);
    let chat = Receiver::start(vec![Answer::status(200)]);
    project(dir.path(), &hook.url("/plumb"), &chat.url("/slack"));
    let run = plumb(dir.path(), &["audit", "--notify"]);
    run.expect_code(1);
    assert!(run.stderr.contains("1 dead letters"), "{run}");
    assert_eq!(hook.requests().len(), 1, "a 400 is not retried");
    let texts: Vec<String> = digests(&chat).iter().map(|d| d.to_string()).collect();
    assert_eq!(texts.len(), 2, "the digest and a self-alert: {texts:?}");
    assert!(
        texts[1].contains("sink `hook` was refused and dead-lettered")
            && texts[1].contains("HTTP 400"),
        "{texts:?}"
    );
    let out = plumb(dir.path(), &["alerts", "outbox"]);
    assert!(
        out.stdout.contains("dead") && out.stdout.contains("HTTP 400"),
        "{out}"
    );
}

#[test]
fn alerts_test_reports_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(vec![Answer::status(204)]);
    let chat = Receiver::start(vec![Answer::status(403)]);
    project(dir.path(), &hook.url("/plumb"), &chat.url("/slack"));
    let run = plumb(dir.path(), &["alerts", "test", "hook"]);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("delivered a test message to sink `hook`"),
        "{run}"
    );
    assert!(
        hook.requests()[0].json()["title"]
            .as_str()
            .unwrap()
            .contains("test message")
    );
    let run = plumb(dir.path(), &["alerts", "test", "chat"]);
    run.expect_code(1);
    assert!(
        run.stdout
            .contains("sink `chat` refused the test message: HTTP 403"),
        "{run}"
    );
    let run = plumb(dir.path(), &["alerts", "test", "nope"]);
    run.expect_code(2);
    assert!(run.stderr.contains("no [[sink]] named `nope`"), "{run}");
}

#[test]
fn bad_sinks_and_routes_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "http://127.0.0.1:9/x", "http://127.0.0.1:9/y");
    let base = std::fs::read_to_string(dir.path().join("plumb.toml")).unwrap();
    for (extra, what) in [
        (
            "[[sink]]\nname = \"m\"\ntype = \"email\"\nurl = \"smtp://x\"\nfrom = \"a@b\"\n",
            "`email` sinks need `to`",
        ),
        (
            "[[sink]]\nname = \"m\"\ntype = \"slak\"\nurl = \"http://x\"\n",
            "unknown variant `slak`",
        ),
        (
            "[[route]]\nsinks = [\"nowhere\"]\n",
            "no [[sink]] named `nowhere`",
        ),
        (
            "[[route]]\nsinks = [\"hook\"]\ngroup_by = [\"colour\"]\n",
            "group_by `colour`",
        ),
        (
            "[[sink]]\nname = \"p\"\ntype = \"webhook\"\nurl = \"${env:PLUMB_NO_SUCH_VAR}\"\n",
            "`PLUMB_NO_SUCH_VAR` is not set",
        ),
    ] {
        write_tree(dir.path(), &[("plumb.toml", &format!("{base}\n{extra}"))]);
        let run = plumb(dir.path(), &["check"]);
        run.expect_code(2);
        assert!(run.stderr.contains(what), "want {what}\n{run}");
    }
}

/// The SMTP server is down during a scan, plumb is restarted, the server comes back: every alert is delivered,
/// in order, to a real SMTP server (aiosmtpd, over STARTTLS with a verified certificate).
#[test]
fn smtp_down_during_a_scan_then_back_after_a_restart_delivers_everything_in_order() {
    use common::smtp::{Mode, Pki, SmtpServer, free_port};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("outbox");
    let port = free_port();
    let chat = Receiver::start(vec![Answer::status(200)]);
    project(dir.path(), &chat.url("/hook"), &chat.url("/slack"));
    let base = std::fs::read_to_string(dir.path().join("plumb.toml")).unwrap();
    let toml = format!(
        "{base}\n[[sink]]\nname = \"mail\"\ntype = \"email\"\nurl = \"smtp://localhost:{port}\"\nfrom = \"plumb@example.org\"\nto = [\"oncall@example.org\"]\nca = \"ca.pem\"\ntimeout = \"3s\"\n\n[[route]]\nname = \"mail\"\nsinks = [\"mail\"]\n"
    );
    write_tree(
        dir.path(),
        &[("plumb.toml", &toml), ("ca.pem", &pki.ca_pem)],
    );

    // Scan 1 fires, scan 2 resolves n1: both mails wait in the outbox while nothing listens on the port.
    let run = plumb(dir.path(), &["audit", "--notify", "--notify-wait", "1s"]);
    run.expect_code(1);
    assert!(run.stderr.contains("sink mail failing"), "{run}");
    write_tree(dir.path(), &[("live/n1.json", r#"{"port": 443}"#)]);
    plumb(dir.path(), &["audit", "--notify", "--notify-wait", "1s"]).expect_code(1);
    let out = plumb(dir.path(), &["alerts", "outbox"]);
    assert!(out.stdout.contains("2 pending"), "{out}");

    // The server is back; a fresh plumb process delivers both, the resolution threaded under the alert.
    let smtp = SmtpServer::start_on(Mode::StartTls, Some(&pki), port);
    let run = plumb(dir.path(), &["alerts", "flush", "--wait", "40s"]);
    run.expect_code(0);
    let mails = smtp.wait_mails(2);
    let first_id = mails[0].header("Message-ID").to_string();
    assert!(
        mails[0].header("Subject").contains("firing"),
        "{:?}",
        mails[0].headers
    );
    assert!(
        mails[1].header("Subject").contains("resolved"),
        "{:?}",
        mails[1].headers
    );
    assert_eq!(
        mails[1].header("In-Reply-To"),
        first_id,
        "the resolution threads under the alert"
    );
    assert!(mails[0].part("text/plain").contains("$.port"));
    let out = plumb(dir.path(), &["alerts", "outbox"]);
    assert!(out.stdout.contains("0 pending, 0 dead letters"), "{out}");
}
