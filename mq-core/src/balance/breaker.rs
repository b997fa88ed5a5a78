//! Endpoint health: a circuit breaker per endpoint.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Healthy: operations go through.
    Closed,
    /// Down until the instant: no operations.
    Open {
        /// When a probe may be tried.
        until: Instant,
    },
    /// The cooldown passed and one probe is under way; its outcome closes or
    /// reopens the breaker.
    HalfOpen,
}

/// Marks an endpoint down after `threshold` consecutive failures, for
/// `cooldown`; then lets one probe through: success closes it, failure
/// opens it again. Methods take `now`, so tests control the clock.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<(BreakerState, u32)>,
}

impl CircuitBreaker {
    /// Opens after `threshold` (at least 1) consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new((BreakerState::Closed, 0)),
        }
    }

    /// The state at `now` (an open breaker whose cooldown passed reads as
    /// half-open, ready for a probe).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.lock().0 {
            BreakerState::Open { until } if now >= until => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// Whether an operation may use the endpoint at `now`. Past the cooldown
    /// the first caller gets the probe and the breaker turns half-open;
    /// others wait for its outcome.
    pub fn allow(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match state.0 {
            BreakerState::Closed => true,
            BreakerState::Open { until } if now >= until => {
                state.0 = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => false,
        }
    }

    /// Records a success: closes the breaker.
    pub fn success(&self) {
        *self.lock() = (BreakerState::Closed, 0);
    }

    /// Records a failure at `now`: opens the breaker after enough of them in a
    /// row, or at once when a probe failed.
    pub fn failure(&self, now: Instant) {
        let mut state = self.lock();
        state.1 = state.1.saturating_add(1);
        if state.0 == BreakerState::HalfOpen || state.1 >= self.threshold {
            state.0 = BreakerState::Open {
                until: now + self.cooldown,
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (BreakerState, u32)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_then_closes() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed, "two failures are not enough");
        assert!(b.allow(t0));
        b.failure(t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Open {
                until: t0 + Duration::from_secs(10)
            }
        );
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.allow(later), "one probe after the cooldown");
        assert!(!b.allow(later), "only one probe at a time");
        b.success();
        assert_eq!(b.state(later), BreakerState::Closed);
        assert!(b.allow(later));
    }

    #[test]
    fn failed_probe_reopens_at_once() {
        let b = CircuitBreaker::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.allow(t1));
        b.failure(t1);
        assert_eq!(
            b.state(t1),
            BreakerState::Open {
                until: t1 + Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn success_resets_the_count() {
        let b = CircuitBreaker::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed, "failures must be consecutive");
    }
}
