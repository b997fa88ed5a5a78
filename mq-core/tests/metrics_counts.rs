//! How mq hands its metrics to the recorder: counts kept in mq's handles
//! reach the recorder every second without being asked, and exactly;
//! on a busy topic the duration histograms hold a sample while the
//! counters still count every message. A test binary of its own: the
//! recorder is process-wide.
#![allow(clippy::expect_used)]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{Seen, value};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use mq_core::observe::metric;
use mq_core::{
    Broker, Capabilities, Consumer, Delivery, Message, Producer, ProducerOptions, Receipt, Result,
    Subscription, async_trait,
};

/// The recorder of this binary, installed once, with mq's metrics on.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only recorder of this binary");
        mq_core::observe::enable_metrics(true);
        snapshotter
    })
}

fn look() -> Seen {
    common::look(recorder())
}

/// Sends `n` messages to `topic` while a consumer receives and acks them
/// all; each step bounded by 10 s.
async fn round_trip(broker: &Arc<dyn Broker>, topic: &str, n: usize) {
    let step = Duration::from_secs(10);
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let mut consumer = broker
        .subscribe(Subscription::new(topic, "g").prefetch(256))
        .await
        .expect("subscribe");
    let receiving = tokio::spawn(async move {
        for _ in 0..n {
            let d = tokio::time::timeout(step, consumer.recv())
                .await
                .expect("a delivery within 10 s")
                .expect("recv")
                .expect("open");
            d.ack().await.expect("ack");
        }
        consumer
    });
    for i in 0..n {
        tokio::time::timeout(step, producer.send(topic, Message::new(format!("{i}"))))
            .await
            .expect("a send within 10 s")
            .expect("send");
    }
    let consumer = receiving.await.expect("the consumer's task");
    // Kept open: nothing is handed over by a close.
    std::mem::forget((producer, consumer));
}

/// One test: a snapshot of the debugging recorder drains every series it
/// shows, so two tests reading it at once would take each other's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_and_durations_sampled() {
    counts_reach_the_recorder_within_the_flush_interval_unasked().await;
    a_busy_topic_is_counted_exactly_and_its_durations_sampled().await;
    a_backend_without_the_hooks_is_counted_exactly().await;
    one_producer_s_topics_are_counted_apart().await;
}

/// One producer sends to more topics than it keeps the handles of
/// (70, round robin, 3 messages each): every topic's count is its own.
async fn one_producer_s_topics_are_counted_apart() {
    recorder();
    const TOPICS: usize = 70;
    const EACH: usize = 3;
    let step = Duration::from_secs(10);
    let broker = mq_core::observe::instrument(Arc::new(mq_memory::MemoryBroker::new()));
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("spread-{t}")).collect();
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    for i in 0..EACH {
        for topic in &topics {
            tokio::time::timeout(step, producer.send(topic, Message::new(format!("{i}"))))
                .await
                .expect("a send within 10 s")
                .expect("send");
        }
    }
    mq_core::observe::flush_metrics();
    let seen = look();
    let counts: Vec<Option<f64>> = topics
        .iter()
        .map(|topic| value(&seen, metric::SENT, topic, &[]))
        .collect();
    assert_eq!(counts, vec![Some(EACH as f64); TOPICS], "sent, per topic");
    std::mem::forget(producer);
}

async fn counts_reach_the_recorder_within_the_flush_interval_unasked() {
    recorder();
    let broker = mq_core::observe::instrument(Arc::new(mq_memory::MemoryBroker::new()));
    round_trip(&broker, "unasked", 3).await;
    // No flush_metrics, no close: the metrics thread hands them over.
    // Bounded: 50 looks, 100 ms apart, against a 1 s interval.
    let (mut sent, mut consumed, mut acked) = (0.0, 0.0, 0.0);
    for _ in 0..50 {
        let seen = look();
        sent += value(&seen, metric::SENT, "unasked", &[]).unwrap_or(0.0);
        consumed += value(&seen, metric::CONSUMED, "unasked", &[]).unwrap_or(0.0);
        acked += value(&seen, metric::SETTLED, "unasked", &[(metric::OUTCOME, "acked")]).unwrap_or(0.0);
        if sent == 3.0 && consumed == 3.0 && acked == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (sent, consumed, acked),
        (3.0, 3.0, 3.0),
        "sent, consumed and acked, as the recorder got them within 5 s"
    );
}

