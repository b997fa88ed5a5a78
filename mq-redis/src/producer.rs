//! Sending: XADD, pipelined for batches.

use std::sync::Arc;

use async_trait::async_trait;
use mq_core::backend::{SendGate, check_send};
use mq_core::{Error, Message, Position, Producer, ProducerOptions, Receipt, Result};

use crate::broker::Inner;
use crate::conn::Slot;

/// A producer of a [`RedisBroker`](crate::RedisBroker): `send` returns once
/// Redis replied to the XADD; `send_batch` sends all XADDs in one round trip.
#[derive(Debug)]
pub struct RedisProducer {
    inner: Arc<Inner>,
    options: ProducerOptions,
    gate: SendGate,
    /// With `wait_replicas`: the producer's own connection, opened on its
    /// first send, since a `WAIT` holds up its connection on the server.
    writes: tokio::sync::OnceCell<Slot>,
}

impl RedisProducer {
    pub(crate) fn new(inner: Arc<Inner>, options: ProducerOptions) -> Self {
        RedisProducer {
            inner,
            options,
            gate: SendGate::new("redis producer"),
            writes: tokio::sync::OnceCell::new(),
        }
    }

    fn check(&self, topic: &str, messages: &[Message]) -> Result<()> {
        self.inner.check_open()?;
        self.inner.check_topic(topic)?;
        check_send(
            "redis",
            topic,
            messages,
            self.inner.config.options.max_message_bytes,
        )
    }

    async fn add_all(&self, topic: &str, messages: &[Message]) -> Result<Vec<Receipt>> {
        let _pass = self.gate.enter()?;
        self.check(topic, messages)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.inner.stream_key(topic);
        let what = format!("XADD to `{key}`");
        let call = async {
            // One message is one command: a pipeline of one costs its
            // encoding and its reply bookkeeping for nothing.
            if let ([message], None) = (messages, self.inner.config.wait_replicas()) {
                let cmd = self.inner.xadd(&key, message, None);
                return self.inner.query::<String>(&what, &cmd).await.map(|id| vec![id]);
            }
            let mut pipe = redis::Pipeline::with_capacity(messages.len() + 1);
            for message in messages {
                pipe.add_command(self.inner.xadd(&key, message, None));
            }
            if !self.inner.add_wait(&mut pipe) {
                return self.inner.query_pipe::<Vec<String>>(&what, &pipe).await;
            }
            let conn = self.inner.write_slot(&self.writes).await?;
            // The entry ids, then how many replicas have them.
            let mut replies = self
                .inner
                .query_pipe_on::<Vec<redis::Value>>(conn, &what, &pipe)
                .await?;
            let replicas = match replies.pop() {
                Some(redis::Value::Int(n)) => n,
                _ => 0,
            };
            self.inner.check_replicated(&what, replicas)?;
            replies
                .into_iter()
                .map(|v| {
                    <String as redis::FromRedisValue>::from_redis_value(v)
                        .map_err(|e| Error::backend("redis", what.clone(), e.to_string()))
                })
                .collect()
        };
        let ids = match self.options.send_timeout {
            None => call.await,
            Some(after) => tokio::time::timeout(after, call)
                .await
                .map_err(|_| Error::Timeout {
                    operation: what.clone(),
                    after,
                })?,
        }
        .map_err(|e| with_size(e, messages))?;
        let topic: Arc<str> = topic.into();
        Ok(messages
            .iter()
            .zip(ids)
            .map(|(m, id)| Receipt::new(topic.clone(), m.id.clone(), Position::Id(id)))
            .collect())
    }
}

/// A refusal by the server (its memory limit, its bulk length limit...)
/// names the size of what was refused, besides the key.
fn with_size(err: Error, messages: &[Message]) -> Error {
    match err {
        Error::Backend {
            backend,
            operation,
            reason,
            retryable,
            source,
        } => {
            let largest = messages.iter().map(Message::encoded_len).max().unwrap_or(0);
            let total: usize = messages.iter().map(Message::encoded_len).sum();
            let size = if messages.len() > 1 {
                format!(
                    "{} messages, {total} bytes, the largest {largest} bytes",
                    messages.len()
                )
            } else {
                format!("{largest} bytes")
            };
            Error::Backend {
                backend,
                operation: format!("{operation} ({size})"),
                reason,
                retryable,
                source,
            }
        }
        other => other,
    }
}

#[async_trait]
impl Producer for RedisProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut receipts = self.add_all(topic, std::slice::from_ref(&message)).await?;
        receipts
            .pop()
            .ok_or_else(|| Error::backend("redis", format!("XADD to `{topic}`"), "no reply"))
    }

    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.add_all(topic, &messages).await
    }

    async fn flush(&self) -> Result<()> {
        // Every send waits for its reply: nothing is left in flight.
        self.inner.check_open()
    }

    async fn close(&self) -> Result<()> {
        // The connection is the broker's: only this producer's sends end.
        self.gate.close().await;
        Ok(())
    }
}
