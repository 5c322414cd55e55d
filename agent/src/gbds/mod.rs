//! GBDS-style transactions on the gateway's own gallery (DECISIONS §6): enroll, update and
//! search with a quality review, biometric exceptions and their treatments, and reverse latent
//! matches; every status change is a notification record in the outbox (see [`crate::notice`]).
//!
//! - [`service`]: the narrow interface the local API and the CLI use.

pub mod service;
