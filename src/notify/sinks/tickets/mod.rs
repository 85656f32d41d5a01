//! The ticket sinks: GitHub Issues, GitLab issues and Jira (Cloud v3, or Data Center with a bearer token).
//!
//! One ticket per event key (a fingerprint, or a fleet-wide group key). The store remembers the ticket's id
//! (`known`: GitHub number, GitLab iid, Jira key); when it does not (first time, or a lost store), the ticket is
//! found again through a marker before anything is created:
//!
//! - GitHub: a hidden `<!-- plumb-fp: KEY -->` line in the body of an issue labelled `plumb`;
//! - GitLab and Jira: the label `plumb-fp-KEY`.
//!
//! The lifecycle ([`TicketAction`]) maps onto each API as open (create, or reopen/comment what the marker finds),
//! comment, close (comment, then close or the `close_transition`) and reopen (`reopen_transition` on Jira), never a
//! duplicate. Every answer goes through [`classify_status`]; the token never appears in an error.
//!
//! This module holds the lifecycle and the text; `github`, `gitlab` and `jira` hold the REST calls.

mod github;
mod gitlab;
mod jira;

use super::{Delivered, DeliveryError, SinkKind, SinkPlan, classify_status, network_error};
use crate::finding::Kind;
use crate::notify::{TicketAction, TicketEvent, Trigger};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Titles are cut to this many characters (GitLab and Jira allow 255).
pub const TITLE_MAX: usize = 250;
/// Observed and expected values are cut to this many characters in a ticket.
const VALUE_MAX: usize = 500;
/// A finding's message is cut to this many characters.
const MESSAGE_MAX: usize = 2000;
/// A fleet-wide group lists at most this many nodes, then "…and N more".
const NODES_MAX: usize = 50;

/// Deliver one ticket event. `known` is the ticket id the store remembers for `event.key`; the answer carries the
/// id of the ticket that now stands for the key (none when there was nothing to close).
pub async fn send(
    http: &reqwest::Client,
    sink: &SinkPlan,
    event: &TicketEvent,
    known: Option<&str>,
) -> Result<Delivered, DeliveryError> {
    let tracker = match sink.kind {
        SinkKind::Github => Tracker::Github(github::Github::new(Api::new(http, sink)?)?),
        SinkKind::Gitlab => Tracker::Gitlab(gitlab::Gitlab::new(Api::new(http, sink)?)?),
        SinkKind::Jira => Tracker::Jira(jira::Jira::new(Api::new(http, sink)?)?),
        other => {
            return Err(DeliveryError::Permanent {
                reason: format!(
                    "sink {}: a {} sink takes no tickets",
                    sink.name,
                    other.as_str()
                ),
            });
        }
    };
    let external_id = lifecycle(&tracker, event, known).await?;
    Ok(Delivered { external_id })
}

/// A ticket as the tracker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// GitHub number, GitLab iid, Jira key.
    pub id: String,
    pub open: bool,
}

