//! Behaviour specific to RabbitMQ: routing by key, unroutable publishes,
//! delay queues, quorum queues, killed connections, and bad input.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use mq_core::testkit::expect_delivery;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use mq_core::{Broker, BrokerUrl, Error, Message, Nack, Producer, ProducerOptions, Registry, Subscription};
use mq_rabbit::{RabbitBroker, RabbitConfig};

const BOUND: Duration = Duration::from_secs(30);

fn topic(what: &str) -> String {
    mq_core::testkit::unique(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_routed_by_their_key() {
    let broker = common::rabbit_broker("").await;
    let topic = topic("routing");
    // A group makes the exchange; a raw queue bound with `eu.#` sees only EU keys.
    let _group = broker.subscribe(Subscription::new(&topic, "all")).await.unwrap();
    let conn = broker.connection().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let raw_queue = format!("{topic}.raw-eu");
    channel
        .queue_declare(
            raw_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            raw_queue.as_str().into(),
            topic.as_str().into(),
            "eu.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let eu = producer
        .send(&topic, Message::new("1").with_key("eu.fr.paris"))
        .await
        .unwrap()
        .id;
    producer
        .send(&topic, Message::new("2").with_key("us.ny"))
        .await
        .unwrap();
    producer.send(&topic, Message::new("3")).await.unwrap();
    let mut raw = channel
        .basic_consume(
            raw_queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(BOUND, raw.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(eu.as_str())
    );
    assert_eq!(first.routing_key.as_str(), "eu.fr.paris");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), raw.next())
            .await
            .is_err(),
        "other keys are not routed there"
    );
}

#[tokio::test]
async fn unroutable_publish_is_an_error_naming_the_topic() {
    let broker = common::rabbit_broker("").await;
    let topic = topic("unroutable");
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let err = producer
        .send(&topic, Message::new("nobody listens"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&topic) && text.contains("unroutable"), "{text}");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_requeue_goes_through_a_ttl_queue() {
    let broker = common::rabbit_broker("").await;
    let topic = topic("delay");
    let mut consumer = broker.subscribe(Subscription::new(&topic, "g")).await.unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let id = producer.send(&topic, Message::new("later")).await.unwrap().id;
    let d = expect_delivery(consumer.as_mut(), "the next delivery").await;
    let nacked = Instant::now();
    d.nack(Nack::requeue_after(Duration::from_millis(1500)))
        .await
        .unwrap();
    // The copy waits in the delay queue, not in the group's queue.
    let channel = broker.connection().await.unwrap().create_channel().await.unwrap();
    let delay_queue = channel
        .queue_declare(
            format!("{topic}.g.delay.1500").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the delay queue exists");
    assert_eq!(delay_queue.message_count(), 1);
    let again = expect_delivery(consumer.as_mut(), "the next delivery").await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(1500),
        "back after {:?}",
        nacked.elapsed()
    );
    assert_eq!((again.message().id.as_str(), again.attempt()), (id.as_str(), 2));
    again.ack().await.unwrap();
}

/// Every exchange kind routes every message to every group, keyed or not,
/// requeues and dead-letters (to a group of the dead-letter topic): `direct` binds and routes with the topic's
/// name (a key would route nowhere), `fanout` ignores the routing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exchange_type_reaches_every_group_and_dead_letters() {
    for kind in ["topic", "direct", "fanout"] {
        let broker = common::rabbit_broker(&format!("exchange_type={kind}")).await;
        let topic = topic(&format!("kind-{kind}"));
        let mut a = broker.subscribe(Subscription::new(&topic, "a")).await.unwrap();
        let mut b = broker.subscribe(Subscription::new(&topic, "b")).await.unwrap();
        let producer = broker.producer(ProducerOptions::default()).await.unwrap();
        let plain = producer.send(&topic, Message::new("plain")).await.unwrap().id;
        let keyed = producer
            .send(&topic, Message::new("keyed").with_key("eu.de"))
            .await
            .unwrap_or_else(|e| panic!("{kind}: a keyed send: {e}"))
            .id;
        for (group, consumer) in [("a", &mut a), ("b", &mut b)] {
            let mut got = Vec::new();
            for _ in 0..2 {
                let d = expect_delivery(consumer.as_mut(), &format!("{kind}: group {group}")).await;
                got.push(d.message().id.clone());
                d.ack().await.unwrap();
            }
            got.sort();
            let mut want = vec![plain.clone(), keyed.clone()];
            want.sort();
            assert_eq!(got, want, "{kind}: group {group}");
        }
        // A requeue comes back to its group; a dead letter reaches the topic's
        // dead-letter queue, keyed as it was.
        let mut dlq = broker
            .subscribe(Subscription::new(format!("{topic}.dlq"), "ops"))
            .await
            .unwrap();
        let id = producer
            .send(&topic, Message::new("dead").with_key("eu.fr"))
            .await
            .unwrap()
            .id;
        let d = expect_delivery(a.as_mut(), &format!("{kind}: the next delivery")).await;
        d.nack(Nack::requeue()).await.unwrap();
        let d = expect_delivery(a.as_mut(), &format!("{kind}: the requeued copy")).await;
        assert_eq!((d.message().id.as_str(), d.attempt()), (id.as_str(), 2), "{kind}");
        d.nack(Nack::dead_letter("test")).await.unwrap();
        let d = expect_delivery(b.as_mut(), &format!("{kind}: group b")).await;
        d.ack().await.unwrap();
        let dead = expect_delivery(dlq.as_mut(), &format!("{kind}: the dead letter")).await;
        assert_eq!(dead.message().key.as_deref(), Some("eu.fr"), "{kind}");
        dead.ack().await.unwrap();
        for mut c in [a, b, dlq] {
            c.close().await.unwrap();
        }
        broker.close().await.unwrap();
    }
}

/// `topology=queue`: a topic is one queue (no exchange), declared by the
/// first send, so nothing sent before a subscriber is lost; every group
/// reads it, each message reaching one of them; delayed requeues and dead
/// letters go through the default exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_topology_keeps_early_sends_and_shares_the_queue() {
    let broker = common::rabbit_broker("topology=queue").await;
    assert!(!broker.capabilities().consumer_groups);
    let topic = topic("qtopo");
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let mut ids = HashSet::new();
    for i in 0..10 {
        let m = Message::new(format!("m{i}")).with_key(format!("k{i}"));
        ids.insert(producer.send(&topic, m).await.unwrap().id);
    }
    let lag = broker.lag(&topic, "any").await.unwrap();
    assert_eq!(lag.behind, 10, "{lag:?}");
    // No exchange: a passive declaration of one named after the topic fails.
    let channel = broker.connection().await.unwrap().create_channel().await.unwrap();
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let err = channel
        .exchange_declare(
            topic.as_str().into(),
            lapin::ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    let mut a = broker
        .subscribe(Subscription::new(&topic, "a").prefetch(5))
        .await
        .unwrap();
    let mut b = broker
        .subscribe(Subscription::new(&topic, "b").prefetch(5))
        .await
        .unwrap();
    let mut got = HashSet::new();
    let deadline = Instant::now() + BOUND;
    while got.len() < 10 && Instant::now() < deadline {
        for c in [&mut a, &mut b] {
            let batch = c
                .recv_many(10, Duration::from_millis(100))
                .await
                .unwrap()
                .unwrap_or_default();
            for d in batch {
                assert!(
                    got.insert(d.message().id.clone()),
                    "delivered twice: {}",
                    d.message().id
                );
                d.ack().await.unwrap();
            }
        }
    }
    assert_eq!(got, ids, "every message once, over both groups");
    b.close().await.unwrap();
    let mut dlq = broker
        .subscribe(Subscription::new(format!("{topic}.dlq"), "ops"))
        .await
        .unwrap();
    let id = producer.send(&topic, Message::new("again")).await.unwrap().id;
    let d = expect_delivery(a.as_mut(), "the next delivery").await;
    assert_eq!(d.message().id, id);
    let nacked = Instant::now();
    d.nack(Nack::requeue_after(Duration::from_millis(300)))
        .await
        .unwrap();
    let d = expect_delivery(a.as_mut(), "the delayed copy").await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(250),
        "{:?}",
        nacked.elapsed()
    );
    assert_eq!((d.message().id.as_str(), d.attempt()), (id.as_str(), 2));
    d.nack(Nack::dead_letter("test")).await.unwrap();
    let dead = expect_delivery(dlq.as_mut(), "the dead letter").await;
    assert_eq!(dead.message().payload.as_ref(), b"again");
    dead.ack().await.unwrap();
    for mut c in [a, dlq] {
        c.close().await.unwrap();
    }
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_work_and_count_redeliveries() {
    let broker = common::rabbit_broker("queue_type=quorum").await;
    let topic = topic("quorum");
    let sub = || Subscription::new(&topic, "g").ack_timeout(Duration::from_secs(1));
    let mut first = broker.subscribe(sub()).await.unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let id = producer.send(&topic, Message::new("q")).await.unwrap().id;
    let d = expect_delivery(first.as_mut(), "the next delivery").await;
    assert_eq!(d.attempt(), 1);
    d.nack(Nack::requeue()).await.unwrap();
    let d = expect_delivery(first.as_mut(), "the next delivery").await;
    assert_eq!((d.message().id.as_str(), d.attempt()), (id.as_str(), 2));
    drop(d);
    first.close().await.unwrap(); // returned by the broker: x-delivery-count counts it
    let mut second = broker.subscribe(sub()).await.unwrap();
    let d = expect_delivery(second.as_mut(), "the next delivery").await;
    assert_eq!(d.message().id, id);
    assert!(
        d.attempt() >= 3,
        "attempt after a requeue and a return: {}",
        d.attempt()
    );
    d.ack().await.unwrap();
    // The queue really is a quorum queue.
    let channel = broker.connection().await.unwrap().create_channel().await.unwrap();
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("classic".into()),
    );
    let err = channel
        .queue_declare(
            format!("{topic}.g").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            classic,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x-queue-type"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_lose_no_confirmed_message() {
    killed_connections_lose_nothing(false).await;
}

/// The same with `recv_many`: a batch cut by a lost channel ends early, the
/// next call consumes again on a new channel, and nothing confirmed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_lose_no_confirmed_message_with_recv_many() {
    killed_connections_lose_nothing(true).await;
}

