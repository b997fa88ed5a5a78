//! Settings of a Kafka broker, from a URL or serde.

use std::collections::BTreeMap;

use mq_core::{BrokerUrl, Error, Result};
use rdkafka::ClientConfig;
use serde::Deserialize;

/// Where and how to connect, from a `kafka://host1:9092,host2:9092` URL.
///
/// | option | meaning | default |
/// |---|---|---|
/// | `partitions` | partitions of topics mq creates | 3 |
/// | `replication` | replication factor of topics mq creates | 1 |
/// | `create_topics` | create topics through the admin client | `true` |
/// | `group_id` | the Kafka `group.id` of a subscription: `scoped` (`{topic}.{group}`, so a group name is per topic, as on every backend) or `exact` (the group name as it is) | `scoped` |
/// | `rdkafka.<property>` | any librdkafka property (SASL, SSL, `linger.ms`...) | |
///
/// ```
/// let url: mq_core::BrokerUrl = "kafka://a:9092,b:9092?partitions=6&rdkafka.linger.ms=5".parse()?;
/// let config = mq_kafka::KafkaConfig::from_url(&url)?;
/// assert_eq!(config.bootstrap_servers, "a:9092,b:9092");
/// assert_eq!(config.properties.get("linger.ms").map(String::as_str), Some("5"));
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port,host:port`.
    pub bootstrap_servers: String,
    /// Partitions of topics mq creates.
    pub partitions: i32,
    /// Replication factor of topics mq creates.
    pub replication: i32,
    /// Whether mq creates topics.
    pub create_topics: bool,
    /// The Kafka `group.id` a subscription's group becomes.
    pub group_id: GroupId,
    /// librdkafka properties passed through to every client. Values of
    /// credentials ([`mq_core::url::is_secret_option`]) are never shown.
    pub properties: BTreeMap<String, String>,
}

/// The Kafka `group.id` a subscription's group becomes.
///
/// A group is per topic in mq's model (every group of a topic receives
/// every message, whatever other topics have groups of the same name), so
/// by default the Kafka group id names both: one group name used on 15
/// topics is 15 Kafka groups, not one 15-topic group that rebalances all of
/// them on every subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupId {
    /// `{topic}.{group}` (the default).
    #[default]
    Scoped,
    /// The subscription's group name as it is: for teams whose Kafka
    /// tooling, ACLs or quotas expect given group ids.
    Exact,
}

impl GroupId {
    /// The `group.id` of group `group` of topic `topic`.
    pub fn of(self, topic: &str, group: &str) -> String {
        match self {
            GroupId::Scoped => format!("{topic}.{group}"),
            GroupId::Exact => group.to_string(),
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = mq_core::url::is_secret_option(k);
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("create_topics", &self.create_topics)
            .field("group_id", &self.group_id)
            .field("properties", &shown)
            .finish()
    }
}

/// The options of [`KafkaConfig`] as serde reads them (from a config file,
/// say), rejecting unknown ones: `partitions`, `replication`,
/// `create_topics`, `group_id`, and `rdkafka`, a table of librdkafka
/// properties.
///
/// ```
/// let options: mq_kafka::KafkaOptions = serde_json::from_str(
///     r#"{"partitions": 6, "rdkafka": {"linger.ms": "5", "security.protocol": "SASL_SSL"}}"#,
/// ).unwrap();
/// let config = mq_kafka::KafkaConfig::new("a:9092,b:9092", options);
/// assert_eq!(config.partitions, 6);
/// assert!(serde_json::from_str::<mq_kafka::KafkaOptions>(r#"{"partitons": 6}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaOptions {
    /// Partitions of topics mq creates.
    pub partitions: i32,
    /// Replication factor of topics mq creates.
    pub replication: i32,
    /// Whether mq creates topics through the admin client.
    pub create_topics: bool,
    /// The Kafka `group.id` a subscription's group becomes.
    pub group_id: GroupId,
    /// librdkafka properties, passed through to every client.
    pub rdkafka: BTreeMap<String, String>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            partitions: 3,
            replication: 1,
            create_topics: true,
            group_id: GroupId::Scoped,
            rdkafka: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// A config for `bootstrap_servers` (`host:port,host:port`) with `options`.
    pub fn new(bootstrap_servers: impl Into<String>, options: KafkaOptions) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            partitions: options.partitions.max(1),
            replication: options.replication.max(1),
            create_topics: options.create_topics,
            group_id: options.group_id,
            properties: options.rdkafka,
        }
    }

    /// The mq option names (librdkafka's go through `rdkafka.<name>`).
    pub const OPTIONS: &'static [&'static str] = &["partitions", "replication", "create_topics", "group_id"];

    /// Reads a `kafka://` URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for another scheme or no host;
    /// [`Error::UnknownOption`] / [`Error::InvalidOption`] for bad options.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.scheme() != "kafka" {
            return Err(invalid("the kafka backend takes kafka:// URLs"));
        }
        if url.hosts().is_empty() {
            return Err(invalid("give at least one bootstrap server: kafka://host:9092"));
        }
        url.check_options("kafka", Self::OPTIONS, &["rdkafka."])?;
        let bootstrap_servers = url
            .hosts()
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port.unwrap_or(9092)))
            .collect::<Vec<_>>()
            .join(",");
        let mut properties = BTreeMap::new();
        for (name, value) in url.options() {
            if let Some(property) = name.strip_prefix("rdkafka.") {
                properties.insert(property.to_string(), value.clone());
            }
        }
        if let (Some(user), Some(pass)) = (url.username(), url.password()) {
            properties
                .entry("sasl.username".into())
                .or_insert_with(|| user.to_string());
            properties
                .entry("sasl.password".into())
                .or_insert_with(|| pass.expose().to_string());
        }
        let mut config = KafkaConfig::new(
            bootstrap_servers,
            KafkaOptions {
                rdkafka: properties,
                ..KafkaOptions::default()
            },
        );
        let bad = |option: &str, reason: &str| Error::InvalidOption {
            backend: "kafka",
            option: option.into(),
            reason: reason.into(),
        };
        if let Some(p) = url.parse_option::<i32>("kafka", "partitions")? {
            if p < 1 {
                return Err(bad("partitions", "must be at least 1"));
            }
            config.partitions = p;
        }
        if let Some(r) = url.parse_option::<i32>("kafka", "replication")? {
            if r < 1 {
                return Err(bad("replication", "must be at least 1"));
            }
            config.replication = r;
        }
        if let Some(c) = url.parse_option("kafka", "create_topics")? {
            config.create_topics = c;
        }
        match url.option("group_id") {
            None | Some("scoped") => {}
            Some("exact") => config.group_id = GroupId::Exact,
            Some(_) => return Err(bad("group_id", "must be `scoped` or `exact`")),
        }
        Ok(config)
    }

    /// A client config with the bootstrap servers and the pass-through properties.
    pub(crate) fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The largest message the producer accepts (librdkafka's `message.max.bytes`).
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<KafkaConfig> {
        KafkaConfig::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn reads_hosts_options_and_properties() {
        let c = parse("kafka://u:pw@a:1,b?partitions=6&rdkafka.security.protocol=SASL_SSL").unwrap();
        assert_eq!(c.bootstrap_servers, "a:1,b:9092");
        assert_eq!(c.partitions, 6);
        assert_eq!(
            c.properties.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(c.properties.get("sasl.password").map(String::as_str), Some("pw"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("\"pw\"") && shown.contains("***"), "{shown}");
    }

    #[test]
    fn group_ids_are_per_topic_unless_exact() {
        assert_eq!(
            parse("kafka://a").unwrap().group_id.of("orders", "billing"),
            "orders.billing"
        );
        let exact = parse("kafka://a?group_id=exact").unwrap();
        assert_eq!(exact.group_id.of("orders", "billing"), "billing");
        let err = parse("kafka://a?group_id=global").unwrap_err().to_string();
        assert!(err.contains("group_id") && err.contains("exact"), "{err}");
    }

    #[test]
    fn rejects_bad_input_without_the_password() {
        for (url, needle) in [
            ("kafka://u:secretpw@a?partition=3", "`partition`"),
            ("kafka://u:secretpw@a?partitions=0", "at least 1"),
            ("kafka://", "bootstrap server"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secretpw"), "{url}: {err}");
        }
    }
}
