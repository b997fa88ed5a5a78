//! Behaviour specific to Redis: reclaiming a crashed consumer's entries,
//! delayed requeues kept in Redis, surviving killed connections, trimming,
//! and bad input.

#![allow(clippy::expect_used)] // test helpers panic on failure by design

mod common;

use mq_core::testkit::expect_delivery;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mq_core::{Broker, BrokerUrl, Error, Message, Nack, Producer, ProducerOptions, Registry, Subscription};
use mq_redis::{RedisBroker, RedisConfig};
use redis::AsyncCommands;

const BOUND: Duration = Duration::from_secs(30);

/// XPENDING's summary: count, lowest id, highest id, per-consumer counts.
type PendingSummary = (u64, Option<String>, Option<String>, Option<Vec<(String, String)>>);

fn topic(what: &str) -> String {
    mq_core::testkit::unique(what)
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(common::url())
        .expect("test URL")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection to the test Redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_consumers_entries_are_reclaimed_after_the_ack_timeout() {
    let broker = common::broker().await;
    let topic = topic("crash");
    let key = format!("mq:{topic}");
    let mut conn = raw().await;
    // A process of group "g" reads the entries and crashes before acking.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let mut sent = HashSet::new();
    for i in 0..5 {
        sent.insert(
            producer
                .send(&topic, Message::new(format!("{i}")))
                .await
                .expect("send")
                .id,
        );
    }
    // The entries' idle time starts when Redis hands them out, after this.
    let read_at = Instant::now();
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("crashed-process")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("raw XREADGROUP");
    assert_ne!(read, redis::Value::Nil, "the crashed consumer took the entries");
    // A consumer of the same group started afterwards gets them once idle.
    let sub = Subscription::new(&topic, "g").ack_timeout(Duration::from_millis(800));
    let mut survivor = broker.subscribe(sub).await.expect("subscribe");
    let mut got = HashSet::new();
    while got.len() < sent.len() {
        let d = expect_delivery(survivor.as_mut(), "the next delivery").await;
        assert!(
            d.attempt() >= 2,
            "a reclaimed entry counts its earlier delivery: {}",
            d.attempt()
        );
        got.insert(d.message().id.clone());
        d.ack().await.expect("ack");
    }
    // Measured from before the crashed read: the survivor's subscribe
    // takes part of the 800 ms, so its own start is no bound.
    assert!(
        read_at.elapsed() >= Duration::from_millis(800),
        "not before the ack timeout: {:?}",
        read_at.elapsed()
    );
    assert_eq!(got, sent);
    // Acks go out in the background: give them a moment, then nothing may be pending.
    let deadline = Instant::now() + BOUND;
    loop {
        let summary: PendingSummary = redis::cmd("XPENDING")
            .arg(&key)
            .arg("g")
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        if summary.0 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} entries still pending after acking all",
            summary.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_requeue_survives_recreating_the_broker() {
    let topic = topic("delay-restart");
    let sub = || Subscription::new(&topic, "g");
    let id;
    {
        let broker = common::broker().await;
        let mut consumer = broker.subscribe(sub()).await.expect("subscribe");
        let producer = broker
            .producer(ProducerOptions::default())
            .await
            .expect("producer");
        id = producer
            .send(&topic, Message::new("later"))
            .await
            .expect("send")
            .id;
        let d = expect_delivery(consumer.as_mut(), "the next delivery").await;
        d.nack(Nack::requeue_after(Duration::from_millis(1500)))
            .await
            .expect("delayed nack");
        consumer.close().await.expect("close");
        broker.close().await.expect("close broker");
    }
    // Only Redis remembers the delayed copy now.
    let mut conn = raw().await;
    let held: u64 = conn.zcard(format!("mq:{topic}:delayed:g")).await.expect("ZCARD");
    assert_eq!(held, 1, "the delayed copy is kept in Redis");
    let nacked_at = Instant::now();
    let broker = common::broker().await;
    let mut consumer = broker.subscribe(sub()).await.expect("subscribe again");
    let d = expect_delivery(consumer.as_mut(), "the next delivery").await;
    assert_eq!(d.message().id, id);
    assert_eq!(d.attempt(), 2);
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(1000),
        "held back until due"
    );
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_lose_no_confirmed_message() {
    const N: usize = 5000;
    let broker = common::broker().await;
    let topic = topic("kill");
    let mut consumer = broker
        .subscribe(
            Subscription::new(&topic, "g")
                .prefetch(200)
                .ack_timeout(Duration::from_secs(2)),
        )
        .await
        .expect("subscribe");
    let producer: Arc<dyn Producer> = Arc::from(
        broker
            .producer(ProducerOptions::default())
            .await
            .expect("producer"),
    );
    let sender = tokio::spawn({
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let mut confirmed = HashSet::new();
            let mut failed = 0;
            for i in 0..N {
                match producer.send(&topic, Message::new(format!("{i}"))).await {
                    Ok(receipt) => {
                        confirmed.insert(receipt.id);
                    }
                    Err(_) => failed += 1,
                }
            }
            (confirmed, failed)
        }
    });
    // Kill every client connection (ours included) a few times mid-stream.
    let killer = tokio::spawn(async move {
        let mut conn = raw().await;
        let mut kills = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .query_async(&mut conn)
                .await
                .expect("CLIENT KILL");
            kills += killed;
        }
        kills
    });
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sender = sender;
    let mut confirmed: Option<(HashSet<String>, usize)> = None;
    loop {
        if confirmed.is_none() && sender.is_finished() {
            confirmed = Some((&mut sender).await.expect("sender"));
        }
        if confirmed.as_ref().is_some_and(|(c, _)| c.is_subset(&got)) {
            break;
        }
        assert!(Instant::now() < deadline, "only {} messages arrived", got.len());
        if let Ok(Some(Ok(Some(d)))) = tokio::time::timeout(Duration::from_secs(1), consumer.recv())
            .await
            .map(Some)
        {
            got.insert(d.message().id.clone());
            let _ = d.ack().await;
        }
    }
    let kills = killer.await.expect("killer");
    let (confirmed, failed) = confirmed.expect("sender done");
    eprintln!(
        "killed {kills} connections; {} of {N} sends confirmed, {failed} failed, {} distinct delivered",
        confirmed.len(),
        got.len()
    );
    assert!(kills >= 3, "connections were killed ({kills})");
    assert_eq!(
        failed, 0,
        "a send whose connection was killed is retried on a new one"
    );
    assert!(confirmed.is_subset(&got), "every confirmed message was consumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_trims_the_stream() {
    let broker = common::redis_broker("max_len=100").await;
    let topic = topic("trim");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let batch: Vec<Message> = (0..2000).map(|i| Message::new(format!("{i}"))).collect();
    producer.send_batch(&topic, batch).await.expect("send_batch");
    let mut conn = raw().await;
    let len: u64 = conn.xlen(format!("mq:{topic}")).await.expect("XLEN");
    // `MAXLEN ~` trims whole macro nodes (100 entries by default), so a little over.
    assert!(
        (100..=300).contains(&len),
        "stream trimmed to about 100 entries, has {len}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error_without_the_password() {
    let server = common::server::Server::with_password("right-horse-battery");
    let url = format!("redis://:wrong-horse-staple@127.0.0.1:{}?retries=0", server.port);
    let mut registry = Registry::new();
    mq_redis::register(&mut registry);
    let err = registry
        .connect(&url)
        .await
        .expect_err("a wrong password must fail");
    let text = format!("{err} / {err:?}");
    assert!(matches!(err, Error::Auth { .. }), "{text}");
    assert!(
        !text.contains("wrong-horse-staple") && !text.contains("right-horse-battery"),
        "{text}"
    );
    assert!(!err.is_retryable());
    // And the right one works.
    let ok = format!("redis://:right-horse-battery@127.0.0.1:{}", server.port);
    let broker = registry.connect(&ok).await.expect("the right password connects");
    assert_eq!(broker.name(), "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_within_a_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port(); // nothing listens there once the listener is dropped
    let url = BrokerUrl::parse(&format!(
        "redis://:pw@127.0.0.1:{port}?retries=2&connect_timeout_ms=500"
    ))
    .expect("url");
    let started = Instant::now();
    let err = RedisBroker::connect(RedisConfig::from_url(&url).expect("config"))
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(took < Duration::from_secs(10), "failed after {took:?}");
    assert!(
        err.to_string().contains(&port.to_string()),
        "the error names the endpoint: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_is_a_clear_error() {
    let broker = common::broker().await;
    let topic = topic("wrongtype");
    let mut conn = raw().await;
    let _: () = conn.set(format!("mq:{topic}"), "a string").await.expect("SET");
    let err = broker
        .subscribe(Subscription::new(&topic, "g"))
        .await
        .expect_err("not a stream");
    let text = err.to_string();
    assert!(
        text.contains(&format!("mq:{topic}")) && text.contains("not a stream"),
        "{text}"
    );
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let err = producer
        .send(&topic, Message::new("x"))
        .await
        .expect_err("not a stream");
    assert!(err.to_string().contains("not a stream"), "{err}");
}

#[tokio::test]
async fn unknown_option_is_a_clear_error() {
    let mut registry = Registry::new();
    mq_redis::register(&mut registry);
    let err = registry
        .connect("redis://:pw@127.0.0.1:6379?max_lenght=5")
        .await
        .expect_err("unknown");
    let text = err.to_string();
    assert!(
        text.contains("`max_lenght`") && text.contains("max_len"),
        "{text}"
    );
    assert!(!text.contains(":pw@"));
}

/// Issue 13, defect 9: closing waited for the blocking read in flight (up
/// to `block_ms`); it cuts the read short now, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_cuts_a_blocking_read_short_and_loses_nothing() {
    // Reads block for 10 s, housekeeping every 10 s: a close that waited
    // for the read would take seconds.
    let broker = common::redis_broker("block_ms=10000&claim_interval_ms=10000").await;
    let topic = topic("close-fast");
    let group = mq_core::testkit::group_for(&topic, "g");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let mut sent = HashSet::new();
    let mut got = HashSet::new();
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let mut consumer = broker
            .subscribe(Subscription::new(&topic, &group))
            .await
            .expect("subscribe");
        let id = producer
            .send(&topic, Message::new(format!("{round}")))
            .await
            .expect("send")
            .id;
        sent.insert(id);
        let d = expect_delivery(consumer.as_mut(), "this round's message").await;
        got.insert(d.message().id.clone());
        d.ack().await.expect("ack");
        // Give the reader time to block again, then close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        consumer.close().await.expect("close");
        slowest = slowest.max(started.elapsed());
    }
    mq_core::testkit::report(&format!(
        "redis: the slowest of 5 closes took {slowest:?} (reads block for 10 s)"
    ));
    assert!(
        slowest < Duration::from_secs(3),
        "close waited for the blocking read: {slowest:?}"
    );
    assert_eq!(got, sent, "every message of every round was delivered");
}

/// Issue 13, defect 11: a message the server refuses (here over its memory
/// limit) is an error naming the key and the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_names_the_key_and_its_size() {
    let server =
        common::server::Server::with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let broker = common::redis_broker_at(&server.url()).await;
    let topic = topic("refused");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let err = producer
        .send(&topic, Message::new(vec![7u8; 3_000_000]))
        .await
        .expect_err("over the server's memory limit");
    let text = err.to_string();
    assert!(text.contains(&format!("mq:{topic}")), "names the key: {text}");
    assert!(
        text.contains("bytes") && text.contains("3000"),
        "names the size: {text}"
    );
}

/// `health` answers while the server does, is a connection error while it
/// is down (within the response timeout), and answers again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_server() {
    let mut server = common::server::Server::start();
    let broker = common::redis_broker_at(&server.url()).await;
    let up = broker.health().await.expect("health of a live server");
    assert_eq!(up.backend, "redis");
    assert!(up.endpoint.contains(&server.port.to_string()), "{up}");
    server.kill();
    let started = Instant::now();
    let down = broker.health().await.expect_err("the server is gone");
    assert!(matches!(down, Error::Connection { .. }), "{down:?}");
    assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
    server.restart();
    let deadline = Instant::now() + BOUND;
    while broker.health().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "health did not come back within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mq_core::testkit::report(&format!(
        "redis: health {up}; while down: {down}; answered again {:.1?} after the restart",
        started.elapsed()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_on_a_server_without_replicas_is_a_clear_error() {
    // The machine's Redis has no replica: a send that must reach one is
    // refused after wait_timeout_ms, saying so, and the shared connection
    // (which never ran the WAIT) keeps serving other commands meanwhile.
    let broker = common::redis_broker("wait_replicas=1&wait_timeout_ms=300").await;
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let topic = mq_core::testkit::unique("wait");
    let started = Instant::now();
    let sending = producer.send(&topic, Message::new("x"));
    let health = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        broker.health().await
    };
    let (sent, health) = tokio::join!(sending, health);
    let err = sent.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let health = health.expect("the shared connection answers during the WAIT");
    assert!(health.latency < Duration::from_millis(250), "{health:?}");
    broker.close().await.unwrap();
}
