//! Inventory: the nodes of a fleet, from `[[node]]` tables and from CSV or JSON inventory files, and label
//! selectors over them.
//!
//! CSV: a header row whose first column is `name`; columns named `vars.X` become vars, `labels.X` or unprefixed
//! columns become labels; empty cells are left out. JSON: an array of `{ "name", "labels", "vars" }` objects.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One machine or service instance whose config is watched.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub labels: Attrs,
    #[serde(default)]
    pub vars: Attrs,
}

/// A node's labels or vars: a small map kept as a sorted vector. A fleet has 100,000 nodes with one or two entries
/// each, where a `BTreeMap` would allocate room for eleven per node (about 0.6 KB); lookups of a handful of keys
/// are as fast either way.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Attrs(Vec<(String, String)>);

impl Attrs {
    pub fn new() -> Attrs {
        Attrs(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Set `key`, returning the value it replaces.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// In key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&str> for Attrs {
    type Output = String;
    /// Like a map's index: the key must be there (for tests and known keys; use [`Attrs::get`] otherwise).
    fn index(&self, key: &str) -> &String {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no key `{key}`"),
        }
    }
}

impl std::fmt::Debug for Attrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(String, String)> for Attrs {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Attrs {
        let mut a = Attrs::new();
        for (k, v) in iter {
            a.insert(k, v);
        }
        a
    }
}

impl<const N: usize> From<[(String, String); N]> for Attrs {
    fn from(items: [(String, String); N]) -> Attrs {
        items.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Attrs {
    fn from(m: BTreeMap<String, String>) -> Attrs {
        Attrs(m.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Attrs {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl serde::Serialize for Attrs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Attrs, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Attrs::from)
    }
}

/// A label selector: every `key = value` must match (an empty selector matches every node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub BTreeMap<String, String>);

impl Selector {
    /// Whether `node` carries every label of the selector.
    pub fn matches(&self, node: &Node) -> bool {
        self.0.iter().all(|(k, v)| {
            if k == "name" && !node.labels.contains_key("name") {
                return &node.name == v;
            }
            node.labels.get(k) == Some(v)
        })
    }

    /// Parse `key=value[,key=value…]` as given to `--nodes`.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut m = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            if k.trim().is_empty() {
                return Err(format!("`{pair}` has an empty key"));
            }
            m.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Selector(m))
    }
}

/// Whether a node or config name is safe to use as a file name and in reports.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'))
}

/// Parse a CSV inventory; errors are `(line, message)`.
pub fn parse_csv(text: &str) -> Result<Vec<Node>, (usize, String)> {
    let rows = csv_rows(text)?;
    let Some((header_line, header)) = rows.first() else {
        return Ok(Vec::new());
    };
    if header.first().map(|h| h.trim()) != Some("name") {
        return Err((
            *header_line,
            "the first column of the header must be `name`".into(),
        ));
    }
    let mut nodes = Vec::new();
    for (line, row) in rows.iter().skip(1) {
        if row.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if row.len() != header.len() {
            return Err((
                *line,
                format!("{} fields, the header has {}", row.len(), header.len()),
            ));
        }
        let mut node = Node {
            name: row[0].trim().to_string(),
            labels: Attrs::new(),
            vars: Attrs::new(),
        };
        for (col, cell) in header.iter().zip(row).skip(1) {
            let (col, cell) = (col.trim(), cell.trim());
            if cell.is_empty() {
                continue;
            }
            if let Some(v) = col.strip_prefix("vars.") {
                node.vars.insert(v.to_string(), cell.to_string());
            } else {
                let l = col.strip_prefix("labels.").unwrap_or(col);
                node.labels.insert(l.to_string(), cell.to_string());
            }
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// Rows of a CSV text (RFC 4180 quoting), each with the line it starts on.
/// A CSV row and the line it starts on.
type Row = (usize, Vec<String>);

fn csv_rows(text: &str) -> Result<Vec<Row>, (usize, String)> {
    let mut rows = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let start = line;
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            match chars.next() {
                None => {
                    if quoted {
                        return Err((start, "unterminated quoted field".into()));
                    }
                    row.push(std::mem::take(&mut field));
                    break;
                }
                Some('"') if quoted => {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                }
                Some('"') if field.is_empty() => quoted = true,
                Some(c) if quoted => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
                Some(',') => row.push(std::mem::take(&mut field)),
                Some('\r') => {}
                Some('\n') => {
                    line += 1;
                    row.push(std::mem::take(&mut field));
                    break;
                }
                Some(c) => field.push(c),
            }
        }
        let blank = row.len() == 1 && row[0].is_empty();
        if !blank && !row[0].starts_with('#') {
            rows.push((start, row));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_labels_vars_and_quotes() {
        let nodes = parse_csv(
            "name,env,labels.role,vars.host\n# comment\nedge-1,prod,edge,10.0.0.1\n\"db,1\",,db,\"a \"\"b\"\"\"\n",
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].labels["env"], "prod");
        assert_eq!(nodes[0].labels["role"], "edge");
        assert_eq!(nodes[0].vars["host"], "10.0.0.1");
        assert_eq!(nodes[1].name, "db,1");
        assert!(!nodes[1].labels.contains_key("env"));
        assert_eq!(nodes[1].vars["host"], "a \"b\"");
    }

    #[test]
    fn csv_errors_name_the_line() {
        assert_eq!(parse_csv("host,name\n").unwrap_err().0, 1);
        assert_eq!(parse_csv("name,env\na,b\nc\n").unwrap_err().0, 3);
        assert_eq!(parse_csv("name\n\"open\n").unwrap_err().0, 2);
    }

    #[test]
    fn selectors() {
        let n = Node {
            name: "edge-1".into(),
            labels: [("role".to_string(), "edge".to_string())].into(),
            vars: Attrs::new(),
        };
        assert!(Selector::parse("role=edge").unwrap().matches(&n));
        assert!(Selector::parse("").unwrap().matches(&n));
        assert!(Selector::parse("name=edge-1").unwrap().matches(&n));
        assert!(!Selector::parse("role=edge,env=prod").unwrap().matches(&n));
        assert!(Selector::parse("role").is_err());
        assert!(valid_name("edge-ams-1") && !valid_name("../x") && !valid_name("a b"));
    }
}
