//! Ticket sinks (GitHub, GitLab, Jira) against an in-process fake of each API that keeps real issue state: one
//! ticket per key, found again through its marker after a restart, commented on change, closed when resolved,
//! reopened instead of duplicated; retries and permanent errors classified; exact payloads and headers.

mod common;

use base64::Engine as _;
use common::receiver_tickets::{Flavor, Issue, Request, TicketApi};
use plumb::finding::{Change, Finding, Kind, Severity};
use plumb::notify::sinks::{self, Delivered, DeliveryError, SinkKind, SinkPlan};
use plumb::notify::{Message, TicketAction, TicketEvent, Trigger};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "tok-S3CRET-0123456789";
const KEY: &str = "6f1c0a2b3c4d5e6f7a8b9c0d";
const JIRA_USER: &str = "ops@example.org";

fn finding() -> Finding {
    let mut f = Finding::observed(
        Kind::Drift,
        Severity::High,
        "edge-1",
        "caddy",
        "$.apps.http.port".into(),
        "$.apps.http.port",
        "port differs from the baseline".into(),
        "2026-03-01T10:00:00Z",
    );
    f.fingerprint = KEY.into();
    f.last_seen = "2026-03-01T10:05:00Z".into();
    f.change = Some(Change::Changed);
    f.expected = json!(443);
    f.actual = json!(8443);
    f
}

fn event(action: TicketAction, trigger: Trigger) -> TicketEvent {
    TicketEvent {
        id: format!("ev-{action:?}-{trigger:?}"),
        route: "oncall".into(),
        sink: "tickets".into(),
        action,
        trigger,
        key: KEY.into(),
        finding: finding(),
        nodes: Vec::new(),
        report_url: Some("https://plumb.example.org/scans/s1".into()),
    }
}

fn sink(kind: SinkKind, url: &str) -> SinkPlan {
    SinkPlan {
        name: "tickets".into(),
        kind,
        url: url.into(),
        secret: None,
        username: None,
        password: None,
        token: Some(TOKEN.into()),
        user: (kind == SinkKind::Jira).then(|| JIRA_USER.to_string()),
        from: None,
        to: Vec::new(),
        ca: None,
        repo: Some("acme/ops".into()),
        project: Some(match kind {
            SinkKind::Jira => "OPS".into(),
            _ => "group/name".into(),
        }),
        issue_type: "Task".into(),
        labels: vec!["team-edge".into()],
        close_transition: "Done".into(),
        reopen_transition: "Reopen".into(),
        routing_key: None,
        timeout: Duration::from_secs(5),
    }
}

fn jira_basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{JIRA_USER}:{TOKEN}"))
    )
}

/// A fake of `flavor`, and a sink pointing at it.
fn setup(flavor: Flavor) -> (TicketApi, SinkPlan) {
    let (kind, project, auth) = match flavor {
        Flavor::Github => (
            SinkKind::Github,
            "acme/ops",
            ("authorization", format!("Bearer {TOKEN}")),
        ),
        Flavor::Gitlab => (
            SinkKind::Gitlab,
            "group%2Fname",
            ("private-token", TOKEN.to_string()),
        ),
        Flavor::Jira => (SinkKind::Jira, "OPS", ("authorization", jira_basic())),
    };
    let api = TicketApi::start(flavor, project, (auth.0, &auth.1));
    let s = sink(kind, &api.url());
    (api, s)
}

/// Deliver through the public entry point, as the dispatcher does.
async fn deliver(
    s: &SinkPlan,
    ev: &TicketEvent,
    known: Option<&str>,
) -> Result<Delivered, DeliveryError> {
    let http = sinks::client(s).expect("client");
    sinks::deliver(&http, s, &Message::Ticket(ev.clone()), known).await
}

async fn deliver_ok(s: &SinkPlan, ev: &TicketEvent, known: Option<&str>) -> String {
    let d = deliver(s, ev, known)
        .await
        .unwrap_or_else(|e| panic!("{:?} {:?}: {e}", ev.action, ev.trigger));
    d.external_id.expect("an external id")
}

