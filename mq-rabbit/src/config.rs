//! Settings of a RabbitMQ broker, from a URL or serde.

use std::time::Duration;

use mq_core::{BrokerUrl, Error, HostPort, Result, Secret};
use serde::Deserialize;

/// Where and how to connect, from an `amqp://` or `amqps://` URL:
/// `amqp://[user[:password]@]host[:port][/vhost][?option=value...]`.
///
/// **Clusters**: several hosts (`amqp://u:p@h1:5672,h2:5673/vhost`) are the
/// nodes of one RabbitMQ cluster. mq connects to the first that answers and,
/// when that connection is lost, tries the next node first (then the rest,
/// in order), so producers and consumers carry on on another node. Use
/// `queue_type=quorum` there: a classic queue lives on one node and is gone
/// with it, a quorum queue is replicated and keeps its messages and its
/// consumers' place.
///
/// | option | meaning | default |
/// |---|---|---|
/// | `queue_type` | `classic` or `quorum` for group queues | `classic` |
/// | `durable` | durable exchanges and queues, persistent messages | `true` |
/// | `topology` | `exchange`: an exchange per topic, a queue per group; `queue`: a topic is one queue, through the default exchange (one group) | `exchange` |
/// | `exchange_type` | `topic` (routes by key), `direct` (by topic name) or `fanout` (the broker's cheapest route) exchange per topic | `topic` |
/// | `publish_channels` | confirm channels per producer | 2 |
/// | `confirm_window` | most unconfirmed publishes per producer | 1000 |
/// | `prefetch` | cap on every consumer's prefetch (`basic_qos`) | none |
/// | `max_message_bytes` | largest message accepted | 134217728 |
/// | `connection_name` | shown in the management UI | `mq` |
/// | `connect_timeout_ms` | time to connect, all tries together | 5000 |
/// | `retries` | tries again after a lost connection, per operation | 5 |
/// | `heartbeat` | heartbeat interval in seconds (0: off) | server's |
///
/// ```
/// let url: mq_core::BrokerUrl = "amqp://app:pw@rabbit:5672/prod?queue_type=quorum".parse()?;
/// let config = mq_rabbit::RabbitConfig::from_url(&url)?;
/// assert_eq!(config.vhost, "prod");
/// assert!(!format!("{config:?}").contains("pw"));
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RabbitConfig {
    /// `true` for `amqps://`.
    pub tls: bool,
    /// Host (of the first node, for several).
    pub host: String,
    /// Port (5672, or 5671 for TLS, when absent).
    pub port: u16,
    /// The URL's further hosts, each with its port: with the first
    /// ([`Self::host`], [`Self::port`]), the nodes of a cluster, tried in turn.
    pub other_nodes: Vec<HostPort>,
    /// User name (`guest` when absent).
    pub username: String,
    /// Password (`guest` when absent).
    pub password: Secret,
    /// Virtual host (`/` when absent).
    pub vhost: String,
    /// Tuning options.
    pub options: RabbitOptions,
}

/// The options of [`RabbitConfig`]; serde reads them by these names and
/// rejects unknown ones.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RabbitOptions {
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// Durable topology and persistent messages.
    pub durable: bool,
    /// `exchange` (an exchange per topic, a queue `{topic}.{group}` per
    /// group, so every group gets every message) or `queue` (a topic is one
    /// durable queue named after it, published to through the default
    /// exchange and declared by the first send or subscribe: every
    /// subscription of the topic shares it, whatever its group, like the
    /// consumers of one group; the broker's cheapest route).
    pub topology: String,
    /// Exchange kind per topic: `topic` (messages routed by their key, so
    /// a queue of the application's own can bind a pattern), `direct`
    /// (queues bound and messages routed with the topic's name) or `fanout`
    /// (no routing key: the cheapest route through the broker).
    pub exchange_type: String,
    /// Confirm channels per producer.
    pub publish_channels: usize,
    /// Most unconfirmed publishes per producer.
    pub confirm_window: usize,
    /// Cap on every consumer's prefetch.
    pub prefetch: Option<usize>,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Connection name.
    pub connection_name: String,
    /// Time to connect, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Tries again after a lost connection, per operation.
    pub retries: u32,
    /// Heartbeat interval in seconds.
    pub heartbeat: Option<u16>,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        RabbitOptions {
            queue_type: "classic".into(),
            durable: true,
            topology: "exchange".into(),
            exchange_type: "topic".into(),
            publish_channels: 2,
            confirm_window: 1000,
            prefetch: None,
            max_message_bytes: 128 * 1024 * 1024,
            connection_name: "mq".into(),
            connect_timeout_ms: 5000,
            retries: 5,
            heartbeat: None,
        }
    }
}

