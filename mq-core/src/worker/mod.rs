//! The worker (the router, in Watermill's words): consume a subscription
//! and call a handler for each message, with bounded concurrency, retries,
//! dead letters and a graceful shutdown.
//!
//! ```
//! # async fn run() -> mq_core::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use mq_core::{Broker, Message, Subscription};
//! use mq_core::retry::ExponentialBackoff;
//! use mq_core::worker::{Job, HandlerResult, Worker};
//! use tokio_util::sync::CancellationToken;
//!
//! let broker = mq_memory::MemoryBroker::new();
//! let consumer = broker.subscribe(Subscription::new("emails", "senders")).await?;
//! broker.producer(Default::default()).await?.send("emails", Message::new("hi")).await?;
//!
//! let stop = CancellationToken::new();
//! let worker = Worker::new(consumer)
//!     .concurrency(8)
//!     .retry(Arc::new(ExponentialBackoff::new(Duration::from_millis(100)).max_attempts(5)));
//! let running = tokio::spawn(worker.run(|job: Job| async move {
//!     println!("sending {:?}", job.message.payload);
//!     HandlerResult::Ok(vec![])
//! }, stop.clone()));
//! # tokio::time::sleep(Duration::from_millis(50)).await;
//! stop.cancel(); // finish in-flight work, requeue what did not finish, close
//! let stats = running.await.unwrap()?;
//! assert_eq!(stats.handled, 1);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```

mod batch;
mod handler;
mod idempotency;
mod layers;
mod router;
mod typed;

pub use batch::BatchHandler;
pub use handler::{Handler, HandlerResult, Job, Publish};
pub use idempotency::{IdempotencyStore, MemoryIdempotencyStore};
pub use layers::{HandlerService, ServiceHandler, service};
pub use router::{Route, RouteStats, RouteStatus, Router, RouterHandle, shutdown_signal};
pub use typed::{Meta, Permanent, Typed, json, permanent, typed};

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::{BoxError, Consumer, Delivery, Nack, Producer, Result};

/// Which delivery guarantee the worker gives its handler.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Guarantee {
    /// Ack before handling: a message is handled at most once, and lost if
    /// the handler fails or the process dies.
    AtMostOnce,
    /// Ack after handling (the default): a message is handled at least once;
    /// failures are retried.
    #[default]
    AtLeastOnce,
    /// At-least-once, skipping messages whose id the store has seen: a
    /// redelivered message is handled once (within the TTL).
    EffectivelyOnce {
        /// Where processed ids are kept.
        store: Arc<dyn IdempotencyStore>,
        /// How long an id is remembered.
        ttl: Duration,
    },
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Handled successfully (and acked).
    pub handled: u64,
    /// Handler failures (errors, panics, time-outs), each requeued or dead-lettered.
    pub failed: u64,
    /// Of the failures, those dead-lettered because the retry policy said stop.
    pub dead_lettered: u64,
    /// Handler panics (counted in `failed` too).
    pub panics: u64,
    /// Handler time-outs (counted in `failed` too).
    pub timeouts: u64,
    /// Duplicates skipped by effectively-once.
    pub duplicates: u64,
    /// Deliveries still in flight at shutdown and requeued.
    pub requeued_at_shutdown: u64,
    /// Handlers running now (0 once the worker has stopped).
    pub in_flight: u64,
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
    duplicates: AtomicU64,
    requeued_at_shutdown: AtomicU64,
    in_flight: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            handled: self.handled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            requeued_at_shutdown: self.requeued_at_shutdown.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// A live view of a worker's counters, readable while it runs (from
/// [`Worker::stats`]); cheap to clone and to read.
///
/// ```
/// # async fn run(consumer: Box<dyn mq_core::Consumer>) {
/// use mq_core::worker::{HandlerResult, Job, Worker};
///
/// let worker = Worker::new(consumer);
/// let stats = worker.stats();
/// let stop = tokio_util::sync::CancellationToken::new();
/// let running = tokio::spawn(worker.run(|_job: Job| async { HandlerResult::Ok(vec![]) }, stop.clone()));
/// println!("handled so far: {}", stats.snapshot().handled);
/// stop.cancel();
/// # let _ = running.await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LiveStats {
    counters: Arc<Counters>,
}

