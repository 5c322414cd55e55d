//! Notifier sink: POSTs each GBDS notification in the outbox (DECISIONS §6) to every configured
//! endpoint. Each endpoint has its own task and its own outbox cursor (`notifier-<name>`), so a
//! dead or hanging endpoint delays no other.
//!
//! Per endpoint, strictly in outbox order: a notification is POSTed until the answer is exactly
//! HTTP 200 (any other status, a connection error, a timeout or an answer over
//! `max_answer_bytes` is a failed attempt), with capped exponential backoff and full jitter
//! between attempts, forever; the next is not sent before.
//!
//! Progress is marked in the consumer's progress file (`Consumer::mark`, one `pwrite`, no fsync):
//! before a POST beyond the last mark, "done through D, sending through N + LEASE - 1" (N: the
//! one about to be sent, never beyond what was read); at the end of each batch read, "done
//! through D". The cursor is made durable at most every `COMMIT_EVERY`
//! (two fsyncs). So a notification costs no fsync and a sixteenth of a `pwrite`, and the next
//! POST follows the last 200 at once (measured: one `pwrite` per POST cost a fifth of the rate).
//! After a crash of the process (kill -9, OOM, panic) the page cache still holds the marks:
//! nothing marked done is sent again; the notifications after it that the lease covered (at most
//! `LEASE`, often only the one whose POST was on its way) are POSTed again and counted
//! (`reposted`). After a power loss the deliveries of the last `COMMIT_EVERY` may be re-POSTed
//! too, uncounted. Every re-POST carries the same `X-Camgate-Notification: <tguid>/<seq>` for the
//! receiver to drop. Records that are not notifications are passed over.

pub mod config;
pub mod sign;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::net::backoff::Backoff;
use crate::net::https::{HttpsClient, HttpsError, KeptConnection};
use crate::notice::Notification;
use crate::outbox::{Consumer, Offset, Outbox, OutboxError, Record};
use crate::results::Stored;
use crate::sinks::SinkStatus;

pub use config::{EndpointConfig, NotifierConfig};

/// Outbox consumer of endpoint `<name>`: `notifier-<name>`.
pub const CONSUMER_PREFIX: &str = "notifier-";
/// The idempotency key of a notification, `<tguid>/<seq>`.
pub const NOTIFICATION_HEADER: &str = "x-camgate-notification";
/// Unix milliseconds covered by the signature.
pub const TIMESTAMP_HEADER: &str = "x-camgate-timestamp";
pub const SIGNATURE_HEADER: &str = "x-camgate-signature";

/// Records read at once (camera events are mostly passed over).
const BATCH: usize = 64;
/// Records POSTed at most beyond the last progress mark; so, at most the notifications POSTed
/// again after a crash of the process.
const LEASE: u64 = 16;
/// The cursor is made durable at most this often: a commit is two fsyncs, and the progress
/// marks in between already cover a crash of the process.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("notifier endpoint {name}: {message}")]
    Config { name: String, message: String },
    #[error(transparent)]
    Http(#[from] HttpsError),
    #[error("answered HTTP {0} (only 200 counts as delivered)")]
    Status(u16),
    #[error("header value: {0}")]
    Header(#[from] hyper::header::InvalidHeaderValue),
}

/// The name an endpoint's status has in `camgate status`.
pub fn status_name(ep: &EndpointConfig) -> String {
    format!("notifier:{}", ep.effective_name())
}

/// One notification ready to POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub offset: Offset,
    /// `<tguid>/<seq>`.
    pub key: String,
    pub body: Bytes,
    /// When the notification (or the face event) came about, for the lag figures.
    pub since_ms: u64,
}

/// What record `r` is for an endpoint: a notification to POST, or `None` (passed over).
pub fn outgoing(r: &Record, extra_fields: bool, camera_matches: bool) -> Option<Outgoing> {
    match Stored::parse(&r.data) {
        Ok(Stored::Notice(n)) => Some(Outgoing {
            offset: r.offset,
            key: n.key(),
            body: n.body(extra_fields).into(),
            since_ms: n.at_ms,
        }),
        Ok(Stored::FaceResult(h)) if camera_matches => {
            let status = search_status(&r.data)?;
            let tguid = search_tguid(&h.key());
            let n = Notification {
                operation: "SEARCH".into(),
                tguid: tguid.clone(),
                status: status.into(),
                treatment: None,
                uguid: None,
            };
            Some(Outgoing {
                offset: r.offset,
                key: format!("{tguid}/0"),
                body: serde_json::to_vec(&n).ok()?.into(),
                since_ms: h.received_at_ms,
            })
        }
        Ok(_) => None,
        Err(e) => {
            warn!(offset = r.offset, error = %e, "outbox record not understood; the notifier passes over it");
            None
        }
    }
}

