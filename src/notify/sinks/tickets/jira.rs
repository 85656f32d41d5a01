//! Jira: REST API v3 with ADF descriptions. Cloud authenticates with `user` (the account email) and an API token
//! (basic); Data Center with a personal access token alone (bearer). The marker is the label `plumb-fp-KEY`, found
//! with the `search/jql` endpoint (which is eventually consistent: the store's key is the primary record). Close
//! and reopen are workflow transitions picked by name (`close_transition`, `reopen_transition`).

use super::{Api, Doc, Ticket, body, fp_label, id_of, labels, pick, title};
use crate::notify::TicketEvent;
use crate::notify::sinks::DeliveryError;
use base64::Engine as _;
use reqwest::{Method, Url};
use serde_json::{Value, json};

pub(crate) struct Jira<'a> {
    api: Api<'a>,
    project: String,
}

impl<'a> Jira<'a> {
    pub fn new(mut api: Api<'a>) -> Result<Jira<'a>, DeliveryError> {
        let project = api
            .sink
            .project
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .ok_or_else(|| api.permanent("", "no project configured"))?;
        let token = api.token()?;
        let auth = match api.sink.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => {
                let b64 =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
                api.secret(&b64);
                format!("Basic {b64}")
            }
            None => format!("Bearer {token}"),
        };
        api.header("accept", "application/json", false)?;
        api.header("authorization", &auth, true)?;
        Ok(Jira { api, project })
    }

    fn url(&self, segs: &[&str], query: &[(&str, &str)]) -> Url {
        let mut all = vec!["rest", "api", "3"];
        all.extend_from_slice(segs);
        self.api.url(&all, query)
    }

    fn ticket(v: &Value, fallback: &str) -> Ticket {
        let category = &v["fields"]["status"]["statusCategory"]["key"];
        Ticket {
            id: id_of(&v["key"]).unwrap_or_else(|| fallback.to_string()),
            open: category != "done",
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Ticket>, DeliveryError> {
        let what = format!("get issue {id}");
        let v = self
            .api
            .get_opt(self.url(&["issue", id], &[("fields", "status")]), &what)
            .await?;
        Ok(v.map(|v| Self::ticket(&v, id)))
    }

    pub async fn find(&self, key: &str) -> Result<Option<Ticket>, DeliveryError> {
        let what = "search issues by label";
        let jql = format!("labels=\"{}\"", fp_label(key));
        let v = self
            .api
            .call(
                Method::GET,
                self.url(
                    &["search", "jql"],
                    &[("jql", &jql), ("fields", "key,status")],
                ),
                None,
                what,
            )
            .await?;
        let found = v["issues"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| id_of(&i["key"]).is_some())
            .map(|i| Self::ticket(i, ""))
            .collect();
        Ok(pick(found))
    }

    pub async fn create(&self, ev: &TicketEvent) -> Result<String, DeliveryError> {
        let what = "create issue";
        let payload = json!({
            "fields": {
                "project": {"key": self.project},
                "issuetype": {"name": self.api.sink.issue_type},
                "summary": title(ev),
                "labels": labels(self.api.sink, &ev.key, true),
                "description": body(ev).adf(),
            }
        });
        let v = self
            .api
            .call(
                Method::POST,
                self.url(&["issue"], &[]),
                Some(&payload),
                what,
            )
            .await?;
        id_of(&v["key"]).ok_or_else(|| self.api.permanent(what, "the answer has no issue key"))
    }

    pub async fn comment(&self, id: &str, note: &Doc) -> Result<(), DeliveryError> {
        let what = format!("comment on issue {id}");
        let payload = json!({ "body": note.adf() });
        self.api
            .call(
                Method::POST,
                self.url(&["issue", id, "comment"], &[]),
                Some(&payload),
                &what,
            )
            .await
            .map(drop)
    }

    /// Close or reopen through the transition named in the sink (case-insensitive).
    pub async fn set_open(&self, id: &str, open: bool) -> Result<(), DeliveryError> {
        let (verb, name) = if open {
            ("reopen", self.api.sink.reopen_transition.as_str())
        } else {
            ("close", self.api.sink.close_transition.as_str())
        };
        let what = format!("{verb} issue {id}");
        let url = self.url(&["issue", id, "transitions"], &[]);
        let v = self.api.call(Method::GET, url.clone(), None, &what).await?;
        let available: Vec<(String, String)> = v["transitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((id_of(&t["id"])?, t["name"].as_str()?.to_string())))
            .collect();
        let Some((tid, _)) = available
            .iter()
            .find(|(_, n)| n.trim().eq_ignore_ascii_case(name.trim()))
        else {
            let names: Vec<&str> = available.iter().map(|(_, n)| n.as_str()).collect();
            return Err(self.api.permanent(
                &what,
                &format!(
                    "no transition named `{name}`; available: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        };
        let payload = json!({"transition": {"id": tid}});
        self.api
            .call(Method::POST, url, Some(&payload), &what)
            .await
            .map(drop)
    }
}
