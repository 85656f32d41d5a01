//! The `command` source: run an argv (never a shell) with node variables substituted into arguments; stdout is
//! the config. A node value may not start with `-` or hold control characters, so it cannot become an option.

use super::CollectError;
use crate::inventory::Node;
use crate::template::Template;
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncReadExt;

fn check_value(v: &str) -> Result<(), String> {
    if v.starts_with('-') {
        return Err(format!("`{v}` starts with `-` and could become an option"));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("{v:?} holds control characters"));
    }
    Ok(())
}

pub(super) async fn run(
    root: &Path,
    argv: &[Template],
    node: &Node,
    max_body: u64,
) -> Result<Vec<u8>, CollectError> {
    let mut args = Vec::with_capacity(argv.len());
    for a in argv {
        args.push(
            a.render_with(node, &check_value)
                .map_err(CollectError::Refused)?,
        );
    }
    let Some((program, rest)) = args.split_first() else {
        return Err(CollectError::Spawn {
            program: String::new(),
            message: "empty argv".into(),
        });
    };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CollectError::Spawn {
            program: program.clone(),
            message: e.to_string(),
        })?;
    let mut stdout = child.stdout.take().ok_or_else(|| CollectError::Spawn {
        program: program.clone(),
        message: "no stdout".into(),
    })?;
    let mut stderr = child.stderr.take().ok_or_else(|| CollectError::Spawn {
        program: program.clone(),
        message: "no stderr".into(),
    })?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let read_out = async {
        let n = (&mut stdout).take(max_body + 1).read_to_end(&mut out).await;
        n.map(|n| n as u64 > max_body)
    };
    let read_err = async { (&mut stderr).take(64 * 1024).read_to_end(&mut err).await };
    let (too_big, _) = tokio::join!(read_out, read_err);
    if too_big.unwrap_or(false) {
        let _ = child.start_kill();
        return Err(CollectError::TooLarge { limit: max_body });
    }
    let status = child.wait().await.map_err(|e| CollectError::Spawn {
        program: program.clone(),
        message: e.to_string(),
    })?;
    if !status.success() {
        let text = String::from_utf8_lossy(&err);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        return Err(CollectError::Exit {
            program: program.clone(),
            status: match status.code() {
                Some(c) => format!("status {c}"),
                None => "a signal".into(),
            },
            stderr: last.trim().to_string(),
        });
    }
    Ok(out)
}
