//! Sending to the in-memory broker.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use mq_core::backend::{SendGate, check_send};
use mq_core::observe::SendHook;
use mq_core::{Error, Message, Position, Producer, ProducerOptions, Receipt, Result};

use crate::broker::Inner;
use crate::faults::Injector;
use crate::topic::{Topic, Woken, wake};

/// A producer of a [`MemoryBroker`](crate::MemoryBroker).
///
/// `send` returns once the message is in the topic; on a full topic it waits
/// for room (up to [`ProducerOptions::send_timeout`]);
/// [`try_send`](MemoryProducer::try_send) never waits and gives the message
/// back instead.
#[derive(Debug, Clone)]
pub struct MemoryProducer {
    inner: Arc<Inner>,
    options: ProducerOptions,
    /// Shared by clones: a clone is the same producer.
    gate: Arc<SendGate>,
}

impl MemoryProducer {
    pub(crate) fn new(inner: Arc<Inner>, options: ProducerOptions) -> Self {
        MemoryProducer {
            inner,
            options,
            gate: Arc::new(SendGate::new("memory producer")),
        }
    }

    /// Sends without waiting for room.
    ///
    /// # Errors
    ///
    /// [`Error::Full`] with the message inside (take it back with
    /// [`Error::into_message`]) when the topic is full;
    /// [`Error::TooLarge`]; [`Error::Closed`].
    ///
    /// ```
    /// use mq_core::{Broker, Message, ProducerOptions, Subscription};
    /// # async fn run() -> mq_core::Result<()> {
    /// let broker = mq_memory::MemoryBroker::with_config(mq_memory::MemoryConfig::default().capacity(1));
    /// let _consumer = broker.subscribe(Subscription::new("t", "g")).await?;
    /// let producer = broker.memory_producer(ProducerOptions::default());
    /// producer.try_send("t", Message::new("first"))?;
    /// let err = producer.try_send("t", Message::new("second")).unwrap_err();
    /// assert_eq!(err.into_message().unwrap().payload, "second");
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn try_send(&self, topic: &str, message: Message) -> Result<Receipt> {
        let _pass = self.gate.enter()?;
        self.check(topic, &message)?;
        self.fail_before()?;
        let topic = self.inner.topic(topic);
        let receipt = append_now(&topic, message).unwrap_or_else(|message| {
            Err(Error::Full {
                topic: topic.name.to_string(),
                message: Box::new(message),
            })
        })?;
        self.fail_after()?;
        Ok(receipt)
    }

    /// An injected send failure, before anything is stored.
    fn fail_before(&self) -> Result<()> {
        let faults = &self.inner.faults;
        if faults.active && faults.roll(faults.faults.fail_send) {
            Injector::count(&faults.failed_sends);
            return Err(Injector::send_error("the send failed; nothing was stored"));
        }
        Ok(())
    }

    /// An injected lost confirm, after the messages were stored.
    fn fail_after(&self) -> Result<()> {
        let faults = &self.inner.faults;
        if faults.active && faults.roll(faults.faults.lose_confirm) {
            Injector::count(&faults.lost_confirms);
            return Err(Injector::send_error(
                "the confirm was lost; the message may have been stored",
            ));
        }
        Ok(())
    }

    fn check(&self, topic: &str, message: &Message) -> Result<()> {
        if self.inner.is_closed() {
            return Err(self.inner.closed_error());
        }
        check_send(
            "memory",
            topic,
            std::slice::from_ref(message),
            self.inner.config.max_message_bytes,
        )
    }

    /// Appends `messages` in order, waiting for room as needed.
    async fn append_all(&self, topic_name: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        for message in &messages {
            self.check(topic_name, message)?;
        }
        let topic = self.inner.topic(topic_name);
        let mut receipts = Vec::with_capacity(messages.len());
        let mut pending = VecDeque::from(messages);
        while !pending.is_empty() {
            let appended_before = receipts.len();
            let (woken, seen) = {
                let mut state = topic.lock();
                if state.closed {
                    return Err(self.inner.closed_error());
                }
                while let Some(message) = pending.pop_front() {
                    let id = message.id.clone();
                    match state.try_append(message) {
                        Ok(offset) => receipts.push(receipt(&topic, id, offset)),
                        Err(message) => {
                            // Full: keep it first in line and wait for room.
                            pending.push_front(message);
                            break;
                        }
                    }
                }
                let woken = if receipts.len() > appended_before {
                    state.changed()
                } else {
                    Woken::None
                };
                (woken, state.version())
            };
            wake(woken);
            if !pending.is_empty() {
                // Waiting for room; a close of this producer ends the wait.
                tokio::select! {
                    () = topic.changed_since(seen) => {}
                    () = self.gate.closing() => return Err(Error::closed("memory producer")),
                }
            }
        }
        Ok(receipts)
    }

