//! A received message and the handle that settles it: ack, requeue, dead-letter.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::observe::Observed;
use crate::observe::metric::Settle;
use crate::{Error, Message, Result, headers};

/// How a delivery is given back when it was not processed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Nack {
    /// Deliver it again, after `delay` (zero: as soon as possible), with
    /// `attempt + 1`. Once the subscription's max attempts are used up the
    /// message is dead-lettered instead.
    Requeue {
        /// How long to hold the message back.
        delay: Duration,
    },
    /// Send it to the dead-letter topic with `reason`, and do not deliver it
    /// again here.
    DeadLetter {
        /// Why; stored in the [`DEAD_LETTER_REASON`](headers::DEAD_LETTER_REASON) header.
        reason: String,
    },
}

impl Nack {
    /// Requeue at once.
    pub fn requeue() -> Self {
        Nack::Requeue {
            delay: Duration::ZERO,
        }
    }

    /// Requeue after `delay`.
    pub fn requeue_after(delay: Duration) -> Self {
        Nack::Requeue { delay }
    }

    /// Dead-letter with `reason`.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Nack::DeadLetter {
            reason: reason.into(),
        }
    }
}

/// The backend side of a delivery: what `ack` and `nack` do on the broker.
///
/// Backends implement this once per delivery. [`Delivery`] makes the calls
/// idempotent and exclusive, so an implementation is called at most once
/// successfully, with either `ack` or `nack`, and is handed the delivery it
/// settles (its message, attempt, topic and group: what a requeue by
/// republishing or a dead letter needs). When an implementation returns an
/// error the delivery stays unsettled and may be settled again.
#[async_trait]
pub trait AckHandle: Send + Sync + fmt::Debug {
    /// Tells the broker `delivery` was processed.
    async fn ack(&self, delivery: &Delivery) -> Result<()>;
    /// Requeues or dead-letters `delivery`.
    async fn nack(&self, delivery: &Delivery, nack: Nack) -> Result<()>;

    /// The handle itself, for a backend's own extensions that need more
    /// than ack and nack (a Kafka transaction that consumes a delivery,
    /// say). `None` unless the backend opts in.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

const PENDING: u8 = 0;
const BUSY: u8 = 1;
const ACKED: u8 = 2;
const REQUEUED: u8 = 3;
const DEAD_LETTERED: u8 = 4;

/// A received message, its attempt number, and the means to settle it.
///
/// Settle every delivery exactly once with [`ack`](Delivery::ack) or
/// [`nack`](Delivery::nack). Acking twice is a no-op; any other second
/// settlement is [`Error::AlreadySettled`], never a panic. A delivery dropped
/// unsettled is delivered again later (at-least-once): when its consumer
/// closes or, where the backend supports it, once the subscription's ack
/// timeout passes.
///
/// ```
/// # async fn handle(consumer: &mut dyn mq_core::Consumer) -> mq_core::Result<()> {
/// use mq_core::Nack;
/// while let Some(delivery) = consumer.recv().await? {
///     match std::str::from_utf8(&delivery.message().payload) {
///         Ok(text) => { println!("{text}"); delivery.ack().await? }
///         Err(_) => delivery.nack(Nack::dead_letter("not UTF-8")).await?,
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Delivery {
    message: Arc<Message>,
    attempt: u32,
    topic: Arc<str>,
    group: Arc<str>,
    handle: Box<dyn AckHandle>,
    state: AtomicU8,
    /// Spans and metrics, when it came through an instrumented consumer.
    observed: Option<Observed>,
}

impl Delivery {
    /// Builds a delivery (for backends).
    pub fn new(
        message: Message,
        attempt: u32,
        topic: Arc<str>,
        group: Arc<str>,
        handle: Box<dyn AckHandle>,
    ) -> Self {
        Self::shared(Arc::new(message), attempt, topic, group, handle)
    }

    /// Builds a delivery of a message the backend also keeps (for backends
    /// that hold the message for redelivery: no copy is made).
    pub fn shared(
        message: Arc<Message>,
        attempt: u32,
        topic: Arc<str>,
        group: Arc<str>,
        handle: Box<dyn AckHandle>,
    ) -> Self {
        Delivery {
            message,
            attempt: attempt.max(1),
            topic,
            group,
            handle,
            state: AtomicU8::new(PENDING),
            observed: None,
        }
    }

