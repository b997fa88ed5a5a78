//! Records another program produced onto a topic mq reads: odd headers,
//! huge, negative and non-numeric attempt counts, far-future due times,
//! non-UTF-8 bytes. None may panic the consumer, stall it, or vanish: each
//! is delivered or dead-lettered with a reason, and the consumer goes on
//! delivering. On librdkafka's mock cluster (or `MQ_TEST_KAFKA_BROKERS`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{MOCK_OPTIONS, Mock, config, connect, real_brokers};
use mq_core::testkit::foreign::{CASE, ForeignCase, account_for, foreign_cases, still_delivers};
use mq_core::testkit::{expect_delivery, group_for, unique};
use mq_core::{Broker, Message, ProducerOptions, StartPosition, Subscription};
use mq_kafka::KafkaBroker;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const MAX_ATTEMPTS: u32 = 3;

/// The broker under test and the servers a raw producer writes to; the
/// mock (when used) lives as long as the returned guard.
async fn setup() -> (KafkaBroker, String, Option<Mock>) {
    match real_brokers() {
        Some(servers) => (connect(config(&servers, "")).await, servers, None),
        None => {
            let mock = Mock::start();
            let servers = mock.servers().to_string();
            let broker = connect(config(&servers, MOCK_OPTIONS)).await;
            (broker, servers, Some(mock))
        }
    }
}

fn raw_producer(servers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("a raw rdkafka producer")
}

/// Produces one record made of `case`: a field named `key` is the record
/// key, `p` the payload, every other one a header (names as UTF-8, lossy).
async fn produce(raw: &FutureProducer, topic: &str, i: usize, case: &ForeignCase) {
    let mut headers = OwnedHeaders::new();
    let mut key = None;
    let mut payload = Vec::new();
    for (name, value) in case {
        match name.as_slice() {
            b"key" => key = Some(value.clone()),
            b"p" => payload = value.clone(),
            _ => {
                headers = headers.insert(Header {
                    key: &String::from_utf8_lossy(name),
                    value: Some(value.as_slice()),
                });
            }
        }
    }
    let case = i.to_string();
    headers = headers.insert(Header {
        key: CASE,
        value: Some(case.as_bytes()),
    });
    let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic)
        .payload(&payload)
        .headers(headers);
    if let Some(key) = &key {
        record = record.key(key);
    }
    raw.send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("raw produce of case {i}: {e}"));
}

/// Issue 13, defect 4: records with a far-future `mq-due` header on the
/// subscribed topic were held, each keeping a prefetch slot, until the
/// consumer delivered nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_due_headers_on_the_topic_do_not_stall_the_consumer() {
    const PREFETCH: usize = 10;
    let (broker, servers, _mock) = setup().await;
    let topic = unique("due");
    let sub = Subscription::new(&topic, group_for(&topic, "g"))
        .prefetch(PREFETCH)
        .start(StartPosition::Earliest);
    let mut consumer = broker.subscribe(sub).await.expect("subscribe");
    let raw = raw_producer(&servers);
    let far = [vec![
        (b"mq-due".to_vec(), b"253402300799000".to_vec()),
        (b"odd".to_vec(), b"v\xff".to_vec()),
        (b"p".to_vec(), b"from the future\xfe".to_vec()),
    ]];
    for i in 0..PREFETCH * 3 {
        produce(&raw, &topic, i, &far[0]).await;
    }
    let normal = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer")
        .send(&topic, Message::new("a normal record"))
        .await
        .expect("send")
        .id;
    let mut seen = HashSet::new();
    let mut got_normal = false;
    while seen.len() < PREFETCH * 3 || !got_normal {
        let d = expect_delivery(
            consumer.as_mut(),
            &format!("the next record ({} of the far-future ones so far)", seen.len()),
        )
        .await;
        if d.message().id == normal {
            got_normal = true;
        } else {
            let case = d.message().headers.get(CASE).cloned().expect("the case header");
            assert_eq!(
                d.message().headers.get("mq-due").map(String::as_str),
                Some("253402300799000"),
                "a stranger's header is kept as it came"
            );
            assert_eq!(
                d.message().headers.get("odd").map(String::as_str),
                Some("v\u{fffd}"),
                "bytes that are not UTF-8 become U+FFFD in headers"
            );
            assert!(
                d.message().payload.ends_with(b"\xfe"),
                "the payload keeps its bytes"
            );
            seen.insert(case);
        }
        d.ack().await.expect("ack");
    }
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_records_are_delivered_or_dead_lettered_never_dropped() {
    const CASES: usize = 200;
    let (broker, servers, _mock) = setup().await;
    let topic = unique("foreign");
    let sub = Subscription::new(&topic, group_for(&topic, "g"))
        .prefetch(50)
        .max_attempts(MAX_ATTEMPTS)
        .start(StartPosition::Earliest);
    let mut consumer = broker.subscribe(sub).await.expect("subscribe");
    let mut dead = broker
        .subscribe(
            Subscription::new(format!("{topic}.dlq"), group_for(&topic, "dlq"))
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe to the dead letters");
    let cases = foreign_cases(CASES, &["mq-id", "mq-attempt", "mq-due", "key", "p"]);
    let raw = raw_producer(&servers);
    for (i, case) in cases.iter().enumerate() {
        produce(&raw, &topic, i, case).await;
    }
    let tally = account_for(
        &broker,
        consumer.as_mut(),
        dead.as_mut(),
        CASES,
        MAX_ATTEMPTS,
        Duration::from_secs(90),
    )
    .await;
    tally.assert_all_accounted(&format!("kafka: {CASES} foreign records"), CASES);
    still_delivers(&broker, consumer.as_mut(), &topic).await;
    consumer.close().await.expect("close");
    dead.close().await.expect("close");
}
