//! The store: plumb's memory of scans, snapshots, baseline versions, findings and acknowledgements, behind the
//! [`Store`] trait; [`sqlite::SqliteStore`] is the embedded implementation (WAL, versioned migrations).
//!
//! A scan's results are written in one transaction: a scan killed at any moment leaves the previous state intact.

pub mod spool;
pub mod sqlite;

use crate::lifecycle::{Ack, Record};
use std::collections::HashMap;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Sqlite { path: String, message: String },
    #[error("store {path}: schema version {found} is newer than this plumb understands ({known})")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("store: {0}")]
    Corrupt(String),
}

/// A (node, config) pair.
pub type Target = (String, String);

/// What the store remembers that a scan needs.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Records of every finding of the requested targets, any state.
    pub records: HashMap<String, Record>,
    /// What is remembered of each known target (its latest snapshot hash and input key), in one map so that a
    /// scan looks a target up once; shared with the scan, not copied.
    pub targets: std::sync::Arc<HashMap<Target, TargetMemory>>,
    /// Acknowledgements in force.
    pub acks: HashMap<String, Ack>,
    /// The notification log, by (route, sink, fingerprint).
    pub notify_log: HashMap<(String, String, String), crate::notify::plan::LogEntry>,
}

/// What the store remembers of one known target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TargetMemory {
    /// The latest snapshot hash (`None`: never read).
    pub hash: Option<String>,
    /// What produced the target's last findings (the warm-scan key), with the node's validators.
    pub input: Option<crate::classify::InputMemo>,
}

impl Memory {
    /// Whether `target` was never scanned before.
    pub fn first_time(&self, target: &Target) -> bool {
        !self.targets.contains_key(target)
    }
}

/// The text of a snapshot as it travels to the store: whole, or a baseline's canonical text with one node's values
/// filled in (a node that matches its baseline: the store keeps the baseline's text once and a few values per node).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Filled {
        template: std::sync::Arc<SlotText>,
        /// The JSON text of each slot (a quoted string), in order.
        slots: Vec<String>,
    },
}

/// A canonical text with slots: `segments[0] slot[0] segments[1] … slot[n-1] segments[n]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotText {
    /// blake3 of the segments, as stored.
    pub hash: String,
    pub segments: Vec<String>,
}

impl SlotText {
    pub fn new(segments: Vec<String>) -> SlotText {
        let mut h = blake3::Hasher::new();
        for s in &segments {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        SlotText {
            hash: h.finalize().to_hex().to_string(),
            segments,
        }
    }

    /// blake3 of the whole text with `slots` filled in (as of [`SlotText::fill`], without building it); `None` when
    /// their number is not the number of slots.
    pub fn hash_filled(&self, slots: &[impl AsRef<str>]) -> Option<blake3::Hash> {
        let mut h = blake3::Hasher::new();
        for part in interleave(&self.segments, slots)? {
            h.update(part.as_bytes());
        }
        Some(h.finalize())
    }

    /// The whole text with `slots` filled in; `None` when their number is not the number of slots.
    pub fn fill(&self, slots: &[impl AsRef<str>]) -> Option<String> {
        fill(&self.segments, slots)
    }
}

/// `segments[0] slots[0] segments[1] … segments[n]`, one part after another; `None` unless there is one segment
/// more than slots.
fn interleave<'a, S: AsRef<str>>(
    segments: &'a [String],
    slots: &'a [S],
) -> Option<impl Iterator<Item = &'a str> + Clone> {
    if slots.len() + 1 != segments.len() {
        return None;
    }
    let filled = segments
        .iter()
        .zip(slots)
        .flat_map(|(seg, slot)| [seg.as_str(), slot.as_ref()]);
    Some(filled.chain(segments.last().map(String::as_str)))
}

/// `segments` with `slots` filled in, as one text (see [`SlotText`]).
pub(crate) fn fill(segments: &[String], slots: &[impl AsRef<str>]) -> Option<String> {
    let parts = interleave(segments, slots)?;
    let mut out = String::with_capacity(parts.clone().map(str::len).sum());
    out.extend(parts);
    Some(out)
}

