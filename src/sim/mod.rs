//! The fleet simulator: simulated nodes on loopback, each with its own listener (its own port), answering HTTP/1.1
//! (optionally over TLS) with a new connection per request, as a real fleet does. Used by `plumb demo`, the tests
//! and the benchmarks. Each node's routes can be changed while it runs, so tests can make nodes drift or converge.
//! Some behaviors are hostile on purpose (tests/hostile.rs): an endless body, slowloris, a gzip bomb, redirect
//! loops and redirects elsewhere, HTTP/1.0 without a length; [`ServerCert`] gives expired and self-signed
//! certificates.

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

    // Hostile nodes (issue 8): each misbehaves in one way a broken or compromised node can.
    /// 200 with a body that never ends (chunked, 64 KiB chunks of `fill` as fast as the client reads).
    Endless { content_type: String, fill: u8 },
    /// Slowloris: the whole answer, status line and headers included, one byte per `interval`, never ending.
    Dribble { interval: Duration },
    /// A gzip bomb: `Content-Encoding: gzip` sent unasked, with a valid deflate stream (fixed Huffman codes,
    /// about 1:160) that inflates to `inflated` bytes of `fill`; `Content-Length` is the compressed size. The
    /// gzip trailer (CRC and size) is left out: a client that inflates fails only after the whole size.
    GzipBomb {
        content_type: String,
        fill: u8,
        inflated: u64,
    },
    /// A redirect (`status` 301, 302, 303, 307 or 308) to `location`, as sent (relative or absolute).
    Redirect { status: u16, location: String },
    /// An HTTP/1.0 answer without `Content-Length`: the body ends when the connection closes.
    Http10 {
        content_type: String,
        body: Arc<Vec<u8>>,
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

    /// A redirect to `location` with `302 Found`.
    pub fn redirect(location: impl Into<String>) -> Behavior {
        Behavior::Redirect {
            status: 302,
            location: location.into(),
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

/// Which server certificate a simulated fleet presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerCert {
    /// Signed by the generated CA, valid now.
    #[default]
    Valid,
    /// Signed by the generated CA, but expired: valid from 2020-01-01 to 2021-01-01.
    Expired,
    /// Self-signed (no CA signs it); the generated CA (`ca_pem`) does not make it trusted.
    SelfSigned,
}

impl TlsMaterial {
    /// Generate a CA, a server certificate and a client certificate. `require_client_cert` makes the server
    /// demand a client certificate signed by the CA.
    pub fn generate(require_client_cert: bool) -> Result<TlsMaterial, String> {
        TlsMaterial::generate_with(require_client_cert, ServerCert::Valid)
    }

    /// [`TlsMaterial::generate`] with the server certificate of a hostile or broken node.
    pub fn generate_with(
        require_client_cert: bool,
        server_cert: ServerCert,
    ) -> Result<TlsMaterial, String> {
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
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(|x| e(&x))?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "plumb simulator node");
        if server_cert == ServerCert::Expired {
            leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let leaf = match server_cert {
            ServerCert::SelfSigned => leaf_params.self_signed(&leaf_key),
            ServerCert::Valid | ServerCert::Expired => leaf_params.signed_by(&leaf_key, &issuer),
        }
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
        let chain = match server_cert {
            ServerCert::SelfSigned => vec![leaf.der().clone()],
            ServerCert::Valid | ServerCert::Expired => {
                vec![leaf.der().clone(), ca_cert.der().clone()]
            }
        };
        let server = builder
            .with_single_cert(chain, key_der)
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
        Some(Behavior::Endless { content_type, fill }) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
            chunk.extend(std::iter::repeat_n(fill, 64 * 1024));
            chunk.extend_from_slice(b"\r\n");
            while s.write_all(&chunk).await.is_ok() {}
            return;
        }
        Some(Behavior::Dribble { interval }) => {
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let body = std::iter::repeat(b"1\r\n \r\n").flat_map(|c| c.iter());
            for b in head.iter().chain(body) {
                if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        }
        Some(Behavior::GzipBomb {
            content_type,
            fill,
            inflated,
        }) => {
            let bomb = GzipBomb::new(fill, inflated);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bomb.len()
            );
            if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&bomb.head).await.is_err()
            {
                return;
            }
            let per_write = (64 * 1024 / bomb.pattern.len()) as u64;
            let block = bomb.pattern.repeat(per_write as usize);
            let mut left = bomb.repeats;
            while left > 0 {
                let n = left.min(per_write);
                let bytes = &block[..n as usize * bomb.pattern.len()];
                if s.write_all(bytes).await.is_err() {
                    return;
                }
                left -= n;
            }
            let _ = s.write_all(&bomb.tail).await;
            let _ = s.flush().await;
        }
        Some(Behavior::Redirect { status, location }) => {
            let head = format!(
                "HTTP/1.1 {status} Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.flush().await;
        }
        Some(Behavior::Http10 { content_type, body }) => {
            let head = format!("HTTP/1.0 200 OK\r\nContent-Type: {content_type}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_ok() {
                let _ = s.write_all(&body).await;
                let _ = s.flush().await;
            }
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

/// A gzip stream that inflates to many copies of one byte, in three parts: `head`, then `pattern` `repeats`
/// times, then `tail`. Deflate with the fixed Huffman codes: one literal, then matches of length 258 at
/// distance 1 (13 bits each; eight of them fill 13 bytes, so the middle is one 13-byte pattern repeated).
pub struct GzipBomb {
    pub head: Vec<u8>,
    pub pattern: Vec<u8>,
    pub repeats: u64,
    pub tail: Vec<u8>,
}

/// Deflate's bit order: fields least significant bit first, Huffman codes most significant bit first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        for i in 0..count {
            self.acc |= ((value >> i) & 1) << self.n;
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                (self.acc, self.n) = (0, 0);
            }
        }
    }
    fn code(&mut self, code: u32, len: u32) {
        for i in (0..len).rev() {
            self.put((code >> i) & 1, 1);
        }
    }
    fn literal(&mut self, byte: u8) {
        match byte {
            0..=143 => self.code(0x30 + u32::from(byte), 8),
            _ => self.code(0x190 + u32::from(byte) - 144, 9),
        }
    }
    /// Length 258 (code 285, no extra bits), distance 1 (code 0, no extra bits).
    fn repeat(&mut self) {
        self.code(0xC5, 8);
        self.code(0, 5);
    }
    fn aligned(&self) -> bool {
        self.n == 0
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

impl GzipBomb {
    /// The stream for `inflated` bytes of `fill`.
    pub fn new(fill: u8, inflated: u64) -> GzipBomb {
        let mut w = Bits::default();
        // gzip header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
        w.out
            .extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        w.put(1, 1); // last block
        w.put(1, 2); // fixed Huffman codes
        let (mut matches, literals) = if inflated == 0 {
            (0, 0)
        } else {
            w.literal(fill);
            ((inflated - 1) / 258, (inflated - 1) % 258)
        };
        while matches > 0 && !w.aligned() {
            w.repeat();
            matches -= 1;
        }
        let (head, pattern, repeats, mut w) = if w.aligned() && matches >= 8 {
            let mut p = Bits::default();
            for _ in 0..8 {
                p.repeat();
            }
            let repeats = matches / 8;
            matches %= 8;
            (w.finish(), p.finish(), repeats, Bits::default())
        } else {
            (Vec::new(), Vec::new(), 0, w)
        };
        for _ in 0..matches {
            w.repeat();
        }
        for _ in 0..literals {
            w.literal(fill);
        }
        w.code(0, 7); // end of block
        GzipBomb {
            head,
            pattern,
            repeats,
            tail: w.finish(),
        }
    }

    /// The compressed size.
    pub fn len(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.pattern.len() as u64 * self.repeats
    }

    /// Never: even an empty stream has its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole stream in memory (small bombs, tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = self.head.clone();
        for _ in 0..self.repeats {
            v.extend_from_slice(&self.pattern);
        }
        v.extend_from_slice(&self.tail);
        v
    }
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

    #[test]
    fn the_gzip_bomb_is_small_and_its_layout_adds_up() {
        for inflated in [0u64, 1, 2, 259, 260, 258 * 9 + 1, 258 * 100 + 77, 1 << 20] {
            let b = GzipBomb::new(b' ', inflated);
            assert_eq!(b.len(), b.to_vec().len() as u64, "{inflated}");
            assert_eq!(&b.to_vec()[..3], &[0x1f, 0x8b, 8]);
        }
        // About 1:160: 1 GiB in under 7 MB.
        let b = GzipBomb::new(b' ', 1 << 30);
        assert!(b.len() < 7_000_000, "{}", b.len());
        assert_eq!(b.pattern.len(), 13);
    }
}
