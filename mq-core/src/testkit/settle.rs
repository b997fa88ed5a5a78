//! Checks of ack, nack, redelivery, dead letters and prefetch.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::{Error, Nack, headers};

async fn one_message(
    broker: &Arc<dyn Broker>,
    what: &str,
    sub: impl FnOnce(Subscription) -> Subscription,
) -> (Box<dyn Consumer>, String, String) {
    let topic = unique(what);
    let consumer = subscribe(broker, sub(Subscription::new(&topic, group_for(&topic, "g")))).await;
    let producer = producer(broker).await;
    let id = send(
        producer.as_ref(),
        &topic,
        Message::new(format!("{what} payload")).with_key("k"),
    )
    .await
    .id;
    (consumer, topic, id)
}

/// A requeued delivery comes back with the same message and `attempt + 1`.
pub async fn nack_requeue_redelivers_with_next_attempt(broker: Arc<dyn Broker>) {
    let (mut consumer, _topic, id) = one_message(&broker, "requeue", |s| s.max_attempts(5)).await;
    for attempt in 1..=3 {
        let d = expect_delivery(consumer.as_mut(), &format!("attempt {attempt}")).await;
        assert_eq!(d.message().id, id, "the same message comes back");
        assert_eq!(d.message().payload, "requeue payload");
        assert_eq!(d.attempt(), attempt, "attempt counts deliveries");
        if attempt < 3 {
            d.nack(Nack::requeue()).await.expect("nack requeue");
        } else {
            ack(&d).await;
        }
    }
    expect_nothing(consumer.as_mut(), "the message was acked on attempt 3").await;
}

/// A requeue with a delay is not delivered again before the delay.
pub async fn requeue_with_delay_waits_at_least_the_delay(broker: Arc<dyn Broker>) {
    if !broker.capabilities().delayed_requeue {
        return skip(
            broker.as_ref(),
            "requeue_with_delay_waits_at_least_the_delay",
            "no delayed requeue",
        );
    }
    const DELAY: Duration = Duration::from_millis(1200);
    let (mut consumer, _topic, id) = one_message(&broker, "delay", |s| s).await;
    let d = expect_delivery(consumer.as_mut(), "the first delivery").await;
    let nacked_at = Instant::now();
    d.nack(Nack::requeue_after(DELAY)).await.expect("nack with delay");
    let again = expect_delivery(consumer.as_mut(), "the delayed redelivery").await;
    let waited = nacked_at.elapsed();
    assert_eq!(again.message().id, id);
    assert_eq!(again.attempt(), 2);
    assert!(
        waited >= DELAY,
        "redelivered after {waited:?}, before the {DELAY:?} delay"
    );
    ack(&again).await;
}

/// A delivery left unsettled when its consumer is dropped reaches another
/// consumer of the group, with a higher attempt.
pub async fn unacked_redelivered_after_consumer_drop(broker: Arc<dyn Broker>) {
    let short = |s: Subscription| s.ack_timeout(Duration::from_secs(1));
    let (mut first, topic, id) = one_message(&broker, "drop", short).await;
    let d = expect_delivery(first.as_mut(), "the first delivery").await;
    assert_eq!(d.attempt(), 1);
    drop(d);
    drop(first);
    let mut second = subscribe(&broker, short(Subscription::new(&topic, group_for(&topic, "g")))).await;
    let again = expect_delivery(second.as_mut(), "the redelivery after the consumer was dropped").await;
    assert_eq!(again.message().id, id);
    assert!(
        again.attempt() >= 2,
        "a redelivery has attempt >= 2, got {}",
        again.attempt()
    );
    ack(&again).await;
    expect_nothing(second.as_mut(), "the redelivered message was acked").await;
}

/// A delivery left unsettled past the ack timeout is delivered again while
/// its consumer stays open.
pub async fn unacked_redelivered_after_ack_timeout(broker: Arc<dyn Broker>) {
    if !broker.capabilities().ack_timeout_redelivery {
        return skip(
            broker.as_ref(),
            "unacked_redelivered_after_ack_timeout",
            "no redelivery on ack timeout",
        );
    }
    let timeout = Duration::from_millis(800);
    let (mut consumer, topic, id) = one_message(&broker, "timeout", |s| s.ack_timeout(timeout)).await;
    let mut other = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "g")).ack_timeout(timeout),
    )
    .await;
    let held = expect_delivery(consumer.as_mut(), "the first delivery").await;
    let taken_at = Instant::now();
    // Either consumer may get it back; watch both.
    let again = tokio::select! {
        d = expect_delivery(consumer.as_mut(), "the redelivery after the ack timeout") => d,
        d = expect_delivery(other.as_mut(), "the redelivery after the ack timeout") => d,
    };
    assert!(
        taken_at.elapsed() >= timeout,
        "redelivered before the ack timeout"
    );
    assert_eq!(again.message().id, id);
    assert_eq!(again.attempt(), 2);
    ack(&again).await;
    drop(held);
}

