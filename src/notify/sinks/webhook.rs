//! The generic webhook sink: plumb's own JSON, signed.
//!
//! # Request
//!
//! `POST <url>` with one JSON object per outbox message: a digest (one per route, sink and scan) or a ticket
//! event (when a webhook sink is fed ticket events). Headers:
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `Idempotency-Key` | the message `id`; the same on every retry of one message, so receivers can drop duplicates |
//! | `X-Plumb-Event` | `digest` or `ticket` |
//! | `X-Plumb-Signature` | `sha256=<hex>` with `<hex>` the lowercase hex HMAC-SHA256 of the raw body bytes, keyed with the sink's `secret`; only when `secret` is set |
//!
//! Any 2xx answer is success. 408, 425, 429 (with `Retry-After`), 5xx and network errors are retried; any other
//! status dead-letters the message.
//!
//! # Body (`"version": "1"`)
//!
//! ```json
//! {
//!   "version": "1",
//!   "id": "3f1c0a9e27d4b85e6a10",
//!   "type": "digest",
//!   "scan_id": "20250102T030405Z-1a2b",
//!   "route": "prod",
//!   "sink": "audit-hook",
//!   "at": "2025-01-02T03:04:05Z",
//!   "title": "plumb: 2 firing (prod, scan 20250102T030405Z-1a2b)",
//!   "items": [
//!     {
//!       "trigger": "firing",
//!       "fingerprint": "6f1c2b0d9e8a7f6e5d4c3b2a",
//!       "kind": "drift",
//!       "severity": "high",
//!       "state": "new",
//!       "node": "edge-1",
//!       "nodes": [],
//!       "config": "caddy",
//!       "path": "$.apps.http.servers.srv0.listen[0]",
//!       "change": "changed",
//!       "expected": ":443",
//!       "actual": ":8443",
//!       "rule": null,
//!       "message": "value changed",
//!       "first_seen": "2025-01-02T03:04:05Z",
//!       "last_seen": "2025-01-02T03:04:05Z"
//!     }
//!   ],
//!   "report_url": "https://plumb.example.org/scans/20250102T030405Z-1a2b"
//! }
//! ```
//!
//! - `type` is `digest` or `ticket`. A digest carries `scan_id`, `at` (when it was planned, RFC 3339) and every
//!   item a route selected from one scan, sorted by severity (highest first). A ticket event carries instead
//!   `action` (`open`, `comment`, `close` or `reopen`), `key` (the fingerprint or fleet-wide group key the event
//!   is about), a `title` that is the item's one-line summary, and exactly one item; `scan_id` and `at` are
//!   absent.
//! - `trigger` says why the item is there: `firing`, `regression`, `flapping`, `escalated`, `ack_expired`,
//!   `reminder`, `value_changed`, `resolved` or `self_alert`.
//! - `nodes` lists every node of a fleet-wide group (empty for a single node; `node` is then the node).
//! - `expected` and `actual` are JSON values (`null` when absent); secrets in them are already redacted to
//!   `<redacted:HASH8>` markers. `change` (`added`, `removed`, `changed`) is present for drift only; `rule` is the
//!   rule id of a violation, otherwise `null`.
//! - `report_url` is the full report, or `null`.
//! - Fields may be added within version 1; receivers should ignore fields they do not know.
//!
//! # Verifying the signature
//!
//! Compute HMAC-SHA256 over the raw request body exactly as received (before any JSON parsing), keyed with the
//! shared secret, hex-encode it, and compare it with the part of `X-Plumb-Signature` after `sha256=` in constant
//! time (as for GitHub webhooks). The signature does not cover a timestamp: use `Idempotency-Key` to drop
//! replays of a message already processed.

use super::chat::{parse_url, post_json};
use super::{Delivered, DeliveryError, SinkPlan};
use crate::notify::{AlertItem, Digest, Message, TicketEvent};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::Sha256;

/// Deliver one message to one webhook.
pub async fn send(
    http: &reqwest::Client,
    sink: &SinkPlan,
    msg: &crate::notify::Message,
) -> Result<Delivered, DeliveryError> {
    let url = parse_url(sink)?;
    let body = serde_json::to_vec(&payload(msg)).map_err(|e| DeliveryError::Permanent {
        reason: format!("cannot encode the payload: {e}"),
    })?;
    let mut headers = HeaderMap::new();
    let header = |v: &str| {
        HeaderValue::from_str(v).map_err(|_| DeliveryError::Permanent {
            reason: "the message id is not a valid header value".into(),
        })
    };
    headers.insert(
        HeaderName::from_static("idempotency-key"),
        header(msg.id())?,
    );
    headers.insert(
        HeaderName::from_static("x-plumb-event"),
        HeaderValue::from_static(event(msg)),
    );
    if let Some(secret) = &sink.secret {
        headers.insert(
            HeaderName::from_static("x-plumb-signature"),
            header(&signature(secret.as_bytes(), &body))?,
        );
    }
    post_json(http, url, body, headers).await?;
    Ok(Delivered::default())
}

