//! A producer that retries failed sends with a policy.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::RetryPolicy;
use crate::{Message, Producer, Receipt, Result};

/// Wraps a producer: a send that fails with a [retryable](crate::Error::is_retryable)
/// error is tried again after the policy's delay, until the policy says stop.
/// Other errors (bad input, closed, too large) come back at once.
///
/// A retried send may be delivered twice if the first try reached the
/// broker but its confirmation was lost (at-least-once).
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use mq_core::{Broker, Message, Producer, retry::{ExponentialBackoff, RetryingProducer}};
/// let broker = mq_memory::MemoryBroker::new();
/// let producer = RetryingProducer::new(
///     broker.producer(Default::default()).await?,
///     Arc::new(ExponentialBackoff::new(Duration::from_millis(50)).max_attempts(5)),
/// );
/// producer.send("orders", Message::new("tea")).await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug)]
pub struct RetryingProducer {
    inner: Box<dyn Producer>,
    policy: Arc<dyn RetryPolicy>,
}

impl RetryingProducer {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: Box<dyn Producer>, policy: Arc<dyn RetryPolicy>) -> Self {
        RetryingProducer { inner, policy }
    }
}

#[async_trait]
impl Producer for RetryingProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.inner.send(topic, message.clone()).await {
                Ok(receipt) => return Ok(receipt),
                Err(err) => err,
            };
            // A full topic gives the message back; it is retried from our copy.
            match self.policy.next_delay(attempt, started.elapsed(), &err) {
                Some(delay) if err.is_retryable() => {
                    tracing::debug!(topic, attempt, ?delay, error = %err, "send failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(err),
            }
        }
    }

    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.inner.send_batch(topic, messages.clone()).await {
                Ok(receipts) => return Ok(receipts),
                Err(err) => err,
            };
            match self.policy.next_delay(attempt, started.elapsed(), &err) {
                Some(delay) if err.is_retryable() => tokio::time::sleep(delay).await,
                _ => return Err(err),
            }
        }
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Fixed, Never};
    use crate::{Error, Position};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Fails with `error()` for the first `failures` sends.
    #[derive(Debug)]
    struct Flaky {
        failures: Mutex<u32>,
        calls: Mutex<u32>,
        retryable: bool,
    }

    #[async_trait]
    impl Producer for Flaky {
        async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
            *self.calls.lock().unwrap() += 1;
            let mut left = self.failures.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(if self.retryable {
                    Error::Timeout {
                        operation: "send".into(),
                        after: Duration::from_millis(1),
                    }
                } else {
                    Error::TooLarge {
                        topic: topic.into(),
                        size: 2,
                        limit: 1,
                    }
                });
            }
            Ok(Receipt::new(topic, message.id, Position::Sequence(1)))
        }
        async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
            let mut out = Vec::new();
            for m in messages {
                out.push(self.send(topic, m).await?);
            }
            Ok(out)
        }
        async fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    fn flaky(failures: u32, retryable: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            failures: Mutex::new(failures),
            calls: Mutex::new(0),
            retryable,
        })
    }

    #[derive(Debug)]
    struct Shared(Arc<Flaky>);
    #[async_trait]
    impl Producer for Shared {
        async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
            self.0.send(topic, message).await
        }
        async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
            self.0.send_batch(topic, messages).await
        }
        async fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_until_success() {
        let inner = flaky(3, true);
        let p = RetryingProducer::new(
            Box::new(Shared(inner.clone())),
            Arc::new(Fixed::new(Duration::from_millis(1))),
        );
        let msg = Message::new("x");
        let receipt = p.send("t", msg.clone()).await.unwrap();
        assert_eq!(receipt.id, msg.id, "the same message was sent again");
        assert_eq!(*inner.calls.lock().unwrap(), 4);
    }

    #[tokio::test]
    async fn the_policy_decides_when_to_stop() {
        let inner = flaky(10, true);
        let p = RetryingProducer::new(
            Box::new(Shared(inner.clone())),
            Arc::new(Fixed::new(Duration::from_millis(1)).max_attempts(3)),
        );
        assert!(matches!(
            p.send("t", Message::new("x")).await,
            Err(Error::Timeout { .. })
        ));
        assert_eq!(*inner.calls.lock().unwrap(), 3);
        let never = RetryingProducer::new(Box::new(Shared(flaky(1, true))), Arc::new(Never));
        assert!(never.send("t", Message::new("x")).await.is_err());
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let inner = flaky(5, false);
        let p = RetryingProducer::new(
            Box::new(Shared(inner.clone())),
            Arc::new(Fixed::new(Duration::ZERO)),
        );
        assert!(matches!(
            p.send("t", Message::new("x")).await,
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(*inner.calls.lock().unwrap(), 1);
    }
}
