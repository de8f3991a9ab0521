//! The saga's bounds and deadlines, and the clock it reads them against.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

/// How long a reservation holds stock before the timer worker expires it.
pub const RESERVATION_TTL_SECS: u64 = 900;
/// How long a checkout may take to be confirmed before it is cancelled.
pub const CHECKOUT_TIMEOUT_SECS: u64 = 600;
/// Tries of one authorization (within the checkout's deadline).
pub const AUTHORIZE_ATTEMPTS_MAX: u32 = 6;
/// Tries of one capture before the authorization is voided and the order cancelled.
pub const CAPTURE_ATTEMPTS_MAX: u32 = 8;
/// Tries of giving money back before the checkout is left for a person to settle.
pub const SETTLE_ATTEMPTS_MAX: u32 = 30;
/// The first retry waits about this long; each further one twice as long.
pub const RETRY_BACKOFF_BASE_MS: u64 = 500;
/// No retry waits longer than this.
pub const RETRY_BACKOFF_MAX_MS: u64 = 60_000;
/// Most log events the runner reads and applies per batch.
pub const RUNNER_BATCH_MAX_EVENTS: usize = 2_000;
/// Most checkouts whose steps run at the same time within a batch.
pub const RUNNER_CONCURRENT_CHECKOUTS_MAX: usize = 512;
/// How long the runner waits for new events before looking again.
pub const RUNNER_IDLE_WAIT_MS: u64 = 1_000;
/// How long a standby runner waits before trying to take the lease again.
pub const LEASE_RETRY_MS: u64 = 1_000;
/// Most timers the timer worker fires per round.
pub const TIMER_BATCH_MAX: usize = 1_000;
/// How often the timer worker looks for due timers.
pub const TIMER_POLL_MS: u64 = 200;
/// How long one step may wait for a command or a store call before the batch fails
/// (and is retried from the checkpoint).
pub const STEP_TIMEOUT_MS: u64 = 30_000;

/// The saga's configuration; `Default` is the constants above.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    pub reservation_ttl: Duration,
    pub checkout_timeout: Duration,
    pub authorize_attempts_max: u32,
    pub capture_attempts_max: u32,
    pub settle_attempts_max: u32,
    pub retry_backoff_base: Duration,
    pub retry_backoff_max: Duration,
    pub batch_max_events: usize,
    pub concurrent_checkouts_max: usize,
    pub idle_wait: Duration,
    pub lease_retry: Duration,
    pub timer_batch_max: usize,
    pub timer_poll: Duration,
    pub step_timeout: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            reservation_ttl: Duration::from_secs(RESERVATION_TTL_SECS),
            checkout_timeout: Duration::from_secs(CHECKOUT_TIMEOUT_SECS),
            authorize_attempts_max: AUTHORIZE_ATTEMPTS_MAX,
            capture_attempts_max: CAPTURE_ATTEMPTS_MAX,
            settle_attempts_max: SETTLE_ATTEMPTS_MAX,
            retry_backoff_base: Duration::from_millis(RETRY_BACKOFF_BASE_MS),
            retry_backoff_max: Duration::from_millis(RETRY_BACKOFF_MAX_MS),
            batch_max_events: RUNNER_BATCH_MAX_EVENTS,
            concurrent_checkouts_max: RUNNER_CONCURRENT_CHECKOUTS_MAX,
            idle_wait: Duration::from_millis(RUNNER_IDLE_WAIT_MS),
            lease_retry: Duration::from_millis(LEASE_RETRY_MS),
            timer_batch_max: TIMER_BATCH_MAX,
            timer_poll: Duration::from_millis(TIMER_POLL_MS),
            step_timeout: Duration::from_millis(STEP_TIMEOUT_MS),
        }
    }
}

impl SagaConfig {
    /// How long to wait before try `attempt + 1` after try `attempt` failed:
    /// exponential from the base, capped, with a jitter of up to half the wait. The
    /// jitter is drawn from the checkout and the attempt, not from a random source,
    /// so a re-run step computes the same retry time (and a simulation replays).
    pub fn backoff(&self, seed: &Uuid, attempt: u32) -> Duration {
        let base = self.retry_backoff_base.as_millis() as u64;
        let exponent = attempt.saturating_sub(1).min(20);
        let wait = base
            .saturating_mul(1u64 << exponent)
            .min(self.retry_backoff_max.as_millis() as u64);
        let jitter_seed = Uuid::new_v5(seed, &attempt.to_be_bytes());
        let jitter = (jitter_seed.as_u128() as u64) % (wait / 2 + 1);
        Duration::from_millis(wait / 2 + jitter)
    }

    /// Tries allowed for a payment operation.
    pub fn attempts_max(&self, operation: domain::PaymentOperation) -> u32 {
        match operation {
            domain::PaymentOperation::Authorize => self.authorize_attempts_max,
            domain::PaymentOperation::Capture => self.capture_attempts_max,
            domain::PaymentOperation::Settle => self.settle_attempts_max,
        }
    }
}

/// Where the saga reads the time: the system clock in production, a clock the test
/// moves in simulation.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (simulation and tests).
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            micros: AtomicI64::new(start.timestamp_micros()),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.micros
            .fetch_add(by.as_micros() as i64, Ordering::SeqCst);
    }

    /// Moves the clock to `at` if that is later than now.
    pub fn advance_to(&self, at: DateTime<Utc>) {
        self.micros
            .fetch_max(at.timestamp_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let micros = self.micros.load(Ordering::SeqCst);
        Utc.timestamp_micros(micros)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}
