//! Checks of closing and reopening.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;

use super::*;
use crate::{ConsumerExt, Error};

/// Closing a consumer and subscribing the group again continues where it
/// was: unsettled messages come back, acked ones do not, new ones arrive.
pub async fn close_then_resubscribe_continues_without_loss(broker: Arc<dyn Broker>) {
    let topic = unique("resub");
    let sub = || Subscription::new(&topic, group_for(&topic, "g")).prefetch(20);
    let mut consumer = subscribe(&broker, sub()).await;
    let producer = producer(&broker).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(
            send(
                producer.as_ref(),
                &topic,
                Message::new(format!("first {i}")).with_key("k"),
            )
            .await
            .id,
        );
    }
    let mut acked = HashSet::new();
    for m in receive_n(consumer.as_mut(), 5, "the first five").await {
        acked.insert(m.id);
    }
    let unsettled = expect_delivery(consumer.as_mut(), "a sixth, left unsettled").await;
    let unsettled_id = unsettled.message().id.clone();
    consumer.close().await.expect("close");
    drop(unsettled);
    for i in 0..10 {
        sent.push(
            send(
                producer.as_ref(),
                &topic,
                Message::new(format!("second {i}")).with_key("k"),
            )
            .await
            .id,
        );
    }
    let mut consumer = subscribe(&broker, sub()).await;
    let expected: HashSet<String> = sent.iter().filter(|id| !acked.contains(*id)).cloned().collect();
    let mut got = HashSet::new();
    for m in receive_n(consumer.as_mut(), expected.len(), "the rest after resubscribing").await {
        assert!(
            !acked.contains(&m.id),
            "message {} was acked before close and came back",
            m.id
        );
        got.insert(m.id);
    }
    assert!(got.contains(&unsettled_id), "the unsettled message came back");
    assert_eq!(got, expected, "nothing lost across close and resubscribe");
    expect_nothing(consumer.as_mut(), "everything was acked").await;
}

/// A consumer is a `futures::Stream` of deliveries.
pub async fn consumer_is_a_stream(broker: Arc<dyn Broker>) {
    let topic = unique("stream");
    let consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    let producer = producer(&broker).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            send(
                producer.as_ref(),
                &topic,
                Message::new(format!("{i}")).with_key("k"),
            )
            .await
            .id,
        );
    }
    let mut stream = consumer.into_stream();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(wait(), stream.next())
            .await
            .expect("stream item in time")
            .expect("stream still open")
            .expect("delivery");
        ack(&d).await;
        got.push(d.message().id.clone());
    }
    assert_eq!(got, ids);
}

/// `recv` after `close` returns `None`; closing twice is fine.
pub async fn recv_after_close_returns_none(broker: Arc<dyn Broker>) {
    let topic = unique("closed");
    let mut consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    let producer = producer(&broker).await;
    send(producer.as_ref(), &topic, Message::new("after close")).await;
    consumer.close().await.expect("close");
    consumer.close().await.expect("closing twice is a no-op");
    let next = tokio::time::timeout(wait(), consumer.recv())
        .await
        .expect("recv returns promptly");
    assert!(
        matches!(next, Ok(None)),
        "recv after close must be Ok(None), got {next:?}"
    );
}

