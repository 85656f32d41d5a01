//! Collect: fetch one config of one node over http, from a file or through a command. The only network I/O of a scan.
//!
//! Every failure is a [`CollectError`] with a reason a human can act on; the scan turns it into an `unreachable`
//! finding for that node alone. Retries (connect errors, timeouts, 5xx) back off exponentially with jitter.
//! A hostile node is bounded here: each attempt is cut at the timeout, bodies at `max_body`; compressed bodies,
//! redirects off the host and foreign content types that do not parse are refused with a reason (see `http.rs`).

mod command;
mod file;
mod http;

use crate::config::{ConfigPlan, Plan, SourceSpec};
use crate::inventory::Node;
use crate::normalize::Format;
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
    #[error("body exceeds max_body {} (the {limit}-byte limit)", human_size(*limit))]
    TooLarge { limit: u64 },
    /// Too many redirects, a loop, or a redirect plumb will not follow (another host, https to http); the
    /// message says which.
    #[error("{0}")]
    Redirect(String),
    /// The node sent a `Content-Encoding` plumb did not ask for (it asks for identity and never decompresses).
    #[error("Content-Encoding {0} refused (plumb asks for identity and never decompresses)")]
    Encoding(String),
    /// The node declared a `Content-Type` of another format and the body does not parse as the config's.
    #[error("Content-Type {declared}, expected {expected}: {error}")]
    ContentType {
        declared: String,
        expected: String,
        error: String,
    },
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

/// A size as plumb.toml writes it: `1 MiB`, `512 KiB`, else bytes.
fn human_size(n: u64) -> String {
    match n {
        0 => "0 bytes".into(),
        n if n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Whether a declared `Content-Type` names another format than `format`: `text/plain`,
/// `application/octet-stream` and no type at all are neutral, line formats take any `text/*`, text takes
/// anything.
fn foreign_content_type(declared: &str, format: Format) -> bool {
    let essence = declared
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if matches!(
        essence.as_str(),
        "" | "text/plain" | "application/octet-stream" | "*/*"
    ) {
        return false;
    }
    match format {
        Format::Json => !essence.ends_with("json"),
        Format::Yaml => !(essence.contains("yaml") || essence.contains("yml")),
        Format::Toml => !essence.contains("toml"),
        Format::Ini | Format::Kv => !essence.starts_with("text/") || essence.contains("html"),
        Format::Text => false,
    }
}

/// A format's name in a finding.
fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "JSON",
        Format::Yaml => "YAML",
        Format::Toml => "TOML",
        Format::Ini => "INI",
        Format::Kv => "key=value text",
        Format::Text => "text",
    }
}

/// A node may label its config loosely (JSON as `text/html` is common); the declared type matters only when the
/// body does not parse: then the finding names it, since an error or login page served with status 200 is the
/// usual cause. Parsing here happens only for foreign types; a panic is the same refusal.
fn check_content_type(
    bytes: &Body,
    declared: Option<&str>,
    format: Format,
) -> Result<(), CollectError> {
    let Some(declared) = declared.filter(|d| foreign_content_type(d, format)) else {
        return Ok(());
    };
    let whole = bytes.contiguous();
    let parsed = std::panic::catch_unwind(|| crate::normalize::parse(format, &whole).map(drop));
    let error = match parsed {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "plumb could not parse it (internal error)".to_string(),
    };
    let declared: String = declared
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    Err(CollectError::ContentType {
        declared,
        expected: format_name(format).to_string(),
        error,
    })
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

/// Fetched content: the chunks as they arrived. An HTTP body is never copied into one buffer unless something
/// needs it whole (a parse): a warm scan or a byte-layout match reads the chunks where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    chunks: Vec<bytes::Bytes>,
    len: usize,
}

