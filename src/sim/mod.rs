//! The fleet simulator: simulated nodes on loopback, each with its own listener (its own port), answering HTTP/1.1
//! (optionally over TLS) with a new connection per request, as a real fleet does. Used by `plumb demo`, the tests
//! and the benchmarks. Each node's routes can be changed while it runs, so tests can make nodes drift or converge.

pub mod demo;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// How a simulated node answers one path.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with this body.
    Serve {
        content_type: String,
        body: Arc<Vec<u8>>,
    },
    /// This status with a short body.
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
    /// Answer slowly: one chunk of the body per interval.
    Slow {
        body: Arc<Vec<u8>>,
        interval: Duration,
    },
    /// 200 with this body and its validators (`ETag`, `Last-Modified` headers); a conditional request they
    /// match (`If-None-Match` naming the etag or `*`; else `If-Modified-Since` equal to `last_modified`) gets
    /// `304 Not Modified` with no body.
    Tagged {
        content_type: String,
        body: Arc<Vec<u8>>,
        etag: Option<String>,
        last_modified: Option<String>,
    },
    /// 200 with a body made anew for each request: fleets too large to hold every document in memory. With an
    /// `etag`, answered like [`Behavior::Tagged`] (`304 Not Modified` to a matching `If-None-Match`).
    Generated {
        content_type: String,
        make: Generator,
        etag: Option<String>,
    },
}

/// Makes a body on request.
#[derive(Clone)]
pub struct Generator(pub Arc<dyn Fn() -> Vec<u8> + Send + Sync>);

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Generator")
    }
}

impl Behavior {
    /// A 200 answer with `body`.
    pub fn serve(content_type: &str, body: impl Into<Vec<u8>>) -> Behavior {
        Behavior::Serve {
            content_type: content_type.to_string(),
            body: Arc::new(body.into()),
        }
    }

    /// A 200 answer with `body` and an `ETag` header, honouring `If-None-Match`.
    pub fn tagged(content_type: &str, body: impl Into<Vec<u8>>, etag: &str) -> Behavior {
        Behavior::Tagged {
            content_type: content_type.to_string(),
            body: Arc::new(body.into()),
            etag: Some(etag.to_string()),
            last_modified: None,
        }
    }
}

/// What a running fleet answered, across all its nodes.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests read (any path, any answer).
    pub requests: std::sync::atomic::AtomicUsize,
    /// `304 Not Modified` answers.
    pub not_modified: std::sync::atomic::AtomicUsize,
}

/// One node to simulate.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Where to listen; an ephemeral loopback port when `None` or when the address is taken.
    pub bind: Option<SocketAddr>,
    /// Path → behavior; other paths answer 404.
    pub routes: HashMap<String, Behavior>,
    /// Do not listen at all: connections are refused.
    pub down: bool,
}

type Routes = Arc<RwLock<HashMap<String, Behavior>>>;

/// A running simulated node.
#[derive(Debug, Clone)]
pub struct RunningNode {
    pub name: String,
    pub addr: SocketAddr,
    routes: Routes,
}

/// A running fleet; dropping it stops every node.
#[derive(Debug)]
pub struct Fleet {
    pub nodes: Vec<RunningNode>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Requests answered so far, and how many of them were `304 Not Modified`.
    pub fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.requests.load(Relaxed),
            self.stats.not_modified.load(Relaxed),
        )
    }

    /// The address of a node.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.nodes.iter().find(|n| n.name == name).map(|n| n.addr)
    }

    /// Change how a node answers a path, while it runs.
    pub fn set(&self, name: &str, path: &str, behavior: Behavior) -> bool {
        match self.nodes.iter().find(|n| n.name == name) {
            Some(n) => {
                if let Ok(mut r) = n.routes.write() {
                    r.insert(path.to_string(), behavior);
                }
                true
            }
            None => false,
        }
    }
}

/// TLS material for a simulated fleet: a fresh CA and a server certificate for 127.0.0.1 and localhost.
pub struct TlsMaterial {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
    /// A client certificate and key signed by the same CA, PEM, for mutual-TLS tests.
    pub client_pem: String,
}

impl TlsMaterial {
    /// Generate a CA, a server certificate and a client certificate. `require_client_cert` makes the server
    /// demand a client certificate signed by the CA.
    pub fn generate(require_client_cert: bool) -> Result<TlsMaterial, String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let e = |m: &dyn std::fmt::Display| m.to_string();
        let ca_key = KeyPair::generate().map_err(|x| e(&x))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|x| e(&x))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "plumb simulator CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|x| e(&x))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().map_err(|x| e(&x))?;
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|x| e(&x))?
            .signed_by(&leaf_key, &issuer)
            .map_err(|x| e(&x))?;
        let client_key = KeyPair::generate().map_err(|x| e(&x))?;
        let mut client_params =
            CertificateParams::new(vec!["plumb-client".to_string()]).map_err(|x| e(&x))?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "plumb-client");
        let client = client_params
            .signed_by(&client_key, &issuer)
            .map_err(|x| e(&x))?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|x| e(&x))?;
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca_cert.der().clone()).map_err(|x| e(&x))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|x| e(&x))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let server = builder
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key_der)
            .map_err(|x| e(&x))?;
        Ok(TlsMaterial {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
            client_pem: format!("{}{}", client.pem(), client_key.serialize_pem()),
        })
    }
}

