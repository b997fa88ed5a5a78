//! Redis Streams: sends awaited one by one, 100 at a time, and consume +
//! ack, through mq-redis, ruststream-fred, omniqueue's Redis Streams backend
//! and raw redis-rs. Every round writes its own keys and deletes them after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use mq_core::{Broker, BrokerUrl, Message, Producer, ProducerOptions, StartPosition, Subscription};
use mq_redis::{RedisBroker, RedisConfig};
use redis::aio::MultiplexedConnection;
use ruststream::{Broker as _, IncomingMessage, OutgoingMessage, Publisher, Subscriber};
use ruststream_fred::{RedisStream, StreamStart};

use crate::Outcome;

/// The Redis the benchmark uses (a database of its own on the shared
/// server; nothing is flushed, each round deletes its own keys).
pub fn url() -> String {
    std::env::var("MQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into())
}

fn unique(what: &str) -> String {
    format!("peers-{what}-{}", &mq_core::new_id()[24..])
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn raw_conn() -> Result<MultiplexedConnection, String> {
    redis::Client::open(url())
        .map_err(err)?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| {
            format!(
                "Redis at {} does not answer ({e}); start one or set MQ_TEST_REDIS_URL",
                url()
            )
        })
}

/// Deletes every key that holds `tag` (each round's keys share one).
pub async fn cleanup(tag: &str) -> Result<(), String> {
    let mut conn = raw_conn().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{tag}*"))
        .query_async(&mut conn)
        .await
        .map_err(err)?;
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
    }
    Ok(())
}

async fn mq_broker() -> Result<Arc<RedisBroker>, String> {
    let config = RedisConfig::from_url(&BrokerUrl::parse(&url()).map_err(err)?).map_err(err)?;
    Ok(Arc::new(RedisBroker::connect(config).await.map_err(err)?))
}

async fn fred() -> Result<ruststream_fred::ConnectedRedisBroker, String> {
    ruststream_fred::RedisBroker::standalone(url())
        .connect()
        .await
        .map_err(err)
}

fn omni_config(tag: &str) -> omniqueue::backends::RedisConfig {
    omniqueue::backends::RedisConfig {
        dsn: url(),
        max_connections: 8,
        reinsert_on_nack: false,
        queue_key: format!("{tag}:q"),
        delayed_queue_key: format!("{tag}:delayed"),
        delayed_lock_key: format!("{tag}:lock"),
        consumer_group: "g".into(),
        consumer_name: "c".into(),
        payload_key: "p".into(),
        ack_deadline_ms: 30_000,
        dlq_config: None,
        sentinel_config: None,
    }
}

/// How a send workload sends: awaited one by one, or 100 at a time.
#[derive(Clone, Copy, Debug)]
pub enum Sends {
    /// Each send awaited before the next.
    One,
    /// 100 messages per call (a batch where the SDK has one, else 100
    /// concurrent sends).
    Hundred,
}

/// raw redis-rs: XADD with the fields mq writes (id, t, p); 100 at a
/// time in one pipeline.
pub async fn raw_send(n: usize, payload: Bytes, how: Sends) -> Outcome {
    let mut conn = raw_conn().await?;
    let tag = unique("raw");
    let start = Instant::now();
    match how {
        Sends::One => {
            for _ in 0..n {
                let m = Message::new(payload.clone());
                let _: String = redis::cmd("XADD")
                    .arg(&tag)
                    .arg("*")
                    .arg("id")
                    .arg(&m.id)
                    .arg("t")
                    .arg(m.timestamp_millis())
                    .arg("p")
                    .arg(&m.payload[..])
                    .query_async(&mut conn)
                    .await
                    .map_err(err)?;
            }
        }
        Sends::Hundred => {
            for _ in 0..n / 100 {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    let m = Message::new(payload.clone());
                    pipe.cmd("XADD")
                        .arg(&tag)
                        .arg("*")
                        .arg("id")
                        .arg(&m.id)
                        .arg("t")
                        .arg(m.timestamp_millis())
                        .arg("p")
                        .arg(&m.payload[..]);
                }
                let _: Vec<String> = pipe.query_async(&mut conn).await.map_err(err)?;
            }
        }
    }
    let took = start.elapsed();
    cleanup(&tag).await?;
    Ok(took)
}