async fn killed_connections_lose_nothing(batches: bool) {
    const N: usize = 5000;
    // Only this test's connection is closed: other tests share the server.
    let connection_name = format!("mq-fault-{}", &mq_core::new_id()[24..]);
    let broker = common::rabbit_broker(&format!("connection_name={connection_name}")).await;
    let topic = topic("fault");
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, "g").prefetch(200))
        .await
        .unwrap();
    let producer: Arc<dyn Producer> = Arc::from(broker.producer(ProducerOptions::default()).await.unwrap());
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = tokio::spawn({
        let (producer, topic, progress) = (producer.clone(), topic.clone(), progress.clone());
        async move {
            let mut confirmed = HashSet::new();
            let mut failed = 0;
            for chunk in 0..(N / 50) {
                let batch: Vec<Message> = (0..50)
                    .map(|i| Message::new(format!("{}", chunk * 50 + i)))
                    .collect();
                match producer.send_batch(&topic, batch).await {
                    Ok(receipts) => confirmed.extend(receipts.into_iter().map(|r| r.id)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("batch {chunk} failed: {e}");
                    }
                }
                progress.store(confirmed.len(), std::sync::atomic::Ordering::Release);
                // Paced, so the kills (rabbitmqctl takes a second or two) land mid-stream.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (confirmed, failed)
        }
    });
    let killer = tokio::task::spawn_blocking(move || {
        let mut kills = 0;
        for at in [1000, 2500] {
            let deadline = Instant::now() + Duration::from_secs(60);
            while progress.load(std::sync::atomic::Ordering::Acquire) < at && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            kills += close_connections_named(&connection_name);
        }
        kills
    });
    let mut sender = sender;
    let mut confirmed: Option<(HashSet<String>, usize)> = None;
    let mut got = HashSet::new();
    let mut largest = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if confirmed.is_none() && sender.is_finished() {
            confirmed = Some((&mut sender).await.unwrap());
        }
        if confirmed.as_ref().is_some_and(|(c, _)| c.is_subset(&got)) {
            break;
        }
        assert!(Instant::now() < deadline, "only {} messages consumed", got.len());
        if batches {
            match consumer.recv_many(100, Duration::from_secs(1)).await {
                Ok(Some(batch)) => {
                    largest = largest.max(batch.len());
                    got.extend(batch.iter().map(|d| d.message().id.clone()));
                    // An ack on a lost channel fails; those messages come again.
                    let _ = mq_core::ack_all(&batch).await;
                }
                Ok(None) => panic!("the consumer ended"),
                Err(e) => eprintln!("recv_many failed: {e}"),
            }
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(Ok(Some(d))) => {
                got.insert(d.message().id.clone());
                let _ = d.ack().await; // an ack on a lost channel fails; the message comes again
            }
            Ok(Ok(None)) => panic!("the consumer ended"),
            Ok(Err(e)) => eprintln!("recv failed: {e}"),
            Err(_) => {}
        }
    }
    if batches {
        eprintln!("largest batch {largest}");
    }
    let kills = killer.await.unwrap();
    let (confirmed, failed) = confirmed.unwrap();
    eprintln!(
        "closed the connection from the server {kills} times ({} connections made); {} of {N} confirmed, {failed} batches failed, {} distinct consumed",
        broker.connection_generation(),
        confirmed.len(),
        got.len()
    );
    assert!(
        broker.connection_generation() >= 2,
        "the connection was really lost and replaced"
    );
    assert_eq!(
        failed, 0,
        "publishes in flight when the connection dropped were sent again"
    );
    assert_eq!(confirmed.len(), N);
    assert!(confirmed.is_subset(&got), "every confirmed message was consumed");
}