/// Start every node of `specs`; `tls` serves them all over TLS.
pub async fn start(
    specs: Vec<NodeSpec>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<Fleet> {
    let mut fleet = Fleet {
        nodes: Vec::with_capacity(specs.len()),
        tasks: Vec::with_capacity(specs.len()),
        stats: Arc::new(Stats::default()),
    };
    for spec in specs {
        let listener = match spec.bind {
            Some(a) => match TcpListener::bind(a).await {
                Ok(l) => l,
                Err(_) => TcpListener::bind("127.0.0.1:0").await?,
            },
            None => TcpListener::bind("127.0.0.1:0").await?,
        };
        let addr = listener.local_addr()?;
        let routes: Routes = Arc::new(RwLock::new(spec.routes));
        if spec.down {
            // Hold nothing on the port: connecting is refused.
            drop(listener);
        } else {
            let (r, tls, stats) = (routes.clone(), tls.clone(), fleet.stats.clone());
            fleet
                .tasks
                .push(tokio::spawn(serve(listener, r, tls, stats)));
        }
        fleet.nodes.push(RunningNode {
            name: spec.name,
            addr,
            routes,
        });
    }
    Ok(fleet)
}

async fn serve(
    listener: TcpListener,
    routes: Routes,
    tls: Option<Arc<rustls::ServerConfig>>,
    stats: Arc<Stats>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = sock.set_nodelay(true);
        let routes = routes.clone();
        let acceptor = acceptor.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(a) => {
                    if let Ok(s) = a.accept(sock).await {
                        handle(s, routes, &stats).await;
                    }
                }
                None => handle(sock, routes, &stats).await,
            }
        });
    }
}

/// The value of request header `name` (case-insensitive) in `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Whether a conditional request matches the validators (RFC 9110: `If-None-Match` wins over
/// `If-Modified-Since`; etags compare weakly).
fn not_modified(head: &str, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
    if let Some(inm) = header(head, "if-none-match") {
        return etag.is_some_and(|e| {
            inm.split(',')
                .any(|t| t.trim() == "*" || weak(t) == weak(e))
        });
    }
    match (header(head, "if-modified-since"), last_modified) {
        (Some(ims), Some(lm)) => ims == lm,
        _ => false,
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, routes: Routes, stats: &Stats) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    stats
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let behavior = routes.read().ok().and_then(|r| r.get(&path).cloned());
    match behavior {
        Some(Behavior::Tagged {
            content_type,
            body,
            etag,
            last_modified,
        }) => {
            let mut extra = String::new();
            if let Some(e) = &etag {
                extra.push_str(&format!("ETag: {e}\r\n"));
            }
            if let Some(l) = &last_modified {
                extra.push_str(&format!("Last-Modified: {l}\r\n"));
            }
            if not_modified(&head, etag.as_deref(), last_modified.as_deref()) {
                stats
                    .not_modified
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let head = format!("HTTP/1.1 304 Not Modified\r\n{extra}Connection: close\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.flush().await;
            } else {
                respond_with(&mut s, 200, &content_type, &extra, &body).await
            }
        }
        Some(Behavior::Generated {
            content_type,
            make,
            etag: None,
        }) => {
            let body = (make.0)();
            respond(&mut s, 200, &content_type, &body).await
        }
        Some(Behavior::Generated {
            content_type,
            make,
            etag: Some(etag),
        }) => {
            let extra = format!("ETag: {etag}\r\n");
            if not_modified(&head, Some(&etag), None) {
                stats
                    .not_modified
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let head = format!("HTTP/1.1 304 Not Modified\r\n{extra}Connection: close\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.flush().await;
            } else {
                let body = (make.0)();
                respond_with(&mut s, 200, &content_type, &extra, &body).await
            }
        }
        None => respond(&mut s, 404, "text/plain", b"not found\n").await,
        Some(Behavior::Status(code)) => {
            respond(
                &mut s,
                code,
                "text/plain",
                format!("status {code}\n").as_bytes(),
            )
            .await
        }
        Some(Behavior::Serve { content_type, body }) => {
            respond(&mut s, 200, &content_type, &body).await
        }
        Some(Behavior::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some(Behavior::Slow { body, interval }) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for b in body.chunks(1) {
                if s.write_all(b).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        }
    }
    let _ = s.shutdown().await;
}

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, code: u16, content_type: &str, body: &[u8]) {
    respond_with(s, code, content_type, "", body).await
}

/// Answer with `extra` header lines (each ending in CRLF).
async fn respond_with<S: AsyncWrite + Unpin>(
    s: &mut S,
    code: u16,
    content_type: &str,
    extra: &str,
    body: &[u8],
) {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_ok() {
        let _ = s.write_all(body).await;
        let _ = s.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_requests_match_as_rfc_9110_says() {
        let req = |h: &str| format!("GET /c HTTP/1.1\r\nHost: x\r\n{h}\r\n");
        let (e, lm) = (Some("\"v1\""), Some("Wed, 21 Oct 2026 07:28:00 GMT"));
        assert!(not_modified(&req("If-None-Match: \"v1\"\r\n"), e, None));
        assert!(not_modified(&req("if-none-match: W/\"v1\"\r\n"), e, None));
        assert!(not_modified(
            &req("If-None-Match: \"v0\", \"v1\"\r\n"),
            e,
            None
        ));
        assert!(not_modified(&req("If-None-Match: *\r\n"), e, None));
        assert!(!not_modified(&req("If-None-Match: \"v2\"\r\n"), e, None));
        assert!(!not_modified(&req(""), e, lm));
        assert!(not_modified(
            &req("If-Modified-Since: Wed, 21 Oct 2026 07:28:00 GMT\r\n"),
            None,
            lm
        ));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &req("If-None-Match: \"v2\"\r\nIf-Modified-Since: Wed, 21 Oct 2026 07:28:00 GMT\r\n"),
            e,
            lm
        ));
        // No etag at all: If-None-Match never matches (not even `*`, there is no representation tag to match).
        assert!(!not_modified(&req("If-None-Match: \"v1\"\r\n"), None, lm));
    }
}
