//! The `file` source: read a path (node variables allowed), relative to plumb.toml, optionally confined to
//! allowed roots. Node values may not carry path separators or `..`, so a node cannot lead the read elsewhere.

use super::CollectError;
use crate::inventory::Node;
use crate::template::Template;
use std::path::{Path, PathBuf};

fn check_value(v: &str) -> Result<(), String> {
    if v.contains('/') || v.contains('\\') || v == ".." || v == "." || v.contains('\0') {
        return Err(format!(
            "`{v}` may not be used in a file path (no separators, `.` or `..`)"
        ));
    }
    Ok(())
}

pub(super) async fn read(
    root: &Path,
    path: &Template,
    allowed_roots: &[PathBuf],
    node: &Node,
    max_body: u64,
) -> Result<Vec<u8>, CollectError> {
    let rel = path
        .render_with(node, &check_value)
        .map_err(CollectError::Refused)?;
    let full = root.join(&rel);
    // One blocking task does the whole read (canonicalize, open, read): tokio::fs would hand every call to the
    // blocking pool separately, which costs more than the read itself for small config files.
    let roots = allowed_roots.to_vec();
    tokio::task::spawn_blocking(move || read_blocking(&full, &roots, max_body))
        .await
        .map_err(|e| CollectError::Refused(format!("the file read stopped: {e}")))?
}

fn read_blocking(
    full: &Path,
    allowed_roots: &[PathBuf],
    max_body: u64,
) -> Result<Vec<u8>, CollectError> {
    use std::io::Read as _;
    let err = |m: String| CollectError::File {
        path: full.display().to_string(),
        message: m,
    };
    if !allowed_roots.is_empty() {
        let canon = std::fs::canonicalize(full).map_err(|e| err(e.to_string()))?;
        let ok = allowed_roots
            .iter()
            .any(|r| std::fs::canonicalize(r).is_ok_and(|rc| canon.starts_with(&rc)));
        if !ok {
            return Err(CollectError::Refused(format!(
                "{} is outside the allowed roots",
                canon.display()
            )));
        }
    }
    let f = std::fs::File::open(full).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    let n = f
        .take(max_body + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if n as u64 > max_body {
        return Err(CollectError::TooLarge { limit: max_body });
    }
    Ok(buf)
}
