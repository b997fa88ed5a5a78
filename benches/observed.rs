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
/// would) and a `tracing` subscriber: a `fmt` layer at INFO writing to a
/// sink, and with `traces` also an OpenTelemetry layer whose batch
/// processor hands every span to an exporter that discards it.
///
/// To tell the two apart: `MQ_BENCH_RECORDER=atomics` installs plain
/// atomics instead of the Prometheus recorder, `MQ_BENCH_RECORDER=none`
/// no recorder, and `MQ_BENCH_SUBSCRIBER=none` no subscriber.
pub(crate) fn install(traces: bool) {
    let recorder = std::env::var("MQ_BENCH_RECORDER").unwrap_or_default();
    if recorder == "atomics" {
        install_atomics();
    } else if recorder != "none" {
        let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        if std::env::var("MQ_BENCH_PROMETHEUS").as_deref() != Ok("summaries") {
            builder = builder
                .set_buckets(&mq_core::observe::metric::DURATION_BUCKETS)
                .expect("buckets");
        }
        let handle = builder
            .install_recorder()
            .expect("install the Prometheus recorder");
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                handle.run_upkeep();
            }
        });
    }
    if recorder != "none" {
        mq_core::observe::enable_metrics(true);
    }
    if std::env::var("MQ_BENCH_SUBSCRIBER").as_deref() == Ok("none") {
        return;
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

/// What a child process measured: the instrumented SDK's median rate and
/// the bare SDK's, run alternately in the same process with the same
/// subscriber and recorder installed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildRates {
    /// The instrumented SDK, msg/s.
    pub(crate) instrumented: f64,
    /// The bare SDK in the same process, msg/s.
    pub(crate) bare: f64,
}

impl ChildRates {
    /// Instrumented over bare, in the same process.
    pub(crate) fn ratio(self) -> f64 {
        self.instrumented / self.bare
    }
}

/// How many timed runs of each SDK a child makes
/// (`MQ_BENCH_CHILD_RUNS`, default 5).
fn child_runs() -> usize {
    std::env::var("MQ_BENCH_CHILD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// The body of a child: installs per `spec` (`none...` installs nothing,
/// `logs...` the fmt subscriber and the recorder, `traces...` also the
/// OpenTelemetry layer), warms both SDKs up on a tenth of `messages`,
/// then times [`child_runs`] runs of each, alternating which goes first,
/// and prints both medians. `run(instrumented, messages)` returns msg/s.
///
/// A child is compared with the bare SDK of the same process, not with
/// the parent's: a fresh process (cold allocator, fewer warm-up runs) is
/// itself up to a third slower on the in-memory broker.
pub(crate) fn child_main(spec: &str, messages: usize, mut run: impl FnMut(bool, usize) -> f64) {
    if !spec.starts_with("none") {
        install(spec.starts_with("traces"));
    }
    // `MQ_BENCH_CHILD_ONLY=bare|instrumented` runs one of the two (to
    // count one's instructions under callgrind).
    let only = std::env::var("MQ_BENCH_CHILD_ONLY").unwrap_or_default();
    let wanted = |instrumented: bool| match only.as_str() {
        "bare" => !instrumented,
        "instrumented" => instrumented,
        _ => true,
    };
    let (mut bare, mut instrumented) = (Vec::new(), Vec::new());
    for sdk in [false, true] {
        if wanted(sdk) {
            run(sdk, messages / 10);
        }
    }
    for k in 0..child_runs() {
        for instrumented_turn in [k % 2 == 0, k % 2 != 0] {
            if !wanted(instrumented_turn) {
                continue;
            }
            let r = run(instrumented_turn, messages);
            if std::env::var_os("MQ_BENCH_VERBOSE").is_some() {
                eprintln!(
                    "{} {r:.0}",
                    if instrumented_turn { "instrumented" } else { "bare" }
                );
            }
            if instrumented_turn {
                instrumented.push(r);
            } else {
                bare.push(r);
            }
        }
    }
    println!("rate {}", median_of(instrumented));
    println!("bare {}", median_of(bare));
}

/// The median; NaN for none.
fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs this bench again as a child process with `MQ_BENCH_CHILD=spec`
/// and returns the rates it printed ([`child_main`]).
pub(crate) fn in_child(spec: &str) -> ChildRates {
    let out = std::process::Command::new(std::env::current_exe().expect("this bench's path"))
        .env("MQ_BENCH_CHILD", spec)
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the child `{spec}` printed no `{prefix}` line: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    ChildRates {
        instrumented: find("rate "),
        bare: find("bare "),
    }
}

/// Prints the children's figures: the medians of both rates and the
/// median of the per-child ratios (instrumented / bare, each child's pair
/// measured in one process).
pub(crate) fn report_child(indent: &str, name: &str, children: &[ChildRates], target: &str) {
    let inst = median_of(children.iter().map(|c| c.instrumented).collect());
    let bare = median_of(children.iter().map(|c| c.bare).collect());
    let ratio = median_of(children.iter().map(|c| c.ratio()).collect());
    println!(
        "{indent}{name}: {inst:>9.0} msg/s   bare in the same process {bare:>9.0} msg/s   ratio {ratio:.3} (median of the rounds' ratios; target {target})"
    );
    let rounds: Vec<String> = children.iter().map(|c| format!("{:.3}", c.ratio())).collect();
    println!("{indent}    rounds' ratios: {}", rounds.join(" "));
}
