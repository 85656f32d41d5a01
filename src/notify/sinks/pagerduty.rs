//! The PagerDuty sink: Events API v2.
//!
//! One ticket event becomes one `POST <url>` (default `https://events.pagerduty.com/v2/enqueue`):
//!
//! - `open`, `reopen` and `comment` send `event_action: "trigger"`. PagerDuty folds events with the same
//!   `dedup_key` into one alert, so a re-trigger (a value change, an escalation, a reminder) updates the open
//!   alert instead of paging twice, and a trigger after a resolve opens it again.
//! - `close` sends `event_action: "resolve"` with the same `dedup_key` and nothing else (PagerDuty ignores a
//!   payload on resolve).
//!
//! `dedup_key` is `plumb:<key>` (the fingerprint or fleet-wide group key), or `plumb:<blake3 of key>` if that would
//! pass PagerDuty's 255 chars; it is returned as the delivery's external id. The trigger payload: `summary` (the
//! item's one-line rendering, ≤ 1,024 chars), `source` (the node, or "N nodes"), `severity` (plumb's critical →
//! `critical`, high → `error`, medium → `warning`, low and info → `info`), `timestamp` (the finding's last
//! sighting), `component` (the config), `group` (the route), `class` (the kind), `custom_details` (trigger, path,
//! expected, actual, rule, fingerprint, nodes, message), `client: "plumb"` and, when known, a link to the report.
//!
//! PagerDuty answers 202 on success, 400 for an invalid event (permanent), 429 and 5xx when it should be retried.

use super::chat::{parse_url, post_json};
use super::{Delivered, DeliveryError, SinkPlan};
use crate::finding::Severity;
use crate::notify::{AlertItem, TicketAction, TicketEvent, render};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// PagerDuty's limit on `dedup_key`.
const DEDUP_KEY_MAX: usize = 255;
/// PagerDuty's limit on `payload.summary`.
const SUMMARY_MAX: usize = 1024;

/// Deliver one event to one PagerDuty service.
pub async fn send(
    http: &reqwest::Client,
    sink: &SinkPlan,
    msg: &crate::notify::TicketEvent,
) -> Result<Delivered, DeliveryError> {
    let Some(routing_key) = sink.routing_key.as_deref() else {
        return Err(DeliveryError::Permanent {
            reason: "no routing_key".into(),
        });
    };
    let url = parse_url(sink)?;
    let event = event(routing_key, msg);
    let body = serde_json::to_vec(&event).map_err(|e| DeliveryError::Permanent {
        reason: format!("cannot encode the event: {e}"),
    })?;
    post_json(http, url, body, HeaderMap::new()).await?;
    Ok(Delivered {
        external_id: Some(dedup_key(&msg.key)),
    })
}

/// `plumb:<key>`, within PagerDuty's 255 chars.
pub fn dedup_key(key: &str) -> String {
    let k = format!("plumb:{key}");
    if k.len() <= DEDUP_KEY_MAX {
        k
    } else {
        format!("plumb:{}", blake3::hash(key.as_bytes()).to_hex())
    }
}

/// plumb's severity as PagerDuty's.
pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "info",
    }
}

