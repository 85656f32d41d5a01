//! Compare a live document with its baseline: one [`Difference`] per differing path, plus a unified diff for humans.
//!
//! Pure: no I/O, no clock. Before diffing, masks (regex → replacement) rewrite volatile strings on both sides and
//! ignore paths (RFC 9535 JSONPath) are cut from both trees. Arrays of objects that all carry a unique key field
//! (`name`, `id`, or one named in baseline.toml) are matched by that key; other arrays are aligned by a
//! longest-common-subsequence diff, so one inserted element is one difference, not a cascade.

use crate::finding::{Change, Severity};
use crate::normalize::Document;
use regex::Regex;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;
use similar::{Algorithm, DiffOp, TextDiff};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// How strictly live must match the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Live must equal the baseline: additions count.
    #[default]
    Exact,
    /// Only what the baseline states is checked: additions live are fine.
    Subset,
}

/// A regex rewrite applied to string values and text lines on both sides before comparing.
#[derive(Debug, Clone)]
pub struct Mask {
    pub pattern: Regex,
    pub replacement: String,
}

/// Everything that shapes one comparison, compiled ahead of time.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    pub mode: Mode,
    /// Paths cut from both sides before diffing.
    pub ignore: Vec<JsonPath>,
    pub masks: Vec<Mask>,
    /// Key field candidates tried on every array of objects, in order (default `name`, then `id`).
    pub key_fields: Vec<String>,
    /// Arrays at these paths are matched by the given field.
    pub keys: Vec<(JsonPath, String)>,
    /// Differences at or under these paths get this severity (last match wins).
    pub severities: Vec<(JsonPath, Severity)>,
}

impl CompareOptions {
    /// The default key field candidates.
    pub fn default_key_fields() -> Vec<String> {
        vec!["name".into(), "id".into()]
    }
}

/// One differing path.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Stable display path: `$.a.b[2]`, `$.routes[?@.name=='api'].to`, or `line N` for text.
    pub path: String,
    pub change: Change,
    pub expected: Option<Value>,
    pub actual: Option<Value>,
    /// Set when baseline.toml gives this path a severity.
    pub severity: Option<Severity>,
}

/// The most differences one comparison lists; beyond, they are only counted ([`Comparison::omitted`]), so a node
/// sending a million new keys costs a bounded report.
pub const MAX_DIFFERENCES: usize = 1_000;

/// The result of comparing one document pair.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    /// Differences past [`MAX_DIFFERENCES`], counted but not listed.
    pub omitted: usize,
    /// Unified diff of the canonical texts after masks and ignores; empty when equal.
    pub unified: String,
}

/// One step of a location inside a tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

type Loc = Vec<Seg>;

/// Compare `expected` (the baseline) with `actual` (live).
pub fn compare(expected: &Document, actual: &Document, opts: &CompareOptions) -> Comparison {
    // Equal documents stay equal under masks and ignores (both sides get the same rewrite): nothing to walk.
    if expected == actual {
        return Comparison::default();
    }
    let (exp, act) = (prepare(expected, opts), prepare(actual, opts));
    let (exp, act) = (exp.as_ref(), act.as_ref());
    let mut out = Vec::new();
    let omitted;
    match (exp, act) {
        (Document::Tree(e), Document::Tree(a)) => {
            let ctx = Ctx::new(e, a, opts);
            let mut w = Walk {
                ctx: &ctx,
                out: &mut out,
                omitted: 0,
            };
            w.diff(e, a, "$".to_string(), &mut Vec::new(), &mut Vec::new());
            omitted = w.omitted;
        }
        _ => {
            let el = text_lines(exp);
            let al = text_lines(act);
            line_diff(&el, &al, opts.mode, &mut out);
            omitted = out.len().saturating_sub(MAX_DIFFERENCES);
            out.truncate(MAX_DIFFERENCES);
        }
    }
    let unified = if out.is_empty() {
        String::new()
    } else {
        unified_diff(&exp.canonical_text(), &act.canonical_text())
    };
    Comparison {
        differences: out,
        omitted,
        unified,
    }
}

