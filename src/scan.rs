//! Scan: one pass over a set of nodes. `[scan] concurrency` tokio tasks (workers) each take the next (node, config)
//! target until none is left; fetching, parsing and comparing happen inside the worker, so the work spreads over
//! every core, and at most `concurrency` fetches are in flight. One node failing never stops the others: it
//! becomes a finding of its own.

use crate::baseline::BaselineHistory;
use crate::classify::{self, TargetResult};
use crate::collect::Collector;
use crate::config::Plan;
use crate::finding::Finding;
use crate::inventory::Selector;
use crate::lifecycle::{self, Coverage, Gate, StepInput};
use crate::redact::Redactor;
use crate::report::Report;
use crate::store::{Memory, ScanCommit, Snapshot, Store, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// The redactor, previous snapshot hashes and superseded baselines.
    pub context: classify::Context,
    /// Called with (done, total) as targets finish (the progress bar of `plumb audit` on a terminal).
    pub progress: Option<Progress>,
    /// Where snapshot contents stream while the scan runs (set by [`prepare`] when the store has one).
    pub spool: Option<Arc<crate::store::spool::Spool>>,
}

/// A progress callback.
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
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

/// The (node index, config index) targets a scan covers.
pub fn select(plan: &Plan, opts: &ScanOptions) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (ni, node) in plan.nodes.iter().enumerate() {
        if !opts.selector.matches(node) || opts.node.as_ref().is_some_and(|n| n != &node.name) {
            continue;
        }
        for (ci, cfg) in plan.configs.iter().enumerate() {
            if cfg.selector.matches(node) && opts.config.as_ref().is_none_or(|c| c == &cfg.name) {
                out.push((ni, ci));
            }
        }
    }
    out
}

/// Run one scan.
pub async fn run(
    plan: Arc<Plan>,
    collector: Arc<Collector>,
    mut opts: ScanOptions,
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
    let targets_wanted = select(&plan, &opts);
    let nodes_selected = targets_wanted
        .iter()
        .map(|(n, _)| *n)
        .collect::<HashSet<_>>()
        .len();
    if let (Some(n), Some(c)) = (&opts.node, &opts.config)
        && targets_wanted.is_empty()
    {
        return Err(ScanError::NotCarried {
            node: n.clone(),
            config: c.clone(),
        });
    }

    let spool = opts.spool.take();
    let total = targets_wanted.len();
    // Each result in its target's place (the order `select` gave), stored as it comes (a worker that failed loses
    // no result stored before).
    let slots: Arc<std::sync::Mutex<Vec<Option<TargetResult>>>> = Arc::new(std::sync::Mutex::new(
        std::iter::repeat_with(|| None).take(total).collect(),
    ));
    // Shared by every worker through one reference count each.
    let shared_ctx = Arc::new(std::mem::take(&mut opts.context));
    let shared_now: Arc<str> = Arc::from(now.as_str());
    let targets_wanted = Arc::new(targets_wanted);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let keep = opts.keep_documents;
    // `concurrency` workers, each taking the next target until none is left: at most `concurrency` fetches in
    // flight, as many futures alive, and no task to spawn nor semaphore to wake per target.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..plan.scan.concurrency.clamp(1, total.max(1)) {
        let (plan, collector, now, ctx, spool) = (
            plan.clone(),
            collector.clone(),
            shared_now.clone(),
            shared_ctx.clone(),
            spool.clone(),
        );
        let (targets, next, done, slots) = (
            targets_wanted.clone(),
            next.clone(),
            done.clone(),
            slots.clone(),
        );
        let progress = opts.progress.clone();
        set.spawn(async move {
            // One attempt timer for all this worker's fetches (see `collect::attempt_timer`).
            let mut timer = std::pin::pin!(crate::collect::attempt_timer());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(ni, ci)) = targets.get(i) else {
                    break;
                };
                let r = scan_one(
                    &plan,
                    &collector,
                    ni,
                    ci,
                    keep,
                    &ctx,
                    &now,
                    spool.as_deref(),
                    timer.as_mut(),
                )
                .await;
                let mut slots = slots
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Some(r);
                }
                drop(slots);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(p) = &progress {
                    (p.0)(d, total);
                }
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "a scan worker failed");
        }
    }
    let slots = match Arc::try_unwrap(slots) {
        Ok(m) => m
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        Err(shared) => std::mem::take(
            &mut *shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        ),
    };
    // In place: `Option<TargetResult>` is a `TargetResult` in size, and `filter_map` (unlike `flatten`) collects
    // into the same allocation instead of a new one of tens of megabytes at fleet scale.
    #[allow(clippy::filter_map_identity)]
    let mut targets: Vec<TargetResult> = slots.into_iter().filter_map(|t| t).collect();
    if let Some(spool) = spool {
        let out = spool.finish();
        if let Some(e) = &out.error {
            tracing::warn!(error = %e, kept = out.returned.len(), "snapshot contents could not be spooled; the commit writes them");
        }
        if !out.returned.is_empty() {
            let mut returned = out.returned;
            for t in targets.iter_mut().filter(|t| t.spooled) {
                if let Some((hash, content)) = &mut t.snapshot
                    && let Some(text) = returned.remove(hash.as_str())
                {
                    *content = Some(text);
                    t.spooled = false;
                }
            }
        }
    }
    // Sorted by (node, config): already so when the plan lists them so (the usual case), which is checked in one pass.
    fn key(t: &TargetResult) -> (&str, &str) {
        (&t.node, &t.config)
    }
    if !targets.is_sorted_by(|a, b| key(a) <= key(b)) {
        targets.sort_by(|a, b| key(a).cmp(&key(b)));
    }
    let finished = chrono::Utc::now();
    let report = Report::build(started, finished, nodes_selected, &targets);
    Ok(ScanOutput { report, targets })
}