impl Body {
    /// A body from chunks.
    pub fn from_chunks(chunks: Vec<bytes::Bytes>) -> Body {
        let len = chunks.iter().map(bytes::Bytes::len).sum();
        Body { chunks, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn chunks(&self) -> &[bytes::Bytes] {
        &self.chunks
    }

    /// The whole body in one slice: borrowed when it came in one chunk, else copied once.
    pub fn contiguous(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.chunks.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [one] => std::borrow::Cow::Borrowed(one),
            many => std::borrow::Cow::Owned(many.concat()),
        }
    }

    /// The whole body as a vector.
    pub fn into_vec(self) -> Vec<u8> {
        match self.chunks.len() {
            1 => self
                .chunks
                .into_iter()
                .next()
                .map(Vec::from)
                .unwrap_or_default(),
            _ => self.chunks.concat(),
        }
    }

    /// blake3 of the whole body.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for c in &self.chunks {
            h.update(c);
        }
        *h.finalize().as_bytes()
    }

    /// Whether the body is exactly `parts`, one after another.
    pub fn equals_concat<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> bool {
        let mut chunks = self.chunks.iter();
        let mut cur: &[u8] = &[];
        for mut part in parts {
            while !part.is_empty() {
                if cur.is_empty() {
                    match chunks.next() {
                        Some(c) => cur = c,
                        None => return false,
                    }
                    continue;
                }
                let n = cur.len().min(part.len());
                if cur[..n] != part[..n] {
                    return false;
                }
                cur = &cur[n..];
                part = &part[n..];
            }
        }
        cur.is_empty() && chunks.all(|c| c.is_empty())
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::from_chunks(vec![bytes::Bytes::from(v)])
    }
}

/// Bodies a fetch expects, compared with each chunk as it arrives (while the chunk is still in cache) instead of
/// being kept: a body that is exactly one of them is [`Fetched::AsExpected`] and costs no memory; one that is none is
/// handed back whole as [`Fetched::Body`], the part that matched rebuilt from the candidate it matched. Each
/// candidate is given as parts, one after another; at most [`Expect::MAX`] candidates are expected (those after are
/// not, and such a body is read whole). Only bodies known to be valid content for the config's format may be
/// expected: an expected body is not checked against its `Content-Type` again.
///
/// The candidates' state is held inline and their parts in one vector, so that each chunk reaches the parts it is
/// compared with in one step: with hundreds of fetches in flight, a fetch's state is out of cache by the time its
/// next chunk comes.
#[derive(Debug)]
pub struct Expect<'a> {
    /// Every candidate's parts, one candidate after another.
    parts: Vec<&'a [u8]>,
    /// Per candidate, the first `count`: where its parts end in `parts`, and (part, offset in it) of its next byte
    /// (`None` once it disagreed).
    candidates: [(usize, Option<(usize, usize)>); Expect::MAX],
    count: usize,
    /// Bytes fed that every live candidate agrees with.
    fed: usize,
    /// Once none agrees: one that agreed with the `fed` bytes before.
    witness: Option<usize>,
}

impl<'a> Expect<'a> {
    /// The most candidates a fetch expects.
    pub const MAX: usize = 4;

    pub fn new<P: IntoIterator<Item = &'a [u8]>>(
        candidates: impl IntoIterator<Item = P>,
    ) -> Expect<'a> {
        let mut e = Expect {
            // Enough for two candidates with a few slots each without growing.
            parts: Vec::with_capacity(16),
            candidates: [(0, None); Expect::MAX],
            count: 0,
            fed: 0,
            witness: None,
        };
        for parts in candidates.into_iter().take(Expect::MAX) {
            e.parts.extend(parts);
            e.candidates[e.count] = (e.parts.len(), Some((0, 0)));
            e.count += 1;
        }
        e
    }

    /// Whether no candidate was given.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Candidate `i`'s parts.
    fn parts(&self, i: usize) -> &[&'a [u8]] {
        let from = i.checked_sub(1).map_or(0, |p| self.candidates[p].0);
        &self.parts[from..self.candidates[i].0]
    }

    /// Start over (a retried fetch).
    fn reset(&mut self) {
        self.candidates[..self.count]
            .iter_mut()
            .for_each(|c| c.1 = Some((0, 0)));
        self.fed = 0;
        self.witness = None;
    }

    /// The first candidate still agreeing.
    fn live(&self) -> Option<usize> {
        self.candidates[..self.count]
            .iter()
            .position(|c| c.1.is_some())
    }

    /// Compare the next chunk; whether some candidate agrees with everything fed so far. When none does, nothing
    /// of this chunk is counted: [`Expect::prefix`] still gives the bytes before it, from a candidate that agreed
    /// with them (`witness`).
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let witness = self.live();
        let mut alive = false;
        let mut from = 0;
        for (end, at) in &mut self.candidates[..self.count] {
            if let Some(pos) = *at {
                *at = advance(&self.parts[from..*end], pos, chunk);
                alive |= at.is_some();
            }
            from = *end;
        }
        if !alive {
            self.witness = witness;
            return false;
        }
        self.fed += chunk.len();
        true
    }

    /// The candidate that everything fed equals, whole.
    fn complete(&self) -> Option<usize> {
        (0..self.count).find(|&i| {
            self.candidates[i].1.is_some_and(|(part, off)| {
                off == 0
                    && self
                        .parts(i)
                        .get(part..)
                        .is_some_and(|rest| rest.iter().all(|p| p.is_empty()))
            })
        })
    }

    /// The bytes fed so far (which some candidate agreed with), rebuilt from that candidate.
    fn prefix(&self) -> Vec<u8> {
        let Some(i) = self.live().or(self.witness) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.fed);
        for p in self.parts(i) {
            let n = p.len().min(self.fed - out.len());
            out.extend_from_slice(&p[..n]);
            if out.len() == self.fed {
                break;
            }
        }
        out
    }
}

