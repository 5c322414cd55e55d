//! GBDS-style transactions on the gateway's own gallery (DECISIONS §6): enroll, update and
//! search with a quality review, biometric exceptions and their treatments, and reverse latent
//! matches; every status change is a notification record in the outbox (see [`crate::notice`]).
//!
//! - [`tx`]: a transaction and the rules of its life, without I/O.
//! - [`store`]: the transactions on disk.
//! - [`run`]: the processor (queue in order of arrival, decisions, crash-safe carrying out);
//!   `accept` implements [`service::Transactions`] on it.
//! - [`service`]: the narrow interface the local API and the CLI use.
//! - [`config`]: the `gbds` section.

#[cfg(feature = "vision")]
mod accept;
#[cfg(feature = "vision")]
mod apply;
pub mod config;
#[cfg(feature = "vision")]
pub mod run;
pub mod service;
pub mod store;
pub mod tx;

use std::path::{Path, PathBuf};

pub use config::GbdsConfig;

#[derive(Debug, thiserror::Error)]
pub enum GbdsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("gallery: {0}")]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("{0}")]
    Internal(String),
}

impl GbdsError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GbdsError + '_ {
        move |source| GbdsError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
