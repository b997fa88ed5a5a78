//! The Redis Streams broker: one shared connection for commands, one
//! dedicated connection per consumer for blocking reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mq_core::retry::{ExponentialBackoff, RetryPolicy};
use mq_core::{
    Broker, BrokerUrl, Capabilities, Connector, Consumer, Error, Health, Lag, Producer, ProducerOptions,
    Registry, Result, StartPosition, Subscription,
};
use redis::aio::ConnectionManagerConfig;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError};
use tokio::sync::watch;

use crate::RedisConfig;
use crate::conn::{ReaderConnection, RedisConnection, Slot};
use crate::consumer::RedisConsumer;
use crate::error::{is_transient, map};
use crate::producer::RedisProducer;

/// A Redis Streams broker.
///
/// A topic is a stream (`{prefix}{topic}`), a group a consumer group. Each
/// group also has a retry stream (`{prefix}{topic}:retry:{group}`) that
/// carries its requeued messages, so a requeue reaches only the group that
/// asked for it, and a sorted set of delayed requeues
/// (`{prefix}{topic}:delayed:{group}`), kept in Redis so they survive a
/// restart of the client. On a Redis Cluster the topic is a hash tag
/// (`{prefix}{{topic}}`, `{prefix}{{topic}}:retry:{group}`, ...), so all of
/// a topic's keys share one slot.
///
/// ```no_run
/// # async fn run() -> mq_core::Result<()> {
/// let mut registry = mq_core::Registry::new();
/// mq_redis::register(&mut registry);
/// let broker = registry.connect("redis://127.0.0.1:6379?max_len=100000").await?;
/// assert_eq!(broker.name(), "redis");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    /// Where new connections come from (blocking reads, durable writes).
    clients: Clients,
    /// The shared connection.
    pub(crate) conn: Slot,
    pub(crate) endpoint: String,
    /// How commands are retried after a lost connection.
    retry: ExponentialBackoff,
    closed: AtomicBool,
    pub(crate) close_tx: watch::Sender<bool>,
}

/// Makes new connections: for blocking reads (no response timeout), and
/// for writes that `WAIT` for replicas (a `WAIT` blocks its connection on
/// the server until it returns, so it never runs on the shared one).
#[allow(clippy::large_enum_variant)] // one per broker
enum Clients {
    Single {
        client: redis::Client,
        manager: ConnectionManagerConfig,
    },
    Cluster {
        shared: ClusterClient,
        /// Without response timeout.
        readers: ClusterClient,
    },
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects, trying again (within the configured retries and timeouts)
    /// while the server is unreachable.
    ///
    /// # Errors
    ///
    /// [`Error::Auth`] for refused credentials; [`Error::Connection`] when
    /// the server cannot be reached in time; [`Error::Unsupported`] for
    /// `rediss://` without the `tls` feature.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let endpoint = config.endpoint();
        if config.tls && !cfg!(feature = "tls") {
            return Err(Error::Unsupported {
                backend: "redis",
                feature: "rediss:// (TLS): enable the `tls` feature of mq-redis".into(),
            });
        }
        let opts = &config.options;
        // Each try, and the retries between them, are bounded as a whole.
        let bound =
            opts.connect_timeout() * (opts.retries + 1) + Duration::from_secs(u64::from(opts.retries));
        let clients = Clients::new(&config).map_err(|e| map(e, "open client", &endpoint))?;
        let conn = match tokio::time::timeout(bound, clients.open()).await {
            Ok(Ok(conn)) => {
                tracing::debug!(endpoint = %endpoint, config = ?config, "connected to Redis");
                conn
            }
            Ok(Err(e)) => {
                let e = map(e, "connect", &endpoint);
                tracing::debug!(endpoint = %endpoint, error = %e, "connecting to Redis failed");
                return Err(e);
            }
            Err(_) => {
                return Err(Error::Connection {
                    backend: "redis",
                    endpoint,
                    reason: format!("no connection within {bound:?}"),
                    source: None,
                });
            }
        };
        let (close_tx, _) = watch::channel(false);
        let retries = opts.retries;
        let broker = RedisBroker {
            inner: Arc::new(Inner {
                config,
                clients,
                conn: Slot::new(conn),
                endpoint,
                retry: ExponentialBackoff::new(Duration::from_millis(50))
                    .max_delay(Duration::from_secs(1))
                    .jitter(0.2)
                    .max_attempts(retries.saturating_add(1)),
                closed: AtomicBool::new(false),
                close_tx,
            }),
        };
        // Fail now, not on first use, when the credentials or the server are wrong.
        let pong: String = broker.inner.query("PING", &redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(Error::backend(
                "redis",
                "PING",
                format!("unexpected reply `{pong}`"),
            ));
        }
        Ok(broker)
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The shared multiplexed connection (to one server or to a cluster),
    /// for commands mq does not offer (an escape hatch: keys mq uses are
    /// described on [`RedisBroker`]).
    pub fn connection(&self) -> RedisConnection {
        self.inner.conn.get().1
    }
}

