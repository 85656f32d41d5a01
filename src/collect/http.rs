//! The `http` source: GET with headers, a body size cap, TLS verified by default with optional extra trust roots
//! and a client certificate, and a bounded number of redirects within the same host.
//!
//! A hostile node gets a reason, never plumb's memory or time: bodies are capped while streaming (and a
//! `Content-Length` over the cap is refused before reading), plumb asks for `Accept-Encoding: identity` and
//! refuses any other `Content-Encoding` instead of decompressing it, redirects are followed only within the
//! same host (headers carry credentials), loops and chains over `max_redirects` are refused, and TLS failures
//! say which check failed (expired, unknown issuer, wrong name). The per-attempt timeout is applied by the
//! caller around the whole exchange, so a node that answers one byte a second is cut off there.

use super::{CollectError, Fetched, Validators};
use crate::config::TlsSettings;
use tokio_rustls::rustls;

/// Build a pooled client for one TLS setting.
pub(super) fn client(
    tls: &TlsSettings,
    max_redirects: usize,
) -> Result<reqwest::Client, CollectError> {
    let mut defaults = reqwest::header::HeaderMap::new();
    // plumb never decompresses (a compressed body could inflate a thousandfold): say so up front.
    defaults.insert(
        reqwest::header::ACCEPT_ENCODING,
        reqwest::header::HeaderValue::from_static("identity"),
    );
    let mut b = reqwest::Client::builder()
        .redirect(redirect_policy(max_redirects))
        .default_headers(defaults)
        .user_agent(concat!("plumb/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true);
    if let Some(ca) = &tls.ca {
        let certs = reqwest::Certificate::from_pem_bundle(ca)
            .map_err(|e| CollectError::Tls(format!("ca bundle: {e}")))?;
        if certs.is_empty() {
            return Err(CollectError::Tls("ca bundle holds no certificate".into()));
        }
        b = b.tls_certs_merge(certs);
    }
    if let Some(id) = &tls.identity {
        let identity = reqwest::Identity::from_pem(id)
            .map_err(|e| CollectError::Tls(format!("client certificate: {e}")))?;
        b = b.identity(identity);
    }
    b.build()
        .map_err(|e| CollectError::Tls(format!("cannot build the HTTP client: {}", chain(&e))))
}

/// Why plumb did not follow a redirect; the whole message is the finding's reason.
#[derive(Debug)]
struct RedirectRefused(String);

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// Follow a redirect only to the host of the configured URL (same scheme and port, or https on that host:
/// headers may carry credentials, and reqwest drops only `Authorization` and cookies across hosts), never from
/// https back to http, never to a URL already visited, and at most `max` times.
fn redirect_policy(max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let next = attempt.url().clone();
        let previous = attempt.previous();
        let (Some(first), Some(last)) = (previous.first(), previous.last()) else {
            return attempt.follow();
        };
        let same_origin = next.scheme() == first.scheme()
            && next.host_str() == first.host_str()
            && next.port_or_known_default() == first.port_or_known_default();
        let upgrade = next.scheme() == "https" && next.host_str() == first.host_str();
        let reason = if next.host_str() != first.host_str() {
            Some(format!(
                "redirected to another host: {} (plumb follows redirects only within the same host)",
                shown(&next)
            ))
        } else if !same_origin && !upgrade {
            Some(format!(
                "redirected to another port or scheme: {} (plumb follows redirects only to the same scheme \
                 and port, or to https on the same host)",
                shown(&next)
            ))
        } else if last.scheme() == "https" && next.scheme() == "http" {
            Some(format!(
                "redirected from https to http: {} (plumb does not downgrade)",
                shown(&next)
            ))
        } else if previous.contains(&next) {
            Some(format!("redirect loop: {}", hops(previous, &next)))
        } else if previous.len() > max {
            Some(format!(
                "more than {max} redirects (max_redirects = {max}): {}",
                hops(previous, &next)
            ))
        } else {
            None
        };
        match reason {
            Some(r) => attempt.error(RedirectRefused(r)),
            None => attempt.follow(),
        }
    })
}

/// The paths of a redirect chain, `/a → /b → /a`; a long chain keeps its first three and last three.
fn hops(previous: &[reqwest::Url], next: &reqwest::Url) -> String {
    let all: Vec<String> = previous.iter().chain([next]).map(path).collect();
    if all.len() <= 8 {
        return all.join(" → ");
    }
    format!(
        "{} → … → {}",
        all[..3].join(" → "),
        all[all.len() - 3..].join(" → ")
    )
}

/// A node-chosen URL as it may appear in a finding: without credentials, at most 200 characters.
fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    truncate(u.as_str(), 200)
}

