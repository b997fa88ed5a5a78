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
