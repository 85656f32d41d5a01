//! The matching fast path: a JSON body equal to its baseline (node values substituted) is recognized while it is
//! parsed, without building a tree, and its snapshot and rule outcomes come from the baseline, compiled once per
//! scan.
//!
//! Pure: no I/O. Most nodes of a fleet match their baseline; for them a full evaluation would parse the body into a
//! tree, redact it, print it canonically and run every rule on it, only to find nothing. Here instead:
//!
//! - [`Compiled`] holds the baseline as a comparison tree (sorted keys, placeholder strings as numbered *slots*),
//!   its redacted canonical text split at the slots, the redacted baseline the rules see, and per rule whether its
//!   outcome on a matching node is known (`Pass`), is to be evaluated on the redacted baseline with the node
//!   (`Eval`: no parse), or reads the node's values (`Filled`: evaluated on a copy of the redacted baseline with
//!   them filled in, which is the document the full path would have built).
//! - [`Compiled::matches`] walks the body with serde_json's deserializer against that tree and stops at the first
//!   difference; a mismatch, a syntax error or anything unusual (a duplicate key) means "not known to match", and
//!   the caller takes the full path, which decides and reports. A match is exactly the full path's
//!   `matches_template` (same parser, same number folding, same string comparison after substitution).
//!
//! What the full path would compute for a matching node is then a function of the baseline and the node's values:
//! the redacted canonical text is the split text with each slot's substituted (and text-pattern redacted) value,
//! its rules see the redacted baseline. Baselines where that does not hold get no [`Compiled`]: placeholders in
//! keys, a placeholder inside a value redacted whole, redaction paths with filters in a templated baseline.

use crate::baseline::{BaselineFile, substitute};
use crate::collect::Body;
use crate::inventory::Node;
use crate::normalize::Document;
use crate::redact::Redactor;
use crate::rules::{Check, Input, Outcome, Rule, RuleSet};
use crate::store::SlotText;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The baseline as the matcher walks it.
#[derive(Debug)]
enum CNode {
    Null,
    Bool(bool),
    Num(Number),
    Str(Box<str>),
    /// A string holding placeholders: the index of its substituted value.
    Slot(usize),
    Arr(Vec<CNode>),
    /// Entries sorted by key (the order of a `serde_json::Map`).
    Obj(Vec<(Box<str>, CNode)>),
}

/// What a rule's outcome on a matching node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleClass {
    /// Passes on every node that matches this baseline.
    Pass,
    /// Evaluate on the redacted baseline with the node (node-specific message, size, CEL `node`).
    Eval,
    /// Reads values that differ per node: evaluate on the redacted baseline with the node's values filled in
    /// ([`Compiled::filled`], built once per node that needs it).
    Filled,
}

/// One baseline file compiled for the fast path.
#[derive(Debug)]
pub struct Compiled {
    tree: CNode,
    /// The template string of each slot, in document order.
    slots: Vec<String>,
    /// Each slot's template split once into text and node attributes (`None`: substituted in full each time).
    pieces: Vec<Option<Vec<Piece>>>,
    /// The redacted canonical text, split at the slots.
    pub text: Arc<SlotText>,
    /// The redacted baseline as rules see it (slot strings unsubstituted).
    pub redacted: Document,
    /// By rule id, for the rules of this baseline's config.
    rules: HashMap<String, RuleClass>,
    /// Byte layouts of bodies that matched (see [`Layout`]), at most [`MAX_LAYOUTS`].
    layouts: Layouts,
}

/// The layouts a baseline learned: each written once, read by every target of every scan after, so that reading
/// takes no lock and no reference count (both would be writes to memory the two cores share, per target).
#[derive(Debug, Default)]
struct Layouts {
    /// Filled in order: the first empty one ends the list.
    learned: [std::sync::OnceLock<Layout>; MAX_LAYOUTS],
    /// Taken to add one, so that a layout is never added twice.
    adding: std::sync::Mutex<()>,
}

impl Layouts {
    fn iter(&self) -> impl Iterator<Item = &Layout> {
        self.learned.iter().map_while(std::sync::OnceLock::get)
    }

    fn len(&self) -> usize {
        self.iter().count()
    }

    /// Add `layout` unless it is known or the list is full.
    fn add(&self, layout: Layout) {
        let Ok(_adding) = self.adding.lock() else {
            return;
        };
        if self.iter().any(|x| x.id == layout.id) {
            return;
        }
        if let Some(free) = self.learned.iter().find(|l| l.get().is_none()) {
            let _ = free.set(layout);
        }
    }
}

/// A part of a slot's template: text as written, or what a placeholder stands for.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    Name,
    Var(String),
    Label(String),
}

impl Piece {
    /// `template` split as [`crate::baseline::substitute`] reads it; `None` for what that reads otherwise than
    /// as placeholders and text (an unclosed or unknown placeholder), which is then substituted in full.
    fn split(template: &str) -> Option<Vec<Piece>> {
        let mut out = Vec::new();
        let mut rest = template;
        while let Some(pos) = rest.find("${node.") {
            if pos > 0 {
                out.push(Piece::Text(rest[..pos].to_string()));
            }
            let body = &rest[pos + 2..];
            let expr = &body[..body.find('}')?];
            out.push(if expr == "node.name" {
                Piece::Name
            } else if let Some(v) = expr.strip_prefix("node.vars.") {
                Piece::Var(v.to_string())
            } else {
                Piece::Label(expr.strip_prefix("node.labels.")?.to_string())
            });
            rest = &body[expr.len() + 1..];
        }
        if !rest.is_empty() {
            out.push(Piece::Text(rest.to_string()));
        }
        Some(out)
    }

    /// What this piece is for `node`; `None` for a var or label it does not have.
    fn value<'a>(&'a self, node: &'a Node) -> Option<&'a str> {
        match self {
            Piece::Text(t) => Some(t),
            Piece::Name => Some(&node.name),
            Piece::Var(v) => node.vars.get(v).map(String::as_str),
            Piece::Label(l) => node.labels.get(l).map(String::as_str),
        }
    }
}

/// How many byte layouts a baseline keeps (nodes of different software versions print differently).
const MAX_LAYOUTS: usize = 4;
// A fetch expects every learned layout: `Expected::layout` maps a candidate back to its layout by that order.
const _: () = assert!(MAX_LAYOUTS <= crate::collect::Expect::MAX);

/// The bytes of a body that matched, split at its slot tokens: another node whose body is these bytes with its own
/// slot values (as JSON) in those places matches too, which a comparison of bytes tells without parsing. Nodes
/// running the same software usually print their config the same way (keys in the same order, same spacing).
#[derive(Debug)]
struct Layout {
    /// `pieces[0] slot pieces[1] … pieces[n]`.
    pieces: Vec<Box<[u8]>>,
    /// The slot (an index into `Compiled::slots`) at each gap.
    gaps: Vec<usize>,
    /// blake3 of the pieces and gaps.
    id: [u8; 32],
}

