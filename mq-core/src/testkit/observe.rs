//! Checks of the instrumentation ([`crate::observe`]) on a backend: the
//! spans a send, a receive, a handled message and a settle make (with the
//! producer's trace crossing the broker, feature `otel`), and exact
//! metric counts for a run of sends, acks, requeues and dead letters.
//!
//! Each takes an instrumented broker (from
//! [`Registry::connect`](crate::Registry::connect) or
//! [`observe::instrument`](crate::observe::instrument)).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

use super::{group_for, recv_within, unique};
use crate::observe::metric;
use crate::{Broker, Message, Nack, ProducerOptions, Subscription};

/// The process's debugging recorder, installed as the global one on the
/// first call (before any producer or consumer of a check is made), with
/// mq's metrics turned on.
///
/// # Panics
///
/// When the process has another global recorder.
pub fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other global metrics recorder in this test binary");
        crate::observe::enable_metrics(true);
        snapshotter
    })
}

/// One metric of the last snapshot.
#[derive(Debug)]
struct Seen {
    kind: MetricKind,
    name: String,
    labels: Vec<(String, String)>,
    value: DebugValue,
}

fn snapshot() -> Vec<Seen> {
    // Counts reach the recorder every second; hand them over now.
    crate::observe::flush_metrics();
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value): (CompositeKey, _, _, DebugValue)| {
            let (kind, key) = key.into_parts();
            let (name, labels) = key.into_parts();
            Seen {
                kind,
                name: name.as_str().to_string(),
                labels: labels
                    .into_iter()
                    .map(|l| {
                        let (k, v) = l.into_parts();
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
                value,
            }
        })
        .collect()
}

