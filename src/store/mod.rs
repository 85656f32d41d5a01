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
#[derive(Debug)]
pub struct SlotText {
    /// blake3 of the segments, as stored.
    pub hash: String,
    pub segments: Vec<String>,
    /// Chaining values of blake3 subtrees that lie within one segment of a filled text (see
    /// [`SlotText::hash_filled`]), at most [`SlotText::KEPT_SUBTREES`].
    subtrees: std::sync::Mutex<HashMap<Subtree, blake3::hazmat::ChainingValue>>,
}

/// A blake3 subtree of a filled text inside one segment: (segment, where it starts in the segment, where it starts in
/// the text, its length). Its chaining value depends on nothing else: its bytes are the segment's, and its place in
/// the text fixes its position in the tree.
type Subtree = (usize, u64, u64, u64);

impl Clone for SlotText {
    fn clone(&self) -> SlotText {
        SlotText {
            hash: self.hash.clone(),
            segments: self.segments.clone(),
            subtrees: Default::default(),
        }
    }
}

impl PartialEq for SlotText {
    fn eq(&self, other: &SlotText) -> bool {
        self.hash == other.hash && self.segments == other.segments
    }
}

impl SlotText {
    /// The most subtree chaining values a text keeps: each distinct total length of the slots before a segment
    /// needs a few dozen, and a fleet has few such lengths.
    const KEPT_SUBTREES: usize = 16 * 1024;
    /// Texts shorter than this are hashed straight through.
    const TREE_FROM: usize = 8 * blake3::CHUNK_LEN;

    pub fn new(segments: Vec<String>) -> SlotText {
        let mut h = blake3::Hasher::new();
        for s in &segments {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        SlotText {
            hash: h.finalize().to_hex().to_string(),
            segments,
            subtrees: Default::default(),
        }
    }

    /// blake3 of the whole text with `slots` filled in (as of [`SlotText::fill`], without building it); `None` when
    /// their number is not the number of slots.
    ///
    /// A fleet's filled texts differ only around their slots, so the hash is put together from blake3's tree: a
    /// subtree that lies within one segment has the same chaining value for every fill whose slots before it are as
    /// long in total, and is hashed once and kept; only the chunks that hold slot text, and the parent nodes, are
    /// hashed per fill. (A cold scan of 10,000 nodes hashes about a gigabyte of canonical text otherwise.)
    pub fn hash_filled(&self, slots: &[impl AsRef<str>]) -> Option<blake3::Hash> {
        let parts: Vec<&str> = interleave(&self.segments, slots)?.collect();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total < SlotText::TREE_FROM {
            let mut h = blake3::Hasher::new();
            for p in &parts {
                h.update(p.as_bytes());
            }
            return Some(h.finalize());
        }
        // Where each part starts in the text; parts at even places are segments (segment `i / 2`).
        let mut starts = Vec::with_capacity(parts.len() + 1);
        let mut at = 0u64;
        for p in &parts {
            starts.push(at);
            at += p.len() as u64;
        }
        starts.push(at);
        let filled = Filled {
            parts: &parts,
            starts: &starts,
            kept: &self.subtrees,
        };
        let len = total as u64;
        let left = blake3::hazmat::left_subtree_len(len);
        let (l, r) = (filled.subtree(0, left), filled.subtree(left, len - left));
        Some(blake3::hazmat::merge_subtrees_root(
            &l,
            &r,
            blake3::hazmat::Mode::Hash,
        ))
    }

    /// The whole text with `slots` filled in; `None` when their number is not the number of slots.
    pub fn fill(&self, slots: &[impl AsRef<str>]) -> Option<String> {
        fill(&self.segments, slots)
    }
}

/// A filled text as [`SlotText::hash_filled`] walks blake3's tree over it.
struct Filled<'a> {
    parts: &'a [&'a str],
    /// Where each part starts in the text, and the text's length last.
    starts: &'a [u64],
    kept: &'a std::sync::Mutex<HashMap<Subtree, blake3::hazmat::ChainingValue>>,
}

