//! Retry pacing after a failed reconcile: per-object exponential backoff, and a token bucket
//! shared by all objects of a controller that caps the overall retry rate (the two combine as
//! in client-go's default controller rate limiter: the longer delay wins).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff per object: `base * 2^(failures-1)`, at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 = first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << exp)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token and returns how long to wait until it is really available.
    pub fn reserve(&self) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = *st;
        let refilled =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        let left = refilled - 1.0;
        *st = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(500), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_burst_then_paces() {
        let tb = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(tb.reserve(), Duration::ZERO);
        }
        let d4 = tb.reserve();
        let d5 = tb.reserve();
        assert!((d4.as_secs_f64() - 0.1).abs() < 1e-6, "{d4:?}");
        assert!((d5.as_secs_f64() - 0.2).abs() < 1e-6, "{d5:?}");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(tb.reserve(), Duration::ZERO, "refilled");
    }
}
