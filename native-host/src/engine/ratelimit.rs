//! Token buckets (being written).

/// A token bucket whose rate can change live. 0 = unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    _rate: std::sync::atomic::AtomicU64,
}

impl RateLimiter {
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter { _rate: rate.into() }
    }
}
