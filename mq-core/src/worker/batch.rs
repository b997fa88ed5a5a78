//! Batch handlers: a handler of many jobs at once, fed by
//! [`Consumer::recv_many`](crate::Consumer::recv_many), whose batch is
//! settled all at once.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{Counters, HandlerResult, Job};
use crate::retry::RetryPolicy;
use crate::{BoxError, Consumer, Delivery, Producer, Result};

/// Handles a batch of jobs at once: `Ok(outputs)` publishes the outputs and
/// acks every delivery of the batch; `Err` (or a panic) gives every one
/// back, each requeued after the retry policy's delay for its attempt or
/// dead-lettered when the policy says stop (at once when the error is
/// [`permanent`](super::permanent)). Any `Fn(Vec<Job>) -> impl Future<Output
/// = HandlerResult>` is one.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `jobs` (at least one).
    async fn handle(&self, jobs: Vec<Job>) -> HandlerResult;
}

#[async_trait]
impl<F, Fut> BatchHandler for F
where
    F: Fn(Vec<Job>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, jobs: Vec<Job>) -> HandlerResult {
        (self)(jobs).await
    }
}

/// How a batch route runs.
pub(crate) struct BatchRun {
    pub(crate) handler: Arc<dyn BatchHandler>,
    pub(crate) max: usize,
    pub(crate) wait: Duration,
    pub(crate) retry: Arc<dyn RetryPolicy>,
    pub(crate) producer: Arc<dyn Producer>,
    pub(crate) counters: Arc<Counters>,
}

impl BatchRun {
    /// Takes batches until `stop` is cancelled or the consumer ends; a
    /// batch taken is handled and settled before the next is taken (and
    /// before the loop stops), then the consumer is closed.
    pub(crate) async fn run(self, mut consumer: Box<dyn Consumer>, stop: CancellationToken) -> Result<()> {
        let mut errors_in_a_row = 0u32;
        loop {
            let taken = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                taken = consumer.recv_many(self.max.max(1), self.wait) => taken,
            };
            let batch = match taken {
                Ok(Some(batch)) => {
                    errors_in_a_row = 0;
                    batch
                }
                Ok(None) => break,
                Err(e) => {
                    errors_in_a_row = errors_in_a_row.saturating_add(1);
                    tracing::warn!(error = %e, "batch route: recv_many failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(super::recv_error_backoff(errors_in_a_row)) => continue,
                    }
                }
            };
            if batch.is_empty() {
                continue;
            }
            self.handle(batch).await;
        }
        consumer.close().await
    }

    async fn handle(&self, batch: Vec<Delivery>) {
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        self.counters.in_flight.fetch_add(n, Ordering::Relaxed);
        let jobs = batch
            .iter()
            .map(|d| Job {
                message: d.message().clone(),
                attempt: d.attempt(),
            })
            .collect();
        let outcome = AssertUnwindSafe(self.handler.handle(jobs)).catch_unwind().await;
        let result: std::result::Result<(), BoxError> = match outcome {
            Ok(Ok(outputs)) => {
                let mut published = Ok(());
                for out in outputs {
                    if let Err(e) = self.producer.send(&out.topic, out.message).await {
                        published = Err(Box::new(e) as BoxError);
                        break;
                    }
                }
                published
            }
            Ok(Err(e)) => Err(e),
            Err(panic) => {
                self.counters.panics.fetch_add(n, Ordering::Relaxed);
                Err(format!(
                    "batch handler panicked: {}",
                    crate::backend::panic_message(panic.as_ref())
                )
                .into())
            }
        };
        match result {
            Ok(()) => {
                if let Err(e) = crate::ack_all(&batch).await {
                    tracing::warn!(error = %e, "batch route: acking a batch failed");
                }
                self.counters.handled.fetch_add(n, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
                let reason = error.to_string();
                for delivery in &batch {
                    let given = super::give_back(
                        delivery,
                        &error,
                        reason.clone(),
                        self.retry.as_ref(),
                        &self.counters,
                    )
                    .await;
                    if let Err(e) = given {
                        tracing::warn!(id = %delivery.message().id, error = %e, "batch route: settling failed");
                    }
                }
            }
        }
        self.counters.in_flight.fetch_sub(n, Ordering::Relaxed);
    }
}
