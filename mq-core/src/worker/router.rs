//! Many handlers in one process: a [`Router`] runs one [`Worker`] per
//! [`Route`] (a subscription and its handler, with its own concurrency,
//! retry and time-out), stops them all together on a token or a signal,
//! and closes the broker at the end.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::batch::{BatchHandler, BatchRun};
use super::{Counters, Handler, HandlerResult, Job, LiveStats, Worker, WorkerStats};
use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::{Broker, Health, Lag, Result, Subscription};

/// One subscription and its handler, with the handler's settings.
///
/// Max attempts have one source: the subscription's
/// ([`Subscription::max_attempts`], 10 by default). The default retry
/// policy (exponential from 100 ms, capped at 30 s, 20% jitter) stops
/// there; a policy given with [`retry`](Route::retry) is asked first, and
/// the subscription's count still caps it.
pub struct Route {
    subscription: Subscription,
    handler: Kind,
    concurrency: usize,
    retry: Option<Arc<dyn RetryPolicy>>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("topic", &self.subscription.topic)
            .field("group", &self.subscription.group)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// `handler` on `subscription`, one message at a time.
    pub fn new(subscription: Subscription, handler: impl Handler) -> Self {
        Route {
            subscription,
            handler: Kind::One(Arc::new(handler)),
            concurrency: 1,
            retry: None,
            timeout: None,
        }
    }

    /// `handler` on `subscription`, called with batches of up to `max`
    /// jobs: each batch is what [`recv_many`](crate::Consumer::recv_many)
    /// hands out within `wait`, and is settled all at once (see
    /// [`BatchHandler`]). One batch at a time; the route's retry policy
    /// and the subscription's max attempts apply to each delivery of a
    /// failed batch. (Concurrency and time-out are for routes of one job.)
    pub fn batch(subscription: Subscription, handler: impl BatchHandler, max: usize, wait: Duration) -> Self {
        Route {
            subscription,
            handler: Kind::Batch {
                handler: Arc::new(handler),
                max: max.max(1),
                wait,
            },
            concurrency: 1,
            retry: None,
            timeout: None,
        }
    }

    /// How many handlers of this route may run at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The retry policy of this route's failures.
    pub fn retry(mut self, policy: Arc<dyn RetryPolicy>) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Fails a handler of this route that runs longer than `limit`.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
}

/// A route's handler: of one job, or of a batch.
enum Kind {
    One(Arc<dyn Handler>),
    Batch {
        handler: Arc<dyn BatchHandler>,
        max: usize,
        wait: Duration,
    },
}

/// The route's handler, shared with its worker.
struct SharedHandler(Arc<dyn Handler>);

#[async_trait]
impl Handler for SharedHandler {
    async fn handle(&self, job: Job) -> HandlerResult {
        self.0.handle(job).await
    }
}

/// The retry policy a route's worker uses: the route's (or the default),
/// capped at the subscription's max attempts.
#[derive(Debug)]
struct Capped {
    policy: Arc<dyn RetryPolicy>,
    max_attempts: Option<u32>,
}

impl RetryPolicy for Capped {
    fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        self.policy.next_delay(attempt, elapsed, error)
    }
}

/// Runs many routes on one broker, one [`Worker`] per [`Route`] (a
/// subscription and its handler, with its own concurrency, retry and
/// time-out); stops them all together on a token or a signal, and closes
/// the broker at the end.
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// use std::sync::Arc;
/// use mq_core::worker::{json, HandlerResult, Meta, Route, Router};
/// use mq_core::{Broker, Subscription};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: u32 }
///
/// let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
/// let router = Router::new(broker)
///     .route(Route::new(
///         Subscription::new("orders", "billing"),
///         json(|order: Order, _meta: Meta| async move { HandlerResult::Ok(vec![]) }),
///     ).concurrency(4));
/// let stop = tokio_util::sync::CancellationToken::new();
/// stop.cancel(); // here at once; in a service: `router.run_until_signal()`
/// let stats = router.run(stop).await?;
/// assert_eq!(stats.len(), 1);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug)]
pub struct Router {
    broker: Arc<dyn Broker>,
    routes: Vec<Route>,
    grace: Duration,
}

/// How one route ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteStats {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// The route's worker's counters.
    pub stats: WorkerStats,
}

/// A route's state while the router runs (see [`RouterHandle::status`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct RouteStatus {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// The worker's counters now.
    pub stats: WorkerStats,
    /// How far the group is behind, where the backend can tell.
    pub lag: Result<Lag>,
}

/// Reads a running router's broker health and each route's counters and
/// lag; from [`Router::run_with`].
#[derive(Debug, Clone)]
pub struct RouterHandle {
    broker: Arc<dyn Broker>,
    routes: Arc<std::sync::Mutex<Vec<(String, String, LiveStats)>>>,
}

impl RouterHandle {
    /// The broker's health (a cheap round trip).
    ///
    /// # Errors
    ///
    /// As [`Broker::health`].
    pub async fn health(&self) -> Result<Health> {
        self.broker.health().await
    }

    /// The live counters of route `index` (in the order added), read
    /// without a round trip.
    pub fn live(&self, index: usize) -> Option<LiveStats> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(index)
            .map(|(_, _, live)| live.clone())
    }

    /// Each running route's counters and lag.
    pub async fn status(&self) -> Vec<RouteStatus> {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut out = Vec::with_capacity(routes.len());
        for (topic, group, live) in routes {
            let lag = self.broker.lag(&topic, &group).await;
            out.push(RouteStatus {
                stats: live.snapshot(),
                lag,
                topic,
                group,
            });
        }
        out
    }
}