/// `digest` or `ticket`.
fn event(msg: &Message) -> &'static str {
    match msg {
        Message::Digest(_) => "digest",
        Message::Ticket(_) => "ticket",
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256=");
    for b in tag {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The documented body of one message (see the module docs).
pub fn payload(msg: &Message) -> Value {
    match msg {
        Message::Digest(d) => digest(d),
        Message::Ticket(t) => ticket(t),
    }
}

fn digest(d: &Digest) -> Value {
    json!({
        "version": "1",
        "id": d.id,
        "type": "digest",
        "scan_id": d.scan_id,
        "route": d.route,
        "sink": d.sink,
        "at": d.at,
        "title": d.title,
        "items": d.items.iter().map(item).collect::<Vec<_>>(),
        "report_url": d.report_url,
    })
}

fn ticket(t: &TicketEvent) -> Value {
    let it = AlertItem {
        trigger: t.trigger,
        finding: t.finding.clone(),
        nodes: t.nodes.clone(),
    };
    json!({
        "version": "1",
        "id": t.id,
        "type": "ticket",
        "route": t.route,
        "sink": t.sink,
        "action": t.action,
        "key": t.key,
        "title": format!("plumb: {}", crate::notify::render::line(&it)),
        "items": [item(&it)],
        "report_url": t.report_url,
    })
}

fn item(it: &AlertItem) -> Value {
    let f = &it.finding;
    let mut v = json!({
        "trigger": it.trigger,
        "fingerprint": f.fingerprint,
        "kind": f.kind,
        "severity": f.severity,
        "state": f.state,
        "node": f.node,
        "nodes": it.nodes,
        "config": f.config,
        "path": f.path,
        "expected": f.expected,
        "actual": f.actual,
        "rule": f.rule,
        "message": f.message,
        "first_seen": f.first_seen,
        "last_seen": f.last_seen,
    });
    if let Some(c) = f.change {
        v["change"] = json!(c);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Change, Finding, Kind, Severity};
    use crate::notify::{TicketAction, Trigger};

    fn finding() -> Finding {
        let mut f = Finding::observed(
            Kind::Drift,
            Severity::High,
            "edge-1",
            "caddy",
            "$.admin.listen".into(),
            "$.admin.listen",
            "value changed".into(),
            "2025-01-02T03:04:05Z",
        );
        f.change = Some(Change::Changed);
        f.expected = json!("localhost:2019");
        f.actual = json!("0.0.0.0:2019");
        f
    }

    #[test]
    fn digest_body() {
        let f = finding();
        let fp = f.fingerprint.clone();
        let d = Digest {
            id: "d-1".into(),
            route: "prod".into(),
            sink: "hook".into(),
            scan_id: "s-1".into(),
            at: "2025-01-02T03:04:06Z".into(),
            title: "plumb: 1 firing (prod, scan s-1)".into(),
            items: vec![AlertItem {
                trigger: Trigger::Firing,
                finding: f,
                nodes: vec![],
            }],
            report_url: None,
            replies_to: vec![],
        };
        assert_eq!(
            payload(&Message::Digest(d)),
            json!({
                "version": "1", "id": "d-1", "type": "digest", "scan_id": "s-1", "route": "prod",
                "sink": "hook", "at": "2025-01-02T03:04:06Z", "title": "plumb: 1 firing (prod, scan s-1)",
                "items": [{
                    "trigger": "firing", "fingerprint": fp, "kind": "drift", "severity": "high",
                    "state": "new", "node": "edge-1", "nodes": [], "config": "caddy",
                    "path": "$.admin.listen", "change": "changed", "expected": "localhost:2019",
                    "actual": "0.0.0.0:2019", "rule": null, "message": "value changed",
                    "first_seen": "2025-01-02T03:04:05Z", "last_seen": "2025-01-02T03:04:05Z"
                }],
                "report_url": null
            })
        );
    }

    #[test]
    fn ticket_body() {
        let t = TicketEvent {
            id: "t-1".into(),
            route: "prod".into(),
            sink: "hook".into(),
            action: TicketAction::Close,
            trigger: Trigger::Resolved,
            key: "grp-1".into(),
            finding: finding(),
            nodes: vec!["edge-1".into(), "edge-2".into()],
            report_url: Some("https://r.example/1".into()),
        };
        let v = payload(&Message::Ticket(t));
        assert_eq!(v["type"], "ticket");
        assert_eq!(v["action"], "close");
        assert_eq!(v["key"], "grp-1");
        assert_eq!(v["report_url"], "https://r.example/1");
        assert!(v.get("scan_id").is_none() && v.get("at").is_none());
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
        assert_eq!(v["items"][0]["trigger"], "resolved");
        assert_eq!(v["items"][0]["nodes"], json!(["edge-1", "edge-2"]));
        assert_eq!(
            v["title"],
            "plumb: resolved · 2 nodes · caddy · $.admin.listen (was \"localhost:2019\" → \"0.0.0.0:2019\")"
        );
    }

    /// RFC 4231 test case 2.
    #[test]
    fn signature_is_hmac_sha256_hex() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
