//! Reconnect delays: exponential with full jitter, floored at the minimum so that a camera that
//! refuses at once (a bad sign) can never make camgate spin.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Delay before the next attempt: uniform in `[min, min(max, min·2^attempt)]`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if ceiling <= self.min {
            return self.min;
        }
        let span = (ceiling - self.min).as_millis() as u64;
        self.min + Duration::from_millis(rng.random_range(0..=span))
    }

    /// The upper bound the next delay is drawn under.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// A session that reached Ready starts the sequence again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn delays_stay_inside_the_bounds(seed: u64, min_ms in 1u64..5_000, max_ms in 1u64..120_000, n in 1usize..80) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms));
            let mut b = Backoff::new(min, max);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut prev_ceiling = Duration::ZERO;
            for _ in 0..n {
                let ceiling = b.ceiling();
                prop_assert!(ceiling >= prev_ceiling, "ceiling never shrinks");
                let d = b.next_delay(&mut rng);
                prop_assert!(d >= min, "never below the floor: {d:?}");
                prop_assert!(d <= max.max(min), "never above the cap: {d:?}");
                prop_assert!(d <= ceiling);
                prev_ceiling = ceiling;
            }
        }
    }

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_secs();
                b.next_delay(&mut rand::rng());
                c
            })
            .collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }
}
