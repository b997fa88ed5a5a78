//! End-to-end latency at a fixed 2,000 messages a second (20 every 10 ms,
//! well below what any backend sustains here, so the figure is the time a
//! message takes, not the time it waits behind a backlog): each payload
//! starts with its send time, the consumer records its age on arrival.
//! mq against the raw client of each backend, same settings.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use mq_core::{Broker, BrokerUrl, Message, Producer, ProducerOptions, StartPosition, Subscription};

/// What a paced run measured: each message's age on arrival, in µs.
pub type Ages = Result<Vec<u64>, String>;

const BURST: usize = 20;
const PACE: Duration = Duration::from_millis(10);
const STALL: Duration = Duration::from_secs(30);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// A 100-byte payload stamped with the send time.
fn stamped() -> Vec<u8> {
    let mut p = vec![b'x'; 100];
    p[..8].copy_from_slice(&now_us().to_be_bytes());
    p
}

fn age(p: &[u8]) -> u64 {
    let stamp = p.get(..8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
    now_us().saturating_sub(stamp.unwrap_or(0))
}

/// Sends `n` stamped messages, `BURST` every `PACE`, through `send` (one
/// call per burst).
async fn paced<F, Fut>(n: usize, mut send: F) -> Result<(), String>
where
    F: FnMut(Vec<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..n / BURST {
        tick.tick().await;
        send((0..BURST).map(|_| stamped()).collect()).await?;
    }
    Ok(())
}

/// mq on any backend: `send_batch` of each burst; `recv` + `ack`. Returns
/// the ages and the topic (for the caller to clean up).
async fn mq(broker: Arc<dyn Broker>, n: usize, group: &str) -> Result<(Vec<u64>, String), String> {
    let topic = format!("peers-lat-{}", &mq_core::new_id()[24..]);
    let mut consumer = broker
        .subscribe(
            Subscription::new(&topic, group)
                .start(StartPosition::Earliest)
                .prefetch(200),
        )
        .await
        .map_err(err)?;
    let producer: Arc<dyn Producer> =
        Arc::from(broker.producer(ProducerOptions::default()).await.map_err(err)?);
    // One message there and back before the paced run, as the raw Kafka
    // consumer does: the run measures a consumer that is reading already,
    // not the start of its first fetch.
    producer
        .send(&topic, Message::new(stamped()))
        .await
        .map_err(err)?;
    let first = tokio::time::timeout(STALL, consumer.recv())
        .await
        .map_err(|_| "the first message did not come")?
        .map_err(err)?
        .ok_or("the consumer ended")?;
    first.ack().await.map_err(err)?;
    let sender = {
        let (topic, producer) = (topic.clone(), producer.clone());
        tokio::spawn(async move {
            paced(n, |burst| {
                let (topic, producer) = (topic.clone(), producer.clone());
                async move {
                    let batch = burst.into_iter().map(Message::new).collect();
                    producer.send_batch(&topic, batch).await.map(|_| ()).map_err(err)
                }
            })
            .await
        })
    };
    let mut ages = Vec::with_capacity(n);
    while ages.len() < n / BURST * BURST {
        let d = tokio::time::timeout(STALL, consumer.recv())
            .await
            .map_err(|_| format!("{} of {n} within {STALL:?}", ages.len()))?
            .map_err(err)?
            .ok_or("the consumer ended")?;
        ages.push(age(&d.message().payload));
        d.ack().await.map_err(err)?;
    }
    sender.await.map_err(err)??;
    consumer.close().await.map_err(err)?;
    drop(producer);
    broker.close().await.map_err(err)?;
    Ok((ages, topic))
}

/// mq-memory.
pub async fn mq_memory(n: usize, _: Bytes) -> Ages {
    Ok(mq(Arc::new(mq_memory::MemoryBroker::new()), n, "g").await?.0)
}

/// `tokio::sync::mpsc<Message>`, the same bursts.
pub async fn mpsc(n: usize, _: Bytes) -> Ages {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(1024);
    let sender = tokio::spawn(async move {
        paced(n, |burst| {
            let tx = tx.clone();
            async move {
                for p in burst {
                    tx.send(Message::new(p)).await.map_err(err)?;
                }
                Ok(())
            }
        })
        .await
    });
    let mut ages = Vec::with_capacity(n);
    while ages.len() < n / BURST * BURST {
        let m = rx.recv().await.ok_or("the channel closed")?;
        ages.push(age(&m.payload));
    }
    sender.await.map_err(err)??;
    Ok(ages)
}

/// mq-redis.
pub async fn mq_redis(n: usize, _: Bytes) -> Ages {
    let config = mq_redis::RedisConfig::from_url(&BrokerUrl::parse(&crate::redis::url()).map_err(err)?)
        .map_err(err)?;
    let broker = Arc::new(mq_redis::RedisBroker::connect(config).await.map_err(err)?);
    let (ages, topic) = mq(broker, n, "g").await?;
    crate::redis::cleanup(&topic).await?;
    Ok(ages)
}

/// Raw redis-rs: a pipeline of XADD per burst; XREADGROUP BLOCK + XACK.
pub async fn redis_rs(n: usize, _: Bytes) -> Ages {
    let key = format!("peers-lat-raw-{}", &mq_core::new_id()[24..]);
    let client = redis::Client::open(crate::redis::url()).map_err(err)?;
    let mut read = client.get_multiplexed_async_connection().await.map_err(err)?;
    crate::redis::create_group(&mut read, &key).await?;
    let write = client.get_multiplexed_async_connection().await.map_err(err)?;
    let sender = {
        let key = key.clone();
        tokio::spawn(async move {
            paced(n, |burst| {
                let (key, mut write) = (key.clone(), write.clone());
                async move {
                    let mut pipe = redis::pipe();
                    for p in burst {
                        pipe.cmd("XADD").arg(&key).arg("*").arg("p").arg(p);
                    }
                    pipe.query_async::<Vec<String>>(&mut write)
                        .await
                        .map(|_| ())
                        .map_err(err)
                }
            })
            .await
        })
    };
    let mut ages = Vec::with_capacity(n);
    while ages.len() < n / BURST * BURST {
        let reply = crate::redis::read_group(&mut read, &key, 200).await?;
        let mut ids = Vec::new();
        for e in reply.keys.into_iter().flat_map(|k| k.ids) {
            if let Some(redis::Value::BulkString(p)) = e.map.get("p") {
                ages.push(age(p));
            }
            ids.push(e.id);
        }
        if !ids.is_empty() {
            let _: i64 = redis::cmd("XACK")
                .arg(&key)
                .arg("g")
                .arg(&ids)
                .query_async(&mut read)
                .await
                .map_err(err)?;
        }
    }
    sender.await.map_err(err)??;
    crate::redis::cleanup(&key).await?;
    Ok(ages)
}

/// mq-rabbit.
pub async fn mq_rabbit(n: usize, _: Bytes) -> Ages {
    let config = mq_rabbit::RabbitConfig::from_url(&BrokerUrl::parse(&crate::rabbit::url()).map_err(err)?)
        .map_err(err)?;
    let broker = Arc::new(mq_rabbit::RabbitBroker::connect(config).await.map_err(err)?);
    let (ages, topic) = mq(broker, n, "g").await?;
    crate::rabbit::cleanup(&format!("{topic}.g"), Some(&topic)).await?;
    Ok(ages)
}

/// Raw lapin through a topic exchange, as mq goes: each burst published
/// persistent and mandatory, its confirms awaited together; prefetch 200,
/// an ack per message.
pub async fn lapin(n: usize, _: Bytes) -> Ages {
    use lapin::options::BasicAckOptions;
    use lapin::{Connection, ConnectionProperties};
    let name = format!("peers-lat-raw-{}", &mq_core::new_id()[24..]);
    let queue = format!("{name}.g");
    crate::rabbit::declare_queue(&queue, Some(&name)).await?;
    let conn = Connection::connect(&crate::rabbit::url(), ConnectionProperties::default())
        .await
        .map_err(err)?;
    let (mut consumer, publish) = crate::rabbit::raw_channels(&conn, &queue).await?;
    let sender = {
        let name = name.clone();
        tokio::spawn(async move {
            paced(n, |burst| {
                let (name, publish) = (name.clone(), publish.clone());
                async move {
                    crate::rabbit::publish_confirmed(
                        &publish,
                        &name,
                        crate::rabbit::Shape::TOPIC,
                        burst.iter().map(Vec::as_slice),
                    )
                    .await
                }
            })
            .await
        })
    };
    let mut ages = Vec::with_capacity(n);
    while ages.len() < n / BURST * BURST {
        let d = tokio::time::timeout(STALL, consumer.next())
            .await
            .map_err(|_| format!("{} of {n} within {STALL:?}", ages.len()))?
            .ok_or("the consumer ended")?
            .map_err(err)?;
        ages.push(age(&d.data));
        d.ack(BasicAckOptions::default()).await.map_err(err)?;
    }
    sender.await.map_err(err)??;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
    crate::rabbit::cleanup(&queue, Some(&name)).await?;
    Ok(ages)
}

/// How long a Kafka fetch of empty partitions is held, for both clients:
/// the mock cluster holds it that long even when a message arrives
/// meanwhile (a real broker answers at once), so with 100 ms the figures
/// are the mock's (p50 about 56 ms for both).
const FETCH_WAIT_MS: &str = "10";

/// mq-kafka (linger.ms=5, as the raw producer).
pub async fn mq_kafka(n: usize, _: Bytes) -> Ages {
    let broker =
        Arc::new(crate::kafka::mq_broker_with(&format!("&rdkafka.fetch.wait.max.ms={FETCH_WAIT_MS}")).await?);
    Ok(mq(broker, n, &format!("g-{}", &mq_core::new_id()[24..])).await?.0)
}

/// Raw rdkafka: a `FutureProducer` (idempotent, acks=all, linger.ms=5),
/// each burst's reports awaited together; a `StreamConsumer` of a new group
/// storing each offset (auto-commit).
pub async fn rdkafka(n: usize, _: Bytes) -> Ages {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Message as _;
    use rdkafka::producer::FutureRecord;
    let servers = crate::kafka::servers()?;
    let topic = format!("peers-lat-raw-{}", &mq_core::new_id()[24..]);
    let producer = crate::kafka::raw_producer()?;
    // The topic exists (and the group has joined) before the paced run.
    producer
        .send(
            FutureRecord::<(), _>::to(&topic).payload(&stamped()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| err(e))?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", format!("g-{}", &mq_core::new_id()[24..]))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()
        .map_err(err)?;
    consumer.subscribe(&[&topic]).map_err(err)?;
    // The first message (sent before) tells that the group has joined.
    let first = tokio::time::timeout(STALL, consumer.recv())
        .await
        .map_err(|_| "the group did not join")?
        .map_err(err)?;
    consumer
        .store_offset(first.topic(), first.partition(), first.offset())
        .map_err(err)?;
    drop(first);
    let sender = {
        let topic = topic.clone();
        tokio::spawn(async move {
            paced(n, |burst| {
                let (topic, producer) = (topic.clone(), producer.clone());
                async move {
                    let reports: Vec<_> = burst
                        .iter()
                        .map(|p| {
                            producer.send(
                                FutureRecord::<(), _>::to(&topic).payload(p),
                                Duration::from_secs(10),
                            )
                        })
                        .collect();
                    for r in futures::future::join_all(reports).await {
                        r.map_err(|(e, _)| err(e))?;
                    }
                    Ok(())
                }
            })
            .await
        })
    };
    let mut ages = Vec::with_capacity(n);
    while ages.len() < n / BURST * BURST {
        let m = tokio::time::timeout(STALL, consumer.recv())
            .await
            .map_err(|_| format!("{} of {n} within {STALL:?}", ages.len()))?
            .map_err(err)?;
        ages.push(age(m.payload().unwrap_or_default()));
        consumer
            .store_offset(m.topic(), m.partition(), m.offset())
            .map_err(err)?;
    }
    sender.await.map_err(err)??;
    Ok(ages)
}
