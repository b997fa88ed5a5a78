//! Handlers as tower services: a layer of the application's own sees every
//! call, and tower's timeout layer turns a slow handler into a retry.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use mq_core::retry::Fixed;
use mq_core::worker::{HandlerResult, HandlerService, Job, Worker, WorkerStats, service};
use mq_core::{Broker, Message, ProducerOptions, Subscription};
use tokio_util::sync::CancellationToken;

/// A layer of the application's own: counts the jobs it passes on.
#[derive(Clone)]
struct Counting {
    seen: Arc<AtomicUsize>,
}

impl<S> tower::Layer<S> for Counting {
    type Service = CountingService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountingService {
            inner,
            seen: self.seen.clone(),
        }
    }
}

#[derive(Clone)]
struct CountingService<S> {
    inner: S,
    seen: Arc<AtomicUsize>,
}

impl<S: tower::Service<Job>> tower::Service<Job> for CountingService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, job: Job) -> S::Future {
        self.seen.fetch_add(1, Ordering::SeqCst);
        self.inner.call(job)
    }
}

/// Runs `handler` on a worker over `messages` sent to a fresh memory
/// broker, until `handled` of them are handled (bounded), then stops it.
async fn run(handler: impl mq_core::worker::Handler, messages: usize, handled: u64) -> WorkerStats {
    let broker = mq_memory::MemoryBroker::new();
    let consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    for i in 0..messages {
        producer.send("t", Message::new(format!("m{i}"))).await.unwrap();
    }
    let stop = CancellationToken::new();
    let worker = Worker::new(consumer)
        .concurrency(2)
        .retry(Arc::new(Fixed::new(Duration::from_millis(10))));
    let live = worker.stats();
    let running = tokio::spawn(worker.run(handler, stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while live.snapshot().handled < handled {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not handled in time: {:?}",
            live.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_of_the_application_sees_every_call() {
    let seen = Arc::new(AtomicUsize::new(0));
    let stack = tower::ServiceBuilder::new()
        .layer(Counting { seen: seen.clone() })
        .layer(tower::limit::ConcurrencyLimitLayer::new(1))
        .service(HandlerService::new(|job: Job| async move {
            // m0 fails on its first attempt: the layer sees the retry too.
            if &job.message.payload[..] == b"m0" && job.attempt == 1 {
                return Err("once".into());
            }
            HandlerResult::Ok(vec![])
        }));
    let stats = run(service(stack), 5, 5).await;
    assert_eq!((stats.handled, stats.failed), (5, 1), "{stats:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 6, "five messages, one tried twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towers_timeout_layer_turns_a_slow_handler_into_a_retry() {
    let stack = tower::ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(100)))
        .service(HandlerService::new(|job: Job| async move {
            if job.attempt == 1 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            HandlerResult::Ok(vec![])
        }));
    let stats = run(service(stack), 1, 1).await;
    // The same figures as the worker's own `timeout` setting gives (which
    // is this layer): one way to wrap a handler.
    assert_eq!(
        (stats.handled, stats.failed, stats.timeouts, stats.dead_lettered),
        (1, 1, 1, 0),
        "timed out once, then handled: {stats:?}"
    );
}
