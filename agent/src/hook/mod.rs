//! The camera HTTP hook path (DECISIONS §4): cameras in `mode = "hook"` POST their events as
//! signed `multipart/form-data` callbacks to camgate's [`receiver`], which feeds the same
//! [`crate::intake::Intake`] (and so the same de-duplication and outbox) as the Message Channel.
//!
//! - [`callback`]: pure parsing of a callback body (no I/O; unit tested and fuzzed).
//! - [`receiver`]: the HTTP server with its bounds, sign/window/replay checks and counters.
//! - [`client`]: the camera's hook/add|delete|query API and subscription reconciliation.

pub mod callback;
pub mod client;
pub mod config;
pub mod receiver;

pub use callback::{parse_callback, Callback, ParseError};
pub use config::HookConfig;
pub use receiver::{
    HookCamera, HookCounters, HookCountersSnapshot, Receiver, ReceiverConfig, ReceiverError,
};
