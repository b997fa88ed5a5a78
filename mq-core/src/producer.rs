//! Sending: the `Producer` trait, receipts and producer options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::{Message, Result};

/// Where the broker put a message, as the backend reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// An offset in a log, within a partition where the backend has them.
    Offset {
        /// The partition, if any.
        partition: Option<i32>,
        /// The offset.
        offset: u64,
    },
    /// An id the broker assigned (for instance a stream entry id).
    Id(String),
    /// A confirmation sequence number (for brokers without positions).
    Sequence(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Offset {
                partition: Some(p),
                offset,
            } => write!(f, "{p}@{offset}"),
            Position::Offset {
                partition: None,
                offset,
            } => write!(f, "{offset}"),
            Position::Id(id) => f.write_str(id),
            Position::Sequence(seq) => write!(f, "#{seq}"),
        }
    }
}

/// Proof that the broker has taken responsibility for a message.
///
/// A producer returns a receipt only once the broker has confirmed the
/// message (publisher confirm, delivery report, command reply): from then on
/// the message is the broker's to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The topic the message was sent to (shared, so a receipt costs no copy
    /// of the name).
    pub topic: Arc<str>,
    /// The message id.
    pub id: String,
    /// Where the broker put it.
    pub position: Position,
}

impl Receipt {
    /// Builds a receipt (for backends).
    pub fn new(topic: impl Into<Arc<str>>, id: impl Into<String>, position: Position) -> Self {
        Receipt {
            topic: topic.into(),
            id: id.into(),
            position,
        }
    }
}

/// Checks what every backend checks before sending: the topic has a name
/// and no message is larger than `limit` bytes.
///
/// # Errors
///
/// [`Error::InvalidOption`](crate::Error::InvalidOption) for an empty topic;
/// [`Error::TooLarge`](crate::Error::TooLarge) naming the topic and the size.
pub fn check_send(backend: &'static str, topic: &str, messages: &[Message], limit: usize) -> Result<()> {
    if topic.is_empty() {
        return Err(crate::Error::InvalidOption {
            backend,
            option: "topic".into(),
            reason: "the topic name is empty".into(),
        });
    }
    if let Some(m) = messages.iter().find(|m| m.encoded_len() > limit) {
        return Err(crate::Error::TooLarge {
            topic: topic.to_string(),
            size: m.encoded_len(),
            limit,
        });
    }
    Ok(())
}

/// Settings for a producer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProducerOptions {
    /// The longest a `send` may wait for room on a full topic and for the
    /// broker's confirmation; `None`: as long as it takes.
    pub send_timeout: Option<Duration>,
}

impl ProducerOptions {
    /// Sets the send timeout.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }
}

/// Sends messages to topics.
///
/// `send` returns a [`Receipt`] only once the broker has the message.
/// Producers are `Sync` and meant to be shared: concurrent sends through one
/// producer are pipelined by every backend.
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// use mq_core::{Broker, Message, ProducerOptions};
/// let broker = mq_memory::MemoryBroker::new();
/// let producer = broker.producer(ProducerOptions::default()).await?;
/// let receipt = producer.send("orders", Message::new("tea")).await?;
/// assert_eq!(&*receipt.topic, "orders");
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[async_trait]
pub trait Producer: Send + Sync + fmt::Debug {
    /// Sends one message and waits for the broker's confirmation.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`](crate::Error::TooLarge) over the backend's size
    /// limit, [`Error::Closed`](crate::Error::Closed) after close,
    /// [`Error::Timeout`](crate::Error::Timeout) past the send timeout,
    /// connection and broker errors otherwise.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes may or may not have sent the
    /// message; only a receipt says it was.
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt>;

    /// [`send`](Producer::send), with `hook` told the outcome as the send
    /// ends. mq's instrumentation ([`observe`](crate::observe)) sends
    /// through this while metrics are on and no subscriber wants its
    /// spans.
    ///
    /// The default wraps `send`'s future in one of its own. A backend
    /// whose sends are cheap enough for that allocation to show (mq-memory
    /// sends a million messages a second) overrides it to end its own
    /// future with [`SendHook::finish`](crate::observe::SendHook::finish)
    /// on the result, as mq-memory does.
    ///
    /// # Errors
    ///
    /// As [`send`](Producer::send).
    ///
    /// # Cancel safety
    ///
    /// As [`send`](Producer::send); a send dropped before it ends is not
    /// counted.
    fn send_observed<'a, 'b, 'f>(
        &'a self,
        topic: &'b str,
        message: Message,
        hook: crate::observe::SendHook,
    ) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        hook.around(self.send(topic, message))
    }

    /// Sends many messages, pipelined, and returns their receipts in order.
    ///
    /// Messages reach the topic in the order given. On error some of the
    /// messages may have been sent.
    ///
    /// # Errors
    ///
    /// As [`send`](Producer::send), for the first message that failed.
    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>>;

    /// Waits until every message sent so far is confirmed.
    ///
    /// # Errors
    ///
    /// Connection and broker errors.
    async fn flush(&self) -> Result<()>;

    /// Closes the producer: later sends fail with
    /// [`Error::Closed`](crate::Error::Closed), sends in flight are waited
    /// for (each ends with its receipt or its error), and what the producer
    /// holds of its own (channels, a transactional producer) is released.
    /// The broker and its other producers stay open. Calling it again does
    /// nothing.
    ///
    /// The default flushes, for backends written before `close` existed;
    /// every mq backend refuses later sends.
    ///
    /// # Errors
    ///
    /// Connection and broker errors while flushing.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the producer closed to new sends; the
    /// sends in flight go on.
    async fn close(&self) -> Result<()> {
        self.flush().await
    }
}

/// Conveniences for every [`Producer`].
#[async_trait]
pub trait ProducerExt: Producer {
    /// Sends `value` encoded as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`](crate::Error::Encode), or as [`Producer::send`].
    async fn send_json<T: Serialize + Sync + ?Sized>(&self, topic: &str, value: &T) -> Result<Receipt> {
        self.send(topic, Message::json(value)?).await
    }
}

impl<P: Producer + ?Sized> ProducerExt for P {}

#[cfg(test)]
mod tests {
    use super::*;

    fn _obj_safe(_: Box<dyn Producer>) {}

    #[test]
    fn check_send_names_the_problem() {
        // The size counts the id (36 bytes), key and headers too.
        let big = Message::new(vec![0u8; 200]);
        match check_send("x", "t", &[Message::new("ok"), big], 100) {
            Err(crate::Error::TooLarge { topic, size, limit }) => {
                assert_eq!((topic.as_str(), limit), ("t", 100));
                assert!(size > 200);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            check_send("x", "", &[], 10),
            Err(crate::Error::InvalidOption { .. })
        ));
        assert!(check_send("x", "t", &[Message::new("ok")], 100).is_ok());
    }

    #[test]
    fn position_display() {
        let p = Position::Offset {
            partition: Some(3),
            offset: 9,
        };
        assert_eq!(p.to_string(), "3@9");
        assert_eq!(Position::Id("1-0".into()).to_string(), "1-0");
        assert_eq!(Position::Sequence(4).to_string(), "#4");
    }
}