impl Filled<'_> {
    /// The chaining value of the (non-root) subtree `[start, start + len)`, which blake3's tree has (the caller
    /// splits with `left_subtree_len`).
    fn subtree(&self, start: u64, len: u64) -> blake3::hazmat::ChainingValue {
        use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_non_root};
        let end = start + len;
        // The part the subtree starts in.
        let i = self.starts.partition_point(|&s| s <= start) - 1;
        if i % 2 == 0 && end <= self.starts[i + 1] {
            // Within segment `i / 2`: kept, or hashed once and kept.
            let from = start - self.starts[i];
            let key = (i / 2, from, start, len);
            let kept = |k: &Subtree| {
                self.kept
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get(k)
                    .copied()
            };
            if let Some(cv) = kept(&key) {
                return cv;
            }
            let bytes = &self.parts[i].as_bytes()[from as usize..(from + len) as usize];
            let cv = blake3::Hasher::new()
                .set_input_offset(start)
                .update(bytes)
                .finalize_non_root();
            let mut map = self
                .kept
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if map.len() < SlotText::KEPT_SUBTREES {
                map.insert(key, cv);
            }
            return cv;
        }
        if len <= blake3::CHUNK_LEN as u64 {
            // A chunk that holds slot text (or spans parts): hashed from its pieces.
            let mut h = blake3::Hasher::new();
            h.set_input_offset(start);
            let mut j = i;
            while j < self.parts.len() && self.starts[j] < end {
                let (a, b) = (
                    start.max(self.starts[j]) - self.starts[j],
                    end.min(self.starts[j + 1]) - self.starts[j],
                );
                h.update(&self.parts[j].as_bytes()[a as usize..b as usize]);
                j += 1;
            }
            return h.finalize_non_root();
        }
        let left = left_subtree_len(len);
        merge_subtrees_non_root(
            &self.subtree(start, left),
            &self.subtree(start + left, len - left),
            Mode::Hash,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A segment or slot of `len` bytes, its letters from `seed`.
    fn text(len: usize, seed: usize) -> String {
        (0..len)
            .map(|i| char::from(b'a' + ((i * 7 + seed * 13) % 26) as u8))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

        /// However its slots fall (at and around chunk boundaries, texts on both sides of the size the tree is used
        /// from), and whatever earlier fills of the same text kept, the hash is blake3 of the filled text.
        #[test]
        fn a_filled_texts_hash_is_blake3_of_the_text(
            segments in prop::collection::vec(
                (prop::sample::select(vec![0usize, 1, 7, 1023, 1024, 1025, 2048, 3000, 4096, 5000, 9000, 40_000]),
                 0usize..3),
                1..5,
            ),
            fills in prop::collection::vec(prop::collection::vec(0usize..300, 4), 1..6),
        ) {
            let segments: Vec<String> = segments
                .iter()
                .enumerate()
                .map(|(i, (len, extra))| text(len + extra, i))
                .collect();
            let gaps = segments.len() - 1;
            let t = SlotText::new(segments);
            for (f, lens) in fills.iter().enumerate() {
                let slots: Vec<String> = lens[..gaps].iter().map(|&len| text(len, f + 100)).collect();
                let whole = t.fill(&slots).expect("as many slots as gaps");
                prop_assert_eq!(t.hash_filled(&slots), Some(blake3::hash(whole.as_bytes())), "fill {}", f);
            }
        }
    }

    #[test]
    fn a_filled_text_keeps_the_subtrees_inside_its_segments() {
        // The wrong number of slots is no text.
        let t = SlotText::new(vec!["a".repeat(20_000), "b".into()]);
        assert_eq!(t.hash_filled(&[] as &[&str]), None);
        // A text far larger than a subtree, its slot near the start (a baseline with the node's name first): the
        // same hash as blake3, and fills with names as long as another's reuse what it kept.
        let t = SlotText::new(vec!["{\"name\": ".into(), ", ".repeat(100_000)]);
        let kept = |t: &SlotText| t.subtrees.lock().unwrap().len();
        let mut after = Vec::new();
        for name in ["\"n1\"", "\"n2\"", "\"node-17\""] {
            let whole = t.fill(&[name]).unwrap();
            assert_eq!(t.hash_filled(&[name]), Some(blake3::hash(whole.as_bytes())));
            after.push(kept(&t));
        }
        assert!(after[0] > 0 && after[0] < 64, "{after:?}");
        assert_eq!(
            after[1], after[0],
            "a name as long as the last one adds nothing"
        );
        assert!(
            after[2] > after[1],
            "a longer one moves the segment: {after:?}"
        );
        // Values longer by exactly two chunks: the segment after them starts two chunks later, its bytes fall into
        // chunks the same way, and only the subtrees' places in the text tell them apart.
        for name in ["x".to_string(), "x".repeat(1 + 2 * blake3::CHUNK_LEN)] {
            let whole = t.fill(&[&name]).unwrap();
            assert_eq!(
                t.hash_filled(&[&name]),
                Some(blake3::hash(whole.as_bytes()))
            );
        }
    }
}
