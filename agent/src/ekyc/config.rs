//! `[ekyc]`: where the EKYC requests come from and the replies go. librdkafka's own options pass
//! through (`options`, as in `[kafka]`) to the consumer and the producer, each property to the
//! kind of client it is for; only the settings the at-least-once answer rests on are refused.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::net::kafka::{guarded_option, valid_topic, OptionValue};

/// How a request of `MTCNN_REQUEST` is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Detect, align and embed here; the features go straight to `INSIGHTFACE_REPLY`.
    #[default]
    Inline,
    /// Detect and align here; the aligned faces go to `INSIGHTFACE_REQUEST` for an embedding
    /// service (camgate or the original).
    Split,
}

/// Which of the back end's two services this camgate plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// Consumes `MTCNN_REQUEST`.
    Mtcnn,
    /// Consumes `INSIGHTFACE_REQUEST`.
    Insightface,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub mtcnn_request: String,
    pub insightface_request: String,
    pub insightface_reply: String,
    /// The web side's result messages. Default `EKYC_RESULT`.
    pub result: String,
    /// The last `register_license` face of each client, shared by every worker of the group
    /// (keyed by the client id; make it compacted). A worker brings its copy up to date from it
    /// before each `compare_face`. Default `EKYC_LICENSES`; empty: each worker keeps only the
    /// licenses it registered itself (one worker, or a group that routes clients itself).
    pub licenses: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            mtcnn_request: "MTCNN_REQUEST".into(),
            insightface_request: "INSIGHTFACE_REQUEST".into(),
            insightface_reply: "INSIGHTFACE_REPLY".into(),
            result: "EKYC_RESULT".into(),
            licenses: "EKYC_LICENSES".into(),
        }
    }
}

/// `[ekyc]`; an absent section leaves the EKYC services off. Needs `[vision]` (its models and
/// face pipeline are shared).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EkycConfig {
    /// Bootstrap brokers, comma-separated `host:port`. Required.
    pub brokers: String,
    /// Consumer group of every worker of one back end. Default `camgate-ekyc`.
    pub group_id: String,
    /// `inline` (default) or `split`.
    pub mode: Mode,
    pub topics: Topics,
    /// Services played. Default both: `["mtcnn", "insightface"]`. A site that keeps its own
    /// InsightFace service lists only `mtcnn` (with `mode = "split"`).
    pub serve: Vec<Service>,
    /// Largest request value read, bytes; a larger one is answered as an error. Default
    /// 16777216 (16 MiB).
    pub max_message_bytes: usize,
    /// Largest picture, pixels (`image_shape` h·w), checked before anything is decoded.
    /// Default 24000000.
    pub max_pixels: u64,
    /// Smallest face used, pixels (shorter side of its box). Default 40.
    pub min_face_px: f32,
    /// Where the last `register_license` face of each client is kept (for a `compare_face`
    /// with one face). Default `/var/lib/camgate/ekyc`.
    pub dir: PathBuf,
    /// Most clients whose license face is kept; the least recently registered go first.
    /// Default 10000 (37.6 KB each on disk).
    pub max_clients: usize,
    /// librdkafka properties, applied over camgate's defaults; a consumer-only or producer-only
    /// one goes to that client alone (`net::kafka::scope`). Refused: `enable.idempotence` and `acks` other than camgate's, `group.id`,
    /// `enable.auto.commit`, `bootstrap.servers`, `transactional.id`.
    pub options: BTreeMap<String, OptionValue>,
    /// Retry delay while replies cannot be produced: floor and cap, milliseconds. Defaults 200
    /// and 30000.
    pub retry_backoff_min_ms: u64,
    pub retry_backoff_max_ms: u64,
}

impl Default for EkycConfig {
    fn default() -> Self {
        EkycConfig {
            brokers: String::new(),
            group_id: "camgate-ekyc".into(),
            mode: Mode::Inline,
            topics: Topics::default(),
            serve: vec![Service::Mtcnn, Service::Insightface],
            max_message_bytes: 16 * 1024 * 1024,
            max_pixels: 24_000_000,
            min_face_px: 40.0,
            dir: PathBuf::from("/var/lib/camgate/ekyc"),
            max_clients: 10_000,
            options: BTreeMap::new(),
            retry_backoff_min_ms: 200,
            retry_backoff_max_ms: 30_000,
        }
    }
}

