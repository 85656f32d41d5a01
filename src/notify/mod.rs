//! Notify: from a recorded scan to alerts. Routes pick findings; each (route, sink) gets one digest per scan (chat,
//! webhook, email) or one event per finding (tickets, paging); everything goes through the durable outbox in the
//! store, and the dispatcher delivers it with retries.
//!
//! This file holds the alert model shared by every sink. `plan` (pure) decides what to send, `render` (pure) turns
//! a digest into each target's payload, `sinks` send, `dispatch` drives the outbox.

pub mod dispatch;
pub mod plan;
pub mod render;
pub mod sinks;

use crate::finding::Finding;
use serde::{Deserialize, Serialize};

/// Why an alert is raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A finding became alertable (new, or past its persistence gate).
    Firing,
    /// A resolved finding came back, or a value went back to a superseded baseline.
    Regression,
    /// The finding changes state too often; reported once.
    Flapping,
    /// Its severity went up.
    Escalated,
    /// An acknowledgement ended and the finding is still there.
    AckExpired,
    /// Still firing after `repeat_interval`.
    Reminder,
    /// The observed value changed while firing (tickets comment on it).
    ValueChanged,
    /// It is gone.
    Resolved,
    /// plumb's own trouble: a sink failing, a scan that could not run, a rejected reload.
    SelfAlert,
}

impl Trigger {
    /// A short word for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Firing => "firing",
            Trigger::Regression => "regression",
            Trigger::Flapping => "flapping",
            Trigger::Escalated => "escalated",
            Trigger::AckExpired => "ack expired",
            Trigger::Reminder => "reminder",
            Trigger::ValueChanged => "value changed",
            Trigger::Resolved => "resolved",
            Trigger::SelfAlert => "plumb",
        }
    }
}

/// One finding in an alert, with why it is there. `nodes` lists every node of a fleet-wide group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertItem {
    pub trigger: Trigger,
    pub finding: Finding,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// One message for one chat, webhook or email sink: everything one route selected from one scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// Stable id of this message: the idempotency key and the email Message-ID's local part.
    pub id: String,
    pub route: String,
    pub sink: String,
    pub scan_id: String,
    /// RFC 3339.
    pub at: String,
    /// A one-line title: "plumb: 3 firing, 1 resolved (prod, scan …)".
    pub title: String,
    /// Sorted by severity (highest first), then rule or kind, then node.
    pub items: Vec<AlertItem>,
    /// Where the full report lives, if known (`[notify] report_url`, `{scan_id}` substituted).
    pub report_url: Option<String>,
    /// For a digest that only resolves: the ids of the digests that announced these findings (email threading).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replies_to: Vec<String>,
}

/// What a ticket or paging sink is asked to do for one fingerprint (or one fleet-wide group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketAction {
    /// Open a ticket (or find the one a marker says exists, and reopen it).
    Open,
    /// Comment: the value changed, it escalated, it flaps, a reminder.
    Comment,
    /// Close: resolved.
    Close,
    /// Reopen: it came back.
    Reopen,
}

/// One ticket or paging event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketEvent {
    /// Stable id of this event (idempotency).
    pub id: String,
    pub route: String,
    pub sink: String,
    pub action: TicketAction,
    pub trigger: Trigger,
    /// The fingerprint (or group key) the ticket is for.
    pub key: String,
    pub finding: Finding,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    pub report_url: Option<String>,
}

/// One outbox item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // few, short-lived values; boxing would only add noise to every sink
pub enum Message {
    Digest(Digest),
    Ticket(TicketEvent),
}

impl Message {
    /// The idempotency key.
    pub fn id(&self) -> &str {
        match self {
            Message::Digest(d) => &d.id,
            Message::Ticket(t) => &t.id,
        }
    }

    /// The sink it is for.
    pub fn sink(&self) -> &str {
        match self {
            Message::Digest(d) => &d.sink,
            Message::Ticket(t) => &t.sink,
        }
    }
}
