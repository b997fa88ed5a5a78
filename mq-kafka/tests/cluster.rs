//! mq-kafka on several brokers: librdkafka's mock cluster with 3 brokers,
//! where every topic mq uses is replicated 3 times (the mock's default with
//! 3 brokers; it has no CreateTopics API to ask for it). The conformance kit
//! runs on this cluster (`tests/conformance.rs`), and the leader of a
//! partition goes down and comes back twice during 10,000 sends
//! (`tests/faults.rs`); this suite checks the replication those rely on,
//! and that a send lands while one of the three replicas is down.

#![allow(clippy::expect_used)] // test helpers panic on failure by design

mod common;

use std::time::Duration;

use common::{MOCK_OPTIONS, Mock, config, connect};
use mq_core::testkit::{group_for, report, unique};
use mq_core::{Broker, Message, ProducerOptions, StartPosition, Subscription};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

/// `(partitions, replicas per partition, in-sync replicas per partition, brokers)`.
fn replication(servers: &str, topic: &str) -> (usize, Vec<usize>, Vec<usize>, usize) {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("a metadata client");
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let t = md.topics().first().expect("the topic's metadata");
    (
        t.partitions().len(),
        t.partitions().iter().map(|p| p.replicas().len()).collect(),
        t.partitions().iter().map(|p| p.isr().len()).collect(),
        md.brokers().len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_are_replicated_three_times_and_survive_a_replica_down() {
    let mock = Mock::start();
    let broker = connect(config(mock.servers(), MOCK_OPTIONS)).await;
    let topic = unique("replicas");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    producer
        .send(&topic, Message::new("first"))
        .await
        .expect("first send");
    let (partitions, replicas, isr, brokers) = replication(mock.servers(), &topic);
    assert_eq!(brokers, 3, "the mock cluster has 3 brokers");
    assert!(partitions > 0);
    assert!(
        replicas.iter().all(|&r| r == 3),
        "replicas per partition: {replicas:?}"
    );
    assert!(
        isr.iter().all(|&r| r == 3),
        "in-sync replicas per partition: {isr:?}"
    );

    // Broker 1 leads every partition; a follower (broker 2) goes down:
    // sends are still confirmed, and read back.
    for partition in 0..i32::try_from(partitions).expect("a few partitions") {
        mock.cluster()
            .partition_leader(&topic, partition, Some(1))
            .expect("partition_leader");
    }
    mock.cluster().broker_down(2).expect("broker_down");
    let mut sent = Vec::new();
    for i in 0..20 {
        let receipt = tokio::time::timeout(
            Duration::from_secs(30),
            producer.send(&topic, Message::new(format!("{i}")).with_key(format!("k{i}"))),
        )
        .await
        .expect("a send in time with a replica down")
        .expect("a send with a replica down");
        sent.push(receipt.id);
    }
    mock.cluster().broker_up(2).expect("broker_up");
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, group_for(&topic, "g")).start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < sent.len() + 1 && std::time::Instant::now() < deadline {
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            got.push(d.message().id.clone());
            d.ack().await.expect("ack");
        }
    }
    assert!(
        sent.iter().all(|id| got.contains(id)),
        "every send made with a replica down was read: {} of {}",
        sent.iter().filter(|id| got.contains(id)).count(),
        sent.len()
    );
    report(&format!(
        "kafka mock cluster: 3 brokers, {partitions} partitions x 3 replicas; {} sends with a follower down, all read back",
        sent.len()
    ));
    consumer.close().await.expect("close consumer");
    broker.close().await.expect("close");
}
