//! Throttling: a token-bucket rate limit and the arithmetic of `RateLimit-Reset`.

use std::time::{Duration, Instant};

/// A token-bucket request-rate limit on the meter usage endpoint.
///
/// The bucket holds up to `burst` requests (at least one) and refills at
/// `per_second`; it starts full. A request that finds it empty gets a 429 whose
/// `RateLimit-Reset` is the whole number of seconds, rounded up and at least 1,
/// until the next request would pass. With a rate that is not positive the
/// bucket never refills and the reset is 3600 s.
///
/// `#[non_exhaustive]`: build it with [`RateLimit::new`].
///
/// ```
/// use kinde_meter_emulator::RateLimit;
///
/// let limit = RateLimit::new(5.0, 10);
/// assert_eq!((limit.per_second, limit.burst), (5.0, 10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may arrive back to back once the bucket is full.
    pub burst: u32,
}

impl RateLimit {
    /// A limit of `per_second` sustained requests with bursts of up to `burst`
    /// (at least one).
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

/// Seconds reported when the bucket can never refill.
const NEVER_SECS: u64 = 3600;

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            tokens: capacity(limit),
            last: now,
        }
    }

    /// Takes one token, or returns the `RateLimit-Reset` seconds to report.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), u64> {
        let rate = self.limit.per_second;
        if rate.is_infinite() && rate > 0.0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        if rate > 0.0 {
            self.tokens = (self.tokens + elapsed * rate).min(capacity(self.limit));
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if rate.is_nan() || rate <= 0.0 {
            return Err(NEVER_SECS);
        }
        Err(ceil_secs_f64((1.0 - self.tokens) / rate))
    }
}

fn capacity(limit: RateLimit) -> f64 {
    f64::from(limit.burst.max(1))
}

fn ceil_secs_f64(secs: f64) -> u64 {
    if secs.is_finite() {
        // `as` saturates; the value is non-negative here.
        (secs.ceil() as u64).max(1)
    } else {
        NEVER_SECS
    }
}

/// Whole seconds in `d`, rounded up, at least 1.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let whole = d.as_secs();
    let secs = if d.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    };
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bursts_then_reports_reset() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                per_second: 0.5,
                burst: 2,
            },
            t0,
        );
        assert_eq!(b.try_take(t0), Ok(()));
        assert_eq!(b.try_take(t0), Ok(()));
        assert_eq!(b.try_take(t0), Err(2));
        assert_eq!(b.try_take(t0 + Duration::from_millis(1500)), Err(1));
        assert_eq!(b.try_take(t0 + Duration::from_secs(2)), Ok(()));
        let mut fast = TokenBucket::new(
            RateLimit {
                per_second: 100.0,
                burst: 0,
            },
            t0,
        );
        assert_eq!(fast.try_take(t0), Ok(()));
        assert_eq!(fast.try_take(t0), Err(1));
        let mut never = TokenBucket::new(
            RateLimit {
                per_second: 0.0,
                burst: 1,
            },
            t0,
        );
        assert_eq!(never.try_take(t0), Ok(()));
        assert_eq!(never.try_take(t0 + Duration::from_secs(99)), Err(3600));
    }

    #[test]
    fn ceil_rounds_up_to_at_least_one() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
