//! Receiving: a consumer group member per subscription, at-least-once done
//! right (an offset is stored only once it and every earlier delivered
//! offset of its partition were acked), requeues through the group's retry
//! topic, dead letters to the dead-letter topic.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use mq_core::backend::{AckHandle, dead_letter_message};
use mq_core::{
    Consumer, Delivery, Error, Message, Nack, Result, StartPosition, Subscription, headers, time_from_millis,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::Inner;
use crate::error::map;
use crate::hand_back::HandBack;
use crate::producer::ID;
use crate::retry_gate::{GATE_MAX, RetryGate};

/// Header of a delayed copy: when it is due (ms since the epoch).
const DUE: &str = "mq-due";

/// Which of the two subscribed topics a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// The subscription's topic.
    Topic,
    /// The group's retry topic.
    Retry,
}

/// A delivery about to be handed out, as the tracker records it.
struct Lease {
    source: Source,
    partition: i32,
    offset: i64,
    /// [`Tracker::stamp`] when the message was read.
    stamp: u64,
    message: Arc<Message>,
    attempt: u32,
}

/// Deliveries handed out and not yet acked, per partition.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The subscription's topic and the group's retry topic.
    names: [String; 2],
    parts: Mutex<Parts>,
    generation: AtomicU64,
    /// How many revokes there were (written under the lock).
    revokes: AtomicU64,
}

#[derive(Debug, Default)]
struct Parts {
    held: PartitionMap<Part>,
    /// The revoke count that last took each partition away.
    revoked: PartitionMap<u64>,
}

/// A map keyed by topic and partition, with [`PartitionHasher`].
type PartitionMap<V> = HashMap<(Source, i32), V, BuildHasherDefault<PartitionHasher>>;

/// Hashes a (topic, partition) key with a multiplication per word: the keys
/// are a few small numbers that the group coordinator assigned, so
/// SipHash's guard against chosen keys is not needed on an ack's path.
#[derive(Debug, Default, Clone, Copy)]
struct PartitionHasher(u64);

impl PartitionHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(29) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Hasher for PartitionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.mix(u64::from(*b));
        }
    }

    fn write_i32(&mut self, n: i32) {
        self.mix(u64::from(n.cast_unsigned()));
    }

    fn write_isize(&mut self, n: isize) {
        self.mix(n.cast_unsigned() as u64);
    }
}

/// An unacked delivery's message and attempt, kept to hand it back.
type Held = (Arc<Message>, u32);

#[derive(Debug)]
struct Part {
    generation: u64,
    /// Delivered offsets in ascending order: the message while unacked,
    /// `None` once acked (until every earlier one is acked too).
    leases: VecDeque<(i64, Option<Held>)>,
    /// The next offset to read, once something was acked.
    acked_to: Option<i64>,
    /// Whether `acked_to` moved since it was last stored.
    dirty: bool,
}

impl Tracker {
    fn new(topic: &str, retry_topic: &str) -> Self {
        Tracker {
            names: [topic.to_string(), retry_topic.to_string()],
            parts: Mutex::new(Parts::default()),
            generation: AtomicU64::new(0),
            revokes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a message read now is stamped with: a lease stamped before a
    /// later revoke of its partition is not handed out (the partition's
    /// new owner reads it again).
    fn stamp(&self) -> u64 {
        self.revokes.load(Ordering::Acquire)
    }

    fn name(&self, source: Source) -> &str {
        match source {
            Source::Topic => &self.names[0],
            Source::Retry => &self.names[1],
        }
    }

    fn source(&self, topic: &str) -> Option<Source> {
        if topic == self.names[0] {
            Some(Source::Topic)
        } else if topic == self.names[1] {
            Some(Source::Retry)
        } else {
            None
        }
    }

    /// Records a delivery; returns its partition's generation, or `None`
    /// for a message whose partition was revoked after it was read (it is
    /// not to be handed out).
    fn add(&self, l: &Lease) -> Option<u64> {
        let mut guard = self.lock();
        let Parts { held, revoked } = &mut *guard;
        let key = (l.source, l.partition);
        if revoked.get(&key).is_some_and(|&at| at > l.stamp) {
            return None;
        }
        let part = held.entry(key).or_insert_with(|| Part {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            leases: VecDeque::new(),
            acked_to: None,
            dirty: false,
        });
        let lease = Some((l.message.clone(), l.attempt));
        // A partition's offsets arrive in ascending order; anything else (a
        // reset to an earlier offset) is put in its place.
        match part.leases.back() {
            Some(&(last, _)) if last >= l.offset => {
                match part.leases.binary_search_by_key(&l.offset, |e| e.0) {
                    Ok(i) => part.leases[i].1 = lease,
                    Err(i) => part.leases.insert(i, (l.offset, lease)),
                }
            }
            _ => part.leases.push_back((l.offset, lease)),
        }
        Some(part.generation)
    }

    /// Marks a delivery acked, and moves the partition's acked position
    /// past every delivered offset acked so far in a row. `Err(())`: the
    /// partition was revoked since.
    fn ack(
        &self,
        source: Source,
        partition: i32,
        offset: i64,
        generation: u64,
    ) -> std::result::Result<(), ()> {
        let mut parts = self.lock();
        let part = parts.held.get_mut(&(source, partition)).ok_or(())?;
        if part.generation != generation {
            return Err(());
        }
        // Acks mostly come in order: the front first.
        let i = if part.leases.front().is_some_and(|l| l.0 == offset) {
            0
        } else {
            part.leases
                .binary_search_by_key(&offset, |l| l.0)
                .map_err(|_| ())?
        };
        part.leases[i].1 = None;
        let mut last = None;
        while let Some(&(o, None)) = part.leases.front() {
            part.leases.pop_front();
            last = Some(o);
        }
        if let Some(o) = last {
            part.acked_to = Some(o + 1);
            part.dirty = true;
        }
        Ok(())
    }

    /// Whether `partition` of `source` is still held in `generation` (not
    /// revoked since).
    pub(crate) fn owns(&self, source: Source, partition: i32, generation: u64) -> bool {
        self.lock()
            .held
            .get(&(source, partition))
            .is_some_and(|part| part.generation == generation)
    }

    /// Where each partition of `settling` would be acked to once these
    /// deliveries `(source, partition, offset, generation)` are acked too:
    /// `(topic, partition, next offset)`. `Err(i)`: the partition of
    /// `settling[i]` was revoked since.
    pub(crate) fn positions_with(
        &self,
        settling: &[(Source, i32, i64, u64)],
    ) -> std::result::Result<Vec<(String, i32, i64)>, usize> {
        let parts = self.lock();
        let mut keys: Vec<(Source, i32)> = Vec::new();
        for (i, &(source, partition, _, generation)) in settling.iter().enumerate() {
            match parts.held.get(&(source, partition)) {
                Some(part) if part.generation == generation => {}
                _ => return Err(i),
            }
            if !keys.contains(&(source, partition)) {
                keys.push((source, partition));
            }
        }
        let settling_set: std::collections::HashSet<(Source, i32, i64)> =
            settling.iter().map(|&(s, p, o, _)| (s, p, o)).collect();
        let mut out = Vec::new();
        for (source, partition) in keys {
            let Some(part) = parts.held.get(&(source, partition)) else {
                continue;
            };
            let mut next = part.acked_to;
            for (offset, lease) in &part.leases {
                let settles = settling_set.contains(&(source, partition, *offset));
                if lease.is_some() && !settles {
                    break;
                }
                next = Some(offset + 1);
            }
            if let Some(next) = next {
                out.push((self.name(source).to_string(), partition, next));
            }
        }
        Ok(out)
    }

    /// The acked positions that moved since this was last asked.
    fn take_acked(&self) -> Vec<(Source, i32, i64)> {
        let mut parts = self.lock();
        let mut moved = Vec::new();
        for (&(source, partition), part) in &mut parts.held {
            if part.dirty
                && let Some(next) = part.acked_to
            {
                part.dirty = false;
                moved.push((source, partition, next));
            }
        }
        moved
    }

    /// Forgets revoked partitions: their deliveries can no longer be acked
    /// here (the new owner gets them from the committed offset). Returns
    /// how far each was acked.
    fn revoke(&self, tpl: &TopicPartitionList) -> Vec<((String, i32), i64)> {
        let mut parts = self.lock();
        let revokes = self.revokes.fetch_add(1, Ordering::AcqRel) + 1;
        let mut acked = Vec::new();
        for e in tpl.elements() {
            let Some(source) = self.source(e.topic()) else {
                continue;
            };
            parts.revoked.insert((source, e.partition()), revokes);
            if let Some(next) = parts
                .held
                .remove(&(source, e.partition()))
                .and_then(|p| p.acked_to)
            {
                acked.push(((e.topic().to_string(), e.partition()), next));
            }
        }
        acked
    }

    /// Every unacked delivery: `(source, partition, offset, generation, message, attempt)`.
    fn unacked(&self) -> Vec<(Source, i32, i64, u64, Arc<Message>, u32)> {
        let parts = self.lock();
        let mut out = Vec::new();
        for (&(source, partition), part) in &parts.held {
            for (offset, lease) in &part.leases {
                if let Some((m, a)) = lease {
                    out.push((source, partition, *offset, part.generation, m.clone(), *a));
                }
            }
        }
        out
    }
}

/// Stores (for the next commit) every acked position that moved.
fn store_acked(consumer: &BaseConsumer<Ctx>, tracker: &Tracker) {
    let moved = tracker.take_acked();
    if moved.is_empty() {
        return;
    }
    store(
        consumer,
        moved.iter().map(|&(s, p, next)| (tracker.name(s), p, next)),
    );
}

/// Stores these `(topic, partition, next offset)` positions for the next commit.
fn store<'a>(consumer: &BaseConsumer<Ctx>, positions: impl Iterator<Item = (&'a str, i32, i64)>) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in positions {
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next)) {
            tracing::debug!(error = %e, "offset list");
        }
    }
    // Fails only for partitions no longer assigned: their new owner reads
    // them again from the committed offset.
    if tpl.count() > 0
        && let Err(e) = consumer.store_offsets(&tpl)
    {
        tracing::debug!(error = %e, "storing acked offsets");
    }
}

