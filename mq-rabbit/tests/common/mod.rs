//! Finding the RabbitMQ server the tests run against: `MQ_TEST_AMQP_URL`.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

pub(crate) mod node;

use std::sync::Arc;

use mq_core::{Broker, BrokerUrl};
use mq_rabbit::{RabbitBroker, RabbitConfig};

/// The test server's URL, from `MQ_TEST_AMQP_URL`.
pub(crate) fn url() -> String {
    match std::env::var("MQ_TEST_AMQP_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "no RabbitMQ to test against: set MQ_TEST_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672/%2f), \
             or run scripts/test.sh, which starts or installs a local rabbitmq-server"
        ),
    }
}

/// A config for the test server with extra query options, e.g. `"queue_type=quorum"`.
pub(crate) fn config(extra: &str) -> RabbitConfig {
    let base = url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let full = if extra.is_empty() {
        base
    } else {
        format!("{base}{sep}{extra}")
    };
    RabbitConfig::from_url(&BrokerUrl::parse(&full).expect("test URL parses"))
        .expect("test URL is an AMQP URL")
}

/// A fresh broker with extra query options.
pub(crate) async fn rabbit_broker(extra: &str) -> RabbitBroker {
    let config = config(extra);
    let shown = config.endpoint();
    RabbitBroker::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test RabbitMQ at {shown}: {e}"))
}

/// A fresh broker connection to the test server; with the
/// `testcontainers` feature and no `MQ_TEST_AMQP_URL`, a container of its own.
pub(crate) async fn broker() -> Arc<dyn Broker> {
    #[cfg(feature = "testcontainers")]
    if std::env::var("MQ_TEST_AMQP_URL").map_or(true, |u| u.trim().is_empty()) {
        let server = mq_rabbit::testing::TestRabbit::start()
            .await
            .unwrap_or_else(|e| panic!("no RabbitMQ to test against: {e}"));
        let url = BrokerUrl::parse(server.url()).expect("container URL");
        let broker = RabbitBroker::connect(RabbitConfig::from_url(&url).expect("AMQP URL"))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the RabbitMQ container: {e}"));
        return Arc::new(mq_core::testkit::Owning::new(Arc::new(broker), server));
    }
    Arc::new(rabbit_broker("").await)
}
