//! The `http` source: GET with headers, a body size cap, TLS verified by default with optional extra trust roots
//! and a client certificate, and a bounded number of redirects.

use super::{CollectError, Fetched, Validators};
use crate::config::TlsSettings;

/// Build a pooled client for one TLS setting.
pub(super) fn client(
    tls: &TlsSettings,
    max_redirects: usize,
) -> Result<reqwest::Client, CollectError> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(max_redirects))
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

/// GET `url`; read at most `max_body` bytes. With `validators`, ask conditionally: `304 Not Modified` is
/// [`Fetched::NotModified`].
pub(super) async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    max_body: u64,
    validators: Option<&Validators>,
) -> Result<Fetched, CollectError> {
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
    if status == reqwest::StatusCode::NOT_MODIFIED && conditional {
        // A 304 may repeat or update the validators; what it leaves out stays as it was.
        let old = validators.cloned().unwrap_or_default();
        return Ok(Fetched::NotModified {
            validators: Validators {
                etag: got.etag.or(old.etag),
                last_modified: got.last_modified.or(old.last_modified),
            },
        });
    }
    if !status.is_success() {
        return Err(CollectError::Status {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or_default().to_string(),
        });
    }
    if let Some(len) = resp.content_length()
        && len > max_body
    {
        return Err(CollectError::TooLarge { limit: max_body });
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(8192).min(max_body) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() as u64 + chunk.len() as u64 > max_body {
            return Err(CollectError::TooLarge { limit: max_body });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body {
        bytes: body,
        validators: got,
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

fn classify(e: reqwest::Error) -> CollectError {
    let msg = chain(&e);
    let lower = msg.to_ascii_lowercase();
    if e.is_timeout() {
        CollectError::Timeout(std::time::Duration::ZERO)
    } else if e.is_redirect() {
        CollectError::Redirect(msg)
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
