//! W3C trace context in message headers (feature `otel`).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Headers;

/// The header of the W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";

struct Inject<'a>(&'a mut Headers);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct Extract<'a>(&'a Headers);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) into
/// `headers`, unless they already hold a `traceparent` of the
/// application's own or the span has no OpenTelemetry context.
pub(crate) fn inject(span: &Span, headers: &mut Headers) {
    if span.is_disabled() || headers.contains_key(TRACEPARENT) {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut Inject(headers));
}

/// The producer's context carried by `headers`, if any; the `receive`
/// span gets a link to it.
pub(crate) fn extract(receive: &Span, headers: &Headers) -> Option<opentelemetry::Context> {
    if !headers.contains_key(TRACEPARENT) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Extract(headers));
    let remote = cx.span().span_context().clone();
    if !remote.is_valid() {
        return None;
    }
    if !receive.is_disabled() {
        receive.add_link(remote);
    }
    Some(cx)
}

/// Makes `parent` the parent of `span` (a fresh span, not entered yet).
pub(crate) fn set_parent(span: &Span, parent: opentelemetry::Context) {
    // Fails only without an OpenTelemetry layer, where there is nothing to
    // parent.
    let _ = span.set_parent(parent);
}