impl Router {
    /// A router on `broker`, with no routes yet and 30 s of grace.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Router {
            broker,
            routes: Vec::new(),
            grace: Duration::from_secs(30),
        }
    }

    /// Adds a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// How long shutdown waits for each route's handlers in flight (what
    /// did not finish is requeued).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Runs every route until `stop` is cancelled: see
    /// [`run_with`](Router::run_with).
    ///
    /// # Errors
    ///
    /// As [`run_with`](Router::run_with).
    pub async fn run(self, stop: CancellationToken) -> Result<Vec<RouteStats>> {
        self.run_with(stop, |_| {}).await
    }

    /// Runs every route until SIGINT (Ctrl-C) or, on Unix, SIGTERM.
    ///
    /// # Errors
    ///
    /// As [`run_with`](Router::run_with); an error installing the signal
    /// handlers.
    pub async fn run_until_signal(self) -> Result<Vec<RouteStats>> {
        let stop = CancellationToken::new();
        let watcher = tokio::spawn(signalled(stop.clone()));
        let result = self.run(stop).await;
        watcher.abort();
        result
    }

    /// Subscribes every route (all or none: an error closes what was
    /// opened), makes one producer for the handlers' outputs, hands
    /// `started` a [`RouterHandle`], and runs one worker per route until
    /// `stop` is cancelled. Then every worker stops taking messages and
    /// drains within the grace period, the producer and the broker are
    /// closed, and each route's counters are returned in the order added.
    /// A route whose consumer fails is logged and the others go on.
    ///
    /// # Errors
    ///
    /// A subscription or the producer could not be made.
    pub async fn run_with(
        self,
        stop: CancellationToken,
        started: impl FnOnce(RouterHandle),
    ) -> Result<Vec<RouteStats>> {
        let mut consumers = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            match self.broker.subscribe(route.subscription.clone()).await {
                Ok(consumer) => consumers.push(consumer),
                Err(e) => {
                    for mut c in consumers {
                        let _ = c.close().await;
                    }
                    return Err(e);
                }
            }
        }
        let producer: Arc<dyn crate::Producer> = Arc::from(self.broker.producer(Default::default()).await?);
        let handle = RouterHandle {
            broker: self.broker.clone(),
            routes: Arc::default(),
        };
        let mut running = Vec::with_capacity(self.routes.len());
        for (route, consumer) in self.routes.into_iter().zip(consumers) {
            // The default policy has no count of its own: the
            // subscription's max attempts is the one that stops it.
            let policy = route.retry.unwrap_or_else(|| {
                Arc::new(
                    ExponentialBackoff::new(Duration::from_millis(100))
                        .jitter(0.2)
                        .max_attempts(u32::MAX),
                )
            });
            let retry = Arc::new(Capped {
                policy,
                max_attempts: route.subscription.max_attempts,
            });
            let (topic, group) = (route.subscription.topic.clone(), route.subscription.group.clone());
            let (live, task) = match route.handler {
                Kind::One(handler) => {
                    let mut worker = Worker::new(consumer)
                        .concurrency(route.concurrency)
                        .retry(retry)
                        .grace(self.grace)
                        .producer(producer.clone());
                    if let Some(limit) = route.timeout {
                        worker = worker.timeout(limit);
                    }
                    let live = worker.stats();
                    (
                        live,
                        tokio::spawn(worker.run(SharedHandler(handler), stop.clone())),
                    )
                }
                Kind::Batch { handler, max, wait } => {
                    let counters = Arc::new(Counters::default());
                    let run = BatchRun {
                        handler,
                        max,
                        wait,
                        retry,
                        producer: producer.clone(),
                        counters: counters.clone(),
                    };
                    let live = LiveStats {
                        counters: counters.clone(),
                    };
                    let stop = stop.clone();
                    let task = tokio::spawn(async move {
                        run.run(consumer, stop).await?;
                        Ok(counters.snapshot())
                    });
                    (live, task)
                }
            };
            handle
                .routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((topic.clone(), group.clone(), live));
            running.push((topic, group, task));
        }
        started(handle);
        let mut stats = Vec::with_capacity(running.len());
        for (topic, group, task) in running {
            let ended = match task.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%topic, %group, error = %e, "router: a route's worker ended with an error");
                    WorkerStats::default()
                }
                Err(e) => {
                    tracing::warn!(%topic, %group, error = %e, "router: a route's worker task failed");
                    WorkerStats::default()
                }
            };
            stats.push(RouteStats {
                topic,
                group,
                stats: ended,
            });
        }
        if let Err(e) = producer.close().await {
            tracing::warn!(error = %e, "router: closing the producer");
        }
        self.broker.close().await?;
        Ok(stats)
    }
}

/// Cancels `stop` on SIGINT or (Unix) SIGTERM.
async fn signalled(stop: CancellationToken) {
    shutdown_signal().await;
    tracing::info!("router: signal received, draining");
    stop.cancel();
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM: what
/// [`Router::run_until_signal`] waits for, for a service that stops its
/// router with its own token.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "router: no SIGTERM handler; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
