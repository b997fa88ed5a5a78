//! Receiving from the in-memory broker.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::backend::AckHandle;
use mq_core::{Consumer, Delivery, Error, Nack, Result};
use tokio::time::Instant;

use crate::broker::Inner;
use crate::topic::{Policy, Take, Taken, Topic, Unsettleable, Woken, wake};

/// How many deliveries a consumer takes from the topic per lock, within its
/// prefetch: fewer lock round trips, while competing consumers still share.
const BATCH: usize = 16;

/// What a consumer and its deliveries' ack handles share.
#[derive(Debug)]
struct Ctx {
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    policy: Arc<Policy>,
    group: usize,
    consumer: u64,
}

/// A consumer of a [`MemoryBroker`](crate::MemoryBroker) subscription.
///
/// It holds at most its prefetch of unsettled deliveries, some of them
/// buffered locally until `recv` hands them out. Dropping it without
/// [`close`](Consumer::close) does the same as closing: its unsettled
/// deliveries go back to the group at once.
#[derive(Debug)]
pub struct MemoryConsumer {
    ctx: Arc<Ctx>,
    id: u64,
    buffer: VecDeque<Taken>,
    closed: bool,
}

impl MemoryConsumer {
    pub(crate) fn new(
        inner: Arc<Inner>,
        topic: Arc<Topic>,
        policy: Arc<Policy>,
        group: usize,
        id: u64,
    ) -> Self {
        MemoryConsumer {
            ctx: Arc::new(Ctx {
                inner,
                topic,
                policy,
                group,
                consumer: id,
            }),
            id,
            buffer: VecDeque::new(),
            closed: false,
        }
    }

    fn delivery(&self, taken: Taken) -> Delivery {
        let handle = MemoryAck {
            ctx: self.ctx.clone(),
            tag: taken.tag,
        };
        Delivery::shared(
            taken.message,
            taken.attempt,
            self.ctx.policy.topic.clone(),
            self.ctx.policy.group.clone(),
            Box::new(handle),
        )
    }

    fn detach(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Buffered deliveries are in flight for this consumer: detaching
        // gives them back with the rest.
        self.buffer.clear();
        let ctx = &self.ctx;
        let mut dead = Vec::new();
        let woken = {
            let mut state = ctx.topic.lock();
            state.detach(ctx.group, self.id, &mut dead);
            state.changed()
        };
        wake(woken);
        ctx.inner.dead_letter_all(dead);
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        if self.closed || self.ctx.inner.is_closed() {
            return Ok(None);
        }
        // Cooperative scheduling, as in `send`: a consumer with a full buffer
        // never waits, so it must yield now and then.
        tokio::task::consume_budget().await;
        if !self.buffer.is_empty() {
            let now = Instant::now();
            while let Some(taken) = self.buffer.pop_front() {
                // One whose lease ran out was already taken back by the broker.
                if taken.deadline > now {
                    return Ok(Some(self.delivery(taken)));
                }
            }
        }
        let ctx = self.ctx.clone();
        let topic = &ctx.topic;
        loop {
            let mut dead = Vec::new();
            let (take, woken, seen) = {
                let mut state = topic.lock();
                let was_full = state.is_full();
                let take = state.take(
                    ctx.group,
                    self.id,
                    Instant::now(),
                    BATCH,
                    &mut self.buffer,
                    &mut dead,
                );
                // Taking from a full topic makes room for waiting producers.
                let woken = if was_full && matches!(take, Take::Got) {
                    state.changed()
                } else {
                    Woken::None
                };
                (take, woken, state.version())
            };
            wake(woken);
            if !dead.is_empty() {
                ctx.inner.dead_letter_all(dead);
            }
            match take {
                Take::Closed => return Ok(None),
                Take::Got => {
                    if let Some(taken) = self.buffer.pop_front() {
                        return Ok(Some(self.delivery(taken)));
                    }
                }
                Take::Wait(Some(at)) => {
                    tokio::select! {
                        () = topic.changed_since(seen) => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Take::Wait(None) => topic.changed_since(seen).await,
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.detach();
        Ok(())
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Settles one delivery on the topic's state.
#[derive(Debug)]
struct MemoryAck {
    ctx: Arc<Ctx>,
    tag: u64,
}

impl MemoryAck {
    fn error(&self, why: Unsettleable, delivery: &Delivery) -> Error {
        match why {
            Unsettleable::Closed => self.ctx.inner.closed_error(),
            Unsettleable::Expired => Error::DeliveryExpired {
                id: delivery.message().id.clone(),
                reason: format!(
                    "its consumer in group `{}` of topic `{}` closed or its ack timeout passed",
                    delivery.group(),
                    delivery.topic()
                ),
            },
        }
    }
}

#[async_trait]
impl AckHandle for MemoryAck {
    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        let topic = &self.ctx.topic;
        let result = {
            let mut state = topic.lock();
            state
                .ack(self.ctx.group, self.ctx.consumer, self.tag)
                // Only a consumer at its prefetch limit waits for an ack.
                .map(|freed_full_slot| {
                    if freed_full_slot {
                        state.changed()
                    } else {
                        Woken::None
                    }
                })
        };
        match result {
            Ok(woken) => {
                wake(woken);
                Ok(())
            }
            Err(why) => Err(self.error(why, delivery)),
        }
    }

    async fn nack(&self, delivery: &Delivery, nack: Nack) -> Result<()> {
        let topic = &self.ctx.topic;
        let result = {
            let mut state = topic.lock();
            state
                .nack(self.ctx.group, self.ctx.consumer, self.tag, nack, Instant::now())
                .map(|dead| (dead, state.changed()))
        };
        match result {
            Ok((dead, woken)) => {
                wake(woken);
                if let Some(dead) = dead {
                    self.ctx.inner.dead_letter_all(vec![dead]);
                }
                Ok(())
            }
            Err(why) => Err(self.error(why, delivery)),
        }
    }
}
