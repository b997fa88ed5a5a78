//! mq-redis against the raw client on the same Redis, in one run,
//! interleaved rounds, 100-byte payloads:
//!
//! (a) `send`, one at a time, vs a raw redis-rs XADD loop (same fields);
//! (b) `send_batch` of 100 vs `redis-benchmark` XADD with `-P 16`;
//! (c) consume + ack (prefetch 200) vs a raw XREADGROUP COUNT 100 + XACK loop;
//!     and `recv_many(200)` with one `ack_all` per batch against `recv`;
//!     and the same SDK instrumented (`mq_core::observe`, what the registry
//!     hands out): with nothing installed, and in a process of its own with
//!     a `tracing` subscriber and the Prometheus recorder installed.
//!
//! Run: `cargo bench -p mq-redis --bench throughput` (Redis from
//! `MQ_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; `MQ_BENCH_MESSAGES`
//! and `MQ_BENCH_ROUNDS` change the size). Needs `redis-benchmark` (Debian's
//! redis-tools) for (b).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../benches/observed.rs"]
mod observed;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mq_core::{Broker, BrokerUrl, Message, ProducerOptions, Subscription};
use mq_redis::{RedisBroker, RedisConfig};
use redis::aio::MultiplexedConnection;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url() -> String {
    std::env::var("MQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(what: &str) -> String {
    format!("bench-{what}-{}", &mq_core::new_id()[24..])
}

async fn raw_conn() -> MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cleanup(conn: &mut MultiplexedConnection, pattern: &str) {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(conn).await.unwrap();
    for key in keys {
        let _: () = redis::cmd("DEL").arg(key).query_async(conn).await.unwrap();
    }
}

/// (a) raw: XADD with the fields mq writes (id, t, p), awaited one by one.
async fn raw_send(n: usize, payload: &Bytes) -> Duration {
    let mut conn = raw_conn().await;
    let key = format!("mq:{}", unique("raw-send"));
    let start = Instant::now();
    for _ in 0..n {
        let m = Message::new(payload.clone());
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("id")
            .arg(&m.id)
            .arg("t")
            .arg(m.timestamp_millis())
            .arg("p")
            .arg(&m.payload[..])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let d = start.elapsed();
    cleanup(&mut conn, &key).await;
    d
}

async fn sdk_send(broker: &RedisBroker, n: usize, payload: &Bytes) -> Duration {
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let topic = unique("sdk-send");
    let start = Instant::now();
    for _ in 0..n {
        producer
            .send(&topic, Message::new(payload.clone()))
            .await
            .unwrap();
    }
    let d = start.elapsed();
    cleanup(&mut raw_conn().await, &format!("mq:{topic}*")).await;
    d
}

async fn sdk_batch(broker: &RedisBroker, n: usize, payload: &Bytes) -> Duration {
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let topic = unique("sdk-batch");
    let start = Instant::now();
    for _ in 0..n / 100 {
        let batch = (0..100).map(|_| Message::new(payload.clone())).collect();
        producer.send_batch(&topic, batch).await.unwrap();
    }
    let d = start.elapsed();
    cleanup(&mut raw_conn().await, &format!("mq:{topic}*")).await;
    d
}

/// (b) raw: redis-benchmark's XADD with 16 commands pipelined; returns msgs/s.
fn redis_benchmark(n: usize) -> Option<f64> {
    let url = BrokerUrl::parse(&url()).ok()?;
    let host = url
        .hosts()
        .first()
        .map_or("127.0.0.1".to_string(), |h| h.host.clone());
    let port = url.hosts().first().and_then(|h| h.port).unwrap_or(6379);
    let key = unique("redis-benchmark");
    let payload = "x".repeat(100);
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-h",
        &host,
        "-p",
        &port.to_string(),
        "-n",
        &n.to_string(),
        "-c",
        "1",
        "-P",
        "16",
        "-q",
    ]);
    if let Some(pass) = url.password() {
        cmd.args(["-a", pass.expose()]);
    }
    cmd.args(["XADD", &key, "*", "p", &payload]);
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD ...: 123456.79 requests per second, p50=..."
    let rate = text
        .split("requests per second")
        .next()?
        .rsplit([':', ' '])
        .find(|s| !s.is_empty())?
        .parse()
        .ok();
    let _ = Command::new("redis-cli")
        .args(["-h", &host, "-p", &port.to_string(), "DEL", &key])
        .output();
    rate
}

