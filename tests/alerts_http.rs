//! The chat, webhook and PagerDuty sinks against an in-process HTTP receiver (issue 5): the exact payload and
//! headers each target gets, and how every answer is classified: 429 + Retry-After, 500, 400, a Teams-style
//! empty 202, a hung server, a closed port. No error may carry the sink URL (webhook URLs are credentials).

mod common;

use common::receiver::{Answer, Receiver, Request};
use hmac::{Hmac, Mac};
use plumb::finding::{Change, Finding, Kind, Severity, State};
use plumb::notify::sinks::{Delivered, DeliveryError, SinkKind, SinkPlan, client, deliver};
use plumb::notify::{AlertItem, Digest, Message, TicketAction, TicketEvent, Trigger, render};
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::{Duration, Instant};

/// A path that stands for the secret part of a webhook URL; it must never show up in an error.
const SECRET_PATH: &str = "/hooks/T0001/B0002/s3cr3tW3bh00kT0k3n";

fn sink(kind: SinkKind, url: String) -> SinkPlan {
    SinkPlan {
        name: format!("test-{}", kind.as_str()),
        kind,
        url,
        secret: None,
        username: None,
        password: None,
        token: None,
        user: None,
        from: None,
        to: Vec::new(),
        ca: None,
        repo: None,
        project: None,
        issue_type: "Task".into(),
        labels: Vec::new(),
        close_transition: "Done".into(),
        reopen_transition: "Reopen".into(),
        routing_key: (kind == SinkKind::Pagerduty).then(|| "R0UT1NGK3Y".to_string()),
        timeout: Duration::from_secs(1),
    }
}

fn finding(kind: Kind, sev: Severity, node: &str, path: &str) -> Finding {
    let mut f = Finding::observed(
        kind,
        sev,
        node,
        "caddy",
        path.to_string(),
        path,
        "value changed".into(),
        "2025-01-02T03:04:05Z",
    );
    f.change = Some(Change::Changed);
    f.expected = json!("localhost:2019");
    f.actual = json!("0.0.0.0:2019");
    f
}

/// Three items: a critical drift, a medium violation on two nodes, a resolved low drift.
fn digest() -> Digest {
    let mut vio = finding(Kind::Violation, Severity::Medium, "edge-1", "$.admin");
    vio.rule = Some("caddy-admin-locked".into());
    let mut res = finding(Kind::Drift, Severity::Low, "edge-3", "$.logging.level");
    res.state = State::Resolved;
    Digest {
        id: "0123456789abcdef0123".into(),
        route: "prod".into(),
        sink: "chat".into(),
        scan_id: "s-42".into(),
        at: "2025-01-02T03:04:06Z".into(),
        title: "plumb: 2 firing, 1 resolved (prod, scan s-42)".into(),
        items: vec![
            AlertItem {
                trigger: Trigger::Firing,
                finding: finding(Kind::Drift, Severity::Critical, "edge-1", "$.admin.listen"),
                nodes: Vec::new(),
            },
            AlertItem {
                trigger: Trigger::Firing,
                finding: vio,
                nodes: vec!["edge-1".into(), "edge-2".into()],
            },
            AlertItem {
                trigger: Trigger::Resolved,
                finding: res,
                nodes: Vec::new(),
            },
        ],
        report_url: Some("https://plumb.example.org/scans/s-42".into()),
        replies_to: Vec::new(),
    }
}

fn ticket(action: TicketAction, trigger: Trigger, sev: Severity) -> TicketEvent {
    let f = finding(Kind::Drift, sev, "edge-1", "$.admin.listen");
    TicketEvent {
        id: format!("ev-{action:?}"),
        route: "prod".into(),
        sink: "pd".into(),
        action,
        trigger,
        key: f.fingerprint.clone(),
        finding: f,
        nodes: Vec::new(),
        report_url: Some("https://plumb.example.org/scans/s-42".into()),
    }
}

async fn send(s: &SinkPlan, msg: &Message) -> Result<Delivered, DeliveryError> {
    let http = client(s).expect("client");
    deliver(&http, s, msg, None).await
}

/// The message a sink of this kind takes.
fn message_for(kind: SinkKind) -> Message {
    if kind == SinkKind::Pagerduty {
        Message::Ticket(ticket(TicketAction::Open, Trigger::Firing, Severity::High))
    } else {
        Message::Digest(digest())
    }
}

