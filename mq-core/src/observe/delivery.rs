//! What an instrumented consumer attaches to each delivery: the settle
//! spans and metrics, the in-flight gauge, and the producer's context for
//! the `process` span.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::{Span, field};

use super::Scope;
use super::metric::{ConsumerMetrics, Deliveries, Settle};
use crate::{Delivery, Message};

/// What the deliveries of one instrumented consumer share.
#[derive(Debug)]
pub(crate) struct ConsumerObservation {
    pub(crate) scope: Arc<Scope>,
    pub(crate) topic: String,
    pub(crate) group: String,
    /// This consumer's count of deliveries and its topic and group's
    /// handles, made on first use while metrics are on.
    pub(crate) metrics: OnceLock<Arc<Deliveries>>,
}

impl ConsumerObservation {
    /// This consumer's count, while metrics are on.
    pub(crate) fn deliveries(&self) -> Option<&Deliveries> {
        super::metrics_enabled().then(|| {
            &**self.metrics.get_or_init(|| {
                Deliveries::new(ConsumerMetrics::of(self.scope.system, &self.topic, &self.group))
            })
        })
    }

    /// The handles of its topic and group, while metrics are on.
    pub(crate) fn metrics(&self) -> Option<&'static ConsumerMetrics> {
        self.deliveries().map(|d| d.of)
    }
}

/// The observation of one delivery, kept in the delivery itself. While
/// only metrics are on it holds no reference count: the counts of a
/// topic and group live as long as the process, as the recorder's do.
#[derive(Debug)]
pub(crate) struct Observed {
    /// The consumer's, when a subscriber wanted mq's spans at the receive
    /// (for `server.address` and `server.port`).
    shared: Option<Arc<ConsumerObservation>>,
    /// The counts of its topic and group, when metrics were on.
    metrics: Option<&'static ConsumerMetrics>,
    /// Whether it is in flight in those counts: counted as delivered, not
    /// yet as settled or released.
    counted: AtomicBool,
    /// The producer's context, extracted from the headers.
    #[cfg(feature = "otel")]
    pub(crate) parent: Option<Box<opentelemetry::Context>>,
}

impl Observed {
    /// `metrics`: the counts that counted this delivery; `receive`: the
    /// receive's span, whose producer context is kept for the `process`
    /// span (none when no subscriber wants mq's spans, and then no
    /// reference to the consumer is kept either).
    pub(crate) fn new(
        shared: &Arc<ConsumerObservation>,
        metrics: Option<&'static ConsumerMetrics>,
        receive: Option<&Span>,
        message: &Message,
    ) -> Self {
        #[cfg(not(feature = "otel"))]
        let _ = message;
        Observed {
            #[cfg(feature = "otel")]
            parent: receive
                .and_then(|receive| super::otel::extract(receive, &message.headers))
                .map(Box::new),
            shared: receive.map(|_| shared.clone()),
            counted: AtomicBool::new(metrics.is_some()),
            metrics,
        }
    }

    pub(crate) fn system(&self) -> &'static str {
        match (&self.shared, self.metrics) {
            (Some(shared), _) => shared.scope.system,
            (None, Some(metrics)) => metrics.system(),
            (None, None) => "",
        }
    }

    /// Where the broker is, when known.
    fn record_server(&self, span: &Span) {
        if let Some(shared) = &self.shared {
            shared.scope.record_server(span);
        }
    }

    /// The counts, while metrics are on, or when this delivery was counted
    /// (so that its settle balances its count whatever the switch says now).
    fn metrics(&self) -> Option<&'static ConsumerMetrics> {
        if self.counted.load(Ordering::Relaxed) {
            return self.metrics;
        }
        if !super::metrics_enabled() {
            return None;
        }
        // Received while metrics were off (and spans on): found now.
        self.metrics
            .or_else(|| self.shared.as_ref().and_then(|shared| shared.metrics()))
    }

    /// The span of a settle.
    pub(crate) fn settle_span(&self, delivery: &Delivery, how: Settle) -> Span {
        let span = tracing::debug_span!(
            target: "mq",
            "settle",
            otel.name = field::Empty,
            otel.kind = "client",
            otel.status_code = field::Empty,
            messaging.system = self.system(),
            messaging.operation.name = how.operation(),
            messaging.operation.type = "settle",
            messaging.destination.name = delivery.topic(),
            messaging.consumer.group.name = delivery.group(),
            messaging.message.id = delivery.message().id.as_str(),
            server.address = field::Empty,
            server.port = field::Empty,
            error.type = field::Empty,
        );
        if !span.is_disabled() {
            span.record("otel.name", format!("{} {}", how.operation(), delivery.topic()));
            self.record_server(&span);
        }
        span
    }

    /// Records a settle's outcome.
    pub(crate) fn settled(
        &self,
        span: &Span,
        how: Settle,
        took: Option<Duration>,
        result: &crate::Result<()>,
    ) {
        let metrics = self.metrics();
        match result {
            Ok(()) => {
                // Settled once at most (the delivery's state says so): no
                // longer in flight, and not released on drop.
                self.counted.store(false, Ordering::Relaxed);
                if let Some(metrics) = metrics {
                    metrics.settled(how, took, None);
                }
            }
            Err(e) => {
                super::record_error(span, e);
                if let Some(metrics) = metrics {
                    metrics.settled(how, took, Some(e));
                }
            }
        }
    }

    /// Records a handler's run.
    pub(crate) fn processed(&self, outcome: &'static str, took: Duration) {
        if let Some(metrics) = self.metrics() {
            metrics.processed(outcome, took);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // A delivery dropped unsettled is no longer in this consumer's hands.
        if self.counted.load(Ordering::Relaxed)
            && let Some(metrics) = self.metrics
        {
            metrics.released();
        }
    }
}

/// The span of the worker's handler call for `delivery`: a child of the
/// producer's context when the headers carried one (feature `otel`).
pub(crate) fn process_span(delivery: &Delivery) -> Span {
    let observed = delivery.observation();
    let span = tracing::debug_span!(
        target: "mq",
        "process",
        otel.name = field::Empty,
        otel.kind = "consumer",
        otel.status_code = field::Empty,
        messaging.system = observed.map_or("", Observed::system),
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = delivery.topic(),
        messaging.consumer.group.name = delivery.group(),
        messaging.message.id = delivery.message().id.as_str(),
        server.address = field::Empty,
        server.port = field::Empty,
        error.type = field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record("otel.name", format!("process {}", delivery.topic()));
    if let Some(observed) = observed {
        observed.record_server(&span);
        #[cfg(feature = "otel")]
        if let Some(parent) = &observed.parent {
            super::otel::set_parent(&span, (**parent).clone());
        }
    }
    span
}

/// Marks a `process` span failed.
pub(crate) fn process_failed(span: &Span, error_type: &'static str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}
