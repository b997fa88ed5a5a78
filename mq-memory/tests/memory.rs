//! Behaviour specific to the in-memory broker: capacity, backpressure,
//! independence, URLs.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::time::Duration;

use mq_core::{
    Broker, Error, Message, Nack, Producer, ProducerOptions, Registry, StartPosition, Subscription, headers,
};
use mq_memory::{MemoryBroker, MemoryConfig};

const BOUND: Duration = Duration::from_secs(10);

/// Subscribes, sends one message to "t", and receives it.
async fn one_delivery(
    broker: &MemoryBroker,
    sub: Subscription,
) -> (Box<dyn mq_core::Consumer>, mq_core::Delivery) {
    let mut consumer = broker.subscribe(sub).await.unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    producer.send("t", Message::new("m")).await.unwrap();
    let delivery = consumer.recv().await.unwrap().unwrap();
    (consumer, delivery)
}

fn small(capacity: usize) -> MemoryBroker {
    MemoryBroker::with_config(MemoryConfig::default().capacity(capacity))
}

#[tokio::test]
async fn full_topic_makes_send_wait_until_a_group_takes() {
    let broker = small(3);
    let mut consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    let producer: Arc<dyn Producer> = Arc::from(broker.producer(ProducerOptions::default()).await.unwrap());
    for i in 0..3 {
        producer.send("t", Message::new(format!("{i}"))).await.unwrap();
    }
    let blocked = tokio::spawn({
        let producer = producer.clone();
        async move { producer.send("t", Message::new("fourth")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "send on a full topic waits");
    assert_eq!(broker.topic_len("t"), 3);

    let first = consumer.recv().await.unwrap().unwrap();
    first.ack().await.unwrap();
    let receipt = tokio::time::timeout(BOUND, blocked)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&*receipt.topic, "t");
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let d = consumer.recv().await.unwrap().unwrap();
        payloads.push(String::from_utf8(d.message().payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(payloads, ["1", "2", "fourth"]);
}

#[tokio::test]
async fn try_send_on_full_topic_gives_the_message_back() {
    let broker = small(2);
    let _consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    let producer = broker.memory_producer(ProducerOptions::default());
    producer.try_send("t", Message::new("a")).unwrap();
    producer.try_send("t", Message::new("b")).unwrap();
    let msg = Message::new("c").with_key("k").with_header("h", "v");
    let id = msg.id.clone();
    let err = producer.try_send("t", msg).unwrap_err();
    assert!(
        matches!(err, Error::Full { ref topic, .. } if topic == "t"),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let back = err.into_message().unwrap();
    assert_eq!(
        (back.id.as_str(), back.payload.as_ref()),
        (id.as_str(), &b"c"[..])
    );
    assert_eq!(back.header("h"), Some("v"));
}

#[tokio::test]
async fn send_timeout_on_full_topic_is_a_retryable_timeout() {
    let broker = small(1);
    let _consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    let options = ProducerOptions::default().send_timeout(Duration::from_millis(100));
    let producer = broker.producer(options).await.unwrap();
    producer.send("t", Message::new("fits")).await.unwrap();
    let err = producer.send("t", Message::new("waits")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("`t`"), "{err}");
}

#[tokio::test]
async fn batch_larger_than_capacity_waits_and_keeps_order() {
    let broker = small(4);
    let mut consumer = broker
        .subscribe(Subscription::new("t", "g").prefetch(100))
        .await
        .unwrap();
    let producer: Arc<dyn Producer> = Arc::from(broker.producer(ProducerOptions::default()).await.unwrap());
    let batch: Vec<Message> = (0..20).map(|i| Message::new(format!("{i}"))).collect();
    let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    let sender = tokio::spawn({
        let producer = producer.clone();
        async move { producer.send_batch("t", batch).await }
    });
    let mut got = Vec::new();
    while got.len() < 20 {
        let d = tokio::time::timeout(BOUND, consumer.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(d.message().id.clone());
        d.ack().await.unwrap();
    }
    let receipts = tokio::time::timeout(BOUND, sender)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, ids);
    assert_eq!(receipts.len(), 20);
}

#[tokio::test]
async fn history_without_groups_keeps_the_newest_up_to_capacity() {
    let broker = small(5);
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    for i in 0..12 {
        producer.send("t", Message::new(format!("{i}"))).await.unwrap();
    }
    let sub = Subscription::new("t", "late").start(StartPosition::Earliest);
    let mut consumer = broker.subscribe(sub).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        let d = consumer.recv().await.unwrap().unwrap();
        got.push(String::from_utf8(d.message().payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(got, ["7", "8", "9", "10", "11"]);
}

#[tokio::test]
async fn brokers_are_independent() {
    let a = MemoryBroker::new();
    let b = MemoryBroker::new();
    let mut on_b = b.subscribe(Subscription::new("t", "g")).await.unwrap();
    let mut on_a = a.subscribe(Subscription::new("t", "g")).await.unwrap();
    a.producer(ProducerOptions::default())
        .await
        .unwrap()
        .send("t", Message::new("a only"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), on_b.recv())
            .await
            .is_err()
    );
    let d = on_a.recv().await.unwrap().unwrap();
    assert_eq!(d.message().payload, "a only");
    // Clones share one broker.
    let a2 = a.clone();
    a2.close().await.unwrap();
    assert!(a.producer(ProducerOptions::default()).await.is_err());
    assert!(b.producer(ProducerOptions::default()).await.is_ok());
}

#[tokio::test]
async fn ack_after_consumer_close_is_expired_and_message_returns() {
    let broker = MemoryBroker::new();
    let (mut consumer, d) = one_delivery(&broker, Subscription::new("t", "g")).await;
    consumer.close().await.unwrap();
    let err = d.ack().await.unwrap_err();
    assert!(matches!(err, Error::DeliveryExpired { .. }), "{err:?}");
    assert!(!d.is_settled(), "a failed ack leaves the delivery unsettled");
    let stats = broker.group_stats("t", "g").unwrap();
    assert_eq!((stats.ready, stats.in_flight, stats.consumers), (1, 0, 0));
    let mut again = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    let d2 = again.recv().await.unwrap().unwrap();
    assert_eq!(
        (d2.message().id.as_str(), d2.attempt()),
        (d.message().id.as_str(), 2)
    );
}

#[tokio::test]
async fn consumer_drop_on_last_attempt_dead_letters() {
    let broker = MemoryBroker::new();
    let mut dlq = broker.subscribe(Subscription::new("t.dlq", "ops")).await.unwrap();
    let (consumer, d) = one_delivery(&broker, Subscription::new("t", "g").max_attempts(1)).await;
    drop(consumer);
    let dead = tokio::time::timeout(BOUND, dlq.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(dead.message().id, d.message().id);
    assert_eq!(dead.message().header(headers::ATTEMPTS), Some("1"));
    assert!(
        dead.message()
            .header(headers::DEAD_LETTER_REASON)
            .unwrap()
            .contains("max attempts (1)")
    );
}

#[tokio::test]
async fn delayed_requeue_is_counted_and_delivered_once() {
    let broker = MemoryBroker::new();
    let (mut consumer, d) = one_delivery(&broker, Subscription::new("t", "g")).await;
    d.nack(Nack::requeue_after(Duration::from_millis(300)))
        .await
        .unwrap();
    let stats = broker.group_stats("t", "g").unwrap();
    assert_eq!((stats.delayed, stats.in_flight), (1, 0));
    let again = tokio::time::timeout(BOUND, consumer.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(400), consumer.recv())
            .await
            .is_err()
    );
    let stats = broker.group_stats("t", "g").unwrap();
    assert_eq!(
        (stats.backlog, stats.ready, stats.delayed, stats.in_flight),
        (0, 0, 0, 0)
    );
    assert_eq!(stats.consumers, 1);
}

#[tokio::test]
async fn registry_connects_memory_urls_and_explains_bad_ones() {
    let mut registry = Registry::new();
    mq_memory::register(&mut registry);
    assert_eq!(registry.schemes(), ["memory"]);
    let broker = registry.connect("memory://?capacity=7").await.unwrap();
    assert_eq!(broker.name(), "memory");

    let err = registry.connect("memory://?capasity=7").await.unwrap_err();
    assert!(matches!(err, Error::UnknownOption { .. }), "{err}");
    assert!(err.to_string().contains("capasity") && err.to_string().contains("capacity"));

    let err = registry
        .connect("redis://user:pw-never-shown@localhost")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("mq-redis") && text.contains("registered schemes: memory"),
        "{text}"
    );
    assert!(!text.contains("pw-never-shown"));

    let err = registry.connect("memory://:hunter2@host").await.unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn invalid_names_are_rejected() {
    let broker = MemoryBroker::new();
    assert!(matches!(
        broker.subscribe(Subscription::new("", "g")).await.unwrap_err(),
        Error::InvalidOption { .. }
    ));
    assert!(broker.subscribe(Subscription::new("t", "")).await.is_err());
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    assert!(producer.send("", Message::new("x")).await.is_err());
}
