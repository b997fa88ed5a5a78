//! The in-memory broker: a set of topics, shared by its producers and consumers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use mq_core::{
    Broker, BrokerUrl, Capabilities, Connector, Consumer, Error, Health, Lag, Producer, ProducerOptions,
    Registry, Result, Subscription,
};

use crate::consumer::MemoryConsumer;
use crate::faults::Injector;
use crate::producer::MemoryProducer;
use crate::topic::{DeadLetter, GroupStats, Policy, Topic, wake};
use crate::{FaultCounts, MemoryConfig};

/// An in-memory broker with the full portable semantics of mq.
///
/// Topics are created on first use. Every group gets every message; the
/// consumers of a group compete; unsettled deliveries come back when their
/// consumer closes or is dropped and when the ack timeout passes; failed
/// deliveries are requeued (optionally after a delay) until the
/// subscription's max attempts, then dead-lettered. Each topic retains at
/// most [`MemoryConfig::capacity`] messages: a topic whose oldest message is
/// still waiting for a group is full, and `send` waits for room.
///
/// Each `MemoryBroker::new` is independent: there is no global state, and
/// clones share one broker.
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// use mq_core::{Broker, Message, Nack, ProducerOptions, Subscription};
/// use std::time::Duration;
///
/// let broker = mq_memory::MemoryBroker::new();
/// let mut consumer = broker.subscribe(Subscription::new("jobs", "workers")).await?;
/// let producer = broker.producer(ProducerOptions::default()).await?;
/// producer.send("jobs", Message::new("resize image 7")).await?;
///
/// let first = consumer.recv().await?.unwrap();
/// first.nack(Nack::requeue_after(Duration::from_millis(10))).await?;
/// let second = consumer.recv().await?.unwrap();
/// assert_eq!(second.attempt(), 2);
/// second.ack().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) config: MemoryConfig,
    topics: RwLock<HashMap<String, Arc<Topic>, BuildHasherDefault<Fnv>>>,
    closed: AtomicBool,
    next_consumer: AtomicU64,
    /// The faults to inject and their counts.
    pub(crate) faults: Injector,
    /// Bumped by every [`MemoryBroker::restart`]: a consumer that sees it
    /// change reports a reconnect.
    pub(crate) epoch: AtomicU64,
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Runs `f` on topic `name` if it exists, without cloning its `Arc`
    /// (the hot path of a send: no reference-count traffic shared with the
    /// consumers).
    /// `value` comes back untouched when the topic does not exist yet.
    pub(crate) fn with_topic<T, R>(
        &self,
        name: &str,
        value: T,
        f: impl FnOnce(&Topic, T) -> R,
    ) -> std::result::Result<R, T> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        match topics.get(name) {
            Some(topic) => Ok(f(topic, value)),
            None => Err(value),
        }
    }

    pub(crate) fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(topic) = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return topic.clone();
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let topic = topics
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Topic::new(name, self.config.capacity)));
        if self.is_closed() {
            topic.lock().closed = true;
        }
        topic.clone()
    }

    /// Every topic so far.
    fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Appends dead letters to their topics. They never wait for room.
    pub(crate) fn dead_letter_all(&self, dead: Vec<DeadLetter>) {
        for (topic_name, message) in dead {
            let topic = self.topic(&topic_name);
            let woken = {
                let mut state = topic.lock();
                state.force_append(message);
                state.changed()
            };
            wake(woken);
        }
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::closed("memory broker")
    }
}

