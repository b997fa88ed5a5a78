//! Receiving: a channel per consumer with `basic_qos` prefetch, and the
//! settle logic (ack, requeue copies, delay queues, dead letters).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::Channel;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use mq_core::backend::{AckHandle, dead_letter_message};
use mq_core::{Consumer, Delivery, Error, Message, Nack, Result, Subscription};

use crate::broker::{Inner, lost};
use crate::codec;
use crate::error::map;

/// What a consumer and its deliveries share.
#[derive(Debug)]
struct Ctx {
    inner: Arc<Inner>,
    sub: Subscription,
    topic: Arc<str>,
    group: Arc<str>,
    queue: String,
    dead_letter_topic: String,
}

impl Ctx {
    /// Publishes `message` on the control channel and waits for the confirm.
    /// `Ok(false)`: the broker returned it (no queue to route it to).
    async fn publish_copy(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        attempt: Option<u32>,
    ) -> Result<bool> {
        let inner = &self.inner;
        inner
            .retrying(|| async {
                let (_, channel) = inner.control().await?;
                let what = format!("publish a copy to `{exchange}`/`{routing_key}`");
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                let props = codec::properties(message, attempt, inner.config.options.durable);
                // A connection that died abruptly may leave the confirm
                // pending: bounded, and the copy is sent again.
                let publish = async {
                    channel
                        .basic_publish(
                            exchange.into(),
                            routing_key.into(),
                            options,
                            &message.payload,
                            props,
                        )
                        .await
                        .map_err(|e| map(e, &what, &inner.endpoint))?
                        .await
                        .map_err(|e| map(e, &what, &inner.endpoint))
                };
                let confirm = inner.bounded(&what, publish).await?;
                match confirm {
                    Confirmation::Ack(None) => Ok(true),
                    Confirmation::Ack(Some(_)) => Ok(false),
                    _ => Err(Error::Backend {
                        backend: "rabbitmq",
                        operation: what,
                        reason: "the broker refused the copy".into(),
                        retryable: true,
                        source: None,
                    }),
                }
            })
            .await
    }

    async fn dead_letter(&self, message: &Message, attempts: u32, reason: &str) -> Result<()> {
        let dlq = &self.dead_letter_topic;
        let dead = dead_letter_message(message, &self.topic, &self.group, attempts, reason);
        self.inner.declare_topic(dlq).await?;
        let (exchange, routing_key) = self.inner.publish_target(dlq, dead.key.as_deref());
        if self.publish_copy(exchange, routing_key, &dead, None).await? {
            return Ok(());
        }
        // No group reads the dead-letter topic yet: keep dead letters in
        // the queue of the replay group (`mq dlq replay` reads it) rather
        // than lose them.
        let queue = self.inner.group_queue(dlq, mq_core::dlq::DEFAULT_GROUP);
        self.inner
            .declare_queue(&queue, dlq, self.inner.group_queue_arguments())
            .await?;
        if self.publish_copy(exchange, routing_key, &dead, None).await? {
            Ok(())
        } else {
            Err(Error::backend(
                "rabbitmq",
                format!("dead-letter to `{dlq}`"),
                "the dead letter was returned unroutable",
            ))
        }
    }

    /// Requeues for delivery `attempt + 1` (after `delay`), or dead-letters
    /// when the attempts are used up.
    async fn requeue(&self, message: &Message, attempt: u32, delay: Duration) -> Result<()> {
        if let Some(reason) = self.sub.exhausted_reason(attempt) {
            return self.dead_letter(message, attempt, &reason).await;
        }
        let next = attempt.saturating_add(1);
        let target = if delay.is_zero() {
            self.queue.clone()
        } else {
            // A queue per delay whose messages expire back into the group's
            // queue: no broker plugin needed.
            let ms = u64::try_from(delay.as_millis())
                .unwrap_or(u64::MAX)
                .min(u64::from(u32::MAX));
            let name = format!("{}.delay.{ms}", self.queue);
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(self.queue.as_str())),
            );
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(i64::try_from(ms.saturating_add(60_000)).unwrap_or(i64::MAX)),
            );
            self.inner.declare_queue(&name, "", args).await?;
            name
        };
        if self.publish_copy("", &target, message, Some(next)).await? {
            Ok(())
        } else {
            Err(Error::backend(
                "rabbitmq",
                format!("requeue to `{target}`"),
                "the copy was returned unroutable",
            ))
        }
    }
}

