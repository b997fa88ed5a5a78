//! The conformance kit: the behaviours every backend must show, as public
//! async functions that panic (like `assert!`) when a backend falls short.
//!
//! Each check takes a fresh broker, uses fresh random topic names, bounds
//! every wait, and runs only where the broker's [`Capabilities`] declare
//! the behaviour it checks (it prints a `skipped:` line otherwise).
//!
//! A backend runs them all with one macro in `tests/conformance.rs`, which
//! makes one `#[tokio::test]` per check (the crate needs `tokio` with the
//! `macros` and `rt-multi-thread` features as a dev-dependency):
//!
//! ```no_run
//! use std::sync::Arc;
//! use mq_core::Broker;
//!
//! async fn broker() -> Arc<dyn Broker> {
//!     Arc::new(mq_memory::MemoryBroker::new())
//! }
//!
//! mq_core::conformance_tests!(broker);
//! ```
//!
//! Or call [`run_all`] from any async context, or a single check by name.
//!
//! [`Capabilities`]: crate::Capabilities
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{Broker, Consumer, Delivery, Message, Producer, ProducerOptions, Subscription};

mod basic;
mod batch;
pub mod faults;
pub mod foreign;
mod groups;
mod lifecycle;
pub mod logs;
mod names;
pub mod observe;
mod settle;
mod typed;

pub use basic::*;
pub use batch::*;
pub use groups::*;
pub use lifecycle::*;
pub use names::*;
pub use settle::*;
pub use typed::*;

/// The longest any check waits for one expected delivery, unless changed
/// with [`set_wait`].
pub const WAIT: Duration = Duration::from_secs(30);

static WAIT_MILLIS: AtomicU64 = AtomicU64::new(30_000);

/// Changes how long checks wait for an expected delivery (for the whole
/// process): longer for slow brokers, shorter for tests that expect a check
/// to fail.
pub fn set_wait(wait: Duration) {
    WAIT_MILLIS.store(
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The current wait bound (see [`set_wait`]).
pub fn wait() -> Duration {
    Duration::from_millis(WAIT_MILLIS.load(Ordering::Relaxed))
}

/// How long a check watches for a delivery that must not come.
pub const QUIET: Duration = Duration::from_millis(600);

/// Invokes `$callback!{ $args ; check, check, ... }` with the name of every
/// check, so the list is written once.
#[doc(hidden)]
#[macro_export]
macro_rules! __mq_for_each_check {
    ($callback:ident ! ( $($args:tt)* )) => {
        $crate::$callback! { $($args)* ;
            round_trip_keeps_message,
            round_trip_empty_payload,
            round_trip_large_payload,
            json_round_trip_and_decode_error,
            oversized_message_is_rejected,
            names_at_the_limits_are_accepted_or_refused,
            batch_send_keeps_order,
            order_per_key_under_concurrent_sends,
            topics_are_isolated,
            every_group_receives_everything,
            competing_consumers_share_without_duplicates_or_loss,
            nack_requeue_redelivers_with_next_attempt,
            requeue_with_delay_waits_at_least_the_delay,
            unacked_redelivered_after_consumer_drop,
            unacked_redelivered_after_ack_timeout,
            ack_is_idempotent_and_nack_after_ack_errors,
            dead_letter_after_max_attempts,
            explicit_dead_letter_has_reason_headers,
            new_group_from_earliest_sees_history,
            new_group_from_latest_skips_history,
            concurrent_publishers_lose_nothing,
            concurrent_subscribers_lose_nothing,
            close_then_resubscribe_continues_without_loss,
            prefetch_bounds_unacked_in_flight,
            consumer_is_a_stream,
            cancelled_recv_loses_nothing,
            recv_after_close_returns_none,
            send_after_broker_close_is_error,
            producer_close_waits_and_refuses_later_sends,
            health_answers_until_close,
            lag_counts_what_the_group_has_not_settled,
            recv_many_batches_in_order_and_waits_at_most_the_bound,
            typed_handler_dead_letters_what_cannot_succeed,
        }
    };
}

/// Defines one `#[tokio::test]` per conformance check, each on a fresh broker
/// from `$make` (an async fn or closure returning `Arc<dyn Broker>`).
///
/// ```no_run
/// mq_core::conformance_tests!(|| async {
///     std::sync::Arc::new(mq_memory::MemoryBroker::new()) as std::sync::Arc<dyn mq_core::Broker>
/// });
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__mq_for_each_check!(__mq_conformance_tests!($make));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mq_conformance_tests {
    ($make:expr ; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let broker: ::std::sync::Arc<dyn $crate::Broker> = ($make)().await;
                $crate::testkit::$check(broker).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mq_check_list {
    ( ; $($check:ident),* $(,)?) => {
        /// Every check, by name, in the order [`run_all`] runs them.
        pub fn all() -> Vec<(&'static str, Check)> {
            vec![ $( (stringify!($check), (|b| Box::pin($check(b))) as Check) ),* ]
        }
    };
}

/// A check, as [`all`] lists it.
pub type Check = fn(Arc<dyn Broker>) -> BoxFuture<'static, ()>;

__mq_for_each_check!(__mq_check_list!());

/// Runs every check, each on a fresh broker from `make`, one after another.
/// Panics at the first failure, naming the check.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    for (name, check) in all() {
        let broker = make().await;
        eprintln!("conformance: {name} ({})", broker.name());
        check(broker).await;
    }
}

/// A broker that keeps `G` alive (a test container, a server process) for
/// as long as the broker lives, so a kit run on a throwaway server cleans up
/// after itself.
#[derive(Debug)]
pub struct Owning<G> {
    broker: Arc<dyn Broker>,
    _guard: G,
}

impl<G: Send + Sync + std::fmt::Debug + 'static> Owning<G> {
    /// `broker`, keeping `guard` until it is dropped.
    pub fn new(broker: Arc<dyn Broker>, guard: G) -> Self {
        Owning {
            broker,
            _guard: guard,
        }
    }
}

#[async_trait::async_trait]
impl<G: Send + Sync + std::fmt::Debug + 'static> Broker for Owning<G> {
    fn name(&self) -> &'static str {
        self.broker.name()
    }
    fn capabilities(&self) -> crate::Capabilities {
        self.broker.capabilities()
    }
    async fn producer(&self, options: ProducerOptions) -> crate::Result<Box<dyn Producer>> {
        self.broker.producer(options).await
    }
    async fn subscribe(&self, sub: Subscription) -> crate::Result<Box<dyn Consumer>> {
        self.broker.subscribe(sub).await
    }
    async fn close(&self) -> crate::Result<()> {
        self.broker.close().await
    }
    async fn health(&self) -> crate::Result<crate::Health> {
        self.broker.health().await
    }
    async fn lag(&self, topic: &str, group: &str) -> crate::Result<crate::Lag> {
        self.broker.lag(topic, group).await
    }
}

