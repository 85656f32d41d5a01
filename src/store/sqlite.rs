//! The embedded SQLite store: one file (default `.plumb/state.db`), WAL journal, schema versions in
//! `PRAGMA user_version` applied as numbered migrations inside a transaction.

use super::{
    BaselineVersion, FindingFilter, HistoryEntry, Memory, OutboxRow, OutboxUpdate, Pruned,
    ScanCommit, Store, StoreError, Target,
};
use crate::lifecycle::{Ack, Record};
use crate::notify::Message;
use crate::notify::plan::LogEntry;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};

/// Every migration, in order; `user_version` counts how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
     CREATE TABLE scans (
        id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
        nodes_total INTEGER NOT NULL, nodes_read INTEGER NOT NULL, nodes_unreadable INTEGER NOT NULL,
        findings INTEGER NOT NULL);
     CREATE INDEX scans_started ON scans(started_at);
     CREATE TABLE snapshots (hash TEXT PRIMARY KEY, content TEXT NOT NULL, size INTEGER NOT NULL,
        first_seen TEXT NOT NULL);
     CREATE TABLE targets (node TEXT NOT NULL, config TEXT NOT NULL, hash TEXT, PRIMARY KEY (node, config));
     CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, config TEXT NOT NULL,
        at TEXT NOT NULL, scan_id TEXT NOT NULL, hash TEXT NOT NULL);
     CREATE INDEX history_target ON history(node, config, id);
     CREATE INDEX history_at ON history(at);
     CREATE TABLE baseline_versions (file TEXT NOT NULL, hash TEXT NOT NULL, config TEXT NOT NULL,
        content TEXT NOT NULL, text INTEGER NOT NULL, first_seen TEXT NOT NULL, superseded_at TEXT,
        PRIMARY KEY (file, hash));
     CREATE TABLE findings (fingerprint TEXT PRIMARY KEY, node TEXT NOT NULL, config TEXT NOT NULL,
        kind TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL, last_seen TEXT NOT NULL,
        record TEXT NOT NULL);
     CREATE INDEX findings_target ON findings(node, config);
     CREATE INDEX findings_state ON findings(state);
     CREATE TABLE acks (fingerprint TEXT NOT NULL, created_at TEXT NOT NULL, until TEXT NOT NULL,
        ended_at TEXT, record TEXT NOT NULL);
     CREATE INDEX acks_open ON acks(fingerprint, ended_at);",
    // 2: alerts: the durable outbox, the notification log, ticket ids, sink health.
    "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL, sink TEXT NOT NULL,
        payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL, last_error TEXT, created_at TEXT NOT NULL, done_at TEXT,
        UNIQUE (sink, msg_id));
     CREATE INDEX outbox_status ON outbox(status, sink, id);
     CREATE TABLE notify_log (route TEXT NOT NULL, sink TEXT NOT NULL, fingerprint TEXT NOT NULL,
        record TEXT NOT NULL, PRIMARY KEY (route, sink, fingerprint));
     CREATE TABLE tickets (sink TEXT NOT NULL, key TEXT NOT NULL, external_id TEXT NOT NULL,
        PRIMARY KEY (sink, key));
     CREATE TABLE sink_health (sink TEXT PRIMARY KEY, failing_since TEXT, alerted INTEGER NOT NULL DEFAULT 0);",
    // 3: warm scans: what produced each target's last findings (blake3 of the raw body, blake3 of the baseline,
    // rules and settings that applied), the node's ETag / Last-Modified for that body, and its unified diff.
    "ALTER TABLE targets ADD COLUMN input_body BLOB;
     ALTER TABLE targets ADD COLUMN input_context BLOB;
     ALTER TABLE targets ADD COLUMN etag TEXT;
     ALTER TABLE targets ADD COLUMN last_modified TEXT;
     ALTER TABLE targets ADD COLUMN unified TEXT;",
    // 4: snapshots of nodes that match their baseline: the baseline's canonical text once, split at the node
    // values (`snapshot_templates.segments`, a JSON array), and per snapshot only those values (`content`, a JSON
    // array, with `template` naming the split text). `template` NULL: `content` is the whole text.
    "ALTER TABLE snapshots ADD COLUMN template TEXT;
     CREATE TABLE snapshot_templates (hash TEXT PRIMARY KEY, segments TEXT NOT NULL, first_seen TEXT NOT NULL);",
];

/// Write one snapshot content (`INSERT OR IGNORE`: contents are addressed by the hash of their whole text).
fn insert_content(
    tx: &rusqlite::Transaction,
    hash: &str,
    content: &super::Content,
    first_seen: &str,
    written: &mut std::collections::HashSet<String>,
) -> rusqlite::Result<()> {
    match content {
        super::Content::Text(text) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO snapshots (hash, content, size, first_seen) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![hash, text, text.len() as i64, first_seen])?;
        }
        super::Content::Filled { template, slots } => {
            // Once per template and writer (`written`), not once per node.
            if !written.contains(&template.hash) {
                let segments = serde_json::to_string(&template.segments)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO snapshot_templates (hash, segments, first_seen) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![template.hash, segments, first_seen])?;
                written.insert(template.hash.clone());
            }
            let values = serde_json::to_string(slots)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO snapshots (hash, content, size, first_seen, template) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![hash, values, content.len() as i64, first_seen, template.hash])?;
        }
    }
    Ok(())
}

/// The whole text of a stored snapshot: `content` itself, or `content`'s values filled into the template's segments.
fn stored_text(content: String, segments: Option<String>) -> Result<String, String> {
    let Some(segments) = segments else {
        return Ok(content);
    };
    let segments: Vec<String> = serde_json::from_str(&segments)
        .map_err(|e| format!("a snapshot template does not parse: {e}"))?;
    let slots: Vec<String> = serde_json::from_str(&content)
        .map_err(|e| format!("a snapshot's values do not parse: {e}"))?;
    super::fill(&segments, &slots)
        .ok_or_else(|| "a snapshot's values do not fit its template".to_string())
}

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The `targets` table as this connection last read or wrote it (see [`Kept`]).
    kept: Option<Kept>,
}

/// The `targets` table kept in memory between scans, so that a daemon's warm scan does not read 10,000 rows
/// again: valid while the table's generation (`meta.targets_generation`, which every commit that writes the
/// table raises by one in the same transaction) is the one kept. Another process's commit raises it too, and the
/// next load reads the table afresh.
#[derive(Debug)]
struct Kept {
    generation: i64,
    targets: std::sync::Arc<std::collections::HashMap<Target, super::TargetMemory>>,
    /// This connection's writes since, applied at the next load (when the last scan's copies are gone, so they
    /// are applied in place rather than to a copy).
    pending: Vec<Change>,
}

/// A connection's kept `targets` table, handed to the next connection to the same file
/// ([`SqliteStore::take_kept`], [`SqliteStore::keep`]): the daemon opens a connection per scan. It is checked as
/// the connection's own would be (by the table's generation), so it can never stand for a table that changed.
#[derive(Debug, Default)]
pub struct KeptTargets(Option<(PathBuf, Kept)>);