/// A consumer of a [`RabbitBroker`](crate::RabbitBroker) subscription: a
/// channel of its own consuming the group's queue with `basic_qos` set to
/// the prefetch. Closing it (or dropping it) closes the channel, and
/// RabbitMQ hands its unacked deliveries to the group's other consumers.
/// After a lost connection it consumes again on the next one; deliveries
/// from the lost channel can no longer be settled (RabbitMQ delivers them
/// again).
///
/// # Cancel safety
///
/// `recv` is cancel safe: a delivery is taken from lapin's stream only when
/// it is returned, and consuming again after a lost connection is one
/// future kept by the consumer, so a `recv` dropped during it (a timeout, a
/// `select!`) leaves it to the next `recv` to finish.
pub struct RabbitConsumer {
    ctx: Arc<Ctx>,
    channel: Channel,
    stream: lapin::Consumer,
    tag: String,
    /// The broker's connection generation the channel was opened on.
    generation: u64,
    /// When a waiting `recv` next checks that the channel is alive (kept
    /// across `recv` calls, so `recv`s cut shorter than [`LIVENESS`] still
    /// get there).
    check_at: tokio::time::Instant,
    /// Whether the channel was lost (until consuming again succeeds).
    channel_lost: bool,
    /// Consuming again on a new channel, once the old one was lost.
    reattaching: Option<BoxFuture<'static, Result<Attached>>>,
    /// A failure met while a batch was being taken: the next `recv` or
    /// `recv_many` returns it.
    failed: Option<Error>,
    closed: bool,
}

impl std::fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("queue", &self.ctx.queue)
            .field("tag", &self.tag)
            .field("reattaching", &self.reattaching.is_some())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// A channel consuming the group's queue.
struct Attached {
    channel: Channel,
    /// lapin's stream of deliveries.
    stream: lapin::Consumer,
    /// The consumer tag.
    tag: String,
    /// The connection generation the channel was opened on.
    generation: u64,
}

/// The longest an ack may take: it is one frame, written without a reply,
/// unless the connection is gone.
const ACK_BOUND: Duration = Duration::from_secs(5);

/// How often a waiting `recv` checks that its channel is still alive: a
/// stream on a connection that died abruptly (the broker killed) was seen
/// to stay pending for good instead of ending.
const LIVENESS: Duration = Duration::from_secs(1);

impl RabbitConsumer {
    pub(crate) async fn start(inner: Arc<Inner>, sub: Subscription) -> Result<Self> {
        let ctx = Arc::new(Ctx {
            queue: inner.group_queue(&sub.topic, &sub.group),
            dead_letter_topic: sub.dead_letter_topic(),
            topic: sub.topic.as_str().into(),
            group: sub.group.as_str().into(),
            inner,
            sub,
        });
        let attached = ctx.inner.retrying(|| attach(&ctx)).await?;
        Ok(RabbitConsumer {
            ctx,
            channel: attached.channel,
            stream: attached.stream,
            tag: attached.tag,
            generation: attached.generation,
            check_at: tokio::time::Instant::now() + LIVENESS,
            channel_lost: false,
            reattaching: None,
            failed: None,
            closed: false,
        })
    }

