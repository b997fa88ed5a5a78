//! The router against the bare worker on mq-memory, 1 producer / 1
//! consumer, interleaved rounds, medians: what a `Route` adds to a
//! `Worker` (the router runs one worker per route).
//!
//! Run: `cargo bench -p mq-memory --bench router` (`MQ_BENCH_MESSAGES`,
//! default 100,000; `MQ_BENCH_ROUNDS`, default 7).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mq_core::worker::{HandlerResult, Job, LiveStats, Route, Router, Worker};
use mq_core::{Broker, Message, ProducerOptions, Subscription};
use mq_memory::MemoryBroker;
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn handler(_job: Job) -> HandlerResult {
    Ok(vec![])
}

/// Sends `n` messages while the worker or router handles them; the time
/// from the first send to the last handled.
async fn run(router: bool, n: usize) -> Duration {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let sub = Subscription::new("bench", "g").prefetch(256);
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<LiveStats>();
    let running = if router {
        let router = Router::new(broker.clone()).route(Route::new(sub, handler));
        let stop = stop.clone();
        tokio::spawn(async move {
            router
                .run_with(stop, move |handle| {
                    let _ = tx.send(handle.live(0).expect("one route"));
                })
                .await
                .map(|_| ())
        })
    } else {
        let worker = Worker::new(broker.subscribe(sub).await.unwrap());
        let _ = tx.send(worker.stats());
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(handler, stop).await.map(|_| ()) })
    };
    let stats = rx.await.unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let started = Instant::now();
    let payload = bytes::Bytes::from(vec![0xab_u8; 100]);
    for _ in 0..n {
        producer
            .send("bench", Message::new(payload.clone()))
            .await
            .unwrap();
    }
    while stats.snapshot().handled < n as u64 {
        tokio::task::yield_now().await;
    }
    let took = started.elapsed();
    stop.cancel();
    running.await.unwrap().unwrap();
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n = env_usize("MQ_BENCH_MESSAGES", 100_000);
    let rounds = env_usize("MQ_BENCH_ROUNDS", 7);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "router vs worker on mq-memory, 1 producer / 1 consumer: {n} x 100-byte messages, {rounds} rounds, interleaved"
    );
    runtime.block_on(run(false, n / 10));
    runtime.block_on(run(true, n / 10));
    let (mut worker, mut router) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for turn in 0..2 {
            let as_router = (round + turn) % 2 == 1;
            let rate = n as f64 / runtime.block_on(run(as_router, n)).as_secs_f64();
            if as_router {
                router.push(rate)
            } else {
                worker.push(rate)
            }
        }
    }
    let (w, r) = (median(worker.clone()), median(router.clone()));
    println!(
        "worker {w:>9.0} msg/s   router {r:>9.0} msg/s   ratio (router / worker) {:.3} (target >= 0.95)",
        r / w
    );
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.0}k", x / 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("    rounds worker: {}", show(&worker));
    println!("    rounds router: {}", show(&router));
}
