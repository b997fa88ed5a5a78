//! A slow consumer's memory follows its prefetch: librdkafka's read-ahead
//! (64 MiB by default, whatever the prefetch) is bounded from it, unless
//! the application sets the queue properties itself. Its own test binary:
//! it reads the process's resident memory.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::time::Duration;

use common::{MOCK_OPTIONS, Mock, config, connect};
use mq_core::testkit::{expect_delivery, group_for, unique};
use mq_core::{Broker, Message, ProducerOptions, StartPosition, Subscription};

/// The process's resident memory, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_memory_by_its_prefetch() {
    const MESSAGES: usize = 60_000;
    const SIZE: usize = 2048;
    let mock = Mock::start();
    let broker = connect(config(mock.servers(), &format!("{MOCK_OPTIONS}&partitions=1"))).await;
    let topic = unique("memory");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let payload = vec![b'm'; SIZE];
    for chunk in 0..MESSAGES / 1000 {
        let batch: Vec<Message> = (0..1000)
            .map(|i| Message::new(payload.clone()).with_key(format!("{}", chunk * 1000 + i)))
            .collect();
        producer.send_batch(&topic, batch).await.expect("send");
    }
    let mut report = Vec::new();
    for prefetch in [10usize, 1000] {
        let before = rss_kib();
        let sub = Subscription::new(&topic, group_for(&topic, &format!("p{prefetch}")))
            .prefetch(prefetch)
            .start(StartPosition::Earliest);
        let mut consumer = broker.subscribe(sub).await.expect("subscribe");
        // A slow consumer: a few deliveries, then librdkafka has time to
        // read ahead as far as it may.
        for _ in 0..5 {
            let d = expect_delivery(consumer.as_mut(), "a message").await;
            d.ack().await.expect("ack");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let grown = rss_kib().saturating_sub(before);
        report.push((prefetch, grown));
        consumer.close().await.expect("close");
    }
    mq_core::testkit::report(&format!(
        "kafka: resident memory a slow consumer added over {} MiB of {SIZE}-byte messages: {}",
        (MESSAGES * SIZE) >> 20,
        report
            .iter()
            .map(|(p, kib)| format!("prefetch {p}: {:.1} MiB", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (_, small) = report[0];
    assert!(
        small < 8 * 1024,
        "a consumer with prefetch 10 added {small} KiB (librdkafka's default read-ahead is 64 MiB)"
    );
    broker.close().await.expect("close");
}
