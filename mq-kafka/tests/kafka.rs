//! Kafka-specific behaviour, on librdkafka's embedded mock cluster (the
//! fault-injection tests need it; no server is involved).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{MOCK_OPTIONS, Mock, config, connect};
use mq_core::testkit::{expect_delivery, unique};
use mq_core::{
    Broker, Consumer, Error, Message, Position, Producer, ProducerOptions, StartPosition, Subscription,
};
use mq_kafka::KafkaBroker;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

async fn mock_broker(mock: &Mock, extra: &str) -> KafkaBroker {
    let options = if extra.is_empty() {
        MOCK_OPTIONS.to_string()
    } else {
        format!("{MOCK_OPTIONS}&{extra}")
    };
    connect(config(mock.servers(), &options)).await
}

fn earliest(topic: &str, group: &str) -> Subscription {
    Subscription::new(topic, group).start(StartPosition::Earliest)
}

async fn producer(broker: &KafkaBroker) -> Box<dyn Producer> {
    broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer")
}

/// Receives until `stop` says so or `within` passes; acks everything.
async fn drain(
    consumer: &mut dyn Consumer,
    within: Duration,
    mut stop: impl FnMut(&HashSet<String>) -> bool,
) -> HashSet<String> {
    let deadline = Instant::now() + within;
    let mut seen = HashSet::new();
    while !stop(&seen) && Instant::now() < deadline {
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(250), consumer.recv()).await {
            d.ack().await.expect("ack");
            seen.insert(d.message().id.clone());
        }
    }
    seen
}

/// The committed offset of mq group `group` of `topic`/`partition`, read
/// as another client would (its Kafka group id is `{topic}.{group}`).
fn committed(servers: &str, group: &str, topic: &str, partition: i32) -> Offset {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", format!("{topic}.{group}"))
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let offsets = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    offsets.elements()[0].offset()
}