/// Every request carried exactly the auth and API headers of its flavor.
fn assert_headers(flavor: Flavor, reqs: &[Request]) {
    assert!(!reqs.is_empty());
    for r in reqs {
        let line = r.line();
        match flavor {
            Flavor::Github => {
                assert_eq!(
                    r.header("authorization"),
                    Some(format!("Bearer {TOKEN}").as_str()),
                    "{line}"
                );
                assert_eq!(
                    r.header("accept"),
                    Some("application/vnd.github+json"),
                    "{line}"
                );
                assert_eq!(
                    r.header("x-github-api-version"),
                    Some("2022-11-28"),
                    "{line}"
                );
                for h in ["authorization", "accept", "x-github-api-version"] {
                    assert_eq!(r.header_count(h), 1, "{h} on {line}");
                }
            }
            Flavor::Gitlab => {
                assert_eq!(r.header("private-token"), Some(TOKEN), "{line}");
                assert_eq!(r.header_count("private-token"), 1, "{line}");
                assert_eq!(r.header("authorization"), None, "{line}");
            }
            Flavor::Jira => {
                assert_eq!(
                    r.header("authorization"),
                    Some(jira_basic().as_str()),
                    "{line}"
                );
                assert_eq!(r.header_count("authorization"), 1, "{line}");
                assert_eq!(r.header("accept"), Some("application/json"), "{line}");
            }
        }
        if !r.body.is_empty() {
            assert_eq!(r.header("content-type"), Some("application/json"), "{line}");
        }
        assert!(
            r.header("user-agent")
                .is_some_and(|u| u.starts_with("plumb/")),
            "{line}"
        );
    }
}

const TITLE: &str = "[plumb] drift edge-1 caddy $.apps.http.port";

/// The Markdown body of a new GitHub or GitLab ticket for [`event`].
fn expected_markdown() -> String {
    format!(
        "plumb reports a high drift on edge-1 (caddy).\n\
         \n\
         - **Trigger:** firing\n\
         - **Severity:** high\n\
         - **Node:** edge-1\n\
         - **Config:** caddy\n\
         - **Path:** $.apps.http.port\n\
         - **Change:** changed\n\
         - **Expected → actual:** `443` → `8443`\n\
         - **Message:** port differs from the baseline\n\
         - **First seen:** 2026-03-01T10:00:00Z\n\
         - **Last seen:** 2026-03-01T10:05:00Z\n\
         - **Report:** https://plumb.example.org/scans/s1\n\
         - **Fingerprint:** {KEY}\n\
         \n\
         <!-- plumb-fp: {KEY} -->\n"
    )
}

/// The ADF description of a new Jira ticket for [`event`].
fn expected_adf() -> Value {
    let p = |t: &str| json!({"type": "paragraph", "content": [{"type": "text", "text": t}]});
    let code = |t: &str| json!({"type": "text", "text": t, "marks": [{"type": "code"}]});
    json!({
        "type": "doc",
        "version": 1,
        "content": [
            p("plumb reports a high drift on edge-1 (caddy)."),
            p("Trigger: firing"),
            p("Severity: high"),
            p("Node: edge-1"),
            p("Config: caddy"),
            p("Path: $.apps.http.port"),
            p("Change: changed"),
            {"type": "paragraph", "content": [
                {"type": "text", "text": "Expected → actual: "},
                code("443"),
                {"type": "text", "text": " → "},
                code("8443"),
            ]},
            p("Message: port differs from the baseline"),
            p("First seen: 2026-03-01T10:00:00Z"),
            p("Last seen: 2026-03-01T10:05:00Z"),
            p("Report: https://plumb.example.org/scans/s1"),
            p(&format!("Fingerprint: {KEY}")),
            p(&format!("plumb fingerprint: {KEY}")),
        ]
    })
}

/// The text of an ADF document (Jira comments), paragraphs joined by newlines.
fn adf_text(raw: &str) -> String {
    let v: Value = serde_json::from_str(raw).expect("ADF");
    v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["text"].as_str().unwrap().to_string())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A comment's text whatever the flavor.