/// FNV-1a: topic names are short and chosen by the application, and SipHash
/// was a visible part of every send.
#[derive(Debug)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl MemoryBroker {
    /// A new broker with the default [`MemoryConfig`].
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A new broker with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                faults: Injector::new(config.faults.clone()),
                config,
                ..Inner::default()
            }),
        }
    }

    /// The broker's settings.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// A producer with the concrete type, which adds
    /// [`try_send`](MemoryProducer::try_send).
    pub fn memory_producer(&self, options: ProducerOptions) -> MemoryProducer {
        MemoryProducer::new(self.inner.clone(), options)
    }

    /// A snapshot of `group` on `topic`; `None` if the group does not exist.
    pub fn group_stats(&self, topic: &str, group: &str) -> Option<GroupStats> {
        self.inner.topic(topic).lock().stats(group)
    }

    /// How many messages `topic` retains.
    pub fn topic_len(&self, topic: &str) -> usize {
        self.inner.topic(topic).lock().len()
    }

    /// How many faults of each kind were injected so far (see [`Faults`](crate::Faults)).
    pub fn faults(&self) -> FaultCounts {
        self.inner.faults.counts()
    }

    /// Acts as a broker restart: every delivery not yet settled goes back
    /// to its group (attempt + 1, or dead-lettered when out of attempts),
    /// settling one of them afterwards fails with
    /// [`Error::DeliveryExpired`], and each consumer's next `recv` returns
    /// one [`Error::Connection`] (a reconnect; a retryable error) and then
    /// goes on. Nothing acked or confirmed is lost. Counted in
    /// [`FaultCounts::restarts`].
    ///
    /// ```
    /// # async fn run() -> mq_core::Result<()> {
    /// use mq_core::{Broker, Message, ProducerOptions, Subscription};
    /// let broker = mq_memory::MemoryBroker::new();
    /// let mut consumer = broker.subscribe(Subscription::new("t", "g")).await?;
    /// broker.producer(ProducerOptions::default()).await?.send("t", Message::new("x")).await?;
    /// let held = consumer.recv().await?.unwrap();
    /// broker.restart();
    /// assert!(held.ack().await.is_err());                 // the broker took it back
    /// assert!(consumer.recv().await.unwrap_err().is_retryable()); // the reconnect
    /// let again = consumer.recv().await?.unwrap();
    /// assert_eq!((again.message().id.as_str(), again.attempt()), (held.message().id.as_str(), 2));
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn restart(&self) {
        Injector::count(&self.inner.faults.restarts);
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        let topics = self.inner.all_topics();
        for topic in topics {
            let mut dead = Vec::new();
            let woken = {
                let mut state = topic.lock();
                state.restart(&mut dead);
                state.changed()
            };
            wake(woken);
            self.inner.dead_letter_all(dead);
        }
    }
}

/// What the memory broker guarantees, given its largest message size.
pub(crate) fn capabilities(max_message_bytes: usize) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.ordering_per_key = true;
    caps.delayed_requeue = true;
    caps.consumer_groups = true;
    caps.replay_from_earliest = true;
    caps.ack_timeout_redelivery = true;
    caps.dead_letter = true;
    caps.max_message_bytes = Some(max_message_bytes);
    caps
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.inner.config.max_message_bytes)
    }

    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        if self.inner.is_closed() {
            return Err(self.inner.closed_error());
        }
        Ok(Box::new(self.memory_producer(options)))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>> {
        if self.inner.is_closed() {
            return Err(self.inner.closed_error());
        }
        subscription.validate("memory")?;
        let topic = self.inner.topic(&subscription.topic);
        let policy = Arc::new(Policy::new(subscription));
        let id = self.inner.next_consumer.fetch_add(1, Ordering::Relaxed);
        let group = topic.lock().attach(&policy, id);
        Ok(Box::new(MemoryConsumer::new(
            self.inner.clone(),
            topic,
            policy,
            group,
            id,
        )))
    }

    /// Always answers at once while open: there is no server.
    async fn health(&self) -> Result<Health> {
        if self.inner.is_closed() {
            return Err(Error::closed("memory broker"));
        }
        Ok(Health::new("memory", "memory://", std::time::Duration::ZERO))
    }

    /// Exact: every message not yet acked, the in-flight ones apart.
    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        if self.inner.is_closed() {
            return Err(Error::closed("memory broker"));
        }
        let stats = self.group_stats(topic, group).ok_or_else(|| {
            Error::backend(
                "memory",
                format!("lag of `{topic}`"),
                format!("no group `{group}`"),
            )
        })?;
        let waiting = u64::try_from(stats.ready.saturating_add(stats.delayed)).unwrap_or(u64::MAX);
        let in_flight = u64::try_from(stats.in_flight).unwrap_or(u64::MAX);
        Ok(Lag::new(
            "memory",
            topic,
            group,
            stats.backlog.saturating_add(waiting).saturating_add(in_flight),
            Some(in_flight),
        ))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let topics = self.inner.all_topics();
        for topic in topics {
            let woken = {
                let mut state = topic.lock();
                state.closed = true;
                state.changed()
            };
            wake(woken);
        }
        Ok(())
    }
}

/// Connects `memory://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryConnector;

#[async_trait]
impl Connector for MemoryConnector {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(MemoryBroker::with_config(MemoryConfig::from_url(url)?)))
    }
}

/// Registers the `memory://` scheme in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(MemoryConnector));
}
