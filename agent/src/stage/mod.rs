//! The vision stage: reads the outbox like a sink (its own cursor, `vision`), and for each stored
//! `face_recog_event` with a `pic_url` fetches the picture from that camera (its own host, its
//! own TLS trust), runs detection, alignment and embedding on the bounded vision pool, asks the
//! gallery who it is (or files an unknown face), and appends a face result record
//! ([`crate::results`]) to the outbox, which the sinks forward. The cursor moves over an event
//! only once its result is durable.
//!
//! - [`config`]: `[vision]` (always built, so that a build without the face pipeline can name
//!   the feature it lacks).
//! - `run` (feature `vision`): the stage itself.

pub mod config;
#[cfg(feature = "vision")]
pub mod run;

pub use config::{QualityBars, StageConfig, Variant};

use std::sync::atomic::AtomicU64;

/// What the stage has done, for the health file and the logs.
#[derive(Debug, Default, serde::Serialize)]
pub struct StageCounters {
    pub face_events: AtomicU64,
    pub results: AtomicU64,
    pub error_results: AtomicU64,
    pub fetch_retries: AtomicU64,
    pub faces: AtomicU64,
    pub identified: AtomicU64,
    pub unknown: AtomicU64,
    /// Events skipped because their result was already stored (processed before a crash).
    pub already_done: AtomicU64,
    pub results_dropped: AtomicU64,
}