    /// Attaches an instrumented consumer's observation.
    pub(crate) fn set_observed(&mut self, observed: Observed) {
        self.observed = Some(observed);
    }

    /// The instrumented consumer's observation, if any.
    pub(crate) fn observation(&self) -> Option<&Observed> {
        self.observed.as_ref()
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Takes the message out, dropping the delivery unsettled (it will be
    /// delivered again). Use after settling, or to keep a copy.
    pub fn into_message(self) -> Message {
        Arc::try_unwrap(self.message).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Which delivery of this message this is: 1 the first time.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The topic it was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The group it was consumed by.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The backend's handle of this delivery as a `T`, when the backend
    /// exposes it as one (see [`AckHandle::as_any`]): how a backend's own
    /// extensions reach the broker-side position of a delivery.
    pub fn backend_handle<T: 'static>(&self) -> Option<&T> {
        self.handle.as_any()?.downcast_ref()
    }

    /// Whether it has been acked or nacked.
    pub fn is_settled(&self) -> bool {
        self.state.load(Ordering::Acquire) > BUSY
    }

    /// Decodes the payload as JSON; see [`Message::decode_json`].
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the payload is not valid JSON for `T`.
    pub fn decode_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.message.decode_json()
    }

    /// Marks the message processed.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadySettled`] after a nack; [`Error::DeliveryExpired`] when
    /// the broker already took the message back; the backend's error
    /// otherwise, in which case the delivery stays unsettled. A second ack
    /// returns `Ok(())` and does nothing.
    pub async fn ack(&self) -> Result<()> {
        match self.begin()? {
            Some(ACKED) => return Ok(()),
            Some(other) => return Err(self.already(other)),
            None => {}
        }
        let result = match &self.observed {
            None => self.handle.ack(self).await,
            // No span wanted (metrics only): counted, not wrapped.
            Some(observed) if !crate::observe::spans_wanted() => {
                let result = self.handle.ack(self).await;
                observed.settled(&tracing::Span::none(), Settle::Ack, None, &result);
                result
            }
            Some(observed) => self.observe(observed, Settle::Ack, self.handle.ack(self)).await,
        };
        self.finish(result, ACKED)
    }

    /// Runs a settle under its span, and records it.
    async fn observe(
        &self,
        observed: &Observed,
        how: Settle,
        settle: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let span = observed.settle_span(self, how);
        let started = (how.timed() && crate::observe::metrics_enabled()).then(std::time::Instant::now);
        let result = crate::observe::in_span(settle, &span).await;
        observed.settled(&span, how, started.map(|s| s.elapsed()), &result);
        result
    }

    /// Gives the message back: requeue (with a delay) or dead-letter.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadySettled`] when it was already acked or nacked;
    /// the backend's error otherwise, in which case it stays unsettled.
    pub async fn nack(&self, nack: Nack) -> Result<()> {
        if let Some(state) = self.begin()? {
            return Err(self.already(state));
        }
        let (settled, how) = match nack {
            Nack::Requeue { .. } => (REQUEUED, Settle::Requeue),
            Nack::DeadLetter { .. } => (DEAD_LETTERED, Settle::DeadLetter),
        };
        let result = match &self.observed {
            None => self.handle.nack(self, nack).await,
            Some(observed) => self.observe(observed, how, self.handle.nack(self, nack)).await,
        };
        self.finish(result, settled)
    }

    /// Claims the delivery for settling. `Ok(None)`: claimed; `Ok(Some(s))`:
    /// already settled as `s`.
    fn begin(&self) -> Result<Option<u8>> {
        match self
            .state
            .compare_exchange(PENDING, BUSY, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(None),
            Err(BUSY) => Err(Error::Backend {
                backend: "mq",
                operation: format!("settle message `{}`", self.message.id),
                reason: "another ack or nack of this delivery is in progress".into(),
                retryable: true,
                source: None,
            }),
            Err(state) => Ok(Some(state)),
        }
    }

    fn finish(&self, result: Result<()>, settled: u8) -> Result<()> {
        let next = if result.is_ok() { settled } else { PENDING };
        self.state.store(next, Ordering::Release);
        result
    }

    fn already(&self, state: u8) -> Error {
        Error::AlreadySettled {
            id: self.message.id.clone(),
            settled: match state {
                ACKED => "acked",
                REQUEUED => "requeued",
                _ => "dead-lettered",
            },
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("id", &self.message.id)
            .field("attempt", &self.attempt)
            .field("settled", &self.is_settled())
            .finish()
    }
}

/// Acks every delivery of a batch (from
/// [`Consumer::recv_many`](crate::Consumer::recv_many)) at once: the acks
/// run concurrently, every one is tried, and the first error is returned.
///
/// # Errors
///
/// As [`Delivery::ack`], for the first delivery whose ack failed.
pub async fn ack_all(deliveries: &[Delivery]) -> Result<()> {
    // All concurrently, in groups of at most `JOIN_ALL_SMALL`: `join_all`
    // polls up to that many futures in one allocation, but puts a larger
    // set in a `FuturesOrdered`, an allocation and a waker per future
    // (batches of 500 acked through it: mq-kafka's `recv_many` read 0.97 M
    // messages a second against 1.17 M, benches/peers). Groups of groups
    // stay small up to 900 deliveries.
    const JOIN_ALL_SMALL: usize = 30;
    let groups = deliveries
        .chunks(JOIN_ALL_SMALL)
        .map(|group| futures::future::join_all(group.iter().map(Delivery::ack)));
    let results = futures::future::join_all(groups).await;
    results
        .into_iter()
        .flatten()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

/// The copy of `message` that goes to a dead-letter topic: the original with
/// headers naming the reason, the original topic and group, and the attempts.
///
/// Every backend uses this, so dead letters look the same everywhere.
pub fn dead_letter_message(
    message: &Message,
    topic: &str,
    group: &str,
    attempts: u32,
    reason: &str,
) -> Message {
    let mut dead = message.clone();
    dead.headers.remove(headers::ATTEMPT);
    dead.headers
        .insert(headers::DEAD_LETTER_REASON.into(), reason.into());
    dead.headers.insert(headers::ORIGINAL_TOPIC.into(), topic.into());
    dead.headers.insert(headers::ORIGINAL_GROUP.into(), group.into());
    dead.headers
        .insert(headers::ATTEMPTS.into(), attempts.to_string());
    dead
}

/// The reason given when a message is dead-lettered for running out of attempts.
pub fn attempts_exhausted_reason(max_attempts: u32) -> String {
    format!("max attempts ({max_attempts}) reached")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail_next: Mutex<bool>,
    }

    #[async_trait]
    impl AckHandle for Arc<Recorder> {
        async fn ack(&self, _: &Delivery) -> Result<()> {
            self.record("ack".into())
        }
        async fn nack(&self, _: &Delivery, nack: Nack) -> Result<()> {
            self.record(format!("{nack:?}"))
        }
    }

    impl Recorder {
        fn record(&self, call: String) -> Result<()> {
            let mut fail = self.fail_next.lock().unwrap();
            if *fail {
                *fail = false;
                return Err(Error::backend("test", "settle", "injected"));
            }
            self.calls.lock().unwrap().push(call);
            Ok(())
        }
    }

    /// Acks some at once, some after yielding, and fails the ones it is told to.
    #[derive(Debug)]
    struct Numbered {
        n: usize,
        fail: bool,
        acked: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait]
    impl AckHandle for Numbered {
        async fn ack(&self, _: &Delivery) -> Result<()> {
            if self.n.is_multiple_of(3) {
                tokio::task::yield_now().await;
            }
            self.acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail {
                return Err(Error::backend("test", "ack", format!("ack {} refused", self.n)));
            }
            Ok(())
        }
        async fn nack(&self, _: &Delivery, _: Nack) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn ack_all_tries_every_delivery_of_a_large_batch_and_returns_the_first_failure() {
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let batch: Vec<Delivery> = (0..95)
            .map(|n| {
                let handle = Numbered {
                    n,
                    fail: n == 47 || n == 80,
                    acked: acked.clone(),
                };
                Delivery::new(Message::new("x"), 1, "t".into(), "g".into(), Box::new(handle))
            })
            .collect();
        let err = ack_all(&batch).await.expect_err("two acks fail");
        assert!(err.to_string().contains("ack 47 refused"), "{err}");
        assert_eq!(
            acked.load(std::sync::atomic::Ordering::SeqCst),
            95,
            "every ack was tried"
        );
        let settled = batch.iter().filter(|d| d.is_settled()).count();
        assert_eq!(settled, 93, "the failed two stay unsettled");
        // All succeed: Ok, every one settled.
        let ok: Vec<Delivery> = (0..31)
            .map(|n| {
                let handle = Numbered {
                    n,
                    fail: false,
                    acked: acked.clone(),
                };
                Delivery::new(Message::new("x"), 1, "t".into(), "g".into(), Box::new(handle))
            })
            .collect();
        ack_all(&ok).await.expect("all acked");
        assert!(ok.iter().all(Delivery::is_settled));
    }

    fn delivery(rec: &Arc<Recorder>) -> Delivery {
        Delivery::new(
            Message::new("x"),
            0,
            "t".into(),
            "g".into(),
            Box::new(rec.clone()),
        )
    }

    #[derive(Debug)]
    struct Exposed(u32);

    #[async_trait]
    impl AckHandle for Exposed {
        async fn ack(&self, _: &Delivery) -> Result<()> {
            Ok(())
        }
        async fn nack(&self, _: &Delivery, _: Nack) -> Result<()> {
            Ok(())
        }
        fn as_any(&self) -> Option<&dyn std::any::Any> {
            Some(self)
        }
    }

    #[test]
    fn backend_handle_is_reachable_only_when_exposed_and_of_that_type() {
        let exposed = Delivery::new(Message::new("x"), 1, "t".into(), "g".into(), Box::new(Exposed(7)));
        assert_eq!(exposed.backend_handle::<Exposed>().map(|h| h.0), Some(7));
        assert!(exposed.backend_handle::<u32>().is_none(), "another type");
        let hidden = delivery(&Arc::new(Recorder::default()));
        assert!(hidden.backend_handle::<Arc<Recorder>>().is_none(), "not exposed");
    }

    #[tokio::test]
    async fn ack_twice_is_a_no_op() {
        let rec = Arc::new(Recorder::default());
        let d = delivery(&rec);
        assert_eq!(d.attempt(), 1, "attempts start at 1");
        d.ack().await.unwrap();
        d.ack().await.unwrap();
        assert_eq!(rec.calls.lock().unwrap().len(), 1);
        assert!(d.is_settled());
    }

    #[tokio::test]
    async fn nack_after_ack_is_an_error() {
        let rec = Arc::new(Recorder::default());
        let d = delivery(&rec);
        d.ack().await.unwrap();
        let err = d.nack(Nack::requeue()).await.unwrap_err();
        assert!(
            matches!(err, Error::AlreadySettled { settled: "acked", .. }),
            "{err:?}"
        );
        assert_eq!(rec.calls.lock().unwrap().as_slice(), ["ack"]);
    }

    #[tokio::test]
    async fn ack_after_dead_letter_is_an_error() {
        let rec = Arc::new(Recorder::default());
        let d = delivery(&rec);
        d.nack(Nack::dead_letter("bad")).await.unwrap();
        let err = d.ack().await.unwrap_err();
        assert!(matches!(
            err,
            Error::AlreadySettled {
                settled: "dead-lettered",
                ..
            }
        ));
    }

    #[tokio::test]
    async fn failed_ack_leaves_delivery_unsettled() {
        let rec = Arc::new(Recorder::default());
        *rec.fail_next.lock().unwrap() = true;
        let d = delivery(&rec);
        assert!(d.ack().await.is_err());
        assert!(!d.is_settled());
        d.ack().await.unwrap();
        assert!(d.is_settled());
    }

    #[test]
    fn dead_letter_copy_names_its_origin() {
        let msg = Message::new("p")
            .with_header(headers::ATTEMPT, "3")
            .with_header("app", "1");
        let dead = dead_letter_message(&msg, "orders", "billing", 3, "boom");
        assert_eq!(dead.id, msg.id);
        assert_eq!(dead.header(headers::DEAD_LETTER_REASON), Some("boom"));
        assert_eq!(dead.header(headers::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(dead.header(headers::ORIGINAL_GROUP), Some("billing"));
        assert_eq!(dead.header(headers::ATTEMPTS), Some("3"));
        assert_eq!(dead.header("app"), Some("1"));
        assert_eq!(dead.header(headers::ATTEMPT), None);
    }
}
