//! `${...}` substitution: `${env:NAME}` and `${file:PATH}` at load time, `${node.name}`, `${node.vars.X}` and
//! `${node.labels.X}` per node. `$$` is a literal `$`.

use crate::inventory::Node;
use std::path::Path;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    NodeName,
    Var(String),
    Label(String),
}

/// A string with node placeholders, load-time secrets already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Where `${env:}` and `${file:}` are looked up.
pub trait Resolver {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> Result<String, String>;
}

/// The process environment and the file system, with relative paths beside `base`.
pub struct SystemResolver<'a> {
    pub base: &'a Path,
}

impl Resolver for SystemResolver<'_> {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &str) -> Result<String, String> {
        let p = self.base.join(path);
        std::fs::read_to_string(&p)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    }
}

/// Which placeholders a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// `${env:}`, `${file:}` and `${node.*}`: plumb.toml values used per node.
    All,
    /// `${env:}` and `${file:}` only: plumb.toml values that are not per node.
    Secrets,
    /// `${node.*}` only: baseline content.
    Node,
}

impl Template {
    /// Parse `s`, resolving `${env:}` / `${file:}` through `r` where allowed.
    pub fn parse(s: &str, allow: Allow, r: &dyn Resolver) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(pos) = rest.find('$') {
            lit.push_str(&rest[..pos]);
            rest = &rest[pos..];
            if let Some(after) = rest.strip_prefix("$$") {
                lit.push('$');
                rest = after;
                continue;
            }
            let Some(body) = rest.strip_prefix("${") else {
                lit.push('$');
                rest = &rest[1..];
                continue;
            };
            let Some(end) = body.find('}') else {
                return Err(format!("unclosed `${{` in `{s}`"));
            };
            let expr = &body[..end];
            rest = &body[end + 1..];
            let node_part = if expr == "node.name" {
                Some(Part::NodeName)
            } else if let Some(v) = expr.strip_prefix("node.vars.") {
                Some(Part::Var(v.to_string()))
            } else {
                expr.strip_prefix("node.labels.")
                    .map(|l| Part::Label(l.to_string()))
            };
            if let Some(p) = node_part {
                if allow == Allow::Secrets {
                    return Err(format!("`${{{expr}}}` is per node and cannot be used here"));
                }
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(p);
            } else if let Some(name) = expr.strip_prefix("env:") {
                if allow == Allow::Node {
                    return Err(format!(
                        "`${{{expr}}}` is not allowed here (only ${{node.*}})"
                    ));
                }
                match r.env(name) {
                    Some(v) => lit.push_str(&v),
                    None => return Err(format!("environment variable `{name}` is not set")),
                }
            } else if let Some(path) = expr.strip_prefix("file:") {
                if allow == Allow::Node {
                    return Err(format!(
                        "`${{{expr}}}` is not allowed here (only ${{node.*}})"
                    ));
                }
                lit.push_str(&r.file(path)?);
            } else {
                return Err(format!(
                    "unknown placeholder `${{{expr}}}` (use ${{node.name}}, ${{node.vars.X}}, ${{node.labels.X}}, ${{env:X}} or ${{file:PATH}})"
                ));
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// The text of a template without node placeholders (`Allow::Secrets`).
    pub fn render_plain(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(l) => l.as_str(),
                _ => "",
            })
            .collect()
    }

    /// Whether rendering depends on the node.
    pub fn is_per_node(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Lit(_)))
    }

    /// Render for one node; the error names the missing variable or label.
    pub fn render(&self, node: &Node) -> Result<String, String> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::NodeName => s.push_str(&node.name),
                Part::Var(v) => s.push_str(
                    node.vars
                        .get(v)
                        .ok_or_else(|| format!("node `{}` has no var `{v}`", node.name))?,
                ),
                Part::Label(l) => s.push_str(
                    node.labels
                        .get(l)
                        .ok_or_else(|| format!("node `{}` has no label `{l}`", node.name))?,
                ),
            }
        }
        Ok(s)
    }

    /// Render each piece through `f` (used to validate node values before they reach argv or paths).
    pub fn render_with(
        &self,
        node: &Node,
        check: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<String, String> {
        let mut s = String::new();
        for p in &self.parts {
            let piece = match p {
                Part::Lit(l) => {
                    s.push_str(l);
                    continue;
                }
                Part::NodeName => node.name.clone(),
                Part::Var(_) | Part::Label(_) => Template {
                    parts: vec![p.clone()],
                }
                .render(node)?,
            };
            check(&piece)?;
            s.push_str(&piece);
        }
        Ok(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub struct MapResolver(pub BTreeMap<String, String>);
    impl Resolver for MapResolver {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
        fn file(&self, path: &str) -> Result<String, String> {
            self.0
                .get(&format!("file:{path}"))
                .cloned()
                .ok_or_else(|| format!("cannot read {path}"))
        }
    }

    fn node() -> Node {
        Node {
            name: "edge-1".into(),
            labels: [("dc".to_string(), "ams".to_string())].into(),
            vars: [("host".to_string(), "10.0.0.1".to_string())].into(),
        }
    }

    #[test]
    fn renders_node_parts_and_secrets() {
        let r = MapResolver(
            [
                ("TOKEN".to_string(), "s3cret".to_string()),
                ("file:/k".to_string(), "key".to_string()),
            ]
            .into(),
        );
        let t = Template::parse(
            "http://${node.vars.host}:2019/${node.labels.dc}/${node.name}?t=${env:TOKEN}&k=${file:/k}&p=$$x",
            Allow::All,
            &r,
        )
        .unwrap();
        assert!(t.is_per_node());
        assert_eq!(
            t.render(&node()).unwrap(),
            "http://10.0.0.1:2019/ams/edge-1?t=s3cret&k=key&p=$x"
        );
    }

    #[test]
    fn errors_are_specific() {
        let r = MapResolver(BTreeMap::new());
        assert!(
            Template::parse("${env:NOPE}", Allow::All, &r)
                .unwrap_err()
                .contains("`NOPE` is not set")
        );
        assert!(
            Template::parse("${nope}", Allow::All, &r)
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(
            Template::parse("${node.name", Allow::All, &r)
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(Template::parse("${env:X}", Allow::Node, &r).is_err());
        assert!(Template::parse("${node.name}", Allow::Secrets, &r).is_err());
        let t = Template::parse("${node.vars.port}", Allow::All, &r).unwrap();
        assert_eq!(
            t.render(&node()).unwrap_err(),
            "node `edge-1` has no var `port`"
        );
    }
}
