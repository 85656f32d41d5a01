//! The email sink against a real SMTP server that is not ours (aiosmtpd, see `tests/common/smtp.rs`): STARTTLS
//! and implicit TLS with a verified test CA, the received MIME (headers, parts, threading, escaping), AUTH, and
//! how each failure is classified.

mod common;

use common::smtp::{Mail, Mode, Pki, SmtpServer, free_port};
use plumb::finding::{Change, Finding, Kind, Severity};
use plumb::notify::sinks::{Delivered, DeliveryError, SinkKind, SinkPlan, email};
use plumb::notify::{AlertItem, Digest, Trigger};
use serde_json::json;
use std::time::Duration;

const FROM: &str = "plumb@example.org";
const TO: [&str; 2] = ["oncall@example.org", "audit@example.org"];

fn sink(url: &str, ca: Option<&Pki>) -> SinkPlan {
    SinkPlan {
        name: "oncall-mail".into(),
        kind: SinkKind::Email,
        url: url.into(),
        secret: None,
        username: None,
        password: None,
        token: None,
        user: None,
        from: Some(format!("plumb <{FROM}>")),
        to: TO.iter().map(|s| s.to_string()).collect(),
        ca: ca.map(|p| p.ca_pem.clone().into_bytes()),
        repo: None,
        project: None,
        issue_type: "Task".into(),
        labels: vec![],
        close_transition: "Done".into(),
        reopen_transition: "Reopen".into(),
        routing_key: None,
        timeout: Duration::from_secs(10),
    }
}

fn drift(
    node: &str,
    path: &str,
    expected: serde_json::Value,
    actual: serde_json::Value,
) -> Finding {
    let mut f = Finding::observed(
        Kind::Drift,
        Severity::High,
        node,
        "caddy",
        path.into(),
        path,
        format!("{path} differs from the baseline on {node}"),
        "2025-03-04T05:06:07Z",
    );
    f.change = Some(Change::Changed);
    f.expected = expected;
    f.actual = actual;
    f
}

fn item(trigger: Trigger, finding: Finding) -> AlertItem {
    AlertItem {
        trigger,
        finding,
        nodes: vec![],
    }
}

/// A firing digest: a high drift whose live value is an HTML injection attempt, and a critical violation.
fn firing() -> Digest {
    let a = drift(
        "web-1",
        "$.apps.http.servers.srv0.listen[0]",
        json!(":443"),
        json!("<script>alert('x')</script>"),
    );
    let mut b = Finding::observed(
        Kind::Violation,
        Severity::Critical,
        "web-2",
        "caddy",
        "$.admin.listen".into(),
        "admin-loopback",
        "the admin API must listen on loopback only".into(),
        "2025-03-04T05:06:07Z",
    );
    b.rule = Some("admin-loopback".into());
    b.expected = json!("127.0.0.1:2019");
    b.actual = json!("0.0.0.0:2019");
    Digest {
        id: "6f1c0d2e3a4b5c6d7e8f".into(),
        route: "oncall".into(),
        sink: "oncall-mail".into(),
        scan_id: "scan-0001".into(),
        at: "2025-03-04T05:06:07Z".into(),
        title: "plumb: 2 firing (oncall, scan scan-0001) …".into(),
        items: vec![item(Trigger::Firing, a), item(Trigger::Firing, b)],
        report_url: Some("https://plumb.example.org/scans/scan-0001".into()),
        replies_to: vec![],
    }
}

/// The resolution of the first digest's drift, threaded under it.
fn resolution(first: &Digest) -> Digest {
    let a = drift(
        "web-1",
        "$.apps.http.servers.srv0.listen[0]",
        json!(":443"),
        json!(":443"),
    );
    Digest {
        id: "9a8b7c6d5e4f3a2b1c0d".into(),
        route: "oncall".into(),
        sink: "oncall-mail".into(),
        scan_id: "scan-0002".into(),
        at: "2025-03-04T06:06:07Z".into(),
        title: "plumb: 1 resolved (oncall, scan scan-0002)".into(),
        items: vec![item(Trigger::Resolved, a)],
        report_url: None,
        replies_to: vec![first.id.clone()],
    }
}

fn by_id<'a>(mails: &'a [Mail], id: &str) -> &'a Mail {
    mails
        .iter()
        .find(|m| m.all("Message-ID") == [format!("<{id}@plumb>").as_str()])
        .unwrap_or_else(|| panic!("no mail with Message-ID <{id}@plumb> in {mails:#?}"))
}

fn assert_envelope_headers(m: &Mail, d: &Digest) {
    assert!(m.defects.is_empty(), "{m:#?}");
    assert_eq!(m.header("From"), format!("plumb <{FROM}>"));
    assert_eq!(m.header("To"), TO.join(", "));
    assert_eq!(m.header("Subject"), d.title);
    assert_eq!(m.header("X-Plumb-Scan"), d.scan_id);
    assert_eq!(m.header("X-RcptTo"), TO.join(", "), "envelope recipients");
    assert_eq!(m.header("X-MailFrom"), FROM, "envelope sender");
    // Exactly one Content-Type at the top: multipart/alternative with a text and an HTML part.
    assert_eq!(m.all("Content-Type").len(), 1, "{m:#?}");
    assert_eq!(m.content_type, "multipart/alternative");
    let kinds: Vec<&str> = m.parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(kinds, ["text/plain", "text/html"], "{m:#?}");
    assert!(m.parts.iter().all(|p| p.charset == "utf-8"), "{m:#?}");
}

