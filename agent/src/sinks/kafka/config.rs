//! `[kafka]`: where and how events are produced. librdkafka's own options pass through as-is
//! (`options`), so TLS, SASL, compression and tuning need no camgate release; only the settings
//! the delivery guarantee rests on are refused there.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

pub use crate::net::kafka::{guarded_option, valid_topic, OptionValue};

/// `[kafka]`; an absent section disables the sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`. Required.
    pub brokers: String,
    /// Topic every event goes to. Default `camgate.events`.
    pub topic: String,
    /// Topic the vision stage's face results go to (same key as their event). Default
    /// `camgate.faces`.
    pub faces_topic: String,
    /// librdkafka properties, passed as-is and applied over camgate's defaults
    /// (`message.timeout.ms = 30000`, `client.id = camgate-<gateway_id>`). Values may be strings,
    /// numbers or booleans. `enable.idempotence`, `acks` and `bootstrap.servers` are refused
    /// unless they say what camgate already sets (idempotence on, acks=all; `brokers`).
    pub options: BTreeMap<String, OptionValue>,
    /// JSON-lines file where records the broker will never accept are set aside (one line each:
    /// offset, key, reason, record). Default `/var/lib/camgate/kafka-dead-letter.jsonl`.
    pub dead_letter_path: PathBuf,
    /// Most records handed to the producer and not yet settled. Default 1000.
    pub max_in_flight: usize,
    /// Most bytes of such records. Default 8388608 (8 MiB).
    pub max_in_flight_bytes: usize,
    /// Retry delay after a transient failure: floor and cap, milliseconds (exponential with
    /// jitter). Defaults 200 and 30000.
    pub retry_backoff_min_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// A producer that has not delivered anything for this long while deliveries keep failing
    /// is replaced by a new one, milliseconds. This gets past idempotence state a restarted
    /// broker no longer knows (a broker that lost its log rejects the old producer id forever).
    /// Default 60000.
    pub producer_reset_ms: u64,
    /// Shortest spacing of outbox cursor commits (two fsyncs each) over delivered progress,
    /// milliseconds; on a slow disk commits space out further, to at most 2 s. A crash re-sends
    /// what was delivered since the last commit, with the same keys. Default 200.
    pub commit_interval_ms: u64,
    /// How often a non-zero lag is logged, seconds. Default 30.
    pub lag_log_secs: u64,
    /// On shutdown, how long to wait for deliveries in flight before committing what arrived,
    /// milliseconds. Default 2000.
    pub shutdown_flush_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "camgate.events".into(),
            faces_topic: "camgate.faces".into(),
            options: BTreeMap::new(),
            dead_letter_path: PathBuf::from("/var/lib/camgate/kafka-dead-letter.jsonl"),
            max_in_flight: 1000,
            max_in_flight_bytes: 8 * 1024 * 1024,
            retry_backoff_min_ms: 200,
            retry_backoff_max_ms: 30_000,
            producer_reset_ms: 60_000,
            commit_interval_ms: 200,
            lag_log_secs: 30,
            shutdown_flush_ms: 2000,
        }
    }
}

/// librdkafka's default of 300 s would still be a silent drop if we trusted it; we do not (a
/// timed-out message is re-produced), but a shorter timeout surfaces an outage in the status
/// sooner and bounds how long one record can hold the cursor.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;