impl Content {
    /// The whole text.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Filled { template, slots } => template.fill(slots).unwrap_or_default(),
        }
    }

    /// The length of the whole text in bytes.
    pub fn len(&self) -> usize {
        match self {
            Content::Text(t) => t.len(),
            Content::Filled { template, slots } => {
                template.segments.iter().map(String::len).sum::<usize>()
                    + slots.iter().map(String::len).sum::<usize>()
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot to record: the redacted canonical text of one target's live content.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub node: String,
    pub config: String,
    pub hash: String,
    /// The content to write; `None` when it is unchanged since the last scan or already in the store (spooled).
    pub content: Option<Content>,
    /// The target's content differs from its last scan's: its current hash and history move on.
    pub changed: bool,
}

/// Everything one scan writes.
#[derive(Debug, Clone, Default)]
pub struct ScanCommit {
    pub scan_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub nodes_total: usize,
    pub nodes_read: usize,
    pub nodes_unreadable: usize,
    pub findings: usize,
    /// Snapshots of targets whose content changed (or that are new).
    pub snapshots: Vec<Snapshot>,
    /// Targets seen for the first time without being read.
    pub unread_new_targets: Vec<Target>,
    pub records: Vec<Record>,
    pub ended_acks: Vec<String>,
    /// Alerts caused by this scan, written in the same transaction.
    pub outbox: Vec<crate::notify::Message>,
    /// The notification log entries those alerts change.
    pub notify_log: Vec<crate::notify::plan::LogEntry>,
    /// Input keys to remember (`Some`) or forget (`None`), written with the findings they produced.
    pub inputs: Vec<(Target, Option<crate::classify::InputMemo>)>,
}

/// One outbox item.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub msg_id: String,
    pub sink: String,
    pub message: crate::notify::Message,
    /// `pending`, `sent` or `dead`.
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
    pub created_at: String,
}

/// What happened to an outbox item.
#[derive(Debug, Clone)]
pub enum OutboxUpdate {
    /// A delivery attempt is about to start: counted, and noted in `last_error` until its outcome replaces the
    /// note. Written before anything is sent, so an alert never goes out when the store cannot record it, and an
    /// attempt cut short (plumb killed) stays visible.
    Attempt { at: String },
    /// Delivered; tickets remember (sink, key, external id).
    Sent {
        at: String,
        ticket: Option<(String, String, String)>,
    },
    /// Try again at `next_at`.
    Retry {
        attempts: u32,
        next_at: String,
        error: String,
    },
    /// Given up: a dead letter.
    Dead { at: String, error: String },
}

/// One baseline file version.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineVersion {
    /// Path relative to plumb.toml's directory.
    pub file: String,
    pub config: String,
    pub hash: String,
    /// Canonical text of the parsed (unsubstituted) baseline.
    pub content: String,
    /// Whether the content is text lines (else canonical JSON).
    pub text: bool,
    pub first_seen: String,
    pub superseded_at: Option<String>,
}

/// Filters for `plumb findings`.
#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub node: Option<String>,
    pub config: Option<String>,
}

/// One entry of a target's history: when its content became this snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub node: String,
    pub config: String,
    pub at: String,
    pub scan_id: String,
    pub hash: String,
    pub content: Option<String>,
}

/// What pruning removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub scans: usize,
    pub history: usize,
    pub snapshots: usize,
    pub findings: usize,
    pub acks: usize,
}

/// plumb's memory. Implementations must make [`Store::commit`] atomic.
pub trait Store: Send {
    /// The secret key for redaction markers, created on first use; never printed.
    fn secret_key(&mut self) -> Result<[u8; 32], StoreError>;
    /// What a scan of `targets` needs to know.
    fn load(&mut self, targets: &[Target]) -> Result<Memory, StoreError>;
    /// Record the baseline files in force now; returns every version ever seen (with `superseded_at` set on those
    /// replaced by a newer one).
    fn record_baselines(
        &mut self,
        current: &[BaselineVersion],
        now: &str,
    ) -> Result<Vec<BaselineVersion>, StoreError>;
    /// Write one scan's results, all or nothing. A changed snapshot without content must already be in the store
    /// (written by the spool); if it is not, nothing is written and the error says so.
    fn commit(&mut self, scan: &ScanCommit) -> Result<(), StoreError>;
    /// A writer for snapshot contents while a scan runs (`first_seen`: the scan's start); `None` when this store
    /// has none (the commit then writes every content).
    fn spool(&mut self, _first_seen: &str) -> Option<spool::Spool> {
        None
    }
    /// Stored findings matching `filter`.
    fn findings(&mut self, filter: &FindingFilter) -> Result<Vec<Record>, StoreError>;
    /// The snapshot timeline of a node (and config), oldest first.
    fn history(
        &mut self,
        node: &str,
        config: Option<&str>,
    ) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Add or replace an acknowledgement.
    fn ack(&mut self, ack: &Ack) -> Result<(), StoreError>;
    /// End an acknowledgement now; false when there was none in force.
    fn unack(&mut self, fingerprint: &str, now: &str) -> Result<bool, StoreError>;
    /// Acknowledgements in force.
    fn acks(&mut self) -> Result<Vec<Ack>, StoreError>;
    /// Remove history older than `before`, never what a live finding or a target's latest state points to.
    fn prune(&mut self, before: &str) -> Result<Pruned, StoreError>;
    /// Add messages to the outbox outside a scan (self-alerts, `plumb alerts test`).
    fn enqueue(&mut self, messages: &[crate::notify::Message], now: &str)
    -> Result<(), StoreError>;
    /// The oldest pending item of every sink.
    fn outbox_heads(&mut self) -> Result<Vec<OutboxRow>, StoreError>;
    /// Pending items and dead letters.
    fn outbox_list(&mut self) -> Result<Vec<OutboxRow>, StoreError>;
    /// Record a delivery attempt's outcome.
    fn outbox_update(&mut self, id: i64, update: &OutboxUpdate) -> Result<(), StoreError>;
    /// The ticket id a sink has for a key.
    fn ticket_id(&mut self, sink: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Since when a sink fails (if it does), and whether that was alerted.
    fn sink_health(&mut self, sink: &str) -> Result<(Option<String>, bool), StoreError>;
    fn set_sink_health(
        &mut self,
        sink: &str,
        failing_since: Option<&str>,
        alerted: bool,
    ) -> Result<(), StoreError>;
}
