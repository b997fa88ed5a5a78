//! mq-kafka against raw rdkafka on the same cluster, in one run, interleaved
//! rounds, identical producer settings (idempotent, `acks=all`, the same
//! `linger.ms`): 100-byte messages.
//!
//! - produce: batches of 1,000, every delivery report of a batch awaited
//!   together (raw: `FutureProducer::send_result`, then the futures; mq:
//!   `send_batch`).
//! - consume+ack: a new group reads the topic from the earliest offset and
//!   acks each message (raw: `BaseConsumer` with `enable.auto.offset.store=false`
//!   and `store_offset` per message, auto-commit every second,
//!   `fetch.wait.max.ms=100` as mq-kafka sets it; mq: `recv` + `ack`,
//!   prefetch 1,000). Timed from the first message to the last. Two more
//!   raw consumers read the topic mq produced (the same messages, with mq's
//!   id header): "raw-headers" also reads each message's headers (as any
//!   consumer of an id header must; librdkafka parses them only when asked),
//!   "raw-owned" also copies each message into owned values (payload, key,
//!   headers), as mq-kafka's deliveries hold them.
//!
//! Prints msgs/s for both and the ratios (median of the rounds), for
//! `linger.ms` 5 and 0.
//!
//! Run: `cargo bench -p mq-kafka --bench throughput`. The cluster is
//! `MQ_TEST_KAFKA_BROKERS` when set, else librdkafka's embedded mock cluster
//! (in process, so it shares the CPU with both clients).
//! `MQ_BENCH_MESSAGES` (default 100,000), `MQ_BENCH_ROUNDS` (default 5);
//! `MQ_BENCH_KAFKA_EXTRA` is appended to mq's URL (for instance
//! `&rdkafka.fetch.queue.backoff.ms=1000`, to try a librdkafka setting).
//! mq also consumes with `recv_many(500)` (`MQ_BENCH_KAFKA_BATCH`) and one
//! `ack_all` per batch.
//! Each round also prints every consumer's longest wait between two
//! messages after the first (ms): one stall moves a round more than any
//! per-message cost.
//! Raw rdkafka reads 100,000 messages from the mock in about a tenth of a
//! second, so a single stall of 20 to 50 ms (seen on this two-core machine)
//! still moves a round a lot; fewer messages make that worse, and the mock
//! cluster drops a topic's oldest messages past about 170,000.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mq_core::{Broker, BrokerUrl, Message, ProducerOptions, StartPosition, Subscription};
use mq_kafka::{KafkaBroker, KafkaConfig};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer as _};

const BATCH: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn unique(what: &str) -> String {
    format!("bench-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// The options both clients get (plus mq's own on the mock).
fn producer_config(servers: &str, linger: u32) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.to_string());
    c
}

