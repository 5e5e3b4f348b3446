//! Retry delays after failures: one rule for every retrying actor (the coordinator's round
//! retries, the broker connection's reconnects, the mount supervisor's remounts).

use std::time::Duration;

use rand::Rng;

/// How far a delay is spread: each is scaled by a factor drawn uniformly from
/// [1 − JITTER, 1 + JITTER), so that clients cut off together do not come back together.
pub const JITTER: f64 = 0.2;

/// Exponential backoff: the `n`th retry in a row waits `min × 2^(n−1)`, capped at `max`, then
/// spread by [`JITTER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { min: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max }
    }

    /// The delay before retry number `retry` (1 for the first retry after a failure; 0 is
    /// taken as 1), before jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// [`Backoff::delay`] spread by a random factor (see [`spread`]).
    pub fn jittered(&self, retry: u32) -> Duration {
        spread(self.delay(retry))
    }
}

/// `delay` scaled by a random factor in [1 − JITTER, 1 + JITTER).
pub fn spread(delay: Duration) -> Duration {
    scale(delay, rand::rng().random::<f64>())
}

/// `delay` scaled by `1 − JITTER + 2·JITTER·unit`, `unit` in [0, 1).
fn scale(delay: Duration, unit: f64) -> Duration {
    delay.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

    #[test]
    fn doubles_from_min_and_caps_at_max() {
        assert_eq!(B.delay(0), Duration::from_millis(100));
        assert_eq!(B.delay(1), Duration::from_millis(100));
        assert_eq!(B.delay(2), Duration::from_millis(200));
        assert_eq!(B.delay(4), Duration::from_millis(800));
        assert_eq!(B.delay(5), Duration::from_millis(1600));
        assert_eq!(B.delay(6), Duration::from_secs(2));
        assert_eq!(B.delay(u32::MAX), Duration::from_secs(2));
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn jitter_spreads_twenty_percent_either_way() {
        assert_eq!(scale(B.delay(4), 0.0), Duration::from_millis(640));
        assert_eq!(scale(B.delay(4), 0.5), Duration::from_millis(800));
        assert_eq!(scale(B.delay(4), 1.0), Duration::from_millis(960));
        for retry in [1, 3, 9] {
            for _ in 0..100 {
                let d = B.jittered(retry);
                assert!(d >= B.delay(retry).mul_f64(0.8) && d < B.delay(retry).mul_f64(1.2), "{retry}: {d:?}");
            }
        }
    }
}