// ---- helpers shared by the checks ----

/// Prints a figure a test measured (a fault suite's counts, a time), and
/// when `MQ_TEST_REPORT_DIR` is set appends it to `report.txt` there:
/// `scripts/test.sh` prints that file at the end of a run, since the test
/// runner hides what passing tests print.
pub fn report(line: &str) {
    use std::io::Write as _;
    eprintln!("{line}");
    if let Some(dir) = std::env::var_os("MQ_TEST_REPORT_DIR") {
        let path = std::path::Path::new(&dir).join("report.txt");
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// A fresh topic name, unique across runs: `mqkit-{what}-{random}`.
pub fn unique(what: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("mqkit-{what}-{}", &id[..12])
}

/// A group name of its own for the check that uses `topic` (a name from
/// [`unique`]): checks on one shared broker never join each other's groups,
/// and one check's subscriptions to `topic` share the group.
pub fn group_for(topic: &str, name: &str) -> String {
    let suffix = topic.rsplit('-').next().unwrap_or(topic);
    format!("{name}-{suffix}")
}

/// Prints why a check does not apply to this broker.
fn skip(broker: &dyn Broker, check: &str, why: &str) {
    eprintln!("skipped: {check} on {}: {why}", broker.name());
}

async fn producer(broker: &Arc<dyn Broker>) -> Box<dyn Producer> {
    broker
        .producer(ProducerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{}: cannot create a producer: {e}", broker.name()))
}

async fn subscribe(broker: &Arc<dyn Broker>, sub: Subscription) -> Box<dyn Consumer> {
    let what = format!("{}/{}", sub.topic, sub.group);
    broker
        .subscribe(sub)
        .await
        .unwrap_or_else(|e| panic!("{}: cannot subscribe {what}: {e}", broker.name()))
}

/// `group`'s lag on `topic` once it reads 0 behind (acks may reach the
/// broker a little later, batched), or the last reading once [`wait`]
/// passed or the backend answered an error.
pub(crate) async fn lag_once_settled(
    broker: &dyn Broker,
    topic: &str,
    group: &str,
) -> crate::Result<crate::Lag> {
    let deadline = tokio::time::Instant::now() + wait();
    loop {
        let lag = broker.lag(topic, group).await;
        match &lag {
            Ok(l) if l.behind > 0 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return lag,
        }
    }
}

/// The next delivery within `within`, `None` if none came.
pub(crate) async fn recv_within(consumer: &mut dyn Consumer, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, consumer.recv()).await {
        Err(_) => None,
        Ok(Ok(Some(delivery))) => Some(delivery),
        Ok(Ok(None)) => panic!("consumer ended while a delivery was expected"),
        Ok(Err(e)) => panic!("recv failed: {e}"),
    }
}

/// The next delivery, or a panic naming `what` after the wait bound
/// ([`wait`], 30 s by default). For backend authors' own tests too.
pub async fn expect_delivery(consumer: &mut dyn Consumer, what: &str) -> Delivery {
    let wait = wait();
    recv_within(consumer, wait)
        .await
        .unwrap_or_else(|| panic!("no delivery within {wait:?}: expected {what}"))
}

/// Panics if a delivery arrives within [`QUIET`].
async fn expect_nothing(consumer: &mut dyn Consumer, why: &str) {
    if let Some(d) = recv_within(consumer, QUIET).await {
        panic!(
            "unexpected delivery of `{}` (attempt {}): {why}",
            String::from_utf8_lossy(&d.message().payload),
            d.attempt()
        );
    }
}

async fn send(producer: &dyn Producer, topic: &str, message: Message) -> crate::Receipt {
    producer
        .send(topic, message)
        .await
        .unwrap_or_else(|e| panic!("send to {topic} failed: {e}"))
}

async fn ack(delivery: &Delivery) {
    delivery
        .ack()
        .await
        .unwrap_or_else(|e| panic!("ack of {} failed: {e}", delivery.message().id));
}

/// Receives and acks until `n` deliveries were seen, returning their messages
/// in arrival order.
async fn receive_n(consumer: &mut dyn Consumer, n: usize, what: &str) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = expect_delivery(consumer, &format!("{what} ({} of {n} so far)", out.len())).await;
        ack(&d).await;
        out.push(d.into_message());
    }
    out
}