impl RabbitOptions {
    /// The option names.
    pub const NAMES: &'static [&'static str] = &[
        "queue_type",
        "durable",
        "topology",
        "exchange_type",
        "publish_channels",
        "confirm_window",
        "prefetch",
        "max_message_bytes",
        "connection_name",
        "connect_timeout_ms",
        "retries",
        "heartbeat",
    ];

    /// `topology=queue`: a topic is one queue, no exchange.
    pub(crate) fn queue_topology(&self) -> bool {
        self.topology == "queue"
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("endpoint", &self.endpoint())
            .field("username", &self.username)
            .field("password", &"***")
            .field("options", &self.options)
            .finish()
    }
}

impl RabbitConfig {
    /// Reads an `amqp://` or `amqps://` URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for another scheme;
    /// [`Error::UnknownOption`] and [`Error::InvalidOption`] for bad options.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(invalid(format!(
                    "the rabbitmq backend takes amqp:// or amqps://, not {other}://"
                )));
            }
        };
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = url
            .hosts()
            .first()
            .map_or(("127.0.0.1".to_string(), default_port), |h| {
                (h.host.clone(), h.port.unwrap_or(default_port))
            });
        let other_nodes: Vec<HostPort> = url
            .hosts()
            .iter()
            .skip(1)
            .map(|h| HostPort {
                host: h.host.clone(),
                port: Some(h.port.unwrap_or(default_port)),
            })
            .collect();
        let vhost = match url.path() {
            "" | "/" => "/".to_string(),
            path => path[1..].to_string(),
        };
        url.check_options("rabbitmq", RabbitOptions::NAMES, &[])?;
        let mut options = RabbitOptions::default();
        let invalid_option = |option: &str, reason: &str| Error::InvalidOption {
            backend: "rabbitmq",
            option: option.into(),
            reason: reason.into(),
        };
        if let Some(v) = url.option("queue_type") {
            if !matches!(v, "classic" | "quorum") {
                return Err(invalid_option("queue_type", "must be `classic` or `quorum`"));
            }
            options.queue_type = v.into();
        }
        if let Some(v) = url.option("topology") {
            if !matches!(v, "exchange" | "queue") {
                return Err(invalid_option("topology", "must be `exchange` or `queue`"));
            }
            options.topology = v.into();
        }
        if let Some(v) = url.option("exchange_type") {
            if !matches!(v, "topic" | "direct" | "fanout") {
                return Err(invalid_option(
                    "exchange_type",
                    "must be `topic`, `direct` or `fanout`",
                ));
            }
            options.exchange_type = v.into();
        }
        if let Some(v) = url.option("connection_name") {
            // An AMQP short string: lapin panics on a longer one.
            if v.len() > 255 {
                return Err(invalid_option("connection_name", "must be at most 255 bytes"));
            }
            options.connection_name = v.into();
        }
        if let Some(v) = url.parse_option("rabbitmq", "durable")? {
            options.durable = v;
        }
        if let Some(v) = url.parse_option::<usize>("rabbitmq", "publish_channels")? {
            if v == 0 {
                return Err(invalid_option("publish_channels", "must be at least 1"));
            }
            options.publish_channels = v;
        }
        for (name, slot) in [("confirm_window", &mut options.confirm_window)] {
            if let Some(v) = url.parse_option::<usize>("rabbitmq", name)? {
                if v == 0 {
                    return Err(invalid_option(name, "must be at least 1"));
                }
                *slot = v;
            }
        }
        if let Some(v) = url.parse_option::<usize>("rabbitmq", "prefetch")? {
            if v == 0 || v > usize::from(u16::MAX) {
                return Err(invalid_option("prefetch", "must be from 1 to 65535"));
            }
            options.prefetch = Some(v);
        }
        if let Some(v) = url.parse_option("rabbitmq", "max_message_bytes")? {
            options.max_message_bytes = v;
        }
        if let Some(v) = url.parse_option("rabbitmq", "connect_timeout_ms")? {
            options.connect_timeout_ms = v;
        }
        if let Some(v) = url.parse_option("rabbitmq", "retries")? {
            options.retries = v;
        }
        options.heartbeat = url.parse_option("rabbitmq", "heartbeat")?;
        Ok(RabbitConfig {
            tls,
            host,
            port,
            other_nodes,
            username: url.username().unwrap_or("guest").to_string(),
            password: url.password().cloned().unwrap_or_else(|| Secret::new("guest")),
            vhost,
            options,
        })
    }

    /// Every node: [`Self::host`]:[`Self::port`], then [`Self::other_nodes`].
    pub fn nodes(&self) -> Vec<HostPort> {
        let first = HostPort {
            host: self.host.clone(),
            port: Some(self.port),
        };
        std::iter::once(first)
            .chain(self.other_nodes.iter().cloned())
            .collect()
    }

    /// `amqp://host:port[,host:port...]/vhost`, for messages (no credentials).
    pub fn endpoint(&self) -> String {
        let hosts: Vec<String> = self.nodes().iter().map(HostPort::to_string).collect();
        self.url_of(&hosts.join(","))
    }

    /// `amqp://host:port/vhost` of `node`, for messages.
    pub(crate) fn node_endpoint(&self, node: &HostPort) -> String {
        self.url_of(&node.to_string())
    }

    fn url_of(&self, hosts: &str) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        format!("{scheme}://{hosts}/{}", self.vhost.trim_start_matches('/'))
    }

    /// The URI of `node`, password included. Never log it.
    pub(crate) fn node_uri(&self, node: &HostPort) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let mut uri = format!(
            "{scheme}://{}:{}@{node}/{}",
            enc(&self.username),
            enc(self.password.expose()),
            enc(&self.vhost)
        );
        if let Some(heartbeat) = self.options.heartbeat {
            uri.push_str(&format!("?heartbeat={heartbeat}"));
        }
        uri
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RabbitConfig> {
        RabbitConfig::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn reads_url_and_options() {
        let c = parse("amqps://app:p%40ss@mq:5671/prod?queue_type=quorum&publish_channels=4").unwrap();
        assert!(c.tls);
        assert_eq!((c.host.as_str(), c.port, c.vhost.as_str()), ("mq", 5671, "prod"));
        assert_eq!(c.options.queue_type, "quorum");
        assert_eq!(c.options.topology, "exchange");
        assert_eq!(
            parse("amqp://h?topology=queue").unwrap().options.topology,
            "queue"
        );
        assert_eq!(c.node_uri(&c.nodes()[0]), "amqps://app:p%40ss@mq:5671/prod");
        let d = parse("amqp://localhost").unwrap();
        assert_eq!(
            (d.port, d.vhost.as_str(), d.username.as_str()),
            (5672, "/", "guest")
        );
        assert_eq!(d.node_uri(&d.nodes()[0]), "amqp://guest:guest@localhost:5672/%2F");
    }

    #[test]
    fn several_hosts_are_the_nodes_of_a_cluster() {
        let c = parse("amqp://u:pw@r1:5672,r2:5673,[::1]/prod?queue_type=quorum").unwrap();
        let nodes = c.nodes();
        assert_eq!(nodes.len(), 3);
        assert_eq!((c.host.as_str(), c.port), ("r1", 5672));
        assert_eq!(c.endpoint(), "amqp://r1:5672,r2:5673,[::1]:5672/prod");
        assert_eq!(c.node_endpoint(&nodes[1]), "amqp://r2:5673/prod");
        assert_eq!(c.node_uri(&nodes[2]), "amqp://u:pw@[::1]:5672/prod");
        assert!(!format!("{c:?}").contains("pw@"), "{c:?}");
    }

    #[test]
    fn rejects_bad_options_without_the_password() {
        for (url, needle) in [
            ("amqp://u:secretpw@h?queue_typ=quorum", "`queue_typ`"),
            ("amqp://u:secretpw@h?queue_type=stream", "classic"),
            ("amqp://u:secretpw@h?durable=maybe", "`maybe`"),
            ("amqp://u:secretpw@h?publish_channels=0", "at least 1"),
            ("amqp://u:secretpw@h?confirm_window=0", "at least 1"),
            ("amqp://u:secretpw@h?prefetch=70000", "1 to 65535"),
            ("amqp://u:secretpw@h?topology=stream", "`exchange` or `queue`"),
            ("amqp://u:secretpw@h?exchange_type=headers", "`fanout`"),
            ("amqp://u:secretpw@h1,h2?queue_type=stream", "classic"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secretpw"), "{url}: {err}");
        }
    }
}
