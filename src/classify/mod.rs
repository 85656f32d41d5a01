//! Classify: turn one target's fetch outcome into findings (drift, violation, unreachable, invalid, unbaselined).
//!
//! Pure: no I/O, no clock (the scan passes `now`). A node that could not be read yields only its coverage finding:
//! nothing about its content is invented.

use crate::baseline::Scope;
use crate::collect::{Body, Fetched, Validators};
use crate::compare::{self, Difference};
use crate::config::{ConfigPlan, Plan};
use crate::finding::{Change, Finding, Kind, Severity, State, fingerprint};
use crate::inventory::Node;
use crate::lifecycle::Record;
use crate::normalize::Document;
use crate::rules::{CelCache, Input, Outcome};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub mod fast;

/// What a scan learned about one config of one node.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub node: String,
    pub config: String,
    /// Whether live content was fetched and parsed.
    pub read: bool,
    pub findings: Vec<Finding>,
    /// Unified diff baseline → live, empty when equal or unknown.
    pub unified: String,
    /// The normalized live document, when the caller asked to keep it.
    pub document: Option<Document>,
    /// The baseline file that applied, if any.
    pub baseline: Option<(Scope, PathBuf)>,
    /// The snapshot hash of the redacted live content, and the content itself when it changed since the last scan.
    pub snapshot: Option<(String, Option<crate::store::Content>)>,
    /// How long the fetch took, retries included.
    pub fetch_seconds: f64,
    /// A warm result: the body, baseline and rules are those of the last evaluation (or the node answered
    /// `304 Not Modified`), so normalize, compare and rules were skipped and the last findings stand.
    pub unchanged: bool,
    /// The snapshot's content went to the store's spool while the scan ran (the commit only points to it).
    pub spooled: bool,
    /// The input key to remember for this target: set after a full evaluation of read content (`None` there
    /// forgets the old key); on a warm result, set only when the node's validators changed.
    pub input: Option<InputMemo>,
}

impl TargetResult {
    /// A result that says nothing yet about `node`'s `cfg`.
    pub fn nothing(node: &Node, cfg: &ConfigPlan) -> TargetResult {
        TargetResult::nothing_named(node.name.clone(), cfg.name.clone())
    }

    /// [`TargetResult::nothing`] for the target named `node`, `config`.
    fn nothing_named(node: String, config: String) -> TargetResult {
        TargetResult {
            node,
            config,
            read: false,
            findings: Vec::new(),
            unified: String::new(),
            document: None,
            baseline: None,
            snapshot: None,
            fetch_seconds: 0.0,
            unchanged: false,
            spooled: false,
            input: None,
        }
    }
}

/// What produced a target's last findings: the key of a warm scan. When a target's next fetch gives the same
/// body hash under the same context hash, its findings cannot differ, and the scan reuses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputMemo {
    /// blake3 of the raw fetched body.
    pub body: [u8; 32],
    /// blake3 of everything else that shapes the findings: see [`InputDigests::context`].
    pub context: [u8; 32],
    /// The node's `ETag` / `Last-Modified` for that body: the next fetch is conditional.
    pub validators: Validators,
    /// The unified diff baseline → live of that evaluation (a warm report shows it again).
    pub unified: String,
}

/// Digests of what shapes an evaluation besides the fetched body, computed once per scan: per config its
/// normalize/compare settings with `[redact]` and plumb's version, per baseline file its content and its superseded
/// versions (regressions by value look at those).
///
/// A set also keeps each target's context digest once computed, by the target's place in the plan it was made
/// for ([`Plan::target_index`]): a daemon keeps the set for as long as its inputs stay the same
/// ([`crate::config::Scratch::digests`]), so a warm scan does not hash each node's context again.
#[derive(Debug, Default)]
pub struct InputDigests {
    configs: HashMap<String, [u8; 32]>,
    baselines: HashMap<PathBuf, [u8; 32]>,
    /// Per config: the digest of its rules that apply to every node, and the indices of those with a selector.
    rules: HashMap<String, ([u8; 32], Vec<usize>)>,
    /// Each target's context digest once computed (`None` inside: not known to this set), by target index; the
    /// table is made at the first lookup, so that a set made only to be compared with the kept one costs none.
    contexts: std::sync::OnceLock<Box<[KeptContext]>>,
}

/// One target's context digest, once computed (`None` inside: not known to the set).
type KeptContext = std::sync::OnceLock<Option<[u8; 32]>>;

impl PartialEq for InputDigests {
    /// The same inputs (what each target's context is made of); the targets' kept digests follow from them.
    fn eq(&self, other: &InputDigests) -> bool {
        self.configs == other.configs
            && self.baselines == other.baselines
            && self.rules == other.rules
    }
}

/// Hash length-prefixed parts, so that field boundaries count.
fn put(h: &mut blake3::Hasher, part: &[u8]) {
    h.update(&(part.len() as u64).to_le_bytes());
    h.update(part);
}