    /// Consumes again on a new channel. The work is a future kept in
    /// `self`: when this call is dropped half-way, the next one goes on
    /// with it (a new attach started from scratch could leave a consuming
    /// channel behind, holding deliveries nobody reads).
    async fn reattach(&mut self) -> Result<()> {
        let fut = self.reattaching.get_or_insert_with(|| {
            let ctx = self.ctx.clone();
            Box::pin(async move { ctx.inner.retrying(|| attach(&ctx)).await })
        });
        let result = fut.await;
        self.reattaching = None;
        let attached = result?;
        self.channel = attached.channel;
        self.stream = attached.stream;
        self.tag = attached.tag;
        self.generation = attached.generation;
        self.channel_lost = false;
        Ok(())
    }

    /// Whether the channel is gone: closed, or on a connection the broker
    /// has since replaced.
    fn channel_is_dead(&self) -> bool {
        !self.channel.status().connected() || self.ctx.inner.generation() != self.generation
    }
}

/// Declares the topology and starts consuming on a new channel, within a
/// bound: an RPC on a connection that died abruptly may never complete,
/// and then it is tried again on a new one.
async fn attach(ctx: &Ctx) -> Result<Attached> {
    let what = format!("consume queue `{}`", ctx.queue);
    ctx.inner.bounded(&what, attach_once(ctx)).await
}

async fn attach_once(ctx: &Ctx) -> Result<Attached> {
    let inner = &ctx.inner;
    inner.declare_topic(&ctx.sub.topic).await?;
    if !inner.queue_topology() {
        inner
            .declare_queue(&ctx.queue, &ctx.sub.topic, inner.group_queue_arguments())
            .await?;
    }
    let (generation, conn) = inner.connection().await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| map(e, "open a channel", &inner.endpoint))?;
    let cap = inner.config.options.prefetch.unwrap_or(usize::MAX);
    let prefetch = u16::try_from(ctx.sub.prefetch.min(cap).max(1)).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| map(e, "set the prefetch (basic_qos)", &inner.endpoint))?;
    let tag = format!("mq-{}", mq_core::new_id());
    let stream = channel
        .basic_consume(
            ctx.queue.as_str().into(),
            ShortString::from(tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| map(e, &format!("consume queue `{}`", ctx.queue), &inner.endpoint))?;
    Ok(Attached {
        channel,
        stream,
        tag,
        generation,
    })
}

async fn close_channel(channel: Channel, tag: String) {
    if channel.status().connected() {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        // Closing the channel gives its unacked deliveries back to the queue.
        let _ = channel.close(200, "mq: consumer closed".into()).await;
    }
}

/// What one item of lapin's consumer stream is to mq.
enum Taken {
    Delivery(Delivery),
    Failed(Error),
    /// The channel or connection went away (marked to consume again).
    Lost,
}

