//! The Kafka broker: a shared idempotent producer, an admin client for
//! topics, and a consumer per subscription.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use mq_core::backend::{Charset, NameLimits};

use crate::hand_back::Closing;
use mq_core::{
    Broker, BrokerUrl, Capabilities, Connector, Consumer, Error, Health, Lag, Producer, ProducerOptions,
    Registry, Result, Subscription,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaConfig;
use crate::consumer::KafkaConsumer;
use crate::error::map;
use crate::producer::KafkaProducer;
use crate::transaction::KafkaTransactionalProducer;

/// A Kafka cluster.
///
/// A topic is a Kafka topic (created with `partitions` partitions when
/// missing); the message key picks the partition, so one key's messages stay
/// in order. A group is a consumer group. Requeued copies go to the group's
/// retry topic `{topic}.{group}.retry` (so they reach only that group); dead
/// letters to `{topic}.dlq`.
///
/// ```no_run
/// # async fn run() -> mq_core::Result<()> {
/// let mut registry = mq_core::Registry::new();
/// mq_kafka::register(&mut registry);
/// let broker = registry.connect("kafka://127.0.0.1:9092?partitions=6").await?;
/// assert_eq!(broker.name(), "kafka");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct KafkaBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    pub(crate) producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    created: Mutex<HashSet<String>>,
    closed: AtomicBool,
    /// Consumers closing, by group id: new members wait for them.
    pub(crate) closing: Closing,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The offsets `group` of `topic` is behind (see [`KafkaBroker::lag`]).
fn group_lag(inner: &Inner, topic: &str, group: &str) -> Result<u64> {
    let what = format!("lag of group `{group}` of `{topic}`");
    let mut client = inner.config.client();
    client
        .set("group.id", inner.config.group_id.of(topic, group))
        .set("enable.auto.commit", "false");
    let reader: BaseConsumer = client.create().map_err(|e| map(e, &what, inner.endpoint()))?;
    let mut behind = 0u64;
    for name in [topic.to_string(), crate::consumer::retry_topic(topic, group)] {
        let metadata = reader
            .fetch_metadata(Some(&name), HEALTH_TIMEOUT)
            .map_err(|e| map(e, &what, inner.endpoint()))?;
        let Some(t) = metadata.topics().first().filter(|t| t.error().is_none()) else {
            continue;
        };
        let mut partitions = TopicPartitionList::new();
        for p in t.partitions() {
            partitions.add_partition(&name, p.id());
        }
        let committed = reader
            .committed_offsets(partitions, HEALTH_TIMEOUT)
            .map_err(|e| map(e, &what, inner.endpoint()))?;
        for e in committed.elements() {
            let (low, high) = reader
                .fetch_watermarks(&name, e.partition(), HEALTH_TIMEOUT)
                .map_err(|e| map(e, &what, inner.endpoint()))?;
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            behind = behind.saturating_add(u64::try_from(high.saturating_sub(from)).unwrap_or(0));
        }
    }
    Ok(behind)
}

/// How long a health probe waits for the cluster's metadata.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting waits for the cluster's metadata.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaBroker {
    /// Connects: creates the clients and fetches the cluster's metadata.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a librdkafka property it does not know
    /// (the message names it); [`Error::Connection`] when no bootstrap server
    /// answers within 10 s.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let endpoint = config.bootstrap_servers.clone();
        let producer: FutureProducer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| map(e, "create the producer", &endpoint))?;
        let admin: AdminClient<DefaultClientContext> = config
            .client()
            .create()
            .map_err(|e| map(e, "create the admin client", &endpoint))?;
        let probe = producer.clone();
        let metadata =
            tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, CONNECT_TIMEOUT))
                .await
                .map_err(|e| Error::backend("kafka", "fetch metadata", e.to_string()))?;
        if let Err(e) = metadata {
            return Err(Error::Connection {
                backend: "kafka",
                endpoint,
                reason: format!("no bootstrap server answered within {CONNECT_TIMEOUT:?}: {e}"),
                source: Some(Box::new(e)),
            });
        }
        Ok(KafkaBroker {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                created: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
                closing: Closing::default(),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// A transactional producer with `transactional_id`: its `send_batch` is
    /// atomic, and [`KafkaTransactionalProducer::begin`] opens transactions
    /// spanning several sends and topics.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after `close`; the cluster's error when it does not
    /// support transactions or the id is fenced.
    pub async fn transactional_producer(&self, transactional_id: &str) -> Result<KafkaTransactionalProducer> {
        KafkaTransactionalProducer::new(self.inner.clone(), transactional_id).await
    }

    /// A consumer for a consume-transform-produce pipeline: its offsets are
    /// committed only by the transactions that consume its deliveries
    /// ([`KafkaTransaction::consume`](crate::KafkaTransaction::consume)),
    /// never by the consumer itself (no auto-commit, nothing on revoke or
    /// close), so the group's position is always one a transaction
    /// committed along with its output.
    ///
    /// Deliveries acked, requeued or dead-lettered outside a transaction
    /// are committed by the next transaction that consumes a later delivery
    /// of their partition. Closing does not hand unacked deliveries back:
    /// they are read again from the committed position.
    ///
    /// # Errors
    ///
    /// As [`Broker::subscribe`].
    pub async fn subscribe_transactional(&self, subscription: Subscription) -> Result<KafkaConsumer> {
        self.inner.check_open()?;
        LIMITS.check_subscription("kafka", &subscription)?;
        KafkaConsumer::start(self.inner.clone(), subscription, true).await
    }
}

/// Kafka's limits on names, checked before the network: a topic name is at
/// most 249 characters of `[a-zA-Z0-9._-]`, and the group's retry topic
/// (`{topic}.{group}.retry`) is a topic name too.
pub(crate) const LIMITS: NameLimits =
    NameLimits::new(249, 249 - ".".len() - ".retry".len(), usize::MAX, usize::MAX).with_charset(Charset {
        describe: "ASCII letters, digits, `.`, `_` and `-`",
        allowed: legal_in_topic,
    });

fn legal_in_topic(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl Inner {
    pub(crate) fn endpoint(&self) -> &str {
        &self.config.bootstrap_servers
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed("kafka broker"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Creates `topic` if missing (once per broker object): through the
    /// admin API, or with `create_topics=false` by asking for its metadata,
    /// which creates it where the cluster auto-creates topics.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self
            .created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
        {
            return Ok(());
        }
        if !self.config.create_topics {
            let producer = self.producer.clone();
            let name = topic.to_string();
            let exists = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&name), CONNECT_TIMEOUT)
                    .map(|m| m.topics().iter().any(|t| t.error().is_none()))
            })
            .await
            .map_err(|e| Error::backend("kafka", "fetch metadata", e.to_string()))?
            .map_err(|e| map(e, &format!("metadata of `{topic}`"), self.endpoint()))?;
            if exists {
                self.created
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(topic.to_string());
            }
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| map(e, &format!("create topic `{topic}`"), self.endpoint()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::backend(
                        "kafka",
                        format!("create topic `{name}`"),
                        code.to_string(),
                    ));
                }
            }
        }
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_string());
        Ok(())
    }
}

