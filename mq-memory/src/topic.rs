//! One topic's state: the retained log and each group's cursor, in-flight,
//! ready and delayed sets. Everything here is synchronous and runs under the
//! topic's lock; the async parts (waiting) live in the producer and consumer.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mq_core::{Message, Nack, StartPosition, Subscription, attempts_exhausted_reason, dead_letter_message};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A message bound for a dead-letter topic: `(topic, message)`.
pub(crate) type DeadLetter = (String, Message);

/// A topic: its state behind a lock, and one `Notify` that wakes every task
/// waiting on it (consumers for messages or a prefetch slot, producers for room).
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    state: Mutex<TopicState>,
    pub(crate) notify: Notify,
}

impl Topic {
    pub(crate) fn new(name: &str, capacity: usize) -> Self {
        Topic {
            name: name.into(),
            state: Mutex::new(TopicState {
                log: VecDeque::new(),
                base: 0,
                capacity: capacity.max(1),
                groups: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    /// Locks the state. A panic while the lock was held cannot leave the state
    /// half-updated in a way later operations trip over (every update is a
    /// few field writes), so a poisoned lock is used as it is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn requeue_or_dead_letter(&self, message: Message, attempt: u32) -> Result<Redelivery, DeadLetter> {
        match self.subscription.max_attempts {
            Some(max) if self.subscription.attempts_exhausted(attempt) => {
                Err(self.dead_letter(&message, attempt, &attempts_exhausted_reason(max)))
            }
            _ => Ok(Redelivery {
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
    log: VecDeque<Message>,
    base: u64,
    capacity: usize,
    groups: HashMap<Arc<str>, Group>,
    pub(crate) closed: bool,
}

/// A message going back to its group, with the attempt it will be delivered as.
#[derive(Debug)]
struct Redelivery {
    message: Message,
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

#[derive(Debug)]
struct Inflight {
    message: Message,
    attempt: u32,
    consumer: u64,
    deadline: Instant,
    policy: Arc<Policy>,
}

#[derive(Debug)]
struct Group {
    /// Next log offset this group has not yet taken.
    cursor: u64,
    /// Requeued and reclaimed messages, delivered before the log.
    ready: VecDeque<Redelivery>,
    delayed: BinaryHeap<Delayed>,
    inflight: BTreeMap<u64, Inflight>,
    /// `(deadline, tag)` of every in-flight delivery, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Open consumers and how many unsettled deliveries each holds.
    consumers: HashMap<u64, usize>,
    next_tag: u64,
    next_seq: u64,
}

/// What a consumer gets from [`TopicState::take`].
#[derive(Debug)]
pub(crate) enum Take {
    /// A delivery.
    Got {
        message: Message,
        attempt: u32,
        tag: u64,
    },
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
    fn next_offset(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Drops the oldest retained message if every group has taken it.
    fn trim_one(&mut self) -> bool {
        let min_cursor = self.groups.values().map(|g| g.cursor).min();
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
        self.log.push_back(message);
        Ok(offset)
    }

    /// Appends even past capacity (dead letters are never blocked or dropped
    /// while a group still needs them).
    pub(crate) fn force_append(&mut self, message: Message) {
        if self.log.len() >= self.capacity {
            self.trim_one();
        }
        self.log.push_back(message);
    }

    /// Registers consumer `consumer` in `policy.group`, creating the group at
    /// the start position when it does not exist.
    pub(crate) fn attach(&mut self, policy: &Policy, consumer: u64) {
        let cursor = match policy.subscription.start {
            StartPosition::Earliest => self.base,
            _ => self.next_offset(),
        };
        let group = self.groups.entry(policy.group.clone()).or_insert_with(|| Group {
            cursor,
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            inflight: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            consumers: HashMap::new(),
            next_tag: 0,
            next_seq: 0,
        });
        group.consumers.insert(consumer, 0);
    }

    /// The next delivery for `consumer`, or how long to wait for one.
    /// Dead letters produced on the way (expired deliveries out of attempts)
    /// are pushed to `dead`.
    pub(crate) fn take(
        &mut self,
        policy: &Arc<Policy>,
        consumer: u64,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
    ) -> Take {
        if self.closed {
            return Take::Closed;
        }
        let Some(group) = self.groups.get_mut(&policy.group) else {
            return Take::Closed;
        };
        let Some(&held) = group.consumers.get(&consumer) else {
            return Take::Closed;
        };
        group.expire(now, dead);
        group.promote_delayed(now);
        if held >= policy.prefetch {
            return Take::Wait(group.next_wake());
        }
        let (message, attempt) = if let Some(r) = group.ready.pop_front() {
            (r.message, r.attempt)
        } else if group.cursor < self.base + self.log.len() as u64 {
            let index = usize::try_from(group.cursor - self.base).unwrap_or(usize::MAX);
            let Some(message) = self.log.get(index).cloned() else {
                return Take::Wait(group.next_wake());
            };
            group.cursor += 1;
            (message, 1)
        } else {
            return Take::Wait(group.next_wake());
        };
        let tag = group.next_tag;
        group.next_tag += 1;
        let deadline = now.checked_add(policy.ack_timeout).unwrap_or_else(far_future);
        group.deadlines.insert((deadline, tag));
        group.inflight.insert(
            tag,
            Inflight {
                message: message.clone(),
                attempt,
                consumer,
                deadline,
                policy: policy.clone(),
            },
        );
        if let Some(count) = group.consumers.get_mut(&consumer) {
            *count += 1;
        }
        Take::Got {
            message,
            attempt,
            tag,
        }
    }

    /// Settles delivery `tag` of `group` positively. Returns whether waiters
    /// should be woken (a consumer at its prefetch limit got a slot back).
    pub(crate) fn ack(&mut self, group: &str, tag: u64) -> Result<bool, Unsettleable> {
        if self.closed {
            return Err(Unsettleable::Closed);
        }
        let group = self.groups.get_mut(group).ok_or(Unsettleable::Expired)?;
        let inflight = group.remove_inflight(tag).ok_or(Unsettleable::Expired)?;
        Ok(group.release_slot(&inflight))
    }

    /// Requeues or dead-letters delivery `tag`. A dead letter to publish is
    /// returned.
    pub(crate) fn nack(
        &mut self,
        group: &str,
        tag: u64,
        nack: Nack,
        now: Instant,
    ) -> Result<Option<DeadLetter>, Unsettleable> {
        if self.closed {
            return Err(Unsettleable::Closed);
        }
        let group = self.groups.get_mut(group).ok_or(Unsettleable::Expired)?;
        let inflight = group.remove_inflight(tag).ok_or(Unsettleable::Expired)?;
        group.release_slot(&inflight);
        let Inflight {
            message,
            attempt,
            policy,
            ..
        } = inflight;
        match nack {
            Nack::DeadLetter { reason } => Ok(Some(policy.dead_letter(&message, attempt, &reason))),
            Nack::Requeue { delay } => match policy.requeue_or_dead_letter(message, attempt) {
                Err(dead) => Ok(Some(dead)),
                Ok(redelivery) if delay.is_zero() => {
                    group.ready.push_back(redelivery);
                    Ok(None)
                }
                Ok(redelivery) => {
                    let seq = group.next_seq;
                    group.next_seq += 1;
                    group.delayed.push(Delayed {
                        due: now.checked_add(delay).unwrap_or_else(far_future),
                        seq,
                        redelivery,
                    });
                    Ok(None)
                }
            },
            // `Nack` is non-exhaustive upstream: treat anything new as a plain requeue.
            _ => match policy.requeue_or_dead_letter(message, attempt) {
                Err(dead) => Ok(Some(dead)),
                Ok(redelivery) => {
                    group.ready.push_back(redelivery);
                    Ok(None)
                }
            },
        }
    }

    /// Removes `consumer` from `group`, giving its unsettled deliveries back
    /// at the front of the group's queue, in the order they were delivered.
    pub(crate) fn detach(&mut self, group: &str, consumer: u64, dead: &mut Vec<DeadLetter>) {
        let Some(group) = self.groups.get_mut(group) else {
            return;
        };
        if group.consumers.remove(&consumer).is_none() {
            return;
        }
        let tags: Vec<u64> = group
            .inflight
            .iter()
            .filter(|(_, i)| i.consumer == consumer)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in tags.into_iter().rev() {
            if let Some(inflight) = group.remove_inflight(tag) {
                match inflight
                    .policy
                    .requeue_or_dead_letter(inflight.message, inflight.attempt)
                {
                    Ok(redelivery) => group.ready.push_front(redelivery),
                    Err(d) => dead.push(d),
                }
            }
        }
    }

    pub(crate) fn stats(&self, group: &str) -> Option<GroupStats> {
        let g = self.groups.get(group)?;
        Some(GroupStats {
            backlog: self.next_offset().saturating_sub(g.cursor),
            ready: g.ready.len(),
            delayed: g.delayed.len(),
            in_flight: g.inflight.len(),
            consumers: g.consumers.len(),
        })
    }

    /// Retained messages (history and backlog).
    pub(crate) fn len(&self) -> usize {
        self.log.len()
    }
}

impl Group {
    fn remove_inflight(&mut self, tag: u64) -> Option<Inflight> {
        let inflight = self.inflight.remove(&tag)?;
        self.deadlines.remove(&(inflight.deadline, tag));
        Some(inflight)
    }

    /// Frees the consumer's prefetch slot; true if it was full.
    fn release_slot(&mut self, inflight: &Inflight) -> bool {
        match self.consumers.get_mut(&inflight.consumer) {
            Some(count) => {
                let was_full = *count >= inflight.policy.prefetch;
                *count = count.saturating_sub(1);
                was_full
            }
            None => false,
        }
    }

    /// Takes back deliveries whose ack timeout passed.
    fn expire(&mut self, now: Instant, dead: &mut Vec<DeadLetter>) {
        while let Some(&(deadline, tag)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let Some(inflight) = self.remove_inflight(tag) else {
                continue;
            };
            self.release_slot(&inflight);
            tracing::debug!(group = %inflight.policy.group, id = %inflight.message.id, "ack timeout passed; redelivering");
            match inflight
                .policy
                .requeue_or_dead_letter(inflight.message, inflight.attempt)
            {
                Ok(redelivery) => self.ready.push_back(redelivery),
                Err(d) => dead.push(d),
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
        let ack = self.deadlines.first().map(|(d, _)| *d);
        let delayed = self.delayed.peek().map(|d| d.due);
        match (ack, delayed) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        }
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

    fn got(take: Take) -> (Message, u32, u64) {
        match take {
            Take::Got {
                message,
                attempt,
                tag,
            } => (message, attempt, tag),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn full_log_trims_only_what_every_group_took() {
        let topic = Topic::new("t", 2);
        let mut st = topic.lock();
        let p = policy(Subscription::new("t", "g"));
        st.attach(&p, 1);
        st.try_append(Message::new("a")).unwrap();
        st.try_append(Message::new("b")).unwrap();
        let back = st.try_append(Message::new("c")).unwrap_err();
        assert_eq!(back.payload, "c");
        let mut dead = Vec::new();
        let now = Instant::now();
        got(st.take(&p, 1, now, &mut dead));
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
        let (_, attempt, tag) = got(st.take(&p, 1, now, &mut dead));
        assert_eq!(attempt, 1);
        let later = now + Duration::from_secs(2);
        let (_, attempt, _) = got(st.take(&p, 1, later, &mut dead));
        assert_eq!(attempt, 2);
        assert_eq!(
            st.ack("g", tag),
            Err(Unsettleable::Expired),
            "the first lease is gone"
        );
        let much_later = later + Duration::from_secs(2);
        assert!(matches!(st.take(&p, 1, much_later, &mut dead), Take::Wait(None)));
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, "t.dlq");
        assert_eq!(dead[0].1.header(mq_core::headers::ATTEMPTS), Some("2"));
    }

    #[test]
    fn prefetch_blocks_until_ack() {
        let topic = Topic::new("t", 10);
        let mut st = topic.lock();
        let p = policy(Subscription::new("t", "g").prefetch(1));
        st.attach(&p, 7);
        st.try_append(Message::new("a")).unwrap();
        st.try_append(Message::new("b")).unwrap();
        let now = Instant::now();
        let mut dead = Vec::new();
        let (_, _, tag) = got(st.take(&p, 7, now, &mut dead));
        assert!(matches!(st.take(&p, 7, now, &mut dead), Take::Wait(Some(_))));
        assert_eq!(st.ack("g", tag), Ok(true), "a full consumer got a slot back");
        let (m, _, _) = got(st.take(&p, 7, now, &mut dead));
        assert_eq!(m.payload, "b");
    }
}
