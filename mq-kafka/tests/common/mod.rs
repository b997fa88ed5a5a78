//! The Kafka the tests run against: `MQ_TEST_KAFKA_BROKERS`, or librdkafka's
//! embedded mock cluster (no server needed).
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use mq_core::{Broker, BrokerUrl};
use mq_kafka::{KafkaBroker, KafkaConfig};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer as _};

/// Owns an embedded mock cluster: it lives as long as this client, which
/// created it (`test.mock.num.brokers`).
pub(crate) struct Mock {
    owner: BaseProducer,
    servers: String,
}

impl std::fmt::Debug for Mock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mock").field("servers", &self.servers).finish()
    }
}

impl Mock {
    /// Starts a 3-broker mock cluster whose consumer groups form at once
    /// (no initial rebalance delay).
    pub(crate) fn start() -> Mock {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "3")
            .create()
            .expect("librdkafka mock cluster");
        set_no_rebalance_delay(&owner);
        let servers = owner
            .client()
            .mock_cluster()
            .expect("a client with test.mock.num.brokers has a mock cluster")
            .bootstrap_servers();
        Mock { owner, servers }
    }

    /// The bootstrap servers.
    pub(crate) fn servers(&self) -> &str {
        &self.servers
    }

    /// The mock cluster, for fault injection.
    pub(crate) fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.owner
            .client()
            .mock_cluster()
            .expect("a client with test.mock.num.brokers has a mock cluster")
    }
}

/// The mock's default `group.initial.rebalance.delay.ms` is 3 s, paid by
/// every new group; the tests make a new group per subscription.
#[allow(unsafe_code)]
fn set_no_rebalance_delay(owner: &BaseProducer) {
    use rdkafka::bindings::{rd_kafka_handle_mock_cluster, rd_kafka_mock_group_initial_rebalance_delay_ms};
    // SAFETY: `native_ptr` is the live client handle of `owner`, borrowed for
    // this call; the mock cluster it returns (checked for null) is owned by
    // that client and outlives the call. The setter only stores an integer
    // under the cluster's lock.
    unsafe {
        let cluster = rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        assert!(!cluster.is_null(), "the client has no mock cluster");
        rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
    }
}

/// A config for `servers` with extra query options.
pub(crate) fn config(servers: &str, extra: &str) -> KafkaConfig {
    let url = if extra.is_empty() {
        format!("kafka://{servers}")
    } else {
        format!("kafka://{servers}?{extra}")
    };
    KafkaConfig::from_url(&BrokerUrl::parse(&url).expect("test URL")).expect("Kafka URL")
}

/// Connects, or fails saying how to provide a Kafka.
pub(crate) async fn connect(config: KafkaConfig) -> KafkaBroker {
    let shown = config.bootstrap_servers.clone();
    KafkaBroker::connect(config).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test Kafka at {shown}: {e}\n\
             (unset MQ_TEST_KAFKA_BROKERS to use the embedded mock cluster, \
             or point it at a running Kafka)"
        )
    })
}

/// The options the tests need on the mock cluster: it has no CreateTopics
/// API, and creates a topic when a producer first asks for it. Its group
/// coordinator waits `session.timeout.ms` - 1 s for members to rejoin (a real
/// one stops waiting once all have), so the session is short, but not so
/// short that a loaded machine misses heartbeats (2 s did, now and then).
pub(crate) const MOCK_OPTIONS: &str = "create_topics=false\
    &rdkafka.session.timeout.ms=4000&rdkafka.heartbeat.interval.ms=500";

/// `MQ_TEST_KAFKA_BROKERS`, when set.
pub(crate) fn real_brokers() -> Option<String> {
    std::env::var("MQ_TEST_KAFKA_BROKERS")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Whether a Docker engine is reachable (its socket, or `DOCKER_HOST`).
#[cfg(feature = "testcontainers")]
fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists()
}

/// A fresh broker: on `MQ_TEST_KAFKA_BROKERS` when set; else, with feature
/// `testcontainers` and a Docker engine, on a new `apache/kafka` container;
/// else on a new mock cluster. The broker owns its container or mock.
pub(crate) async fn broker() -> Arc<dyn Broker> {
    #[cfg(feature = "testcontainers")]
    if real_brokers().is_none() && docker_available() {
        let kafka = mq_kafka::testing::TestKafka::start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let broker = connect(config(kafka.bootstrap_servers(), "")).await;
        return Arc::new(mq_core::testkit::Owning::new(Arc::new(broker), kafka));
    }
    match real_brokers() {
        Some(servers) => Arc::new(connect(config(&servers, "")).await),
        None => {
            let mock = Mock::start();
            let broker = connect(config(mock.servers(), MOCK_OPTIONS)).await;
            Arc::new(mq_core::testkit::Owning::new(Arc::new(broker), mock))
        }
    }
}