/// One write to the `targets` table, as [`Kept`] replays it.
#[derive(Debug)]
enum Change {
    Hash(Target, String),
    New(Target),
    Input(Target, Option<crate::classify::InputMemo>),
}

impl Kept {
    fn apply(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let targets = std::sync::Arc::make_mut(&mut self.targets);
        // Taken, so that its memory goes with it.
        for c in std::mem::take(&mut self.pending) {
            match c {
                Change::Hash(t, h) => targets.entry(t).or_default().hash = Some(h),
                Change::New(t) => {
                    targets.entry(t).or_default();
                }
                // The UPDATE touches only a row that exists.
                Change::Input(t, i) => {
                    if let Some(m) = targets.get_mut(&t) {
                        m.input = i;
                    }
                }
            }
        }
    }
}

/// A target's input key as the `targets` table's columns: `input_body`, `input_context`, `etag`, `last_modified`,
/// `unified` (all NULL when the key is forgotten; an empty diff is NULL).
type InputColumns<'a> = (
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn input_columns(input: &Option<crate::classify::InputMemo>) -> InputColumns<'_> {
    let i = input.as_ref();
    (
        i.map(|i| &i.body[..]),
        i.map(|i| &i.context[..]),
        i.and_then(|i| i.validators.etag.as_deref()),
        i.and_then(|i| i.validators.last_modified.as_deref()),
        i.map(|i| i.unified.as_str()).filter(|u| !u.is_empty()),
    )
}

/// The `targets` table's generation as `conn` sees it (0 before any commit wrote it).
fn targets_generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'targets_generation'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(Option::unwrap_or_default)
}

impl SqliteStore {
    /// What this connection keeps of the `targets` table, for the next connection to this file.
    pub fn take_kept(&mut self) -> KeptTargets {
        KeptTargets(self.kept.take().map(|k| (self.path.clone(), k)))
    }

    /// Use `kept` (from [`SqliteStore::take_kept`]) if it was kept for this file and this connection keeps nothing
    /// yet.
    pub fn keep(&mut self, kept: KeptTargets) {
        if let Some((path, k)) = kept.0
            && self.kept.is_none()
            && path == self.path
            && self.path.as_os_str() != ":memory:"
        {
            self.kept = Some(k);
        }
    }

    /// Open (creating the file and its directory if needed) and migrate.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlite {
                path: path.display().to_string(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let conn = Connection::open(path).map_err(|e| err(path, e))?;
        let mut s = SqliteStore {
            conn,
            path: path.to_path_buf(),
            kept: None,
        };
        s.setup()?;
        Ok(s)
    }

    /// An in-memory store (tests, the demo).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(|e| err(Path::new(":memory:"), e))?;
        let mut s = SqliteStore {
            conn,
            path: PathBuf::from(":memory:"),
            kept: None,
        };
        s.setup()?;
        Ok(s)
    }

    fn e(&self, e: rusqlite::Error) -> StoreError {
        err(&self.path, e)
    }

    fn setup(&mut self) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| self.e(e))?;
        // WAL: readers never block the writer, and a crash mid-write leaves the last commit intact.
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| self.e(e))?;
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(|e| self.e(e))?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.e(e))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.display().to_string(),
                found: version,
                known,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(|e| err(&self.path, e))?;
            tx.execute_batch(m).map_err(|e| err(&self.path, e))?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(|e| err(&self.path, e))?;
            tx.commit().map_err(|e| err(&self.path, e))?;
        }
        Ok(())
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.e(e))
    }

    /// `PRAGMA integrity_check`: "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.e(e))
    }
}

fn insert_outbox(
    tx: &rusqlite::Transaction<'_>,
    messages: &[Message],
    now: &str,
) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT OR IGNORE INTO outbox (msg_id, sink, payload, next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    for m in messages {
        let payload = serde_json::to_string(m)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        st.execute(params![m.id(), m.sink(), payload, now])?;
    }
    Ok(())
}

impl SqliteStore {
    fn outbox_query(&mut self, sql: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let mut st = self.conn.prepare(sql).map_err(|e| err(&self.path, e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, String>(8)?,
                ))
            })
            .map_err(|e| err(&self.path, e))?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                msg_id,
                sink,
                payload,
                status,
                attempts,
                next_attempt_at,
                last_error,
                created_at,
            ) = row.map_err(|e| err(&self.path, e))?;
            out.push(OutboxRow {
                id,
                msg_id,
                sink,
                message: serde_json::from_str(&payload).map_err(json_err)?,
                status,
                attempts,
                next_attempt_at,
                last_error,
                created_at,
            });
        }
        Ok(out)
    }
}

fn err(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let mut message = e.to_string();
    // SQLite says "disk I/O error" or "unable to open database file" where the cause is a full or read-only file
    // system (it cannot create the WAL index): ask the file system itself, and say that.
    if matches!(
        e.sqlite_error_code(),
        Some(C::DiskFull | C::ReadOnly | C::CannotOpen | C::SystemIoFailure)
    ) && let Some(why) = unwritable(path)
    {
        message = format!("{why} ({message})");
    }
    StoreError::Sqlite {
        path: path.display().to_string(),
        message,
    }
}

/// Why the store's directory cannot be written to, found by writing a small probe file there; `None` if it can.
fn unwritable(path: &Path) -> Option<String> {
    if path == Path::new(":memory:") {
        return None;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let probe = dir.join(format!(".plumb-write-probe-{}", std::process::id()));
    let res = std::fs::write(&probe, b"plumb");
    let _ = std::fs::remove_file(&probe);
    let e = res.err()?;
    let why = match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "no space left on the device".to_string()
        }
        std::io::ErrorKind::ReadOnlyFilesystem => "the file system is read-only".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    Some(format!("cannot write in {}: {why}", dir.display()))
}

impl SqliteStore {
    /// Read the `targets` table into `mem` (the wanted targets' rows), at `generation`.
    fn read_targets(
        &mut self,
        mem: &mut Memory,
        wanted: &std::collections::HashSet<&Target>,
        generation: i64,
    ) -> Result<(), StoreError> {
        let rows_read = {
            let mut st = self
                .conn
                .prepare(
                    "SELECT node, config, hash, input_body, input_context, etag, last_modified, unified \
                     FROM targets",
                )
                .map_err(|e| err(&self.path, e))?;
            // A 32-byte blob read in place (no vector per row); anything else is no key.
            let key32 = |r: &rusqlite::Row, i: usize| -> rusqlite::Result<Option<[u8; 32]>> {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Blob(b) => <[u8; 32]>::try_from(b).ok(),
                    _ => None,
                })
            };
            let rows = st
                .query_map([], |r| {
                    let input = match (key32(r, 3)?, key32(r, 4)?) {
                        (Some(body), Some(context)) => Some(crate::classify::InputMemo {
                            body,
                            context,
                            validators: crate::collect::Validators {
                                etag: r.get(5)?,
                                last_modified: r.get(6)?,
                            },
                            unified: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                        }),
                        _ => None,
                    };
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                        r.get::<_, Option<String>>(2)?,
                        input,
                    ))
                })
                .map_err(|e| err(&self.path, e))?;
            let mut targets = std::collections::HashMap::with_capacity(wanted.len());
            let mut rows_read = 0usize;
            for row in rows {
                rows_read += 1;
                let (t, hash, input) = row.map_err(|e| err(&self.path, e))?;
                if wanted.contains(&t) {
                    targets.insert(t, super::TargetMemory { hash, input });
                }
            }
            mem.targets = std::sync::Arc::new(targets);
            rows_read
        };
        // Kept only when it is the whole table (every row was wanted), as the next load will share it.
        self.kept = (mem.targets.len() == rows_read).then(|| Kept {
            generation,
            targets: mem.targets.clone(),
            pending: Vec::new(),
        });
        Ok(())
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("a stored record does not parse: {e}"))
}