/// The three trackers behind one set of operations.
enum Tracker<'a> {
    Github(github::Github<'a>),
    Gitlab(gitlab::Gitlab<'a>),
    Jira(jira::Jira<'a>),
}

impl Tracker<'_> {
    /// The ticket with this id, or `None` when the tracker says it is gone (404, 410).
    async fn get(&self, id: &str) -> Result<Option<Ticket>, DeliveryError> {
        match self {
            Tracker::Github(t) => t.get(id).await,
            Tracker::Gitlab(t) => t.get(id).await,
            Tracker::Jira(t) => t.get(id).await,
        }
    }

    /// The ticket whose marker names `key`, preferring an open one.
    async fn find(&self, key: &str) -> Result<Option<Ticket>, DeliveryError> {
        match self {
            Tracker::Github(t) => t.find(key).await,
            Tracker::Gitlab(t) => t.find(key).await,
            Tracker::Jira(t) => t.find(key).await,
        }
    }

    /// Create the ticket; its id.
    async fn create(&self, ev: &TicketEvent) -> Result<String, DeliveryError> {
        match self {
            Tracker::Github(t) => t.create(ev).await,
            Tracker::Gitlab(t) => t.create(ev).await,
            Tracker::Jira(t) => t.create(ev).await,
        }
    }

    async fn comment(&self, id: &str, note: &Doc) -> Result<(), DeliveryError> {
        match self {
            Tracker::Github(t) => t.comment(id, note).await,
            Tracker::Gitlab(t) => t.comment(id, note).await,
            Tracker::Jira(t) => t.comment(id, note).await,
        }
    }

    async fn close(&self, id: &str) -> Result<(), DeliveryError> {
        match self {
            Tracker::Github(t) => t.set_open(id, false).await,
            Tracker::Gitlab(t) => t.set_open(id, false).await,
            Tracker::Jira(t) => t.set_open(id, false).await,
        }
    }

    async fn reopen(&self, id: &str) -> Result<(), DeliveryError> {
        match self {
            Tracker::Github(t) => t.set_open(id, true).await,
            Tracker::Gitlab(t) => t.set_open(id, true).await,
            Tracker::Jira(t) => t.set_open(id, true).await,
        }
    }
}

/// The ticket lifecycle, the same on every tracker. The ticket is looked up first (the known one, or failing that
/// the marker), so a retried or repeated event never duplicates a ticket and never closes a closed one.
async fn lifecycle(
    t: &Tracker<'_>,
    ev: &TicketEvent,
    known: Option<&str>,
) -> Result<Option<String>, DeliveryError> {
    let mut found = None;
    if let Some(id) = known.map(str::trim).filter(|id| !id.is_empty()) {
        found = t.get(id).await?;
    }
    if found.is_none() {
        found = t.find(&ev.key).await?;
    }
    match (ev.action, found) {
        (TicketAction::Close, None) => Ok(None),
        (TicketAction::Close, Some(tk)) => {
            // Close first: a retry after a failed comment finds it closed and does not comment twice.
            if tk.open {
                t.close(&tk.id).await?;
                t.comment(&tk.id, &resolved_note(ev, &now())).await?;
            }
            Ok(Some(tk.id))
        }
        (_, None) => t.create(ev).await.map(Some),
        (TicketAction::Comment, Some(tk)) => {
            t.comment(&tk.id, &change_note(ev)).await?;
            Ok(Some(tk.id))
        }
        (TicketAction::Open | TicketAction::Reopen, Some(tk)) => {
            if tk.open {
                t.comment(&tk.id, &change_note(ev)).await?;
            } else {
                t.reopen(&tk.id).await?;
                t.comment(&tk.id, &came_back_note(ev)).await?;
            }
            Ok(Some(tk.id))
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------------------------------------------------------
// Markers and text.

/// The key as it appears in markers and labels: itself when it is short and made of `[A-Za-z0-9._-]` (fingerprints
/// are), otherwise a hash of it, so a group key such as `caddy/high` still makes a valid label.
pub fn marker_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        key.to_string()
    } else {
        blake3::hash(key.as_bytes()).to_hex()[..24].to_string()
    }
}

/// The GitLab and Jira label for a key.
pub fn fp_label(key: &str) -> String {
    format!("plumb-fp-{}", marker_key(key))
}

/// The hidden GitHub (and GitLab) body marker for a key.
pub fn body_marker(key: &str) -> String {
    format!("<!-- plumb-fp: {} -->", marker_key(key))
}

/// `[plumb] {kind} {node or N nodes} {config} {path or rule}`, at most [`TITLE_MAX`] characters.
pub fn title(ev: &TicketEvent) -> String {
    let f = &ev.finding;
    let mut parts = vec![
        "[plumb]".to_string(),
        f.kind.to_string(),
        where_(ev),
        f.config.clone(),
    ];
    parts.push(subject(ev));
    let t = parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    cut(&t.replace(['\r', '\n'], " "), TITLE_MAX)
}

/// The node, or "N nodes" for a fleet-wide group.
fn where_(ev: &TicketEvent) -> String {
    match ev.nodes.len() {
        0 => ev.finding.node.clone(),
        1 => ev.nodes[0].clone(),
        n => format!("{n} nodes"),
    }
}

/// What in the config: the rule for a violation, otherwise the path (or the rule when there is no path).
fn subject(ev: &TicketEvent) -> String {
    let f = &ev.finding;
    match (&f.rule, f.path.is_empty()) {
        (Some(r), _) if f.kind == Kind::Violation => r.clone(),
        (_, false) => f.path.clone(),
        (Some(r), true) => r.clone(),
        (None, true) => String::new(),
    }
}

/// At most `max` characters, with "…" when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A value for a ticket: compact JSON, "(absent)" for null, cut.
fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".to_string(),
        v => cut(&v.to_string(), VALUE_MAX),
    }
}

