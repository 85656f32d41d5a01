//! plumb: a configuration drift detector.
//!
//! # Layout
//!
//! - [`config`]: plumb.toml, raw and validated into a [`config::Plan`]; [`inventory`] nodes and selectors;
//!   [`template`] `${...}` substitution; [`units`] durations and sizes.
//! - [`collect`]: fetching live config over http, from files and through commands (the only network I/O of a scan).
//! - [`normalize`]: bytes of json, yaml, toml, ini, kv or text become one canonical [`normalize::Document`].
//! - [`redact`]: secrets become `<redacted:HASH8>` markers (keyed hash) before anything is stored, compared or shown.
//! - [`baseline`]: the `baselines/` tree, precedence, node variables, writing approvals.
//! - [`compare`]: the structural diff and the unified diff (pure).
//! - [`classify`]: turning a fetch outcome and a comparison into [`finding::Finding`]s (pure).
//! - [`scan`]: one pass over a set of nodes: collect → normalize → compare → classify, concurrently.
//! - [`report`]: human and JSON output, exit codes.
//! - [`sim`]: a fleet of simulated nodes on loopback, for the demo, tests and benchmarks.
//! - [`bench`]: `plumb bench`, plumb against the raw fetch limit at fleet scale (cold and warm scans).
//! - [`cli`]: the `plumb` commands.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod bench;
pub mod classify;
pub mod cli;
pub mod collect;
pub mod compare;
pub mod config;
pub mod daemon;
pub mod finding;
pub mod inventory;
pub mod lifecycle;
pub mod normalize;
pub mod notify;
pub mod redact;
pub mod report;
pub mod rules;
pub mod scan;
pub mod schedule;
pub mod sim;
pub mod store;
pub mod template;
pub mod units;
