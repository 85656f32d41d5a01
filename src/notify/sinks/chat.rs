//! The chat sinks: Slack, Microsoft Teams (Workflows), Mattermost, Discord and Google Chat incoming webhooks.
//!
//! One digest becomes one `POST` of the payload [`crate::notify::render`] builds for the sink's kind, as
//! `application/json`. The answer is classified by [`classify_status`]: any 2xx is delivered (Teams Workflows
//! answers `202 Accepted` with an empty body), 408/425/429/5xx and network errors are retried (honouring
//! `Retry-After`), other statuses are permanent. Chat webhooks are not idempotent: a timeout after the server took
//! the message can mean a duplicate post on retry.
//!
//! A webhook URL is a credential: it never appears in an error (see [`network_error`]).
//!
//! Google Chat only threads messages by the body's `thread.threadKey` when the URL asks for it, so
//! `messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` is added to its URL unless it is already there.

use super::{Delivered, DeliveryError, SinkKind, SinkPlan, classify_status, network_error};
use crate::notify::{Digest, render};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

/// Deliver one digest to one chat webhook.
pub async fn send(
    http: &reqwest::Client,
    sink: &SinkPlan,
    msg: &Digest,
) -> Result<Delivered, DeliveryError> {
    let payload = match sink.kind {
        SinkKind::Slack => render::slack(msg),
        SinkKind::Teams => render::teams(msg),
        SinkKind::Mattermost => render::mattermost(msg),
        SinkKind::Discord => render::discord(msg),
        SinkKind::GoogleChat => render::google_chat(msg),
        other => {
            return Err(DeliveryError::Permanent {
                reason: format!("a {} sink is not a chat sink", other.as_str()),
            });
        }
    };
    let mut url = parse_url(sink)?;
    if sink.kind == SinkKind::GoogleChat
        && !url.query_pairs().any(|(k, _)| k == "messageReplyOption")
    {
        url.query_pairs_mut()
            .append_pair("messageReplyOption", "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
    }
    let body = serde_json::to_vec(&payload).map_err(|e| DeliveryError::Permanent {
        reason: format!("cannot encode the payload: {e}"),
    })?;
    post_json(http, url, body, HeaderMap::new()).await?;
    Ok(Delivered::default())
}

/// The sink's URL, parsed; the error never repeats it (it may hold a token).
pub(crate) fn parse_url(sink: &SinkPlan) -> Result<reqwest::Url, DeliveryError> {
    reqwest::Url::parse(&sink.url).map_err(|e| DeliveryError::Permanent {
        reason: format!("the sink url is not a valid URL ({e})"),
    })
}

/// `POST` a JSON body with extra headers and classify the answer. Shared by the chat, webhook and PagerDuty
/// sinks.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    url: reqwest::Url,
    body: Vec<u8>,
    mut headers: HeaderMap,
) -> Result<(), DeliveryError> {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let resp = http
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(network_error)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let head = resp.headers().clone();
    // The body only explains a failure; one that cannot be read leaves the reason at the status.
    let text = resp.text().await.unwrap_or_default();
    classify_status(status, &head, &text)
}