async fn committed_becomes(servers: &str, group: &str, topic: &str, partition: i32, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, g, t) = (servers.to_string(), group.to_string(), topic.to_string());
        let now = tokio::task::spawn_blocking(move || committed(&s, &g, &t, partition))
            .await
            .unwrap();
        if now == Offset::Offset(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed offset of {topic}/{partition} is {now:?}, expected {want} within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_acks_commit_only_the_contiguous_prefix() {
    let mock = Mock::start();
    let broker = mock_broker(&mock, "").await;
    let topic = unique("prefix");
    let mut consumer = broker
        .subscribe(earliest(&topic, "g").prefetch(10))
        .await
        .unwrap();
    let producer = producer(&broker).await;
    // One key: one partition, offsets 0..5.
    let receipts = producer
        .send_batch(
            &topic,
            (0..5)
                .map(|i| Message::new(format!("{i}")).with_key("k"))
                .collect(),
        )
        .await
        .unwrap();
    let Position::Offset {
        partition: Some(partition),
        offset: first,
    } = receipts[0].position
    else {
        panic!(
            "a Kafka receipt has a partition and offset: {:?}",
            receipts[0].position
        );
    };
    assert_eq!(first, 0);
    let mut deliveries = Vec::new();
    for i in 0..5 {
        deliveries.push(expect_delivery(&mut *consumer, &format!("message {i}")).await);
    }
    for i in [0, 1, 3, 4] {
        deliveries[i].ack().await.unwrap();
    }
    // Offsets 0 and 1 are acked: the group commits 2 (the next to read)...
    committed_becomes(mock.servers(), "g", &topic, partition, 2).await;
    // ...and stays there while offset 2 is unacked, across auto-commits.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, t) = (mock.servers().to_string(), topic.clone());
    let still = tokio::task::spawn_blocking(move || committed(&s, "g", &t, partition))
        .await
        .unwrap();
    assert_eq!(
        still,
        Offset::Offset(2),
        "an unacked offset holds the commit back"
    );
    deliveries[2].ack().await.unwrap();
    committed_becomes(mock.servers(), "g", &topic, partition, 5).await;
    consumer.close().await.unwrap();
}

/// The number a message of this file's tests carries as its payload.
fn numbered(d: &mq_core::Delivery) -> usize {
    std::str::from_utf8(&d.message().payload)
        .expect("a UTF-8 payload")
        .parse()
        .expect("a number")
}

/// `recv_many` takes what the poll thread handed over, holding delayed
/// copies (requeued with a delay) back until they are due: a batch never
/// carries one early, and each comes back once, with attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recv_many_holds_delayed_copies_until_they_are_due() {
    const N: usize = 20;
    const DELAY: Duration = Duration::from_millis(800);
    let mock = Mock::start();
    let broker = mock_broker(&mock, "").await;
    let topic = unique("manydelay");
    let mut consumer = broker
        .subscribe(earliest(&topic, "g").prefetch(100))
        .await
        .unwrap();
    let producer = producer(&broker).await;
    producer
        .send_batch(
            &topic,
            (0..N)
                .map(|i| Message::new(format!("{i}")).with_key(format!("k{}", i % 4)))
                .collect(),
        )
        .await
        .unwrap();
    // First pass: even ones requeued with a delay, odd ones acked.
    let mut first = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut requeued_at = None;
    while first.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} on the first pass",
            first.len()
        );
        let batch = consumer
            .recv_many(N, Duration::from_millis(500))
            .await
            .unwrap()
            .expect("open");
        for d in batch {
            assert_eq!(d.attempt(), 1, "first pass: {:?}", d.message().payload);
            let n = numbered(&d);
            assert!(first.insert(n), "{n} twice on the first pass");
            if n.is_multiple_of(2) {
                d.nack(mq_core::Nack::requeue_after(DELAY)).await.unwrap();
                requeued_at.get_or_insert_with(Instant::now);
            } else {
                d.ack().await.unwrap();
            }
        }
    }
    let requeued_at = requeued_at.expect("something was requeued");
    // Second pass: the delayed copies, none before its delay.
    let mut again = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while again.len() < N / 2 {
        assert!(
            Instant::now() < deadline,
            "only {} of {} copies came back",
            again.len(),
            N / 2
        );
        let batch = consumer
            .recv_many(N, Duration::from_millis(500))
            .await
            .unwrap()
            .expect("open");
        for d in batch {
            let n = numbered(&d);
            assert!(n.is_multiple_of(2), "{n} was acked, yet came back");
            assert_eq!(d.attempt(), 2, "copy of {n}");
            assert!(
                requeued_at.elapsed() >= DELAY - Duration::from_millis(50),
                "copy of {n} after {:?}, before its delay {DELAY:?}",
                requeued_at.elapsed()
            );
            assert!(again.insert(n), "copy of {n} twice");
            d.ack().await.unwrap();
        }
    }
    // Nothing more: every copy came back once.
    let rest = consumer
        .recv_many(N, Duration::from_millis(1500))
        .await
        .unwrap()
        .expect("open");
    assert!(
        rest.is_empty(),
        "{} more deliveries after all were acked",
        rest.len()
    );
    consumer.close().await.unwrap();
}

