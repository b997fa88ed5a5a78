//! Settings of a Redis Streams broker, from a URL or serde.

use std::time::Duration;

use mq_core::url::HostPort;
use mq_core::{BrokerUrl, Error, Result, Secret};
use serde::Deserialize;

/// Where and how to connect, from a `redis://` or `rediss://` URL:
/// `redis://[user][:password]@host[:port][/db][?option=value...]`.
///
/// **Redis Cluster**: several hosts (`redis://h1:7000,h2:7001,h3:7002`),
/// or one seed host with `cluster=true`, connect through redis-rs's cluster
/// client (database 0 only: a cluster has no other). Every key of one topic
/// then carries the topic as a hash tag (`mq:{orders}`,
/// `mq:{orders}:retry:{group}`, ...), so a topic's streams, delayed set and
/// scripts stay on one node while topics spread over the cluster; topic
/// names may not contain `{` or `}` there. Redis replicates
/// asynchronously: set `wait_replicas=1` so a send is confirmed only once
/// a replica has it too (`WAIT`), or a primary killed right after a send
/// can lose it in the failover.
///
/// Options (also settable through [`mq_core::MqConfig`]'s `options`):
///
/// | option | meaning | default |
/// |---|---|---|
/// | `prefix` | prefix of every key mq creates | `mq:` |
/// | `max_len` | trim streams to about this many entries (`XADD MAXLEN ~`) | none |
/// | `block_ms` | longest a blocking read waits before housekeeping | 1000 |
/// | `batch` | most entries one read fetches (`XREADGROUP COUNT`) | 100 |
/// | `claim_interval_ms` | how often consumers reclaim idle entries and move due delayed ones | 250 |
/// | `max_message_bytes` | largest message accepted | 67108864 |
/// | `connect_timeout_ms` | time to connect (each try) | 5000 |
/// | `response_timeout_ms` | time for a reply, except blocking reads | 5000 |
/// | `retries` | tries again after a lost connection, per command | 5 |
/// | `cluster` | `true`: a Redis Cluster (implied by several hosts) | `false` |
/// | `wait_replicas` | a send (and a requeue or dead letter) is confirmed once this many replicas have it (`WAIT`) | 0 |
/// | `wait_timeout_ms` | longest a confirmation waits for those replicas | 2000 |
///
/// ```
/// let url: mq_core::BrokerUrl = "redis://:pw@127.0.0.1:6379/2?max_len=1000".parse()?;
/// let config = mq_redis::RedisConfig::from_url(&url)?;
/// assert_eq!(config.options.max_len, Some(1000));
/// assert_eq!(config.db, 2);
/// assert!(!format!("{config:?}").contains("pw"));
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `true` for `rediss://`.
    pub tls: bool,
    /// Host name or address (of the first node, for a cluster).
    pub host: String,
    /// Port (6379 when absent).
    pub port: u16,
    /// `true`: a Redis Cluster, reached through every node of [`Self::nodes`].
    pub cluster: bool,
    /// The URL's further hosts, each with its port: with the first
    /// ([`Self::host`], [`Self::port`]), the seed nodes of a cluster.
    pub other_nodes: Vec<HostPort>,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Database number.
    pub db: i64,
    /// Tuning options.
    pub options: RedisOptions,
}

/// The tuning options of [`RedisConfig`]; serde reads them with these
/// names, rejecting unknown ones.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key mq creates.
    pub prefix: String,
    /// Approximate stream length cap (`MAXLEN ~`); `None`: no trimming.
    pub max_len: Option<usize>,
    /// Longest a blocking read waits, in milliseconds.
    pub block_ms: u64,
    /// Most entries one read fetches.
    pub batch: usize,
    /// How often consumers reclaim idle entries and move due delayed ones, in milliseconds.
    pub claim_interval_ms: u64,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Time to connect, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time for a reply (blocking reads excepted), in milliseconds.
    pub response_timeout_ms: u64,
    /// Tries again after a lost connection, per command.
    pub retries: u32,
    /// Replicas that must have a write before it is confirmed (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// Longest a confirmation waits for [`Self::wait_replicas`], in milliseconds.
    pub wait_timeout_ms: u64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "mq:".into(),
            max_len: None,
            block_ms: 1000,
            batch: 100,
            claim_interval_ms: 250,
            max_message_bytes: 64 * 1024 * 1024,
            connect_timeout_ms: 5000,
            response_timeout_ms: 5000,
            retries: 5,
            wait_replicas: 0,
            wait_timeout_ms: 2000,
        }
    }
}