/// After `Broker::close`, sends fail with `Closed`, no producer or
/// subscription can be made, and open consumers end.
pub async fn send_after_broker_close_is_error(broker: Arc<dyn Broker>) {
    let topic = unique("brokerclose");
    let mut consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    let producer = producer(&broker).await;
    send(producer.as_ref(), &topic, Message::new("before close")).await;
    broker.close().await.expect("close");
    broker.close().await.expect("closing twice is a no-op");
    let err = producer
        .send(&topic, Message::new("after close"))
        .await
        .expect_err("send after close must fail");
    assert!(
        matches!(err, Error::Closed { .. }),
        "expected Error::Closed, got {err:?}"
    );
    assert!(!err.is_retryable(), "a closed broker is not worth retrying");
    let batch = producer.send_batch(&topic, vec![Message::new("x")]).await;
    assert!(
        matches!(batch, Err(Error::Closed { .. })),
        "send_batch after close: {batch:?}"
    );
    assert!(
        broker.producer(ProducerOptions::default()).await.is_err(),
        "no producer after close"
    );
    assert!(
        broker
            .subscribe(Subscription::new(&topic, group_for(&topic, "g2")))
            .await
            .is_err(),
        "no subscription after close"
    );
    // The open consumer ends (it may first hand out what it already had).
    let ended = tokio::time::timeout(wait(), async {
        loop {
            match consumer.recv().await {
                Ok(None) | Err(_) => return,
                Ok(Some(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "an open consumer ends after the broker closes");
}

/// `Producer::close` waits for the sends in flight (each ends with a
/// receipt or `Closed`, and every receipted message arrives), refuses later
/// sends with `Closed`, is idempotent, and leaves the broker and its other
/// producers working.
pub async fn producer_close_waits_and_refuses_later_sends(broker: Arc<dyn Broker>) {
    let topic = unique("prodclose");
    let mut consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    let producer: Arc<dyn Producer> = Arc::from(producer(&broker).await);
    send(producer.as_ref(), &topic, Message::new("before")).await;
    // Sends racing the close.
    let mut sends = Vec::new();
    for i in 0..20 {
        let producer = producer.clone();
        let topic = topic.clone();
        sends.push(tokio::spawn(async move {
            let message = Message::new(format!("racing {i}"));
            let id = message.id.clone();
            (id, producer.send(&topic, message).await)
        }));
    }
    tokio::task::yield_now().await;
    tokio::time::timeout(wait(), producer.close())
        .await
        .expect("close returns once the sends in flight ended")
        .expect("close");
    let mut receipted = HashSet::new();
    for s in sends {
        let (id, result) = s.await.expect("send task");
        match result {
            Ok(_) => {
                receipted.insert(id);
            }
            Err(Error::Closed { .. }) => {}
            Err(e) => panic!("a send racing close ended with {e:?}, not a receipt or Closed"),
        }
    }
    let err = producer
        .send(&topic, Message::new("after"))
        .await
        .expect_err("send after the producer's close must fail");
    assert!(
        matches!(err, Error::Closed { .. }),
        "expected Error::Closed, got {err:?}"
    );
    assert!(
        matches!(
            producer.send_batch(&topic, vec![Message::new("after")]).await,
            Err(Error::Closed { .. })
        ),
        "send_batch after the producer's close"
    );
    producer.close().await.expect("closing twice is a no-op");

    // The broker and a new producer still work; nothing receipted is lost.
    let other = super::producer(&broker).await;
    send(other.as_ref(), &topic, Message::new("other")).await;
    let mut want = receipted.len() + 2;
    let mut seen = HashSet::new();
    while want > 0 {
        let d = expect_delivery(consumer.as_mut(), "a message sent before or around the close").await;
        seen.insert(d.message().id.clone());
        d.ack().await.expect("ack");
        want -= 1;
    }
    let missing: Vec<&String> = receipted.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "receipted before close, never delivered: {missing:?}"
    );
    let _ = consumer.close().await;
}

/// `recv` is cancel safe: dropped at any point (timeouts of 0 to 5 ms, over
/// a thousand times) while messages flow, it loses nothing and leaves the
/// consumer working: every message sent arrives.
pub async fn cancelled_recv_loses_nothing(broker: Arc<dyn Broker>) {
    const ROUNDS: usize = 40;
    const PER_ROUND: usize = 10;
    const MIN_CANCELS: u64 = 1000;
    let topic = unique("cancel");
    let mut consumer = subscribe(
        &broker,
        Subscription::new(&topic, group_for(&topic, "g")).prefetch(25),
    )
    .await;
    let producer: Arc<dyn Producer> = Arc::from(producer(&broker).await);
    let sender = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            let mut sent = HashSet::new();
            for round in 0..ROUNDS {
                let batch: Vec<Message> = (0..PER_ROUND)
                    .map(|i| Message::new(format!("{round}-{i}")))
                    .collect();
                let receipts = producer
                    .send_batch(&topic, batch)
                    .await
                    .unwrap_or_else(|e| panic!("send to {topic} failed: {e}"));
                sent.extend(receipts.into_iter().map(|r| r.id));
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            sent
        })
    };
    // A fixed sequence of cut-offs (a xorshift), the same on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut cut = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Duration::from_micros(x % 5_001)
    };
    let (mut polls, mut cancels) = (0u64, 0u64);
    let mut got = HashSet::new();
    let mut sent: Option<HashSet<String>> = None;
    let mut sender = sender;
    // The cancelled polls alone take a few seconds: room for them on a
    // loaded machine beyond the usual bound.
    let deadline = tokio::time::Instant::now() + wait() * 2 + Duration::from_secs(10);
    loop {
        if sent.is_none() && sender.is_finished() {
            sent = Some((&mut sender).await.expect("the sender task"));
        }
        if let Some(sent) = &sent
            && sent.is_subset(&got)
            && cancels >= MIN_CANCELS
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} messages received after {polls} polls ({cancels} cancelled); sent: {:?}",
            got.len(),
            sent.as_ref().map(HashSet::len)
        );
        polls += 1;
        match tokio::time::timeout(cut(), consumer.recv()).await {
            Err(_) => cancels += 1,
            Ok(Ok(Some(d))) => {
                got.insert(d.message().id.clone());
                ack(&d).await;
            }
            Ok(Ok(None)) => panic!("the consumer ended after {polls} polls"),
            Ok(Err(e)) => panic!("recv failed after {polls} polls: {e}"),
        }
    }
    let sent = sent.unwrap_or_default();
    report(&format!(
        "cancelled_recv_loses_nothing ({}): {} sent, {} received, {polls} polls, {cancels} cancelled",
        broker.name(),
        sent.len(),
        got.len()
    ));
    assert_eq!(sent.len(), ROUNDS * PER_ROUND);
}

