//! key=value files, sysctl and sshd_config style: one `key = value` (or `key value`) per line, `#`/`;` comments.
//!
//! Keys stay flat (`net.ipv4.ip_forward` is one key, selected as `$['net.ipv4.ip_forward']`); a repeated key
//! becomes an array of its values in order. Values are strings, trimmed, with one pair of quotes removed.

use serde_json::{Map, Value};

/// Parse key=value text into a flat object, or `(line, message)`.
pub(super) fn parse(text: &str) -> Result<Value, (usize, String)> {
    let mut root = Map::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = match line.find('=') {
            Some(pos) => (line[..pos].trim(), line[pos + 1..].trim()),
            None => match line.find(char::is_whitespace) {
                Some(pos) => (&line[..pos], line[pos..].trim()),
                None => {
                    return Err((
                        line_no,
                        format!("`{line}` is not `key = value` (or `key value`)"),
                    ));
                }
            },
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err((line_no, format!("`{line}` has no valid key")));
        }
        let value = super::unquote(value);
        super::insert_repeated(&mut root, key.to_string(), Value::String(value.to_string()));
    }
    Ok(Value::Object(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sysctl_and_sshd_styles() {
        let v = parse(
            "# sysctl\nnet.ipv4.ip_forward = 0\nkernel.kptr_restrict=2\n\nPermitRootLogin no\n\
             AllowUsers alice bob\nexport TOKEN=\"x y\"\nHostKey /a\nHostKey /b\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"net.ipv4.ip_forward": "0", "kernel.kptr_restrict": "2", "PermitRootLogin": "no",
                   "AllowUsers": "alice bob", "TOKEN": "x y", "HostKey": ["/a", "/b"]})
        );
    }

    #[test]
    fn a_lone_word_names_its_line() {
        assert_eq!(parse("a = 1\n\njunk\n").unwrap_err().0, 3);
    }
}
