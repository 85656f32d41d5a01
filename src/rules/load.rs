//! Loading `rules/*.toml`: raw rule files (unknown keys rejected), compiled rules (JSONPath, regex and CEL compiled
//! up front), their inline tests, and running those tests (`plumb rules test`).

use super::{CelCache, Check, Input, Outcome, Rule, Section, WhenMissing, values};
use crate::config::ConfigError;
use crate::finding::Severity;
use crate::inventory::{Node, Selector};
use crate::normalize::{self, Document, Format, line_col};
use crate::units::parse_size;
use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UniqueSpec {
    Values(bool),
    Key(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: toml::Spanned<String>,
    config: String,
    nodes: Option<BTreeMap<String, String>>,
    severity: Severity,
    path: Option<String>,
    message: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    when_missing: Option<WhenMissing>,
    format: Option<Format>,
    equals: Option<Value>,
    not_equals: Option<Value>,
    #[serde(rename = "in")]
    in_: Option<Vec<Value>>,
    not_in: Option<Vec<Value>>,
    matches: Option<String>,
    not_matches: Option<String>,
    exists: Option<bool>,
    absent: Option<bool>,
    lt: Option<Value>,
    le: Option<Value>,
    gt: Option<Value>,
    ge: Option<Value>,
    count_min: Option<usize>,
    count_max: Option<usize>,
    unique: Option<UniqueSpec>,
    #[serde(rename = "type")]
    type_: Option<String>,
    max_bytes: Option<SizeSpec>,
    max_growth: Option<String>,
    expr: Option<String>,
    line_present: Option<String>,
    line_absent: Option<String>,
    section: Option<String>,
    /// Persistence gate: `"2 scans"` or a duration.
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    test: Vec<RawTest>,
}

/// What a rule test expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Pass,
    Fail,
    /// The rule cannot be evaluated on this input (e.g. a CEL runtime error).
    Invalid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Option<String>,
    /// An inline structured document.
    config: Option<Value>,
    /// A document as text, parsed with `format` (or the rule's `format`; text for line rules).
    input: Option<String>,
    format: Option<Format>,
    baseline: Option<Value>,
    baseline_input: Option<String>,
    node: Option<Node>,
    expect: Expect,
}

/// One compiled rule test.
#[derive(Debug, Clone)]
pub struct RuleTest {
    pub name: String,
    pub doc: Document,
    pub baseline: Option<Document>,
    pub node: Node,
    pub raw_len: usize,
    pub expect: Expect,
}

/// Every rule, indexed by config.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    by_config: HashMap<String, Vec<usize>>,
}

impl RuleSet {
    /// The rules that apply to `node`'s `config`.
    pub fn for_target<'a>(
        &'a self,
        config: &str,
        node: &'a Node,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.by_config
            .get(config)
            .into_iter()
            .flatten()
            .map(|&i| &self.rules[i])
            .filter(move |r| r.selector.matches(node))
    }

    /// Rules whose config no `[[config]]` defines (a shared rule pack): loaded and tested, never evaluated.
    pub fn inactive<'a>(&'a self, configs: &'a [String]) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| !configs.contains(&r.config))
    }
}

/// Load every `*.toml` in `dir` (sorted). `configs` gives each known config's document format.
pub fn load_dir(dir: &Path, configs: &[(String, bool)]) -> Result<RuleSet, Vec<ConfigError>> {
    let mut set = RuleSet::default();
    let mut errs = Vec::new();
    if !dir.exists() {
        return Ok(set);
    }
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            return Err(vec![ConfigError::at(
                dir,
                None,
                None,
                format!("cannot read: {e}"),
            )]);
        }
    };
    files.sort();
    let mut ids: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    for f in files {
        if f.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errs.push(ConfigError::at(&f, None, None, format!("cannot read: {e}")));
                continue;
            }
        };
        let raw: RawFile = match toml::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                errs.push(ConfigError::from_toml(&f, &text, &e));
                continue;
            }
        };
        for r in raw.rule {
            let (line, _) = line_col(&text, r.id.span().start);
            let id = r.id.get_ref().clone();
            if let Some((pf, pl)) = ids.get(&id) {
                errs.push(ConfigError::at(
                    &f,
                    Some(line),
                    None,
                    format!("rule id `{id}` is already used at {}:{pl}", pf.display()),
                ));
                continue;
            }
            ids.insert(id.clone(), (f.clone(), line));
            let structured = configs
                .iter()
                .find(|(n, _)| n == &r.config)
                .map(|(_, s)| *s);
            match compile(r, &f, line, structured) {
                Ok(rule) => {
                    set.by_config
                        .entry(rule.config.clone())
                        .or_default()
                        .push(set.rules.len());
                    set.rules.push(rule);
                }
                Err(m) => errs.push(ConfigError::at(
                    &f,
                    Some(line),
                    None,
                    format!("rule `{id}`: {m}"),
                )),
            }
        }
    }
    if errs.is_empty() { Ok(set) } else { Err(errs) }
}

