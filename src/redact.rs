//! Redact secrets: values that look like passwords, tokens or keys become `<redacted:HASH8>` markers before anything is
//! stored, compared for display, printed or sent.
//!
//! Pure: no I/O, no clock. `HASH8` is the first 8 hex digits of `blake3::keyed_hash(key, value)` with a random
//! 32-byte key kept in the store, so the same secret always gives the same marker (a changed secret still shows up as
//! drift, without either value), and a marker cannot be checked against guessed values without the key.
//!
//! # What is redacted, in order
//!
//! 1. **Keys** (trees). A value under an object key that matches a key pattern is redacted whole: a string becomes
//!    the marker of its bytes; a number or boolean the marker of its JSON text (`5432`, `true`); an object or array
//!    one marker of its canonical JSON (the whole subtree is secret); `null` stays `null`.
//!
//!    *The key rule.* Every pattern (the built-in [`DEFAULT_KEY_PATTERNS`], unless `defaults = false`, plus the
//!    configured `keys`) is a regex matched case-insensitively against the key as written **and** against its word
//!    form: camelCase split with `_` and lowercased (`privateKey` → `private_key`, `APIKey` → `api_key`,
//!    `PasswordAuthentication` → `password_authentication`). A key matches if any pattern matches either. The
//!    built-in patterns say: *a key is secret when its name ends with a secret word*, i.e. the key equals the word
//!    or the word is its last part, after any prefix such as `db_`, `ldap.bind_`, `client-` or `x-`. The words are
//!    `password`/`passwords`/`passwd`/`passphrase`, `secret`/`secrets`, `token`, `credential`/`credentials` (these
//!    also at the end of a run-together name: `dbpassword`, `clientsecret`, `accesstoken`); `pass`, `auth`,
//!    `authorization`, `requirepass` and `masterauth` (Redis) only as a whole word (`db_pass`, `basic_auth`, but
//!    not `bypass` or `oauth`); and `key` preceded by `api`, `access`, `secret`, `private`, `signing`,
//!    `encryption` or `master`, with or without a separator (`api_key`, `apikey`, `api-key`, `x-api-key`,
//!    `privateKey`, `aws_secret_access_key`). Anything after the word means the key is *about* a secret, not one,
//!    and is left alone: `token_ttl`, `max_tokens`, `password_min_length`, `ssl_password_file`,
//!    `PasswordAuthentication`, `api_key_id`, `passthrough`. Flat kv keys work the same (`ldap.bind_password`).
//!
//! 2. **Paths** (trees). Every value a configured RFC 9535 JSONPath selects is redacted the same way.
//!
//! 3. **Key lines** (text documents). A line `key = value`, `key: value` or `key value` (leading whitespace and an
//!    `export ` prefix allowed) whose key matches the key patterns has its value, up to the end of the line with
//!    trailing whitespace and one pair of surrounding quotes excluded, replaced by a marker: `requirepass s3cret`
//!    → `requirepass <redacted:…>`, `Authorization: Bearer x` → `Authorization: <redacted:…>`. Commented-out
//!    lines (`# password = x`) are not key lines: cover them with a text pattern if they matter.
//!
//! 4. **Text patterns** (every line of a text document, and every line of every string value in a tree). Each
//!    configured regex (case-sensitive as written; use `(?i)` for case-insensitive) replaces each of its
//!    participating capture groups, or, without groups, its whole match, by the marker of the replaced text.
//!    Empty matches are left alone.
//!
//! Redacting is idempotent: markers are never redacted again, and no match that overlaps a marker is replaced, so
//! redacting a redacted document changes nothing and a baseline approved from redacted content compares equal.

use crate::normalize::Document;
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde_json::Value;
use serde_json_path::JsonPath;
use std::fmt;
use std::ops::Range;

/// `[redact]` in plumb.toml: all optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactSettings {
    /// Regexes matched (case-insensitively) against object keys; values under a matching key are redacted.
    /// Added to the built-in list unless `defaults = false`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// RFC 9535 JSONPaths whose selected values are redacted.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Regexes over text lines (text configs, and string values in trees): the match, or, if the regex has
    /// capture groups, each participating group, is replaced by a marker.
    #[serde(default)]
    pub text: Vec<String>,
    /// Use the built-in key patterns (default true).
    pub defaults: Option<bool>,
}

/// The built-in key patterns, matched case-insensitively against a key and its word form (see the module doc).
pub const DEFAULT_KEY_PATTERNS: &[&str] = &[
    r"(?:passwords?|passwd|passphrase)$",
    r"secrets?$",
    r"token$",
    r"credentials?$",
    r"(?:^|[^a-z0-9])(?:pass|auth|authorization|requirepass|masterauth)$",
    r"(?:api|access|secret|private|signing|encryption|master)[^a-z0-9]?key$",
];

