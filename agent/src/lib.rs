//! camgate: a camera gateway daemon.
//!
//! Layers, from the wire inwards:
//! - [`channel`]: the Sunmi Message Channel — `frame` (bytes ⇄ frames, no I/O), `session`
//!   (frames + time → actions, no I/O) and `driver` (one tokio task per camera owning the TLS socket).
//! - [`sign`]: the vendor's MD5 sign rule and verification (time window + replay cache).
//! - [`event`]: typed, borrowed views of camera events; the raw JSON is kept as received.
//! - [`intake`]: de-duplication and the hand-off of accepted events to the [`outbox`].
//! - [`outbox`]: the durable on-disk log every sink reads from with its own committed cursor.
//! - [`sinks`]: consumers of the outbox (the embedded JSON-lines sink).
//! - [`sim`]: a camera simulator speaking the protocol as a camera does (tests, demo, bench).
//! - [`config`], [`logging`], [`ops`]: configuration, logs, systemd integration.

pub mod bench;
pub mod channel;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod event;
pub mod hook;
pub mod intake;
pub mod logging;
pub mod ops;
pub mod outbox;
pub mod sign;
pub mod sim;
pub mod sinks;
pub mod status;
#[cfg(feature = "vision")]
pub mod vision;
