//! Rules: policy checks over a normalized config, loaded from `rules/*.toml`, compiled up front, evaluated in the
//! same scan and on the same tree as the baseline comparison.
//!
//! Evaluation is pure: a rule and an [`Input`] (live document, optional baseline, node, raw size) give an
//! [`Outcome`]. A rule is a JSONPath `path` with one assertion, a CEL `expr`, or a line rule for text configs.

mod load;
mod values;

pub use load::{RuleSet, TestReport, load_dir, run_tests};

use crate::finding::Severity;
use crate::inventory::{Node, Selector};
use crate::normalize::{Document, Format};
use regex::Regex;
use serde_json::Value;
use serde_json_path::JsonPath;
use std::path::PathBuf;
use std::sync::Arc;
use values::{compare_loose, loose_eq, text_of};

/// What a path selecting nothing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenMissing {
    Pass,
    Fail,
}

/// A block of a text config that line rules look inside.
#[derive(Debug, Clone)]
pub enum Section {
    /// nginx-style `name … {` blocks, to the matching `}`.
    Block(String),
    /// INI-style `[name]` sections, to the next section header.
    Ini(String),
}

/// The assertion of a rule.
#[derive(Debug, Clone)]
pub enum Check {
    Equals(Value),
    NotEquals(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Matches(Regex),
    NotMatches(Regex),
    Exists,
    Absent,
    Lt(Value),
    Le(Value),
    Gt(Value),
    Ge(Value),
    CountMin(usize),
    CountMax(usize),
    /// No duplicate values, or no duplicate values of this key field.
    Unique(Option<String>),
    Type(String),
    MaxBytes(u64),
    /// Growth over the baseline, as a fraction (0.5 for "50%"): of the selected count with a path, else of size.
    MaxGrowth(f64),
    /// A CEL program, and which of `config`, `baseline`, `node` it reads (only those are converted).
    Expr(Arc<cel::Program>, [bool; 3]),
    LinePresent(Regex, Option<Section>),
    LineAbsent(Regex, Option<Section>),
}

impl Check {
    /// The assertion's key in rule files.
    pub fn name(&self) -> &'static str {
        match self {
            Check::Equals(_) => "equals",
            Check::NotEquals(_) => "not_equals",
            Check::In(_) => "in",
            Check::NotIn(_) => "not_in",
            Check::Matches(_) => "matches",
            Check::NotMatches(_) => "not_matches",
            Check::Exists => "exists",
            Check::Absent => "absent",
            Check::Lt(_) => "lt",
            Check::Le(_) => "le",
            Check::Gt(_) => "gt",
            Check::Ge(_) => "ge",
            Check::CountMin(_) => "count_min",
            Check::CountMax(_) => "count_max",
            Check::Unique(_) => "unique",
            Check::Type(_) => "type",
            Check::MaxBytes(_) => "max_bytes",
            Check::MaxGrowth(_) => "max_growth",
            Check::Expr(..) => "expr",
            Check::LinePresent(..) => "line_present",
            Check::LineAbsent(..) => "line_absent",
        }
    }

    /// The default for a path that selects nothing: positive assertions fail, negative ones pass.
    fn missing_default(&self) -> WhenMissing {
        match self {
            Check::Equals(_)
            | Check::In(_)
            | Check::Matches(_)
            | Check::Exists
            | Check::Lt(_)
            | Check::Le(_)
            | Check::Gt(_)
            | Check::Ge(_)
            | Check::Type(_) => WhenMissing::Fail,
            _ => WhenMissing::Pass,
        }
    }

