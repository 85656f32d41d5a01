//! `baselines/`: loading approved content, choosing the file that applies to a node (node > label > default),
//! substituting node variables, and writing approved content back (`plumb approve`).
//!
//! Layout: `baselines/<config>/default.<ext>`, `baselines/<config>/<label>=<value>.<ext>`,
//! `baselines/<config>/node/<node>.<ext>`, and optional `baselines/<config>/baseline.toml`.

use crate::config::{ConfigError, ConfigPlan, PartialCompare, RawCompare};
use crate::inventory::Node;
use crate::normalize::{self, Document, Format, line_col};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One parsed baseline file.
#[derive(Debug, Clone)]
pub struct BaselineFile {
    pub path: PathBuf,
    pub format: Format,
    pub doc: Document,
    /// Whether the content holds `${node.*}` placeholders.
    pub templated: bool,
    /// Every distinct string of the document (key, value or line) holding a placeholder: what a node must be able
    /// to fill, checked at load without building each node's copy.
    pub placeholders: Vec<String>,
}

/// The distinct strings of `doc` that hold `${node.` placeholders.
fn placeholder_strings(doc: &Document) -> Vec<String> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::String(s) if s.contains("${node.") => {
                out.insert(s.clone());
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => {
                for (k, x) in o {
                    if k.contains("${node.") {
                        out.insert(k.clone());
                    }
                    walk(x, out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    match doc {
        Document::Tree(v) => walk(v, &mut out),
        Document::Text(lines) => {
            out.extend(lines.iter().filter(|l| l.contains("${node.")).cloned())
        }
    }
    out.into_iter().collect()
}

/// Which file applies to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Default,
    Label,
    Node,
}

/// The baseline files of one config.
#[derive(Debug, Clone, Default)]
pub struct ConfigBaselines {
    pub default: Option<BaselineFile>,
    /// (label, value, file)
    pub labels: Vec<(String, String, BaselineFile)>,
    pub nodes: BTreeMap<String, BaselineFile>,
}

impl ConfigBaselines {
    /// The file that applies to `node`: its own, else the one label file it matches, else the default.
    pub fn resolve(&self, node: &Node) -> Option<(Scope, &BaselineFile)> {
        if let Some(f) = self.nodes.get(&node.name) {
            return Some((Scope::Node, f));
        }
        if let Some((_, _, f)) = self
            .labels
            .iter()
            .find(|(k, v, _)| node.labels.get(k) == Some(v))
        {
            return Some((Scope::Label, f));
        }
        self.default.as_ref().map(|f| (Scope::Default, f))
    }
}

/// All baselines, by config name, plus each config's `baseline.toml` settings.
#[derive(Debug, Clone, Default)]
pub struct BaselineSet {
    pub configs: BTreeMap<String, ConfigBaselines>,
    pub settings: BTreeMap<String, PartialCompare>,
}

impl BaselineSet {
    /// The baseline document for `node`'s `config`, node variables substituted.
    pub fn for_node(&self, config: &str, node: &Node) -> Option<(Scope, &BaselineFile, Document)> {
        let (scope, f) = self.configs.get(config)?.resolve(node)?;
        let doc = if f.templated {
            substitute_doc(&f.doc, node).unwrap_or_else(|_| f.doc.clone())
        } else {
            f.doc.clone()
        };
        Some((scope, f, doc))
    }
}

/// A superseded version of a baseline file, as the store remembers it.
#[derive(Debug, Clone)]
pub struct OldBaseline {
    /// The file, relative to plumb.toml's directory.
    pub file: String,
    pub hash: String,
    pub superseded_at: String,
    pub doc: Document,
}

/// Superseded versions of each baseline file, newest first.
#[derive(Debug, Clone, Default)]
pub struct BaselineHistory {
    by_file: std::collections::HashMap<PathBuf, Vec<OldBaseline>>,
}

impl BaselineHistory {
    /// Build from the store's versions; `root` turns their relative paths into the plan's file paths.
    pub fn from_versions(
        root: &Path,
        versions: &[crate::store::BaselineVersion],
    ) -> BaselineHistory {
        let mut h = BaselineHistory::default();
        for v in versions {
            let Some(at) = &v.superseded_at else {
                continue;
            };
            let doc = if v.text {
                Document::Text(v.content.lines().map(str::to_string).collect())
            } else {
                match serde_json::from_str(&v.content) {
                    Ok(t) => Document::Tree(t),
                    Err(_) => continue,
                }
            };
            h.by_file
                .entry(root.join(&v.file))
                .or_default()
                .push(OldBaseline {
                    file: v.file.clone(),
                    hash: v.hash.clone(),
                    superseded_at: at.clone(),
                    doc,
                });
        }
        for list in h.by_file.values_mut() {
            list.sort_by(|a, b| b.superseded_at.cmp(&a.superseded_at));
        }
        h
    }

    /// Superseded versions of the file at `path`, newest first.
    pub fn versions(&self, path: &Path) -> &[OldBaseline] {
        self.by_file.get(path).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl BaselineSet {
    /// Every baseline file in force, as versions to record (content redacted, unsubstituted).
    pub fn versions(
        &self,
        root: &Path,
        redactor: Option<&crate::redact::Redactor>,
    ) -> Vec<crate::store::BaselineVersion> {
        let mut out = Vec::new();
        for (config, cb) in &self.configs {
            let files = cb
                .default
                .iter()
                .chain(cb.labels.iter().map(|(_, _, f)| f))
                .chain(cb.nodes.values());
            for f in files {
                let mut doc = f.doc.clone();
                if let Some(r) = redactor {
                    r.redact(&mut doc);
                }
                let content = doc.canonical_text();
                out.push(crate::store::BaselineVersion {
                    file: f
                        .path
                        .strip_prefix(root)
                        .unwrap_or(&f.path)
                        .display()
                        .to_string(),
                    config: config.clone(),
                    hash: blake3::hash(content.as_bytes()).to_hex().to_string(),
                    content,
                    text: matches!(doc, Document::Text(_)),
                    first_seen: String::new(),
                    superseded_at: None,
                });
            }
        }
        out
    }
}

/// Load every baseline under `dir` for the given configs; all errors are returned together.
pub fn load_dir(
    dir: &Path,
    configs: &[ConfigPlan],
    nodes: &[Node],
) -> Result<BaselineSet, Vec<ConfigError>> {
    let mut set = BaselineSet::default();
    let mut errs = Vec::new();
    if !dir.exists() {
        return Ok(set);
    }
    let entries = match read_dir_sorted(dir) {
        Ok(e) => e,
        Err(e) => {
            return Err(vec![ConfigError::at(
                dir,
                None,
                None,
                format!("cannot read: {e}"),
            )]);
        }
    };
    for entry in entries {
        let name = file_name(&entry);
        if name.starts_with('.') {
            continue;
        }
        if !entry.is_dir() {
            errs.push(ConfigError::at(
                &entry,
                None,
                None,
                "expected only directories named after configs in baselines/",
            ));
            continue;
        }
        let Some(config) = configs.iter().find(|c| c.name == name) else {
            errs.push(ConfigError::at(
                &entry,
                None,
                None,
                format!("no [[config]] named `{name}` in plumb.toml"),
            ));
            continue;
        };
        let cb = load_config_dir(&entry, config, &mut set, &mut errs);
        // Every node that resolves to a templated file must have what it needs; no node may match two label files.
        for n in nodes.iter().filter(|n| config.selector.matches(n)) {
            let matching: Vec<&(String, String, BaselineFile)> = cb
                .labels
                .iter()
                .filter(|(k, v, _)| n.labels.get(k) == Some(v))
                .collect();
            if !cb.nodes.contains_key(&n.name) && matching.len() > 1 {
                errs.push(ConfigError::at(
                    &matching[1].2.path,
                    None,
                    None,
                    format!(
                        "node `{}` matches both {} and {}; add baselines/{}/node/{}.<ext> or narrow the labels",
                        n.name,
                        matching[0].2.path.display(),
                        matching[1].2.path.display(),
                        config.name,
                        n.name
                    ),
                ));
            }
            if let Some((_, f)) = cb.resolve(n)
                && let Some(m) = f.placeholders.iter().find_map(|s| substitute(s, n).err())
            {
                errs.push(ConfigError::at(&f.path, None, None, m));
            }
        }
        set.configs.insert(config.name.clone(), cb);
    }
    if errs.is_empty() { Ok(set) } else { Err(errs) }
}

fn load_config_dir(
    dir: &Path,
    config: &ConfigPlan,
    set: &mut BaselineSet,
    errs: &mut Vec<ConfigError>,
) -> ConfigBaselines {
    let mut cb = ConfigBaselines::default();
    let entries = match read_dir_sorted(dir) {
        Ok(e) => e,
        Err(e) => {
            errs.push(ConfigError::at(
                dir,
                None,
                None,
                format!("cannot read: {e}"),
            ));
            return cb;
        }
    };
    for path in entries {
        let name = file_name(&path);
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if name != "node" {
                errs.push(ConfigError::at(
                    &path,
                    None,
                    None,
                    "the only subdirectory allowed here is node/",
                ));
                continue;
            }
            match read_dir_sorted(&path) {
                Err(e) => errs.push(ConfigError::at(
                    &path,
                    None,
                    None,
                    format!("cannot read: {e}"),
                )),
                Ok(files) => {
                    for f in files {
                        let fname = file_name(&f);
                        if fname.starts_with('.') {
                            continue;
                        }
                        let Some((stem, _)) = fname.rsplit_once('.') else {
                            errs.push(ConfigError::at(
                                &f,
                                None,
                                None,
                                "a baseline file needs an extension",
                            ));
                            continue;
                        };
                        if let Some(b) = load_file(&f, config, errs) {
                            cb.nodes.insert(stem.to_string(), b);
                        }
                    }
                }
            }
            continue;
        }
        if name == "baseline.toml" {
            match std::fs::read_to_string(&path) {
                Err(e) => errs.push(ConfigError::at(
                    &path,
                    None,
                    None,
                    format!("cannot read: {e}"),
                )),
                Ok(text) => match parse_settings(&path, &text) {
                    Err(e) => errs.extend(e),
                    Ok(pc) => {
                        set.settings.insert(config.name.clone(), pc);
                    }
                },
            }
            continue;
        }
        let Some((stem, _)) = name.rsplit_once('.') else {
            errs.push(ConfigError::at(
                &path,
                None,
                None,
                "a baseline file needs an extension",
            ));
            continue;
        };
        if stem == "default" {
            if cb.default.is_some() {
                errs.push(ConfigError::at(
                    &path,
                    None,
                    None,
                    "a second default baseline for this config",
                ));
            }
            cb.default = load_file(&path, config, errs);
        } else if let Some((k, v)) = stem.split_once('=') {
            if k.is_empty() || v.is_empty() {
                errs.push(ConfigError::at(
                    &path,
                    None,
                    None,
                    "a label baseline is named <label>=<value>.<ext>",
                ));
                continue;
            }
            if let Some(b) = load_file(&path, config, errs) {
                cb.labels.push((k.to_string(), v.to_string(), b));
            }
        } else {
            errs.push(ConfigError::at(
                &path,
                None,
                None,
                "expected default.<ext>, <label>=<value>.<ext>, node/<node>.<ext> or baseline.toml",
            ));
        }
    }
    cb
}

/// Parse the text of a `baseline.toml` (`path` names it in errors; nothing is read from disk).
pub fn parse_settings(path: &Path, text: &str) -> Result<PartialCompare, Vec<ConfigError>> {
    let raw = toml::from_str::<RawCompare>(text)
        .map_err(|e| vec![ConfigError::from_toml(path, text, &e)])?;
    let mut errs = Vec::new();
    let mut e = |needle: &str, m: String| {
        let (l, c) = text
            .find(needle)
            .map(|o| line_col(text, o))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        errs.push(ConfigError::at(path, l, c, m));
    };
    let pc = PartialCompare::compile(&raw, &mut e);
    if errs.is_empty() { Ok(pc) } else { Err(errs) }
}

fn load_file(
    path: &Path,
    config: &ConfigPlan,
    errs: &mut Vec<ConfigError>,
) -> Option<BaselineFile> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let format = match Format::from_extension(ext) {
        Some(f) => f,
        None => {
            errs.push(ConfigError::at(
                path,
                None,
                None,
                format!("unknown baseline extension `.{ext}` (json, yaml, yml, toml, ini, conf, kv, txt)"),
            ));
            return None;
        }
    };
    // A structured config's baseline may be in any structured format; a text config's baseline is text.
    let want_text = config.normalizer.output_is_text();
    let format = if want_text { Format::Text } else { format };
    if !want_text && format == Format::Text {
        errs.push(ConfigError::at(
            path,
            None,
            None,
            format!(
                "config `{}` is structured; its baseline cannot be plain text",
                config.name
            ),
        ));
        return None;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            errs.push(ConfigError::at(
                path,
                None,
                None,
                format!("cannot read: {e}"),
            ));
            return None;
        }
    };
    match normalize::parse(format, &bytes) {
        Ok(doc) => {
            let templated = bytes.windows(7).any(|w| w == b"${node.");
            let placeholders = placeholder_strings(&doc);
            Some(BaselineFile {
                path: path.to_path_buf(),
                format,
                doc,
                templated,
                placeholders,
            })
        }
        Err(e) => {
            let (line, col, msg) = match &e {
                normalize::NormalizeError::Syntax {
                    line,
                    column,
                    message,
                    ..
                } => (*line, *column, format!("not valid {format}: {message}")),
                other => (None, None, other.to_string()),
            };
            errs.push(ConfigError::at(path, line, col, msg));
            None
        }
    }
}

fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Replace `${node.name}`, `${node.vars.X}` and `${node.labels.X}` in `s`; anything else is left as is.
pub fn substitute<'a>(s: &'a str, node: &Node) -> Result<Cow<'a, str>, String> {
    if !s.contains("${node.") {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("${node.") {
        out.push_str(&rest[..pos]);
        let body = &rest[pos + 2..];
        let Some(end) = body.find('}') else {
            out.push_str(&rest[pos..]);
            rest = "";
            break;
        };
        let expr = &body[..end];
        let value = if expr == "node.name" {
            Some(node.name.as_str())
        } else if let Some(v) = expr.strip_prefix("node.vars.") {
            Some(
                node.vars
                    .get(v)
                    .ok_or_else(|| {
                        format!(
                            "node `{}` has no var `{v}` (used as ${{{expr}}})",
                            node.name
                        )
                    })?
                    .as_str(),
            )
        } else if let Some(l) = expr.strip_prefix("node.labels.") {
            Some(
                node.labels
                    .get(l)
                    .ok_or_else(|| {
                        format!(
                            "node `{}` has no label `{l}` (used as ${{{expr}}})",
                            node.name
                        )
                    })?
                    .as_str(),
            )
        } else {
            None
        };
        match value {
            Some(v) => out.push_str(v),
            None => return Err(format!("unknown placeholder `${{{expr}}}` in a baseline")),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// Substitute node variables in every string (keys and values) of a document.
pub fn substitute_doc(doc: &Document, node: &Node) -> Result<Document, String> {
    fn walk(v: &Value, node: &Node) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => Value::String(substitute(s, node)?.into_owned()),
            Value::Array(a) => {
                Value::Array(a.iter().map(|x| walk(x, node)).collect::<Result<_, _>>()?)
            }
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| Ok((substitute(k, node)?.into_owned(), walk(v, node)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
    Ok(match doc {
        Document::Tree(v) => Document::Tree(walk(v, node)?),
        Document::Text(lines) => Document::Text(
            lines
                .iter()
                .map(|l| substitute(l, node).map(Cow::into_owned))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Whether `actual` equals `template` with the node's variables substituted, without building the substituted
/// document: the cost of one comparison, no allocation for strings without a placeholder. `false` also when a
/// placeholder cannot be resolved (the caller then takes the full path, which reports it).
pub fn matches_template(template: &Document, actual: &Document, node: &Node) -> bool {
    fn str_eq(t: &str, a: &str, node: &Node) -> bool {
        if !t.contains("${node.") {
            return t == a;
        }
        substitute(t, node).is_ok_and(|s| s == a)
    }
    fn walk(t: &Value, a: &Value, node: &Node) -> bool {
        match (t, a) {
            (Value::String(t), Value::String(a)) => str_eq(t, a, node),
            (Value::Array(t), Value::Array(a)) => {
                t.len() == a.len() && t.iter().zip(a).all(|(t, a)| walk(t, a, node))
            }
            (Value::Object(t), Value::Object(a)) => {
                if t.len() != a.len() {
                    return false;
                }
                // Keys without placeholders keep their order: walk both maps side by side.
                if !t.keys().any(|k| k.contains("${node.")) {
                    return t
                        .iter()
                        .zip(a)
                        .all(|((tk, tv), (ak, av))| tk == ak && walk(tv, av, node));
                }
                // Equal sizes and every substituted key found with an equal value: the maps are equal (two
                // template keys that substitute to one key make the sizes differ, and the full path decides).
                t.iter().all(|(k, tv)| {
                    let av = if k.contains("${node.") {
                        match substitute(k, node) {
                            Ok(key) => a.get(key.as_ref()),
                            Err(_) => None,
                        }
                    } else {
                        a.get(k)
                    };
                    av.is_some_and(|av| walk(tv, av, node))
                })
            }
            (t, a) => t == a,
        }
    }
    match (template, actual) {
        (Document::Tree(t), Document::Tree(a)) => walk(t, a, node),
        (Document::Text(t), Document::Text(a)) => {
            t.len() == a.len() && t.iter().zip(a).all(|(t, a)| str_eq(t, a, node))
        }
        _ => false,
    }
}

/// Serialize a document for a baseline file of `format`.
pub fn render(doc: &Document, format: Format) -> String {
    match doc {
        Document::Text(lines) => {
            let mut s = lines.join("\n");
            s.push('\n');
            s
        }
        Document::Tree(v) => match format {
            Format::Yaml => serde_saphyr::to_string(v).unwrap_or_else(|_| doc.canonical_text()),
            Format::Toml => match v {
                Value::Object(_) => {
                    toml::to_string_pretty(v).unwrap_or_else(|_| doc.canonical_text())
                }
                _ => doc.canonical_text(),
            },
            Format::Kv | Format::Ini => {
                render_flat(v, format).unwrap_or_else(|| doc.canonical_text())
            }
            Format::Json | Format::Text => doc.canonical_text(),
        },
    }
}

fn render_flat(v: &Value, format: Format) -> Option<String> {
    let obj = v.as_object()?;
    let mut out = String::new();
    let scalar = |v: &Value| -> Option<Vec<String>> {
        match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
            _ => None,
        }
    };
    let mut sections = Vec::new();
    for (k, val) in obj {
        match val {
            Value::Object(inner) if format == Format::Ini => sections.push((k, inner)),
            other => {
                for s in scalar(other)? {
                    out.push_str(&format!("{k} = {s}\n"));
                }
            }
        }
    }
    for (name, inner) in sections {
        out.push_str(&format!("\n[{name}]\n"));
        for (k, val) in inner {
            for s in scalar(val)? {
                out.push_str(&format!("{k} = {s}\n"));
            }
        }
    }
    Some(out)
}

/// Where `plumb approve` writes for `node`: its own file by default, or a shared one on request.
pub fn target_path(
    baselines_dir: &Path,
    config: &str,
    node: &Node,
    to: &ApproveTarget,
    existing: Option<(Scope, &BaselineFile)>,
    format: Format,
) -> PathBuf {
    let dir = baselines_dir.join(config);
    let ext = format.extension();
    match to {
        ApproveTarget::Node => match existing {
            Some((Scope::Node, f)) => f.path.clone(),
            _ => dir.join("node").join(format!("{}.{ext}", node.name)),
        },
        ApproveTarget::Default => match existing {
            Some((Scope::Default, f)) => f.path.clone(),
            _ => dir.join(format!("default.{ext}")),
        },
        ApproveTarget::Label(k, v) => match existing {
            Some((Scope::Label, f))
                if f.path.file_stem().map(|s| s.to_string_lossy().into_owned())
                    == Some(format!("{k}={v}")) =>
            {
                f.path.clone()
            }
            _ => dir.join(format!("{k}={v}.{ext}")),
        },
    }
}

/// Which baseline file `plumb approve` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveTarget {
    /// `baselines/<config>/node/<node>.<ext>` (the default: only this node is affected).
    Node,
    /// `baselines/<config>/default.<ext>`.
    Default,
    /// `baselines/<config>/<label>=<value>.<ext>`.
    Label(String, String),
}

impl ApproveTarget {
    /// Parse `node`, `default` or `label=value`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "node" => Ok(ApproveTarget::Node),
            "default" => Ok(ApproveTarget::Default),
            other => match other.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                    Ok(ApproveTarget::Label(k.into(), v.into()))
                }
                _ => Err(format!("`{s}`: expected node, default or LABEL=VALUE")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vars: [("host".to_string(), "10.0.0.9".to_string())].into(),
        }
    }

    #[test]
    fn substitution() {
        let n = node("edge-1", &[("dc", "ams")]);
        assert_eq!(
            substitute(
                "${node.name}@${node.vars.host}/${node.labels.dc} $5 ${other}",
                &n
            )
            .unwrap(),
            "edge-1@10.0.0.9/ams $5 ${other}"
        );
        assert!(
            substitute("${node.vars.nope}", &n)
                .unwrap_err()
                .contains("no var `nope`")
        );
        let d = substitute_doc(
            &Document::Tree(json!({"${node.name}": ["${node.vars.host}", 1]})),
            &n,
        )
        .unwrap();
        assert_eq!(d, Document::Tree(json!({"edge-1": ["10.0.0.9", 1]})));
    }

    #[test]
    fn render_round_trips_through_parse() {
        let v = json!({"a": "1", "s": {"k": "v", "r": ["x", "y"]}});
        for f in [Format::Json, Format::Yaml, Format::Toml, Format::Ini] {
            let text = render(&Document::Tree(v.clone()), f);
            assert_eq!(
                normalize::parse(f, text.as_bytes()).unwrap(),
                Document::Tree(v.clone()),
                "{f}: {text}"
            );
        }
        let kv = json!({"net.ipv4.ip_forward": "0", "HostKey": ["/a", "/b"]});
        let text = render(&Document::Tree(kv.clone()), Format::Kv);
        assert_eq!(
            normalize::parse(Format::Kv, text.as_bytes()).unwrap(),
            Document::Tree(kv)
        );
    }

    #[test]
    fn approve_targets() {
        assert_eq!(
            ApproveTarget::parse("role=edge"),
            Ok(ApproveTarget::Label("role".into(), "edge".into()))
        );
        assert!(ApproveTarget::parse("=x").is_err());
        let n = node("e1", &[]);
        let p = target_path(
            Path::new("b"),
            "caddy",
            &n,
            &ApproveTarget::Node,
            None,
            Format::Json,
        );
        assert_eq!(p, Path::new("b/caddy/node/e1.json"));
    }
}
