//! Traces and metrics for every backend, in one place.
//!
//! [`Instrumented`] wraps any [`Broker`]: its producers, consumers and
//! deliveries emit spans through `tracing` and metrics through the
//! `metrics` facade, named after the OpenTelemetry messaging semantic
//! conventions. [`Registry::connect`](crate::Registry::connect) wraps every
//! broker it makes; a broker built directly (`MemoryBroker::new()`, ...)
//! is wrapped with [`instrument`]. Both cost next to nothing while no
//! `tracing` subscriber and no `metrics` recorder is installed.
//!
//! ## Spans
//!
//! Every span is at `DEBUG` level with target `mq`, as `tower-http`'s
//! request spans are: a service logging at `INFO` pays nothing for them;
//! enable them for tracing with a filter such as `info,mq=debug` (or no
//! level filter on the OpenTelemetry layer).
//!
//! | span (`otel.name`) | kind | `messaging.operation.type` | when |
//! |---|---|---|---|
//! | `send {topic}` | producer | `send` | [`Producer::send`] and [`Producer::send_batch`] (with `messaging.batch.message_count`) |
//! | `receive {topic}` | consumer | `receive` | each [`Consumer::recv`]; linked to the producer's context |
//! | `process {topic}` | consumer | `process` | the [`worker`](crate::worker)'s handler call; child of the producer's context |
//! | `ack {topic}`, `requeue {topic}`, `dead_letter {topic}` | client | `settle` | [`Delivery::ack`] and [`Delivery::nack`] |
//!
//! Attributes: `messaging.system` (the broker's [`name`](Broker::name):
//! `rabbitmq`, `kafka`, `redis`, `memory`), `messaging.operation.name`,
//! `messaging.operation.type`, `messaging.destination.name`,
//! `messaging.consumer.group.name`, `messaging.message.id`,
//! `messaging.batch.message_count`, `messaging.kafka.message.key`,
//! `messaging.rabbitmq.destination.routing_key`, `server.address`,
//! `server.port`, and on failure `error.type` (see [`Error::kind`]) with
//! `otel.status_code = "ERROR"`.
//!
//! With the `otel` feature, a send injects the W3C `traceparent` and
//! `tracestate` of its span into the message's headers (never replacing
//! ones the application set), and a receive extracts them: the `receive`
//! span links to the producer's span, the `process` span is its child, so
//! one trace crosses the broker. Without an OpenTelemetry layer in the
//! subscriber (or without the feature) headers are left as they are.
//!
//! ## Metrics
//!
//! See [`metric`] for the names and labels. Handles are registered when a
//! producer sends to a topic for the first time and when a consumer is
//! made: install the recorder before connecting.

mod delivery;
pub mod metric;
#[cfg(feature = "otel")]
pub(crate) mod otel;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use tracing::{Span, field};

use crate::{
    Broker, BrokerUrl, Capabilities, Consumer, Delivery, Error, Health, Lag, Message, Producer,
    ProducerOptions, Receipt, Result, Subscription,
};

pub(crate) use delivery::{Observed, process_failed, process_span};

/// Wraps `broker` so that everything made from it is traced and measured
/// (see the [module docs](self)).
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// let broker = mq_core::observe::instrument(std::sync::Arc::new(mq_memory::MemoryBroker::new()));
/// assert_eq!(broker.name(), "memory");
/// # Ok(()) }
/// ```
pub fn instrument(broker: Arc<dyn Broker>) -> Arc<dyn Broker> {
    Arc::new(Instrumented::new(broker))
}

/// Where the broker is, for `server.address` and `server.port`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub(crate) system: &'static str,
    pub(crate) address: Option<String>,
    pub(crate) port: Option<u16>,
}

impl Scope {
    fn record_server(&self, span: &Span) {
        if let Some(address) = &self.address {
            span.record("server.address", address.as_str());
        }
        if let Some(port) = self.port {
            span.record("server.port", port);
        }
    }
}

