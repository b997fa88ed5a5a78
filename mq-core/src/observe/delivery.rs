//! What an instrumented consumer attaches to each delivery: the settle
//! spans and metrics, the in-flight gauge, and the producer's context for
//! the `process` span.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::{Span, field};

use super::Scope;
use super::metric::{ConsumerMetrics, Settle};
use crate::{Delivery, Message};

/// What the deliveries of one instrumented consumer share.
#[derive(Debug)]
pub(crate) struct ConsumerObservation {
    pub(crate) scope: Arc<Scope>,
    pub(crate) topic: String,
    pub(crate) group: String,
    /// Registered on first use while metrics are on.
    pub(crate) metrics: OnceLock<ConsumerMetrics>,
}

impl ConsumerObservation {
    /// The handles, while metrics are on.
    pub(crate) fn metrics(&self) -> Option<&ConsumerMetrics> {
        super::metrics_enabled().then(|| {
            self.metrics
                .get_or_init(|| ConsumerMetrics::new(self.scope.system, &self.topic, &self.group))
        })
    }
}

/// The observation of one delivery (kept in the delivery itself: one
/// reference count and a flag, no allocation of its own).
#[derive(Debug)]
pub(crate) struct Observed {
    shared: Arc<ConsumerObservation>,
    /// Whether the in-flight gauge was counted down already.
    counted_down: AtomicBool,
    /// The producer's context, extracted from the headers.
    #[cfg(feature = "otel")]
    pub(crate) parent: Option<opentelemetry::Context>,
}

impl Observed {
    /// `counted`: the in-flight gauge counted this delivery up.
    pub(crate) fn new(
        shared: Arc<ConsumerObservation>,
        counted: bool,
        receive: &Span,
        message: &Message,
    ) -> Self {
        #[cfg(not(feature = "otel"))]
        let _ = (receive, message);
        Observed {
            #[cfg(feature = "otel")]
            parent: super::otel::extract(receive, &message.headers),
            shared,
            counted_down: AtomicBool::new(!counted),
        }
    }

    pub(crate) fn system(&self) -> &'static str {
        self.shared.scope.system
    }

    fn count_down(&self) {
        if !self.counted_down.swap(true, Ordering::AcqRel) {
            // Counted up, so registered.
            if let Some(metrics) = self.shared.metrics.get() {
                metrics.in_flight.decrement(1.0);
            }
        }
    }

    /// The span of a settle.
    pub(crate) fn settle_span(&self, delivery: &Delivery, how: Settle) -> Span {
        let span = tracing::debug_span!(
            target: "mq",
            "settle",
            otel.name = field::Empty,
            otel.kind = "client",
            otel.status_code = field::Empty,
            messaging.system = self.shared.scope.system,
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
            self.shared.scope.record_server(&span);
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
        match result {
            Ok(()) => {
                self.count_down();
                if let Some(metrics) = self.shared.metrics() {
                    metrics.settled(how, took, None);
                }
            }
            Err(e) => {
                super::record_error(span, e);
                if let Some(metrics) = self.shared.metrics() {
                    metrics.settled(how, took, Some(e));
                }
            }
        }
    }

    /// Records a handler's run.
    pub(crate) fn processed(&self, outcome: &'static str, took: Duration) {
        if let Some(metrics) = self.shared.metrics() {
            metrics.processed(outcome, took);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // A delivery dropped unsettled is no longer in this consumer's hands.
        self.count_down();
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
        observed.shared.scope.record_server(&span);
        #[cfg(feature = "otel")]
        if let Some(parent) = &observed.parent {
            super::otel::set_parent(&span, parent.clone());
        }
    }
    span
}

/// Marks a `process` span failed.
pub(crate) fn process_failed(span: &Span, error_type: &'static str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}
