//! Decode and normalize: bytes of one format (json, yaml, toml, ini, kv, text) become one canonical [`Document`].
//!
//! Pure: no I/O, no clock. Structured formats become a [`serde_json::Value`] tree with sorted keys and integral
//! floats folded to integers, so a YAML baseline and a JSON node compare equal when they say the same thing.
//! Text becomes lines. See ARCHITECTURE.md, "normalize".

mod ini;
mod kv;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use serde_json_path::JsonPath;
use std::fmt;

/// A config after normalization.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// A structured document: json, yaml, toml, ini, kv.
    Tree(Value),
    /// A text document, one entry per line, without line terminators.
    Text(Vec<String>),
}

impl Document {
    /// The canonical text form: pretty JSON with sorted keys for trees, the lines for text.
    pub fn canonical_text(&self) -> String {
        self.canonical_text_sized(128)
    }

    /// [`Document::canonical_text`] into a buffer of `capacity` bytes to start with (a scan passes about twice the
    /// fetched size, which spares the copies of a growing buffer).
    pub fn canonical_text_sized(&self, capacity: usize) -> String {
        match self {
            Document::Tree(v) => {
                let mut buf = Vec::with_capacity(capacity);
                if serde_json::to_writer_pretty(&mut buf, v).is_err() {
                    return String::new();
                }
                buf.push(b'\n');
                // serde_json writes UTF-8 only.
                String::from_utf8(buf).unwrap_or_default()
            }
            Document::Text(lines) => {
                let mut s = lines.join("\n");
                s.push('\n');
                s
            }
        }
    }

    /// The tree, for structured documents.
    pub fn as_tree(&self) -> Option<&Value> {
        match self {
            Document::Tree(v) => Some(v),
            Document::Text(_) => None,
        }
    }
}

/// The wire format of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Yaml,
    Toml,
    Ini,
    Kv,
    Text,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 6] = [
        Format::Json,
        Format::Yaml,
        Format::Toml,
        Format::Ini,
        Format::Kv,
        Format::Text,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Ini => "ini",
            Format::Kv => "kv",
            Format::Text => "text",
        }
    }

    /// The file extension plumb writes baselines of this format with.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Ini => "ini",
            Format::Kv => "conf",
            Format::Text => "txt",
        }
    }

    /// The format a baseline file's extension stands for, if any.
    pub fn from_extension(ext: &str) -> Option<Format> {
        Some(match ext {
            "json" => Format::Json,
            "yaml" | "yml" => Format::Yaml,
            "toml" => Format::Toml,
            "ini" | "cnf" => Format::Ini,
            "kv" | "conf" | "sysctl" | "env" | "properties" => Format::Kv,
            "txt" | "text" => Format::Text,
            _ => return None,
        })
    }

    /// Whether documents of this format are trees (everything but text).
    pub fn is_structured(self) -> bool {
        self != Format::Text
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoding step applied to the value selected by `extract`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    Json,
    Yaml,
    Toml,
    Base64,
}

/// Why a document could not be normalized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NormalizeError {
    /// The bytes do not parse as the format.
    #[error("not valid {format}{}: {message}", location(*line, *column))]
    Syntax {
        format: Format,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// The content is not UTF-8 text.
    #[error("not valid UTF-8 (at byte {0})")]
    Utf8(usize),
    /// `extract` selected no value or several.
    #[error("extract `{path}` selected {count} values, expected exactly one")]
    Extract { path: String, count: usize },
    /// A decode step got a value it cannot decode.
    #[error("decode {step:?}: {message}")]
    Decode { step: Decode, message: String },
    /// Structured processing was asked of a text document.
    #[error("`extract` needs a structured format, not text")]
    ExtractOnText,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l} column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// How one config's bytes become a document: format, then optional extract and decode steps.
#[derive(Debug, Clone)]
pub struct Normalizer {
    pub format: Format,
    pub extract: Option<(String, JsonPath)>,
    pub decode: Vec<Decode>,
}

impl Normalizer {
    /// A normalizer for a plain format.
    pub fn plain(format: Format) -> Self {
        Normalizer {
            format,
            extract: None,
            decode: Vec::new(),
        }
    }

