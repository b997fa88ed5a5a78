//! The worker on the in-memory broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers panic on failure by design

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mq_core::retry::{Fixed, Never};
use mq_core::worker::{Guarantee, HandlerResult, Job, MemoryIdempotencyStore, Publish, Worker, WorkerStats};
use mq_core::{Broker, Consumer, Message, ProducerOptions, Subscription, headers};
use mq_memory::MemoryBroker;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(20);

async fn send_n(broker: &MemoryBroker, topic: &str, n: usize) -> Vec<String> {
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            producer
                .send(topic, Message::new(format!("{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    ids
}

/// Waits (bounded) until `done()` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop(
    token: CancellationToken,
    running: tokio::task::JoinHandle<mq_core::Result<WorkerStats>>,
) -> WorkerStats {
    token.cancel();
    tokio::time::timeout(BOUND, running)
        .await
        .expect("worker stops in time")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_bound_is_respected_and_reached() {
    let broker = MemoryBroker::new();
    let consumer = broker
        .subscribe(Subscription::new("t", "g").prefetch(100))
        .await
        .unwrap();
    send_n(&broker, "t", 40).await;
    let (now, max, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let token = CancellationToken::new();
    let handler = {
        let (now, max, done) = (now.clone(), max.clone(), done.clone());
        move |_job: Job| {
            let (now, max, done) = (now.clone(), max.clone(), done.clone());
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                HandlerResult::Ok(vec![])
            }
        }
    };
    let running = tokio::spawn(Worker::new(consumer).concurrency(4).run(handler, token.clone()));
    until("40 handled", || done.load(Ordering::SeqCst) == 40).await;
    let stats = stop(token, running).await;
    assert_eq!(stats.handled, 40);
    assert_eq!(
        max.load(Ordering::SeqCst),
        4,
        "never more than 4 at once, and 4 were reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_delays_then_dead_letter_with_the_reason() {
    let broker = MemoryBroker::new();
    let mut dlq = broker.subscribe(Subscription::new("t.dlq", "ops")).await.unwrap();
    let consumer = broker
        .subscribe(Subscription::new("t", "g").unlimited_attempts())
        .await
        .unwrap();
    let ids = send_n(&broker, "t", 1).await;
    let seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let token = CancellationToken::new();
    let handler = {
        let seen = seen.clone();
        move |job: Job| {
            seen.lock().unwrap().push((job.attempt, Instant::now()));
            async move { HandlerResult::Err("payment service said no".into()) }
        }
    };
    let worker =
        Worker::new(consumer).retry(Arc::new(Fixed::new(Duration::from_millis(150)).max_attempts(3)));
    let running = tokio::spawn(worker.run(handler, token.clone()));
    let dead = tokio::time::timeout(BOUND, dlq.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let stats = stop(token, running).await;
    assert_eq!(dead.message().id, ids[0]);
    assert_eq!(
        dead.message().header(headers::DEAD_LETTER_REASON),
        Some("payment service said no")
    );
    assert_eq!(dead.message().header(headers::ATTEMPTS), Some("3"));
    let seen = seen.lock().unwrap().clone();
    let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3]);
    for pair in seen.windows(2) {
        assert!(
            pair[1].1 - pair[0].1 >= Duration::from_millis(150),
            "requeued with the policy's delay"
        );
    }
    assert_eq!((stats.failed, stats.dead_lettered, stats.handled), (3, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_caught_and_retried() {
    let broker = MemoryBroker::new();
    let consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    send_n(&broker, "t", 1).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let handler = {
        let ok = ok.clone();
        move |job: Job| {
            let ok = ok.clone();
            async move {
                if job.attempt == 1 {
                    panic!("bug in the handler");
                }
                ok.fetch_add(1, Ordering::SeqCst);
                HandlerResult::Ok(vec![])
            }
        }
    };
    let worker = Worker::new(consumer).retry(Arc::new(Fixed::new(Duration::from_millis(10))));
    let running = tokio::spawn(worker.run(handler, token.clone()));
    until("the retry succeeded", || ok.load(Ordering::SeqCst) == 1).await;
    let stats = stop(token, running).await;
    assert_eq!((stats.panics, stats.failed, stats.handled), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_times_out_and_is_retried() {
    let broker = MemoryBroker::new();
    let consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    send_n(&broker, "t", 1).await;
    let token = CancellationToken::new();
    let handler = |job: Job| async move {
        if job.attempt == 1 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        HandlerResult::Ok(vec![])
    };
    let worker = Worker::new(consumer)
        .timeout(Duration::from_millis(100))
        .retry(Arc::new(Fixed::new(Duration::from_millis(10))));
    let running = tokio::spawn(worker.run(handler, token.clone()));
    until("the group is idle", || {
        broker
            .group_stats("t", "g")
            .is_some_and(|s| s.in_flight == 0 && s.ready == 0 && s.delayed == 0 && s.backlog == 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = stop(token, running).await;
    assert_eq!((stats.timeouts, stats.handled), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_requeues_unfinished_work_losing_nothing() {
    let broker = MemoryBroker::new();
    let consumer = broker
        .subscribe(Subscription::new("t", "g").prefetch(10))
        .await
        .unwrap();
    let ids = send_n(&broker, "t", 10).await;
    let started = Arc::new(AtomicUsize::new(0));
    let finished: Arc<Mutex<Vec<String>>> = Arc::default();
    let token = CancellationToken::new();
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        move |job: Job| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                let n = started.fetch_add(1, Ordering::SeqCst);
                // Two quick ones finish within the grace period, two never do.
                let pause = if n < 2 { 50 } else { 60_000 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                finished.lock().unwrap().push(job.message.id);
                HandlerResult::Ok(vec![])
            }
        }
    };
    let worker = Worker::new(consumer)
        .concurrency(4)
        .grace(Duration::from_millis(500));
    let running = tokio::spawn(worker.run(handler, token.clone()));
    until("4 handlers started", || started.load(Ordering::SeqCst) == 4).await;
    let stats = stop(token, running).await;
    assert_eq!(stats.handled, 2, "in-flight work finished within the grace");
    assert_eq!(stats.requeued_at_shutdown, 2, "unfinished work was requeued");
    // Nothing lost: a new consumer gets everything that was not handled.
    let handled: Vec<String> = finished.lock().unwrap().clone();
    let mut rest = broker
        .subscribe(Subscription::new("t", "g").prefetch(20))
        .await
        .unwrap();
    let mut got = handled.clone();
    while got.len() < ids.len() {
        let d = tokio::time::timeout(BOUND, rest.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!handled.contains(&d.message().id), "a handled message came back");
        got.push(d.message().id.clone());
        d.ack().await.unwrap();
    }
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_acks_first_and_never_retries() {
    let broker = MemoryBroker::new();
    let consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    send_n(&broker, "t", 3).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let handler = {
        let calls = calls.clone();
        move |_job: Job| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { HandlerResult::Err("always fails".into()) }
        }
    };
    let worker = Worker::new(consumer)
        .guarantee(Guarantee::AtMostOnce)
        .retry(Arc::new(Fixed::new(Duration::ZERO)));
    let running = tokio::spawn(worker.run(handler, token.clone()));
    until("3 calls", || calls.load(Ordering::SeqCst) == 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = stop(token, running).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "failures are not retried");
    assert_eq!(stats.failed, 3);
    let s = broker.group_stats("t", "g").unwrap();
    assert_eq!(
        (s.ready, s.delayed, s.in_flight),
        (0, 0, 0),
        "acked before handling"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effectively_once_handles_a_duplicate_id_once() {
    let broker = MemoryBroker::new();
    let consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    // The same message sent three times (an upstream retry), and one other.
    let dup = Message::new("charge card").with_id("order-7-charge");
    for _ in 0..3 {
        producer.send("t", dup.clone()).await.unwrap();
    }
    producer.send("t", Message::new("other")).await.unwrap();
    let handled: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let token = CancellationToken::new();
    let handler = {
        let handled = handled.clone();
        move |job: Job| {
            *handled.lock().unwrap().entry(job.message.id.clone()).or_default() += 1;
            async move { HandlerResult::Ok(vec![]) }
        }
    };
    let store = Arc::new(MemoryIdempotencyStore::new());
    let worker = Worker::new(consumer).guarantee(Guarantee::EffectivelyOnce {
        store,
        ttl: Duration::from_secs(60),
    });
    let running = tokio::spawn(worker.run(handler, token.clone()));
    until("all four settled", || {
        broker
            .group_stats("t", "g")
            .is_some_and(|s| s.backlog == 0 && s.in_flight == 0)
    })
    .await;
    let stats = stop(token, running).await;
    assert_eq!(handled.lock().unwrap().get("order-7-charge"), Some(&1));
    assert_eq!(handled.lock().unwrap().len(), 2);
    assert_eq!((stats.handled, stats.duplicates), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_published_before_the_input_is_acked() {
    let broker = MemoryBroker::new();
    let consumer = broker.subscribe(Subscription::new("in", "g")).await.unwrap();
    let mut out = broker.subscribe(Subscription::new("out", "g")).await.unwrap();
    send_n(&broker, "in", 2).await;
    let token = CancellationToken::new();
    let producer = Arc::from(broker.producer(ProducerOptions::default()).await.unwrap());
    let handler = |job: Job| async move {
        let upper = String::from_utf8_lossy(&job.message.payload).to_uppercase();
        HandlerResult::Ok(vec![Publish::new("out", Message::new(format!("done {upper}")))])
    };
    let running = tokio::spawn(
        Worker::new(consumer)
            .producer(producer)
            .run(handler, token.clone()),
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(BOUND, out.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(d.message().payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(got, ["done 0", "done 1"]);
    let stats = stop(token, running).await;
    assert_eq!(stats.handled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_without_a_producer_are_a_failure_not_a_loss() {
    let broker = MemoryBroker::new();
    let mut dlq = broker
        .subscribe(Subscription::new("in.dlq", "ops"))
        .await
        .unwrap();
    let consumer = broker.subscribe(Subscription::new("in", "g")).await.unwrap();
    send_n(&broker, "in", 1).await;
    let token = CancellationToken::new();
    let handler = |_job: Job| async move { HandlerResult::Ok(vec![Publish::new("out", Message::new("x"))]) };
    let running = tokio::spawn(
        Worker::new(consumer)
            .retry(Arc::new(Never))
            .run(handler, token.clone()),
    );
    let dead = tokio::time::timeout(BOUND, dlq.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        dead.message()
            .header(headers::DEAD_LETTER_REASON)
            .unwrap()
            .contains("no producer")
    );
    stop(token, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_out_starts() {
    let broker = MemoryBroker::new();
    let consumer = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    send_n(&broker, "t", 6).await;
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let token = CancellationToken::new();
    let handler = {
        let starts = starts.clone();
        move |_job: Job| {
            starts.lock().unwrap().push(Instant::now());
            async move { HandlerResult::Ok(vec![]) }
        }
    };
    let worker = Worker::new(consumer).concurrency(6).rate_limit(20.0);
    let running = tokio::spawn(worker.run(handler, token.clone()));
    until("6 started", || starts.lock().unwrap().len() == 6).await;
    stop(token, running).await;
    let starts = starts.lock().unwrap().clone();
    let span = *starts.last().unwrap() - starts[0];
    // 20 per second: 6 starts take at least 5 intervals of 50 ms.
    assert!(span >= Duration::from_millis(240), "6 starts within {span:?}");
}

#[tokio::test]
async fn worker_ends_when_its_consumer_ends() {
    let broker = MemoryBroker::new();
    let consumer: Box<dyn Consumer> = broker.subscribe(Subscription::new("t", "g")).await.unwrap();
    broker.close().await.unwrap();
    let stats = tokio::time::timeout(
        BOUND,
        Worker::new(consumer).run(
            |_job: Job| async move { HandlerResult::Ok(vec![]) },
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stats, WorkerStats::default());
}

/// The worker's counters can be read while it runs (issue 14, item 5):
/// handlers running now, and what was handled so far, before it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_readable_while_the_worker_runs() {
    let broker = MemoryBroker::new();
    let consumer = broker
        .subscribe(Subscription::new("t", "g").prefetch(10))
        .await
        .unwrap();
    send_n(&broker, "t", 6).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let gate = gate.clone();
        move |_job: Job| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("the gate").forget();
                HandlerResult::Ok(vec![])
            }
        }
    };
    let worker = Worker::new(consumer).concurrency(2);
    let live = worker.stats();
    let token = CancellationToken::new();
    let running = tokio::spawn(worker.run(handler, token.clone()));
    until("2 handlers running, none done", || {
        let now = live.snapshot();
        now.in_flight == 2 && now.handled == 0
    })
    .await;
    gate.add_permits(6);
    until("6 handled while running", || live.snapshot().handled == 6).await;
    until("none running", || live.snapshot().in_flight == 0).await;
    let stats = stop(token, running).await;
    assert_eq!(stats, live.snapshot(), "the final stats are the live ones");
    assert_eq!((stats.handled, stats.in_flight), (6, 0));
}
