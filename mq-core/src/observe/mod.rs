//! Traces and metrics for every backend, in one place.
//!
//! [`Instrumented`] wraps any [`Broker`]: its producers, consumers and
//! deliveries emit spans through `tracing` and metrics through the
//! `metrics` facade, named after the OpenTelemetry messaging semantic
//! conventions. [`Registry::connect`](crate::Registry::connect) wraps every
//! broker it makes; a broker built directly (`MemoryBroker::new()`, ...)
//! is wrapped with [`instrument`]. Both cost next to nothing while no
//! `tracing` subscriber wants mq's spans and metrics are off (they are
//! opt-in: [`enable_metrics`]).
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
//! Off until [`enable_metrics`]`(true)`, which the application calls once
//! it has installed its recorder. See [`metric`] for the names and labels.
//! Handles are registered on first use once metrics are on, once per
//! topic (and group) for the life of the process, with the recorder
//! installed then.
//!
//! ## Cost
//!
//! While metrics are off and no subscriber wants mq's spans, an
//! instrumented producer or consumer hands out the backend's own futures:
//! the cost is one relaxed load and `tracing`'s cached level check per
//! operation. With metrics on and no subscriber wanting mq's spans, an
//! operation runs in a lean future of mq's that counts it (a load and a
//! store in a slot of its thread's) and times it when the sampler picks it
//! (see [`metric`]). With spans wanted, it runs in its span.
//! BENCHMARKS.md ("Instrumented") has the figures.

mod delivery;
pub mod metric;
#[cfg(feature = "otel")]
pub(crate) mod otel;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tracing::{Span, field};

use crate::{
    Broker, BrokerUrl, Capabilities, Consumer, Delivery, Error, Health, Lag, Message, Producer,
    ProducerOptions, Receipt, Result, Subscription,
};

pub(crate) use delivery::{ConsumerObservation, Observed, process_failed, process_span};

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

/// Whether mq records metrics ([`enable_metrics`]): read by every send and
/// receive, so on a cache line of its own, away from statics other threads
/// write (a message id counter beside it cost the consumer a cache miss
/// per message).
// `#[used]` keeps the whole line: without it the optimiser may shrink the
// static to its one byte and place other statics right after it.
#[used]
static METRICS: Switch = Switch(AtomicBool::new(false));

/// An [`AtomicBool`] on a cache line of its own.
#[repr(align(128))]
struct Switch(AtomicBool);

/// Turns mq's metrics on or off, process-wide (off until called). Call it
/// once the application has installed its `metrics` recorder:
///
/// ```
/// // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
/// mq_core::observe::enable_metrics(true);
/// assert!(mq_core::observe::metrics_enabled());
/// ```
///
/// Off, a send, a receive and a settle read no clock and touch no metric
/// handle; with no `tracing` subscriber interested in mq's spans either,
/// they cost what the bare backend's do (an instrumented producer hands out
/// the backend's own future). Metrics are opt-in as the metrics of the SDKs
/// mq is compared with are (Watermill's decorator, FastStream's
/// middleware, MassTransit's `UsePrometheusMetrics`), because the `metrics`
/// facade cannot tell whether a recorder is installed: without the switch,
/// every message would pay for clock reads and handles nobody records.
/// Handles are registered on first use, so the switch may be flipped at
/// any time; each topic's (and group's) are registered once for the life
/// of the process, with the recorder installed then: install it first.
pub fn enable_metrics(on: bool) {
    METRICS.0.store(on, Ordering::Relaxed);
}

/// Whether [`enable_metrics`] turned mq's metrics on.
pub fn metrics_enabled() -> bool {
    METRICS.0.load(Ordering::Relaxed)
}

/// Hands everything mq has counted to the recorder now.
///
/// Messages sent, delivered and settled are counted in mq's own handles
/// (a load and a store in a slot of the counting thread's, where a
/// recorder's counter costs atomic adds) and handed to the recorder every
/// [`metric::FLUSH_INTERVAL`] by a thread of mq's (started with the first
/// handle), when a producer or consumer closes, and when this is called:
/// before a last scrape, or before a test reads its recorder. Failures
/// and durations reach the recorder at once.
///
/// ```
/// mq_core::observe::flush_metrics();
/// ```
pub fn flush_metrics() {
    metric::flush();
}

