//! The gate between a closing consumer handing its unacked deliveries back
//! and a rebalance taking its partitions away.
//!
//! Closing (or dropping) a consumer produces a copy of each unacked
//! delivery to the retry topic and then acks the original, on the async
//! side. A member joining the group meanwhile makes this consumer revoke
//! its partitions on the poll thread, committing only what was acked: were
//! the revoke to run before the hand-back is done, the new owner would read
//! the original again (attempt 1) and the copy as well. So a revoke waits,
//! within a bound, for a hand-back in progress.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Whether a hand-back is in progress, and a way to wait for its end.
#[derive(Debug, Default)]
pub(crate) struct HandBack {
    busy: Mutex<bool>,
    done: Condvar,
}

impl HandBack {
    /// Marks a hand-back as started (before anything can revoke).
    pub(crate) fn begin(&self) {
        *self.busy.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Marks it finished, and wakes a revoke waiting for it.
    pub(crate) fn end(&self) {
        *self.busy.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.done.notify_all();
    }

    /// Waits until no hand-back is in progress, at most `bound`; whether it
    /// ended in time.
    pub(crate) fn wait(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            busy = self
                .done
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_revoke_waits_for_the_hand_back_in_progress() {
        let gate = Arc::new(HandBack::default());
        assert!(gate.wait(Duration::ZERO), "nothing in progress: no wait");
        gate.begin();
        assert!(!gate.wait(Duration::from_millis(20)), "bounded while busy");
        let ender = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                gate.end();
            })
        };
        let started = Instant::now();
        assert!(gate.wait(Duration::from_secs(10)));
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "it waited for the end"
        );
        ender.join().unwrap();
    }
}

/// The group ids whose consumers, in this process, are closing: handing
/// deliveries back, committing and leaving the group.
///
/// A new member of such a group waits for them first. Were it to join
/// before the closing one committed, the rebalance it starts would make the
/// group refuse that commit (the mock cluster refuses every commit while
/// members join), and it would read the handed-back originals again as
/// first deliveries, besides their copies.
#[derive(Debug, Default)]
pub(crate) struct Closing {
    groups: Mutex<std::collections::HashMap<String, usize>>,
    changed: tokio::sync::Notify,
}

impl Closing {
    /// A consumer of `group_id` starts closing.
    pub(crate) fn begin(&self, group_id: &str) {
        *self
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(group_id.to_string())
            .or_default() += 1;
    }

    /// A consumer of `group_id` has committed and left the group.
    pub(crate) fn end(&self, group_id: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = groups.get_mut(group_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                groups.remove(group_id);
            }
        }
        drop(groups);
        self.changed.notify_waiters();
    }

    fn busy(&self, group_id: &str) -> bool {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(group_id)
    }

    /// Waits until no consumer of `group_id` is closing, at most `bound`;
    /// whether none was in time.
    pub(crate) async fn wait(&self, group_id: &str, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: an end in between still wakes it.
            changed.as_mut().enable();
            if !self.busy(group_id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return !self.busy(group_id);
            }
        }
    }
}

#[cfg(test)]
mod closing_tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_new_member_waits_for_closing_members_of_its_group_only() {
        let closing = Arc::new(Closing::default());
        closing.begin("orders.billing");
        closing.begin("orders.billing");
        assert!(
            closing.wait("orders.audit", Duration::ZERO).await,
            "other groups do not wait"
        );
        assert!(
            !closing.wait("orders.billing", Duration::from_millis(20)).await,
            "bounded"
        );
        let ender = {
            let closing = closing.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                closing.end("orders.billing");
                tokio::time::sleep(Duration::from_millis(30)).await;
                closing.end("orders.billing");
            })
        };
        let started = Instant::now();
        assert!(closing.wait("orders.billing", Duration::from_secs(10)).await);
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "it waited for both"
        );
        ender.await.unwrap();
    }
}
