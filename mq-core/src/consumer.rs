//! Receiving: the `Consumer` trait and its stream adapter.

use std::fmt;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};

use crate::{Delivery, Result};

/// Receives deliveries of one subscription.
///
/// A consumer belongs to one task at a time (`recv` takes `&mut self`). It
/// holds at most the subscription's prefetch of unsettled deliveries: `recv`
/// waits until one is settled before handing out more.
///
/// Closing (or dropping) a consumer gives its unsettled deliveries back to
/// the group, to be delivered again.
#[async_trait]
pub trait Consumer: Send + fmt::Debug {
    /// The next delivery; `None` once the consumer or its broker is closed.
    ///
    /// # Errors
    ///
    /// Connection and broker errors. After an error the consumer may be used
    /// again; backends reconnect where they can.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it completes loses no
    /// message, so `recv` can be used in `tokio::select!` and with
    /// timeouts.
    async fn recv(&mut self) -> Result<Option<Delivery>>;

    /// [`recv`](Consumer::recv), with `hook` handed the result before it
    /// is returned. mq's instrumentation ([`observe`](crate::observe))
    /// receives through this while metrics are on and no subscriber wants
    /// its spans.
    ///
    /// The default wraps `recv`'s future in one of its own. A backend
    /// whose receives are cheap enough for that allocation to show
    /// overrides it to end its own future with
    /// [`RecvHook::finish`](crate::observe::RecvHook::finish), with nothing
    /// awaited between the result and the hook, as mq-memory does.
    ///
    /// # Errors
    ///
    /// As [`recv`](Consumer::recv).
    ///
    /// # Cancel safety
    ///
    /// As [`recv`](Consumer::recv).
    fn recv_observed<'a, 'h, 'f>(
        &'a mut self,
        hook: crate::observe::RecvHook<'h>,
    ) -> BoxFuture<'f, Result<Option<Delivery>>>
    where
        'a: 'f,
        'h: 'f,
        Self: 'f,
    {
        hook.around(self.recv())
    }

    /// Up to `max` deliveries at once: waits at most `wait` for the first,
    /// then takes every one that is ready without waiting (at most the
    /// prefetch are ever unsettled). `Ok(Some(v))` with `v` empty: none
    /// came within `wait`; `Ok(None)` once the consumer or its broker is
    /// closed, as [`recv`](Consumer::recv). Settle each delivery, or all of
    /// them at once with [`ack_all`](crate::ack_all).
    ///
    /// The default builds on `recv`; every mq backend serves a batch from
    /// what one fetch brought (a memory take, one XREADGROUP, a Kafka poll,
    /// the RabbitMQ prefetch window), so a batch costs no round trip per
    /// message.
    ///
    /// ```
    /// # async fn run() -> mq_core::Result<()> {
    /// use std::time::Duration;
    /// use mq_core::{Broker, Message, ProducerOptions, Subscription};
    /// let broker = mq_memory::MemoryBroker::new();
    /// let mut consumer = broker.subscribe(Subscription::new("orders", "billing")).await?;
    /// let producer = broker.producer(ProducerOptions::default()).await?;
    /// for i in 0..5 {
    ///     producer.send("orders", Message::new(format!("order {i}"))).await?;
    /// }
    /// let batch = consumer.recv_many(10, Duration::from_secs(1)).await?.unwrap_or_default();
    /// assert_eq!(batch.len(), 5);
    /// mq_core::ack_all(&batch).await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As `recv`, when the error comes before any delivery. An error after
    /// some deliveries were taken ends the batch early: those are returned
    /// (none is lost) and the error is logged at WARN.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as `recv` is: a dropped `recv_many` loses nothing (a
    /// batch taken whole is either returned or, dropped with the future,
    /// its deliveries go back to the group as dropped deliveries do).
    async fn recv_many(&mut self, max: usize, wait: std::time::Duration) -> Result<Option<Vec<Delivery>>> {
        use futures::FutureExt;
        // Polled once: `recv` is cancel safe, so one that would wait is
        // dropped with nothing lost.
        crate::backend::recv_many_with(self, max, wait, |consumer| match consumer.recv().now_or_never() {
            Some(Ok(Some(delivery))) => Some(Ok(delivery)),
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(None)) | None => None,
        })
        .await
    }

    /// Stops consuming and gives unsettled deliveries back to the group.
    /// Further `recv` calls return `None`. Closing twice is a no-op.
    ///
    /// # Errors
    ///
    /// Connection and broker errors while shutting down.
    async fn close(&mut self) -> Result<()>;
}

/// Conveniences for consumers: a concrete one or a `Box<dyn Consumer>`.
///
/// (There is deliberately no `impl Consumer for Box<dyn Consumer>`: method
/// calls would pick it before the boxed consumer's own methods and box every
/// `recv` future twice.)
pub trait ConsumerExt: Sized + Send + 'static {
    /// The next delivery (the consumer's own `recv`).
    #[doc(hidden)]
    fn recv_next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>>>;

    /// The consumer as a `futures::Stream` of deliveries, ending when the
    /// consumer is closed.
    ///
    /// ```
    /// # async fn run() -> mq_core::Result<()> {
    /// use futures::StreamExt;
    /// use mq_core::{Broker, ConsumerExt, Message, ProducerOptions, Subscription};
    /// let broker = mq_memory::MemoryBroker::new();
    /// let consumer = broker.subscribe(Subscription::new("t", "g")).await?;
    /// broker.producer(ProducerOptions::default()).await?.send("t", Message::new("hi")).await?;
    /// let mut stream = consumer.into_stream();
    /// let delivery = stream.next().await.unwrap()?;
    /// delivery.ack().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    fn into_stream(self) -> BoxStream<'static, Result<Delivery>> {
        Box::pin(stream::unfold(self, |mut consumer| async move {
            match consumer.recv_next().await {
                Ok(Some(delivery)) => Some((Ok(delivery), consumer)),
                Ok(None) => None,
                Err(e) => Some((Err(e), consumer)),
            }
        }))
    }
}

impl<C: Consumer + 'static> ConsumerExt for C {
    fn recv_next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>>> {
        self.recv()
    }
}

impl ConsumerExt for Box<dyn Consumer> {
    fn recv_next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>>> {
        (**self).recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _obj_safe(_: Box<dyn Consumer>) {}
}
