//! `mq bench`: producers and consumers on one topic; throughput, confirm
//! latency and end-to-end latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt as _};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mq_core::{Broker, Message, ProducerOptions, StartPosition, Subscription};
use tokio::sync::Mutex;

use crate::{Context, Failure, close, seconds, usage};

pub(crate) const EXAMPLES: &str = "\
Consumers (one group) subscribe first, then producers send --messages in
all, each with up to --inflight sends unconfirmed. A payload carries its
send time and sequence number, so the consumers measure end-to-end latency
and count every message once (messages of another run on the same topic
are counted apart, as foreign). A progress bar is drawn on a terminal.
The topic is new each run (`mq-bench-...`) unless --topic names one; it
is left on the broker.

Examples:
  mq bench memory://
  mq bench redis://127.0.0.1:6379 --messages 100000 --size 1024 --producers 4 --consumers 2
  mq bench amqp://guest:guest@127.0.0.1:5672/%2f --rate 5000 --json";

/// `mq bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The broker URL (or from --config or MQ_URL)
    #[arg(value_name = "URL", num_args = 0..=1)]
    args: Vec<String>,
    /// Messages in all.
    #[arg(long, short = 'n', default_value_t = 10_000, value_name = "N")]
    messages: u64,
    /// Payload bytes (at least 24).
    #[arg(long, short, default_value_t = 100, value_name = "BYTES")]
    size: usize,
    /// Producer tasks, each with a producer of its own.
    #[arg(long, short, default_value_t = 1, value_name = "P")]
    producers: u32,
    /// Consumers in the group.
    #[arg(long, short, default_value_t = 1, value_name = "C")]
    consumers: u32,
    /// Sends per producer waiting for their confirm at once.
    #[arg(long, default_value_t = 64, value_name = "K")]
    inflight: usize,
    /// Messages per second in all (0: as fast as they go).
    #[arg(long, short, default_value_t = 0.0, value_name = "R")]
    rate: f64,
    /// The topic (default: a new `mq-bench-...`).
    #[arg(long)]
    topic: Option<String>,
    /// Gives up after this many seconds without a message received.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    timeout: f64,
    /// Prints the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The bytes at the start of a payload: send time, sequence number, run id.
const HEADER: usize = 24;

/// Latencies are recorded in microseconds, up to an hour.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram accepts
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What the consumers saw.
struct Seen {
    /// One bit per sequence number.
    bits: Vec<AtomicU64>,
    unique: AtomicU64,
    duplicates: AtomicU64,
    foreign: AtomicU64,
    /// When the latest new one arrived: nanoseconds since the epoch.
    latest: AtomicU64,
}

impl Seen {
    fn new(n: u64) -> Self {
        let words = usize::try_from(n.div_ceil(64)).unwrap_or(0);
        Seen {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            latest: AtomicU64::new(0),
        }
    }

    /// Marks `seq`; whether it was new.
    fn mark(&self, seq: u64) -> bool {
        let Some(word) = usize::try_from(seq / 64).ok().and_then(|w| self.bits.get(w)) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let bit = 1u64 << (seq % 64);
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.unique.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Percentiles of `h` in milliseconds.
fn percentiles(h: &Histogram<u64>) -> Vec<(&'static str, f64)> {
    let ms = |v: u64| v as f64 / 1000.0;
    if h.is_empty() {
        return Vec::new();
    }
    vec![
        ("p50", ms(h.value_at_quantile(0.50))),
        ("p90", ms(h.value_at_quantile(0.90))),
        ("p99", ms(h.value_at_quantile(0.99))),
        ("p99.9", ms(h.value_at_quantile(0.999))),
        ("max", ms(h.max())),
    ]
}

fn text_percentiles(h: &Histogram<u64>) -> String {
    let p = percentiles(h);
    if p.is_empty() {
        return "no samples".into();
    }
    p.iter()
        .map(|(name, v)| format!("{name} {v:.3} ms"))
        .collect::<Vec<_>>()
        .join("  ")
}

fn json_percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::Value::Object(
        percentiles(h)
            .into_iter()
            .map(|(name, v)| (name.to_owned(), v.into()))
            .collect(),
    )
}

pub(crate) async fn run(context: &Context, args: BenchArgs) -> Result<(), Failure> {
    let target = context.target(args.args.clone(), &[], 0)?;
    if args.size < HEADER {
        return Err(usage(format!(
            "--size must be at least {HEADER} (a payload holds its send time, sequence number and run id)"
        )));
    }
    if args.messages == 0 || args.producers == 0 || args.consumers == 0 || args.inflight == 0 {
        return Err(usage(
            "--messages, --producers, --consumers and --inflight must be at least 1",
        ));
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        return Err(usage("--rate must be a number >= 0"));
    }
    let stall = seconds(args.timeout, "--timeout")?;
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("mq-bench-{}", &mq_core::new_id()[24..]));
    let broker = context.connect(&target.config, true).await?;
    let outcome = tokio::select! {
        outcome = bench(broker.clone(), &args, &topic, stall) => outcome,
        () = crate::interrupted() => Err(Failure::Failed("interrupted".into())),
    };
    close(broker.as_ref()).await;
    let result = outcome?;
    result.print(&args, broker.name(), &topic);
    if result.missing > 0 {
        return Err(Failure::Failed(format!(
            "{} of {} messages did not arrive within {:?} of the last one",
            result.missing, args.messages, stall
        )));
    }
    Ok(())
}

