//! Checks of batch consume (`Consumer::recv_many`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::ack_all;

/// `recv_many` hands out batches of at most `max` (more than one when more
/// are waiting), every message once, in
/// order per key within and across batches; on an idle subscription it
/// returns an empty batch after about its bound; `max` 0 is an empty batch
/// at once; after close it returns `None`.
pub async fn recv_many_batches_in_order_and_waits_at_most_the_bound(broker: Arc<dyn Broker>) {
    const KEYS: usize = 3;
    const PER_KEY: usize = 10;
    const MAX: usize = 8;
    let topic = unique("recvmany");
    let mut consumer = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "g")).prefetch(50),
    )
    .await;
    let producer = producer(&broker).await;
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            send(
                producer.as_ref(),
                &topic,
                Message::new(format!("k{k}-{n}")).with_key(format!("k{k}")),
            )
            .await;
        }
    }

    let deadline = tokio::time::Instant::now() + wait();
    let (mut seen, mut batches, mut largest) = (HashSet::new(), 0usize, 0usize);
    let mut last: HashMap<String, usize> = HashMap::new();
    while seen.len() < KEYS * PER_KEY {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} messages within {:?} of recv_many",
            seen.len(),
            KEYS * PER_KEY,
            wait()
        );
        let batch = consumer
            .recv_many(MAX, Duration::from_millis(500))
            .await
            .expect("recv_many")
            .expect("the consumer is open");
        assert!(batch.len() <= MAX, "a batch of {} over max {MAX}", batch.len());
        if batch.is_empty() {
            continue;
        }
        batches += 1;
        largest = largest.max(batch.len());
        for d in &batch {
            let text = String::from_utf8_lossy(&d.message().payload).into_owned();
            let (key, n) = text.split_once('-').expect("a payload of this check");
            let n: usize = n.parse().expect("a sequence number");
            if let Some(before) = last.insert(key.to_string(), n) {
                assert!(n > before, "key {key}: {n} after {before} (order per key lost)");
            }
            assert!(seen.insert(text.clone()), "{text} delivered twice");
        }
        ack_all(&batch).await.expect("ack the batch");
    }
    // Every message was sent before the first recv_many: a batch takes what
    // is already there, not one delivery per call.
    assert!(
        largest > 1,
        "{KEYS}x{PER_KEY} messages waiting, yet every batch held one ({batches} batches)"
    );
    super::report(&format!(
        "recv_many: {}: {} messages in {batches} batches (largest {largest}, max {MAX})",
        broker.name(),
        KEYS * PER_KEY
    ));

    // Idle: an empty batch after about the bound.
    let bound = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let idle = consumer.recv_many(MAX, bound).await.expect("recv_many when idle");
    let took = started.elapsed();
    assert_eq!(idle.map(|b| b.len()), Some(0), "nothing was sent: an empty batch");
    assert!(
        took >= bound - Duration::from_millis(50),
        "returned after {took:?}, before its bound {bound:?}"
    );
    assert!(
        took < bound + wait(),
        "returned after {took:?} for a bound of {bound:?}"
    );
    let none = consumer.recv_many(0, wait()).await.expect("recv_many(0)");
    assert_eq!(none.map(|b| b.len()), Some(0), "max 0: an empty batch");

    consumer.close().await.expect("close");
    let closed = consumer
        .recv_many(MAX, bound)
        .await
        .expect("recv_many after close");
    assert!(closed.is_none(), "recv_many after close: {closed:?}");
}