/// Commits stored offsets when partitions are revoked, starts new groups at
/// the end of the topic, and reports assignments.
pub(crate) struct Ctx {
    tracker: Arc<Tracker>,
    assigned: watch::Sender<u64>,
    /// The topic, when the subscription starts at the latest message.
    start_latest: Option<String>,
    /// How far revoked partitions were acked, when committing that failed.
    uncommitted: Mutex<HashMap<(String, i32), i64>>,
    /// Offsets are committed by transactions only: none on revoke.
    transactional: bool,
    /// A revoke waits for unacked deliveries being handed back.
    pub(crate) hand_back: HandBack,
    /// Holds the retry partitions after an assignment until the topic's
    /// are fetched.
    retry_gate: RetryGate,
}

impl Ctx {
    /// Commits what was acked of partitions that come back to this member
    /// after their commit on revoke failed.
    fn commit_uncommitted(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let uncommitted =
            std::mem::take(&mut *self.uncommitted.lock().unwrap_or_else(PoisonError::into_inner));
        let mut tpl = TopicPartitionList::new();
        for e in assigned.elements() {
            if let Some(next) = uncommitted.get(&(e.topic().to_string(), e.partition()))
                && let Err(err) = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(*next))
            {
                tracing::debug!(error = %err, "offset list");
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "committing acked offsets after a rebalance failed; they are delivered again");
        }
    }

    /// Pauses the newly assigned retry partitions until the topic's are
    /// fetched (see [`RetryGate`]).
    fn hold_retry(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let retry = of_source(&self.tracker, assigned, Source::Retry);
        let topic: Vec<i32> = assigned
            .elements()
            .iter()
            .filter(|e| self.tracker.source(e.topic()) == Some(Source::Topic))
            .map(|e| e.partition())
            .collect();
        if topic.is_empty() || retry.count() == 0 {
            self.retry_gate.release();
            return;
        }
        match consumer.pause(&retry) {
            Ok(()) => self.retry_gate.hold(topic, GATE_MAX),
            Err(e) => {
                tracing::debug!(error = %e, "pausing the retry partitions");
                self.retry_gate.release();
            }
        }
    }
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // A closing consumer's unacked deliveries are handed back
                // (copied, then acked) before the partitions go.
                if !self.hand_back.wait(HAND_BACK_WAIT) {
                    tracing::warn!(
                        "handing deliveries back took over {HAND_BACK_WAIT:?}; the new owner may read some again"
                    );
                }
                // What was acked is committed before another member takes over.
                let acked = self.tracker.revoke(tpl);
                if self.transactional {
                    return;
                }
                store(
                    consumer,
                    acked.iter().map(|((t, p), next)| (t.as_str(), *p, *next)),
                );
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(error = %e, "commit on revoke");
                    // Kept, and committed if the partitions come back to this
                    // member (a coordinator may refuse commits mid-rebalance).
                    self.uncommitted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(acked);
                }
            }
            Rebalance::Assign(tpl) => {
                self.commit_uncommitted(consumer, tpl);
                if let Some(topic) = &self.start_latest {
                    start_at_latest(consumer, topic, tpl);
                }
            }
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.hold_retry(consumer, tpl);
            self.assigned.send_modify(|n| *n += 1);
        }
    }
}