/// One field of a ticket text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field {
    Text(String),
    /// A value, shown as code.
    Code(String),
    /// Expected → actual, both shown as code.
    Change(String, String),
}

/// A piece of a line: text, and whether it is code.
pub(crate) type Span = (String, bool);

/// A ticket text, rendered as Markdown (GitHub, GitLab) or ADF (Jira).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Doc {
    /// The first sentence.
    pub lead: String,
    pub fields: Vec<(&'static str, Field)>,
    /// The key, for the marker line of a ticket body (not of comments).
    pub marker: Option<String>,
}

impl Doc {
    fn new(lead: String) -> Doc {
        Doc {
            lead,
            fields: Vec::new(),
            marker: None,
        }
    }

    fn text(&mut self, label: &'static str, v: impl Into<String>) {
        let v = v.into();
        if !v.trim().is_empty() {
            self.fields.push((label, Field::Text(v)));
        }
    }

    fn code(&mut self, label: &'static str, v: &Value) {
        self.fields.push((label, Field::Code(value_text(v))));
    }

    /// Markdown: the lead, a list of fields, the hidden marker.
    pub fn markdown(&self) -> String {
        let mut s = md_line(&self.lead);
        s.push_str("\n\n");
        for (label, v) in &self.fields {
            let v = match v {
                Field::Text(t) => md_line(t),
                Field::Code(c) => code_span(c),
                Field::Change(a, b) => format!("{} → {}", code_span(a), code_span(b)),
            };
            s.push_str(&format!("- **{label}:** {v}\n"));
        }
        if let Some(key) = &self.marker {
            s.push('\n');
            s.push_str(&body_marker(key));
            s.push('\n');
        }
        s
    }

    /// The lines of the text without Markdown (Jira): spans of text and code.
    pub fn lines(&self) -> Vec<Vec<Span>> {
        let t = |s: String| (s.replace(['\r', '\n'], " "), false);
        let c = |s: &String| {
            (
                if s.is_empty() {
                    " ".to_string()
                } else {
                    s.replace(['\r', '\n'], " ")
                },
                true,
            )
        };
        let mut out = vec![vec![t(self.lead.clone())]];
        for (label, v) in &self.fields {
            out.push(match v {
                Field::Text(v) => vec![t(format!("{label}: {v}"))],
                Field::Code(v) => vec![t(format!("{label}: ")), c(v)],
                Field::Change(a, b) => vec![t(format!("{label}: ")), c(a), t(" → ".into()), c(b)],
            });
        }
        if let Some(key) = &self.marker {
            out.push(vec![t(format!("plumb fingerprint: {}", marker_key(key)))]);
        }
        out
    }

    /// Atlassian Document Format: one paragraph per line, values marked as code.
    pub fn adf(&self) -> Value {
        let content: Vec<Value> = self
            .lines()
            .into_iter()
            .map(|spans| {
                let nodes: Vec<Value> = spans
                    .into_iter()
                    .filter(|(text, _)| !text.is_empty())
                    .map(|(text, code)| {
                        if code {
                            serde_json::json!({"type": "text", "text": text, "marks": [{"type": "code"}]})
                        } else {
                            serde_json::json!({"type": "text", "text": text})
                        }
                    })
                    .collect();
                serde_json::json!({"type": "paragraph", "content": nodes})
            })
            .collect();
        serde_json::json!({"type": "doc", "version": 1, "content": content})
    }
}