fn regex(s: &str, what: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("{what} `{s}` is not a valid regex: {e}"))
}

fn compile(r: RawRule, file: &Path, line: usize, structured: Option<bool>) -> Result<Rule, String> {
    // Everything the rule was written as: a warm scan re-evaluates a target when one of its rules changes.
    let digest = *blake3::hash(format!("{r:?}|{structured:?}").as_bytes()).as_bytes();
    let mut checks: Vec<Check> = Vec::new();
    if let Some(v) = r.equals {
        checks.push(Check::Equals(v));
    }
    if let Some(v) = r.not_equals {
        checks.push(Check::NotEquals(v));
    }
    if let Some(v) = r.in_ {
        checks.push(Check::In(v));
    }
    if let Some(v) = r.not_in {
        checks.push(Check::NotIn(v));
    }
    if let Some(s) = &r.matches {
        checks.push(Check::Matches(regex(s, "matches")?));
    }
    if let Some(s) = &r.not_matches {
        checks.push(Check::NotMatches(regex(s, "not_matches")?));
    }
    match r.exists {
        Some(true) => checks.push(Check::Exists),
        Some(false) => checks.push(Check::Absent),
        None => {}
    }
    match r.absent {
        Some(true) => checks.push(Check::Absent),
        Some(false) => checks.push(Check::Exists),
        None => {}
    }
    for (v, make) in [
        (r.lt, Check::Lt as fn(Value) -> Check),
        (r.le, Check::Le),
        (r.gt, Check::Gt),
        (r.ge, Check::Ge),
    ] {
        if let Some(v) = v {
            checks.push(make(v));
        }
    }
    if let Some(n) = r.count_min {
        checks.push(Check::CountMin(n));
    }
    if let Some(n) = r.count_max {
        checks.push(Check::CountMax(n));
    }
    match r.unique {
        Some(UniqueSpec::Values(true)) => checks.push(Check::Unique(None)),
        Some(UniqueSpec::Values(false)) => {
            return Err("`unique = false` asserts nothing; remove it".into());
        }
        Some(UniqueSpec::Key(k)) => checks.push(Check::Unique(Some(k))),
        None => {}
    }
    if let Some(t) = r.type_ {
        if !values::TYPES.contains(&t.as_str()) {
            return Err(format!(
                "type `{t}` is not one of {}",
                values::TYPES.join(", ")
            ));
        }
        checks.push(Check::Type(t));
    }
    match r.max_bytes {
        Some(SizeSpec::Bytes(n)) => checks.push(Check::MaxBytes(n)),
        Some(SizeSpec::Text(s)) => checks.push(Check::MaxBytes(
            parse_size(&s).map_err(|e| format!("max_bytes: {e}"))?,
        )),
        None => {}
    }
    if let Some(g) = &r.max_growth {
        let pct = g
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<f64>().ok())
            .filter(|p| *p >= 0.0)
            .ok_or_else(|| format!("max_growth `{g}` must be a percentage such as \"50%\""))?;
        checks.push(Check::MaxGrowth(pct / 100.0));
    }
    if let Some(e) = &r.expr {
        let env = cel::Env::stdlib();
        let program = env
            .compile(e)
            .map_err(|err| format!("expr `{e}` is not valid CEL: {}", err.to_string().trim()))?;
        let refs = program.references();
        let uses = [
            refs.has_variable("config"),
            refs.has_variable("baseline"),
            refs.has_variable("node"),
        ];
        checks.push(Check::Expr(Arc::new(program), uses));
    }
    let section = r.section.as_deref().map(|s| {
        let t = s.trim();
        if t.starts_with('[') && t.ends_with(']') {
            Section::Ini(t[1..t.len() - 1].trim().to_string())
        } else {
            Section::Block(t.to_string())
        }
    });
    if let Some(s) = &r.line_present {
        checks.push(Check::LinePresent(
            regex(s, "line_present")?,
            section.clone(),
        ));
    }
    if let Some(s) = &r.line_absent {
        checks.push(Check::LineAbsent(regex(s, "line_absent")?, section.clone()));
    }
    if section.is_some() && r.line_present.is_none() && r.line_absent.is_none() {
        return Err("`section` goes with line_present or line_absent".into());
    }
    let check = match checks.len() {
        1 => checks.remove(0),
        0 => {
            return Err("no assertion: give one of equals, not_equals, in, not_in, matches, not_matches, exists, \
                        absent, lt, le, gt, ge, count_min, count_max, unique, type, max_bytes, max_growth, expr, \
                        line_present, line_absent"
                .into());
        }
        _ => {
            let names: Vec<&str> = checks.iter().map(Check::name).collect();
            return Err(format!(
                "one assertion per rule, found {}",
                names.join(", ")
            ));
        }
    };
    let is_line = matches!(check, Check::LinePresent(..) | Check::LineAbsent(..));
    if is_line && r.path.is_some() {
        return Err("line rules take no `path`".into());
    }
    if is_line && structured == Some(true) {
        return Err(format!(
            "line rules need a text config, and `{}` is structured",
            r.config
        ));
    }
    let needs_path = !matches!(
        check,
        Check::MaxBytes(_) | Check::MaxGrowth(_) | Check::Expr(..)
    ) && !is_line;
    if needs_path && r.path.is_none() {
        return Err(format!("`{}` needs a `path`", check.name()));
    }
    let path = match r.path {
        None => None,
        Some(p) => {
            let jp = JsonPath::parse(&p)
                .map_err(|e| format!("path `{p}` is not a valid JSONPath: {e}"))?;
            Some((p, jp))
        }
    };
    let gate = r
        .for_
        .as_deref()
        .map(crate::lifecycle::Gate::parse)
        .transpose()
        .map_err(|m| format!("for: {m}"))?;
    let id = r.id.into_inner();
    let default_format = r.format.or(if is_line { Some(Format::Text) } else { None });
    let mut tests = Vec::new();
    for (i, t) in r.test.into_iter().enumerate() {
        let name = t.name.clone().unwrap_or_else(|| format!("test {}", i + 1));
        let doc_of = |config: Option<Value>,
                      input: Option<String>,
                      what: &str|
         -> Result<Option<(Document, usize)>, String> {
            match (config, input) {
                (Some(_), Some(_)) => Err(format!(
                    "{name}: give `{what}` as inline TOML or as text, not both"
                )),
                (Some(v), None) => {
                    let len = v.to_string().len();
                    Ok(Some((Document::Tree(normalize::canonicalize(v)), len)))
                }
                (None, Some(text)) => {
                    let f = t.format.or(default_format).ok_or_else(|| {
                        format!("{name}: a text input needs `format` on the test or the rule")
                    })?;
                    let d =
                        normalize::parse(f, text.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
                    Ok(Some((d, text.len())))
                }
                (None, None) => Ok(None),
            }
        };
        let (doc, raw_len) = doc_of(t.config.clone(), t.input.clone(), "config")?
            .ok_or_else(|| format!("{name}: needs `config` (inline) or `input` (text)"))?;
        let baseline =
            doc_of(t.baseline.clone(), t.baseline_input.clone(), "baseline")?.map(|(d, _)| d);
        tests.push(RuleTest {
            name,
            doc,
            baseline,
            node: t.node.unwrap_or_else(|| Node {
                name: "test-node".into(),
                labels: Default::default(),
                vars: Default::default(),
            }),
            raw_len,
            expect: t.expect,
        });
    }
    Ok(Rule {
        id,
        config: r.config,
        selector: Selector(r.nodes.unwrap_or_default()),
        severity: r.severity,
        path,
        check,
        message: r.message,
        when_missing: r.when_missing,
        format: r.format,
        file: file.to_path_buf(),
        line,
        tests,
        gate,
        digest,
    })
}

/// The result of one rule test.
#[derive(Debug, Clone)]
pub struct TestReport {
    pub rule: String,
    pub test: String,
    pub file: PathBuf,
    pub line: usize,
    pub expect: Expect,
    pub got: Outcome,
    pub ok: bool,
}

/// Run every rule's tests.
pub fn run_tests(set: &RuleSet) -> Vec<TestReport> {
    let mut out = Vec::new();
    for r in &set.rules {
        for t in &r.tests {
            let input = Input {
                node: &t.node,
                config: &r.config,
                doc: &t.doc,
                baseline: t.baseline.as_ref(),
                raw_len: t.raw_len,
            };
            let got = r.evaluate(&input, &mut CelCache::default());
            let ok = matches!(
                (&got, t.expect),
                (Outcome::Pass, Expect::Pass)
                    | (Outcome::Fail { .. }, Expect::Fail)
                    | (Outcome::Error(_), Expect::Invalid)
            );
            out.push(TestReport {
                rule: r.id.clone(),
                test: t.name.clone(),
                file: r.file.clone(),
                line: r.line,
                expect: t.expect,
                got,
                ok,
            });
        }
    }
    out
}