impl LiveStats {
    /// The counters now.
    pub fn snapshot(&self) -> WorkerStats {
        self.counters.snapshot()
    }
}

/// Consumes one subscription and calls a handler for each message.
///
/// * At most [`concurrency`](Worker::concurrency) handlers run at once.
/// * `Ok(outputs)`: the outputs are published, then the message is acked.
/// * `Err`, a panic, or the [`timeout`](Worker::timeout): the message is
///   requeued after the [`retry`](Worker::retry) policy's delay, or
///   dead-lettered (with the error as the reason) once the policy says stop;
///   a [`permanent`] error (a payload a [typed](typed()) handler cannot
///   decode, say) is dead-lettered at once.
/// * [`rate_limit`](Worker::rate_limit) caps messages started per second.
/// * When the token is cancelled the worker stops taking deliveries, lets
///   in-flight handlers finish for up to [`grace`](Worker::grace), requeues
///   what did not finish, closes the consumer and returns its [`WorkerStats`].
#[derive(Debug)]
pub struct Worker {
    consumer: Box<dyn Consumer>,
    counters: Arc<Counters>,
    producer: Option<Arc<dyn Producer>>,
    concurrency: usize,
    retry: Arc<dyn RetryPolicy>,
    timeout: Option<Duration>,
    rate: Option<Duration>,
    grace: Duration,
    guarantee: Guarantee,
}

impl Worker {
    /// A worker on `consumer`: concurrency 1, exponential backoff from 100 ms
    /// (doubling, capped at 30 s, 10 attempts, 20% jitter), no time-out, no
    /// rate limit, 30 s grace, at-least-once.
    pub fn new(consumer: Box<dyn Consumer>) -> Self {
        Worker {
            consumer,
            counters: Arc::default(),
            producer: None,
            concurrency: 1,
            retry: Arc::new(ExponentialBackoff::new(Duration::from_millis(100)).jitter(0.2)),
            timeout: None,
            rate: None,
            grace: Duration::from_secs(30),
            guarantee: Guarantee::AtLeastOnce,
        }
    }

    /// How many handlers may run at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The retry policy for handler failures.
    pub fn retry(mut self, policy: Arc<dyn RetryPolicy>) -> Self {
        self.retry = policy;
        self
    }

