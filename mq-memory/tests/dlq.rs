//! `mq_core::dlq::replay` on the in-memory broker: it sends back exactly
//! the dead letters asked for and leaves the rest (a replay cut short is
//! tested on Redis, where the replay really waits on the network between
//! its steps).
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mq_core::dlq::{ReplayOptions, list, replay};
use mq_core::{Broker, Consumer, Message, Nack, ProducerOptions, StartPosition, Subscription, headers};
use mq_memory::MemoryBroker;

/// Sends `n` messages to `orders`; a consumer of group `svc` dead-letters
/// those whose index is in `dead` (reason `bad <i>`, or `timeout <i>` for
/// odd ones) and acks the rest. Returns the ids dead-lettered, by reason kind.
async fn dead_letter_some(broker: &MemoryBroker, n: usize, dead: &[usize]) -> (Vec<String>, Vec<String>) {
    let mut consumer = broker
        .subscribe(Subscription::new("orders", "svc").start(StartPosition::Earliest))
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    for i in 0..n {
        producer
            .send(
                "orders",
                Message::new(format!("{i}"))
                    .with_key(format!("k{i}"))
                    .with_header("app", "x"),
            )
            .await
            .unwrap();
    }
    let (mut bad, mut timeout) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let i: usize = std::str::from_utf8(&d.message().payload)
            .unwrap()
            .parse()
            .unwrap();
        if dead.contains(&i) {
            if i % 2 == 1 {
                timeout.push(d.message().id.clone());
                d.nack(Nack::dead_letter(format!("timeout {i}"))).await.unwrap();
            } else {
                bad.push(d.message().id.clone());
                d.nack(Nack::dead_letter(format!("bad {i}"))).await.unwrap();
            }
        } else {
            d.ack().await.unwrap();
        }
    }
    consumer.close().await.unwrap();
    (bad, timeout)
}

/// What group `svc` of `orders` receives within `wait`, acked: id -> count.
async fn drain(consumer: &mut Box<dyn Consumer>, wait: Duration) -> HashMap<String, usize> {
    let mut got = HashMap::new();
    while let Ok(Ok(Some(d))) = tokio::time::timeout(wait, consumer.recv()).await {
        *got.entry(d.message().id.clone()).or_default() += 1;
        assert_eq!(
            d.message().headers.get("app").map(String::as_str),
            Some("x"),
            "application headers kept"
        );
        assert!(
            !d.message().headers.contains_key(headers::DEAD_LETTER_REASON),
            "dead-letter headers gone"
        );
        d.ack().await.unwrap();
    }
    got
}

#[tokio::test]
async fn replay_sends_back_exactly_the_filtered_dead_letters_and_leaves_the_rest() {
    let broker = MemoryBroker::new();
    let (bad, timeout) = dead_letter_some(&broker, 10, &[2, 3, 4, 7]).await;
    assert_eq!((bad.len(), timeout.len()), (2, 2));
    // A foreign message in the dead-letter topic, without an origin.
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    producer
        .send("orders.dlq", Message::new("foreign"))
        .await
        .unwrap();
    let mut svc = broker
        .subscribe(Subscription::new("orders", "svc").start(StartPosition::Earliest))
        .await
        .unwrap();

    let fast = ReplayOptions::default().idle(Duration::from_millis(200));
    // A dry run sends nothing and keeps everything.
    let dry = replay(&broker, "orders.dlq", &fast.clone().dry_run(true))
        .await
        .unwrap();
    assert_eq!((dry.read, dry.replayed, dry.no_origin), (5, 4, 1), "{dry}");
    assert!(drain(&mut svc, Duration::from_millis(200)).await.is_empty());

    // Only the `bad` ones.
    let first = replay(
        &broker,
        "orders.dlq",
        &fast.clone().filter(headers::DEAD_LETTER_REASON, "bad"),
    )
    .await
    .unwrap();
    assert_eq!(
        (first.replayed, first.filtered_out, first.no_origin),
        (2, 2, 1),
        "{first}"
    );
    assert_eq!(first.by_topic.get("orders"), Some(&2));
    let got = drain(&mut svc, Duration::from_millis(300)).await;
    assert_eq!(
        got.keys().cloned().collect::<HashSet<_>>(),
        bad.iter().cloned().collect::<HashSet<_>>()
    );
    assert!(got.values().all(|&n| n == 1), "{got:?}");

    // Then the rest: the two `timeout` ones; the foreign one stays.
    let second = replay(&broker, "orders.dlq", &fast).await.unwrap();
    assert_eq!(
        (second.read, second.replayed, second.no_origin),
        (3, 2, 1),
        "{second}"
    );
    let got = drain(&mut svc, Duration::from_millis(300)).await;
    assert_eq!(
        got.keys().cloned().collect::<HashSet<_>>(),
        timeout.iter().cloned().collect::<HashSet<_>>()
    );
    let third = replay(&broker, "orders.dlq", &fast).await.unwrap();
    assert_eq!(
        (third.read, third.replayed, third.no_origin),
        (1, 0, 1),
        "{third}"
    );
}

#[tokio::test]
async fn list_shows_what_a_replay_would_send_and_settles_nothing() {
    let broker = MemoryBroker::new();
    let (bad, timeout) = dead_letter_some(&broker, 6, &[1, 2, 3]).await;
    let fast = ReplayOptions::default().idle(Duration::from_millis(200));

    let all = list(&broker, "orders.dlq", &fast).await.unwrap();
    let ids: HashSet<String> = all.iter().map(|m| m.id.clone()).collect();
    let want: HashSet<String> = bad.iter().chain(&timeout).cloned().collect();
    assert_eq!(ids, want);
    assert!(
        all.iter()
            .all(|m| m.header(headers::ORIGINAL_TOPIC) == Some("orders"))
    );

    let only_bad = list(
        &broker,
        "orders.dlq",
        &fast.clone().filter(headers::DEAD_LETTER_REASON, "bad"),
    )
    .await
    .unwrap();
    assert_eq!(
        only_bad.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        bad,
        "the filter applies"
    );
    let one = list(&broker, "orders.dlq", &fast.clone().max(1)).await.unwrap();
    assert_eq!(one.len(), 1, "max applies");

    // Listing settled nothing: a replay still sends every one back.
    let report = replay(&broker, "orders.dlq", &fast).await.unwrap();
    assert_eq!(report.replayed, 3, "{report}");
    assert!(list(&broker, "orders.dlq", &fast).await.unwrap().is_empty());
}
