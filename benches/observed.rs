//! Shared by the throughput harnesses of mq-memory and mq-redis (included
//! with `#[path]`): what an "instrumented" contender installs in its own
//! process before it runs.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Takes every span and keeps none (the cost of export is the
/// exporter's, not mq's).
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// Installs, process-wide, the Prometheus recorder of
/// `metrics-exporter-prometheus` (upkept every 5 s, as its HTTP listener
/// would; plain atomics instead with `MQ_BENCH_RECORDER=atomics`) and a `tracing` subscriber: a `fmt` layer at INFO writing to a
/// sink, and with `traces` also an OpenTelemetry layer whose batch
/// processor hands every span to an exporter that discards it.
pub(crate) fn install(traces: bool) {
    if std::env::var("MQ_BENCH_RECORDER").as_deref() == Ok("atomics") {
        install_atomics();
    } else {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                handle.run_upkeep();
            }
        });
    }
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(logs);
    if traces {
        let provider = SdkTracerProvider::builder().with_batch_exporter(Discard).build();
        let tracer = provider.tracer("mq-bench");
        // Kept for the life of the process.
        std::mem::forget(provider);
        tracing::subscriber::set_global_default(
            registry.with(tracing_opentelemetry::layer().with_tracer(tracer)),
        )
        .expect("install the subscriber");
    } else {
        tracing::subscriber::set_global_default(registry).expect("install the subscriber");
    }
}

/// The cheapest recorder there can be: every handle a plain atomic, no
/// registry upkeep (`MQ_BENCH_RECORDER=atomics`, to tell mq's share of the
/// cost from the recorder's).
fn install_atomics() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    #[derive(Debug, Default)]
    struct H(AtomicU64);
    impl metrics::HistogramFn for H {
        fn record(&self, v: f64) {
            self.0.fetch_add(v.to_bits() & 1, Ordering::Relaxed);
        }
    }
    #[derive(Debug)]
    struct R;
    impl metrics::Recorder for R {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            metrics::Counter::from_arc(Arc::new(AtomicU64::new(0)))
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::from_arc(Arc::new(AtomicU64::new(0)))
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::from_arc(Arc::new(H::default()))
        }
    }
    metrics::set_global_recorder(R).expect("recorder");
}

/// Runs this bench again as a child process with `MQ_BENCH_CHILD=spec`
/// and returns the rate it printed (a line `rate N`).
pub(crate) fn in_child(spec: &str) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().expect("this bench's path"))
        .env("MQ_BENCH_CHILD", spec)
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("rate "))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the child `{spec}` printed no rate: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
