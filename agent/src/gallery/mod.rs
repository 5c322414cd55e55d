//! The gateway's own gallery: enrolled persons (key, `pguid`, attributes, several templates each)
//! and unsolved entries (strangers the cameras saw, `uguid`, clustered by embedding).
//!
//! - [`log`]: the crash-safe, versioned write-ahead log every process appends to under a lock.
//! - [`ops`]: the operations of that log.
//! - [`state`]: the in-memory gallery rebuilt from the operations.
//! - [`matching`]: 1:N search and the open-set rule (threshold + margin, negative examples).
//! - [`store`]: [`Gallery`], the handle the vision stage and the CLI use.
//! - [`calibrate`]: genuine and impostor score distributions, rates, a threshold for a target FMR.
//!
//! Plain data and arithmetic on embeddings: this module does not run the face pipeline (the
//! stage and the CLI hand it embeddings), so it has no dependency on `vision`.

pub mod calibrate;
mod links;
pub mod log;
pub mod matching;
pub mod ops;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use matching::{Candidate, Decision};
pub use state::{Person, Template, Unknown};
pub use store::{Gallery, NewTemplate, Seen};

/// The embedding space of MobileFaceNet (all weight variants: float, f16 and int8 embeddings
/// agree to cosine ≥ 0.99, so their templates are compared with each other).
pub const MOBILEFACENET: &str = "mobilefacenet";

/// `[gallery]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GalleryConfig {
    /// Where the log and the crops live. Default `/var/lib/camgate/gallery`.
    pub dir: PathBuf,
    /// A face is a person only at cosine ≥ this. Default 0.52, measured (README, "Measured
    /// defaults"): over 34 faces of 31 people, different people scored at most 0.48 and the same
    /// person at least 0.57; 0.52 is the middle of that gap. `camgate gallery calibrate`
    /// measures a site's own.
    pub match_threshold: f32,
    /// ...and only if it beats the second-best person by this much. Default 0.05: in the same
    /// measurement the true person beat the best other by at least 0.21, so the margin refuses
    /// no genuine match there; it only parts two enrolled look-alikes.
    pub margin: f32,
    /// Most unsolved entries kept; the one seen longest ago goes first. Default 10000.
    pub max_unknowns: usize,
    /// Unsolved entries not seen for this long are forgotten. Default 72.
    pub unknown_ttl_hours: u64,
    /// Two unknown faces are one stranger at cosine ≥ this. Default 0.52 (the match threshold's
    /// default: the same evidence that makes a face a person makes two faces one stranger).
    pub cluster_threshold: f32,
}

impl Default for GalleryConfig {
    fn default() -> Self {
        GalleryConfig {
            dir: PathBuf::from("/var/lib/camgate/gallery"),
            match_threshold: 0.52,
            margin: 0.05,
            max_unknowns: 10_000,
            unknown_ttl_hours: 72,
            cluster_threshold: 0.52,
        }
    }
}

impl GalleryConfig {
    pub fn validate(&self, errs: &mut Vec<String>) {
        for (name, v) in [
            ("match_threshold", self.match_threshold),
            ("cluster_threshold", self.cluster_threshold),
        ] {
            if !(-1.0..=1.0).contains(&v) {
                errs.push(format!("gallery.{name}: {v} is outside -1..=1 (a cosine)"));
            }
        }
        if !(0.0..=1.0).contains(&self.margin) {
            errs.push(format!("gallery.margin: {} is outside 0..=1", self.margin));
        }
        if self.max_unknowns == 0 {
            errs.push("gallery.max_unknowns: must be at least 1".into());
        }
        if self.unknown_ttl_hours == 0 {
            errs.push("gallery.unknown_ttl_hours: must be at least 1".into());
        }
        if self.dir.as_os_str().is_empty() {
            errs.push("gallery.dir: must not be empty".into());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A damaged record before the end of the log: refuse rather than silently forget people.
    #[error("{file}: record {line} (byte {offset}) is damaged: {reason}; the gallery is not loaded (recover with `camgate gallery repair`, which keeps a copy)")]
    Corrupt {
        file: PathBuf,
        line: u64,
        offset: u64,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no person with key {0:?}")]
    NoPerson(String),
    #[error("no unsolved entry {0:?}")]
    NoUnknown(String),
}

impl GalleryError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GalleryError + '_ {
        move |source| GalleryError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
