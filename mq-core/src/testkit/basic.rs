//! Checks of what a message keeps on its way, and of ordering.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::{Error, Headers, Message, StartPosition};

fn app_headers(headers: &Headers) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| !k.starts_with("mq-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Sends `message` to a fresh topic and checks the delivery equals it.
async fn round_trip(broker: &Arc<dyn Broker>, what: &str, message: Message) {
    let topic = unique(what);
    let mut consumer = subscribe(broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    let producer = producer(broker).await;
    let receipt = send(producer.as_ref(), &topic, message.clone()).await;
    assert_eq!(&*receipt.topic, topic, "receipt names the topic");
    assert_eq!(receipt.id, message.id, "receipt names the message id");

    let delivery = expect_delivery(consumer.as_mut(), what).await;
    let got = delivery.message();
    assert_eq!(got.id, message.id, "id is kept");
    assert_eq!(got.key, message.key, "key is kept");
    assert_eq!(
        app_headers(&got.headers),
        app_headers(&message.headers),
        "headers are kept"
    );
    assert_eq!(got.payload.len(), message.payload.len(), "payload length is kept");
    assert!(got.payload == message.payload, "payload bytes are kept");
    let sent_ms = message.timestamp.duration_since(UNIX_EPOCH).unwrap_or_default();
    let got_ms = got.timestamp.duration_since(UNIX_EPOCH).unwrap_or_default();
    let skew = sent_ms.abs_diff(got_ms);
    assert!(
        skew <= Duration::from_secs(1),
        "timestamp kept within 1 s (off by {skew:?})"
    );
    assert_eq!(delivery.attempt(), 1, "first delivery is attempt 1");
    assert_eq!(delivery.topic(), topic);
    assert_eq!(delivery.group(), group_for(&topic, "g"));
    ack(&delivery).await;
    expect_nothing(consumer.as_mut(), "one message was sent and acked").await;
}

/// A binary payload, a key, headers and the id survive the trip.
pub async fn round_trip_keeps_message(broker: Arc<dyn Broker>) {
    let payload: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect();
    let message = Message::new(payload)
        .with_key("customer-42")
        .with_header("trace", "abc-123")
        .with_header("unicode", "grüße, 世界")
        .with_header("empty", "");
    round_trip(&broker, "roundtrip", message).await;
}

/// An empty payload survives the trip.
pub async fn round_trip_empty_payload(broker: Arc<dyn Broker>) {
    round_trip(&broker, "empty", Message::new(Vec::<u8>::new())).await;
}

/// A 1 MiB payload survives the trip (where the backend accepts one).
pub async fn round_trip_large_payload(broker: Arc<dyn Broker>) {
    const SIZE: usize = 1 << 20;
    if let Some(limit) = broker.capabilities().max_message_bytes
        && limit < SIZE + 4096
    {
        return skip(
            broker.as_ref(),
            "round_trip_large_payload",
            "its message size limit is below 1 MiB",
        );
    }
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    round_trip(&broker, "large", Message::new(payload).with_key("big")).await;
}

/// `send_json` and `decode_json` round-trip; a payload that is not the
/// expected JSON is a typed decode error.
pub async fn json_round_trip_and_decode_error(broker: Arc<dyn Broker>) {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Order {
        id: u64,
        items: Vec<String>,
    }
    use crate::ProducerExt;
    let topic = unique("json");
    let mut consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    let producer = producer(&broker).await;
    let order = Order {
        id: 9,
        items: vec!["tea".into(), "scone".into()],
    };
    let good_id = producer.send_json(&topic, &order).await.expect("send_json").id;
    let bad_id = send(producer.as_ref(), &topic, Message::new("not json {"))
        .await
        .id;

    // Two messages without a key: a backend that orders per key only (Kafka
    // partitions) may deliver them in either order.
    let first = expect_delivery(consumer.as_mut(), "one of the two messages").await;
    let second = expect_delivery(consumer.as_mut(), "the other message").await;
    let (good, bad) = if first.message().id == good_id {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(good.message().id, good_id);
    assert_eq!(bad.message().id, bad_id);
    assert_eq!(good.decode_json::<Order>().expect("decodes"), order);
    ack(&good).await;
    match bad.decode_json::<Order>() {
        Err(Error::Decode { id, .. }) => assert_eq!(id, bad.message().id),
        other => panic!("expected Error::Decode, got {other:?}"),
    }
    ack(&bad).await;
}

/// A message over the backend's declared size limit is refused with
/// [`Error::TooLarge`] naming the topic, and nothing is delivered.
pub async fn oversized_message_is_rejected(broker: Arc<dyn Broker>) {
    let Some(limit) = broker.capabilities().max_message_bytes else {
        return skip(
            broker.as_ref(),
            "oversized_message_is_rejected",
            "it declares no size limit",
        );
    };
    let topic = unique("oversized");
    let mut consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    let producer = producer(&broker).await;
    let err = producer
        .send(&topic, Message::new(vec![7u8; limit + 1]))
        .await
        .expect_err("a message over the limit must be refused");
    match &err {
        Error::TooLarge { topic: t, size, .. } => {
            assert_eq!(t, &topic);
            assert!(*size > limit);
        }
        other => panic!("expected Error::TooLarge, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&topic),
        "the error names the topic: {err}"
    );
    expect_nothing(consumer.as_mut(), "the oversized message was refused").await;
}

/// `send_batch` returns a receipt per message, in order, and the messages
/// arrive in that order.
pub async fn batch_send_keeps_order(broker: Arc<dyn Broker>) {
    const N: usize = 200;
    let topic = unique("batch");
    let mut consumer = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "g")).prefetch(N),
    )
    .await;
    let producer = producer(&broker).await;
    let batch: Vec<Message> = (0..N)
        .map(|i| Message::new(format!("{i}")).with_key("one-key"))
        .collect();
    let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    let receipts = producer.send_batch(&topic, batch).await.expect("send_batch");
    let receipt_ids: Vec<String> = receipts.iter().map(|r| r.id.clone()).collect();
    assert_eq!(receipt_ids, ids, "one receipt per message, in order");
    let got: Vec<String> = receive_n(consumer.as_mut(), N, "the batch")
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, ids, "batch arrives in order");
}

