//! The outbox dispatcher (being written).
