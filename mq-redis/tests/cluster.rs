//! mq-redis on a Redis Cluster of the test's own (3 primaries, 3 replicas on
//! free loopback ports): the whole conformance kit, and a primary killed
//! during traffic.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use mq_core::testkit::{report, unique};
use mq_core::{Broker, BrokerUrl, Message, Nack, ProducerOptions, StartPosition, Subscription};
use mq_redis::{RedisBroker, RedisConfig};

async fn connect(url: &str) -> RedisBroker {
    let config = RedisConfig::from_url(&BrokerUrl::parse(url).unwrap()).unwrap();
    assert!(config.cluster, "a URL with several hosts is a cluster");
    RedisBroker::connect(config)
        .await
        .expect("connect to the test's Redis Cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_kit_passes_on_a_cluster() {
    let cluster = Cluster::start();
    let url = cluster.url("wait_replicas=1");
    let started = Instant::now();
    mq_core::testkit::run_all(|| async { Arc::new(connect(&url).await) as Arc<dyn Broker> }).await;
    report(&format!(
        "redis cluster (3 primaries + 3 replicas): the conformance kit passed in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_of_a_topic_share_a_slot_and_topics_spread() {
    let cluster = Cluster::start();
    let broker = connect(&cluster.url("")).await;
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let mut owners = HashSet::new();
    for i in 0..12 {
        let topic = unique(&format!("spread{i}"));
        let mut consumer = broker
            .subscribe(Subscription::new(&topic, "g").start(StartPosition::Earliest))
            .await
            .unwrap();
        producer.send(&topic, Message::new("x")).await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("a delivery in time")
            .unwrap()
            .expect("a delivery");
        // A requeue goes through the group's retry stream: same slot, one MULTI.
        delivery
            .nack(Nack::Requeue {
                delay: Duration::ZERO,
            })
            .await
            .unwrap();
        let again = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("the requeued delivery in time")
            .unwrap()
            .expect("the requeued delivery");
        assert_eq!(again.attempt(), 2);
        again.ack().await.unwrap();
        let stream = format!("mq:{{{topic}}}");
        let retry = format!("mq:{{{topic}}}:retry:g");
        let owner = cluster.primary_of(&stream).expect("an owner");
        assert_eq!(
            cluster.primary_of(&retry),
            Some(owner),
            "{retry} is on {stream}'s node"
        );
        owners.insert(owner);
        consumer.close().await.unwrap();
    }
    assert!(owners.len() >= 2, "12 topics on one node of three: {owners:?}");
    // A topic cannot hold a hash tag of its own.
    let err = producer.send("a{b}", Message::new("x")).await.unwrap_err();
    assert!(err.to_string().contains("hash tag"), "{err}");
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_loses_no_confirmed_send() {
    kill_a_primary_during_traffic(true).await;
}

/// Without `wait_replicas` a send is confirmed by the primary alone, which
/// Redis replicates asynchronously: a failover may lose what it confirmed
/// last, so this asserts only that traffic goes on (every send confirmed
/// in the end, none stuck; the shared cluster connection once stayed stuck
/// for minutes after the kill) and reports what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_does_not_stall_sends_without_wait() {
    kill_a_primary_during_traffic(false).await;
}

/// 10,000 sends from 50 publishers over 10 topics, one consumer per topic;
/// the primary owning the first topic is SIGKILLed a fifth of the way in,
/// its replica takes over, and the killed node comes back as a replica.
async fn kill_a_primary_during_traffic(wait: bool) {
    const PUBLISHERS: usize = 50;
    const PER_PUBLISHER: usize = 200;
    const TOPICS: usize = 10;
    let mut cluster = Cluster::start();
    let url = if wait {
        cluster.url("wait_replicas=1&wait_timeout_ms=2000&retries=8&response_timeout_ms=2000")
    } else {
        cluster.url("retries=8&response_timeout_ms=2000")
    };
    let broker = Arc::new(connect(&url).await);
    let topics: Vec<String> = (0..TOPICS).map(|i| unique(&format!("kill{i}"))).collect();
    let victim_port = cluster
        .primary_of(&format!("mq:{{{}}}", topics[0]))
        .expect("the victim topic's primary");

    // One consumer per topic, reading during the failover.
    let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for topic in &topics {
        let mut consumer = broker
            .subscribe(
                Subscription::new(topic, "g")
                    .start(StartPosition::Earliest)
                    .prefetch(200)
                    .ack_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        let (received, stop) = (received.clone(), stop.clone());
        let hard_stop = Instant::now() + Duration::from_secs(240);
        consumers.push(tokio::spawn(async move {
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
                    Ok(Ok(Some(d))) => {
                        *received
                            .lock()
                            .unwrap()
                            .entry(d.message().id.clone())
                            .or_default() += 1;
                        if d.ack().await.is_err() {
                            errors += 1;
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(_)) => errors += 1,
                    Err(_) => {}
                }
            }
            let _ = consumer.close().await;
            errors
        }));
    }

    let confirmed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let failed_tries = Arc::new(AtomicUsize::new(0));
    let first_after_kill: Arc<Mutex<Option<Instant>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut publishers = Vec::new();
    let started = Instant::now();
    for p in 0..PUBLISHERS {
        let producer = broker.producer(ProducerOptions::default()).await.unwrap();
        let (topics, confirmed, sent, failed_tries) = (
            topics.clone(),
            confirmed.clone(),
            sent.clone(),
            failed_tries.clone(),
        );
        let (first_after_kill, killed_at) = (first_after_kill.clone(), killed_at.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                let topic = &topics[(p + i) % TOPICS];
                let message = Message::new(format!("{p}-{i}"));
                let deadline = Instant::now() + Duration::from_secs(60);
                // A failed send is tried again (same id) until confirmed.
                loop {
                    let began = Instant::now();
                    match producer.send(topic, message.clone()).await {
                        Ok(receipt) => {
                            confirmed.lock().unwrap().insert(receipt.id);
                            sent.fetch_add(1, Ordering::Relaxed);
                            // The first send begun after the kill, on the killed primary's topic.
                            let after_kill = killed_at.lock().unwrap().is_some_and(|k| began > k);
                            if topic == &topics[0] && after_kill {
                                first_after_kill.lock().unwrap().get_or_insert_with(Instant::now);
                            }
                            break;
                        }
                        Err(e) => {
                            eprintln!("{:?} send {p}-{i} to {topic}: {e}", started.elapsed());
                            failed_tries.fetch_add(1, Ordering::Relaxed);
                            assert!(Instant::now() < deadline, "send {p}-{i} failed for 60 s: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    // Kill the victim's primary a fifth of the way in.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < PUBLISHERS * PER_PUBLISHER / 5 {
        assert!(Instant::now() < deadline, "no traffic before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_kill = sent.load(Ordering::Relaxed);
    let victim_key = format!("mq:{{{}}}", topics[0]);
    cluster.kill(victim_port);
    let kill_time = Instant::now();
    eprintln!("{:?} killed {victim_port}", started.elapsed());
    *killed_at.lock().unwrap() = Some(kill_time);
    // Its replica takes over; then the killed node comes back (as a
    // replica of the new primary, which until then has none, so sends to
    // its slots cannot be confirmed with wait_replicas=1).
    let promoted = tokio::task::block_in_place(|| {
        while !cluster.failed_over(&victim_key, victim_port) {
            assert!(
                kill_time.elapsed() < Duration::from_secs(30),
                "no replica took over within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_time.elapsed()
    });
    eprintln!("{:?} promoted", started.elapsed());
    tokio::task::block_in_place(|| cluster.restart(victim_port));
    let back = kill_time.elapsed();
    eprintln!("{:?} restarted", started.elapsed());
    for publisher in publishers {
        publisher.await.expect("a publisher finished");
    }
    let confirmed = confirmed.lock().unwrap().clone();
    assert_eq!(confirmed.len(), PUBLISHERS * PER_PUBLISHER);

    // Every confirmed message arrives (without WAIT: what arrives in 20 s).
    let deadline = Instant::now() + Duration::from_secs(if wait { 120 } else { 20 });
    loop {
        let missing = {
            let got = received.lock().unwrap();
            confirmed.iter().filter(|id| !got.contains_key(*id)).count()
        };
        if missing == 0 || (!wait && Instant::now() >= deadline) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} confirmed messages never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = received.lock().unwrap().clone();
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    let failover = first_after_kill
        .lock()
        .unwrap()
        .map(|t| t.saturating_duration_since(kill_time));
    let lost = confirmed.iter().filter(|id| !got.contains_key(*id)).count();
    let mode = if wait { "wait_replicas=1" } else { "no WAIT" };
    report(&format!(
        "redis cluster ({mode}), a primary SIGKILLed after {before_kill} confirmed sends: sent {} confirmed {} lost {lost} \
         duplicates {duplicates} failed tries {}; replica promoted {promoted:.1?} after the kill, killed node back \
         as a replica at {back:.1?}, first send begun after the kill confirmed on its topic at {failover:.1?}",
        PUBLISHERS * PER_PUBLISHER,
        confirmed.len(),
        failed_tries.load(Ordering::Relaxed),
    ));
    if wait {
        assert_eq!(lost, 0);
    }
    stop.store(true, Ordering::Relaxed);
    let mut consumer_errors = 0;
    for consumer in consumers {
        consumer_errors += consumer.await.expect("a consumer task ended");
    }
    report(&format!(
        "redis cluster ({mode}), primary SIGKILLed: errors the consumers saw (recv or ack, then recovered): {consumer_errors}"
    ));
    broker.close().await.unwrap();
}