/// A [`Broker`] whose producers, consumers and deliveries emit spans and
/// metrics; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Instrumented {
    inner: Arc<dyn Broker>,
    scope: Arc<Scope>,
}

impl Instrumented {
    /// Wraps `broker`.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        let scope = Scope {
            system: broker.name(),
            ..Scope::default()
        };
        Instrumented {
            inner: broker,
            scope: Arc::new(scope),
        }
    }

    /// Sets `server.address` and `server.port` from the broker's URL (its
    /// first host; the scheme's default port when none is given).
    pub fn server_from(mut self, url: &BrokerUrl) -> Self {
        let default_port = match url.scheme() {
            "amqp" => Some(5672),
            "amqps" => Some(5671),
            "redis" | "rediss" => Some(6379),
            "kafka" => Some(9092),
            _ => None,
        };
        if let Some(host) = url.hosts().first() {
            let scope = Arc::make_mut(&mut self.scope);
            scope.address = Some(host.host.clone());
            scope.port = host.port.or(default_port);
        }
        self
    }

    /// The wrapped broker.
    pub fn inner(&self) -> &Arc<dyn Broker> {
        &self.inner
    }
}

#[async_trait]
impl Broker for Instrumented {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        let inner = self.inner.producer(options).await?;
        Ok(Box::new(InstrumentedProducer {
            inner,
            scope: self.scope.clone(),
            topics: RwLock::default(),
        }))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>> {
        let metrics = Arc::new(metric::ConsumerMetrics::new(
            self.scope.system,
            &subscription.topic,
            &subscription.group,
        ));
        let topic: Arc<str> = subscription.topic.as_str().into();
        let group: Arc<str> = subscription.group.as_str().into();
        let inner = self.inner.subscribe(subscription).await?;
        Ok(Box::new(InstrumentedConsumer {
            inner,
            scope: self.scope.clone(),
            metrics,
            topic,
            group,
        }))
    }

