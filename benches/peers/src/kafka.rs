//! Kafka on librdkafka's mock cluster (3 brokers, in this process), or on
//! `MQ_TEST_KAFKA_BROKERS`: produce (idempotent, acks=all, linger.ms=5,
//! 1,000 in flight) and consume + ack by a new group, through mq-kafka,
//! ruststream-rdkafka and raw rdkafka. Every contender's consume reads
//! messages mq wrote (with mq's headers); the raw consumer reads every
//! header, as mq does (librdkafka parses them on first access, which is
//! most of the difference to a consumer that reads none).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use mq_core::{Broker, BrokerUrl, Message, Producer, ProducerOptions, StartPosition, Subscription};
use mq_kafka::{KafkaBroker, KafkaConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer as _};
use ruststream::{Broker as _, IncomingMessage, OutgoingMessage, Publisher, Subscriber};
use ruststream_rdkafka::{Commit, KafkaPublish, KafkaTopic, StartOffset};

use crate::Outcome;

const IN_FLIGHT: usize = 1000;
const LINGER_MS: &str = "5";
const STALL: Duration = Duration::from_secs(60);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn unique(what: &str) -> String {
    format!("peers-{what}-{}", &mq_core::new_id()[24..])
}

struct Cluster {
    servers: String,
    /// The mock cluster lives as long as the client that made it.
    _owner: Option<BaseProducer>,
}

fn cluster() -> Result<&'static Cluster, String> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| match std::env::var("MQ_TEST_KAFKA_BROKERS") {
            Ok(s) if !s.trim().is_empty() => Ok(Cluster {
                servers: s,
                _owner: None,
            }),
            _ => {
                let owner: BaseProducer = ClientConfig::new()
                    .set("test.mock.num.brokers", "3")
                    .create()
                    .map_err(err)?;
                let servers = owner
                    .client()
                    .mock_cluster()
                    .ok_or("no mock cluster")?
                    .bootstrap_servers();
                Ok(Cluster {
                    servers,
                    _owner: Some(owner),
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The bootstrap servers of the cluster the benchmark uses.
pub fn servers() -> Result<String, String> {
    Ok(cluster()?.servers.clone())
}

fn mock() -> bool {
    !std::env::var("MQ_TEST_KAFKA_BROKERS").is_ok_and(|s| !s.trim().is_empty())
}

pub async fn mq_broker() -> Result<KafkaBroker, String> {
    mq_broker_with("").await
}

/// mq-kafka with more URL options (`&name=value...`).
pub async fn mq_broker_with(options: &str) -> Result<KafkaBroker, String> {
    let c = cluster()?;
    let extra = if mock() { "&create_topics=false" } else { "" };
    let url = format!(
        "kafka://{}?rdkafka.linger.ms={LINGER_MS}{extra}{options}",
        c.servers
    );
    KafkaBroker::connect(KafkaConfig::from_url(&BrokerUrl::parse(&url).map_err(err)?).map_err(err)?)
        .await
        .map_err(err)
}

pub fn raw_producer() -> Result<FutureProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", &cluster()?.servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", LINGER_MS)
        .create()
        .map_err(err)
}

fn keyed(i: usize) -> String {
    format!("k{}", i % 16)
}

/// mq-kafka: `send_batch` of 1,000 keyed messages.
pub async fn mq_produce(n: usize, payload: Bytes) -> Outcome {
    let broker = mq_broker().await?;
    let topic = unique("mq");
    let producer: Box<dyn Producer> = broker.producer(ProducerOptions::default()).await.map_err(err)?;
    // The topic exists before the timing starts.
    producer
        .send(&topic, Message::new(payload.clone()))
        .await
        .map_err(err)?;
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Message> = (0..IN_FLIGHT.min(n - sent))
            .map(|i| Message::new(payload.clone()).with_key(keyed(sent + i)))
            .collect();
        sent += batch.len();
        producer.send_batch(&topic, batch).await.map_err(err)?;
    }
    let took = start.elapsed();
    broker.close().await.map_err(err)?;
    Ok(took)
}

