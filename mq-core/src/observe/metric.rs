//! The metrics mq records through the `metrics` facade (the application
//! installs the recorder and exporter it wants, e.g.
//! `metrics-exporter-prometheus`).
//!
//! | name | type | unit | labels |
//! |---|---|---|---|
//! | [`SENT`] `messaging.client.sent.messages` | counter | messages | system, destination, error.type on failure |
//! | [`CONSUMED`] `messaging.client.consumed.messages` | counter | messages | system, destination, group |
//! | [`OPERATION_DURATION`] `messaging.client.operation.duration` | histogram | s | system, operation (`send`, `requeue`, `dead_letter`; acks are counted, not timed), destination, error.type on failure |
//! | [`PROCESS_DURATION`] `messaging.process.duration` | histogram | s | system, destination, group, outcome (`ok`, `error`, `panic`, `timeout`) |
//! | [`SETTLED`] `mq.client.settled.messages` | counter | messages | system, destination, group, outcome (`acked`, `requeued`, `dead_lettered`) |
//! | [`SETTLE_ERRORS`] `mq.client.settle.errors` | counter | settles | system, destination, group, operation, error.type |
//! | [`RECEIVE_ERRORS`] `messaging.client.receive.errors` | counter | receives | system, destination, group, error.type |
//! | [`IN_FLIGHT`] `mq.client.deliveries.in_flight` | gauge | deliveries | system, destination, group |
//! | [`END_TO_END`] `mq.client.end_to_end.duration` | histogram | s | system, destination, group |
//! | [`LAG`] `mq.consumer.lag` | gauge | messages | system, destination, group |
//! | [`LAG_IN_FLIGHT`] `mq.consumer.lag.in_flight` | gauge | messages | system, destination, group (where the backend tells) |
//!
//! **Counts** (messages sent, consumed and settled, and the in-flight
//! gauge) are kept in mq's handles, a slot per thread (a load and a
//! store per message), and handed to the recorder every
//! [`FLUSH_INTERVAL`] by a thread of mq's, when a producer or consumer
//! closes, and on [`flush_metrics`](super::flush_metrics): they are
//! exact, and up to a second late. Failures, durations and lag
//! reach the recorder at once.
//!
//! **Durations** of sends ([`OPERATION_DURATION`] with `send`) and ages
//! ([`END_TO_END`]) are sampled on busy handles: every one up to about
//! [`DURATIONS_PER_SECOND`] a second (what a network broker's producer or
//! consumer sees), one in a power of two above that. A histogram's count
//! is then the number of values it holds, not of operations: take those
//! from the counters. On mq-memory, which moves over a million messages a
//! second, a clock read and a histogram value per message would cost a
//! third of the message (BENCHMARKS.md, "Instrumented"). Settle and
//! handler durations are not sampled.
//!
//! Label names: `messaging.system`, `messaging.destination.name`,
//! `messaging.consumer.group.name`, `messaging.operation.name`, `outcome`,
//! `error.type`. No label holds a message id or key. The lag gauges are
//! set each time [`Broker::lag`](crate::Broker::lag) is called on an
//! instrumented broker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Label};

use crate::{Error, Lag};

/// Messages sent (counted once the send returns; failed ones with
/// `error.type`).
pub const SENT: &str = "messaging.client.sent.messages";
/// Messages handed to a consumer.
pub const CONSUMED: &str = "messaging.client.consumed.messages";
/// How long a send (until confirmed) or a settle took, in seconds.
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// How long the worker's handler took, in seconds.
pub const PROCESS_DURATION: &str = "messaging.process.duration";
/// Deliveries settled, by outcome.
pub const SETTLED: &str = "mq.client.settled.messages";
/// Settles that failed.
pub const SETTLE_ERRORS: &str = "mq.client.settle.errors";
/// Receives that failed.
pub const RECEIVE_ERRORS: &str = "messaging.client.receive.errors";
/// Deliveries received and not yet settled (nor dropped).
pub const IN_FLIGHT: &str = "mq.client.deliveries.in_flight";
/// From the message's timestamp to its delivery, in seconds.
pub const END_TO_END: &str = "mq.client.end_to_end.duration";
/// Messages of a group not yet delivered ([`Lag::behind`]).
pub const LAG: &str = "mq.consumer.lag";
/// Messages of a group delivered and not settled ([`Lag::in_flight`]).
pub const LAG_IN_FLIGHT: &str = "mq.consumer.lag.in_flight";