/// The most bytes of a unified diff kept for reports and alerts, and the time spent finding it.
const MAX_UNIFIED: usize = 256 * 1024;
const UNIFIED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A unified diff of two texts, `baseline` against `live`.
/// Bounded: the search gives up after a few seconds (a coarser diff, still correct) and the text is cut at
/// 256 KiB with a note.
pub fn unified_diff(expected: &str, actual: &str) -> String {
    let mut s = TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .timeout(UNIFIED_TIMEOUT)
        .diff_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("baseline", "live")
        .to_string();
    if s.len() > MAX_UNIFIED {
        let mut cut = MAX_UNIFIED;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = s.len();
        s.truncate(cut);
        let _ = write!(s, "\n… (diff cut at {MAX_UNIFIED} of {total} bytes)\n");
    }
    s
}

fn text_lines(d: &Document) -> Vec<String> {
    match d {
        Document::Text(l) => l.clone(),
        Document::Tree(_) => d.canonical_text().lines().map(str::to_string).collect(),
    }
}

/// Apply masks and cut ignored paths (borrowed as is when there are none).
fn prepare<'d>(doc: &'d Document, opts: &CompareOptions) -> std::borrow::Cow<'d, Document> {
    use std::borrow::Cow;
    if opts.masks.is_empty() && (opts.ignore.is_empty() || matches!(doc, Document::Text(_))) {
        return Cow::Borrowed(doc);
    }
    Cow::Owned(match doc {
        Document::Text(lines) => Document::Text(
            lines
                .iter()
                .map(|l| apply_masks(l, &opts.masks).into_owned())
                .collect(),
        ),
        Document::Tree(v) => {
            let mut v = v.clone();
            if !opts.masks.is_empty() {
                mask_tree(&mut v, &opts.masks);
            }
            if !opts.ignore.is_empty() {
                let mut locs: Vec<Loc> =
                    opts.ignore.iter().flat_map(|p| locations(p, &v)).collect();
                // Deepest and highest index first, so removals do not shift what is still to remove.
                locs.sort();
                locs.dedup();
                for loc in locs.iter().rev() {
                    remove_at(&mut v, loc);
                }
            }
            Document::Tree(v)
        }
    })
}

fn apply_masks<'a>(s: &'a str, masks: &[Mask]) -> std::borrow::Cow<'a, str> {
    let mut cur = std::borrow::Cow::Borrowed(s);
    for m in masks {
        if let std::borrow::Cow::Owned(o) = m.pattern.replace_all(&cur, m.replacement.as_str()) {
            cur = std::borrow::Cow::Owned(o);
        }
    }
    cur
}

fn mask_tree(v: &mut Value, masks: &[Mask]) {
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(o) = apply_masks(s, masks) {
                *s = o;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask_tree(x, masks)),
        Value::Object(o) => o.values_mut().for_each(|x| mask_tree(x, masks)),
        _ => {}
    }
}

fn locations(path: &JsonPath, v: &Value) -> Vec<Loc> {
    path.query_located(v)
        .locations()
        .map(|np| {
            np.iter()
                .map(|el| match el.as_index() {
                    Some(i) => Seg::Index(i),
                    None => Seg::Key(el.as_name().unwrap_or_default().to_string()),
                })
                .collect()
        })
        .collect()
}

fn remove_at(v: &mut Value, loc: &[Seg]) {
    let Some((last, parents)) = loc.split_last() else {
        *v = Value::Null;
        return;
    };
    let mut cur = v;
    for s in parents {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(o)) => match o.get_mut(k) {
                Some(x) => x,
                None => return,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(x) => x,
                None => return,
            },
            _ => return,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(o)) => {
            o.remove(k);
        }
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

/// Locations selected in each tree, resolved once per comparison.
struct Ctx<'o> {
    opts: &'o CompareOptions,
    /// (locations in expected, locations in actual, key field)
    keyed: Vec<(BTreeSet<Loc>, BTreeSet<Loc>, String)>,
    /// (locations in expected, locations in actual, severity)
    severities: Vec<(BTreeSet<Loc>, BTreeSet<Loc>, Severity)>,
}