/// Raw rdkafka: 1,000 `FutureRecord`s in flight, their reports awaited
/// together; `with_id`: each record also carries what mq's does (an
/// `mq-id` header with a new id, the message's timestamp), the fair
/// ceiling for mq's produce.
pub async fn raw_produce(n: usize, payload: Bytes, with_id: bool) -> Outcome {
    let producer = raw_producer()?;
    let topic = unique("raw");
    raw_send(&producer, &topic, 1, &payload, with_id).await?;
    let start = Instant::now();
    raw_send(&producer, &topic, n, &payload, with_id).await?;
    Ok(start.elapsed())
}

async fn raw_send(
    producer: &FutureProducer,
    topic: &str,
    n: usize,
    payload: &[u8],
    with_id: bool,
) -> Result<(), String> {
    let mut sent = 0;
    while sent < n {
        let mut pending = Vec::with_capacity(IN_FLIGHT);
        for i in 0..IN_FLIGHT.min(n - sent) {
            let key = keyed(sent + i);
            let mut tries = 0;
            let id = with_id.then(mq_core::new_id);
            loop {
                let mut record = FutureRecord::to(topic).payload(payload).key(&key);
                if let Some(id) = &id {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                        .unwrap_or_default();
                    record = record
                        .headers(rdkafka::message::OwnedHeaders::new_with_capacity(2).insert(
                            rdkafka::message::Header {
                                key: "mq-id",
                                value: Some(id.as_bytes()),
                            },
                        ))
                        .timestamp(now);
                }
                match producer.send_result(record) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err((e, _)) if tries < 10_000 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(err(e)),
                }
            }
        }
        sent += pending.len();
        for r in futures::future::join_all(pending).await {
            r.map_err(err)?.map_err(|(e, _)| err(e))?;
        }
    }
    Ok(())
}

fn ruststream_broker() -> Result<ruststream_rdkafka::KafkaBroker, String> {
    Ok(ruststream_rdkafka::KafkaBroker::new([cluster()?.servers.clone()])
        .producer_config("enable.idempotence", "true")
        .producer_config("acks", "all")
        .producer_config("linger.ms", LINGER_MS))
}

/// ruststream-rdkafka: 1,000 concurrent publishes (each awaits its
/// delivery report; it has no batch publish).
pub async fn ruststream_produce(n: usize, payload: Bytes) -> Outcome {
    let broker = ruststream_broker()?.connect().await.map_err(err)?;
    let publisher = broker.publisher(KafkaPublish::default());
    let topic = unique("rs");
    publisher
        .publish(OutgoingMessage::new(&topic, &payload[..]), None)
        .await
        .map_err(err)?;
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = IN_FLIGHT.min(n - sent);
        let sends: FuturesUnordered<_> = (0..k)
            .map(|_| publisher.publish(OutgoingMessage::new(&topic, &payload[..]), None))
            .collect();
        for r in sends.collect::<Vec<_>>().await {
            r.map_err(err)?;
        }
        sent += k;
    }
    Ok(start.elapsed())
}

/// Writes `n` messages through mq (with its headers) to a new topic, for a
/// consume run (outside the timing).
async fn fill(n: usize, payload: &Bytes) -> Result<String, String> {
    let broker = mq_broker().await?;
    let topic = unique("fill");
    let producer: Box<dyn Producer> = broker.producer(ProducerOptions::default()).await.map_err(err)?;
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Message> = (0..IN_FLIGHT.min(n - sent))
            .map(|i| Message::new(payload.clone()).with_key(keyed(sent + i)))
            .collect();
        sent += batch.len();
        producer.send_batch(&topic, batch).await.map_err(err)?;
    }
    broker.close().await.map_err(err)?;
    Ok(topic)
}

/// From the first message to the last: the group join is not timed.
struct Clock(Option<Instant>);

impl Clock {
    fn tick(&mut self) {
        self.0.get_or_insert_with(Instant::now);
    }
    fn took(&self) -> Duration {
        self.0.map(|s| s.elapsed()).unwrap_or_default()
    }
}