const HTTP_KINDS: [SinkKind; 7] = [
    SinkKind::Slack,
    SinkKind::Teams,
    SinkKind::Mattermost,
    SinkKind::Discord,
    SinkKind::GoogleChat,
    SinkKind::Webhook,
    SinkKind::Pagerduty,
];

/// No error names the sink's URL or any part of it.
fn assert_no_url(e: &DeliveryError, s: &SinkPlan) {
    let text = format!("{e} {e:?}");
    for needle in [s.url.as_str(), SECRET_PATH, "s3cr3t", "127.0.0.1"] {
        assert!(!text.contains(needle), "error {text:?} names {needle:?}");
    }
}

fn only_request(r: &Receiver) -> Request {
    let all = r.requests();
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap()
}

fn assert_json_post(req: &Request) {
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert!(
        req.header("user-agent").unwrap_or("").starts_with("plumb/"),
        "{:?}",
        req.headers
    );
}

/// For every HTTP sink: 429 + Retry-After: 1 → Retry after 1s; 500 → Retry; 400 → Permanent; then success. The
/// same body each time, and no URL in any error.
#[tokio::test]
async fn every_sink_classifies_429_500_400_and_success() {
    for kind in HTTP_KINDS {
        let ok = match kind {
            SinkKind::Teams | SinkKind::Pagerduty => Answer::body(202, ""),
            SinkKind::Discord => Answer::status(204),
            _ => Answer::body(200, "ok"),
        };
        let r = Receiver::start(vec![
            Answer::retry_after(429, "1"),
            Answer::status(500),
            Answer::body(400, "invalid_payload"),
            ok,
        ]);
        let s = sink(kind, r.url(SECRET_PATH));
        let msg = message_for(kind);

        let e = send(&s, &msg).await.expect_err("429");
        assert_eq!(
            e,
            DeliveryError::Retry {
                after: Some(Duration::from_secs(1)),
                reason: "HTTP 429".into()
            },
            "{kind:?}"
        );
        assert_no_url(&e, &s);

        let e = send(&s, &msg).await.expect_err("500");
        assert_eq!(
            e,
            DeliveryError::Retry {
                after: None,
                reason: "HTTP 500".into()
            },
            "{kind:?}"
        );
        assert_no_url(&e, &s);

        let e = send(&s, &msg).await.expect_err("400");
        assert_eq!(
            e,
            DeliveryError::Permanent {
                reason: "HTTP 400: invalid_payload".into()
            },
            "{kind:?}"
        );
        assert_no_url(&e, &s);

        let d = send(&s, &msg)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        if kind == SinkKind::Pagerduty {
            assert!(d.external_id.unwrap().starts_with("plumb:"));
        } else {
            assert_eq!(d, Delivered::default());
        }

        let reqs = r.requests();
        assert_eq!(reqs.len(), 4, "{kind:?}");
        for q in &reqs {
            assert_json_post(q);
            assert_eq!(q.path(), SECRET_PATH, "{kind:?}");
            assert_eq!(
                q.body, reqs[0].body,
                "{kind:?}: a retry sends the same body"
            );
        }
    }
}

