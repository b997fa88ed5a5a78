//! Receiving from the in-memory broker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use futures::future::BoxFuture;
use mq_core::backend::AckHandle;
use mq_core::observe::RecvHook;
use mq_core::{Consumer, Delivery, Error, Nack, Result};
use tokio::time::Instant;

use crate::broker::Inner;
use crate::faults::Injector;
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
    /// The broker's restart count this consumer has seen.
    epoch: u64,
    /// Injected duplicates, handed out before anything else.
    duplicates: VecDeque<(Arc<mq_core::Message>, u32)>,
    /// An injected delay of the buffer's first delivery runs until then.
    delay_until: Option<Instant>,
}

impl MemoryConsumer {
    pub(crate) fn new(
        inner: Arc<Inner>,
        topic: Arc<Topic>,
        policy: Arc<Policy>,
        group: usize,
        id: u64,
    ) -> Self {
        let epoch = inner.epoch.load(Ordering::Acquire);
        MemoryConsumer {
            epoch,
            duplicates: VecDeque::new(),
            delay_until: None,
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

impl MemoryConsumer {
    /// A receive, and what [`Consumer::recv_observed`] adds: the hook,
    /// handed the result at the end of this one future (nothing nested,
    /// and nothing awaited between the result and the hook).
    async fn recv_now(&mut self, hook: Option<RecvHook<'_>>) -> Result<Option<Delivery>> {
        let mut result = if self.closed || self.ctx.inner.is_closed() {
            Ok(None)
        } else {
            // Cooperative scheduling, as in `send`: a consumer with a full
            // buffer never waits, so it must yield now and then.
            tokio::task::consume_budget().await;
            if self.ctx.inner.faults.active {
                // Boxed: this future stays small (it is allocated per receive).
                Box::pin(self.recv_faulty()).await
            } else {
                self.next_taken()
                    .await
                    .map(|taken| taken.map(|taken| self.delivery(taken)))
            }
        };
        if let Some(hook) = hook {
            hook.finish(&mut result);
        }
        result
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    fn recv<'a, 'f>(&'a mut self) -> BoxFuture<'f, Result<Option<Delivery>>>
    where
        'a: 'f,
        Self: 'f,
    {
        Box::pin(self.recv_now(None))
    }

    /// Observed at the end of the receive's own future: no second one (see
    /// [`Consumer::recv_observed`]).
    fn recv_observed<'a, 'h, 'f>(&'a mut self, hook: RecvHook<'h>) -> BoxFuture<'f, Result<Option<Delivery>>>
    where
        'a: 'f,
        'h: 'f,
        Self: 'f,
    {
        Box::pin(self.recv_now(Some(hook)))
    }

    async fn close(&mut self) -> Result<()> {
        self.detach();
        Ok(())
    }
}

impl MemoryConsumer {
    /// The reconnect error after a broker restart, once per restart (the
    /// deliveries it buffered went back to the group).
    fn check_restart(&mut self) -> Result<()> {
        let epoch = self.ctx.inner.epoch.load(Ordering::Acquire);
        if epoch == self.epoch {
            return Ok(());
        }
        self.epoch = epoch;
        self.buffer.clear();
        self.duplicates.clear();
        self.delay_until = None;
        Err(Error::Connection {
            backend: "memory",
            endpoint: "memory://".into(),
            reason: "the broker restarted (injected fault); unsettled deliveries come back, reconnected"
                .into(),
            source: None,
        })
    }

    /// The first buffered delivery whose lease did not run out.
    fn pop_buffered(&mut self) -> Option<Taken> {
        let now = Instant::now();
        // One whose lease ran out was already taken back by the broker.
        std::iter::from_fn(|| self.buffer.pop_front()).find(|taken| taken.deadline > now)
    }

    /// `recv` with faults injected (see [`Faults`](crate::Faults)).
    async fn recv_faulty(&mut self) -> Result<Option<Delivery>> {
        let ctx = self.ctx.clone();
        let faults = &ctx.inner.faults;
        loop {
            self.check_restart()?;
            if let Some((message, attempt)) = self.duplicates.pop_front() {
                return Ok(Some(Delivery::shared(
                    message,
                    attempt,
                    ctx.policy.topic.clone(),
                    ctx.policy.group.clone(),
                    Box::new(DuplicateAck),
                )));
            }
            if let Some(until) = self.delay_until {
                tokio::time::sleep_until(until).await;
                self.delay_until = None;
                if let Some(taken) = self.pop_buffered() {
                    return Ok(Some(self.delivery(taken)));
                }
            }
            let Some(mut taken) = self.next_taken().await? else {
                return Ok(None);
            };
            if faults.roll(faults.faults.reorder) {
                let across = faults.faults.reorder_across_keys;
                let later = self
                    .buffer
                    .iter()
                    .position(|t| across || t.message.key.is_none() || t.message.key != taken.message.key);
                if let Some(other) = later.and_then(|i| self.buffer.remove(i)) {
                    Injector::count(&faults.reordered);
                    self.buffer.push_front(std::mem::replace(&mut taken, other));
                }
            }
            if let Some(delay) = faults.delay() {
                Injector::count(&faults.delayed);
                self.buffer.push_front(taken);
                self.delay_until = Some(Instant::now() + delay);
                continue;
            }
            if faults.roll(faults.faults.duplicate) {
                Injector::count(&faults.duplicated);
                self.duplicates.push_back((taken.message.clone(), taken.attempt));
            }
            return Ok(Some(self.delivery(taken)));
        }
    }

    /// The next delivery from the buffer or the topic, waiting for one.
    async fn next_taken(&mut self) -> Result<Option<Taken>> {
        self.check_restart()?;
        if let Some(taken) = self.pop_buffered() {
            return Ok(Some(taken));
        }
        let ctx = self.ctx.clone();
        let topic = &ctx.topic;
        loop {
            self.check_restart()?;
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
                        return Ok(Some(taken));
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
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The settle of an injected duplicate: the broker settles the original
/// only, so settling the copy does nothing.
#[derive(Debug)]
struct DuplicateAck;

#[async_trait]
impl AckHandle for DuplicateAck {
    async fn ack(&self, _: &Delivery) -> Result<()> {
        Ok(())
    }

    async fn nack(&self, _: &Delivery, _: Nack) -> Result<()> {
        Ok(())
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
        let faults = &self.ctx.inner.faults;
        if faults.active && faults.roll(faults.faults.redeliver) {
            // The ack is lost, as if the consumer crashed after handling:
            // the broker takes the delivery back (attempt + 1).
            Injector::count(&faults.redelivered);
            return self.nack(delivery, Nack::requeue()).await;
        }
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
