//! GitHub Issues: REST API `2022-11-28`, bearer token. The marker is a hidden `<!-- plumb-fp: KEY -->` line in the
//! body of an issue labelled `plumb`; the search lists `plumb` issues in every state and scans their bodies (the
//! search API lags behind).

use super::{Answer, Api, Doc, Ticket, body, body_marker, id_of, labels, pick, title};
use crate::notify::TicketEvent;
use crate::notify::sinks::{DeliveryError, parse_retry_after};
use reqwest::{Method, Url};
use serde_json::{Value, json};
use std::time::Duration;

/// How many pages of 100 `plumb` issues a marker search reads at most.
const MAX_PAGES: usize = 20;

pub(crate) struct Github<'a> {
    api: Api<'a>,
    owner: String,
    repo: String,
}

impl<'a> Github<'a> {
    pub fn new(mut api: Api<'a>) -> Result<Github<'a>, DeliveryError> {
        let (owner, repo) = api
            .sink
            .repo
            .as_deref()
            .and_then(|r| r.trim().split_once('/'))
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
            .map(|(o, r)| (o.to_string(), r.to_string()))
            .ok_or_else(|| api.permanent("", "repo must be `owner/name`"))?;
        let token = api.token()?;
        api.header("accept", "application/vnd.github+json", false)?;
        api.header("authorization", &format!("Bearer {token}"), true)?;
        api.header("x-github-api-version", "2022-11-28", false)?;
        Ok(Github { api, owner, repo })
    }

    fn url(&self, tail: &[&str], query: &[(&str, &str)]) -> Url {
        let mut segs = vec!["repos", &self.owner, &self.repo, "issues"];
        segs.extend_from_slice(tail);
        self.api.url(&segs, query)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Ticket>, DeliveryError> {
        let what = format!("get issue #{id}");
        let Some(v) = self.api.get_opt(self.url(&[id], &[]), &what).await? else {
            return Ok(None);
        };
        Ok(Some(Ticket {
            id: id_of(&v["number"]).unwrap_or_else(|| id.to_string()),
            open: v["state"] != "closed",
        }))
    }

    pub async fn find(&self, key: &str) -> Result<Option<Ticket>, DeliveryError> {
        let marker = body_marker(key);
        let what = "list issues labelled plumb";
        let mut url = self.url(
            &[],
            &[("labels", "plumb"), ("state", "all"), ("per_page", "100")],
        );
        let mut found = Vec::new();
        for _ in 0..MAX_PAGES {
            let a = self.api.raw(Method::GET, url.clone(), None, what).await?;
            self.api.check(&a, what)?;
            let v = a.json().map_err(|e| self.api.permanent(what, &e))?;
            for issue in v.as_array().into_iter().flatten() {
                // The issues API lists pull requests too.
                if issue.get("pull_request").is_some_and(|p| !p.is_null()) {
                    continue;
                }
                if issue["body"].as_str().is_some_and(|b| b.contains(&marker))
                    && let Some(id) = id_of(&issue["number"])
                {
                    let open = issue["state"] != "closed";
                    found.push(Ticket { id, open });
                    if open {
                        return Ok(pick(found));
                    }
                }
            }
            match next_link(&a).filter(|u| self.api.under_base(u)) {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(pick(found))
    }

    pub async fn create(&self, ev: &TicketEvent) -> Result<String, DeliveryError> {
        let what = "create issue";
        let payload = json!({
            "title": title(ev),
            "body": body(ev).markdown(),
            "labels": labels(self.api.sink, &ev.key, false),
        });
        let v = self
            .api
            .call(Method::POST, self.url(&[], &[]), Some(&payload), what)
            .await?;
        id_of(&v["number"])
            .ok_or_else(|| self.api.permanent(what, "the answer has no issue number"))
    }

    pub async fn comment(&self, id: &str, note: &Doc) -> Result<(), DeliveryError> {
        let what = format!("comment on issue #{id}");
        let payload = json!({ "body": note.markdown() });
        self.api
            .call(
                Method::POST,
                self.url(&[id, "comments"], &[]),
                Some(&payload),
                &what,
            )
            .await
            .map(drop)
    }

    pub async fn set_open(&self, id: &str, open: bool) -> Result<(), DeliveryError> {
        let (what, payload) = if open {
            (format!("reopen issue #{id}"), json!({"state": "open"}))
        } else {
            (
                format!("close issue #{id}"),
                json!({"state": "closed", "state_reason": "completed"}),
            )
        };
        self.api
            .call(Method::PATCH, self.url(&[id], &[]), Some(&payload), &what)
            .await
            .map(drop)
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(a: &Answer) -> Option<Url> {
    let link = a.headers.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        if is_next { Url::parse(url).ok() } else { None }
    })
}

/// GitHub's rate limits answer 403 (or 429) with `x-ratelimit-remaining: 0` or a `Retry-After`: worth waiting for,
/// unlike a 403 for missing permissions.
pub(crate) fn rate_limited(a: &Answer) -> Option<DeliveryError> {
    if !matches!(a.status.as_u16(), 403 | 429) {
        return None;
    }
    let header = |n: &str| a.headers.get(n).and_then(|v| v.to_str().ok());
    let retry_after = header("retry-after").and_then(parse_retry_after);
    let exhausted = header("x-ratelimit-remaining").is_some_and(|v| v.trim() == "0");
    if retry_after.is_none() && !exhausted {
        return None;
    }
    let after = retry_after.or_else(|| {
        let reset: i64 = header("x-ratelimit-reset")?.trim().parse().ok()?;
        let secs = reset - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(secs.max(0) as u64))
    });
    let msg = match serde_json::from_str::<Value>(&a.body) {
        Ok(v) => v["message"].as_str().unwrap_or("rate limited").to_string(),
        Err(_) => "rate limited".to_string(),
    };
    let snippet: String = msg.chars().take(200).collect();
    Some(DeliveryError::Retry {
        after,
        reason: format!("HTTP {}: {snippet}", a.status.as_u16()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: body.into(),
        }
    }

    #[test]
    fn next_links_are_found() {
        let a = answer(
            200,
            &[(
                "link",
                "<https://api.github.com/repos/a/b/issues?page=3>; rel=\"last\", <https://api.github.com/repos/a/b/issues?page=2>; rel=\"next\"",
            )],
            "[]",
        );
        assert_eq!(
            next_link(&a).unwrap().as_str(),
            "https://api.github.com/repos/a/b/issues?page=2"
        );
        assert_eq!(next_link(&answer(200, &[], "[]")), None);
    }

    #[test]
    fn rate_limits_are_retried_permissions_are_not() {
        let e = rate_limited(&answer(
            403,
            &[("retry-after", "60")],
            r#"{"message":"You have exceeded a secondary rate limit"}"#,
        ));
        assert_eq!(
            e,
            Some(DeliveryError::Retry {
                after: Some(Duration::from_secs(60)),
                reason: "HTTP 403: You have exceeded a secondary rate limit".into()
            })
        );
        let reset = (chrono::Utc::now().timestamp() + 30).to_string();
        let e = rate_limited(&answer(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ],
            "",
        ));
        assert!(
            matches!(e, Some(DeliveryError::Retry { after: Some(d), .. }) if d <= Duration::from_secs(30) && d >= Duration::from_secs(28)),
            "{e:?}"
        );
        assert_eq!(
            rate_limited(&answer(403, &[("x-ratelimit-remaining", "4999")], "")),
            None
        );
        assert_eq!(
            rate_limited(&answer(401, &[("retry-after", "1")], "")),
            None
        );
    }
}
