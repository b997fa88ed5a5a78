//! mq against its closest Rust peers and the raw clients, on the same
//! brokers, in one run: interleaved rounds (the order rotates each round),
//! medians, ratios. `scripts/bench.sh` runs it; BENCHMARKS.md shows what it
//! printed and the charts it drew.
//!
//! ```text
//! mq-peers [--backends memory,redis,rabbitmq,kafka] [--contenders mq,ruststream] [--no-latency] [--rounds N] [--out DIR] [--quick] [--workload TEXT] [--charts-only]
//! ```
//!
//! Writes `DIR/peers.json` (every round of every contender), `DIR/peers.csv`
//! (the same, one row a round) and `DIR/<backend>.svg` (median throughput
//! of each contender, per workload, with mq's ratio to it).

mod chart;
mod kafka;
mod latency;
mod memory;
mod rabbit;
mod redis;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::rabbit::Shape;

/// One timed run of a contender: how long its messages took, or why it
/// failed.
pub type Outcome = Result<Duration, String>;

/// What a run measured: how long its messages took, or (a paced run)
/// each message's age on arrival in µs.
enum Measure {
    Took(Duration),
    Ages(Vec<u64>),
}

/// The longest a round (or warm-up) may take before it counts as failed.
const ROUND_BOUND: Duration = Duration::from_secs(180);

type Run = Box<dyn Fn(usize, Bytes) -> BoxFuture<'static, Result<Measure, String>>>;

/// Who a contender is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// mq itself.
    Mq,
    /// Another SDK.
    Peer,
    /// The broker's own client, used directly.
    Raw,
}

struct Contender {
    name: &'static str,
    kind: Kind,
    run: Run,
}

struct Workload {
    backend: &'static str,
    name: &'static str,
    messages: usize,
    /// Settings that differ between contenders, printed next to the figures.
    notes: &'static str,
    /// A paced run: latency percentiles, not throughput.
    latency: bool,
    contenders: Vec<Contender>,
}

/// What one contender measured in one workload.
#[derive(Debug, Serialize, Deserialize)]
pub struct Measured {
    /// The contender.
    pub contender: String,
    /// mq, a peer or the raw client.
    pub kind: Kind,
    /// Messages a second, per round, in the order run.
    pub rounds: Vec<f64>,
    /// The median of `rounds`.
    pub median: f64,
    /// Paced runs: each round's median latency, µs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p50_us: Vec<f64>,
    /// Paced runs: each round's 99th percentile latency, µs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p99_us: Vec<f64>,
}

/// A workload's results.
#[derive(Debug, Serialize, Deserialize)]
pub struct Result_ {
    /// `memory`, `redis`, ...
    pub backend: String,
    /// What was measured.
    pub workload: String,
    /// Messages per round.
    pub messages: usize,
    /// Unequal settings, if any.
    pub notes: String,
    /// A paced run (latency) rather than throughput.
    pub latency: bool,
    /// One entry per contender.
    pub contenders: Vec<Measured>,
}

fn contender<F, Fut>(name: &'static str, kind: Kind, f: F) -> Contender
where
    F: Fn(usize, Bytes) -> Fut + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    Contender {
        name,
        kind,
        run: Box::new(move |n, p| {
            let run = f(n, p);
            Box::pin(async move { run.await.map(Measure::Took) })
        }),
    }
}

