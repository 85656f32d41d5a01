//! Collect: fetch one config of one node over http, from a file or through a command. The only network I/O of a scan.
//!
//! Every failure is a [`CollectError`] with a reason a human can act on; the scan turns it into an `unreachable`
//! finding for that node alone. Retries (connect errors, timeouts, 5xx) back off exponentially with jitter.

mod command;
mod file;
mod http;

use crate::config::{ConfigPlan, Plan, SourceSpec};
use crate::inventory::Node;
use std::collections::HashMap;
use std::time::Duration;

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// The whole fetch took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection: refused, unreachable, DNS.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The TLS handshake failed: certificate not trusted, expired, wrong name.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The server answered with an error status.
    #[error("HTTP status {code}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    Status { code: u16, reason: String },
    /// The body was larger than `max_body`.
    #[error("body larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    /// Too many redirects, or a redirect plumb will not follow.
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// Any other HTTP-level failure (malformed response, reset connection).
    #[error("HTTP error: {0}")]
    Http(String),
    /// A file source could not be read.
    #[error("cannot read {path}: {message}")]
    File { path: String, message: String },
    /// A command could not be started.
    #[error("cannot run `{program}`: {message}")]
    Spawn { program: String, message: String },
    /// A command exited non-zero; the last line of its stderr says why.
    #[error("`{program}` exited with {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Exit {
        program: String,
        status: String,
        stderr: String,
    },
    /// A node value cannot be used here (argument injection, path escape, missing var).
    #[error("refused node value: {0}")]
    Refused(String),
}

impl CollectError {
    /// Worth another attempt: the peer may answer next time.
    pub fn is_transient(&self) -> bool {
        match self {
            CollectError::Timeout(_) | CollectError::Connect(_) => true,
            CollectError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            CollectError::Http(_) => true,
            _ => false,
        }
    }
}

/// What a node said it can be asked with next time: `ETag` and `Last-Modified` of its last answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// Neither header was given.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// A successful fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The content, with the validators the node sent along (http only).
    Body {
        bytes: Vec<u8>,
        validators: Validators,
    },
    /// `304 Not Modified` to a conditional GET: the content is the one the validators were taken from.
    NotModified { validators: Validators },
}

/// Build the HTTP client plumb uses for a TLS setting (the fleet benchmark's raw sweep uses the same one).
pub fn http_client(
    tls: &crate::config::TlsSettings,
    max_redirects: usize,
) -> Result<reqwest::Client, CollectError> {
    http::client(tls, max_redirects)
}

/// (CA bundle, client identity, max redirects): configs that agree share one client.
type ClientKey = (Option<Vec<u8>>, Option<Vec<u8>>, usize);

/// Fetches configs; holds one pooled HTTP client per distinct TLS setting.
pub struct Collector {
    clients: HashMap<usize, reqwest::Client>,
    root: std::path::PathBuf,
}

impl Collector {
    /// Build the HTTP clients the plan's configs need.
    pub fn new(plan: &Plan) -> Result<Collector, CollectError> {
        let mut by_setting: HashMap<ClientKey, reqwest::Client> = HashMap::new();
        let mut clients = HashMap::new();
        for (i, c) in plan.configs.iter().enumerate() {
            if let SourceSpec::Http {
                tls, max_redirects, ..
            } = &c.source
            {
                let key = (tls.ca.clone(), tls.identity.clone(), *max_redirects);
                let client = match by_setting.get(&key) {
                    Some(cl) => cl.clone(),
                    None => {
                        let cl = http::client(tls, *max_redirects)?;
                        by_setting.insert(key, cl.clone());
                        cl
                    }
                };
                clients.insert(i, client);
            }
        }
        Ok(Collector {
            clients,
            root: plan.root.clone(),
        })
    }

