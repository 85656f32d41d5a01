//! Sinks: where alerts go. `[[sink]]` tables (validated into [`SinkPlan`]), one HTTP client per sink, and
//! delivery of one outbox [`Message`] to one sink, with the status classification every HTTP sink shares.

pub mod chat;
pub mod email;
pub mod pagerduty;
pub mod tickets;
pub mod webhook;

use super::Message;
use serde::Deserialize;
use std::time::Duration;

/// The kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Slack,
    Teams,
    Mattermost,
    Discord,
    GoogleChat,
    Webhook,
    Email,
    Github,
    Gitlab,
    Jira,
    Pagerduty,
}

impl SinkKind {
    /// Ticket and paging sinks get one event per finding; the others one digest per scan.
    pub fn is_ticket(self) -> bool {
        matches!(
            self,
            SinkKind::Github | SinkKind::Gitlab | SinkKind::Jira | SinkKind::Pagerduty
        )
    }

    /// The name used in plumb.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Slack => "slack",
            SinkKind::Teams => "teams",
            SinkKind::Mattermost => "mattermost",
            SinkKind::Discord => "discord",
            SinkKind::GoogleChat => "google_chat",
            SinkKind::Webhook => "webhook",
            SinkKind::Email => "email",
            SinkKind::Github => "github",
            SinkKind::Gitlab => "gitlab",
            SinkKind::Jira => "jira",
            SinkKind::Pagerduty => "pagerduty",
        }
    }
}

/// `[[sink]]` as written. Which keys a kind needs is checked when it becomes a [`SinkPlan`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// Webhook URL; SMTP URL (`smtp://host:587`, STARTTLS required; `smtps://host:465`); ticket API base.
    pub url: Option<String>,
    /// Webhook: HMAC-SHA256 key for `X-Plumb-Signature`.
    pub secret: Option<String>,
    /// Email: SMTP user and password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// GitHub, GitLab, Jira: API token. Jira Cloud: with `user` (basic auth); Jira DC: alone (bearer).
    pub token: Option<String>,
    pub user: Option<String>,
    /// Email sender and recipients.
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    /// Extra PEM trust root (a path beside plumb.toml).
    pub ca: Option<String>,
    /// GitHub: `owner/name`.
    pub repo: Option<String>,
    /// GitLab: project id or `group/name`; Jira: project key.
    pub project: Option<String>,
    /// Jira issue type (default `Task`).
    pub issue_type: Option<String>,
    /// Labels added to tickets (plus `plumb` and the fingerprint label).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Jira transition names (defaults `Done` and `Reopen`).
    pub close_transition: Option<String>,
    pub reopen_transition: Option<String>,
    /// PagerDuty Events v2 routing key.
    pub routing_key: Option<String>,
    /// Per request (default 10s).
    pub timeout: Option<String>,
}

/// A validated sink: secrets resolved (from `${env:}` / `${file:}`), never printed.
#[derive(Clone)]
pub struct SinkPlan {
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    pub secret: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub ca: Option<Vec<u8>>,
    pub repo: Option<String>,
    pub project: Option<String>,
    pub issue_type: String,
    pub labels: Vec<String>,
    pub close_transition: String,
    pub reopen_transition: String,
    pub routing_key: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for SinkPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs of chat webhooks are credentials: only the kind and name are shown.
        f.debug_struct("SinkPlan")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The default API base of each kind, where one exists.
pub fn default_url(kind: SinkKind) -> Option<&'static str> {
    match kind {
        SinkKind::Github => Some("https://api.github.com"),
        SinkKind::Gitlab => Some("https://gitlab.com"),
        SinkKind::Pagerduty => Some("https://events.pagerduty.com/v2/enqueue"),
        _ => None,
    }
}

/// The keys a kind needs, for validation.
pub fn required(kind: SinkKind) -> &'static [&'static str] {
    match kind {
        SinkKind::Slack
        | SinkKind::Teams
        | SinkKind::Mattermost
        | SinkKind::Discord
        | SinkKind::GoogleChat
        | SinkKind::Webhook => &["url"],
        SinkKind::Email => &["url", "from", "to"],
        SinkKind::Github => &["repo", "token"],
        SinkKind::Gitlab => &["project", "token"],
        SinkKind::Jira => &["url", "project", "token"],
        SinkKind::Pagerduty => &["routing_key"],
    }
}

