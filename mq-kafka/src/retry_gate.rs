//! Holds a consumer's retry partitions back after each assignment until
//! the topic's own partitions are being fetched.
//!
//! librdkafka keeps one fetch in flight per broker, and a broker holds a
//! fetch whose partitions are all empty for `fetch.wait.max.ms`. Right
//! after an assignment the group's retry partitions (empty, almost always)
//! are often ready to fetch before the topic's partitions on the same
//! broker have their start offsets: the first fetch then holds only retry
//! partitions, and the topic's partitions on that broker wait behind it for
//! the whole `fetch.wait.max.ms` (a stall of about 100 ms in the middle of
//! a new group's read, measured in BENCHMARKS.md). So the retry partitions
//! start paused, and are resumed once every assigned partition of the topic
//! has delivered a message, or after [`GATE_MAX`] at the latest (a partition
//! of the topic with nothing to read holds them that long: requeued copies
//! wait at most a second more after an assignment).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The longest the retry partitions are held after an assignment.
pub(crate) const GATE_MAX: Duration = Duration::from_secs(1);

/// Whether the retry partitions are held, and until when.
#[derive(Debug, Default)]
pub(crate) struct RetryGate {
    /// Read for every message; the lock is taken only while held.
    held: AtomicBool,
    state: Mutex<Option<Held>>,
}

#[derive(Debug)]
struct Held {
    /// The topic's assigned partitions that have not been fetched yet.
    waiting: HashSet<i32>,
    until: Instant,
}

impl RetryGate {
    /// Holds the retry partitions until each of `partitions` (the topic's,
    /// as assigned) was fetched, or `max` passed.
    pub(crate) fn hold(&self, partitions: impl IntoIterator<Item = i32>, max: Duration) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = Some(Held {
            waiting: partitions.into_iter().collect(),
            until: Instant::now() + max,
        });
        self.held.store(true, Ordering::Release);
    }

    /// Whether the retry partitions are held.
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// The topic's `partition` delivered a message.
    pub(crate) fn fetched(&self, partition: i32) {
        if !self.is_held() {
            return;
        }
        if let Some(held) = self.state.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            held.waiting.remove(&partition);
        }
    }

    /// Whether it is time to let the retry partitions go: every partition
    /// of the topic was fetched, or the time is up.
    pub(crate) fn due(&self) -> bool {
        if !self.is_held() {
            return false;
        }
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|h| h.waiting.is_empty() || Instant::now() >= h.until)
    }

    /// Lets the retry partitions go (the caller resumes them).
    pub(crate) fn release(&self) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.held.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_every_partition_was_fetched() {
        let gate = RetryGate::default();
        assert!(!gate.is_held() && !gate.due());
        gate.hold([0, 1, 3], Duration::from_secs(60));
        assert!(gate.is_held());
        gate.fetched(0);
        gate.fetched(3);
        gate.fetched(7);
        assert!(!gate.due(), "partition 1 was not fetched yet");
        gate.fetched(1);
        assert!(gate.due());
        gate.release();
        assert!(!gate.is_held() && !gate.due());
    }

    #[test]
    fn held_no_longer_than_its_time() {
        let gate = RetryGate::default();
        gate.hold([0], Duration::from_millis(30));
        assert!(!gate.due());
        std::thread::sleep(Duration::from_millis(40));
        assert!(gate.due(), "the time is up");
    }
}
