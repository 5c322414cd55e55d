//! One member of the EKYC consumer group: a request in, its replies produced and acknowledged
//! by the broker (idempotent producer, acks=all), then its offset committed. A worker killed
//! between the replies and the commit leaves the request to whoever takes the partition, who
//! answers it again with the same key: at-least-once, never lost. Kafka assigns the partitions;
//! camgate adds no coordination of its own.
//!
//! Requests are served one at a time per worker, in partition order: the face pipeline's own
//! threads (`[vision] workers`) do the parallel part, and several workers scale out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::{EkycConfig, Service};
use super::messages as msg;
use super::serve::{poison_answer, Answer, Services, Topic};
use crate::net::backoff::Backoff;
use crate::vision::pool::VisionPool;

#[derive(Debug, thiserror::Error)]
pub enum EkycError {
    #[error("ekyc: cannot create the Kafka {0}: {1}")]
    Client(&'static str, KafkaError),
    #[error("ekyc: cannot subscribe to {0:?}: {1}")]
    Subscribe(Vec<String>, KafkaError),
    #[error("ekyc: {0}")]
    Licenses(#[from] super::licenses::LicenseError),
}

/// Counters for `camgate status` (`ekyc`).
#[derive(Debug, Default, serde::Serialize)]
pub struct EkycCounters {
    /// Requests read.
    pub received: AtomicU64,
    /// Requests whose replies were acknowledged and whose offset was committed.
    pub answered: AtomicU64,
    /// Requests answered with an error (unreadable message, no usable face, ...).
    pub failed: AtomicU64,
    /// Reply attempts the broker did not acknowledge (retried).
    pub produce_retries: AtomicU64,
    #[serde(serialize_with = "last_error")]
    pub last_error: Mutex<Option<String>>,
}

fn last_error<S: serde::Serializer>(m: &Mutex<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
    let v = m.lock().map(|g| g.clone()).unwrap_or(None);
    s.serialize_some(&v)
}

impl EkycCounters {
    fn error(&self, why: &str) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(why.to_owned());
        }
    }
}

fn client_config(cfg: &EkycConfig, gateway_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", format!("camgate-ekyc-{gateway_id}"));
    c.set("message.timeout.ms", "30000");
    c.set("auto.offset.reset", "earliest");
    for (k, v) in &cfg.options {
        c.set(k.as_str(), v.to_string());
    }
    c.set("bootstrap.servers", cfg.brokers.as_str());
    c
}

fn consumer(cfg: &EkycConfig, gateway_id: &str) -> Result<StreamConsumer, EkycError> {
    let mut c = client_config(cfg, gateway_id);
    c.set("group.id", cfg.group_id.as_str());
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.create().map_err(|e| EkycError::Client("consumer", e))
}

fn producer(cfg: &EkycConfig, gateway_id: &str) -> Result<FutureProducer, EkycError> {
    let mut c = client_config(cfg, gateway_id);
    c.set("enable.idempotence", "true");
    c.set("acks", "all");
    // A whole picture is never produced, but an aligned pair is 100 KB; leave room.
    c.set(
        "message.max.bytes",
        cfg.max_message_bytes.max(1_000_000).to_string(),
    );
    c.create().map_err(|e| EkycError::Client("producer", e))
}

pub struct Worker {
    cfg: EkycConfig,
    gateway_id: String,
    pool: VisionPool,
    services: Arc<Services>,
    pub counters: Arc<EkycCounters>,
}

