//! The router: several routes on several topics share one shutdown, a
//! route's panics stop no other route, outputs are published, the
//! subscription's max attempts is the one that counts, and the broker is
//! closed at the end.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::time::Duration;

use mq_core::worker::{HandlerResult, Job, Publish, Route, Router, RouterHandle};
use mq_core::{Broker, Message, ProducerOptions, Subscription};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_share_one_shutdown_and_a_panic_stops_no_other_route() {
    let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let router = Router::new(broker.clone())
        .grace(Duration::from_secs(5))
        .route(
            Route::new(
                Subscription::new("a", "g").max_attempts(2),
                |job: Job| async move {
                    if &job.message.payload[..] == b"boom" {
                        panic!("route a cannot take this one");
                    }
                    HandlerResult::Ok(vec![])
                },
            )
            // A policy that would retry forever: the subscription's 2 stops it.
            .retry(Arc::new(mq_core::retry::Fixed::new(Duration::from_millis(10)))),
        )
        .route(
            Route::new(Subscription::new("b", "g"), |job: Job| async move {
                HandlerResult::Ok(vec![Publish::new("c", Message::new(job.message.payload.clone()))])
            })
            .concurrency(3),
        )
        .route(Route::new(Subscription::new("c", "g"), |_job: Job| async {
            HandlerResult::Ok(vec![])
        }));
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<RouterHandle>();
    let running = tokio::spawn(router.run_with(stop.clone(), move |handle| {
        let _ = tx.send(handle);
    }));
    let handle = rx.await.expect("the router started");
    for payload in ["1", "2", "boom", "3", "4"] {
        producer.send("a", Message::new(payload)).await.unwrap();
    }
    for i in 0..5 {
        producer.send("b", Message::new(format!("b{i}"))).await.unwrap();
    }

    // Bounded: until a has handled 4 and dead-lettered `boom`, b 5 and c
    // (b's outputs) 5, and no group is behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = handle.status().await;
        let handled: Vec<u64> = status.iter().map(|s| s.stats.handled).collect();
        let behind: Vec<Option<u64>> = status
            .iter()
            .map(|s| s.lag.as_ref().ok().map(|l| l.behind))
            .collect();
        if handled == [4, 5, 5] && status[0].stats.dead_lettered == 1 && behind == [Some(0); 3] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routes did not get through: handled {handled:?}, behind {behind:?}, route a {:?}",
            status[0].stats
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        handle.health().await.is_ok(),
        "the broker answers while the router runs"
    );

    stop.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("one cancel stops every route")
        .expect("router task")
        .expect("router");
    let by_topic: Vec<(&str, u64, u64, u64)> = stats
        .iter()
        .map(|r| {
            (
                r.topic.as_str(),
                r.stats.handled,
                r.stats.panics,
                r.stats.dead_lettered,
            )
        })
        .collect();
    assert_eq!(
        by_topic,
        [("a", 4, 2, 1), ("b", 5, 0, 0), ("c", 5, 0, 0)],
        "per route: handled, panics, dead-lettered"
    );
    assert!(
        broker.subscribe(Subscription::new("a", "other")).await.is_err(),
        "the router closes the broker when it ends"
    );
}

#[tokio::test]
async fn a_route_that_cannot_subscribe_fails_the_run_before_anything_starts() {
    let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
    let router = Router::new(broker)
        .route(Route::new(Subscription::new("ok", "g"), |_job: Job| async {
            HandlerResult::Ok(vec![])
        }))
        .route(Route::new(Subscription::new("", "g"), |_job: Job| async {
            HandlerResult::Ok(vec![])
        }));
    let err = router
        .run_with(CancellationToken::new(), |_| panic!("no route may start"))
        .await
        .expect_err("an empty topic cannot be subscribed");
    assert!(err.to_string().contains("topic"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_route_settles_each_batch_at_once_and_retries_a_failed_one() {
    use std::sync::Mutex;
    let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let batches: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let seen = batches.clone();
    let router = Router::new(broker.clone()).route(
        Route::batch(
            Subscription::new("batched", "g"),
            move |jobs: Vec<Job>| {
                let seen = seen.clone();
                async move {
                    let payloads: Vec<String> = jobs
                        .iter()
                        .map(|j| String::from_utf8_lossy(&j.message.payload).into_owned())
                        .collect();
                    // The batch holding `bad` fails the first time it comes.
                    let fail = jobs
                        .iter()
                        .any(|j| &j.message.payload[..] == b"bad" && j.attempt == 1);
                    seen.lock().unwrap().push(payloads);
                    if fail {
                        return Err("the batch store is down".into());
                    }
                    HandlerResult::Ok(vec![])
                }
            },
            8,
            Duration::from_millis(100),
        )
        .retry(Arc::new(mq_core::retry::Fixed::new(Duration::from_millis(10)))),
    );
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<RouterHandle>();
    let running = tokio::spawn(router.run_with(stop.clone(), move |handle| {
        let _ = tx.send(handle);
    }));
    let handle = rx.await.expect("the router started");
    let mut sent = Vec::new();
    for i in 0..20 {
        let payload = if i == 7 {
            "bad".to_string()
        } else {
            format!("m{i}")
        };
        producer
            .send("batched", Message::new(payload.clone()))
            .await
            .unwrap();
        sent.push(payload);
    }
    let live = handle.live(0).expect("the batch route");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while live.snapshot().handled < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch route did not get through: {:?}",
            live.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let stats = running.await.unwrap().unwrap();
    let batches = batches.lock().unwrap().clone();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 8),
        "batch sizes: {batches:?}"
    );
    let with_bad = batches.iter().filter(|b| b.contains(&"bad".to_string())).count();
    assert_eq!(with_bad, 2, "the failed batch's messages came again: {batches:?}");
    let mut handled: Vec<String> = batches.iter().flatten().cloned().collect();
    handled.sort();
    handled.dedup();
    sent.sort();
    assert_eq!(handled, sent, "every message reached the batch handler");
    assert_eq!(stats[0].stats.handled, 20, "{:?}", stats[0]);
    assert!(stats[0].stats.failed >= 1, "{:?}", stats[0]);
    assert_eq!(stats[0].stats.dead_lettered, 0, "{:?}", stats[0]);
}
