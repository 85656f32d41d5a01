//! The email sink: one `multipart/alternative` mail (plain text and HTML) per digest, sent over SMTP with lettre.
//!
//! # URL forms
//!
//! - `smtp://host[:port]`: STARTTLS, **required** (default port 587). A server that does not offer STARTTLS is a
//!   permanent failure: plumb never sends mail, or credentials, in clear over the network.
//! - `smtps://host[:port]`: implicit TLS from the first byte (default port 465).
//! - `smtp://host[:port]?tls=none`: plain SMTP (default port 25), accepted **only** when the host is a loopback
//!   address (`127.0.0.0/8`, `::1`, `localhost`), for a local relay such as a Postfix on the same machine. No
//!   credentials are sent on such a connection; a sink with `username`/`password` and `tls=none` is refused.
//!
//! Credentials never go into the URL (`smtp://user:pass@…` is refused): `username` and `password` come from
//! `${env:…}` or `${file:…}` and are offered (AUTH PLAIN or LOGIN) only after TLS is up. `ca` is an extra PEM
//! trust root on top of the platform's; the server certificate is always verified, host name included. `timeout`
//! bounds the whole SMTP exchange (connect, TLS, AUTH, the message).
//!
//! # The message
//!
//! `Message-ID: <{digest id}@plumb>`, so a retried delivery of the same digest carries the same id. A digest that
//! only resolves (`replies_to` not empty) carries `In-Reply-To: <{first}@plumb>` and
//! `References: <{first}@plumb> …`, so mail clients thread the resolution under the alert that announced it.
//! `X-Plumb-Scan` names the scan, `Auto-Submitted: auto-generated` (RFC 3834) keeps vacation responders quiet.
//! Both parts list the items grouped by severity (highest first), then rule or kind; at most [`MAX_ITEMS`] are
//! listed, then "…and N more" with the report link.
//!
//! # Failures
//!
//! Connection errors, timeouts, TLS failures and 4xx replies are worth another attempt ([`DeliveryError::Retry`]);
//! 5xx replies (a bad recipient, failed authentication, a refused sender), a server without STARTTLS, and a sink
//! that cannot be used as configured are [`DeliveryError::Permanent`]. The password never appears in a reason.

use super::{Delivered, DeliveryError, SinkPlan};
use crate::finding::{Finding, Severity};
use crate::notify::{AlertItem, Digest, Trigger};
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value;
use std::cmp::Reverse;
use std::fmt::Write as _;
use std::net::IpAddr;

/// At most this many items are listed in one mail; the rest are counted ("…and N more").
pub const MAX_ITEMS: usize = 200;

/// At most this many nodes of a fleet-wide group are named.
const MAX_NODES: usize = 20;

/// A value longer than this (in characters) is cut.
const MAX_VALUE_CHARS: usize = 4000;

/// At most this many ids go into `References`.
const MAX_REFERENCES: usize = 20;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: plain connect, then STARTTLS, which the server must offer.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://…?tls=none`: no TLS at all; loopback hosts only.
    Plain,
}

/// Where and how to connect, from a sink's `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (IPv6 without brackets); also the name the certificate must carry.
    pub host: String,
    pub port: u16,
    pub security: Security,
}

/// Parse and check an SMTP sink URL (see the module documentation for the accepted forms).
pub fn endpoint(url: &str) -> Result<Endpoint, String> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| format!("invalid SMTP URL: {e}"))?;
    let scheme = u.scheme().to_ascii_lowercase();
    let mut security = match scheme.as_str() {
        "smtp" => Security::StartTls,
        "smtps" => Security::Implicit,
        other => {
            return Err(format!(
                "unsupported scheme `{other}://` for an email sink (expected smtp:// with STARTTLS or smtps://)"
            ));
        }
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(
            "credentials do not belong in the SMTP URL: set `username` and `password` (with ${env:…} or ${file:…})"
                .into(),
        );
    }
    let host = u
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|h| !h.is_empty())
        .ok_or("the SMTP URL has no host")?;
    if host.contains('%') {
        return Err(format!("invalid SMTP host `{host}`"));
    }
    if !matches!(u.path(), "" | "/") {
        return Err(format!("the SMTP URL takes no path (got `{}`)", u.path()));
    }
    if u.fragment().is_some() {
        return Err("the SMTP URL takes no fragment".into());
    }
    for (k, v) in u.query_pairs() {
        match (k.as_ref(), v.as_ref(), security) {
            ("tls", "none", Security::StartTls) => security = Security::Plain,
            ("tls", "required" | "starttls", Security::StartTls) => {}
            ("tls", _, _) => {
                return Err(format!(
                    "unsupported `tls={v}` for {scheme}:// (smtp:// always requires STARTTLS; `tls=none` is only for a loopback relay)"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown SMTP URL parameter `{k}` (only `tls=none` exists)"
                ));
            }
        }
    }
    if security == Security::Plain && !is_loopback(&host) {
        return Err(format!(
            "`tls=none` is only allowed for a loopback relay (127.0.0.0/8, ::1, localhost), not `{host}`: plumb never sends mail in clear over the network"
        ));
    }
    let port = match (u.port(), security) {
        (Some(p), _) => p,
        (None, Security::StartTls) => 587,
        (None, Security::Implicit) => 465,
        (None, Security::Plain) => 25,
    };
    Ok(Endpoint {
        host,
        port,
        security,
    })
}