    /// The format of the final document (text after a trailing base64 step).
    pub fn output_is_text(&self) -> bool {
        match self.decode.last() {
            Some(Decode::Base64) => true,
            Some(_) => false,
            None => self.format == Format::Text,
        }
    }

    /// Run the whole chain over fetched bytes.
    pub fn normalize(&self, bytes: &[u8]) -> Result<Document, NormalizeError> {
        let mut doc = parse(self.format, bytes)?;
        if let Some((text, path)) = &self.extract {
            let Document::Tree(tree) = &doc else {
                return Err(NormalizeError::ExtractOnText);
            };
            let nodes = path.query(tree).all();
            if nodes.len() != 1 {
                return Err(NormalizeError::Extract {
                    path: text.clone(),
                    count: nodes.len(),
                });
            }
            doc = Document::Tree(nodes[0].clone());
        }
        for step in &self.decode {
            let input: Vec<u8> = match &doc {
                Document::Tree(Value::String(s)) => s.as_bytes().to_vec(),
                Document::Text(lines) => lines.join("\n").into_bytes(),
                Document::Tree(other) => {
                    return Err(NormalizeError::Decode {
                        step: *step,
                        message: format!("expected a string, found {}", type_name(other)),
                    });
                }
            };
            doc = match step {
                Decode::Json => parse(Format::Json, &input)?,
                Decode::Yaml => parse(Format::Yaml, &input)?,
                Decode::Toml => parse(Format::Toml, &input)?,
                Decode::Base64 => {
                    let cleaned: Vec<u8> = input
                        .into_iter()
                        .filter(|b| !b.is_ascii_whitespace())
                        .collect();
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(&cleaned)
                        .map_err(|e| NormalizeError::Decode {
                            step: Decode::Base64,
                            message: e.to_string(),
                        })?;
                    parse(Format::Text, &raw)?
                }
            };
        }
        Ok(doc)
    }
}

/// The JSON type name of a value, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, NormalizeError> {
    std::str::from_utf8(bytes).map_err(|e| NormalizeError::Utf8(e.valid_up_to()))
}

/// Parse bytes of one format into a canonical document.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Document, NormalizeError> {
    let text = utf8(bytes)?;
    // A UTF-8 byte order mark is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let syntax = |line, column, message: String| NormalizeError::Syntax {
        format,
        line,
        column,
        message,
    };
    let tree = match format {
        Format::Json => parse_json(text).map_err(|e| {
            syntax(
                Some(e.line()),
                Some(e.column()),
                strip_location(&e.to_string()),
            )
        })?,
        Format::Yaml => parse_yaml(text).map_err(|(l, c, m)| syntax(l, c, m))?,
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| {
                let (l, c) = e
                    .span()
                    .map(|s| line_col(text, s.start))
                    .map_or((None, None), |(l, c)| (Some(l), Some(c)));
                syntax(l, c, e.message().to_string())
            })?;
            toml_to_json(toml::Value::Table(table))
        }
        Format::Ini => ini::parse(text).map_err(|(l, m)| syntax(Some(l), None, m))?,
        Format::Kv => kv::parse(text).map_err(|(l, m)| syntax(Some(l), None, m))?,
        Format::Text => return Ok(Document::Text(split_lines(text))),
    };
    Ok(Document::Tree(canonicalize(tree)))
}

/// The most keys one object may have, and elements one array: a node sending more is refused with a clear reason
/// rather than turned into one difference per key.
pub const MAX_ENTRIES: usize = 100_000;

/// JSON into a tree, refusing objects and arrays larger than [`MAX_ENTRIES`] (serde_json refuses nesting deeper
/// than 128 levels).
fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Bounded.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// A [`Value`] visitor with size limits.
#[derive(Clone, Copy)]
struct Bounded;