impl Clients {
    /// The clients for `config`: one server's, through the connection
    /// manager (it reconnects, and retries the first connection too); or a
    /// Redis Cluster's, which read the slot map from the first seed node
    /// that answers and follow MOVED and ASK.
    fn new(config: &RedisConfig) -> redis::RedisResult<Clients> {
        let opts = &config.options;
        if !config.cluster {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(opts.connect_timeout()))
                .set_response_timeout(Some(opts.response_timeout()))
                .set_number_of_retries(opts.retries as usize)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1));
            let client = redis::Client::open(config.client_url())?;
            return Ok(Clients::Single { client, manager });
        }
        let cluster = |response_timeout: Option<Duration>| {
            let mut builder = ClusterClientBuilder::new(config.node_urls())
                .retries(opts.retries)
                .min_retry_wait(50)
                .max_retry_wait(1000)
                .connection_timeout(opts.connect_timeout());
            if let Some(timeout) = response_timeout {
                builder = builder.response_timeout(timeout);
            }
            builder.build()
        };
        Ok(Clients::Cluster {
            shared: cluster(Some(opts.response_timeout()))?,
            readers: cluster(None)?,
        })
    }

    /// A new connection of the shared kind.
    async fn open(&self) -> redis::RedisResult<RedisConnection> {
        match self {
            Clients::Single { client, manager } => client
                .get_connection_manager_with_config(manager.clone())
                .await
                .map(RedisConnection::Single),
            Clients::Cluster { shared, .. } => {
                shared.get_async_connection().await.map(RedisConnection::Cluster)
            }
        }
    }
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::closed("redis broker"))
        } else {
            Ok(())
        }
    }

    /// The topic's stream; on a cluster the topic is the key's hash tag.
    pub(crate) fn stream_key(&self, topic: &str) -> String {
        if self.config.cluster {
            format!("{}{{{topic}}}", self.config.options.prefix)
        } else {
            format!("{}{topic}", self.config.options.prefix)
        }
    }

    pub(crate) fn retry_key(&self, topic: &str, group: &str) -> String {
        format!("{}:retry:{group}", self.stream_key(topic))
    }

    pub(crate) fn delayed_key(&self, topic: &str, group: &str) -> String {
        format!("{}:delayed:{group}", self.stream_key(topic))
    }

    /// On a cluster, a topic name is a hash tag: no `{` or `}` in it.
    pub(crate) fn check_topic(&self, topic: &str) -> Result<()> {
        if self.config.cluster && topic.contains(['{', '}']) {
            return Err(Error::InvalidOption {
                backend: "redis",
                option: "topic".into(),
                reason: format!(
                    "`{topic}`: on a Redis Cluster a topic is its keys' hash tag and cannot contain `{{` or `}}`"
                ),
            });
        }
        Ok(())
    }

    /// `WAIT n timeout` after a write, when `wait_replicas` asks for it
    /// (in the same pipeline, so it reaches the node that took the write).
    pub(crate) fn add_wait(&self, pipe: &mut redis::Pipeline) -> bool {
        self.wait_cmd().map(|cmd| pipe.add_command(cmd)).is_some()
    }

    /// `WAIT n timeout`, when `wait_replicas` asks for it.
    fn wait_cmd(&self) -> Option<redis::Cmd> {
        let (replicas, timeout_ms) = self.config.wait_replicas()?;
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        Some(cmd)
    }

    /// `WAIT`s (when `wait_replicas` asks for it) on the node owning `key`
    /// until its replicas have the writes made so far.
    /// It must run on the connection that made the writes.
    pub(crate) async fn wait_for_replicas(&self, conn: &Slot, what: &str, key: &str) -> Result<()> {
        let Some(cmd) = self.wait_cmd() else {
            return Ok(());
        };
        let acked: i64 = conn
            .get()
            .1
            .query_at(key, &cmd)
            .await
            .map_err(|e| map(e, &format!("{what}: WAIT"), &self.endpoint))?;
        self.check_replicated(what, acked)
    }

    /// Fails when `WAIT` says fewer replicas than asked have the write.
    pub(crate) fn check_replicated(&self, what: &str, replicas: i64) -> Result<()> {
        let wanted = i64::from(self.config.options.wait_replicas);
        if replicas < wanted {
            return Err(Error::Timeout {
                operation: format!(
                    "{what}: {replicas} of {wanted} replicas acknowledged within {} ms (the write is on the primary, not confirmed)",
                    self.config.options.wait_timeout_ms
                ),
                after: Duration::from_millis(self.config.options.wait_timeout_ms),
            });
        }
        Ok(())
    }

    /// Runs a command on the shared connection, trying again after a lost
    /// connection (the connection manager reconnects but does not retry).
    pub(crate) async fn query<T: FromRedisValue>(&self, what: &str, cmd: &redis::Cmd) -> Result<T> {
        self.query_on(&self.conn, what, cmd).await
    }

    /// As [`Inner::query`], on `slot`.
    pub(crate) async fn query_on<T: FromRedisValue>(
        &self,
        slot: &Slot,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        self.retrying(
            slot,
            what,
            |mut conn| async move { cmd.query_async(&mut conn).await },
        )
        .await
    }

    /// Runs a command once on the shared connection, without trying again.
    pub(crate) async fn query_once<T: FromRedisValue>(&self, what: &str, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.get().1;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| map(e, what, &self.endpoint))
    }

    /// As [`Inner::query`] for a pipeline (one round trip).
    pub(crate) async fn query_pipe<T: FromRedisValue>(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        self.query_pipe_on(&self.conn, what, pipe).await
    }

    /// As [`Inner::query_pipe`], on `slot`.
    pub(crate) async fn query_pipe_on<T: FromRedisValue>(
        &self,
        slot: &Slot,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        self.retrying(
            slot,
            what,
            |mut conn| async move { pipe.query_async(&mut conn).await },
        )
        .await
    }

    /// Runs a Lua script (EVALSHA, loading it when the server lacks it).
    pub(crate) async fn run_script<T: FromRedisValue>(
        &self,
        what: &str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.run_script_on(&self.conn, what, inv).await
    }

    /// As [`Inner::run_script`], on `slot`.
    pub(crate) async fn run_script_on<T: FromRedisValue>(
        &self,
        slot: &Slot,
        what: &str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.retrying(
            slot,
            what,
            |mut conn| async move { inv.invoke_async(&mut conn).await },
        )
        .await
    }

    /// A new connection of the shared kind (bounded by twice the connect
    /// timeout).
    async fn open_connection(&self) -> redis::RedisResult<RedisConnection> {
        let bound = self.config.options.connect_timeout() * 2;
        match tokio::time::timeout(bound, self.clients.open()).await {
            Ok(conn) => conn,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no connection within twice the connect timeout",
            ))),
        }
    }

    /// Where a producer's or consumer's writes go: the shared connection,
    /// or with `wait_replicas` a connection of its own (kept in `own`,
    /// opened on first use), as a `WAIT` holds up its connection on the
    /// server (see [`Clients`]).
    pub(crate) async fn write_slot<'a>(&'a self, own: &'a tokio::sync::OnceCell<Slot>) -> Result<&'a Slot> {
        if self.config.wait_replicas().is_none() {
            return Ok(&self.conn);
        }
        own.get_or_try_init(|| async {
            self.open_connection().await.map(Slot::new).map_err(|e| {
                map(
                    e,
                    "open a connection for writes that wait for replicas",
                    &self.endpoint,
                )
            })
        })
        .await
    }

    async fn retrying<T, F, Fut>(&self, slot: &Slot, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut(RedisConnection) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, RedisError>>,
    {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (generation, conn) = slot.get();
            let err = match call(conn).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = is_transient(&err)
                .then(|| self.retry.next_delay(attempt, started.elapsed(), &err))
                .flatten();
            match delay {
                Some(delay) => {
                    tracing::warn!(endpoint = %self.endpoint, operation = what, error = %err, attempt, "redis command failed; trying again");
                    // A cluster connection that timed out may be stuck: the
                    // next try goes through a new one.
                    if err.is_timeout() && slot.renewable() && !self.is_closed() {
                        match slot.renew(generation, self.open_connection()).await {
                            Some(Ok(())) => {
                                tracing::warn!(endpoint = %self.endpoint, "replaced a cluster connection whose command timed out");
                            }
                            Some(Err(e)) => {
                                tracing::warn!(endpoint = %self.endpoint, error = %e, "could not replace a cluster connection whose command timed out");
                            }
                            None => {}
                        }
                    }
                    tokio::time::sleep(delay).await;
                }
                None => return Err(map(err, what, &self.endpoint)),
            }
        }
    }

    /// A connection of its own, without response timeout, for blocking reads
    /// (a blocked read would stall every other command on a shared one).
    pub(crate) async fn blocking_connection(&self) -> Result<ReaderConnection> {
        let what = "open a connection for blocking reads";
        match &self.clients {
            Clients::Single { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.config.options.connect_timeout()))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(ReaderConnection::Single)
                    .map_err(|e| map(e, what, &self.endpoint))
            }
            Clients::Cluster { readers, .. } => {
                let bound = self.config.options.connect_timeout() * 2;
                match tokio::time::timeout(bound, readers.get_async_connection()).await {
                    Ok(conn) => conn
                        .map(ReaderConnection::Cluster)
                        .map_err(|e| map(e, what, &self.endpoint)),
                    Err(_) => Err(Error::Timeout {
                        operation: format!("{what} on {}", self.endpoint),
                        after: bound,
                    }),
                }
            }
        }
    }

    /// Runs a keyless command on the node that owns `key` (see
    /// [`RedisConnection::query_at`]), once.
    pub(crate) async fn query_at<T: FromRedisValue>(
        &self,
        what: &str,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let mut conn = self.conn.get().1;
        conn.query_at(key, cmd)
            .await
            .map_err(|e| map(e, what, &self.endpoint))
    }

    /// An XADD of `message` to `key` (trimmed with `MAXLEN ~` when
    /// `max_len` is set), with the attempt of a requeued copy; sized for
    /// its arguments up front.
    pub(crate) fn xadd(&self, key: &str, message: &mq_core::Message, attempt: Option<u32>) -> redis::Cmd {
        // XADD key [MAXLEN ~ n] * and up to five fields besides the headers.
        let args = 16 + 2 * message.headers.len();
        let bytes = key.len() + message.encoded_len() + 64 + 4 * message.headers.len();
        let mut cmd = redis::Cmd::with_capacity(args, bytes);
        cmd.arg("XADD").arg(key);
        if let Some(max_len) = self.config.options.max_len {
            cmd.arg("MAXLEN").arg("~").arg(max_len);
        }
        cmd.arg("*");
        crate::codec::encode_into(message, attempt, |field, value| {
            cmd.arg(field).arg(value);
        });
        cmd
    }

    /// Creates `group` on `key` (and the stream) unless it exists.
    pub(crate) async fn create_group(&self, key: &str, group: &str, start: &str) -> Result<()> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(key).arg(group).arg(start).arg("MKSTREAM");
        match self
            .query::<()>(&format!("create group `{group}` on `{key}`"), &cmd)
            .await
        {
            Ok(()) => Ok(()),
            Err(Error::Backend { reason, .. }) if reason.contains("BUSYGROUP") => Ok(()),
            Err(Error::Backend {
                operation,
                reason,
                source,
                ..
            }) => Err(Error::Backend {
                backend: "redis",
                operation,
                reason: format!("key `{key}`: {reason}"),
                retryable: false,
                source,
            }),
            Err(e) => Err(e),
        }
    }
}