/// A new group starts at the end of the topic: for each assigned partition
/// of `topic` without a committed offset, commits its current end before it
/// is assigned. (The first member gets every partition, so later members
/// find them committed.) On failure the group starts at the earliest
/// message: more is delivered, nothing skipped.
fn start_at_latest(consumer: &BaseConsumer<Ctx>, topic: &str, assigned: &TopicPartitionList) {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let mut mine = TopicPartitionList::new();
    for e in assigned.elements_for_topic(topic) {
        mine.add_partition(topic, e.partition());
    }
    if mine.count() == 0 {
        return;
    }
    let result = consumer.committed_offsets(mine, TIMEOUT).and_then(|committed| {
        let mut latest = TopicPartitionList::new();
        for e in committed.elements() {
            if !matches!(e.offset(), Offset::Offset(_)) {
                let (_, high) = consumer.fetch_watermarks(topic, e.partition(), TIMEOUT)?;
                latest.add_partition_offset(topic, e.partition(), Offset::Offset(high))?;
            }
        }
        if latest.count() > 0 {
            consumer.commit(&latest, CommitMode::Sync)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, topic, "could not start the new group at the latest message; it starts at the earliest");
    }
}

pub(crate) struct Shared {
    inner: Arc<Inner>,
    sub: Subscription,
    topic: Arc<str>,
    group: Arc<str>,
    retry_topic: String,
    pub(crate) consumer: BaseConsumer<Ctx>,
    pub(crate) tracker: Arc<Tracker>,
    /// Messages read and not yet settled (or dropped): at most `prefetch`.
    /// (On a cache line of its own: both threads write it for every
    /// message, and the flags beside it are read as often.)
    in_flight: Padded<AtomicUsize>,
    prefetch: usize,
    /// The poll thread, to wake when slots are free again.
    poller: std::sync::OnceLock<std::thread::Thread>,
    /// Whether the poll thread sleeps waiting for a slot.
    parked: AtomicBool,
    /// What the poll thread is to do: [`RUN`], [`DRAIN`] or [`CLOSE`].
    state: AtomicU8,
    closed: AtomicBool,
    /// The Kafka `group.id`.
    group_id: String,
    /// Whether the poll thread has left the group, and whether this
    /// consumer is registered as closing with the broker.
    leaving: Mutex<Leaving>,
}

#[derive(Debug, Default)]
struct Leaving {
    left: bool,
    registered: bool,
}

impl Shared {
    /// Closing starts: a revoke now waits for the hand-back, and new
    /// members of the group in this process wait until this one left.
    fn begin_closing(&self) {
        self.consumer.context().hand_back.begin();
        let mut leaving = self.leaving.lock().unwrap_or_else(PoisonError::into_inner);
        if !leaving.left && !leaving.registered {
            leaving.registered = true;
            self.inner.closing.begin(&self.group_id);
        }
    }

    /// The poll thread has committed and left the group.
    fn left(&self) {
        let mut leaving = self.leaving.lock().unwrap_or_else(PoisonError::into_inner);
        leaving.left = true;
        if std::mem::take(&mut leaving.registered) {
            self.inner.closing.end(&self.group_id);
        }
    }
}

/// A value alone on its cache line.
#[repr(align(64))]
#[derive(Debug)]
struct Padded<T>(T);

/// The poll thread delivers messages.
const RUN: u8 = 0;
/// The poll thread delivers nothing more (the partitions are paused) but
/// keeps serving the group's rebalances while unacked deliveries are handed
/// back.
const DRAIN: u8 = 1;
/// The poll thread commits, leaves the group and ends.
const CLOSE: u8 = 2;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Has the poll thread deliver nothing more (unless it is closing
    /// already).
    fn drain(&self) {
        let _ = self
            .state
            .compare_exchange(RUN, DRAIN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Takes a prefetch slot if one is free. Only the poll thread takes
    /// slots (others only give them back), so the check cannot be overtaken.
    ///
    /// The count and the `parked` flag are sequentially consistent: a
    /// release that this check misses sees the flag set, and wakes the
    /// thread (a wake-up lost otherwise would cost 1 ms, not a hang).
    fn take_slot(&self) -> bool {
        if self.in_flight.0.load(Ordering::SeqCst) < self.prefetch {
            self.in_flight.0.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    /// Gives `n` prefetch slots back, and wakes the poll thread, if it
    /// waits for slots, once half the prefetch is free.
    fn release_slots(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.in_flight.0.fetch_sub(n, Ordering::SeqCst);
        let low = self.prefetch / 2;
        if before > low
            && before - n <= low
            && self.parked.load(Ordering::SeqCst)
            && let Some(poller) = self.poller.get()
        {
            poller.unpark();
        }
    }

    /// Offsets are committed by transactions only (see
    /// [`KafkaBroker::subscribe_transactional`](crate::KafkaBroker::subscribe_transactional)).
    pub(crate) fn transactional(&self) -> bool {
        self.consumer.context().transactional
    }

    /// Produces `message` to `topic` (on `on`, a transactional producer,
    /// else the broker's) and waits for its delivery report.
    async fn produce_copy(
        &self,
        on: Option<&FutureProducer>,
        topic: &str,
        message: &Message,
        attempt: Option<u32>,
    ) -> Result<()> {
        self.inner.ensure_topic(topic).await?;
        let producer = on.unwrap_or(&self.inner.producer);
        let delivery = self.inner.enqueue_on(producer, topic, message, attempt).await?;
        self.inner
            .delivered(&topic.into(), message.id.clone(), delivery)
            .await
            .map(|_| ())
    }

    async fn dead_letter(
        &self,
        on: Option<&FutureProducer>,
        message: &Message,
        attempts: u32,
        reason: &str,
    ) -> Result<()> {
        let dead = dead_letter_message(message, &self.topic, &self.group, attempts, reason);
        self.produce_copy(on, &self.sub.dead_letter_topic(), &dead, None)
            .await
    }

    /// A copy with attempt + 1 (due after `delay`) to the group's retry
    /// topic, or a dead letter once the attempts are used up.
    pub(crate) async fn requeue(
        &self,
        on: Option<&FutureProducer>,
        message: &Message,
        attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        if let Some(reason) = self.sub.exhausted_reason(attempt) {
            return self.dead_letter(on, message, attempt, &reason).await;
        }
        let mut copy = message.clone();
        copy.headers.remove(DUE);
        if !delay.is_zero() {
            // Rounded up: `now_millis` truncates, and the copy must not be
            // due a fraction of a millisecond early.
            let due = now_millis()
                .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
                .saturating_add(1);
            copy.headers.insert(DUE.into(), due.to_string());
        }
        self.produce_copy(on, &self.retry_topic, &copy, Some(attempt.saturating_add(1)))
            .await
    }

    /// Acks one delivery: the poll thread stores the partition's offset
    /// once every earlier delivery is acked too.
    fn ack(&self, source: Source, partition: i32, offset: i64, generation: u64, id: &str) -> Result<()> {
        self.tracker
            .ack(source, partition, offset, generation)
            .map_err(|()| Error::DeliveryExpired {
                id: id.to_string(),
                reason: format!(
                    "partition {partition} of `{}` was reassigned; its new owner delivers it again",
                    self.tracker.name(source)
                ),
            })
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Most messages read into one batch.
const MAX_BATCH: usize = 256;
/// A batch takes no more messages once its shared buffer holds this much.
const MAX_BATCH_BYTES: usize = 48 * 1024;
/// The room a batch starts with: [`MAX_BATCH_BYTES`] and one more message
/// below [`OWN_BUFFER`], so it rarely grows.
const BATCH_CAPACITY: usize = MAX_BATCH_BYTES + OWN_BUFFER + 1024;
/// The buffer that batches are cut from, one after another: a new one is
/// allocated once less than [`BATCH_CAPACITY`] is left, not per batch.
const ARENA: usize = 256 * 1024;
/// A payload larger than this gets a buffer of its own, not a share of
/// its batch's.
const OWN_BUFFER: usize = 16 * 1024;

/// Messages the poll thread read and the application has not yet received.
///
/// The poll thread only copies their bytes into one buffer, so a message
/// costs it no allocation of its own; the application's side builds the
/// deliveries (and frees them again, on the same thread). Payloads are
/// slices of the buffer.
struct Batch {
    /// The prefetch slots of its items.
    slots: Slots,
    /// Ids, keys, header names and values and payloads, back to back: the
    /// rest of the poll thread's arena while the batch is read, then only
    /// what it holds.
    data: BytesMut,
    items: Vec<Item>,
    /// Application headers of every item: (name, value) in `data`.
    headers: Vec<(Range<usize>, Range<usize>)>,
}

/// Prefetch slots of messages read and not yet handed out as deliveries:
/// given back when dropped.
struct Slots {
    shared: Arc<Shared>,
    held: usize,
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.shared.release_slots(self.held);
    }
}

/// One message of a [`Batch`].
struct Item {
    source: Source,
    partition: i32,
    offset: i64,
    stamp: u64,
    timestamp_ms: u64,
    attempt: u32,
    /// When a delayed copy is due (ms since the epoch).
    due: Option<u64>,
    id: Option<Range<usize>>,
    key: Option<Range<usize>>,
    payload: Payload,
    /// This item's entries of [`Batch::headers`].
    headers: Range<usize>,
}

enum Payload {
    /// A slice of the batch's buffer.
    Shared(Range<usize>),
    /// A large payload, in a buffer of its own.
    Own(Bytes),
}

impl Batch {
    /// A batch written into what is left of `arena` (a new arena when
    /// little is), with room for about as many items as the last one had.
    fn new(shared: &Arc<Shared>, arena: &mut BytesMut, last_len: usize) -> Self {
        if arena.capacity() < BATCH_CAPACITY {
            *arena = BytesMut::with_capacity(ARENA);
        }
        Batch {
            slots: Slots {
                shared: shared.clone(),
                held: 0,
            },
            data: std::mem::take(arena),
            items: Vec::with_capacity(last_len.clamp(16, MAX_BATCH)),
            headers: Vec::new(),
        }
    }

    /// Keeps only the bytes written, and gives the rest of the arena back.
    fn finish(&mut self, arena: &mut BytesMut) {
        let written = self.data.split();
        *arena = std::mem::replace(&mut self.data, written);
    }

    fn full(&self) -> bool {
        self.items.len() >= MAX_BATCH || self.data.len() >= MAX_BATCH_BYTES
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        start..self.data.len()
    }

    /// Copies `m` in, with the prefetch slot the caller took for it; a
    /// message of a topic this consumer did not subscribe to gives the slot
    /// back.
    fn read(&mut self, m: &BorrowedMessage<'_>) {
        let shared = &self.slots.shared;
        let Some(source) = shared.tracker.source(m.topic()) else {
            tracing::warn!(
                topic = m.topic(),
                "a message of a topic this consumer did not subscribe to"
            );
            shared.release_slots(1);
            return;
        };
        if source == Source::Topic {
            shared.consumer.context().retry_gate.fetched(m.partition());
        }
        let stamp = shared.tracker.stamp();
        self.slots.held += 1;
        let first_header = self.headers.len();
        let (mut id, mut attempt, mut due) = (None, 1, None);
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                let value = h.value.unwrap_or_default();
                match h.key {
                    ID => id = Some(self.push_bytes(value)),
                    k if k == headers::ATTEMPT => attempt = mq_core::backend::parse_attempt(value),
                    // Only mq's own delayed copies wait: on the subscribed
                    // topic the header is a stranger's, kept as it came
                    // (honoured there, far-future values held prefetch
                    // slots until the consumer stalled).
                    DUE if source == Source::Retry => due = parse(value),
                    k => {
                        let name = self.push_bytes(k.as_bytes());
                        let value = self.push_bytes(value);
                        self.headers.push((name, value));
                    }
                }
            }
        }
        let key = m.key().map(|k| self.push_bytes(k));
        let bytes = m.payload().unwrap_or_default();
        let payload = if bytes.len() > OWN_BUFFER {
            Payload::Own(Bytes::copy_from_slice(bytes))
        } else {
            Payload::Shared(self.push_bytes(bytes))
        };
        self.items.push(Item {
            source,
            partition: m.partition(),
            offset: m.offset(),
            stamp,
            timestamp_ms: m
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(0),
            attempt: attempt.max(1),
            due,
            id,
            key,
            payload,
            headers: first_header..self.headers.len(),
        });
    }

    /// The batch, to be handed out one delivery at a time.
    fn pending(self) -> Pending {
        let Batch {
            slots,
            data,
            items,
            headers,
        } = self;
        Pending {
            slots,
            data: data.freeze(),
            items: items.into_iter(),
            headers,
        }
    }
}

/// A batch the application's side hands out, one delivery per `recv`.
///
/// Each delivery is built when it is asked for, so its allocations (id,
/// message, ack handle) are mostly freed again before the next one's are
/// made: the allocator reuses them, where a whole batch built at once
/// would take hundreds from it and give them back later.
struct Pending {
    /// The prefetch slots of the items not yet handed out.
    slots: Slots,
    data: Bytes,
    items: std::vec::IntoIter<Item>,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The next delivery, with its due time (for a delayed copy); messages
    /// of partitions revoked since they were read are skipped (their new
    /// owner reads them again).
    fn next(&mut self) -> Option<(Delivery, Option<u64>)> {
        let data = &self.data;
        let text = |r: &Range<usize>| String::from_utf8_lossy(&data[r.clone()]).into_owned();
        for item in self.items.by_ref() {
            let payload = match &item.payload {
                Payload::Shared(r) => data.slice(r.clone()),
                Payload::Own(b) => b.clone(),
            };
            let timestamp = time_from_millis(item.timestamp_ms);
            // A message produced without mq's id header gets one here.
            let mut message = match &item.id {
                Some(id) => Message::received(text(id), payload, timestamp),
                None => Message::new(payload).with_timestamp(timestamp),
            };
            message.key = item.key.as_ref().map(text);
            message.headers.extend(
                self.headers[item.headers.clone()]
                    .iter()
                    .map(|(k, v)| (text(k), text(v))),
            );
            let lease = Lease {
                source: item.source,
                partition: item.partition,
                offset: item.offset,
                stamp: item.stamp,
                message: Arc::new(message),
                attempt: item.attempt,
            };
            // The slot goes with the delivery, or back.
            self.slots.held -= 1;
            let shared = &self.slots.shared;
            let Some(generation) = shared.tracker.add(&lease) else {
                shared.release_slots(1);
                continue;
            };
            let handle = KafkaAck {
                shared: shared.clone(),
                source: lease.source,
                partition: lease.partition,
                offset: lease.offset,
                generation,
                slot: AtomicBool::new(true),
            };
            let delivery = Delivery::shared(
                lease.message,
                lease.attempt,
                shared.topic.clone(),
                shared.group.clone(),
                Box::new(handle),
            );
            return Some((delivery, item.due));
        }
        None
    }
}

/// A number in a header value.
fn parse<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A consumer of a [`KafkaBroker`](crate::KafkaBroker) subscription: a
/// member of the consumer group reading the topic and the group's retry
/// topic.
///
/// Offsets are stored (and auto-committed every second, on revoke and on
/// close) only up to the first unacked delivery of each partition, so acks
/// may come in any order and nothing unacked is skipped. Closing (or
/// dropping) hands unacked deliveries back as copies with attempt + 1.
///
/// Ordering: a requeued message goes through the retry topic, so it comes
/// back after messages that followed it.
///
/// Memory: messages read one after another share one buffer (256 KiB; a
/// payload over 16 KiB has its own), and a delivery's payload is a slice
/// of it, so a payload kept long keeps that buffer. Copy it
/// (`Bytes::copy_from_slice`) to keep one alone.
#[derive(Debug)]
pub struct KafkaConsumer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Handed>,
    /// Whether the poll thread has ended (nothing more arrives).
    ended: bool,
    /// The batch being handed out.
    pending: Option<Pending>,
    /// A failure handed over while a batch was being taken: the next
    /// `recv` or `recv_many` returns it.
    failed: Option<Error>,
    /// Delayed copies handed over before they are due, soonest first.
    delayed: BinaryHeap<Delayed>,
    /// Hands-over counted, to order delayed copies due at the same time.
    seq: u64,
    /// Fires when the poll thread has left the group and ended.
    done: Option<oneshot::Receiver<()>>,
    closed: bool,
}

/// How long a revoke waits for a closing consumer's hand-back.
const HAND_BACK_WAIT: Duration = Duration::from_secs(10);
/// How long closing waits for the poll thread to commit and leave the group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `subscribe` waits for the group to assign partitions.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

impl KafkaConsumer {
    pub(crate) async fn start(inner: Arc<Inner>, sub: Subscription, transactional: bool) -> Result<Self> {
        let retry_topic = retry_topic(&sub.topic, &sub.group);
        inner.ensure_topic(&sub.topic).await?;
        inner.ensure_topic(&retry_topic).await?;
        let tracker = Arc::new(Tracker::new(&sub.topic, &retry_topic));
        let group_id = inner.config.group_id.of(&sub.topic, &sub.group);
        // A consumer of the group closing in this process commits and
        // leaves first (see `hand_back::Closing`).
        if !inner.closing.wait(&group_id, CLOSE_TIMEOUT).await {
            tracing::warn!(
                group_id,
                "a closing consumer of the group did not leave within {CLOSE_TIMEOUT:?}"
            );
        }
        let (assigned, mut assignments) = watch::channel(0u64);
        let mut client = inner.config.client();
        client
            .set("group.id", &group_id)
            .set("enable.auto.commit", if transactional { "false" } else { "true" })
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        // A fetch holds up partitions assigned while it is in flight, and a
        // fetch of only empty partitions (the retry topic's, often) is held
        // by the broker for this long: 100 ms, not librdkafka's 500 ms.
        if client.get("fetch.wait.max.ms").is_none() {
            client.set("fetch.wait.max.ms", FETCH_WAIT_MS);
        }
        // librdkafka's own read-ahead follows the prefetch (it is 64 MiB
        // and 100,000 messages by default, whatever the prefetch).
        for (property, value) in queue_bounds(sub.prefetch) {
            if client.get(property).is_none() {
                client.set(property, value);
            }
        }
        let consumer: BaseConsumer<Ctx> = client
            .create_with_context(Ctx {
                tracker: tracker.clone(),
                assigned,
                start_latest: matches!(sub.start, StartPosition::Latest).then(|| sub.topic.clone()),
                transactional,
                uncommitted: Mutex::new(HashMap::new()),
                hand_back: HandBack::default(),
                retry_gate: RetryGate::default(),
            })
            .map_err(|e| map(e, "create a consumer", inner.endpoint()))?;
        consumer
            .subscribe(&[&sub.topic, &retry_topic])
            .map_err(|e| map(e, &format!("subscribe to `{}`", sub.topic), inner.endpoint()))?;
        let prefetch = sub.prefetch.max(1);
        let shared = Arc::new(Shared {
            topic: sub.topic.as_str().into(),
            group: sub.group.as_str().into(),
            retry_topic,
            consumer,
            tracker,
            in_flight: Padded(AtomicUsize::new(0)),
            prefetch,
            poller: std::sync::OnceLock::new(),
            parked: AtomicBool::new(false),
            state: AtomicU8::new(RUN),
            closed: AtomicBool::new(false),
            group_id,
            leaving: Mutex::new(Leaving::default()),
            inner,
            sub,
        });
        let (tx, rx) = mpsc::channel(prefetch + 1);
        let (done_tx, done) = oneshot::channel();
        let poller = shared.clone();
        std::thread::Builder::new()
            .name(format!("mq-kafka {}", shared.group))
            .spawn(move || {
                let _ = poller.poller.set(std::thread::current());
                // A panic here (a librdkafka surprise) is told to `recv` as
                // an error, never taken for a clean end.
                let polled =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_loop(&poller, &tx)));
                if let Err(panic) = polled {
                    let what = mq_core::backend::panic_message(panic.as_ref());
                    let _ = tx.try_send(Handed::Failed(Error::backend(
                        "kafka",
                        format!("consume `{}`", poller.topic),
                        format!("the consumer's poll thread failed ({what}); subscribe again"),
                    )));
                }
                drop(tx);
                leave(&poller);
                poller.left();
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::backend("kafka", "start the consumer thread", e.to_string()))?;
        // Joined when partitions are assigned.
        let joined = tokio::time::timeout(JOIN_TIMEOUT, assignments.wait_for(|n| *n > 0)).await;
        if !matches!(joined, Ok(Ok(_))) {
            shared.state.store(CLOSE, Ordering::Release);
            return Err(Error::Timeout {
                operation: format!("join group `{}` of topic `{}`", shared.group, shared.topic),
                after: JOIN_TIMEOUT,
            });
        }
        Ok(KafkaConsumer {
            shared,
            rx,
            ended: false,
            pending: None,
            failed: None,
            delayed: BinaryHeap::new(),
            seq: 0,
            done: Some(done),
            closed: false,
        })
    }
}

/// The group's retry topic, where its requeued copies go.
pub(crate) fn retry_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.retry")
}

/// `fetch.wait.max.ms` unless the application sets it.
const FETCH_WAIT_MS: &str = "100";

/// librdkafka's read-ahead queue for a prefetch of `prefetch` messages
/// (each bound unless the application sets it): 16 KiB a prefetch slot
/// (1 to 64 MiB; librdkafka lowers `fetch.max.bytes` to it, but not under
/// `message.max.bytes`), and at least 4 times the prefetch in messages.
///
/// With bounds this low one fetch response often passes them, and
/// librdkafka then holds the partition's next fetch for
/// `fetch.queue.backoff.ms` (1 s by default since librdkafka 2.4): consume
/// fell from about 1 M to 16–50 k messages a second on the mock cluster.
/// The backoff is 1 ms here, so the queue is refilled as soon as it drains.
fn queue_bounds(prefetch: usize) -> [(&'static str, String); 3] {
    let kbytes = prefetch.saturating_mul(16).clamp(1024, 65_536);
    let messages = prefetch.saturating_mul(4).clamp(100, 100_000);
    [
        ("queued.max.messages.kbytes", kbytes.to_string()),
        ("queued.min.messages", messages.to_string()),
        ("fetch.queue.backoff.ms", "1".to_string()),
    ]
}

/// How long the poll thread waits for a free prefetch slot before it
/// pauses the partitions (and goes on serving rebalances).
const SLOT_WAIT: Duration = Duration::from_millis(200);
/// How long one poll waits for a message.
const POLL: Duration = Duration::from_millis(20);
/// How long one poll waits while the partitions are paused: short, so a
/// freed prefetch slot is noticed soon.
const POLL_PAUSED: Duration = Duration::from_millis(5);

/// The consumer's own thread: polls librdkafka (which also serves the
/// group's rebalances), and hands messages out while prefetch slots are
/// free. With none free it pauses the assigned partitions and keeps polling,
/// so a full consumer still takes part in rebalances.
fn poll_loop(shared: &Arc<Shared>, tx: &mpsc::Sender<Handed>) {
    let mut failures = 0u32;
    // The assignment count when the partitions were paused, if they are.
    let mut paused: Option<u64> = None;
    let assignments = shared.consumer.context().assigned.subscribe();
    let mut arena = BytesMut::new();
    let mut last_len = 0;
    'poll: loop {
        let state = shared.state();
        if state == CLOSE || tx.is_closed() {
            return;
        }
        // Acks are stored here, on the consumer's own thread, a batch at a
        // time; auto-commit, revoke and close commit what was stored.
        if !shared.transactional() {
            store_acked(&shared.consumer, &shared.tracker);
        }
        // A consumer that is merely busy gets a slot back soon: wait a
        // little before pausing (pausing drops what librdkafka fetched).
        let slot = state == RUN && wait_for_slot(shared);
        let generation = *assignments.borrow();
        match (slot, paused) {
            (false, Some(at)) if at == generation => {}
            (false, _) => {
                // Newly assigned partitions start unpaused: pause them too.
                pause(shared, true);
                paused = Some(generation);
            }
            (true, Some(_)) => {
                pause(shared, false);
                paused = None;
            }
            (true, None) => {}
        }
        let gate = &shared.consumer.context().retry_gate;
        if gate.due() {
            gate.release();
            // Paused or not, they follow the others from now on.
            if paused.is_none() {
                resume_retry(shared);
            }
        }
        let received = shared.consumer.poll(if slot { POLL } else { POLL_PAUSED });
        let m = match received {
            None => {
                shared.release_slots(usize::from(slot));
                continue;
            }
            Some(Ok(m)) => {
                failures = 0;
                m
            }
            Some(Err(e)) => {
                shared.release_slots(usize::from(slot));
                // The group's retry topic exists only once something was requeued.
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                    tracing::debug!(error = %e, "a subscribed topic does not exist yet");
                    continue;
                }
                failures += 1;
                let e = map(e, &format!("consume `{}`", shared.topic), shared.inner.endpoint());
                tracing::warn!(error = %e, failures, "kafka consumer error");
                // librdkafka recovers by itself; tell the application when it keeps failing.
                if failures.is_multiple_of(5) {
                    let _ = tx.try_send(Handed::Failed(e));
                }
                continue;
            }
        };
        // A message while paused is not expected (pausing discards what was
        // fetched before): it waits for a slot, or, once the consumer is
        // closing, is left unstored, to be read again later.
        if !slot {
            loop {
                if shared.state() != RUN {
                    continue 'poll;
                }
                if wait_for_slot(shared) {
                    break;
                }
            }
        }
        // What else is already fetched goes along in the same batch: one
        // hand-over (and wake-up) per batch, not per message.
        let mut batch = Batch::new(shared, &mut arena, last_len);
        batch.read(&m);
        drop(m);
        while !batch.full() && shared.take_slot() {
            match shared.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => batch.read(&m),
                // An error or nothing: the next round deals with it.
                _ => {
                    shared.release_slots(1);
                    break;
                }
            }
        }
        batch.finish(&mut arena);
        last_len = batch.items.len();
        // Never blocks long: the channel holds more batches than the prefetch.
        if !batch.items.is_empty() && tx.blocking_send(Handed::Batch(batch)).is_err() {
            return;
        }
    }
}