/// After each assignment the retry partitions are held until the topic's
/// own partitions are fetched (a fetch of only the empty retry partitions
/// held a new group's read for 100 ms); held at most a second, so a copy
/// waiting in the retry topic still comes when the topic has nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requeued_copy_comes_after_a_new_assignment_with_nothing_else_to_read() {
    let mock = Mock::start();
    let broker = mock_broker(&mock, "").await;
    let topic = unique("gate");
    let mut first = broker.subscribe(earliest(&topic, "g")).await.unwrap();
    let producer = producer(&broker).await;
    for i in 0..3 {
        producer
            .send(&topic, Message::new(format!("{i}")).with_key(format!("k{i}")))
            .await
            .unwrap();
    }
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < 3 {
        assert!(Instant::now() < deadline, "only {seen} of 3 arrived");
        let d = expect_delivery(first.as_mut(), "one of the three").await;
        assert_eq!(d.attempt(), 1);
        if numbered(&d) == 0 {
            // Due after the consumer below has its assignment.
            d.nack(mq_core::Nack::requeue_after(Duration::from_secs(2)))
                .await
                .unwrap();
        } else {
            d.ack().await.unwrap();
        }
        seen += 1;
    }
    first.close().await.unwrap();
    let mut second = broker.subscribe(earliest(&topic, "g")).await.unwrap();
    let copy = expect_delivery(second.as_mut(), "the requeued copy after a new assignment").await;
    assert_eq!(numbered(&copy), 0, "the requeued one comes again");
    assert_eq!(copy.attempt(), 2);
    copy.ack().await.unwrap();
    let more = tokio::time::timeout(Duration::from_millis(1500), second.recv()).await;
    assert!(
        !matches!(more, Ok(Ok(Some(_)))),
        "nothing else was left to read: {more:?}"
    );
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_leaving_mid_stream_loses_nothing() {
    const N: usize = 600;
    let mock = Mock::start();
    let broker = Arc::new(mock_broker(&mock, "").await);
    let topic = unique("leave");
    let mut leaving = broker
        .subscribe(earliest(&topic, "g").prefetch(10))
        .await
        .unwrap();
    let mut staying = broker
        .subscribe(earliest(&topic, "g").prefetch(10))
        .await
        .unwrap();
    let producer = producer(&broker).await;
    let mut sent = HashSet::new();
    for chunk in 0..(N / 100) {
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new(format!("{chunk}-{i}")).with_key(format!("k{}", i % 16)))
            .collect();
        for r in producer.send_batch(&topic, batch).await.unwrap() {
            sent.insert(r.id);
        }
    }
    // The leaving member acks some, then leaves holding 3 unacked deliveries.
    let mut acked_by_leaving = Vec::new();
    let mut unacked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while unacked.len() < 3 && Instant::now() < deadline {
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(250), leaving.recv()).await {
            if acked_by_leaving.len() < 50 {
                d.ack().await.unwrap();
                acked_by_leaving.push(d.message().id.clone());
            } else {
                unacked.push(d);
            }
        }
    }
    assert_eq!(unacked.len(), 3, "the leaving member got its share");
    let unacked_ids: HashSet<String> = unacked.iter().map(|d| d.message().id.clone()).collect();
    drop(unacked);
    leaving.close().await.unwrap();

    // The staying member gets the rest, including the handed-back three.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in &acked_by_leaving {
        *counts.entry(id.clone()).or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts.len() < N && Instant::now() < deadline {
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(250), staying.recv()).await {
            d.ack().await.unwrap();
            *counts.entry(d.message().id.clone()).or_default() += 1;
        }
    }
    // Late duplicates would show up within a short while.
    let extra = drain(&mut *staying, Duration::from_secs(2), |_| false).await;
    for id in extra {
        *counts.entry(id).or_default() += 1;
    }
    let got: HashSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, sent, "every message was consumed");
    let duplicated: Vec<&String> = counts.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    for id in &duplicated {
        assert!(
            unacked_ids.contains(*id),
            "message {id} was acked and still delivered again"
        );
    }
    println!(
        "{N} sent; the leaving member acked {} and left holding 3; {} consumed, {} delivered twice",
        acked_by_leaving.len(),
        got.len(),
        duplicated.len()
    );
    staying.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_confirmed_send_is_consumed_through_broker_faults() {
    const N: usize = 5000;
    const BATCH: usize = 50;
    let mock = Mock::start();
    let broker = Arc::new(mock_broker(&mock, "").await);
    let topic = unique("faults");
    let producer: Arc<dyn Producer> = Arc::from(producer(&broker).await);
    // The topic exists (and has leaders) before the faults begin.
    producer.send(&topic, Message::new("warm-up")).await.unwrap();

    let sender = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            let mut confirmed = Vec::new();
            let mut failed = 0usize;
            let mut tasks = Vec::new();
            for b in 0..(N / BATCH) {
                let (producer, topic) = (producer.clone(), topic.clone());
                tasks.push(tokio::spawn(async move {
                    let batch: Vec<Message> = (0..BATCH)
                        .map(|i| Message::new(format!("{b}-{i}")).with_key(format!("k{}", i % 8)))
                        .collect();
                    producer.send_batch(&topic, batch).await
                }));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for t in tasks {
                match t.await.unwrap() {
                    Ok(receipts) => confirmed.extend(receipts.into_iter().map(|r| r.id)),
                    Err(e) => {
                        eprintln!("a batch failed: {e}");
                        failed += BATCH;
                    }
                }
            }
            (confirmed, failed)
        })
    };
    // Faults while the sends run: produce requests fail, then a broker
    // goes down and comes back, twice.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cluster = mock.cluster();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
        ],
    );
    for broker_id in [1, 2] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cluster.broker_down(broker_id).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.broker_up(broker_id).unwrap();
    }
    drop(cluster);
    let (confirmed, failed) = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("the sends finish within 120 s")
        .unwrap();
    let confirmed: HashSet<String> = confirmed.into_iter().collect();

    let mut consumer = broker.subscribe(earliest(&topic, "check")).await.unwrap();
    let consumed = drain(&mut *consumer, Duration::from_secs(60), |seen| {
        confirmed.iter().all(|id| seen.contains(id))
    })
    .await;
    let missing = confirmed.difference(&consumed).count();
    println!(
        "{N} sends: {} confirmed, {failed} failed, {} distinct consumed, {missing} confirmed but not consumed",
        confirmed.len(),
        consumed.len()
    );
    assert_eq!(missing, 0, "every confirmed send was consumed");
    assert!(
        confirmed.len() + failed == N,
        "every send was confirmed or failed"
    );
    consumer.close().await.unwrap();
}

