//! `mq_core::dlq::replay` on a real Redis: a replay cut short at any point
//! (its future dropped) loses no dead letter; running it again finishes.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mq_core::dlq::{ReplayOptions, replay};
use mq_core::testkit::unique;
use mq_core::{Broker, Message, Nack, ProducerOptions, StartPosition, Subscription};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_short_loses_nothing() {
    const N: usize = 200;
    let mut cut_mid_way = 0;
    // Cuts from early to late: on a busy machine the early ones may land
    // before anything was sent, on a quiet one the late ones after the end.
    for cut_after_ms in [2u64, 10, 30, 80, 200, 500] {
        let broker = common::redis_broker("").await;
        let topic = unique("dlq");
        let dlq = format!("{topic}.dlq");
        let mut consumer = broker
            .subscribe(Subscription::new(&topic, "svc").start(StartPosition::Earliest))
            .await
            .unwrap();
        let producer = broker.producer(ProducerOptions::default()).await.unwrap();
        let batch: Vec<Message> = (0..N).map(|i| Message::new(format!("{i}"))).collect();
        let all: HashSet<String> = batch.iter().map(|m| m.id.clone()).collect();
        producer.send_batch(&topic, batch).await.unwrap();
        for _ in 0..N {
            let d = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            d.nack(Nack::dead_letter("bad")).await.unwrap();
        }
        // Every one dead-lettered, none left for the group.
        let replay_opts = ReplayOptions::default().idle(Duration::from_millis(500));
        let dry = replay(&broker, &dlq, &replay_opts.clone().dry_run(true))
            .await
            .unwrap();
        assert_eq!(dry.replayed, N, "{dry}");

        // The replay future is dropped after `cut_after_ms`.
        let _ = tokio::time::timeout(
            Duration::from_millis(cut_after_ms),
            replay(&broker, &dlq, &replay_opts),
        )
        .await;
        let mut got: HashMap<String, usize> = HashMap::new();
        while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await {
            *got.entry(d.message().id.clone()).or_default() += 1;
            d.ack().await.unwrap();
        }
        let before = got.len();
        if (1..N).contains(&before) {
            cut_mid_way += 1;
        }
        let done = replay(&broker, &dlq, &replay_opts).await.unwrap();
        while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            *got.entry(d.message().id.clone()).or_default() += 1;
            d.ack().await.unwrap();
        }
        let missing = all.iter().filter(|id| !got.contains_key(*id)).count();
        let twice = got.values().filter(|&&n| n > 1).count();
        mq_core::testkit::report(&format!(
            "dlq replay on redis cut after {cut_after_ms} ms: {before} of {N} back before the cut, then {done}; missing {missing}, twice {twice}"
        ));
        assert_eq!(missing, 0, "cut after {cut_after_ms} ms");
        assert!(got.keys().all(|id| all.contains(id)));
        consumer.close().await.unwrap();
        broker.close().await.unwrap();
    }
    assert!(cut_mid_way > 0, "no cut landed in the middle of a replay");
}