fn paced<F, Fut>(name: &'static str, kind: Kind, f: F) -> Contender
where
    F: Fn(usize, Bytes) -> Fut + 'static,
    Fut: std::future::Future<Output = latency::Ages> + Send + 'static,
{
    Contender {
        name,
        kind,
        run: Box::new(move |n, p| {
            let run = f(n, p);
            Box::pin(async move { run.await.map(Measure::Ages) })
        }),
    }
}

fn workloads(backends: &[String], quick: bool) -> Vec<Workload> {
    let scale = |n: usize| if quick { (n / 20).max(1000) } else { n };
    let mut all = Vec::new();
    let wanted = |b: &str| backends.is_empty() || backends.iter().any(|x| x == b);
    if wanted("memory") {
        all.push(Workload {
            backend: "memory",
            name: "1 producer -> 1 consumer, recv + ack",
            messages: scale(100_000),
            notes: "mq keeps a lease per delivery (at-least-once) and a bounded queue; \
                    ruststream and omniqueue keep neither (unbounded queues)",
            latency: false,
            contenders: vec![
                contender("mq", Kind::Mq, memory::mq),
                contender("ruststream", Kind::Peer, memory::ruststream),
                contender("omniqueue", Kind::Peer, memory::omniqueue),
                contender("mpsc<Message>", Kind::Raw, memory::mpsc),
            ],
        });
    }
    if wanted("redis") {
        use redis::Sends;
        all.push(Workload {
            backend: "redis",
            name: "send, awaited one by one",
            messages: scale(20_000),
            notes: "",
            latency: false,
            contenders: vec![
                contender("mq", Kind::Mq, |n, p| redis::mq_send(n, p, Sends::One)),
                contender("ruststream", Kind::Peer, |n, p| {
                    redis::ruststream_send(n, p, Sends::One)
                }),
                contender("omniqueue", Kind::Peer, |n, p| {
                    redis::omniqueue_send(n, p, Sends::One)
                }),
                contender("redis-rs", Kind::Raw, |n, p| redis::raw_send(n, p, Sends::One)),
            ],
        });
        all.push(Workload {
            backend: "redis",
            name: "send, 100 at a time",
            messages: scale(50_000),
            notes: "mq: send_batch(100); redis-rs: one pipeline of 100 XADD; ruststream and \
                    omniqueue have no batch send: 100 concurrent sends",
            latency: false,
            contenders: vec![
                contender("mq", Kind::Mq, |n, p| redis::mq_send(n, p, Sends::Hundred)),
                contender("ruststream", Kind::Peer, |n, p| {
                    redis::ruststream_send(n, p, Sends::Hundred)
                }),
                contender("omniqueue", Kind::Peer, |n, p| {
                    redis::omniqueue_send(n, p, Sends::Hundred)
                }),
                contender("redis-rs", Kind::Raw, |n, p| {
                    redis::raw_send(n, p, Sends::Hundred)
                }),
            ],
        });
        all.push(Workload {
            backend: "redis",
            name: "consume + ack",
            messages: scale(20_000),
            notes: "mq: recv + ack (prefetch 200; acks are batched XACKs); ruststream: up to 200 \
                    acks in flight; omniqueue: receive_all(100) and the batch's acks together; \
                    redis-rs: XREADGROUP COUNT 100 + one XACK",
            latency: false,
            contenders: vec![
                contender("mq", Kind::Mq, |n, p| redis::mq_consume(n, p, false)),
                contender("mq recv_many", Kind::Mq, |n, p| redis::mq_consume(n, p, true)),
                contender("ruststream", Kind::Peer, redis::ruststream_consume),
                contender("omniqueue", Kind::Peer, redis::omniqueue_consume),
                contender("redis-rs", Kind::Raw, redis::raw_consume),
            ],
        });
    }
    if wanted("rabbitmq") {
        all.push(Workload {
            backend: "rabbitmq",
            name: "persistent, confirms (window 100), prefetch 200, ack each",
            messages: scale(20_000),
            notes: "mq and lapin publish through a topic exchange (mq's default topology); mq \
                    queue: topology=queue, straight to the topic's queue as ruststream's plain \
                    queue; ruststream on a plain queue and through a topic exchange; lapin queue: a \
                    plain queue, not mandatory (as ruststream); lapin queue mandatory: + the \
                    mandatory flag; lapin queue as mq: + mq's properties (message_id, timestamp, \
                    mq-ts header), mq queue's wire form; omniqueue \
                    has no publisher confirms (it publishes without them)",
            latency: false,
            contenders: vec![
                contender("mq", Kind::Mq, |n, p| rabbit::mq(n, p, false, false)),
                contender("mq recv_many", Kind::Mq, |n, p| rabbit::mq(n, p, true, false)),
                contender("mq queue", Kind::Mq, |n, p| rabbit::mq(n, p, false, true)),
                contender("mq queue recv_many", Kind::Mq, |n, p| {
                    rabbit::mq(n, p, true, true)
                }),
                contender("ruststream", Kind::Peer, |n, p| rabbit::ruststream(n, p, false)),
                contender("ruststream topic", Kind::Peer, |n, p| {
                    rabbit::ruststream(n, p, true)
                }),
                contender("omniqueue", Kind::Peer, rabbit::omniqueue),
                contender("lapin", Kind::Raw, |n, p| rabbit::lapin(n, p, Shape::TOPIC)),
                contender("lapin queue", Kind::Raw, |n, p| rabbit::lapin(n, p, Shape::QUEUE)),
                contender("lapin queue mandatory", Kind::Raw, |n, p| {
                    rabbit::lapin(n, p, Shape::QUEUE_MANDATORY)
                }),
                contender("lapin queue as mq", Kind::Raw, |n, p| {
                    rabbit::lapin(n, p, Shape::QUEUE_AS_MQ)
                }),
            ],
        });
    }
    if wanted("kafka") {
        all.push(Workload {
            backend: "kafka",
            name: "produce, idempotent, acks=all, linger.ms=5, 1,000 in flight",
            messages: scale(50_000),
            notes: "mq: send_batch(1000); rdkafka: 1,000 FutureRecords awaited together (rdkafka + \
                    mq-id: each with the id header and timestamp mq's records carry); ruststream: \
                    1,000 concurrent publishes (no batch publish)",
            latency: false,
            contenders: vec![
                contender("mq", Kind::Mq, kafka::mq_produce),
                contender("ruststream", Kind::Peer, kafka::ruststream_produce),
                contender("rdkafka", Kind::Raw, |n, p| kafka::raw_produce(n, p, false)),
                contender("rdkafka + mq-id", Kind::Raw, |n, p| {
                    kafka::raw_produce(n, p, true)
                }),
            ],
        });
        all.push(Workload {
            backend: "kafka",
            name: "consume + ack, a new group, from the first message to the last",
            messages: scale(20_000),
            notes: "every contender reads the same kind of messages (written by mq, with its \
                    headers); rdkafka reads every header and stores each offset (rdkafka owned: also \
                    copies each message into owned values, as an mq delivery holds it); ruststream \
                    with Commit::Tracked (per-message acks)",
            latency: false,
            contenders: vec![
                contender("mq", Kind::Mq, |n, p| kafka::mq_consume(n, p, false)),
                contender("mq recv_many", Kind::Mq, |n, p| kafka::mq_consume(n, p, true)),
                contender("ruststream", Kind::Peer, kafka::ruststream_consume),
                contender("rdkafka", Kind::Raw, |n, p| kafka::raw_consume(n, p, false)),
                contender("rdkafka owned", Kind::Raw, |n, p| kafka::raw_consume(n, p, true)),
            ],
        });
    }
    let lat = |backend: &'static str, mq: Contender, raw: Contender| Workload {
        backend,
        name: "end-to-end latency at 2,000 msg/s (20 every 10 ms)",
        messages: scale(4_000).max(400),
        notes: "",
        latency: true,
        contenders: vec![mq, raw],
    };
    if wanted("memory") {
        all.push(lat(
            "memory",
            paced("mq", Kind::Mq, latency::mq_memory),
            paced("mpsc<Message>", Kind::Raw, latency::mpsc),
        ));
    }
    if wanted("redis") {
        all.push(lat(
            "redis",
            paced("mq", Kind::Mq, latency::mq_redis),
            paced("redis-rs", Kind::Raw, latency::redis_rs),
        ));
    }
    if wanted("rabbitmq") {
        all.push(lat(
            "rabbitmq",
            paced("mq", Kind::Mq, latency::mq_rabbit),
            paced("lapin", Kind::Raw, latency::lapin),
        ));
    }
    if wanted("kafka") {
        all.push(lat(
            "kafka",
            paced("mq", Kind::Mq, latency::mq_kafka),
            paced("rdkafka", Kind::Raw, latency::rdkafka),
        ));
    }
    all
}