fn comment_text(flavor: Flavor, raw: &str) -> String {
    match flavor {
        Flavor::Jira => adf_text(raw),
        _ => raw.to_string(),
    }
}

fn only<'a>(reqs: &'a [Request], method: &str, suffix: &str) -> &'a Request {
    let hits: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.method == method && r.path.ends_with(suffix))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "one {method} …{suffix} in {:#?}",
        lines(reqs)
    );
    hits[0]
}

fn lines(reqs: &[Request]) -> Vec<String> {
    reqs.iter().map(Request::line).collect()
}

fn secret_free(e: &DeliveryError) {
    let msg = e.to_string();
    let dbg = format!("{e:?}");
    for s in [
        TOKEN.to_string(),
        jira_basic(),
        "wrong-T0KEN-abcdef".to_string(),
    ] {
        assert!(!msg.contains(&s) && !dbg.contains(&s), "{s} leaked: {msg}");
    }
    let b64 = jira_basic().trim_start_matches("Basic ").to_string();
    assert!(!msg.contains(&b64), "basic credentials leaked: {msg}");
}

// ----------------------------------------------------------------------------------------------------------------
// The whole lifecycle on each tracker.

/// (1) open → one create with the exact fields; (2) comment; (3) close; (4) reopen without a new issue.
async fn lifecycle(flavor: Flavor) {
    let (api, s) = setup(flavor);

    // (1) Open, nothing known: one search, one create.
    let id = deliver_ok(&s, &event(TicketAction::Open, Trigger::Firing), None).await;
    let reqs = api.requests();
    assert_headers(flavor, &reqs);
    assert_eq!(api.issues().len(), 1);
    let issue = api.issue(&id);
    assert!(issue.open);
    let create = match flavor {
        Flavor::Github => {
            assert_eq!(
                lines(&reqs),
                ["GET /repos/acme/ops/issues", "POST /repos/acme/ops/issues"]
            );
            let search = &reqs[0];
            assert_eq!(search.q("labels"), Some("plumb"));
            assert_eq!(search.q("state"), Some("all"));
            assert_eq!(search.q("per_page"), Some("100"));
            assert_eq!(
                reqs[1].json(),
                json!({"title": TITLE, "body": expected_markdown(), "labels": ["plumb", "team-edge"]})
            );
            &reqs[1]
        }
        Flavor::Gitlab => {
            assert_eq!(
                lines(&reqs),
                [
                    "GET /api/v4/projects/group%2Fname/issues",
                    "POST /api/v4/projects/group%2Fname/issues"
                ]
            );
            assert_eq!(
                reqs[0].target,
                format!("/api/v4/projects/group%2Fname/issues?labels=plumb-fp-{KEY}&state=all")
            );
            assert_eq!(
                reqs[1].json(),
                json!({
                    "title": TITLE,
                    "description": expected_markdown(),
                    "labels": format!("plumb,plumb-fp-{KEY},team-edge"),
                })
            );
            &reqs[1]
        }
        Flavor::Jira => {
            assert_eq!(
                lines(&reqs),
                ["GET /rest/api/3/search/jql", "POST /rest/api/3/issue"]
            );
            assert_eq!(
                reqs[0].q("jql"),
                Some(format!("labels=\"plumb-fp-{KEY}\"").as_str())
            );
            assert_eq!(reqs[0].q("fields"), Some("key,status"));
            assert_eq!(
                reqs[1].json(),
                json!({"fields": {
                    "project": {"key": "OPS"},
                    "issuetype": {"name": "Task"},
                    "summary": TITLE,
                    "labels": ["plumb", format!("plumb-fp-{KEY}"), "team-edge"],
                    "description": expected_adf(),
                }})
            );
            &reqs[1]
        }
    };
    assert_eq!(create.method, "POST");
    match flavor {
        Flavor::Jira => assert_eq!(id, "OPS-1"),
        _ => assert_eq!(id, "1"),
    }

    // (2) Comment on the known ticket: what changed.
    api.clear_requests();
    let mut ev = event(TicketAction::Comment, Trigger::ValueChanged);
    ev.finding.actual = json!(9443);
    ev.finding.severity = Severity::Critical;
    assert_eq!(deliver_ok(&s, &ev, Some(&id)).await, id);
    let reqs = api.requests();
    assert_headers(flavor, &reqs);
    let comment_suffix = match flavor {
        Flavor::Github => "/comments",
        Flavor::Gitlab => "/notes",
        Flavor::Jira => "/comment",
    };
    only(&reqs, "POST", comment_suffix);
    assert!(
        reqs.iter()
            .all(|r| r.method == "GET" || r.path.ends_with(comment_suffix)),
        "{:?}",
        lines(&reqs)
    );
    let issue = api.issue(&id);
    assert_eq!(issue.comments.len(), 1);
    let c = comment_text(flavor, &issue.comments[0]);
    assert!(c.starts_with("plumb: The observed value changed."), "{c}");
    for needle in ["value changed", "critical", "9443"] {
        assert!(c.contains(needle), "{needle} in {c}");
    }
    assert!(!c.contains("plumb-fp"), "{c}");

    // (3) Close: the ticket is closed and says when.
    api.clear_requests();
    assert_eq!(
        deliver_ok(
            &s,
            &event(TicketAction::Close, Trigger::Resolved),
            Some(&id)
        )
        .await,
        id
    );
    let reqs = api.requests();
    assert_headers(flavor, &reqs);
    let issue = api.issue(&id);
    assert!(!issue.open, "closed");
    assert_eq!(issue.comments.len(), 2);
    let c = comment_text(flavor, &issue.comments[1]);
    assert!(c.starts_with("plumb: resolved at 20"), "{c}");
    match flavor {
        Flavor::Github => {
            assert_eq!(
                lines(&reqs),
                [
                    "GET /repos/acme/ops/issues/1",
                    "PATCH /repos/acme/ops/issues/1",
                    "POST /repos/acme/ops/issues/1/comments"
                ]
            );
            assert_eq!(
                reqs[1].json(),
                json!({"state": "closed", "state_reason": "completed"})
            );
        }
        Flavor::Gitlab => {
            assert_eq!(
                lines(&reqs),
                [
                    "GET /api/v4/projects/group%2Fname/issues/1",
                    "PUT /api/v4/projects/group%2Fname/issues/1",
                    "POST /api/v4/projects/group%2Fname/issues/1/notes"
                ]
            );
            assert_eq!(reqs[1].json(), json!({"state_event": "close"}));
        }
        Flavor::Jira => {
            assert_eq!(
                lines(&reqs),
                [
                    "GET /rest/api/3/issue/OPS-1",
                    "GET /rest/api/3/issue/OPS-1/transitions",
                    "POST /rest/api/3/issue/OPS-1/transitions",
                    "POST /rest/api/3/issue/OPS-1/comment"
                ]
            );
            assert_eq!(reqs[2].json(), json!({"transition": {"id": "31"}}));
        }
    }

    // Closing again (a retried event) changes nothing.
    api.clear_requests();
    deliver_ok(
        &s,
        &event(TicketAction::Close, Trigger::Resolved),
        Some(&id),
    )
    .await;
    assert_eq!(api.requests().len(), 1, "{:?}", api.lines());
    assert_eq!(api.issue(&id).comments.len(), 2);

    // (4) Reopen: the same ticket, open again, with a "came back" comment; no new issue.
    api.clear_requests();
    let mut ev = event(TicketAction::Reopen, Trigger::Regression);
    ev.finding.fixed_at = Some("2026-03-02T08:00:00Z".into());
    ev.finding.regression_of = Some("v3".into());
    assert_eq!(deliver_ok(&s, &ev, Some(&id)).await, id);
    let reqs = api.requests();
    assert_headers(flavor, &reqs);
    assert_eq!(api.issues().len(), 1, "no duplicate");
    let issue = api.issue(&id);
    assert!(issue.open, "reopened");
    let c = comment_text(flavor, issue.comments.last().unwrap());
    for needle in ["came back", "2026-03-02T08:00:00Z", "v3"] {
        assert!(c.contains(needle), "{needle} in {c}");
    }
    match flavor {
        Flavor::Github => assert_eq!(
            only(&reqs, "PATCH", "/issues/1").json(),
            json!({"state": "open"})
        ),
        Flavor::Gitlab => {
            assert_eq!(
                only(&reqs, "PUT", "/issues/1").json(),
                json!({"state_event": "reopen"})
            )
        }
        Flavor::Jira => {
            only(&reqs, "GET", "/transitions");
            assert_eq!(
                only(&reqs, "POST", "/transitions").json(),
                json!({"transition": {"id": "41"}})
            );
        }
    }
    assert!(
        !reqs
            .iter()
            .any(|r| r.method == "POST"
                && (r.path.ends_with("/issues") || r.path.ends_with("/issue")))
    );
}

