//! A scripted HTTP/1.1 receiver on loopback for the chat, webhook and paging sinks.
//!
//! It records every request (method, target, headers, raw body) and answers from a script: the n-th request gets
//! the n-th answer, and the last answer repeats. An answer is a status with optional headers and body, or
//! [`Answer::Hang`], which reads the request and never replies (the connection stays open for a while), so the
//! client's timeout fires. Every connection runs on its own thread, so a hung one does not block the next.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a hung connection is held open.
const HANG: Duration = Duration::from_secs(15);

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Answer {
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the request, then say nothing.
    Hang,
}

impl Answer {
    /// A status with an empty body (`202` is Teams Workflows' answer).
    pub fn status(status: u16) -> Answer {
        Answer::body(status, "")
    }

    /// A status with a body.
    pub fn body(status: u16, body: &str) -> Answer {
        Answer::Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// A status with `Retry-After`.
    pub fn retry_after(status: u16, after: &str) -> Answer {
        Answer::Reply {
            status,
            headers: vec![("Retry-After".into(), after.into())],
            body: String::new(),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The raw body bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The last header of this name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The receiver; it serves until the test process ends.
pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    /// Listen on 127.0.0.1:0 and answer with `script`.
    pub fn start(script: Vec<Answer>) -> Receiver {
        Receiver::start_on("127.0.0.1:0", script)
    }

    /// Listen on `addr` (a sink that comes back on its old port) and answer with `script`.
    pub fn start_on(addr: &str, script: Vec<Answer>) -> Receiver {
        assert!(!script.is_empty(), "a script needs at least one answer");
        let listener = TcpListener::bind(addr).expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let seen = requests.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, script) = (seen.clone(), script.clone());
                std::thread::spawn(move || serve(stream, &seen, &script));
            }
        });
        Receiver { addr, requests }
    }

    /// `http://127.0.0.1:PORT` + `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Read requests from one connection and answer them until it closes or hangs.
fn serve(mut s: TcpStream, seen: &Mutex<Vec<Request>>, script: &[Answer]) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(req) = read_request(&mut s, &mut buf) else {
            return;
        };
        let answer = {
            let mut all = seen.lock().unwrap();
            all.push(req);
            script[(all.len() - 1).min(script.len() - 1)].clone()
        };
        match answer {
            Answer::Hang => {
                std::thread::sleep(HANG);
                return;
            }
            Answer::Reply {
                status,
                headers,
                body,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n",
                    reason(status),
                    body.len()
                );
                if !body.is_empty() {
                    head.push_str("Content-Type: application/json\r\n");
                }
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if s.write_all(head.as_bytes()).is_err() || s.write_all(body.as_bytes()).is_err() {
                    return;
                }
                let _ = s.flush();
            }
        }
    }
}

/// One request off the connection (`buf` keeps bytes of the next one); `None` at the end of the connection.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    buf.drain(..end + 4);
    while buf.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Scripted",
    }
}
