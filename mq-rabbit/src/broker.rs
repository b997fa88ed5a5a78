//! The RabbitMQ broker: one connection (re-established when lost), a
//! control channel for topology and requeue copies, channels per producer
//! and per consumer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use mq_core::backend::NameLimits;
use mq_core::retry::{ExponentialBackoff, RetryPolicy};
use mq_core::{
    Broker, BrokerUrl, Capabilities, Connector, Consumer, Error, Health, Lag, Producer, ProducerOptions,
    Registry, Result, Subscription,
};
use tokio::time::Instant;

use crate::consumer::RabbitConsumer;
use crate::error::{is_transient, map};
use crate::producer::RabbitProducer;
use crate::{RabbitConfig, RabbitOptions};

/// A RabbitMQ broker.
///
/// A topic is a durable exchange (type `topic` by default) named after it;
/// messages are routed with their key (or the topic when they have none). A
/// group is a durable queue `{topic}.{group}` bound to it with `#`, so every
/// group gets every message and the group's consumers compete for them.
/// With `exchange_type=fanout` the exchange ignores routing keys, the
/// cheapest route for the broker; with `exchange_type=direct` queues are
/// bound, and messages routed, with the topic's name (the key is not used to
/// route). With `topology=queue` a topic is one durable queue named after
/// it, published to through the default exchange (no exchange to route
/// through, the broker's cheapest path): every subscription of the topic
/// reads that queue whatever its group, so groups do not each get every
/// message (the capabilities say so). Publisher confirms are always on;
/// prefetch is always set.
///
/// ```no_run
/// # async fn run() -> mq_core::Result<()> {
/// let mut registry = mq_core::Registry::new();
/// mq_rabbit::register(&mut registry);
/// let broker = registry.connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// assert_eq!(broker.name(), "rabbitmq");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RabbitBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RabbitConfig,
    pub(crate) endpoint: String,
    conn: tokio::sync::Mutex<Option<(u64, Arc<Connection>)>>,
    generation: AtomicU64,
    control: tokio::sync::Mutex<Option<(u64, Channel)>>,
    /// Exchanges and queues declared on the current connection.
    declared: Mutex<HashSet<(u64, String)>>,
    retry: ExponentialBackoff,
    closed: AtomicBool,
    /// The node (index into the config's nodes) a new connection tries first.
    next_node: AtomicUsize,
    /// `amqp://host:port/vhost` of the node last connected to.
    connected_node: Mutex<String>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RabbitBroker {
    /// Connects, trying again (within the configured retries) while the
    /// server is unreachable.
    ///
    /// # Errors
    ///
    /// [`Error::Auth`] for refused credentials; [`Error::Connection`] when
    /// the server cannot be reached in time; [`Error::Unsupported`] for
    /// `amqps://` without the `tls` feature.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        if config.tls && !cfg!(feature = "tls") {
            return Err(Error::Unsupported {
                backend: "rabbitmq",
                feature: "amqps:// (TLS): enable the `tls` feature of mq-rabbit".into(),
            });
        }
        let retries = config.options.retries;
        let broker = RabbitBroker {
            inner: Arc::new(Inner {
                endpoint: config.endpoint(),
                config,
                conn: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                control: tokio::sync::Mutex::new(None),
                declared: Mutex::new(HashSet::new()),
                retry: ExponentialBackoff::new(Duration::from_millis(100))
                    .max_delay(Duration::from_secs(2))
                    .jitter(0.2)
                    .max_attempts(retries.saturating_add(1)),
                closed: AtomicBool::new(false),
                next_node: AtomicUsize::new(0),
                connected_node: Mutex::new(String::new()),
            }),
        };
        broker.inner.connection().await?;
        Ok(broker)
    }

    /// The settings.
    pub fn config(&self) -> &RabbitConfig {
        &self.inner.config
    }

    /// How many connections this broker has made: 1 until a lost connection
    /// is replaced (for monitoring reconnects).
    pub fn connection_generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The current lapin connection, reconnecting if needed: an escape hatch
    /// for what mq does not offer.
    ///
    /// # Errors
    ///
    /// As [`RabbitBroker::connect`].
    pub async fn connection(&self) -> Result<Arc<Connection>> {
        Ok(self.inner.connection().await?.1)
    }

    /// `amqp://host:port/vhost` of the node the current (or last)
    /// connection went to: with several nodes, the one that answered.
    pub fn connected_node(&self) -> String {
        self.inner
            .connected_node
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Runs one try of `op` within a bound (twice the connect timeout, plus
    /// 5 s): on a connection that died abruptly a lapin reply (a confirm,
    /// an RPC's answer) may never come. Past the bound it is a lost
    /// connection, so the caller tries again on a new one.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let bound = self.config.options.connect_timeout() * 2 + Duration::from_secs(5);
        tokio::time::timeout(bound, op).await.unwrap_or_else(|_| {
            Err(Error::Connection {
                backend: "rabbitmq",
                endpoint: self.endpoint.clone(),
                reason: format!("{what}: no reply within {bound:?}"),
                source: None,
            })
        })
    }

    /// How many connections were made so far (the current one's number).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::closed("rabbitmq broker"))
        } else {
            Ok(())
        }
    }

    /// The live connection and its generation; connects anew (with the retry
    /// policy) when there is none or it was lost.
    pub(crate) async fn connection(&self) -> Result<(u64, Arc<Connection>)> {
        self.check_open()?;
        let mut conn = self.conn.lock().await;
        if let Some((generation, c)) = conn.as_ref()
            && c.status().connected()
        {
            return Ok((*generation, c.clone()));
        }
        // `connect_timeout` bounds the whole of it, every try included.
        let bound = self.config.options.connect_timeout();
        let started = Instant::now();
        let deadline = started + bound;
        let mut attempt = 0;
        let nodes = self.config.nodes();
        loop {
            attempt += 1;
            // One pass over the nodes, from the one after the node last
            // connected to (the first node at first).
            let mut err = None;
            for step in 0..nodes.len() {
                let node = (self.next_node.load(Ordering::Acquire) + step) % nodes.len();
                let props = ConnectionProperties::default()
                    .with_connection_name(self.config.options.connection_name.as_str().into());
                let left = deadline.saturating_duration_since(Instant::now());
                // A node that does not answer leaves time for the others.
                let each = if nodes.len() > 1 {
                    left.min(bound / 2)
                } else {
                    left
                };
                let uri = self.config.node_uri(&nodes[node]);
                let result = tokio::time::timeout(each, Connection::connect(&uri, props)).await;
                let endpoint = self.config.node_endpoint(&nodes[node]);
                let e = match result {
                    Ok(Ok(c)) => {
                        let c = Arc::new(c);
                        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                        if generation > 1 {
                            tracing::info!(endpoint = %endpoint, generation, "reconnected to RabbitMQ");
                        }
                        self.next_node.store((node + 1) % nodes.len(), Ordering::Release);
                        *self.connected_node.lock().unwrap_or_else(PoisonError::into_inner) = endpoint;
                        *conn = Some((generation, c.clone()));
                        return Ok((generation, c));
                    }
                    Ok(Err(e)) => map(e, "connect", &endpoint),
                    Err(_) => Error::Connection {
                        backend: "rabbitmq",
                        endpoint: endpoint.clone(),
                        reason: format!(
                            "no connection within {:?} (connect_timeout_ms; tries: {attempt})",
                            if nodes.len() > 1 { each } else { bound }
                        ),
                        source: None,
                    },
                };
                // Only a failure to reach the server may heal: refused
                // credentials, a missing virtual host and the like do not.
                if !matches!(e, Error::Connection { .. }) {
                    return Err(e);
                }
                if nodes.len() > 1 {
                    tracing::warn!(endpoint = %endpoint, error = %e, "RabbitMQ node unreachable; trying the next");
                }
                err = Some(e);
                if Instant::now() >= deadline {
                    break;
                }
            }
            let err = err.unwrap_or_else(|| Error::Connection {
                backend: "rabbitmq",
                endpoint: self.endpoint.clone(),
                reason: format!("no connection within {bound:?} (connect_timeout_ms; tries: {attempt})"),
                source: None,
            });
            match self.retry.next_delay(attempt, started.elapsed(), &err) {
                Some(delay) if !self.is_closed() && Instant::now() + delay < deadline => {
                    tracing::warn!(endpoint = %self.endpoint, error = %err, attempt, "connecting to RabbitMQ failed; trying again");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(err),
            }
        }
    }

    /// A new channel with publisher confirms on.
    pub(crate) async fn confirm_channel(&self) -> Result<(u64, Channel)> {
        let (generation, conn) = self.connection().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| map(e, "open a channel", &self.endpoint))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| map(e, "enable publisher confirms", &self.endpoint))?;
        Ok((generation, channel))
    }

    /// The confirm channel kept in `slot` while it is open AND on the
    /// current connection, else a new one, kept there. After a connection
    /// died abruptly its channels were seen to keep reporting themselves
    /// open: the generation is what tells.
    pub(crate) async fn reuse_or_open(&self, slot: &mut Option<(u64, Channel)>) -> Result<(u64, Channel)> {
        if let Some((generation, channel)) = slot.as_ref()
            && channel.status().connected()
            && *generation == self.generation()
        {
            return Ok((*generation, channel.clone()));
        }
        let fresh = self.confirm_channel().await?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// The control channel (topology, requeue copies, dead letters).
    pub(crate) async fn control(&self) -> Result<(u64, Channel)> {
        let mut control = self.control.lock().await;
        self.reuse_or_open(&mut control).await
    }

    fn is_declared(&self, generation: u64, what: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(generation, what.to_string()))
    }

    fn remember(&self, generation: u64, what: String) {
        self.declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((generation, what));
    }

    /// `topology=queue`: a topic is one queue, no exchange.
    pub(crate) fn queue_topology(&self) -> bool {
        self.config.options.queue_topology()
    }

    /// The queue a group of `topic` reads: `{topic}.{group}`, or the topic's
    /// own queue with `topology=queue`.
    pub(crate) fn group_queue(&self, topic: &str, group: &str) -> String {
        if self.queue_topology() {
            topic.to_string()
        } else {
            format!("{topic}.{group}")
        }
    }

    /// The exchange and routing key a message with `key` sent to `topic`
    /// is published with: the topic's exchange and [`Inner::routing_key`],
    /// or, with `topology=queue`, the default exchange and the topic's queue.
    pub(crate) fn publish_target<'a>(&self, topic: &'a str, key: Option<&'a str>) -> (&'a str, &'a str) {
        if self.queue_topology() {
            ("", topic)
        } else {
            (topic, self.routing_key(topic, key))
        }
    }

    /// Declares what `topic` is published to (idempotent; once per
    /// connection): its exchange, or with `topology=queue` its queue.
    pub(crate) async fn declare_topic(&self, topic: &str) -> Result<()> {
        if self.queue_topology() {
            return self.declare_queue(topic, "", self.group_queue_arguments()).await;
        }
        let (generation, channel) = self.control().await?;
        let what = format!("exchange {topic}");
        if self.is_declared(generation, &what) {
            return Ok(());
        }
        let kind = match self.config.options.exchange_type.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            _ => ExchangeKind::Topic,
        };
        let options = ExchangeDeclareOptions {
            durable: self.config.options.durable,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(topic.into(), kind, options, FieldTable::default())
            .await
            .map_err(|e| {
                named(
                    map(e, &format!("declare exchange `{topic}`"), &self.endpoint),
                    "exchange",
                    topic,
                )
            })?;
        self.remember(generation, what);
        Ok(())
    }

    /// The routing key of a message with `key` sent to `topic`'s exchange: the key on
    /// a topic exchange (when it fits an AMQP short string), else the topic.
    /// A direct exchange routes with the topic only, as its queues are bound
    /// with it; a fanout exchange ignores the routing key.
    fn routing_key<'a>(&self, topic: &'a str, key: Option<&'a str>) -> &'a str {
        match key {
            Some(key)
                if self.config.options.exchange_type == "topic" && !key.is_empty() && key.len() <= 255 =>
            {
                key
            }
            _ => topic,
        }
    }

    /// The key a queue is bound to `exchange` with: `#` (every message) on a
    /// topic exchange, the exchange's (topic's) name on a direct one, where
    /// [`Inner::routing_key`] routes with it; a fanout exchange ignores it.
    fn binding_key<'a>(&self, exchange: &'a str) -> &'a str {
        if self.config.options.exchange_type == "direct" {
            exchange
        } else {
            "#"
        }
    }

    /// Declares a queue with `arguments` and binds it to `exchange` with
    /// [`Inner::binding_key`] (no binding when `exchange` is empty).
    pub(crate) async fn declare_queue(
        &self,
        queue: &str,
        exchange: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let (generation, channel) = self.control().await?;
        let what = format!("queue {queue}");
        if self.is_declared(generation, &what) {
            return Ok(());
        }
        let options = QueueDeclareOptions {
            durable: self.config.options.durable,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.into(), options, arguments)
            .await
            .map_err(|e| {
                named(
                    map(e, &format!("declare queue `{queue}`"), &self.endpoint),
                    "queue",
                    queue,
                )
            })?;
        if !exchange.is_empty() {
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    self.binding_key(exchange).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    map(
                        e,
                        &format!("bind queue `{queue}` to `{exchange}`"),
                        &self.endpoint,
                    )
                })?;
        }
        self.remember(generation, what);
        Ok(())
    }

    /// The arguments of a group queue.
    pub(crate) fn group_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(self.config.options.queue_type.as_str())),
        );
        args
    }

    /// How long to wait before trying again after `err` on the `attempt`-th
    /// try, or `None`: give up (not a lost connection, broker closed, or the
    /// retry policy says stop).
    pub(crate) fn retry_delay(&self, attempt: u32, started: Instant, err: &Error) -> Option<Duration> {
        if !matches!(err, Error::Connection { .. }) || self.is_closed() {
            return None;
        }
        let delay = self.retry.next_delay(attempt, started.elapsed(), err)?;
        tracing::warn!(endpoint = %self.endpoint, error = %err, attempt, "RabbitMQ operation failed; trying again");
        Some(delay)
    }

    /// Runs `op` again while it fails because the connection went away.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(err) => match self.retry_delay(attempt, started, &err) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(err),
                },
            }
        }
    }
}