/// Fetch and evaluate one target of a scan: node `ni`, config `ci` of the plan.
#[allow(clippy::too_many_arguments)]
async fn scan_one(
    plan: &Plan,
    collector: &Collector,
    ni: usize,
    ci: usize,
    keep: bool,
    ctx: &classify::Context,
    now: &str,
    spool: Option<&crate::store::spool::Spool>,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
) -> TargetResult {
    let node = &plan.nodes[ni];
    let cfg = &plan.configs[ci];
    // What is known before the fetch: with a stored input key, the fetch is conditional; with byte layouts
    // learned, the body is compared as it arrives.
    let known = classify::Known::new(plan, node, cfg, keep, ctx);
    let mut expect = known.expect();
    let t0 = std::time::Instant::now();
    let fetched = collector
        .fetch_expecting(
            plan,
            cfg,
            node,
            known.validators(),
            expect.as_mut(),
            Some(timer),
        )
        .await
        .map_err(|e| e.to_string());
    drop(expect);
    let fetch_seconds = t0.elapsed().as_secs_f64();
    // A panic in a parser must not sink the scan: it becomes an `invalid` finding for this target alone.
    let mut r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        classify::evaluate_fetched(plan, node, cfg, fetched, now, keep, ctx, known)
    }))
    .unwrap_or_else(|_| classify::crashed(node, cfg, now));
    r.fetch_seconds = fetch_seconds;
    // The content goes to the store now rather than waiting in memory for the commit.
    if let (Some(spool), Some((hash, content @ Some(_)))) = (spool, &mut r.snapshot)
        && let Some(text) = content.take()
    {
        match spool.put(hash.clone(), text).await {
            Ok(()) => r.spooled = true,
            Err((_, text)) => *content = Some(text),
        }
    }
    r
}