/// A server that takes the request and never answers: Retry "timed out", after the sink's 1s timeout.
#[tokio::test]
async fn every_sink_times_out_as_retry_within_the_timeout() {
    let mut tasks = Vec::new();
    for kind in HTTP_KINDS {
        tasks.push(tokio::spawn(async move {
            let r = Receiver::start(vec![Answer::Hang]);
            let s = sink(kind, r.url(SECRET_PATH));
            let t0 = Instant::now();
            let e = send(&s, &message_for(kind)).await.expect_err("hang");
            let took = t0.elapsed();
            assert_eq!(
                e,
                DeliveryError::Retry {
                    after: None,
                    reason: "timed out".into()
                },
                "{kind:?}"
            );
            assert_no_url(&e, &s);
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
                "{kind:?} took {took:?}"
            );
            assert_eq!(r.requests().len(), 1, "{kind:?}: the request did arrive");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// Nothing listening: a retryable network error that does not name the URL.
#[tokio::test]
async fn closed_port_is_a_retryable_network_error_without_the_url() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for kind in HTTP_KINDS {
        let s = sink(kind, format!("http://127.0.0.1:{port}{SECRET_PATH}"));
        let e = send(&s, &message_for(kind)).await.expect_err("closed");
        match &e {
            DeliveryError::Retry {
                after: None,
                reason,
            } => assert!(reason.starts_with("network error: "), "{reason}"),
            other => panic!("{kind:?}: {other:?}"),
        }
        assert_no_url(&e, &s);
    }
}

/// A URL that does not parse is permanent, and not repeated.
#[tokio::test]
async fn bad_url_is_permanent_without_the_url() {
    for kind in HTTP_KINDS {
        let s = sink(kind, format!("not a url {SECRET_PATH}"));
        let e = send(&s, &message_for(kind)).await.expect_err("bad url");
        assert!(
            matches!(e, DeliveryError::Permanent { .. }),
            "{kind:?}: {e:?}"
        );
        assert_no_url(&e, &s);
    }
}

#[tokio::test]
async fn slack_gets_header_sections_and_context() {
    let r = Receiver::start(vec![Answer::body(200, "ok")]);
    let s = sink(SinkKind::Slack, r.url(SECRET_PATH));
    let d = digest();
    send(&s, &Message::Digest(d.clone())).await.expect("sent");
    let req = only_request(&r);
    assert_json_post(&req);
    let v = req.json();
    assert_eq!(v, render::slack(&d));
    assert_eq!(v["text"], "plumb: 2 firing, 1 resolved (prod, scan s-42)");
    let blocks = v["blocks"].as_array().unwrap();
    let types: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["header", "section", "section", "section", "context"]
    );
    assert_eq!(
        blocks[0]["text"],
        json!({"type": "plain_text", "text": d.title, "emoji": true})
    );
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert_eq!(
        blocks[1]["text"]["text"],
        "*CRITICAL · drift (1)*\n• firing · `edge-1` · `caddy` · `$.admin.listen`: `\"localhost:2019\"` → `\"0.0.0.0:2019\"`"
    );
    assert_eq!(
        blocks[2]["text"]["text"],
        "*MEDIUM · caddy-admin-locked (1)*\n• firing · 2 nodes · `caddy` · `$.admin`: `\"localhost:2019\"` → `\"0.0.0.0:2019\"`"
    );
    assert_eq!(
        blocks[3]["text"]["text"],
        "*RESOLVED · LOW · drift (1)*\n• resolved · `edge-3` · `caddy` · `$.logging.level` (was `\"localhost:2019\"` → `\"0.0.0.0:2019\"`)"
    );
    assert_eq!(
        blocks[4]["elements"],
        json!([{"type": "mrkdwn", "text":
            "scan `s-42` · route `prod` · <https://plumb.example.org/scans/s-42|full report>"}])
    );
}

/// Teams Workflows: an Adaptive Card 1.4 in a `message`; the empty 202 is success.
#[tokio::test]
async fn teams_gets_an_adaptive_card_1_4_and_empty_202_is_success() {
    let r = Receiver::start(vec![Answer::status(202)]);
    let s = sink(SinkKind::Teams, r.url(SECRET_PATH));
    let d = digest();
    assert_eq!(
        send(&s, &Message::Digest(d.clone())).await,
        Ok(Delivered::default())
    );
    let req = only_request(&r);
    assert_json_post(&req);
    let v = req.json();
    assert_eq!(v, render::teams(&d));
    assert_eq!(v["type"], "message");
    let att = &v["attachments"].as_array().unwrap()[0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(att["contentUrl"], Value::Null);
    let card = &att["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    let body = card["body"].as_array().unwrap();
    assert!(body.iter().all(|b| b["type"] == "TextBlock"));
    assert_eq!(body[0]["text"], d.title);
    assert_eq!(body[2]["text"], "CRITICAL · drift (1)");
    assert_eq!(body[2]["color"], "Attention");
    assert_eq!(
        body[3]["text"],
        "- firing · edge-1 · caddy · $.admin.listen: \"localhost:2019\" → \"0.0.0.0:2019\""
    );
    assert_eq!(
        card["actions"],
        json!([{"type": "Action.OpenUrl", "title": "Open report",
                "url": "https://plumb.example.org/scans/s-42"}])
    );
}

#[tokio::test]
async fn mattermost_gets_attachments_coloured_by_severity_and_no_blocks() {
    let r = Receiver::start(vec![Answer::body(200, "ok")]);
    let s = sink(SinkKind::Mattermost, r.url(SECRET_PATH));
    let d = digest();
    send(&s, &Message::Digest(d.clone())).await.expect("sent");
    let req = only_request(&r);
    assert_json_post(&req);
    let v = req.json();
    assert_eq!(v, render::mattermost(&d));
    assert!(v.get("blocks").is_none());
    assert_eq!(
        v["text"],
        "#### plumb: 2 firing, 1 resolved (prod, scan s-42)\nscan `s-42` · route `prod` · [full report](https://plumb.example.org/scans/s-42)"
    );
    let colors: Vec<&str> = v["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["color"].as_str().unwrap())
        .collect();
    assert_eq!(colors, ["#b00020", "#f2a900", "#2eb67d"]);
    assert_eq!(
        v["attachments"][1]["title"],
        "MEDIUM · caddy-admin-locked (1)"
    );
}

#[tokio::test]
async fn discord_gets_embeds_and_no_mentions() {
    let r = Receiver::start(vec![Answer::status(204)]);
    let s = sink(SinkKind::Discord, r.url(SECRET_PATH));
    let d = digest();
    send(&s, &Message::Digest(d.clone())).await.expect("sent");
    let req = only_request(&r);
    assert_json_post(&req);
    let v = req.json();
    assert_eq!(v, render::discord(&d));
    assert_eq!(v["allowed_mentions"], json!({"parse": []}));
    assert!(v["content"].as_str().unwrap().chars().count() <= 2000);
    let embeds = v["embeds"].as_array().unwrap();
    assert_eq!(embeds.len(), 3);
    assert_eq!(embeds[0]["title"], "CRITICAL · drift (1)");
    assert_eq!(embeds[0]["color"], 0xb00020);
    assert_eq!(
        embeds[2]["description"],
        "- resolved · `edge-3` · `caddy` · `$.logging.level` (was `\"localhost:2019\"` → `\"0.0.0.0:2019\"`)"
    );
}

/// Google Chat: the thread key comes from the route, and the URL asks for threading; its own query stays.
#[tokio::test]
async fn google_chat_threads_by_route() {
    let r = Receiver::start(vec![Answer::body(200, "{}")]);
    let s = sink(
        SinkKind::GoogleChat,
        r.url("/v1/spaces/AAA/messages?key=K3Y&token=T0K"),
    );
    let d = digest();
    send(&s, &Message::Digest(d.clone())).await.expect("sent");
    let req = only_request(&r);
    assert_json_post(&req);
    assert_eq!(
        req.target,
        "/v1/spaces/AAA/messages?key=K3Y&token=T0K&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
    );
    let v = req.json();
    assert_eq!(v, render::google_chat(&d));
    assert_eq!(v["thread"], json!({"threadKey": "plumb-prod"}));
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with("*plumb: 2 firing, 1 resolved (prod, scan s-42)*\n"),
        "{text}"
    );
    assert!(text.contains("\n\n*CRITICAL · drift (1)*\n• firing · `edge-1`"));

    // A URL that already says how to reply is left alone.
    let r = Receiver::start(vec![Answer::body(200, "{}")]);
    let s = sink(
        SinkKind::GoogleChat,
        r.url("/v1/spaces/AAA/messages?messageReplyOption=REPLY_MESSAGE_OR_FAIL"),
    );
    send(&s, &Message::Digest(d)).await.expect("sent");
    assert_eq!(
        only_request(&r).target,
        "/v1/spaces/AAA/messages?messageReplyOption=REPLY_MESSAGE_OR_FAIL"
    );
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The webhook: the documented body, `Idempotency-Key`, `X-Plumb-Event` and a signature over the raw bytes.
#[tokio::test]
async fn webhook_digest_is_signed_and_idempotent() {
    let r = Receiver::start(vec![Answer::status(500), Answer::body(200, "{}")]);
    let mut s = sink(SinkKind::Webhook, r.url("/plumb"));
    s.secret = Some("hook-s3cr3t".into());
    let d = digest();
    let msg = Message::Digest(d.clone());
    assert!(send(&s, &msg).await.is_err());
    send(&s, &msg).await.expect("sent");
    let reqs = r.requests();
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_json_post(req);
        assert_eq!(req.path(), "/plumb");
        assert_eq!(req.header("idempotency-key"), Some("0123456789abcdef0123"));
        assert_eq!(req.header("x-plumb-event"), Some("digest"));
        let sig = req.header("x-plumb-signature").expect("signed");
        assert_eq!(
            sig,
            format!("sha256={}", hmac_hex(b"hook-s3cr3t", &req.body))
        );
        assert_ne!(sig, format!("sha256={}", hmac_hex(b"other", &req.body)));
    }
    let v = reqs[1].json();
    let fp = d.items[0].finding.fingerprint.clone();
    assert_eq!(v["version"], "1");
    assert_eq!(v["id"], "0123456789abcdef0123");
    assert_eq!(v["type"], "digest");
    assert_eq!(v["scan_id"], "s-42");
    assert_eq!(v["route"], "prod");
    assert_eq!(v["sink"], "chat");
    assert_eq!(v["at"], "2025-01-02T03:04:06Z");
    assert_eq!(v["title"], d.title);
    assert_eq!(v["report_url"], "https://plumb.example.org/scans/s-42");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0],
        json!({
            "trigger": "firing", "fingerprint": fp, "kind": "drift", "severity": "critical",
            "state": "new", "node": "edge-1", "nodes": [], "config": "caddy", "path": "$.admin.listen",
            "change": "changed", "expected": "localhost:2019", "actual": "0.0.0.0:2019", "rule": null,
            "message": "value changed", "first_seen": "2025-01-02T03:04:05Z",
            "last_seen": "2025-01-02T03:04:05Z"
        })
    );
    assert_eq!(items[1]["rule"], "caddy-admin-locked");
    assert_eq!(items[1]["nodes"], json!(["edge-1", "edge-2"]));
    assert_eq!(items[2]["trigger"], "resolved");
    assert_eq!(items[2]["state"], "resolved");
}

/// A ticket event through a webhook, without a secret: no signature header.
#[tokio::test]
async fn webhook_ticket_event_without_secret_is_unsigned() {
    let r = Receiver::start(vec![Answer::status(204)]);
    let s = sink(SinkKind::Webhook, r.url("/plumb"));
    let t = ticket(TicketAction::Reopen, Trigger::Regression, Severity::High);
    send(&s, &Message::Ticket(t.clone())).await.expect("sent");
    let req = only_request(&r);
    assert_json_post(&req);
    assert_eq!(req.header("x-plumb-signature"), None);
    assert_eq!(req.header("x-plumb-event"), Some("ticket"));
    assert_eq!(req.header("idempotency-key"), Some("ev-Reopen"));
    let v = req.json();
    assert_eq!(v["type"], "ticket");
    assert_eq!(v["action"], "reopen");
    assert_eq!(v["key"], t.key);
    assert!(v.get("scan_id").is_none());
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["trigger"], "regression");
}

/// PagerDuty: open → trigger with the dedup key and the mapped severity; close → resolve with the same key.
#[tokio::test]
async fn pagerduty_triggers_and_resolves_by_dedup_key() {
    let ok = r#"{"status":"success","message":"Event processed","dedup_key":"x"}"#;
    let r = Receiver::start(vec![Answer::body(202, ok)]);
    let s = sink(SinkKind::Pagerduty, r.url("/v2/enqueue"));
    let cases = [
        (
            TicketAction::Open,
            Trigger::Firing,
            Severity::Critical,
            "trigger",
            "critical",
        ),
        (
            TicketAction::Comment,
            Trigger::Escalated,
            Severity::High,
            "trigger",
            "error",
        ),
        (
            TicketAction::Reopen,
            Trigger::Regression,
            Severity::Medium,
            "trigger",
            "warning",
        ),
        (
            TicketAction::Comment,
            Trigger::Reminder,
            Severity::Low,
            "trigger",
            "info",
        ),
        (
            TicketAction::Comment,
            Trigger::ValueChanged,
            Severity::Info,
            "trigger",
            "info",
        ),
        (
            TicketAction::Close,
            Trigger::Resolved,
            Severity::Info,
            "resolve",
            "",
        ),
    ];
    let key = ticket(TicketAction::Open, Trigger::Firing, Severity::Info).key;
    let dedup = format!("plumb:{key}");
    for (action, trigger, sev, _, _) in cases {
        let d = send(&s, &Message::Ticket(ticket(action, trigger, sev)))
            .await
            .expect("sent");
        assert_eq!(d.external_id.as_deref(), Some(dedup.as_str()));
    }
    let reqs = r.requests();
    assert_eq!(reqs.len(), cases.len());
    for (req, (action, trigger, _, event_action, severity)) in reqs.iter().zip(cases) {
        assert_json_post(req);
        assert_eq!(req.path(), "/v2/enqueue");
        let v = req.json();
        assert_eq!(v["routing_key"], "R0UT1NGK3Y");
        assert_eq!(v["event_action"], event_action, "{action:?}");
        assert_eq!(v["dedup_key"], dedup);
        if action == TicketAction::Close {
            assert_eq!(
                v,
                json!({"routing_key": "R0UT1NGK3Y", "event_action": "resolve", "dedup_key": dedup})
            );
            continue;
        }
        let p = &v["payload"];
        assert_eq!(p["severity"], severity, "{trigger:?}");
        assert_eq!(p["source"], "edge-1");
        assert_eq!(p["component"], "caddy");
        assert_eq!(p["group"], "prod");
        assert_eq!(p["class"], "drift");
        assert_eq!(p["timestamp"], "2025-01-02T03:04:05Z");
        assert_eq!(
            p["summary"],
            format!(
                "[drift] {} · edge-1 · caddy · $.admin.listen: \"localhost:2019\" → \"0.0.0.0:2019\"",
                trigger.as_str()
            )
        );
        assert_eq!(
            p["custom_details"],
            json!({"trigger": trigger, "path": "$.admin.listen", "expected": "localhost:2019",
                   "actual": "0.0.0.0:2019", "rule": null, "fingerprint": key, "nodes": [],
                   "message": "value changed"})
        );
        assert_eq!(v["client"], "plumb");
        assert_eq!(
            v["links"],
            json!([{"href": "https://plumb.example.org/scans/s-42", "text": "plumb report"}])
        );
    }
}

/// A chat sink given a ticket event, or a PagerDuty sink given a digest, refuses it permanently without sending.
#[tokio::test]
async fn mismatched_messages_are_refused() {
    let r = Receiver::start(vec![Answer::status(200)]);
    let s = sink(SinkKind::Slack, r.url(SECRET_PATH));
    let t = Message::Ticket(ticket(TicketAction::Open, Trigger::Firing, Severity::High));
    assert!(matches!(
        send(&s, &t).await,
        Err(DeliveryError::Permanent { .. })
    ));
    let s = sink(SinkKind::Pagerduty, r.url(SECRET_PATH));
    assert!(matches!(
        send(&s, &Message::Digest(digest())).await,
        Err(DeliveryError::Permanent { .. })
    ));
    assert!(r.requests().is_empty());
}

/// A digest of 500 items goes out in one request per target, within each target's limits.
#[tokio::test]
async fn big_digest_is_cut_within_limits() {
    let mut d = digest();
    let base = d.items[0].clone();
    d.items = (0..500)
        .map(|i| {
            let mut it = base.clone();
            it.finding.node = format!("node-{i:03}");
            it.finding.path = format!("$.apps.http.servers.srv{i}.routes[0].handle[0].body");
            it.finding.severity = Severity::ALL[i % 5];
            it
        })
        .collect();
    for (kind, limit) in [
        (SinkKind::Slack, 40_000),
        (SinkKind::Teams, 20_000),
        (SinkKind::Mattermost, 16_000),
        (SinkKind::Discord, 8_000),
        (SinkKind::GoogleChat, 32_000),
    ] {
        let r = Receiver::start(vec![Answer::status(200)]);
        let s = sink(kind, r.url(SECRET_PATH));
        send(&s, &Message::Digest(d.clone())).await.expect("sent");
        let req = only_request(&r);
        assert!(
            req.body.len() <= limit,
            "{kind:?}: {} bytes",
            req.body.len()
        );
        let text = String::from_utf8(req.body.clone()).unwrap();
        assert!(text.contains("…and "), "{kind:?}");
        assert!(text.contains(" more"), "{kind:?}");
    }
}