/// What the poll thread hands the application's side.
enum Handed {
    Batch(Batch),
    /// Consuming keeps failing.
    Failed(Error),
}

/// Waits up to [`SLOT_WAIT`] for a free prefetch slot, and takes it.
///
/// It sleeps a millisecond at a time, and is woken early once half the
/// prefetch is free again, so that a busy application does not run dry
/// while this thread sleeps.
fn wait_for_slot(shared: &Shared) -> bool {
    let deadline = std::time::Instant::now() + SLOT_WAIT;
    loop {
        if shared.take_slot() {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        shared.parked.store(true, Ordering::SeqCst);
        // A release before the flag was set would not wake this thread.
        if shared.take_slot() {
            shared.parked.store(false, Ordering::SeqCst);
            return true;
        }
        std::thread::park_timeout(Duration::from_millis(1).min(deadline - now));
        shared.parked.store(false, Ordering::SeqCst);
    }
}

/// Pauses (or resumes) every assigned partition; while the retry gate
/// holds the retry partitions, a resume leaves them paused.
fn pause(shared: &Shared, on: bool) {
    let only = (!on && shared.consumer.context().retry_gate.is_held()).then_some(Source::Topic);
    let Some(assignment) = assigned(shared, only) else {
        return;
    };
    let r = if on {
        shared.consumer.pause(&assignment)
    } else {
        shared.consumer.resume(&assignment)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, pause = on, "pausing partitions");
    }
}