async fn fill(broker: &RedisBroker, topic: &str, n: usize, payload: &Bytes) {
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    for _ in 0..n / 100 {
        let batch = (0..100).map(|_| Message::new(payload.clone())).collect();
        producer.send_batch(topic, batch).await.unwrap();
    }
}

/// (c) raw: XREADGROUP COUNT 100, then one XACK for the 100 ids.
async fn raw_consume(broker: &RedisBroker, n: usize, payload: &Bytes) -> Duration {
    let topic = unique("raw-consume");
    let key = format!("mq:{topic}");
    let mut conn = raw_conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    fill(broker, &topic, n, payload).await;
    let start = Instant::now();
    let mut seen = 0;
    while seen < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ids: Vec<String> = reply.keys.into_iter().flat_map(|k| k.ids).map(|e| e.id).collect();
        seen += ids.len();
        let _: i64 = redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let d = start.elapsed();
    cleanup(&mut conn, &format!("{key}*")).await;
    d
}

/// Which SDK consumes: the broker as built, or wrapped for spans and
/// metrics.
#[derive(Clone, Copy)]
enum Sdk {
    Bare,
    Instrumented,
}

async fn sdk_consume(sdk: Sdk, broker: &Arc<RedisBroker>, n: usize, payload: &Bytes) -> Duration {
    let topic = unique("sdk-consume");
    let sub = Subscription::new(&topic, "g")
        .start(mq_core::StartPosition::Earliest)
        .prefetch(200);
    let mut consumer = match sdk {
        Sdk::Bare => broker.subscribe(sub).await.unwrap(),
        Sdk::Instrumented => mq_core::observe::instrument(broker.clone())
            .subscribe(sub)
            .await
            .unwrap(),
    };
    fill(broker, &topic, n, payload).await;
    let start = Instant::now();
    for _ in 0..n {
        let d = consumer.recv().await.unwrap().unwrap();
        d.ack().await.unwrap();
    }
    // Until every ack reached Redis.
    consumer.close().await.unwrap();
    let d = start.elapsed();
    cleanup(&mut raw_conn().await, &format!("mq:{topic}*")).await;
    d
}