/// mq-redis: `send`, or `send_batch` of 100.
pub async fn mq_send(n: usize, payload: Bytes, how: Sends) -> Outcome {
    let broker = mq_broker().await?;
    let producer: Box<dyn Producer> = broker.producer(ProducerOptions::default()).await.map_err(err)?;
    let topic = unique("mq");
    let start = Instant::now();
    match how {
        Sends::One => {
            for _ in 0..n {
                producer
                    .send(&topic, Message::new(payload.clone()))
                    .await
                    .map_err(err)?;
            }
        }
        Sends::Hundred => {
            for _ in 0..n / 100 {
                let batch = (0..100).map(|_| Message::new(payload.clone())).collect();
                producer.send_batch(&topic, batch).await.map_err(err)?;
            }
        }
    }
    let took = start.elapsed();
    broker.close().await.map_err(err)?;
    cleanup(&topic).await?;
    Ok(took)
}

/// ruststream-fred: `publish`, or 100 concurrent publishes (it has no
/// batch publish; fred pipelines concurrent commands on its connection).
pub async fn ruststream_send(n: usize, payload: Bytes, how: Sends) -> Outcome {
    let broker = fred().await?;
    let publisher = broker.publisher();
    let key = unique("rs");
    let start = Instant::now();
    match how {
        Sends::One => {
            for _ in 0..n {
                publisher
                    .publish(OutgoingMessage::new(&key, &payload[..]), None)
                    .await
                    .map_err(err)?;
            }
        }
        Sends::Hundred => {
            for _ in 0..n / 100 {
                let sends: FuturesUnordered<_> = (0..100)
                    .map(|_| publisher.publish(OutgoingMessage::new(&key, &payload[..]), None))
                    .collect();
                for r in sends.collect::<Vec<_>>().await {
                    r.map_err(err)?;
                }
            }
        }
    }
    let took = start.elapsed();
    cleanup(&key).await?;
    Ok(took)
}

/// omniqueue (Redis Streams backend): `send_raw`, or 100 concurrent ones
/// (no batch send; its producer holds a pool of 8 connections).
pub async fn omniqueue_send(n: usize, payload: Bytes, how: Sends) -> Outcome {
    let tag = unique("omni");
    let producer = omniqueue::backends::RedisBackend::builder(omni_config(&tag))
        .build_producer()
        .await
        .map_err(err)?;
    let start = Instant::now();
    match how {
        Sends::One => {
            for _ in 0..n {
                producer.send_raw(&payload).await.map_err(err)?;
            }
        }
        Sends::Hundred => {
            for _ in 0..n / 100 {
                let sends: FuturesUnordered<_> = (0..100).map(|_| producer.send_raw(&payload)).collect();
                for r in sends.collect::<Vec<_>>().await {
                    r.map_err(err)?;
                }
            }
        }
    }
    let took = start.elapsed();
    drop(producer);
    cleanup(&tag).await?;
    Ok(took)
}

/// Creates group `g` of stream `key` from its start (and the stream).
pub async fn create_group(conn: &mut MultiplexedConnection, key: &str) -> Result<(), String> {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .map_err(err)
}

/// XREADGROUP of up to `count` new entries of `key` for consumer `c` of
/// group `g`, blocking up to a second.
pub async fn read_group(
    conn: &mut MultiplexedConnection,
    key: &str,
    count: usize,
) -> Result<redis::streams::StreamReadReply, String> {
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(conn)
        .await
        .map_err(err)
}

/// Fills `topic` with `n` messages through mq-redis (outside the timing).
async fn mq_fill(broker: &RedisBroker, topic: &str, n: usize, payload: &Bytes) -> Result<(), String> {
    let producer = broker.producer(ProducerOptions::default()).await.map_err(err)?;
    for _ in 0..n / 100 {
        let batch = (0..100).map(|_| Message::new(payload.clone())).collect();
        producer.send_batch(topic, batch).await.map_err(err)?;
    }
    Ok(())
}

/// raw redis-rs: XREADGROUP COUNT 100, then one XACK for the 100 ids, of
/// messages mq wrote.
pub async fn raw_consume(n: usize, payload: Bytes) -> Outcome {
    let broker = mq_broker().await?;
    let topic = unique("raw");
    let key = format!("mq:{topic}");
    let mut conn = raw_conn().await?;
    create_group(&mut conn, &key).await?;
    mq_fill(&broker, &topic, n, &payload).await?;
    let start = Instant::now();
    let mut seen = 0;
    while seen < n {
        let reply = read_group(&mut conn, &key, 100).await?;
        let ids: Vec<String> = reply.keys.into_iter().flat_map(|k| k.ids).map(|e| e.id).collect();
        if ids.is_empty() {
            return Err(format!("consumed {seen} of {n}: nothing more within 1 s"));
        }
        seen += ids.len();
        let _: i64 = redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
    }
    let took = start.elapsed();
    broker.close().await.map_err(err)?;
    cleanup(&topic).await?;
    Ok(took)
}

