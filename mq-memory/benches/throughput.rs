//! mq-memory against a bare `tokio::sync::mpsc` channel (bounded 1024), in
//! one run, interleaved, several rounds: 100-byte messages,
//! publish -> consume -> ack, 1 producer / 1 consumer and 4 / 4.
//!
//! Run: `cargo bench -p mq-memory --bench throughput`
//! (`MQ_BENCH_MESSAGES`, `MQ_BENCH_ROUNDS` and `MQ_BENCH_CAPACITY`, the
//! topic capacity, change the set-up.)
//!
//! Three contenders per round, in alternating order:
//! * `mpsc<Message>` (the baseline of the ratio): the same `Message` the SDK
//!   sends, built per send (fresh UUIDv7 id, timestamp), through a bare
//!   channel with no bookkeeping;
//! * `mpsc<Bytes>` (for reference): a clone of the 100-byte payload, no
//!   message object at all;
//! * `mq-memory`: the message built per send, sent, received and acked:
//!   at-least-once bookkeeping on.
//!
//! With 4 consumers the channel's one receiver is shared behind a
//! `tokio::sync::Mutex`, as an application would do to get competing
//! consumers out of an mpsc.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../benches/observed.rs"]
mod observed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mq_core::{Broker, Message, Producer, ProducerOptions, Subscription};
use mq_memory::MemoryBroker;
use tokio::sync::{Mutex, mpsc};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What goes through the bare channel: a payload clone, or a `Message` built
/// from it the way the SDK's callers build one.
trait Item: Send + 'static {
    fn make(payload: &Bytes) -> Self;
    fn size(&self) -> usize;
}

impl Item for Bytes {
    fn make(payload: &Bytes) -> Self {
        payload.clone()
    }
    fn size(&self) -> usize {
        self.len()
    }
}

impl Item for Message {
    fn make(payload: &Bytes) -> Self {
        Message::new(payload.clone())
    }
    fn size(&self) -> usize {
        self.payload.len()
    }
}

async fn bare_channel<T: Item>(
    messages: usize,
    producers: usize,
    consumers: usize,
    payload: Bytes,
) -> Duration {
    let (tx, rx) = mpsc::channel::<T>(1024);
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let item = rx.lock().await.recv().await;
                match item {
                    Some(item) => n += item.size(),
                    None => return n,
                }
            }
        }));
    }
    let per = messages / producers;
    let mut senders = Vec::new();
    for _ in 0..producers {
        let tx = tx.clone();
        let payload = payload.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..per {
                tx.send(T::make(&payload)).await.unwrap();
            }
        }));
    }
    drop(tx);
    for s in senders {
        s.await.unwrap();
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.unwrap();
    }
    assert_eq!(bytes, per * producers * payload.len());
    start.elapsed()
}

/// Which mq-memory: the broker as built, or wrapped for spans and metrics
/// (what `Registry::connect` hands out).
#[derive(Clone, Copy, PartialEq)]
enum Sdk {
    Bare,
    Instrumented,
}

