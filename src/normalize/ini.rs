//! INI: `[section]` headers, `key = value` or `key: value` pairs, `;`/`#` comments.
//!
//! Keys before the first section sit at the top level. A repeated key becomes an array of its values; a repeated
//! section merges. A bare key (`skip-name-resolve`) has the value `""`. Values are kept as strings: INI has no types.

use serde_json::{Map, Value};

/// Parse INI text into a tree, or `(line, message)`.
pub(super) fn parse(text: &str) -> Result<Value, (usize, String)> {
    let mut root = Map::new();
    let mut section: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err((
                    line_no,
                    format!("section header `{line}` has no closing `]`"),
                ));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err((line_no, "empty section name".into()));
            }
            match root.get(name) {
                Some(Value::Object(_)) | None => {}
                Some(_) => {
                    return Err((
                        line_no,
                        format!("section `{name}` clashes with a top-level key"),
                    ));
                }
            }
            root.entry(name.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            section = Some(name.to_string());
            continue;
        }
        let (key, value) = match line.find(['=', ':']) {
            Some(pos) => (line[..pos].trim(), super::unquote(line[pos + 1..].trim())),
            None => (line, ""),
        };
        if key.is_empty() {
            return Err((line_no, format!("`{line}` has no key")));
        }
        let target = match &section {
            None => &mut root,
            Some(s) => match root.get_mut(s) {
                Some(Value::Object(m)) => m,
                _ => return Err((line_no, format!("section `{s}` is not a table"))),
            },
        };
        super::insert_repeated(target, key.to_string(), Value::String(value.to_string()));
    }
    Ok(Value::Object(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sections_repeats_and_bare_keys() {
        let v = parse(
            "; global\nuser = mysql\n[mysqld]\nport = 3306\nbind-address: 127.0.0.1\nskip-name-resolve\n\
             plugin-load = a\nplugin-load = b\npath = C:\\Windows\n[client]\nname = \"quoted\"\n[mysqld]\nmax = 1\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "user": "mysql",
                "mysqld": {"port": "3306", "bind-address": "127.0.0.1", "skip-name-resolve": "",
                           "plugin-load": ["a", "b"], "path": "C:\\Windows", "max": "1"},
                "client": {"name": "quoted"}
            })
        );
    }

    #[test]
    fn broken_header_names_the_line() {
        assert_eq!(parse("a=1\n[oops\n").unwrap_err().0, 2);
        assert_eq!(parse("= 3\n").unwrap_err().0, 1);
    }
}
