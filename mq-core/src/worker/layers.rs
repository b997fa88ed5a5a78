//! Handlers and `tower` services, both ways: any [`Handler`] is a
//! `tower::Service<Job>` ([`HandlerService`]), and any such service, with
//! the layers around it (tower's timeout, concurrency and rate limits, your
//! own logging, auth or dedup), is a handler ([`service`]).
//!
//! ```
//! use std::time::Duration;
//! use mq_core::worker::{service, Handler, HandlerResult, HandlerService, Job};
//! fn _is_handler(_: impl Handler) {}
//! let slow_is_a_retry = tower::ServiceBuilder::new()
//!     .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)))
//!     .service(HandlerService::new(|job: Job| async move { HandlerResult::Ok(vec![]) }));
//! _is_handler(service(slow_is_a_retry));
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tower::{Service, ServiceExt};

use super::{Handler, HandlerResult, Job, Publish};
use crate::BoxError;

/// A [`Handler`] as a `tower::Service<Job>`: the innermost service of a
/// stack of layers. Cheap to clone (the handler is shared).
#[derive(Clone)]
pub struct HandlerService {
    handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for HandlerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

impl HandlerService {
    /// `handler` as a service.
    pub fn new(handler: impl Handler) -> Self {
        HandlerService {
            handler: Arc::new(handler),
        }
    }

    /// A shared handler as a service.
    pub fn from_arc(handler: Arc<dyn Handler>) -> Self {
        HandlerService { handler }
    }
}

impl Service<Job> for HandlerService {
    type Response = Vec<Publish>;
    type Error = BoxError;
    type Future = BoxFuture<'static, HandlerResult>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        let handler = self.handler.clone();
        Box::pin(async move { handler.handle(job).await })
    }
}

/// A `tower::Service<Job>` as a [`Handler`] (from [`service`]): each job
/// goes to a clone of the service, once it is ready; its error is the
/// handler's (retried by the worker's policy, unless
/// [`permanent`](super::permanent)).
///
/// Layers whose state must be shared by every job either share it across
/// clones (tower's `ConcurrencyLimit` does, through one semaphore) or are
/// not `Clone` (tower's `RateLimit`): put those behind tower's `Buffer`
/// layer, which is `Clone` and funnels every job through one instance.
pub struct ServiceHandler<S> {
    // Behind a lock only to be cloned: layers such as tower's concurrency
    // limit are `Send` but not `Sync`.
    service: Mutex<S>,
}

impl<S> std::fmt::Debug for ServiceHandler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandler").finish_non_exhaustive()
    }
}

/// `service` (a stack of tower layers around a [`HandlerService`], say) as
/// a handler for a worker or a route.
pub fn service<S>(service: S) -> ServiceHandler<S>
where
    S: Service<Job, Response = Vec<Publish>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    ServiceHandler {
        service: Mutex::new(service),
    }
}

#[async_trait]
impl<S> Handler for ServiceHandler<S>
where
    S: Service<Job, Response = Vec<Publish>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn handle(&self, job: Job) -> HandlerResult {
        let service = self
            .service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        service.oneshot(job).await.map_err(Into::into)
    }
}