/// A body as its chunks come in: kept, or while they are what an [`Expect`] expects, compared and dropped.
pub(crate) struct Receiving<'e, 'a> {
    expect: Option<&'e mut Expect<'a>>,
    chunks: Vec<bytes::Bytes>,
}

impl<'e, 'a> Receiving<'e, 'a> {
    pub(crate) fn new(expect: Option<&'e mut Expect<'a>>) -> Receiving<'e, 'a> {
        Receiving {
            expect,
            chunks: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, chunk: bytes::Bytes) {
        if chunk.is_empty() {
            return;
        }
        if let Some(e) = self.expect.as_deref_mut() {
            if e.feed(&chunk) {
                return;
            }
            // Not what was expected: the part that was, rebuilt, then the rest as it comes.
            let prefix = e.prefix();
            if !prefix.is_empty() {
                self.chunks.push(bytes::Bytes::from(prefix));
            }
            self.expect = None;
        }
        self.chunks.push(chunk);
    }

    /// The fetch: [`Fetched::AsExpected`] when the body was an expected one, else the body.
    pub(crate) fn finish(mut self, validators: Validators) -> Fetched {
        if let Some(e) = self.expect {
            let len = e.fed;
            match e.complete() {
                Some(candidate) => {
                    return Fetched::AsExpected {
                        candidate,
                        len,
                        validators,
                    };
                }
                // Shorter than every candidate: what came, rebuilt.
                None => {
                    let prefix = e.prefix();
                    if !prefix.is_empty() {
                        self.chunks.push(bytes::Bytes::from(prefix));
                    }
                }
            }
        }
        Fetched::Body {
            bytes: Body::from_chunks(self.chunks),
            validators,
        }
    }
}

/// Where `parts` stands after `chunk`, from `(part, off)`; `None` when `chunk` is not what follows.
fn advance(
    parts: &[&[u8]],
    (mut part, mut off): (usize, usize),
    mut chunk: &[u8],
) -> Option<(usize, usize)> {
    while !chunk.is_empty() {
        let p = parts.get(part)?;
        let rest = &p[off..];
        let n = rest.len().min(chunk.len());
        if rest[..n] != chunk[..n] {
            return None;
        }
        chunk = &chunk[n..];
        off += n;
        if off == p.len() {
            part += 1;
            off = 0;
        }
    }
    Some((part, off))
}

/// A successful fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The content, with the validators the node sent along (http only).
    Body { bytes: Body, validators: Validators },
    /// The content was exactly the `candidate`th body of the [`Expect`] the fetch was given (`len` bytes); it was
    /// compared as it came and not kept.
    AsExpected {
        candidate: usize,
        len: usize,
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
            Fetched::Body { bytes, .. } => Ok(bytes.into_vec()),
            Fetched::AsExpected { .. } => Err(CollectError::Http(
                "a body was expected where none was (internal error)".into(),
            )),
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
        self.fetch_expecting(plan, config, node, validators, None, None)
            .await
    }

