//! What the worker calls: a handler of jobs, and what it may publish.

use std::future::Future;

use async_trait::async_trait;

use crate::{BoxError, Message};

/// One message for a handler, with its delivery's attempt number.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Job {
    /// The message.
    pub message: Message,
    /// Which delivery of the message this is (1 the first time).
    pub attempt: u32,
}

/// A message a handler wants published once it succeeded (before the input
/// is acked).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Publish {
    /// Where to.
    pub topic: String,
    /// What.
    pub message: Message,
}

impl Publish {
    /// Publish `message` to `topic`.
    pub fn new(topic: impl Into<String>, message: Message) -> Self {
        Publish {
            topic: topic.into(),
            message,
        }
    }
}

/// What a handler returns: messages to publish, or why it failed.
pub type HandlerResult = Result<Vec<Publish>, BoxError>;

/// Handles jobs. Any `Fn(Job) -> impl Future<Output = HandlerResult>` is one:
///
/// ```
/// use mq_core::worker::{Handler, Job, HandlerResult};
/// fn _is_handler(_: impl Handler) {}
/// _is_handler(|job: Job| async move {
///     println!("{} bytes", job.message.payload.len());
///     HandlerResult::Ok(vec![])
/// });
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one job; `Err` (or a panic, or the worker's time-out) means
    /// failure: the message is requeued with the retry policy's delay, or
    /// dead-lettered once the policy says stop; an error made with
    /// [`permanent`](super::permanent) is dead-lettered at once.
    async fn handle(&self, job: Job) -> HandlerResult;
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, job: Job) -> HandlerResult {
        (self)(job).await
    }
}