fn expect_permanent(r: Result<Delivered, DeliveryError>, what: &str) -> String {
    match r {
        Err(DeliveryError::Permanent { reason }) => reason,
        other => panic!("{what}: expected a permanent failure, got {other:?}"),
    }
}

fn expect_retry(r: Result<Delivered, DeliveryError>, what: &str) -> String {
    match r {
        Err(DeliveryError::Retry { reason, .. }) => reason,
        other => panic!("{what}: expected a retryable failure, got {other:?}"),
    }
}

#[tokio::test]
async fn starttls_delivery_threads_the_resolution_under_the_alert() {
    let pki = Pki::new("starttls");
    let server = SmtpServer::start(Mode::StartTls, Some(&pki));
    let url = format!("smtp://127.0.0.1:{}", server.port);
    let first = firing();
    let second = resolution(&first);

    // The server insists on TLS: a plain-text send (allowed by plumb only for loopback) is refused by it.
    let plain = sink(&format!("{url}?tls=none"), None);
    let reason = expect_permanent(email::send(&plain, &first).await, "MAIL without STARTTLS");
    assert!(reason.contains("530"), "{reason}");

    let s = sink(&url, Some(&pki));
    email::send(&s, &first)
        .await
        .unwrap_or_else(|e| panic!("firing mail: {e}\n{}", server.log()));
    email::send(&s, &second)
        .await
        .unwrap_or_else(|e| panic!("resolution mail: {e}\n{}", server.log()));

    let mails = server.wait_mails(2);
    let m1 = by_id(&mails, &first.id);
    let m2 = by_id(&mails, &second.id);
    assert_envelope_headers(m1, &first);
    assert_envelope_headers(m2, &second);

    // Threading: the resolution replies to the alert.
    assert!(m1.all("In-Reply-To").is_empty() && m1.all("References").is_empty());
    let first_id = m1.header("Message-ID");
    assert_eq!(first_id, "<6f1c0d2e3a4b5c6d7e8f@plumb>");
    assert_eq!(m2.header("In-Reply-To"), first_id);
    assert_eq!(m2.header("References"), first_id);

    // The items, in both parts: critical violation first, then the high drift.
    let text = m1.part("text/plain");
    let html = m1.part("text/html");
    let crit = text.find("CRITICAL · admin-loopback (1)").expect(text);
    let high = text.find("HIGH · drift (1)").expect(text);
    assert!(crit < high, "{text}");
    for needle in [
        "- [firing] web-1",
        "- [firing] web-2",
        "config:   caddy",
        "path:     $.apps.http.servers.srv0.listen[0]",
        "expected: \":443\"",
        "actual:   \"<script>alert('x')</script>\"",
        "expected: \"127.0.0.1:2019\"",
        "actual:   \"0.0.0.0:2019\"",
        "the admin API must listen on loopback only",
        "Full report: https://plumb.example.org/scans/scan-0001",
    ] {
        assert!(text.contains(needle), "text part lacks {needle:?}:\n{text}");
    }
    for needle in [
        "CRITICAL</span> · admin-loopback (1)",
        "HIGH</span> · drift (1)",
        "[firing]</strong> web-1",
        "<code>$.apps.http.servers.srv0.listen[0]</code>",
        "<code>&quot;:443&quot;</code>",
        "<code>&quot;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;</code>",
        "<code>&quot;0.0.0.0:2019&quot;</code>",
        "the admin API must listen on loopback only",
        "<a href=\"https://plumb.example.org/scans/scan-0001\">",
    ] {
        assert!(html.contains(needle), "HTML part lacks {needle:?}:\n{html}");
    }
    assert!(
        !html.contains("<script>"),
        "unescaped value in HTML:\n{html}"
    );

    let text2 = m2.part("text/plain");
    assert!(text2.contains("- [resolved] web-1"), "{text2}");
    assert!(m2.part("text/html").contains("[resolved]</strong> web-1"));
}

#[tokio::test]
async fn smtps_implicit_tls_delivers() {
    let pki = Pki::new("smtps");
    let server = SmtpServer::start(Mode::Implicit, Some(&pki));
    // By name this time: the certificate is checked for `localhost`.
    let s = sink(&format!("smtps://localhost:{}", server.port), Some(&pki));
    let d = firing();
    email::send(&s, &d)
        .await
        .unwrap_or_else(|e| panic!("smtps mail: {e}\n{}", server.log()));
    let mails = server.wait_mails(1);
    assert_envelope_headers(&mails[0], &d);
    assert!(mails[0].part("text/plain").contains("- [firing] web-2"));

    // STARTTLS-style smtp:// against the implicit-TLS port does not silently fall back to anything.
    let mut s = sink(&format!("smtp://127.0.0.1:{}", server.port), Some(&pki));
    s.timeout = Duration::from_secs(2);
    assert!(email::send(&s, &d).await.is_err());
    assert_eq!(server.mails().len(), 1);
}

