//! Messages another program published onto an exchange mq reads: odd
//! headers of every AMQP type, huge, negative and non-numeric attempt and
//! delivery counts, non-UTF-8 bytes, odd ids and timestamps. None may panic
//! the consumer, stop it, or vanish: each is delivered or dead-lettered
//! with a reason, and the consumer goes on delivering.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use mq_core::testkit::foreign::{CASE, ForeignCase, account_for, foreign_cases, still_delivers};
use mq_core::testkit::{group_for, unique};
use mq_core::{Broker, Subscription};

const CASES: usize = 200;
const MAX_ATTEMPTS: u32 = 3;

/// A short string of at most 255 bytes (AMQP's limit), lossy where the
/// bytes are not UTF-8.
fn short(bytes: &[u8]) -> ShortString {
    let text = String::from_utf8_lossy(bytes);
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&text[..end])
}

/// The case as AMQP properties: `message_id` and `timestamp` set from the
/// fields of those names, every other field a header whose type follows
/// its value (numbers as numbers on every other case, to try both).
fn properties(i: usize, case: &ForeignCase) -> BasicProperties {
    let mut props = BasicProperties::default();
    let mut table = FieldTable::default();
    for (name, value) in case {
        match name.as_slice() {
            b"message_id" => props = props.with_message_id(short(value)),
            b"timestamp" => {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                props = props.with_timestamp(n.unwrap_or(u64::MAX));
            }
            _ => {
                // The content header frame must fit in RabbitMQ's frame_max.
                let value = &value[..value.len().min(20_000)];
                let number = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                let amqp = match number {
                    Some(n) if i.is_multiple_of(2) => AMQPValue::LongLongInt(n),
                    Some(n) if i.is_multiple_of(3) => AMQPValue::Double(n as f64),
                    _ => AMQPValue::LongString(LongString::from(value.to_vec())),
                };
                table.insert(short(name), amqp);
            }
        }
    }
    if i.is_multiple_of(5) {
        table.insert("nested".into(), AMQPValue::FieldTable(FieldTable::default()));
        table.insert("flag".into(), AMQPValue::Boolean(true));
        table.insert("void".into(), AMQPValue::Void);
    }
    table.insert(
        CASE.into(),
        AMQPValue::LongString(LongString::from(i.to_string())),
    );
    props.with_headers(table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_are_delivered_or_dead_lettered_never_dropped() {
    let broker = common::rabbit_broker("").await;
    let topic = unique("foreign");
    let sub = Subscription::new(&topic, group_for(&topic, "g"))
        .prefetch(50)
        .max_attempts(MAX_ATTEMPTS);
    let mut consumer = broker.subscribe(sub).await.expect("subscribe");
    let mut dead = broker
        .subscribe(Subscription::new(
            format!("{topic}.dlq"),
            group_for(&topic, "dlq"),
        ))
        .await
        .expect("subscribe to the dead letters");

    let cases = foreign_cases(
        CASES,
        &[
            "mq-attempt",
            "mq-key",
            "mq-ts",
            "x-delivery-count",
            "message_id",
            "timestamp",
        ],
    );
    let conn = broker.connection().await.expect("the lapin connection");
    let channel = conn.create_channel().await.expect("a raw channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for (i, case) in cases.iter().enumerate() {
        let payload = case
            .iter()
            .find(|(n, _)| n == b"p")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        channel
            .basic_publish(
                topic.as_str().into(),
                "foreign".into(),
                BasicPublishOptions::default(),
                &payload,
                properties(i, case),
            )
            .await
            .unwrap_or_else(|e| panic!("raw publish of case {i}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("confirm of case {i}: {e}"));
    }

    let tally = account_for(
        &broker,
        consumer.as_mut(),
        dead.as_mut(),
        CASES,
        MAX_ATTEMPTS,
        Duration::from_secs(60),
    )
    .await;
    tally.assert_all_accounted(&format!("rabbitmq: {CASES} foreign messages"), CASES);
    still_delivers(&broker, consumer.as_mut(), &topic).await;
}
