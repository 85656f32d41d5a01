//! The snapshot spool: snapshot contents stream to the store while a scan runs, so a fleet's documents are never
//! all held in memory at once.
//!
//! Contents are content-addressed (`hash → text`) and written in their own short transactions by one writer
//! thread; what the scan found (history, targets, findings) is still written in the scan's single commit, which
//! checks that every snapshot it points to is there. A crash between the two leaves only unreferenced contents,
//! which pruning removes. A write that fails hands its contents back, and the scan's commit writes them itself (and
//! reports the error if it fails again): nothing is dropped.

use super::{Content, StoreError};
use std::collections::HashMap;

/// At most this many contents wait in the channel (the memory bound: this many documents).
const QUEUE: usize = 128;
/// At most this many contents per transaction.
const BATCH: usize = 256;

/// A write of one batch of `(hash, content)` pairs, all or nothing.
pub type WriteBatch = Box<dyn FnMut(&[(String, Content)]) -> Result<(), StoreError> + Send>;

/// What the writer did.
#[derive(Debug, Default)]
pub struct SpoolOutcome {
    /// Contents written.
    pub written: usize,
    /// The first write error, after which nothing more was written.
    pub error: Option<StoreError>,
    /// Contents not written (after an error), by hash: the scan's commit writes them.
    pub returned: HashMap<String, Content>,
}

/// A running writer; [`Spool::finish`] waits for it.
#[derive(Debug)]
pub struct Spool {
    tx: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<(String, Content)>>>,
    handle: std::sync::Mutex<Option<std::thread::JoinHandle<SpoolOutcome>>>,
}

impl Spool {
    /// Start a writer thread around `write`. `None` when no thread can be started (the scan then keeps the contents
    /// and its commit writes them, as without a spool).
    pub fn start(mut write: WriteBatch) -> Option<Spool> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Content)>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("plumb-spool".into())
            .spawn(move || {
                let mut out = SpoolOutcome::default();
                let mut batch = Vec::with_capacity(BATCH);
                while let Some(item) = rx.blocking_recv() {
                    batch.push(item);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(item) => batch.push(item),
                            Err(_) => break,
                        }
                    }
                    if out.error.is_none() {
                        match write(&batch) {
                            Ok(()) => {
                                out.written += batch.len();
                                batch.clear();
                                continue;
                            }
                            Err(e) => out.error = Some(e),
                        }
                    }
                    out.returned.extend(batch.drain(..));
                }
                out
            })
            .ok()?;
        Some(Spool {
            tx: std::sync::Mutex::new(Some(tx)),
            handle: std::sync::Mutex::new(Some(handle)),
        })
    }

    /// Hand over one content; waits while the queue is full. `Err` gives it back when the writer is gone.
    pub async fn put(&self, hash: String, content: Content) -> Result<(), (String, Content)> {
        let tx = match self.tx.lock() {
            Ok(g) => g.clone(),
            Err(_) => None,
        };
        match tx {
            Some(tx) => tx.send((hash, content)).await.map_err(|e| e.0),
            None => Err((hash, content)),
        }
    }

    /// Close the queue and wait for the writer to drain it (once; later calls find nothing to do).
    pub fn finish(&self) -> SpoolOutcome {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        let handle = self.handle.lock().ok().and_then(|mut g| g.take());
        match handle {
            Some(h) => h.join().unwrap_or_else(|_| SpoolOutcome {
                error: Some(StoreError::Corrupt(
                    "the snapshot writer stopped unexpectedly; the scan is not recorded".into(),
                )),
                ..SpoolOutcome::default()
            }),
            None => SpoolOutcome::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: usize) -> (String, Content) {
        (format!("h{i}"), Content::Text(format!("content {i}")))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_content_is_written_or_handed_back() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut calls = 0;
        let spool = Spool::start(Box::new(move |batch: &[(String, Content)]| {
            calls += 1;
            if calls > 2 {
                return Err(StoreError::Corrupt("disk full".into()));
            }
            sink.lock()
                .map_err(|_| StoreError::Corrupt("poisoned".into()))?
                .extend(batch.iter().map(|(h, _)| h.clone()));
            Ok(())
        }))
        .expect("a thread");
        for i in 0..1000 {
            let (h, c) = item(i);
            spool.put(h, c).await.expect("writer alive");
        }
        let out = spool.finish();
        let written = seen.lock().expect("lock").clone();
        assert_eq!(out.written, written.len());
        assert!(out.error.is_some(), "the third batch failed");
        // Nothing lost: written plus handed back is everything, each once.
        assert_eq!(written.len() + out.returned.len(), 1000);
        for h in &written {
            assert!(!out.returned.contains_key(h));
        }
        assert_eq!(
            out.returned.get("h999").map(Content::text).as_deref(),
            Some("content 999")
        );
    }
}