#[tokio::test]
async fn auth_after_starttls_and_failures_by_class() {
    let pki = Pki::new("auth");
    let server = SmtpServer::start_auth(&pki, "alerts", "correct horse");
    let url = format!("smtp://127.0.0.1:{}", server.port);
    let d = firing();

    let mut s = sink(&url, Some(&pki));
    s.username = Some("alerts".into());
    s.password = Some("correct horse".into());
    email::send(&s, &d)
        .await
        .unwrap_or_else(|e| panic!("authenticated mail: {e}\n{}", server.log()));
    let mails = server.wait_mails(1);
    assert_eq!(mails[0].header("X-Test-TLS"), "yes");
    assert_eq!(mails[0].header("X-Test-User"), "alerts");
    assert_envelope_headers(&mails[0], &d);

    // A wrong password: 535, permanent, and the password is not in the reason.
    let mut bad = s.clone();
    bad.password = Some("wrong-Pa55word".into());
    let reason = expect_permanent(email::send(&bad, &d).await, "wrong password");
    assert!(reason.contains("535"), "{reason}");
    assert!(!reason.contains("wrong-Pa55word"), "{reason}");

    // No credentials at all: the server requires AUTH (530), permanent.
    let anon = sink(&url, Some(&pki));
    let reason = expect_permanent(email::send(&anon, &d).await, "no credentials");
    assert!(reason.contains("530"), "{reason}");

    // A rejected recipient (550) is permanent, a 4xx is worth retrying.
    let mut s550 = s.clone();
    s550.to = vec!["bad-user@example.org".into()];
    let reason = expect_permanent(email::send(&s550, &d).await, "550 recipient");
    assert!(reason.contains("550"), "{reason}");
    let mut s451 = s.clone();
    s451.to = vec!["busy-user@example.org".into()];
    let reason = expect_retry(email::send(&s451, &d).await, "451 recipient");
    assert!(reason.contains("451"), "{reason}");

    assert_eq!(server.mails().len(), 1, "only the first mail was accepted");
}

#[tokio::test]
async fn server_down_is_retry() {
    let s = sink(&format!("smtp://127.0.0.1:{}", free_port()), None);
    let reason = expect_retry(email::send(&s, &firing()).await, "nothing listening");
    assert!(reason.contains("127.0.0.1"), "{reason}");
}

#[tokio::test]
async fn silent_server_times_out_as_retry() {
    // Accepts the connection and never greets.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut s = sink(&format!("smtp://127.0.0.1:{port}"), None);
    s.timeout = Duration::from_millis(800);
    let t0 = std::time::Instant::now();
    let reason = expect_retry(email::send(&s, &firing()).await, "silent server");
    assert!(reason.contains("timed out"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(l);
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error() {
    let pki = Pki::new("server");
    let other = Pki::new("other");
    let server = SmtpServer::start(Mode::StartTls, Some(&pki));
    let d = firing();
    for (what, ca) in [("another CA", Some(&other)), ("no extra CA", None)] {
        let s = sink(&format!("smtp://127.0.0.1:{}", server.port), ca);
        let reason = expect_retry(email::send(&s, &d).await, what);
        assert!(
            reason.contains("TLS") && reason.contains("certificate"),
            "{what}: {reason}"
        );
    }
    // The right CA but a certificate for another name (`localhost` only, reached as 127.0.0.1).
    let named = Pki::for_names("named", &["localhost"]);
    let server2 = SmtpServer::start(Mode::Implicit, Some(&named));
    let s = sink(&format!("smtps://127.0.0.1:{}", server2.port), Some(&named));
    let reason = expect_retry(email::send(&s, &d).await, "name mismatch");
    assert!(reason.contains("certificate"), "{reason}");
    assert!(server.mails().is_empty() && server2.mails().is_empty());
}

#[tokio::test]
async fn server_without_starttls_is_refused() {
    let server = SmtpServer::start(Mode::NoTls, None);
    let s = sink(&format!("smtp://127.0.0.1:{}", server.port), None);
    let reason = expect_permanent(email::send(&s, &firing()).await, "no STARTTLS");
    assert!(
        reason.contains("does not offer STARTTLS") && reason.contains("never sends mail in clear"),
        "{reason}"
    );
    assert!(server.mails().is_empty());
    // A loopback relay without TLS is what `tls=none` is for.
    let s = sink(&format!("smtp://127.0.0.1:{}?tls=none", server.port), None);
    email::send(&s, &firing())
        .await
        .unwrap_or_else(|e| panic!("loopback relay: {e}\n{}", server.log()));
    assert_eq!(server.wait_mails(1).len(), 1);
}