impl<'de> serde::de::DeserializeSeed<'de> for Bounded {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Bounded {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Bounded)? {
            if out.len() == MAX_ENTRIES {
                return Err(serde::de::Error::custom(format!(
                    "array has more than {MAX_ENTRIES} elements"
                )));
            }
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Bounded)?;
            out.insert(k, v);
            if out.len() > MAX_ENTRIES {
                return Err(serde::de::Error::custom(format!(
                    "object has more than {MAX_ENTRIES} keys"
                )));
            }
        }
        Ok(Value::Object(out))
    }
}

fn parse_yaml(text: &str) -> Result<Value, (Option<usize>, Option<usize>, String)> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|e| {
        let msg = e.to_string();
        let loc = e.location();
        let (l, c) = loc.map_or((None, None), |l| {
            (Some(l.line() as usize), Some(l.column() as usize))
        });
        (l, c, yaml_message(&first_line(&msg)))
    })
}

/// serde-saphyr says `error: line L column C: what`; plumb prints the location itself.
fn yaml_message(m: &str) -> String {
    let rest = m.strip_prefix("error: ").unwrap_or(m);
    if let Some(after) = rest.strip_prefix("line ")
        && let Some((loc, what)) = after.split_once(": ")
        && loc.contains(" column ")
        && loc
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c.is_ascii_lowercase())
    {
        return what.to_string();
    }
    rest.to_string()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// serde_json appends " at line L column C"; plumb prints the location itself.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

fn split_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Fold integral floats (`80.0`) to integers so formats that spell numbers differently compare equal.
pub fn canonicalize(mut v: Value) -> Value {
    canonicalize_in_place(&mut v);
    v
}

/// [`canonicalize`] without rebuilding the tree: only numbers are touched (maps keep their allocation).
pub fn canonicalize_in_place(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if n.is_f64()
                && let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(canonicalize_in_place),
        Value::Object(o) => o.values_mut().for_each(canonicalize_in_place),
        _ => {}
    }
}