impl<'o> Ctx<'o> {
    fn new(e: &Value, a: &Value, opts: &'o CompareOptions) -> Self {
        let sets = |p: &JsonPath| -> (BTreeSet<Loc>, BTreeSet<Loc>) {
            (
                locations(p, e).into_iter().collect(),
                locations(p, a).into_iter().collect(),
            )
        };
        Ctx {
            opts,
            keyed: opts
                .keys
                .iter()
                .map(|(p, k)| {
                    let (x, y) = sets(p);
                    (x, y, k.clone())
                })
                .collect(),
            severities: opts
                .severities
                .iter()
                .map(|(p, s)| {
                    let (x, y) = sets(p);
                    (x, y, *s)
                })
                .collect(),
        }
    }

    fn severity(&self, le: &Loc, la: &Loc, change: Change) -> Option<Severity> {
        let under = |set: &BTreeSet<Loc>, loc: &Loc| {
            (0..=loc.len()).any(|n| set.contains(&loc[..n].to_vec()))
        };
        let mut found = None;
        for (se, sa, sev) in &self.severities {
            let hit = match change {
                Change::Removed => under(se, le),
                Change::Added => under(sa, la),
                Change::Changed => under(se, le) || under(sa, la),
            };
            if hit {
                found = Some(*sev);
            }
        }
        found
    }

    /// The key field to match these two arrays by, if any.
    fn key_for(&self, le: &Loc, la: &Loc, e: &[Value], a: &[Value]) -> Option<String> {
        for (se, sa, field) in &self.keyed {
            if (se.contains(le) || sa.contains(la)) && keyable(e, field) && keyable(a, field) {
                return Some(field.clone());
            }
        }
        if e.is_empty() && a.is_empty() {
            return None;
        }
        let fields = if self.opts.key_fields.is_empty() {
            CompareOptions::default_key_fields()
        } else {
            self.opts.key_fields.clone()
        };
        fields.into_iter().find(|f| keyable(e, f) && keyable(a, f))
    }
}

/// Every element is an object with a scalar, unique value at `field`.
fn keyable(items: &[Value], field: &str) -> bool {
    let mut seen = BTreeSet::new();
    items.iter().all(|it| match it.get(field) {
        Some(k @ (Value::String(_) | Value::Number(_))) => seen.insert(k.to_string()),
        _ => false,
    })
}

struct Walk<'c, 'o> {
    ctx: &'c Ctx<'o>,
    out: &'c mut Vec<Difference>,
    /// Differences found past [`MAX_DIFFERENCES`].
    omitted: usize,
}

impl Walk<'_, '_> {
    fn push(
        &mut self,
        path: String,
        change: Change,
        e: Option<&Value>,
        a: Option<&Value>,
        le: &Loc,
        la: &Loc,
    ) {
        if self.out.len() >= MAX_DIFFERENCES {
            self.omitted += 1;
            return;
        }
        let severity = self.ctx.severity(le, la, change);
        self.out.push(Difference {
            path,
            change,
            expected: e.cloned(),
            actual: a.cloned(),
            severity,
        });
    }

    fn diff(&mut self, e: &Value, a: &Value, path: String, le: &mut Loc, la: &mut Loc) {
        // An equal subtree has no difference in either mode: one comparison, no paths built.
        if e == a {
            return;
        }
        let subset = self.ctx.opts.mode == Mode::Subset;
        match (e, a) {
            (Value::Object(eo), Value::Object(ao)) => {
                self.diff_objects(eo, ao, &path, le, la, subset)
            }
            (Value::Array(ea), Value::Array(aa)) => {
                if let Some(field) = self.ctx.key_for(le, la, ea, aa) {
                    self.diff_keyed(ea, aa, &field, &path, le, la, subset);
                } else {
                    self.diff_positional(ea, aa, &path, le, la, subset);
                }
            }
            _ => self.push(path, Change::Changed, Some(e), Some(a), le, la),
        }
    }

