//! camgate as the MTCNN and InsightFace services of the MI EKYC back end (DECISIONS §5): requests
//! from Kafka, replies to Kafka, as a member of a consumer group.
//!
//! - `config`: `[ekyc]`.
//! - `messages`: the text's message shapes, sans-IO (record in, typed request or poison out;
//!   replies as the bytes to produce).
//! - `licenses`: the last `register_license` face of each client, on disk, bounded.
//! - `serve`: what each request is answered with, given the face pipeline.
//! - `feed`: the licenses every worker of the group shares, through a topic.
//! - `worker`: the consumer-group member: read, answer, produce (acknowledged), commit.

pub mod config;
#[cfg(all(feature = "vision", feature = "kafka"))]
pub mod feed;
#[cfg(feature = "vision")]
pub mod licenses;
pub mod messages;
#[cfg(feature = "vision")]
pub mod serve;
#[cfg(all(feature = "vision", feature = "kafka"))]
pub mod worker;

pub use config::EkycConfig;