impl KafkaConfig {
    /// Every problem, appended to `errs` (the `Config::validate` convention).
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            errs.push("kafka.brokers: must not be empty (host:port[,host:port...])".into());
        }
        for (name, topic) in [("topic", &self.topic), ("faces_topic", &self.faces_topic)] {
            if !valid_topic(topic) {
                errs.push(format!(
                    "kafka.{name}: {topic:?} is not a valid topic name ([A-Za-z0-9._-], 1..=249)"
                ));
            }
        }
        if self.dead_letter_path.as_os_str().is_empty() {
            errs.push("kafka.dead_letter_path: must not be empty".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight_bytes == 0 {
            errs.push(
                "kafka.max_in_flight and kafka.max_in_flight_bytes: must be at least 1".into(),
            );
        }
        if self.retry_backoff_min_ms == 0 || self.retry_backoff_max_ms < self.retry_backoff_min_ms {
            errs.push(format!(
                "kafka: need 1 <= retry_backoff_min_ms <= retry_backoff_max_ms (got {} and {})",
                self.retry_backoff_min_ms, self.retry_backoff_max_ms
            ));
        }
        if self.producer_reset_ms < 1000 {
            errs.push(format!(
                "kafka.producer_reset_ms: {} is below 1000",
                self.producer_reset_ms
            ));
        }
        if self.commit_interval_ms == 0 || self.lag_log_secs == 0 {
            errs.push("kafka.commit_interval_ms and kafka.lag_log_secs: must be at least 1".into());
        }
        for (k, v) in &self.options {
            if let Some(why) = guarded_option(k, &v.to_string()) {
                errs.push(format!("kafka.options.{k}: {why}"));
            }
        }
        // librdkafka checks names and values itself; asking it now turns a typo into a
        // check-config error instead of a sink that never starts.
        if let Err(e) = self.client_config("check").create_native_config() {
            errs.push(format!("kafka.options: {e}"));
        }
    }

    /// The producer configuration: camgate defaults, then `options`, then the guarded settings
    /// again (so that even an unvalidated config cannot weaken them).
    pub fn client_config(&self, gateway_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS.to_string());
        c.set("client.id", format!("camgate-{gateway_id}"));
        for (k, v) in &self.options {
            c.set(k.as_str(), v.to_string());
        }
        c.set("bootstrap.servers", self.brokers.as_str());
        c.set("enable.idempotence", "true");
        c.set("acks", "all");
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn the_contract_section_parses_with_defaults() {
        let c: KafkaConfig = toml::from_str(
            "brokers = \"127.0.0.1:9092\"\ntopic = \"camgate.events\"\noptions = { \"linger.ms\" = 10, \"compression.type\" = \"lz4\", \"socket.keepalive.enable\" = true }\n",
        )
        .unwrap();
        let mut errs = Vec::new();
        c.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.max_in_flight, 1000);
        let cc = c.client_config("gw");
        assert_eq!(cc.get("linger.ms"), Some("10"));
        assert_eq!(cc.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("message.timeout.ms"), Some("30000"));
        assert!(toml::from_str::<KafkaConfig>("brokers = \"x:1\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn options_override_defaults_but_not_the_guarantee() {
        let mut c = valid();
        c.options
            .insert("message.timeout.ms".into(), OptionValue::Int(5000));
        c.options
            .insert("enable.idempotence".into(), OptionValue::Bool(false));
        c.options.insert("acks".into(), OptionValue::Int(1));
        c.options.insert(
            "bootstrap.servers".into(),
            OptionValue::Str("elsewhere:1".into()),
        );
        let mut errs = Vec::new();
        c.validate(&mut errs);
        let all = errs.join("\n");
        for needle in ["enable.idempotence", "acks=all", "kafka.brokers"] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
        let cc = c.client_config("gw");
        assert_eq!(
            cc.get("message.timeout.ms"),
            Some("5000"),
            "a plain option overrides the default"
        );
        assert_eq!(
            cc.get("enable.idempotence"),
            Some("true"),
            "forced even without validation"
        );
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        // Saying what camgate sets anyway is fine.
        let mut ok = valid();
        ok.options.insert("acks".into(), OptionValue::Int(-1));
        ok.options
            .insert("enable.idempotence".into(), OptionValue::Str("true".into()));
        let mut errs = Vec::new();
        ok.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn librdkafka_checks_option_names_at_validation() {
        let mut c = valid();
        c.options.insert("linger.msec".into(), OptionValue::Int(5));
        c.brokers = String::new();
        c.topic = "bad topic".into();
        let mut errs = Vec::new();
        c.validate(&mut errs);
        let all = errs.join("\n");
        for needle in ["linger.msec", "kafka.brokers", "kafka.topic"] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
    }
}
