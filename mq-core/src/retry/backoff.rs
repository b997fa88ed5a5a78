//! The policies: exponential backoff with jitter, a fixed delay, never.

use std::time::Duration;

use super::RetryPolicy;
use crate::rng::Rng;

/// Waits `initial`, then `initial * multiplier`, ... up to `max_delay`, each
/// spread by up to `± jitter` of itself; stops after `max_attempts` attempts
/// or once `max_elapsed` has passed.
///
/// Jitter comes from a generator seeded from the OS, or from
/// [`seed`](ExponentialBackoff::seed) for a repeatable sequence.
#[derive(Debug)]
pub struct ExponentialBackoff {
    initial: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
    rng: Rng,
}

impl ExponentialBackoff {
    /// Starts at `initial`, doubling, capped at 30 s, no jitter, 10 attempts.
    pub fn new(initial: Duration) -> Self {
        ExponentialBackoff {
            initial,
            multiplier: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: 0.0,
            max_attempts: Some(10),
            max_elapsed: None,
            rng: Rng::from_entropy(),
        }
    }

    /// Growth per attempt (at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// The longest delay.
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.max_delay = cap;
        self
    }

    /// Spreads each delay by up to `± fraction` of itself (clamped to 0..=1).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Stops once this many attempts failed (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Never stops for the number of attempts.
    pub fn unlimited_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// Stops once this much time has passed since the first attempt.
    pub fn max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// Makes the jitter repeatable.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Rng::seeded(seed);
        self
    }
}

impl RetryPolicy for ExponentialBackoff {
    fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        _error: &(dyn std::error::Error + 'static),
    ) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        if self.max_elapsed.is_some_and(|max| elapsed >= max) {
            return None;
        }
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base =
            (self.initial.as_secs_f64() * self.multiplier.powi(exponent)).min(self.max_delay.as_secs_f64());
        let spread = if self.jitter > 0.0 {
            1.0 + self.jitter * (2.0 * self.rng.next_f64() - 1.0)
        } else {
            1.0
        };
        let delay = Duration::try_from_secs_f64((base * spread).max(0.0)).unwrap_or(self.max_delay);
        let delay = delay.min(self.max_delay);
        // Never sleep past the elapsed budget.
        Some(match self.max_elapsed {
            Some(max) => delay.min(max.saturating_sub(elapsed)),
            None => delay,
        })
    }
}

/// The same delay every time, for up to `max_attempts` attempts.
#[derive(Debug, Clone)]
pub struct Fixed {
    delay: Duration,
    max_attempts: Option<u32>,
}

impl Fixed {
    /// Waits `delay` between attempts, 10 attempts at most.
    pub fn new(delay: Duration) -> Self {
        Fixed {
            delay,
            max_attempts: Some(10),
        }
    }

    /// Stops once this many attempts failed (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Never stops for the number of attempts.
    pub fn unlimited_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }
}

impl RetryPolicy for Fixed {
    fn next_delay(
        &self,
        attempt: u32,
        _elapsed: Duration,
        _error: &(dyn std::error::Error + 'static),
    ) -> Option<Duration> {
        match self.max_attempts {
            Some(max) if attempt >= max => None,
            _ => Some(self.delay),
        }
    }
}

/// Never tries again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Never;

impl RetryPolicy for Never {
    fn next_delay(
        &self,
        _attempt: u32,
        _elapsed: Duration,
        _error: &(dyn std::error::Error + 'static),
    ) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> std::io::Error {
        std::io::Error::other("x")
    }

    fn delays(p: &dyn RetryPolicy, n: u32) -> Vec<Option<Duration>> {
        (1..=n).map(|a| p.next_delay(a, Duration::ZERO, &err())).collect()
    }

    #[test]
    fn exponential_sequence_is_capped_and_stops() {
        let p = ExponentialBackoff::new(Duration::from_millis(100))
            .multiplier(3.0)
            .max_delay(Duration::from_millis(1000))
            .max_attempts(6);
        let ms: Vec<Option<u128>> = delays(&p, 6)
            .into_iter()
            .map(|d| d.map(|d| d.as_millis()))
            .collect();
        assert_eq!(
            ms,
            [Some(100), Some(300), Some(900), Some(1000), Some(1000), None]
        );
    }

    #[test]
    fn jitter_is_bounded_and_seeded() {
        let make = || {
            ExponentialBackoff::new(Duration::from_millis(1000))
                .multiplier(1.0)
                .jitter(0.25)
                .unlimited_attempts()
                .seed(42)
        };
        let a = delays(&make(), 200);
        assert_eq!(a, delays(&make(), 200), "same seed, same delays");
        let ms: Vec<u128> = a.iter().map(|d| d.unwrap().as_millis()).collect();
        assert!(ms.iter().all(|m| (750..=1250).contains(m)), "within ±25%: {ms:?}");
        assert!(
            ms.iter().any(|m| *m < 900) && ms.iter().any(|m| *m > 1100),
            "jitter spreads both ways: {ms:?}"
        );
        let capped = delays(&make().max_delay(Duration::from_millis(1000)), 200);
        assert!(
            capped.iter().all(|d| d.unwrap() <= Duration::from_millis(1000)),
            "the cap holds after jitter"
        );
        let other = delays(&make().seed(43), 200);
        assert_ne!(a, other);
    }

    #[test]
    fn max_elapsed_stops_and_trims_the_last_delay() {
        let p = ExponentialBackoff::new(Duration::from_secs(1)).max_elapsed(Duration::from_millis(2500));
        assert_eq!(
            p.next_delay(1, Duration::ZERO, &err()),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            p.next_delay(2, Duration::from_millis(2000), &err()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(p.next_delay(3, Duration::from_millis(2500), &err()), None);
    }

    #[test]
    fn fixed_and_never() {
        let f = Fixed::new(Duration::from_millis(5)).max_attempts(3);
        assert_eq!(
            delays(&f, 3),
            [
                Some(Duration::from_millis(5)),
                Some(Duration::from_millis(5)),
                None
            ]
        );
        assert_eq!(delays(&Never, 2), [None, None]);
        assert!(
            Fixed::new(Duration::ZERO)
                .unlimited_attempts()
                .next_delay(u32::MAX, Duration::MAX, &err())
                .is_some()
        );
    }
}
