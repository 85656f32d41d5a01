//! The `file` source: read a path (node variables allowed), relative to plumb.toml, optionally confined to
//! allowed roots. Node values may not carry path separators or `..`, so a node cannot lead the read elsewhere.

use super::CollectError;
use crate::inventory::Node;
use crate::template::Template;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

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
    let err = |m: String| CollectError::File {
        path: full.display().to_string(),
        message: m,
    };
    if !allowed_roots.is_empty() {
        let canon = tokio::fs::canonicalize(&full)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut ok = false;
        for r in allowed_roots {
            if let Ok(rc) = tokio::fs::canonicalize(r).await
                && canon.starts_with(&rc)
            {
                ok = true;
            }
        }
        if !ok {
            return Err(CollectError::Refused(format!(
                "{} is outside the allowed roots",
                canon.display()
            )));
        }
    }
    let f = tokio::fs::File::open(&full)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    let n = f
        .take(max_body + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| err(e.to_string()))?;
    if n as u64 > max_body {
        return Err(CollectError::TooLarge { limit: max_body });
    }
    Ok(buf)
}
