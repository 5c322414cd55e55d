//! The licenses every worker of the group shares. A `register_license` is answered by one
//! worker, but the client's `compare_face` (another request id, so maybe another partition) can
//! reach any other: each license is therefore produced to `topics.licenses`, keyed by the client
//! id, before the request's replies, and a worker reads that topic up to its end as it is at the
//! moment, into its own store, before each `compare_face`. The web side sends a `compare_face`
//! only after the license's result, which is produced after the license, so the end read then
//! includes it. Read without a consumer group (every worker reads every partition).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tracing::warn;

use super::messages::{AlignedBgr, ALIGNED_SIDE};
use super::serve::Services;

pub struct LicenseFeed {
    consumer: BaseConsumer,
    topic: String,
    /// Next offset to read, per partition.
    next: HashMap<i32, i64>,
}

impl LicenseFeed {
    /// `config` is the worker's client configuration (brokers, options). librdkafka assigns
    /// partitions only to a consumer with a group id; this one never joins that group nor
    /// commits in it.
    pub fn new(
        mut config: ClientConfig,
        group_id: &str,
        topic: &str,
    ) -> Result<LicenseFeed, KafkaError> {
        config.set("group.id", format!("{group_id}.license-reader"));
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        Ok(LicenseFeed {
            consumer: config.create()?,
            topic: topic.to_owned(),
            next: HashMap::new(),
        })
    }

    /// The partitions still to read and the offset each must reach (its end as it is now).
    fn ends(&mut self, timeout: Duration) -> Result<Vec<(i32, i64)>, KafkaError> {
        let md = self.consumer.fetch_metadata(Some(&self.topic), timeout)?;
        let Some(t) = md.topics().first().filter(|t| t.error().is_none()) else {
            return Ok(Vec::new()); // no license registered yet: no topic
        };
        let mut behind = Vec::new();
        for p in t.partitions() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p.id(), timeout)?;
            let next = self.next.entry(p.id()).or_insert(low);
            *next = (*next).max(low);
            if *next < high {
                behind.push((p.id(), high));
            }
        }
        Ok(behind)
    }

    /// Reads the topic up to its end into `services`' store; how many licenses were read.
    /// Blocking (librdkafka's calls): run it off the async threads.
    pub fn catch_up(
        &mut self,
        services: &Services,
        timeout: Duration,
    ) -> Result<usize, KafkaError> {
        let deadline = Instant::now() + timeout;
        let behind = self.ends(timeout)?;
        if behind.is_empty() {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, _) in &behind {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(self.next[&p]))?;
        }
        self.consumer.assign(&tpl)?;
        let mut read = 0;
        while behind.iter().any(|(p, end)| self.next[p] < *end) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            let Some(m) = self.consumer.poll(left.min(Duration::from_millis(200))) else {
                continue;
            };
            let m = m?;
            let (p, o) = (m.partition(), m.offset());
            self.keep(services, m.key(), m.payload());
            drop(m);
            self.next.insert(p, o + 1);
            read += 1;
        }
        Ok(read)
    }

    /// A record that is not a license (foreign writer) is skipped, not fatal: the worker must
    /// go on serving.
    fn keep(&self, services: &Services, key: Option<&[u8]>, value: Option<&[u8]>) {
        let client = key.and_then(|k| serde_json::from_slice::<Value>(k).ok());
        let face = value.filter(|v| v.len() == ALIGNED_SIDE * ALIGNED_SIDE * 3);
        match (client, face) {
            (Some(c), Some(f)) => {
                if let Err(e) = services.keep_license(&c, &AlignedBgr(f.to_vec())) {
                    warn!(error = %e, "ekyc: a shared license could not be kept");
                }
            }
            _ => warn!(topic = %self.topic, "ekyc: a record that is not a license; skipped"),
        }
    }
}