async fn raw_produce(producer: &FutureProducer, topic: &str, n: usize) -> f64 {
    let payload = vec![b'x'; 100];
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut pending = Vec::with_capacity(BATCH);
        for i in 0..BATCH.min(n - sent) {
            let key = format!("k{}", (sent + i) % 16);
            loop {
                match producer.send_result(FutureRecord::to(topic).payload(&payload).key(&key)) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err((e, _)) => {
                        assert!(format!("{e}").contains("Queue full"), "{e}");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        sent += pending.len();
        for r in futures::future::join_all(pending).await {
            r.unwrap().unwrap();
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn mq_produce(broker: &KafkaBroker, topic: &str, n: usize) -> f64 {
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Message> = (0..BATCH.min(n - sent))
            .map(|i| Message::new(vec![b'x'; 100]).with_key(format!("k{}", (sent + i) % 16)))
            .collect();
        sent += batch.len();
        producer.send_batch(topic, batch).await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Creates `topic` as mq-kafka creates its topics on a real cluster.
async fn create_topic(servers: &str, topic: &str, partitions: i32, replication: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for result in admin.create_topics([&new], &AdminOptions::new()).await.unwrap() {
        result.unwrap();
    }
}

/// What a raw consumer does with each message besides storing its offset.
#[derive(Clone, Copy)]
enum Read {
    /// Nothing.
    Plain,
    /// Reads every header (librdkafka parses them when first asked).
    Headers,
    /// Copies payload, key and every header into owned values, which is
    /// what mq-kafka's deliveries hold.
    Owned,
}

/// Raw rdkafka's consumer with the settings mq-kafka gives its own.
/// A consume run: messages a second from the first message to the last,
/// and the longest wait between two messages after the first (a stall).
#[derive(Clone, Copy)]
struct Consumed {
    rate: f64,
    stall_ms: u128,
}

/// The longest gap between the calls of `seen` after the first.
#[derive(Default)]
struct Gaps {
    last: Option<Instant>,
    longest: Duration,
}

impl Gaps {
    fn seen(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last {
            self.longest = self.longest.max(now - last);
        }
        self.last = Some(now);
    }
}

fn raw_consume(servers: &str, topic: &str, n: usize, read: Read) -> Consumed {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("raw"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = 0;
    let mut started = None;
    let mut gaps = Gaps::default();
    while got < n {
        assert!(Instant::now() < deadline, "raw consumer: {got} of {n} in 120 s");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            started.get_or_insert_with(Instant::now);
            gaps.seen();
            if let Read::Headers = read {
                let names: usize = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                            .sum()
                    })
                    .unwrap_or_default();
                std::hint::black_box(names);
            }
            if let Read::Owned = read {
                let payload = m.payload().map(<[u8]>::to_vec);
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let headers: Vec<(String, String)> = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_string(), v.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                std::hint::black_box((payload, key, headers));
            }
            consumer
                .store_offset(m.topic(), m.partition(), m.offset())
                .unwrap();
            got += 1;
        }
    }
    Consumed {
        rate: (n - 1) as f64 / started.unwrap().elapsed().as_secs_f64(),
        stall_ms: gaps.longest.as_millis(),
    }
}

/// mq consuming a new group: one `recv` and `ack` at a time, or (`many`)
/// `recv_many(500)` and one `ack_all` per batch.
async fn mq_consume(broker: &KafkaBroker, topic: &str, n: usize, many: bool) -> Consumed {
    let mut consumer = broker
        .subscribe(
            Subscription::new(topic, unique("mq"))
                .start(StartPosition::Earliest)
                .prefetch(1000),
        )
        .await
        .unwrap();
    let mut got = 0;
    let mut started = None;
    let mut gaps = Gaps::default();
    // One bound for the whole read (the raw side's is its poll timeout).
    let read = async {
        while got < n {
            if many {
                let batch = consumer
                    .recv_many(env_usize("MQ_BENCH_KAFKA_BATCH", 500), Duration::from_secs(120))
                    .await
                    .unwrap()
                    .expect("the consumer ended early");
                started.get_or_insert_with(Instant::now);
                gaps.seen();
                got += batch.len();
                mq_core::ack_all(&batch).await.unwrap();
            } else {
                let d = consumer.recv().await.unwrap().expect("the consumer ended early");
                started.get_or_insert_with(Instant::now);
                gaps.seen();
                d.ack().await.unwrap();
                got += 1;
            }
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(120), read).await;
    assert!(finished.is_ok(), "mq consumer: {got} of {n} in 120 s");
    let rate = (n - 1) as f64 / started.unwrap().elapsed().as_secs_f64();
    consumer.close().await.unwrap();
    Consumed {
        rate,
        stall_ms: gaps.longest.as_millis(),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env_usize("MQ_BENCH_MESSAGES", 100_000);
    let rounds = env_usize("MQ_BENCH_ROUNDS", 5).max(1);
    // The mock cluster lives as long as its owner client.
    let real_cluster = std::env::var("MQ_TEST_KAFKA_BROKERS").is_ok_and(|s| !s.trim().is_empty());
    let (servers, _owner, mq_extra) = match std::env::var("MQ_TEST_KAFKA_BROKERS") {
        Ok(s) if !s.trim().is_empty() => (s, None, String::new()),
        _ => {
            let owner: BaseProducer = ClientConfig::new()
                .set("test.mock.num.brokers", "3")
                .create()
                .unwrap();
            let servers = owner.client().mock_cluster().unwrap().bootstrap_servers();
            (servers, Some(owner), "&create_topics=false".to_string())
        }
    };
    println!(
        "mq-kafka vs raw rdkafka on {servers}: {n} messages of 100 bytes, {rounds} rounds, \
         interleaved; median msgs/s"
    );
    for linger in [5u32, 0] {
        let raw_producer: FutureProducer = producer_config(&servers, linger).create().unwrap();
        let url = format!(
            "kafka://{servers}?rdkafka.linger.ms={linger}{mq_extra}{}",
            std::env::var("MQ_BENCH_KAFKA_EXTRA").unwrap_or_default()
        );
        let broker = KafkaBroker::connect(KafkaConfig::from_url(&BrokerUrl::parse(&url).unwrap()).unwrap())
            .await
            .unwrap();
        let mut mm = Vec::new();
        let (mut rp, mut mp, mut rc, mut hc, mut oc, mut mc) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for round in 0..rounds {
            let (raw_topic, mq_topic) = (unique("raw"), unique("mq"));
            // Both topics exist before timing: mq creates its own (on a
            // real cluster through the admin API), raw's is created like it
            // there, and on the mock cluster on first use.
            if real_cluster {
                let config = broker.config();
                create_topic(&servers, &raw_topic, config.partitions, config.replication).await;
            }
            raw_produce(&raw_producer, &raw_topic, 1).await;
            mq_produce(&broker, &mq_topic, 1).await;
            // Alternate which side goes first.
            if round % 2 == 0 {
                rp.push(raw_produce(&raw_producer, &raw_topic, n).await);
                mp.push(mq_produce(&broker, &mq_topic, n).await);
            } else {
                mp.push(mq_produce(&broker, &mq_topic, n).await);
                rp.push(raw_produce(&raw_producer, &raw_topic, n).await);
            }
            // Each consumer is a new group reading n + 1 messages: raw its
            // own topic, raw-headers, raw-owned and mq the topic mq produced
            // (the same messages, with mq's headers).
            let raw = |topic: &str, read: Read| {
                let (s, t) = (servers.clone(), topic.to_string());
                tokio::task::spawn_blocking(move || raw_consume(&s, &t, n + 1, read))
            };
            if round % 2 == 0 {
                rc.push(raw(&raw_topic, Read::Plain).await.unwrap());
                hc.push(raw(&mq_topic, Read::Headers).await.unwrap());
                oc.push(raw(&mq_topic, Read::Owned).await.unwrap());
                mc.push(mq_consume(&broker, &mq_topic, n + 1, false).await);
                mm.push(mq_consume(&broker, &mq_topic, n + 1, true).await);
            } else {
                mm.push(mq_consume(&broker, &mq_topic, n + 1, true).await);
                mc.push(mq_consume(&broker, &mq_topic, n + 1, false).await);
                oc.push(raw(&mq_topic, Read::Owned).await.unwrap());
                hc.push(raw(&mq_topic, Read::Headers).await.unwrap());
                rc.push(raw(&raw_topic, Read::Plain).await.unwrap());
            }
            println!(
                "  linger.ms={linger} round {}: produce raw {:.0} mq {:.0}; consume+ack raw {:.0} raw-headers {:.0} raw-owned {:.0} mq {:.0} mq recv_many {:.0}; \
                 longest stall ms raw {} {} {} mq {} {}",
                round + 1,
                rp[round],
                mp[round],
                rc[round].rate,
                hc[round].rate,
                oc[round].rate,
                mc[round].rate,
                mm[round].rate,
                rc[round].stall_ms,
                hc[round].stall_ms,
                oc[round].stall_ms,
                mc[round].stall_ms,
                mm[round].stall_ms,
            );
        }
        let rates = |v: Vec<Consumed>| v.into_iter().map(|c| c.rate).collect::<Vec<_>>();
        let (rc, hc, oc, mc, mm) = (rates(rc), rates(hc), rates(oc), rates(mc), rates(mm));
        let mm = median(mm);
        let (rp, mp, rc, hc, oc, mc) = (
            median(rp),
            median(mp),
            median(rc),
            median(hc),
            median(oc),
            median(mc),
        );
        println!(
            "linger.ms={linger}  produce: raw {rp:.0} msg/s, mq-kafka {mp:.0} msg/s, ratio {:.2} (target >= 0.9)",
            mp / rp
        );
        println!(
            "linger.ms={linger}  consume+ack: raw {rc:.0} msg/s, mq-kafka {mc:.0} msg/s, ratio {:.2} (target >= 0.8); \
             raw reading headers {hc:.0} msg/s, ratio to it {:.2}; raw reading owned messages {oc:.0} msg/s, ratio to it {:.2}",
            mc / rc,
            mc / hc,
            mc / oc
        );
        println!(
            "linger.ms={linger}  consume+ack with recv_many({}) + ack_all: {mm:.0} msg/s, ratio to recv + ack {:.2}, \
             to raw reading headers {:.2}",
            env_usize("MQ_BENCH_KAFKA_BATCH", 500),
            mm / mc,
            mm / hc
        );
        broker.close().await.unwrap();
    }
}
