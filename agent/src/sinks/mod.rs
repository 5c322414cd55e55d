//! Consumers of the outbox. Each has its own named cursor, so a stalled sink never holds back
//! another or the camera acks (the outbox's bound applies).

pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(not(all(feature = "kafka", feature = "mqtt")))]
pub mod not_built;
pub mod notifier;
pub mod reader;
pub mod status;
#[cfg(any(feature = "kafka", feature = "mqtt"))]
pub mod window;

#[cfg(feature = "kafka")]
pub use kafka::KafkaConfig;
#[cfg(feature = "mqtt")]
pub use mqtt::MqttConfig;
#[cfg(not(feature = "kafka"))]
pub use not_built::KafkaConfig;
#[cfg(not(feature = "mqtt"))]
pub use not_built::MqttConfig;

pub use jsonl::JsonlSinkConfig;
pub use notifier::NotifierConfig;
pub use status::{SinkSnapshot, SinkStatus};

use serde::{Deserialize, Serialize};

/// `[sinks]`: consumers of the outbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub jsonl: JsonlSinkConfig,
}