impl InputDigests {
    /// Digests for `plan`; `versions` are the store's baseline versions (current and superseded, as
    /// [`crate::store::Store::record_baselines`] returns them).
    pub fn new(plan: &Plan, versions: &[crate::store::BaselineVersion]) -> InputDigests {
        let mut configs = HashMap::new();
        for c in &plan.configs {
            let mut h = blake3::Hasher::new();
            put(&mut h, b"plumb input v1");
            put(&mut h, env!("CARGO_PKG_VERSION").as_bytes());
            put(&mut h, c.name.as_bytes());
            put(&mut h, format!("{:?}", c.normalizer).as_bytes());
            put(&mut h, format!("{:?}", c.compare).as_bytes());
            put(&mut h, format!("{:?}", plan.redact).as_bytes());
            configs.insert(c.name.clone(), *h.finalize().as_bytes());
        }
        let mut rules = HashMap::new();
        for c in &plan.configs {
            let mut always = blake3::Hasher::new();
            let mut selective = Vec::new();
            for (i, r) in plan.rules.rules.iter().enumerate() {
                if r.config != c.name {
                    continue;
                }
                if r.selector.0.is_empty() {
                    always.update(&r.digest);
                } else {
                    selective.push(i);
                }
            }
            rules.insert(c.name.clone(), (*always.finalize().as_bytes(), selective));
        }
        let mut by_file: HashMap<PathBuf, Vec<&crate::store::BaselineVersion>> = HashMap::new();
        for v in versions {
            by_file.entry(plan.root.join(&v.file)).or_default().push(v);
        }
        let mut baselines = HashMap::new();
        for (path, mut list) in by_file {
            list.sort_by(|a, b| (&a.hash, &a.superseded_at).cmp(&(&b.hash, &b.superseded_at)));
            let mut h = blake3::Hasher::new();
            for v in list {
                put(&mut h, v.hash.as_bytes());
                put(
                    &mut h,
                    v.superseded_at.as_deref().unwrap_or("current").as_bytes(),
                );
            }
            baselines.insert(path, *h.finalize().as_bytes());
        }
        InputDigests {
            configs,
            baselines,
            rules,
            contexts: std::sync::OnceLock::new(),
        }
    }

    /// The context half of a target's input key: the config's settings, the node (name, labels, vars: they
    /// choose and fill the baseline and appear in messages), the baseline file that applies (or none) and the
    /// rules that apply. `None` when something is not known to this set (then the target is always evaluated).
    pub fn context(&self, plan: &Plan, cfg: &ConfigPlan, node: &Node) -> Option<[u8; 32]> {
        let resolved = plan
            .baselines
            .configs
            .get(&cfg.name)
            .and_then(|c| c.resolve(node));
        self.context_with(plan, cfg, node, resolved.map(|(_, f)| f))
    }

    /// [`InputDigests::context`] with the baseline file that applies (`resolved`, a function of the plan and the
    /// node) already looked up; kept per target when `plan` is the plan this set was made for.
    fn context_with(
        &self,
        plan: &Plan,
        cfg: &ConfigPlan,
        node: &Node,
        resolved: Option<&crate::baseline::BaselineFile>,
    ) -> Option<[u8; 32]> {
        match plan.target_index(node, cfg).and_then(|i| {
            let n = plan.nodes.len() * plan.configs.len();
            let table = self
                .contexts
                .get_or_init(|| (0..n).map(|_| std::sync::OnceLock::new()).collect());
            table.get(i).filter(|_| table.len() == n)
        }) {
            Some(kept) => *kept.get_or_init(|| self.compute_context(plan, cfg, node, resolved)),
            None => self.compute_context(plan, cfg, node, resolved),
        }
    }

    fn compute_context(
        &self,
        plan: &Plan,
        cfg: &ConfigPlan,
        node: &Node,
        resolved: Option<&crate::baseline::BaselineFile>,
    ) -> Option<[u8; 32]> {
        // Written out, then hashed at once (what a streaming hasher would give for the same bytes, cheaper for
        // a few hundred of them).
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let put = |buf: &mut Vec<u8>, part: &[u8]| {
            buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
            buf.extend_from_slice(part);
        };
        buf.extend_from_slice(self.configs.get(&cfg.name)?);
        put(&mut buf, node.name.as_bytes());
        for map in [&node.labels, &node.vars] {
            buf.extend_from_slice(&(map.len() as u64).to_le_bytes());
            for (k, v) in map {
                put(&mut buf, k.as_bytes());
                put(&mut buf, v.as_bytes());
            }
        }
        match resolved {
            Some(file) => {
                put(&mut buf, b"baseline");
                buf.extend_from_slice(self.baselines.get(&file.path)?);
            }
            None => put(&mut buf, b"no baseline"),
        }
        // The rules that apply: those for every node (one digest, computed once), then those whose selector
        // matches this node.
        let (always, selective) = self.rules.get(&cfg.name)?;
        buf.extend_from_slice(always);
        for &i in selective {
            let rule = plan.rules.rules.get(i)?;
            if rule.selector.matches(node) {
                buf.extend_from_slice(&rule.digest);
            }
        }
        Some(*blake3::hash(&buf).as_bytes())
    }
}

/// The findings each target's last evaluation observed, from the store's records: those present, minus what a
/// fetch failure or unparseable content added since (an unchanged body is neither unreachable nor invalid), with
/// the lifecycle's fields reset as for a new observation.
pub fn observations(records: &HashMap<String, Record>) -> HashMap<(String, String), Vec<Finding>> {
    let mut out: HashMap<(String, String), Vec<Finding>> = HashMap::new();
    let mut list: Vec<&Record> = records.values().filter(|r| r.present).collect();
    list.sort_by(|a, b| a.finding.fingerprint.cmp(&b.finding.fingerprint));
    for r in list {
        let f = &r.finding;
        let fetch_problem =
            r.base_kind == Kind::Unreachable || (r.base_kind == Kind::Invalid && f.rule.is_none());
        if fetch_problem {
            continue;
        }
        let mut f = f.clone();
        f.state = State::New;
        f.fixed_at = None;
        f.initial = false;
        f.alertable = true;
        f.ack = None;
        out.entry((f.node.clone(), f.config.clone()))
            .or_default()
            .push(f);
    }
    out
}

