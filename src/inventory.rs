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
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
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
            labels: BTreeMap::new(),
            vars: BTreeMap::new(),
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
            vars: BTreeMap::new(),
        };
        assert!(Selector::parse("role=edge").unwrap().matches(&n));
        assert!(Selector::parse("").unwrap().matches(&n));
        assert!(Selector::parse("name=edge-1").unwrap().matches(&n));
        assert!(!Selector::parse("role=edge,env=prod").unwrap().matches(&n));
        assert!(Selector::parse("role").is_err());
        assert!(valid_name("edge-ams-1") && !valid_name("../x") && !valid_name("a b"));
    }
}