    /// The expected side, for reports.
    fn expected(&self) -> Value {
        match self {
            Check::Equals(v) | Check::Lt(v) | Check::Le(v) | Check::Gt(v) | Check::Ge(v) => {
                v.clone()
            }
            Check::NotEquals(v) => Value::String(format!("not {}", text_of(v))),
            Check::In(v) => Value::Array(v.clone()),
            Check::NotIn(v) => Value::String(format!("none of {}", Value::Array(v.clone()))),
            Check::Matches(r) | Check::LinePresent(r, _) => {
                Value::String(format!("matches /{}/", r.as_str()))
            }
            Check::NotMatches(r) | Check::LineAbsent(r, _) => {
                Value::String(format!("does not match /{}/", r.as_str()))
            }
            Check::Exists => Value::String("present".into()),
            Check::Absent => Value::String("absent".into()),
            Check::CountMin(n) => Value::String(format!("at least {n}")),
            Check::CountMax(n) => Value::String(format!("at most {n}")),
            Check::Unique(None) => Value::String("unique values".into()),
            Check::Unique(Some(k)) => Value::String(format!("unique `{k}`")),
            Check::Type(t) => Value::String(t.clone()),
            Check::MaxBytes(n) => Value::String(format!("at most {n} bytes")),
            Check::MaxGrowth(f) => Value::String(format!("growth at most {}%", f * 100.0)),
            Check::Expr(..) => Value::String("expr is true".into()),
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub config: String,
    pub selector: Selector,
    pub severity: Severity,
    pub path: Option<(String, JsonPath)>,
    pub check: Check,
    pub message: Option<String>,
    pub when_missing: Option<WhenMissing>,
    /// The format of inline test inputs given as text.
    pub format: Option<Format>,
    pub file: PathBuf,
    pub line: usize,
    pub tests: Vec<load::RuleTest>,
    /// Persistence gate for this rule's violations.
    pub gate: Option<crate::lifecycle::Gate>,
    /// blake3 of the rule as written (every key, its file): part of a target's warm-scan input key.
    pub digest: [u8; 32],
}

impl Rule {
    /// Whether evaluating this rule reads the baseline (growth checks, CEL reading `baseline`): a scan builds a
    /// node's substituted baseline only when a comparison or such a rule needs it.
    pub fn reads_baseline(&self) -> bool {
        matches!(
            self.check,
            Check::MaxGrowth(_) | Check::Expr(_, [_, true, _])
        )
    }
}

/// What a rule sees.
pub struct Input<'a> {
    pub node: &'a Node,
    pub config: &'a str,
    pub doc: &'a Document,
    pub baseline: Option<&'a Document>,
    /// Size of the fetched body in bytes.
    pub raw_len: usize,
}

/// The result of one rule on one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    /// A violation: where, what was seen, the rendered message.
    Fail {
        path: String,
        actual: Value,
        expected: Value,
        message: String,
    },
    /// The rule could not be evaluated on this input (a CEL runtime error, a non-boolean result).
    Error(String),
}

/// Lazily built CEL variables for one input, shared by every `expr` rule of a target: each of `config`,
/// `baseline` and `node` is converted once, and only when an expression reads it.
#[derive(Default)]
pub struct CelCache {
    vars: [Option<Result<cel::Value, String>>; 3],
}

/// The CEL standard environment, built once per process.
fn cel_env() -> Arc<cel::Env> {
    static ENV: std::sync::OnceLock<Arc<cel::Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| Arc::new(cel::Env::stdlib())).clone()
}

impl CelCache {
    fn var(&mut self, which: usize, input: &Input) -> Result<cel::Value, String> {
        let slot = &mut self.vars[which];
        if slot.is_none() {
            let conv = |v: &Value| {
                cel::to_value(v).map_err(|e| format!("cannot pass the config to CEL: {e}"))
            };
            *slot = Some(match which {
                0 => conv(&doc_value(input.doc)),
                1 => match input.baseline {
                    Some(b) => conv(&doc_value(b)),
                    None => Ok(cel::Value::Null),
                },
                _ => conv(&serde_json::json!({
                    "name": input.node.name, "labels": input.node.labels, "vars": input.node.vars,
                })),
            });
        }
        match slot {
            Some(r) => r.clone(),
            None => Err("internal: CEL variable missing".into()),
        }
    }
}

/// A document as a JSON value: the tree, or an array of lines for text.
fn doc_value(d: &Document) -> Value {
    match d {
        Document::Tree(v) => v.clone(),
        Document::Text(lines) => {
            Value::Array(lines.iter().map(|l| Value::String(l.clone())).collect())
        }
    }
}

/// The values a rule's path selects. Locations are not built here: most rules pass, and a location is only
/// needed for the message of a failure ([`Rule::location`]).
fn selected<'v>(rule: &Rule, root: &'v Value) -> Vec<&'v Value> {
    match &rule.path {
        None => Vec::new(),
        Some((_, p)) => p.query(root).all(),
    }
}