/// Issue 13, defect 1: a `recv` dropped while the consumer was consuming
/// again after a lost connection left it stalled for good (no error, no
/// `None`, zero consumers on the queue). Here every `recv` runs under a
/// timeout of 1 to 4 ms, so nearly every reattach is cancelled part-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_cancelled_during_a_reconnect_keeps_consuming() {
    const PER_ROUND: usize = 50;
    let connection_name = format!("mq-cancel-{}", &mq_core::new_id()[24..]);
    let broker = common::rabbit_broker(&format!("connection_name={connection_name}")).await;
    let topic = topic("cancel");
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, topic.clone()).prefetch(20))
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let mut got = HashSet::new();
    let mut polls = 0u64;
    let mut poll = async |consumer: &mut Box<dyn mq_core::Consumer>, got: &mut HashSet<String>| {
        polls += 1;
        let cut = Duration::from_millis(1 + polls % 4);
        match tokio::time::timeout(cut, consumer.recv()).await {
            Ok(Ok(Some(d))) => {
                got.insert(d.message().id.clone());
                let _ = d.ack().await; // an ack on a lost channel fails; it comes again
            }
            Ok(Ok(None)) => panic!("the consumer ended"),
            Ok(Err(e)) => eprintln!("recv failed: {e}"),
            Err(_) => {}
        }
        polls
    };
    for round in 0..3 {
        if round > 0 {
            // The consumer is the first to see the connection go (the
            // producer is idle), so its reattach has to connect anew, while
            // its `recv`s keep being cut short.
            let name = connection_name.clone();
            let killer = tokio::task::spawn_blocking(move || close_connections_named(&name));
            while !killer.is_finished() {
                poll(&mut consumer, &mut got).await;
            }
            assert!(
                killer.await.unwrap() >= 1,
                "the test's connection was found and closed"
            );
            for _ in 0..200 {
                poll(&mut consumer, &mut got).await;
            }
        }
        let batch: Vec<Message> = (0..PER_ROUND)
            .map(|i| Message::new(format!("{round}-{i}")))
            .collect();
        producer.send_batch(&topic, batch).await.unwrap();
        let want = PER_ROUND * (round + 1);
        let deadline = Instant::now() + BOUND;
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} of {want} consumed after {polls} cancelled-or-not polls; \
                 the consumer stalled after the connection was lost",
                got.len()
            );
            poll(&mut consumer, &mut got).await;
        }
    }
    let polls = poll(&mut consumer, &mut got).await;
    eprintln!(
        "{} consumed over {} connections in {polls} polls",
        got.len(),
        broker.connection_generation()
    );
    assert!(
        broker.connection_generation() >= 3,
        "the connection was lost twice"
    );
    consumer.close().await.unwrap();
}