#[tokio::test]
async fn github_lifecycle_open_comment_close_reopen() {
    lifecycle(Flavor::Github).await;
}

#[tokio::test]
async fn gitlab_lifecycle_open_comment_close_reopen() {
    lifecycle(Flavor::Gitlab).await;
}

#[tokio::test]
async fn jira_lifecycle_open_comment_close_reopen() {
    lifecycle(Flavor::Jira).await;
}

// ----------------------------------------------------------------------------------------------------------------
// (5) After a restart (nothing known), the marker finds the ticket: reopen a closed one, comment on an open one.

async fn restart_finds_the_ticket(flavor: Flavor) {
    let (api, s) = setup(flavor);
    let id = deliver_ok(&s, &event(TicketAction::Open, Trigger::Firing), None).await;
    deliver_ok(
        &s,
        &event(TicketAction::Close, Trigger::Resolved),
        Some(&id),
    )
    .await;
    assert!(!api.issue(&id).open);

    // The store is gone: an Open for the same key reopens the closed ticket instead of creating one.
    api.clear_requests();
    assert_eq!(
        deliver_ok(&s, &event(TicketAction::Open, Trigger::Firing), None).await,
        id
    );
    assert_eq!(api.issues().len(), 1, "no duplicate: {:?}", api.lines());
    let issue = api.issue(&id);
    assert!(issue.open);
    assert!(comment_text(flavor, issue.comments.last().unwrap()).contains("came back"));
    let reqs = api.requests();
    assert_headers(flavor, &reqs);
    match flavor {
        Flavor::Github => assert_eq!(
            lines(&reqs),
            [
                "GET /repos/acme/ops/issues",
                "PATCH /repos/acme/ops/issues/1",
                "POST /repos/acme/ops/issues/1/comments"
            ]
        ),
        Flavor::Gitlab => assert_eq!(
            lines(&reqs),
            [
                "GET /api/v4/projects/group%2Fname/issues",
                "PUT /api/v4/projects/group%2Fname/issues/1",
                "POST /api/v4/projects/group%2Fname/issues/1/notes"
            ]
        ),
        Flavor::Jira => assert_eq!(
            lines(&reqs),
            [
                "GET /rest/api/3/search/jql",
                "GET /rest/api/3/issue/OPS-1/transitions",
                "POST /rest/api/3/issue/OPS-1/transitions",
                "POST /rest/api/3/issue/OPS-1/comment"
            ]
        ),
    }

    // Again with nothing known, now that it is open: a comment, still one issue.
    let before = api.issue(&id).comments.len();
    api.clear_requests();
    let mut ev = event(TicketAction::Open, Trigger::Firing);
    ev.finding.actual = json!(10443);
    assert_eq!(deliver_ok(&s, &ev, None).await, id);
    assert_eq!(api.issues().len(), 1);
    let issue = api.issue(&id);
    assert!(issue.open);
    assert_eq!(issue.comments.len(), before + 1);
    assert!(comment_text(flavor, issue.comments.last().unwrap()).contains("10443"));
    assert_eq!(api.requests().len(), 2, "{:?}", api.lines());

    // A Comment and a Close with nothing known find it the same way.
    deliver_ok(&s, &event(TicketAction::Comment, Trigger::Escalated), None).await;
    deliver_ok(&s, &event(TicketAction::Close, Trigger::Resolved), None).await;
    assert_eq!(api.issues().len(), 1);
    assert!(!api.issue(&id).open);
}