/// The consumer copies messages into shared buffers a batch at a time
/// (large payloads apart) and slices deliveries out of them: every field
/// must come back intact, across batches and buffers, including payloads
/// kept after later messages were read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_read_in_shared_buffers_arrive_intact() {
    const N: usize = 300;
    // Around the 16 KiB own-buffer threshold, empty, small and large.
    const SIZES: [usize; 7] = [0, 1, 100, 16 * 1024, 16 * 1024 + 1, 5_000, 60_000];
    let mock = Mock::start();
    let broker = mock_broker(&mock, "").await;
    let topic = unique("buffers");
    let producer = producer(&broker).await;
    let mut sent = HashMap::new();
    let batch: Vec<Message> = (0..N)
        .map(|i| {
            let payload: Vec<u8> = (0..SIZES[i % SIZES.len()]).map(|b| (b * 31 + i) as u8).collect();
            Message::new(payload)
                .with_key(format!("key-{i}"))
                .with_header("n", i.to_string())
                .with_header("välue", format!("ü{i}"))
        })
        .collect();
    for m in &batch {
        sent.insert(m.id.clone(), m.clone());
    }
    for chunk in batch.chunks(50) {
        producer.send_batch(&topic, chunk.to_vec()).await.expect("send");
    }
    let mut consumer = broker
        .subscribe(earliest(&topic, "buffers").prefetch(64))
        .await
        .expect("subscribe");
    // Every received message is kept until the end, payload and all.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} received in 30 s",
            received.len()
        );
        let d = expect_delivery(consumer.as_mut(), "a message of the topic").await;
        d.ack().await.expect("ack");
        received.push(d.message().clone());
    }
    let mut ids = HashSet::new();
    for got in &received {
        let want = sent
            .get(&got.id)
            .unwrap_or_else(|| panic!("unknown id {}", got.id));
        assert!(ids.insert(got.id.clone()), "{} delivered twice", got.id);
        assert_eq!(got.payload, want.payload, "payload of {}", got.id);
        assert_eq!(got.key, want.key, "key of {}", got.id);
        assert_eq!(got.headers, want.headers, "headers of {}", got.id);
    }
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn unreachable_bootstrap_servers_fail_within_the_bound() {
    let started = Instant::now();
    let err = KafkaBroker::connect(config("127.0.0.1:1", ""))
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
}

#[tokio::test]
async fn an_unknown_librdkafka_property_is_named() {
    let mock = Mock::start();
    let err = KafkaBroker::connect(config(mock.servers(), "rdkafka.no.such.property=1"))
        .await
        .expect_err("librdkafka rejects an unknown property");
    assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
    assert!(err.to_string().contains("no.such.property"), "{err}");
}

#[tokio::test]
async fn an_unknown_mq_option_is_an_error() {
    let url = mq_core::BrokerUrl::parse("kafka://127.0.0.1:9092?partitons=3").unwrap();
    let err = mq_kafka::KafkaConfig::from_url(&url).unwrap_err();
    assert!(matches!(err, Error::UnknownOption { .. }), "{err:?}");
    assert!(err.to_string().contains("partitons"), "{err}");
}

