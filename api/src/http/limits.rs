//! Abuse limits at the edge (OWASP API4, unrestricted resource consumption):
//! token-bucket rate limits on commands per principal and per client IP, and the
//! connection limits hyper enforces before a handler runs (header size and count,
//! the time to send a request's headers, which is also how long an idle keep-alive
//! connection may stay open, and the number of connections).
//!
//! The buckets are our own rather than `governor`'s keyed limiter: what is needed
//! is a hard bound on the number of keys tracked (an attacker controls how many
//! principals and addresses it presents) and the wait to report in `Retry-After`,
//! both a few lines over a `HashMap`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::problem::ApiError;

/// Default sustained commands per second of one principal.
pub const PRINCIPAL_COMMANDS_PER_SEC: f64 = 50.0;
/// Default burst of commands one principal may send at once.
pub const PRINCIPAL_COMMANDS_BURST: u32 = 100;
/// Default sustained commands per second from one client IP address (several
/// principals may share one, behind a NAT).
pub const IP_COMMANDS_PER_SEC: f64 = 1_000.0;
/// Default burst of commands from one client IP address.
pub const IP_COMMANDS_BURST: u32 = 2_000;
/// Most keys (principals or addresses) one limiter tracks. Past it, buckets that
/// have refilled (idle keys) are forgotten; if none has, all are.
pub const RATE_LIMIT_KEYS_MAX: usize = 100_000;

/// Default most concurrent connections; the next one waits to be accepted.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Default time a client has to send a request's headers, in seconds. It also
/// bounds how long a keep-alive connection may sit idle between requests.
pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default largest request head (request line and headers), in bytes.
pub const HEADER_MAX_BYTES: usize = 16 * 1024;
/// Default most headers in one request.
pub const HEADERS_MAX: usize = 64;

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: u32,
}

/// The connection limits of the server.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub header_max_bytes: usize,
    pub headers_max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: CONNECTIONS_MAX,
            header_read_timeout: Duration::from_secs(HEADER_READ_TIMEOUT_SECS),
            header_max_bytes: HEADER_MAX_BYTES,
            headers_max: HEADERS_MAX,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key, at most [`RATE_LIMIT_KEYS_MAX`] of them.
pub struct RateLimiter {
    limit: Option<RateLimit>,
    scope: &'static str,
    buckets: Mutex<HashMap<String, Bucket>>,
    keys_max: usize,
}

impl RateLimiter {
    /// `None` (or a zero rate) lets everything through. `scope` names the limit in
    /// problems and metrics (`principal`, `ip`).
    pub fn new(scope: &'static str, limit: Option<RateLimit>) -> Self {
        let limit = limit.filter(|l| l.per_sec > 0.0 && l.burst > 0);
        RateLimiter {
            limit,
            scope,
            buckets: Mutex::new(HashMap::new()),
            keys_max: RATE_LIMIT_KEYS_MAX,
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until there is one.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let burst = f64::from(limit.burst);
        // One map operation under the lock; nothing awaits while it is held.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.keys_max {
            buckets.retain(|_, b| {
                let refilled =
                    b.tokens + now.duration_since(b.updated).as_secs_f64() * limit.per_sec;
                refilled < burst
            });
            if buckets.len() >= self.keys_max {
                // Every tracked key is active: forget them all rather than grow
                // without bound (the limit is lifted for one burst at worst).
                tracing::warn!(scope = self.scope, "rate limiter forgot all its keys");
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_sec).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / limit.per_sec,
            ))
        }
    }

    /// [`Self::check`] as a 429 problem with `Retry-After`, counted by scope.
    pub fn admit(&self, key: &str) -> Result<(), ApiError> {
        self.check(key).map_err(|wait| {
            metrics::counter!("commerce_rate_limited_total", "scope" => self.scope).increment(1);
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!(
                    "too many commands from this {}; retry after the time in Retry-After",
                    self.scope
                ),
            );
            error
                .extensions
                .insert("scope".into(), serde_json::Value::from(self.scope));
            // Whole seconds, rounded up, at least one.
            error.retry_after_secs = Some(wait.as_secs_f64().ceil().clamp(1.0, 3_600.0) as u32);
            error
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sec: f64, burst: u32) -> RateLimiter {
        RateLimiter::new("principal", Some(RateLimit { per_sec, burst }))
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = limiter(2.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("alice", start).is_ok());
        }
        let wait = limiter.check_at("alice", start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another key has a bucket of its own.
        assert!(limiter.check_at("bob", start).is_ok());
        // Half a second later one token is back, not two.
        let later = start + Duration::from_millis(500);
        assert!(limiter.check_at("alice", later).is_ok());
        assert!(limiter.check_at("alice", later).is_err());
    }

    #[test]
    fn the_keys_tracked_are_bounded() {
        let mut limiter = limiter(1.0, 1);
        limiter.keys_max = 10;
        let start = Instant::now();
        for i in 0..10 {
            assert!(limiter.check_at(&format!("k{i}"), start).is_ok());
        }
        // All ten are empty: a new key makes room by forgetting them all.
        assert!(limiter.check_at("new", start).is_ok());
        assert!(limiter.tracked() <= 10);
        // Once they refill, idle keys are what goes.
        let later = start + Duration::from_secs(5);
        for i in 0..20 {
            assert!(limiter.check_at(&format!("j{i}"), later).is_ok());
            assert!(limiter.tracked() <= 10);
        }
    }

    #[test]
    fn no_limit_lets_everything_through() {
        let limiter = RateLimiter::new("ip", None);
        for _ in 0..10_000 {
            assert!(limiter.check("x").is_ok());
        }
    }
}