/// Remove one pair of matching quotes around a value.
pub(crate) fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Insert `value` under `key`, turning a repeated key into an array of its values in order.
pub(crate) fn insert_repeated(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        None => {
            map.insert(key, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree(format: Format, s: &str) -> Value {
        match parse(format, s.as_bytes()) {
            Ok(Document::Tree(v)) => v,
            other => panic!("expected a tree, got {other:?}"),
        }
    }

    #[test]
    fn yaml_errors_say_their_location_once() {
        let e = parse(Format::Yaml, b"a: [1, 2\n").expect_err("unclosed");
        assert_eq!(
            e.to_string(),
            "not valid yaml at line 1 column 4: unclosed bracket '['"
        );
        let e = parse(Format::Yaml, "[".repeat(300).as_bytes()).expect_err("deep");
        assert!(e.to_string().ends_with(": recursion limit exceeded"), "{e}");
        assert_eq!(e.to_string().matches("line").count(), 1, "{e}");
    }

    #[test]
    fn json_size_and_depth_are_bounded() {
        let many = format!(
            "{{{}}}",
            (0..=MAX_ENTRIES)
                .map(|i| format!("\"k{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let e = parse(Format::Json, many.as_bytes()).expect_err("too many keys");
        assert!(
            e.to_string().contains("object has more than 100000 keys"),
            "{e}"
        );
        let long = format!("[{}]", vec!["0"; MAX_ENTRIES + 1].join(","));
        let e = parse(Format::Json, long.as_bytes()).expect_err("too many elements");
        assert!(
            e.to_string()
                .contains("array has more than 100000 elements"),
            "{e}"
        );
        let deep = "[".repeat(100_000);
        let e = parse(Format::Json, deep.as_bytes()).expect_err("too deep");
        assert!(e.to_string().contains("recursion limit"), "{e}");
        // At the limit it parses, numbers as serde_json gives them.
        let ok = format!("[{}]", vec!["1.5"; MAX_ENTRIES].join(","));
        assert!(parse(Format::Json, ok.as_bytes()).is_ok());
        assert_eq!(
            tree(Format::Json, r#"{"a":[1,-2,2.5,null,true,"x"]}"#),
            json!({"a":[1,-2,2.5,null,true,"x"]})
        );
    }

    #[test]
    fn json_yaml_toml_agree() {
        let j = tree(
            Format::Json,
            r#"{"port": 80, "tls": {"on": true}, "w": 1.0}"#,
        );
        let y = tree(Format::Yaml, "port: 80\ntls:\n  on: true\nw: 1\n");
        let t = tree(Format::Toml, "port = 80\nw = 1.0\n[tls]\non = true\n");
        assert_eq!(j, json!({"port": 80, "tls": {"on": true}, "w": 1}));
        assert_eq!(j, y);
        assert_eq!(j, t);
    }

    #[test]
    fn yaml_norway_stays_a_string() {
        let y = tree(
            Format::Yaml,
            "country: no\nflag: off\nyes_: on\nreal: true\n",
        );
        assert_eq!(
            y,
            json!({"country": "no", "flag": "off", "yes_": "on", "real": true})
        );
    }

    #[test]
    fn syntax_errors_carry_a_location() {
        let e = parse(Format::Json, b"{\n  \"a\": 1,\n  oops\n}").unwrap_err();
        assert!(
            matches!(e, NormalizeError::Syntax { line: Some(3), .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse(Format::Toml, b"a = 1\nb = \n").unwrap_err();
        assert!(
            matches!(e, NormalizeError::Syntax { line: Some(2), .. }),
            "{e:?}"
        );
        let e = parse(Format::Yaml, b"a: [1, 2\nb: 3\n").unwrap_err();
        assert!(
            matches!(
                e,
                NormalizeError::Syntax {
                    format: Format::Yaml,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let e = parse(Format::Text, b"ok\n\xff\xfe").unwrap_err();
        assert_eq!(e, NormalizeError::Utf8(3));
    }

    #[test]
    fn text_lines() {
        assert_eq!(
            parse(Format::Text, b"a\r\nb\n\nc\n").unwrap(),
            Document::Text(vec!["a".into(), "b".into(), "".into(), "c".into()])
        );
    }

    #[test]
    fn toml_datetimes_become_strings() {
        let t = tree(Format::Toml, "at = 1979-05-27T07:32:00Z\n");
        assert_eq!(t, json!({"at": "1979-05-27T07:32:00Z"}));
    }

    #[test]
    fn extract_and_decode_yaml_inside_json() {
        let n = Normalizer {
            format: Format::Json,
            extract: Some((
                "$.data.yaml".into(),
                JsonPath::parse("$.data.yaml").unwrap(),
            )),
            decode: vec![Decode::Yaml],
        };
        let doc = n
            .normalize(br#"{"kind":"ConfigMap","data":{"yaml":"replicas: 3\nmode: off\n"}}"#)
            .unwrap();
        assert_eq!(doc, Document::Tree(json!({"replicas": 3, "mode": "off"})));
        let err = n.normalize(br#"{"data":{}}"#).unwrap_err();
        assert!(
            matches!(err, NormalizeError::Extract { count: 0, .. }),
            "{err:?}"
        );
        let err = n.normalize(br#"{"data":{"yaml":7}}"#).unwrap_err();
        assert!(matches!(err, NormalizeError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn base64_chain() {
        let n = Normalizer {
            format: Format::Json,
            extract: Some(("$.b".into(), JsonPath::parse("$.b").unwrap())),
            decode: vec![Decode::Base64, Decode::Json],
        };
        // {"x":1}
        let doc = n.normalize(br#"{"b":"eyJ4IjoxfQ=="}"#).unwrap();
        assert_eq!(doc, Document::Tree(json!({"x": 1})));
        let text = Normalizer {
            decode: vec![Decode::Base64],
            ..n.clone()
        };
        assert!(text.output_is_text());
        assert_eq!(
            text.normalize(br#"{"b":"aGVsbG8Kd29ybGQK"}"#).unwrap(),
            Document::Text(vec!["hello".into(), "world".into()])
        );
    }

    #[test]
    fn canonical_text_is_sorted_pretty_json() {
        let d = Document::Tree(json!({"b": 1, "a": [true]}));
        assert_eq!(
            d.canonical_text(),
            "{\n  \"a\": [\n    true\n  ],\n  \"b\": 1\n}\n"
        );
    }
}
