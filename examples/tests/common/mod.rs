//! Shared by the example tests that run an example as a process.

#![allow(clippy::expect_used)] // test helpers panic on failure by design

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer as _};

/// librdkafka's mock cluster (3 brokers): its bootstrap servers, on
/// loopback ports another process can reach, and the client that keeps it
/// alive for as long as it is held.
pub(crate) fn kafka_mock() -> (BaseProducer, String) {
    let owner: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "3")
        .create()
        .expect("librdkafka mock cluster");
    let servers = owner
        .client()
        .mock_cluster()
        .expect("a mock cluster")
        .bootstrap_servers();
    (owner, servers)
}