/// Resumes the assigned retry partitions (the retry gate let them go).
fn resume_retry(shared: &Shared) {
    if let Some(retry) = assigned(shared, Some(Source::Retry))
        && retry.count() > 0
        && let Err(e) = shared.consumer.resume(&retry)
    {
        tracing::debug!(error = %e, "resuming the retry partitions");
    }
}

/// The current assignment, or only its partitions from `only`.
fn assigned(shared: &Shared, only: Option<Source>) -> Option<TopicPartitionList> {
    match shared.consumer.assignment() {
        Ok(a) => Some(match only {
            Some(source) => of_source(&shared.tracker, &a, source),
            None => a,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "reading the assignment");
            None
        }
    }
}

/// The partitions of `list` from `source`.
fn of_source(tracker: &Tracker, list: &TopicPartitionList, source: Source) -> TopicPartitionList {
    let mut of = TopicPartitionList::new();
    for e in list.elements() {
        if tracker.source(e.topic()) == Some(source) {
            of.add_partition(e.topic(), e.partition());
        }
    }
    of
}

/// Commits what was acked and leaves the group; closing waits for this
/// within [`CLOSE_TIMEOUT`]. Commits are made on this thread only (here and
/// in a revoke): a synchronous commit waited for on a runtime thread could
/// hold up the runtime's shutdown.
fn leave(shared: &Shared) {
    // Closing or dropped: keep serving rebalances while the deliveries are
    // handed back.
    shared.drain();
    pause(shared, true);
    // Short polls: the commit follows the hand-back closely, before a
    // rebalance can start (the mock cluster refuses commits during one).
    while shared.state() != CLOSE {
        let _ = shared.consumer.poll(POLL_PAUSED);
    }
    // librdkafka reports a manual commit's result only to a synchronous
    // caller; this is the consumer's own thread, and librdkafka bounds the
    // wait by its request timeouts.
    if !shared.transactional() {
        store_acked(&shared.consumer, &shared.tracker);
        if let Err(e) = shared.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "commit on close");
        }
    }
    let deadline = std::time::Instant::now() + CLOSE_TIMEOUT;
    if let Err(e) = shared.consumer.close_queue() {
        tracing::debug!(error = %e, "closing the consumer");
        return;
    }
    while !shared.consumer.closed() && std::time::Instant::now() < deadline {
        let _ = shared.consumer.poll(POLL);
    }
    if !shared.consumer.closed() {
        tracing::warn!(group = %shared.group, "the consumer did not leave its group within {CLOSE_TIMEOUT:?}");
    }
}