    async fn health(&self) -> Result<Health> {
        self.inner.health().await
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        let lag = self.inner.lag(topic, group).await?;
        metric::record_lag(self.scope.system, &lag);
        Ok(lag)
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A producer that traces and measures each send.
#[derive(Debug)]
struct InstrumentedProducer {
    inner: Box<dyn Producer>,
    scope: Arc<Scope>,
    /// Metric handles per topic.
    topics: RwLock<HashMap<String, Arc<metric::SendMetrics>>>,
}

impl InstrumentedProducer {
    fn metrics(&self, topic: &str) -> Arc<metric::SendMetrics> {
        let read = self
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = read.get(topic) {
            return m.clone();
        }
        drop(read);
        let mut write = self
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write
            .entry(topic.to_string())
            .or_insert_with(|| Arc::new(metric::SendMetrics::new(self.scope.system, topic)))
            .clone()
    }

    /// Runs a send of `count` messages under `span`, timing it, counting
    /// it and marking the span on failure.
    async fn measured<T>(
        &self,
        topic: &str,
        span: Span,
        count: usize,
        send: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let metrics = self.metrics(topic);
        let started = Instant::now();
        let result = tracing::Instrument::instrument(send, span.clone()).await;
        metrics.sent(count, started.elapsed(), result.as_ref().err());
        if let Err(e) = &result {
            record_error(&span, e);
        }
        result
    }

    fn span(&self, topic: &str, first: Option<&Message>, count: Option<usize>) -> Span {
        let span = tracing::debug_span!(
            target: "mq",
            "send",
            otel.name = field::Empty,
            otel.kind = "producer",
            otel.status_code = field::Empty,
            messaging.system = self.scope.system,
            messaging.operation.name = "send",
            messaging.operation.type = "send",
            messaging.destination.name = topic,
            messaging.message.id = field::Empty,
            messaging.batch.message_count = field::Empty,
            messaging.kafka.message.key = field::Empty,
            messaging.rabbitmq.destination.routing_key = field::Empty,
            server.address = field::Empty,
            server.port = field::Empty,
            error.type = field::Empty,
        );
        if span.is_disabled() {
            return span;
        }
        span.record("otel.name", format!("send {topic}"));
        self.scope.record_server(&span);
        match count {
            Some(n) => {
                span.record("messaging.batch.message_count", n);
            }
            None => {
                if let Some(m) = first {
                    span.record("messaging.message.id", m.id.as_str());
                    record_key(&span, self.scope.system, topic, m);
                }
            }
        }
        span
    }
}

/// The key attributes that apply to `system`.
fn record_key(span: &Span, system: &str, topic: &str, message: &Message) {
    match system {
        "kafka" => {
            if let Some(key) = &message.key {
                span.record("messaging.kafka.message.key", key.as_str());
            }
        }
        "rabbitmq" => {
            span.record(
                "messaging.rabbitmq.destination.routing_key",
                message.key.as_deref().unwrap_or(topic),
            );
        }
        _ => {}
    }
}

/// Marks `span` failed with `err`.
fn record_error(span: &Span, err: &Error) {
    span.record("error.type", err.kind());
    span.record("otel.status_code", "ERROR");
}

#[async_trait]
impl Producer for InstrumentedProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        let span = self.span(topic, Some(&message), None);
        #[cfg(feature = "otel")]
        let message = {
            let mut message = message;
            otel::inject(&span, &mut message.headers);
            message
        };
        self.measured(topic, span, 1, self.inner.send(topic, message))
            .await
    }

    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let count = messages.len();
        let span = self.span(topic, messages.first(), Some(count));
        #[cfg(feature = "otel")]
        let messages = {
            let mut messages = messages;
            for m in &mut messages {
                otel::inject(&span, &mut m.headers);
            }
            messages
        };
        self.measured(topic, span, count, self.inner.send_batch(topic, messages))
            .await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A consumer that traces each receive and hands out observed deliveries.
#[derive(Debug)]
struct InstrumentedConsumer {
    inner: Box<dyn Consumer>,
    scope: Arc<Scope>,
    metrics: Arc<metric::ConsumerMetrics>,
    topic: Arc<str>,
    group: Arc<str>,
}

#[async_trait]
impl Consumer for InstrumentedConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        let span = tracing::debug_span!(
            target: "mq",
            "receive",
            otel.name = field::Empty,
            otel.kind = "consumer",
            otel.status_code = field::Empty,
            messaging.system = self.scope.system,
            messaging.operation.name = "receive",
            messaging.operation.type = "receive",
            messaging.destination.name = &*self.topic,
            messaging.consumer.group.name = &*self.group,
            messaging.message.id = field::Empty,
            messaging.kafka.message.key = field::Empty,
            messaging.rabbitmq.destination.routing_key = field::Empty,
            server.address = field::Empty,
            server.port = field::Empty,
            error.type = field::Empty,
        );
        if !span.is_disabled() {
            span.record("otel.name", format!("receive {}", self.topic));
            self.scope.record_server(&span);
        }
        // Cancel-safe as the wrapped consumer is: nothing happens after
        // the inner `recv` completes but bookkeeping.
        let result = tracing::Instrument::instrument(self.inner.recv(), span.clone()).await;
        match result {
            Ok(Some(delivery)) => {
                let message = delivery.message();
                if !span.is_disabled() {
                    span.record("messaging.message.id", message.id.as_str());
                    record_key(&span, self.scope.system, &self.topic, message);
                }
                let age = SystemTime::now()
                    .duration_since(message.timestamp)
                    .unwrap_or_default();
                self.metrics.consumed(age);
                let observed = Observed::new(self.scope.clone(), self.metrics.clone(), &span, message);
                Ok(Some(delivery.observed(observed)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                record_error(&span, &e);
                self.metrics.receive_failed(&e);
                Err(e)
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}
