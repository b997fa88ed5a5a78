//! Entries another program wrote onto a stream mq reads: odd fields,
//! huge, negative and non-numeric attempt counts, non-UTF-8 bytes. None
//! may panic the consumer, stop it, or vanish: each is delivered or
//! dead-lettered with a reason, and the consumer goes on delivering.

#![allow(clippy::expect_used)] // test helpers panic on failure by design

mod common;

use std::time::Duration;

use mq_core::Subscription;
use mq_core::testkit::foreign::{CASE, account_for, foreign_cases, still_delivers};
use mq_core::testkit::{group_for, unique};

const CASES: usize = 200;
const MAX_ATTEMPTS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entries_are_delivered_or_dead_lettered_never_dropped() {
    let broker = common::broker().await;
    let topic = unique("foreign");
    let sub = Subscription::new(&topic, group_for(&topic, "g"))
        .prefetch(50)
        .ack_timeout(Duration::from_millis(500))
        .max_attempts(MAX_ATTEMPTS);
    let mut consumer = broker.subscribe(sub).await.expect("subscribe");
    let mut dead = broker
        .subscribe(Subscription::new(
            format!("{topic}.dlq"),
            group_for(&topic, "dlq"),
        ))
        .await
        .expect("subscribe to the dead letters");

    // mq's own fields (id, key, time, attempt, payload, a header) among
    // random ones; the case number last, so it wins over a random twin.
    let cases = foreign_cases(CASES, &["id", "k", "t", "a", "p", "h:x", "h:"]);
    let mut conn = redis::Client::open(common::url())
        .expect("test URL")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection to the test Redis");
    let key = format!("mq:{topic}");
    for (i, case) in cases.iter().enumerate() {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key).arg("*");
        for (name, value) in case {
            cmd.arg(name.as_slice()).arg(value.as_slice());
        }
        cmd.arg(CASE).arg(i.to_string());
        let _: String = cmd.query_async(&mut conn).await.expect("raw XADD");
    }
    let huge = cases
        .iter()
        .filter(|c| c.iter().any(|(n, v)| n == b"a" && v.starts_with(b"4294967295")))
        .count();

    let tally = account_for(
        broker.as_ref(),
        consumer.as_mut(),
        dead.as_mut(),
        CASES,
        MAX_ATTEMPTS,
        Duration::from_secs(60),
    )
    .await;
    // Those dropped unacked are dead-lettered when reclaimed.
    tally.assert_all_accounted(
        &format!("redis: {CASES} foreign entries ({huge} claiming attempt 4294967295)"),
        CASES,
    );
    still_delivers(broker.as_ref(), consumer.as_mut(), &topic).await;
}
