//! The Kafka sink: reads the outbox through its own cursor ("kafka") and produces every stored
//! envelope with an idempotent, acks=all producer. The cursor moves only over records the broker
//! confirmed (or that were set aside as undeliverable), so a broker outage of any length, a
//! librdkafka message timeout or a kill -9 leaves the events in the outbox, never lost; the
//! price is that a crash may re-send a few, always with the same key.
//!
//! Record: key `<sn>/<event_id>`, value the stored envelope exactly as in the outbox (camera,
//! source, received_at_ms, sn, event_id, event_type, the camera's event), timestamp
//! `received_at_ms`, headers `camera`, `event_type`, `gateway_id`. A face result of the vision
//! stage goes to `faces_topic` with the key of its event and `event_type` header `face_result`.

pub mod classify;
pub mod config;
mod dead_letter;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::net::backoff::Backoff;
use crate::outbox::{Offset, Outbox, OutboxError, Record};
use crate::results::{Stored, FACE_RESULT};
use crate::sinks::reader::{read_and_commit, Acked};
use crate::sinks::SinkStatus;

use super::window::{CommitWindow, WindowError};
pub use classify::{classify, ErrorClass};
pub use config::{KafkaConfig, OptionValue};
use dead_letter::DeadLetter;

pub const CONSUMER: &str = "kafka";

