//! Where every accepted event enters camgate: typed check, de-duplication of `(sn, event_id)`
//! (DECISIONS §3: a duplicate within the window is acked again but not stored twice), and the
//! durable append to the outbox. Both camera paths (channel, hook) come through here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::SharedClock;
use crate::event::{Envelope, EventError, EventId, EventView, Source};
use crate::outbox::{Offset, Outbox, OutboxError};
use serde::{Deserialize, Serialize};

/// `[intake]`: de-duplication of `(sn, event_id)` (DECISIONS §3: within 24 h).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// Seconds a `(sn, event_id)` is remembered. Default 86400.
    pub dedupe_window_secs: u64,
    /// Most remembered pairs; the oldest are forgotten first. Default 200000 (~20 MB worst case).
    pub dedupe_max_entries: usize,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            dedupe_window_secs: 86_400,
            dedupe_max_entries: 200_000,
        }
    }
}

impl IntakeConfig {
    /// Appends every problem of `[intake]` to `errs`.
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.dedupe_max_entries == 0 {
            errs.push("intake.dedupe_max_entries: must be at least 1".into());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Newly stored and durable.
    Stored { event_id: EventId, offset: Offset },
    /// Seen (and stored) before inside the window: ack again, store nothing.
    Duplicate { event_id: EventId },
}

impl Accepted {
    pub fn event_id(&self) -> EventId {
        match *self {
            Accepted::Stored { event_id, .. } | Accepted::Duplicate { event_id } => event_id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The payload is not an event: a protocol error of the camera (not acked).
    #[error(transparent)]
    Event(#[from] EventError),
    /// Not stored (outbox full or I/O error): not acked, so the camera keeps it.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("a concurrent copy of this event failed to store")]
    ConcurrentFailure,
}

type Key = (Box<str>, EventId);

enum Entry {
    /// Stored; remembered until the instant.
    Done(Instant),
    /// Being stored by another caller; the channel says how it ended.
    InFlight(watch::Receiver<Option<bool>>),
}

struct Dedupe {
    map: HashMap<Key, Entry>,
    /// Keys in the order they were stored, for expiry and the size bound.
    order: VecDeque<(Instant, Key)>,
}

pub struct Intake {
    outbox: Outbox,
    window: Duration,
    max_entries: usize,
    dedupe: Mutex<Dedupe>,
    /// Wall time for `received_at_ms` and for the age of events seeded after a restart. The
    /// dedupe window itself runs on tokio's (pausable) monotonic clock.
    clock: SharedClock,
}

impl Intake {
    pub fn new(outbox: Outbox, window: Duration, max_entries: usize) -> Arc<Self> {
        Self::with_clock(outbox, window, max_entries, crate::clock::system())
    }

    pub fn with_clock(
        outbox: Outbox,
        window: Duration,
        max_entries: usize,
        clock: SharedClock,
    ) -> Arc<Self> {
        Arc::new(Intake {
            clock,
            outbox,
            window,
            max_entries: max_entries.max(1),
            dedupe: Mutex::new(Dedupe {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        })
    }

    /// The wall clock this intake stamps events with; the daemon hands the same one to every
    /// component.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Stores `raw` (one event's JSON) from `camera` unless it is a duplicate; resolves once
    /// the event is durable. The returned event id is what to acknowledge.
    pub async fn accept(
        self: Arc<Self>,
        camera: Arc<str>,
        source: Source,
        raw: Bytes,
    ) -> Result<Accepted, IntakeError> {
        let view = EventView::parse(&raw)?;
        let event_id = view.event_id;
        // Without a serial, event ids are only unique per camera.
        let key: Key = if view.sn.is_empty() {
            (format!("@{camera}").into(), event_id)
        } else {
            (view.sn.as_ref().into(), event_id)
        };
        let now = Instant::now();
        enum Seen {
            Done,
            InFlight(watch::Receiver<Option<bool>>),
            New(watch::Sender<Option<bool>>),
        }
        let seen = {
            let mut d = self.dedupe.lock().unwrap_or_else(|e| e.into_inner());
            self.expire(&mut d, now);
            match d.map.get(&key) {
                Some(Entry::Done(_)) => Seen::Done,
                Some(Entry::InFlight(rx)) => Seen::InFlight(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    d.map.insert(key.clone(), Entry::InFlight(rx));
                    Seen::New(tx)
                }
            }
        };
        let tx = match seen {
            Seen::Done => return Ok(Accepted::Duplicate { event_id }),
            Seen::InFlight(mut rx) => {
                // Another path (or a re-send) is storing the same event: answer as it ends.
                let outcome = rx.wait_for(|r| r.is_some()).await.map(|r| *r);
                return match outcome {
                    Ok(Some(true)) => Ok(Accepted::Duplicate { event_id }),
                    _ => Err(IntakeError::ConcurrentFailure),
                };
            }
            Seen::New(tx) => tx,
        };
        let received_at_ms = self.clock.now_ms();
        let result = match Envelope::encode(&camera, source, received_at_ms, &view, &raw) {
            Ok(bytes) => self
                .outbox
                .append(Bytes::from(bytes))
                .await
                .map_err(IntakeError::from),
            Err(e) => Err(e.into()),
        };
        {
            let mut d = self.dedupe.lock().unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok(_) => {
                    let until = Instant::now() + self.window;
                    d.map.insert(key.clone(), Entry::Done(until));
                    d.order.push_back((until, key));
                    self.expire(&mut d, Instant::now());
                }
                Err(_) => {
                    d.map.remove(&key);
                }
            }
        }
        let _ = tx.send(Some(result.is_ok()));
        result.map(|offset| Accepted::Stored { event_id, offset })
    }

    /// Remembers events stored before a restart (`(sn, event_id, received_at_ms)`, oldest first),
    /// so that a camera re-sending what a killed process stored but never acknowledged gets an
    /// ack and no second copy.
    pub fn seed(&self, stored: impl IntoIterator<Item = (String, EventId, u64)>) -> usize {
        let now_ms = self.clock.now_ms();
        let now = Instant::now();
        let window_ms = self.window.as_millis() as u64;
        let mut d = self.dedupe.lock().unwrap_or_else(|e| e.into_inner());
        for (sn, id, at_ms) in stored {
            let age = now_ms.saturating_sub(at_ms);
            if age >= window_ms {
                continue;
            }
            let until = now + Duration::from_millis(window_ms - age);
            let key: Key = (sn.into_boxed_str(), id);
            d.map.insert(key.clone(), Entry::Done(until));
            d.order.push_back((until, key));
            if d.order.len() > self.max_entries {
                if let Some((_, old)) = d.order.pop_front() {
                    d.map.remove(&old);
                }
            }
        }
        d.map.len()
    }

    fn expire(&self, d: &mut Dedupe, now: Instant) {
        while let Some((until, _)) = d.order.front() {
            if *until > now && d.order.len() <= self.max_entries {
                break;
            }
            let (_, key) = d.order.pop_front().expect("front exists");
            if matches!(d.map.get(&key), Some(Entry::Done(u)) if *u <= now || d.order.len() >= self.max_entries)
            {
                d.map.remove(&key);
            }
        }
    }

    /// Pairs currently remembered.
    pub fn remembered(&self) -> usize {
        self.dedupe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxConfig;

    async fn intake(dir: &std::path::Path, window: Duration, max: usize) -> Arc<Intake> {
        let cfg = OutboxConfig {
            dir: dir.to_owned(),
            ..OutboxConfig::default()
        };
        Intake::new(Outbox::open(&cfg).await.unwrap(), window, max)
    }

    fn ev(sn: &str, id: i64) -> Bytes {
        Bytes::from(format!(
            r#"{{"event_id":{id},"event_type":"face_recog_event","sn":"{sn}","extra":[1,2]}}"#
        ))
    }

    #[tokio::test]
    async fn duplicates_are_acked_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let i = intake(dir.path(), Duration::from_secs(86_400), 100).await;
        let cam: Arc<str> = "cam".into();
        let a = i
            .clone()
            .accept(cam.clone(), Source::Channel, ev("S1", 1))
            .await
            .unwrap();
        assert!(matches!(
            a,
            Accepted::Stored {
                event_id: EventId(1),
                offset: 0
            }
        ));
        let b = i
            .clone()
            .accept(cam.clone(), Source::Hook, ev("S1", 1))
            .await
            .unwrap();
        assert_eq!(
            b,
            Accepted::Duplicate {
                event_id: EventId(1)
            }
        );
        // Same id from another camera serial is a different event.
        let c = i
            .clone()
            .accept(cam.clone(), Source::Channel, ev("S2", 1))
            .await
            .unwrap();
        assert!(matches!(c, Accepted::Stored { offset: 1, .. }));
        assert_eq!(Outbox::dump(dir.path()).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_copies_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let i = intake(dir.path(), Duration::from_secs(86_400), 100).await;
        let cam: Arc<str> = "cam".into();
        let (a, b) = tokio::join!(
            i.clone().accept(cam.clone(), Source::Channel, ev("S", 9)),
            i.clone().accept(cam.clone(), Source::Hook, ev("S", 9))
        );
        let mut results = [a.unwrap(), b.unwrap()];
        results.sort_by_key(|r| matches!(r, Accepted::Duplicate { .. }));
        assert!(matches!(results[0], Accepted::Stored { .. }));
        assert!(matches!(results[1], Accepted::Duplicate { .. }));
        assert_eq!(Outbox::dump(dir.path()).unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_expires() {
        let dir = tempfile::tempdir().unwrap();
        let i = intake(dir.path(), Duration::from_secs(60), 100).await;
        let cam: Arc<str> = "cam".into();
        i.clone()
            .accept(cam.clone(), Source::Channel, ev("S", 1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        let again = i
            .clone()
            .accept(cam.clone(), Source::Channel, ev("S", 1))
            .await
            .unwrap();
        assert!(
            matches!(again, Accepted::Stored { .. }),
            "outside the window it is new"
        );
    }

    #[tokio::test]
    async fn the_memory_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let i = intake(dir.path(), Duration::from_secs(86_400), 10).await;
        let cam: Arc<str> = "cam".into();
        for n in 0..50 {
            i.clone()
                .accept(cam.clone(), Source::Channel, ev("S", n))
                .await
                .unwrap();
        }
        assert!(i.remembered() <= 10, "{}", i.remembered());
    }

    /// `received_at_ms` and the age of seeded events come from the injected clock.
    #[tokio::test]
    async fn wall_time_comes_from_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&OutboxConfig {
            dir: dir.path().into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let clock = crate::clock::ManualClock::new(1_796_280_000_000);
        let i = Intake::with_clock(
            outbox.clone(),
            Duration::from_secs(3600),
            100,
            clock.clone(),
        );
        // Seeded 59 min before the clock's time: inside the window; 61 min: outside.
        let n = i.seed([
            ("S".to_string(), EventId(1), 1_796_280_000_000 - 59 * 60_000),
            ("S".to_string(), EventId(2), 1_796_280_000_000 - 61 * 60_000),
        ]);
        assert_eq!(n, 1);
        clock.advance_ms(400);
        i.clone()
            .accept("cam".into(), Source::Channel, ev("S", 3))
            .await
            .unwrap();
        let stored = Outbox::dump(dir.path()).unwrap();
        let env: crate::event::StoredEnvelope = serde_json::from_slice(&stored[0].data).unwrap();
        assert_eq!(env.received_at_ms, 1_796_280_000_400);
    }

    #[tokio::test]
    async fn seeded_events_are_duplicates_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let i = intake(dir.path(), Duration::from_secs(3600), 100).await;
        let now = crate::clock::unix_now_ms();
        let n = i.seed([
            ("S".to_string(), EventId(1), now - 1000),
            ("S".to_string(), EventId(2), now - 7_200_000),
        ]);
        assert_eq!(n, 1, "the event older than the window is not remembered");
        let cam: Arc<str> = "cam".into();
        assert_eq!(
            i.clone()
                .accept(cam.clone(), Source::Channel, ev("S", 1))
                .await
                .unwrap(),
            Accepted::Duplicate {
                event_id: EventId(1)
            }
        );
        assert!(matches!(
            i.clone()
                .accept(cam, Source::Channel, ev("S", 2))
                .await
                .unwrap(),
            Accepted::Stored { .. }
        ));
    }

    #[tokio::test]
    async fn bad_events_are_errors_and_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let i = intake(dir.path(), Duration::from_secs(60), 10).await;
        let r = i
            .clone()
            .accept(
                "cam".into(),
                Source::Channel,
                Bytes::from_static(b"{\"event_id\":"),
            )
            .await;
        assert!(matches!(r, Err(IntakeError::Event(_))));
        assert!(Outbox::dump(dir.path()).unwrap().is_empty());
    }
}