    /// Fetch like [`Collector::fetch_conditional`]; over http, each chunk of the body is compared with `expect` as it
    /// arrives (other sources hand their content back whole). Each attempt's time limit runs on `timer` when given
    /// (a worker's, reused fetch after fetch), else on a timer of its own.
    pub async fn fetch_expecting(
        &self,
        plan: &Plan,
        config: &ConfigPlan,
        node: &Node,
        validators: Option<&Validators>,
        mut expect: Option<&mut Expect<'_>>,
        timer: Option<std::pin::Pin<&mut tokio::time::Sleep>>,
    ) -> Result<Fetched, CollectError> {
        let index = plan
            .configs
            .iter()
            .position(|c| std::ptr::eq(c, config))
            .unwrap_or(usize::MAX);
        let mut own = None;
        let mut timer = match timer {
            Some(t) => t,
            None => own.insert(Box::pin(attempt_timer())).as_mut(),
        };
        let mut attempt = 0u32;
        loop {
            if let Some(e) = expect.as_deref_mut() {
                e.reset();
            }
            let result = within(
                config.timeout,
                timer.as_mut(),
                self.fetch_once(index, config, node, validators, expect.as_deref_mut()),
            )
            .await;
            let err = match result {
                Ok(Ok((fetched, content_type))) => {
                    if let Fetched::Body { bytes, .. } = &fetched {
                        check_content_type(
                            bytes,
                            content_type.as_deref(),
                            config.normalizer.format,
                        )?;
                    }
                    return Ok(fetched);
                }
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
        expect: Option<&mut Expect<'_>>,
    ) -> Result<(Fetched, Option<String>), CollectError> {
        let body = |bytes: Vec<u8>| {
            let fetched = Fetched::Body {
                bytes: bytes.into(),
                validators: Validators::default(),
            };
            (fetched, None)
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
                let r = http::get(client, &url, &hs, config.max_body, validators, expect).await?;
                Ok((r.fetched, r.content_type))
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

/// A timer to limit fetch attempts with, one after another (see [`Collector::fetch_expecting`]): each attempt moves
/// its deadline rather than registering a timer of its own. tokio moves a registered deadline later with one atomic
/// operation, where a new timer is registered in, and removed from, the runtime's shared timer wheel under a lock: a
/// scan worker keeps one, pinned in its own state, for all its targets. Not registered until an attempt sets its
/// deadline and polls it.
pub fn attempt_timer() -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_secs(3600))
}

/// `fut`, or `Err(())` once `limit` has passed, timed by `timer` (whose deadline this sets): [`tokio::time::timeout`],
/// except that the timer is polled (its waker registered) only when the waker changes. A fetch is polled once per
/// chunk and at each step of its connection, and polling the timer each time was a cost per poll across a fleet; the
/// registered waker stays the task's own, and the timer firing wakes it, whereupon the timer is seen to have
/// elapsed.
async fn within<F: std::future::Future>(
    limit: Duration,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    fut: F,
) -> Result<F::Output, ()> {
    use std::task::Poll;
    let now = tokio::time::Instant::now();
    // As `tokio::time::sleep` does with a limit past what an instant holds: about 30 years.
    let deadline = now
        .checked_add(limit)
        .unwrap_or_else(|| now + Duration::from_secs(86400 * 365 * 30));
    timer.as_mut().reset(deadline);
    let mut fut = std::pin::pin!(fut);
    let mut registered: Option<std::task::Waker> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return if timer.is_elapsed() {
                Poll::Ready(Err(()))
            } else {
                Poll::Pending
            };
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(())),
            Poll::Pending => {
                registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
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

    #[tokio::test]
    async fn an_attempt_ends_at_its_limit_on_a_timer_reused_attempt_after_attempt() {
        let limit = Duration::from_millis(50);
        // One timer for every attempt below, as a scan worker keeps one.
        let mut timer = std::pin::pin!(attempt_timer());
        assert_eq!(within(limit, timer.as_mut(), async { 7 }).await, Ok(7));
        let t = std::time::Instant::now();
        assert_eq!(
            within(limit, timer.as_mut(), std::future::pending::<()>()).await,
            Err(())
        );
        assert!(t.elapsed() >= limit);
        // Woken and polled again and again (as a fetch is, chunk by chunk), never done.
        let mut polls = 0u64;
        let busy = std::future::poll_fn(|cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            std::task::Poll::<()>::Pending
        });
        assert_eq!(within(limit, timer.as_mut(), busy).await, Err(()));
        assert!(polls > 10, "{polls}");
        // A slow one that finishes within its limit.
        let slow = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            "done"
        };
        assert_eq!(within(limit, timer.as_mut(), slow).await, Ok("done"));
        // A deadline moved later: the last attempt's deadline passes during this one, which is not cut short.
        assert_eq!(within(limit, timer.as_mut(), async { 1 }).await, Ok(1));
        let later = async {
            tokio::time::sleep(2 * limit).await;
            "later"
        };
        assert_eq!(within(4 * limit, timer.as_mut(), later).await, Ok("later"));
        // A deadline moved earlier (a long limit, then a short one): the short one still ends on time.
        assert_eq!(
            within(Duration::from_secs(3600), timer.as_mut(), async { 2 }).await,
            Ok(2)
        );
        let t = std::time::Instant::now();
        assert_eq!(
            within(limit, timer.as_mut(), std::future::pending::<()>()).await,
            Err(())
        );
        let took = t.elapsed();
        assert!(took >= limit && took < Duration::from_secs(5), "{took:?}");
        // A limit past what an instant holds does not end an attempt.
        let quick = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            3
        };
        assert_eq!(within(Duration::MAX, timer.as_mut(), quick).await, Ok(3));
    }