/// The `tguid` of a camera's search: the same for the same face result, on every gateway
/// (UUID v5 in the URL namespace of `camgate:face_result:<sn>/<event_id>`).
pub fn search_tguid(result_key: &str) -> String {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("camgate:face_result:{result_key}").as_bytes(),
    )
    .to_string()
}

#[derive(Deserialize)]
struct SearchedResult {
    #[serde(default)]
    faces: Vec<SearchedFace>,
}

#[derive(Deserialize)]
struct SearchedFace {
    #[serde(default)]
    identity: Option<IgnoredAny>,
    #[serde(default)]
    quality: Option<SearchedQuality>,
}

#[derive(Deserialize)]
struct SearchedQuality {
    #[serde(default)]
    ok: bool,
}

/// `MATCH` or `NOT_MATCH` for a result with a face that went through the gallery search (only
/// faces that pass the quality bars do), else `None`.
fn search_status(data: &[u8]) -> Option<&'static str> {
    let r: SearchedResult = serde_json::from_slice(data).ok()?;
    let searched =
        |f: &SearchedFace| f.identity.is_some() || f.quality.as_ref().is_some_and(|q| q.ok);
    if !r.faces.iter().any(searched) {
        return None;
    }
    Some(if r.faces.iter().any(|f| f.identity.is_some()) {
        "MATCH"
    } else {
        "NOT_MATCH"
    })
}

/// An endpoint with its secrets read and its client built.
struct Endpoint {
    name: String,
    conn: KeptConnection,
    path: String,
    bearer: Option<HeaderValue>,
    secret: Option<Vec<u8>>,
    extra_fields: bool,
    max_answer: usize,
}

impl Endpoint {
    fn open(cfg: &EndpointConfig) -> Result<Self, NotifierError> {
        let name = cfg.effective_name();
        let err = |message: String| NotifierError::Config {
            name: name.clone(),
            message,
        };
        let target = config::parse_url(&cfg.url).map_err(err)?;
        let tls = cfg.client_tls(&target).map_err(err)?;
        let bearer = match cfg.token().map_err(err)? {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Endpoint {
            conn: KeptConnection::new(HttpsClient::new(&target.authority, tls, cfg.timeout())),
            path: target.path_and_query,
            bearer,
            secret: cfg.hmac_secret().map_err(err)?,
            extra_fields: cfg.extra_fields,
            max_answer: cfg.max_answer_bytes,
            name,
        })
    }

    /// One POST; `Ok` only for a 200.
    async fn attempt(&mut self, n: &Outgoing, now_ms: u64) -> Result<(), NotifierError> {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static(NOTIFICATION_HEADER),
            HeaderValue::from_str(&n.key)?,
        );
        if let Some(b) = &self.bearer {
            h.insert(AUTHORIZATION, b.clone());
        }
        if let Some(s) = &self.secret {
            h.insert(HeaderName::from_static(TIMESTAMP_HEADER), now_ms.into());
            let sig = sign::signature(s, now_ms, &n.body);
            h.insert(
                HeaderName::from_static(SIGNATURE_HEADER),
                HeaderValue::from_str(&sig)?,
            );
        }
        let answer = self
            .conn
            .post_with_headers(
                &self.path,
                "application/json",
                &h,
                n.body.clone(),
                self.max_answer,
            )
            .await?;
        match answer.status {
            200 => Ok(()),
            other => Err(NotifierError::Status(other)),
        }
    }
}

/// Delivers to one endpoint until `stop`; returns the notifications delivered.
pub async fn run(
    outbox: Outbox,
    cfg: EndpointConfig,
    notify_camera_matches: bool,
    clock: SharedClock,
    status: Arc<SinkStatus>,
    stop: CancellationToken,
) -> Result<u64, NotifierError> {
    let ep = Endpoint::open(&cfg)?;
    let consumer = outbox.consumer(&format!("{CONSUMER_PREFIX}{}", ep.name))?;
    if let Some(c) = consumer.committed() {
        status.committed(c);
    }
    info!(endpoint = %ep.name, url = %cfg.url, "notifier started");
    let mut s = Sender {
        backoff: Backoff::new(
            Duration::from_millis(cfg.retry_min_ms),
            Duration::from_millis(cfg.retry_max_ms),
        ),
        ep,
        consumer,
        camera_matches: notify_camera_matches,
        clock,
        status,
        stop,
        done: None,
        marked: None,
        leased: None,
        read_through: None,
        delivered: 0,
    };
    let forwarded = match s.forward().await {
        Err(OutboxError::Closed) => Ok(()),
        other => other,
    };
    s.finish().await;
    forwarded?;
    Ok(s.delivered)
}

