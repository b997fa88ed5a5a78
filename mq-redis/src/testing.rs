//! A Redis server for integration tests (feature `testcontainers`).
//!
//! [`TestRedis::start`] uses `MQ_TEST_REDIS_URL` when it is set; otherwise it
//! starts a Redis 7 container (the testcontainers module's default image is
//! Redis 5.0, which lacks `XAUTOCLAIM`) when a Docker engine is reachable.
//! The container is removed when the guard is dropped.
//!
//! ```no_run
//! # async fn run() -> mq_core::Result<()> {
//! let server = mq_redis::testing::TestRedis::start().await?;
//! let mut registry = mq_core::Registry::new();
//! mq_redis::register(&mut registry);
//! let broker = registry.connect(server.url()).await?;
//! # Ok(()) }
//! ```

use mq_core::{Error, Result};
use testcontainers_modules::redis::Redis;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

/// The Redis image tag the container runs.
pub const IMAGE_TAG: &str = "7.4";

/// A Redis server for a test: the configured one, or a container that lives
/// as long as this guard.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    _container: Option<ContainerAsync<Redis>>,
}

impl TestRedis {
    /// `MQ_TEST_REDIS_URL` when set, else a new Redis container.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] saying how to provide a server when neither is
    /// available.
    pub async fn start() -> Result<Self> {
        if let Ok(url) = std::env::var("MQ_TEST_REDIS_URL")
            && !url.trim().is_empty()
        {
            return Ok(TestRedis {
                url,
                _container: None,
            });
        }
        let unavailable = |reason: String| Error::Connection {
            backend: "redis",
            endpoint: "a Redis test container".into(),
            reason: format!(
                "{reason}; set MQ_TEST_REDIS_URL=redis://host:port or start a Docker engine (scripts/test.sh provides a local redis-server)"
            ),
            source: None,
        };
        let container = Redis::default()
            .with_tag(IMAGE_TAG)
            .start()
            .await
            .map_err(|e| unavailable(format!("cannot start the container: {e}")))?;
        let host = container
            .get_host()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let port = container
            .get_host_port_ipv4(6379)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(TestRedis {
            url: format!("redis://{host}:{port}"),
            _container: Some(container),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}
