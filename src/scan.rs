//! Scan: one pass over a set of nodes. Every (node, config) target is its own tokio task, bounded by a
//! semaphore of `[scan] concurrency`; fetching, parsing and comparing happen inside that task, so the work spreads
//! over every core. One node failing never stops the others: it becomes a finding of its own.

use crate::classify::{self, TargetResult};
use crate::collect::Collector;
use crate::config::Plan;
use crate::inventory::Selector;
use crate::report::Report;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Only nodes matching this selector.
    pub selector: Selector,
    /// Only this node, by name.
    pub node: Option<String>,
    /// Only this config, by name.
    pub config: Option<String>,
    /// Keep each normalized live document (for `diff` and `approve`).
    pub keep_documents: bool,
}

/// A finished scan: the report plus per-target detail.
#[derive(Debug)]
pub struct ScanOutput {
    pub report: Report,
    pub targets: Vec<TargetResult>,
}

/// Why a scan could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error("no node named `{0}`")]
    UnknownNode(String),
    #[error("no config named `{0}`")]
    UnknownConfig(String),
    #[error("node `{node}` does not carry config `{config}`")]
    NotCarried { node: String, config: String },
}

/// Run one scan.
pub async fn run(
    plan: Arc<Plan>,
    collector: Arc<Collector>,
    opts: ScanOptions,
) -> Result<ScanOutput, ScanError> {
    if let Some(n) = &opts.node
        && plan.node(n).is_none()
    {
        return Err(ScanError::UnknownNode(n.clone()));
    }
    if let Some(c) = &opts.config
        && plan.config(c).is_none()
    {
        return Err(ScanError::UnknownConfig(c.clone()));
    }
    let started = chrono::Utc::now();
    let now = started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut targets_wanted: Vec<(usize, usize)> = Vec::new();
    let mut nodes_selected = 0usize;
    for (ni, node) in plan.nodes.iter().enumerate() {
        if !opts.selector.matches(node) || opts.node.as_ref().is_some_and(|n| n != &node.name) {
            continue;
        }
        let before = targets_wanted.len();
        for (ci, cfg) in plan.configs.iter().enumerate() {
            if cfg.selector.matches(node) && opts.config.as_ref().is_none_or(|c| c == &cfg.name) {
                targets_wanted.push((ni, ci));
            }
        }
        if targets_wanted.len() > before {
            nodes_selected += 1;
        }
    }
    if let (Some(n), Some(c)) = (&opts.node, &opts.config)
        && targets_wanted.is_empty()
    {
        return Err(ScanError::NotCarried {
            node: n.clone(),
            config: c.clone(),
        });
    }

    let sem = Arc::new(Semaphore::new(plan.scan.concurrency));
    let mut set = tokio::task::JoinSet::new();
    for (ni, ci) in targets_wanted.iter().copied() {
        let (plan, collector, sem, now) =
            (plan.clone(), collector.clone(), sem.clone(), now.clone());
        let keep = opts.keep_documents;
        set.spawn(async move {
            let permit = sem.acquire_owned().await;
            let node = &plan.nodes[ni];
            let cfg = &plan.configs[ci];
            let fetched = collector
                .fetch(&plan, cfg, node)
                .await
                .map_err(|e| e.to_string());
            drop(permit);
            // A panic in a parser must not sink the scan: it becomes an `invalid` finding for this target alone.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                classify::evaluate(&plan, node, cfg, fetched, &now, keep)
            }))
            .unwrap_or_else(|_| classify::crashed(node, cfg, &now))
        });
    }
    let mut targets = Vec::with_capacity(targets_wanted.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(t) => targets.push(t),
            Err(e) => eprintln!("plumb: a scan task failed: {e}"),
        }
    }
    targets.sort_by(|a, b| (&a.node, &a.config).cmp(&(&b.node, &b.config)));
    let finished = chrono::Utc::now();
    let report = Report::build(started, finished, nodes_selected, &targets);
    Ok(ScanOutput { report, targets })
}