impl RabbitConsumer {
    /// Turns one item of the stream into a delivery, a failure, or a lost
    /// channel (then marked to be replaced).
    fn taken(&mut self, next: Option<lapin::Result<lapin::message::Delivery>>) -> Taken {
        match next {
            Some(Ok(d)) => {
                let (message, attempt) = codec::decode(&d.properties, d.data, d.redelivered);
                let handle = RabbitAck {
                    ctx: self.ctx.clone(),
                    acker: d.acker,
                };
                Taken::Delivery(Delivery::new(
                    message,
                    attempt,
                    self.ctx.topic.clone(),
                    self.ctx.group.clone(),
                    Box::new(handle),
                ))
            }
            Some(Err(e)) if !lost(&e) => Taken::Failed(map(
                e,
                &format!("consume queue `{}`", self.ctx.queue),
                &self.ctx.inner.endpoint,
            )),
            // The channel or connection went away: consume again on a new one.
            Some(Err(_)) | None => {
                if !(self.closed || self.ctx.inner.is_closed()) {
                    tracing::warn!(queue = %self.ctx.queue, "consumer channel lost; consuming again");
                    self.channel_lost = true;
                }
                Taken::Lost
            }
        }
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        loop {
            if self.closed || self.ctx.inner.is_closed() {
                return Ok(None);
            }
            // A lost channel is replaced first, also when a dropped `recv`
            // left that half-done.
            if self.channel_lost {
                self.reattach().await?;
                continue;
            }
            // Cancel-safe: lapin's stream keeps what was not taken.
            let next = tokio::select! {
                next = self.stream.next() => next,
                () = tokio::time::sleep_until(self.check_at) => {
                    self.check_at = tokio::time::Instant::now() + LIVENESS;
                    if self.channel_is_dead() {
                        tracing::warn!(queue = %self.ctx.queue, "consumer channel found dead; consuming again");
                        self.channel_lost = true;
                    }
                    continue;
                }
            };
            match self.taken(next) {
                Taken::Delivery(delivery) => return Ok(Some(delivery)),
                Taken::Failed(e) => return Err(e),
                Taken::Lost => {
                    if self.closed || self.ctx.inner.is_closed() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The prefetch window serves the whole batch: waits (at most `wait`)
    /// for the first delivery, then takes what the broker has already
    /// pushed to this channel (up to the prefetch), without a timer or a
    /// `select` per delivery. A failure met meanwhile ends the batch and is
    /// what the next `recv` returns; a lost channel is replaced by the next
    /// `recv`.
    async fn recv_many(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<Delivery>>> {
        // The first delivery comes from `recv`, which returns a kept failure.
        mq_core::backend::recv_many_with(self, max, wait, |consumer| {
            if consumer.closed || consumer.channel_lost {
                return None;
            }
            // `None`: nothing more pushed yet.
            let next = consumer.stream.next().now_or_never()?;
            match consumer.taken(next) {
                Taken::Delivery(delivery) => Some(Ok(delivery)),
                Taken::Failed(e) => {
                    consumer.failed = Some(e);
                    None
                }
                Taken::Lost => None,
            }
        })
        .await
    }

    async fn close(&mut self) -> Result<()> {
        if !self.closed {
            self.closed = true;
            close_channel(self.channel.clone(), self.tag.clone()).await;
        }
        Ok(())
    }
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(close_channel(self.channel.clone(), self.tag.clone()));
        }
    }
}

/// Settles one delivery on the channel it came from.
#[derive(Debug)]
struct RabbitAck {
    ctx: Arc<Ctx>,
    acker: Acker,
}

impl RabbitAck {
    async fn ack_original(&self, delivery: &Delivery) -> Result<()> {
        self.ctx.inner.check_open()?;
        let expired = || Error::DeliveryExpired {
            id: delivery.message().id.clone(),
            reason: format!(
                "the channel it came on (queue `{}`) closed; RabbitMQ delivers it again",
                self.ctx.queue
            ),
        };
        // An ack on a connection that died abruptly was seen never to
        // complete (it held a consumer's loop for good): bounded.
        let acked = tokio::time::timeout(ACK_BOUND, self.acker.ack(BasicAckOptions::default()))
            .await
            .map_err(|_| expired())?;
        match acked {
            Ok(_) => Ok(()),
            Err(e) if lost(&e) => Err(expired()),
            Err(e) => Err(map(
                e,
                &format!("ack on queue `{}`", self.ctx.queue),
                &self.ctx.inner.endpoint,
            )),
        }
    }
}

#[async_trait]
impl AckHandle for RabbitAck {
    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        self.ack_original(delivery).await
    }

    async fn nack(&self, delivery: &Delivery, nack: Nack) -> Result<()> {
        self.ctx.inner.check_open()?;
        let (message, attempt) = (delivery.message(), delivery.attempt());
        // The copy first, then the ack: a failure in between duplicates, never loses.
        match nack {
            Nack::DeadLetter { reason } => self.ctx.dead_letter(message, attempt, &reason).await?,
            Nack::Requeue { delay } => self.ctx.requeue(message, attempt, delay).await?,
            _ => self.ctx.requeue(message, attempt, Duration::ZERO).await?,
        }
        self.ack_original(delivery).await
    }
}
