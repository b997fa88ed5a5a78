//! Checks of the worker's typed handlers over a backend: what cannot
//! succeed is dead-lettered at once, what can is retried.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::headers;
use crate::retry::ExponentialBackoff;
use crate::worker::{HandlerResult, Meta, Worker, json, permanent};

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
    kind: String,
}

/// A JSON handler on a worker: a payload that does not decode and a
/// permanent error are dead-lettered on their first attempt (the decode
/// error, and the handler's error, as the reason); a transient error is
/// retried with the policy and then succeeds.
pub async fn typed_handler_dead_letters_what_cannot_succeed(broker: Arc<dyn Broker>) {
    let topic = unique("typed");
    let sub = Subscription::new(&topic, group_for(&topic, "g")).max_attempts(5);
    let mut dead = subscribe(
        &broker,
        Subscription::new(sub.dead_letter_topic(), group_for(&topic, "ops")),
    )
    .await;
    let consumer = subscribe(&broker, sub).await;
    let producer = producer(&broker).await;
    for (id, kind) in [(1, "ok"), (2, "flaky"), (3, "bad")] {
        let order = Order {
            id,
            kind: kind.into(),
        };
        send(producer.as_ref(), &topic, Message::json(&order).expect("encode")).await;
    }
    let garbage = Message::new("not json").with_header(headers::CONTENT_TYPE, "application/json");
    let garbage_id = garbage.id.clone();
    send(producer.as_ref(), &topic, garbage).await;

    let stop = CancellationToken::new();
    let worker = Worker::new(consumer).concurrency(2).retry(Arc::new(
        ExponentialBackoff::new(Duration::from_millis(20)).max_attempts(5),
    ));
    let stats = worker.stats();
    let running = tokio::spawn(worker.run(
        json(|order: Order, meta: Meta| async move {
            match order.kind.as_str() {
                "bad" => Err(permanent(format!("order {} can never be paid", order.id))),
                "flaky" if meta.attempt < 2 => Err("the gateway timed out".into()),
                _ => HandlerResult::Ok(vec![]),
            }
        }),
        stop.clone(),
    ));

    let mut reasons = Vec::new();
    for _ in 0..2 {
        let d = expect_delivery(dead.as_mut(), "a dead letter").await;
        let m = d.message();
        assert_eq!(
            m.header(headers::ATTEMPTS),
            Some("1"),
            "dead-lettered on the first attempt: {:?}",
            m.headers
        );
        let reason = m
            .header(headers::DEAD_LETTER_REASON)
            .unwrap_or_default()
            .to_string();
        if m.id == garbage_id {
            assert!(
                reason.contains("cannot decode"),
                "the decode error as the reason: {reason}"
            );
        } else {
            assert!(
                reason.contains("can never be paid"),
                "the handler's error as the reason: {reason}"
            );
        }
        reasons.push(reason);
        d.ack().await.expect("ack the dead letter");
    }
    let deadline = tokio::time::Instant::now() + wait();
    while stats.snapshot().handled < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the good and the flaky order were not both handled: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let done = running.await.expect("worker task").expect("worker");
    assert_eq!(done.handled, 2, "handled: {done:?}");
    assert_eq!(done.dead_lettered, 2, "dead-lettered: {done:?}");
    assert_eq!(
        done.failed, 3,
        "failures (the flaky one once, the two dead letters): {done:?}"
    );
    super::report(&format!(
        "typed handler: {}: dead letters {reasons:?}",
        broker.name()
    ));
    let _ = dead.close().await;
}