/// Open the store's view for a scan: the redaction key, the baseline versions in force (recorded, so that edits
/// of baseline files become versions), superseded versions for regression checks, and previous snapshot hashes.
/// Returns the memory the lifecycle needs after the scan.
pub fn prepare(
    plan: &Plan,
    store: &mut dyn Store,
    opts: &mut ScanOptions,
    now: &str,
) -> Result<Memory, PrepareError> {
    let key = store.secret_key()?;
    let redactor = Redactor::new(key, &plan.redact).map_err(|bad| {
        PrepareError::Redact(
            bad.into_iter()
                .map(|(p, m)| format!("`{p}`: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let versions =
        store.record_baselines(&plan.baselines.versions(&plan.root, Some(&redactor)), now)?;
    // Compiled in an earlier scan of this plan with this key, if one ran.
    let fast = plan.scratch.compiled(redactor.id());
    let targets = select(plan, opts)
        .into_iter()
        .map(|(n, c)| (plan.nodes[n].name.clone(), plan.configs[c].name.clone()))
        .collect::<Vec<_>>();
    let memory = store.load(&targets)?;
    opts.context = classify::Context {
        redactor: Some(Arc::new(redactor)),
        targets: memory.targets.clone(),
        history: Arc::new(BaselineHistory::from_versions(&plan.root, &versions)),
        observed: Arc::new(classify::observations(&memory.records)),
        digests: Some(
            plan.scratch
                .digests(classify::InputDigests::new(plan, &versions)),
        ),
        fast,
    };
    opts.spool = store.spool(now).map(Arc::new);
    Ok(memory)
}

/// Why a recorded scan could not start or be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("[redact]: {0}")]
    Redact(String),
}

/// After a scan: run the lifecycle over what the store remembers, plan the alerts (when `notify`), write everything
/// in one transaction — finding changes and the alerts they cause together — prune, and give the report its
/// states, resolutions, groups and initial inventory. Returns how many alerts went into the outbox. `output` is what
/// [`run`] gave (its targets sorted by node and config) after [`prepare`] gave `memory`.
pub fn record(
    plan: &Plan,
    store: &mut dyn Store,
    memory: &Memory,
    output: &mut ScanOutput,
    notify: bool,
) -> Result<usize, StoreError> {
    let now = chrono::DateTime::parse_from_rfc3339(&output.report.started_at)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    // Moved, not copied, out of the targets from here on (the report has its own copies): at fleet scale every
    // copy of a per-target field is tens of megabytes.
    let observed: Vec<Finding> = output
        .targets
        .iter_mut()
        .flat_map(|t| std::mem::take(&mut t.findings))
        .collect();
    let gate = |f: &Finding| -> Option<Gate> {
        if let Some(id) = &f.rule
            && let Some(r) = plan.rules.rules.iter().find(|r| &r.id == id)
            && r.gate.is_some()
        {
            return r.gate;
        }
        plan.config(&f.config).and_then(|c| c.gate)
    };
    // Asked of a few targets only (see `StepInput::coverage`): the targets are sorted by (node, config), and the
    // store's memory says which it knew.
    let targets = &output.targets;
    let coverage = |node: &str, config: &str| -> Coverage {
        let Ok(i) =
            targets.binary_search_by(|t| (t.node.as_str(), t.config.as_str()).cmp(&(node, config)))
        else {
            return Coverage::default();
        };
        Coverage {
            scanned: true,
            read: targets[i].read,
            first_time: memory.first_time(&(node.to_string(), config.to_string())),
        }
    };
    let step = lifecycle::step(StepInput {
        now,
        settings: plan.lifecycle,
        prior: &memory.records,
        observed,
        coverage: &coverage,
        acks: &memory.acks,
        gate: &gate,
    });
    // Only what changed: the store writes nothing for an unchanged snapshot.
    let snapshots = output
        .targets
        .iter_mut()
        .filter(|t| {
            t.spooled
                || t.snapshot
                    .as_ref()
                    .is_some_and(|(_, content)| content.is_some())
        })
        .filter_map(|t| {
            let spooled = t.spooled;
            t.snapshot.take().map(|(hash, content)| Snapshot {
                node: t.node.clone(),
                config: t.config.clone(),
                hash,
                changed: content.is_some() || spooled,
                content,
            })
        })
        .collect();
    // Input keys: a full evaluation of read content remembers its key (or forgets the old one); a warm result
    // rewrites it only when the node's validators changed; an unread target keeps it, as it keeps its findings.
    let inputs = output
        .targets
        .iter_mut()
        .filter_map(|t| {
            let target = |t: &TargetResult| (t.node.clone(), t.config.clone());
            if t.unchanged {
                t.input.take().map(|i| (target(t), Some(i)))
            } else if t.read {
                Some((target(t), t.input.take()))
            } else {
                None
            }
        })
        .collect();
    let unread_new_targets = output
        .targets
        .iter()
        .filter(|t| !t.read)
        .map(|t| (t.node.clone(), t.config.clone()))
        .filter(|t| memory.first_time(t))
        .collect();
    let r = &mut output.report;
    r.set_findings(step.current);
    r.resolved = step.resolved;
    r.flapping_started = step.started_flapping;
    r.acks_ended = step.ended_acks.clone();
    let planned = if notify {
        let sinks = plan
            .sinks
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect();
        let nodes = plan
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.clone()))
            .collect();
        crate::notify::plan::plan(&crate::notify::plan::PlanInput {
            report: r,
            routes: &plan.routes,
            sinks: &sinks,
            nodes: &nodes,
            log: &memory.notify_log,
            now,
            report_url: plan
                .report_url
                .as_ref()
                .map(|u| u.replace("{scan_id}", &r.scan_id)),
        })
    } else {
        crate::notify::plan::Planned::default()
    };
    let queued = planned.messages.len();
    store.commit(&ScanCommit {
        scan_id: r.scan_id.clone(),
        started_at: r.started_at.clone(),
        finished_at: r.finished_at.clone(),
        nodes_total: r.nodes.total,
        nodes_read: r.nodes.read,
        nodes_unreadable: r.nodes.unreadable,
        findings: r.findings.len(),
        snapshots,
        unread_new_targets,
        records: step.records,
        ended_acks: step.ended_acks,
        outbox: planned.messages,
        notify_log: planned.log,
        inputs,
    })?;
    if let Some(keep) = plan.keep {
        let cut = now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        store.prune(&cut.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))?;
    }
    Ok(queued)
}