/// mq-redis: `recv` + `ack` (prefetch 200), or `recv_many(200)` +
/// `ack_all`; the time includes `close`, which waits for every ack.
pub async fn mq_consume(n: usize, payload: Bytes, many: bool) -> Outcome {
    let broker = mq_broker().await?;
    let topic = unique("mq");
    let sub = Subscription::new(&topic, "g")
        .start(StartPosition::Earliest)
        .prefetch(200);
    let mut consumer = broker.subscribe(sub).await.map_err(err)?;
    mq_fill(&broker, &topic, n, &payload).await?;
    let start = Instant::now();
    let mut seen = 0;
    while seen < n {
        if many {
            let batch = consumer
                .recv_many(200, Duration::from_secs(5))
                .await
                .map_err(err)?
                .ok_or("the consumer ended")?;
            if batch.is_empty() {
                return Err(format!("consumed {seen} of {n}: nothing more within 5 s"));
            }
            seen += batch.len();
            mq_core::ack_all(&batch).await.map_err(err)?;
        } else {
            let d = consumer.recv().await.map_err(err)?.ok_or("the consumer ended")?;
            d.ack().await.map_err(err)?;
            seen += 1;
        }
    }
    consumer.close().await.map_err(err)?;
    let took = start.elapsed();
    broker.close().await.map_err(err)?;
    cleanup(&topic).await?;
    Ok(took)
}

/// ruststream-fred: the subscription's stream, with up to 200 acks in
/// flight at once (its acks are awaited XACKs; one at a time it is far
/// slower, which would not be a fair comparison).
pub async fn ruststream_consume(n: usize, payload: Bytes) -> Outcome {
    let broker = fred().await?;
    let key = unique("rs");
    let mut subscriber = broker
        .subscribe(RedisStream::new(&key).group("g").start_id(StreamStart::Beginning))
        .await
        .map_err(err)?;
    let publisher = broker.publisher();
    for _ in 0..n / 100 {
        let sends: FuturesUnordered<_> = (0..100)
            .map(|_| publisher.publish(OutgoingMessage::new(&key, &payload[..]), None))
            .collect();
        for r in sends.collect::<Vec<_>>().await {
            r.map_err(err)?;
        }
    }
    let start = Instant::now();
    {
        let mut stream = std::pin::pin!(subscriber.stream());
        let mut acks = FuturesUnordered::new();
        let mut seen = 0;
        while seen < n {
            let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .map_err(|_| format!("consumed {seen} of {n}: nothing more within 5 s"))?
                .ok_or("the stream ended")?
                .map_err(err)?;
            seen += 1;
            acks.push(m.ack());
            while acks.len() >= 200 {
                acks.next().await.ok_or("no ack")?.map_err(err)?;
            }
        }
        while let Some(r) = acks.next().await {
            r.map_err(err)?;
        }
    }
    let took = start.elapsed();
    drop(subscriber);
    cleanup(&key).await?;
    Ok(took)
}

/// omniqueue: `receive_all(100, 10 ms)`, then the batch's acks together.
pub async fn omniqueue_consume(n: usize, payload: Bytes) -> Outcome {
    let tag = unique("omni");
    // omniqueue leaves creating the group to the application (as its own
    // tests do).
    create_group(&mut raw_conn().await?, &format!("{tag}:q")).await?;
    let (producer, mut consumer) = omniqueue::backends::RedisBackend::builder(omni_config(&tag))
        .build_pair()
        .await
        .map_err(err)?;
    for _ in 0..n / 100 {
        let sends: FuturesUnordered<_> = (0..100).map(|_| producer.send_raw(&payload)).collect();
        for r in sends.collect::<Vec<_>>().await {
            r.map_err(err)?;
        }
    }
    let start = Instant::now();
    let mut seen = 0;
    let mut empty = 0;
    while seen < n {
        let batch = consumer
            .receive_all(100, Duration::from_millis(10))
            .await
            .map_err(err)?;
        if batch.is_empty() {
            empty += 1;
            if empty > 500 {
                return Err(format!("consumed {seen} of {n}: nothing more within 5 s"));
            }
            continue;
        }
        empty = 0;
        seen += batch.len();
        let acks: FuturesUnordered<_> = batch.into_iter().map(|d| d.ack()).collect();
        for r in acks.collect::<Vec<_>>().await {
            r.map_err(|(e, _)| err(e))?;
        }
    }
    let took = start.elapsed();
    drop((producer, consumer));
    cleanup(&tag).await?;
    Ok(took)
}