impl Rule {
    /// Evaluate this rule on one input.
    pub fn evaluate(&self, input: &Input, cel: &mut CelCache) -> Outcome {
        let fail = |path: &str, actual: Value| Outcome::Fail {
            path: path.to_string(),
            expected: self.check.expected(),
            message: self.render(input, path, &actual),
            actual,
        };
        match &self.check {
            Check::LinePresent(re, section) | Check::LineAbsent(re, section) => {
                let Document::Text(lines) = input.doc else {
                    return Outcome::Error("line rules apply to text configs only".into());
                };
                let hits: Vec<(usize, &String)> = scoped_lines(lines, section.as_ref())
                    .into_iter()
                    .filter(|(_, l)| re.is_match(l))
                    .collect();
                return match (&self.check, hits.first()) {
                    (Check::LinePresent(..), None) => fail(self.path_text(), Value::Null),
                    (Check::LineAbsent(..), Some((n, l))) => {
                        fail(&format!("line {}", n + 1), Value::String((*l).clone()))
                    }
                    _ => Outcome::Pass,
                };
            }
            Check::MaxBytes(max) => {
                return if input.raw_len as u64 > *max {
                    fail("$", Value::from(input.raw_len))
                } else {
                    Outcome::Pass
                };
            }
            _ => {}
        }
        let owned;
        let root: &Value = match input.doc {
            Document::Tree(v) => v,
            Document::Text(_) => {
                owned = doc_value(input.doc);
                &owned
            }
        };
        let values = selected(self, root);
        let missing = self.when_missing.unwrap_or(self.check.missing_default());
        let on_missing = || match missing {
            WhenMissing::Pass => Outcome::Pass,
            WhenMissing::Fail => fail(self.path_text(), Value::Null),
        };
        match &self.check {
            Check::Exists => {
                return if values.is_empty() {
                    fail(self.path_text(), Value::Null)
                } else {
                    Outcome::Pass
                };
            }
            Check::Absent => {
                return match values.first() {
                    Some(v) => fail(&self.location(root, 0), (*v).clone()),
                    None => Outcome::Pass,
                };
            }
            Check::CountMin(n) | Check::CountMax(n) => {
                let bad = match self.check {
                    Check::CountMin(_) => values.len() < *n,
                    _ => values.len() > *n,
                };
                return if bad {
                    fail(self.path_text(), Value::from(values.len()))
                } else {
                    Outcome::Pass
                };
            }
            Check::Unique(key) => {
                let mut seen = std::collections::HashSet::with_capacity(values.len());
                for (i, v) in values.iter().enumerate() {
                    let k = match key {
                        None => *v,
                        Some(f) => match v.get(f) {
                            Some(x) => x,
                            None => continue,
                        },
                    };
                    if !seen.insert(HashableValue(k)) {
                        return fail(&self.location(root, i), k.clone());
                    }
                }
                return Outcome::Pass;
            }
            Check::MaxGrowth(max) => {
                let Some(base) = input.baseline else {
                    return Outcome::Pass;
                };
                let (now, before) = match (&self.path, base) {
                    (Some((_, p)), Document::Tree(b)) => {
                        (values.len() as f64, p.query(b).len() as f64)
                    }
                    (Some(_), Document::Text(_)) => {
                        let b = doc_value(base);
                        (values.len() as f64, selected(self, &b).len() as f64)
                    }
                    (None, _) => (
                        input.doc.canonical_text().len() as f64,
                        base.canonical_text().len() as f64,
                    ),
                };
                if before == 0.0 {
                    return Outcome::Pass;
                }
                let growth = (now - before) / before;
                return if growth > *max {
                    fail(
                        self.path_text(),
                        Value::String(format!(
                            "{now} (+{:.0}% over the baseline's {before})",
                            growth * 100.0
                        )),
                    )
                } else {
                    Outcome::Pass
                };
            }
            Check::Expr(program, uses) => {
                let env = cel_env();
                let mut ctx = cel::Context::with_env(env);
                for (i, name) in ["config", "baseline", "node"].into_iter().enumerate() {
                    if uses[i] {
                        match cel.var(i, input) {
                            Ok(v) => ctx.add_variable_from_value(name, v),
                            Err(e) => return Outcome::Error(e),
                        }
                    }
                }
                let each: Vec<&Value> = if self.path.is_some() {
                    if values.is_empty() {
                        return on_missing();
                    }
                    values.clone()
                } else {
                    vec![&Value::Null]
                };
                for (i, v) in each.into_iter().enumerate() {
                    let mut inner = ctx.new_inner_scope();
                    match cel::to_value(v) {
                        Ok(cv) => inner.add_variable_from_value("value", cv),
                        Err(e) => {
                            return Outcome::Error(format!("cannot pass the value to CEL: {e}"));
                        }
                    }
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        program.execute(&inner)
                    }));
                    match res {
                        Ok(Ok(cel::Value::Bool(true))) => {}
                        Ok(Ok(cel::Value::Bool(false))) => {
                            return fail(&self.location(root, i), v.clone());
                        }
                        Ok(Ok(other)) => {
                            return Outcome::Error(format!("expr gave {other:?}, not a boolean"));
                        }
                        Ok(Err(e)) => return Outcome::Error(format!("expr failed: {e}")),
                        Err(_) => return Outcome::Error("expr crashed the CEL interpreter".into()),
                    }
                }
                return Outcome::Pass;
            }
            _ => {}
        }
        if values.is_empty() {
            return on_missing();
        }
        for (i, v) in values.iter().enumerate() {
            let v: &Value = v;
            let ok = match &self.check {
                Check::Equals(e) => loose_eq(v, e),
                Check::NotEquals(e) => !loose_eq(v, e),
                Check::In(list) => list.iter().any(|e| loose_eq(v, e)),
                Check::NotIn(list) => !list.iter().any(|e| loose_eq(v, e)),
                Check::Matches(re) => re.is_match(&text_of(v)),
                Check::NotMatches(re) => !re.is_match(&text_of(v)),
                Check::Type(t) => values::type_is(v, t),
                Check::Lt(e) | Check::Le(e) | Check::Gt(e) | Check::Ge(e) => {
                    match compare_loose(v, e) {
                        None => {
                            return Outcome::Fail {
                                path: self.location(root, i),
                                expected: self.check.expected(),
                                message: format!(
                                    "{}: {} cannot be compared with {} (not numbers, versions or durations)",
                                    self.id,
                                    text_of(v),
                                    text_of(e)
                                ),
                                actual: v.clone(),
                            };
                        }
                        Some(o) => match &self.check {
                            Check::Lt(_) => o.is_lt(),
                            Check::Le(_) => o.is_le(),
                            Check::Gt(_) => o.is_gt(),
                            _ => o.is_ge(),
                        },
                    }
                }
                _ => true,
            };
            if !ok {
                return fail(&self.location(root, i), v.clone());
            }
        }
        Outcome::Pass
    }

    /// The display location of the `i`-th value the path selects in `root`.
    fn location(&self, root: &Value, i: usize) -> String {
        match &self.path {
            Some((_, p)) => p
                .query_located(root)
                .into_iter()
                .nth(i)
                .map(|n| crate::compare::display_location(n.location()))
                .unwrap_or_else(|| self.path_text().to_string()),
            None => "$".into(),
        }
    }

    fn path_text(&self) -> &str {
        self.path.as_ref().map_or("$", |(t, _)| t.as_str())
    }

    /// The rule's message with `{node}`, `{config}`, `{rule}`, `{path}`, `{actual}`, `{expected}` filled in.
    fn render(&self, input: &Input, path: &str, actual: &Value) -> String {
        let expected = self.check.expected();
        match &self.message {
            Some(m) => m
                .replace("{node}", &input.node.name)
                .replace("{config}", input.config)
                .replace("{rule}", &self.id)
                .replace("{path}", path)
                .replace("{actual}", &text_of(actual))
                .replace("{expected}", &text_of(&expected)),
            None => format!(
                "{}/{}: rule {} failed at {path}: {} is not {}",
                input.node.name,
                input.config,
                self.id,
                text_of(actual),
                text_of(&expected)
            ),
        }
    }
}