/// (c) with `recv_many(200)` and one `ack_all` per batch.
async fn sdk_consume_many(broker: &Arc<RedisBroker>, n: usize, payload: &Bytes) -> Duration {
    let topic = unique("sdk-consume-many");
    let sub = Subscription::new(&topic, "g")
        .start(mq_core::StartPosition::Earliest)
        .prefetch(200);
    let mut consumer = broker.subscribe(sub).await.unwrap();
    fill(broker, &topic, n, payload).await;
    let start = Instant::now();
    let mut seen = 0;
    while seen < n {
        let batch = consumer
            .recv_many(200, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(!batch.is_empty(), "no message within 5 s");
        seen += batch.len();
        mq_core::ack_all(&batch).await.unwrap();
    }
    consumer.close().await.unwrap();
    let d = start.elapsed();
    cleanup(&mut raw_conn().await, &format!("mq:{topic}*")).await;
    d
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(name: &str, sdk: Vec<f64>, raw: Vec<f64>, target: f64) {
    let (s, r) = (median(sdk.clone()), median(raw.clone()));
    println!(
        "{name}: mq-redis {s:>9.0} msg/s   raw {r:>9.0} msg/s   ratio {:.2} (target >= {target})",
        s / r
    );
    let show = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
    println!("    rounds mq-redis: {}", show(&sdk));
    println!("    rounds raw:      {}", show(&raw));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn connect(runtime: &tokio::runtime::Runtime) -> Arc<RedisBroker> {
    let broker = runtime.block_on(async {
        RedisBroker::connect(RedisConfig::from_url(&BrokerUrl::parse(&url()).unwrap()).unwrap())
            .await
            .unwrap()
    });
    Arc::new(broker)
}

/// A child process of this bench (`logs:N` or `traces:N`): installs a
/// `tracing` subscriber and the Prometheus recorder (process-wide, so not
/// in the parent) and runs (c) bare and instrumented alternately
/// (`observed::child_main`).
fn child(spec: &str) {
    let n: usize = spec.split(':').nth(1).unwrap().parse().unwrap();
    let runtime = runtime();
    let broker = connect(&runtime);
    let payload = Bytes::from(vec![b'x'; 100]);
    observed::child_main(spec, n, |instrumented, n| {
        let sdk = if instrumented {
            Sdk::Instrumented
        } else {
            Sdk::Bare
        };
        rate(n, runtime.block_on(sdk_consume(sdk, &broker, n, &payload)))
    });
}

fn main() {
    if let Ok(spec) = std::env::var("MQ_BENCH_CHILD") {
        return child(&spec);
    }
    let n = env_usize("MQ_BENCH_MESSAGES", 20_000);
    let rounds = env_usize("MQ_BENCH_ROUNDS", 5);
    let runtime = runtime();
    let payload = Bytes::from(vec![b'x'; 100]);
    let broker = connect(&runtime);
    println!(
        "mq-redis vs raw on {}: {n} x 100-byte messages per run, {rounds} rounds, interleaved",
        broker.config().endpoint()
    );
    let (mut a_sdk, mut a_raw, mut b_sdk, mut b_raw, mut c_sdk, mut c_raw) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut c_quiet, mut c_logs, mut c_traces, mut c_many) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // (b) sends five times as many: batches are fast and short runs are noisy.
    let nb = n * 5;
    // Warm-up.
    runtime.block_on(sdk_send(&broker, n / 10, &payload));
    runtime.block_on(raw_send(n / 10, &payload));
    for round in 0..rounds {
        let sdk_first = round % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == sdk_first {
                a_sdk.push(rate(n, runtime.block_on(sdk_send(&broker, n, &payload))));
                b_sdk.push(rate(nb, runtime.block_on(sdk_batch(&broker, nb, &payload))));
                // (c)'s SDK contenders, in an order rotated each round.
                for k in 0..5 {
                    match (round + k) % 5 {
                        0 => c_sdk.push(rate(
                            n,
                            runtime.block_on(sdk_consume(Sdk::Bare, &broker, n, &payload)),
                        )),
                        1 => c_quiet.push(rate(
                            n,
                            runtime.block_on(sdk_consume(Sdk::Instrumented, &broker, n, &payload)),
                        )),
                        2 => c_logs.push(observed::in_child(&format!("logs:{n}"))),
                        3 => c_many.push(rate(n, runtime.block_on(sdk_consume_many(&broker, n, &payload)))),
                        _ => c_traces.push(observed::in_child(&format!("traces:{n}"))),
                    }
                }
            } else {
                a_raw.push(rate(n, runtime.block_on(raw_send(n, &payload))));
                if let Some(r) = redis_benchmark(nb) {
                    b_raw.push(r);
                }
                c_raw.push(rate(n, runtime.block_on(raw_consume(&broker, n, &payload))));
            }
        }
    }
    report("(a) send one at a time vs raw XADD loop", a_sdk, a_raw, 0.8);
    if b_raw.is_empty() {
        println!(
            "(b) send_batch(100): redis-benchmark not found (install Debian's redis-tools); mq-redis {:.0} msg/s",
            median(b_sdk.clone())
        );
    } else {
        report(
            "(b) send_batch(100) vs redis-benchmark XADD -P 16",
            b_sdk.clone(),
            b_raw,
            0.6,
        );
    }
    let bare = median(c_sdk.clone());
    report(
        "(c) consume + ack vs raw XREADGROUP COUNT 100 + XACK",
        c_sdk,
        c_raw,
        0.8,
    );
    let show = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
    let many = median(c_many.clone());
    println!(
        "(c) recv_many(200) + ack_all: {many:>9.0} msg/s   ratio (/ recv + ack, mq-redis) {:.3}",
        many / bare
    );
    println!("    rounds: {}", show(&c_many));
    let quiet = median(c_quiet.clone());
    println!(
        "(c) instrumented, nothing installed: {quiet:>9.0} msg/s   ratio (/ mq-redis) {:.3} (target within 2%)",
        quiet / bare
    );
    println!("    rounds: {}", show(&c_quiet));
    for (name, v, target) in [
        (
            "instrumented, fmt subscriber (INFO) + Prometheus recorder",
            c_logs,
            ">= 0.9",
        ),
        (
            "instrumented, OpenTelemetry layer + Prometheus recorder",
            c_traces,
            "none",
        ),
    ] {
        observed::report_child("(c) ", name, &v, target);
    }
}
