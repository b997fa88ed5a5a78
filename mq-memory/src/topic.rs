//! One topic's state: the retained log and each group's cursor, in-flight,
//! ready and delayed sets. Everything here is synchronous and runs under the
//! topic's lock; the async parts (waiting) live in the producer and consumer.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use mq_core::backend::dead_letter_message;
use mq_core::{Message, Nack, StartPosition, Subscription};
use tokio::time::Instant;

/// A message bound for a dead-letter topic: `(topic, message)`.
pub(crate) type DeadLetter = (String, Message);

/// A topic: its state behind a lock. Tasks that must wait (consumers for
/// messages or a prefetch slot, producers for room) wait for the state's
/// version to change; see [`Topic::changed_since`].
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    state: Mutex<TopicState>,
}

impl Topic {
    pub(crate) fn new(name: &str, capacity: usize) -> Self {
        Topic {
            name: name.into(),
            state: Mutex::new(TopicState {
                log: VecDeque::new(),
                base: 0,
                capacity: capacity.max(1),
                groups: Vec::new(),
                closed: false,
                version: 0,
                sleepers: Vec::new(),
            }),
        }
    }

    /// Locks the state. A panic while the lock was held cannot leave the state
    /// half-updated in a way later operations trip over (every update is a
    /// few field writes), so a poisoned lock is used as it is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the state changed after version `seen` (read under the
    /// same lock as the look that found nothing to do, so no change is
    /// missed). Cancel safe.
    pub(crate) async fn changed_since(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if state.version != seen {
                return Poll::Ready(());
            }
            if !state.sleepers.iter().any(|w| w.will_wake(cx.waker())) {
                state.sleepers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

/// Tasks to wake, taken from [`TopicState::changed`]; wake them with
/// [`wake`] once the lock is released. One sleeper (the usual case) is moved
/// out without giving up the list's allocation.
#[derive(Debug, Default)]
pub(crate) enum Woken {
    /// Nobody was waiting.
    #[default]
    None,
    /// One task.
    One(Waker),
    /// Several tasks.
    Many(Vec<Waker>),
}

/// Wakes what [`TopicState::changed`] returned.
pub(crate) fn wake(woken: Woken) {
    match woken {
        Woken::None => {}
        Woken::One(waker) => waker.wake(),
        Woken::Many(wakers) => wakers.into_iter().for_each(Waker::wake),
    }
}

/// What a consumer's subscription says about its deliveries.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) prefetch: usize,
    pub(crate) ack_timeout: Duration,
    pub(crate) subscription: Subscription,
    pub(crate) dead_letter_topic: String,
}

impl Policy {
    pub(crate) fn new(sub: Subscription) -> Self {
        Policy {
            topic: sub.topic.as_str().into(),
            group: sub.group.as_str().into(),
            prefetch: sub.prefetch.max(1),
            ack_timeout: sub.ack_timeout,
            dead_letter_topic: sub.dead_letter_topic(),
            subscription: sub,
        }
    }

    /// Where a failed delivery on its `attempt`-th try goes: back to the group
    /// as `attempt + 1`, or (attempts used up) to the dead-letter topic.
    fn requeue_or_dead_letter(&self, message: Arc<Message>, attempt: u32) -> Next {
        match self.subscription.exhausted_reason(attempt) {
            Some(reason) => Next::DeadLetter(self.dead_letter(&message, attempt, &reason)),
            None => Next::Requeue(Redelivery {
                message,
                attempt: attempt.saturating_add(1),
            }),
        }
    }

    fn dead_letter(&self, message: &Message, attempt: u32, reason: &str) -> DeadLetter {
        tracing::debug!(topic = %self.topic, group = %self.group, id = %message.id, attempt, reason, "dead-lettering");
        (
            self.dead_letter_topic.clone(),
            dead_letter_message(message, &self.topic, &self.group, attempt, reason),
        )
    }
}

#[derive(Debug)]
pub(crate) struct TopicState {
    /// Retained messages; `log[0]` has offset `base`.
    log: VecDeque<Arc<Message>>,
    base: u64,
    capacity: usize,
    /// Groups never go away, so a group's index is stable.
    groups: Vec<Group>,
    pub(crate) closed: bool,
    /// Bumped by every change a waiting task may be waiting for.
    version: u64,
    /// Tasks waiting for the version to change.
    sleepers: Vec<Waker>,
}

/// Where a failed delivery goes next.
#[derive(Debug)]
enum Next {
    Requeue(Redelivery),
    DeadLetter(DeadLetter),
}

/// A message going back to its group, with the attempt it will be delivered as.
#[derive(Debug)]
struct Redelivery {
    message: Arc<Message>,
    attempt: u32,
}

#[derive(Debug)]
struct Delayed {
    due: Instant,
    seq: u64,
    redelivery: Redelivery,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    // Reversed: BinaryHeap is a max-heap and we want the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// An unsettled delivery.
#[derive(Debug)]
struct Lease {
    message: Arc<Message>,
    attempt: u32,
    deadline: Instant,
}

/// One open consumer of a group and the deliveries it holds.
///
/// Leases are kept in delivery order, indexed by tag: `leases[i]` has tag
/// `base_tag + i`, and a settled one leaves `None` until the ones before it
/// are settled too. One consumer has one ack timeout, so deadlines only grow
/// along the ring and expiry looks at its front only.
#[derive(Debug)]
struct Slot {
    consumer: u64,
    policy: Arc<Policy>,
    base_tag: u64,
    leases: VecDeque<Option<Lease>>,
    held: usize,
}

impl Slot {
    fn remove(&mut self, tag: u64) -> Option<Lease> {
        let index = usize::try_from(tag.checked_sub(self.base_tag)?).ok()?;
        let lease = self.leases.get_mut(index)?.take()?;
        self.held -= 1;
        while matches!(self.leases.front(), Some(None)) {
            self.leases.pop_front();
            self.base_tag += 1;
        }
        Some(lease)
    }

    /// The oldest lease if its deadline passed.
    fn pop_expired(&mut self, now: Instant) -> Option<Lease> {
        let deadline = self.leases.front()?.as_ref()?.deadline;
        if deadline > now {
            return None;
        }
        self.remove(self.base_tag)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.leases.front()?.as_ref().map(|l| l.deadline)
    }
}

#[derive(Debug)]
struct Group {
    name: Arc<str>,
    /// Next log offset this group has not yet taken.
    cursor: u64,
    /// Requeued and reclaimed messages, delivered before the log.
    ready: VecDeque<Redelivery>,
    delayed: BinaryHeap<Delayed>,
    /// Open consumers (a few per group: a scan beats hashing).
    slots: Vec<Slot>,
    next_seq: u64,
}

/// A delivery handed to a consumer.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) message: Arc<Message>,
    pub(crate) attempt: u32,
    pub(crate) tag: u64,
    /// When the broker takes it back if unsettled.
    pub(crate) deadline: Instant,
}

/// What a consumer gets from [`TopicState::take`].
#[derive(Debug)]
pub(crate) enum Take {
    /// One or more deliveries were added to the consumer's buffer.
    Got,
    /// Nothing now; wait for a notification or until this instant.
    Wait(Option<Instant>),
    /// The topic is closed or the consumer was released: end of stream.
    Closed,
}

/// Why an ack or nack did not apply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unsettleable {
    /// The broker is closed.
    Closed,
    /// The delivery is no longer in flight (ack timeout passed, consumer closed).
    Expired,
}

/// Snapshot of a group, for tests and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupStats {
    /// Messages in the log the group has not taken yet.
    pub backlog: u64,
    /// Messages waiting to be redelivered now.
    pub ready: usize,
    /// Messages held back by a delayed requeue.
    pub delayed: usize,
    /// Deliveries handed out and not yet settled.
    pub in_flight: usize,
    /// Open consumers.
    pub consumers: usize,
}

