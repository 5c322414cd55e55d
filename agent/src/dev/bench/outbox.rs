//! Append throughput of the outbox, with and without group commit (`camgate bench`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::outbox::{Outbox, OutboxConfig, OutboxError};

/// Result of one [`bench_append`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub events: usize,
    pub concurrency: usize,
    pub event_bytes: usize,
    pub group_commit: bool,
    pub seconds: f64,
    pub events_per_sec: f64,
    /// Latency of one durable `append`, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outbox append: {} events x {} B, concurrency {}, group commit {}: {:.2} s, {:.0} events/s, p50 {} us, p99 {} us",
            self.events,
            self.event_bytes,
            self.concurrency,
            if self.group_commit { "on" } else { "off (1 fsync per append)" },
            self.seconds,
            self.events_per_sec,
            self.p50_us,
            self.p99_us
        )
    }
}

/// Appends `events` durable events of `event_bytes` from `concurrency` tasks into a fresh outbox
/// in `dir` (which should be empty). `group_commit = false` is the reference: one fsync per
/// append (`max_batch = 1`).
pub async fn bench_append(
    dir: &Path,
    events: usize,
    concurrency: usize,
    event_bytes: usize,
    group_commit: bool,
) -> Result<BenchReport, OutboxError> {
    let concurrency = concurrency.max(1);
    let cfg = OutboxConfig {
        dir: dir.to_owned(),
        // Room for the whole run: the bench measures durability, not the full policy.
        max_bytes: (events as u64 + 16) * (event_bytes as u64 + 64) * 2 + 64 * 1024 * 1024,
        max_batch: if group_commit {
            OutboxConfig::default().max_batch
        } else {
            1
        },
        group_commit_window: if group_commit {
            Duration::from_millis(2)
        } else {
            Duration::ZERO
        },
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(&cfg).await?;
    let payload = Bytes::from(vec![b'x'; event_bytes]);
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(events));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let outbox = outbox.clone();
        let payload = payload.clone();
        let remaining = remaining.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while remaining
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let t = tokio::time::Instant::now();
                outbox.append(payload.clone()).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, OutboxError>(lat)
        });
    }
    let mut lat = Vec::with_capacity(events);
    while let Some(r) = tasks.join_next().await {
        lat.extend(r.map_err(|e| OutboxError::Io {
            path: dir.to_owned(),
            source: std::io::Error::other(e),
        })??);
    }
    let seconds = start.elapsed().as_secs_f64();
    outbox.shutdown().await?;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(BenchReport {
        events,
        concurrency,
        event_bytes,
        group_commit,
        seconds,
        events_per_sec: events as f64 / seconds.max(1e-9),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}
