//! Token buckets whose rate can change while downloads run.
//!
//! Bytes are charged **before** they are written: a connection reads a chunk, reserves its size in every bucket above
//! it (its download's, then the global one) and sleeps until the most indebted bucket is back in credit. A bucket holds
//! at most 1/8 s of credit, so an idle spell cannot turn into a burst, and debt carries over, so the long-run average
//! is the cap (no "sleep per chunk on an average", which overshoots).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// tokio's clock: the real one in use, a paused one in tests.
use tokio::time::Instant;

/// A token bucket. Rate 0 means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    rate: AtomicU64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Credit in bytes; negative is debt that later bytes must wait out.
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter {
            rate: AtomicU64::new(rate),
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Change the cap; takes effect for the next reservation.
    pub fn set_rate(&self, rate: u64) {
        let old = self.rate.swap(rate, Ordering::Relaxed);
        if old != rate {
            let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
            b.tokens = b.tokens.max(0.0);
            b.last = Instant::now();
        }
    }

    /// Charge `n` bytes and say how long to wait before writing them.
    pub fn reserve(&self, n: usize) -> Duration {
        let rate = self.rate();
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let burst = rate / 8.0;
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }
}

/// Charge `n` bytes to every limiter and wait until all of them allow it.
pub async fn acquire(limiters: &[&RateLimiter], n: usize) {
    let wait = limiters
        .iter()
        .map(|l| l.reserve(n))
        .max()
        .unwrap_or_default();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// The most bytes to charge and write at once under these caps: 1/32 s of the smallest budget (at least 4 KiB), so
/// a capped stream advances in small even steps and no 1 s window runs more than a few percent over the cap. `None`
/// when nothing is capped.
pub fn piece_size(limiters: &[&RateLimiter]) -> Option<usize> {
    limiters
        .iter()
        .map(|l| l.rate())
        .filter(|&r| r > 0)
        .min()
        .map(|r| ((r / 32) as usize).max(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimiter::new(0);
        assert_eq!(l.reserve(1 << 30), Duration::ZERO);
    }

    #[test]
    fn debt_becomes_wait_time() {
        let l = RateLimiter::new(1000);
        let w = l.reserve(2000);
        assert!(
            w > Duration::from_millis(1900) && w <= Duration::from_millis(2000),
            "{w:?}"
        );
        let w2 = l.reserve(1000);
        assert!(
            w2 > Duration::from_millis(2900),
            "debt carries over: {w2:?}"
        );
    }

    #[test]
    fn rate_change_applies_to_the_next_reservation() {
        let l = RateLimiter::new(1000);
        l.reserve(1000);
        l.set_rate(0);
        assert_eq!(l.reserve(1 << 20), Duration::ZERO);
        l.set_rate(1_000_000);
        assert!(l.reserve(1000) < Duration::from_millis(2));
    }

    #[test]
    fn pieces_are_a_thirty_second_of_the_smallest_cap() {
        let (a, b, none) = (
            RateLimiter::new(1 << 20),
            RateLimiter::new(20 << 20),
            RateLimiter::new(0),
        );
        assert_eq!(piece_size(&[&b, &a, &none]), Some(32 * 1024));
        assert_eq!(piece_size(&[&RateLimiter::new(1000)]), Some(4096));
        assert_eq!(piece_size(&[&none]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn long_run_average_is_the_cap() {
        let l = RateLimiter::new(100_000);
        let start = tokio::time::Instant::now();
        let mut sent = 0usize;
        while sent < 1_000_000 {
            acquire(&[&l], 16_384).await;
            sent += 16_384;
        }
        let secs = start.elapsed().as_secs_f64();
        let avg = sent as f64 / secs;
        assert!(
            (avg - 100_000.0).abs() / 100_000.0 < 0.03,
            "average {avg} B/s over {secs} s"
        );
    }
}