/// The Events v2 body for one event.
pub fn event(routing_key: &str, t: &TicketEvent) -> Value {
    let dedup_key = dedup_key(&t.key);
    if t.action == TicketAction::Close {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let f = &t.finding;
    let it = AlertItem {
        trigger: t.trigger,
        finding: f.clone(),
        nodes: t.nodes.clone(),
    };
    let source = match t.nodes.len() {
        0 if f.node.is_empty() => "plumb".to_string(),
        0 => f.node.clone(),
        1 => t.nodes[0].clone(),
        n => format!("{n} nodes"),
    };
    let mut v = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": render::short(&format!("[{}] {}", f.kind, render::line(&it)), SUMMARY_MAX),
            "source": source,
            "severity": severity(f.severity),
            "timestamp": f.last_seen,
            "component": f.config,
            "group": t.route,
            "class": f.kind,
            "custom_details": {
                "trigger": t.trigger,
                "path": f.path,
                "expected": f.expected,
                "actual": f.actual,
                "rule": f.rule,
                "fingerprint": f.fingerprint,
                "nodes": t.nodes,
                "message": f.message,
            },
        },
        "client": "plumb",
    });
    if let Some(url) = &t.report_url {
        v["links"] = json!([{"href": url, "text": "plumb report"}]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Finding, Kind};
    use crate::notify::Trigger;

    fn ev(action: TicketAction, trigger: Trigger, sev: Severity) -> TicketEvent {
        let mut f = Finding::observed(
            Kind::Drift,
            sev,
            "edge-1",
            "caddy",
            "$.admin.listen".into(),
            "$.admin.listen",
            "value changed".into(),
            "2025-01-02T03:04:05Z",
        );
        f.expected = json!("localhost:2019");
        f.actual = json!("0.0.0.0:2019");
        TicketEvent {
            id: "e-1".into(),
            route: "prod".into(),
            sink: "pd".into(),
            action,
            trigger,
            key: f.fingerprint.clone(),
            finding: f,
            nodes: vec![],
            report_url: Some("https://r.example/s-1".into()),
        }
    }

    #[test]
    fn trigger_event_exact() {
        let t = ev(TicketAction::Open, Trigger::Firing, Severity::High);
        let fp = t.key.clone();
        assert_eq!(
            event("R0UT1NG", &t),
            json!({
                "routing_key": "R0UT1NG",
                "event_action": "trigger",
                "dedup_key": format!("plumb:{fp}"),
                "payload": {
                    "summary": "[drift] firing · edge-1 · caddy · $.admin.listen: \"localhost:2019\" → \"0.0.0.0:2019\"",
                    "source": "edge-1",
                    "severity": "error",
                    "timestamp": "2025-01-02T03:04:05Z",
                    "component": "caddy",
                    "group": "prod",
                    "class": "drift",
                    "custom_details": {
                        "trigger": "firing", "path": "$.admin.listen", "expected": "localhost:2019",
                        "actual": "0.0.0.0:2019", "rule": null, "fingerprint": fp, "nodes": [],
                        "message": "value changed"
                    }
                },
                "client": "plumb",
                "links": [{"href": "https://r.example/s-1", "text": "plumb report"}]
            })
        );
    }

    #[test]
    fn actions_severities_and_limits() {
        for (a, want) in [
            (TicketAction::Open, "trigger"),
            (TicketAction::Reopen, "trigger"),
            (TicketAction::Comment, "trigger"),
            (TicketAction::Close, "resolve"),
        ] {
            assert_eq!(
                event("k", &ev(a, Trigger::Firing, Severity::Low))["event_action"],
                want
            );
        }
        let close = event(
            "k",
            &ev(TicketAction::Close, Trigger::Resolved, Severity::Low),
        );
        assert_eq!(close.as_object().unwrap().len(), 3, "{close}");
        for (s, want) in [
            (Severity::Critical, "critical"),
            (Severity::High, "error"),
            (Severity::Medium, "warning"),
            (Severity::Low, "info"),
            (Severity::Info, "info"),
        ] {
            assert_eq!(severity(s), want);
        }
        let long = "k".repeat(300);
        let k = dedup_key(&long);
        assert!(k.len() <= 255 && k.starts_with("plumb:"), "{k}");
        assert_ne!(k, dedup_key(&"k".repeat(301)));
        let mut t = ev(TicketAction::Open, Trigger::Firing, Severity::Info);
        t.finding.message = "m".repeat(5000);
        t.finding.expected = Value::Null;
        t.finding.actual = Value::Null;
        t.nodes = vec!["a".into(), "b".into()];
        let v = event("k", &t);
        assert!(v["payload"]["summary"].as_str().unwrap().chars().count() <= 1024);
        assert_eq!(v["payload"]["source"], "2 nodes");
    }
}
