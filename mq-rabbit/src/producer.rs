//! Sending: pipelined publishes on confirm channels, confirms awaited together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use lapin::Channel;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use mq_core::backend::check_send;
use mq_core::{Error, Message, Position, Producer, ProducerOptions, Receipt, Result};

use crate::broker::Inner;
use crate::codec;
use crate::error::map;

/// A producer of a [`RabbitBroker`](crate::RabbitBroker).
///
/// It has its own confirm channels (`publish_channels`, 2 by default),
/// used in turn, so concurrent producers do not queue behind one another.
/// `send` returns once the broker confirmed the message; a message no queue
/// would receive (no group on the topic) is returned by the broker and is
/// an error naming the topic. A publish lost with the connection is sent
/// again on the next one (it may then arrive twice; none is lost).
#[derive(Debug)]
pub struct RabbitProducer {
    inner: Arc<Inner>,
    options: ProducerOptions,
    channels: Vec<tokio::sync::Mutex<Option<(u64, Channel)>>>,
    next: AtomicUsize,
    seq: AtomicU64,
    /// Bounds unconfirmed publishes (`confirm_window`).
    window: Arc<tokio::sync::Semaphore>,
    gate: mq_core::backend::SendGate,
}

impl RabbitProducer {
    pub(crate) fn new(inner: Arc<Inner>, options: ProducerOptions) -> Self {
        let n = inner.config.options.publish_channels.max(1);
        let window = inner.config.options.confirm_window.max(1);
        RabbitProducer {
            channels: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
            inner,
            options,
            next: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            window: Arc::new(tokio::sync::Semaphore::new(window)),
            gate: mq_core::backend::SendGate::new("rabbitmq producer"),
        }
    }

