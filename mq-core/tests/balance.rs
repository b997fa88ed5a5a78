//! Balanced producer and merged consumer over in-memory brokers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mq_core::balance::{BalancedProducer, BreakerState, MergedConsumer, PrimaryBackup, RoundRobin};
use mq_core::{Broker, Consumer, Error, Message, Producer, ProducerOptions, Receipt, Result, Subscription};
use mq_memory::{MemoryBroker, MemoryConfig};

async fn producer(b: &MemoryBroker) -> Box<dyn Producer> {
    b.producer(ProducerOptions::default()).await.unwrap()
}

#[tokio::test]
async fn round_robin_spreads_sends_evenly() {
    let brokers = [MemoryBroker::new(), MemoryBroker::new(), MemoryBroker::new()];
    let mut producers = Vec::new();
    for b in &brokers {
        producers.push(producer(b).await);
    }
    let balanced = BalancedProducer::new(producers, Arc::new(RoundRobin::new()));
    for i in 0..30 {
        balanced.send("t", Message::new(format!("{i}"))).await.unwrap();
    }
    let lens: Vec<usize> = brokers.iter().map(|b| b.topic_len("t")).collect();
    assert_eq!(lens, [10, 10, 10]);
}

#[tokio::test]
async fn primary_backup_fails_over_when_the_primary_goes_down() {
    let (primary, backup) = (MemoryBroker::new(), MemoryBroker::new());
    let balanced = BalancedProducer::new(
        vec![producer(&primary).await, producer(&backup).await],
        Arc::new(PrimaryBackup),
    )
    .breaker(1, Duration::from_secs(60));
    for i in 0..5 {
        balanced.send("t", Message::new(format!("{i}"))).await.unwrap();
    }
    assert_eq!(
        (primary.topic_len("t"), backup.topic_len("t")),
        (5, 0),
        "the primary while healthy"
    );
    primary.close().await.unwrap();
    for i in 5..10 {
        balanced
            .send("t", Message::new(format!("{i}")))
            .await
            .expect("no send fails while a backup is up");
    }
    assert_eq!(backup.topic_len("t"), 5);
    assert!(
        matches!(balanced.health()[0], BreakerState::Open { .. }),
        "the primary's breaker opened"
    );
    assert_eq!(balanced.health()[1], BreakerState::Closed);
}

/// A producer that fails with a retryable error while `down` is set.
#[derive(Debug)]
struct Switch {
    inner: Box<dyn Producer>,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl Producer for Switch {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Connection {
                backend: "test",
                endpoint: "switch".into(),
                reason: "down".into(),
                source: None,
            });
        }
        self.inner.send(topic, message).await
    }
    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let mut out = Vec::new();
        for m in messages {
            out.push(self.send(topic, m).await?);
        }
        Ok(out)
    }
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn primary_is_used_again_once_a_probe_succeeds() {
    let (primary, backup) = (MemoryBroker::new(), MemoryBroker::new());
    let down = Arc::new(AtomicBool::new(true));
    let switch = Switch {
        inner: producer(&primary).await,
        down: down.clone(),
    };
    let balanced = BalancedProducer::new(
        vec![Box::new(switch), producer(&backup).await],
        Arc::new(PrimaryBackup),
    )
    .breaker(2, Duration::from_millis(100));
    for _ in 0..4 {
        balanced.send("t", Message::new("x")).await.unwrap();
    }
    assert_eq!((primary.topic_len("t"), backup.topic_len("t")), (0, 4));
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    balanced.send("t", Message::new("probe")).await.unwrap();
    assert_eq!(
        primary.topic_len("t"),
        1,
        "after the cooldown a probe goes to the primary"
    );
    assert_eq!(balanced.health()[0], BreakerState::Closed);
}

#[tokio::test]
async fn errors_no_endpoint_can_fix_are_not_retried_elsewhere() {
    let small = MemoryBroker::with_config(MemoryConfig::default().max_message_bytes(10));
    let other = MemoryBroker::new();
    let balanced = BalancedProducer::new(
        vec![producer(&small).await, producer(&other).await],
        Arc::new(PrimaryBackup),
    );
    let err = balanced
        .send("t", Message::new(vec![0u8; 100]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert_eq!(other.topic_len("t"), 0);
    assert_eq!(
        balanced.health()[0],
        BreakerState::Closed,
        "bad input does not count against the endpoint"
    );
}

#[tokio::test]
async fn all_endpoints_down_is_an_error_naming_the_last_failure() {
    let (a, b) = (MemoryBroker::new(), MemoryBroker::new());
    let balanced = BalancedProducer::new(
        vec![producer(&a).await, producer(&b).await],
        Arc::new(RoundRobin::new()),
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
    let err = balanced.send("t", Message::new("x")).await.unwrap_err();
    assert!(
        matches!(err, Error::Closed { .. } | Error::Connection { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_consumer_receives_from_every_broker_and_acks_on_each() {
    let (a, b) = (MemoryBroker::new(), MemoryBroker::new());
    let merged_parts: Vec<Box<dyn Consumer>> = vec![
        a.subscribe(Subscription::new("t", "g")).await.unwrap(),
        b.subscribe(Subscription::new("t", "g")).await.unwrap(),
    ];
    let mut merged = MergedConsumer::new(merged_parts);
    let mut sent = std::collections::HashSet::new();
    for i in 0..20 {
        let broker = if i % 3 == 0 { &a } else { &b };
        sent.insert(
            producer(broker)
                .await
                .send("t", Message::new(format!("{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < 20 {
        let d = tokio::time::timeout(Duration::from_secs(10), merged.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.insert(d.message().id.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(got, sent);
    for broker in [&a, &b] {
        assert_eq!(
            broker.group_stats("t", "g").unwrap().in_flight,
            0,
            "acked on its own broker"
        );
    }
    a.close().await.unwrap();
    assert_eq!(merged.len(), 2);
    b.producer(ProducerOptions::default())
        .await
        .unwrap()
        .send("t", Message::new("late"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), merged.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        d.message().payload,
        "late",
        "one broker closing does not stop the others"
    );
    assert_eq!(merged.len(), 1);
    merged.close().await.unwrap();
    assert!(merged.recv().await.unwrap().is_none());
}
