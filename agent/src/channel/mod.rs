//! The Sunmi Message Channel (TLS, camera = server on port 10021), in three layers as rumqttc:
//! [`frame`] (bytes ⇄ frames), [`packet`] (typed payloads), [`session`] (frames + time → actions),
//! then [`driver`]: one tokio task per camera that owns the socket (trust and backoff come from
//! [`crate::net`]).

pub mod driver;
pub mod frame;
pub mod packet;
pub mod session;