/// `127.0.0.0/8`, `::1` or `localhost`.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `Message-ID` plumb gives the mail of digest `id`: `<id@plumb>` (characters not allowed in a message id
/// become `-`). Threading headers of later digests use the same function.
pub fn message_id(id: &str) -> String {
    let local: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let local = local.trim_matches('.');
    let local = if local.is_empty() { "digest" } else { local };
    format!("<{local}@plumb>")
}

fn permanent(sink: &SinkPlan, reason: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Permanent {
        reason: scrub(sink, &format!("email sink {}: {reason}", sink.name)),
    }
}

fn retry(sink: &SinkPlan, reason: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Retry {
        after: None,
        reason: scrub(sink, &format!("email sink {}: {reason}", sink.name)),
    }
}

/// Belt and braces: a reason never carries the password, whatever a server or library echoes. What a server sent
/// (a garbage greeting ends up in lettre's error) is kept to one line of bounded length: reasons are printed, logged
/// and sent in self-alerts.
fn scrub(sink: &SinkPlan, s: &str) -> String {
    let s = match sink.password.as_deref() {
        Some(p) if !p.is_empty() => s.replace(p, "***"),
        _ => s.to_string(),
    };
    const MAX: usize = 400;
    let mut out = one_line(&s.chars().take(MAX).collect::<String>())
        .trim_end()
        .to_string();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// One line for a header: control characters (CR, LF…) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Build the mail for `digest` (pure: no network). Errors are permanent: a bad address does not get better.
pub fn build(sink: &SinkPlan, digest: &Digest) -> Result<lettre::Message, DeliveryError> {
    let from_s = sink
        .from
        .as_deref()
        .ok_or_else(|| permanent(sink, "no `from` address"))?;
    let from: Mailbox = from_s
        .trim()
        .parse()
        .map_err(|e| permanent(sink, format!("invalid `from` address `{from_s}`: {e}")))?;
    if sink.to.is_empty() {
        return Err(permanent(sink, "no `to` address"));
    }
    let mut b = lettre::Message::builder().from(from);
    for to in &sink.to {
        let mb: Mailbox = to
            .trim()
            .parse()
            .map_err(|e| permanent(sink, format!("invalid `to` address `{to}`: {e}")))?;
        b = b.to(mb);
    }
    b = b
        .subject(one_line(&digest.title))
        .message_id(Some(message_id(&digest.id)));
    if let Some(first) = digest.replies_to.first() {
        let refs: Vec<String> = digest
            .replies_to
            .iter()
            .take(MAX_REFERENCES)
            .map(|r| message_id(r))
            .collect();
        b = b.in_reply_to(message_id(first)).references(refs.join(" "));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&digest.at) {
        b = b.date(t.with_timezone(&chrono::Utc).into());
    }
    b = b
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Plumb-Scan"),
            one_line(&digest.scan_id),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ));
    // No Content-Type on the message itself: `multipart` sets it (setting one too gives two headers).
    let part = |ct: ContentType, body: String| {
        SinglePart::builder()
            .header(ct)
            .header(ContentTransferEncoding::QuotedPrintable)
            .body(body)
    };
    let body = MultiPart::alternative()
        .singlepart(part(ContentType::TEXT_PLAIN, render_text(digest)))
        .singlepart(part(ContentType::TEXT_HTML, render_html(digest)));
    b.multipart(body)
        .map_err(|e| permanent(sink, format!("cannot build the mail: {e}")))
}