/// What the Redis backend guarantees.
pub(crate) fn capabilities(max_message_bytes: usize) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.ordering_per_key = true;
    // Durable only as far as the server's own persistence (RDB/AOF) goes.
    caps.persistence = false;
    caps.delayed_requeue = true;
    caps.consumer_groups = true;
    caps.replay_from_earliest = true;
    caps.ack_timeout_redelivery = true;
    caps.dead_letter = true;
    caps.max_message_bytes = Some(max_message_bytes);
    caps
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.inner.config.options.max_message_bytes)
    }

    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        self.inner.check_open()?;
        Ok(Box::new(RedisProducer::new(self.inner.clone(), options)))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>> {
        self.inner.check_open()?;
        subscription.validate("redis")?;
        self.inner.check_topic(&subscription.topic)?;
        let inner = &self.inner;
        let start = match subscription.start {
            StartPosition::Earliest => "0",
            _ => "$",
        };
        let main = inner.stream_key(&subscription.topic);
        inner.create_group(&main, &subscription.group, start).await?;
        let retry = inner.retry_key(&subscription.topic, &subscription.group);
        inner.create_group(&retry, &subscription.group, "0").await?;
        Ok(Box::new(RedisConsumer::start(inner.clone(), subscription)))
    }

    /// A `PING` on the shared connection (reconnecting first if it was
    /// lost), bounded by the response timeout.
    async fn health(&self) -> Result<Health> {
        self.inner.check_open()?;
        let started = std::time::Instant::now();
        let _: String = self.inner.query_once("PING", &redis::cmd("PING")).await?;
        Ok(Health::new(
            "redis",
            self.inner.endpoint.clone(),
            started.elapsed(),
        ))
    }

    /// `XINFO GROUPS` of the topic's stream and the group's retry stream:
    /// the group's `lag` (entries not yet read) plus its `pending` ones.
    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        self.inner.check_open()?;
        let (mut behind, mut in_flight, mut found) = (0u64, 0u64, false);
        for key in [self.inner.stream_key(topic), self.inner.retry_key(topic, group)] {
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("GROUPS").arg(&key);
            let reply = match self
                .inner
                .query::<redis::Value>(&format!("XINFO GROUPS `{key}`"), &cmd)
                .await
            {
                Ok(reply) => reply,
                // The retry stream exists only once something was requeued.
                Err(Error::Backend { reason, .. }) if reason.contains("no such key") => continue,
                Err(e) => return Err(e),
            };
            if let Some((lag, pending)) = crate::codec::group_info(&reply, group) {
                found = true;
                behind = behind.saturating_add(lag).saturating_add(pending);
                in_flight = in_flight.saturating_add(pending);
            }
        }
        if !found {
            return Err(Error::backend(
                "redis",
                format!("lag of `{topic}`"),
                format!("no group `{group}` on the topic's stream"),
            ));
        }
        Ok(Lag::new("redis", topic, group, behind, Some(in_flight)))
    }

    async fn close(&self) -> Result<()> {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.inner.close_tx.send_replace(true);
        }
        Ok(())
    }
}

/// Connects `redis://` and `rediss://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisConnector;

#[async_trait]
impl Connector for RedisConnector {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["redis", "rediss"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(RedisBroker::connect(RedisConfig::from_url(url)?).await?))
    }
}

/// Registers `redis://` and `rediss://` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(RedisConnector));
}