    #[test]
    fn a_body_in_chunks_compares_and_hashes_as_one() {
        let text = b"{\"a\": [1, 2, 3], \"b\": \"xyz\"}";
        for cut1 in 0..=text.len() {
            for cut2 in cut1..=text.len() {
                let body = Body::from_chunks(vec![
                    bytes::Bytes::copy_from_slice(&text[..cut1]),
                    bytes::Bytes::copy_from_slice(&text[cut1..cut2]),
                    bytes::Bytes::copy_from_slice(&text[cut2..]),
                ]);
                assert_eq!(body.len(), text.len());
                assert_eq!(body.hash(), *blake3::hash(text).as_bytes());
                assert_eq!(&*body.contiguous(), &text[..]);
                // Parts cut elsewhere than the chunks.
                let p = (cut1 + 3).min(text.len());
                assert!(body.equals_concat([&text[..p], &text[p..]]));
                assert!(!body.equals_concat([&text[..p]]) || p == text.len());
                assert!(!body.equals_concat([&text[..], b"x"]));
                let mut other = text.to_vec();
                other[cut2.min(text.len() - 1)] ^= 1;
                assert!(!body.equals_concat([&other[..]]));
                assert_eq!(body.clone().into_vec(), text.to_vec());
            }
        }
        assert!(Body::default().equals_concat([&b""[..]]));
        assert!(!Body::default().equals_concat([&b"a"[..]]));
    }

    /// `body` received in chunks cut at `cuts`, expecting `candidates` (each given as parts).
    fn receive(body: &[u8], cuts: &[usize], candidates: &[Vec<&[u8]>]) -> Fetched {
        let mut expect = Expect::new(candidates.iter().map(|c| c.iter().copied()));
        let mut r = Receiving::new(Some(&mut expect));
        let mut from = 0;
        for &c in cuts.iter().chain([&body.len()]) {
            let c = c.clamp(from, body.len());
            r.push(bytes::Bytes::copy_from_slice(&body[from..c]));
            from = c;
        }
        r.finish(Validators::default())
    }