/// What is known of a target before its fetch: the context half of its input key, its stored input key when a warm
/// result is possible, and (plain JSON against a baseline the fast path compiles) the compiled baseline, the node's
/// slot values and the byte layouts learned so far, which the fetch can expect.
pub struct Known<'p> {
    pub context: Option<[u8; 32]>,
    memo: Option<&'p InputMemo>,
    fast: Option<Fast<'p>>,
    /// (node, config), the key of every per-target map, then the result's own.
    target: (String, String),
    /// The baseline file that applies, if any.
    resolved: Option<(Scope, &'p crate::baseline::BaselineFile)>,
    /// The last snapshot hash: `None` never scanned, `Some(None)` scanned but not read.
    previous: Option<&'p Option<String>>,
}

struct Fast<'p> {
    scope: Scope,
    file: &'p crate::baseline::BaselineFile,
    compiled: &'p fast::Compiled,
    values: fast::NodeValues,
    expected: fast::Expected<'p>,
}

impl<'p> Known<'p> {
    /// Look up what is known of `node`'s `cfg` (see [`Known`]).
    pub fn new(
        plan: &'p Plan,
        node: &Node,
        cfg: &ConfigPlan,
        keep_document: bool,
        ctx: &'p Context,
    ) -> Known<'p> {
        let resolved = plan
            .baselines
            .configs
            .get(&cfg.name)
            .and_then(|c| c.resolve(node));
        let context = ctx
            .digests
            .as_ref()
            .and_then(|d| d.context_with(plan, cfg, node, resolved.map(|(_, f)| f)));
        let target = (node.name.clone(), cfg.name.clone());
        let remembered = ctx.targets.get(&target);
        let previous = remembered.map(|m| &m.hash);
        // The stored input key, when a warm result is possible: the document is not wanted, the context is known
        // and equal to the stored one, and the last snapshot is known.
        let memo = match (context, remembered) {
            (Some(key), Some(m)) if !keep_document && m.hash.is_some() => {
                m.input.as_ref().filter(|i| i.context == key)
            }
            _ => None,
        };
        let plain_json = cfg.normalizer.format == crate::normalize::Format::Json
            && cfg.normalizer.extract.is_none()
            && cfg.normalizer.decode.is_empty();
        let fast = match resolved {
            Some((scope, file)) if plain_json && !keep_document => ctx
                .fast
                .get(plan, file, ctx.redactor.as_deref(), &cfg.name, node)
                .and_then(|compiled| {
                    let values = compiled.prepare(node)?;
                    let expected = compiled.expected();
                    Some(Fast {
                        scope,
                        file,
                        compiled,
                        values,
                        expected,
                    })
                }),
            _ => None,
        };
        Known {
            context,
            memo,
            fast,
            target,
            resolved,
            previous,
        }
    }

    /// The validators to ask conditionally with: those stored with a usable input key.
    pub fn validators(&self) -> Option<&Validators> {
        self.memo.map(|m| &m.validators).filter(|v| !v.is_empty())
    }

    /// The bodies the fetch can expect (byte layouts learned in this scan, with the node's values).
    pub fn expect(&self) -> Option<crate::collect::Expect<'_>> {
        self.fast
            .as_ref()
            .and_then(|f| f.expected.expect(&f.values))
    }
}

/// Evaluate one fetched (or failed) target against its baseline.
pub fn evaluate(
    plan: &Plan,
    node: &Node,
    cfg: &ConfigPlan,
    fetched: Result<Vec<u8>, String>,
    now: &str,
    keep_document: bool,
    ctx: &Context,
) -> TargetResult {
    let known = Known::new(plan, node, cfg, keep_document, ctx);
    let fetched = fetched.map(|bytes| Fetched::Body {
        bytes: bytes.into(),
        validators: Validators::default(),
    });
    evaluate_fetched(plan, node, cfg, fetched, now, keep_document, ctx, known)
}