impl Store for SqliteStore {
    fn spool(&mut self, first_seen: &str) -> Option<super::spool::Spool> {
        if self.path.as_os_str() == ":memory:" {
            return None;
        }
        // A second connection: the writer thread owns it; WAL lets the scan's reads go on meanwhile.
        let path = self.path.clone();
        let conn = Connection::open(&path).ok()?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).ok()?;
        conn.execute_batch("PRAGMA synchronous = NORMAL;").ok()?;
        let first_seen = first_seen.to_string();
        let mut conn = conn;
        let mut written = std::collections::HashSet::new();
        super::spool::Spool::start(Box::new(move |batch: &[(String, super::Content)]| {
            let e = |x| err(&path, x);
            let tx = conn.transaction().map_err(e)?;
            // Templates this batch writes: remembered only once the batch commits.
            let mut batch_written = written.clone();
            for (hash, content) in batch {
                insert_content(&tx, hash, content, &first_seen, &mut batch_written).map_err(e)?;
            }
            tx.commit().map_err(e)?;
            written = batch_written;
            Ok(())
        }))
    }

    fn secret_key(&mut self) -> Result<[u8; 32], StoreError> {
        let existing: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'redaction_key'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.e(e))?;
        if let Some(v) = existing {
            return v
                .try_into()
                .map_err(|_| StoreError::Corrupt("the redaction key is not 32 bytes".into()));
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| StoreError::Corrupt(format!("no randomness for the key: {e}")))?;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('redaction_key', ?1)",
                params![key.to_vec()],
            )
            .map_err(|e| self.e(e))?;
        // Another process may have won the race: read back what is stored.
        let v: Vec<u8> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'redaction_key'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.e(e))?;
        v.try_into()
            .map_err(|_| StoreError::Corrupt("the redaction key is not 32 bytes".into()))
    }

    fn load(&mut self, targets: &[Target]) -> Result<Memory, StoreError> {
        let mut mem = Memory::default();
        let wanted: std::collections::HashSet<&Target> = targets.iter().collect();
        let generation = targets_generation(&self.conn).map_err(|e| self.e(e))?;
        match self.kept.as_mut() {
            // Kept and still current: shared as a whole (rows of other targets are only never looked up).
            Some(k) if k.generation == generation => {
                k.apply();
                mem.targets = k.targets.clone();
            }
            _ => self.read_targets(&mut mem, &wanted, generation)?,
        }
        {
            let mut st = self
                .conn
                .prepare("SELECT node, config, record FROM findings")
                .map_err(|e| err(&self.path, e))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(|e| err(&self.path, e))?;
            for row in rows {
                let (t, rec) = row.map_err(|e| err(&self.path, e))?;
                if wanted.contains(&t) {
                    let rec: Record = serde_json::from_str(&rec).map_err(json_err)?;
                    mem.records.insert(rec.finding.fingerprint.clone(), rec);
                }
            }
        }
        for a in self.acks()? {
            mem.acks.insert(a.fingerprint.clone(), a);
        }
        {
            let mut st = self
                .conn
                .prepare("SELECT record FROM notify_log")
                .map_err(|e| err(&self.path, e))?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| err(&self.path, e))?;
            for row in rows {
                let text = row.map_err(|e| err(&self.path, e))?;
                let e: LogEntry = serde_json::from_str(&text).map_err(json_err)?;
                mem.notify_log
                    .insert((e.route.clone(), e.sink.clone(), e.fingerprint.clone()), e);
            }
        }
        Ok(mem)
    }

    fn record_baselines(
        &mut self,
        current: &[BaselineVersion],
        now: &str,
    ) -> Result<Vec<BaselineVersion>, StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, e))?;
        for v in current {
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO baseline_versions (file, hash, config, content, text, first_seen) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![v.file, v.hash, v.config, v.content, v.text, now],
                )
                .map_err(|e| err(&path, e))?;
            // The version in force is never superseded; every other version of the file is.
            tx.execute(
                "UPDATE baseline_versions SET superseded_at = ?3 \
                 WHERE file = ?1 AND hash != ?2 AND superseded_at IS NULL",
                params![v.file, v.hash, now],
            )
            .map_err(|e| err(&path, e))?;
            if inserted == 0 {
                tx.execute(
                    "UPDATE baseline_versions SET superseded_at = NULL WHERE file = ?1 AND hash = ?2",
                    params![v.file, v.hash],
                )
                .map_err(|e| err(&path, e))?;
            }
        }
        let mut out = Vec::new();
        {
            let mut st = tx
                .prepare(
                    "SELECT file, config, hash, content, text, first_seen, superseded_at FROM baseline_versions \
                     ORDER BY file, first_seen",
                )
                .map_err(|e| err(&path, e))?;
            let rows = st
                .query_map([], |r| {
                    Ok(BaselineVersion {
                        file: r.get(0)?,
                        config: r.get(1)?,
                        hash: r.get(2)?,
                        content: r.get(3)?,
                        text: r.get(4)?,
                        first_seen: r.get(5)?,
                        superseded_at: r.get(6)?,
                    })
                })
                .map_err(|e| err(&path, e))?;
            for r in rows {
                out.push(r.map_err(|e| err(&path, e))?);
            }
        }
        tx.commit().map_err(|e| err(&path, e))?;
        Ok(out)
    }

    fn commit(&mut self, scan: &ScanCommit) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |x| err(&path, x);
        let tx = self.conn.transaction().map_err(e)?;
        // The `targets` table's next generation, taken first, so that a commit of another process in between
        // shows (see `Kept`).
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('targets_generation', 1) \
             ON CONFLICT (key) DO UPDATE SET value = value + 1",
            [],
        )
        .map_err(e)?;
        let generation = targets_generation(&tx).map_err(e)?;
        tx.execute(
            "INSERT INTO scans (id, started_at, finished_at, nodes_total, nodes_read, nodes_unreadable, findings) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                scan.scan_id,
                scan.started_at,
                scan.finished_at,
                scan.nodes_total as i64,
                scan.nodes_read as i64,
                scan.nodes_unreadable as i64,
                scan.findings as i64
            ],
        )
        .map_err(e)?;
        {
            // Snapshots already in the store (spooled while the scan ran) are checked in one query, not one each.
            let spooled: Vec<&super::Snapshot> = scan
                .snapshots
                .iter()
                .filter(|s| s.content.is_none() && s.changed)
                .collect();
            if !spooled.is_empty() {
                let hashes: Vec<&str> = spooled.iter().map(|s| s.hash.as_str()).collect();
                let wanted = serde_json::to_string(&hashes).map_err(json_err)?;
                let distinct = hashes
                    .iter()
                    .collect::<std::collections::HashSet<_>>()
                    .len();
                let present: i64 = tx
                    .query_row(
                        "SELECT count(*) FROM snapshots WHERE hash IN (SELECT value FROM json_each(?1))",
                        params![wanted],
                        |r| r.get(0),
                    )
                    .map_err(e)?;
                if usize::try_from(present).ok() != Some(distinct) {
                    let mut has_snap = tx
                        .prepare_cached("SELECT 1 FROM snapshots WHERE hash = ?1")
                        .map_err(e)?;
                    for s in &spooled {
                        if !has_snap.exists(params![s.hash]).map_err(e)? {
                            return Err(StoreError::Corrupt(format!(
                                "{}: snapshot {} of {}/{} was not written; the scan is not recorded",
                                path.display(),
                                s.hash,
                                s.node,
                                s.config
                            )));
                        }
                    }
                }
            }
            let mut up_target = tx
                .prepare_cached(
                    "INSERT INTO targets (node, config, hash) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (node, config) DO UPDATE SET hash = excluded.hash",
                )
                .map_err(e)?;
            // A target whose hash and input key both change is written by one statement: the two lists come in
            // the same (sorted) order from a scan, and are walked side by side; an input key not met that way is
            // written on its own below.
            let mut up_target_input = tx
                .prepare_cached(
                    "INSERT INTO targets (node, config, hash, input_body, input_context, etag, last_modified, unified) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (node, config) DO UPDATE SET hash = excluded.hash, \
                     input_body = excluded.input_body, input_context = excluded.input_context, \
                     etag = excluded.etag, last_modified = excluded.last_modified, unified = excluded.unified",
                )
                .map_err(e)?;
            let mut ins_hist = tx
                .prepare_cached("INSERT INTO history (node, config, at, scan_id, hash) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(e)?;
            let mut templates = std::collections::HashSet::new();
            let mut input_written = vec![false; scan.inputs.len()];
            let mut next_input = 0usize;
            for s in &scan.snapshots {
                if let Some(c) = &s.content {
                    insert_content(&tx, &s.hash, c, &scan.started_at, &mut templates).map_err(e)?;
                }
                if !s.changed {
                    continue;
                }
                let target = (s.node.as_str(), s.config.as_str());
                while scan
                    .inputs
                    .get(next_input)
                    .is_some_and(|((n, c), _)| (n.as_str(), c.as_str()) < target)
                {
                    next_input += 1;
                }
                match scan.inputs.get(next_input) {
                    Some(((n, c), input)) if (n.as_str(), c.as_str()) == target => {
                        let (body, context, etag, last_modified, unified) = input_columns(input);
                        up_target_input
                            .execute(params![
                                s.node,
                                s.config,
                                s.hash,
                                body,
                                context,
                                etag,
                                last_modified,
                                unified
                            ])
                            .map_err(e)?;
                        input_written[next_input] = true;
                        next_input += 1;
                    }
                    _ => {
                        up_target
                            .execute(params![s.node, s.config, s.hash])
                            .map_err(e)?;
                    }
                }
                ins_hist
                    .execute(params![
                        s.node,
                        s.config,
                        scan.started_at,
                        scan.scan_id,
                        s.hash
                    ])
                    .map_err(e)?;
            }
            let mut new_target = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO targets (node, config, hash) VALUES (?1, ?2, NULL)",
                )
                .map_err(e)?;
            for (n, c) in &scan.unread_new_targets {
                new_target.execute(params![n, c]).map_err(e)?;
            }
            let mut up_input = tx
                .prepare_cached(
                    "UPDATE targets SET input_body = ?3, input_context = ?4, etag = ?5, last_modified = ?6, \
                     unified = ?7 WHERE node = ?1 AND config = ?2",
                )
                .map_err(e)?;
            for (((n, c), input), _) in scan
                .inputs
                .iter()
                .zip(&input_written)
                .filter(|(_, written)| !**written)
            {
                let (body, context, etag, last_modified, unified) = input_columns(input);
                up_input
                    .execute(params![n, c, body, context, etag, last_modified, unified])
                    .map_err(e)?;
            }
            let mut up_finding = tx
                .prepare_cached(
                    "INSERT INTO findings (fingerprint, node, config, kind, state, severity, last_seen, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (fingerprint) DO UPDATE SET kind = excluded.kind, state = excluded.state, \
                     severity = excluded.severity, last_seen = excluded.last_seen, record = excluded.record",
                )
                .map_err(e)?;
            for r in &scan.records {
                let f = &r.finding;
                let json = serde_json::to_string(r).map_err(json_err)?;
                up_finding
                    .execute(params![
                        f.fingerprint,
                        f.node,
                        f.config,
                        f.kind.as_str(),
                        f.state.as_str(),
                        f.severity.as_str(),
                        f.last_seen,
                        json
                    ])
                    .map_err(e)?;
            }
            let mut end_ack = tx
                .prepare_cached(
                    "UPDATE acks SET ended_at = ?2 WHERE fingerprint = ?1 AND ended_at IS NULL",
                )
                .map_err(e)?;
            for fp in &scan.ended_acks {
                end_ack.execute(params![fp, scan.started_at]).map_err(e)?;
            }
            // Alerts are written in the same transaction as the finding changes that caused them.
            insert_outbox(&tx, &scan.outbox, &scan.started_at).map_err(e)?;
            let mut up_log = tx
                .prepare_cached(
                    "INSERT INTO notify_log (route, sink, fingerprint, record) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (route, sink, fingerprint) DO UPDATE SET record = excluded.record",
                )
                .map_err(e)?;
            for l in &scan.notify_log {
                up_log
                    .execute(params![
                        l.route,
                        l.sink,
                        l.fingerprint,
                        serde_json::to_string(l).map_err(json_err)?
                    ])
                    .map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        // What the commit wrote into `targets`, for the kept copy, if it was current until this commit and the
        // commit wrote a small part of it (a warm scan's few changes; a first scan, which writes every row, would
        // keep a copy of each, which the next load reads at no greater cost).
        let writes = scan.snapshots.iter().filter(|s| s.changed).count()
            + scan.unread_new_targets.len()
            + scan.inputs.len();
        match self.kept.as_mut() {
            Some(k)
                if k.generation + 1 == generation
                    && k.pending.len() + writes <= (k.targets.len() / 8).max(1024) =>
            {
                k.generation = generation;
                let t = |n: &String, c: &String| (n.clone(), c.clone());
                k.pending.extend(
                    scan.snapshots
                        .iter()
                        .filter(|s| s.changed)
                        .map(|s| Change::Hash(t(&s.node, &s.config), s.hash.clone())),
                );
                k.pending.extend(
                    scan.unread_new_targets
                        .iter()
                        .map(|(n, c)| Change::New(t(n, c))),
                );
                k.pending.extend(
                    scan.inputs
                        .iter()
                        .map(|((n, c), i)| Change::Input(t(n, c), i.clone())),
                );
            }
            _ => self.kept = None,
        }
        Ok(())
    }

    fn enqueue(&mut self, messages: &[Message], now: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, e))?;
        insert_outbox(&tx, messages, now).map_err(|e| err(&path, e))?;
        tx.commit().map_err(|e| err(&path, e))
    }

    fn outbox_heads(&mut self) -> Result<Vec<OutboxRow>, StoreError> {
        // The oldest pending item of each sink: a sink delivers in order, so its head blocks the rest.
        self.outbox_query(
            "SELECT id, msg_id, sink, payload, status, attempts, next_attempt_at, last_error, created_at FROM outbox \
             WHERE id IN (SELECT MIN(id) FROM outbox WHERE status = 'pending' GROUP BY sink) ORDER BY id",
        )
    }

    fn outbox_list(&mut self) -> Result<Vec<OutboxRow>, StoreError> {
        self.outbox_query(
            "SELECT id, msg_id, sink, payload, status, attempts, next_attempt_at, last_error, created_at FROM outbox \
             WHERE status != 'sent' ORDER BY id",
        )
    }

    fn outbox_update(&mut self, id: i64, update: &OutboxUpdate) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |x| err(&path, x);
        let tx = self.conn.transaction().map_err(e)?;
        match update {
            OutboxUpdate::Sent { at, ticket } => {
                tx.execute("UPDATE outbox SET status = 'sent', done_at = ?2, last_error = NULL WHERE id = ?1", params![id, at])
                    .map_err(e)?;
                if let Some((sink, key, ext)) = ticket {
                    tx.execute(
                        "INSERT INTO tickets (sink, key, external_id) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (sink, key) DO UPDATE SET external_id = excluded.external_id",
                        params![sink, key, ext],
                    )
                    .map_err(e)?;
                }
            }
            OutboxUpdate::Attempt { at } => {
                tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1 AND status = 'pending'",
                    params![
                        id,
                        format!(
                            "delivery started at {at}, outcome not recorded (plumb stopped?); it will be sent again"
                        )
                    ],
                )
                .map_err(e)?;
            }
            OutboxUpdate::Retry {
                attempts,
                next_at,
                error,
            } => {
                tx.execute(
                    "UPDATE outbox SET attempts = ?2, next_attempt_at = ?3, last_error = ?4 WHERE id = ?1",
                    params![id, attempts, next_at, error],
                )
                .map_err(e)?;
            }
            OutboxUpdate::Dead { at, error } => {
                tx.execute(
                    "UPDATE outbox SET status = 'dead', done_at = ?2, last_error = ?3 WHERE id = ?1",
                    params![id, at, error],
                )
                .map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    fn ticket_id(&mut self, sink: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT external_id FROM tickets WHERE sink = ?1 AND key = ?2",
                params![sink, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.e(e))
    }

    fn sink_health(&mut self, sink: &str) -> Result<(Option<String>, bool), StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT failing_since, alerted FROM sink_health WHERE sink = ?1",
                params![sink],
                |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, bool>(1)?)),
            )
            .optional()
            .map_err(|e| self.e(e))?
            .unwrap_or((None, false)))
    }

    fn set_sink_health(
        &mut self,
        sink: &str,
        failing_since: Option<&str>,
        alerted: bool,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO sink_health (sink, failing_since, alerted) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (sink) DO UPDATE SET failing_since = excluded.failing_since, alerted = excluded.alerted",
                params![sink, failing_since, alerted],
            )
            .map_err(|e| self.e(e))?;
        Ok(())
    }

    fn findings(&mut self, filter: &FindingFilter) -> Result<Vec<Record>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT record FROM findings WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR kind = ?2) \
                 AND (?3 IS NULL OR node = ?3) AND (?4 IS NULL OR config = ?4) ORDER BY node, config, fingerprint",
            )
            .map_err(|e| err(&self.path, e))?;
        let rows = st
            .query_map(
                params![filter.state, filter.kind, filter.node, filter.config],
                |r| r.get::<_, String>(0),
            )
            .map_err(|e| err(&self.path, e))?;
        let mut out = Vec::new();
        for r in rows {
            let text = r.map_err(|e| err(&self.path, e))?;
            out.push(serde_json::from_str(&text).map_err(json_err)?);
        }
        Ok(out)
    }

    fn history(
        &mut self,
        node: &str,
        config: Option<&str>,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT h.node, h.config, h.at, h.scan_id, h.hash, s.content, t.segments FROM history h \
                 LEFT JOIN snapshots s ON s.hash = h.hash \
                 LEFT JOIN snapshot_templates t ON t.hash = s.template \
                 WHERE h.node = ?1 AND (?2 IS NULL OR h.config = ?2) ORDER BY h.config, h.id",
            )
            .map_err(|e| err(&self.path, e))?;
        let rows = st
            .query_map(params![node, config], |r| {
                let entry = HistoryEntry {
                    node: r.get(0)?,
                    config: r.get(1)?,
                    at: r.get(2)?,
                    scan_id: r.get(3)?,
                    hash: r.get(4)?,
                    content: r.get(5)?,
                };
                Ok((entry, r.get::<_, Option<String>>(6)?))
            })
            .map_err(|e| err(&self.path, e))?;
        let mut out = Vec::new();
        for row in rows {
            let (mut entry, segments) = row.map_err(|e| err(&self.path, e))?;
            if let Some(content) = entry.content.take() {
                entry.content = Some(stored_text(content, segments).map_err(|m| {
                    StoreError::Corrupt(format!(
                        "{}: snapshot {}: {m}",
                        self.path.display(),
                        entry.hash
                    ))
                })?);
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn ack(&mut self, ack: &Ack) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, e))?;
        tx.execute(
            "UPDATE acks SET ended_at = ?2 WHERE fingerprint = ?1 AND ended_at IS NULL",
            params![ack.fingerprint, ack.created_at],
        )
        .map_err(|e| err(&path, e))?;
        tx.execute(
            "INSERT INTO acks (fingerprint, created_at, until, record) VALUES (?1, ?2, ?3, ?4)",
            params![
                ack.fingerprint,
                ack.created_at,
                ack.until,
                serde_json::to_string(ack).map_err(json_err)?
            ],
        )
        .map_err(|e| err(&path, e))?;
        tx.commit().map_err(|e| err(&path, e))
    }

    fn unack(&mut self, fingerprint: &str, now: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE acks SET ended_at = ?2 WHERE fingerprint = ?1 AND ended_at IS NULL",
                params![fingerprint, now],
            )
            .map_err(|e| self.e(e))?;
        Ok(n > 0)
    }

    fn acks(&mut self) -> Result<Vec<Ack>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT record FROM acks WHERE ended_at IS NULL ORDER BY created_at")
            .map_err(|e| err(&self.path, e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| err(&self.path, e))?;
        let mut out = Vec::new();
        for r in rows {
            let text = r.map_err(|e| err(&self.path, e))?;
            out.push(serde_json::from_str(&text).map_err(json_err)?);
        }
        Ok(out)
    }

    fn prune(&mut self, before: &str) -> Result<Pruned, StoreError> {
        let path = self.path.clone();
        let e = |x| err(&path, x);
        let tx = self.conn.transaction().map_err(e)?;
        let mut p = Pruned {
            scans: tx
                .execute("DELETE FROM scans WHERE started_at < ?1", params![before])
                .map_err(e)?,
            ..Default::default()
        };
        // History: old entries go, but each target keeps its latest entry.
        p.history = tx
            .execute(
                "DELETE FROM history WHERE at < ?1 AND id NOT IN (SELECT MAX(id) FROM history GROUP BY node, config)",
                params![before],
            )
            .map_err(e)?;
        // Resolved findings that resolved before the cut-off go (a finding of a node unread for long resolves with
        // an old `last_seen`: it is aged from its resolution); live ones (any other state) always stay.
        p.findings = tx
            .execute(
                "DELETE FROM findings WHERE state = 'resolved' \
                 AND COALESCE(json_extract(record, '$.resolved_at'), last_seen) < ?1",
                params![before],
            )
            .map_err(e)?;
        p.acks = tx
            .execute(
                "DELETE FROM acks WHERE ended_at IS NOT NULL AND ended_at < ?1",
                params![before],
            )
            .map_err(e)?;
        // Snapshots nothing points to any more: no history entry and no target's current hash. Only old ones: a
        // scan running in another process may have spooled contents its commit has yet to point to.
        p.snapshots = tx
            .execute(
                "DELETE FROM snapshots WHERE first_seen < ?1 AND hash NOT IN (SELECT hash FROM history) \
                 AND hash NOT IN (SELECT hash FROM targets WHERE hash IS NOT NULL)",
                params![before],
            )
            .map_err(e)?;
        // Split baseline texts no snapshot fills any more (same age rule as snapshots).
        tx.execute(
            "DELETE FROM snapshot_templates WHERE first_seen < ?1 AND hash NOT IN \
             (SELECT template FROM snapshots WHERE template IS NOT NULL)",
            params![before],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Finding, Kind, Severity, State};
    use crate::store::Snapshot;

    fn record(fp_path: &str, state: State, last_seen: &str) -> Record {
        let mut f = Finding::observed(
            Kind::Drift,
            Severity::Medium,
            "n1",
            "c",
            fp_path.into(),
            fp_path,
            "m".into(),
            last_seen,
        );
        f.state = state;
        Record {
            finding: f,
            base_kind: Kind::Drift,
            present: state != State::Resolved,
            since: last_seen.into(),
            scans_seen: 1,
            resolved_at: None,
            changes: vec![],
            flapping_since: None,
        }
    }

    fn commit(
        store: &mut SqliteStore,
        id: &str,
        at: &str,
        snapshots: Vec<Snapshot>,
        records: Vec<Record>,
    ) {
        store
            .commit(&ScanCommit {
                scan_id: id.into(),
                started_at: at.into(),
                finished_at: at.into(),
                snapshots,
                records,
                ..Default::default()
            })
            .unwrap();
    }

    fn snap(hash: &str, content: Option<&str>) -> Snapshot {
        Snapshot {
            node: "n1".into(),
            config: "c".into(),
            hash: hash.into(),
            content: content.map(|c| super::super::Content::Text(c.to_string())),
            changed: content.is_some(),
        }
    }

    #[test]
    fn filled_snapshots_read_back_whole_and_their_template_is_pruned_with_them() {
        use super::super::{Content, SlotText};
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let template = std::sync::Arc::new(SlotText::new(vec![
            "{\n  \"name\": ".into(),
            ",\n  \"port\": 80\n}\n".into(),
        ]));
        let filled = |node: &str, hash: &str, value: &str| Snapshot {
            node: node.into(),
            config: "c".into(),
            hash: hash.into(),
            content: Some(Content::Filled {
                template: template.clone(),
                slots: vec![serde_json::to_string(value).unwrap()],
            }),
            changed: true,
        };
        // One through the spool, one through the commit: the template is stored once.
        let spool = s
            .spool("2026-01-01T00:00:00Z")
            .expect("a file store spools");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let Some(c1) = filled("n1", "h1", "n1").content else {
            unreachable!()
        };
        rt.block_on(spool.put("h1".into(), c1))
            .expect("writer alive");
        let out = spool.finish();
        assert_eq!((out.written, out.error.is_none()), (1, true));
        let mut first = filled("n1", "h1", "n1");
        first.content = None;
        commit(
            &mut s,
            "s1",
            "2026-01-01T00:00:00Z",
            vec![first, filled("n2", "h2", "n\"2")],
            vec![],
        );
        let count = |s: &SqliteStore, table: &str| -> i64 {
            s.conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&s, "snapshot_templates"), 1);
        let h1 = s.history("n1", None).unwrap();
        assert_eq!(
            h1[0].content.as_deref(),
            Some("{\n  \"name\": \"n1\",\n  \"port\": 80\n}\n")
        );
        let h2 = s.history("n2", None).unwrap();
        assert_eq!(
            h2[0].content.as_deref(),
            Some("{\n  \"name\": \"n\\\"2\",\n  \"port\": 80\n}\n")
        );
        let size: i64 = s
            .conn
            .query_row("SELECT size FROM snapshots WHERE hash = 'h2'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(size as usize, h2[0].content.as_ref().map_or(0, String::len));
        // Both targets move on to whole texts; once the old snapshots are pruned, so is their template.
        commit(
            &mut s,
            "s2",
            "2026-01-02T00:00:00Z",
            vec![snap("h3", Some("x"))],
            vec![],
        );
        let mut other = snap("h4", Some("y"));
        other.node = "n2".into();
        commit(&mut s, "s3", "2026-01-02T00:00:00Z", vec![other], vec![]);
        s.conn
            .execute("DELETE FROM history WHERE hash IN ('h1', 'h2')", [])
            .unwrap();
        s.prune("2026-02-01T00:00:00Z").unwrap();
        assert_eq!(count(&s, "snapshot_templates"), 0);
        assert_eq!(s.integrity_check().unwrap(), "ok");
        // A damaged values row is an error naming the snapshot, not a wrong text.
        commit(
            &mut s,
            "s4",
            "2026-03-01T00:00:00Z",
            vec![filled("n5", "h5", "n5")],
            vec![],
        );
        s.conn
            .execute("UPDATE snapshots SET content = '[]' WHERE hash = 'h5'", [])
            .unwrap();
        let e = s.history("n5", None).expect_err("values do not fit");
        assert!(e.to_string().contains("snapshot h5"), "{e}");
    }

    #[test]
    fn migrates_once_and_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.db");
        let key = {
            let mut s = SqliteStore::open(&p).unwrap();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            s.secret_key().unwrap()
        };
        let mut s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.secret_key().unwrap(), key);
        assert_ne!(key, [0u8; 32]);
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        drop(SqliteStore::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        c.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(c);
        assert!(matches!(
            SqliteStore::open(&p),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn snapshots_history_and_findings_round_trip() {
        let mut s = SqliteStore::in_memory().unwrap();
        let t = ("n1".to_string(), "c".to_string());
        assert!(s.load(std::slice::from_ref(&t)).unwrap().first_time(&t));
        commit(
            &mut s,
            "s1",
            "2026-01-01T00:00:00Z",
            vec![snap("h1", Some("a"))],
            vec![record("$.a", State::New, "2026-01-01T00:00:00Z")],
        );
        commit(
            &mut s,
            "s2",
            "2026-01-02T00:00:00Z",
            vec![snap("h1", None)],
            vec![],
        );
        commit(
            &mut s,
            "s3",
            "2026-01-03T00:00:00Z",
            vec![snap("h2", Some("b"))],
            vec![],
        );
        let mem = s.load(std::slice::from_ref(&t)).unwrap();
        assert_eq!(mem.targets[&t].hash, Some("h2".to_string()));
        assert!(!mem.first_time(&t));
        assert_eq!(mem.records.len(), 1);
        let h = s.history("n1", None).unwrap();
        assert_eq!(
            h.iter()
                .map(|e| (e.hash.as_str(), e.content.as_deref()))
                .collect::<Vec<_>>(),
            vec![("h1", Some("a")), ("h2", Some("b"))],
            "an unchanged snapshot is not rewritten"
        );
        let f = s
            .findings(&FindingFilter {
                state: Some("new".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(f.len(), 1);
        assert!(
            s.findings(&FindingFilter {
                kind: Some("violation".into()),
                ..Default::default()
            })
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn a_commit_writes_hashes_and_input_keys_together_or_apart_and_refuses_a_snapshot_not_stored() {
        use crate::classify::InputMemo;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut s = SqliteStore::open(&path).unwrap();
        let target = |n: &str| (n.to_string(), "c".to_string());
        let memo = |byte: u8, etag: Option<&str>, unified: &str| InputMemo {
            body: [byte; 32],
            context: [7; 32],
            validators: crate::collect::Validators {
                etag: etag.map(str::to_string),
                last_modified: None,
            },
            unified: unified.into(),
        };
        let at = |n: &str, hash: &str, content: Option<&str>| Snapshot {
            node: n.into(),
            ..snap(hash, content)
        };
        // n1..n3 new with their input keys (written with their hashes), n4's key given out of order (written on
        // its own, after its row), n5 read with no key.
        let first = ScanCommit {
            scan_id: "s1".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:00Z".into(),
            snapshots: vec![
                at("n1", "h1", Some("a")),
                at("n2", "h2", Some("b")),
                at("n3", "h3", Some("c")),
                at("n4", "h4", Some("d")),
                at("n5", "h5", Some("e")),
            ],
            inputs: vec![
                (target("n4"), Some(memo(4, Some("\"e4\""), ""))),
                (target("n1"), Some(memo(1, None, "-a\n+b\n"))),
                (target("n2"), Some(memo(2, Some("\"e2\""), ""))),
                (target("n3"), None),
            ],
            ..Default::default()
        };
        s.commit(&first).unwrap();
        let all: Vec<_> = ["n1", "n2", "n3", "n4", "n5"].map(target).to_vec();
        let fresh = |p: &Path| SqliteStore::open(p).unwrap().load(&all).unwrap();
        let m = fresh(&path);
        assert_eq!(m.targets[&target("n1")].hash.as_deref(), Some("h1"));
        assert_eq!(
            m.targets[&target("n1")].input,
            Some(memo(1, None, "-a\n+b\n"))
        );
        assert_eq!(
            m.targets[&target("n2")].input,
            Some(memo(2, Some("\"e2\""), ""))
        );
        assert_eq!(m.targets[&target("n3")].input, None);
        assert_eq!(
            m.targets[&target("n4")].input,
            Some(memo(4, Some("\"e4\""), ""))
        );
        assert_eq!(m.targets[&target("n5")].hash.as_deref(), Some("h5"));
        // A warm scan: only n2's validators change (no snapshot), n1's key is forgotten with a new hash.
        s.commit(&ScanCommit {
            scan_id: "s2".into(),
            started_at: "2026-01-02T00:00:00Z".into(),
            finished_at: "2026-01-02T00:00:00Z".into(),
            snapshots: vec![at("n1", "h6", Some("f")), at("n2", "h2", None)],
            inputs: vec![
                (target("n1"), None),
                (target("n2"), Some(memo(2, Some("\"e3\""), ""))),
            ],
            ..Default::default()
        })
        .unwrap();
        let m = fresh(&path);
        assert_eq!(m.targets[&target("n1")].hash.as_deref(), Some("h6"));
        assert_eq!(m.targets[&target("n1")].input, None);
        assert_eq!(m.targets[&target("n2")].hash.as_deref(), Some("h2"));
        assert_eq!(
            m.targets[&target("n2")].input,
            Some(memo(2, Some("\"e3\""), ""))
        );
        // What this connection keeps agrees with the file.
        assert_eq!(*s.load(&all).unwrap().targets, *m.targets);
        // Spooled snapshots (no content here) must be in the store: one that is not stops the whole commit.
        let spooled = |n: &str, hash: &str| Snapshot {
            changed: true,
            ..at(n, hash, None)
        };
        let bad = ScanCommit {
            scan_id: "s3".into(),
            started_at: "2026-01-03T00:00:00Z".into(),
            finished_at: "2026-01-03T00:00:00Z".into(),
            snapshots: vec![
                spooled("n3", "h1"),
                spooled("n4", "h1"),
                spooled("n5", "gone"),
            ],
            ..Default::default()
        };
        match s.commit(&bad) {
            Err(StoreError::Corrupt(m)) => {
                assert!(m.contains("snapshot gone of n5/c was not written"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let m = fresh(&path);
        assert_eq!(
            m.targets[&target("n3")].hash.as_deref(),
            Some("h3"),
            "nothing of it was written"
        );
        let scans: i64 = s
            .conn
            .query_row("SELECT count(*) FROM scans", [], |r| r.get(0))
            .unwrap();
        assert_eq!(scans, 2);
        // The same hashes, all stored (one twice): recorded.
        s.commit(&ScanCommit {
            scan_id: "s4".into(),
            snapshots: vec![
                spooled("n3", "h1"),
                spooled("n4", "h1"),
                spooled("n5", "h2"),
            ],
            ..bad
        })
        .unwrap();
        let m = fresh(&path);
        assert_eq!(m.targets[&target("n4")].hash.as_deref(), Some("h1"));
        assert_eq!(m.targets[&target("n5")].hash.as_deref(), Some("h2"));
    }

    #[test]
    fn the_kept_targets_table_follows_this_connections_commits_and_rereads_after_anothers() {
        use crate::classify::InputMemo;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (mut a, mut b) = (
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        );
        let t = ("n1".to_string(), "c".to_string());
        let u = ("n2".to_string(), "c".to_string());
        let both = [t.clone(), u.clone()];
        let memo = |byte: u8| InputMemo {
            body: [byte; 32],
            context: [7; 32],
            validators: Default::default(),
            unified: String::new(),
        };
        let write = |s: &mut SqliteStore, id: &str, hash: &str, input: Option<InputMemo>| {
            s.commit(&ScanCommit {
                scan_id: id.into(),
                started_at: "2026-01-01T00:00:00Z".into(),
                finished_at: "2026-01-01T00:00:00Z".into(),
                snapshots: vec![snap(hash, Some(hash))],
                unread_new_targets: vec![u.clone()],
                inputs: vec![(t.clone(), input)],
                ..Default::default()
            })
            .unwrap();
        };
        assert!(a.load(&both).unwrap().targets.is_empty());
        write(&mut a, "s1", "h1", Some(memo(1)));
        // Its own commit: replayed on the kept copy, which the next load shares.
        let m = a.load(&both).unwrap();
        assert!(a.kept.as_ref().is_some_and(|k| k.pending.is_empty()));
        assert_eq!(m.targets[&t].hash, Some("h1".into()));
        assert_eq!(m.targets[&u].hash, None, "an unread new target is known");
        assert_eq!(m.targets[&t].input, Some(memo(1)));
        let kept = a.kept.as_ref().map(|k| k.targets.clone()).unwrap();
        assert!(std::sync::Arc::ptr_eq(&kept, &m.targets));
        drop((m, kept));
        // Another connection's commit: read again.
        write(&mut b, "s2", "h2", Some(memo(2)));
        let m = a.load(&both).unwrap();
        assert_eq!(m.targets[&t].hash, Some("h2".into()));
        assert_eq!(m.targets[&t].input, Some(memo(2)));
        drop(m);
        // Its own commit that forgets an input key, while the last scan's copy is still held: that copy is left as
        // it was, the next load has the change.
        let held = a.load(&both).unwrap();
        write(&mut a, "s3", "h3", None);
        let m = a.load(&both).unwrap();
        assert_eq!(m.targets[&t].hash, Some("h3".into()));
        assert_eq!(m.targets[&t].input, None);
        assert_eq!(held.targets[&t].hash, Some("h2".into()));
        assert_eq!(held.targets[&t].input, Some(memo(2)));
        // The two agree with a fresh read of the file.
        let fresh = SqliteStore::open(&path).unwrap().load(&both).unwrap();
        assert_eq!(*fresh.targets, *m.targets);
        // A commit of another connection between a load and this connection's commit: the kept copy is dropped.
        drop((m, held));
        let _ = a.load(&both).unwrap();
        write(&mut b, "s4", "h4", Some(memo(4)));
        write(&mut a, "s5", "h5", Some(memo(5)));
        assert!(a.kept.is_none());
        let m = a.load(&both).unwrap();
        assert_eq!(m.targets[&t].hash, Some("h5".into()));
        assert_eq!(m.targets[&t].input, Some(memo(5)));
        // Handed to a new connection to the same file (as the daemon does, one connection per scan): shared while
        // current, read again after another connection's commit; never taken by another file.
        let mut d = SqliteStore::open(&path).unwrap();
        d.keep(a.take_kept());
        let m = d.load(&both).unwrap();
        let kept = d.kept.as_ref().map(|k| k.targets.clone()).unwrap();
        assert!(std::sync::Arc::ptr_eq(&kept, &m.targets));
        assert_eq!(m.targets[&t].hash, Some("h5".into()));
        drop((m, kept));
        write(&mut d, "s6", "h6", Some(memo(6)));
        let mut e = SqliteStore::open(&path).unwrap();
        e.keep(d.take_kept());
        write(&mut b, "s7", "h7", Some(memo(7)));
        let m = e.load(&both).unwrap();
        assert_eq!(m.targets[&t].hash, Some("h7".into()));
        assert_eq!(m.targets[&t].input, Some(memo(7)));
        let other = dir.path().join("other.db");
        let mut f = SqliteStore::open(&other).unwrap();
        f.keep(e.take_kept());
        assert!(f.kept.is_none(), "kept for another file");
        // Only some targets wanted, read from the file: those rows alone, and nothing kept.
        let mut c = SqliteStore::open(&path).unwrap();
        let only = c.load(std::slice::from_ref(&u)).unwrap();
        assert_eq!(only.targets.len(), 1);
        assert!(c.kept.is_none());
        assert_eq!(c.load(&both).unwrap().targets.len(), 2);
        assert!(c.kept.is_some());
    }

    #[test]
    fn baseline_versions_are_superseded() {
        let mut s = SqliteStore::in_memory().unwrap();
        let v = |hash: &str| BaselineVersion {
            file: "baselines/c/default.json".into(),
            config: "c".into(),
            hash: hash.into(),
            content: format!("{{\"v\":\"{hash}\"}}"),
            text: false,
            first_seen: String::new(),
            superseded_at: None,
        };
        s.record_baselines(&[v("a")], "t1").unwrap();
        let all = s.record_baselines(&[v("b")], "t2").unwrap();
        let a = all.iter().find(|x| x.hash == "a").unwrap();
        let b = all.iter().find(|x| x.hash == "b").unwrap();
        assert_eq!(a.superseded_at.as_deref(), Some("t2"));
        assert_eq!(b.superseded_at, None);
        // Going back to `a` makes `b` superseded and `a` current again.
        let all = s.record_baselines(&[v("a")], "t3").unwrap();
        assert_eq!(
            all.iter().find(|x| x.hash == "a").unwrap().superseded_at,
            None
        );
        assert_eq!(
            all.iter()
                .find(|x| x.hash == "b")
                .unwrap()
                .superseded_at
                .as_deref(),
            Some("t3")
        );
    }

    #[test]
    fn acks_end() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = Ack {
            fingerprint: "f".into(),
            owner: "o".into(),
            reason: "r".into(),
            until: "2030-01-01T00:00:00Z".into(),
            value_only: false,
            value: serde_json::Value::Null,
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        s.ack(&a).unwrap();
        assert_eq!(s.acks().unwrap(), vec![a.clone()]);
        assert!(s.unack("f", "2026-01-02T00:00:00Z").unwrap());
        assert!(!s.unack("f", "2026-01-02T00:00:00Z").unwrap());
        assert!(s.acks().unwrap().is_empty());
    }

    #[test]
    fn pruning_keeps_what_live_findings_and_targets_point_to() {
        let mut s = SqliteStore::in_memory().unwrap();
        commit(
            &mut s,
            "s1",
            "2026-01-01T00:00:00Z",
            vec![snap("h1", Some("a"))],
            vec![
                record("$.old", State::Resolved, "2026-01-01T00:00:00Z"),
                record("$.live", State::Ongoing, "2026-01-01T00:00:00Z"),
            ],
        );
        commit(
            &mut s,
            "s2",
            "2026-01-02T00:00:00Z",
            vec![snap("h2", Some("b"))],
            vec![],
        );
        commit(
            &mut s,
            "s3",
            "2026-03-01T00:00:00Z",
            vec![snap("h2", None)],
            vec![],
        );
        let p = s.prune("2026-02-01T00:00:00Z").unwrap();
        assert_eq!(
            p,
            Pruned {
                scans: 2,
                history: 1,
                snapshots: 1,
                findings: 1,
                acks: 0
            }
        );
        let left: Vec<String> = s
            .findings(&FindingFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.finding.path)
            .collect();
        assert_eq!(
            left,
            vec!["$.live".to_string()],
            "a live finding is never pruned"
        );
        let h = s.history("n1", Some("c")).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(
            h[0].content.as_deref(),
            Some("b"),
            "the latest state keeps its snapshot"
        );
    }
}
