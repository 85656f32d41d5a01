//! GitLab issues: REST API v4, `PRIVATE-TOKEN`. The marker is the label `plumb-fp-KEY` (exact label match); the
//! project is an id or a `group/name` path (sent as one encoded segment, `group%2Fname`).

use super::{Api, Doc, Ticket, body, fp_label, id_of, labels, pick, title};
use crate::notify::TicketEvent;
use crate::notify::sinks::DeliveryError;
use reqwest::{Method, Url};
use serde_json::{Value, json};

pub(crate) struct Gitlab<'a> {
    api: Api<'a>,
    project: String,
}

impl<'a> Gitlab<'a> {
    pub fn new(mut api: Api<'a>) -> Result<Gitlab<'a>, DeliveryError> {
        let project = api
            .sink
            .project
            .as_deref()
            .map(|p| p.trim().trim_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| api.permanent("", "no project configured"))?;
        let token = api.token()?;
        api.header("accept", "application/json", false)?;
        api.header("private-token", token, true)?;
        Ok(Gitlab { api, project })
    }

    fn url(&self, tail: &[&str], query: &[(&str, &str)]) -> Url {
        let mut segs = vec!["api", "v4", "projects", &self.project, "issues"];
        segs.extend_from_slice(tail);
        self.api.url(&segs, query)
    }

    fn ticket(v: &Value, fallback: &str) -> Ticket {
        Ticket {
            id: id_of(&v["iid"]).unwrap_or_else(|| fallback.to_string()),
            open: v["state"] != "closed",
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Ticket>, DeliveryError> {
        let what = format!("get issue #{id}");
        let v = self.api.get_opt(self.url(&[id], &[]), &what).await?;
        Ok(v.map(|v| Self::ticket(&v, id)))
    }

    pub async fn find(&self, key: &str) -> Result<Option<Ticket>, DeliveryError> {
        let what = "search issues by label";
        let label = fp_label(key);
        let v = self
            .api
            .call(
                Method::GET,
                self.url(&[], &[("labels", &label), ("state", "all")]),
                None,
                what,
            )
            .await?;
        let found = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| id_of(&i["iid"]).is_some())
            .map(|i| Self::ticket(i, ""))
            .collect();
        Ok(pick(found))
    }

    pub async fn create(&self, ev: &TicketEvent) -> Result<String, DeliveryError> {
        let what = "create issue";
        let payload = json!({
            "title": title(ev),
            "description": body(ev).markdown(),
            "labels": labels(self.api.sink, &ev.key, true).join(","),
        });
        let v = self
            .api
            .call(Method::POST, self.url(&[], &[]), Some(&payload), what)
            .await?;
        id_of(&v["iid"]).ok_or_else(|| self.api.permanent(what, "the answer has no issue iid"))
    }

    pub async fn comment(&self, id: &str, note: &Doc) -> Result<(), DeliveryError> {
        let what = format!("comment on issue #{id}");
        let payload = json!({ "body": note.markdown() });
        self.api
            .call(
                Method::POST,
                self.url(&[id, "notes"], &[]),
                Some(&payload),
                &what,
            )
            .await
            .map(drop)
    }

    pub async fn set_open(&self, id: &str, open: bool) -> Result<(), DeliveryError> {
        let (what, event) = if open {
            (format!("reopen issue #{id}"), "reopen")
        } else {
            (format!("close issue #{id}"), "close")
        };
        let payload = json!({ "state_event": event });
        self.api
            .call(Method::PUT, self.url(&[id], &[]), Some(&payload), &what)
            .await
            .map(drop)
    }
}