/// Hands unacked deliveries back (copies with attempt + 1), then has the
/// poll thread commit and leave the group.
async fn shutdown(shared: Arc<Shared>, done: Option<oneshot::Receiver<()>>) -> Result<()> {
    shared.begin_closing();
    shared.drain();
    // A transactional consumer's unacked deliveries are read again from the
    // position its transactions committed: a copy would be a duplicate.
    let unacked = if shared.transactional() {
        Vec::new()
    } else {
        shared.tracker.unacked()
    };
    // The copies are produced together, then the originals acked.
    let copies = futures::future::join_all(
        unacked
            .iter()
            .map(|(_, _, _, _, message, attempt)| shared.requeue(None, message, *attempt, Duration::ZERO)),
    )
    .await;
    let mut result = Ok(());
    for ((source, partition, offset, generation, message, _), copied) in unacked.into_iter().zip(copies) {
        let handed = copied.and_then(|()| shared.ack(source, partition, offset, generation, &message.id));
        if let Err(e) = handed {
            tracing::warn!(error = %e, "handing a delivery back failed; it is delivered again from the committed offset");
            result = Err(e);
        }
    }
    shared.consumer.context().hand_back.end();
    shared.closed.store(true, Ordering::Release);
    shared.state.store(CLOSE, Ordering::Release);
    if let Some(done) = done {
        // The thread's close is bounded by CLOSE_TIMEOUT; allow for the drain.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(5), done).await;
    }
    result
}