    /// A confirm channel of the current connection, from the slots in
    /// turn, with its slot's index (see [`Inner::reuse_or_open`]: a
    /// channel of a dead connection once kept publishers stalled for good).
    async fn channel(&self) -> Result<(usize, Channel)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        let mut slot = self.channels[i].lock().await;
        Ok((i, self.inner.reuse_or_open(&mut slot).await?.1))
    }

    /// Forgets the channel in slot `i` if it is still `channel`: a publish
    /// on it failed with a lost connection, so the next try opens another.
    async fn forget(&self, i: usize, channel: &Channel) {
        let mut slot = self.channels[i].lock().await;
        if slot.as_ref().is_some_and(|(_, c)| c.id() == channel.id()) {
            *slot = None;
        }
    }

    fn check(&self, topic: &str, messages: &[Message]) -> Result<()> {
        self.inner.check_open()?;
        crate::broker::LIMITS.check_send("rabbitmq", topic, messages)?;
        check_send(
            "rabbitmq",
            topic,
            messages,
            self.inner.config.options.max_message_bytes,
        )
    }

    /// Publishes `messages` (those not confirmed yet) and records receipts.
    async fn publish_pending(
        &self,
        topic: &str,
        messages: &[Message],
        receipts: &mut [Option<Receipt>],
    ) -> Result<()> {
        // At most `confirm_window` unconfirmed publishes per producer. Each
        // chunk takes its permits at once, so concurrent batches cannot
        // deadlock each holding part of the window.
        let window = self.inner.config.options.confirm_window.max(1);
        let pending: Vec<usize> = (0..messages.len()).filter(|i| receipts[*i].is_none()).collect();
        for chunk in pending.chunks(window) {
            let permits = self
                .window
                .clone()
                .acquire_many_owned(u32::try_from(chunk.len()).unwrap_or(u32::MAX))
                .await
                .map_err(|_| Error::closed("rabbitmq producer"))?;
            let result = self.publish_chunk(topic, messages, chunk, receipts).await;
            drop(permits);
            result?;
        }
        Ok(())
    }

    /// Publishes the messages at the indexes in `chunk`, then waits for
    /// their confirms together.
    async fn publish_chunk(
        &self,
        topic: &str,
        messages: &[Message],
        chunk: &[usize],
        receipts: &mut [Option<Receipt>],
    ) -> Result<()> {
        // Each step is bounded: on a connection that died abruptly a lapin
        // reply (an RPC's answer, a confirm) may never come. Past the bound
        // it is a lost connection, and what was not confirmed is sent again.
        let what = format!("publish to `{topic}`");
        self.inner.bounded(&what, self.inner.declare_topic(topic)).await?;
        let (slot, channel) = self.inner.bounded(&what, self.channel()).await?;
        let result = self
            .inner
            .bounded(&what, self.publish_on(&channel, topic, messages, chunk, receipts))
            .await;
        // A lost connection, and a refusal: a channel whose publishes are
        // nacked is replaced, since on a cluster it may keep refusing after
        // a queue's leader moved (a new channel finds the new leader).
        let refused = matches!(&result, Err(Error::Backend { retryable: true, .. }));
        if matches!(result, Err(Error::Connection { .. })) || refused {
            self.forget(slot, &channel).await;
        }
        result
    }

    /// Publishes the messages at the indexes in `chunk` on `channel`, then
    /// waits for their confirms together.
    async fn publish_on(
        &self,
        channel: &Channel,
        topic: &str,
        messages: &[Message],
        chunk: &[usize],
        receipts: &mut [Option<Receipt>],
    ) -> Result<()> {
        let durable = self.inner.config.options.durable;
        let endpoint = &self.inner.endpoint;
        let mut confirms = Vec::new();
        for &i in chunk {
            let message = &messages[i];
            let (exchange, routing_key) = self.inner.publish_target(topic, message.key.as_deref());
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &message.payload,
                    codec::properties(message, None, durable),
                )
                .await
                .map_err(|e| map(e, &format!("publish to `{topic}`"), endpoint))?;
            confirms.push((i, confirm));
        }
        let (indexes, futures): (Vec<usize>, Vec<_>) = confirms.into_iter().unzip();
        let outcomes = futures::future::join_all(futures).await;
        let mut first_error = None;
        for (i, outcome) in indexes.into_iter().zip(outcomes) {
            let result = match outcome {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => Err(Error::Backend {
                    backend: "rabbitmq",
                    operation: format!("publish to `{topic}`"),
                    reason: format!(
                        "unroutable: no queue is bound to exchange `{topic}` (subscribe a group to the topic first)"
                    ),
                    retryable: false,
                    source: None,
                }),
                Ok(Confirmation::Nack(_)) => Err(Error::Backend {
                    backend: "rabbitmq",
                    operation: format!("publish to `{topic}`"),
                    reason: "the broker refused the message (nack)".into(),
                    retryable: true,
                    source: None,
                }),
                Ok(Confirmation::NotRequested) => Err(Error::backend(
                    "rabbitmq",
                    format!("publish to `{topic}`"),
                    "the channel did not confirm",
                )),
                Err(e) => Err(map(e, &format!("confirm of a publish to `{topic}`"), endpoint)),
            };
            match result {
                Ok(()) => {
                    let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    receipts[i] = Some(Receipt::new(
                        topic,
                        messages[i].id.clone(),
                        Position::Sequence(seq),
                    ));
                }
                Err(e) => {
                    // Keep the most telling error: a lost connection is retried, the rest is not.
                    if first_error
                        .as_ref()
                        .is_none_or(|f: &Error| matches!(f, Error::Connection { .. }))
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn publish(&self, topic: &str, messages: &[Message]) -> Result<Vec<Receipt>> {
        let _pass = self.gate.enter()?;
        self.check(topic, messages)?;
        let mut receipts: Vec<Option<Receipt>> = vec![None; messages.len()];
        let work = async {
            let started = tokio::time::Instant::now();
            let mut attempt = 0;
            loop {
                attempt += 1;
                // Only what was not confirmed yet is published again (each
                // step of a try is bounded, in `publish_chunk`).
                let tried = self.publish_pending(topic, messages, &mut receipts).await;
                match tried {
                    Ok(()) => return Ok(()),
                    Err(err) => match self.inner.retry_delay(attempt, started, &err) {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err(err),
                    },
                }
            }
        };
        match self.options.send_timeout {
            None => work.await?,
            Some(after) => tokio::time::timeout(after, work)
                .await
                .map_err(|_| Error::Timeout {
                    operation: format!("publish to `{topic}`"),
                    after,
                })??,
        }
        Ok(receipts.into_iter().flatten().collect())
    }
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut receipts = self.publish(topic, std::slice::from_ref(&message)).await?;
        receipts
            .pop()
            .ok_or_else(|| Error::backend("rabbitmq", format!("publish to `{topic}`"), "no confirmation"))
    }

    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.publish(topic, &messages).await
    }

    async fn flush(&self) -> Result<()> {
        // Every send waits for its confirmation: nothing is left in flight.
        self.inner.check_open()
    }

    /// Refuses later sends, waits for those in flight (each ends confirmed
    /// or failed), then closes this producer's confirm channels.
    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        for slot in &self.channels {
            let channel = slot.lock().await.take();
            if let Some((_, channel)) = channel
                && channel.status().connected()
            {
                // Bounded: on a connection that died abruptly the reply
                // may never come; the channel goes with the connection.
                let closed = self
                    .inner
                    .bounded("close a confirm channel", async {
                        channel
                            .close(200, "producer closed".into())
                            .await
                            .map_err(|e| map(e, "close a confirm channel", &self.inner.endpoint))
                    })
                    .await;
                if let Err(e) = closed {
                    tracing::debug!(error = %e, "closing a confirm channel");
                }
            }
        }
        Ok(())
    }
}