/// Evaluate one fetch outcome: a warm result when the body (or a `304 Not Modified`) and the context match the
/// stored input key, the full path otherwise. `known` is what [`Known::new`] gave before the fetch.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_fetched(
    plan: &Plan,
    node: &Node,
    cfg: &ConfigPlan,
    fetched: Result<Fetched, String>,
    now: &str,
    keep_document: bool,
    ctx: &Context,
    known: Known<'_>,
) -> TargetResult {
    let Known {
        context,
        memo,
        fast,
        target,
        resolved,
        previous,
    } = known;
    // The findings the target's last evaluation observed (what a warm result repeats), looked up by the names
    // before they become the result's own.
    let observed = ctx.observed.get(&target);
    // The names the lookups were keyed by become the result's own.
    let mut r = TargetResult::nothing_named(target.0, target.1);
    let (bytes, validators) = match fetched {
        Ok(Fetched::Body { bytes, validators }) => (Ok(bytes), validators),
        Ok(Fetched::AsExpected {
            candidate,
            len,
            validators,
        }) => {
            // A body that was a learned layout filled with the node's values: it matches, and its identity is
            // that layout's.
            let Some((f, body)) = fast.as_ref().and_then(|f| {
                f.expected
                    .identity(candidate, &f.values)
                    .map(|body| (f, body))
            }) else {
                return only(
                    r,
                    Kind::Invalid,
                    node,
                    cfg,
                    "the body matched a layout plumb no longer has (internal error)",
                    now,
                );
            };
            if let Some(m) = memo
                && m.body == body
            {
                return warm(now, observed, r, m, validators, resolved, previous);
            }
            let key = (body, context, &validators);
            if matched(&mut r, f, key, len, plan, node, cfg, now, ctx, previous) {
                return r;
            }
            // The compiled baseline could not give the results: the full path, on the body rebuilt.
            let bytes = f
                .expected
                .render(candidate, &f.values)
                .map(Body::from)
                .unwrap_or_default();
            (Ok(bytes), validators)
        }
        Ok(Fetched::NotModified { validators }) => match memo {
            Some(m) => return warm(now, observed, r, m, validators, resolved, previous),
            // Only asked conditionally with a usable key; a 304 without one tells nothing.
            None => (
                Err(
                    "HTTP status 304 (Not Modified) to a request plumb did not make conditional"
                        .into(),
                ),
                validators,
            ),
        },
        Err(e) => (Err(e), Validators::default()),
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(reason) => return only(r, Kind::Unreachable, node, cfg, &reason, now),
    };
    // The body's identity: by its byte layout when a learned one fits (a comparison instead of a hash), else its
    // blake3.
    let fitted = fast
        .as_ref()
        .and_then(|f| f.compiled.fit(&bytes, &f.values));
    let mut body = fitted.unwrap_or_else(|| bytes.hash());
    if let Some(m) = memo {
        // Known by its layout last time, but no layout of this scan fits yet (the scan's first such body): learnt
        // again from this body when that gives the stored identity.
        if m.body != body
            && fitted.is_none()
            && let Some(f) = &fast
            && let Some(id) = f.compiled.relearn(&bytes, &f.values, &m.body)
        {
            body = id;
        }
        if m.body == body {
            return warm(now, observed, r, m, validators, resolved, previous);
        }
    }
    // A JSON body equal to its baseline: recognized by bytes or while parsed, its results taken from the compiled
    // baseline (the fast path, `fast.rs`).
    if let Some(f) = &fast
        && (fitted.is_some()
            || f.compiled.values(node).is_some_and(|values| {
                f.compiled
                    .matches_learning(&bytes.contiguous(), &values, &f.values)
            }))
        && {
            // Matched by parsing: the identity the next scan finds is by the layout just learned, if any.
            if fitted.is_none()
                && let Some(id) = f.compiled.fit(&bytes, &f.values)
            {
                body = id;
            }
            true
        }
        && matched(
            &mut r,
            f,
            (body, context, &validators),
            bytes.len(),
            plan,
            node,
            cfg,
            now,
            ctx,
            previous,
        )
    {
        return r;
    }
    let mut live = match cfg.normalizer.normalize(&bytes.contiguous()) {
        Ok(d) => d,
        Err(e) => return only(r, Kind::Invalid, node, cfg, &e.to_string(), now),
    };
    r.read = true;
    let raw_len = bytes.len();
    drop(bytes);
    // Most nodes match their baseline: one comparison against the (unsubstituted) baseline tells, before
    // redaction (which rewrites both sides alike), and spares building, redacting and diffing a per-node copy.
    let matches_baseline = resolved.is_some_and(|(_, f)| {
        if f.templated {
            crate::baseline::matches_template(&f.doc, &live, node)
        } else {
            f.doc == live
        }
    });
    let rules: Vec<&crate::rules::Rule> = plan.rules.for_target(&cfg.name, node).collect();
    // Secrets are replaced before anything is compared, stored, printed or sent.
    if let Some(red) = &ctx.redactor {
        red.redact(&mut live);
    }
    let text = live.canonical_text_sized(raw_len.saturating_mul(2).min(64 << 20));
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    let unchanged = previous.is_some_and(|h| h.as_deref() == Some(hash.as_str()));
    r.snapshot = Some((
        hash,
        if unchanged {
            None
        } else {
            Some(crate::store::Content::Text(text))
        },
    ));
    let baseline = if matches_baseline && !rules.iter().any(|r| r.reads_baseline()) {
        None
    } else if let Some(f) = &fast {
        // The node's redacted baseline, from the compiled one: its values filled into a copy.
        let values = f
            .compiled
            .values(node)
            .map(|v| f.compiled.redacted_values(v, ctx.redactor.as_deref()));
        values.map(|v| (f.scope, f.file, f.compiled.filled(&v)))
    } else {
        let mut b = plan.baselines.for_node(&cfg.name, node);
        if let (Some(red), Some((_, _, doc))) = (&ctx.redactor, b.as_mut()) {
            red.redact(doc);
        }
        b
    };
    // Rules run on the same normalized tree as the comparison, parsed once.
    let mut cel = CelCache::default();
    for rule in rules {
        let input = Input {
            node,
            config: &cfg.name,
            doc: &live,
            baseline: baseline.as_ref().map(|(_, _, d)| d),
            raw_len,
        };
        let outcome = rule.evaluate(&input, &mut cel);
        push_outcome(&mut r, rule, outcome, node, cfg, now);
    }
    match baseline {
        None if matches_baseline => {
            r.baseline = resolved.map(|(scope, f)| (scope, f.path.clone()));
        }
        None => {
            r.findings.push(coverage(
                Kind::Unbaselined,
                node,
                cfg,
                format!(
                    "{}/{}: no baseline (add baselines/{}/default.<ext> or run `plumb approve {} {}`)",
                    node.name, cfg.name, cfg.name, node.name, cfg.name
                ),
                now,
            ));
        }
        Some((scope, file, expected)) => {
            r.baseline = Some((scope, file.path.clone()));
            let cmp = compare::compare(&expected, &live, &cfg.compare);
            let old = ctx.history.versions(&file.path);
            r.findings.extend(cmp.differences.into_iter().map(|d| {
                let back_to = regressed_to(&d, old, node, ctx.redactor.as_deref());
                let mut f = drift(d, node, cfg, now);
                if let Some(v) = back_to {
                    f.kind = Kind::Regression;
                    f.severity = f.severity.max(Kind::Regression.default_severity());
                    f.message = format!("{} (back to the superseded baseline {v})", f.message);
                    f.regression_of = Some(v);
                }
                f
            }));
            if cmp.omitted > 0 {
                let mut f = coverage(
                    Kind::Drift,
                    node,
                    cfg,
                    format!(
                        "{}/{}: {} more differences not listed (plumb lists at most {} per config and node)",
                        node.name,
                        cfg.name,
                        cmp.omitted,
                        compare::MAX_DIFFERENCES
                    ),
                    now,
                );
                f.fingerprint = fingerprint(Kind::Drift, &node.name, &cfg.name, "more differences");
                r.findings.push(f);
            }
            r.unified = cmp.unified;
        }
    }
    if keep_document {
        r.document = Some(live);
    }
    r.input = context.map(|context| InputMemo {
        body,
        context,
        validators,
        unified: r.unified.clone(),
    });
    r
}

