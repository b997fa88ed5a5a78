//! Picking a backend by URL scheme.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::MqConfig;
use crate::{Broker, BrokerUrl, Error, Result};

/// What a backend crate registers: the schemes it serves and how to connect.
///
/// Each adapter exposes one `register(&mut Registry)` function that adds its
/// connector.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    /// The backend's name, as [`Broker::name`] returns it.
    fn name(&self) -> &'static str;

    /// The URL schemes it serves, e.g. `["amqp", "amqps"]`.
    fn schemes(&self) -> &'static [&'static str];

    /// Connects to the broker `url` names.
    ///
    /// # Errors
    ///
    /// Unknown or invalid options, unreachable broker, bad credentials.
    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn Broker>>;
}

/// The crates that provide the schemes mq knows about, for error messages.
const KNOWN: &[(&str, &str)] = &[
    ("memory", "mq-memory (mq_memory::register)"),
    ("amqp", "mq-rabbit (mq_rabbit::register)"),
    ("amqps", "mq-rabbit (mq_rabbit::register)"),
    ("kafka", "mq-kafka (mq_kafka::register)"),
    ("redis", "mq-redis (mq_redis::register)"),
    ("rediss", "mq-redis (mq_redis::register)"),
];

/// Maps URL schemes to backends, so a URL picks the broker.
///
/// An application registers the backends it was built with, then connects by
/// URL; changing brokers is a change of URL.
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// let mut registry = mq_core::Registry::new();
/// mq_memory::register(&mut registry);
/// let broker = registry.connect("memory://").await?;
/// assert_eq!(broker.name(), "memory");
///
/// let err = registry.connect("amqp://localhost").await.unwrap_err();
/// assert!(err.to_string().contains("mq-rabbit"));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    connectors: BTreeMap<&'static str, Arc<dyn Connector>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a backend for each of its schemes, replacing any earlier one.
    pub fn register(&mut self, connector: Arc<dyn Connector>) -> &mut Self {
        for scheme in connector.schemes() {
            self.connectors.insert(scheme, connector.clone());
        }
        self
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<&'static str> {
        self.connectors.keys().copied().collect()
    }

    /// Connects to the broker `url` names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a malformed URL; [`Error::UnknownScheme`]
    /// naming the scheme, the crate that provides it and the registered
    /// schemes; the backend's errors (unknown options, unreachable broker...).
    pub async fn connect(&self, url: &str) -> Result<Arc<dyn Broker>> {
        let url = BrokerUrl::parse(url)?;
        self.connect_url(&url).await
    }

    /// Connects to the broker a parsed URL names; see [`Registry::connect`].
    ///
    /// # Errors
    ///
    /// As [`Registry::connect`].
    pub async fn connect_url(&self, url: &BrokerUrl) -> Result<Arc<dyn Broker>> {
        match self.connectors.get(url.scheme()) {
            Some(connector) => {
                let broker = connector.connect(url).await?;
                Ok(Arc::new(
                    crate::observe::Instrumented::new(broker).server_from(url),
                ))
            }
            None => Err(self.unknown_scheme(url.scheme())),
        }
    }

    /// Connects with a config struct: its URL, with its options added to the
    /// URL's query.
    ///
    /// # Errors
    ///
    /// As [`Registry::connect`].
    pub async fn connect_config(&self, config: &MqConfig) -> Result<Arc<dyn Broker>> {
        self.connect_url(&config.to_url()?).await
    }

    fn unknown_scheme(&self, scheme: &str) -> Error {
        let hint = KNOWN
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, krate)| format!(" (it is provided by {krate}, which this program did not register)"))
            .unwrap_or_default();
        let available = if self.connectors.is_empty() {
            "none".to_string()
        } else {
            self.schemes().join(", ")
        };
        Error::UnknownScheme {
            scheme: scheme.to_string(),
            hint,
            available,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scheme_names_crate_and_lists_registered() {
        let registry = Registry::new();
        let err = registry.connect("kafka://h:9092").await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::UnknownScheme { .. }));
        assert!(
            text.contains("`kafka`") && text.contains("mq-kafka") && text.contains("none"),
            "{text}"
        );

        let err = registry.connect("nats://h").await.unwrap_err();
        assert!(!err.to_string().contains("provided by"), "{err}");
    }

    #[tokio::test]
    async fn malformed_url_is_reported_before_lookup() {
        let err = Registry::new().connect("no-scheme-here").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    }
}