/// Records per read from the outbox (the reader task keeps one batch ahead of the producer).
const READ_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("kafka producer cannot be created: {0}")]
    Producer(#[source] KafkaError),
    #[error("kafka sink bookkeeping: {0}")]
    Window(#[from] WindowError),
}

/// One outbox record ready to produce (parsed once, re-produced as often as needed).
#[derive(Debug)]
struct Prepared {
    offset: Offset,
    key: String,
    data: Bytes,
    camera: String,
    event_type: String,
    received_at_ms: u64,
    /// A face result (to `faces_topic`), else an event (to `topic`).
    face_result: bool,
}

impl Prepared {
    /// `None`: a record that is not for Kafka (a transaction's notification, for the notifier).
    fn parse(r: &Record) -> Result<Option<Prepared>, String> {
        let (key, camera, event_type, received_at_ms, face_result) = match Stored::parse(&r.data)? {
            Stored::Event(e) => (
                format!("{}/{}", e.sn, e.event_id),
                e.camera.into_owned(),
                e.event_type.into_owned(),
                e.received_at_ms,
                false,
            ),
            Stored::FaceResult(h) => (
                h.key(),
                h.camera.into_owned(),
                FACE_RESULT.to_owned(),
                h.received_at_ms,
                true,
            ),
            Stored::Notice(_) => return Ok(None),
        };
        Ok(Some(Prepared {
            offset: r.offset,
            key,
            data: r.data.clone(),
            camera,
            event_type,
            received_at_ms,
            face_result,
        }))
    }
}

type DeliveryOutcome = (Arc<Prepared>, Result<(), KafkaError>);
type InFlight = FuturesUnordered<Pin<Box<dyn Future<Output = DeliveryOutcome> + Send>>>;

/// Called with each delivered record's offset (benchmarks measure latency with it).
pub type DeliveryObserver = Arc<dyn Fn(Offset) + Send + Sync>;

/// The sink's settings and shared handles; `run` consumes it.
pub struct KafkaSink {
    pub cfg: KafkaConfig,
    pub gateway_id: String,
    pub status: Arc<SinkStatus>,
    pub observer: Option<DeliveryObserver>,
}

/// Runs the sink until `shutdown` (or the outbox closes); returns the number of events
/// delivered.
pub async fn run(
    outbox: Outbox,
    cfg: KafkaConfig,
    gateway_id: String,
    status: Arc<SinkStatus>,
    shutdown: CancellationToken,
) -> Result<u64, KafkaSinkError> {
    KafkaSink {
        cfg,
        gateway_id,
        status,
        observer: None,
    }
    .run(outbox, shutdown)
    .await
}

struct State {
    cfg: KafkaConfig,
    gateway_id: String,
    status: Arc<SinkStatus>,
    observer: Option<DeliveryObserver>,
    producer: FutureProducer,
    /// Each record's receive time rides along, for the lag figures.
    window: CommitWindow<u64>,
    in_flight: InFlight,
    /// Records waiting to be produced again (transient failure, queue full), by offset.
    retry: BTreeMap<Offset, Arc<Prepared>>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    dead: DeadLetter,
    delivered: u64,
    /// What the reader task may commit (and how many deliveries that reports).
    acked: Acked,
    acked_tx: watch::Sender<Acked>,
    /// Start of the current run of failures with no delivery in between.
    failing_since: Option<Instant>,
}

impl KafkaSink {
    pub async fn run(
        self,
        outbox: Outbox,
        shutdown: CancellationToken,
    ) -> Result<u64, KafkaSinkError> {
        let consumer = outbox.consumer(CONSUMER)?;
        let producer = create_producer(&self.cfg, &self.gateway_id)?;
        let cfg = self.cfg;
        let (batches_tx, mut batches) = mpsc::channel(1);
        let (acked_tx, acked_rx) = watch::channel(Acked::default());
        let reader_stop = CancellationToken::new();
        let reader = tokio::spawn(read_and_commit(
            consumer,
            READ_BATCH,
            Duration::from_millis(cfg.commit_interval_ms.max(1)),
            batches_tx,
            acked_rx,
            self.status.clone(),
            reader_stop.clone(),
        ));
        let mut st = State {
            window: CommitWindow::new(cfg.max_in_flight, cfg.max_in_flight_bytes),
            backoff: Backoff::new(
                Duration::from_millis(cfg.retry_backoff_min_ms.max(1)),
                Duration::from_millis(
                    cfg.retry_backoff_max_ms
                        .max(cfg.retry_backoff_min_ms)
                        .max(1),
                ),
            ),
            dead: DeadLetter::new(cfg.dead_letter_path.clone()),
            gateway_id: self.gateway_id,
            status: self.status,
            observer: self.observer,
            producer,
            in_flight: FuturesUnordered::new(),
            retry: BTreeMap::new(),
            retry_at: None,
            delivered: 0,
            acked: Acked::default(),
            acked_tx,
            failing_since: None,
            cfg,
        };
        info!(brokers = %st.cfg.brokers, topic = %st.cfg.topic, "kafka sink started");
        let lag_every = Duration::from_secs(st.cfg.lag_log_secs.max(1));
        let mut lag_tick = tokio::time::interval_at(Instant::now() + lag_every, lag_every);
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            if st.retry_at.is_some_and(|t| t <= Instant::now()) {
                st.retry_at = None;
                st.produce_retries().await?;
            }
            // The window may pass its bound by one batch read ahead: bounded all the same.
            let room = st.window.has_room() && st.retry.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((p, res)) = st.in_flight.next(), if !st.in_flight.is_empty() => st.on_delivery(p, res).await?,
                _ = tokio::time::sleep_until(st.retry_at.unwrap_or(far)), if st.retry_at.is_some() => {}
                _ = lag_tick.tick() => st.log_lag(&outbox),
                batch = batches.recv(), if room => match batch {
                    Some(Ok(batch)) => st.produce_batch(batch).await?,
                    Some(Err(e)) => return Err(e.into()),
                    // The outbox was shut down.
                    None => break,
                },
            }
            st.progress();
        }
        st.finish().await;
        reader_stop.cancel();
        match reader.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "kafka sink: final commit failed; those events will be sent again")
            }
            Err(e) => warn!(error = %e, "kafka sink: outbox reader task failed"),
        }
        Ok(st.delivered)
    }
}

fn create_producer(cfg: &KafkaConfig, gateway_id: &str) -> Result<FutureProducer, KafkaSinkError> {
    cfg.client_config(gateway_id)
        .create()
        .map_err(KafkaSinkError::Producer)
}