async fn memory_broker(
    sdk: Sdk,
    messages: usize,
    producers: usize,
    consumers: usize,
    payload: Bytes,
) -> Duration {
    let capacity = env_usize("MQ_BENCH_CAPACITY", mq_memory::MemoryConfig::default().capacity);
    let bare = MemoryBroker::with_config(mq_memory::MemoryConfig::default().capacity(capacity));
    let broker: Arc<dyn Broker> = match sdk {
        Sdk::Bare => Arc::new(bare),
        Sdk::Instrumented => mq_core::observe::instrument(Arc::new(bare)),
    };
    let topic = "bench";
    let per = messages / producers;
    let total = per * producers;
    let mut subs = Vec::new();
    for _ in 0..consumers {
        subs.push(
            broker
                .subscribe(Subscription::new(topic, "g").prefetch(256))
                .await
                .unwrap(),
        );
    }
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(total));
    let done = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut consumer in subs {
        let remaining = remaining.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            // Ends with `None` once the broker is closed below.
            while let Some(d) = consumer.recv().await.unwrap() {
                d.ack().await.unwrap();
                if remaining.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    done.notify_one();
                }
            }
        }));
    }
    let mut senders = Vec::new();
    for _ in 0..producers {
        let producer: Box<dyn Producer> = broker.producer(ProducerOptions::default()).await.unwrap();
        let payload = payload.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..per {
                producer.send(topic, Message::new(payload.clone())).await.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    done.notified().await;
    let elapsed = start.elapsed();
    broker.close().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(remaining.load(std::sync::atomic::Ordering::Acquire), 0);
    elapsed
}

fn rate(messages: usize, d: Duration) -> f64 {
    messages as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn runtime() -> tokio::runtime::Runtime {
    if std::env::var("MQ_BENCH_RUNTIME").as_deref() == Ok("current") {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A child process of this bench: installs a `tracing` subscriber and a
/// `metrics` recorder (process-wide, so not in the parent) and runs the
/// bare and the instrumented broker alternately (`observed::child_main`).
fn child(spec: &str) {
    let parts: Vec<usize> = spec.split(':').skip(1).map(|p| p.parse().unwrap()).collect();
    let (producers, consumers, messages) = (parts[0], parts[1], parts[2]);
    let runtime = runtime();
    let payload = Bytes::from(vec![0xabu8; 100]);
    observed::child_main(spec, messages, |instrumented, n| {
        let sdk = if instrumented {
            Sdk::Instrumented
        } else {
            Sdk::Bare
        };
        let d = runtime.block_on(memory_broker(sdk, n, producers, consumers, payload.clone()));
        rate(n, d)
    });
}

fn main() {
    if let Ok(spec) = std::env::var("MQ_BENCH_CHILD") {
        return child(&spec);
    }
    let messages = env_usize("MQ_BENCH_MESSAGES", 200_000);
    let rounds = env_usize("MQ_BENCH_ROUNDS", 7);
    let runtime = runtime();
    let payload = Bytes::from(vec![0xabu8; 100]);
    println!(
        "mq-memory vs tokio::sync::mpsc(1024): {messages} x 100-byte messages, {rounds} rounds, interleaved"
    );
    for (producers, consumers) in [(1usize, 1usize), (4, 4)] {
        let (mut bytes, mut msgs, mut mem) = (Vec::new(), Vec::new(), Vec::new());
        let (mut quiet, mut logs, mut traces) = (Vec::new(), Vec::new(), Vec::new());
        // Warm-up, not counted.
        runtime.block_on(bare_channel::<Message>(
            messages / 10,
            producers,
            consumers,
            payload.clone(),
        ));
        runtime.block_on(memory_broker(
            Sdk::Bare,
            messages / 10,
            producers,
            consumers,
            payload.clone(),
        ));
        for round in 0..rounds {
            // Rotate which goes first, so none always gets the warmer cache.
            for turn in 0..6 {
                match (round + turn) % 6 {
                    0 => {
                        let d = runtime.block_on(bare_channel::<Message>(
                            messages,
                            producers,
                            consumers,
                            payload.clone(),
                        ));
                        msgs.push(rate(messages, d));
                    }
                    1 => {
                        let d = runtime.block_on(bare_channel::<Bytes>(
                            messages,
                            producers,
                            consumers,
                            payload.clone(),
                        ));
                        bytes.push(rate(messages, d));
                    }
                    2 => {
                        let d = runtime.block_on(memory_broker(
                            Sdk::Bare,
                            messages,
                            producers,
                            consumers,
                            payload.clone(),
                        ));
                        mem.push(rate(messages, d));
                    }
                    3 => {
                        let d = runtime.block_on(memory_broker(
                            Sdk::Instrumented,
                            messages,
                            producers,
                            consumers,
                            payload.clone(),
                        ));
                        quiet.push(rate(messages, d));
                    }
                    4 => logs.push(observed::in_child(&format!(
                        "logs:{producers}:{consumers}:{messages}"
                    ))),
                    _ => traces.push(observed::in_child(&format!(
                        "traces:{producers}:{consumers}:{messages}"
                    ))),
                }
            }
        }
        let (b, m, q) = (median(bytes.clone()), median(msgs.clone()), median(mem.clone()));
        println!(
            "{producers}p/{consumers}c  mpsc<Message>: {m:>9.0} msg/s   mq-memory: {q:>9.0} msg/s   ratio (mq-memory / mpsc<Message>): {:.2}",
            q / m
        );
        println!(
            "         reference mpsc<Bytes>: {b:>9.0} msg/s   ratio (mq-memory / mpsc<Bytes>): {:.2}",
            q / b
        );
        let i = median(quiet.clone());
        println!(
            "         instrumented, nothing installed: {i:>9.0} msg/s   ratio (/ mq-memory): {:.3}",
            i / q
        );
        observed::report_child(
            "         ",
            "instrumented, fmt subscriber (INFO) + Prometheus recorder",
            &logs,
            ">= 0.9",
        );
        observed::report_child(
            "         ",
            "instrumented, OpenTelemetry layer + Prometheus recorder",
            &traces,
            "none",
        );
        let show = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{:.2}M", r / 1e6))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("         rounds mpsc<Message>: {}", show(&msgs));
        println!("         rounds mq-memory:     {}", show(&mem));
        println!("         rounds mpsc<Bytes>:   {}", show(&bytes));
        println!("         rounds instrumented:  {}", show(&quiet));
    }
}
