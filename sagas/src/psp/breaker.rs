//! A circuit breaker in front of the payment provider.
//!
//! Closed: requests go through; each failure (a timeout, a dropped connection, a 5xx)
//! adds to a count of consecutive failures that any success resets. At
//! `failure_threshold` it opens: requests fail at once, without touching the socket,
//! for `cooldown`. Then it is half-open: one request (the probe) goes through while
//! the others still fail at once; the probe's success closes the breaker, its
//! failure opens it for another cool-down.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// Permission to send one request; report how it went with [`Permit::record`].
/// A probe's permit dropped without a report (its caller gave up) frees the probe's
/// place for the next request.
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    /// Reports the outcome of the request. A success is any answer that shows the
    /// provider working, refusals and declines included.
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(self.probe, success);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.lock();
            if let State::HalfOpen { .. } = *state {
                *state = State::HalfOpen {
                    probe_in_flight: false,
                };
            }
        }
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every holder replaces the state in one assignment: never half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A permit to send a request now, or `None` if the breaker is open (or
    /// half-open with its probe already out).
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Some(self.permit(false)),
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen {
                    probe_in_flight: true,
                };
                report(&state);
                tracing::info!("payment provider circuit half-open: sending a probe");
                Some(self.permit(true))
            }
            State::Open { .. } => None,
            State::HalfOpen {
                probe_in_flight: false,
            } => {
                *state = State::HalfOpen {
                    probe_in_flight: true,
                };
                Some(self.permit(true))
            }
            State::HalfOpen {
                probe_in_flight: true,
            } => None,
        }
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            recorded: false,
        }
    }

    fn record(&self, probe: bool, success: bool) {
        let mut state = self.lock();
        let next = match (&*state, success) {
            (_, true) => {
                if !matches!(*state, State::Closed { .. }) {
                    tracing::info!("payment provider circuit closed");
                }
                State::Closed {
                    consecutive_failures: 0,
                }
            }
            // A straggler from before the breaker opened changes nothing.
            (State::Open { until }, false) => State::Open { until: *until },
            (State::HalfOpen { .. }, false) if probe => self.open(),
            (State::HalfOpen { probe_in_flight }, false) => State::HalfOpen {
                probe_in_flight: *probe_in_flight,
            },
            (
                State::Closed {
                    consecutive_failures,
                },
                false,
            ) => {
                let failures = consecutive_failures + 1;
                if failures >= self.failure_threshold {
                    self.open()
                } else {
                    State::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
        };
        report(&next);
        *state = next;
    }

    fn open(&self) -> State {
        tracing::warn!(
            cooldown_ms = self.cooldown.as_millis() as u64,
            "payment provider circuit open"
        );
        State::Open {
            until: Instant::now() + self.cooldown,
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// `commerce_psp_breaker_state`: 0 closed, 1 half-open, 2 open.
fn report(state: &State) {
    let value = match state {
        State::Closed { .. } => 0.0,
        State::HalfOpen { .. } => 1.0,
        State::Open { .. } => 2.0,
    };
    metrics::gauge!("commerce_psp_breaker_state").set(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            let permit = breaker.try_acquire().unwrap();
            permit.record(false);
        }
        let permit = breaker.try_acquire().unwrap();
        permit.record(true);
        for _ in 0..2 {
            let permit = breaker.try_acquire().unwrap();
            permit.record(false);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        let permit = breaker.try_acquire().unwrap();
        permit.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_acquire().is_none());
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_outcome_decides() {
        let breaker = CircuitBreaker::new(1, Duration::ZERO);
        let permit = breaker.try_acquire().unwrap();
        permit.record(false);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_none(), "one probe at a time");
        probe.record(false);
        let probe = breaker.try_acquire().unwrap();
        probe.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