impl State {
    async fn produce_batch(&mut self, batch: Vec<Record>) -> Result<(), KafkaSinkError> {
        for r in batch {
            let p = match Prepared::parse(&r) {
                Ok(Some(p)) => Arc::new(p),
                Ok(None) => {
                    self.window.push(r.offset, r.data.len(), 0)?;
                    self.settle(r.offset)?;
                    continue;
                }
                Err(reason) => {
                    // Not ours to fix: set aside so the stream goes on.
                    self.window.push(r.offset, r.data.len(), 0)?;
                    let key = format!("offset/{}", r.offset);
                    if self
                        .dead
                        .write(r.offset, &key, &reason, &r.data)
                        .await
                        .is_ok()
                    {
                        self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        self.settle(r.offset)?;
                    } else {
                        // Cannot even set it aside: stop reading until the disk recovers (the
                        // outbox bound then refuses new events, which the cameras retry).
                        return Err(KafkaSinkError::Outbox(OutboxError::Io {
                            path: self.cfg.dead_letter_path.clone(),
                            source: std::io::Error::other("dead-letter file not writable"),
                        }));
                    }
                    continue;
                }
            };
            self.window.push(p.offset, p.data.len(), p.received_at_ms)?;
            if self.retry.is_empty() {
                self.produce(p).await?;
            } else {
                // Keep offset order behind records already waiting for the queue.
                self.retry.insert(p.offset, p);
            }
        }
        Ok(())
    }

    async fn produce_retries(&mut self) -> Result<(), KafkaSinkError> {
        while let Some((_, p)) = self.retry.pop_first() {
            self.produce(p).await?;
            if self.retry_at.is_some() {
                // The queue filled up again (or another failure): wait before the rest.
                break;
            }
        }
        Ok(())
    }