/// The value of the metric `name` whose labels include every one of
/// `labels` (summed over the series that match; histograms give their
/// count of samples).
fn total(seen: &[Seen], kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> f64 {
    seen.iter()
        .filter(|s| s.kind == kind && s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| match &s.value {
            #[allow(clippy::cast_precision_loss)]
            DebugValue::Counter(n) => *n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            #[allow(clippy::cast_precision_loss)]
            DebugValue::Histogram(samples) => samples.len() as f64,
        })
        .sum()
}

/// Sends 10 messages, then acks 6, requeues 2 (and acks them when they
/// come back) and dead-letters 2: the counters say exactly that, labelled
/// with the broker's name, the topic and the group; the in-flight gauge
/// is back at 0; every send and settle has a duration; the lag gauge is
/// set by [`Broker::lag`].
pub async fn metrics_count_every_outcome(broker: Arc<dyn Broker>) {
    recorder();
    let system = broker.name();
    let topic = unique("metrics");
    let group = group_for(&topic, "g");
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, &group).max_attempts(10))
        .await
        .expect("subscribe");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    const N: usize = 10;
    let mut ids = Vec::new();
    for i in 0..N {
        let message = Message::new(format!("m{i}")).with_key("k");
        ids.push(message.id.clone());
        producer.send(&topic, message).await.expect("send");
    }
    let (mut acked, mut requeued, mut dead, mut received) = (0, 0, 0, 0);
    let mut requeued_ids = Vec::new();
    while acked + dead < N {
        let d = recv_within(consumer.as_mut(), super::wait())
            .await
            .unwrap_or_else(|| panic!("{system}: delivery {} of the run did not arrive", received + 1));
        received += 1;
        let id = d.message().id.clone();
        if requeued_ids.contains(&id) || requeued + dead >= 4 {
            d.ack().await.expect("ack");
            acked += 1;
        } else if requeued < 2 {
            d.nack(Nack::requeue()).await.expect("requeue");
            requeued += 1;
            requeued_ids.push(id);
        } else {
            d.nack(Nack::dead_letter("checked")).await.expect("dead-letter");
            dead += 1;
        }
    }
    // A duplicate of at-least-once delivery would change the counts: say so.
    assert_eq!(received, N + 2, "{system}: deliveries of the run");
    // Read until it is 0 (or the wait is over); its gauge is checked after.
    let lag = super::lag_once_settled(broker.as_ref(), &topic, &group).await;

    let seen = snapshot();
    let base = [(metric::SYSTEM, system), (metric::DESTINATION, topic.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let counter = |name, labels: &[(&str, &str)]| total(&seen, MetricKind::Counter, name, labels);
    let histogram = |name, labels: &[(&str, &str)]| total(&seen, MetricKind::Histogram, name, labels);
    let figures = format!(
        "{system}: sent {}, consumed {}, acked {}, requeued {}, dead-lettered {}, send durations {}, ack durations {}, requeue durations {}, dead-letter durations {}, end-to-end {}",
        counter(metric::SENT, &base),
        counter(metric::CONSUMED, &base),
        counter(metric::SETTLED, &with(&[(metric::OUTCOME, "acked")])),
        counter(metric::SETTLED, &with(&[(metric::OUTCOME, "requeued")])),
        counter(metric::SETTLED, &with(&[(metric::OUTCOME, "dead_lettered")])),
        histogram(metric::OPERATION_DURATION, &with(&[(metric::OPERATION, "send")])),
        histogram(metric::OPERATION_DURATION, &with(&[(metric::OPERATION, "ack")])),
        histogram(
            metric::OPERATION_DURATION,
            &with(&[(metric::OPERATION, "requeue")])
        ),
        histogram(
            metric::OPERATION_DURATION,
            &with(&[(metric::OPERATION, "dead_letter")])
        ),
        histogram(metric::END_TO_END, &base),
    );
    super::report(&format!("metrics: {figures}"));
    let n = N as f64;
    assert_eq!(counter(metric::SENT, &base), n, "{figures}");
    assert_eq!(counter(metric::CONSUMED, &base), n + 2.0, "{figures}");
    assert_eq!(
        counter(
            metric::CONSUMED,
            &[base[0], base[1], (metric::GROUP, group.as_str())]
        ),
        n + 2.0,
        "{figures}: the group label"
    );
    assert_eq!(
        counter(metric::SETTLED, &with(&[(metric::OUTCOME, "acked")])),
        n - 2.0,
        "{figures}"
    );
    assert_eq!(
        counter(metric::SETTLED, &with(&[(metric::OUTCOME, "requeued")])),
        2.0,
        "{figures}"
    );
    assert_eq!(
        counter(metric::SETTLED, &with(&[(metric::OUTCOME, "dead_lettered")])),
        2.0,
        "{figures}"
    );
    assert_eq!(
        histogram(metric::OPERATION_DURATION, &with(&[(metric::OPERATION, "send")])),
        n,
        "{figures}"
    );
    // Acks are counted, not timed; requeues and dead letters are timed.
    assert_eq!(
        histogram(metric::OPERATION_DURATION, &with(&[(metric::OPERATION, "ack")])),
        0.0,
        "{figures}"
    );
    for operation in ["requeue", "dead_letter"] {
        assert_eq!(
            histogram(
                metric::OPERATION_DURATION,
                &with(&[(metric::OPERATION, operation)])
            ),
            2.0,
            "{figures}: {operation} durations"
        );
    }
    assert_eq!(histogram(metric::END_TO_END, &base), n + 2.0, "{figures}");
    assert_eq!(
        total(&seen, MetricKind::Gauge, metric::IN_FLIGHT, &base),
        0.0,
        "{system}: deliveries in flight after all were settled"
    );
    for s in &seen {
        assert!(
            !s.labels.iter().any(|(_, v)| v == "k" || ids.contains(v)),
            "{system}: a metric label holds a key or a payload: {s:?}"
        );
    }
    if let Ok(lag) = lag {
        assert_eq!(
            total(&seen, MetricKind::Gauge, metric::LAG, &base),
            0.0,
            "{system}: the lag gauge after all were settled ({lag:?})"
        );
        assert!(
            seen.iter()
                .any(|s| s.name == metric::LAG && s.labels.iter().any(|(_, v)| v == &topic)),
            "{system}: Broker::lag set no `{}` gauge",
            metric::LAG
        );
    }
    drop(consumer);
    let _ = producer.flush().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[cfg(feature = "otel")]
pub use self::trace::trace_crosses_the_broker;

#[cfg(feature = "otel")]
mod trace {
    use std::sync::Arc;

    use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
    use opentelemetry::{Key, Value};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tokio_util::sync::CancellationToken;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::super::{group_for, recv_within, unique, wait};
    use crate::worker::{Job, Worker};
    use crate::{Broker, Message, ProducerOptions, Subscription};

    fn attr(span: &SpanData, key: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == Key::from(key.to_string()))
            .map(|kv| kv.value.clone())
    }

    fn text(span: &SpanData, key: &str) -> String {
        attr(span, key)
            .map(|v| v.as_str().into_owned())
            .unwrap_or_default()
    }

    /// Must run on a current-thread runtime (`#[tokio::test]`), since the
    /// recording subscriber is this thread's default.
    ///
    /// Sends a keyed message inside a span, then a worker handles it: the
    /// `process` span belongs to the producer's trace (a child of the
    /// `send` span), the `receive` span links to the `send` span, the ack
    /// has a `settle` span, and each carries the messaging attributes
    /// with the right values. Then: a message with a `traceparent` of the
    /// application's own arrives with it unchanged, and one sent with no
    /// OpenTelemetry layer installed arrives without one.
    pub async fn trace_crosses_the_broker(broker: Arc<dyn Broker>) {
        let system = broker.name();
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("mq-testkit")));
        let topic = unique("trace");
        let group = group_for(&topic, "g");

        let sent_id;
        let root_trace;
        let consumer;
        {
            let _default = tracing::subscriber::set_default(subscriber);
            consumer = broker
                .subscribe(Subscription::new(&topic, &group))
                .await
                .expect("subscribe");
            let producer = broker
                .producer(ProducerOptions::default())
                .await
                .expect("producer");
            let root = tracing::info_span!("request");
            root_trace = root.context().span().span_context().trace_id();
            let message = Message::new("traced").with_key("order-7");
            sent_id = message.id.clone();
            tracing::Instrument::instrument(producer.send(&topic, message), root.clone())
                .await
                .expect("send");
            drop(root);

            let stop = CancellationToken::new();
            let done = stop.clone();
            let worker = Worker::new(consumer).concurrency(1);
            let run = worker.run(
                move |_job: Job| {
                    let done = done.clone();
                    async move {
                        done.cancel();
                        Ok(Vec::new())
                    }
                },
                stop.clone(),
            );
            let stats = tokio::time::timeout(wait(), run)
                .await
                .unwrap_or_else(|_| panic!("{system}: the worker did not handle the traced message in time"))
                .expect("worker");
            assert_eq!(stats.handled, 1, "{system}: messages the worker handled");
            let _ = provider.force_flush();
        }
        let spans = exporter.get_finished_spans().expect("finished spans");
        let named = |name: String| -> SpanData {
            spans.iter().find(|s| s.name == name).cloned().unwrap_or_else(|| {
                panic!(
                    "{system}: no span `{name}` among {:?}",
                    spans
                        .iter()
                        .map(|s| (s.name.to_string(), s.attributes.clone()))
                        .collect::<Vec<_>>()
                )
            })
        };
        let send = named(format!("send {topic}"));
        let receive = spans
            .iter()
            .find(|s| s.name == format!("receive {topic}") && text(s, "messaging.message.id") == sent_id)
            .cloned()
            .unwrap_or_else(|| panic!("{system}: no `receive {topic}` span with the message's id"));
        let process = named(format!("process {topic}"));
        let ack = named(format!("ack {topic}"));
        super::super::report(&format!(
            "tracing: {system}: {} spans; send {:?}, process parent {:?} in trace {:?}",
            spans.len(),
            send.span_context.span_id(),
            process.parent_span_id,
            process.span_context.trace_id()
        ));

        // The trace crosses the broker.
        assert_eq!(
            send.span_context.trace_id(),
            root_trace,
            "{system}: send in the caller's trace"
        );
        assert_eq!(
            process.span_context.trace_id(),
            root_trace,
            "{system}: the process span is in the producer's trace"
        );
        assert_eq!(
            process.parent_span_id,
            send.span_context.span_id(),
            "{system}: the process span is a child of the send span"
        );
        assert_eq!(
            ack.parent_span_id,
            process.span_context.span_id(),
            "{system}: the worker's ack is a child of the process span"
        );
        assert!(
            receive
                .links
                .iter()
                .any(|l| l.span_context.span_id() == send.span_context.span_id()),
            "{system}: the receive span links to the send span: {:?}",
            receive.links
        );

        // Kinds and attributes.
        assert_eq!(send.span_kind, SpanKind::Producer, "{system}: send kind");
        assert_eq!(receive.span_kind, SpanKind::Consumer, "{system}: receive kind");
        assert_eq!(process.span_kind, SpanKind::Consumer, "{system}: process kind");
        for (span, op, ty) in [
            (&send, "send", "send"),
            (&receive, "receive", "receive"),
            (&process, "process", "process"),
            (&ack, "ack", "settle"),
        ] {
            let what = format!("{system}: span `{}`", span.name);
            assert_eq!(text(span, "messaging.system"), system, "{what}");
            assert_eq!(text(span, "messaging.operation.name"), op, "{what}");
            assert_eq!(text(span, "messaging.operation.type"), ty, "{what}");
            assert_eq!(text(span, "messaging.destination.name"), topic, "{what}");
            assert_eq!(text(span, "messaging.message.id"), sent_id, "{what}");
            assert!(attr(span, "error.type").is_none(), "{what}: no error");
            if system != "memory" {
                assert!(!text(span, "server.address").is_empty(), "{what}: server.address");
                assert!(attr(span, "server.port").is_some(), "{what}: server.port");
            }
        }
        for span in [&receive, &process, &ack] {
            assert_eq!(
                text(span, "messaging.consumer.group.name"),
                group,
                "{system}: span `{}`",
                span.name
            );
        }
        match system {
            "kafka" => assert_eq!(text(&send, "messaging.kafka.message.key"), "order-7"),
            "rabbitmq" => assert_eq!(
                text(&send, "messaging.rabbitmq.destination.routing_key"),
                "order-7"
            ),
            _ => {}
        }

        // The application's own traceparent stays; without an
        // OpenTelemetry layer none is added.
        let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut consumer = broker
            .subscribe(Subscription::new(&topic, format!("{group}-2")))
            .await
            .expect("subscribe");
        let producer = broker
            .producer(ProducerOptions::default())
            .await
            .expect("producer");
        {
            let exporter2 = InMemorySpanExporter::default();
            let provider2 = SdkTracerProvider::builder()
                .with_simple_exporter(exporter2)
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider2.tracer("mq-testkit")));
            let _default = tracing::subscriber::set_default(subscriber);
            let root = tracing::info_span!("request");
            let message = Message::new("own").with_header("traceparent", own);
            tracing::Instrument::instrument(producer.send(&topic, message), root)
                .await
                .expect("send with the application's traceparent");
        }
        producer
            .send(&topic, Message::new("untraced"))
            .await
            .expect("send without a subscriber");
        let mut left = 2;
        while left > 0 {
            let d = recv_within(consumer.as_mut(), wait())
                .await
                .unwrap_or_else(|| panic!("{system}: a message of the header check did not arrive"));
            let header = d.message().headers.get("traceparent").cloned();
            match &d.message().payload[..] {
                b"own" => assert_eq!(
                    header.as_deref(),
                    Some(own),
                    "{system}: the application's own traceparent was replaced"
                ),
                b"untraced" => assert_eq!(
                    header, None,
                    "{system}: a traceparent with no OpenTelemetry layer"
                ),
                _ => {
                    d.ack().await.expect("ack");
                    continue;
                }
            }
            d.ack().await.expect("ack");
            left -= 1;
        }
        let _ = consumer.close().await;
        let _ = provider.shutdown();
    }
}