impl EkycConfig {
    /// Every problem, appended to `errs`.
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            errs.push("ekyc.brokers: must not be empty (host:port[,host:port...])".into());
        }
        if self.group_id.trim().is_empty() {
            errs.push("ekyc.group_id: must not be empty".into());
        }
        let t = &self.topics;
        for (name, topic) in [
            ("mtcnn_request", &t.mtcnn_request),
            ("insightface_request", &t.insightface_request),
            ("insightface_reply", &t.insightface_reply),
            ("result", &t.result),
            ("licenses", &t.licenses),
        ] {
            let off = name == "licenses" && topic.is_empty();
            if !off && !valid_topic(topic) {
                errs.push(format!(
                    "ekyc.topics.{name}: {topic:?} is not a valid topic name ([A-Za-z0-9._-], 1..=249)"
                ));
            }
        }
        if self.serve.is_empty() {
            errs.push("ekyc.serve: name at least one of \"mtcnn\", \"insightface\"".into());
        }
        if self.max_message_bytes < 1024 || self.max_pixels == 0 || self.max_clients == 0 {
            errs.push(
                "ekyc: max_message_bytes must be at least 1024, max_pixels and max_clients at least 1"
                    .into(),
            );
        }
        if self.min_face_px.is_nan() || self.min_face_px < 12.0 {
            errs.push(format!(
                "ekyc.min_face_px: {} is below 12 (MTCNN's smallest face)",
                self.min_face_px
            ));
        }
        if self.dir.as_os_str().is_empty() {
            errs.push("ekyc.dir: must not be empty".into());
        }
        if self.retry_backoff_min_ms == 0 || self.retry_backoff_max_ms < self.retry_backoff_min_ms {
            errs.push(format!(
                "ekyc: need 1 <= retry_backoff_min_ms <= retry_backoff_max_ms (got {} and {})",
                self.retry_backoff_min_ms, self.retry_backoff_max_ms
            ));
        }
        for (k, v) in &self.options {
            let why = match k.as_str() {
                "group.id" => Some("set ekyc.group_id instead".to_string()),
                "enable.auto.commit" => Some(
                    "camgate commits an offset only after the request's replies are acknowledged"
                        .to_string(),
                ),
                "bootstrap.servers" | "metadata.broker.list" => {
                    Some("set ekyc.brokers instead".into())
                }
                _ => guarded_option(k, &v.to_string()),
            };
            if let Some(why) = why {
                errs.push(format!("ekyc.options.{k}: {why}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_section_parses_with_defaults() {
        let c: EkycConfig = toml::from_str(
            r#"
brokers = "127.0.0.1:9092"
group_id = "camgate-ekyc"
mode = "inline"              # inline | split
topics = { mtcnn_request = "MTCNN_REQUEST", insightface_request = "INSIGHTFACE_REQUEST", insightface_reply = "INSIGHTFACE_REPLY", result = "EKYC_RESULT" }
max_message_bytes = 16777216
options = { }                # passed to librdkafka, as [kafka] options are
"#,
        )
        .unwrap();
        let mut errs = Vec::new();
        c.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.serve, [Service::Mtcnn, Service::Insightface]);
        assert_eq!(c.topics, Topics::default());
        let split: EkycConfig = toml::from_str("brokers = \"b:1\"\nmode = \"split\"\n").unwrap();
        assert_eq!(split.mode, Mode::Split);
        assert!(toml::from_str::<EkycConfig>("mode = \"fast\"\n").is_err());
        assert!(toml::from_str::<EkycConfig>("bogus = 1\n").is_err());
    }

    #[test]
    fn every_problem_is_named() {
        let mut c = EkycConfig {
            group_id: " ".into(),
            serve: Vec::new(),
            min_face_px: 3.0,
            ..EkycConfig::default()
        };
        c.topics.result = "bad topic".into();
        for (k, v) in [
            ("group.id", OptionValue::Str("x".into())),
            ("enable.auto.commit", OptionValue::Bool(true)),
            ("acks", OptionValue::Int(1)),
            ("enable.idempotence", OptionValue::Bool(false)),
            ("fetch.wait.max.ms", OptionValue::Int(10)),
        ] {
            c.options.insert(k.into(), v);
        }
        let mut errs = Vec::new();
        c.validate(&mut errs);
        let all = errs.join("\n");
        for needle in [
            "ekyc.brokers",
            "ekyc.group_id",
            "ekyc.topics.result",
            "ekyc.serve",
            "ekyc.min_face_px",
            "ekyc.options.group.id",
            "ekyc.options.enable.auto.commit",
            "ekyc.options.acks",
            "ekyc.options.enable.idempotence",
        ] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
        assert!(!all.contains("fetch.wait.max.ms"), "{all}");
        assert!(!all.contains("ekyc.topics.licenses"), "{all}");
    }

    #[test]
    fn licenses_are_shared_on_a_topic_unless_it_is_empty() {
        let mut c = EkycConfig {
            brokers: "b:1".into(),
            ..EkycConfig::default()
        };
        assert_eq!(c.topics.licenses, "EKYC_LICENSES");
        let mut errs = Vec::new();
        c.topics.licenses = String::new();
        c.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        c.topics.licenses = "no spaces".into();
        c.validate(&mut errs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("ekyc.topics.licenses"), "{errs:?}");
    }
}
