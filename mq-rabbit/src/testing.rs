//! A RabbitMQ server for integration tests (feature `testcontainers`).
//!
//! [`TestRabbit::start`] uses `MQ_TEST_AMQP_URL` when it is set; otherwise
//! it starts a current RabbitMQ container (`rabbitmq:4.1`; the community
//! module's default is 3.8) when a Docker engine is reachable. The container
//! is removed when the guard is dropped.
//!
//! ```no_run
//! # async fn run() -> mq_core::Result<()> {
//! let server = mq_rabbit::testing::TestRabbit::start().await?;
//! let mut registry = mq_core::Registry::new();
//! mq_rabbit::register(&mut registry);
//! let broker = registry.connect(server.url()).await?;
//! # Ok(()) }
//! ```

use mq_core::{Error, Result};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage};

/// The RabbitMQ image tag the container runs.
pub const IMAGE_TAG: &str = "4.1";

/// A RabbitMQ server for a test: the configured one, or a container that
/// lives as long as this guard.
#[derive(Debug)]
pub struct TestRabbit {
    url: String,
    _container: Option<ContainerAsync<GenericImage>>,
}

impl TestRabbit {
    /// `MQ_TEST_AMQP_URL` when set, else a new RabbitMQ container.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] saying how to provide a server when neither is
    /// available.
    pub async fn start() -> Result<Self> {
        if let Ok(url) = std::env::var("MQ_TEST_AMQP_URL")
            && !url.trim().is_empty()
        {
            return Ok(TestRabbit {
                url,
                _container: None,
            });
        }
        let unavailable = |reason: String| Error::Connection {
            backend: "rabbitmq",
            endpoint: "a RabbitMQ test container".into(),
            reason: format!(
                "{reason}; set MQ_TEST_AMQP_URL=amqp://user:pass@host:5672/%2f or start a Docker engine (scripts/test.sh provides a local rabbitmq-server)"
            ),
            source: None,
        };
        let container = GenericImage::new("rabbitmq", IMAGE_TAG)
            .with_exposed_port(5672.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
            .start()
            .await
            .map_err(|e| unavailable(format!("cannot start the container: {e}")))?;
        let host = container
            .get_host()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let port = container
            .get_host_port_ipv4(5672)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(TestRabbit {
            url: format!("amqp://guest:guest@{host}:{port}/%2f"),
            _container: Some(container),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}