/// AMQP's limits on names (short strings of at most 255 bytes), checked
/// before the network: lapin panics on longer ones. A group's queue is
/// `{topic}.{group}`, and its delay queues add `.delay.` and up to ten
/// digits.
pub(crate) const LIMITS: NameLimits =
    NameLimits::new(255, 255 - ".".len() - ".delay.4294967295".len(), 255, 255);

/// Adds the name of the exchange or queue to a broker error (the server's
/// text already has it for PRECONDITION_FAILED; make sure of it).
fn named(err: Error, what: &str, name: &str) -> Error {
    match err {
        Error::Backend {
            backend,
            operation,
            reason,
            retryable,
            source,
        } if !reason.contains(name) => Error::Backend {
            backend,
            operation,
            reason: format!("{what} `{name}`: {reason}"),
            retryable,
            source,
        },
        other => other,
    }
}

/// Whether a lapin error means the channel or connection is gone.
pub(crate) fn lost(err: &lapin::Error) -> bool {
    is_transient(err)
}

/// What the RabbitMQ backend guarantees.
pub(crate) fn capabilities(options: &RabbitOptions) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.ordering_per_key = true;
    caps.persistence = options.durable;
    caps.delayed_requeue = true;
    // With `topology=queue` every group of a topic reads the same queue.
    caps.consumer_groups = !options.queue_topology();
    // A queue only holds what was routed to it after it was bound.
    caps.replay_from_earliest = false;
    // RabbitMQ redelivers when the channel closes, not on a per-message timer.
    caps.ack_timeout_redelivery = false;
    caps.dead_letter = true;
    caps.max_message_bytes = Some(options.max_message_bytes);
    caps
}