impl TopicState {
    /// The version a waiter compares against (see [`Topic::changed_since`]).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Records a change: bumps the version and hands back the tasks to wake
    /// (wake them with [`wake`] once the lock is released).
    pub(crate) fn changed(&mut self) -> Woken {
        self.version = self.version.wrapping_add(1);
        match self.sleepers.len() {
            0 => Woken::None,
            1 => self.sleepers.pop().map_or(Woken::None, Woken::One),
            _ => Woken::Many(std::mem::take(&mut self.sleepers)),
        }
    }

    fn next_offset(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Drops the oldest retained message if every group has taken it.
    fn trim_one(&mut self) -> bool {
        let min_cursor = self.groups.iter().map(|g| g.cursor).min();
        if self.log.is_empty() || min_cursor.is_some_and(|c| c <= self.base) {
            return false;
        }
        self.log.pop_front();
        self.base += 1;
        true
    }

    /// Whether the log is at capacity (the caller should notify producers
    /// waiting for room when this changes).
    pub(crate) fn is_full(&self) -> bool {
        self.log.len() >= self.capacity
    }

    /// Appends unless the topic is full; gives the message back if it is.
    pub(crate) fn try_append(&mut self, message: Message) -> Result<u64, Message> {
        if self.log.len() >= self.capacity && !self.trim_one() {
            return Err(message);
        }
        let offset = self.next_offset();
        self.log.push_back(Arc::new(message));
        Ok(offset)
    }

    /// Appends even past capacity (dead letters are never blocked or dropped
    /// while a group still needs them).
    pub(crate) fn force_append(&mut self, message: Message) {
        if self.log.len() >= self.capacity {
            self.trim_one();
        }
        self.log.push_back(Arc::new(message));
    }

    /// Registers consumer `consumer` in `policy.group`, creating the group at
    /// the start position when it does not exist. Returns the group's index.
    pub(crate) fn attach(&mut self, policy: &Arc<Policy>, consumer: u64) -> usize {
        let index = match self.groups.iter().position(|g| g.name == policy.group) {
            Some(index) => index,
            None => {
                let cursor = match policy.subscription.start {
                    StartPosition::Earliest => self.base,
                    _ => self.next_offset(),
                };
                self.groups.push(Group {
                    name: policy.group.clone(),
                    cursor,
                    ready: VecDeque::new(),
                    delayed: BinaryHeap::new(),
                    slots: Vec::new(),
                    next_seq: 0,
                });
                self.groups.len() - 1
            }
        };
        self.groups[index].slots.push(Slot {
            consumer,
            policy: policy.clone(),
            base_tag: 0,
            leases: VecDeque::new(),
            held: 0,
        });
        index
    }

    /// Hands `consumer` of group `group` up to `max` deliveries (fewer when
    /// its prefetch allows fewer), appending them to `out`; or says how long
    /// to wait. Dead letters produced on the way (expired deliveries out of
    /// attempts) are pushed to `dead`.
    pub(crate) fn take(
        &mut self,
        group: usize,
        consumer: u64,
        now: Instant,
        max: usize,
        out: &mut VecDeque<Taken>,
        dead: &mut Vec<DeadLetter>,
    ) -> Take {
        if self.closed {
            return Take::Closed;
        }
        let Some(g) = self.groups.get_mut(group) else {
            return Take::Closed;
        };
        g.expire(now, dead);
        g.promote_delayed(now);
        let next_wake = g.next_wake();
        let Some(slot) = g.slots.iter_mut().find(|s| s.consumer == consumer) else {
            return Take::Closed;
        };
        let room = slot.policy.prefetch.saturating_sub(slot.held).min(max);
        let deadline = now
            .checked_add(slot.policy.ack_timeout)
            .unwrap_or_else(far_future);
        let mut taken = 0;
        while taken < room {
            let (message, attempt) = if let Some(r) = g.ready.pop_front() {
                (r.message, r.attempt)
            } else if g.cursor < self.base + self.log.len() as u64 {
                let index = usize::try_from(g.cursor - self.base).unwrap_or(usize::MAX);
                let Some(message) = self.log.get(index).cloned() else {
                    break;
                };
                g.cursor += 1;
                (message, 1)
            } else {
                break;
            };
            let tag = slot.base_tag + slot.leases.len() as u64;
            slot.leases.push_back(Some(Lease {
                message: message.clone(),
                attempt,
                deadline,
            }));
            slot.held += 1;
            out.push_back(Taken {
                message,
                attempt,
                tag,
                deadline,
            });
            taken += 1;
        }
        if taken == 0 {
            // Also wake for this consumer's own leases running out.
            let own = slot.next_deadline();
            return Take::Wait(min_instant(next_wake, own));
        }
        Take::Got
    }

    /// Settles delivery `tag` of `consumer` positively. Returns whether
    /// waiters should be woken (a consumer at its prefetch limit got a slot
    /// back).
    pub(crate) fn ack(&mut self, group: usize, consumer: u64, tag: u64) -> Result<bool, Unsettleable> {
        if self.closed {
            return Err(Unsettleable::Closed);
        }
        let slot = self.slot(group, consumer).ok_or(Unsettleable::Expired)?;
        let was_full = slot.held >= slot.policy.prefetch;
        slot.remove(tag).ok_or(Unsettleable::Expired)?;
        Ok(was_full)
    }

    /// Requeues or dead-letters delivery `tag` of `consumer`. A dead letter
    /// to publish is returned.
    pub(crate) fn nack(
        &mut self,
        group: usize,
        consumer: u64,
        tag: u64,
        nack: Nack,
        now: Instant,
    ) -> Result<Option<DeadLetter>, Unsettleable> {
        if self.closed {
            return Err(Unsettleable::Closed);
        }
        let slot = self.slot(group, consumer).ok_or(Unsettleable::Expired)?;
        let lease = slot.remove(tag).ok_or(Unsettleable::Expired)?;
        let policy = slot.policy.clone();
        let g = &mut self.groups[group];
        let Lease { message, attempt, .. } = lease;
        let redelivery = match nack {
            Nack::DeadLetter { reason } => return Ok(Some(policy.dead_letter(&message, attempt, &reason))),
            Nack::Requeue { delay } if !delay.is_zero() => {
                match policy.requeue_or_dead_letter(message, attempt) {
                    Next::DeadLetter(dead) => return Ok(Some(dead)),
                    Next::Requeue(redelivery) => {
                        let seq = g.next_seq;
                        g.next_seq += 1;
                        g.delayed.push(Delayed {
                            due: now.checked_add(delay).unwrap_or_else(far_future),
                            seq,
                            redelivery,
                        });
                        return Ok(None);
                    }
                }
            }
            // A plain requeue (and anything `Nack` may grow upstream).
            _ => policy.requeue_or_dead_letter(message, attempt),
        };
        match redelivery {
            Next::Requeue(redelivery) => {
                g.ready.push_back(redelivery);
                Ok(None)
            }
            Next::DeadLetter(dead) => Ok(Some(dead)),
        }
    }

    /// Removes `consumer` from `group`, giving its unsettled deliveries back
    /// at the front of the group's queue, in the order they were delivered.
    pub(crate) fn detach(&mut self, group: usize, consumer: u64, dead: &mut Vec<DeadLetter>) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let Some(index) = g.slots.iter().position(|s| s.consumer == consumer) else {
            return;
        };
        let slot = g.slots.swap_remove(index);
        for lease in slot.leases.into_iter().rev().flatten() {
            match slot.policy.requeue_or_dead_letter(lease.message, lease.attempt) {
                Next::Requeue(redelivery) => g.ready.push_front(redelivery),
                Next::DeadLetter(d) => dead.push(d),
            }
        }
    }