#[tokio::test]
async fn github_restart_finds_ticket_by_body_marker() {
    restart_finds_the_ticket(Flavor::Github).await;
}

#[tokio::test]
async fn gitlab_restart_finds_ticket_by_label() {
    restart_finds_the_ticket(Flavor::Gitlab).await;
}

#[tokio::test]
async fn jira_restart_finds_ticket_by_label() {
    restart_finds_the_ticket(Flavor::Jira).await;
}

#[tokio::test]
async fn github_marker_search_pages_and_skips_pull_requests() {
    let (api, s) = setup(Flavor::Github);
    let marker = format!("body\n\n<!-- plumb-fp: {KEY} -->\n");
    // The ticket is the oldest, so it is on the second page of 100; a newer pull request carries the same marker,
    // and an issue with a longer key that starts with ours must not match.
    let target = api.seed(Issue::seeded("old", &marker, &["plumb"], true));
    for n in 0..120 {
        api.seed(Issue::seeded(
            &format!("other {n}"),
            "<!-- plumb-fp: other -->",
            &["plumb"],
            true,
        ));
    }
    api.seed(Issue::seeded(
        "longer",
        &format!("<!-- plumb-fp: {KEY}ff -->"),
        &["plumb"],
        true,
    ));
    let mut pr = Issue::seeded("pr", &marker, &["plumb"], true);
    pr.pull_request = true;
    api.seed(pr);
    let total = api.issues().len();

    let id = deliver_ok(&s, &event(TicketAction::Open, Trigger::Firing), None).await;
    assert_eq!(id, target);
    assert_eq!(api.issues().len(), total, "no new issue");
    assert_eq!(api.issue(&target).comments.len(), 1);
    assert_eq!(
        api.lines(),
        [
            "GET /repos/acme/ops/issues",
            "GET /repos/acme/ops/issues",
            "POST /repos/acme/ops/issues/1/comments"
        ]
    );
    assert_eq!(api.requests()[1].q("page"), Some("2"));
    assert_headers(Flavor::Github, &api.requests());
}

