//! Sending: every message queued before the first delivery report is
//! awaited, queue-full as backpressure.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mq_core::backend::check_send;
use mq_core::{Error, Message, Position, Producer, ProducerOptions, Receipt, Result, headers};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::broker::Inner;
use crate::error::map;

/// The header carrying the message id.
pub(crate) const ID: &str = "mq-id";

/// The Kafka headers of `message` (id, attempt of a requeued copy, application headers).
pub(crate) fn kafka_headers(message: &Message, attempt: Option<u32>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(message.headers.len() + 2).insert(Header {
        key: ID,
        value: Some(message.id.as_bytes()),
    });
    let attempt = attempt.map(|a| a.to_string());
    if let Some(a) = &attempt {
        h = h.insert(Header {
            key: headers::ATTEMPT,
            value: Some(a.as_bytes()),
        });
    }
    for (k, v) in &message.headers {
        if k != headers::ATTEMPT {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
    }
    h
}

impl Inner {
    /// Queues `message` for `topic` on `producer` (the broker's, or a
    /// transactional one), waiting while librdkafka's queue is full
    /// (backpressure, not an error).
    pub(crate) async fn enqueue_on(
        &self,
        producer: &FutureProducer,
        topic: &str,
        message: &Message,
        attempt: Option<u32>,
    ) -> Result<DeliveryFuture> {
        let ts = i64::try_from(message.timestamp_millis()).unwrap_or(i64::MAX);
        loop {
            let mut record = FutureRecord::to(topic)
                .payload(&message.payload[..])
                .headers(kafka_headers(message, attempt))
                .timestamp(ts);
            if let Some(key) = &message.key {
                record = record.key(key.as_bytes());
            }
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Err(Error::TooLarge {
                        topic: topic.to_string(),
                        size: message.encoded_len(),
                        limit: self.config.max_message_bytes(),
                    });
                }
                Err((e, _)) => return Err(map(e, &format!("produce to `{topic}`"), self.endpoint())),
            }
        }
    }

    /// Waits for a delivery report.
    pub(crate) async fn delivered(
        &self,
        topic: &Arc<str>,
        id: String,
        delivery: DeliveryFuture,
    ) -> Result<Receipt> {
        match delivery.await {
            Ok(Ok(d)) => Ok(Receipt::new(
                topic.clone(),
                id,
                Position::Offset {
                    partition: Some(d.partition),
                    offset: u64::try_from(d.offset).unwrap_or(0),
                },
            )),
            Ok(Err((e, _))) => Err(map(e, &format!("produce to `{topic}`"), self.endpoint())),
            Err(_) => Err(Error::closed("kafka producer")),
        }
    }

    /// Checks and sends `messages` on `producer`: every one queued, then
    /// their delivery reports collected. Each receipt takes its message's id.
    pub(crate) async fn produce_on(
        &self,
        producer: &FutureProducer,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Receipt>> {
        self.check_open()?;
        crate::broker::LIMITS.check_send("kafka", topic, &messages)?;
        check_send("kafka", topic, &messages, self.config.max_message_bytes())?;
        self.ensure_topic(topic).await?;
        let mut pending = Vec::with_capacity(messages.len());
        for m in &messages {
            pending.push(self.enqueue_on(producer, topic, m, None).await?);
        }
        // Every message is queued already: the reports are collected in
        // order (most are in by the time their turn comes), which costs
        // less than polling them all together.
        let shared_topic: Arc<str> = topic.into();
        let mut receipts = Vec::with_capacity(messages.len());
        let mut failed = None;
        for (m, d) in messages.into_iter().zip(pending) {
            match self.delivered(&shared_topic, m.id, d).await {
                Ok(r) => receipts.push(r),
                // The first failure is reported, once every report is in.
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(receipts),
        }
    }
}

/// Runs a blocking librdkafka call (flush, transactions) off the runtime's threads.
pub(crate) async fn blocking<T: Send + 'static>(
    producer: &FutureProducer,
    what: &'static str,
    endpoint: &str,
    call: impl FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<T> + Send + 'static,
) -> Result<T> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .map_err(|e| Error::backend("kafka", what, e.to_string()))?
        .map_err(|e| map(e, what, endpoint))
}

/// The one receipt of a one-message send.
pub(crate) fn single(mut receipts: Vec<Receipt>, topic: &str) -> Result<Receipt> {
    receipts
        .pop()
        .ok_or_else(|| Error::backend("kafka", format!("produce to `{topic}`"), "no delivery report"))
}

/// A producer of a [`KafkaBroker`](crate::KafkaBroker): idempotent
/// (`acks=all`); `send` resolves on the delivery report; `send_batch` queues
/// every message, then awaits their reports.
#[derive(Debug)]
pub struct KafkaProducer {
    inner: Arc<Inner>,
    options: ProducerOptions,
    gate: mq_core::backend::SendGate,
}

impl KafkaProducer {
    pub(crate) fn new(inner: Arc<Inner>, options: ProducerOptions) -> Self {
        KafkaProducer {
            inner,
            options,
            gate: mq_core::backend::SendGate::new("kafka producer"),
        }
    }

    async fn produce(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let _pass = self.gate.enter()?;
        let work = self.inner.produce_on(&self.inner.producer, topic, messages);
        match self.options.send_timeout {
            None => work.await,
            Some(after) => tokio::time::timeout(after, work)
                .await
                .map_err(|_| Error::Timeout {
                    operation: format!("produce to `{topic}`"),
                    after,
                })?,
        }
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        single(self.produce(topic, vec![message]).await?, topic)
    }

    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.produce(topic, messages).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        blocking(&self.inner.producer, "flush", self.inner.endpoint(), |p| {
            use rdkafka::producer::Producer as _;
            p.flush(Duration::from_secs(30))
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        // Each send waits for its delivery report, so once none is in
        // flight this producer has nothing left; librdkafka's producer is
        // the broker's, shared with its other producers.
        self.gate.close().await;
        Ok(())
    }
}
