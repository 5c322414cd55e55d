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

/// Which kind of client a librdkafka property is for (the C/P column of librdkafka's
/// CONFIGURATION.md). A property set on the other kind is ignored, with a CONFWARN line at every
/// start, so a component that makes both kinds from one `options` table gives each its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Both,
    Consumer,
    Producer,
}

const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "allow.auto.create.topics",
    "consume.callback.max.messages",
];

const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "queuing.strategy",
    "produce.offset.report",
];

pub fn scope(key: &str) -> Scope {
    if CONSUMER_ONLY.contains(&key) {
        Scope::Consumer
    } else if PRODUCER_ONLY.contains(&key) {
        Scope::Producer
    } else {
        Scope::Both
    }
}

impl Scope {
    /// Whether a property of this scope belongs on a client of kind `client`.
    pub fn fits(self, client: Scope) -> bool {
        self == Scope::Both || client == Scope::Both || self == client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_property_goes_to_its_kind_of_client() {
        assert_eq!(scope("session.timeout.ms"), Scope::Consumer);
        assert_eq!(scope("linger.ms"), Scope::Producer);
        assert_eq!(scope("socket.timeout.ms"), Scope::Both);
        assert!(scope("session.timeout.ms").fits(Scope::Consumer));
        assert!(!scope("session.timeout.ms").fits(Scope::Producer));
        assert!(!scope("message.timeout.ms").fits(Scope::Consumer));
        assert!(scope("client.id").fits(Scope::Producer));
        assert!(scope("client.id").fits(Scope::Consumer));
    }
}
