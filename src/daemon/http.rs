//! The daemon's HTTP listener: `GET /healthz`, `GET /readyz`, `GET /metrics`, `POST /scan?nodes=key=value`.
//! `POST /scan` needs `Authorization: Bearer <[daemon] token>` when a token is configured (it must be, to listen
//! beyond loopback).

use super::Shared;
use crate::inventory::Selector;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/scan", post(scan))
        .with_state(shared);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let reload = s.reload.lock().map(|r| r.clone()).unwrap_or_default();
    let plan = s.plan();
    let running: Vec<String> = s
        .running
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    let body = serde_json::json!({
        "status": if reload.ok { "ok" } else { "degraded" },
        "config": {
            "path": s.config_path.display().to_string(),
            "ok": reload.ok,
            "error": reload.error,
            "last_good_at": reload.last_good_at,
            "last_attempt_at": reload.last_attempt_at,
        },
        "schedules": plan.schedules.iter().map(|sc| serde_json::json!({
            "name": sc.name, "cron": sc.expr, "timezone": sc.tz.name(),
            "next": sc.next_fire(chrono::Utc::now()).map(|t| t.to_rfc3339()),
            "running": running.contains(&sc.name),
        })).collect::<Vec<_>>(),
    });
    // A rejected reload is degraded, not dead: the daemon runs on its last good configuration.
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::SeqCst) && !s.stopping.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let text = s.metrics().render();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn scan(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let plan = s.plan();
    if let Some(token) = &plan.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        }
    }
    if s.stopping.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let selector = match q.get("nodes").map(|n| Selector::parse(n)).transpose() {
        Ok(sel) => sel.unwrap_or_default(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("nodes: {e}\n")).into_response(),
    };
    match super::scan_once(&s, "adhoc", selector).await {
        Some(id) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "scan_id": id })),
        )
            .into_response(),
        None => (
            StatusCode::CONFLICT,
            "an ad-hoc scan is already running, or the scan could not run (see the log)\n",
        )
            .into_response(),
    }
}
