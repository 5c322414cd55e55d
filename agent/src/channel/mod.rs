//! The Sunmi Message Channel (TLS, camera = server on port 10021), in three layers as rumqttc:
//! [`frame`] (bytes ⇄ frames), [`packet`] (typed payloads), [`session`] (frames + time → actions),
//! then [`driver`]: one tokio task per camera that owns the socket, and [`tls`] for trust.

pub mod backoff;
pub mod driver;
pub mod frame;
pub mod packet;
pub mod session;
pub mod tls;
