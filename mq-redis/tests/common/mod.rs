//! Finding the Redis server the tests run against: `MQ_TEST_REDIS_URL`, or
//! (feature `testcontainers`, Docker present) a container per test.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

pub(crate) mod cluster;
pub(crate) mod server;

use std::sync::Arc;

use mq_core::{Broker, BrokerUrl};
use mq_redis::{RedisBroker, RedisConfig};

const HOW: &str = "set MQ_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379), run scripts/test.sh (it starts or installs \
                   a local redis-server), or enable the `testcontainers` feature with a Docker engine running";

/// The configured server's URL, if any.
fn configured() -> Option<String> {
    std::env::var("MQ_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// The test server's URL, from `MQ_TEST_REDIS_URL`.
pub(crate) fn url() -> String {
    configured().unwrap_or_else(|| panic!("no Redis to test against: {HOW}"))
}

/// A config for `base` with extra query options, e.g. `"max_len=10"`.
fn config_for(base: String, extra: &str) -> RedisConfig {
    let sep = if base.contains('?') { '&' } else { '?' };
    let full = if extra.is_empty() {
        base
    } else {
        format!("{base}{sep}{extra}")
    };
    RedisConfig::from_url(&BrokerUrl::parse(&full).expect("test URL parses"))
        .expect("test URL is a Redis URL")
}

/// A config for the test server with extra query options.
pub(crate) fn config(extra: &str) -> RedisConfig {
    config_for(url(), extra)
}

async fn connect(config: RedisConfig) -> RedisBroker {
    let shown = config.endpoint();
    RedisBroker::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Redis at {shown}: {e}"))
}

/// A fresh broker connection to the test server.
pub(crate) async fn broker() -> Arc<dyn Broker> {
    if configured().is_some() {
        return Arc::new(redis_broker("").await);
    }
    container_broker().await
}

/// A broker connected to `url` (a server of the test's own).
pub(crate) async fn redis_broker_at(url: &str) -> RedisBroker {
    connect(config_for(url.to_string(), "")).await
}

/// A fresh broker with extra query options.
pub(crate) async fn redis_broker(extra: &str) -> RedisBroker {
    connect(config(extra)).await
}

#[cfg(feature = "testcontainers")]
async fn container_broker() -> Arc<dyn Broker> {
    let server = mq_redis::testing::TestRedis::start()
        .await
        .unwrap_or_else(|e| panic!("no Redis to test against: {e}"));
    let broker = connect(config_for(server.url().to_string(), "")).await;
    Arc::new(mq_core::testkit::Owning::new(Arc::new(broker), server))
}

#[cfg(not(feature = "testcontainers"))]
async fn container_broker() -> Arc<dyn Broker> {
    panic!("no Redis to test against: {HOW}")
}