/// A request as read: where it came from and its bytes (the borrowed message is let go).
struct Request {
    service: Service,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl Worker {
    pub fn new(
        cfg: &EkycConfig,
        gateway_id: String,
        pool: VisionPool,
    ) -> Result<Worker, EkycError> {
        Ok(Worker {
            services: Arc::new(Services::open(cfg)?),
            cfg: cfg.clone(),
            gateway_id,
            pool,
            counters: Arc::default(),
        })
    }

    fn topic_of(&self, s: Service) -> &str {
        match s {
            Service::Mtcnn => &self.cfg.topics.mtcnn_request,
            Service::Insightface => &self.cfg.topics.insightface_request,
        }
    }

    /// Serves until `stop`; a request cut by `stop` is not committed (it is answered again).
    pub async fn run(self, stop: CancellationToken) -> Result<u64, EkycError> {
        let consumer = consumer(&self.cfg, &self.gateway_id)?;
        let producer = producer(&self.cfg, &self.gateway_id)?;
        let topics: Vec<String> = self
            .cfg
            .serve
            .iter()
            .map(|&s| self.topic_of(s).to_owned())
            .collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| EkycError::Subscribe(topics.clone(), e))?;
        info!(topics = ?topics, group = %self.cfg.group_id, mode = ?self.cfg.mode, "ekyc services started");
        let mut backoff = self.backoff();
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => break,
                m = consumer.recv() => m,
            };
            let req = match m {
                Ok(m) => {
                    backoff.reset();
                    self.request(&m)
                }
                Err(e) => {
                    warn!(error = %e, "ekyc: consumer error");
                    self.counters.error(&e.to_string());
                    self.pause(&mut backoff, &stop).await;
                    continue;
                }
            };
            let Some(req) = req else { continue };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let Some(answer) = self.answer(&req).await else {
                break;
            };
            if !self.produce(&producer, &req, &answer, &stop).await {
                break;
            }
            self.commit(&consumer, &req);
        }
        let _ = producer_flush(&producer).await;
        Ok(self.counters.answered.load(Ordering::Relaxed))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.cfg.retry_backoff_min_ms),
            Duration::from_millis(self.cfg.retry_backoff_max_ms),
        )
    }

    async fn pause(&self, backoff: &mut Backoff, stop: &CancellationToken) {
        let d = backoff.next_delay(&mut rand::rng());
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    fn request(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Request> {
        let topic = m.topic();
        let service = self
            .cfg
            .serve
            .iter()
            .copied()
            .find(|&s| self.topic_of(s) == topic)?;
        Some(Request {
            service,
            topic: topic.to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
        })
    }

    /// The request's replies; `None` only when the pipeline is gone (shutting down).
    async fn answer(&self, req: &Request) -> Option<Answer> {
        let (key, value) = (req.key.as_deref(), req.value.as_slice());
        let services = self.services.clone();
        let answer = match req.service {
            Service::Mtcnn => {
                match msg::mtcnn_request(
                    key,
                    value,
                    self.cfg.max_message_bytes,
                    self.cfg.max_pixels,
                ) {
                    Ok(r) => self.pool.run(move |e| services.mtcnn(e, r)).await.ok()?,
                    Err(p) => poison_answer(&p),
                }
            }
            Service::Insightface => {
                match msg::insightface_request(key, value, self.cfg.max_message_bytes) {
                    Ok(r) => self
                        .pool
                        .run(move |e| services.insightface(e, r))
                        .await
                        .ok()?,
                    Err(p) => poison_answer(&p),
                }
            }
        };
        if let Some(why) = &answer.error {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.counters.error(why);
            warn!(topic = %req.topic, partition = req.partition, offset = req.offset,
                request_id = %String::from_utf8_lossy(key.unwrap_or_default()), error = %why,
                "ekyc: request answered with an error");
        }
        Some(answer)
    }

    fn reply_topic(&self, t: Topic) -> &str {
        match t {
            Topic::InsightfaceRequest => &self.cfg.topics.insightface_request,
            Topic::InsightfaceReply => &self.cfg.topics.insightface_reply,
            Topic::Result => &self.cfg.topics.result,
        }
    }

    /// Produces the replies in order, each acknowledged before the next; retries (with backoff)
    /// until they are, or `stop` (false).
    async fn produce(
        &self,
        producer: &FutureProducer,
        req: &Request,
        answer: &Answer,
        stop: &CancellationToken,
    ) -> bool {
        let mut backoff = self.backoff();
        for r in &answer.replies {
            loop {
                let mut record = FutureRecord::to(self.reply_topic(r.topic)).payload(&r.value);
                if let Some(k) = &req.key {
                    record = record.key(k);
                }
                let sent = tokio::select! {
                    _ = stop.cancelled() => return false,
                    s = producer.send(record, Duration::from_secs(5)) => s,
                };
                match sent {
                    Ok(_) => break,
                    Err((e, _)) => {
                        self.counters
                            .produce_retries
                            .fetch_add(1, Ordering::Relaxed);
                        self.counters.error(&e.to_string());
                        warn!(error = %e, "ekyc: reply not acknowledged; retrying");
                        self.pause(&mut backoff, stop).await;
                        if stop.is_cancelled() {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Commits past the request. Asynchronous: a commit lost to a crash only means the request
    /// is answered again, which at-least-once allows.
    fn commit(&self, consumer: &StreamConsumer, req: &Request) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&req.topic, req.partition, Offset::Offset(req.offset + 1))
            .is_ok()
        {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                warn!(error = %e, "ekyc: offset commit failed (the request may be answered again)");
            }
        }
        self.counters.answered.fetch_add(1, Ordering::Relaxed);
        debug!(topic = %req.topic, partition = req.partition, offset = req.offset, "ekyc: answered");
    }
}

async fn producer_flush(p: &FutureProducer) -> Result<(), KafkaError> {
    use rdkafka::producer::Producer;
    let p = p.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(2)))
        .await
        .unwrap_or(Ok(()))
}