    /// A broker restart: every consumer's unsettled deliveries go back to
    /// the front of their group's queue, in delivery order (attempt + 1),
    /// and their tags stop being valid; the consumers stay attached.
    pub(crate) fn restart(&mut self, dead: &mut Vec<DeadLetter>) {
        for g in &mut self.groups {
            let mut back = Vec::new();
            for slot in &mut g.slots {
                slot.base_tag = slot.base_tag.saturating_add(slot.leases.len() as u64);
                slot.held = 0;
                for lease in std::mem::take(&mut slot.leases).into_iter().flatten() {
                    match slot.policy.requeue_or_dead_letter(lease.message, lease.attempt) {
                        Next::Requeue(redelivery) => back.push(redelivery),
                        Next::DeadLetter(d) => dead.push(d),
                    }
                }
            }
            for redelivery in back.into_iter().rev() {
                g.ready.push_front(redelivery);
            }
        }
    }

    fn slot(&mut self, group: usize, consumer: u64) -> Option<&mut Slot> {
        self.groups
            .get_mut(group)?
            .slots
            .iter_mut()
            .find(|s| s.consumer == consumer)
    }

    pub(crate) fn stats(&self, group: &str) -> Option<GroupStats> {
        let g = self.groups.iter().find(|g| &*g.name == group)?;
        Some(GroupStats {
            backlog: self.next_offset().saturating_sub(g.cursor),
            ready: g.ready.len(),
            delayed: g.delayed.len(),
            in_flight: g.slots.iter().map(|s| s.held).sum(),
            consumers: g.slots.len(),
        })
    }