/// `health` answers while the broker is open, naming the backend, and is
/// an error once it is closed.
pub async fn health_answers_until_close(broker: Arc<dyn Broker>) {
    let health = match broker.health().await {
        Err(Error::Unsupported { .. }) => {
            return skip(
                broker.as_ref(),
                "health_answers_until_close",
                "it has no health probe",
            );
        }
        other => other.unwrap_or_else(|e| panic!("{}: health of an open broker: {e}", broker.name())),
    };
    assert_eq!(health.backend, broker.name());
    assert!(health.latency < wait(), "{health}");
    assert!(
        !health.endpoint.contains('@'),
        "the endpoint carries no credentials: {health}"
    );
    broker.close().await.expect("close");
    let after = broker.health().await;
    assert!(
        after.is_err(),
        "health after close must be an error, got {after:?}"
    );
}

/// `lag`: with the group's consumer closed, N messages sent put the group
/// N behind; once they are all received and acked, it is 0 (within the
/// wait bound: some backends commit acks in the background).
pub async fn lag_counts_what_the_group_has_not_settled(broker: Arc<dyn Broker>) {
    const N: u64 = 25;
    let topic = unique("lag");
    let group = group_for(&topic, "g");
    let sub = || Subscription::new(&topic, &group).prefetch(50);
    let mut consumer = subscribe(&broker, sub()).await;
    let first = match broker.lag(&topic, &group).await {
        Err(Error::Unsupported { .. }) => {
            return skip(
                broker.as_ref(),
                "lag_counts_what_the_group_has_not_settled",
                "it cannot tell lag",
            );
        }
        other => other.unwrap_or_else(|e| panic!("lag of a new group: {e}")),
    };
    assert_eq!(first.behind, 0, "a new group with nothing sent: {first}");
    consumer.close().await.expect("close");
    let producer = producer(&broker).await;
    for i in 0..N {
        send(producer.as_ref(), &topic, Message::new(format!("{i}"))).await;
    }
    let behind = broker.lag(&topic, &group).await.expect("lag");
    assert_eq!(behind.behind, N, "{N} sent, none consumed: {behind}");
    assert_eq!(behind.group, group);
    let mut consumer = subscribe(&broker, sub()).await;
    receive_n(
        consumer.as_mut(),
        usize::try_from(N).unwrap_or(usize::MAX),
        "the sent messages",
    )
    .await;
    let settled = lag_once_settled(broker.as_ref(), &topic, &group)
        .await
        .expect("lag");
    assert_eq!(
        settled.behind,
        0,
        "all acked, yet still {settled} after {:?}",
        wait()
    );
    report(&format!(
        "lag ({}): {behind}; after acking all: {settled}",
        broker.name()
    ));
    consumer.close().await.expect("close");
}
