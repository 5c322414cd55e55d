//! Network tools shared by every component that talks to a camera, a broker or a site system:
//! [`tls`] (trust in a peer: pinned fingerprint, CA bundle, client certificate; rustls on ring),
//! [`backoff`] (exponential with full jitter), [`multipart`] (form-data bodies), [`https`]
//! (the one HTTP(S) client for camera APIs, callbacks, pictures and notifications, with the check
//! that a camera's URL points at that camera) and [`serve`] (the accept loop and connection
//! handling of camgate's HTTP servers), and [`kafka`] (what the Kafka clients' configs share).
//!
//! This module imports nothing else of camgate's: the channel, the hook path, the sinks and the
//! simulator all depend on it, never the reverse.

pub mod backoff;
pub mod credentials;
pub mod https;
pub mod kafka;
pub mod multipart;
pub mod serve;
pub mod tls;