/// A successful delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Tickets: the issue's id in the target system (GitHub number, GitLab iid, Jira key).
    pub external_id: Option<String>,
}

/// A failed delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth another attempt (network error, timeout, 408, 425, 429, 5xx), after `after` if the peer said so.
    #[error("{reason}")]
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Another attempt would fail the same way (400, 401, 403, 404, 410, a bad recipient): dead-letter it.
    #[error("{reason}")]
    Permanent { reason: String },
}

/// Classify an HTTP answer: `Ok` for 2xx; retryable 408/425/429/5xx (honouring `Retry-After`, seconds or an
/// HTTP date); anything else permanent. `body` is the start of the answer, for the reason.
pub fn classify_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Result<(), DeliveryError> {
    if status.is_success() {
        return Ok(());
    }
    // The peer's words, as one line without control characters (no terminal escapes reach a log or a terminal).
    let snippet: String = body
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string();
    let reason = format!(
        "HTTP {}{}",
        status.as_u16(),
        if snippet.is_empty() {
            String::new()
        } else {
            format!(": {snippet}")
        }
    );
    let code = status.as_u16();
    if code == 408 || code == 425 || code == 429 || status.is_server_error() {
        let after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        return Err(DeliveryError::Retry { after, reason });
    }
    Err(DeliveryError::Permanent { reason })
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let t = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let d = t.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(d.to_std().unwrap_or(Duration::ZERO))
}

/// A network-level failure is always worth another attempt.
pub fn network_error(e: reqwest::Error) -> DeliveryError {
    let reason = if e.is_timeout() {
        "timed out".to_string()
    } else {
        // Chat webhook URLs are credentials: never put them into a message.
        let e = e.without_url();
        let mut parts = vec![e.to_string()];
        let mut cur = std::error::Error::source(&e);
        while let Some(s) = cur {
            parts.push(s.to_string());
            cur = s.source();
        }
        format!("network error: {}", parts.join(": "))
    };
    DeliveryError::Retry {
        after: None,
        reason,
    }
}

/// An HTTP client for one sink: its CA, its timeout, no redirects (a webhook that redirects is misconfigured).
pub fn client(sink: &SinkPlan) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(sink.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("plumb/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &sink.ca {
        let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| format!("ca: {e}"))?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| e.to_string())
}

/// Deliver one message to one sink. `known` is the ticket id the store remembers for a ticket event's key.
pub async fn deliver(
    http: &reqwest::Client,
    sink: &SinkPlan,
    msg: &Message,
    known: Option<&str>,
) -> Result<Delivered, DeliveryError> {
    match (sink.kind, msg) {
        (
            SinkKind::Slack
            | SinkKind::Teams
            | SinkKind::Mattermost
            | SinkKind::Discord
            | SinkKind::GoogleChat,
            Message::Digest(d),
        ) => chat::send(http, sink, d).await,
        (SinkKind::Webhook, m) => webhook::send(http, sink, m).await,
        (SinkKind::Email, Message::Digest(d)) => email::send(sink, d).await,
        (SinkKind::Pagerduty, Message::Ticket(t)) => pagerduty::send(http, sink, t).await,
        (SinkKind::Github | SinkKind::Gitlab | SinkKind::Jira, Message::Ticket(t)) => {
            tickets::send(http, sink, t, known).await
        }
        (kind, _) => Err(DeliveryError::Permanent {
            reason: format!("a {} sink cannot take this message", kind.as_str()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let h = reqwest::header::HeaderMap::new();
        assert!(classify_status(reqwest::StatusCode::ACCEPTED, &h, "").is_ok());
        for code in [408u16, 425, 429, 500, 502, 503] {
            let s = reqwest::StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify_status(s, &h, ""), Err(DeliveryError::Retry { .. })),
                "{code}"
            );
        }
        for code in [400u16, 401, 403, 404, 410] {
            let s = reqwest::StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(
                    classify_status(s, &h, "bad"),
                    Err(DeliveryError::Permanent { .. })
                ),
                "{code}"
            );
        }
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            classify_status(reqwest::StatusCode::TOO_MANY_REQUESTS, &h, ""),
            Err(DeliveryError::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "HTTP 429".into()
            })
        );
        assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        assert_eq!(parse_retry_after("soon"), None);
    }
}