/// How an operation starting now is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not at all: the backend's own future.
    Off,
    /// Metrics only (no subscriber wants mq's spans): a lean future that
    /// counts, and times what the sampler picks.
    Metrics,
    /// Spans (and metrics if they are on).
    Spans,
}

/// Whether a `tracing` subscriber wants mq's spans (target `mq`, DEBUG).
pub(crate) fn spans_wanted() -> bool {
    tracing::enabled!(target: "mq", tracing::Level::DEBUG)
}

/// How an operation starting now is observed: spans when a `tracing`
/// subscriber wants them, else metrics when they are on, else not at all.
fn mode() -> Mode {
    if spans_wanted() {
        Mode::Spans
    } else if metrics_enabled() {
        Mode::Metrics
    } else {
        Mode::Off
    }
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
            first: OnceLock::new(),
            others: std::sync::RwLock::default(),
        }))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Box<dyn Consumer>> {
        let shared = Arc::new(ConsumerObservation {
            scope: self.scope.clone(),
            topic: subscription.topic.clone(),
            group: subscription.group.clone(),
            metrics: OnceLock::new(),
        });
        let topic: Arc<str> = subscription.topic.as_str().into();
        let group: Arc<str> = subscription.group.as_str().into();
        let inner = self.inner.subscribe(subscription).await?;
        Ok(Box::new(InstrumentedConsumer {
            inner,
            shared,
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
    /// The metric handles of the first topic sent to (most producers send
    /// to one), found without a lookup.
    first: OnceLock<(Box<str>, &'static metric::SendMetrics)>,
    /// Those of the other topics it sent to (at most [`OTHER_TOPICS`]),
    /// so that a send to one of them takes neither the process-wide lock
    /// of the handle sets nor a copy of the topic's name.
    others: std::sync::RwLock<std::collections::HashMap<Box<str>, &'static metric::SendMetrics>>,
}

/// How many topics besides its first a producer keeps the metric handles
/// of; past that (a producer sending to ever new topics), a send to
/// another one looks them up in the process's sets.
const OTHER_TOPICS: usize = 64;

impl InstrumentedProducer {
    fn metrics(&self, topic: &str) -> &'static metric::SendMetrics {
        let (first, handles) = self
            .first
            .get_or_init(|| (topic.into(), metric::SendMetrics::of(self.scope.system, topic)));
        if **first == *topic {
            return handles;
        }
        let known = self
            .others
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .copied();
        if let Some(handles) = known {
            return handles;
        }
        let handles = metric::SendMetrics::of(self.scope.system, topic);
        let mut others = self
            .others
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if others.len() < OTHER_TOPICS {
            others.insert(topic.into(), handles);
        }
        handles
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

/// Runs `future` in `span`: entered at each poll when the span is
/// enabled, as `tracing::Instrument` does; polled as it is when it is not,
/// which spares the wrapper's cost on every message while no subscriber
/// wants mq's spans.
pub(crate) async fn in_span<F: std::future::Future>(future: F, span: &Span) -> F::Output {
    if span.is_disabled() {
        future.await
    } else {
        tracing::Instrument::instrument(future, span.clone()).await
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

/// A send (or batch) through an instrumented producer.
///
/// Its span is made at the first poll, as an `async fn`'s would be, so
/// that it is a child of the span the caller polls it in
/// (`producer.send(..).instrument(span)`); the trace context is injected
/// and the backend's future made then too. While no subscriber wants the
/// span, the backend's future is polled as it is: the send is timed and
/// counted with no span entered and no second `async` state machine.
struct ObservedSend<'a, T, F> {
    producer: &'a InstrumentedProducer,
    topic: &'a str,
    count: usize,
    /// Makes the span and the backend's future (first poll).
    start: Option<F>,
    running: Option<RunningSend<'a, T>>,
}

struct RunningSend<'a, T> {
    inner: BoxFuture<'a, Result<T>>,
    span: Span,
    /// The handles and, when the sampler picked this send, its start,
    /// while metrics are on.
    metrics: Option<(&'static metric::SendMetrics, Option<Instant>)>,
}

impl<'a, T, F> Future for ObservedSend<'a, T, F>
where
    F: FnOnce() -> (Span, BoxFuture<'a, Result<T>>) + Unpin,
{
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = &mut *self;
        if let Some(start) = this.start.take() {
            let (span, inner) = start();
            this.running = Some(RunningSend {
                inner,
                span,
                metrics: metrics_enabled().then(|| {
                    let metrics = this.producer.metrics(this.topic);
                    let started = metrics.time_this().then(Instant::now);
                    (metrics, started)
                }),
            });
        }
        let Some(run) = this.running.as_mut() else {
            return Poll::Ready(Err(Error::backend(
                "mq",
                "poll a send",
                "polled after it completed",
            )));
        };
        let result = if run.span.is_disabled() {
            std::task::ready!(run.inner.as_mut().poll(cx))
        } else {
            let _entered = run.span.enter();
            std::task::ready!(run.inner.as_mut().poll(cx))
        };
        if let Some((metrics, started)) = &run.metrics {
            metrics.sent(this.count, started.map(|s| s.elapsed()), result.as_ref().err());
        }
        if let Err(e) = &result {
            record_error(&run.span, e);
        }
        this.running = None;
        Poll::Ready(result)
    }
}

/// What mq's instrumentation counts when a send ends, while metrics are on
/// and no subscriber wants mq's spans; handed to
/// [`Producer::send_observed`], which calls [`finish`](SendHook::finish)
/// with the outcome. It counts nothing if dropped unfinished (a send
/// whose future was dropped is not known to have been sent).
#[derive(Debug)]
pub struct SendHook {
    metrics: &'static metric::SendMetrics,
    count: usize,
    /// The start, when the sampler picked this send for timing.
    started: Option<Instant>,
}

impl SendHook {
    /// A send of `count` messages to the topic of `metrics`, starting now.
    fn new(metrics: &'static metric::SendMetrics, count: usize) -> Self {
        SendHook {
            metrics,
            count,
            started: metrics.time_this().then(Instant::now),
        }
    }

    /// Counts the send (and times it, when the sampler picked it) by its
    /// outcome: call it once, when the send has its result.
    pub fn finish<T>(self, result: &Result<T>) {
        let took = self.started.map(|s| s.elapsed());
        self.metrics.sent(self.count, took, result.as_ref().err());
    }

    /// `send`, then this hook: the default of [`Producer::send_observed`].
    pub(crate) fn around<'a, T: 'a>(self, inner: BoxFuture<'a, Result<T>>) -> BoxFuture<'a, Result<T>> {
        Box::pin(MeteredSend {
            inner,
            hook: Some(self),
        })
    }
}

/// A send (or batch) through an instrumented producer while metrics are
/// on and no subscriber wants mq's spans, for a backend that does not end
/// its own future with the hook: the backend's future, then the count. No
/// span, no trace context (there is no span to carry).
struct MeteredSend<'a, T> {
    inner: BoxFuture<'a, Result<T>>,
    hook: Option<SendHook>,
}

impl<T> Future for MeteredSend<'_, T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = &mut *self;
        let poll = this.inner.as_mut().poll(cx);
        if let Poll::Ready(result) = &poll
            && let Some(hook) = this.hook.take()
        {
            hook.finish(result);
        }
        poll
    }
}

#[async_trait]
impl Producer for InstrumentedProducer {
    fn send<'a, 'b, 'f>(&'a self, topic: &'b str, message: Message) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        match mode() {
            Mode::Off => return self.inner.send(topic, message),
            Mode::Metrics => {
                let hook = SendHook::new(self.metrics(topic), 1);
                return self.inner.send_observed(topic, message, hook);
            }
            Mode::Spans => {}
        }
        Box::pin(ObservedSend {
            producer: self,
            topic,
            count: 1,
            start: Some(move || {
                let span = self.span(topic, Some(&message), None);
                #[cfg(feature = "otel")]
                let message = {
                    let mut message = message;
                    otel::inject(&span, &mut message.headers);
                    message
                };
                let inner = self.inner.send(topic, message);
                (span, inner)
            }),
            running: None,
        })
    }

    fn send_batch<'a, 'b, 'f>(
        &'a self,
        topic: &'b str,
        messages: Vec<Message>,
    ) -> BoxFuture<'f, Result<Vec<Receipt>>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        let count = messages.len();
        match mode() {
            Mode::Off => return self.inner.send_batch(topic, messages),
            Mode::Metrics => {
                let hook = SendHook::new(self.metrics(topic), count);
                return hook.around(self.inner.send_batch(topic, messages));
            }
            Mode::Spans => {}
        }
        Box::pin(ObservedSend {
            producer: self,
            topic,
            count,
            start: Some(move || {
                let span = self.span(topic, messages.first(), Some(count));
                #[cfg(feature = "otel")]
                let messages = {
                    let mut messages = messages;
                    for m in &mut messages {
                        otel::inject(&span, &mut m.headers);
                    }
                    messages
                };
                let inner = self.inner.send_batch(topic, messages);
                (span, inner)
            }),
            running: None,
        })
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        let closed = self.inner.close().await;
        // Counts reach the recorder every second; these now.
        metric::flush();
        closed
    }
}