    async fn append_all_timed(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        match self.options.send_timeout {
            None => self.append_all(topic, messages).await,
            Some(after) => tokio::time::timeout(after, self.append_all(topic, messages))
                .await
                .map_err(|_| Error::Timeout {
                    operation: format!("send to memory topic `{topic}`"),
                    after,
                })?,
        }
    }
}

/// Appends if there is room, without waiting: `Ok(result)` when done
/// (appended, or the topic is closed), `Err(message)` when full.
fn append_now(topic: &Topic, message: Message) -> std::result::Result<Result<Receipt>, Message> {
    let id = message.id.clone();
    let (offset, woken) = {
        let mut state = topic.lock();
        if state.closed {
            return Ok(Err(Error::closed("memory broker")));
        }
        let offset = state.try_append(message)?;
        (offset, state.changed())
    };
    wake(woken);
    Ok(Ok(receipt(topic, id, offset)))
}

fn receipt(topic: &Topic, id: String, offset: u64) -> Receipt {
    Receipt::new(
        topic.name.clone(),
        id,
        Position::Offset {
            partition: None,
            offset,
        },
    )
}

impl MemoryProducer {
    /// A send, and what [`Producer::send_observed`] adds: the hook, told
    /// the outcome at the end of this one future (nothing nested, so an
    /// observed send costs what a plain one does but the count).
    async fn send_now(&self, topic: &str, message: Message, hook: Option<SendHook>) -> Result<Receipt> {
        // Take part in tokio's cooperative scheduling like its own channels:
        // a send that never waits would otherwise never yield, and a task it
        // woke (a consumer in this worker's LIFO slot) could not run.
        tokio::task::consume_budget().await;
        let result = match self.gate.enter() {
            Err(e) => Err(e),
            Ok(_pass) => match self.check(topic, &message) {
                Err(e) => Err(e),
                // The paths that wait are boxed: this future stays small
                // (it is allocated per send; a send that waits is slow
                // anyway).
                Ok(()) if self.inner.faults.active => Box::pin(self.send_faulty(topic, message)).await,
                // Fast path: room in an existing topic. Otherwise wait like
                // a batch.
                Ok(()) => match self.inner.with_topic(topic, message, append_now) {
                    Ok(Ok(result)) => result,
                    Ok(Err(message)) | Err(message) => Box::pin(self.send_waiting(topic, message)).await,
                },
            },
        };
        if let Some(hook) = hook {
            hook.finish(&result);
        }
        result
    }

    /// A send that waits for room (or for the topic to be made).
    async fn send_waiting(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut receipts = self.append_all_timed(topic, vec![message]).await?;
        receipts
            .pop()
            .ok_or_else(|| Error::backend("memory", format!("send to `{topic}`"), "no receipt was produced"))
    }

    /// A send with faults injected (see [`Faults`](crate::Faults)).
    async fn send_faulty(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.fail_before()?;
        let receipt = self.send_waiting(topic, message).await?;
        self.fail_after()?;
        Ok(receipt)
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    fn send<'a, 'b, 'f>(&'a self, topic: &'b str, message: Message) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(self.send_now(topic, message, None))
    }

    /// Counted at the end of the send's own future: no second one (see
    /// [`Producer::send_observed`]).
    fn send_observed<'a, 'b, 'f>(
        &'a self,
        topic: &'b str,
        message: Message,
        hook: SendHook,
    ) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(self.send_now(topic, message, Some(hook)))
    }

    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let _pass = self.gate.enter()?;
        if self.inner.faults.active {
            self.fail_before()?;
            let receipts = self.append_all_timed(topic, messages).await?;
            self.fail_after()?;
            return Ok(receipts);
        }
        self.append_all_timed(topic, messages).await
    }

    async fn flush(&self) -> Result<()> {
        if self.inner.is_closed() {
            return Err(self.inner.closed_error());
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        // Every send returns with its receipt: nothing is left to flush.
        self.gate.close().await;
        Ok(())
    }
}
