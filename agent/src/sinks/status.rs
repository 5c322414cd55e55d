//! Counters and state per forwarding sink, shared between the sink task (writer) and the health
//! file, `camgate status`, the logs and the benchmarks (readers). Lag is computed from the
//! outbox's end and the sink's committed cursor, so it is right even while the sink is stuck.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::outbox::{Offset, OutboxStats};

#[derive(Debug, Default)]
pub struct SinkStatus {
    connected: AtomicBool,
    /// Events whose delivery the broker confirmed (and whose cursor was then committed).
    pub delivered: AtomicU64,
    /// Events set aside in the dead-letter file (permanent errors), counted as done.
    pub dead_lettered: AtomicU64,
    /// Transient failures (broker down, timeouts) that led to a retry.
    pub retries: AtomicU64,
    /// Sends the client library's own queue refused for now (Kafka: librdkafka's QueueFull);
    /// retried shortly, and not a broker failure.
    pub queue_full: AtomicU64,
    /// Records sent again because the previous process died before their answer came (the
    /// notifier: a POST on its way at a crash).
    pub reposted: AtomicU64,
    /// Offset + 1 of the last committed record; 0 before the first commit.
    committed_next: AtomicU64,
    /// `received_at_ms` of the oldest event read but not yet committed; 0 when none.
    oldest_pending_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkSnapshot {
    pub connected: bool,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retries: u64,
    pub queue_full: u64,
    pub reposted: u64,
    /// Events stored in the outbox that this sink has not committed yet.
    pub lag_events: u64,
    /// Bytes those events take in the outbox (estimated inside the oldest segment involved, see
    /// `OutboxStats::bytes_from`).
    pub lag_bytes: u64,
    /// Age in milliseconds of the oldest event this sink holds but has not delivered; 0 when none.
    pub oldest_pending_age_ms: u64,
    pub last_error: Option<String>,
}

impl SinkStatus {
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    pub fn set_error(&self, e: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// Records a commit through `offset` (inclusive).
    pub fn committed(&self, offset: Offset) {
        self.committed_next.fetch_max(offset + 1, Ordering::Relaxed);
    }

    /// Sets (or clears, with `None`) the receive time of the oldest event not yet delivered.
    pub fn set_oldest_pending(&self, received_at_ms: Option<u64>) {
        self.oldest_pending_ms
            .store(received_at_ms.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn snapshot(&self, outbox: &OutboxStats, now_ms: u64) -> SinkSnapshot {
        let committed_next = self.committed_next.load(Ordering::Relaxed);
        // Records below the oldest stored one were released (delivered by every sink).
        let oldest_stored = outbox.next_offset.saturating_sub(outbox.stored_records);
        let oldest = self.oldest_pending_ms.load(Ordering::Relaxed);
        let from = committed_next.max(oldest_stored);
        SinkSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            reposted: self.reposted.load(Ordering::Relaxed),
            lag_events: outbox.next_offset.saturating_sub(from),
            lag_bytes: outbox.bytes_from(from),
            oldest_pending_age_ms: if oldest == 0 {
                0
            } else {
                now_ms.saturating_sub(oldest)
            },
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_committed_cursor_or_the_oldest_stored_record() {
        let s = SinkStatus::default();
        let ob = OutboxStats {
            next_offset: 100,
            stored_records: 100,
            ..Default::default()
        };
        assert_eq!(s.snapshot(&ob, 0).lag_events, 100);
        s.committed(39);
        assert_eq!(s.snapshot(&ob, 0).lag_events, 60);
        // A fresh process that has not committed yet: records released earlier are not lag.
        let fresh = SinkStatus::default();
        let ob = OutboxStats {
            next_offset: 100,
            stored_records: 10,
            ..Default::default()
        };
        assert_eq!(fresh.snapshot(&ob, 0).lag_events, 10);
    }

    #[test]
    fn lag_bytes_are_exact_at_segment_boundaries_and_shared_by_count_inside() {
        use crate::outbox::SegmentSpan;
        let h = crate::outbox::segment::HEADER_LEN as u64;
        let ob = OutboxStats {
            next_offset: 30,
            stored_records: 30,
            spans: vec![
                SegmentSpan {
                    base: 0,
                    records: 10,
                    bytes: h + 1000,
                },
                SegmentSpan {
                    base: 10,
                    records: 20,
                    bytes: h + 4000,
                },
                SegmentSpan {
                    base: 30,
                    records: 0,
                    bytes: h,
                },
            ],
            ..Default::default()
        };
        let s = SinkStatus::default();
        assert_eq!(s.snapshot(&ob, 0).lag_bytes, 2 * h + 5000);
        s.committed(9);
        assert_eq!(s.snapshot(&ob, 0).lag_bytes, h + 4000);
        s.committed(14);
        assert_eq!(
            s.snapshot(&ob, 0).lag_bytes,
            3000,
            "15 of the 20 records of the second segment"
        );
        s.committed(29);
        assert_eq!(
            s.snapshot(&ob, 0).lag_bytes,
            0,
            "an empty writer segment is no lag"
        );
    }

    #[test]
    fn oldest_pending_age_is_zero_when_nothing_is_pending() {
        let s = SinkStatus::default();
        let ob = OutboxStats::default();
        assert_eq!(s.snapshot(&ob, 5_000).oldest_pending_age_ms, 0);
        s.set_oldest_pending(Some(1_000));
        assert_eq!(s.snapshot(&ob, 5_000).oldest_pending_age_ms, 4_000);
        s.set_oldest_pending(None);
        assert_eq!(s.snapshot(&ob, 5_000).oldest_pending_age_ms, 0);
    }
}