struct Outcome {
    sent: u64,
    send_errors: u64,
    received: u64,
    duplicates: u64,
    foreign: u64,
    missing: u64,
    send_time: Duration,
    recv_time: Duration,
    confirm: Histogram<u64>,
    end_to_end: Histogram<u64>,
}

impl Outcome {
    fn print(&self, args: &BenchArgs, backend: &str, topic: &str) {
        let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        if args.json {
            let value = serde_json::json!({
                "backend": backend,
                "topic": topic,
                "messages": args.messages,
                "size": args.size,
                "producers": args.producers,
                "consumers": args.consumers,
                "inflight": args.inflight,
                "rate_limit": args.rate,
                "sent": self.sent,
                "send_errors": self.send_errors,
                "received": self.received,
                "duplicates": self.duplicates,
                "missing": self.missing,
                "foreign": self.foreign,
                "send_seconds": self.send_time.as_secs_f64(),
                "receive_seconds": self.recv_time.as_secs_f64(),
                "send_rate": rate(self.sent, self.send_time),
                "receive_rate": rate(self.received, self.recv_time),
                "confirm_ms": json_percentiles(&self.confirm),
                "end_to_end_ms": json_percentiles(&self.end_to_end),
            });
            println!("{value}");
            return;
        }
        println!(
            "mq bench: {backend}, topic {topic}, {} messages of {} B, {} producer(s) x {} in flight, {} consumer(s){}",
            args.messages,
            args.size,
            args.producers,
            args.inflight,
            args.consumers,
            if args.rate > 0.0 {
                format!(", at most {} msg/s", args.rate)
            } else {
                String::new()
            }
        );
        println!(
            "sent       {:>9} in {:>7.3} s  {:>10.0} msg/s  ({} send errors)",
            self.sent,
            self.send_time.as_secs_f64(),
            rate(self.sent, self.send_time),
            self.send_errors
        );
        println!(
            "received   {:>9} in {:>7.3} s  {:>10.0} msg/s  ({} duplicates, {} missing{})",
            self.received,
            self.recv_time.as_secs_f64(),
            rate(self.received, self.recv_time),
            self.duplicates,
            self.missing,
            if self.foreign > 0 {
                format!(", {} of other runs", self.foreign)
            } else {
                String::new()
            }
        );
        println!("confirm    {}", text_percentiles(&self.confirm));
        println!("end-to-end {}", text_percentiles(&self.end_to_end));
    }
}