    #[test]
    fn an_expected_body_is_compared_as_it_comes_and_anything_else_is_kept_byte_for_byte() {
        let a = br#"{"name": "n1", "port": 80, "tags": ["x", "y"]}"#;
        // The same document with another port, another name, cut short, made longer.
        let b = br#"{"name": "n1", "port": 81, "tags": ["x", "y"]}"#;
        let c = br#"{"name": "n22", "port": 80, "tags": ["x", "y"]}"#;
        let short = &a[..a.len() - 1];
        let long = br#"{"name": "n1", "port": 80, "tags": ["x", "y"]} "#;
        // `a` as a layout would give it: pieces around the slot value `"n1"`, and an empty part.
        let layout_a: Vec<&[u8]> = vec![&a[..9], b"", &a[9..13], &a[13..]];
        let other: Vec<&[u8]> = vec![&c[..]];
        let n = a.len();
        for cut1 in 0..=n {
            for cut2 in [cut1, cut1 + 1, cut1 + 7, n] {
                let cuts = [cut1, cut2];
                for cands in [
                    vec![layout_a.clone()],
                    vec![other.clone(), layout_a.clone()],
                ] {
                    let which = cands.len() - 1;
                    match receive(a, &cuts, &cands) {
                        Fetched::AsExpected { candidate, len, .. } => {
                            assert_eq!((candidate, len), (which, n), "cuts {cuts:?}");
                        }
                        f => panic!("cuts {cuts:?}: {f:?}"),
                    }
                    for unexpected in [&b[..], &c[..], short, &long[..], b"", b"x"] {
                        if cands.len() == 2 && unexpected == &c[..] {
                            continue;
                        }
                        match receive(unexpected, &cuts, &cands) {
                            Fetched::Body { bytes, .. } => assert_eq!(
                                bytes.into_vec(),
                                unexpected.to_vec(),
                                "cuts {cuts:?} of {:?}",
                                String::from_utf8_lossy(unexpected)
                            ),
                            f => panic!("cuts {cuts:?}: {f:?}"),
                        }
                    }
                }
                // Two candidates, one the body: that one, wherever the other stops agreeing.
                match receive(&c[..], &cuts, &[layout_a.clone(), other.clone()]) {
                    Fetched::AsExpected { candidate, .. } => assert_eq!(candidate, 1),
                    f => panic!("cuts {cuts:?}: {f:?}"),
                }
            }
        }
        // At most `Expect::MAX` candidates: a body that is only the one after them is read whole.
        let mut many = vec![other.clone(); Expect::MAX - 1];
        many.push(layout_a.clone());
        assert!(matches!(
            receive(a, &[5], &many),
            Fetched::AsExpected { candidate, .. } if candidate == Expect::MAX - 1
        ));
        many.insert(0, other.clone());
        match receive(a, &[5], &many) {
            Fetched::Body { bytes, .. } => assert_eq!(bytes.into_vec(), a.to_vec()),
            f => panic!("{f:?}"),
        }
        // A retry starts over.
        let mut expect = Expect::new([layout_a.clone()]);
        assert!(expect.feed(&a[..10]));
        expect.reset();
        let mut r = Receiving::new(Some(&mut expect));
        r.push(bytes::Bytes::copy_from_slice(a));
        assert!(matches!(
            r.finish(Validators::default()),
            Fetched::AsExpected { candidate: 0, .. }
        ));
    }

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

    #[test]
    fn sizes_and_content_types() {
        assert_eq!(
            CollectError::TooLarge { limit: 1 << 20 }.to_string(),
            "body exceeds max_body 1 MiB (the 1048576-byte limit)"
        );
        assert_eq!(human_size(1000), "1000 bytes");
        assert_eq!(human_size(16 << 20), "16 MiB");
        for (declared, format, foreign) in [
            ("application/json; charset=utf-8", Format::Json, false),
            ("application/problem+json", Format::Json, false),
            ("text/plain", Format::Json, false),
            ("text/html; charset=utf-8", Format::Json, true),
            ("application/xml", Format::Yaml, true),
            ("application/yaml", Format::Yaml, false),
            ("text/x-ini", Format::Ini, false),
            ("text/html", Format::Kv, true),
            ("image/png", Format::Text, false),
        ] {
            assert_eq!(
                foreign_content_type(declared, format),
                foreign,
                "{declared} for {format:?}"
            );
        }
        let e = check_content_type(
            &b"<html>login</html>".to_vec().into(),
            Some("text/html"),
            Format::Json,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("Content-Type text/html, expected JSON: not valid json"),
            "{e}"
        );
        assert!(
            check_content_type(&b"{}".to_vec().into(), Some("text/html"), Format::Json).is_ok()
        );
    }
}
