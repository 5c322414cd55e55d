//! Wall-clock time, injectable. Everything that reads wall time for a decision (sign windows,
//! replay caches, de-duplication expiry, `received_at_ms`, health freshness) takes a [`Clock`],
//! so tests of those windows set the time instead of sleeping. Monotonic timers (heartbeats,
//! backoff sleeps) use tokio's clock, which tests pause and advance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of Unix time in milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;

    /// Unix seconds, as the sign rule's `timestamp` wants it.
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// A shared clock handle, cheap to clone into every component.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_now_ms()
    }
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(now_ms)))
    }

    pub fn set_ms(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, by: u64) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Current Unix time in milliseconds from the system clock (0 before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Current Unix time in seconds from the system clock.
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_796_280_000_000);
        assert_eq!(c.now_secs(), 1_796_280_000);
        c.advance_ms(1_500);
        assert_eq!(c.now_ms(), 1_796_280_001_500);
        c.set_ms(5);
        assert_eq!(c.now_ms(), 5);
        assert!(SystemClock.now_ms() > 1_700_000_000_000);
    }
}