/// What the Kafka backend guarantees.
pub(crate) fn capabilities(max_message_bytes: usize) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.ordering_per_key = true;
    caps.persistence = true;
    caps.delayed_requeue = true;
    caps.consumer_groups = true;
    caps.replay_from_earliest = true;
    // Kafka does not take back one message on a timer.
    caps.ack_timeout_redelivery = false;
    caps.dead_letter = true;
    // Through `KafkaBroker::transactional_producer`.
    caps.transactions = true;
    caps.max_message_bytes = Some(max_message_bytes);
    caps
}

#[async_trait]
impl Broker for KafkaBroker {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.inner.config.max_message_bytes())
    }

    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        self.inner.check_open()?;
        Ok(Box::new(KafkaProducer::new(self.inner.clone(), options)))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>> {
        self.inner.check_open()?;
        LIMITS.check_subscription("kafka", &subscription)?;
        Ok(Box::new(
            KafkaConsumer::start(self.inner.clone(), subscription, false).await?,
        ))
    }

    /// A metadata request through the producer's client (on a blocking
    /// thread), bounded by 10 s.
    async fn health(&self) -> Result<Health> {
        self.inner.check_open()?;
        let inner = self.inner.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            inner
                .producer
                .client()
                .fetch_metadata(None, HEALTH_TIMEOUT)
                .map(|_| ())
                .map_err(|e| map(e, "health probe (metadata)", inner.endpoint()))
        })
        .await
        .map_err(|e| Error::backend("kafka", "health probe", e.to_string()))??;
        Ok(Health::new("kafka", self.inner.endpoint(), started.elapsed()))
    }

    /// High watermark minus the group's committed offset, per partition of
    /// the topic and of the group's retry topic (from the low watermark
    /// where the group committed nothing), read by a client of the group
    /// that does not join it, on a blocking thread.
    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        self.inner.check_open()?;
        LIMITS.check_subscription("kafka", &Subscription::new(topic, group))?;
        let inner = self.inner.clone();
        let (topic, group) = (topic.to_string(), group.to_string());
        tokio::task::spawn_blocking(move || {
            let behind = group_lag(&inner, &topic, &group)?;
            Ok(Lag::new("kafka", topic, group, behind, None))
        })
        .await
        .map_err(|e| Error::backend("kafka", "lag", e.to_string()))?
    }

    async fn close(&self) -> Result<()> {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            let producer = self.inner.producer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                use rdkafka::producer::Producer as _;
                producer.flush(Duration::from_secs(10))
            })
            .await;
        }
        Ok(())
    }
}

/// Connects `kafka://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct KafkaConnector;

#[async_trait]
impl Connector for KafkaConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["kafka"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(KafkaBroker::connect(KafkaConfig::from_url(url)?).await?))
    }
}

/// Registers `kafka://` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(KafkaConnector));
}