/// A consumer that traces each receive and hands out observed deliveries.
#[derive(Debug)]
struct InstrumentedConsumer {
    inner: Box<dyn Consumer>,
    /// What its deliveries share.
    shared: Arc<ConsumerObservation>,
    topic: Arc<str>,
    group: Arc<str>,
}

/// A receive through an instrumented consumer: the backend's future,
/// polled in the `receive` span when a subscriber wants it (the span is
/// made at the first poll, as an `async fn`'s would be, so that it is a
/// child of the span the caller polls it in), and the bookkeeping of what
/// it hands out.
struct ObservedRecv<'a> {
    inner: BoxFuture<'a, Result<Option<Delivery>>>,
    shared: &'a Arc<ConsumerObservation>,
    topic: &'a str,
    group: &'a str,
    span: Option<Span>,
}

impl Future for ObservedRecv<'_> {
    type Output = Result<Option<Delivery>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (shared, topic, group) = (this.shared, this.topic, this.group);
        let span = this
            .span
            .get_or_insert_with(|| receive_span(&shared.scope, topic, group));
        let result = if span.is_disabled() {
            std::task::ready!(this.inner.as_mut().poll(cx))
        } else {
            let _entered = span.enter();
            std::task::ready!(this.inner.as_mut().poll(cx))
        };
        Poll::Ready(received(shared, topic, span, result))
    }
}

