//! camgate: a camera gateway daemon.
//!
//! Layers, from the wire inwards (`.ci/module-map` prints who imports whom and fails on a cycle):
//! - [`net`], [`clock`]: neutral tools — TLS trust, backoff, the one camera HTTP(S) client,
//!   credentials; injectable wall time. They import nothing else of camgate's.
//! - [`camera`]: a camera as configured (identity, address, trust, delivery mode).
//! - [`channel`]: the Sunmi Message Channel — `frame` (bytes ⇄ frames, no I/O), `session`
//!   (frames + time → actions, no I/O) and `driver` (one tokio task per camera owning the TLS socket).
//! - [`hook`]: the HTTP hook path (callback receiver, hook API client).
//! - [`sign`]: the vendor's MD5 sign rule and verification (time window + replay cache).
//! - [`event`]: typed, borrowed views of camera events; the raw JSON is kept as received.
//! - [`intake`]: de-duplication and the hand-off of accepted events to the [`outbox`].
//! - [`outbox`]: the durable on-disk log every sink reads from with its own committed cursor.
//! - [`sinks`]: consumers of the outbox (JSON lines, Kafka, MQTT); they import only the outbox,
//!   `net`, `event` and `clock`.
//! - [`results`]: the face result records the vision stage stores and the sinks forward;
//!   [`notice`]: the GBDS notification records the transaction processor stores and the
//!   notifier POSTs.
//! - [`vision`]: the face pipeline, a leaf; [`gallery`]: enrolled persons and unsolved entries
//!   (embeddings in, identities out; no vision code); [`stage`]: the vision stage (outbox face
//!   events → picture → vision → gallery → face result in the outbox); [`cli`]: command-line
//!   layers over them.
//! - [`api`]: the local transactions API (HTTP + JSON with a bearer token) over the processor's
//!   narrow interface in [`gbds::service`]; it imports only `gbds`, `net` and `clock`.
//! - [`config`] (assembles every component's own config), [`daemon`], [`logging`], [`ops`].
//! - `dev` (feature `dev-tools`): simulator, demo, benches; nothing else depends on it.

pub mod api;
pub mod camera;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(feature = "dev-tools")]
pub mod dev;
pub mod ekyc;
pub mod event;
pub mod gallery;
pub mod gbds;
pub mod hook;
pub mod intake;
pub mod logging;
pub mod net;
pub mod notice;
pub mod ops;
pub mod outbox;
pub mod results;
pub mod sign;
pub mod sinks;
pub mod stage;
pub mod status;
/// The face pipeline lives in its own crate (`agent/vision`) so the shipped profile can build it
/// for speed and everything else for size.
#[cfg(feature = "vision")]
pub use camgate_vision as vision;
