//! What the Kafka clients (the `[kafka]` sink, the `[ekyc]` services) share without linking
//! librdkafka: option values as written in TOML, the options camgate's guarantees rest on, and
//! the topic name rule. Here so that a config still parses and validates in a build without Kafka.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A librdkafka property value as written in TOML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Bool(b) => b.fmt(f),
            OptionValue::Int(i) => i.fmt(f),
            OptionValue::Float(x) => x.fmt(f),
            OptionValue::Str(s) => s.fmt(f),
        }
    }
}

/// Why an option may not be given, if it may not: the delivery guarantee rests on these.
/// Rejected in validation rather than warned about, because a warning in a log nobody reads
/// would silently turn "delivered" into "maybe delivered".
pub fn guarded_option(key: &str, value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    match key {
        "enable.idempotence" if v != "true" => {
            Some("camgate requires the idempotent producer; it cannot be turned off".into())
        }
        "acks" | "request.required.acks" if v != "all" && v != "-1" => Some(
            "camgate requires acks=all (an ack must mean replicated, not just received)".into(),
        ),
        "bootstrap.servers" | "metadata.broker.list" => Some("set kafka.brokers instead".into()),
        "transactional.id" => Some("transactions are not supported by the camgate sink".into()),
        _ => None,
    }
}

/// Kafka's own rule for a topic name: `[A-Za-z0-9._-]`, 1 to 249 characters.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