/// The span of one receive.
fn receive_span(scope: &Scope, topic: &str, group: &str) -> Span {
    let span = tracing::debug_span!(
        target: "mq",
        "receive",
        otel.name = field::Empty,
        otel.kind = "consumer",
        otel.status_code = field::Empty,
        messaging.system = scope.system,
        messaging.operation.name = "receive",
        messaging.operation.type = "receive",
        messaging.destination.name = topic,
        messaging.consumer.group.name = group,
        messaging.message.id = field::Empty,
        messaging.batch.message_count = field::Empty,
        messaging.kafka.message.key = field::Empty,
        messaging.rabbitmq.destination.routing_key = field::Empty,
        server.address = field::Empty,
        server.port = field::Empty,
        error.type = field::Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("receive {topic}"));
        scope.record_server(&span);
    }
    span
}

/// Counts what a receive returned and attaches the observation to a
/// delivery.
fn received(
    shared: &Arc<ConsumerObservation>,
    topic: &str,
    span: &Span,
    result: Result<Option<Delivery>>,
) -> Result<Option<Delivery>> {
    match result {
        Ok(Some(delivery)) => {
            let message = delivery.message();
            if !span.is_disabled() {
                span.record("messaging.message.id", message.id.as_str());
                record_key(span, shared.scope.system, topic, message);
            }
            let mut delivery = delivery;
            observe_delivery(shared, Some(span), &mut delivery);
            Ok(Some(delivery))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            receive_failed(shared, span, &e);
            Err(e)
        }
    }
}

/// Counts a delivery (and its age, when the sampler picks it) and
/// attaches its observation; `span` is the receive's, linked to the
/// producer's context (`None` in [`Mode::Metrics`]: no span, no context).
fn observe_delivery(shared: &Arc<ConsumerObservation>, span: Option<&Span>, delivery: &mut Delivery) {
    let message = delivery.message();
    let deliveries = shared.deliveries();
    if let Some(deliveries) = deliveries
        && deliveries.one()
    {
        deliveries.of.age(
            SystemTime::now()
                .duration_since(message.timestamp)
                .unwrap_or_default(),
        );
    }
    let metrics = deliveries.map(|d| d.of);
    let observed = Observed::new(shared, metrics, span, message);
    delivery.set_observed(observed);
}