/// Acking twice is a no-op; a nack after an ack is `AlreadySettled`; an acked
/// message does not come back.
pub async fn ack_is_idempotent_and_nack_after_ack_errors(broker: Arc<dyn Broker>) {
    let (mut consumer, _topic, _id) = one_message(&broker, "ack", |s| s).await;
    let d = expect_delivery(consumer.as_mut(), "the message").await;
    ack(&d).await;
    d.ack().await.expect("a second ack is a no-op");
    assert!(d.is_settled());
    match d.nack(Nack::requeue()).await {
        Err(Error::AlreadySettled { settled, .. }) => assert_eq!(settled, "acked"),
        other => panic!("nack after ack must be AlreadySettled, got {other:?}"),
    }
    match d.nack(Nack::dead_letter("late")).await {
        Err(Error::AlreadySettled { .. }) => {}
        other => panic!("dead-letter after ack must be AlreadySettled, got {other:?}"),
    }
    expect_nothing(consumer.as_mut(), "an acked message is not redelivered").await;
}

fn assert_dead_letter(dead: &Delivery, id: &str, topic: &str, group: &str, attempts: u32, reason: &str) {
    let m = dead.message();
    assert_eq!(m.id, id, "the dead letter is the original message");
    let header = |name: &str| {
        m.header(name)
            .unwrap_or_else(|| panic!("dead letter lacks header {name}: {:?}", m.headers))
    };
    assert!(
        header(headers::DEAD_LETTER_REASON).contains(reason),
        "reason header: {:?}",
        m.headers
    );
    assert_eq!(header(headers::ORIGINAL_TOPIC), topic);
    assert_eq!(header(headers::ORIGINAL_GROUP), group);
    assert_eq!(header(headers::ATTEMPTS), attempts.to_string());
}

/// After max attempts a failed message goes to the (configured) dead-letter
/// topic with headers naming the reason, topic, group and attempts.
pub async fn dead_letter_after_max_attempts(broker: Arc<dyn Broker>) {
    if !broker.capabilities().dead_letter {
        return skip(
            broker.as_ref(),
            "dead_letter_after_max_attempts",
            "no dead letters",
        );
    }
    let topic = unique("maxatt");
    let dlq = format!("{topic}.custom-dead");
    let mut dead = subscribe(&broker, Subscription::new(&dlq, group_for(&dlq, "inspect"))).await;
    let sub = Subscription::new(&topic, group_for(&topic, "workers"))
        .max_attempts(3)
        .dead_letter_to(&dlq);
    let mut consumer = subscribe(&broker, sub).await;
    let producer = producer(&broker).await;
    let id = send(producer.as_ref(), &topic, Message::new("poison").with_key("k"))
        .await
        .id;
    for attempt in 1..=3 {
        let d = expect_delivery(consumer.as_mut(), &format!("attempt {attempt}")).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(Nack::requeue()).await.expect("nack");
    }
    let d = expect_delivery(dead.as_mut(), "the dead letter").await;
    assert_dead_letter(&d, &id, &topic, &group_for(&topic, "workers"), 3, "max attempts");
    assert_eq!(d.message().payload, "poison");
    ack(&d).await;
    expect_nothing(consumer.as_mut(), "a dead-lettered message is not redelivered").await;
}

/// An explicit dead-letter goes to `{topic}.dlq` with the given reason.
pub async fn explicit_dead_letter_has_reason_headers(broker: Arc<dyn Broker>) {
    if !broker.capabilities().dead_letter {
        return skip(
            broker.as_ref(),
            "explicit_dead_letter_has_reason_headers",
            "no dead letters",
        );
    }
    let topic = unique("dlq");
    let mut dead = subscribe(
        &broker,
        Subscription::new(format!("{topic}.dlq"), group_for(&topic, "inspect")),
    )
    .await;
    let mut consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "workers"))).await;
    let producer = producer(&broker).await;
    let msg = Message::new("bad order").with_header("app", "kept");
    let id = send(producer.as_ref(), &topic, msg).await.id;
    let d = expect_delivery(consumer.as_mut(), "the message").await;
    d.nack(Nack::dead_letter("payload failed validation"))
        .await
        .expect("dead-letter");
    let dl = expect_delivery(dead.as_mut(), "the dead letter").await;
    assert_dead_letter(
        &dl,
        &id,
        &topic,
        &group_for(&topic, "workers"),
        1,
        "payload failed validation",
    );
    assert_eq!(
        dl.message().header("app"),
        Some("kept"),
        "application headers are kept"
    );
    ack(&dl).await;
    expect_nothing(consumer.as_mut(), "a dead-lettered message is not redelivered").await;
}

/// A consumer never holds more unsettled deliveries than its prefetch; a
/// settlement frees a slot.
pub async fn prefetch_bounds_unacked_in_flight(broker: Arc<dyn Broker>) {
    const PREFETCH: usize = 5;
    let topic = unique("prefetch");
    let mut consumer = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "g")).prefetch(PREFETCH),
    )
    .await;
    let producer = producer(&broker).await;
    for i in 0..(PREFETCH * 3) {
        send(
            producer.as_ref(),
            &topic,
            Message::new(format!("{i}")).with_key("k"),
        )
        .await;
    }
    let mut held = Vec::new();
    for i in 0..PREFETCH {
        held.push(expect_delivery(consumer.as_mut(), &format!("delivery {i} within the prefetch")).await);
    }
    expect_nothing(consumer.as_mut(), "the prefetch is full").await;
    ack(&held.remove(0)).await;
    let next = expect_delivery(consumer.as_mut(), "a delivery once a slot was freed").await;
    held.push(next);
    expect_nothing(consumer.as_mut(), "the prefetch is full again").await;
    for d in &held {
        ack(d).await;
    }
}
