//! Checks of groups, competing consumers and concurrency.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// Every group receives every message.
pub async fn every_group_receives_everything(broker: Arc<dyn Broker>) {
    if !broker.capabilities().consumer_groups {
        return skip(
            broker.as_ref(),
            "every_group_receives_everything",
            "no consumer groups",
        );
    }
    const N: usize = 30;
    let topic = unique("groups");
    let mut g1 = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g1"))).await;
    let mut g2 = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g2"))).await;
    let mut g3 = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g3"))).await;
    let producer = producer(&broker).await;
    let mut ids = HashSet::new();
    for i in 0..N {
        ids.insert(
            send(producer.as_ref(), &topic, Message::new(format!("{i}")))
                .await
                .id,
        );
    }
    for (name, consumer) in [("g1", &mut g1), ("g2", &mut g2), ("g3", &mut g3)] {
        let got: HashSet<String> = receive_n(consumer.as_mut(), N, name)
            .await
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(got, ids, "group {name} received every message");
        expect_nothing(consumer.as_mut(), "each group gets each message once").await;
    }
}

/// Consumers of one group share its messages: each message goes to exactly
/// one of them, none is lost, and more than one consumer gets work.
pub async fn competing_consumers_share_without_duplicates_or_loss(broker: Arc<dyn Broker>) {
    if !broker.capabilities().consumer_groups {
        return skip(
            broker.as_ref(),
            "competing_consumers_share_without_duplicates_or_loss",
            "no consumer groups",
        );
    }
    const N: usize = 300;
    const CONSUMERS: usize = 3;
    let topic = unique("compete");
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        consumers.push(
            subscribe(
                &broker,
                Subscription::new(&topic, group_for(&topic, "workers")).prefetch(5),
            )
            .await,
        );
    }
    let producer = producer(&broker).await;
    let mut sent = HashSet::new();
    for i in 0..N {
        let msg = Message::new(format!("{i}")).with_key(format!("k{}", i % 16));
        sent.insert(send(producer.as_ref(), &topic, msg).await.id);
    }

    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let deadline = Instant::now() + wait() * 2;
    let mut tasks = Vec::new();
    for (index, mut consumer) in consumers.into_iter().enumerate() {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while seen.lock().unwrap().len() < N && Instant::now() < deadline {
                if let Some(d) = recv_within(consumer.as_mut(), Duration::from_millis(200)).await {
                    ack(&d).await;
                    seen.lock().unwrap().push((index, d.message().id.clone()));
                    // Hold the worker briefly, as real work would, so the
                    // others get their share.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            consumer
        }));
    }
    let mut consumers = Vec::new();
    for t in tasks {
        consumers.push(t.await.expect("consumer task"));
    }
    let seen = seen.lock().unwrap().clone();
    let mut per_consumer: HashMap<usize, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for (index, id) in &seen {
        *per_consumer.entry(*index).or_default() += 1;
        assert!(ids.insert(id.clone()), "message {id} was delivered twice");
    }
    assert_eq!(ids, sent, "every message was delivered to one consumer");
    assert!(per_consumer.len() >= 2, "work was shared: {per_consumer:?}");
    for consumer in &mut consumers {
        expect_nothing(consumer.as_mut(), "all messages were acked").await;
    }
}

/// 20 publishers sending 500 messages each at once lose nothing.
pub async fn concurrent_publishers_lose_nothing(broker: Arc<dyn Broker>) {
    const PUBLISHERS: usize = 20;
    const EACH: usize = 500;
    let topic = unique("publishers");
    let mut consumer = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "g")).prefetch(500),
    )
    .await;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let producer = producer(&broker).await;
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let msg = Message::new(format!("{p}-{i}")).with_key(format!("p{p}"));
                ids.push(producer.send(&topic, msg).await.expect("send").id);
            }
            ids
        }));
    }
    // Consume while they publish, so bounded brokers are not left full.
    let total = PUBLISHERS * EACH;
    let mut got = HashSet::with_capacity(total);
    let deadline = Instant::now() + wait() * 4;
    while got.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} messages arrived in time",
            got.len()
        );
        if let Some(d) = recv_within(consumer.as_mut(), Duration::from_secs(1)).await {
            ack(&d).await;
            got.insert(d.message().id.clone());
        }
    }
    let mut sent = HashSet::with_capacity(total);
    for t in tasks {
        sent.extend(t.await.expect("publisher task"));
    }
    assert_eq!(sent.len(), total);
    assert_eq!(got, sent, "every confirmed message arrived");
}

/// Consumers of one group opened and closed (or dropped) concurrently while
/// messages flow: every message is still acked by someone.
pub async fn concurrent_subscribers_lose_nothing(broker: Arc<dyn Broker>) {
    const N: usize = 600;
    const CHURNERS: usize = 4;
    let topic = unique("churn");
    // Keeps the group alive (and, for start=latest, existing) from the start.
    let anchor = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "churn")).ack_timeout(Duration::from_secs(2)),
    )
    .await;
    let producer = producer(&broker).await;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    for worker in 0..CHURNERS {
        let broker = broker.clone();
        let topic = topic.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Acquire) {
                round += 1;
                let sub = Subscription::new(&topic, group_for(&topic, "churn"))
                    .prefetch(8)
                    .ack_timeout(Duration::from_secs(2))
                    .unlimited_attempts();
                let mut consumer = broker.subscribe(sub).await.expect("subscribe");
                // Take a few, ack most, leave the last unacked; then close or drop.
                for i in 0..(3 + (worker + round) % 5) {
                    let Some(d) = recv_within(consumer.as_mut(), Duration::from_millis(100)).await else {
                        break;
                    };
                    if i % 4 != 3 {
                        ack(&d).await;
                        acked.lock().unwrap().insert(d.message().id.clone());
                    }
                }
                if round.is_multiple_of(2) {
                    consumer.close().await.expect("close");
                } else {
                    drop(consumer);
                }
            }
        }));
    }
    let mut sent = HashSet::new();
    for i in 0..N {
        sent.insert(
            send(producer.as_ref(), &topic, Message::new(format!("{i}")))
                .await
                .id,
        );
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.expect("churn task");
    }
    drop(anchor);

    // Whatever the churners left behind, a last consumer picks up.
    let sub = Subscription::new(&topic, group_for(&topic, "churn"))
        .prefetch(64)
        .ack_timeout(Duration::from_secs(2))
        .unlimited_attempts();
    let mut last = subscribe(&broker, sub).await;
    let deadline = Instant::now() + wait() * 2;
    loop {
        let missing = sent.difference(&acked.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {N} messages were never acked"
        );
        if let Some(d) = recv_within(last.as_mut(), Duration::from_secs(1)).await {
            ack(&d).await;
            acked.lock().unwrap().insert(d.message().id.clone());
        }
    }
    let acked = acked.lock().unwrap();
    assert!(sent.is_subset(&acked), "every sent message was acked");
}