    /// Fails a handler that runs longer than `limit`: the handler is put
    /// behind tower's `TimeoutLayer`, as a layer of your own would be (see
    /// [`service`]); a handler error that is tower's `Elapsed`, from this
    /// setting or from a timeout layer of yours, counts as a time-out and
    /// is retried by the policy.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Starts at most `per_second` messages per second (ignored unless positive).
    pub fn rate_limit(mut self, per_second: f64) -> Self {
        self.rate =
            (per_second.is_finite() && per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second));
        self
    }

    /// How long shutdown waits for in-flight handlers.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The producer that publishes handlers' outputs.
    pub fn producer(mut self, producer: Arc<dyn Producer>) -> Self {
        self.producer = Some(producer);
        self
    }

    /// The delivery guarantee.
    pub fn guarantee(mut self, guarantee: Guarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// Runs until `stop` is cancelled or the consumer ends.
    ///
    /// # Errors
    ///
    /// Closing the consumer at the end; errors while running are logged and
    /// the worker goes on.
    pub async fn run(mut self, handler: impl Handler, stop: CancellationToken) -> Result<WorkerStats> {
        let handler: Arc<dyn Handler> = match self.timeout {
            // One way to wrap a handler: the worker's time-out is tower's
            // layer, the one a user would add.
            Some(limit) => Arc::new(service(
                tower::ServiceBuilder::new()
                    .layer(tower::timeout::TimeoutLayer::new(limit))
                    .service(HandlerService::new(handler)),
            )),
            None => Arc::new(handler),
        };
        let counters = self.counters.clone();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let in_flight: Arc<Mutex<HashMap<u64, Arc<Delivery>>>> = Arc::default();
        let shared = Arc::new(Shared {
            producer: self.producer.clone(),
            retry: self.retry.clone(),
            timeout: self.timeout,
            guarantee: self.guarantee.clone(),
            counters: counters.clone(),
        });
        let mut tasks = JoinSet::new();
        let mut next_start = Instant::now();
        let mut key = 0u64;
        let mut errors_in_a_row = 0u32;
        loop {
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            if let Some(interval) = self.rate {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(next_start) => {}
                }
                // No bursts after a quiet spell: the next slot is one interval after now at the earliest.
                let now = Instant::now();
                next_start = next_start.max(now.checked_sub(interval).unwrap_or(now)) + interval;
            }
            let delivery = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                d = self.consumer.recv() => d,
            };
            let delivery = match delivery {
                Ok(Some(d)) => {
                    errors_in_a_row = 0;
                    Arc::new(d)
                }
                Ok(None) => break,
                Err(e) => {
                    errors_in_a_row += 1;
                    tracing::warn!(error = %e, "worker: recv failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(recv_error_backoff(errors_in_a_row)) => continue,
                    }
                }
            };
            key += 1;
            let id = key;
            lock(&in_flight).insert(id, delivery.clone());
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let (handler, shared, in_flight) = (handler.clone(), shared.clone(), in_flight.clone());
            tasks.spawn(async move {
                // Counted down however the task ends (aborted at shutdown too).
                let _running = Running(shared.counters.clone());
                shared.process(&delivery, handler.as_ref()).await;
                lock(&in_flight).remove(&id);
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }

        // Shutdown: let in-flight work finish within the grace period.
        let deadline = Instant::now() + self.grace;
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                () = tokio::time::sleep_until(deadline) => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let unfinished: Vec<Arc<Delivery>> = lock(&in_flight).drain().map(|(_, d)| d).collect();
        let mut requeued = 0;
        for delivery in unfinished {
            if !delivery.is_settled() && delivery.nack(Nack::requeue()).await.is_ok() {
                requeued += 1;
            }
        }
        counters
            .requeued_at_shutdown
            .fetch_add(requeued, Ordering::Relaxed);
        self.consumer.close().await?;
        Ok(counters.snapshot())
    }

    /// A live view of this worker's counters, readable while
    /// [`run`](Worker::run) goes on (take it before calling `run`).
    pub fn stats(&self) -> LiveStats {
        LiveStats {
            counters: self.counters.clone(),
        }
    }
}