/// Deliver one digest as one mail.
pub async fn send(sink: &SinkPlan, digest: &Digest) -> Result<Delivered, DeliveryError> {
    let msg = build(sink, digest)?;
    let ep = endpoint(&sink.url).map_err(|e| permanent(sink, e))?;
    let transport = transport(sink, &ep)?;
    let sent = tokio::time::timeout(sink.timeout, transport.send(msg)).await;
    match sent {
        Err(_) => Err(retry(
            sink,
            format!(
                "SMTP exchange with {}:{} timed out after {:?}",
                ep.host, ep.port, sink.timeout
            ),
        )),
        Ok(Err(e)) => Err(classify(sink, &ep, &e)),
        Ok(Ok(_)) => Ok(Delivered::default()),
    }
}

/// The lettre transport for one sink: TLS as the URL says, the extra CA, credentials, no pooling (a digest is
/// one mail; the connection is closed after it).
fn transport(
    sink: &SinkPlan,
    ep: &Endpoint,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, DeliveryError> {
    let tls = match ep.security {
        Security::Plain => Tls::None,
        Security::StartTls => Tls::Required(tls_parameters(sink, ep)?),
        Security::Implicit => Tls::Wrapper(tls_parameters(sink, ep)?),
    };
    // `builder_dangerous` is lettre's manual builder: nothing is dangerous once `tls` is set just below.
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(ep.host.clone())
        .port(ep.port)
        .tls(tls)
        .timeout(Some(sink.timeout))
        .pool_config(PoolConfig::new().min_idle(0).max_size(0));
    match (&sink.username, &sink.password) {
        (None, None) => {}
        (Some(u), Some(p)) => {
            if ep.security == Security::Plain {
                return Err(permanent(
                    sink,
                    "refusing to send SMTP credentials without TLS (`tls=none`); use smtp:// (STARTTLS) or smtps://",
                ));
            }
            b = b
                .credentials(Credentials::new(u.clone(), p.clone()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        _ => {
            return Err(permanent(
                sink,
                "`username` and `password` go together: set both or neither",
            ));
        }
    }
    Ok(b.build())
}

fn tls_parameters(sink: &SinkPlan, ep: &Endpoint) -> Result<TlsParameters, DeliveryError> {
    let mut b = TlsParameters::builder(ep.host.clone());
    if let Some(pem) = &sink.ca {
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(permanent(sink, "`ca` holds no PEM certificate"));
        }
        let cert = Certificate::from_pem(pem).map_err(|e| permanent(sink, format!("`ca`: {e}")))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| permanent(sink, format!("TLS setup: {}", chain(&e))))
}

/// An error and its sources, joined; the inner error of an `io::Error` included.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Is a rustls error somewhere in the chain? (`io::Error` hides its inner error from `source()`.)
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<tokio_rustls::rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(t) = inner.downcast_ref::<tokio_rustls::rustls::Error>()
        {
            return Some(t.to_string());
        }
        cur = err.source();
    }
    None
}

/// Map a lettre error to retry or permanent.
fn classify(sink: &SinkPlan, ep: &Endpoint, e: &lettre::transport::smtp::Error) -> DeliveryError {
    let at = format!("{}:{}", ep.host, ep.port);
    let detail = chain(e);
    // lettre's text is "permanent error (550): 5.1.1 …" or "transient error (451): …".
    if e.is_permanent() {
        return permanent(sink, format!("{at} refused: SMTP {detail}"));
    }
    if e.is_transient() {
        return retry(sink, format!("{at} answered: SMTP {detail}"));
    }
    if e.is_timeout() {
        return retry(sink, format!("SMTP connection to {at} timed out: {detail}"));
    }
    if let Some(t) = tls_failure(e) {
        let hint = if t.contains("certificate") || t.contains("Certificate") {
            format!(
                "the server's certificate must be valid for `{}` and signed by a trusted CA; for a private CA set `ca`",
                ep.host
            )
        } else if ep.security == Security::Implicit {
            "is this really an smtps:// (implicit TLS) port? use smtp:// for STARTTLS".to_string()
        } else {
            "the TLS handshake failed".to_string()
        };
        return retry(sink, format!("TLS error with {at}: {t} ({hint})"));
    }
    if e.is_tls() {
        return retry(sink, format!("TLS error with {at}: {detail}"));
    }
    if e.is_client() {
        if detail.contains("STARTTLS") {
            return permanent(
                sink,
                format!(
                    "{at}: server does not offer STARTTLS; plumb never sends mail in clear (use smtps:// if it speaks implicit TLS)"
                ),
            );
        }
        if detail.contains("authentication mechanism") {
            return permanent(
                sink,
                format!("{at}: the server offers no authentication plumb supports (PLAIN, LOGIN)"),
            );
        }
        return permanent(sink, format!("{at}: {detail}"));
    }
    retry(sink, format!("SMTP connection to {at} failed: {detail}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering

/// The items in mail order: severity (highest first), then rule or kind; the digest's order otherwise.
fn ordered(digest: &Digest) -> Vec<&AlertItem> {
    let mut items: Vec<&AlertItem> = digest.items.iter().collect();
    items.sort_by_cached_key(|i| (Reverse(i.finding.severity), group_label(&i.finding)));
    items
}

/// The rule id for a violation, the kind otherwise.
fn group_label(f: &Finding) -> String {
    match &f.rule {
        Some(r) if !r.is_empty() => r.clone(),
        _ => f.kind.as_str().to_string(),
    }
}

/// Consecutive runs of the same (severity, label), over at most [`MAX_ITEMS`] items.
fn groups<'a>(items: &[&'a AlertItem]) -> Vec<(Severity, String, Vec<&'a AlertItem>)> {
    let mut out: Vec<(Severity, String, Vec<&AlertItem>)> = Vec::new();
    for it in items.iter().take(MAX_ITEMS) {
        let sev = it.finding.severity;
        let label = group_label(&it.finding);
        match out.last_mut() {
            Some((s, l, v)) if *s == sev && *l == label => v.push(it),
            _ => out.push((sev, label, vec![it])),
        }
    }
    out
}

/// The node, or the group's nodes (at most [`MAX_NODES`] named).
fn nodes_line(it: &AlertItem) -> String {
    if it.nodes.is_empty() {
        return it.finding.node.clone();
    }
    let shown: Vec<&str> = it
        .nodes
        .iter()
        .take(MAX_NODES)
        .map(String::as_str)
        .collect();
    let more = it.nodes.len().saturating_sub(MAX_NODES);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{} nodes: {}{tail}", it.nodes.len(), shown.join(", "))
}

/// A value for display: `(none)` for null, a JSON-quoted single-line string, the raw text of a multi-line string,
/// compact JSON (pretty when long). Cut at [`MAX_VALUE_CHARS`].
fn value_text(v: &Value) -> String {
    let s = match v {
        Value::Null => "(none)".to_string(),
        Value::String(s) if s.contains('\n') => s.clone(),
        Value::String(_) => v.to_string(),
        _ => {
            let compact = v.to_string();
            if compact.chars().count() > 100 {
                serde_json::to_string_pretty(v).unwrap_or(compact)
            } else {
                compact
            }
        }
    };
    let n = s.chars().count();
    if n > MAX_VALUE_CHARS {
        let cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}… ({} more characters)", n - MAX_VALUE_CHARS)
    } else {
        s
    }
}

fn has_values(f: &Finding) -> bool {
    !(f.expected.is_null() && f.actual.is_null())
}

fn more_count(digest: &Digest) -> usize {
    digest.items.len().saturating_sub(MAX_ITEMS)
}

/// The plain-text part.
pub fn render_text(digest: &Digest) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", one_line(&digest.title));
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Scan {} at {} (route {}).",
        digest.scan_id, digest.at, digest.route
    );
    if let Some(u) = &digest.report_url {
        let _ = writeln!(o, "Full report: {u}");
    }
    let items = ordered(digest);
    for (sev, label, group) in groups(&items) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "== {} · {} ({}) ==",
            sev.as_str().to_uppercase(),
            label,
            group.len()
        );
        for it in group {
            let f = &it.finding;
            let _ = writeln!(o);
            let _ = writeln!(o, "- [{}] {}", it.trigger.as_str(), nodes_line(it));
            if label != f.kind.as_str() {
                let _ = writeln!(o, "  kind:     {}", f.kind.as_str());
            }
            let _ = writeln!(o, "  config:   {}", f.config);
            if !f.path.is_empty() {
                let _ = writeln!(o, "  path:     {}", f.path);
            }
            if has_values(f) {
                for (name, v) in [("expected", &f.expected), ("actual", &f.actual)] {
                    let s = value_text(v);
                    if s.contains('\n') {
                        let _ = writeln!(o, "  {name}:");
                        for line in s.lines() {
                            let _ = writeln!(o, "    | {line}");
                        }
                    } else {
                        let _ = writeln!(o, "  {name}:{:w$}{s}", "", w = 9 - name.len());
                    }
                }
            }
            if !f.message.is_empty() {
                let _ = writeln!(o, "  {}", f.message);
            }
        }
    }
    let more = more_count(digest);
    if more > 0 {
        let _ = writeln!(o);
        match &digest.report_url {
            Some(u) => {
                let _ = writeln!(o, "…and {more} more: {u}");
            }
            None => {
                let _ = writeln!(o, "…and {more} more (see `plumb findings`).");
            }
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "-- ");
    let _ = writeln!(o, "plumb, digest {} for sink {}", digest.id, digest.sink);
    o
}