    /// Fetch `config` from `node`, with retries, within the config's timeout per attempt.
    pub async fn fetch(
        &self,
        plan: &Plan,
        config: &ConfigPlan,
        node: &Node,
    ) -> Result<Vec<u8>, CollectError> {
        match self.fetch_conditional(plan, config, node, None).await? {
            Fetched::Body { bytes, .. } => Ok(bytes),
            Fetched::NotModified { .. } => Err(CollectError::Status {
                code: 304,
                reason: "Not Modified".into(),
            }),
        }
    }

    /// Fetch like [`Collector::fetch`]; over http, with `validators` the request is conditional
    /// (`If-None-Match`, `If-Modified-Since`) and a `304 Not Modified` answer is [`Fetched::NotModified`].
    pub async fn fetch_conditional(
        &self,
        plan: &Plan,
        config: &ConfigPlan,
        node: &Node,
        validators: Option<&Validators>,
    ) -> Result<Fetched, CollectError> {
        let index = plan
            .configs
            .iter()
            .position(|c| std::ptr::eq(c, config))
            .unwrap_or(usize::MAX);
        let mut attempt = 0u32;
        loop {
            let result = tokio::time::timeout(
                config.timeout,
                self.fetch_once(index, config, node, validators),
            )
            .await;
            let err = match result {
                Ok(Ok(fetched)) => return Ok(fetched),
                Ok(Err(e)) => e,
                Err(_) => CollectError::Timeout(config.timeout),
            };
            if attempt >= config.retries || !err.is_transient() {
                return Err(err);
            }
            tokio::time::sleep(backoff(plan.scan.backoff, attempt, &node.name)).await;
            attempt += 1;
        }
    }

    async fn fetch_once(
        &self,
        index: usize,
        config: &ConfigPlan,
        node: &Node,
        validators: Option<&Validators>,
    ) -> Result<Fetched, CollectError> {
        let body = |bytes| Fetched::Body {
            bytes,
            validators: Validators::default(),
        };
        match &config.source {
            SourceSpec::Http { url, headers, .. } => {
                let client = self
                    .clients
                    .get(&index)
                    .ok_or_else(|| CollectError::Http("no client for this config".into()))?;
                let url = url.render(node).map_err(CollectError::Refused)?;
                let mut hs = Vec::with_capacity(headers.len());
                for (k, v) in headers {
                    hs.push((k.clone(), v.render(node).map_err(CollectError::Refused)?));
                }
                http::get(client, &url, &hs, config.max_body, validators).await
            }
            SourceSpec::File {
                path,
                allowed_roots,
            } => file::read(&self.root, path, allowed_roots, node, config.max_body)
                .await
                .map(body),
            SourceSpec::Command { argv } => command::run(&self.root, argv, node, config.max_body)
                .await
                .map(body),
        }
    }
}

/// `base * 2^attempt`, with ±25% jitter derived from the node name so retries of a fleet spread out.
fn backoff(base: Duration, attempt: u32, node: &str) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(10));
    let h = blake3::hash(format!("{node}/{attempt}/{:?}", std::time::SystemTime::now()).as_bytes());
    let r = f64::from(h.as_bytes()[0]) / 255.0; // 0..=1
    exp.mul_f64(0.75 + r * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter() {
        let b = Duration::from_millis(100);
        for a in 0..4 {
            let d = backoff(b, a, "n");
            let nominal = 100.0 * f64::from(1u32 << a);
            let ms = d.as_secs_f64() * 1000.0;
            assert!(
                ms >= nominal * 0.74 && ms <= nominal * 1.26,
                "attempt {a}: {ms}"
            );
        }
    }

    #[test]
    fn transient_errors() {
        assert!(CollectError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(
            CollectError::Status {
                code: 503,
                reason: String::new()
            }
            .is_transient()
        );
        assert!(
            !CollectError::Status {
                code: 404,
                reason: String::new()
            }
            .is_transient()
        );
        assert!(!CollectError::Tls("x".into()).is_transient());
        assert!(!CollectError::TooLarge { limit: 1 }.is_transient());
    }
}