#[tokio::test]
async fn a_message_over_message_max_bytes_names_topic_and_size() {
    let mock = Mock::start();
    let broker = mock_broker(&mock, "rdkafka.message.max.bytes=10000").await;
    let producer = producer(&broker).await;
    let topic = unique("big");
    let err = producer
        .send(&topic, Message::new(vec![7u8; 20_000]))
        .await
        .expect_err("over message.max.bytes");
    let Error::TooLarge {
        topic: named,
        size,
        limit,
    } = &err
    else {
        panic!("expected TooLarge, got {err:?}");
    };
    assert_eq!(named, &topic);
    assert!(*size >= 20_000, "{size}");
    assert_eq!(*limit, 10_000);
    let text = err.to_string();
    assert!(
        text.contains(&topic) && text.contains(&size.to_string()),
        "{text}"
    );
    // A message under the limit still goes through.
    producer
        .send(&topic, Message::new(vec![7u8; 1000]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_are_all_or_nothing() {
    // The mock cluster runs transactions but does not model aborted ones
    // (its Fetch reports none), so the abort is checked on a real Kafka only.
    let real = common::real_brokers();
    let mock = Mock::start();
    let broker = match &real {
        Some(servers) => connect(config(servers, "")).await,
        None => mock_broker(&mock, "").await,
    };
    assert!(broker.capabilities().transactions);
    let topic = unique("txn");
    let mut consumer = broker.subscribe(earliest(&topic, "g")).await.unwrap();
    let producer = broker.transactional_producer(&unique("txn-id")).await.unwrap();

    // send_batch is one committed transaction.
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("batch {i}"))).collect();
    let committed: HashSet<String> = producer
        .send_batch(&topic, batch)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();

    // An aborted transaction leaves nothing visible; a later committed one does.
    let aborted = producer.begin().await.unwrap();
    let mut aborted_ids = HashSet::new();
    for i in 0..3 {
        aborted_ids.insert(
            aborted
                .send(&topic, Message::new(format!("aborted {i}")))
                .await
                .unwrap()
                .id,
        );
    }
    aborted.abort().await.unwrap();
    let txn = producer.begin().await.unwrap();
    let mut later = HashSet::new();
    for i in 0..2 {
        later.insert(
            txn.send(&topic, Message::new(format!("later {i}")))
                .await
                .unwrap()
                .id,
        );
    }
    txn.commit().await.unwrap();

    let want: HashSet<String> = committed.union(&later).cloned().collect();
    let seen = drain(&mut *consumer, Duration::from_secs(30), |seen| {
        want.is_subset(seen)
    })
    .await;
    assert!(want.is_subset(&seen), "every committed message is consumed");
    let extra = drain(&mut *consumer, Duration::from_secs(2), |_| false).await;
    let seen: HashSet<String> = seen.union(&extra).cloned().collect();
    if real.is_some() {
        assert!(
            seen.is_disjoint(&aborted_ids),
            "messages of the aborted transaction were consumed"
        );
        assert_eq!(seen, want);
    } else {
        println!(
            "mock cluster: {} committed messages consumed; the abort is not checked (the mock does not model aborted transactions)",
            want.len()
        );
        assert!(seen.is_subset(&want.union(&aborted_ids).cloned().collect()));
    }
    consumer.close().await.unwrap();
}

/// Receives one delivery within 15 s.
async fn next(consumer: &mut dyn Consumer, what: &str) -> mq_core::Delivery {
    match tokio::time::timeout(Duration::from_secs(15), consumer.recv()).await {
        Ok(Ok(Some(d))) => d,
        other => panic!("no delivery within 15 s ({what}): {other:?}"),
    }
}

/// Sends `out <payload>` for `input` and consumes `input`, in one transaction.
async fn transform(
    producer: &mq_kafka::KafkaTransactionalProducer,
    output: &str,
    input: mq_core::Delivery,
    commit: bool,
) {
    let mut txn = producer.begin().await.unwrap();
    let payload = String::from_utf8_lossy(&input.message().payload).into_owned();
    let out = if commit {
        format!("out {payload}")
    } else {
        format!("aborted {payload}")
    };
    txn.send(output, Message::new(out)).await.unwrap();
    txn.consume(input).unwrap();
    if commit {
        txn.commit().await.unwrap();
    } else {
        txn.abort().await.unwrap();
    }
}

/// The group's offset after a transaction: on a real Kafka the
/// transaction's (`want`); the mock cluster accepts a transaction's offsets
/// but does not store them (read in its source), so there it checks that
/// the consumer itself committed nothing.
async fn transaction_committed(
    real: bool,
    servers: &str,
    group: &str,
    topic: &str,
    partition: i32,
    want: i64,
) {
    if real {
        committed_becomes(servers, group, topic, partition, want).await;
    } else {
        let (s, g, t) = (servers.to_string(), group.to_string(), topic.to_string());
        let now = tokio::task::spawn_blocking(move || committed(&s, &g, &t, partition))
            .await
            .unwrap();
        assert_eq!(
            now,
            Offset::Invalid,
            "a transactional consumer committed by itself"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_transform_produce_commits_input_offsets_with_the_output() {
    // On the mock cluster, offsets sent to a transaction are not stored and
    // aborted messages stay visible: the offsets, the restart and the abort
    // of the output are checked on a real Kafka only.
    let real = common::real_brokers();
    let mock = Mock::start();
    let servers = real.clone().unwrap_or_else(|| mock.servers().to_string());
    let broker = match &real {
        Some(servers) => connect(config(servers, "")).await,
        None => mock_broker(&mock, "").await,
    };
    let (input, output, group) = (unique("eos-in"), unique("eos-out"), unique("eos-g"));
    // One key: one partition, read in order.
    let inputs: Vec<Message> = (1..=6)
        .map(|i| Message::new(format!("{i}")).with_key("k"))
        .collect();
    let receipts = producer(&broker).await.send_batch(&input, inputs).await.unwrap();
    let (partition, offsets): (i32, Vec<i64>) = {
        let mut partition = None;
        let offsets = receipts
            .iter()
            .map(|r| match r.position {
                Position::Offset { partition: p, offset } => {
                    partition = p;
                    i64::try_from(offset).unwrap()
                }
                ref other => panic!("a Kafka receipt without an offset: {other:?}"),
            })
            .collect();
        (partition.expect("a partition"), offsets)
    };

    let mut consumer = broker
        .subscribe_transactional(earliest(&input, &group))
        .await
        .unwrap();
    let txns = broker.transactional_producer(&unique("eos-id")).await.unwrap();

    // 1, 2, 3: each committed with its output; the group's offset follows.
    for (i, offset) in offsets.iter().take(3).enumerate() {
        let d = next(&mut consumer, "inputs 1 to 3").await;
        assert_eq!(d.message().payload, format!("{}", i + 1).as_bytes());
        transform(&txns, &output, d, true).await;
        transaction_committed(real.is_some(), &servers, &group, &input, partition, offset + 1).await;
    }

    // 4: aborted. It comes back as a copy (attempt 2), requeued in a
    // transaction that committed its offset.
    let d = next(&mut consumer, "input 4").await;
    assert_eq!(d.message().payload, &b"4"[..]);
    let id4 = d.message().id.clone();
    transform(&txns, &output, d, false).await;
    transaction_committed(
        real.is_some(),
        &servers,
        &group,
        &input,
        partition,
        offsets[3] + 1,
    )
    .await;

    // 5, 6 and the copy of 4, in any order, each committed with its output.
    let mut rest = Vec::new();
    for _ in 0..3 {
        let d = next(&mut consumer, "inputs 5, 6 and the copy of 4").await;
        rest.push((
            String::from_utf8_lossy(&d.message().payload).into_owned(),
            d.attempt(),
            d.message().id.clone(),
        ));
        transform(&txns, &output, d, true).await;
    }
    rest.sort();
    assert_eq!(
        rest[0],
        ("4".to_string(), 2, id4),
        "the aborted input is requeued once"
    );
    assert_eq!((rest[1].0.as_str(), rest[2].0.as_str()), ("5", "6"));
    transaction_committed(
        real.is_some(),
        &servers,
        &group,
        &input,
        partition,
        offsets[5] + 1,
    )
    .await;

    // A delivery of a consumer that commits by itself cannot join.
    let mut outputs = broker.subscribe(earliest(&output, "eos-reader")).await.unwrap();
    let plain = next(&mut *outputs, "an output").await;
    let mut seen = HashSet::from([String::from_utf8_lossy(&plain.message().payload).into_owned()]);
    let mut txn = txns.begin().await.unwrap();
    let err = txn.consume(plain).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("subscribe_transactional"), "{err}");
    txn.abort().await.unwrap();

    // Nothing else arrives; after a restart (on a real Kafka) nothing is
    // read again: every input was committed by a transaction.
    let more = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await;
    assert!(
        !matches!(more, Ok(Ok(Some(_)))),
        "an input was delivered twice: {more:?}"
    );
    consumer.close().await.unwrap();
    if real.is_some() {
        let mut again = broker
            .subscribe_transactional(earliest(&input, &group))
            .await
            .unwrap();
        let replayed = tokio::time::timeout(Duration::from_secs(3), again.recv()).await;
        assert!(
            !matches!(replayed, Ok(Ok(Some(_)))),
            "an input was read again: {replayed:?}"
        );
        again.close().await.unwrap();
    } else {
        println!(
            "mock cluster: 6 inputs transformed in 7 transactions (one aborted and requeued); offsets, restart and abort visibility are checked on a real Kafka only"
        );
    }

    // The output has one committed message per input.
    let want: HashSet<String> = (1..=6).map(|i| format!("out {i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !want.is_subset(&seen) && Instant::now() < deadline {
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(250), outputs.recv()).await {
            seen.insert(String::from_utf8_lossy(&d.message().payload).into_owned());
            d.ack().await.unwrap();
        }
    }
    assert!(want.is_subset(&seen), "outputs seen: {seen:?}");
    if real.is_some() {
        let extra = drain(&mut *outputs, Duration::from_secs(2), |_| false).await;
        assert!(
            extra.is_empty() && !seen.contains("aborted 4"),
            "the aborted output was consumed: {seen:?}"
        );
    }
    outputs.close().await.unwrap();
}

/// Issue 13, defect 11: Kafka refuses topic names outside
/// `[a-zA-Z0-9._-]` or over 249 characters; mq says so before the round
/// trip, naming the field, and the group's retry topic counts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_topic_names_are_refused_before_the_network() {
    let mock = Mock::start();
    let broker = mock_broker(&mock, "").await;
    let producer = producer(&broker).await;
    for (topic, why) in [
        ("orders/eu", "'/'"),
        ("caf\u{e9}", "'\u{e9}'"),
        (&*"t".repeat(250), "at most 249"),
    ] {
        match producer.send(topic, Message::new("x")).await {
            Err(Error::InvalidOption { option, reason, .. }) => {
                assert_eq!(option, "topic");
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("`{topic}`: expected InvalidOption, got {other:?}"),
        }
    }
    let err = broker
        .subscribe(Subscription::new("orders", "billing team"))
        .await
        .expect_err("a group with a space makes an illegal retry topic");
    assert!(
        matches!(err, Error::InvalidOption { ref option, .. } if option == "group"),
        "{err}"
    );
}

/// Issue 13, defect 6: a group is per topic, so one group name subscribed
/// on several topics is several Kafka groups, `{topic}.{group}` (it was one
/// group spanning the topics, rebalanced on every subscribe, its offsets
/// committed under the bare name); `group_id=exact` keeps the bare name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_name_on_several_topics_is_several_kafka_groups() {
    const TOPICS: usize = 3;
    let mock = Mock::start();
    let group = unique("shared-name");
    for exact in [false, true] {
        let broker = mock_broker(&mock, if exact { "group_id=exact" } else { "" }).await;
        let producer = producer(&broker).await;
        let topics: Vec<String> = (0..TOPICS).map(|_| unique("per-topic")).collect();
        let mut consumers = Vec::new();
        for topic in &topics {
            let sub = Subscription::new(topic, &group).start(StartPosition::Earliest);
            consumers.push(broker.subscribe(sub).await.expect("subscribe"));
        }
        for (topic, consumer) in topics.iter().zip(consumers.iter_mut()) {
            let receipt = producer.send(topic, Message::new("x")).await.expect("send");
            let Position::Offset {
                partition: Some(p),
                offset,
            } = receipt.position
            else {
                panic!("a Kafka receipt has a partition and an offset: {receipt:?}");
            };
            let next = i64::try_from(offset).expect("an offset fits i64") + 1;
            let d = expect_delivery(consumer.as_mut(), "the message").await;
            d.ack().await.expect("ack");
            // Committed under `{topic}.{group}` (what `committed` reads), or
            // under the bare name with `group_id=exact`.
            if exact {
                let (s, g, t) = (mock.servers().to_string(), group.clone(), topic.clone());
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let (s, g, t) = (s.clone(), g.clone(), t.clone());
                    let now = tokio::task::spawn_blocking(move || {
                        let reader: BaseConsumer = ClientConfig::new()
                            .set("bootstrap.servers", &s)
                            .set("group.id", &g)
                            .create()
                            .expect("offset reader");
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&t, p);
                        reader
                            .committed_offsets(tpl, Duration::from_secs(10))
                            .expect("committed")
                            .elements()[0]
                            .offset()
                    })
                    .await
                    .unwrap();
                    if now == Offset::Offset(next) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "group_id=exact: committed {now:?} under `{group}`"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } else {
                committed_becomes(mock.servers(), &group, topic, p, next).await;
            }
        }
        for mut c in consumers {
            c.close().await.expect("close");
        }
    }
}
