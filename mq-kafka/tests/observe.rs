//! Spans and metrics on Kafka (the embedded mock cluster, or
//! `MQ_TEST_KAFKA_BROKERS`), through an instrumented broker.

#![allow(clippy::expect_used)] // test helpers panic on failure by design

mod common;

use std::sync::Arc;

use mq_core::observe::Instrumented;
use mq_core::testkit::Owning;
use mq_core::{Broker, BrokerUrl};

async fn broker() -> Arc<dyn Broker> {
    match common::real_brokers() {
        Some(servers) => {
            let url = BrokerUrl::parse(&format!("kafka://{servers}")).expect("test URL");
            let broker = common::connect(common::config(&servers, "")).await;
            Arc::new(Instrumented::new(Arc::new(broker)).server_from(&url))
        }
        None => {
            let mock = common::Mock::start();
            let url = BrokerUrl::parse(&format!("kafka://{}", mock.servers())).expect("test URL");
            let broker = common::connect(common::config(mock.servers(), common::MOCK_OPTIONS)).await;
            let owning: Arc<dyn Broker> = Arc::new(Owning::new(Arc::new(broker), mock));
            Arc::new(Instrumented::new(owning).server_from(&url))
        }
    }
}

// One test, the two checks in turn: a test-scoped `tracing` subscriber
// (`set_default`) was seen to miss a span (1 run in 4) while another test of
// the same process created spans on other threads.
#[tokio::test]
async fn spans_and_metrics() {
    let broker = broker().await;
    mq_core::testkit::observe::trace_crosses_the_broker(broker.clone()).await;
    mq_core::testkit::observe::metrics_count_every_outcome(broker).await;
}