impl KafkaConsumer {
    /// The next delivery that is ready without waiting: a delayed copy now
    /// due, else the next of the batch being handed out (a delayed copy not
    /// yet due goes to the heap on the way).
    fn take_ready(&mut self) -> Option<Delivery> {
        if !self.delayed.is_empty() {
            let now = now_millis();
            if self.delayed.peek().is_some_and(|d| d.due <= now) {
                return self.delayed.pop().map(|d| d.delivery);
            }
        }
        while let Some(pending) = &mut self.pending {
            match pending.next() {
                Some((delivery, Some(due))) if due > now_millis() => {
                    self.seq += 1;
                    self.delayed.push(Delayed {
                        due,
                        seq: self.seq,
                        delivery,
                    });
                }
                Some((delivery, _)) => return Some(delivery),
                None => self.pending = None,
            }
        }
        None
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        if self.closed || self.shared.inner.is_closed() {
            return Ok(None);
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        loop {
            if let Some(delivery) = self.take_ready() {
                return Ok(Some(delivery));
            }
            // The clock is read only while a delayed copy waits.
            let next_due = self.delayed.peek().map(|d| d.due.saturating_sub(now_millis()));
            if self.ended && next_due.is_none() {
                if self.shared.inner.is_closed() {
                    return Ok(None);
                }
                // The poll thread ends on close only: ending otherwise is a
                // failure, never taken for a clean end.
                return Err(Error::backend(
                    "kafka",
                    format!("consume `{}`", self.shared.topic),
                    "the consumer's poll thread stopped; subscribe again",
                ));
            }
            // Cancel-safe: a batch is taken whole, or stays in the channel.
            tokio::select! {
                handed = self.rx.recv(), if !self.ended => match handed {
                    Some(Handed::Batch(batch)) => self.pending = Some(batch.pending()),
                    Some(Handed::Failed(e)) => return Err(e),
                    None => self.ended = true,
                },
                () = tokio::time::sleep(Duration::from_millis(next_due.unwrap_or(0))), if next_due.is_some() => {}
                () = wait_closed(&self.shared.inner) => return Ok(None),
            }
        }
    }

    /// What one poll fetched serves the whole batch: waits (at most `wait`)
    /// for the first delivery, then takes what the poll thread has already
    /// handed over, without a future or a channel wait per delivery. A
    /// failure handed over meanwhile ends the batch and is what the next
    /// `recv` returns.
    async fn recv_many(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<Delivery>>> {
        // The first delivery comes from `recv`, which returns a kept failure.
        mq_core::backend::recv_many_with(self, max, wait, |consumer| {
            if consumer.closed {
                return None;
            }
            if let Some(delivery) = consumer.take_ready() {
                return Some(Ok(delivery));
            }
            match consumer.rx.try_recv() {
                Ok(Handed::Batch(batch)) => {
                    consumer.pending = Some(batch.pending());
                    consumer.take_ready().map(Ok)
                }
                Ok(Handed::Failed(e)) => {
                    consumer.failed = Some(e);
                    None
                }
                // Empty, or the poll thread ended: the next `recv` says which.
                Err(_) => None,
            }
        })
        .await
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.shared.begin_closing();
        self.rx.close();
        shutdown(self.shared.clone(), self.done.take()).await
    }
}

/// A delayed copy held until it is due; the heap's top is the soonest
/// (the earliest handed over among equals).
struct Delayed {
    due: u64,
    seq: u64,
    delivery: Delivery,
}

impl std::fmt::Debug for Delayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("due", &self.due)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Completes once the broker is closed (polled, as the broker has no signal).
async fn wait_closed(inner: &Inner) {
    while !inner.is_closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let (shared, done) = (self.shared.clone(), self.done.take());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            // At once, not in the task: a new member may join before it runs.
            shared.begin_closing();
            handle.spawn(async move {
                if let Err(e) = shutdown(shared, done).await {
                    tracing::warn!(error = %e, "closing a dropped kafka consumer failed");
                }
            });
        } else {
            // No runtime to hand deliveries back on: they are read again
            // from the committed offset.
            shared.state.store(CLOSE, Ordering::Release);
        }
    }
}