/// The byte layouts a baseline had learned when a fetch began: filled with a node's values, the bodies that fetch
/// expects ([`crate::collect::Expect`]); a body that is one of them matches, and its identity is that layout's.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'c> {
    layouts: &'c Layouts,
    /// How many there were.
    count: usize,
}

impl<'c> Expected<'c> {
    fn iter(&self) -> impl Iterator<Item = &'c Layout> {
        self.layouts.iter().take(self.count)
    }

    /// What a fetch for `node` expects; `None` when no layout is known yet.
    pub fn expect<'a>(&'a self, node: &'a NodeValues) -> Option<crate::collect::Expect<'a>> {
        let expect = crate::collect::Expect::new(self.iter().filter_map(|l| l.parts(node)));
        (!expect.is_empty()).then_some(expect)
    }

    /// The layout behind candidate `i` of [`Expected::expect`] (candidates skip layouts the values do not fit).
    fn layout(&self, i: usize, node: &NodeValues) -> Option<&'c Layout> {
        self.iter().filter(|l| l.parts(node).is_some()).nth(i)
    }

    /// The identity of the body that was candidate `i` (as [`Compiled::fit`] gives it).
    pub fn identity(&self, i: usize, node: &NodeValues) -> Option<[u8; 32]> {
        self.layout(i, node).map(|l| l.body_id(node))
    }

    /// The body that was candidate `i`, byte for byte.
    pub fn render(&self, i: usize, node: &NodeValues) -> Option<Vec<u8>> {
        self.layout(i, node).map(|l| l.render(node))
    }
}

/// A node's slot values as JSON text (`"…"`), in one buffer: two allocations per node rather than one per value,
/// since a fleet scan prepares one set per target before its fetch. The values as substituted are asked of
/// [`Compiled::values`] where a slow path needs them.
#[derive(Debug)]
pub struct NodeValues {
    /// Every slot's JSON text, one after another.
    text: String,
    /// Where each slot's text ends in `text`.
    ends: Vec<u32>,
}

impl NodeValues {
    /// The values of `values` quoted, as a node's slots (`None` past 4 GiB).
    fn quote<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<NodeValues> {
        let values = values.into_iter();
        let mut out = NodeValues {
            text: String::new(),
            ends: Vec::with_capacity(values.size_hint().0),
        };
        for v in values {
            out.push(v)?;
        }
        Some(out)
    }

    /// Append one value, quoted.
    fn push(&mut self, v: &str) -> Option<()> {
        json_string_into(v, &mut self.text);
        self.ends.push(u32::try_from(self.text.len()).ok()?);
        Some(())
    }

    /// Append the value `pieces` give for `node`, quoted (`None` when the node lacks one of them).
    fn push_pieces(&mut self, pieces: &[Piece], node: &Node) -> Option<()> {
        let start = self.text.len();
        self.text.push('"');
        for p in pieces {
            let v = p.value(node)?;
            if v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
                // Escaped as serde_json escapes: the whole value, built first.
                self.text.truncate(start);
                let whole: String = pieces
                    .iter()
                    .map(|p| p.value(node))
                    .collect::<Option<_>>()?;
                return self.push(&whole);
            }
            self.text.push_str(v);
        }
        self.text.push('"');
        self.ends.push(u32::try_from(self.text.len()).ok()?);
        Some(())
    }

    /// How many slots.
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Slot `i`'s JSON text.
    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        self.text.get(start..end)
    }

    /// Every slot's JSON text, in order.
    fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl Layout {
    fn new(pieces: Vec<Box<[u8]>>, gaps: Vec<usize>) -> Layout {
        let mut h = blake3::Hasher::new();
        for p in &pieces {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        for g in &gaps {
            h.update(&(*g as u64).to_le_bytes());
        }
        Layout {
            id: *h.finalize().as_bytes(),
            pieces,
            gaps,
        }
    }

    /// The bytes this layout gives for `quoted` (each slot's value as JSON), one part after another; `None` when a
    /// gap names a slot `quoted` does not have.
    fn parts<'a>(&'a self, quoted: &'a NodeValues) -> Option<impl Iterator<Item = &'a [u8]>> {
        if self.gaps.iter().any(|&g| g >= quoted.len()) {
            return None;
        }
        Some(self.pieces.iter().enumerate().flat_map(|(i, piece)| {
            let gap = self
                .gaps
                .get(i)
                .and_then(|&g| quoted.get(g))
                .map(str::as_bytes);
            std::iter::once(&piece[..]).chain(gap)
        }))
    }

    /// Whether `body` is this layout with `quoted` in the gaps.
    fn fits(&self, body: &Body, quoted: &NodeValues) -> bool {
        self.parts(quoted)
            .is_some_and(|parts| body.equals_concat(parts))
    }

    /// The layout of `body`, which matched with `quoted` slot values: each slot token found by its JSON text.
    /// `None` when the tokens cannot be told apart (two placeholders with one value, a value also spelled
    /// elsewhere, a value escaped another way): then the body is only ever compared by parsing.
    fn learn(body: &[u8], slots: &[String], quoted: &NodeValues) -> Option<Layout> {
        // One group per placeholder string: its slots, its JSON text.
        let mut groups: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut texts: HashMap<&str, &str> = HashMap::new();
        for (i, (s, q)) in slots.iter().zip(quoted.iter()).enumerate() {
            groups.entry(q).or_insert((i, 0)).1 += 1;
            if *texts.entry(q).or_insert(s.as_str()) != s.as_str() {
                return None;
            }
        }
        let text = std::str::from_utf8(body).ok()?;
        let mut found: Vec<(usize, usize, usize)> = Vec::new();
        for (q, (slot, count)) in &groups {
            let at: Vec<usize> = text.match_indices(q).map(|(p, _)| p).collect();
            if at.len() != *count {
                return None;
            }
            found.extend(at.into_iter().map(|p| (p, q.len(), *slot)));
        }
        found.sort_unstable();
        let mut pieces = Vec::with_capacity(found.len() + 1);
        let mut gaps = Vec::with_capacity(found.len());
        let mut from = 0;
        for (p, len, slot) in found {
            if p < from {
                return None;
            }
            pieces.push(body[from..p].into());
            gaps.push(slot);
            from = p + len;
        }
        pieces.push(body[from..].into());
        Some(Layout::new(pieces, gaps))
    }

    /// The identity of the body this layout gives for `quoted` (see [`Compiled::fit`]).
    fn body_id(&self, quoted: &NodeValues) -> [u8; 32] {
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = KEY
            .get_or_init(|| blake3::derive_key("plumb 2026-11 body identity by byte layout", b""));
        // Written out, then hashed at once (the bytes a streaming hasher would be given).
        let mut buf = Vec::with_capacity(32 + quoted.text.len() + 8 * quoted.len());
        buf.extend_from_slice(&self.id);
        for q in quoted.iter() {
            buf.extend_from_slice(&(q.len() as u64).to_le_bytes());
            buf.extend_from_slice(q.as_bytes());
        }
        *blake3::keyed_hash(key, &buf).as_bytes()
    }

    /// The body this layout gives for `quoted` (empty when they do not fit its gaps).
    fn render(&self, quoted: &NodeValues) -> Vec<u8> {
        self.parts(quoted)
            .map(|parts| parts.collect::<Vec<_>>().concat())
            .unwrap_or_default()
    }
}

/// `v` as a JSON string, as serde_json prints it: quoted, and escaped only where it must be.
#[cfg(test)]
fn json_string(v: &str) -> String {
    let mut q = String::with_capacity(v.len() + 2);
    json_string_into(v, &mut q);
    q
}

/// [`json_string`], appended to `out`.
fn json_string_into(v: &str, out: &mut String) {
    if v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(v).unwrap_or_default());
        return;
    }
    out.reserve(v.len() + 2);
    out.push('"');
    out.push_str(v);
    out.push('"');
}

