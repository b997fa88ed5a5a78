//! Faults injected on purpose (`mq_memory::Faults`): each happens, is
//! counted, and is the same for the same seed; `restart` loses nothing
//! acked or confirmed; with no fault set nothing changes.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mq_core::{Broker, Consumer, Message, ProducerOptions, Registry, StartPosition, Subscription};
use mq_memory::{FaultCounts, Faults, MemoryBroker, MemoryConfig};

fn broker(faults: Faults) -> MemoryBroker {
    MemoryBroker::with_config(MemoryConfig::default().faults(faults))
}

async fn consumer(broker: &MemoryBroker) -> Box<dyn Consumer> {
    broker
        .subscribe(
            Subscription::new("t", "g")
                .start(StartPosition::Earliest)
                .prefetch(8)
                .unlimited_attempts(),
        )
        .await
        .unwrap()
}

/// What one consumer sees of `n` messages (keys `k0`..`k3`), acking each:
/// (payload, attempt) in order, until all `n` were acked once for real.
async fn run(faults: Faults, n: usize) -> (Vec<(String, u32)>, FaultCounts) {
    let (seen, counts, _) = run_timed(faults, n).await;
    (seen, counts)
}

/// As [`run`], with each delivery's time since the start (in ms, on the
/// test's paused clock).
async fn run_timed(faults: Faults, n: usize) -> (Vec<(String, u32)>, FaultCounts, Vec<u128>) {
    let start = tokio::time::Instant::now();
    let mut times = Vec::new();
    let broker = broker(faults);
    let mut consumer = consumer(&broker).await;
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    for i in 0..n {
        producer
            .send("t", Message::new(i.to_string()).with_key(format!("k{}", i % 4)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..n * 10 {
        let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await else {
            break;
        };
        seen.push((
            String::from_utf8(d.message().payload.to_vec()).unwrap(),
            d.attempt(),
        ));
        times.push(start.elapsed().as_millis());
        d.ack().await.unwrap();
        let stats = broker.group_stats("t", "g").unwrap();
        if stats.backlog == 0 && stats.ready == 0 && stats.delayed == 0 && stats.in_flight == 0 {
            // Drain what the consumer still buffers (duplicates).
            while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await
            {
                seen.push((
                    String::from_utf8(d.message().payload.to_vec()).unwrap(),
                    d.attempt(),
                ));
                d.ack().await.unwrap();
            }
            break;
        }
    }
    (seen, broker.faults(), times)
}

fn payloads(seen: &[(String, u32)]) -> HashSet<String> {
    seen.iter().map(|(p, _)| p.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn each_fault_happens_is_counted_and_replays_for_its_seed() {
    let n = 200;
    let all: HashSet<String> = (0..n).map(|i| i.to_string()).collect();
    for (name, faults) in [
        ("duplicate", Faults::seeded(1).duplicate(0.2)),
        ("redeliver", Faults::seeded(2).redeliver(0.2)),
        ("reorder", Faults::seeded(3).reorder(0.3)),
        ("delay", Faults::seeded(4).delay(0.3, Duration::from_millis(50))),
    ] {
        let (first, counts) = run(faults.clone(), n).await;
        let (second, again) = run(faults.clone(), n).await;
        assert_eq!(first, second, "{name}: the same seed, the same deliveries");
        assert_eq!(counts, again, "{name}");
        let mut other = faults.clone();
        other.seed += 100;
        let (third, _) = run(other, n).await;
        if name != "delay" {
            assert_ne!(first, third, "{name}: another seed, other deliveries");
        }
        assert_eq!(payloads(&first), all, "{name}: every message delivered");
        let in_order: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let got: Vec<String> = first.iter().map(|(p, _)| p.clone()).collect();
        match name {
            "duplicate" => {
                assert!(counts.duplicated > 10, "{counts:?}");
                assert_eq!(first.len() as u64, n as u64 + counts.duplicated);
                let mut times: HashMap<&str, u32> = HashMap::new();
                for (p, attempt) in &first {
                    *times.entry(p.as_str()).or_default() += 1;
                    assert_eq!(*attempt, 1, "a duplicate keeps its attempt");
                }
                assert!(times.values().any(|&t| t == 2));
            }
            "redeliver" => {
                assert!(counts.redelivered > 10, "{counts:?}");
                assert_eq!(first.len() as u64, n as u64 + counts.redelivered);
                assert!(first.iter().any(|(_, a)| *a >= 2), "redelivered with attempt + 1");
            }
            "reorder" => {
                assert!(counts.reordered > 10, "{counts:?}");
                assert_eq!(first.len(), n);
                assert_ne!(got, in_order, "reordered");
                // Never across a key: each key's messages keep their order.
                for k in 0..4 {
                    let of_key: Vec<usize> = got
                        .iter()
                        .map(|p| p.parse::<usize>().unwrap())
                        .filter(|i| i % 4 == k)
                        .collect();
                    assert!(of_key.windows(2).all(|w| w[0] < w[1]), "key k{k}: {of_key:?}");
                }
            }
            "delay" => {
                assert!(counts.delayed > 10, "{counts:?}");
                assert_eq!(got, in_order, "a delay reorders nothing");
                let (_, _, t1) = run_timed(faults.clone(), n).await;
                let (_, _, t2) = run_timed(faults.clone(), n).await;
                assert_eq!(t1, t2, "the same delays for the same seed");
                let mut other = faults.clone();
                other.seed += 100;
                assert_ne!(run_timed(other, n).await.2, t1, "other delays for another seed");
                assert!(t1.last().is_some_and(|&ms| ms > 100), "{t1:?}");
            }
            _ => unreachable!(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reorder_across_keys_only_when_asked() {
    let (seen, counts) = run(Faults::seeded(3).reorder(0.5).reorder_across_keys(true), 200).await;
    assert!(counts.reordered > 20, "{counts:?}");
    let got: Vec<usize> = seen.iter().map(|(p, _)| p.parse().unwrap()).collect();
    let crossed = (0..4).any(|k| {
        let of_key: Vec<usize> = got.iter().copied().filter(|i| i % 4 == k).collect();
        of_key.windows(2).any(|w| w[0] > w[1])
    });
    assert!(crossed, "some key's order changed");
}

/// Sends `n` one by one, retrying each failed send; returns the indices
/// whose first try failed and what the topic holds.
async fn send_all(faults: Faults, n: usize) -> (Vec<usize>, usize, FaultCounts) {
    let broker = broker(faults);
    let _keep = consumer(&broker).await;
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let mut failed = Vec::new();
    for i in 0..n {
        let message = Message::new(i.to_string());
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 50);
            match producer.send("t", message.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    assert!(e.to_string().contains("injected fault"), "{e}");
                    if tries == 1 {
                        failed.push(i);
                    }
                }
            }
        }
    }
    (failed, broker.topic_len("t"), broker.faults())
}

#[tokio::test]
async fn failed_sends_store_nothing_and_lost_confirms_store_the_message() {
    let n = 300;
    let (failed, stored, counts) = send_all(Faults::seeded(9).fail_send(0.2), n).await;
    assert!(counts.failed_sends > 20, "{counts:?}");
    assert_eq!(
        stored, n,
        "a failed send stored nothing: the retries stored each once"
    );
    assert_eq!(
        send_all(Faults::seeded(9).fail_send(0.2), n).await.0,
        failed,
        "same seed"
    );

    let (lost, stored, counts) = send_all(Faults::seeded(9).lose_confirm(0.2), n).await;
    assert!(counts.lost_confirms > 20, "{counts:?}");
    assert_eq!(
        stored as u64,
        n as u64 + counts.lost_confirms,
        "a lost confirm stored the message: its retry stored it again"
    );
    assert_eq!(send_all(Faults::seeded(9).lose_confirm(0.2), n).await.0, lost);

    // A batch fails or loses its confirm as a whole.
    let broker = broker(Faults::seeded(5).fail_send(1.0));
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    assert!(
        producer
            .send_batch("t", vec![Message::new("a"), Message::new("b")])
            .await
            .is_err()
    );
    assert_eq!(broker.topic_len("t"), 0);
}

#[tokio::test]
async fn restart_hands_back_what_was_not_settled_and_loses_nothing_acked() {
    let broker = MemoryBroker::new();
    let mut consumer = consumer(&broker).await;
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    for i in 0..10 {
        producer.send("t", Message::new(i.to_string())).await.unwrap();
    }
    let mut held = Vec::new();
    for i in 0..5 {
        let d = consumer.recv().await.unwrap().unwrap();
        if i < 2 {
            d.ack().await.unwrap();
        } else {
            held.push(d);
        }
    }
    broker.restart();
    assert_eq!(broker.faults().restarts, 1);
    for d in &held {
        let e = d.ack().await.unwrap_err();
        assert!(matches!(e, mq_core::Error::DeliveryExpired { .. }), "{e}");
    }
    let reconnect = consumer.recv().await.unwrap_err();
    assert!(reconnect.is_retryable(), "{reconnect}");
    let mut rest = Vec::new();
    while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
        rest.push((
            String::from_utf8(d.message().payload.to_vec()).unwrap(),
            d.attempt(),
        ));
        d.ack().await.unwrap();
    }
    // What the consumer held or had taken into its prefetch (8: 0 to 7)
    // comes back first as attempt 2, then the rest; the two acked never.
    let want: Vec<(String, u32)> = (2..8)
        .map(|i| (i.to_string(), 2))
        .chain((8..10).map(|i| (i.to_string(), 1)))
        .collect();
    assert_eq!(rest, want);
    // A consumer waiting in recv sees the reconnect too.
    let waiting = tokio::spawn(async move { consumer.recv().await.map(|d| d.is_some()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.restart();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_err(), "{got:?}");
}

#[tokio::test]
async fn faults_come_from_the_url_and_bad_values_are_refused() {
    let mut registry = Registry::new();
    mq_memory::register(&mut registry);
    let broker = registry
        .connect("memory://?seed=3&fail_send=1&duplicate=0.5&delay=0.1&delay_ms=20&reorder_across_keys=true")
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let e = producer.send("t", Message::new("x")).await.unwrap_err();
    assert!(e.to_string().contains("injected fault"), "{e}");
    for bad in [
        "memory://?duplicate=2",
        "memory://?fail_send=-0.1",
        "memory://?delay=x",
        "memory://?dupliate=0.1",
    ] {
        let e = registry.connect(bad).await.unwrap_err();
        assert!(
            matches!(
                e,
                mq_core::Error::InvalidOption { .. } | mq_core::Error::UnknownOption { .. }
            ),
            "{bad}: {e}"
        );
    }
    // No fault set: nothing is injected or counted.
    let quiet = MemoryBroker::new();
    let (seen, counts) = run(Faults::default(), 50).await;
    assert_eq!(seen.len(), 50);
    assert_eq!(counts, FaultCounts::default());
    assert_eq!(quiet.faults(), FaultCounts::default());
}