/// One line of Markdown: newlines folded, and no HTML comment that could end a marker early.
fn md_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ").replace("-->", "--&gt;")
}

/// An inline code span that survives backticks in the value.
fn code_span(s: &str) -> String {
    let s = s.replace(['\r', '\n'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    if longest > 0 || s.starts_with(' ') || s.ends_with(' ') {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

/// The node field(s) of an event.
fn node_fields(doc: &mut Doc, ev: &TicketEvent) {
    if ev.nodes.len() > 1 {
        let mut list: Vec<String> = ev.nodes.iter().take(NODES_MAX).cloned().collect();
        if ev.nodes.len() > NODES_MAX {
            list.push(format!("…and {} more", ev.nodes.len() - NODES_MAX));
        }
        doc.text("Nodes", format!("{} ({})", list.join(", "), ev.nodes.len()));
    } else {
        doc.text("Node", where_(ev));
    }
}

/// The ticket body: everything about the finding, and the marker.
pub(crate) fn body(ev: &TicketEvent) -> Doc {
    let f = &ev.finding;
    let mut doc = Doc::new(format!(
        "plumb reports a {} {} on {} ({}).",
        f.severity,
        f.kind,
        where_(ev),
        f.config
    ));
    doc.marker = Some(ev.key.clone());
    doc.text("Trigger", ev.trigger.as_str());
    doc.text("Severity", f.severity.as_str());
    node_fields(&mut doc, ev);
    doc.text("Config", f.config.clone());
    doc.text("Path", f.path.clone());
    if let Some(c) = f.change {
        doc.text("Change", c.as_str());
    }
    if !(f.expected.is_null() && f.actual.is_null()) {
        doc.fields.push((
            "Expected → actual",
            Field::Change(value_text(&f.expected), value_text(&f.actual)),
        ));
    }
    if let Some(r) = &f.rule {
        doc.text("Rule", r.clone());
    }
    doc.text("Message", cut(&f.message, MESSAGE_MAX));
    doc.text("First seen", f.first_seen.clone());
    doc.text("Last seen", f.last_seen.clone());
    if let Some(t) = &f.fixed_at {
        doc.text("Fixed at", t.clone());
    }
    if let Some(v) = &f.regression_of {
        doc.text("Regression of baseline", v.clone());
    }
    if let Some(u) = &ev.report_url {
        doc.text("Report", u.clone());
    }
    doc.text("Fingerprint", ev.key.clone());
    doc
}

/// A comment on what changed: the trigger, the new value, the severity.
pub(crate) fn change_note(ev: &TicketEvent) -> Doc {
    let f = &ev.finding;
    let lead = match ev.trigger {
        Trigger::ValueChanged => "The observed value changed.".to_string(),
        Trigger::Escalated => format!("Severity escalated to {}.", f.severity),
        Trigger::Flapping => "This finding is flapping: it changes state too often.".to_string(),
        Trigger::Reminder => "Still firing (reminder).".to_string(),
        Trigger::AckExpired => {
            "The acknowledgement expired and the finding is still there.".to_string()
        }
        Trigger::Firing => "Firing again.".to_string(),
        Trigger::Regression => "It came back.".to_string(),
        Trigger::Resolved => "Resolved.".to_string(),
        Trigger::SelfAlert => "plumb itself is in trouble.".to_string(),
    };
    let mut doc = Doc::new(format!("plumb: {lead}"));
    doc.text("Trigger", ev.trigger.as_str());
    doc.text("Severity", f.severity.as_str());
    if ev.nodes.len() > 1 {
        node_fields(&mut doc, ev);
    }
    if !f.actual.is_null() || !f.expected.is_null() {
        doc.code("Actual", &f.actual);
    }
    doc.text("Message", cut(&f.message, MESSAGE_MAX));
    doc.text("Last seen", f.last_seen.clone());
    if let Some(u) = &ev.report_url {
        doc.text("Report", u.clone());
    }
    doc
}

/// The comment that goes with a close.
pub(crate) fn resolved_note(ev: &TicketEvent, at: &str) -> Doc {
    let f = &ev.finding;
    let mut doc = Doc::new(format!(
        "plumb: resolved at {at}: the {} on {} ({}) is gone.",
        f.kind,
        where_(ev),
        f.config
    ));
    doc.text("Last seen", f.last_seen.clone());
    if let Some(u) = &ev.report_url {
        doc.text("Report", u.clone());
    }
    doc
}

/// The comment that goes with a reopen.
pub(crate) fn came_back_note(ev: &TicketEvent) -> Doc {
    let f = &ev.finding;
    let mut doc = Doc::new(format!("plumb: it came back ({}).", ev.trigger.as_str()));
    if let Some(t) = &f.fixed_at {
        doc.text("Fixed at", t.clone());
    }
    if let Some(v) = &f.regression_of {
        doc.text("Back to superseded baseline", v.clone());
    }
    doc.text("Severity", f.severity.as_str());
    if ev.nodes.len() > 1 {
        node_fields(&mut doc, ev);
    }
    if !f.actual.is_null() || !f.expected.is_null() {
        doc.code("Actual", &f.actual);
    }
    doc.text("Message", cut(&f.message, MESSAGE_MAX));
    doc.text("Last seen", f.last_seen.clone());
    if let Some(u) = &ev.report_url {
        doc.text("Report", u.clone());
    }
    doc
}

/// The labels of a new ticket: `plumb`, the key label (unless GitHub, which uses the body marker), the sink's own.
fn labels(sink: &SinkPlan, key: &str, with_fp: bool) -> Vec<String> {
    let mut out = vec!["plumb".to_string()];
    if with_fp {
        out.push(fp_label(key));
    }
    for l in &sink.labels {
        if !l.is_empty() && !out.contains(l) {
            out.push(l.clone());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP.

/// One answer, whatever its status.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON (null when empty).
    pub fn json(&self) -> Result<Value, String> {
        if self.body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.body).map_err(|e| format!("answer is not JSON: {e}"))
    }
}

/// The HTTP side of one ticket sink: base URL, headers (auth marked sensitive), and the secrets that must never
/// appear in an error.
pub(crate) struct Api<'a> {
    http: &'a reqwest::Client,
    pub sink: &'a SinkPlan,
    base: Url,
    headers: HeaderMap,
    secrets: Vec<String>,
}

impl<'a> Api<'a> {
    fn new(http: &'a reqwest::Client, sink: &'a SinkPlan) -> Result<Api<'a>, DeliveryError> {
        let raw = if sink.url.trim().is_empty() {
            super::default_url(sink.kind).unwrap_or_default()
        } else {
            sink.url.trim()
        };
        let base = Url::parse(raw)
            .ok()
            .filter(|u| !u.cannot_be_a_base() && matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| DeliveryError::Permanent {
                reason: format!(
                    "sink {}: {} url is not an http(s) base URL",
                    sink.name,
                    sink.kind.as_str()
                ),
            })?;
        let mut secrets = Vec::new();
        if let Some(t) = sink.token.as_deref().filter(|t| !t.is_empty()) {
            secrets.push(t.to_string());
        }
        Ok(Api {
            http,
            sink,
            base,
            headers: HeaderMap::new(),
            secrets,
        })
    }

    /// The sink's token, or a permanent error.
    pub fn token(&self) -> Result<&'a str, DeliveryError> {
        self.sink
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.permanent("", "no token configured"))
    }

    /// Add a header; `secret` marks it sensitive and keeps its value out of errors.
    pub fn header(
        &mut self,
        name: &'static str,
        value: &str,
        secret: bool,
    ) -> Result<(), DeliveryError> {
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            self.permanent(
                "",
                &format!("the value for header {name} is not a valid header value"),
            )
        })?;
        if secret {
            v.set_sensitive(true);
            if value.len() >= 4 {
                self.secrets.push(value.to_string());
            }
        }
        self.headers.insert(HeaderName::from_static(name), v);
        Ok(())
    }

    /// Keep this text out of every error too (an encoded credential).
    pub fn secret(&mut self, s: &str) {
        if s.len() >= 4 {
            self.secrets.push(s.to_string());
        }
    }

    /// The base URL with these path segments appended (each percent-encoded, `/` included) and this query.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query.iter().copied());
        }
        u
    }

    /// Whether a URL (a pagination link) points under the base, so the credentials may go there.
    pub fn under_base(&self, u: &Url) -> bool {
        u.origin() == self.base.origin()
            && u.path().starts_with(self.base.path().trim_end_matches('/'))
    }

    /// Strip every secret from a text.
    pub fn scrub(&self, s: &str) -> String {
        let mut s = s.to_string();
        for secret in &self.secrets {
            if !secret.is_empty() {
                s = s.replace(secret.as_str(), "[redacted]");
            }
        }
        s
    }

    /// A permanent error about `what`.
    pub fn permanent(&self, what: &str, reason: &str) -> DeliveryError {
        DeliveryError::Permanent {
            reason: self.reason(what, reason),
        }
    }

    fn reason(&self, what: &str, reason: &str) -> String {
        let what = if what.is_empty() {
            String::new()
        } else {
            format!(" {what}")
        };
        self.scrub(&format!(
            "sink {}: {}{what}: {reason}",
            self.sink.name,
            self.sink.kind.as_str()
        ))
    }

    /// The same error with the sink, the operation and no secret in its reason.
    pub fn wrap(&self, what: &str, e: DeliveryError) -> DeliveryError {
        match e {
            DeliveryError::Retry { after, reason } => DeliveryError::Retry {
                after,
                reason: self.reason(what, &reason),
            },
            DeliveryError::Permanent { reason } => DeliveryError::Permanent {
                reason: self.reason(what, &reason),
            },
        }
    }

    /// Send one request and read the whole answer, whatever its status. Network errors are retryable.
    pub async fn raw(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, DeliveryError> {
        let mut req = self.http.request(method, url).headers(self.headers.clone());
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|e| self.permanent(what, &e.to_string()))?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.wrap(what, network_error(e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|e| self.wrap(what, network_error(e)))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Classify an answer: `Ok` for 2xx, otherwise the error, with the tracker's own rate-limit signals honoured.
    pub fn check(&self, a: &Answer, what: &str) -> Result<(), DeliveryError> {
        if self.sink.kind == SinkKind::Github
            && let Some(e) = github::rate_limited(a)
        {
            return Err(self.wrap(what, e));
        }
        classify_status(a.status, &a.headers, &a.body).map_err(|e| self.wrap(what, e))
    }

    /// Send, classify, parse the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, DeliveryError> {
        let a = self.raw(method, url, body, what).await?;
        self.check(&a, what)?;
        a.json().map_err(|e| self.permanent(what, &e))
    }

    /// GET one ticket: `None` when the tracker says it is gone (404, 410).
    pub async fn get_opt(&self, url: Url, what: &str) -> Result<Option<Value>, DeliveryError> {
        let a = self.raw(Method::GET, url, None, what).await?;
        if matches!(a.status.as_u16(), 404 | 410) {
            return Ok(None);
        }
        self.check(&a, what)?;
        a.json().map(Some).map_err(|e| self.permanent(what, &e))
    }
}

