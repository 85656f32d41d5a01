//! An in-process fake of the GitHub, GitLab and Jira issue APIs on loopback, for the ticket sinks.
//!
//! It keeps real state (issues with number / iid / key, open or closed, labels, bodies, comments; Jira transitions
//! that depend on the status), checks the auth header exactly, records every request, and can be scripted to answer
//! the next request(s) with a canned status (429 + Retry-After, 500, …) before handling anything.
//!
//! The paths, answers and status codes follow the public REST references closely enough to exercise plumb's calls:
//! GitHub `/repos/{o}/{r}/issues…` (with `Link` pagination), GitLab `/api/v4/projects/:id/issues…` (the project id
//! is matched as sent, so `group%2Fname` must arrive encoded), Jira `/rest/api/3/{issue,search/jql}…`.

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Which API the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Github,
    Gitlab,
    Jira,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query, still encoded).
    pub target: String,
    /// The path, still encoded.
    pub path: String,
    /// The decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    /// A header's value (the last one of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// How many headers of this name.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k == &name.to_ascii_lowercase())
            .count()
    }

    /// The body as JSON (null when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `METHOD path` for sequence assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// One issue held by the fake.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// GitHub number, GitLab iid, Jira key.
    pub id: String,
    pub title: String,
    /// Body (GitHub), description (GitLab), ADF description (Jira, as JSON text).
    pub body: String,
    pub labels: Vec<String>,
    pub open: bool,
    /// Comment bodies (Jira: ADF as JSON text).
    pub comments: Vec<String>,
    /// GitHub: the "issue" is a pull request (the issues API lists those too).
    pub pull_request: bool,
    /// The create payload as received (Jira: the `fields` object).
    pub created_with: Value,
}

impl Issue {
    /// An issue to seed the fake with.
    pub fn seeded(title: &str, body: &str, labels: &[&str], open: bool) -> Issue {
        Issue {
            id: String::new(),
            title: title.into(),
            body: body.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            open,
            comments: Vec::new(),
            pull_request: false,
            created_with: Value::Null,
        }
    }
}

/// A canned answer.
#[derive(Debug, Clone)]
struct Canned {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

struct State {
    flavor: Flavor,
    /// The auth header name (lowercase) and its exact expected value.
    auth: (String, String),
    /// GitHub `owner/name`; GitLab project id as sent; Jira project key.
    project: String,
    issues: Vec<Issue>,
    requests: Vec<Request>,
    script: VecDeque<Canned>,
    next: u64,
}

/// The running fake.
pub struct TicketApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// A response: status, extra headers, body.
type Reply = (u16, Vec<(String, String)>, String);

fn reply(status: u16, body: Value) -> Reply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    (status, Vec::new(), body)
}

impl TicketApi {
    /// Serve `flavor` for `project` (GitHub `owner/name`, GitLab id as sent, Jira key), accepting only requests whose
    /// `auth.0` header is exactly `auth.1`.
    pub fn start(flavor: Flavor, project: &str, auth: (&str, &str)) -> TicketApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            flavor,
            auth: (auth.0.to_ascii_lowercase(), auth.1.to_string()),
            project: project.to_string(),
            issues: Vec::new(),
            requests: Vec::new(),
            script: VecDeque::new(),
            next: 1,
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(s, &st));
            }
        });
        TicketApi { addr, state }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// `METHOD path` of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Request::line).collect()
    }

    /// Forget the recorded requests (not the issues).
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    /// Every issue (pull requests included).
    pub fn issues(&self) -> Vec<Issue> {
        self.state.lock().unwrap().issues.clone()
    }

    /// The issue with this id.
    pub fn issue(&self, id: &str) -> Issue {
        self.issues()
            .into_iter()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("no issue {id}"))
    }

    /// Add an issue as if someone had created it; its id.
    pub fn seed(&self, mut issue: Issue) -> String {
        let mut st = self.state.lock().unwrap();
        let id = next_id(&mut st);
        issue.id = id.clone();
        st.issues.push(issue);
        id
    }

    /// Answer the next request (after those already scripted) with this status, headers and body.
    pub fn script(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.state.lock().unwrap().script.push_back(Canned {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        });
    }
}

fn next_id(st: &mut State) -> String {
    let n = st.next;
    st.next += 1;
    match st.flavor {
        Flavor::Jira => format!("{}-{n}", st.project),
        _ => n.to_string(),
    }
}