    /// Enqueues one record; on refusal it is retried, dead-lettered or the producer rebuilt.
    async fn produce(&mut self, p: Arc<Prepared>) -> Result<(), KafkaSinkError> {
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "camera",
                value: Some(p.camera.as_str()),
            })
            .insert(Header {
                key: "event_type",
                value: Some(p.event_type.as_str()),
            })
            .insert(Header {
                key: "gateway_id",
                value: Some(self.gateway_id.as_str()),
            });
        let topic = if p.face_result {
            &self.cfg.faces_topic
        } else {
            &self.cfg.topic
        };
        let mut record = FutureRecord::to(topic)
            .key(p.key.as_str())
            .payload(&p.data[..])
            .headers(headers);
        if let Ok(ts) = i64::try_from(p.received_at_ms) {
            if ts > 0 {
                record = record.timestamp(ts);
            }
        }
        let err = match self.producer.send_result(record) {
            Ok(fut) => {
                let p2 = p.clone();
                self.in_flight.push(Box::pin(async move {
                    let res = match fut.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e),
                        Err(_canceled) => Err(KafkaError::Canceled),
                    };
                    (p2, res)
                }));
                return Ok(());
            }
            Err((e, _)) => e,
        };
        self.on_failure(p, err, true).await
    }

    async fn on_delivery(
        &mut self,
        p: Arc<Prepared>,
        res: Result<(), KafkaError>,
    ) -> Result<(), KafkaSinkError> {
        match res {
            Ok(()) => {
                self.settle(p.offset)?;
                // Counted in the status once committed (the reader task adds `acked.count`).
                self.acked.count += 1;
                self.delivered += 1;
                if self.backoff.attempt() > 0 {
                    info!(offset = p.offset, "kafka deliveries resumed");
                }
                self.backoff.reset();
                self.failing_since = None;
                self.status.set_connected(true);
                if let Some(f) = &self.observer {
                    f(p.offset);
                }
                Ok(())
            }
            Err(e) => self.on_failure(p, e, false).await,
        }
    }

    async fn on_failure(
        &mut self,
        p: Arc<Prepared>,
        e: KafkaError,
        at_enqueue: bool,
    ) -> Result<(), KafkaSinkError> {
        match classify(&e) {
            ErrorClass::Permanent => {
                let reason = e.to_string();
                warn!(offset = p.offset, key = %p.key, error = %reason, "kafka refuses the record for good; dead-lettering it");
                if self
                    .dead
                    .write(p.offset, &p.key, &reason, &p.data)
                    .await
                    .is_ok()
                {
                    self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    self.settle(p.offset)?;
                } else {
                    self.status.set_error(format!(
                        "dead-letter file {} not writable",
                        self.cfg.dead_letter_path.display()
                    ));
                    self.schedule_retry(p);
                }
            }
            ErrorClass::QueueFull => {
                // librdkafka's queue is larger than our window unless options shrank it; a short
                // pause lets it drain. Not a broker problem, so not counted as a retry.
                debug!(offset = p.offset, "kafka producer queue full; backing off");
                self.status.queue_full.fetch_add(1, Ordering::Relaxed);
                self.retry.insert(p.offset, p);
                let soon = Instant::now() + Duration::from_millis(50);
                self.retry_at = Some(self.retry_at.map_or(soon, |t| t.min(soon)));
            }
            ErrorClass::Fatal => {
                warn!(offset = p.offset, error = %e, fatal = ?self.producer.client().fatal_error(), "kafka producer hit a fatal error; recreating it");
                self.status.set_error(&e);
                self.status.retries.fetch_add(1, Ordering::Relaxed);
                self.schedule_retry(p);
                self.rebuild_producer().await?;
            }
            ErrorClass::Transient => {
                // Includes MsgTimedOut: librdkafka gave up on it, we do not; it is produced again
                // and the cursor stays below it until the broker confirms it.
                if self.backoff.attempt() == 0 {
                    warn!(offset = p.offset, error = %e, at_enqueue, "kafka delivery failed; retrying with backoff (events wait in the outbox)");
                } else {
                    debug!(offset = p.offset, error = %e, "kafka delivery failed again");
                }
                self.status.set_error(&e);
                self.status.set_connected(false);
                self.status.retries.fetch_add(1, Ordering::Relaxed);
                self.schedule_retry(p);
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(self.cfg.producer_reset_ms) {
                    warn!(failing_for = ?since.elapsed(), "no kafka delivery for a long time; recreating the producer");
                    self.failing_since = Some(Instant::now());
                    self.rebuild_producer().await?;
                }
            }
        }
        Ok(())
    }

    fn schedule_retry(&mut self, p: Arc<Prepared>) {
        self.retry.insert(p.offset, p);
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay(&mut rand::rng()));
        }
    }

    /// Replaces a producer that librdkafka declared unusable. Dropping the old one purges what it
    /// still held; those deliveries come back as purge errors (transient) and are re-produced.
    async fn rebuild_producer(&mut self) -> Result<(), KafkaSinkError> {
        let new = create_producer(&self.cfg, &self.gateway_id)?;
        let old = std::mem::replace(&mut self.producer, new);
        // Dropping joins librdkafka's threads and flushes for up to 500 ms: not on the runtime.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        Ok(())
    }

    /// A record delivered or dead-lettered. Each offset is settled once: one that is not in the
    /// window is a bug, and stops the sink rather than commit past something unsent.
    fn settle(&mut self, offset: Offset) -> Result<(), KafkaSinkError> {
        self.window
            .settle(offset)
            .map(|_| ())
            .ok_or(WindowError::Unknown(offset).into())
    }

    /// Hands what may be committed to the reader task; updates the age of the oldest pending.
    fn progress(&mut self) {
        if let Some((through, _)) = self.window.take_committable() {
            self.acked.through = Some(through);
            self.acked_tx.send_replace(self.acked);
        }
        let oldest = self
            .window
            .oldest_unsettled()
            .map(|(_, &at)| at)
            .or_else(|| self.retry.values().map(|p| p.received_at_ms).min());
        self.status.set_oldest_pending(oldest.filter(|&t| t > 0));
    }

    fn log_lag(&self, outbox: &Outbox) {
        let snap = self
            .status
            .snapshot(&outbox.stats(), crate::clock::unix_now_ms());
        if snap.lag_events > 0 {
            info!(
                lag_events = snap.lag_events,
                lag_bytes = snap.lag_bytes,
                oldest_pending_age_ms = snap.oldest_pending_age_ms,
                in_flight = self.in_flight.len(),
                retrying = self.retry.len(),
                connected = snap.connected,
                last_error = snap.last_error.as_deref().unwrap_or(""),
                "kafka sink lag"
            );
        }
    }

    /// Shutdown: wait a bounded time for deliveries in flight, commit what was confirmed. What
    /// is left stays in the outbox for the next start (re-sent with the same key at worst).
    async fn finish(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.shutdown_flush_ms);
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some((p, Ok(())))) => {
                    let _ = self.on_delivery(p, Ok(())).await;
                }
                Ok(Some((p, Err(e)))) if classify(&e) == ErrorClass::Permanent => {
                    let _ = self.on_failure(p, e, false).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.progress();
        let left = self.in_flight.len() + self.retry.len() + self.window.len();
        info!(
            delivered = self.delivered,
            not_confirmed = left,
            "kafka sink stopped"
        );
        self.in_flight = FuturesUnordered::new();
        let p = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // Whatever is still queued is purged; it was never committed.
            p.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        })
        .await;
    }
}