/// An id field that may be a number or a string.
pub(crate) fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The ticket to use among several a marker search found: the first open one, else the first.
pub(crate) fn pick(found: Vec<Ticket>) -> Option<Ticket> {
    found
        .iter()
        .find(|t| t.open)
        .cloned()
        .or_else(|| found.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Finding, Severity};
    use std::time::Duration;

    fn event(action: TicketAction) -> TicketEvent {
        let mut f = Finding::observed(
            Kind::Drift,
            Severity::High,
            "edge-1",
            "caddy",
            "$.apps.http.port".into(),
            "$.apps.http.port",
            "port changed".into(),
            "2026-01-01T00:00:00Z",
        );
        f.expected = serde_json::json!(443);
        f.actual = serde_json::json!(8443);
        TicketEvent {
            id: "e1".into(),
            route: "r".into(),
            sink: "s".into(),
            action,
            trigger: Trigger::Firing,
            key: f.fingerprint.clone(),
            finding: f,
            nodes: Vec::new(),
            report_url: Some("https://plumb.example.org/scans/1".into()),
        }
    }

    fn sink(kind: SinkKind, url: &str) -> SinkPlan {
        SinkPlan {
            name: "t".into(),
            kind,
            url: url.into(),
            secret: None,
            username: None,
            password: None,
            token: Some("sekret-token-123".into()),
            user: None,
            from: None,
            to: Vec::new(),
            ca: None,
            repo: Some("acme/ops".into()),
            project: Some("group/sub/name".into()),
            issue_type: "Task".into(),
            labels: vec!["drift".into()],
            close_transition: "Done".into(),
            reopen_transition: "Reopen".into(),
            routing_key: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn titles_name_kind_node_config_and_subject() {
        let ev = event(TicketAction::Open);
        assert_eq!(title(&ev), "[plumb] drift edge-1 caddy $.apps.http.port");
        let mut group = ev.clone();
        group.nodes = vec!["a".into(), "b".into(), "c".into()];
        assert_eq!(
            title(&group),
            "[plumb] drift 3 nodes caddy $.apps.http.port"
        );
        let mut v = ev.clone();
        v.finding.kind = Kind::Violation;
        v.finding.rule = Some("tls-only".into());
        assert_eq!(title(&v), "[plumb] violation edge-1 caddy tls-only");
        let mut long = ev;
        long.finding.path = "x".repeat(400);
        let t = title(&long);
        assert_eq!(t.chars().count(), TITLE_MAX);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn markers_and_labels_are_safe() {
        assert_eq!(fp_label("6f1c0a"), "plumb-fp-6f1c0a");
        assert_eq!(body_marker("6f1c0a"), "<!-- plumb-fp: 6f1c0a -->");
        let g = fp_label("caddy/high -->");
        assert!(
            g.starts_with("plumb-fp-") && g.len() == "plumb-fp-".len() + 24,
            "{g}"
        );
        assert_eq!(g, fp_label("caddy/high -->"));
        let s = sink(SinkKind::Gitlab, "");
        assert_eq!(labels(&s, "k", true), ["plumb", "plumb-fp-k", "drift"]);
        assert_eq!(labels(&s, "k", false), ["plumb", "drift"]);
    }

    #[test]
    fn bodies_carry_every_field_and_the_marker() {
        let ev = event(TicketAction::Open);
        let md = body(&ev).markdown();
        for needle in [
            "- **Trigger:** firing",
            "- **Severity:** high",
            "- **Node:** edge-1",
            "- **Config:** caddy",
            "- **Path:** $.apps.http.port",
            "- **Expected → actual:** `443` → `8443`",
            "- **Message:** port changed",
            "- **Report:** https://plumb.example.org/scans/1",
        ] {
            assert!(md.contains(needle), "{needle} in\n{md}");
        }
        assert!(md.ends_with(&format!("{}\n", body_marker(&ev.key))), "{md}");
        let adf = body(&ev).adf();
        assert_eq!(adf["type"], "doc");
        assert_eq!(adf["version"], 1);
        let paras = adf["content"].as_array().unwrap();
        assert!(paras.iter().all(|p| p["type"] == "paragraph"));
        assert!(paras.iter().any(|p| p["content"]
            == serde_json::json!([
                {"type": "text", "text": "Expected → actual: "},
                {"type": "text", "text": "443", "marks": [{"type": "code"}]},
                {"type": "text", "text": " → "},
                {"type": "text", "text": "8443", "marks": [{"type": "code"}]},
            ])));
        assert_eq!(
            paras.last().unwrap()["content"][0]["text"],
            format!("plumb fingerprint: {}", ev.key)
        );
    }

    #[test]
    fn code_spans_survive_backticks() {
        assert_eq!(code_span("a"), "`a`");
        assert_eq!(code_span("a`b"), "`` a`b ``");
        assert_eq!(md_line("x --> y\nz"), "x --&gt; y z");
    }

    #[test]
    fn notes_say_what_changed() {
        let mut ev = event(TicketAction::Comment);
        ev.trigger = Trigger::Escalated;
        let md = change_note(&ev).markdown();
        assert!(md.starts_with("plumb: Severity escalated to high."), "{md}");
        assert!(md.contains("- **Actual:** `8443`"), "{md}");
        assert!(!md.contains("plumb-fp"), "{md}");
        ev.finding.fixed_at = Some("2026-01-02T00:00:00Z".into());
        ev.finding.regression_of = Some("v3".into());
        let md = came_back_note(&ev).markdown();
        assert!(
            md.contains("came back") && md.contains("2026-01-02T00:00:00Z") && md.contains("v3")
        );
        assert!(
            resolved_note(&ev, "NOW")
                .markdown()
                .starts_with("plumb: resolved at NOW")
        );
    }

    #[test]
    fn urls_encode_segments_and_stay_under_the_base() {
        let http = reqwest::Client::new();
        let s = sink(SinkKind::Gitlab, "https://git.example.org/gl/");
        let api = Api::new(&http, &s).unwrap();
        let u = api.url(
            &["api", "v4", "projects", "group/sub/name", "issues"],
            &[("labels", "a,b")],
        );
        assert_eq!(
            u.as_str(),
            "https://git.example.org/gl/api/v4/projects/group%2Fsub%2Fname/issues?labels=a%2Cb"
        );
        assert!(api.under_base(&u));
        assert!(!api.under_base(&Url::parse("https://evil.example.org/gl/x").unwrap()));
        let bad = sink(SinkKind::Jira, "not a url");
        assert!(matches!(
            Api::new(&http, &bad),
            Err(DeliveryError::Permanent { .. })
        ));
    }

    #[test]
    fn errors_never_carry_the_token() {
        let http = reqwest::Client::new();
        let s = sink(SinkKind::Github, "");
        let mut api = Api::new(&http, &s).unwrap();
        api.header("authorization", "Bearer sekret-token-123", true)
            .unwrap();
        let e = api.wrap(
            "create issue",
            DeliveryError::Permanent {
                reason: "HTTP 401: bad token sekret-token-123".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "sink t: github create issue: HTTP 401: bad token [redacted]"
        );
        let e = api
            .header("authorization", "Bearer bad\nvalue-sekret-token-123", true)
            .unwrap_err();
        assert!(!e.to_string().contains("sekret"), "{e}");
    }

    #[test]
    fn picks_the_open_ticket() {
        let t = |id: &str, open| Ticket {
            id: id.into(),
            open,
        };
        assert_eq!(pick(vec![t("1", false), t("2", true)]), Some(t("2", true)));
        assert_eq!(
            pick(vec![t("1", false), t("2", false)]),
            Some(t("1", false))
        );
        assert_eq!(pick(Vec::new()), None);
    }

    #[test]
    fn delivery_future_is_send() {
        fn assert_send<T: Send>(_: T) {}
        let http = reqwest::Client::new();
        let s = sink(SinkKind::Jira, "http://127.0.0.1:9");
        let ev = event(TicketAction::Open);
        assert_send(send(&http, &s, &ev, None));
    }
}