const MARKER_PREFIX: &str = "<redacted:";
const MARKER_LEN: usize = MARKER_PREFIX.len() + 8 + 1;

/// A compiled redactor. The key is a 32-byte random secret kept in the store and never printed.
#[derive(Clone)]
pub struct Redactor {
    key: [u8; 32],
    /// Every active key pattern, as written (for Debug).
    key_sources: Vec<String>,
    /// The same, compiled case-insensitively; `None` when there are none.
    keys: Option<RegexSet>,
    paths: Vec<(String, JsonPath)>,
    text: Vec<Regex>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("key", &"<hidden>")
            .field("keys", &self.key_sources)
            .field(
                "paths",
                &self.paths.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .field(
                "text",
                &self.text.iter().map(Regex::as_str).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A step into a tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Redactor {
    /// Compile; every bad pattern is reported as `(pattern, message)`.
    /// Stands for this redactor's key without revealing it: two redactors of one plan with equal ids redact alike.
    pub fn id(&self) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, b"plumb redactor identity").as_bytes()
    }

    pub fn new(
        key: [u8; 32],
        settings: &RedactSettings,
    ) -> Result<Redactor, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut key_sources: Vec<String> = Vec::new();
        if settings.defaults.unwrap_or(true) {
            key_sources.extend(DEFAULT_KEY_PATTERNS.iter().map(|p| p.to_string()));
        }
        for p in &settings.keys {
            if p.is_empty() {
                errors.push((
                    p.clone(),
                    "an empty pattern would match every key".to_string(),
                ));
                continue;
            }
            match RegexBuilder::new(p).case_insensitive(true).build() {
                Ok(_) => key_sources.push(p.clone()),
                Err(e) => errors.push((p.clone(), regex_message(&e))),
            }
        }
        let mut paths = Vec::new();
        for p in &settings.paths {
            match JsonPath::parse(p) {
                Ok(jp) => paths.push((p.clone(), jp)),
                Err(e) => errors.push((p.clone(), one_line(&e.to_string()))),
            }
        }
        let mut text = Vec::new();
        for p in &settings.text {
            if p.is_empty() {
                errors.push((
                    p.clone(),
                    "an empty pattern matches nothing to redact".to_string(),
                ));
                continue;
            }
            match Regex::new(p) {
                Ok(r) => text.push(r),
                Err(e) => errors.push((p.clone(), regex_message(&e))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let keys = if key_sources.is_empty() {
            None
        } else {
            match RegexSetBuilder::new(&key_sources)
                .case_insensitive(true)
                .build()
            {
                Ok(set) => Some(set),
                // Each pattern compiled alone; together they can still exceed the size limit.
                Err(e) => {
                    return Err(vec![(key_sources.join(" | "), regex_message(&e))]);
                }
            }
        };
        Ok(Redactor {
            key,
            key_sources,
            keys,
            paths,
            text,
        })
    }

    /// Replace every secret in `doc` in place.
    pub fn redact(&self, doc: &mut Document) {
        match doc {
            Document::Tree(v) => {
                self.redact_structure(v);
                if !self.text.is_empty() {
                    self.redact_strings(v);
                }
            }
            Document::Text(lines) => {
                for line in lines.iter_mut() {
                    if self.keys.is_some() {
                        self.redact_key_line(line);
                    }
                    if !self.text.is_empty() {
                        self.redact_text_line(line);
                    }
                }
            }
        }
    }

    /// Steps 1 and 2 on a tree: values under secret keys and at configured paths become markers (the text
    /// patterns of step 3 are [`Redactor::redact_string`], applied to each string after these).
    pub fn redact_structure(&self, v: &mut Value) {
        if self.keys.is_some() {
            self.redact_keys(v);
        }
        self.redact_paths(v);
    }

    /// The text patterns on one string value of a tree, as [`Redactor::redact`] applies them to each.
    pub fn redact_string(&self, s: &mut String) {
        if self.text.is_empty() || Redactor::is_marker(s) {
            return;
        }
        if s.contains('\n') {
            let mut lines: Vec<String> = s.split('\n').map(str::to_string).collect();
            let mut changed = false;
            for line in lines.iter_mut() {
                changed |= self.redact_text_line(line);
            }
            if changed {
                *s = lines.join("\n");
            }
        } else {
            self.redact_text_line(s);
        }
    }

    /// Whether text patterns are configured (string values can change under redaction).
    pub fn has_text_patterns(&self) -> bool {
        !self.text.is_empty()
    }

    /// Whether a configured path has a filter (`?`): what it selects can depend on values.
    pub fn has_filtered_paths(&self) -> bool {
        self.paths.iter().any(|(p, _)| p.contains('?'))
    }

    /// The marker for a secret value: `<redacted:HASH8>`.
    pub fn marker(&self, value: &[u8]) -> String {
        let hash = blake3::keyed_hash(&self.key, value);
        let hex = hash.to_hex();
        format!("{MARKER_PREFIX}{}>", &hex.as_str()[..8])
    }

    /// Whether a string is exactly a marker.
    pub fn is_marker(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == MARKER_LEN
            && s.starts_with(MARKER_PREFIX)
            && b[MARKER_LEN - 1] == b'>'
            && b[MARKER_PREFIX.len()..MARKER_LEN - 1]
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// Whether an object key names a secret.
    pub fn is_secret_key(&self, key: &str) -> bool {
        let Some(set) = &self.keys else {
            return false;
        };
        if set.is_match(key) {
            return true;
        }
        // The word form differs from the key (beyond case, which the set ignores) only around upper case letters.
        key.chars().any(char::is_uppercase) && set.is_match(&word_form(key))
    }

    /// The redacted form of one secret value.
    fn redact_value(&self, v: &mut Value) {
        let replacement = match &*v {
            Value::Null => return,
            Value::String(s) => {
                if Redactor::is_marker(s) {
                    return;
                }
                self.marker(s.as_bytes())
            }
            other => {
                let canonical = serde_json::to_string(other).unwrap_or_default();
                self.marker(canonical.as_bytes())
            }
        };
        *v = Value::String(replacement);
    }

    fn redact_keys(&self, v: &mut Value) {
        match v {
            Value::Object(o) => {
                for (k, child) in o.iter_mut() {
                    if self.is_secret_key(k) {
                        self.redact_value(child);
                    } else {
                        self.redact_keys(child);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_keys(x)),
            _ => {}
        }
    }

    fn redact_paths(&self, v: &mut Value) {
        if self.paths.is_empty() {
            return;
        }
        let mut locs: Vec<Vec<Seg>> = Vec::new();
        for (_, path) in &self.paths {
            locs.extend(path.query_located(v).locations().map(|np| {
                np.iter()
                    .map(|el| match el.as_index() {
                        Some(i) => Seg::Index(i),
                        None => Seg::Key(el.as_name().unwrap_or_default().to_string()),
                    })
                    .collect()
            }));
        }
        // Shallowest first: a selected subtree becomes one marker, and locations inside it then lead nowhere.
        locs.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        locs.dedup();
        for loc in &locs {
            if let Some(target) = value_at(v, loc) {
                self.redact_value(target);
            }
        }
    }

    fn redact_strings(&self, v: &mut Value) {
        match v {
            Value::String(s) => self.redact_string(s),
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_strings(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.redact_strings(x)),
            _ => {}
        }
    }

    /// `key = value`, `key: value`, `key value`: the value of a secret key becomes a marker.
    fn redact_key_line(&self, line: &mut String) {
        let Some((key, value)) = split_key_line(line) else {
            return;
        };
        if !self.is_secret_key(&line[key]) {
            return;
        }
        let spans = [value];
        if let Some(new) = self.replace_spans(line, &spans) {
            *line = new;
        }
    }

    /// Apply every text pattern to one line; whether anything changed.
    fn redact_text_line(&self, line: &mut String) -> bool {
        let mut changed = false;
        for re in &self.text {
            let groups = re.captures_len() > 1;
            let mut spans: Vec<Range<usize>> = Vec::new();
            for caps in re.captures_iter(line) {
                if groups {
                    spans.extend(caps.iter().skip(1).flatten().map(|m| m.range()));
                } else if let Some(m) = caps.get(0) {
                    spans.push(m.range());
                }
            }
            if let Some(new) = self.replace_spans(line, &spans) {
                *line = new;
                changed = true;
            }
        }
        changed
    }

    /// Replace each span by the marker of its text, skipping empty spans, spans that overlap an existing marker and
    /// spans nested in or overlapping an earlier one. `None` when nothing was replaced.
    fn replace_spans(&self, line: &str, spans: &[Range<usize>]) -> Option<String> {
        let markers = marker_spans(line);
        let mut chosen: Vec<Range<usize>> = spans
            .iter()
            .filter(|s| {
                s.start < s.end
                    && s.end <= line.len()
                    && line.is_char_boundary(s.start)
                    && line.is_char_boundary(s.end)
            })
            .filter(|s| !markers.iter().any(|m| overlaps(s, m)))
            .cloned()
            .collect();
        // Outermost first among spans starting at the same place.
        chosen.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut out = String::with_capacity(line.len());
        let mut pos = 0;
        let mut any = false;
        for s in chosen {
            if s.start < pos {
                continue;
            }
            out.push_str(&line[pos..s.start]);
            out.push_str(&self.marker(line[s.clone()].as_bytes()));
            pos = s.end;
            any = true;
        }
        if !any {
            return None;
        }
        out.push_str(&line[pos..]);
        Some(out)
    }
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Byte ranges of the markers in a line.
fn marker_spans(line: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = line[from..].find(MARKER_PREFIX) {
        let start = from + i;
        let end = start + MARKER_LEN;
        if line.get(start..end).is_some_and(Redactor::is_marker) {
            out.push(start..end);
            from = end;
        } else {
            from = start + MARKER_PREFIX.len();
        }
    }
    out
}

/// The value at a location, if the tree still has it.
fn value_at<'v>(v: &'v mut Value, loc: &[Seg]) -> Option<&'v mut Value> {
    let mut cur = v;
    for seg in loc {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(o)) => o.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// camelCase split with `_`, lowercased: `privateKey` → `private_key`, `APIKey` → `api_key`.
fn word_form(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The key and value byte ranges of a `key = value`, `key: value` or `key value` line.
fn split_key_line(line: &str) -> Option<(Range<usize>, Range<usize>)> {
    // Offset of the first non-whitespace byte at or after `from`.
    let skip_ws = |from: usize| line.len() - line[from..].trim_start().len();
    let mut start = skip_ws(0);
    if line[start..].starts_with("export ") {
        start = skip_ws(start + "export ".len());
    }
    let key_len = line[start..].find(|c: char| c.is_whitespace() || c == '=' || c == ':')?;
    if key_len == 0 {
        return None;
    }
    let key = start..start + key_len;
    let mut vstart = skip_ws(key.end);
    if line[vstart..].starts_with(['=', ':']) {
        vstart = skip_ws(vstart + 1);
    } else if vstart == key.end {
        return None;
    }
    let vend = line.trim_end().len();
    if vstart >= vend {
        return None;
    }
    let bytes = &line.as_bytes()[vstart..vend];
    let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
    let value = if bytes.len() >= 2 && first == last && (first == b'"' || first == b'\'') {
        vstart + 1..vend - 1
    } else {
        vstart..vend
    };
    if value.is_empty() {
        return None;
    }
    Some((key, value))
}

/// The regex crate's multi-line message, as one line.
fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_string))
        .unwrap_or_else(|| one_line(&text))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: [u8; 32] = [7; 32];

    fn redactor() -> Redactor {
        Redactor::new(KEY, &RedactSettings::default()).unwrap()
    }

    fn with(settings: RedactSettings) -> Redactor {
        Redactor::new(KEY, &settings).unwrap()
    }

    fn tree(r: &Redactor, v: Value) -> Value {
        let mut doc = Document::Tree(v);
        r.redact(&mut doc);
        match doc {
            Document::Tree(v) => v,
            Document::Text(_) => unreachable!(),
        }
    }

    fn text(r: &Redactor, lines: &[&str]) -> Vec<String> {
        let mut doc = Document::Text(lines.iter().map(|s| s.to_string()).collect());
        r.redact(&mut doc);
        match doc {
            Document::Text(l) => l,
            Document::Tree(_) => unreachable!(),
        }
    }

    fn m(r: &Redactor, s: &str) -> String {
        r.marker(s.as_bytes())
    }

    #[test]
    fn marker_format_is_keyed_hash_prefix() {
        let r = redactor();
        let hex = blake3::keyed_hash(&KEY, b"s3cret").to_hex();
        assert_eq!(
            m(&r, "s3cret"),
            format!("<redacted:{}>", &hex.as_str()[..8])
        );
        assert!(Redactor::is_marker(&m(&r, "s3cret")));
        assert_eq!(m(&r, "s3cret").len(), 19);
    }

    #[test]
    fn same_value_same_marker_different_value_different_marker() {
        let r = redactor();
        assert_eq!(m(&r, "hunter2"), m(&r, "hunter2"));
        assert_ne!(m(&r, "hunter2"), m(&r, "hunter3"));
        let a = tree(&r, json!({"password": "hunter2"}));
        let b = tree(&r, json!({"password": "hunter2"}));
        let c = tree(&r, json!({"password": "hunter3"}));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn different_key_different_marker() {
        let r1 = redactor();
        let r2 = Redactor::new([8; 32], &RedactSettings::default()).unwrap();
        assert_ne!(m(&r1, "hunter2"), m(&r2, "hunter2"));
        assert_ne!(
            tree(&r1, json!({"token": "abc"})),
            tree(&r2, json!({"token": "abc"}))
        );
    }

    #[test]
    fn is_marker_is_exact() {
        assert!(Redactor::is_marker("<redacted:0123abcd>"));
        for s in [
            "",
            "<redacted:0123abc>",
            "<redacted:0123abcde>",
            "<redacted:0123ABCD>",
            "<redacted:0123abcg>",
            " <redacted:0123abcd>",
            "<redacted:0123abcd> ",
            "<redacted:0123abcd",
            "<redacted:é123abcd>",
        ] {
            assert!(!Redactor::is_marker(s), "{s:?}");
        }
    }

    #[test]
    fn default_keys_that_hold_secrets() {
        let r = redactor();
        for k in [
            "password",
            "Password",
            "PASSWORD",
            "db_password",
            "dbPassword",
            "adminpassword",
            "passwords",
            "passwd",
            "pass",
            "db_pass",
            "dbPass",
            "passphrase",
            "secret",
            "client_secret",
            "clientSecret",
            "secrets",
            "token",
            "access_token",
            "accessToken",
            "refresh-token",
            "X-Auth-Token",
            "api_key",
            "apikey",
            "api-key",
            "apiKey",
            "APIKey",
            "x-api-key",
            "private_key",
            "privateKey",
            "private-key",
            "aws_secret_access_key",
            "secret_key",
            "signing_key",
            "credential",
            "credentials",
            "auth",
            "basic_auth",
            "authorization",
            "Authorization",
            "Proxy-Authorization",
            "requirepass",
            "masterauth",
            "ldap.bind_password",
            "spring.datasource.password",
            "MYSQL_ROOT_PASSWORD",
        ] {
            assert!(r.is_secret_key(k), "{k} should be secret");
        }
    }

    #[test]
    fn default_keys_about_secrets_are_left_alone() {
        let r = redactor();
        for k in [
            "token_ttl",
            "max_tokens",
            "tokens",
            "password_min_length",
            "passthrough",
            "bypass",
            "compass",
            "ssl_password_file",
            "PasswordAuthentication",
            "password_authentication",
            "api_key_id",
            "aws_access_key_id",
            "auth_enabled",
            "oauth",
            "authentication",
            "key",
            "primary_key",
            "sort_key",
            "net.ipv4.ip_forward",
            "tokenizer",
            "secret_name",
            "name",
            "",
        ] {
            assert!(!r.is_secret_key(k), "{k} should not be secret");
        }
    }

    #[test]
    fn word_forms() {
        assert_eq!(word_form("privateKey"), "private_key");
        assert_eq!(word_form("APIKey"), "api_key");
        assert_eq!(
            word_form("PasswordAuthentication"),
            "password_authentication"
        );
        assert_eq!(word_form("db2Pass"), "db2_pass");
        assert_eq!(word_form("already_snake"), "already_snake");
        assert_eq!(word_form("X-Auth-Token"), "x-auth-token");
    }

    #[test]
    fn scalars_under_secret_keys() {
        let r = redactor();
        let out = tree(
            &r,
            json!({"password": "hunter2", "db_pass": 5432, "token": true, "secret": null,
                   "secret_name": "prod", "port": 5432}),
        );
        assert_eq!(
            out,
            json!({"password": m(&r, "hunter2"), "db_pass": m(&r, "5432"), "token": m(&r, "true"),
                   "secret": null, "secret_name": "prod", "port": 5432})
        );
    }

    #[test]
    fn subtree_under_secret_key_is_one_marker() {
        let r = redactor();
        let out = tree(
            &r,
            json!({"credentials": {"user": "u", "pass": "p"}, "secrets": ["a", "b"], "mode": "x"}),
        );
        assert_eq!(
            out,
            json!({"credentials": m(&r, r#"{"pass":"p","user":"u"}"#),
                   "secrets": m(&r, r#"["a","b"]"#), "mode": "x"})
        );
    }

    #[test]
    fn nested_structures() {
        let r = redactor();
        let out = tree(
            &r,
            json!({"db": {"primary": {"host": "h", "port": 5432, "password": "p1",
                                      "pool": {"max": 10, "auth": {"method": "md5"}}}},
                   "http": {"headers": {"Authorization": "Bearer abc", "Accept": "*/*"}}}),
        );
        assert_eq!(
            out,
            json!({"db": {"primary": {"host": "h", "port": 5432, "password": m(&r, "p1"),
                                      "pool": {"max": 10, "auth": m(&r, r#"{"method":"md5"}"#)}}},
                   "http": {"headers": {"Authorization": m(&r, "Bearer abc"), "Accept": "*/*"}}})
        );
    }

    #[test]
    fn arrays_of_objects_with_password_fields() {
        let r = redactor();
        let out = tree(
            &r,
            json!({"users": [{"name": "alice", "password": "a1"}, {"name": "bob", "password": "b2"},
                             {"name": "carol"}, [{"password": "c3"}], "password"]}),
        );
        assert_eq!(
            out,
            json!({"users": [{"name": "alice", "password": m(&r, "a1")},
                             {"name": "bob", "password": m(&r, "b2")},
                             {"name": "carol"}, [{"password": m(&r, "c3")}], "password"]})
        );
    }

    #[test]
    fn flat_kv_keys() {
        let r = redactor();
        let out = tree(
            &r,
            json!({"net.ipv4.ip_forward": "0", "ldap.bind_password": "pw", "ldap.bind_dn": "cn=admin",
                   "requirepass": "s3cret", "HostKey": ["/a", "/b"], "PasswordAuthentication": "no"}),
        );
        assert_eq!(
            out,
            json!({"net.ipv4.ip_forward": "0", "ldap.bind_password": m(&r, "pw"),
                   "ldap.bind_dn": "cn=admin", "requirepass": m(&r, "s3cret"),
                   "HostKey": ["/a", "/b"], "PasswordAuthentication": "no"})
        );
    }

    #[test]
    fn configured_keys_add_to_defaults_or_replace_them() {
        let r = with(RedactSettings {
            keys: vec!["^dsn$".into(), "^connection_?string$".into()],
            ..Default::default()
        });
        let out = tree(
            &r,
            json!({"DSN": "pg://u:p@h", "ConnectionString": "x", "password": "p", "dsn_timeout": 3}),
        );
        assert_eq!(
            out,
            json!({"DSN": m(&r, "pg://u:p@h"), "ConnectionString": m(&r, "x"),
                   "password": m(&r, "p"), "dsn_timeout": 3})
        );
        let only = with(RedactSettings {
            keys: vec!["^dsn$".into()],
            defaults: Some(false),
            ..Default::default()
        });
        assert_eq!(
            tree(&only, json!({"dsn": "d", "password": "p"})),
            json!({"dsn": m(&only, "d"), "password": "p"})
        );
        let none = with(RedactSettings {
            defaults: Some(false),
            ..Default::default()
        });
        assert_eq!(
            tree(&none, json!({"password": "p"})),
            json!({"password": "p"})
        );
        assert_eq!(text(&none, &["password = p"]), vec!["password = p"]);
    }

    #[test]
    fn paths_redact_every_selected_value() {
        let r = with(RedactSettings {
            paths: vec![
                "$.servers[*].license".into(),
                "$.cluster.join".into(),
                "$.missing.thing".into(),
            ],
            ..Default::default()
        });
        let out = tree(
            &r,
            json!({"servers": [{"name": "a", "license": "L1"}, {"name": "b", "license": 42},
                               {"name": "c"}, {"name": "d", "license": null}],
                   "cluster": {"join": {"nodes": ["n1"], "seed": 1}, "name": "k"}}),
        );
        assert_eq!(
            out,
            json!({"servers": [{"name": "a", "license": m(&r, "L1")},
                               {"name": "b", "license": m(&r, "42")},
                               {"name": "c"}, {"name": "d", "license": null}],
                   "cluster": {"join": m(&r, r#"{"nodes":["n1"],"seed":1}"#), "name": "k"}})
        );
    }

    #[test]
    fn overlapping_paths_redact_the_outermost_value_once() {
        let r = with(RedactSettings {
            paths: vec!["$.a.b".into(), "$.a".into(), "$..*".into()],
            defaults: Some(false),
            ..Default::default()
        });
        let out = tree(&r, json!({"a": {"b": "x", "c": [1, 2]}, "d": "y"}));
        assert_eq!(
            out,
            json!({"a": m(&r, r#"{"b":"x","c":[1,2]}"#), "d": m(&r, "y")})
        );
        // The root itself.
        let root = with(RedactSettings {
            paths: vec!["$".into()],
            ..Default::default()
        });
        assert_eq!(tree(&root, json!({"k": 1})), json!(m(&root, r#"{"k":1}"#)));
    }

    #[test]
    fn text_lines_with_capture_groups_keep_the_rest() {
        let r = with(RedactSettings {
            text: vec![
                r"^(?:\s*)password\s*=\s*(\S+)".into(),
                r"://([^:/@]+):([^@]+)@".into(),
            ],
            // Alone: the built-in key lines would take `hunter2 # comment`, the whole rest of the line.
            defaults: Some(false),
            ..Default::default()
        });
        let out = text(
            &r,
            &[
                "  password = hunter2 # comment",
                "url postgres://admin:pw@db:5432/x",
                "port = 80",
            ],
        );
        assert_eq!(
            out,
            vec![
                format!("  password = {} # comment", m(&r, "hunter2")),
                format!(
                    "url postgres://{}:{}@db:5432/x",
                    m(&r, "admin"),
                    m(&r, "pw")
                ),
                "port = 80".to_string(),
            ]
        );
    }

    #[test]
    fn text_lines_without_groups_replace_the_whole_match() {
        let r = with(RedactSettings {
            text: vec![r"AKIA[0-9A-Z]{16}".into(), r"x*".into()],
            ..Default::default()
        });
        let out = text(
            &r,
            &["id AKIAABCDEFGHIJKLMNOP and AKIAABCDEFGHIJKLMNOQ", "none"],
        );
        assert_eq!(
            out,
            vec![
                format!(
                    "id {} and {}",
                    m(&r, "AKIAABCDEFGHIJKLMNOP"),
                    m(&r, "AKIAABCDEFGHIJKLMNOQ")
                ),
                "none".to_string(),
            ]
        );
    }

    #[test]
    fn optional_groups_that_do_not_participate_are_left() {
        let r = with(RedactSettings {
            text: vec![r"user=(\w+)(?: pass=(\w+))?".into()],
            defaults: Some(false),
            ..Default::default()
        });
        assert_eq!(
            text(&r, &["user=a", "user=b pass=c"]),
            vec![
                format!("user={}", m(&r, "a")),
                format!("user={} pass={}", m(&r, "b"), m(&r, "c")),
            ]
        );
        // Nested groups: the outer one is replaced once.
        let nested = with(RedactSettings {
            text: vec![r"k=((\w)\w*)".into()],
            defaults: Some(false),
            ..Default::default()
        });
        assert_eq!(
            text(&nested, &["k=abc"]),
            vec![format!("k={}", m(&nested, "abc"))]
        );
    }

    #[test]
    fn text_patterns_apply_to_string_values_in_trees_after_keys() {
        let r = with(RedactSettings {
            text: vec![r"Bearer (\S+)".into(), r"^pw: (\S+)$".into()],
            ..Default::default()
        });
        let out = tree(
            &r,
            json!({"note": "send Bearer abc to x", "list": ["Bearer def"], "Authorization": "Bearer ghi",
                   "script": "a\npw: zz\nb", "n": 1}),
        );
        assert_eq!(
            out,
            json!({"note": format!("send Bearer {} to x", m(&r, "abc")),
                   "list": [format!("Bearer {}", m(&r, "def"))],
                   "Authorization": m(&r, "Bearer ghi"),
                   "script": format!("a\npw: {}\nb", m(&r, "zz")), "n": 1})
        );
    }

    #[test]
    fn key_lines_in_text_configs() {
        let r = redactor();
        let out = text(
            &r,
            &[
                "requirepass s3cret",
                "masterauth   other",
                "  password = \"quoted value\"  ",
                "export API_KEY='k'",
                "db_pass: p",
                "Authorization: Bearer abc",
                "ssl_password_file /etc/x",
                "PasswordAuthentication no",
                "token_ttl = 30",
                "# password = old",
                "password",
                "password =",
                "password = \"\"",
                "[section]",
                "",
            ],
        );
        assert_eq!(
            out,
            vec![
                format!("requirepass {}", m(&r, "s3cret")),
                format!("masterauth   {}", m(&r, "other")),
                format!("  password = \"{}\"  ", m(&r, "quoted value")),
                format!("export API_KEY='{}'", m(&r, "k")),
                format!("db_pass: {}", m(&r, "p")),
                format!("Authorization: {}", m(&r, "Bearer abc")),
                "ssl_password_file /etc/x".to_string(),
                "PasswordAuthentication no".to_string(),
                "token_ttl = 30".to_string(),
                "# password = old".to_string(),
                "password".to_string(),
                "password =".to_string(),
                "password = \"\"".to_string(),
                "[section]".to_string(),
                String::new(),
            ]
        );
    }

    #[test]
    fn text_and_kv_trees_give_the_same_marker_for_the_same_secret() {
        let r = redactor();
        let t = text(&r, &["requirepass \"s3cret\""]);
        let kv = tree(&r, json!({"requirepass": "s3cret"}));
        assert_eq!(t, vec![format!("requirepass \"{}\"", m(&r, "s3cret"))]);
        assert_eq!(kv, json!({"requirepass": m(&r, "s3cret")}));
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        let r = with(RedactSettings {
            keys: vec!["dsn".into()],
            paths: vec!["$.cluster".into(), "$.list[*]".into()],
            text: vec![r"secret\S*".into(), r"pw=(\S+)".into(), r"\S+".into()],
            ..Default::default()
        });
        let mut doc = Document::Tree(json!({
            "password": "p", "creds": {"token": 1}, "cluster": {"a": [1]}, "list": ["x", {"y": 2}],
            "dsn": "d", "note": "mysecretvalue and pw=zz", "n": 3, "nil": null
        }));
        r.redact(&mut doc);
        let once = doc.clone();
        r.redact(&mut doc);
        assert_eq!(doc, once);
        // Patterns run in order; a later one never touches what an earlier one produced.
        assert_eq!(
            once.as_tree().unwrap()["note"],
            json!(format!(
                "my{} {} pw={}",
                m(&r, "secretvalue"),
                m(&r, "and"),
                m(&r, "zz")
            ))
        );

        let mut t = Document::Text(vec![
            "requirepass s3cret".into(),
            "pw=a secretb".into(),
            "plain words".into(),
        ]);
        r.redact(&mut t);
        let once = t.clone();
        r.redact(&mut t);
        assert_eq!(t, once);
        // A baseline that already holds markers is left as it is.
        let mut baseline = Document::Tree(json!({"password": m(&r, "p")}));
        r.redact(&mut baseline);
        assert_eq!(baseline, Document::Tree(json!({"password": m(&r, "p")})));
    }

    #[test]
    fn text_matches_that_touch_a_marker_are_left_alone() {
        let r = with(RedactSettings {
            text: vec![r"red\w+".into(), r"[0-9a-f]{8}".into(), r"<\S+".into()],
            defaults: Some(false),
            ..Default::default()
        });
        let existing = m(&r, "x");
        let line = format!("a {existing} b");
        assert_eq!(text(&r, &[&line]), vec![line.clone()]);
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Redactor::new(
            KEY,
            &RedactSettings {
                keys: vec!["ok".into(), "(unclosed".into(), String::new()],
                paths: vec!["$.fine".into(), "$.[".into()],
                text: vec!["[z-a]".into()],
                defaults: None,
            },
        )
        .unwrap_err();
        let names: Vec<&str> = err.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, vec!["(unclosed", "", "$.[", "[z-a]"]);
        for (p, msg) in &err {
            assert!(!msg.is_empty(), "{p}");
            assert!(!msg.contains('\n'), "{p}: {msg}");
        }
        assert_eq!(err[0].1, "unclosed group");
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let key: [u8; 32] = std::array::from_fn(|i| 0xa0 + i as u8);
        let r = Redactor::new(key, &RedactSettings::default()).unwrap();
        let dbg = format!("{r:?}");
        let alt = format!("{r:#?}");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        for out in [&dbg, &alt] {
            assert!(!out.contains(&hex), "{out}");
            assert!(!out.contains(&hex[..16]), "{out}");
            assert!(!out.contains("160"), "{out}"); // 0xa0 in decimal, as a derived Debug of [u8] would print
            assert!(out.contains("<hidden>"), "{out}");
        }
    }

    #[test]
    fn settings_deserialize_and_reject_unknown_fields() {
        let s: RedactSettings = toml::from_str(
            "keys = ['^dsn$']\npaths = ['$.a']\ntext = ['x(\\d+)']\ndefaults = false\n",
        )
        .unwrap();
        assert_eq!(s.keys, vec!["^dsn$"]);
        assert_eq!(s.paths, vec!["$.a"]);
        assert_eq!(s.text, vec![r"x(\d+)"]);
        assert_eq!(s.defaults, Some(false));
        let empty: RedactSettings = toml::from_str("").unwrap();
        assert!(empty.keys.is_empty() && empty.defaults.is_none());
        assert!(toml::from_str::<RedactSettings>("key = ['x']").is_err());
    }

    #[test]
    fn odd_input_does_not_panic() {
        let r = with(RedactSettings {
            text: vec![r"(é+)".into(), r"\b".into()],
            paths: vec!["$..password".into()],
            ..Default::default()
        });
        let lines = [
            "é",
            "ééé = x",
            "password = é",
            "  ",
            "=",
            ":",
            "password:",
            "export ",
            "export",
            "\u{feff}token \u{1F600}",
            "\"",
            "'",
            "password '",
            "pass\t\tx",
        ];
        let out = text(&r, &lines);
        assert_eq!(out.len(), lines.len());
        assert_eq!(out[2], format!("password = {}", m(&r, "é")));
        assert_eq!(out[12], format!("password {}", m(&r, "'")));
        assert_eq!(out[13], format!("pass\t\t{}", m(&r, "x")));
        let v = tree(
            &r,
            json!({"": {"password": [null, {"": ""}]}, "é": "é", "a": [[[]]], "f": 1.5}),
        );
        assert_eq!(
            v,
            json!({"": {"password": m(&r, r#"[null,{"":""}]"#)}, "é": m(&r, "é"),
                   "a": [[[]]], "f": 1.5})
        );
        let mut null = Document::Tree(Value::Null);
        r.redact(&mut null);
        assert_eq!(null, Document::Tree(Value::Null));
    }
}