/// The delivery loop of one endpoint.
struct Sender {
    ep: Endpoint,
    consumer: Consumer,
    camera_matches: bool,
    clock: SharedClock,
    status: Arc<SinkStatus>,
    stop: CancellationToken,
    backoff: Backoff,
    /// Every record through this offset is delivered or passed over.
    done: Option<Offset>,
    /// The progress mark: done through `marked`, POSTs possibly on their way through `leased`.
    marked: Option<Offset>,
    leased: Option<Offset>,
    /// The last record read from the outbox.
    read_through: Option<Offset>,
    /// Delivered (answered 200) since start.
    delivered: u64,
}

impl Sender {
    async fn forward(&mut self) -> Result<(), OutboxError> {
        let mut due: Option<Instant> = None;
        loop {
            let batch = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(()),
                _ = sleep_until_some(due) => {
                    due = None;
                    self.commit().await?;
                    continue;
                }
                b = self.consumer.next_batch(BATCH) => b?,
            };
            for (offset, item) in self.prepare(&batch) {
                let Some(n) = item else {
                    self.done = Some(offset);
                    continue;
                };
                if !self.deliver(&n).await? {
                    return Ok(());
                }
                self.done = Some(offset);
                self.status.committed(offset);
                self.status.delivered.fetch_add(1, Ordering::Relaxed);
                self.delivered += 1;
                if due.is_some_and(|t| t <= Instant::now()) {
                    due = None;
                    self.commit().await?;
                }
            }
            self.caught_up()?;
            if self.done > self.consumer.committed() && due.is_none() {
                due = Some(Instant::now() + COMMIT_EVERY);
            }
        }
    }

    /// What each record of `batch` is for this endpoint, worked out before any is sent: between
    /// one 200 and the next POST there is then only the progress mark.
    fn prepare(&mut self, batch: &[Record]) -> Vec<(Offset, Option<Outgoing>)> {
        self.read_through = batch.last().map(|r| r.offset);
        let (extra, camera) = (self.ep.extra_fields, self.camera_matches);
        batch
            .iter()
            .map(|r| (r.offset, outgoing(r, extra, camera)))
            .collect()
    }

    /// Everything read is delivered or passed over: the mark says so, and that nothing is on
    /// its way.
    fn caught_up(&mut self) -> Result<(), OutboxError> {
        if self.leased.is_some() || self.done > self.marked {
            self.consumer.mark(self.done, None)?;
            (self.leased, self.marked) = (None, self.done);
        }
        Ok(())
    }

    /// Posts `n` until it is delivered (`true`) or the sink stops (`false`).
    async fn deliver(&mut self, n: &Outgoing) -> Result<bool, OutboxError> {
        self.status.set_oldest_pending(Some(n.since_ms));
        if self.consumer.sent_before().is_some_and(|t| n.offset <= t) {
            // The previous process may have POSTed this one: the endpoint may have it.
            self.status.reposted.fetch_add(1, Ordering::Relaxed);
            warn!(endpoint = %self.ep.name, notification = %n.key, "POSTing again a notification the previous process may have sent");
        }
        if self.leased.is_none_or(|l| n.offset > l) {
            // Never beyond what was read: later records cannot have been sent.
            let through = (n.offset + LEASE - 1).min(self.read_through.unwrap_or(n.offset));
            self.consumer.mark(self.done, Some(through))?;
            (self.leased, self.marked) = (Some(through), self.done);
        }
        self.attempts(n).await
    }

    /// Attempts `n` until it is delivered (`true`) or the sink stops (`false`).
    async fn attempts(&mut self, n: &Outgoing) -> Result<bool, OutboxError> {
        loop {
            let now_ms = self.clock.now_ms();
            let tried = tokio::select! {
                _ = self.stop.cancelled() => return Ok(false),
                r = self.ep.attempt(n, now_ms) => r,
            };
            let e = match tried {
                Ok(()) => {
                    self.backoff.reset();
                    self.status.set_connected(true);
                    self.status.set_oldest_pending(None);
                    return Ok(true);
                }
                Err(e) => e,
            };
            self.status.retries.fetch_add(1, Ordering::Relaxed);
            self.status.set_connected(false);
            self.status.set_error(format!("{}: {e}", n.key));
            let wait = self.backoff.next_delay(&mut rand::rng());
            warn!(endpoint = %self.ep.name, notification = %n.key, error = %e, retry_in = ?wait, "notification not delivered");
            // Nothing else to do while waiting: what is done so far is not read again.
            self.commit().await?;
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(false),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn commit(&mut self) -> Result<(), OutboxError> {
        let Some(through) = self.done else {
            return Ok(());
        };
        if self.consumer.committed() >= Some(through) {
            return Ok(());
        }
        self.consumer.commit(through).await?;
        self.status.committed(through);
        Ok(())
    }

    /// The last commit on the way out.
    async fn finish(&mut self) {
        match self.commit().await {
            Ok(()) => {}
            Err(e) => {
                warn!(endpoint = %self.ep.name, error = %e, "notifier cursor not committed at stop; the progress marks stand in for it")
            }
        }
        info!(endpoint = %self.ep.name, delivered = self.delivered, "notifier stopped");
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::NoticeRecord;
    use crate::results::{FaceResult, Identity, ResultFace, ResultQuality, Timings, FACE_RESULT};

    fn face(ok: bool, who: Option<&str>) -> ResultFace {
        ResultFace {
            bbox: [0.0, 0.0, 112.0, 112.0],
            score: 0.99,
            landmarks: [[0.0, 0.0]; 5],
            quality: ResultQuality {
                size: 112.0,
                blur: 0.1,
                pose: 0.1,
                ok,
            },
            identity: who.map(|k| Identity {
                key: k.into(),
                pguid: "p".into(),
                score: 0.7,
            }),
            uguid: None,
        }
    }

    fn result(faces: Vec<ResultFace>) -> Record {
        let r = FaceResult {
            kind: FACE_RESULT.into(),
            camera: "door".into(),
            sn: "SN1".into(),
            event_id: 7,
            received_at_ms: 1_000,
            processed_at_ms: 1_100,
            model: "m".into(),
            faces,
            timings_ms: Timings::default(),
            error: None,
        };
        Record {
            offset: 3,
            data: serde_json::to_vec(&r).unwrap().into(),
        }
    }

    #[test]
    fn camera_searches_become_search_notifications_only_when_asked() {
        let tguid = search_tguid("SN1/7");
        assert_eq!(tguid, search_tguid("SN1/7"), "deterministic");
        assert_ne!(tguid, search_tguid("SN1/8"));
        let body =
            |s: &str| format!(r#"{{"operation":"SEARCH","tguid":"{tguid}","status":"{s}"}}"#);
        let m = outgoing(
            &result(vec![face(false, None), face(true, Some("alice"))]),
            false,
            true,
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&m.body), body("MATCH"));
        assert_eq!(
            (m.key, m.offset, m.since_ms),
            (format!("{tguid}/0"), 3, 1_000)
        );
        let nm = outgoing(&result(vec![face(true, None)]), false, true).unwrap();
        assert_eq!(String::from_utf8_lossy(&nm.body), body("NOT_MATCH"));
        assert!(
            outgoing(&result(vec![face(false, None)]), false, true).is_none(),
            "not searched"
        );
        assert!(outgoing(&result(vec![]), false, true).is_none(), "no face");
        assert!(
            outgoing(&result(vec![face(true, Some("a"))]), false, false).is_none(),
            "off"
        );
    }

    #[test]
    fn notices_are_posted_and_events_passed_over() {
        let n = NoticeRecord::new(
            1,
            5,
            Notification {
                operation: "ENROLL".into(),
                tguid: "t-1".into(),
                status: "ENROLLED".into(),
                treatment: None,
                uguid: None,
            },
        );
        let r = Record {
            offset: 9,
            data: serde_json::to_vec(&n).unwrap().into(),
        };
        let o = outgoing(&r, false, false).unwrap();
        assert_eq!((o.key.as_str(), o.since_ms), ("t-1/1", 5));
        assert_eq!(o.body, Bytes::from(n.body(false)));
        let env = br#"{"camera":"c","source":"channel","received_at_ms":1,"sn":"S","event_id":3,"event_type":"face_recog_event","event":{"event_id":3}}"#;
        let ev = Record {
            offset: 10,
            data: Bytes::from_static(env),
        };
        assert!(outgoing(&ev, true, true).is_none());
        let junk = Record {
            offset: 11,
            data: Bytes::from_static(b"not json"),
        };
        assert!(outgoing(&junk, true, true).is_none());
    }
}