/// The JSON text `"\u0000plumb-slot\u0000"` marks a slot in the printed baseline.
const SENTINEL: &str = "\u{0}plumb-slot\u{0}";
const SENTINEL_JSON: &str = "\"\\u0000plumb-slot\\u0000\"";

fn has_placeholder(s: &str) -> bool {
    s.contains("${node.")
}

fn contains_slot(v: &Value) -> bool {
    match v {
        Value::String(s) => has_placeholder(s),
        Value::Array(a) => a.iter().any(contains_slot),
        Value::Object(o) => o
            .iter()
            .any(|(k, x)| has_placeholder(k) || contains_slot(x)),
        _ => false,
    }
}

/// Build the comparison tree from the baseline `t` and, side by side, the structurally redacted copy `r`: slot
/// strings must be left intact by redaction (else `None`). `r` becomes the rules' view (text patterns applied to
/// every string but the slots) and `printed` the text view (slots replaced by the sentinel).
fn build(
    t: &Value,
    r: &mut Value,
    printed: &mut Value,
    slots: &mut Vec<String>,
    red: Option<&Redactor>,
) -> Option<CNode> {
    Some(match t {
        Value::Null => CNode::Null,
        Value::Bool(b) => CNode::Bool(*b),
        Value::Number(n) => CNode::Num(n.clone()),
        Value::String(s) if has_placeholder(s) => {
            // Redaction must not have touched a slot: its redacted form would depend on the node.
            if r.as_str() != Some(s) {
                return None;
            }
            *printed = Value::String(SENTINEL.into());
            slots.push(s.clone());
            CNode::Slot(slots.len() - 1)
        }
        Value::String(s) => {
            if let (Some(red), Value::String(rs)) = (red, &mut *r) {
                red.redact_string(rs);
                *printed = Value::String(rs.clone());
            }
            CNode::Str(s.as_str().into())
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                match (r.get_mut(i), printed.get_mut(i)) {
                    (Some(rx), Some(px)) => out.push(build(x, rx, px, slots, red)?),
                    // Redacted whole (a marker now): fine unless it held a slot.
                    _ if contains_slot(x) => return None,
                    _ => out.push(build_plain(x)),
                }
            }
            CNode::Arr(out)
        }
        Value::Object(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (k, x) in map {
                if has_placeholder(k) {
                    return None;
                }
                match (r.get_mut(k.as_str()), printed.get_mut(k.as_str())) {
                    (Some(rx), Some(px)) if r_is_container_or_same(x, rx) => {
                        out.push((k.as_str().into(), build(x, rx, px, slots, red)?))
                    }
                    _ if contains_slot(x) => return None,
                    _ => out.push((k.as_str().into(), build_plain(x))),
                }
            }
            CNode::Obj(out)
        }
    })
}

/// Whether `r` (redacted) still has `t`'s shape at this place (a redacted value is a marker string instead).
fn r_is_container_or_same(t: &Value, r: &Value) -> bool {
    match (t, r) {
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => true,
        (Value::Object(_) | Value::Array(_), _) => false,
        (t, r) => t == r || matches!((t, r), (Value::String(_), Value::String(_))),
    }
}

/// The comparison tree of a subtree without slots.
fn build_plain(t: &Value) -> CNode {
    match t {
        Value::Null => CNode::Null,
        Value::Bool(b) => CNode::Bool(*b),
        Value::Number(n) => CNode::Num(n.clone()),
        Value::String(s) => CNode::Str(s.as_str().into()),
        Value::Array(a) => CNode::Arr(a.iter().map(build_plain).collect()),
        Value::Object(o) => CNode::Obj(
            o.iter()
                .map(|(k, v)| (k.as_str().into(), build_plain(v)))
                .collect(),
        ),
    }
}

impl Compiled {
    /// Compile a JSON-comparable baseline for the rules of `config`. `None` when the fast path cannot give the full
    /// path's results for it (see the module docs); `node` is any node, for evaluating rules whose outcome does not
    /// depend on it.
    pub fn new(
        file: &BaselineFile,
        red: Option<&Redactor>,
        rules: &RuleSet,
        config: &str,
        node: &Node,
    ) -> Option<Compiled> {
        let Document::Tree(t) = &file.doc else {
            return None;
        };
        let mut r = t.clone();
        if let Some(red) = red {
            red.redact_structure(&mut r);
        }
        let templated = contains_slot(t);
        if templated && red.is_some_and(Redactor::has_filtered_paths) {
            return None;
        }
        let mut printed = r.clone();
        let mut slots = Vec::new();
        let tree = if matches!(t, Value::String(_)) || r_is_container_or_same(t, &r) {
            build(t, &mut r, &mut printed, &mut slots, red)?
        } else if templated {
            return None;
        } else {
            build_plain(t)
        };
        let mut text = Document::Tree(printed).canonical_text();
        if text.is_empty() {
            return None;
        }
        // Split at the sentinels; a baseline string that happens to print like one makes the count differ.
        let segments: Vec<String> = text.split(SENTINEL_JSON).map(str::to_string).collect();
        if segments.len() != slots.len() + 1 {
            return None;
        }
        text.clear();
        let redacted = Document::Tree(r);
        let mut classes = HashMap::new();
        for rule in rules.rules.iter().filter(|x| x.config == config) {
            classes.insert(
                rule.id.clone(),
                classify_rule(rule, &redacted, templated, node),
            );
        }
        Some(Compiled {
            tree,
            pieces: slots.iter().map(|s| Piece::split(s)).collect(),
            slots,
            text: Arc::new(SlotText::new(segments)),
            redacted,
            rules: classes,
            layouts: Default::default(),
        })
    }

    /// One node's slot values, substituted and as JSON; `None` when a placeholder cannot be filled.
    pub fn prepare(&self, node: &Node) -> Option<NodeValues> {
        let mut out = NodeValues {
            text: String::with_capacity(self.slots.iter().map(|s| s.len() + 2).sum()),
            ends: Vec::with_capacity(self.slots.len()),
        };
        for (s, pieces) in self.slots.iter().zip(&self.pieces) {
            match pieces {
                Some(pieces) => out.push_pieces(pieces, node)?,
                None => out.push(&substitute(s, node).ok()?)?,
            }
        }
        Some(out)
    }