/// Closes, from the server side (`rabbitmqctl close_connection`), every
/// connection whose client-given name is `name`; returns how many.
fn close_connections_named(name: &str) -> usize {
    let rabbitmqctl = |args: &[&str]| {
        let out = Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl on PATH (scripts/test.sh installs rabbitmq-server)");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The client-given name is among the client properties (RabbitMQ 3.x
    // has no column of its own for it).
    let listing = rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let mut closed = 0;
    for line in listing.lines() {
        if let Some((pid, properties)) = line.split_once('\t')
            && properties.contains(&format!("{{\"connection_name\",\"{name}\"}}"))
        {
            rabbitmqctl(&["close_connection", pid, "mq fault injection"]);
            closed += 1;
        }
    }
    closed
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_password() {
    let url = BrokerUrl::parse("amqp://guest:not-the-password-42@127.0.0.1:5672/%2f?retries=0").unwrap();
    let err = RabbitBroker::connect(RabbitConfig::from_url(&url).unwrap())
        .await
        .unwrap_err();
    let text = format!("{err} / {err:?}");
    assert!(matches!(err, Error::Auth { .. }), "{text}");
    assert!(!text.contains("not-the-password-42"), "{text}");
}

#[tokio::test]
async fn unreachable_port_fails_within_a_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = BrokerUrl::parse(&format!(
        "amqp://u:pw@127.0.0.1:{port}?retries=2&connect_timeout_ms=500"
    ))
    .unwrap();
    let started = Instant::now();
    let err = RabbitBroker::connect(RabbitConfig::from_url(&url).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn conflicting_queue_arguments_name_the_queue() {
    let topic = topic("conflict");
    let classic = common::rabbit_broker("").await;
    let _c = classic.subscribe(Subscription::new(&topic, "g")).await.unwrap();
    let quorum = common::rabbit_broker("queue_type=quorum").await;
    let err = quorum
        .subscribe(Subscription::new(&topic, "g"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("{topic}.g")), "names the queue: {text}");
    assert!(
        text.contains("PRECONDITION_FAILED") || text.contains("inequivalent"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_option_is_a_clear_error() {
    let mut registry = Registry::new();
    mq_rabbit::register(&mut registry);
    let err = registry
        .connect("amqp://guest:secret@127.0.0.1?prefetchh=5")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`prefetchh`") && text.contains("queue_type"),
        "{text}"
    );
    assert!(!text.contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_the_confirm_window_go_through_concurrently() {
    let broker = common::rabbit_broker("confirm_window=10").await;
    let topic = topic("window");
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, "g").prefetch(500))
        .await
        .unwrap();
    let producer: Arc<dyn Producer> = Arc::from(broker.producer(ProducerOptions::default()).await.unwrap());
    let mut tasks = Vec::new();
    for t in 0..3 {
        let (producer, topic) = (producer.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let batch: Vec<Message> = (0..95).map(|i| Message::new(format!("{t}-{i}"))).collect();
            producer.send_batch(&topic, batch).await
        }));
    }
    let mut sent = HashSet::new();
    for t in tasks {
        let receipts = tokio::time::timeout(BOUND, t)
            .await
            .expect("no deadlock")
            .unwrap()
            .unwrap();
        assert_eq!(receipts.len(), 95);
        sent.extend(receipts.into_iter().map(|r| r.id));
    }
    let mut got = HashSet::new();
    while got.len() < sent.len() {
        let d = expect_delivery(consumer.as_mut(), "the next delivery").await;
        got.insert(d.message().id.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_prefetch_caps_every_consumer() {
    let broker = common::rabbit_broker("prefetch=3").await;
    let topic = topic("prefetch-cap");
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, "g").prefetch(100))
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    producer
        .send_batch(&topic, (0..10).map(|i| Message::new(format!("{i}"))).collect())
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(expect_delivery(consumer.as_mut(), "the next delivery").await);
    }
    let more = tokio::time::timeout(Duration::from_millis(600), consumer.recv()).await;
    assert!(
        more.is_err(),
        "the broker holds back deliveries past the capped prefetch of 3"
    );
    held.remove(0).ack().await.unwrap();
    held.push(expect_delivery(consumer.as_mut(), "the next delivery").await);
    for d in held {
        d.ack().await.unwrap();
    }
}

/// Closing the broker right after its consumer was closed and its producer
/// dropped succeeds: channels still closing are not an error of `close`
/// (seen as "close the connection: invalid channel state: Closing").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_broker_right_after_its_consumer_and_producer_succeeds() {
    for round in 0..5 {
        let broker = common::rabbit_broker("").await;
        let topic = topic("closing");
        let mut consumer = broker
            .subscribe(Subscription::new(&topic, "g").prefetch(200))
            .await
            .unwrap();
        let producer: Arc<dyn Producer> =
            Arc::from(broker.producer(ProducerOptions::default()).await.unwrap());
        let batch: Vec<Message> = (0..20).map(|i| Message::new(format!("{i}"))).collect();
        producer.send_batch(&topic, batch).await.unwrap();
        for _ in 0..20 {
            let d = expect_delivery(consumer.as_mut(), "one of the batch").await;
            d.ack().await.unwrap();
        }
        consumer.close().await.unwrap();
        drop(producer);
        let closed = tokio::time::timeout(BOUND, broker.close())
            .await
            .expect("close within the bound");
        assert!(closed.is_ok(), "round {round}: {closed:?}");
    }
}