/// The bucket boundaries, in seconds, that the OpenTelemetry messaging
/// conventions recommend for [`OPERATION_DURATION`] and
/// [`PROCESS_DURATION`]; they suit [`END_TO_END`] too.
///
/// Give them to the exporter, e.g. `metrics-exporter-prometheus`'s
/// `PrometheusBuilder::set_buckets(&DURATION_BUCKETS)`: its histograms are
/// then Prometheus histograms, which aggregate across instances and cost a
/// bucket increment per value, instead of summaries, whose upkeep adds
/// every value to a sketch.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Label: the broker ([`Broker::name`](crate::Broker::name)).
pub const SYSTEM: &str = "messaging.system";
/// Label: the topic.
pub const DESTINATION: &str = "messaging.destination.name";
/// Label: the group.
pub const GROUP: &str = "messaging.consumer.group.name";
/// Label: the operation.
pub const OPERATION: &str = "messaging.operation.name";
/// Label: how it ended.
pub const OUTCOME: &str = "outcome";
/// Label: the kind of error ([`Error::kind`]).
pub const ERROR_TYPE: &str = "error.type";

/// About how many durations per second one topic's sends (or one
/// consumer's deliveries) record once they are busy: below this rate every
/// send's duration and every delivery's age is recorded; above it, one
/// operation in a power of two (at most 1024), chosen every 1024
/// operations so that about this many are. The counters count every
/// operation whatever the rate; see the [module docs](self).
pub const DURATIONS_PER_SECOND: u64 = 1000;

/// Every how many operations a [`Sampler`] measures the rate again.
const ADAPT_EVERY: u64 = 1024;

/// The largest stride: one operation in this many is measured, however
/// busy the handle.
const MAX_STRIDE: u64 = 1024;

/// Chooses which operations of a handle are timed, so that a busy handle
/// records about [`DURATIONS_PER_SECOND`] durations a second and reads no
/// clock for the rest. The counters count every operation; only the
/// duration histograms ([`OPERATION_DURATION`] of sends, [`END_TO_END`])
/// are sampled, so a histogram's count is the number of values it holds,
/// not the number of operations (take those from [`SENT`] and
/// [`CONSUMED`]). Below the rate, every operation is timed, which is what
/// a network broker's handles see; above it (mq-memory moves a million
/// messages a second), a clock read and a histogram value per message
/// would cost a third of the message (BENCHMARKS.md, "Instrumented").
///
/// The rate is measured every [`ADAPT_EVERY`] operations, from one clock
/// read; the stride is a power of two, at most [`MAX_STRIDE`].
#[derive(Debug)]
pub(crate) struct Sampler {
    /// The stride minus one (a power of two minus one: a mask).
    mask: AtomicU64,
    /// When the rate was last measured, and the operation count then.
    since: Mutex<Option<(Instant, u64)>>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            mask: AtomicU64::new(0),
            since: Mutex::new(None),
        }
    }
}

impl Sampler {
    /// Whether to time operation number `n` of the handle on this thread
    /// (this thread's count so far); every [`ADAPT_EVERY`] of them,
    /// measures the rate first from `total`, the handle's count on every
    /// thread.
    #[inline]
    pub(crate) fn pick(&self, n: u64, total: impl FnOnce() -> u64) -> bool {
        if n.is_multiple_of(ADAPT_EVERY) {
            self.adapt(total());
        }
        n & self.mask.load(Ordering::Relaxed) == 0
    }