/// A JSON value hashed by content, for `unique` without rendering every value to text.
struct HashableValue<'a>(&'a Value);

impl PartialEq for HashableValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for HashableValue<'_> {}
impl std::hash::Hash for HashableValue<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        fn walk<H: std::hash::Hasher>(v: &Value, h: &mut H) {
            match v {
                Value::Null => 0u8.hash(h),
                Value::Bool(b) => (1u8, b).hash(h),
                Value::Number(n) => (2u8, n.to_string()).hash(h),
                Value::String(s) => (3u8, s).hash(h),
                Value::Array(a) => {
                    (4u8, a.len()).hash(h);
                    a.iter().for_each(|x| walk(x, h));
                }
                Value::Object(o) => {
                    (5u8, o.len()).hash(h);
                    for (k, x) in o {
                        k.hash(h);
                        walk(x, h);
                    }
                }
            }
        }
        walk(self.0, h)
    }
}

/// The lines a line rule looks at, with their 0-based numbers.
fn scoped_lines<'l>(lines: &'l [String], section: Option<&Section>) -> Vec<(usize, &'l String)> {
    match section {
        None => lines.iter().enumerate().collect(),
        Some(Section::Ini(name)) => {
            let mut inside = false;
            let mut out = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                let t = l.trim();
                if t.starts_with('[') && t.ends_with(']') {
                    inside = t[1..t.len() - 1].trim() == name;
                    continue;
                }
                if inside {
                    out.push((i, l));
                }
            }
            out
        }
        Some(Section::Block(name)) => {
            let mut out = Vec::new();
            // Depth inside the current matching block; 0 = outside.
            let mut depth = 0usize;
            for (i, l) in lines.iter().enumerate() {
                let code = l.split('#').next().unwrap_or_default();
                let opens = code.matches('{').count();
                let closes = code.matches('}').count();
                if depth == 0 {
                    let head = code.trim_start();
                    let starts = head.strip_prefix(name.as_str()).is_some_and(|rest| {
                        rest.starts_with(|c: char| c.is_whitespace() || c == '{')
                    });
                    if starts && opens > 0 {
                        depth = opens.saturating_sub(closes);
                    }
                    continue;
                }
                depth = (depth + opens).saturating_sub(closes);
                if depth > 0 || closes == 0 {
                    out.push((i, l));
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests;