#[tokio::test]
async fn gitlab_fleet_group_key_gets_a_valid_label_and_node_count() {
    let (api, s) = setup(Flavor::Gitlab);
    let mut ev = event(TicketAction::Open, Trigger::Firing);
    ev.key = "caddy/high".into();
    ev.nodes = vec!["edge-1".into(), "edge-2".into(), "edge-3".into()];
    let id = deliver_ok(&s, &ev, None).await;
    let issue = api.issue(&id);
    assert_eq!(issue.title, "[plumb] drift 3 nodes caddy $.apps.http.port");
    assert!(
        issue
            .body
            .contains("- **Nodes:** edge-1, edge-2, edge-3 (3)"),
        "{}",
        issue.body
    );
    let fp: Vec<&String> = issue
        .labels
        .iter()
        .filter(|l| l.starts_with("plumb-fp-"))
        .collect();
    assert_eq!(fp.len(), 1);
    assert!(
        fp[0].len() == "plumb-fp-".len() + 24
            && fp[0].chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{fp:?}"
    );
    // …and it is found again by that label.
    api.clear_requests();
    assert_eq!(deliver_ok(&s, &ev, None).await, id);
    assert_eq!(api.issues().len(), 1);
    assert_eq!(api.requests()[0].q("labels"), Some(fp[0].as_str()));
}

// ----------------------------------------------------------------------------------------------------------------
// Edges of the lifecycle.