struct Args {
    backends: Vec<String>,
    /// Only these contenders (for profiling one under callgrind).
    contenders: Vec<String>,
    /// No paced (latency) workloads.
    no_latency: bool,
    rounds: usize,
    out: PathBuf,
    quick: bool,
    /// Only redraw the charts of `out` from its `peers.json`.
    charts_only: bool,
    /// Only workloads whose name contains this (for profiling one).
    workload: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: mq-peers [--backends memory,redis,rabbitmq,kafka] [--contenders mq,ruststream] [--no-latency] [--rounds N] [--out DIR] [--quick] [--workload TEXT] [--charts-only]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        backends: Vec::new(),
        contenders: Vec::new(),
        no_latency: false,
        rounds: std::env::var("MQ_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5),
        out: PathBuf::from("target/bench"),
        quick: false,
        charts_only: false,
        workload: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backends" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.backends = v.split(',').map(str::to_string).collect();
            }
            "--contenders" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.contenders = v.split(',').map(str::to_string).collect();
            }
            "--rounds" => {
                a.rounds = it.next().and_then(|r| r.parse().ok()).unwrap_or_else(|| usage());
            }
            "--out" => a.out = PathBuf::from(it.next().unwrap_or_else(|| usage())),
            "--quick" => a.quick = true,
            "--charts-only" => a.charts_only = true,
            "--workload" => a.workload = Some(it.next().unwrap_or_else(|| usage())),
            "--no-latency" => a.no_latency = true,
            "-h" | "--help" => {
                println!(
                    "mq-peers [--backends memory,redis,rabbitmq,kafka] [--contenders mq,ruststream] [--no-latency] [--rounds N] [--out DIR] [--quick] [--workload TEXT] [--charts-only]"
                );
                std::process::exit(0)
            }
            _ => usage(),
        }
    }
    if a.rounds == 0 {
        usage();
    }
    a
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() {
    let args = args();
    if args.charts_only {
        if let Err(e) = redraw(&args.out) {
            eprintln!("could not redraw the charts of {}: {e}", args.out.display());
            std::process::exit(1);
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut workloads = workloads(&args.backends, args.quick);
    if !args.contenders.is_empty() {
        for w in &mut workloads {
            w.contenders
                .retain(|c| args.contenders.iter().any(|x| x == c.name));
        }
        workloads.retain(|w| !w.contenders.is_empty());
    }
    if args.no_latency {
        workloads.retain(|w| !w.latency);
    }
    if let Some(only) = &args.workload {
        workloads.retain(|w| w.name.contains(only.as_str()));
    }
    if workloads.is_empty() {
        eprintln!("no workload for backends {:?}", args.backends);
        std::process::exit(2);
    }
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    let mut failed = false;
    for w in &workloads {
        println!(
            "\n== {} / {}: {} x {}-byte messages, {} interleaved rounds",
            w.backend,
            w.name,
            w.messages,
            payload.len(),
            args.rounds
        );
        let bars = MultiProgress::new();
        let style = ProgressStyle::with_template("  {prefix:>16} [{bar:20}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> ");
        let progress: Vec<ProgressBar> = w
            .contenders
            .iter()
            .map(|c| {
                let b = bars.add(ProgressBar::new(args.rounds as u64 + 1));
                b.set_style(style.clone());
                b.set_prefix(c.name);
                b
            })
            .collect();
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); w.contenders.len()];
        let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); w.contenders.len()];
        let mut p99s: Vec<Vec<f64>> = vec![Vec::new(); w.contenders.len()];
        let mut errors: BTreeMap<&str, String> = BTreeMap::new();
        // Warm-up (not counted), then the rounds, each in a rotated order.
        for (i, c) in w.contenders.iter().enumerate() {
            progress[i].set_message("warm-up");
            let warm_up = (c.run)((w.messages / 10).max(100), payload.clone());
            if let Err(e) = runtime
                .block_on(async { tokio::time::timeout(ROUND_BOUND, warm_up).await })
                .unwrap_or_else(|_| Err(format!("the warm-up took over {ROUND_BOUND:?}")))
            {
                errors.insert(c.name, e);
            }
            progress[i].inc(1);
        }
        for round in 0..args.rounds {
            for turn in 0..w.contenders.len() {
                let i = (round + turn) % w.contenders.len();
                let c = &w.contenders[i];
                if errors.contains_key(c.name) {
                    progress[i].inc(1);
                    continue;
                }
                let run = (c.run)(w.messages, payload.clone());
                let outcome = runtime
                    .block_on(async { tokio::time::timeout(ROUND_BOUND, run).await })
                    .unwrap_or_else(|_| Err(format!("a round took over {ROUND_BOUND:?}")));
                match outcome {
                    Ok(Measure::Took(took)) => {
                        let rate = w.messages as f64 / took.as_secs_f64().max(1e-9);
                        rates[i].push(rate);
                        progress[i].set_message(format!("{rate:.0} msg/s"));
                    }
                    Ok(Measure::Ages(mut ages)) => {
                        ages.sort_unstable();
                        let at =
                            |q: usize| ages.get(ages.len() * q / 100).copied().unwrap_or_default() as f64;
                        let (p50, p99) = (at(50), at(99));
                        p50s[i].push(p50);
                        p99s[i].push(p99);
                        progress[i].set_message(format!("p50 {p50:.0} µs, p99 {p99:.0} µs"));
                    }
                    Err(e) => {
                        progress[i].set_message(format!("failed: {e}"));
                        errors.insert(c.name, e);
                    }
                }
                progress[i].inc(1);
            }
        }
        for b in &progress {
            b.finish();
        }
        let _ = bars.clear();
        let mq = w.contenders.iter().position(|c| c.kind == Kind::Mq);
        let mut measured = Vec::new();
        for (i, c) in w.contenders.iter().enumerate() {
            let m = median(&rates[i]);
            let (p50, p99) = (median(&p50s[i]), median(&p99s[i]));
            let peer = matches!(c.kind, Kind::Peer | Kind::Raw);
            let line = if w.latency {
                let ratio = match mq {
                    Some(q) if peer && p50 > 0.0 && p99 > 0.0 => format!(
                        "   mq / {}: p50 {:.2}, p99 {:.2}",
                        c.name,
                        median(&p50s[q]) / p50,
                        median(&p99s[q]) / p99
                    ),
                    _ => String::new(),
                };
                let rounds = p50s[i]
                    .iter()
                    .zip(&p99s[i])
                    .map(|(a, b)| format!("{a:.0}/{b:.0}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("p50 {p50:>6.0} µs  p99 {p99:>6.0} µs{ratio}   (rounds p50/p99: {rounds})")
            } else {
                // Every mq contender's ratio to this peer or raw client.
                let ratio = if peer && m > 0.0 {
                    let each: Vec<String> = w
                        .contenders
                        .iter()
                        .enumerate()
                        .filter(|(_, q)| q.kind == Kind::Mq)
                        .map(|(q, mine)| format!("{} / {}: {:.2}", mine.name, c.name, median(&rates[q]) / m))
                        .collect();
                    format!("   {}", each.join("; "))
                } else {
                    String::new()
                };
                let rounds = rates[i]
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{m:>9.0} msg/s{ratio}   (rounds: {rounds})")
            };
            match errors.get(c.name) {
                Some(e) => {
                    failed = true;
                    println!("  {:>18}: failed: {e}", c.name);
                }
                None => println!("  {:>18}: {line}", c.name),
            }
            measured.push(Measured {
                contender: c.name.to_string(),
                kind: c.kind,
                rounds: rates[i].clone(),
                median: m,
                p50_us: p50s[i].clone(),
                p99_us: p99s[i].clone(),
            });
        }
        if !w.notes.is_empty() {
            println!("  settings: {}", w.notes);
        }
        results.push(Result_ {
            backend: w.backend.to_string(),
            workload: w.name.to_string(),
            messages: w.messages,
            notes: w.notes.to_string(),
            latency: w.latency,
            contenders: measured,
        });
    }
    if let Err(e) = write(&args.out, &results) {
        eprintln!("writing the results to {}: {e}", args.out.display());
        std::process::exit(1);
    }
    println!(
        "\nwrote {}/peers.json, peers.csv and one chart per backend; took {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if failed {
        std::process::exit(1);
    }
}