async fn bench(
    broker: Arc<dyn Broker>,
    args: &BenchArgs,
    topic: &str,
    stall: Duration,
) -> Result<Outcome, Failure> {
    let n = args.messages;
    let seen = Arc::new(Seen::new(n));
    let stop = Arc::new(AtomicBool::new(false));
    let end_to_end = Arc::new(Mutex::new(histogram()));
    let epoch = Instant::now();
    // Tells this run's messages from an earlier run's on the same topic.
    let run_id: [u8; 8] = mq_core::new_id()
        .as_bytes()
        .get(28..36)
        .and_then(|b| b.try_into().ok())
        .unwrap_or_default();

    // Consumers first: what is sent from now on reaches the group.
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let subscription = Subscription::new(topic, "mq-bench")
            .start(StartPosition::Earliest)
            .prefetch(1000);
        let mut consumer = broker.subscribe(subscription).await?;
        let (seen, stop, e2e) = (seen.clone(), stop.clone(), end_to_end.clone());
        consumers.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut failure = None;
            while !stop.load(Ordering::Relaxed) {
                let batch = match consumer.recv_many(256, Duration::from_millis(20)).await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                for d in &batch {
                    let p = &d.message().payload;
                    let (Some(sent), Some(seq)) = (p.get(0..8), p.get(8..16)) else {
                        seen.foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if p.get(16..24) != Some(&run_id[..]) {
                        seen.foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let sent = u64::from_le_bytes(sent.try_into().unwrap_or_default());
                    let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
                    if seen.mark(seq) {
                        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        seen.latest.fetch_max(now, Ordering::Relaxed);
                        local.saturating_record(micros(Duration::from_nanos(now.saturating_sub(sent))));
                    }
                }
                if let Err(e) = mq_core::ack_all(&batch).await {
                    failure = Some(e);
                    break;
                }
            }
            let _ = consumer.close().await;
            let _ = e2e.lock().await.add(&local);
            failure
        }));
    }

    // Producers.
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let confirm = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let mut producers = Vec::new();
    let p = u64::from(args.producers);
    for i in 0..p {
        let producer = broker.producer(ProducerOptions::default()).await?;
        let (from, to) = (n * i / p, n * (i + 1) / p);
        let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(p as f64 / args.rate));
        let (sent, errors, confirm, topic) =
            (sent.clone(), errors.clone(), confirm.clone(), topic.to_owned());
        let (size, inflight) = (args.size, args.inflight);
        producers.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut first_error = None;
            {
                let mut settle = |(r, took): (mq_core::Result<mq_core::Receipt>, Duration)| match r {
                    Ok(_) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        local.saturating_record(micros(took));
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    }
                };
                let mut pending = FuturesUnordered::new();
                for seq in from..to {
                    if let Some(interval) = interval {
                        let step = u32::try_from(seq - from).unwrap_or(u32::MAX);
                        tokio::time::sleep_until((started + interval.saturating_mul(step)).into()).await;
                    }
                    while pending.len() >= inflight {
                        if let Some(done) = pending.next().await {
                            settle(done);
                        }
                    }
                    let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let mut payload = vec![0u8; size];
                    payload[0..8].copy_from_slice(&now.to_le_bytes());
                    payload[8..16].copy_from_slice(&seq.to_le_bytes());
                    payload[16..24].copy_from_slice(&run_id);
                    let (producer, topic) = (&producer, &topic);
                    pending.push(async move {
                        let t = Instant::now();
                        let r = producer.send(topic, Message::new(payload)).await;
                        (r, t.elapsed())
                    });
                }
                while let Some(done) = pending.next().await {
                    settle(done);
                }
            }
            let finished = started.elapsed();
            let _ = producer.close().await;
            let _ = confirm.lock().await.add(&local);
            (first_error, finished)
        }));
    }

    // Progress, until every message arrived or none did for `stall`.
    let bar = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} received  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last = (0u64, Instant::now());
    loop {
        let received = seen.unique.load(Ordering::Relaxed);
        bar.set_position(received);
        if received >= n || consumers.iter().all(|c| c.is_finished()) {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() > stall {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bar.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    let mut first_error: Option<mq_core::Error> = None;
    let mut send_time = Duration::ZERO;
    for producer in producers {
        match tokio::time::timeout(Duration::from_secs(10), producer).await {
            Ok(Ok((error, finished))) => {
                send_time = send_time.max(finished);
                if let Some(e) = error {
                    first_error.get_or_insert(e);
                }
            }
            Ok(Err(e)) => return Err(Failure::Failed(format!("a producer task failed: {e}"))),
            Err(_) => send_time = started.elapsed(),
        }
    }
    for consumer in consumers {
        match tokio::time::timeout(Duration::from_secs(10), consumer).await {
            Ok(Ok(Some(e))) => {
                first_error.get_or_insert(e);
            }
            Ok(Err(e)) => return Err(Failure::Failed(format!("a consumer task failed: {e}"))),
            Ok(Ok(None)) | Err(_) => {}
        }
    }
    let received = seen.unique.load(Ordering::Relaxed);
    if received < n
        && let Some(e) = first_error
    {
        return Err(e.into());
    }
    let confirm = confirm.lock().await.clone();
    let end_to_end = end_to_end.lock().await.clone();
    Ok(Outcome {
        sent: sent.load(Ordering::Relaxed),
        send_errors: errors.load(Ordering::Relaxed),
        received,
        duplicates: seen.duplicates.load(Ordering::Relaxed),
        foreign: seen.foreign.load(Ordering::Relaxed),
        missing: n.saturating_sub(received),
        send_time,
        // From the first send to the last new message received.
        recv_time: Duration::from_nanos(seen.latest.load(Ordering::Relaxed))
            .saturating_sub(started.saturating_duration_since(epoch)),
        confirm,
        end_to_end,
    })
}
