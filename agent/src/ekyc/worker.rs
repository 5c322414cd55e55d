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
use super::feed::LicenseFeed;
use super::messages::{self as msg, ApiType};
use super::serve::{poison_answer, Answer, Head, Services, Topic};
use crate::net::backoff::Backoff;
use crate::net::kafka::{scope, Scope};
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

/// camgate's defaults, then `options`, each only on the kind of client it is for.
fn client_config(cfg: &EkycConfig, gateway_id: &str, kind: Scope) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", format!("camgate-ekyc-{gateway_id}"));
    match kind {
        // Each reply is awaited before the next, so nothing can be batched: waiting for more
        // (librdkafka's default 5 ms) would only add to every reply's latency.
        Scope::Producer => c.set("message.timeout.ms", "30000").set("linger.ms", "0"),
        // A broker that holds an empty fetch for its full wait even when a record arrives
        // (tansu 0.6, librdkafka's mock cluster) would add up to that wait to every request:
        // 100 ms instead of librdkafka's 500.
        _ => c
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100"),
    };
    for (k, v) in &cfg.options {
        if scope(k).fits(kind) {
            c.set(k.as_str(), v.to_string());
        }
    }
    c.set("bootstrap.servers", cfg.brokers.as_str());
    c
}

fn consumer(cfg: &EkycConfig, gateway_id: &str) -> Result<StreamConsumer, EkycError> {
    let mut c = client_config(cfg, gateway_id, Scope::Consumer);
    c.set("group.id", cfg.group_id.as_str());
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.create().map_err(|e| EkycError::Client("consumer", e))
}

/// The replies' producer: idempotent, `acks=all`.
pub fn producer(cfg: &EkycConfig, gateway_id: &str) -> Result<FutureProducer, EkycError> {
    let mut c = client_config(cfg, gateway_id, Scope::Producer);
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
    /// The group's shared licenses (`topics.licenses`), unless that is empty.
    feed: Option<Arc<Mutex<LicenseFeed>>>,
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
        let feed = match cfg.topics.licenses.as_str() {
            "" => None,
            topic => Some(
                LicenseFeed::new(
                    client_config(cfg, &gateway_id, Scope::Consumer),
                    &cfg.group_id,
                    topic,
                )
                .map_err(|e| EkycError::Client("license reader", e))?,
            ),
        };
        Ok(Worker {
            services: Arc::new(Services::open(cfg)?),
            feed: feed.map(|f| Arc::new(Mutex::new(f))),
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
            let Some(answer) = self.answer(&req, &stop).await else {
                break;
            };
            if !self
                .produce(&producer, req.key.as_deref(), &answer, &stop)
                .await
            {
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

    /// The request's replies; `None` only when `stop` cut the pipeline's work (the request is
    /// then left uncommitted). A failure of the pipeline itself (a panic on one picture) is that
    /// request's error answer: it must not stall the partition nor end the worker.
    async fn answer(&self, req: &Request, stop: &CancellationToken) -> Option<Answer> {
        let ran = match req.service {
            Service::Mtcnn => self.mtcnn(req, stop).await?,
            Service::Insightface => self.insightface(req).await,
        };
        let answer = match ran {
            Ok(a) => a,
            Err(_) if stop.is_cancelled() => return None,
            Err(failed) => failed,
        };
        if let Some(why) = &answer.error {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.counters.error(why);
            let id = String::from_utf8_lossy(req.key.as_deref().unwrap_or_default());
            warn!(topic = %req.topic, partition = req.partition, offset = req.offset,
                request_id = %id, error = %why,
                "ekyc: request answered with an error");
        }
        Some(answer)
    }

    /// An `MTCNN_REQUEST`'s answer; `Err` holds the answer to a failure of the pipeline.
    /// `None`: `stop` came while the shared licenses were being read.
    async fn mtcnn(
        &self,
        req: &Request,
        stop: &CancellationToken,
    ) -> Option<Result<Answer, Answer>> {
        let (max_bytes, max_pixels) = (self.cfg.max_message_bytes, self.cfg.max_pixels);
        let r = match msg::mtcnn_request(req.key.as_deref(), &req.value, max_bytes, max_pixels) {
            Ok(r) => r,
            Err(p) => return Some(Ok(poison_answer(&p))),
        };
        if r.api == ApiType::CompareFace && !self.catch_up(stop).await {
            return None;
        }
        let (head, services) = (Head::of_mtcnn(&r), self.services.clone());
        let ran = self.pool.run(move |e| services.mtcnn(e, r)).await;
        Some(ran.map_err(|e| head.detector_failed(format!("face pipeline: {e}"))))
    }

    /// An `INSIGHTFACE_REQUEST`'s answer; `Err` holds the answer to a failure of the pipeline.
    async fn insightface(&self, req: &Request) -> Result<Answer, Answer> {
        let max_bytes = self.cfg.max_message_bytes;
        let r = match msg::insightface_request(req.key.as_deref(), &req.value, max_bytes) {
            Ok(r) => r,
            Err(p) => return Ok(poison_answer(&p)),
        };
        let (head, services) = (Head::of_insightface(&r), self.services.clone());
        let ran = self.pool.run(move |e| services.insightface(e, r)).await;
        ran.map_err(|e| head.features_failed(format!("face pipeline: {e}")))
    }

    /// Brings this worker's licenses up to date with the group's before a `compare_face`;
    /// retried (with backoff) until it can be done, or `stop` (false): a stale license would
    /// compare the live face with the wrong document.
    async fn catch_up(&self, stop: &CancellationToken) -> bool {
        let Some(feed) = &self.feed else { return true };
        let mut backoff = self.backoff();
        loop {
            let (feed, services) = (feed.clone(), self.services.clone());
            let read = tokio::task::spawn_blocking(move || {
                let mut f = feed.lock().unwrap_or_else(|p| p.into_inner());
                f.catch_up(&services, Duration::from_secs(10))
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match read {
                Ok(n) => {
                    debug!(read = n, "ekyc: shared licenses up to date");
                    return true;
                }
                Err(e) => {
                    self.counters.error(&e);
                    warn!(error = %e, "ekyc: cannot read the shared licenses; retrying");
                }
            }
            self.pause(&mut backoff, stop).await;
            if stop.is_cancelled() {
                return false;
            }
        }
    }

    /// Where a reply goes; `None` for a license when they are not shared.
    fn reply_topic(&self, t: Topic) -> Option<&str> {
        let topics = &self.cfg.topics;
        match t {
            Topic::InsightfaceRequest => Some(&topics.insightface_request),
            Topic::InsightfaceReply => Some(&topics.insightface_reply),
            Topic::Result => Some(&topics.result),
            Topic::License => Some(topics.licenses.as_str()).filter(|t| !t.is_empty()),
        }
    }

    /// Produces the replies in order (keyed by `key`, the request id, unless a reply has its
    /// own), each acknowledged before the next; retries (with backoff) until they are, or
    /// `stop` (false).
    pub async fn produce(
        &self,
        producer: &FutureProducer,
        key: Option<&[u8]>,
        answer: &Answer,
        stop: &CancellationToken,
    ) -> bool {
        let mut backoff = self.backoff();
        for r in &answer.replies {
            let Some(topic) = self.reply_topic(r.topic) else {
                continue;
            };
            loop {
                let mut record = FutureRecord::to(topic).payload(&r.value);
                if let Some(k) = r.key.as_deref().or(key) {
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
