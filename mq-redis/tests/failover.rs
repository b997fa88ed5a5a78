//! mq-core's policies and runtime on real Redis servers: failover across two
//! servers, request/reply, and the Redis idempotency store.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use common::server::Server;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mq_core::balance::{BalancedProducer, MergedConsumer, RoundRobin};
use mq_core::reply::{Requester, reply};
use mq_core::worker::{HandlerResult, IdempotencyStore, Job, Worker};
use mq_core::{
    Broker, BrokerUrl, Consumer, Error, Message, Producer, ProducerOptions, StartPosition, Subscription,
};
use mq_redis::{RedisBroker, RedisConfig, RedisIdempotencyStore};
use tokio_util::sync::CancellationToken;

async fn connect(url: &str) -> RedisBroker {
    RedisBroker::connect(RedisConfig::from_url(&BrokerUrl::parse(url).unwrap()).unwrap())
        .await
        .expect("connect to the test's redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balanced_producer_loses_nothing_when_a_server_dies() {
    const N: usize = 5000;
    let a = Server::start();
    let mut b = Server::start();
    let (broker_a, broker_b) = (connect(&a.url()).await, connect(&b.url()).await);
    let topic = mq_core::testkit::unique("failover");
    let sub = || {
        Subscription::new(&topic, "g")
            .start(StartPosition::Earliest)
            .prefetch(500)
            .ack_timeout(Duration::from_secs(2))
    };
    let consumers: Vec<Box<dyn Consumer>> = vec![
        broker_a.subscribe(sub()).await.unwrap(),
        broker_b.subscribe(sub()).await.unwrap(),
    ];
    let mut merged = MergedConsumer::new(consumers);
    let producer = BalancedProducer::new(
        vec![
            broker_a.producer(ProducerOptions::default()).await.unwrap(),
            broker_b.producer(ProducerOptions::default()).await.unwrap(),
        ],
        Arc::new(RoundRobin::new()),
    )
    .breaker(2, Duration::from_millis(500));

    let mut confirmed = HashSet::new();
    let mut on_b_before_kill = 0;
    let mut failed = 0;
    for i in 0..N {
        if i == N / 3 {
            on_b_before_kill = redis_len(b.port, &topic).await;
            b.kill();
        }
        match producer.send(&topic, Message::new(format!("{i}"))).await {
            Ok(receipt) => {
                confirmed.insert(receipt.id);
            }
            Err(e) => {
                failed += 1;
                eprintln!("send {i} failed: {e}");
            }
        }
    }
    assert_eq!(failed, 0, "every send failed over to the live server");
    assert!(on_b_before_kill > 0, "server B took part before it died");

    // B comes back with what it had confirmed; its consumer reconnects.
    b.restart();
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !confirmed.is_subset(&got) {
        assert!(
            Instant::now() < deadline,
            "{} of {} confirmed messages consumed",
            confirmed.intersection(&got).count(),
            confirmed.len()
        );
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(1), merged.recv()).await {
            got.insert(d.message().id.clone());
            let _ = d.ack().await;
        }
    }
    eprintln!(
        "{N} sends, {} confirmed, {on_b_before_kill} on B before it was killed, {} distinct consumed",
        confirmed.len(),
        got.len()
    );
    merged.close().await.ok();
}

async fn redis_len(port: u16, topic: &str) -> u64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("XLEN")
        .arg(format!("mq:{topic}"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_round_trip_and_timeout_on_redis() {
    let broker = common::broker().await;
    let topic = mq_core::testkit::unique("rpc");
    let consumer = broker
        .subscribe(Subscription::new(&topic, "responders"))
        .await
        .unwrap();
    let producer: Arc<dyn Producer> = Arc::from(broker.producer(ProducerOptions::default()).await.unwrap());
    let stop = CancellationToken::new();
    let handler = |job: Job| async move {
        let text = String::from_utf8_lossy(&job.message.payload).to_uppercase();
        HandlerResult::Ok(vec![reply(&job.message, Message::new(text))?])
    };
    let running = tokio::spawn(
        Worker::new(consumer)
            .producer(producer)
            .run(handler, stop.clone()),
    );
    let requester = Requester::new(broker.as_ref()).await.unwrap();
    let answer = requester
        .request(&topic, Message::new("hello"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer.payload, "HELLO");
    let err = requester
        .request(
            &mq_core::testkit::unique("nobody"),
            Message::new("?"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    stop.cancel();
    let stats = running.await.unwrap().unwrap();
    assert_eq!(stats.handled, 1);
}

#[tokio::test]
async fn redis_idempotency_store_remembers_for_the_ttl() {
    let broker = common::redis_broker("").await;
    let store = RedisIdempotencyStore::new(&broker);
    let id = mq_core::new_id();
    assert!(!store.seen(&id).await.unwrap());
    store.mark(&id, Duration::from_millis(300)).await.unwrap();
    assert!(store.seen(&id).await.unwrap());
    // Another store object (another process) sees it too.
    assert!(
        RedisIdempotencyStore::new(&common::redis_broker("").await)
            .seen(&id)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!store.seen(&id).await.unwrap(), "forgotten after the TTL");
}