/// Messages with the same key arrive in the order they were sent, while
/// several keys are sent concurrently.
pub async fn order_per_key_under_concurrent_sends(broker: Arc<dyn Broker>) {
    if !broker.capabilities().ordering_per_key {
        return skip(
            broker.as_ref(),
            "order_per_key_under_concurrent_sends",
            "no ordering per key",
        );
    }
    const KEYS: usize = 8;
    const PER_KEY: usize = 60;
    let topic = unique("order");
    let mut consumer = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "g")).prefetch(KEYS * PER_KEY),
    )
    .await;
    let producer: Arc<dyn Producer> = Arc::from(super::producer(&broker).await);
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let producer = producer.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_KEY {
                let msg = Message::new(format!("{seq}")).with_key(format!("key-{k}"));
                producer.send(&topic, msg).await.expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender task");
    }
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in receive_n(consumer.as_mut(), KEYS * PER_KEY, "keyed messages").await {
        let key = m.key.clone().expect("key kept");
        let seq: i64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        let prev = last.insert(key.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {key}: got {seq} after {prev}");
    }
    assert_eq!(last.len(), KEYS);
}

/// A message sent to one topic reaches only that topic's groups.
pub async fn topics_are_isolated(broker: Arc<dyn Broker>) {
    let a = unique("iso-a");
    let b = unique("iso-b");
    // One group name on both topics: a group is scoped to its topic.
    let same = group_for(&a, "same-group");
    let mut on_a = subscribe(&broker, Subscription::new(&a, &same)).await;
    let mut on_b = subscribe(&broker, Subscription::new(&b, &same)).await;
    let producer = producer(&broker).await;
    let sent = send(producer.as_ref(), &a, Message::new("for a")).await;
    let d = expect_delivery(on_a.as_mut(), "the message sent to topic a").await;
    assert_eq!(d.message().id, sent.id);
    ack(&d).await;
    expect_nothing(on_b.as_mut(), "nothing was sent to topic b").await;
}

/// A group created at earliest after messages were sent sees them all.
pub async fn new_group_from_earliest_sees_history(broker: Arc<dyn Broker>) {
    if !broker.capabilities().replay_from_earliest {
        return skip(
            broker.as_ref(),
            "new_group_from_earliest_sees_history",
            "no replay from earliest",
        );
    }
    let topic = unique("earliest");
    // An existing group makes the topic exist on every backend.
    let _first = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "first"))).await;
    let producer = producer(&broker).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            send(
                producer.as_ref(),
                &topic,
                Message::new(format!("old {i}")).with_key("k"),
            )
            .await
            .id,
        );
    }
    let sub = Subscription::new(&topic, group_for(&topic, "late")).start(StartPosition::Earliest);
    let mut late = subscribe(&broker, sub).await;
    let got: Vec<String> = receive_n(late.as_mut(), 5, "history")
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, ids, "a new group at earliest sees the history in order");
}

/// A group created at latest sees only what is sent after it subscribed.
pub async fn new_group_from_latest_skips_history(broker: Arc<dyn Broker>) {
    // Without consumer groups a second group is not new: it shares what the
    // first one's subscription kept.
    if !broker.capabilities().consumer_groups {
        return skip(
            broker.as_ref(),
            "new_group_from_latest_skips_history",
            "no consumer groups",
        );
    }
    let topic = unique("latest");
    let _first = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "first"))).await;
    let producer = producer(&broker).await;
    for i in 0..3 {
        send(
            producer.as_ref(),
            &topic,
            Message::new(format!("old {i}")).with_key("k"),
        )
        .await;
    }
    let sub = Subscription::new(&topic, group_for(&topic, "late")).start(StartPosition::Latest);
    let mut late = subscribe(&broker, sub).await;
    let mut new_ids = Vec::new();
    for i in 0..2 {
        new_ids.push(
            send(
                producer.as_ref(),
                &topic,
                Message::new(format!("new {i}")).with_key("k"),
            )
            .await
            .id,
        );
    }
    let got: Vec<String> = receive_n(late.as_mut(), 2, "the new messages")
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, new_ids, "the first deliveries are the new messages");
    expect_nothing(late.as_mut(), "history must not reach a group started at latest").await;
}