/// Percent-decode a query component (`+` is a space).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(s: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    Some(Request {
        method,
        target,
        path,
        query,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn serve(mut s: TcpStream, st: &Mutex<State>) {
    let Some(req) = read_request(&s) else { return };
    let (status, headers, body) = {
        let mut st = st.lock().unwrap();
        st.requests.push(req.clone());
        if let Some(c) = st.script.pop_front() {
            (c.status, c.headers, c.body)
        } else if req.header(&st.auth.0) != Some(st.auth.1.as_str()) {
            // Echo what was presented: the sink must keep it out of its errors.
            let presented = req.header(&st.auth.0).unwrap_or("").to_string();
            reply(
                401,
                json!({"message": format!("Bad credentials: {presented}")}),
            )
        } else {
            route(&mut st, &req)
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status} Fake\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
    let _ = s.flush();
}

fn route(st: &mut State, req: &Request) -> Reply {
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match st.flavor {
        Flavor::Github => github(st, req, &segs),
        Flavor::Gitlab => gitlab(st, req, &segs),
        Flavor::Jira => jira(st, req, &segs),
    }
}

fn not_found() -> Reply {
    reply(404, json!({"message": "Not Found"}))
}

fn find_mut<'a>(st: &'a mut State, id: &str) -> Option<&'a mut Issue> {
    st.issues.iter_mut().find(|i| i.id == id)
}

fn str_labels(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect()
}

// --- GitHub -----------------------------------------------------------------------------------------------------

fn gh_issue(i: &Issue) -> Value {
    let mut v = json!({
        "number": i.id.parse::<u64>().unwrap_or(0),
        "title": i.title,
        "body": i.body,
        "state": if i.open { "open" } else { "closed" },
        "labels": i.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
    });
    if i.pull_request {
        v["pull_request"] = json!({"url": "https://example.invalid/pr"});
    }
    v
}