/// Counts a running handler task down when it ends.
struct Running(Arc<Counters>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a consumer loop waits after its `errors`-th failed receive in
/// a row: 50 ms more each time, at most 1 s.
fn recv_error_backoff(errors: u32) -> Duration {
    Duration::from_millis(50 * u64::from(errors.min(20)))
}

/// Gives back a delivery whose handling failed with `error`: requeued
/// after the retry policy's delay for its attempt, or dead-lettered with
/// `reason` (and counted) when the policy says stop or the error is
/// [`permanent`], whatever the policy says.
async fn give_back(
    delivery: &Delivery,
    error: &BoxError,
    reason: String,
    retry: &dyn RetryPolicy,
    counters: &Counters,
) -> Result<()> {
    let message = delivery.message();
    let age = SystemTime::now()
        .duration_since(message.timestamp)
        .unwrap_or_default();
    let next = if typed::is_permanent(error) {
        None
    } else {
        retry.next_delay(delivery.attempt(), age, error.as_ref())
    };
    match next {
        Some(delay) => {
            tracing::debug!(id = %message.id, attempt = delivery.attempt(), ?delay, %reason, "worker: requeuing");
            delivery.nack(Nack::requeue_after(delay)).await
        }
        None => {
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = %message.id, attempt = delivery.attempt(), %reason, "worker: dead-lettering");
            delivery.nack(Nack::dead_letter(reason)).await
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every handler task needs.
#[derive(Debug)]
struct Shared {
    producer: Option<Arc<dyn Producer>>,
    retry: Arc<dyn RetryPolicy>,
    timeout: Option<Duration>,
    guarantee: Guarantee,
    counters: Arc<Counters>,
}

/// Why a handler run failed.
enum Failure {
    Error(BoxError),
    Panic(String),
    /// Tower's `Elapsed`: the worker's own limit when it set one.
    Timeout(Option<Duration>),
}

impl Failure {
    fn reason(&self) -> String {
        match self {
            Failure::Error(e) => e.to_string(),
            Failure::Panic(what) => format!("handler panicked: {what}"),
            Failure::Timeout(Some(after)) => format!("handler timed out after {after:?}"),
            Failure::Timeout(None) => "handler timed out (a timeout layer)".to_string(),
        }
    }
}

impl Shared {
    /// Handles one delivery and settles it, all under its `process` span
    /// (the settle spans are its children).
    async fn process(&self, delivery: &Delivery, handler: &dyn Handler) {
        let span = crate::observe::process_span(delivery);
        tracing::Instrument::instrument(self.process_in(delivery, handler, &span), span.clone()).await;
    }

    async fn process_in(&self, delivery: &Delivery, handler: &dyn Handler, span: &tracing::Span) {
        let message = delivery.message();
        let settle = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(id = %message.id, error = %e, "worker: settling a delivery failed");
            }
        };
        match &self.guarantee {
            Guarantee::AtMostOnce => {
                settle(delivery.ack().await);
                match self.run(delivery, handler, span).await {
                    Ok(()) => {
                        self.counters.handled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(f) => {
                        self.count_failure(&f);
                        tracing::warn!(id = %message.id, reason = %f.reason(), "worker: handler failed (at-most-once: not retried)");
                    }
                }
                return;
            }
            Guarantee::EffectivelyOnce { store, .. } => match store.seen(&message.id).await {
                Ok(true) => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    settle(delivery.ack().await);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id = %message.id, error = %e, "worker: idempotency store failed; requeuing");
                    settle(
                        delivery
                            .nack(Nack::requeue_after(Duration::from_millis(100)))
                            .await,
                    );
                    return;
                }
            },
            _ => {}
        }
        match self.run(delivery, handler, span).await {
            Ok(()) => {
                if let Guarantee::EffectivelyOnce { store, ttl } = &self.guarantee
                    && let Err(e) = store.mark(&message.id, *ttl).await
                {
                    tracing::warn!(id = %message.id, error = %e, "worker: could not record the id as processed");
                }
                self.counters.handled.fetch_add(1, Ordering::Relaxed);
                settle(delivery.ack().await);
            }
            Err(failure) => {
                self.count_failure(&failure);
                let reason = failure.reason();
                let error: BoxError = match failure {
                    Failure::Error(e) => e,
                    other => other.reason().into(),
                };
                settle(give_back(delivery, &error, reason, self.retry.as_ref(), &self.counters).await);
            }
        }
    }

    /// Runs the handler (catching panics, within the time-out) and publishes
    /// its outputs.
    /// Runs under `span`, the delivery's `process` span.
    async fn run(
        &self,
        delivery: &Delivery,
        handler: &dyn Handler,
        span: &tracing::Span,
    ) -> std::result::Result<(), Failure> {
        let job = Job {
            message: delivery.message().clone(),
            attempt: delivery.attempt(),
        };
        let started = std::time::Instant::now();
        let outcome = AssertUnwindSafe(handler.handle(job)).catch_unwind().await;
        let (result, label) = match outcome {
            Ok(Err(e)) if e.is::<tower::timeout::error::Elapsed>() => {
                (Err(Failure::Timeout(self.timeout)), "timeout")
            }
            Ok(Ok(outputs)) => (Ok(outputs), "ok"),
            Ok(Err(e)) => (Err(Failure::Error(e)), "error"),
            Err(panic) => (
                Err(Failure::Panic(crate::backend::panic_message(panic.as_ref()))),
                "panic",
            ),
        };
        if let Some(observed) = delivery.observation() {
            observed.processed(label, started.elapsed());
        }
        if label != "ok" {
            crate::observe::process_failed(span, label);
        }
        let outputs = result?;
        if outputs.is_empty() {
            return Ok(());
        }
        let Some(producer) = &self.producer else {
            return Err(Failure::Error(
                "the handler returned messages to publish but the worker has no producer (Worker::producer)"
                    .into(),
            ));
        };
        for out in outputs {
            // Under the `process` span: the outputs continue its trace.
            producer
                .send(&out.topic, out.message)
                .await
                .map_err(|e| Failure::Error(Box::new(e)))?;
        }
        Ok(())
    }

    fn count_failure(&self, f: &Failure) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        match f {
            Failure::Panic(_) => {
                self.counters.panics.fetch_add(1, Ordering::Relaxed);
            }
            Failure::Timeout(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Failure::Error(_) => {}
        }
    }
}
