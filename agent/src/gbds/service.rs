//! What the local API (and the `camgate tx` CLI) asks of the transaction processor: a narrow
//! interface, so the HTTP layer knows nothing of vision, the gallery or the files, and can be
//! tested against a fake.

use std::collections::BTreeMap;

use serde::Serialize;

/// A transaction to accept. Images are the encoded files (JPEG/PNG) as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    Enroll {
        key: String,
        images: Vec<Vec<u8>>,
        attributes: BTreeMap<String, String>,
    },
    Update {
        key: String,
        images: Vec<Vec<u8>>,
    },
    /// 1:1 with `key`, 1:N without.
    Search {
        key: Option<String>,
        images: Vec<Vec<u8>>,
    },
}

/// The answer to an accepted submission, treatment or review: durable when returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub tguid: String,
    /// `QUEUED`.
    pub status: String,
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// 400: the request itself is wrong (no image, empty key, unknown treatment, …).
    #[error("{0}")]
    Invalid(String),
    /// 404: no such transaction or person.
    #[error("{0}")]
    NotFound(String),
    /// 409: the transaction is not in the state the request needs.
    #[error("{0}")]
    Conflict(String),
    /// 413: an image or the request is over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// 503: the queue is full or the processor is not running; nothing was accepted.
    #[error("{0}")]
    Busy(String),
    /// 500: a disk or internal failure; nothing was accepted.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The `code` of the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Invalid(_) => "invalid_request",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::TooLarge(_) => "too_large",
            ServiceError::Busy(_) => "busy",
            ServiceError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            ServiceError::Invalid(_) => 400,
            ServiceError::NotFound(_) => 404,
            ServiceError::Conflict(_) => 409,
            ServiceError::TooLarge(_) => 413,
            ServiceError::Busy(_) => 503,
            ServiceError::Internal(_) => 500,
        }
    }
}

/// The transaction processor as the API sees it. Calls may block on an fsync: the API runs them
/// on the blocking pool.
pub trait Transactions: Send + Sync + 'static {
    /// Accepts a transaction durably (fsynced) and queues it; `Busy` when the queue is full.
    fn submit(&self, s: Submission) -> Result<Accepted, ServiceError>;
    /// Treats the exception of `tguid` (`Conflict` unless it is in `EXCEPTION`).
    fn treat(&self, tguid: &str, treatment: &str) -> Result<Accepted, ServiceError>;
    /// Approves or rejects the `PENDING` transaction `tguid`.
    fn review(&self, tguid: &str, approve: bool) -> Result<Accepted, ServiceError>;
    /// The state of `tguid` (the JSON of `GET /v1/transactions/{tguid}`).
    fn transaction(&self, tguid: &str) -> Result<serde_json::Value, ServiceError>;
    /// Every enrolled person (key, pguid, attributes, template count).
    fn people(&self) -> Result<serde_json::Value, ServiceError>;
    fn person(&self, key: &str) -> Result<serde_json::Value, ServiceError>;
    /// Removes a person; answers what was removed.
    fn delete_person(&self, key: &str) -> Result<serde_json::Value, ServiceError>;
}