fn write(out: &std::path::Path, results: &[Result_]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(out.join("peers.json"), json).map_err(|e| e.to_string())?;
    let mut csv = String::from("backend,workload,contender,kind,messages,round,msg_per_s,p50_us,p99_us\n");
    for r in results {
        for c in &r.contenders {
            for k in 0..c.rounds.len().max(c.p50_us.len()) {
                let cell = |v: &[f64]| v.get(k).map(|x| format!("{x:.0}")).unwrap_or_default();
                csv.push_str(&format!(
                    "{},\"{}\",{},{:?},{},{},{},{},{}\n",
                    r.backend,
                    r.workload,
                    c.contender,
                    c.kind,
                    r.messages,
                    k + 1,
                    cell(&c.rounds),
                    cell(&c.p50_us),
                    cell(&c.p99_us)
                ));
            }
        }
    }
    std::fs::write(out.join("peers.csv"), csv).map_err(|e| e.to_string())?;
    charts(out, results)
}

/// Draws the charts again from `out`'s `peers.json` (a chart change needs
/// no new run).
fn redraw(out: &std::path::Path) -> Result<(), String> {
    let json = std::fs::read_to_string(out.join("peers.json")).map_err(|e| e.to_string())?;
    let results: Vec<Result_> = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    charts(out, &results)
}

/// One chart per backend, `out/<backend>.svg`.
fn charts(out: &std::path::Path, results: &[Result_]) -> Result<(), String> {
    let mut backends: Vec<&str> = results.iter().map(|r| r.backend.as_str()).collect();
    backends.dedup();
    for b in backends {
        let of: Vec<&Result_> = results.iter().filter(|r| r.backend == b).collect();
        chart::throughput(&out.join(format!("{b}.svg")), b, &of)?;
    }
    Ok(())
}