impl RedisOptions {
    /// The option names.
    pub const NAMES: &'static [&'static str] = &[
        "prefix",
        "max_len",
        "block_ms",
        "batch",
        "claim_interval_ms",
        "max_message_bytes",
        "connect_timeout_ms",
        "response_timeout_ms",
        "retries",
        "wait_replicas",
        "wait_timeout_ms",
    ];

    pub(crate) fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms.max(1))
    }

    pub(crate) fn claim_interval(&self) -> Duration {
        Duration::from_millis(self.claim_interval_ms.max(10))
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    /// The response timeout, plus the `WAIT` a write may add to its reply
    /// when `wait_replicas` is set (a timeout shorter than the `WAIT` would
    /// cut every write short while a replica is missing).
    pub(crate) fn response_timeout(&self) -> Duration {
        let wait = if self.wait_replicas > 0 {
            self.wait_timeout_ms
        } else {
            0
        };
        Duration::from_millis(self.response_timeout_ms.max(1).saturating_add(wait))
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("endpoint", &self.endpoint())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("options", &self.options)
            .finish()
    }
}

impl RedisConfig {
    /// Reads a `redis://` or `rediss://` URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for another scheme, several hosts, or a path
    /// that is not a database number; [`Error::UnknownOption`] and
    /// [`Error::InvalidOption`] for bad options.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(format!(
                    "the redis backend takes redis:// or rediss://, not {other}://"
                )));
            }
        };
        let (host, port) = url.hosts().first().map_or(("127.0.0.1".to_string(), 6379), |h| {
            (h.host.clone(), h.port.unwrap_or(6379))
        });
        let other_nodes: Vec<HostPort> = url
            .hosts()
            .iter()
            .skip(1)
            .map(|h| HostPort {
                host: h.host.clone(),
                port: Some(h.port.unwrap_or(6379)),
            })
            .collect();
        let cluster = match url.parse_option::<bool>("redis", "cluster")? {
            Some(false) if !other_nodes.is_empty() => {
                return Err(invalid(
                    "several hosts are the nodes of a Redis Cluster: drop `cluster=false` or give one host"
                        .into(),
                ));
            }
            Some(c) => c,
            None => !other_nodes.is_empty(),
        };
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db
                .parse::<i64>()
                .map_err(|_| invalid(format!("the path `/{db}` must be a database number")))?,
        };
        if cluster && db != 0 {
            return Err(invalid(format!("a Redis Cluster has only database 0, not /{db}")));
        }
        let mut known = RedisOptions::NAMES.to_vec();
        known.push("cluster");
        url.check_options("redis", &known, &[])?;
        let mut options = RedisOptions::default();
        if let Some(v) = url.option("prefix") {
            options.prefix = v.to_string();
        }
        options.max_len = url.parse_option("redis", "max_len")?;
        macro_rules! number {
            ($name:ident) => {
                if let Some(v) = url.parse_option("redis", stringify!($name))? {
                    options.$name = v;
                }
            };
        }
        number!(block_ms);
        number!(batch);
        number!(claim_interval_ms);
        number!(max_message_bytes);
        number!(connect_timeout_ms);
        number!(response_timeout_ms);
        number!(retries);
        number!(wait_replicas);
        number!(wait_timeout_ms);
        if options.batch == 0 {
            return Err(Error::InvalidOption {
                backend: "redis",
                option: "batch".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(RedisConfig {
            tls,
            host,
            port,
            cluster,
            other_nodes,
            username: url.username().map(str::to_string),
            password: url.password().cloned(),
            db,
            options,
        })
    }

    /// Every node of the URL: [`Self::host`]:[`Self::port`], then
    /// [`Self::other_nodes`].
    pub fn nodes(&self) -> Vec<HostPort> {
        let first = HostPort {
            host: self.host.clone(),
            port: Some(self.port),
        };
        std::iter::once(first)
            .chain(self.other_nodes.iter().cloned())
            .collect()
    }

    /// `scheme://host:port[,host:port...]/db`, for messages (no credentials).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let hosts: Vec<String> = self.nodes().iter().map(HostPort::to_string).collect();
        format!("{scheme}://{}/{}", hosts.join(","), self.db)
    }

    /// The URL redis-rs connects with, password included. Never log it.
    pub(crate) fn client_url(&self) -> String {
        self.node_url(&HostPort {
            host: self.host.clone(),
            port: Some(self.port),
        })
    }

    /// A URL per node, passwords included, for the cluster client. Never log them.
    pub(crate) fn node_urls(&self) -> Vec<String> {
        self.nodes().iter().map(|node| self.node_url(node)).collect()
    }

    fn node_url(&self, node: &HostPort) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let scheme = if self.tls { "rediss" } else { "redis" };
        let mut auth = String::new();
        if self.username.is_some() || self.password.is_some() {
            if let Some(user) = &self.username {
                auth.push_str(&utf8_percent_encode(user, NON_ALPHANUMERIC).to_string());
            }
            if let Some(pass) = &self.password {
                auth.push(':');
                auth.push_str(&utf8_percent_encode(pass.expose(), NON_ALPHANUMERIC).to_string());
            }
            auth.push('@');
        }
        format!("{scheme}://{auth}{node}/{}", self.db)
    }

    /// How long a write's confirmation waits for replicas, when it does.
    pub(crate) fn wait_replicas(&self) -> Option<(u32, u64)> {
        (self.options.wait_replicas > 0)
            .then_some((self.options.wait_replicas, self.options.wait_timeout_ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RedisConfig> {
        RedisConfig::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn reads_url_and_options() {
        let c = parse("rediss://app:p%40ss@cache:6380/3?prefix=x:&batch=10&max_len=50").unwrap();
        assert!(c.tls);
        assert_eq!((c.host.as_str(), c.port, c.db), ("cache", 6380, 3));
        assert_eq!(c.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(
            (c.options.prefix.as_str(), c.options.batch, c.options.max_len),
            ("x:", 10, Some(50))
        );
        assert_eq!(c.client_url(), "rediss://app:p%40ss@cache:6380/3");
        assert_eq!(parse("redis://").unwrap().endpoint(), "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn rejects_bad_input_without_showing_the_password() {
        for (url, needle) in [
            ("redis://:secretpw@h?blok_ms=1", "`blok_ms`"),
            ("redis://:secretpw@h?batch=0", "at least 1"),
            ("redis://:secretpw@h?batch=many", "`many`"),
            ("redis://:secretpw@h/notadb", "database number"),
            ("redis://:secretpw@a,b?cluster=false", "Redis Cluster"),
            ("redis://:secretpw@a,b/3", "only database 0"),
            ("redis://:secretpw@a?cluster=maybe", "`maybe`"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secretpw"), "{url}: {err}");
        }
        let shown = format!("{:?}", parse("redis://u:secretpw@h").unwrap());
        assert!(!shown.contains("secretpw"), "{shown}");
    }

    #[test]
    fn several_hosts_are_a_cluster() {
        let c = parse("redis://:pw@10.0.0.1:7000,10.0.0.2:7001,[::1]?wait_replicas=1").unwrap();
        assert!(c.cluster);
        assert_eq!(c.nodes().len(), 3);
        assert_eq!((c.host.as_str(), c.port), ("10.0.0.1", 7000));
        assert_eq!(c.endpoint(), "redis://10.0.0.1:7000,10.0.0.2:7001,[::1]:6379/0");
        assert_eq!(
            c.node_urls(),
            [
                "redis://:pw@10.0.0.1:7000/0",
                "redis://:pw@10.0.0.2:7001/0",
                "redis://:pw@[::1]:6379/0"
            ]
        );
        assert_eq!(c.wait_replicas(), Some((1, 2000)));
        let seed = parse("redis://h:7000?cluster=true").unwrap();
        assert!(seed.cluster && seed.nodes().len() == 1);
        assert!(!parse("redis://h").unwrap().cluster);
        assert_eq!(parse("redis://h").unwrap().wait_replicas(), None);
    }
}
