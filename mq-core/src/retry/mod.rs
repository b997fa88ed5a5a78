//! Retry policies: how long to wait before trying again, or when to stop.
//!
//! One small trait, [`RetryPolicy`], used in three places: the
//! [`RetryingProducer`] (sends that failed with a retryable error), the
//! [`Worker`](crate::worker::Worker) (handler failures become a requeue with
//! the policy's delay, and a dead letter once it says stop), and the
//! adapters' reconnects.
//!
//! ```
//! use std::time::Duration;
//! use mq_core::retry::{ExponentialBackoff, RetryPolicy};
//!
//! let policy = ExponentialBackoff::new(Duration::from_millis(100))
//!     .multiplier(2.0)
//!     .max_delay(Duration::from_secs(1))
//!     .max_attempts(4);
//! let err = std::io::Error::other("broker busy");
//! let delays: Vec<Option<Duration>> = (1..=4).map(|n| policy.next_delay(n, Duration::ZERO, &err)).collect();
//! assert_eq!(delays, [
//!     Some(Duration::from_millis(100)),
//!     Some(Duration::from_millis(200)),
//!     Some(Duration::from_millis(400)),
//!     None, // the 4th attempt failed: stop
//! ]);
//! ```

mod backoff;
mod producer;

pub use backoff::{ExponentialBackoff, Fixed, Never};
pub use producer::RetryingProducer;

use std::fmt;
use std::time::Duration;

/// Decides, after a failed attempt, how long to wait before the next one,
/// or that there is no next one.
pub trait RetryPolicy: Send + Sync + fmt::Debug {
    /// `attempt` is the number of the attempt that just failed (1 for the
    /// first), `elapsed` the time since the first attempt began, `error` why
    /// it failed. `None`: stop.
    fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<Duration>;
}

impl<P: RetryPolicy + ?Sized> RetryPolicy for std::sync::Arc<P> {
    fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<Duration> {
        (**self).next_delay(attempt, elapsed, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _obj_safe(_: Box<dyn RetryPolicy>) {}
}