/// `r` with only its coverage finding (`unreachable: …`, `invalid: …`): nothing about the content is guessed.
fn only(
    mut r: TargetResult,
    kind: Kind,
    node: &Node,
    cfg: &ConfigPlan,
    reason: &str,
    now: &str,
) -> TargetResult {
    let message = format!("{}/{}: {}: {reason}", node.name, cfg.name, kind.as_str());
    r.findings.push(coverage(kind, node, cfg, message, now));
    r
}

/// The finding a rule's outcome gives, if any.
fn push_outcome(
    r: &mut TargetResult,
    rule: &crate::rules::Rule,
    outcome: Outcome,
    node: &Node,
    cfg: &ConfigPlan,
    now: &str,
) {
    match outcome {
        Outcome::Pass => {}
        Outcome::Fail {
            path,
            actual,
            expected,
            message,
        } => {
            let mut f = Finding::observed(
                Kind::Violation,
                rule.severity,
                &node.name,
                &cfg.name,
                path,
                &rule.id,
                message,
                now,
            );
            f.expected = expected;
            f.actual = actual;
            f.rule = Some(rule.id.clone());
            r.findings.push(f);
        }
        Outcome::Error(e) => {
            let mut f = coverage(
                Kind::Invalid,
                node,
                cfg,
                format!(
                    "{}/{}: rule {} could not be evaluated: {e}",
                    node.name, cfg.name, rule.id
                ),
                now,
            );
            f.fingerprint = fingerprint(
                Kind::Invalid,
                &node.name,
                &cfg.name,
                &format!("rule:{}", rule.id),
            );
            f.rule = Some(rule.id.clone());
            r.findings.push(f);
        }
    }
}

/// The fast path ([`fast`]) for a body that matched `f`'s compiled baseline: fill `r` as the full path would (read,
/// the snapshot, the rules' findings, the baseline, the input key from the body's identity, the context and the
/// validators in `key`) and return `true`; `false` leaves `r` untouched for the full path.
#[allow(clippy::too_many_arguments)]
fn matched(
    r: &mut TargetResult,
    f: &Fast<'_>,
    key: ([u8; 32], Option<[u8; 32]>, &Validators),
    raw_len: usize,
    plan: &Plan,
    node: &Node,
    cfg: &ConfigPlan,
    now: &str,
    ctx: &Context,
    previous: Option<&Option<String>>,
) -> bool {
    let compiled = &f.compiled;
    let Some(values) = compiled.values(node) else {
        return false;
    };
    let values = compiled.redacted_values(values, ctx.redactor.as_deref());
    let slots = fast::Compiled::slot_texts(&values);
    let Some(hash) = compiled.text.hash_filled(&slots) else {
        return false;
    };
    let hash = hash.to_hex().to_string();
    let unchanged = previous.is_some_and(|h| h.as_deref() == Some(hash.as_str()));
    r.read = true;
    r.snapshot = Some((
        hash,
        (!unchanged).then(|| crate::store::Content::Filled {
            template: compiled.text.clone(),
            slots,
        }),
    ));
    // The rules' documents: the redacted baseline, or (for rules reading node values) the node's redacted
    // document rebuilt from it, which is also its baseline (the node matches it).
    let mut filled: Option<Document> = None;
    let (mut cel, mut cel_filled) = (CelCache::default(), CelCache::default());
    for rule in plan.rules.for_target(&cfg.name, node) {
        let (doc, cel) = match compiled.rule_class(rule) {
            fast::RuleClass::Pass => continue,
            fast::RuleClass::Eval => (&compiled.redacted, &mut cel),
            fast::RuleClass::Filled => (
                &*filled.get_or_insert_with(|| compiled.filled(&values)),
                &mut cel_filled,
            ),
        };
        let input = Input {
            node,
            config: &cfg.name,
            doc,
            baseline: Some(doc),
            raw_len,
        };
        let outcome = rule.evaluate(&input, cel);
        push_outcome(r, rule, outcome, node, cfg, now);
    }
    let (body, context, validators) = key;
    r.baseline = Some((f.scope, f.file.path.clone()));
    r.input = context.map(|context| InputMemo {
        body,
        context,
        validators: validators.clone(),
        unified: String::new(),
    });
    true
}