    /// When a learned layout fits `bytes` with the node's values (a byte comparison), the body's identity for the
    /// warm-scan key: a hash of the layout and the values, which determine the body (it stands for the blake3 of
    /// the body, which it spares; the two are domain-separated).
    pub fn fit(&self, bytes: &Body, node: &NodeValues) -> Option<[u8; 32]> {
        let layout = self.layouts.iter().find(|l| l.fits(bytes, node))?;
        Some(layout.body_id(node))
    }

    /// The body's identity as [`Compiled::fit`] gives it, for a body no layout of this scan fits yet: when the last
    /// scan's identity (`last`) is that of a layout learned from this very body (without parsing), the body is byte
    /// for byte the one the last scan checked against that layout, so the layout is as sound as it was then and is
    /// kept for the nodes after. `None` otherwise (the body has changed, or was never known by a layout).
    pub fn relearn(&self, bytes: &Body, node: &NodeValues, last: &[u8; 32]) -> Option<[u8; 32]> {
        let layout = Layout::learn(&bytes.contiguous(), &self.slots, node)?;
        let id = layout.body_id(node);
        if id != *last {
            return None;
        }
        self.layouts.add(layout);
        Some(id)
    }

    /// The layouts learned so far, for a fetch to expect (see [`Expected`]).
    pub fn expected(&self) -> Expected<'_> {
        Expected {
            layouts: &self.layouts,
            count: self.layouts.len(),
        }
    }

    /// Whether `bytes` matches (see [`Compiled::matches`]) with the node's values, by parsing; a matching body's
    /// layout is then learned for the nodes after it.
    pub fn matches_learning(&self, bytes: &[u8], values: &[String], node: &NodeValues) -> bool {
        if !self.matches(bytes, values) {
            return false;
        }
        if self.layouts.len() < MAX_LAYOUTS
            && let Some(layout) = Layout::learn(bytes, &self.slots, node)
            && self.sound(&layout)
        {
            self.layouts.add(layout);
        }
        true
    }

    /// Whether a learned layout puts exactly the slot tokens in its gaps: filled with made-up values (one per
    /// placeholder string, found nowhere else), it must parse and match the baseline with those values.
    fn sound(&self, layout: &Layout) -> bool {
        let mut made_up: HashMap<&str, String> = HashMap::new();
        let values: Vec<String> = self
            .slots
            .iter()
            .map(|s| {
                let n = made_up.len();
                made_up
                    .entry(s.as_str())
                    .or_insert_with(|| format!("plumb-layout-check-{n}-7f3a9c"))
                    .clone()
            })
            .collect();
        NodeValues::quote(values.iter().map(String::as_str))
            .is_some_and(|quoted| self.matches(&layout.render(&quoted), &values))
    }

    /// How `rule` goes on a matching node (`Filled` for a rule this baseline was not compiled with).
    pub fn rule_class(&self, rule: &Rule) -> RuleClass {
        self.rules
            .get(&rule.id)
            .copied()
            .unwrap_or(RuleClass::Filled)
    }

    /// The node's value of every slot, substituted; `None` when a placeholder cannot be filled.
    pub fn values(&self, node: &Node) -> Option<Vec<String>> {
        self.slots
            .iter()
            .map(|s| substitute(s, node).ok().map(|c| c.into_owned()))
            .collect()
    }

    /// Whether `bytes` is a JSON document equal to the baseline with `values` in its slots (as the full path's
    /// parse and `matches_template` would find). `false` also for anything the full path should look at itself.
    pub fn matches(&self, bytes: &[u8], values: &[String]) -> bool {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return false;
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut de = serde_json::Deserializer::from_str(text);
        Seed {
            t: &self.tree,
            values,
        }
        .deserialize(&mut de)
        .is_ok()
            && de.end().is_ok()
    }

    /// The slot values as the redacted document has them: each through the text patterns.
    pub fn redacted_values(&self, mut values: Vec<String>, red: Option<&Redactor>) -> Vec<String> {
        if let Some(red) = red {
            values.iter_mut().for_each(|v| red.redact_string(v));
        }
        values
    }

    /// The redacted canonical text's slots: each redacted value as JSON.
    pub fn slot_texts(redacted: &[String]) -> Vec<String> {
        redacted
            .iter()
            .map(|v| serde_json::to_string(v).unwrap_or_default())
            .collect()
    }

    /// The redacted baseline with `redacted` values in its slots: the redacted document of a matching node.
    pub fn filled(&self, redacted: &[String]) -> Document {
        fn walk(v: &mut Value, values: &mut std::slice::Iter<'_, String>) {
            match v {
                // Slot strings are the only strings with placeholders, met in slot order.
                Value::String(s) if has_placeholder(s) => {
                    if let Some(x) = values.next() {
                        s.clone_from(x);
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(|x| walk(x, values)),
                Value::Object(o) => o.values_mut().for_each(|x| walk(x, values)),
                _ => {}
            }
        }
        let mut doc = self.redacted.clone();
        if let Document::Tree(v) = &mut doc {
            walk(v, &mut redacted.iter());
        }
        doc
    }
}

/// A rule's class on a baseline (see [`RuleClass`]).
fn classify_rule(rule: &Rule, redacted: &Document, templated: bool, node: &Node) -> RuleClass {
    let once = || {
        let input = Input {
            node,
            config: &rule.config,
            doc: redacted,
            baseline: Some(redacted),
            raw_len: 0,
        };
        match rule.evaluate(&input, &mut Default::default()) {
            Outcome::Pass => RuleClass::Pass,
            _ => RuleClass::Eval,
        }
    };
    match &rule.check {
        Check::Expr(_, uses) => {
            if templated {
                RuleClass::Filled
            } else if uses[2] {
                RuleClass::Eval
            } else {
                once()
            }
        }
        Check::MaxBytes(_) => RuleClass::Eval,
        // Line rules give the same error on every tree; growth over an equal baseline is none.
        Check::LinePresent(..) | Check::LineAbsent(..) | Check::MaxGrowth(_) => once(),
        check => {
            if !templated {
                return once();
            }
            let Some((text, path)) = &rule.path else {
                return once();
            };
            // A filter can select differently once slots are filled.
            if text.contains('?') {
                return RuleClass::Filled;
            }
            let selection_only = matches!(
                check,
                Check::Exists | Check::CountMin(_) | Check::CountMax(_)
            );
            let Document::Tree(root) = redacted else {
                return RuleClass::Filled;
            };
            if !selection_only && path.query(root).all().into_iter().any(contains_slot) {
                return RuleClass::Filled;
            }
            once()
        }
    }
}

/// For one plan and redaction key: each baseline file compiled at most once, on first use, and kept for the
/// plan's later scans ([`crate::config::Scratch`]). Files are told apart by their address in the plan, which
/// outlives the scans (a lookup per node, no path hashing); the table of them is made once, at the first lookup,
/// so that a lookup after takes no lock.
#[derive(Debug, Default)]
pub struct Cache {
    files: std::sync::OnceLock<HashMap<usize, std::sync::OnceLock<Option<Compiled>>>>,
}

impl Cache {
    /// The compiled form of `file`, one of `plan`'s baseline files (compiled now if this is its first use); `None`
    /// when it has none, or when `file` is not one of `plan`'s.
    pub fn get(
        &self,
        plan: &crate::config::Plan,
        file: &BaselineFile,
        red: Option<&Redactor>,
        config: &str,
        node: &Node,
    ) -> Option<&Compiled> {
        let key = |f: &BaselineFile| std::ptr::from_ref(f).addr();
        let files = self.files.get_or_init(|| {
            plan.baselines
                .configs
                .values()
                .flat_map(|c| {
                    c.default
                        .iter()
                        .chain(c.labels.iter().map(|(_, _, f)| f))
                        .chain(c.nodes.values())
                })
                .map(|f| (key(f), std::sync::OnceLock::new()))
                .collect()
        });
        files
            .get(&key(file))?
            .get_or_init(|| Compiled::new(file, red, &plan.rules, config, node))
            .as_ref()
    }
}

/// Walks one value of the body against the tree.
#[derive(Clone, Copy)]
struct Seed<'a> {
    t: &'a CNode,
    values: &'a [String],
}

