//! Finding the Redis server the tests run against.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use mq_core::{Broker, BrokerUrl};
use mq_redis::{RedisBroker, RedisConfig};

/// The test server's URL, from `MQ_TEST_REDIS_URL`.
pub(crate) fn url() -> String {
    match std::env::var("MQ_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "no Redis to test against: set MQ_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379), \
             or run scripts/test.sh, which starts or installs a local redis-server"
        ),
    }
}

/// A config for the test server with extra query options, e.g. `"max_len=10"`.
pub(crate) fn config(extra: &str) -> RedisConfig {
    let base = url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let full = if extra.is_empty() {
        base
    } else {
        format!("{base}{sep}{extra}")
    };
    RedisConfig::from_url(&BrokerUrl::parse(&full).expect("test URL parses"))
        .expect("test URL is a Redis URL")
}

/// A fresh broker connection to the test server.
pub(crate) async fn broker() -> Arc<dyn Broker> {
    Arc::new(redis_broker("").await)
}

/// A fresh broker with extra query options.
pub(crate) async fn redis_broker(extra: &str) -> RedisBroker {
    let config = config(extra);
    let shown = config.endpoint();
    RedisBroker::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Redis at {shown}: {e}"))
}