#[tokio::test]
async fn close_with_no_ticket_is_a_no_op() {
    for flavor in [Flavor::Github, Flavor::Gitlab, Flavor::Jira] {
        let (api, s) = setup(flavor);
        let d = deliver(&s, &event(TicketAction::Close, Trigger::Resolved), None)
            .await
            .unwrap_or_else(|e| panic!("{flavor:?}: {e}"));
        assert_eq!(d, Delivered { external_id: None }, "{flavor:?}");
        assert_eq!(
            api.requests().len(),
            1,
            "{flavor:?}: only the search: {:?}",
            api.lines()
        );
        assert!(api.issues().is_empty());
    }
}

#[tokio::test]
async fn known_ticket_that_is_gone_falls_back_to_marker_then_create() {
    for flavor in [Flavor::Github, Flavor::Gitlab, Flavor::Jira] {
        let (api, s) = setup(flavor);
        let gone = if flavor == Flavor::Jira {
            "OPS-404"
        } else {
            "404"
        };
        let id = deliver_ok(
            &s,
            &event(TicketAction::Comment, Trigger::ValueChanged),
            Some(gone),
        )
        .await;
        assert_ne!(id, gone);
        assert_eq!(api.issues().len(), 1, "{flavor:?}");
        assert_eq!(
            api.lines().len(),
            3,
            "{flavor:?}: get, search, create: {:?}",
            api.lines()
        );
    }
}

#[tokio::test]
async fn reopen_with_no_ticket_creates_one() {
    let (api, s) = setup(Flavor::Github);
    let id = deliver_ok(&s, &event(TicketAction::Reopen, Trigger::Regression), None).await;
    assert_eq!(api.issues().len(), 1);
    assert!(api.issue(&id).open);
    assert!(api.issue(&id).body.contains("- **Trigger:** regression"));
}

// ----------------------------------------------------------------------------------------------------------------
// (6) Retries, permanent errors, no token in any error.

async fn retry_and_auth(flavor: Flavor) {
    let (api, s) = setup(flavor);

    // 429 with Retry-After: 2 → retry after 2s; the next attempt goes through and creates exactly one issue.
    api.script(429, &[("Retry-After", "2")], r#"{"message":"slow down"}"#);
    let e = deliver(&s, &event(TicketAction::Open, Trigger::Firing), None)
        .await
        .unwrap_err();
    match &e {
        DeliveryError::Retry { after, reason } => {
            assert_eq!(*after, Some(Duration::from_secs(2)));
            assert!(
                reason.contains("HTTP 429") && reason.contains("sink tickets"),
                "{reason}"
            );
        }
        other => panic!("{flavor:?}: {other:?}"),
    }
    secret_free(&e);
    let id = deliver_ok(&s, &event(TicketAction::Open, Trigger::Firing), None).await;
    assert_eq!(api.issues().len(), 1);

    // 500 → retry without a delay.
    api.script(500, &[], "oops");
    let e = deliver(
        &s,
        &event(TicketAction::Comment, Trigger::Reminder),
        Some(&id),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, DeliveryError::Retry { after: None, .. }),
        "{e:?}"
    );
    secret_free(&e);

    // 422 (GitHub's validation failure) → permanent.
    api.script(422, &[], r#"{"message":"Validation Failed"}"#);
    let e = deliver(
        &s,
        &event(TicketAction::Comment, Trigger::Reminder),
        Some(&id),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");

    // A wrong token: 401 → permanent; the fake echoes the credentials it got, the error must not.
    let mut bad = s.clone();
    bad.token = Some("wrong-T0KEN-abcdef".into());
    let e = deliver(&bad, &event(TicketAction::Open, Trigger::Firing), None)
        .await
        .unwrap_err();
    match &e {
        DeliveryError::Permanent { reason } => {
            assert!(reason.contains("HTTP 401"), "{reason}");
            assert!(
                reason.contains("[redacted]"),
                "the echo was scrubbed: {reason}"
            );
        }
        other => panic!("{flavor:?}: {other:?}"),
    }
    secret_free(&e);
    let last = api.requests().pop().unwrap();
    assert_eq!(
        last.header_count("authorization") + last.header_count("private-token"),
        1
    );
    assert_eq!(api.issues().len(), 1, "nothing created with a bad token");
}

#[tokio::test]
async fn github_retry_after_and_bad_token() {
    retry_and_auth(Flavor::Github).await;
}

#[tokio::test]
async fn gitlab_retry_after_and_bad_token() {
    retry_and_auth(Flavor::Gitlab).await;
}

#[tokio::test]
async fn jira_retry_after_and_bad_token() {
    retry_and_auth(Flavor::Jira).await;
}

#[tokio::test]
async fn github_rate_limit_403_is_retried() {
    let (api, s) = setup(Flavor::Github);
    api.script(
        403,
        &[("x-ratelimit-remaining", "0"), ("retry-after", "7")],
        r#"{"message":"API rate limit exceeded"}"#,
    );
    let e = deliver(&s, &event(TicketAction::Open, Trigger::Firing), None)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        DeliveryError::Retry {
            after: Some(Duration::from_secs(7)),
            reason:
                "sink tickets: github list issues labelled plumb: HTTP 403: API rate limit exceeded"
                    .into()
        }
    );
    // A plain 403 (no permission) stays permanent.
    api.script(
        403,
        &[],
        r#"{"message":"Resource not accessible by integration"}"#,
    );
    let e = deliver(&s, &event(TicketAction::Open, Trigger::Firing), None)
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
}

#[tokio::test]
async fn network_error_is_retryable() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let s = sink(SinkKind::Gitlab, &url);
    let e = deliver(&s, &event(TicketAction::Open, Trigger::Firing), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, DeliveryError::Retry { after: None, .. }),
        "{e:?}"
    );
    secret_free(&e);
}