#[async_trait]
impl Broker for RabbitBroker {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(&self.inner.config.options)
    }

    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        self.inner.check_open()?;
        Ok(Box::new(RabbitProducer::new(self.inner.clone(), options)))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>> {
        self.inner.check_open()?;
        LIMITS.check_subscription("rabbitmq", &subscription)?;
        Ok(Box::new(
            RabbitConsumer::start(self.inner.clone(), subscription).await?,
        ))
    }

    /// A passive declaration of `amq.topic` (present in every virtual host)
    /// on the control channel, reconnecting first if the connection was
    /// lost (within `connect_timeout_ms`).
    async fn health(&self) -> Result<Health> {
        self.inner.check_open()?;
        let started = Instant::now();
        let (_, channel) = self.inner.control().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                "amq.topic".into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| map(e, "health probe", &self.inner.endpoint))?;
        // The node that answered (one of several, for a cluster).
        Ok(Health::new("rabbitmq", self.connected_node(), started.elapsed()))
    }

    /// A passive declaration of the group's queue (`{topic}.{group}`, or the
    /// topic's with `topology=queue`): its ready messages (AMQP does not
    /// count the unacked ones).
    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        self.inner.check_open()?;
        LIMITS.check_subscription("rabbitmq", &Subscription::new(topic, group))?;
        let queue = self.inner.group_queue(topic, group);
        let (_, channel) = self.inner.control().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await
            .map_err(|e| map(e, &format!("lag of queue `{queue}`"), &self.inner.endpoint))?;
        Ok(Lag::new(
            "rabbitmq",
            topic,
            group,
            u64::from(declared.message_count()),
            None,
        ))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Bounded: a connection whose server stopped answering (a node
        // going away) never sends its close-ok, and a reconnect in progress
        // holds the lock for up to the connect timeout.
        let bound = self.inner.config.options.connect_timeout() + CLOSING_CHANNELS;
        let conn = match tokio::time::timeout(bound, self.inner.conn.lock()).await {
            Ok(mut slot) => slot.take(),
            Err(_) => {
                tracing::warn!(endpoint = %self.inner.endpoint, "closing: the connection is busy reconnecting; left to drop");
                return Ok(());
            }
        };
        if let Some((_, conn)) = conn {
            match tokio::time::timeout(bound, close_connection(&conn, &self.inner.endpoint)).await {
                Ok(closed) => closed?,
                Err(_) => {
                    tracing::warn!(endpoint = %self.inner.endpoint, after = ?bound, "closing: the server did not answer the connection close; dropped it");
                }
            }
        }
        Ok(())
    }
}

/// How long closing waits for channels that are closing already (a
/// consumer's just closed, a dropped producer's).
const CLOSING_CHANNELS: Duration = Duration::from_secs(2);

/// Closes `conn`. lapin refuses to close a connection while one of its
/// channels is itself closing (`InvalidChannelState(Closing)`): that is
/// tried again, every 10 ms, until those channels are closed or
/// [`CLOSING_CHANNELS`] passed.
async fn close_connection(conn: &Connection, endpoint: &str) -> Result<()> {
    let deadline = Instant::now() + CLOSING_CHANNELS;
    loop {
        if !conn.status().connected() {
            return Ok(());
        }
        match conn.close(200, "mq: broker closed".into()).await {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closing, _)
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(map(e, "close the connection", endpoint)),
        }
    }
}

/// Connects `amqp://` and `amqps://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RabbitConnector;

#[async_trait]
impl Connector for RabbitConnector {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["amqp", "amqps"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(
            RabbitBroker::connect(RabbitConfig::from_url(url)?).await?,
        ))
    }
}

/// Registers `amqp://` and `amqps://` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(RabbitConnector));
}
