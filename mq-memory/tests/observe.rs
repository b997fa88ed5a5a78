//! Spans and metrics on the in-memory broker, connected by URL (the
//! registry instruments every broker it makes).

use std::sync::Arc;

use mq_core::Broker;

async fn broker() -> Arc<dyn Broker> {
    let mut registry = mq_core::Registry::new();
    mq_memory::register(&mut registry);
    match registry.connect("memory://").await {
        Ok(broker) => broker,
        Err(e) => panic!("memory://: {e}"),
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