fn differs<E: de::Error>() -> E {
    E::custom("differs from the baseline")
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed<'_> {
    fn number<E: de::Error>(self, n: Number) -> Result<(), E> {
        match self.t {
            CNode::Num(t) if *t == n => Ok(()),
            _ => Err(differs()),
        }
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the baseline's value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match self.t {
            CNode::Null => Ok(()),
            _ => Err(differs()),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        match self.t {
            CNode::Bool(b) if *b == v => Ok(()),
            _ => Err(differs()),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(Number::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(Number::from(v))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<(), E> {
        // As `normalize::canonicalize_in_place` folds integral floats.
        if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            return self.number(Number::from(f as i64));
        }
        match Number::from_f64(f) {
            Some(n) => self.number(n),
            None => Err(differs()),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let same = match self.t {
            CNode::Str(s) => **s == *v,
            CNode::Slot(i) => self.values.get(*i).is_some_and(|s| s == v),
            _ => false,
        };
        if same { Ok(()) } else { Err(differs()) }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let CNode::Arr(items) = self.t else {
            return Err(differs());
        };
        for t in items {
            if seq
                .next_element_seed(Seed {
                    t,
                    values: self.values,
                })?
                .is_none()
            {
                return Err(differs());
            }
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(differs());
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let CNode::Obj(entries) = self.t else {
            return Err(differs());
        };
        // Which keys were seen: a bit mask for small objects, a vector beyond.
        let mut small = 0u64;
        let mut large = if entries.len() > 64 {
            vec![false; entries.len()]
        } else {
            Vec::new()
        };
        let mut count = 0;
        let mut next = 0;
        while let Some(i) = map.next_key_seed(Key { entries, next })? {
            // A repeated key: the full path decides what it means.
            let repeated = if large.is_empty() {
                let bit = 1u64 << i;
                let before = small;
                small |= bit;
                before & bit != 0
            } else {
                std::mem::replace(&mut large[i], true)
            };
            if repeated {
                return Err(differs());
            }
            count += 1;
            next = i + 1;
            map.next_value_seed(Seed {
                t: &entries[i].1,
                values: self.values,
            })?;
        }
        if count == entries.len() {
            Ok(())
        } else {
            Err(differs())
        }
    }
}

/// Finds a key among an object's sorted entries, trying first the one after the last key found (nodes usually
/// send keys in a stable order, often sorted).
struct Key<'a> {
    entries: &'a [(Box<str>, CNode)],
    next: usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key of the baseline")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        if let Some((k, _)) = self.entries.get(self.next)
            && k.as_bytes() == v.as_bytes()
        {
            return Ok(self.next);
        }
        self.entries
            .binary_search_by(|(k, _)| (**k).cmp(v))
            .map_err(|_| differs())
    }
}

#[cfg(test)]
mod tests {
    use crate::classify::{Context, TargetResult, evaluate};
    use crate::config::Plan;
    use crate::store::Content;
    use std::sync::Arc;

    const BASELINE: &str = r#"{
      "name": "${node.name}",
      "url": "https://${node.vars.host}:8443/",
      "port": 80,
      "ratio": 0.5,
      "db": {"user": "app", "password": "hunter2", "pool": [1, 2, 3]},
      "tags": ["a", "tok-${node.vars.tok}", "c"],
      "routes": [{"path": "/", "timeout_ms": 100}, {"path": "/api", "timeout_ms": 40000}],
      "note": "line one\nline two",
      "empty": {}, "none": null, "on": true
    }"#;

    const RULES: &str = r#"
[[rule]]
id = "port-low"
config = "app"
severity = "high"
path = "$.port"
le = 1024

[[rule]]
id = "timeouts"
config = "app"
severity = "medium"
path = "$.routes[*].timeout_ms"
le = 30000
message = "{node}: {path} is {actual}"

[[rule]]
id = "name-set"
config = "app"
severity = "low"
path = "$.name"
exists = true

[[rule]]
id = "small"
config = "app"
severity = "low"
max_bytes = 300

[[rule]]
id = "ratio"
config = "app"
severity = "low"
expr = "config.ratio < 1.0"

[[rule]]
id = "url-tls"
config = "app"
severity = "low"
path = "$.url"
matches = '^https://'
"#;

    /// Two nodes, a templated JSON baseline with a secret and a text-pattern secret in a slot, six rules.
    fn project(baseline: &str, rules: &str) -> (tempfile::TempDir, Plan) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = [
            (
                "plumb.toml",
                "[redact]\ntext = ['tok-([a-z0-9]+)']\n\n\
                 [[node]]\nname = \"n1\"\nvars = { host = \"10.0.0.1\", tok = \"abc123\" }\n\n\
                 [[node]]\nname = \"n2\"\nvars = { host = \"10.0.0.2\", tok = \"zz9\" }\n\n\
                 [[config]]\nname = \"app\"\nsource.file = \"live/${node.name}.json\"\nformat = \"json\"\n",
            ),
            ("baselines/app/default.json", baseline),
            ("rules/app.toml", rules),
        ];
        for (p, c) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, c).expect("write");
        }
        let plan = crate::config::load(&dir.path().join("plumb.toml")).expect("plan loads");
        (dir, plan)
    }

    fn context(plan: &Plan) -> Context {
        let red = crate::redact::Redactor::new([7; 32], &plan.redact).expect("redactor");
        Context {
            redactor: Some(Arc::new(red)),
            ..Default::default()
        }
    }

    /// What must not differ between the fast path and the full one.
    fn view(r: &TargetResult) -> impl PartialEq + std::fmt::Debug {
        let mut findings: Vec<_> = r
            .findings
            .iter()
            .map(|f| {
                (
                    f.fingerprint.clone(),
                    f.kind,
                    f.severity,
                    f.path.clone(),
                    f.message.clone(),
                    f.actual.clone(),
                    f.expected.clone(),
                    f.rule.clone(),
                )
            })
            .collect();
        findings.sort_by(|a, b| a.0.cmp(&b.0));
        (
            r.read,
            findings,
            r.unified.clone(),
            r.baseline.clone(),
            r.snapshot
                .as_ref()
                .map(|(h, c)| (h.clone(), c.as_ref().map(Content::text))),
        )
    }

    /// Evaluate `body` for node `n` both ways (`keep_document` forces the full path); whether the fast path took it.
    fn both(plan: &Plan, ctx: &Context, n: usize, body: &str) -> bool {
        let (node, cfg) = (&plan.nodes[n], &plan.configs[0]);
        let bytes = body.as_bytes().to_vec();
        let fast = evaluate(plan, node, cfg, Ok(bytes.clone()), "t", false, ctx);
        let full = evaluate(plan, node, cfg, Ok(bytes), "t", true, ctx);
        assert_eq!(view(&fast), view(&full), "body: {body}");
        matches!(fast.snapshot, Some((_, Some(Content::Filled { .. }))))
    }

    /// The ids of the rules that did not pass for node `n` on `body`, sorted, and the result.
    fn failed_rules(
        plan: &Plan,
        ctx: &Context,
        n: usize,
        body: String,
    ) -> (Vec<String>, TargetResult) {
        let r = evaluate(
            plan,
            &plan.nodes[n],
            &plan.configs[0],
            Ok(body.into_bytes()),
            "t",
            false,
            ctx,
        );
        let mut ids: Vec<String> = r.findings.iter().filter_map(|f| f.rule.clone()).collect();
        ids.sort();
        (ids, r)
    }

    /// The one baseline compiled in `ctx`'s scan.
    fn the_compiled(ctx: &Context) -> &super::Compiled {
        let files = ctx.fast.files.get().expect("looked up");
        files
            .values()
            .find_map(|c| c.get().and_then(Option::as_ref))
            .expect("compiled once")
    }

    fn n1_body() -> String {
        r#"{"on": true, "none": null, "empty": {}, "note": "line one\nline two",
            "routes": [{"timeout_ms": 100, "path": "/"}, {"path": "/api", "timeout_ms": 40000}],
            "tags": ["a", "tok-abc123", "c"],
            "db": {"pool": [1, 2, 3], "password": "hunter2", "user": "app"},
            "ratio": 0.5, "port": 80, "url": "https://10.0.0.1:8443/", "name": "n1"}"#
            .to_string()
    }

    #[test]
    fn a_matching_body_gives_what_the_full_path_gives() {
        let (_d, plan) = project(BASELINE, RULES);
        let ctx = context(&plan);
        let body = n1_body();
        assert!(
            both(&plan, &ctx, 0, &body),
            "a matching body takes the fast path"
        );
        // Spelled differently, same document: escapes, integral floats, a byte order mark, whitespace.
        for same in [
            body.replace("\"port\": 80", "\"port\": 80.0"),
            body.replace("\"user\": \"app\"", "\"user\": \"\\u0061pp\""),
            body.replace("\"name\"", "\"na\\u006de\""),
            format!("\u{feff}\n {body} \n"),
        ] {
            assert!(both(&plan, &ctx, 0, &same), "fast path for {same}");
        }
        // The other node's values do not match n1's slots; n2's body matches n2.
        assert!(!both(&plan, &ctx, 1, &body));
        let n2 = body
            .replace("10.0.0.1", "10.0.0.2")
            .replace("tok-abc123", "tok-zz9")
            .replace("\"n1\"", "\"n2\"");
        assert!(both(&plan, &ctx, 1, &n2));
    }

    #[test]
    fn anything_else_takes_the_full_path_with_the_same_results() {
        let (_d, plan) = project(BASELINE, RULES);
        let ctx = context(&plan);
        let body = n1_body();
        for other in [
            body.replace("\"port\": 80", "\"port\": 81"),
            body.replace("\"port\": 80", "\"port\": \"80\""),
            body.replace("\"port\": 80", "\"port\": 80.5"),
            body.replace("\"ratio\": 0.5", "\"ratio\": 0.50001"),
            body.replace("\"password\": \"hunter2\"", "\"password\": \"hunter3\""),
            body.replace("\"on\": true, ", ""),
            body.replace("\"on\": true", "\"on\": true, \"extra\": 1"),
            body.replace("\"on\": true", "\"on\": false, \"on\": true"),
            body.replace("[1, 2, 3]", "[1, 2, 3, 4]"),
            body.replace("[1, 2, 3]", "[1, 2]"),
            body.replace("[1, 2, 3]", "{}"),
            body.replace("\"none\": null", "\"none\": 0"),
            body.replace("tok-abc123", "tok-abc124"),
            body.replace("\"n1\"", "\"n1 \""),
            format!("{body} x"),
            body[..body.len() - 1].to_string(),
            "[]".into(),
            "\"n1\"".into(),
        ] {
            assert!(!both(&plan, &ctx, 0, &other), "full path for {other}");
        }
    }

    #[test]
    fn rules_that_read_node_values_or_fail_on_the_baseline_are_evaluated_per_node() {
        // `timeouts` fails on the baseline itself: each node gets its own message; `small` reads the body's size.
        let (_d, plan) = project(BASELINE, RULES);
        let ctx = context(&plan);
        let (ids, r) = failed_rules(&plan, &ctx, 0, n1_body());
        assert_eq!(ids, ["small", "timeouts"]);
        assert!(
            r.findings
                .iter()
                .any(|f| f.message == "n1: $.routes[1].timeout_ms is 40000")
        );
        // Rules reading slot values (a regex on one, CEL over the whole config) see the node's own values, on a
        // document rebuilt from the redacted baseline: same outcomes, messages and actual values as the full path.
        let rules = format!(
            "{RULES}\n[[rule]]\nid = \"name-form\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$.name\"\nmatches = '^x'\n\n\
             [[rule]]\nid = \"tags\"\nconfig = \"app\"\nseverity = \"low\"\npath = \"$.tags[1]\"\nequals = \"tok-abc123\"\n\n\
             [[rule]]\nid = \"cel-name\"\nconfig = \"app\"\nseverity = \"low\"\nexpr = \"config.name == 'n2'\"\n"
        );
        let (_d, plan) = project(BASELINE, &rules);
        let ctx = context(&plan);
        for n in 0..2 {
            let body = if n == 0 {
                n1_body()
            } else {
                n1_body()
                    .replace("10.0.0.1", "10.0.0.2")
                    .replace("tok-abc123", "tok-zz9")
                    .replace("\"n1\"", "\"n2\"")
            };
            assert!(both(&plan, &ctx, n, &body));
            let (ids, _) = failed_rules(&plan, &ctx, n, body);
            // The token is redacted before rules run, so `tags` fails on both nodes.
            let want: &[&str] = if n == 0 {
                &["cel-name", "name-form", "small", "tags", "timeouts"]
            } else {
                &["name-form", "small", "tags", "timeouts"]
            };
            assert_eq!(ids, want);
        }
    }

    #[test]
    fn baselines_the_fast_path_cannot_reproduce_get_none() {
        // A placeholder under a secret key: its marker depends on the node.
        let secret = BASELINE.replace("\"hunter2\"", "\"pw-${node.name}\"");
        let (_d, plan) = project(&secret, "");
        let ctx = context(&plan);
        let body = n1_body().replace("\"hunter2\"", "\"pw-n1\"");
        assert!(!both(&plan, &ctx, 0, &body));
        // A placeholder in a key.
        let keyed = BASELINE.replace("\"on\": true", "\"on-${node.name}\": true");
        let (_d, plan) = project(&keyed, "");
        let body = n1_body().replace("\"on\": true", "\"on-n1\": true");
        assert!(!both(&plan, &context(&plan), 0, &body));
        // Without placeholders and without rules: fast.
        let plain = BASELINE
            .replace("${node.name}", "n1")
            .replace("${node.vars.host}", "10.0.0.1")
            .replace("${node.vars.tok}", "abc123");
        let (_d, plan) = project(&plain, "");
        assert!(both(&plan, &context(&plan), 0, &n1_body()));
    }

    #[test]
    fn a_learned_byte_layout_never_accepts_what_parsing_would_not() {
        // A literal equal to a node's slot value, and a slot value the body escapes its own way: the byte layout
        // learned from n1 must not carry n1's literal over as n2's slot, or the other way round.
        let baseline = r#"{"url": "https://${node.vars.host}:8443/", "q": "https://10.0.0.1:8443/", "n": "${node.name}"}"#;
        let (_d, plan) = project(baseline, "");
        let ctx = context(&plan);
        let n1 =
            r#"{"url": "https:\/\/10.0.0.1:8443\/", "q": "https://10.0.0.1:8443/", "n": "n1"}"#;
        assert!(both(&plan, &ctx, 0, n1));
        for n2 in [
            // n1's escaped url kept, n2's url where the literal is.
            r#"{"url": "https:\/\/10.0.0.1:8443\/", "q": "https://10.0.0.2:8443/", "n": "n2"}"#,
            r#"{"url": "https://10.0.0.2:8443/", "q": "https://10.0.0.2:8443/", "n": "n2"}"#,
        ] {
            assert!(!both(&plan, &ctx, 1, n2), "{n2}");
        }
        assert!(both(
            &plan,
            &ctx,
            1,
            r#"{"url": "https://10.0.0.2:8443/", "q": "https://10.0.0.1:8443/", "n": "n2"}"#
        ));
        // The same placeholder twice, and a layout learned from n1 serving n2 by bytes.
        let baseline =
            r#"{"a": "${node.name}", "b": ["${node.name}", "x-${node.vars.tok}"], "c": 1}"#;
        let (_d, plan) = project(baseline, "");
        let ctx = context(&plan);
        assert!(both(
            &plan,
            &ctx,
            0,
            r#"{"a": "n1", "b": ["n1", "x-abc123"], "c": 1}"#
        ));
        let compiled = the_compiled(&ctx);
        assert_eq!(compiled.layouts.len(), 1, "learned from n1");
        assert!(both(
            &plan,
            &ctx,
            1,
            r#"{"a": "n2", "b": ["n2", "x-zz9"], "c": 1}"#
        ));
        for wrong in [
            r#"{"a": "n2", "b": ["n1", "x-zz9"], "c": 1}"#,
            r#"{"a": "n2", "b": ["n2", "x-abc123"], "c": 1}"#,
            r#"{"a": "n2", "b": ["n2", "x-zz9"], "c": 2}"#,
            // Equal to the full path (the last of a repeated key counts), but not by this path.
            r#"{"a": "n2", "b": ["n2", "x-zz9"], "c": 0, "c": 1}"#,
        ] {
            assert!(!both(&plan, &ctx, 1, wrong), "{wrong}");
        }
        assert_eq!(compiled.layouts.len(), 1, "n2 used n1's layout");
    }

    #[test]
    fn a_warm_scan_knows_unchanged_bodies_by_their_layout_from_its_first_node_on() {
        use crate::classify::InputDigests;
        let (_d, plan) = project(BASELINE, RULES);
        let versions = plan.baselines.versions(&plan.root, None);
        let digests = Arc::new(InputDigests::new(&plan, &versions));
        let mut ctx = context(&plan);
        ctx.digests = Some(digests);
        let cfg = &plan.configs[0];
        let n2_body = n1_body()
            .replace("10.0.0.1", "10.0.0.2")
            .replace("tok-abc123", "tok-zz9")
            .replace("\"n1\"", "\"n2\"");
        let bodies = [n1_body(), n2_body];
        // Cold: n1 parsed (its layout learned), n2 by bytes; both remember the layout identity.
        let cold: Vec<TargetResult> = (0..2)
            .map(|i| {
                evaluate(
                    &plan,
                    &plan.nodes[i],
                    cfg,
                    Ok(bodies[i].clone().into_bytes()),
                    "t1",
                    false,
                    &ctx,
                )
            })
            .collect();
        let memos: Vec<_> = cold
            .iter()
            .map(|r| r.input.clone().expect("a key"))
            .collect();
        assert_eq!(memos[0].body, {
            let c = the_compiled(&ctx);
            c.fit(
                &crate::collect::Body::from(bodies[0].clone().into_bytes()),
                &c.prepare(&plan.nodes[0]).expect("values"),
            )
            .expect("fits")
        });
        assert_ne!(
            memos[0].body,
            *blake3::hash(bodies[0].as_bytes()).as_bytes()
        );
        // Warm, with a new scan's empty cache, n2 first: both unchanged, neither parsed.
        let target = |i: usize| (plan.nodes[i].name.clone(), cfg.name.clone());
        let mut warm_ctx = context(&plan);
        warm_ctx.digests = ctx.digests.clone();
        warm_ctx.targets = Arc::new(
            (0..2)
                .map(|i| {
                    let m = crate::store::TargetMemory {
                        hash: cold[i].snapshot.as_ref().map(|(h, _)| h.clone()),
                        input: Some(memos[i].clone()),
                    };
                    (target(i), m)
                })
                .collect(),
        );
        for i in [1, 0] {
            let r = evaluate(
                &plan,
                &plan.nodes[i],
                cfg,
                Ok(bodies[i].clone().into_bytes()),
                "t2",
                false,
                &warm_ctx,
            );
            assert!(r.unchanged, "node {i} unchanged");
        }
        // A body that changed is not.
        let changed = bodies[1].replace("\"port\": 80", "\"port\": 81");
        let r = evaluate(
            &plan,
            &plan.nodes[1],
            cfg,
            Ok(changed.into_bytes()),
            "t2",
            false,
            &warm_ctx,
        );
        assert!(!r.unchanged && r.findings.iter().any(|f| f.path == "$.port"));
    }

    /// Fetch `body` for node `n` as the scan does: expecting what [`crate::classify::Known`] expects, the body
    /// arriving in chunks of 7 bytes.
    fn fetched_expecting(plan: &Plan, ctx: &Context, n: usize, body: &str) -> TargetResult {
        let (node, cfg) = (&plan.nodes[n], &plan.configs[0]);
        let known = crate::classify::Known::new(plan, node, cfg, false, ctx);
        let mut expect = known.expect();
        let mut r = crate::collect::Receiving::new(expect.as_mut());
        for c in body.as_bytes().chunks(7) {
            r.push(bytes::Bytes::copy_from_slice(c));
        }
        let fetched = r.finish(Default::default());
        drop(expect);
        let expected = matches!(fetched, crate::collect::Fetched::AsExpected { .. });
        let mut out =
            crate::classify::evaluate_fetched(plan, node, cfg, Ok(fetched), "t", false, ctx, known);
        // Marks which way it went, for the caller (`fetch_seconds` is the scan's to set).
        out.fetch_seconds = if expected { 1.0 } else { 0.0 };
        out
    }

    #[test]
    fn a_body_compared_as_it_arrives_gives_what_the_full_path_gives() {
        let (_d, plan) = project(BASELINE, RULES);
        let versions = plan.baselines.versions(&plan.root, None);
        let mut ctx = context(&plan);
        ctx.digests = Some(Arc::new(crate::classify::InputDigests::new(
            &plan, &versions,
        )));
        let cfg = &plan.configs[0];
        let n2_body = n1_body()
            .replace("10.0.0.1", "10.0.0.2")
            .replace("tok-abc123", "tok-zz9")
            .replace("\"n1\"", "\"n2\"");
        // Nothing learned yet: nothing expected, the body parsed (and its layout learned).
        let first = fetched_expecting(&plan, &ctx, 0, &n1_body());
        assert_eq!(first.fetch_seconds, 0.0);
        // Then n2's body is expected, and its results are the full path's, its identity the layout's.
        let r = fetched_expecting(&plan, &ctx, 1, &n2_body);
        assert_eq!(r.fetch_seconds, 1.0, "n2 was expected");
        let full = evaluate(
            &plan,
            &plan.nodes[1],
            cfg,
            Ok(n2_body.clone().into_bytes()),
            "t",
            true,
            &ctx,
        );
        assert_eq!(view(&r), view(&full));
        let c = the_compiled(&ctx);
        let values = c.prepare(&plan.nodes[1]).expect("values");
        assert_eq!(
            r.input.as_ref().map(|i| i.body),
            c.fit(
                &crate::collect::Body::from(n2_body.clone().into_bytes()),
                &values
            )
        );
        // Bodies that are not expected go the usual way, on the bytes that came.
        for other in [
            n2_body.replace("\"port\": 80", "\"port\": 81"),
            n2_body.replace("10.0.0.2", "10.0.0.9"),
            format!("{n2_body} "),
            n2_body[..n2_body.len() - 2].to_string(),
        ] {
            let r = fetched_expecting(&plan, &ctx, 1, &other);
            assert_eq!(r.fetch_seconds, 0.0, "{other}");
            let full = evaluate(
                &plan,
                &plan.nodes[1],
                cfg,
                Ok(other.clone().into_bytes()),
                "t",
                true,
                &ctx,
            );
            assert_eq!(view(&r), view(&full), "{other}");
        }
        // Warm: the same body, expected, with the stored key, is unchanged without a parse.
        let mut warm_ctx = context(&plan);
        warm_ctx.digests = ctx.digests.clone();
        warm_ctx.fast = ctx.fast.clone();
        let target = (plan.nodes[1].name.clone(), cfg.name.clone());
        let remembered = crate::store::TargetMemory {
            hash: full.snapshot.map(|(h, _)| h),
            input: Some(r_input(&fetched_expecting(&plan, &ctx, 1, &n2_body))),
        };
        warm_ctx.targets = Arc::new([(target, remembered)].into());
        let w = fetched_expecting(&plan, &warm_ctx, 1, &n2_body);
        assert!(w.unchanged && w.fetch_seconds == 1.0);
        assert_eq!(
            w.snapshot.map(|(h, _)| h),
            r.snapshot.map(|(h, _)| h),
            "the last snapshot stands"
        );
    }

    fn r_input(r: &TargetResult) -> crate::classify::InputMemo {
        r.input.clone().expect("an input key")
    }

    #[test]
    fn a_slot_split_once_gives_what_substituting_it_gives() {
        use super::{NodeValues, Piece};
        let node = crate::inventory::Node {
            name: "web-1".into(),
            labels: [("zone".to_string(), "eu \"west\"".to_string())].into(),
            vars: [
                ("addr".to_string(), "10.0.0.1:80".to_string()),
                ("tab".to_string(), "a\tb".to_string()),
                ("empty".to_string(), String::new()),
            ]
            .into(),
        };
        for template in [
            "",
            "plain",
            "${node.name}",
            "${node.name}.fleet.example.net",
            "http://${node.vars.addr}/x/${node.name}",
            "${node.labels.zone}",
            "x${node.vars.tab}y",
            "[${node.vars.empty}]",
            "${node.vars.missing}",
            "${node.labels.missing}",
            "${node.unknown}",
            "unclosed ${node.name",
            "${node.name}${node.name}",
            "\"${node.name}\\",
        ] {
            let full = crate::baseline::substitute(template, &node)
                .ok()
                .and_then(|v| NodeValues::quote([v.as_ref()]));
            let split = Piece::split(template);
            let by_pieces = split.as_ref().map(|pieces| {
                let mut out = NodeValues {
                    text: String::new(),
                    ends: Vec::new(),
                };
                out.push_pieces(pieces, &node).map(|()| out)
            });
            match by_pieces {
                Some(got) => assert_eq!(
                    got.as_ref().map(|v| v.iter().collect::<Vec<_>>()),
                    full.as_ref().map(|v| v.iter().collect::<Vec<_>>()),
                    "{template}"
                ),
                // Not split: substituted in full, as before.
                None => assert!(
                    template.contains("unknown") || template.contains("unclosed"),
                    "{template}"
                ),
            }
        }
    }

    #[test]
    fn slot_values_are_quoted_as_serde_json_quotes_them() {
        for v in [
            "",
            "plain",
            "10.0.0.1:80",
            "q\"uote",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "\u{1f}",
            "\u{7f}del",
            "é ü 日本",
            "/slash/",
        ] {
            assert_eq!(
                super::json_string(v),
                serde_json::to_string(v).unwrap(),
                "{v:?}"
            );
        }
    }

    #[test]
    fn the_split_text_fills_back_to_the_canonical_text() {
        let (_d, plan) = project(BASELINE, "");
        let ctx = context(&plan);
        let r = evaluate(
            &plan,
            &plan.nodes[0],
            &plan.configs[0],
            Ok(n1_body().into_bytes()),
            "t",
            false,
            &ctx,
        );
        let Some((hash, Some(Content::Filled { template, slots }))) = &r.snapshot else {
            panic!("fast path expected: {:?}", r.snapshot);
        };
        assert_eq!(slots.len(), 3);
        assert_eq!(template.segments.len(), 4);
        let text = template.fill(slots).expect("fits");
        assert_eq!(*hash, blake3::hash(text.as_bytes()).to_hex().to_string());
        assert!(text.contains("\"name\": \"n1\""), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("abc123"),
            "secrets redacted: {text}"
        );
        assert!(template.fill(&slots[1..]).is_none());
    }
}