/// mq-kafka, a new group: `recv` + `ack`, or `recv_many(500)` + `ack_all`
/// (prefetch 1,000).
pub async fn mq_consume(n: usize, payload: Bytes, many: bool) -> Outcome {
    let topic = fill(n, &payload).await?;
    let broker = mq_broker().await?;
    let mut consumer = broker
        .subscribe(
            Subscription::new(&topic, unique("g"))
                .start(StartPosition::Earliest)
                .prefetch(1000),
        )
        .await
        .map_err(err)?;
    let mut clock = Clock(None);
    let mut seen = 0;
    while seen < n {
        if many {
            let batch = consumer
                .recv_many(500, STALL)
                .await
                .map_err(err)?
                .ok_or("the consumer ended")?;
            if batch.is_empty() {
                return Err(format!("consumed {seen} of {n}: nothing more within {STALL:?}"));
            }
            clock.tick();
            seen += batch.len();
            mq_core::ack_all(&batch).await.map_err(err)?;
        } else {
            let d = tokio::time::timeout(STALL, consumer.recv())
                .await
                .map_err(|_| format!("consumed {seen} of {n}: nothing more within {STALL:?}"))?
                .map_err(err)?
                .ok_or("the consumer ended")?;
            clock.tick();
            d.ack().await.map_err(err)?;
            seen += 1;
        }
    }
    let took = clock.took();
    consumer.close().await.map_err(err)?;
    broker.close().await.map_err(err)?;
    Ok(took)
}

/// ruststream-rdkafka, a new group from the earliest offset, with
/// per-message acks (`Commit::Tracked`, its at-least-once setting).
pub async fn ruststream_consume(n: usize, payload: Bytes) -> Outcome {
    let topic = fill(n, &payload).await?;
    let broker = ruststream_broker()?.connect().await.map_err(err)?;
    let mut subscriber = broker
        .subscribe_with(
            KafkaTopic::new(&topic)
                .group(unique("g"))
                .start(StartOffset::Earliest)
                .commit(Commit::Tracked),
        )
        .await
        .map_err(err)?;
    let mut clock = Clock(None);
    {
        let mut stream = std::pin::pin!(subscriber.stream());
        let mut seen = 0;
        while seen < n {
            let m = tokio::time::timeout(STALL, stream.next())
                .await
                .map_err(|_| format!("consumed {seen} of {n}: nothing more within {STALL:?}"))?
                .ok_or("the stream ended")?
                .map_err(err)?;
            clock.tick();
            m.ack().await.map_err(err)?;
            seen += 1;
        }
    }
    let took = clock.took();
    drop(subscriber);
    Ok(took)
}

/// Raw rdkafka, a new group: `BaseConsumer::poll` on a thread of its own,
/// every header read, the offset stored per message (auto-commit), with
/// the settings mq-kafka gives its consumer. With `owned`, each message is
/// also copied into owned values (payload, key, every header as strings),
/// into the types an mq `Message` holds them in: what is left between that and mq is mq's
/// own (the hand-over between threads, the ack bookkeeping).
pub async fn raw_consume(n: usize, payload: Bytes, owned: bool) -> Outcome {
    let topic = fill(n, &payload).await?;
    let servers = cluster()?.servers.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("group.id", unique("g"))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()
            .map_err(err)?;
        consumer.subscribe(&[&topic]).map_err(err)?;
        let deadline = Instant::now() + STALL * 2;
        let mut clock = Clock(None);
        let mut seen = 0;
        while seen < n {
            if Instant::now() > deadline {
                return Err(format!("consumed {seen} of {n} within {:?}", STALL * 2));
            }
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.map_err(err)?;
                clock.tick();
                let read: usize = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                            .sum()
                    })
                    .unwrap_or_default();
                std::hint::black_box((read, m.payload()));
                if owned {
                    // Payload, key and headers, in the types of an mq `Message`.
                    let headers: std::collections::BTreeMap<String, String> = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| {
                                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                    (h.key.to_owned(), value.into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                    std::hint::black_box((payload, key, headers));
                }
                consumer
                    .store_offset(m.topic(), m.partition(), m.offset())
                    .map_err(err)?;
                seen += 1;
            }
        }
        Ok(clock.took())
    })
    .await
    .map_err(err)?
}