/// What mq's instrumentation does with a receive's result while metrics
/// are on and no subscriber wants mq's spans: counts the delivery and
/// attaches what its settle is counted with. Handed to
/// [`Consumer::recv_observed`], which calls [`finish`](RecvHook::finish)
/// on the result before handing it out.
#[derive(Debug)]
pub struct RecvHook<'a> {
    shared: &'a Arc<ConsumerObservation>,
}

impl<'a> RecvHook<'a> {
    /// Counts and observes what a receive returned (a failure, or a
    /// delivery, which it changes only by attaching the observation): call
    /// it once, on the result about to be handed out, with nothing awaited
    /// between (so that a dropped receive future loses nothing).
    pub fn finish(self, result: &mut Result<Option<Delivery>>) {
        match result {
            Ok(Some(delivery)) => observe_delivery(self.shared, None, delivery),
            Err(e) => receive_failed(self.shared, &Span::none(), e),
            Ok(None) => {}
        }
    }

    /// `recv`, then this hook: the default of [`Consumer::recv_observed`].
    pub(crate) fn around(
        self,
        inner: BoxFuture<'a, Result<Option<Delivery>>>,
    ) -> BoxFuture<'a, Result<Option<Delivery>>> {
        Box::pin(MeteredRecv { inner, hook: self })
    }
}

/// A receive through an instrumented consumer in [`Mode::Metrics`], for a
/// backend that does not end its own future with the hook: the backend's
/// future, then the count. Cancel-safe as the backend's is.
struct MeteredRecv<'a> {
    inner: BoxFuture<'a, Result<Option<Delivery>>>,
    hook: RecvHook<'a>,
}

impl Future for MeteredRecv<'_> {
    type Output = Result<Option<Delivery>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // In place, in the backend's own `Poll`: a delivery is large, and
        // this runs per message.
        let mut poll = this.inner.as_mut().poll(cx);
        if let Poll::Ready(result) = &mut poll {
            RecvHook {
                shared: this.hook.shared,
            }
            .finish(result);
        }
        poll
    }
}

/// Marks the span of a failed receive and counts the failure.
fn receive_failed(shared: &ConsumerObservation, span: &Span, e: &Error) {
    record_error(span, e);
    if let Some(metrics) = shared.metrics() {
        metrics.receive_failed(e);
    }
}

#[async_trait]
impl Consumer for InstrumentedConsumer {
    fn recv<'a, 'f>(&'a mut self) -> BoxFuture<'f, Result<Option<Delivery>>>
    where
        'a: 'f,
        Self: 'f,
    {
        match mode() {
            Mode::Off => return self.inner.recv(),
            Mode::Metrics => {
                return self.inner.recv_observed(RecvHook { shared: &self.shared });
            }
            Mode::Spans => {}
        }
        // Cancel-safe as the wrapped consumer is: nothing happens after
        // the inner `recv` completes but bookkeeping.
        Box::pin(ObservedRecv {
            inner: self.inner.recv(),
            shared: &self.shared,
            topic: &self.topic,
            group: &self.group,
            span: None,
        })
    }

    /// The backend's own `recv_many` (one fetch serves the batch), under
    /// one `receive` span with `messaging.batch.message_count`; each
    /// delivery is counted and observed as one from `recv` is.
    async fn recv_many(&mut self, max: usize, wait: std::time::Duration) -> Result<Option<Vec<Delivery>>> {
        let mode = mode();
        if mode == Mode::Off {
            return self.inner.recv_many(max, wait).await;
        }
        // With metrics only, no span: the deliveries keep no context.
        let span = if mode == Mode::Spans {
            receive_span(&self.shared.scope, &self.topic, &self.group)
        } else {
            Span::none()
        };
        let traced = (mode == Mode::Spans).then_some(&span);
        let result = in_span(self.inner.recv_many(max, wait), &span).await;
        match result {
            Ok(Some(mut batch)) => {
                if !span.is_disabled() {
                    span.record("messaging.batch.message_count", batch.len());
                }
                // Per message: the count, the age and the producer's
                // context, linked to the batch's span (which takes no id).
                for delivery in &mut batch {
                    observe_delivery(&self.shared, traced, delivery);
                }
                Ok(Some(batch))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                receive_failed(&self.shared, &span, &e);
                Err(e)
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        let closed = self.inner.close().await;
        // Counts reach the recorder every second; these now.
        metric::flush();
        closed
    }
}