/// The warm result: the last evaluation's findings stand, observed now; the snapshot is unchanged.
#[allow(clippy::too_many_arguments)]
fn warm(
    now: &str,
    observed: Option<&Vec<Finding>>,
    mut r: TargetResult,
    memo: &InputMemo,
    validators: Validators,
    resolved: Option<(Scope, &crate::baseline::BaselineFile)>,
    previous: Option<&Option<String>>,
) -> TargetResult {
    r.read = true;
    r.unchanged = true;
    r.findings = observed
        .map(|list| {
            list.iter()
                .cloned()
                .map(|mut f| {
                    f.first_seen = now.to_string();
                    f.last_seen = now.to_string();
                    f
                })
                .collect()
        })
        .unwrap_or_default();
    r.unified = memo.unified.clone();
    r.baseline = resolved.map(|(scope, f)| (scope, f.path.clone()));
    r.snapshot = previous.cloned().flatten().map(|h| (h, None));
    if validators != memo.validators {
        r.input = Some(InputMemo {
            validators,
            ..memo.clone()
        });
    }
    r
}

/// What a scan knows beyond the plan: the redactor, each target's last snapshot hash, superseded baselines, and
/// for warm scans each target's stored input key, the findings its last evaluation observed, and the digests to
/// compute this scan's keys with (`None`: every target is evaluated in full, nothing is remembered).
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub redactor: Option<Arc<crate::redact::Redactor>>,
    /// What the store remembers of each target: its last snapshot hash and input key.
    pub targets: Arc<HashMap<(String, String), crate::store::TargetMemory>>,
    pub history: Arc<crate::baseline::BaselineHistory>,
    pub observed: Arc<HashMap<(String, String), Vec<Finding>>>,
    pub digests: Option<Arc<InputDigests>>,
    /// Baselines compiled for the fast path, on first use in this scan.
    pub fast: Arc<fast::Cache>,
}

/// The superseded baseline version `d`'s live value went back to, if any (newest first).
fn regressed_to(
    d: &Difference,
    old: &[crate::baseline::OldBaseline],
    node: &Node,
    redactor: Option<&crate::redact::Redactor>,
) -> Option<String> {
    if old.is_empty() || !d.path.starts_with('$') {
        return None;
    }
    let path = serde_json_path::JsonPath::parse(&d.path).ok()?;
    for v in old {
        let Ok(mut doc) = crate::baseline::substitute_doc(&v.doc, node) else {
            continue;
        };
        if let Some(red) = redactor {
            red.redact(&mut doc);
        }
        let Some(tree) = doc.as_tree() else {
            continue;
        };
        let found = path.query(tree).all();
        let back = match (&d.actual, found.as_slice()) {
            (Some(a), [one]) => *one == a,
            (None, []) => true,
            _ => false,
        };
        if back {
            return Some(format!(
                "{}@{} (superseded {})",
                v.file,
                &v.hash[..8.min(v.hash.len())],
                v.superseded_at
            ));
        }
    }
    None
}

/// The result for a target whose evaluation panicked: an `invalid` finding, the scan goes on.
pub fn crashed(node: &Node, cfg: &ConfigPlan, now: &str) -> TargetResult {
    only(
        TargetResult::nothing(node, cfg),
        Kind::Invalid,
        node,
        cfg,
        "plumb could not process this content (internal error)",
        now,
    )
}

fn coverage(kind: Kind, node: &Node, cfg: &ConfigPlan, message: String, now: &str) -> Finding {
    Finding::observed(
        kind,
        kind.default_severity(),
        &node.name,
        &cfg.name,
        String::new(),
        "",
        message,
        now,
    )
}

