//! Consumers of the outbox. Each has its own named cursor, so a stalled sink never holds back
//! another or the camera acks (the outbox's bound applies).

pub mod jsonl;
pub mod kafka;
pub mod mqtt;
pub mod status;

pub use status::{SinkSnapshot, SinkStatus};
