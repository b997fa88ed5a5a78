//! A Kafka cluster for integration tests (feature `testcontainers`).
//!
//! [`TestKafka::start`] uses `MQ_TEST_KAFKA_BROKERS` when it is set;
//! otherwise it starts an `apache/kafka` container (KRaft, one broker) when
//! a Docker engine is reachable. The container is removed when the guard is
//! dropped.
//!
//! ```no_run
//! # async fn run() -> mq_core::Result<()> {
//! let kafka = mq_kafka::testing::TestKafka::start().await?;
//! let mut registry = mq_core::Registry::new();
//! mq_kafka::register(&mut registry);
//! let broker = registry.connect(&kafka.url()).await?;
//! # Ok(()) }
//! ```

use mq_core::{Error, Result};
use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
use testcontainers_modules::testcontainers::ContainerAsync;
use testcontainers_modules::testcontainers::runners::AsyncRunner;

/// A Kafka cluster for a test: the configured one, or a container that
/// lives as long as this guard.
#[derive(Debug)]
pub struct TestKafka {
    bootstrap_servers: String,
    _container: Option<ContainerAsync<Kafka>>,
}

impl TestKafka {
    /// `MQ_TEST_KAFKA_BROKERS` when set, else a new `apache/kafka` container.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] saying how to provide a cluster when neither
    /// is available.
    pub async fn start() -> Result<Self> {
        if let Ok(servers) = std::env::var("MQ_TEST_KAFKA_BROKERS")
            && !servers.trim().is_empty()
        {
            return Ok(TestKafka {
                bootstrap_servers: servers,
                _container: None,
            });
        }
        let unavailable = |reason: String| Error::Connection {
            backend: "kafka",
            endpoint: "an apache/kafka test container".into(),
            reason: format!(
                "{reason}; set MQ_TEST_KAFKA_BROKERS=host:9092 or start a Docker engine \
                 (without either, the mq-kafka tests use librdkafka's embedded mock cluster)"
            ),
            source: None,
        };
        let container = Kafka::default()
            .start()
            .await
            .map_err(|e| unavailable(format!("cannot start a Kafka container: {e}")))?;
        let port = container
            .get_host_port_ipv4(KAFKA_PORT)
            .await
            .map_err(|e| unavailable(format!("the Kafka container has no port: {e}")))?;
        Ok(TestKafka {
            bootstrap_servers: format!("127.0.0.1:{port}"),
            _container: Some(container),
        })
    }

    /// The bootstrap servers, `host:port,...`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// A `kafka://` URL for the cluster.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.bootstrap_servers)
    }
}