/// A short, one-line rendering of a value for messages.
pub fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn drift(d: Difference, node: &Node, cfg: &ConfigPlan, now: &str) -> Finding {
    let expected = d.expected.unwrap_or(Value::Null);
    let actual = d.actual.unwrap_or(Value::Null);
    let what = match d.change {
        Change::Added => format!("added {}", short(&actual)),
        Change::Removed => format!("removed (was {})", short(&expected)),
        Change::Changed => format!("{} → {}", short(&expected), short(&actual)),
    };
    let severity: Severity = d.severity.unwrap_or(Kind::Drift.default_severity());
    let message = format!("{}/{} {}: {what}", node.name, cfg.name, d.path);
    let mut f = Finding::observed(
        Kind::Drift,
        severity,
        &node.name,
        &cfg.name,
        d.path.clone(),
        &d.path,
        message,
        now,
    );
    f.change = Some(d.change);
    f.expected = expected;
    f.actual = actual;
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Record;

    /// A project with one node `n1` (file source), a baseline and a rule; `edit` changes files before loading.
    fn project(edit: &[(&str, &str)]) -> (tempfile::TempDir, Plan) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = vec![
            (
                "plumb.toml",
                "[[node]]\nname = \"n1\"\nvars = { port = \"80\" }\n\n[[config]]\nname = \"app\"\n\
                 source.file = \"live/${node.name}.json\"\nformat = \"json\"\n",
            ),
            (
                "baselines/app/default.json",
                r#"{"port": 80, "name": "${node.name}"}"#,
            ),
            (
                "rules/app.toml",
                "[[rule]]\nid = \"port-low\"\nconfig = \"app\"\nseverity = \"high\"\npath = \"$.port\"\nle = 1024\n",
            ),
        ];
        for (p, c) in edit {
            files.retain(|(q, _)| q != p);
            files.push((p, c));
        }
        for (p, c) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        let plan = crate::config::load(&dir.path().join("plumb.toml")).unwrap();
        (dir, plan)
    }

    fn key(plan: &Plan) -> [u8; 32] {
        let versions = plan.baselines.versions(&plan.root, None);
        let d = InputDigests::new(plan, &versions);
        d.context(plan, &plan.configs[0], &plan.nodes[0]).unwrap()
    }

    #[test]
    fn the_context_key_is_stable_and_moves_with_what_shapes_findings() {
        let (_d, base) = project(&[]);
        let k = key(&base);
        assert_eq!(
            k,
            key(&project(&[]).1),
            "the same project gives the same key"
        );
        let changes: &[(&str, &str)] = &[
            (
                "baselines/app/default.json",
                r#"{"port": 81, "name": "${node.name}"}"#,
            ),
            (
                "rules/app.toml",
                "[[rule]]\nid = \"port-low\"\nconfig = \"app\"\nseverity = \"high\"\npath = \"$.port\"\nle = 1000\n",
            ),
            (
                "plumb.toml",
                "[[node]]\nname = \"n1\"\nvars = { port = \"81\" }\n\n[[config]]\nname = \"app\"\n\
                 source.file = \"live/${node.name}.json\"\nformat = \"json\"\n",
            ),
            (
                "plumb.toml",
                "[[node]]\nname = \"n1\"\nvars = { port = \"80\" }\n\n[[config]]\nname = \"app\"\n\
                 source.file = \"live/${node.name}.json\"\nformat = \"json\"\nignore = [\"$.x\"]\n",
            ),
            (
                "plumb.toml",
                "[redact]\nkeys = [\"port\"]\n\n[[node]]\nname = \"n1\"\nvars = { port = \"80\" }\n\n\
                 [[config]]\nname = \"app\"\nsource.file = \"live/${node.name}.json\"\nformat = \"json\"\n",
            ),
        ];
        for (file, content) in changes {
            let (_d, plan) = project(&[(file, content)]);
            assert_ne!(
                k,
                key(&plan),
                "editing {file} must change the key:\n{content}"
            );
        }
        // No baseline at all is a context of its own.
        let (_d, plan) = project(&[]);
        let mut plan = plan;
        plan.baselines.configs.clear();
        assert_ne!(k, key(&plan));
    }

    #[test]
    fn a_plan_keeps_its_digests_and_their_context_keys_while_its_inputs_stay() {
        let (_d, plan) = project(&[]);
        let versions = plan.baselines.versions(&plan.root, None);
        let (node, cfg) = (&plan.nodes[0], &plan.configs[0]);
        assert_eq!(plan.target_index(node, cfg), Some(0));
        // A copy is not the plan's own: computed, not kept.
        let copy = node.clone();
        assert_eq!(plan.target_index(&copy, cfg), None);
        let first = plan.scratch.digests(InputDigests::new(&plan, &versions));
        let k = first.context(&plan, cfg, node).unwrap();
        assert_eq!(
            first.contexts.get().and_then(|t| t[0].get()),
            Some(&Some(k)),
            "kept once computed"
        );
        assert_eq!(first.context(&plan, cfg, &copy), Some(k));
        let again = plan.scratch.digests(InputDigests::new(&plan, &versions));
        assert!(Arc::ptr_eq(&first, &again), "the same inputs: the kept set");
        assert_eq!(again.context(&plan, cfg, node), Some(k));
        // Other inputs (a superseded version): a new set, and a new key.
        let mut more = versions.clone();
        let mut old = more[0].clone();
        old.hash = "older".into();
        old.superseded_at = Some("2026-01-01T00:00:00Z".into());
        more.push(old);
        let other = plan.scratch.digests(InputDigests::new(&plan, &more));
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(other.contexts.get().is_none());
        assert_ne!(other.context(&plan, cfg, node), Some(k));
        // A kept digest is the one computed afresh.
        assert_eq!(
            InputDigests::new(&plan, &more).compute_context(
                &plan,
                cfg,
                node,
                plan.baselines.configs[&cfg.name].resolve(node).map(|r| r.1)
            ),
            other.context(&plan, cfg, node)
        );
    }

    #[test]
    fn a_superseded_baseline_version_changes_the_key() {
        let (_d, plan) = project(&[]);
        let mut versions = plan.baselines.versions(&plan.root, None);
        let k = InputDigests::new(&plan, &versions)
            .context(&plan, &plan.configs[0], &plan.nodes[0])
            .unwrap();
        let mut old = versions[0].clone();
        old.hash = "older".into();
        old.superseded_at = Some("2026-01-01T00:00:00Z".into());
        versions.push(old);
        let k2 = InputDigests::new(&plan, &versions)
            .context(&plan, &plan.configs[0], &plan.nodes[0])
            .unwrap();
        assert_ne!(k, k2, "regressions by value look at superseded versions");
        // A baseline file the digests do not know: no key, always a full evaluation.
        assert!(
            InputDigests::new(&plan, &[])
                .context(&plan, &plan.configs[0], &plan.nodes[0])
                .is_none()
        );
    }

    fn record(f: Finding) -> Record {
        Record {
            base_kind: f.kind,
            present: true,
            since: String::new(),
            scans_seen: 1,
            resolved_at: None,
            changes: vec![],
            flapping_since: None,
            finding: f,
        }
    }

    #[test]
    fn a_warm_result_reuses_the_last_observations_and_a_new_body_is_evaluated() {
        let (_d, plan) = project(&[]);
        let (node, cfg) = (&plan.nodes[0], &plan.configs[0]);
        let versions = plan.baselines.versions(&plan.root, None);
        let digests = Arc::new(InputDigests::new(&plan, &versions));
        let mut ctx = Context {
            digests: Some(digests.clone()),
            ..Default::default()
        };
        let body = br#"{"port": 2000, "name": "n1"}"#.to_vec();
        let cold = evaluate(&plan, node, cfg, Ok(body.clone()), "t1", false, &ctx);
        assert!(cold.read && !cold.unchanged);
        let memo = cold.input.clone().expect("a full evaluation gives its key");
        assert_eq!(memo.body, *blake3::hash(&body).as_bytes());
        assert_eq!(cold.findings.len(), 2, "{:#?}", cold.findings); // drift on $.port, rule port-low
        // What the store would hold after that scan: the findings present, plus an unreachable one from a later
        // failed fetch (an unchanged body is never unreachable).
        let mut records: HashMap<String, Record> = cold
            .findings
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f.state = State::Ongoing;
                f.initial = true;
                (f.fingerprint.clone(), record(f))
            })
            .collect();
        let unreachable = coverage(Kind::Unreachable, node, cfg, "down".into(), "t2");
        records.insert(unreachable.fingerprint.clone(), record(unreachable));
        let target = (node.name.clone(), cfg.name.clone());
        ctx.observed = Arc::new(observations(&records));
        ctx.targets = Arc::new(HashMap::from([(
            target.clone(),
            crate::store::TargetMemory {
                hash: cold.snapshot.as_ref().map(|(h, _)| h.clone()),
                input: Some(memo.clone()),
            },
        )]));

        let warm = evaluate(&plan, node, cfg, Ok(body.clone()), "t3", false, &ctx);
        assert!(warm.read && warm.unchanged);
        assert!(warm.input.is_none(), "nothing to rewrite");
        assert_eq!(warm.unified, cold.unified);
        assert_eq!(warm.baseline, cold.baseline);
        assert_eq!(
            warm.snapshot,
            cold.snapshot.as_ref().map(|(h, _)| (h.clone(), None))
        );
        let strip = |list: &[Finding]| {
            let mut v: Vec<_> = list
                .iter()
                .map(|f| {
                    (
                        f.fingerprint.clone(),
                        f.kind,
                        f.state,
                        f.message.clone(),
                        f.actual.clone(),
                        f.initial,
                    )
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(strip(&warm.findings), strip(&cold.findings));
        assert!(warm.findings.iter().all(|f| f.last_seen == "t3"));

        // A 304 is the same warm result, with the node's new validators remembered.
        let v = Validators {
            etag: Some("\"v2\"".into()),
            last_modified: None,
        };
        let nm = evaluate_fetched(
            &plan,
            node,
            cfg,
            Ok(Fetched::NotModified {
                validators: v.clone(),
            }),
            "t3",
            false,
            &ctx,
            Known::new(&plan, node, cfg, false, &ctx),
        );
        assert!(nm.unchanged);
        assert_eq!(nm.input.map(|i| i.validators), Some(v));

        // Another body, a document kept for `approve`, or a failed fetch: the full path.
        let other = evaluate(
            &plan,
            node,
            cfg,
            Ok(br#"{"port": 80, "name": "n1"}"#.to_vec()),
            "t4",
            false,
            &ctx,
        );
        assert!(other.read && !other.unchanged);
        assert!(other.findings.is_empty(), "{:#?}", other.findings);
        let kept = evaluate(&plan, node, cfg, Ok(body.clone()), "t4", true, &ctx);
        assert!(!kept.unchanged && kept.document.is_some());
        let failed = evaluate(&plan, node, cfg, Err("refused".into()), "t4", false, &ctx);
        assert!(!failed.read && failed.findings[0].kind == Kind::Unreachable);
        // A 304 without a usable key tells nothing: coverage incomplete, not a reuse.
        let lost = evaluate_fetched(
            &plan,
            node,
            cfg,
            Ok(Fetched::NotModified {
                validators: Validators::default(),
            }),
            "t4",
            false,
            &Context::default(),
            Known::new(&plan, node, cfg, false, &Context::default()),
        );
        assert!(!lost.read && lost.findings[0].kind == Kind::Unreachable);
    }
}