/// The path and query of a URL, at most 100 characters.
fn path(url: &reqwest::Url) -> String {
    let p = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    truncate(&p, 100)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One successful exchange: what was fetched and the `Content-Type` the node declared.
pub(super) struct Response {
    pub fetched: Fetched,
    pub content_type: Option<String>,
}

/// GET `url`; read at most `max_body` bytes. With `validators`, ask conditionally: `304 Not Modified` is
/// [`Fetched::NotModified`].
pub(super) async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    max_body: u64,
    validators: Option<&Validators>,
    expect: Option<&mut super::Expect<'_>>,
) -> Result<Response, CollectError> {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let conditional = validators.is_some_and(|v| !v.is_empty());
    if let Some(v) = validators {
        if let Some(etag) = &v.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &v.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
        }
    }
    let mut resp = req.send().await.map_err(classify)?;
    let status = resp.status();
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 512)
            .map(str::to_string)
    };
    let got = Validators {
        etag: header(reqwest::header::ETAG),
        last_modified: header(reqwest::header::LAST_MODIFIED),
    };
    let content_type = header(reqwest::header::CONTENT_TYPE);
    if status == reqwest::StatusCode::NOT_MODIFIED && conditional {
        // A 304 may repeat or update the validators; what it leaves out stays as it was.
        let old = validators.cloned().unwrap_or_default();
        return Ok(Response {
            fetched: Fetched::NotModified {
                validators: Validators {
                    etag: got.etag.or(old.etag),
                    last_modified: got.last_modified.or(old.last_modified),
                },
            },
            content_type,
        });
    }
    if !status.is_success() {
        return Err(CollectError::Status {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or_default().to_string(),
        });
    }
    // Asked for identity; anything else is refused unread (a gzip bomb costs nothing).
    for v in resp.headers().get_all(reqwest::header::CONTENT_ENCODING) {
        let v = String::from_utf8_lossy(v.as_bytes());
        if v.split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(CollectError::Encoding(truncate(
                &v.chars().filter(|c| !c.is_control()).collect::<String>(),
                64,
            )));
        }
    }
    if let Some(len) = resp.content_length()
        && len > max_body
    {
        return Err(CollectError::TooLarge { limit: max_body });
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    // The chunks are kept as they came (never copied here), never more than the cap; while they are what `expect`
    // expects, they are compared and dropped instead.
    let mut body = super::Receiving::new(expect);
    let mut len = 0usize;
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        len += chunk.len();
        if len > limit {
            return Err(CollectError::TooLarge { limit: max_body });
        }
        body.push(chunk);
    }
    Ok(Response {
        fetched: body.finish(got),
        content_type,
    })
}

/// The error and its causes, joined: reqwest's own message alone rarely says what went wrong.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// The first error of type `T` in the chain, looking inside `io::Error`s (whose `source` skips what they wrap).
fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(t) = find::<T>(inner)
        {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// A certificate rustls refused, said the way an operator looks for it.
fn certificate_reason(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    let date = |t: &rustls::pki_types::UnixTime| {
        chrono::DateTime::from_timestamp(t.as_secs() as i64, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| format!("{} (UNIX)", t.as_secs()))
    };
    match e {
        C::Expired => "certificate expired".into(),
        C::ExpiredContext { not_after, .. } => {
            format!("certificate expired (not valid after {})", date(not_after))
        }
        C::NotValidYet => "certificate not valid yet".into(),
        C::NotValidYetContext { not_before, .. } => {
            format!(
                "certificate not valid yet (not before {})",
                date(not_before)
            )
        }
        C::UnknownIssuer => {
            "self-signed / unknown issuer: the certificate is not signed by a CA plumb \
                             trusts (give its CA with `ca`)"
                .into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("certificate not valid for this host: {e}")
        }
        other => format!("certificate rejected: {other}"),
    }
}

fn classify(e: reqwest::Error) -> CollectError {
    let msg = chain(&e);
    let lower = msg.to_ascii_lowercase();
    if e.is_timeout() {
        CollectError::Timeout(std::time::Duration::ZERO)
    } else if let Some(r) = find::<RedirectRefused>(&e) {
        CollectError::Redirect(r.0.clone())
    } else if e.is_redirect() {
        CollectError::Redirect(strip_url(&msg))
    } else if let Some(rustls::Error::InvalidCertificate(c)) = find::<rustls::Error>(&e) {
        CollectError::Tls(certificate_reason(c))
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
        || lower.contains("peer is incompatible")
    {
        CollectError::Tls(strip_url(&msg))
    } else if e.is_connect() {
        // The innermost cause says what happened ("Connection refused (os error 111)").
        let inner = msg.rsplit(": ").next().unwrap_or(&msg).to_string();
        CollectError::Connect(inner)
    } else {
        CollectError::Http(strip_url(&msg))
    }
}

/// reqwest puts the URL (with any credentials in it) into messages; findings name the node instead.
fn strip_url(msg: &str) -> String {
    match (msg.find(" for url ("), msg.find("): ")) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &msg[..a], &msg[b + 1..]),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_lose_credentials_and_length() {
        let u = reqwest::Url::parse("http://user:pw@other.example:8080/c?x=1").unwrap();
        assert_eq!(shown(&u), "http://other.example:8080/c?x=1");
        let long = reqwest::Url::parse(&format!("http://h/{}", "a".repeat(500))).unwrap();
        assert!(shown(&long).chars().count() <= 201);
        assert_eq!(path(&u), "/c?x=1");
    }

    #[test]
    fn long_redirect_chains_are_elided() {
        let url = |p: usize| reqwest::Url::parse(&format!("http://h/{p}")).unwrap();
        let previous: Vec<_> = (0..20).map(url).collect();
        assert_eq!(
            hops(&previous, &url(20)),
            "/0 → /1 → /2 → … → /18 → /19 → /20"
        );
        assert_eq!(hops(&previous[..2], &url(0)), "/0 → /1 → /0");
    }
}
