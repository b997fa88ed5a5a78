//! mq-rabbit against raw lapin on the same RabbitMQ, in one run, interleaved
//! rounds, same settings: 100-byte persistent messages, publisher confirms
//! pipelined (batches of 100, confirms awaited together), prefetch 200, an
//! ack per message. Prints throughput (publishers flat out) and p50/p99
//! publish-to-consume latency (publishers paced at 2,000 msg/s, below
//! saturation) for both, and the ratios; latency under flood is printed too
//! (it measures the backlog, not the client). mq also consumes with
//! `recv_many(200)` and one `ack_all` per batch (flood only).
//!
//! Run: `cargo bench -p mq-rabbit --bench throughput` (broker from
//! `MQ_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`;
//! `MQ_BENCH_MESSAGES`, `MQ_BENCH_ROUNDS`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use mq_core::{Broker, BrokerUrl, Message, ProducerOptions, Subscription};
use mq_rabbit::{RabbitBroker, RabbitConfig};

/// The paced runs publish `PACED_BATCH` messages every `PACE`: 2,000 msg/s,
/// well below what the broker sustains here, so latency is the time a message
/// takes, not the time it waits behind a backlog.
const PACED_BATCH: usize = 20;
const PACE: Duration = Duration::from_millis(10);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url() -> String {
    std::env::var("MQ_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// A 100-byte payload starting with the send time.
fn payload() -> Vec<u8> {
    let mut p = vec![b'x'; 100];
    p[..8].copy_from_slice(&now_micros().to_be_bytes());
    p
}

fn latency(p: &[u8]) -> u64 {
    now_micros().saturating_sub(u64::from_be_bytes(p[..8].try_into().unwrap()))
}

struct Run {
    rate: f64,
    p50: u64,
    p99: u64,
}

fn summarize(n: usize, elapsed: Duration, mut lat: Vec<u64>) -> Run {
    lat.sort_unstable();
    Run {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
    }
}

async fn sdk(broker: &RabbitBroker, n: usize, paced: bool) -> Run {
    sdk_with(broker, n, paced, false).await
}

/// `batches`: consumes with `recv_many(200)` (the prefetch) and one
/// `ack_all` per batch instead of `recv` + `ack`.
async fn sdk_with(broker: &RabbitBroker, n: usize, paced: bool, batches: bool) -> Run {
    let topic = format!("bench-sdk-{}", &mq_core::new_id()[24..]);
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, "g").prefetch(200))
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let start = Instant::now();
    let sender = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let (batches, size) = if paced {
                (n / PACED_BATCH, PACED_BATCH)
            } else {
                (n / 100, 100)
            };
            let mut tick = tokio::time::interval(PACE);
            for _ in 0..batches {
                if paced {
                    tick.tick().await;
                }
                let batch = (0..size).map(|_| Message::new(payload())).collect();
                producer.send_batch(&topic, batch).await.unwrap();
            }
        })
    };
    let mut lat = Vec::with_capacity(n);
    if batches {
        while lat.len() < n {
            let batch = consumer
                .recv_many(200, Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            assert!(!batch.is_empty(), "nothing within 60 s");
            lat.extend(batch.iter().map(|d| latency(&d.message().payload)));
            mq_core::ack_all(&batch).await.unwrap();
        }
    }
    while lat.len() < n {
        let d = consumer.recv().await.unwrap().unwrap();
        lat.push(latency(&d.message().payload));
        d.ack().await.unwrap();
    }
    let elapsed = start.elapsed();
    sender.await.unwrap();
    consumer.close().await.unwrap();
    let channel = broker.connection().await.unwrap().create_channel().await.unwrap();
    channel
        .queue_delete(
            format!("{topic}.g").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    summarize(n, elapsed, lat)
}

async fn raw(conn: &Connection, n: usize, paced: bool) -> Run {
    let name = format!("bench-raw-{}", &mq_core::new_id()[24..]);
    let queue = format!("{name}.g");
    let setup = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let qopts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .queue_declare(queue.as_str().into(), qopts, FieldTable::default())
        .await
        .unwrap();
    setup
        .queue_bind(
            queue.as_str().into(),
            name.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consume = conn.create_channel().await.unwrap();
    consume.basic_qos(200, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publish = conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    let sender = {
        let name = name.clone();
        tokio::spawn(async move {
            let (batches, size) = if paced {
                (n / PACED_BATCH, PACED_BATCH)
            } else {
                (n / 100, 100)
            };
            let mut tick = tokio::time::interval(PACE);
            for _ in 0..batches {
                if paced {
                    tick.tick().await;
                }
                // Stamped together before publishing, as the SDK's batch is.
                let payloads: Vec<Vec<u8>> = (0..size).map(|_| payload()).collect();
                let mut confirms = Vec::with_capacity(size);
                for body in &payloads {
                    let props = BasicProperties::default().with_delivery_mode(2);
                    let options = BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    };
                    confirms.push(
                        publish
                            .basic_publish(name.as_str().into(), name.as_str().into(), options, body, props)
                            .await
                            .unwrap(),
                    );
                }
                for c in futures::future::join_all(confirms).await {
                    assert!(c.unwrap().is_ack());
                }
            }
        })
    };
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        lat.push(latency(&d.data));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let elapsed = start.elapsed();
    sender.await.unwrap();
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    summarize(n, elapsed, lat)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n = env_usize("MQ_BENCH_MESSAGES", 20_000);
    let rounds = env_usize("MQ_BENCH_ROUNDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let broker = RabbitBroker::connect(RabbitConfig::from_url(&BrokerUrl::parse(&url()).unwrap()).unwrap()).await.unwrap();
        let conn = Connection::connect(&url(), ConnectionProperties::default()).await.unwrap();
        println!("mq-rabbit vs raw lapin on {}: {n} x 100-byte persistent messages per run, {rounds} rounds, interleaved", broker.config().endpoint());
        // Warm-up.
        sdk(&broker, n / 10, false).await;
        raw(&conn, n / 10, false).await;
        // Throughput: publishers as fast as confirms allow.
        let (mut s, mut r, mut m) = (Vec::new(), Vec::new(), Vec::new());
        // Latency: paced at 2,000 msg/s.
        let (mut sl, mut rl) = (Vec::new(), Vec::new());
        let paced_n = (n / 4).max(PACED_BATCH);
        for round in 0..rounds {
            if round % 2 == 0 {
                s.push(sdk(&broker, n, false).await);
                r.push(raw(&conn, n, false).await);
                m.push(sdk_with(&broker, n, false, true).await);
                sl.push(sdk(&broker, paced_n, true).await);
                rl.push(raw(&conn, paced_n, true).await);
            } else {
                m.push(sdk_with(&broker, n, false, true).await);
                r.push(raw(&conn, n, false).await);
                s.push(sdk(&broker, n, false).await);
                rl.push(raw(&conn, paced_n, true).await);
                sl.push(sdk(&broker, paced_n, true).await);
            }
        }
        let stat = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
        let (sr, rr) = (stat(&s, |x| x.rate), stat(&r, |x| x.rate));
        println!("throughput (flood): mq-rabbit {sr:>8.0} msg/s   lapin {rr:>8.0} msg/s   ratio {:.2} (target >= 0.9)", sr / rr);
        let mr = stat(&m, |x| x.rate);
        println!("recv_many(200) + ack_all (flood): mq-rabbit {mr:>8.0} msg/s   ratio (/ recv + ack) {:.2}   (/ lapin) {:.2}", mr / sr, mr / rr);
        let (s50, r50) = (stat(&sl, |x| x.p50 as f64), stat(&rl, |x| x.p50 as f64));
        let (s99, r99) = (stat(&sl, |x| x.p99 as f64), stat(&rl, |x| x.p99 as f64));
        println!("p50 latency (paced 2000 msg/s): mq-rabbit {s50:>7.0} us   lapin {r50:>7.0} us   ratio {:.2}", s50 / r50);
        println!("p99 latency (paced 2000 msg/s): mq-rabbit {s99:>7.0} us   lapin {r99:>7.0} us   ratio {:.2} (target <= 1.2)", s99 / r99);
        let (f50, g50) = (stat(&s, |x| x.p50 as f64), stat(&r, |x| x.p50 as f64));
        let (f99, g99) = (stat(&s, |x| x.p99 as f64), stat(&r, |x| x.p99 as f64));
        println!("latency under flood (queueing): p50 {f50:.0}/{g50:.0} us, p99 {f99:.0}/{g99:.0} us (mq-rabbit/lapin), ratios {:.2}/{:.2}", f50 / g50, f99 / g99);
        let show = |v: &[Run]| v.iter().map(|x| format!("{:.0}/{}/{}", x.rate, x.p50, x.p99)).collect::<Vec<_>>().join("  ");
        println!("    flood rounds mq-rabbit (msg/s/p50us/p99us): {}", show(&s));
        println!("    flood rounds lapin:                         {}", show(&r));
        println!("    flood rounds mq-rabbit recv_many:           {}", show(&m));
        println!("    paced rounds mq-rabbit:                     {}", show(&sl));
        println!("    paced rounds lapin:                         {}", show(&rl));
        broker.close().await.unwrap();
    });
}