    /// Measures the rate since the last call and sets the stride.
    #[cold]
    fn adapt(&self, n: u64) {
        // Another thread adapting now does it for this one.
        let Ok(mut since) = self.since.try_lock() else {
            return;
        };
        if let Some((_, then)) = *since
            && n.saturating_sub(then) < ADAPT_EVERY / 2
        {
            // Too few since (sends that failed, or another thread).
            return;
        }
        let now = Instant::now();
        if let Some((before, then)) = *since {
            let ops = n.saturating_sub(then);
            let secs = now.saturating_duration_since(before).as_secs_f64();
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let wanted = if secs > 0.0 {
                ((ops as f64 / secs) / DURATIONS_PER_SECOND as f64) as u64
            } else {
                MAX_STRIDE
            };
            let stride = wanted.clamp(1, MAX_STRIDE).next_power_of_two().min(MAX_STRIDE);
            self.mask.store(stride - 1, Ordering::Relaxed);
        }
        *since = Some((now, n));
    }
}

/// How often a thread of mq's hands what mq counted to the recorder (see
/// [`flush_metrics`](super::flush_metrics)).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Something that hands its counts to the recorder.
pub(crate) trait Flush: Send + Sync {
    /// Hands what was counted since the last flush to the recorder.
    fn flush(&self);
}

/// Every set of handles, for [`flush`] and the flushing thread.
static LIVE: Mutex<Vec<&'static dyn Flush>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<&'static dyn Flush>> {
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds `handles` to those flushed, and starts the thread that flushes
/// them every [`FLUSH_INTERVAL`] (once per process).
fn register(handles: &'static dyn Flush) {
    static THREAD: std::sync::Once = std::sync::Once::new();
    live().push(handles);
    THREAD.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("mq-metrics".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    flush();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "mq: could not start the metrics thread; counts reach the recorder on close and on observe::flush_metrics only");
        }
    });
}

/// Every live consumer's count of deliveries.
static CONSUMERS: Mutex<Vec<std::sync::Weak<Deliveries>>> = Mutex::new(Vec::new());

fn consumers() -> std::sync::MutexGuard<'static, Vec<std::sync::Weak<Deliveries>>> {
    CONSUMERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands every count to the recorder now (see
/// [`flush_metrics`](super::flush_metrics)): the deliveries first, so
/// that the in-flight gauge goes up before their settles take it down.
pub(crate) fn flush() {
    let alive: Vec<std::sync::Arc<Deliveries>> = {
        let mut consumers = consumers();
        consumers.retain(|w| w.strong_count() > 0);
        consumers.iter().filter_map(std::sync::Weak::upgrade).collect()
    };
    for deliveries in alive {
        deliveries.flush();
    }
    let all: Vec<&'static dyn Flush> = live().clone();
    for handles in all {
        handles.flush();
    }
}

/// The handle set of `key`, made by `make` and registered for flushing
/// on first use. Sets live as long as the process, as the recorder's
/// handles do; there is one per label set (topic, group), so a
/// delivery refers to its set with no reference count.
fn interned<K, T>(
    map: &'static Mutex<Option<std::collections::HashMap<K, &'static T>>>,
    key: K,
    make: impl FnOnce() -> T,
) -> &'static T
where
    K: std::hash::Hash + Eq,
    T: Flush + 'static,
{
    let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = map.get_or_insert_with(std::collections::HashMap::new);
    if let Some(found) = map.get(&key) {
        return found;
    }
    let made: &'static T = Box::leak(Box::new(make()));
    register(made);
    map.insert(key, made);
    made
}

/// What `total` adds to what was handed to the recorder so far, which
/// `flushed` holds and now becomes `total` (call under the owner's flush
/// lock).
fn unflushed(total: u64, flushed: &AtomicU64) -> u64 {
    total.saturating_sub(flushed.swap(total, Ordering::Relaxed))
}

/// A count only one thread at a time adds to (a consumer's deliveries),
/// on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Count {
    /// Counted so far.
    total: AtomicU64,
    /// Handed to the recorder so far (under the owner's flush lock).
    flushed: AtomicU64,
}