/// HTML-escape text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A link when the URL is http(s), escaped text otherwise.
fn link(url: &str, text: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        format!("<a href=\"{}\">{}</a>", esc(url), esc(text))
    } else {
        esc(url)
    }
}

fn severity_color(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "#a40e26",
        Severity::High => "#bc4c00",
        Severity::Medium => "#9a6700",
        Severity::Low => "#0969da",
        Severity::Info => "#57606a",
    }
}

fn trigger_color(t: Trigger) -> &'static str {
    match t {
        Trigger::Resolved => "#1a7f37",
        Trigger::Reminder | Trigger::ValueChanged => "#57606a",
        _ => "#cf222e",
    }
}

fn value_html(v: &Value) -> String {
    let s = value_text(v);
    if s.contains('\n') {
        format!(
            "<pre style=\"margin:0;padding:4px;background:#f6f8fa;white-space:pre-wrap\">{}</pre>",
            esc(&s)
        )
    } else {
        format!("<code>{}</code>", esc(&s))
    }
}

/// The HTML part: the same content, each item's expected and actual values in a small table.
pub fn render_html(digest: &Digest) -> String {
    const TH: &str = "style=\"text-align:left;vertical-align:top;padding:2px 8px 2px 0;color:#57606a;font-weight:normal\"";
    const TD: &str = "style=\"vertical-align:top;padding:2px 0\"";
    let mut o = String::new();
    let title = esc(&one_line(&digest.title));
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>{title}</title></head>"
    );
    let _ = writeln!(
        o,
        "<body style=\"font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:14px;color:#1f2328\">"
    );
    let _ = writeln!(o, "<h1 style=\"font-size:18px\">{title}</h1>");
    let report = digest
        .report_url
        .as_deref()
        .map(|u| format!(" · {}", link(u, "full report")))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "<p style=\"color:#57606a\">Scan <code>{}</code> at {} (route {}){report}</p>",
        esc(&digest.scan_id),
        esc(&digest.at),
        esc(&digest.route)
    );
    let items = ordered(digest);
    for (sev, label, group) in groups(&items) {
        let _ = writeln!(
            o,
            "<h2 style=\"font-size:16px;margin:20px 0 8px 0;border-bottom:1px solid #d0d7de\"><span style=\"color:{}\">{}</span> · {} ({})</h2>",
            severity_color(sev),
            esc(&sev.as_str().to_uppercase()),
            esc(&label),
            group.len()
        );
        for it in group {
            let f = &it.finding;
            let _ = writeln!(o, "<div style=\"margin:0 0 14px 0\">");
            let _ = writeln!(
                o,
                "<p style=\"margin:4px 0\"><strong style=\"color:{}\">[{}]</strong> {}</p>",
                trigger_color(it.trigger),
                esc(it.trigger.as_str()),
                esc(&nodes_line(it))
            );
            let _ = writeln!(o, "<table style=\"border-collapse:collapse\">");
            if label != f.kind.as_str() {
                let _ = writeln!(
                    o,
                    "<tr><th {TH}>kind</th><td {TD}>{}</td></tr>",
                    esc(f.kind.as_str())
                );
            }
            let _ = writeln!(
                o,
                "<tr><th {TH}>config</th><td {TD}><code>{}</code></td></tr>",
                esc(&f.config)
            );
            if !f.path.is_empty() {
                let _ = writeln!(
                    o,
                    "<tr><th {TH}>path</th><td {TD}><code>{}</code></td></tr>",
                    esc(&f.path)
                );
            }
            if has_values(f) {
                let _ = writeln!(
                    o,
                    "<tr><th {TH}>expected</th><td {TD}>{}</td></tr>",
                    value_html(&f.expected)
                );
                let _ = writeln!(
                    o,
                    "<tr><th {TH}>actual</th><td {TD}>{}</td></tr>",
                    value_html(&f.actual)
                );
            }
            let _ = writeln!(o, "</table>");
            if !f.message.is_empty() {
                let _ = writeln!(o, "<p style=\"margin:4px 0\">{}</p>", esc(&f.message));
            }
            let _ = writeln!(o, "</div>");
        }
    }
    let more = more_count(digest);
    if more > 0 {
        let tail = digest
            .report_url
            .as_deref()
            .map(|u| format!(" {}", link(u, "See the full report.")))
            .unwrap_or_else(|| " (see <code>plumb findings</code>).".into());
        let _ = writeln!(o, "<p><strong>…and {more} more.</strong>{tail}</p>");
    }
    let _ = writeln!(
        o,
        "<hr style=\"border:0;border-top:1px solid #d0d7de\">\n<p style=\"font-size:12px;color:#57606a\">plumb, digest <code>{}</code> for sink {}</p>",
        esc(&digest.id),
        esc(&digest.sink)
    );
    let _ = writeln!(o, "</body>\n</html>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Change, Kind, State};
    use crate::notify::sinks::SinkKind;
    use serde_json::json;
    use std::time::Duration;

    fn sink() -> SinkPlan {
        SinkPlan {
            name: "mail".into(),
            kind: SinkKind::Email,
            url: "smtp://smtp.example.org".into(),
            secret: None,
            username: None,
            password: None,
            token: None,
            user: None,
            from: Some("plumb <plumb@example.org>".into()),
            to: vec!["oncall@example.org".into(), "ops@example.org".into()],
            ca: None,
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

    fn finding(kind: Kind, sev: Severity, node: &str, path: &str) -> Finding {
        let mut f = Finding::observed(
            kind,
            sev,
            node,
            "caddy",
            path.into(),
            path,
            format!("{path} changed on {node}"),
            "2025-01-02T03:04:05Z",
        );
        f.change = Some(Change::Changed);
        f.state = State::New;
        f
    }

    fn item(trigger: Trigger, f: Finding) -> AlertItem {
        AlertItem {
            trigger,
            finding: f,
            nodes: vec![],
        }
    }

    fn digest(items: Vec<AlertItem>) -> Digest {
        Digest {
            id: "0123456789abcdef0123".into(),
            route: "oncall".into(),
            sink: "mail".into(),
            scan_id: "scan-42".into(),
            at: "2025-01-02T03:04:05Z".into(),
            title: "plumb: 2 firing (oncall, scan scan-42)".into(),
            items,
            report_url: Some("https://plumb.example.org/scans/scan-42".into()),
            replies_to: vec![],
        }
    }

    fn sample() -> Digest {
        let mut a = finding(Kind::Drift, Severity::Medium, "web-1", "$.listen");
        a.expected = json!(":443");
        a.actual = json!("<script>alert(1)</script>");
        let mut b = finding(Kind::Violation, Severity::Critical, "web-2", "$.tls");
        b.rule = Some("tls-required".into());
        b.expected = json!("line one\nline two & more");
        b.actual = Value::Null;
        let mut c = finding(Kind::Drift, Severity::Medium, "web-1", "$.admin");
        c.expected = json!({"enabled": false});
        c.actual = json!({"enabled": true});
        let mut g = item(Trigger::Escalated, c);
        g.nodes = vec!["web-1".into(), "web-3".into(), "web-4".into()];
        digest(vec![item(Trigger::Firing, a), item(Trigger::Firing, b), g])
    }

    /// The top-level headers (unfolded) and the decoded parts of a formatted mail.
    struct Parsed {
        headers: Vec<(String, String)>,
        parts: Vec<(String, String)>,
    }

    impl Parsed {
        fn all(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        }
        fn one(&self, name: &str) -> &str {
            let v = self.all(name);
            assert_eq!(v.len(), 1, "header {name}: {v:?}");
            v[0]
        }
    }

    fn headers_of(block: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in block.split("\r\n") {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = out.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((n, v)) = line.split_once(':') {
                out.push((n.to_string(), v.trim().to_string()));
            }
        }
        out
    }

    fn decode_qp(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' {
                if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                    i += 3;
                    continue;
                }
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn parse(msg: &lettre::Message) -> Parsed {
        let raw = String::from_utf8(msg.formatted()).unwrap();
        assert!(raw.is_ascii(), "the formatted mail is 7-bit clean");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let headers = headers_of(head);
        let ct = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .unwrap()
            .1
            .clone();
        let boundary = ct
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let delim = format!("--{boundary}");
        let mut parts = Vec::new();
        for chunk in body.split(&delim).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.trim_start_matches("\r\n");
            let (ph, pb) = chunk.split_once("\r\n\r\n").unwrap();
            let ph = headers_of(ph);
            let get = |n: &str| {
                ph.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(get("Content-Transfer-Encoding"), "quoted-printable");
            parts.push((
                get("Content-Type"),
                decode_qp(pb.trim_end_matches("\r\n")).replace("\r\n", "\n"),
            ));
        }
        Parsed { headers, parts }
    }

    #[test]
    fn headers_and_two_parts() {
        let d = sample();
        let m = parse(&build(&sink(), &d).unwrap());
        assert!(m.one("From").contains("<plumb@example.org>"));
        let to = m.one("To");
        assert!(to.contains("oncall@example.org") && to.contains("ops@example.org"));
        assert_eq!(m.one("Subject"), d.title);
        assert_eq!(m.one("Message-ID"), "<0123456789abcdef0123@plumb>");
        assert_eq!(m.one("X-Plumb-Scan"), "scan-42");
        assert_eq!(m.one("Auto-Submitted"), "auto-generated");
        assert_eq!(m.one("MIME-Version"), "1.0");
        assert!(
            m.one("Date").contains("2 Jan 2025 03:04:05"),
            "{}",
            m.one("Date")
        );
        assert!(m.one("Content-Type").starts_with("multipart/alternative;"));
        assert!(m.all("In-Reply-To").is_empty() && m.all("References").is_empty());
        assert_eq!(m.parts.len(), 2);
        assert!(
            m.parts[0].0.starts_with("text/plain; charset=utf-8"),
            "{:?}",
            m.parts[0].0
        );
        assert!(
            m.parts[1].0.starts_with("text/html; charset=utf-8"),
            "{:?}",
            m.parts[1].0
        );
    }

    #[test]
    fn resolution_threads_under_the_first_alert() {
        let mut d = sample();
        d.id = "resolved-1".into();
        d.replies_to = vec!["first-1".into(), "second-2".into()];
        let m = parse(&build(&sink(), &d).unwrap());
        assert_eq!(m.one("Message-ID"), "<resolved-1@plumb>");
        assert_eq!(m.one("In-Reply-To"), "<first-1@plumb>");
        assert_eq!(m.one("References"), "<first-1@plumb> <second-2@plumb>");
    }

    #[test]
    fn items_grouped_by_severity_then_rule_and_escaped_in_html() {
        let m = parse(&build(&sink(), &sample()).unwrap());
        let text = &m.parts[0].1;
        let html = &m.parts[1].1;
        // Critical first, then the two medium drifts.
        let crit = text.find("== CRITICAL · tls-required (1) ==").expect(text);
        let med = text.find("== MEDIUM · drift (2) ==").expect(text);
        assert!(crit < med, "{text}");
        assert!(text.contains("- [firing] web-1\n"), "{text}");
        assert!(text.contains("  kind:     violation\n"), "{text}");
        assert!(text.contains("  path:     $.listen\n"), "{text}");
        assert!(text.contains("  expected: \":443\"\n"), "{text}");
        assert!(
            text.contains("  actual:   \"<script>alert(1)</script>\"\n"),
            "{text}"
        );
        assert!(
            text.contains("    | line one\n    | line two & more\n"),
            "{text}"
        );
        assert!(text.contains("  actual:   (none)\n"), "{text}");
        assert!(
            text.contains("- [escalated] 3 nodes: web-1, web-3, web-4\n"),
            "{text}"
        );
        assert!(text.contains("$.listen changed on web-1"), "{text}");
        assert!(text.contains("Full report: https://plumb.example.org/scans/scan-42"));

        let crit = html.find("CRITICAL</span> · tls-required (1)").expect(html);
        let med = html.find("MEDIUM</span> · drift (2)").expect(html);
        assert!(crit < med);
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;"),
            "{html}"
        );
        assert!(
            html.contains("<pre style=") && html.contains("line one\nline two &amp; more</pre>")
        );
        assert!(html.contains("<code>$.listen</code>"));
        assert!(html.contains("3 nodes: web-1, web-3, web-4"));
        assert!(html.contains(">[escalated]</strong>"));
        assert!(
            html.contains("<a href=\"https://plumb.example.org/scans/scan-42\">full report</a>")
        );
        assert!(html.contains("{&quot;enabled&quot;:true}"), "{html}");
    }

    #[test]
    fn cut_at_the_item_limit_with_the_report_link() {
        let items: Vec<AlertItem> = (0..MAX_ITEMS + 7)
            .map(|i| {
                item(
                    Trigger::Firing,
                    finding(Kind::Drift, Severity::Low, &format!("n{i:03}"), "$.a"),
                )
            })
            .collect();
        let m = parse(&build(&sink(), &digest(items)).unwrap());
        let (text, html) = (&m.parts[0].1, &m.parts[1].1);
        assert_eq!(text.matches("- [firing] ").count(), MAX_ITEMS);
        assert!(
            text.contains("…and 7 more: https://plumb.example.org/scans/scan-42"),
            "{text}"
        );
        assert!(html.contains(
            "…and 7 more.</strong> <a href=\"https://plumb.example.org/scans/scan-42\">"
        ));
        assert!(!text.contains(&format!("n{:03}", MAX_ITEMS)));

        let mut d = digest(vec![]);
        d.items = (0..MAX_ITEMS + 1)
            .map(|i| {
                item(
                    Trigger::Firing,
                    finding(Kind::Drift, Severity::Low, &format!("n{i}"), "$.a"),
                )
            })
            .collect();
        d.report_url = Some("javascript:alert(1)".into());
        let html = render_html(&d);
        assert!(!html.contains("href=\"javascript"), "only http(s) links");
    }

    #[test]
    fn header_injection_and_odd_ids_are_neutralised() {
        let mut d = sample();
        d.title = "plumb\r\nBcc: evil@example.org".into();
        d.id = "a b<c>@d".into();
        let raw = String::from_utf8(build(&sink(), &d).unwrap().formatted()).unwrap();
        assert!(!raw.contains("\r\nBcc:"), "{raw}");
        assert!(raw.contains("Message-ID: <a-b-c--d@plumb>"), "{raw}");
        assert_eq!(message_id("0123abc"), "<0123abc@plumb>");
    }

    #[test]
    fn bad_addresses_are_permanent() {
        let mut s = sink();
        s.from = Some("not an address".into());
        assert!(matches!(
            build(&s, &sample()),
            Err(DeliveryError::Permanent { .. })
        ));
        let mut s = sink();
        s.to = vec!["oncall@example.org".into(), "@@".into()];
        assert!(matches!(
            build(&s, &sample()),
            Err(DeliveryError::Permanent { .. })
        ));
        let mut s = sink();
        s.to.clear();
        assert!(matches!(
            build(&s, &sample()),
            Err(DeliveryError::Permanent { .. })
        ));
    }

    #[test]
    fn url_forms() {
        let ep = |u: &str| endpoint(u);
        assert_eq!(
            ep("smtp://smtp.example.org").unwrap(),
            Endpoint {
                host: "smtp.example.org".into(),
                port: 587,
                security: Security::StartTls
            }
        );
        assert_eq!(ep("smtp://smtp.example.org:2525").unwrap().port, 2525);
        assert_eq!(
            ep("smtps://smtp.example.org").unwrap(),
            Endpoint {
                host: "smtp.example.org".into(),
                port: 465,
                security: Security::Implicit
            }
        );
        assert_eq!(
            ep("smtp://127.0.0.1?tls=none").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 25,
                security: Security::Plain
            }
        );
        assert_eq!(
            ep("smtp://127.1.2.3:2525/?tls=none").unwrap().security,
            Security::Plain
        );
        assert_eq!(
            ep("smtp://localhost:25?tls=none").unwrap().host,
            "localhost"
        );
        assert_eq!(ep("smtp://[::1]:25?tls=none").unwrap().host, "::1");
        assert_eq!(
            ep("smtp://h?tls=required").unwrap().security,
            Security::StartTls
        );
        for bad in [
            "smtp://smtp.example.org?tls=none",
            "smtp://10.0.0.1?tls=none",
            "smtps://127.0.0.1?tls=none",
            "smtp://smtp.example.org?tls=opportunistic",
            "smtp://user:secret@smtp.example.org",
            "smtp://smtp.example.org/ehlo-name",
            "smtp://smtp.example.org?foo=bar",
            "http://smtp.example.org",
            "smtp://",
            "not a url",
        ] {
            let e = ep(bad).expect_err(bad);
            assert!(!e.contains("secret"), "{e}");
        }
        assert!(
            ep("smtp://mail.example.org?tls=none")
                .unwrap_err()
                .contains("loopback")
        );
    }

    #[tokio::test]
    async fn credentials_never_in_clear_and_never_in_errors() {
        let mut s = sink();
        s.url = "smtp://127.0.0.1:1?tls=none".into();
        s.username = Some("u".into());
        s.password = Some("hunter2-secret".into());
        match send(&s, &sample()).await {
            Err(DeliveryError::Permanent { reason }) => {
                assert!(reason.contains("without TLS"), "{reason}");
                assert!(!reason.contains("hunter2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let mut s = sink();
        s.username = Some("u".into());
        assert!(matches!(
            send(&s, &sample()).await,
            Err(DeliveryError::Permanent { .. })
        ));
        let mut s = sink();
        s.ca = Some(b"not pem".to_vec());
        match send(&s, &sample()).await {
            Err(DeliveryError::Permanent { reason }) => assert!(reason.contains("ca"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            scrub(
                &{
                    let mut s = sink();
                    s.password = Some("pw123".into());
                    s
                },
                "AUTH failed for pw123"
            ),
            "AUTH failed for ***"
        );
    }
}
