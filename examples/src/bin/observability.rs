//! Traces and metrics of a producer and a worker, on any broker.
//!
//! Sends five orders inside one `checkout` span, handles them with a
//! worker (one fails once and is retried), prints every span as it ends
//! (the `process` spans belong to the `checkout` trace: the trace crosses
//! the broker in the messages' `traceparent` header), then serves the
//! metrics for Prometheus until Ctrl-C.
//!
//! ```text
//! cargo run -p mq-examples --bin observability
//! MQ_URL=redis://127.0.0.1:6379 cargo run -p mq-examples --bin observability
//! curl http://127.0.0.1:9464/metrics
//! ```
//!
//! `MQ_METRICS_ADDR` sets the metrics address (`127.0.0.1:9464` by
//! default); `MQ_SERVE_SECS` stops serving after that many seconds.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use mq_core::retry::ExponentialBackoff;
use mq_core::worker::{HandlerResult, Job, Worker};
use mq_core::{Error, Message, MqConfig, Subscription};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

const ORDERS: [&str; 5] = ["order-1", "order-2", "flaky", "order-3", "order-4"];

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observability example failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints each finished span on one line: its name, trace, parent and the
/// messaging attributes.
#[derive(Debug)]
struct PrintSpans;

impl SpanExporter for PrintSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for span in batch {
            let attributes: Vec<String> = span
                .attributes
                .iter()
                .filter(|kv| {
                    kv.key.as_str().starts_with("messaging.") || kv.key.as_str().starts_with("error.")
                })
                .map(show)
                .collect();
            println!(
                "span {:<28} trace={} span={} parent={} kind={:?} {}",
                span.name,
                span.span_context.trace_id(),
                span.span_context.span_id(),
                span.parent_span_id,
                span.span_kind,
                attributes.join(" ")
            );
        }
        Ok(())
    }
}

fn show(kv: &KeyValue) -> String {
    match &kv.value {
        Value::String(s) => format!("{}={}", kv.key, s.as_str()),
        other => format!("{}={other}", kv.key),
    }
}

fn setup_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend("example", what, e.to_string())
}

async fn run() -> mq_core::Result<()> {
    // Metrics first: handles are registered when producers and consumers
    // are made.
    let addr: SocketAddr = std::env::var("MQ_METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()
        .map_err(|e| setup_error("MQ_METRICS_ADDR", e))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        // Prometheus histograms with the conventions' boundaries, not
        // summaries: they aggregate across instances.
        .set_buckets(&mq_core::observe::metric::DURATION_BUCKETS)
        .map_err(|e| setup_error("set the histogram buckets", e))?
        .install()
        .map_err(|e| setup_error(&format!("serve metrics on {addr}"), e))?;
    // mq's metrics are opt-in: on, now that a recorder is there.
    mq_core::observe::enable_metrics(true);

    // Spans: tracing → tracing-opentelemetry → an OpenTelemetry provider
    // that prints them (put an OTLP exporter here in a service).
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(PrintSpans)
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("mq-example")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        );
    tracing::subscriber::set_global_default(subscriber).map_err(|e| setup_error("install tracing", e))?;

    let config = MqConfig::from_env_or("memory://");
    // The registry instruments every broker it connects.
    let broker = mq_examples::registry().connect_config(&config).await?;
    let topic = format!("orders-{}", &mq_core::new_id()[24..]);
    let consumer = broker
        .subscribe(Subscription::new(&topic, "billing").prefetch(16))
        .await?;
    let producer = broker.producer(Default::default()).await?;
    let checkout = tracing::info_span!("checkout");
    for order in ORDERS {
        tracing::Instrument::instrument(
            producer.send(&topic, Message::new(order).with_key(order)),
            checkout.clone(),
        )
        .await?;
    }
    drop(checkout);

    let stop = CancellationToken::new();
    let worker = Worker::new(consumer).concurrency(2).retry(Arc::new(
        ExponentialBackoff::new(Duration::from_millis(50)).max_attempts(3),
    ));
    let stats = worker.stats();
    let running = tokio::spawn(worker.run(
        |job: Job| async move {
            if &job.message.payload[..] == b"flaky" && job.attempt < 2 {
                return HandlerResult::Err("payment gateway timeout".into());
            }
            HandlerResult::Ok(vec![])
        },
        stop.clone(),
    ));
    // Bounded: 30 s for five messages.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.snapshot().handled < ORDERS.len() as u64 {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Timeout {
                operation: "handling the orders".into(),
                after: Duration::from_secs(30),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let done = running.await.map_err(|e| setup_error("worker task", e))??;
    // Sets the lag gauges (where the backend can tell).
    match broker.lag(&topic, "billing").await {
        Ok(lag) => println!("lag: {lag}"),
        Err(e) => println!("lag: {e}"),
    }
    match broker.health().await {
        Ok(health) => println!("health: {health}"),
        Err(e) => println!("health: {e}"),
    }
    println!(
        "handled {} orders ({} failures retried)",
        done.handled, done.failed
    );
    broker.close().await?;
    let _ = provider.force_flush();
    // mq hands its counts to the recorder every second; all of them now,
    // before the scrape.
    mq_core::observe::flush_metrics();

    let serve = std::env::var("MQ_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    println!("metrics: http://{addr}/metrics");
    match serve {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        None => {
            println!("serving until Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    let _ = provider.shutdown();
    Ok(())
}