async fn a_busy_topic_is_counted_exactly_and_its_durations_sampled() {
    recorder();
    const N: usize = 30_000;
    let broker = mq_core::observe::instrument(Arc::new(mq_memory::MemoryBroker::new()));
    let started = std::time::Instant::now();
    round_trip(&broker, "busy", N).await;
    let rate = N as f64 / started.elapsed().as_secs_f64();
    mq_core::observe::flush_metrics();
    let seen = look();
    let n = N as f64;
    let sent = value(&seen, metric::SENT, "busy", &[]);
    let consumed = value(&seen, metric::CONSUMED, "busy", &[]);
    let acked = value(&seen, metric::SETTLED, "busy", &[(metric::OUTCOME, "acked")]);
    let in_flight = value(&seen, metric::IN_FLIGHT, "busy", &[]);
    let send_durations = value(
        &seen,
        metric::OPERATION_DURATION,
        "busy",
        &[(metric::OPERATION, "send")],
    )
    .unwrap_or(0.0);
    let ages = value(&seen, metric::END_TO_END, "busy", &[]).unwrap_or(0.0);
    println!(
        "busy topic: {N} messages at {rate:.0}/s: sent {sent:?}, consumed {consumed:?}, acked {acked:?}, in flight {in_flight:?}; {send_durations} send durations and {ages} ages recorded"
    );
    assert_eq!(sent, Some(n));
    assert_eq!(consumed, Some(n));
    assert_eq!(acked, Some(n));
    assert_eq!(in_flight, Some(0.0));
    // The first 1024 operations of a handle are all timed; then about
    // 1000 a second (at most one in 1024). Even a slow debug build on a
    // busy machine moves more than 2000 messages a second here, which
    // makes the stride at least 2.
    for (what, recorded) in [("send durations", send_durations), ("ages", ages)] {
        assert!(
            (1024.0..=n / 2.0).contains(&recorded),
            "{what}: {recorded} of {N} recorded at {rate:.0} messages/s"
        );
    }
}

/// A backend that keeps the defaults of `Producer::send_observed` and
/// `Consumer::recv_observed` (mq-memory overrides both): the memory
/// broker behind a layer that forwards the rest.
#[derive(Debug)]
struct Plain(mq_memory::MemoryBroker);

#[derive(Debug)]
struct PlainProducer(Box<dyn Producer>);

#[derive(Debug)]
struct PlainConsumer(Box<dyn Consumer>);

#[async_trait]
impl Broker for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        Ok(Box::new(PlainProducer(self.0.producer(options).await?)))
    }
    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(PlainConsumer(self.0.subscribe(subscription).await?)))
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
}

#[async_trait]
impl Producer for PlainProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.0.send(topic, message).await
    }
    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.0.send_batch(topic, messages).await
    }
    async fn flush(&self) -> Result<()> {
        self.0.flush().await
    }
}

#[async_trait]
impl Consumer for PlainConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        self.0.recv().await
    }
    async fn close(&mut self) -> Result<()> {
        self.0.close().await
    }
}

async fn a_backend_without_the_hooks_is_counted_exactly() {
    recorder();
    const N: usize = 2_000;
    let broker = mq_core::observe::instrument(Arc::new(Plain(mq_memory::MemoryBroker::new())));
    round_trip(&broker, "plain", N).await;
    mq_core::observe::flush_metrics();
    let seen = look();
    let n = Some(N as f64);
    assert_eq!(value(&seen, metric::SENT, "plain", &[]), n, "sent");
    assert_eq!(value(&seen, metric::CONSUMED, "plain", &[]), n, "consumed");
    assert_eq!(
        value(&seen, metric::SETTLED, "plain", &[(metric::OUTCOME, "acked")]),
        n,
        "acked"
    );
    assert_eq!(
        value(&seen, metric::IN_FLIGHT, "plain", &[]),
        Some(0.0),
        "in flight"
    );
}