fn github(st: &mut State, req: &Request, segs: &[&str]) -> Reply {
    let project: Vec<&str> = st.project.split('/').collect();
    if segs.len() < 4 || segs[0] != "repos" || segs[1..3] != project[..] || segs[3] != "issues" {
        return not_found();
    }
    if req.header("x-github-api-version") != Some("2022-11-28")
        || req.header("accept") != Some("application/vnd.github+json")
    {
        return reply(400, json!({"message": "missing GitHub headers"}));
    }
    match (req.method.as_str(), &segs[4..]) {
        ("GET", []) => {
            let want: Vec<String> = req
                .q("labels")
                .unwrap_or("")
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            let state = req.q("state").unwrap_or("open");
            let per_page: usize = req.q("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
            let page: usize = req.q("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let mut all: Vec<&Issue> = st
                .issues
                .iter()
                .filter(|i| want.iter().all(|w| i.labels.contains(w)))
                .filter(|i| match state {
                    "all" => true,
                    "closed" => !i.open,
                    _ => i.open,
                })
                .collect();
            all.sort_by_key(|i| std::cmp::Reverse(i.id.parse::<u64>().unwrap_or(0)));
            let chunk: Vec<Value> = all
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|i| gh_issue(i))
                .collect();
            let mut headers = Vec::new();
            if page * per_page < all.len() {
                let base = format!(
                    "{}?labels={}&state={state}&per_page={per_page}",
                    req.path,
                    want.join(",")
                );
                headers.push((
                    "Link".to_string(),
                    format!(
                        "<http://{host}{base}&page={}>; rel=\"next\", <http://{host}{base}&page={}>; rel=\"last\"",
                        page + 1,
                        all.len().div_ceil(per_page),
                        host = req.header("host").unwrap_or("")
                    ),
                ));
            }
            (200, headers, Value::Array(chunk).to_string())
        }
        ("POST", []) => {
            let v = req.json();
            let Some(title) = v["title"].as_str().filter(|t| !t.is_empty()) else {
                return reply(422, json!({"message": "Validation Failed"}));
            };
            let id = next_id(st);
            let issue = Issue {
                id: id.clone(),
                title: title.to_string(),
                body: v["body"].as_str().unwrap_or("").to_string(),
                labels: str_labels(&v["labels"]),
                open: true,
                comments: Vec::new(),
                pull_request: false,
                created_with: v.clone(),
            };
            let out = gh_issue(&issue);
            st.issues.push(issue);
            reply(201, out)
        }
        ("GET", [n]) => match find_mut(st, n) {
            Some(i) => reply(200, gh_issue(i)),
            None => not_found(),
        },
        ("PATCH", [n]) => {
            let v = req.json();
            let Some(i) = find_mut(st, n) else {
                return not_found();
            };
            match v["state"].as_str() {
                Some("open") => i.open = true,
                Some("closed") => i.open = false,
                _ => return reply(422, json!({"message": "Validation Failed"})),
            }
            let out = gh_issue(i);
            reply(200, out)
        }
        ("POST", [n, "comments"]) => {
            let v = req.json();
            let Some(i) = find_mut(st, n) else {
                return not_found();
            };
            let Some(b) = v["body"].as_str() else {
                return reply(422, json!({"message": "Validation Failed"}));
            };
            i.comments.push(b.to_string());
            reply(201, json!({"id": i.comments.len(), "body": b}))
        }
        _ => not_found(),
    }
}

// --- GitLab -----------------------------------------------------------------------------------------------------

fn gl_issue(i: &Issue) -> Value {
    json!({
        "id": 9000 + i.id.parse::<u64>().unwrap_or(0),
        "iid": i.id.parse::<u64>().unwrap_or(0),
        "title": i.title,
        "description": i.body,
        "state": if i.open { "opened" } else { "closed" },
        "labels": i.labels,
    })
}

fn gitlab(st: &mut State, req: &Request, segs: &[&str]) -> Reply {
    if segs.len() < 5
        || segs[..3] != ["api", "v4", "projects"]
        || segs[3] != st.project
        || segs[4] != "issues"
    {
        return reply(404, json!({"message": "404 Project Not Found"}));
    }
    match (req.method.as_str(), &segs[5..]) {
        ("GET", []) => {
            let want: Vec<&str> = req
                .q("labels")
                .unwrap_or("")
                .split(',')
                .filter(|l| !l.is_empty())
                .collect();
            let state = req.q("state").unwrap_or("all");
            let mut out: Vec<&Issue> = st
                .issues
                .iter()
                .filter(|i| want.iter().all(|w| i.labels.iter().any(|l| l == w)))
                .filter(|i| match state {
                    "opened" => i.open,
                    "closed" => !i.open,
                    _ => true,
                })
                .collect();
            out.sort_by_key(|i| std::cmp::Reverse(i.id.parse::<u64>().unwrap_or(0)));
            reply(200, Value::Array(out.into_iter().map(gl_issue).collect()))
        }
        ("POST", []) => {
            let v = req.json();
            let Some(title) = v["title"].as_str().filter(|t| !t.is_empty()) else {
                return reply(400, json!({"message": {"title": ["can't be blank"]}}));
            };
            let id = next_id(st);
            let issue = Issue {
                id,
                title: title.to_string(),
                body: v["description"].as_str().unwrap_or("").to_string(),
                labels: v["labels"]
                    .as_str()
                    .unwrap_or("")
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
                open: true,
                comments: Vec::new(),
                pull_request: false,
                created_with: v.clone(),
            };
            let out = gl_issue(&issue);
            st.issues.push(issue);
            reply(201, out)
        }
        ("GET", [n]) => match find_mut(st, n) {
            Some(i) => reply(200, gl_issue(i)),
            None => reply(404, json!({"message": "404 Not found"})),
        },
        ("PUT", [n]) => {
            let v = req.json();
            let Some(i) = find_mut(st, n) else {
                return reply(404, json!({"message": "404 Not found"}));
            };
            match v["state_event"].as_str() {
                Some("reopen") => i.open = true,
                Some("close") => i.open = false,
                _ => return reply(400, json!({"error": "state_event is invalid"})),
            }
            let out = gl_issue(i);
            reply(200, out)
        }
        ("POST", [n, "notes"]) => {
            let v = req.json();
            let Some(i) = find_mut(st, n) else {
                return reply(404, json!({"message": "404 Not found"}));
            };
            let Some(b) = v["body"].as_str() else {
                return reply(400, json!({"error": "body is missing"}));
            };
            i.comments.push(b.to_string());
            reply(201, json!({"id": i.comments.len(), "body": b}))
        }
        _ => reply(404, json!({"message": "404 Not found"})),
    }
}

// --- Jira -------------------------------------------------------------------------------------------------------

/// The transitions available from a status: open → "In Progress" (21), "Done" (31); done → "Reopen" (41).
pub fn jira_transitions(open: bool) -> Vec<(&'static str, &'static str, bool)> {
    if open {
        vec![("21", "In Progress", true), ("31", "Done", false)]
    } else {
        vec![("41", "Reopen", true)]
    }
}

fn jira_status(open: bool) -> Value {
    if open {
        json!({"name": "To Do", "statusCategory": {"key": "new"}})
    } else {
        json!({"name": "Done", "statusCategory": {"key": "done"}})
    }
}

fn jira_issue(i: &Issue) -> Value {
    json!({
        "id": format!("1{}", i.id.rsplit('-').next().unwrap_or("0")),
        "key": i.id,
        "fields": {"status": jira_status(i.open)},
    })
}

fn is_adf(v: &Value) -> bool {
    v["type"] == "doc"
        && v["version"] == 1
        && v["content"].as_array().is_some_and(|c| {
            c.iter().all(|p| {
                p["type"] == "paragraph"
                    && p["content"].as_array().is_some_and(|t| {
                        t.iter().all(|n| {
                            n["type"] == "text" && n["text"].as_str().is_some_and(|s| !s.is_empty())
                        })
                    })
            })
        })
}

fn jira_error(status: u16, msg: &str) -> Reply {
    reply(status, json!({"errorMessages": [msg], "errors": {}}))
}

fn jira(st: &mut State, req: &Request, segs: &[&str]) -> Reply {
    if segs.len() < 4 || segs[..3] != ["rest", "api", "3"] {
        return jira_error(404, "not found");
    }
    match (req.method.as_str(), &segs[3..]) {
        ("GET", ["search", "jql"]) => {
            let jql = req.q("jql").unwrap_or("");
            let Some(label) = jql
                .strip_prefix("labels=\"")
                .and_then(|s| s.strip_suffix('"'))
            else {
                return jira_error(400, "unsupported JQL");
            };
            let issues: Vec<Value> = st
                .issues
                .iter()
                .filter(|i| i.labels.iter().any(|l| l == label))
                .map(jira_issue)
                .collect();
            reply(200, json!({"issues": issues, "isLast": true}))
        }
        ("POST", ["issue"]) => {
            let v = req.json();
            let f = &v["fields"];
            if f["project"]["key"] != st.project.as_str()
                || !f["issuetype"]["name"].is_string()
                || !f["summary"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty() && s.len() <= 255)
                || !is_adf(&f["description"])
                || f["labels"]
                    .as_array()
                    .is_none_or(|l| l.iter().any(|l| l.as_str().is_none_or(|s| s.contains(' '))))
            {
                return jira_error(400, "invalid fields");
            }
            let id = next_id(st);
            let issue = Issue {
                id,
                title: f["summary"].as_str().unwrap_or("").to_string(),
                body: f["description"].to_string(),
                labels: str_labels(&f["labels"]),
                open: true,
                comments: Vec::new(),
                pull_request: false,
                created_with: f.clone(),
            };
            let out = jira_issue(&issue);
            st.issues.push(issue);
            reply(
                201,
                json!({"id": out["id"], "key": out["key"], "self": "http://jira.invalid/rest/api/3/issue/1"}),
            )
        }
        ("GET", ["issue", k]) => match find_mut(st, k) {
            Some(i) => reply(200, jira_issue(i)),
            None => jira_error(
                404,
                "Issue does not exist or you do not have permission to see it.",
            ),
        },
        ("POST", ["issue", k, "comment"]) => {
            let v = req.json();
            let Some(i) = find_mut(st, k) else {
                return jira_error(404, "Issue does not exist");
            };
            if !is_adf(&v["body"]) {
                return jira_error(400, "comment body is not ADF");
            }
            i.comments.push(v["body"].to_string());
            reply(201, json!({"id": "100"}))
        }
        ("GET", ["issue", k, "transitions"]) => {
            let Some(i) = find_mut(st, k) else {
                return jira_error(404, "Issue does not exist");
            };
            let ts: Vec<Value> = jira_transitions(i.open)
                .into_iter()
                .map(|(id, name, to_open)| {
                    json!({"id": id, "name": name, "to": jira_status(to_open)})
                })
                .collect();
            reply(200, json!({"transitions": ts}))
        }
        ("POST", ["issue", k, "transitions"]) => {
            let v = req.json();
            let Some(i) = find_mut(st, k) else {
                return jira_error(404, "Issue does not exist");
            };
            let want = v["transition"]["id"].as_str().unwrap_or("");
            match jira_transitions(i.open)
                .into_iter()
                .find(|(id, _, _)| *id == want)
            {
                Some((_, _, to_open)) => {
                    i.open = to_open;
                    (204, Vec::new(), String::new())
                }
                None => jira_error(400, "Transition id is not valid for this issue."),
            }
        }
        _ => jira_error(404, "not found"),
    }
}