impl Count {
    fn new() -> Self {
        Count {
            total: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// Adds one where this is the only thread that adds: a load and a
    /// store, no atomic read-modify-write. The total before.
    #[inline]
    fn bump_single_writer(&self) -> u64 {
        let n = self.total.load(Ordering::Relaxed);
        self.total.store(n.wrapping_add(1), Ordering::Release);
        n
    }

    fn get(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }
}

fn labels(system: &'static str, topic: &str, group: Option<&str>) -> Vec<Label> {
    let mut labels = vec![
        Label::new(SYSTEM, system),
        Label::new(DESTINATION, topic.to_string()),
    ];
    if let Some(group) = group {
        labels.push(Label::new(GROUP, group.to_string()));
    }
    labels
}

fn with(mut labels: Vec<Label>, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
    labels.extend(extra.iter().map(|(k, v)| Label::new(*k, *v)));
    labels
}

/// How many threads get a slot of their own in a [`Sharded`] count (the
/// first to count anything); the others share one more, with an atomic
/// add.
const SLOTS: usize = 16;

static NEXT_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's slot, once it has one.
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// This thread's slot of every [`Sharded`] count: its own for the first
/// [`SLOTS`] threads to count, else the shared one ([`SLOTS`]).
#[inline]
fn slot() -> usize {
    SLOT.with(|slot| {
        let mine = slot.get();
        if mine != usize::MAX {
            return mine;
        }
        let mine = NEXT_SLOT.fetch_add(1, Ordering::Relaxed).min(SLOTS);
        slot.set(mine);
        mine
    })
}

/// An atomic on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A count that many threads add to: each thread adds to a slot only it
/// writes (a load and a store, no atomic read-modify-write, which costs
/// about 10 ns here), and a flush sums the slots, as Linux's per-CPU
/// counters do.
#[derive(Debug)]
struct Sharded {
    /// [`SLOTS`] threads' own, then the shared one.
    slots: Box<[Padded]>,
    /// Handed to the recorder so far (under the owner's flush lock).
    flushed: AtomicU64,
}

impl Sharded {
    fn new() -> Self {
        Sharded {
            slots: (0..=SLOTS).map(|_| Padded::default()).collect(),
            flushed: AtomicU64::new(0),
        }
    }

    /// Adds `n`.
    #[inline]
    fn add(&self, n: u64) {
        let i = slot();
        let Some(cell) = self.slots.get(i) else {
            return;
        };
        if i < SLOTS {
            let before = cell.0.load(Ordering::Relaxed);
            cell.0.store(before.wrapping_add(n), Ordering::Release);
        } else {
            cell.0.fetch_add(n, Ordering::Release);
        }
    }

    /// This thread's count so far.
    #[inline]
    fn mine(&self) -> u64 {
        self.slots
            .get(slot())
            .map_or(0, |cell| cell.0.load(Ordering::Relaxed))
    }

    /// The total.
    fn get(&self) -> u64 {
        self.slots
            .iter()
            .map(|cell| cell.0.load(Ordering::Acquire))
            .fold(0, u64::wrapping_add)
    }

    /// Hands what was counted since the last flush to `counter` (call
    /// under the owner's flush lock).
    fn flush(&self, counter: &Counter) {
        let new = unflushed(self.get(), &self.flushed);
        if new > 0 {
            counter.increment(new);
        }
    }
}

/// The handles of a topic's sends, shared by every producer in the
/// process. Successful sends are counted here and handed to the recorder
/// every [`FLUSH_INTERVAL`] and at close; failures go to the recorder at
/// once.
#[derive(Debug)]
pub(crate) struct SendMetrics {
    base: Vec<Label>,
    sent_counter: Counter,
    duration: Histogram,
    sent: Sharded,
    /// Serialises flushes.
    flushing: Mutex<()>,
    /// Which sends are timed.
    sampler: Sampler,
}

impl SendMetrics {
    /// The handles of `topic` on `system` (found, or registered on first
    /// use).
    pub(crate) fn of(system: &'static str, topic: &str) -> &'static Self {
        type Sets = Mutex<Option<std::collections::HashMap<(&'static str, String), &'static SendMetrics>>>;
        static SETS: Sets = Mutex::new(None);
        interned(&SETS, (system, topic.to_string()), || {
            let base = labels(system, topic, None);
            SendMetrics {
                sent_counter: metrics::counter!(SENT, base.clone()),
                duration: metrics::histogram!(OPERATION_DURATION, with(base.clone(), &[(OPERATION, "send")])),
                base,
                sent: Sharded::new(),
                flushing: Mutex::new(()),
                sampler: Sampler::default(),
            }
        })
    }

    /// Whether the send starting now is timed (see [`Sampler`]).
    #[inline]
    pub(crate) fn time_this(&self) -> bool {
        self.sampler.pick(self.sent.mine(), || self.sent.get())
    }

    /// Records a send of `count` messages; `took` is `None` when the
    /// [`Sampler`] did not choose it for timing.
    pub(crate) fn sent(&self, count: usize, took: Option<Duration>, err: Option<&Error>) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        match err {
            None => {
                self.sent.add(count);
                if let Some(took) = took {
                    self.duration.record(took.as_secs_f64());
                }
            }
            Some(e) => {
                let failed = with(self.base.clone(), &[(ERROR_TYPE, e.kind())]);
                metrics::counter!(SENT, failed.clone()).increment(count);
                if let Some(took) = took {
                    metrics::histogram!(OPERATION_DURATION, with(failed, &[(OPERATION, "send")]))
                        .record(took.as_secs_f64());
                }
            }
        }
    }
}

impl Flush for SendMetrics {
    fn flush(&self) {
        let _one = self
            .flushing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.sent.flush(&self.sent_counter);
    }
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    DeadLetter,
}

impl Settle {
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Requeue => "requeue",
            Settle::DeadLetter => "dead_letter",
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Settle::Ack => "acked",
            Settle::Requeue => "requeued",
            Settle::DeadLetter => "dead_lettered",
        }
    }

    fn index(self) -> usize {
        match self {
            Settle::Ack => 0,
            Settle::Requeue => 1,
            Settle::DeadLetter => 2,
        }
    }
}

impl Settle {
    /// Whether the settle's duration is recorded: a requeue's and a
    /// dead-letter's are (they send, or re-publish, on most backends); an
    /// ack's is not, as on every backend it returns once it is queued
    /// (mq-redis batches XACKs in the background, RabbitMQ's `basic.ack`
    /// has no reply, mq-kafka stores the offset for the next commit,
    /// mq-memory is local): its duration would tell nothing and cost two
    /// clock reads and a histogram value per message.
    pub(crate) fn timed(self) -> bool {
        self != Settle::Ack
    }
}

const SETTLES: [Settle; 3] = [Settle::Ack, Settle::Requeue, Settle::DeadLetter];

/// The handles of a topic and group, shared by every consumer of them in
/// the process. Settles are counted here (deliveries by each consumer's
/// [`Deliveries`]) and handed to the recorder every [`FLUSH_INTERVAL`] and
/// at close; the in-flight gauge moves by what changed since. Failures and
/// durations go to the recorder at once.
#[derive(Debug)]
pub(crate) struct ConsumerMetrics {
    system: &'static str,
    base: Vec<Label>,
    consumed_counter: Counter,
    end_to_end: Histogram,
    in_flight: Gauge,
    settled_counters: [Counter; 3],
    settle_duration: [Histogram; 3],
    process_ok: Histogram,
    settled: [Sharded; 3],
    /// Deliveries dropped unsettled.
    released: AtomicU64,
    /// Serialises flushes, and holds the settles and releases last taken
    /// off the in-flight gauge.
    flushing: Mutex<u64>,
}

impl ConsumerMetrics {
    /// The handles of `topic` and `group` on `system` (found, or
    /// registered on first use).
    pub(crate) fn of(system: &'static str, topic: &str, group: &str) -> &'static Self {
        type Sets = Mutex<
            Option<std::collections::HashMap<(&'static str, String, String), &'static ConsumerMetrics>>,
        >;
        static SETS: Sets = Mutex::new(None);
        interned(&SETS, (system, topic.to_string(), group.to_string()), || {
            let base = labels(system, topic, Some(group));
            let settled_counters =
                SETTLES.map(|s| metrics::counter!(SETTLED, with(base.clone(), &[(OUTCOME, s.outcome())])));
            let settle_duration = SETTLES.map(|s| {
                metrics::histogram!(
                    OPERATION_DURATION,
                    with(base.clone(), &[(OPERATION, s.operation())])
                )
            });
            ConsumerMetrics {
                system,
                consumed_counter: metrics::counter!(CONSUMED, base.clone()),
                end_to_end: metrics::histogram!(END_TO_END, base.clone()),
                in_flight: metrics::gauge!(IN_FLIGHT, base.clone()),
                process_ok: metrics::histogram!(PROCESS_DURATION, with(base.clone(), &[(OUTCOME, "ok")])),
                settled_counters,
                settle_duration,
                base,
                settled: [Sharded::new(), Sharded::new(), Sharded::new()],
                released: AtomicU64::new(0),
                flushing: Mutex::new(0),
            }
        })
    }

    /// The broker's name.
    pub(crate) fn system(&self) -> &'static str {
        self.system
    }

    /// Records a delivery's age (end to end).
    pub(crate) fn age(&self, age: Duration) {
        self.end_to_end.record(age.as_secs_f64());
    }

    /// Counts a delivery dropped unsettled (no longer in flight here).
    pub(crate) fn released(&self) {
        self.released.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn receive_failed(&self, err: &Error) {
        metrics::counter!(
            RECEIVE_ERRORS,
            with(self.base.clone(), &[(ERROR_TYPE, err.kind())])
        )
        .increment(1);
    }

    /// Records a settle; `took` is `None` for an ack, which is counted and
    /// not timed (see [`Settle::timed`]).
    pub(crate) fn settled(&self, how: Settle, took: Option<Duration>, err: Option<&Error>) {
        match err {
            None => {
                self.settled[how.index()].add(1);
                if let Some(took) = took {
                    self.settle_duration[how.index()].record(took.as_secs_f64());
                }
            }
            Some(e) => {
                let failed = with(
                    self.base.clone(),
                    &[(OPERATION, how.operation()), (ERROR_TYPE, e.kind())],
                );
                metrics::counter!(SETTLE_ERRORS, failed.clone()).increment(1);
                if let Some(took) = took {
                    metrics::histogram!(OPERATION_DURATION, failed).record(took.as_secs_f64());
                }
            }
        }
    }

    /// The handler's duration; `outcome` is `ok`, `error`, `panic` or
    /// `timeout`.
    pub(crate) fn processed(&self, outcome: &'static str, took: Duration) {
        if outcome == "ok" {
            self.process_ok.record(took.as_secs_f64());
        } else {
            metrics::histogram!(PROCESS_DURATION, with(self.base.clone(), &[(OUTCOME, outcome)]))
                .record(took.as_secs_f64());
        }
    }
}

impl Flush for ConsumerMetrics {
    fn flush(&self) {
        let mut taken_off = self
            .flushing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let done: u64 = self
            .settled
            .iter()
            .map(Sharded::get)
            .chain([self.released.load(Ordering::Acquire)])
            .fold(0, u64::saturating_add);
        for (count, counter) in self.settled.iter().zip(&self.settled_counters) {
            count.flush(counter);
        }
        if done > *taken_off {
            #[allow(clippy::cast_precision_loss)] // a gauge is an f64
            self.in_flight.decrement((done - *taken_off) as f64);
            *taken_off = done;
        }
    }
}

/// One consumer's count of its deliveries: only that consumer adds to it
/// (`recv` and `recv_many` take the consumer by `&mut`), so a delivery
/// costs a load and a store, no atomic read-modify-write. Handed to its
/// topic and group's counter and in-flight gauge with the rest, and when
/// the consumer is dropped.
#[derive(Debug)]
pub(crate) struct Deliveries {
    count: Count,
    /// Its topic and group's handles.
    pub(crate) of: &'static ConsumerMetrics,
    /// Which deliveries' ages are recorded.
    age_sampler: Sampler,
    /// Serialises flushes.
    flushing: Mutex<()>,
}

impl Deliveries {
    /// A consumer's count, registered for flushing.
    pub(crate) fn new(of: &'static ConsumerMetrics) -> std::sync::Arc<Self> {
        let deliveries = std::sync::Arc::new(Deliveries {
            count: Count::new(),
            of,
            age_sampler: Sampler::default(),
            flushing: Mutex::new(()),
        });
        consumers().push(std::sync::Arc::downgrade(&deliveries));
        deliveries
    }

    /// Counts a delivery (only its consumer calls this); whether its age
    /// is to be recorded (see [`Sampler`]).
    #[inline]
    pub(crate) fn one(&self) -> bool {
        let n = self.count.bump_single_writer();
        self.age_sampler.pick(n, || n)
    }

    fn flush(&self) {
        let _one = self
            .flushing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = unflushed(self.count.get(), &self.count.flushed);
        if new > 0 {
            self.of.consumed_counter.increment(new);
            #[allow(clippy::cast_precision_loss)] // a gauge is an f64
            self.of.in_flight.increment(new as f64);
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Sets the lag gauges of `lag`'s topic and group.
pub(crate) fn record_lag(system: &'static str, lag: &Lag) {
    let base = labels(system, &lag.topic, Some(&lag.group));
    #[allow(clippy::cast_precision_loss)] // a gauge is an f64
    {
        metrics::gauge!(LAG, base.clone()).set(lag.behind as f64);
        if let Some(in_flight) = lag.in_flight {
            metrics::gauge!(LAG_IN_FLIGHT, base).set(in_flight as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More threads than there are slots add at once: the sum is exact,
    /// the threads past [`SLOTS`] sharing the last slot.
    #[test]
    fn a_sharded_count_sums_every_thread_s_adds() {
        let count = std::sync::Arc::new(Sharded::new());
        let threads: Vec<_> = (0..SLOTS + 8)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        count.add(1);
                    }
                    count.add(5);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("an adding thread");
        }
        assert_eq!(count.get(), (SLOTS as u64 + 8) * 1005);
    }

    /// Every operation is timed until the first rate check; at a tight
    /// loop's rate few are (one in [`MAX_STRIDE`] once the rate is known;
    /// the check allows for a busy machine).
    #[test]
    fn the_sampler_times_everything_at_first_and_samples_a_busy_handle() {
        let sampler = Sampler::default();
        let first = (0..ADAPT_EVERY).filter(|n| sampler.pick(*n, || *n)).count();
        assert_eq!(first, 1024, "the first {ADAPT_EVERY} operations");
        // A million picks take well under a second even in a debug build
        // on a busy machine: thousands a second, so the stride grows.
        let picked = (ADAPT_EVERY..1_000_000)
            .filter(|n| sampler.pick(*n, || *n))
            .count();
        assert!(
            picked < 1_000_000 / 8,
            "{picked} of {} timed at a tight loop's rate",
            1_000_000 - ADAPT_EVERY
        );
    }
}