/// Settles one delivery.
#[derive(Debug)]
pub(crate) struct KafkaAck {
    pub(crate) shared: Arc<Shared>,
    pub(crate) source: Source,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) generation: u64,
    /// Whether this delivery still holds its prefetch slot.
    slot: AtomicBool,
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        if self.slot.swap(false, Ordering::AcqRel) {
            self.shared.release_slots(1);
        }
    }
}

impl KafkaAck {
    fn check(&self, delivery: &Delivery) -> Result<()> {
        self.shared.inner.check_open()?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::DeliveryExpired {
                id: delivery.message().id.clone(),
                reason: "its consumer closed and handed it back".into(),
            });
        }
        Ok(())
    }

    fn settle(&self, delivery: &Delivery) -> Result<()> {
        let r = self.shared.ack(
            self.source,
            self.partition,
            self.offset,
            self.generation,
            &delivery.message().id,
        );
        if r.is_ok() && self.slot.swap(false, Ordering::AcqRel) {
            self.shared.release_slots(1);
        }
        r
    }
}

#[async_trait]
impl AckHandle for KafkaAck {
    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        self.check(delivery)?;
        self.settle(delivery)
    }

    async fn nack(&self, delivery: &Delivery, nack: Nack) -> Result<()> {
        self.check(delivery)?;
        let (message, attempt) = (delivery.message(), delivery.attempt());
        // The copy first, then the ack: a failure in between duplicates, never loses.
        match nack {
            Nack::DeadLetter { reason } => self.shared.dead_letter(None, message, attempt, &reason).await?,
            Nack::Requeue { delay } => self.shared.requeue(None, message, attempt, delay).await?,
            _ => {
                self.shared
                    .requeue(None, message, attempt, Duration::ZERO)
                    .await?
            }
        }
        self.settle(delivery)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_queue_follows_the_prefetch() {
        let kbytes = |p| queue_bounds(p)[0].1.parse::<usize>().unwrap();
        assert_eq!(kbytes(10), 1024, "at least 1 MiB");
        assert_eq!(kbytes(1000), 16_000);
        assert_eq!(kbytes(1_000_000), 65_536, "never over librdkafka's default");
        assert_eq!(queue_bounds(10)[1].1, "100");
        assert_eq!(queue_bounds(5000)[1].1, "20000");
        // Past the bounds, the next fetch waits 1 ms, not librdkafka's 1 s.
        assert_eq!(queue_bounds(10)[2], ("fetch.queue.backoff.ms", "1".to_string()));
    }

    fn add(tracker: &Tracker, leases: &[Lease]) -> Vec<Option<u64>> {
        leases.iter().map(|l| tracker.add(l)).collect()
    }

    fn lease(tracker: &Tracker, partition: i32, offset: i64) -> Lease {
        Lease {
            source: Source::Topic,
            partition,
            offset,
            stamp: tracker.stamp(),
            message: Arc::new(Message::new("x")),
            attempt: 1,
        }
    }

    #[test]
    fn tracker_moves_only_over_the_acked_prefix_and_reports_each_move_once() {
        let tracker = Tracker::new("t", "t.g.retry");
        // Offsets 12 and 10 arrive after 11 and 13 (a reset): kept in order.
        let batch: Vec<_> = [11, 13, 12, 10].iter().map(|&o| lease(&tracker, 0, o)).collect();
        let generations = add(&tracker, &batch);
        let generation = generations[0].expect("held");
        assert!(generations.iter().all(|g| *g == Some(generation)));
        assert!(tracker.take_acked().is_empty());

        tracker.ack(Source::Topic, 0, 11, generation).unwrap();
        tracker.ack(Source::Topic, 0, 13, generation).unwrap();
        assert!(tracker.take_acked().is_empty(), "10 and 12 are not acked yet");
        tracker.ack(Source::Topic, 0, 10, generation).unwrap();
        assert_eq!(tracker.take_acked(), vec![(Source::Topic, 0, 12)]);
        assert!(tracker.take_acked().is_empty(), "reported once");
        tracker.ack(Source::Topic, 0, 12, generation).unwrap();
        assert_eq!(tracker.take_acked(), vec![(Source::Topic, 0, 14)]);

        // Unknown offsets, partitions and generations are refused.
        assert!(tracker.ack(Source::Topic, 0, 99, generation).is_err());
        assert!(tracker.ack(Source::Retry, 0, 11, generation).is_err());
        add(&tracker, &[lease(&tracker, 0, 14)]);
        assert!(tracker.ack(Source::Topic, 0, 14, generation + 1).is_err());
        assert_eq!(tracker.unacked().len(), 1);
    }

    #[test]
    fn revoked_partitions_report_how_far_they_were_acked() {
        let tracker = Tracker::new("t", "t.g.retry");
        let g = add(&tracker, &[lease(&tracker, 3, 7), lease(&tracker, 3, 8)])[0].expect("held");
        tracker.ack(Source::Topic, 3, 7, g).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 3);
        tpl.add_partition("elsewhere", 3);
        assert_eq!(tracker.revoke(&tpl), vec![(("t".to_string(), 3), 8)]);
        assert!(tracker.ack(Source::Topic, 3, 8, g).is_err(), "revoked");
        assert!(tracker.unacked().is_empty());
    }

    #[test]
    fn messages_read_before_their_partition_was_revoked_are_not_handed_out() {
        let tracker = Tracker::new("t", "t.g.retry");
        // Read (stamped) before the revoke of partition 3, handed out after it.
        let stale = [lease(&tracker, 3, 8), lease(&tracker, 4, 8)];
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 3);
        tracker.revoke(&tpl);
        let generations = add(&tracker, &stale);
        assert_eq!(generations[0], None, "partition 3 was revoked after the read");
        assert!(generations[1].is_some(), "partition 4 was not revoked");
        // Read again once the partition is back: handed out.
        let fresh = add(&tracker, &[lease(&tracker, 3, 8)]);
        assert!(fresh[0].is_some());
        assert_eq!(tracker.unacked().len(), 2);
    }
}