// ----------------------------------------------------------------------------------------------------------------
// Jira specifics: (7) transitions by name, and the two auth schemes.

#[tokio::test]
async fn jira_close_with_unknown_transition_names_the_available_ones() {
    let (api, mut s) = setup(Flavor::Jira);
    let id = deliver_ok(&s, &event(TicketAction::Open, Trigger::Firing), None).await;
    s.close_transition = "Resolve Issue".into();
    api.clear_requests();
    let e = deliver(
        &s,
        &event(TicketAction::Close, Trigger::Resolved),
        Some(&id),
    )
    .await
    .unwrap_err();
    let DeliveryError::Permanent { reason } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        reason,
        "sink tickets: jira close issue OPS-1: no transition named `Resolve Issue`; available: In Progress, Done"
    );
    assert!(api.issue(&id).open, "still open");
    assert!(
        api.issue(&id).comments.is_empty(),
        "no 'resolved' comment on a ticket that stays open"
    );
    assert_eq!(
        api.lines(),
        [
            "GET /rest/api/3/issue/OPS-1",
            "GET /rest/api/3/issue/OPS-1/transitions"
        ]
    );

    // Names match case-insensitively.
    s.close_transition = "done".into();
    deliver_ok(
        &s,
        &event(TicketAction::Close, Trigger::Resolved),
        Some(&id),
    )
    .await;
    assert!(!api.issue(&id).open);
}

#[tokio::test]
async fn jira_token_alone_is_bearer() {
    let api = TicketApi::start(
        Flavor::Jira,
        "OPS",
        ("authorization", &format!("Bearer {TOKEN}")),
    );
    let mut s = sink(SinkKind::Jira, &format!("{}/", api.url()));
    s.user = None;
    let id = deliver_ok(&s, &event(TicketAction::Open, Trigger::Firing), None).await;
    assert_eq!(id, "OPS-1");
    for r in api.requests() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
}

#[tokio::test]
async fn jira_under_a_context_path() {
    // Data Center often lives under a path such as /jira: the API paths go beneath it.
    let api = TicketApi::start(Flavor::Jira, "OPS", ("authorization", &jira_basic()));
    let s = sink(SinkKind::Jira, &format!("{}/jira", api.url()));
    let e = deliver(&s, &event(TicketAction::Open, Trigger::Firing), None)
        .await
        .unwrap_err();
    // The fake serves at the root, so the request must have gone to /jira/rest/api/3/….
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
    assert_eq!(api.lines(), ["GET /jira/rest/api/3/search/jql"]);
}
