//! Receiving from the in-memory broker.

use std::sync::Arc;

use async_trait::async_trait;
use mq_core::{AckHandle, Consumer, Delivery, Error, Nack, Result};
use tokio::time::Instant;

use crate::broker::Inner;
use crate::topic::{Policy, Take, Topic, Unsettleable};

/// A consumer of a [`MemoryBroker`](crate::MemoryBroker) subscription.
///
/// Dropping it without [`close`](Consumer::close) does the same as closing:
/// its unsettled deliveries go back to the group at once.
#[derive(Debug)]
pub struct MemoryConsumer {
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    policy: Arc<Policy>,
    id: u64,
    closed: bool,
}

impl MemoryConsumer {
    pub(crate) fn new(inner: Arc<Inner>, topic: Arc<Topic>, policy: Arc<Policy>, id: u64) -> Self {
        MemoryConsumer {
            inner,
            topic,
            policy,
            id,
            closed: false,
        }
    }

    fn detach(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut dead = Vec::new();
        self.topic.lock().detach(&self.policy.group, self.id, &mut dead);
        self.inner.dead_letter_all(dead);
        self.topic.notify.notify_waiters();
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        if self.closed {
            return Ok(None);
        }
        loop {
            // Register for wake-ups before looking, so a send between the
            // look and the wait is not missed.
            let notified = self.topic.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut dead = Vec::new();
            let (take, freed_room) = {
                let mut state = self.topic.lock();
                let was_full = state.is_full();
                let take = state.take(&self.policy, self.id, Instant::now(), &mut dead);
                let freed = was_full && matches!(take, Take::Got { .. });
                (take, freed)
            };
            if !dead.is_empty() {
                self.inner.dead_letter_all(dead);
            }
            if freed_room {
                self.topic.notify.notify_waiters();
            }
            match take {
                Take::Closed => return Ok(None),
                Take::Got {
                    message,
                    attempt,
                    tag,
                } => {
                    let handle = MemoryAck {
                        inner: self.inner.clone(),
                        topic: self.topic.clone(),
                        policy: self.policy.clone(),
                        tag,
                        id: message.id.clone(),
                    };
                    return Ok(Some(Delivery::new(
                        message,
                        attempt,
                        self.policy.topic.clone(),
                        self.policy.group.clone(),
                        Box::new(handle),
                    )));
                }
                Take::Wait(Some(at)) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Take::Wait(None) => notified.await,
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
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    policy: Arc<Policy>,
    tag: u64,
    id: String,
}

impl MemoryAck {
    fn error(&self, why: Unsettleable) -> Error {
        match why {
            Unsettleable::Closed => self.inner.closed_error(),
            Unsettleable::Expired => Error::DeliveryExpired {
                id: self.id.clone(),
                reason: format!(
                    "its consumer in group `{}` of topic `{}` closed or its ack timeout passed",
                    self.policy.group, self.policy.topic
                ),
            },
        }
    }
}

#[async_trait]
impl AckHandle for MemoryAck {
    async fn ack(&self) -> Result<()> {
        let result = self.topic.lock().ack(&self.policy.group, self.tag);
        match result {
            Ok(wake) => {
                if wake {
                    self.topic.notify.notify_waiters();
                }
                Ok(())
            }
            Err(why) => Err(self.error(why)),
        }
    }

    async fn nack(&self, nack: Nack) -> Result<()> {
        let result = self
            .topic
            .lock()
            .nack(&self.policy.group, self.tag, nack, Instant::now());
        match result {
            Ok(dead) => {
                if let Some(dead) = dead {
                    self.inner.dead_letter_all(vec![dead]);
                }
                self.topic.notify.notify_waiters();
                Ok(())
            }
            Err(why) => Err(self.error(why)),
        }
    }
}