    fn diff_objects(
        &mut self,
        eo: &Map<String, Value>,
        ao: &Map<String, Value>,
        path: &str,
        le: &mut Loc,
        la: &mut Loc,
        subset: bool,
    ) {
        let keys: BTreeSet<&String> = eo.keys().chain(ao.keys()).collect();
        for k in keys {
            let p = child_key(path, k);
            match (eo.get(k), ao.get(k)) {
                (Some(ev), Some(av)) => {
                    le.push(Seg::Key(k.clone()));
                    la.push(Seg::Key(k.clone()));
                    self.diff(ev, av, p, le, la);
                    le.pop();
                    la.pop();
                }
                (Some(ev), None) => {
                    le.push(Seg::Key(k.clone()));
                    self.push(p, Change::Removed, Some(ev), None, le, la);
                    le.pop();
                }
                (None, Some(av)) if !subset => {
                    la.push(Seg::Key(k.clone()));
                    self.push(p, Change::Added, None, Some(av), le, la);
                    la.pop();
                }
                _ => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn diff_keyed(
        &mut self,
        ea: &[Value],
        aa: &[Value],
        field: &str,
        path: &str,
        le: &mut Loc,
        la: &mut Loc,
        subset: bool,
    ) {
        let key_of = |v: &Value| v.get(field).cloned().unwrap_or(Value::Null);
        let apos: std::collections::HashMap<String, usize> = aa
            .iter()
            .enumerate()
            .map(|(i, v)| (key_of(v).to_string(), i))
            .collect();
        let epos: std::collections::HashMap<String, usize> = ea
            .iter()
            .enumerate()
            .map(|(i, v)| (key_of(v).to_string(), i))
            .collect();
        for (i, ev) in ea.iter().enumerate() {
            let key = key_of(ev);
            let p = format!("{path}[?@{}=={}]", member(field), filter_literal(&key));
            le.push(Seg::Index(i));
            match apos.get(&key.to_string()) {
                Some(&j) => {
                    la.push(Seg::Index(j));
                    self.diff(ev, &aa[j], p, le, la);
                    la.pop();
                }
                None => self.push(p, Change::Removed, Some(ev), None, le, la),
            }
            le.pop();
        }
        if subset {
            return;
        }
        for (j, av) in aa.iter().enumerate() {
            let key = key_of(av);
            if !epos.contains_key(&key.to_string()) {
                let p = format!("{path}[?@{}=={}]", member(field), filter_literal(&key));
                la.push(Seg::Index(j));
                self.push(p, Change::Added, None, Some(av), le, la);
                la.pop();
            }
        }
    }

    fn diff_positional(
        &mut self,
        ea: &[Value],
        aa: &[Value],
        path: &str,
        le: &mut Loc,
        la: &mut Loc,
        subset: bool,
    ) {
        let eh: Vec<String> = ea.iter().map(Value::to_string).collect();
        let ah: Vec<String> = aa.iter().map(Value::to_string).collect();
        for step in align(&eh, &ah, subset) {
            match step {
                Step::Pair(i, j) => {
                    le.push(Seg::Index(i));
                    la.push(Seg::Index(j));
                    self.diff(&ea[i], &aa[j], format!("{path}[{j}]"), le, la);
                    le.pop();
                    la.pop();
                }
                Step::Removed(i) => {
                    le.push(Seg::Index(i));
                    self.push(
                        format!("{path}[{i}]"),
                        Change::Removed,
                        Some(&ea[i]),
                        None,
                        le,
                        la,
                    );
                    le.pop();
                }
                Step::Added(j) => {
                    la.push(Seg::Index(j));
                    self.push(
                        format!("{path}[{j}]"),
                        Change::Added,
                        None,
                        Some(&aa[j]),
                        le,
                        la,
                    );
                    la.pop();
                }
            }
        }
    }
}

/// One step of aligning two sequences.
enum Step {
    /// Element `i` of the old side stands against element `j` of the new side (they may differ).
    Pair(usize, usize),
    /// Only in the old side.
    Removed(usize),
    /// Only in the new side (never yielded in subset mode).
    Added(usize),
}

/// Align two sequences by a longest-common-subsequence diff (Myers): equal runs are skipped, a replaced run pairs
/// its elements in order and the rest of the longer side is removed or added.
fn align<T: Eq + std::hash::Hash + Ord>(old: &[T], new: &[T], subset: bool) -> Vec<Step> {
    let mut out = Vec::new();
    for op in similar::capture_diff_slices(Algorithm::Myers, old, new) {
        match op {
            DiffOp::Equal { .. } => {}
            DiffOp::Delete {
                old_index, old_len, ..
            } => out.extend((old_index..old_index + old_len).map(Step::Removed)),
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                if !subset {
                    out.extend((new_index..new_index + new_len).map(Step::Added));
                }
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let paired = old_len.min(new_len);
                out.extend((0..paired).map(|k| Step::Pair(old_index + k, new_index + k)));
                out.extend((old_index + paired..old_index + old_len).map(Step::Removed));
                if !subset {
                    out.extend((new_index + paired..new_index + new_len).map(Step::Added));
                }
            }
        }
    }
    out
}

/// A line diff for text documents: one difference per changed, added or removed line (`line N`, 1-based; live
/// numbering for changed and added lines, baseline numbering for removed ones).
fn line_diff(e: &[String], a: &[String], mode: Mode, out: &mut Vec<Difference>) {
    let line = |s: &String| Some(Value::String(s.clone()));
    for step in align(e, a, mode == Mode::Subset) {
        let (path, change, expected, actual) = match step {
            Step::Pair(i, j) => (j + 1, Change::Changed, line(&e[i]), line(&a[j])),
            Step::Removed(i) => (i + 1, Change::Removed, line(&e[i]), None),
            Step::Added(j) => (j + 1, Change::Added, None, line(&a[j])),
        };
        out.push(Difference {
            path: format!("line {path}"),
            change,
            expected,
            actual,
            severity: None,
        });
    }
}

fn is_identifier(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn quote(k: &str) -> String {
    let mut s = String::with_capacity(k.len() + 2);
    s.push('\'');
    for c in k.chars() {
        match c {
            '\'' => s.push_str("\\'"),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// `path.key` or `path['odd key']`.
fn child_key(path: &str, k: &str) -> String {
    if is_identifier(k) {
        format!("{path}.{k}")
    } else {
        format!("{path}[{}]", quote(k))
    }
}

/// A located JSONPath result's location in plumb's display style (`$.a.b[2]`, `$['odd key']`).
pub fn display_location(np: &serde_json_path::NormalizedPath<'_>) -> String {
    let mut out = String::from("$");
    for el in np.iter() {
        match el.as_index() {
            Some(i) => out = format!("{out}[{i}]"),
            None => out = child_key(&out, el.as_name().unwrap_or_default()),
        }
    }
    out
}

/// `.field` or `['odd field']`, for filter selectors.
fn member(field: &str) -> String {
    child_key("", field)
}

fn filter_literal(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree(v: Value) -> Document {
        Document::Tree(v)
    }

    fn diffs(
        e: Value,
        a: Value,
        opts: &CompareOptions,
    ) -> Vec<(String, Change, Option<Value>, Option<Value>)> {
        compare(&tree(e), &tree(a), opts)
            .differences
            .into_iter()
            .map(|d| (d.path, d.change, d.expected, d.actual))
            .collect()
    }

    #[test]
    fn differences_are_capped_and_counted() {
        let e = tree(json!({}));
        let many: serde_json::Map<String, Value> = (0..MAX_DIFFERENCES + 250)
            .map(|i| (format!("k{i:05}"), json!(i)))
            .collect();
        let a = tree(Value::Object(many));
        let c = compare(&e, &a, &CompareOptions::default());
        assert_eq!(c.differences.len(), MAX_DIFFERENCES);
        assert_eq!(c.omitted, 250);
        assert_eq!(c.differences[0].path, "$.k00000");
        let big_e = "x\n".repeat(400_000);
        let big_a = "y\n".repeat(400_000);
        let u = unified_diff(&big_e, &big_a);
        assert!(u.len() < MAX_UNIFIED + 200, "{}", u.len());
        assert!(u.ends_with("bytes)\n"), "cut note");
    }

    #[test]
    fn equal_trees_have_no_differences() {
        let v = json!({"a": [1, {"b": null}], "c": "x"});
        let c = compare(&tree(v.clone()), &tree(v), &CompareOptions::default());
        assert!(c.differences.is_empty());
        assert!(c.unified.is_empty());
    }

    #[test]
    fn added_removed_changed_with_paths() {
        let d = diffs(
            json!({"a": 1, "b": {"c": true}, "odd key": 1}),
            json!({"a": 2, "b": {}, "new": [1], "odd key": 1}),
            &CompareOptions::default(),
        );
        assert_eq!(
            d,
            vec![
                (
                    "$.a".into(),
                    Change::Changed,
                    Some(json!(1)),
                    Some(json!(2))
                ),
                ("$.b.c".into(), Change::Removed, Some(json!(true)), None),
                ("$.new".into(), Change::Added, None, Some(json!([1]))),
            ]
        );
        let d = diffs(
            json!({"odd key": 1}),
            json!({"odd key": 2}),
            &CompareOptions::default(),
        );
        assert_eq!(d[0].0, "$['odd key']");
    }

    #[test]
    fn one_inserted_element_is_one_finding() {
        // Scalars: LCS alignment.
        let d = diffs(
            json!({"l": ["a", "b", "c"]}),
            json!({"l": ["x", "a", "b", "c"]}),
            &CompareOptions::default(),
        );
        assert_eq!(
            d,
            vec![("$.l[0]".into(), Change::Added, None, Some(json!("x")))]
        );
        // Named objects: matched by name, one insert plus one change inside a moved element.
        let e = json!({"routes": [{"name": "api", "to": "a:1"}, {"name": "web", "to": "w:1"}]});
        let a = json!({"routes": [{"name": "new", "to": "n:1"}, {"name": "api", "to": "a:1"}, {"name": "web", "to": "w:2"}]});
        let d = diffs(e, a, &CompareOptions::default());
        assert_eq!(
            d,
            vec![
                (
                    "$.routes[?@.name=='web'].to".into(),
                    Change::Changed,
                    Some(json!("w:1")),
                    Some(json!("w:2"))
                ),
                (
                    "$.routes[?@.name=='new']".into(),
                    Change::Added,
                    None,
                    Some(json!({"name": "new", "to": "n:1"}))
                ),
            ]
        );
    }

    #[test]
    fn explicit_key_field() {
        let opts = CompareOptions {
            keys: vec![(JsonPath::parse("$.upstreams").unwrap(), "url".into())],
            ..Default::default()
        };
        let e = json!({"upstreams": [{"url": "a", "w": 1}, {"url": "b", "w": 1}]});
        let a = json!({"upstreams": [{"url": "b", "w": 1}, {"url": "a", "w": 5}]});
        let d = diffs(e.clone(), a.clone(), &opts);
        assert_eq!(
            d,
            vec![(
                "$.upstreams[?@.url=='a'].w".into(),
                Change::Changed,
                Some(json!(1)),
                Some(json!(5))
            )]
        );
        // Without the key, position decides: `a` reads as removed at 0 and re-added at 1.
        assert_eq!(diffs(e, a, &CompareOptions::default()).len(), 2);
    }

    #[test]
    fn subset_mode_checks_only_what_the_baseline_states() {
        let opts = CompareOptions {
            mode: Mode::Subset,
            ..Default::default()
        };
        let e = json!({"a": 1, "l": [{"id": 1, "v": 1}], "s": ["x"]});
        let a = json!({"a": 1, "extra": true, "l": [{"id": 1, "v": 1, "more": 2}, {"id": 2}], "s": ["y", "x"]});
        assert!(diffs(e.clone(), a, &opts).is_empty());
        let a = json!({"l": [{"id": 1, "v": 2}], "s": []});
        let d = diffs(e, a, &opts);
        assert_eq!(
            d,
            vec![
                ("$.a".into(), Change::Removed, Some(json!(1)), None),
                (
                    "$.l[?@.id==1].v".into(),
                    Change::Changed,
                    Some(json!(1)),
                    Some(json!(2))
                ),
                ("$.s[0]".into(), Change::Removed, Some(json!("x")), None),
            ]
        );
    }

    #[test]
    fn ignores_and_masks() {
        let opts = CompareOptions {
            ignore: vec![
                JsonPath::parse("$.servers.*.metrics").unwrap(),
                JsonPath::parse("$.uptime").unwrap(),
            ],
            masks: vec![Mask {
                pattern: Regex::new(r"\d{4}-\d\d-\d\dT[\d:]+Z").unwrap(),
                replacement: "<time>".into(),
            }],
            ..Default::default()
        };
        let e = json!({"servers": {"a": {"metrics": 1, "port": 80}}, "uptime": 5, "built": "at 2024-01-01T00:00:00Z"});
        let a = json!({"servers": {"a": {"metrics": 99, "port": 80}}, "built": "at 2026-11-26T05:00:00Z"});
        assert!(diffs(e.clone(), a, &opts).is_empty());
        let a = json!({"servers": {"a": {"metrics": 99, "port": 81}}, "built": "at 2026-11-26T05:00:00Z"});
        assert_eq!(
            diffs(e, a, &opts),
            vec![(
                "$.servers.a.port".into(),
                Change::Changed,
                Some(json!(80)),
                Some(json!(81))
            )]
        );
    }

    #[test]
    fn per_path_severity() {
        let opts = CompareOptions {
            severities: vec![(JsonPath::parse("$.tls").unwrap(), Severity::Critical)],
            ..Default::default()
        };
        let c = compare(
            &tree(json!({"tls": {"min": "1.2"}, "x": 1})),
            &tree(json!({"tls": {"min": "1.0"}, "x": 2})),
            &opts,
        );
        let sev: Vec<_> = c
            .differences
            .iter()
            .map(|d| (d.path.as_str(), d.severity))
            .collect();
        assert_eq!(
            sev,
            vec![("$.tls.min", Some(Severity::Critical)), ("$.x", None)]
        );
    }

    #[test]
    fn text_line_diff_and_masks() {
        let e = Document::Text(vec!["a".into(), "b".into(), "up 5 days".into(), "c".into()]);
        let a = Document::Text(vec![
            "a".into(),
            "B".into(),
            "up 9 days".into(),
            "c".into(),
            "d".into(),
        ]);
        let opts = CompareOptions {
            masks: vec![Mask {
                pattern: Regex::new(r"up \d+ days").unwrap(),
                replacement: "up N days".into(),
            }],
            ..Default::default()
        };
        let c = compare(&e, &a, &opts);
        let d: Vec<_> = c
            .differences
            .iter()
            .map(|d| (d.path.as_str(), d.change))
            .collect();
        assert_eq!(
            d,
            vec![("line 2", Change::Changed), ("line 5", Change::Added)]
        );
        assert!(c.unified.contains("-b\n+B\n"), "{}", c.unified);
        let subset = CompareOptions {
            mode: Mode::Subset,
            ..opts
        };
        assert_eq!(compare(&e, &a, &subset).differences.len(), 1);
    }

    #[test]
    fn unified_diff_is_readable() {
        let c = compare(
            &tree(json!({"a": 1})),
            &tree(json!({"a": 2})),
            &CompareOptions::default(),
        );
        assert!(
            c.unified.starts_with("--- baseline\n+++ live\n"),
            "{}",
            c.unified
        );
        assert!(
            c.unified.contains("-  \"a\": 1\n+  \"a\": 2\n"),
            "{}",
            c.unified
        );
    }
}