    /// Retained messages (history and backlog).
    pub(crate) fn len(&self) -> usize {
        self.log.len()
    }
}

impl Group {
    /// Takes back deliveries whose ack timeout passed, from every consumer.
    fn expire(&mut self, now: Instant, dead: &mut Vec<DeadLetter>) {
        for slot in &mut self.slots {
            while let Some(lease) = slot.pop_expired(now) {
                tracing::debug!(group = %slot.policy.group, id = %lease.message.id, "ack timeout passed; redelivering");
                match slot.policy.requeue_or_dead_letter(lease.message, lease.attempt) {
                    Next::Requeue(redelivery) => self.ready.push_back(redelivery),
                    Next::DeadLetter(d) => dead.push(d),
                }
            }
        }
    }

    fn promote_delayed(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            if let Some(d) = self.delayed.pop() {
                self.ready.push_back(d.redelivery);
            }
        }
    }

    /// When something will next become deliverable by the clock alone.
    fn next_wake(&self) -> Option<Instant> {
        let leases = self.slots.iter().filter_map(Slot::next_deadline).min();
        min_instant(leases, self.delayed.peek().map(|d| d.due))
    }
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn far_future() -> Instant {
    // About 30 years: far enough to never fire, small enough not to overflow.
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(sub: Subscription) -> Arc<Policy> {
        Arc::new(Policy::new(sub))
    }

    /// Takes one delivery for consumer `c` of group 0.
    fn take_one(
        st: &mut TopicState,
        _policy: &Arc<Policy>,
        c: u64,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
    ) -> Option<Taken> {
        let mut out = VecDeque::new();
        match st.take(0, c, now, 1, &mut out, dead) {
            Take::Got => out.pop_front(),
            _ => None,
        }
    }

    #[test]
    fn full_log_trims_only_what_every_group_took() {
        let topic = Topic::new("t", 2);
        let mut st = topic.lock();
        let p = policy(Subscription::new("t", "g"));
        assert_eq!(st.attach(&p, 1), 0);
        st.try_append(Message::new("a")).unwrap();
        st.try_append(Message::new("b")).unwrap();
        let back = st.try_append(Message::new("c")).unwrap_err();
        assert_eq!(back.payload, "c");
        let mut dead = Vec::new();
        take_one(&mut st, &p, 1, Instant::now(), &mut dead).unwrap();
        assert!(
            st.try_append(Message::new("c")).is_ok(),
            "a was taken, so it can be trimmed"
        );
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn history_without_groups_is_bounded() {
        let topic = Topic::new("t", 3);
        let mut st = topic.lock();
        for i in 0..10 {
            st.try_append(Message::new(format!("{i}"))).unwrap();
        }
        assert_eq!(st.len(), 3);
    }

    #[test]
    fn expired_delivery_returns_with_next_attempt_then_dead_letters() {
        let topic = Topic::new("t", 10);
        let mut st = topic.lock();
        let p = policy(
            Subscription::new("t", "g")
                .ack_timeout(Duration::from_secs(1))
                .max_attempts(2),
        );
        st.attach(&p, 1);
        st.try_append(Message::new("m")).unwrap();
        let now = Instant::now();
        let mut dead = Vec::new();
        let first = take_one(&mut st, &p, 1, now, &mut dead).unwrap();
        assert_eq!(first.attempt, 1);
        let later = now + Duration::from_secs(2);
        let second = take_one(&mut st, &p, 1, later, &mut dead).unwrap();
        assert_eq!(second.attempt, 2);
        assert_eq!(
            st.ack(0, 1, first.tag),
            Err(Unsettleable::Expired),
            "the first lease is gone"
        );
        let much_later = later + Duration::from_secs(2);
        let mut out = VecDeque::new();
        assert!(matches!(
            st.take(0, 1, much_later, 1, &mut out, &mut dead),
            Take::Wait(None)
        ));
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, "t.dlq");
        assert_eq!(dead[0].1.header(mq_core::headers::ATTEMPTS), Some("2"));
    }

    #[test]
    fn prefetch_blocks_until_ack_and_bounds_batches() {
        let topic = Topic::new("t", 10);
        let mut st = topic.lock();
        let p = policy(Subscription::new("t", "g").prefetch(3));
        st.attach(&p, 7);
        for i in 0..5 {
            st.try_append(Message::new(format!("{i}"))).unwrap();
        }
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut out = VecDeque::new();
        assert!(matches!(st.take(0, 7, now, 16, &mut out, &mut dead), Take::Got));
        assert_eq!(out.len(), 3, "a batch never exceeds the prefetch");
        assert!(matches!(
            st.take(0, 7, now, 16, &mut out, &mut dead),
            Take::Wait(Some(_))
        ));
        assert_eq!(
            st.ack(0, 7, out[0].tag),
            Ok(true),
            "a full consumer got a slot back"
        );
        let next = take_one(&mut st, &p, 7, now, &mut dead).unwrap();
        assert_eq!(next.message.payload, "3");
    }

    #[test]
    fn detach_returns_deliveries_in_order_at_the_front() {
        let topic = Topic::new("t", 10);
        let mut st = topic.lock();
        let p = policy(Subscription::new("t", "g"));
        st.attach(&p, 1);
        for i in 0..4 {
            st.try_append(Message::new(format!("{i}"))).unwrap();
        }
        let mut dead = Vec::new();
        let mut out = VecDeque::new();
        st.take(0, 1, Instant::now(), 2, &mut out, &mut dead);
        st.detach(0, 1, &mut dead);
        st.attach(&p, 2);
        let mut again = VecDeque::new();
        st.take(0, 2, Instant::now(), 4, &mut again, &mut dead);
        let got: Vec<(String, u32)> = again
            .iter()
            .map(|t| (String::from_utf8(t.message.payload.to_vec()).unwrap(), t.attempt))
            .collect();
        assert_eq!(
            got,
            [("0".into(), 2), ("1".into(), 2), ("2".into(), 1), ("3".into(), 1)]
        );
        assert!(dead.is_empty());
    }
}
