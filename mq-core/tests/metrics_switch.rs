//! mq's metrics are opt-in (`observe::enable_metrics`): with a recorder
//! installed and the switch off, an instrumented broker records nothing;
//! turned on mid-run, it records from then on, registering its handles on
//! first use. A test binary of its own: the switch and the recorder are
//! process-wide.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Seen;
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use mq_core::observe::metric;
use mq_core::{Broker, Message, ProducerOptions, Subscription};

/// Sends `n` messages and receives and acks them all.
async fn round_trip(broker: &Arc<dyn Broker>, topic: &str, n: usize) {
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let mut consumer = broker
        .subscribe(Subscription::new(topic, "g"))
        .await
        .expect("subscribe");
    for i in 0..n {
        producer
            .send(topic, Message::new(format!("{i}")))
            .await
            .expect("send");
    }
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.recv())
            .await
            .expect("a delivery within 5 s")
            .expect("recv")
            .expect("open");
        d.ack().await.expect("ack");
    }
}

/// What the recorder got since the last look, mq's counts handed over
/// first.
fn snapshot(snapshotter: &Snapshotter) -> Seen {
    mq_core::observe::flush_metrics();
    common::look(snapshotter)
}

/// The value of `name` for `topic` in `seen`.
fn value(seen: &Seen, name: &str, topic: &str) -> Option<f64> {
    common::value(seen, name, topic, &[])
}

#[tokio::test]
async fn nothing_is_recorded_until_metrics_are_enabled() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this binary");
    let broker = mq_core::observe::instrument(Arc::new(mq_memory::MemoryBroker::new()));

    assert!(!mq_core::observe::metrics_enabled(), "off by default");
    round_trip(&broker, "off", 5).await;
    let seen = snapshot(&snapshotter);
    for name in [
        metric::SENT,
        metric::CONSUMED,
        metric::SETTLED,
        metric::IN_FLIGHT,
        metric::END_TO_END,
    ] {
        assert_eq!(value(&seen, name, "off"), None, "{name} while off");
    }

    mq_core::observe::enable_metrics(true);
    round_trip(&broker, "on", 3).await;
    let seen = snapshot(&snapshotter);
    assert_eq!(value(&seen, metric::SENT, "on"), Some(3.0));
    assert_eq!(value(&seen, metric::CONSUMED, "on"), Some(3.0));
    assert_eq!(value(&seen, metric::SETTLED, "on"), Some(3.0));
    assert_eq!(value(&seen, metric::IN_FLIGHT, "on"), Some(0.0));
    assert_eq!(value(&seen, metric::END_TO_END, "on"), Some(3.0));

    // A batch (`recv_many`) is counted per delivery as `recv` is.
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let mut consumer = broker
        .subscribe(Subscription::new("batch", "g"))
        .await
        .expect("subscribe");
    for i in 0..4 {
        producer
            .send("batch", Message::new(format!("{i}")))
            .await
            .expect("send");
    }
    let mut taken = Vec::new();
    for _ in 0..10 {
        if taken.len() == 4 {
            break;
        }
        let batch = consumer
            .recv_many(10, Duration::from_secs(1))
            .await
            .expect("recv_many")
            .expect("open");
        taken.extend(batch);
    }
    assert_eq!(taken.len(), 4, "the four messages within ten batches");
    let seen = snapshot(&snapshotter);
    assert_eq!(value(&seen, metric::CONSUMED, "batch"), Some(4.0));
    assert_eq!(
        value(&seen, metric::IN_FLIGHT, "batch"),
        Some(4.0),
        "held, not settled"
    );
    mq_core::ack_all(&taken).await.expect("ack_all");
    // Each snapshot drains what it shows: these are the changes since.
    let seen = snapshot(&snapshotter);
    assert_eq!(value(&seen, metric::SETTLED, "batch"), Some(4.0));
    assert_eq!(
        value(&seen, metric::IN_FLIGHT, "batch"),
        Some(-4.0),
        "all four settled"
    );

    // Off again: the handles stay registered and nothing is added (the
    // debugging recorder's snapshot drains what it shows: zero is nothing
    // new).
    mq_core::observe::enable_metrics(false);
    round_trip(&broker, "on", 2).await;
    let seen = snapshot(&snapshotter);
    for name in [
        metric::SENT,
        metric::CONSUMED,
        metric::SETTLED,
        metric::END_TO_END,
    ] {
        assert_eq!(value(&seen, name, "on"), Some(0.0), "{name} after turning off");
    }
}
