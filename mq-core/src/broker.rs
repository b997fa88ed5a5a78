//! The `Broker` trait: one connection to one backend.

use std::fmt;

use async_trait::async_trait;

use crate::{Capabilities, Consumer, Error, Health, Lag, Producer, ProducerOptions, Result, Subscription};

/// A connection to a message broker: makes producers and consumers.
///
/// Every backend implements this trait; application code holds an
/// `Arc<dyn Broker>` picked by URL (see [`Registry`](crate::Registry)) and
/// does not change when the broker does.
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// use std::sync::Arc;
/// use mq_core::{Broker, Message, ProducerOptions, Subscription};
///
/// let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
/// let mut consumer = broker.subscribe(Subscription::new("orders", "billing")).await?;
/// let producer = broker.producer(ProducerOptions::default()).await?;
/// producer.send("orders", Message::new("tea").with_key("customer-1")).await?;
///
/// let delivery = consumer.recv().await?.expect("open consumer");
/// assert_eq!(delivery.message().payload, "tea");
/// assert_eq!(delivery.attempt(), 1);
/// delivery.ack().await?;
/// broker.close().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug {
    /// The backend's name: `memory`, `rabbitmq`, `kafka`, `redis`...
    fn name(&self) -> &'static str;

    /// What this broker guarantees.
    fn capabilities(&self) -> Capabilities;

    /// A producer.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed) after close; connection errors.
    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>>;

    /// A consumer for `subscription`, creating its group if needed.
    ///
    /// When `subscribe` returns, the consumer is attached: messages sent after
    /// that reach its group, even with [`StartPosition::Latest`](crate::StartPosition).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed) after close; invalid topic or
    /// group names; connection errors.
    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>>;

    /// A cheap round trip to the backend: whether it answers, and how fast
    /// (a PING, a passive declaration, a metadata request...), for
    /// readiness checks. It reconnects first where the backend would.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after close; [`Error::Connection`] or
    /// [`Error::Timeout`] when the backend does not answer;
    /// [`Error::Unsupported`] for a backend that has no probe (the
    /// default).
    async fn health(&self) -> Result<Health> {
        Err(Error::Unsupported {
            backend: self.name(),
            feature: "health".into(),
        })
    }

    /// How far `group` is behind on `topic` (see [`Lag`] for what each
    /// backend counts), for monitoring.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after close; connection errors; a backend error
    /// when the group does not exist; [`Error::Unsupported`] for a backend
    /// that cannot tell (the default).
    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        let _ = (topic, group);
        Err(Error::Unsupported {
            backend: self.name(),
            feature: "lag".into(),
        })
    }

    /// Closes the broker: producers fail with `Closed`, consumers end.
    /// Closing twice is a no-op.
    ///
    /// # Errors
    ///
    /// Connection errors while flushing or shutting down.
    async fn close(&self) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _obj_safe(_: std::sync::Arc<dyn Broker>) {}
}
