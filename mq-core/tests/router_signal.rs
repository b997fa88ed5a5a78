//! `Router::run_until_signal`: a SIGTERM sent to this process mid-run
//! stops every route; handlers in flight past the grace period are
//! requeued. (A file of its own: the signal goes to the whole process.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mq_core::worker::{HandlerResult, Job, Route, Router};
use mq_core::{Broker, Message, ProducerOptions, StartPosition, Subscription};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_route_and_requeues_what_did_not_finish() {
    // tokio's process-wide SIGTERM handler, installed before any signal is
    // sent: a SIGTERM can then never end this test process.
    let _term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    for i in 0..10 {
        producer
            .send("slow", Message::new(format!("s{i}")))
            .await
            .unwrap();
        producer
            .send("quick", Message::new(format!("q{i}")))
            .await
            .unwrap();
    }
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let quick_done = Arc::new(AtomicUsize::new(0));
    let router = Router::new(broker)
        .grace(Duration::from_millis(200))
        .route(
            Route::new(
                Subscription::new("slow", "g").start(StartPosition::Earliest),
                move |_job: Job| {
                    let started = started_tx.clone();
                    async move {
                        let _ = started.send(());
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        HandlerResult::Ok(vec![])
                    }
                },
            )
            .concurrency(2),
        )
        .route(Route::new(
            Subscription::new("quick", "g").start(StartPosition::Earliest),
            {
                let quick_done = quick_done.clone();
                move |_job: Job| {
                    let quick_done = quick_done.clone();
                    async move {
                        quick_done.fetch_add(1, Ordering::SeqCst);
                        HandlerResult::Ok(vec![])
                    }
                }
            },
        ));
    let running = tokio::spawn(router.run_until_signal());
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("the slow handlers start");
    }
    // The quick route's ten are handled (acked right after) before the signal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while quick_done.load(Ordering::SeqCst) < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the quick route did not get through"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Sent until the router ends (bounded): its signal stream may be set
    // up a moment after the handlers start.
    let pid = std::process::id().to_string();
    let mut ended = None;
    for _ in 0..50 {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        if running.is_finished() {
            ended = Some(running.await.expect("router task").expect("router"));
            break;
        }
    }
    let stats = ended.expect("the router stopped on SIGTERM within 25 s");
    let slow = stats.iter().find(|r| r.topic == "slow").expect("slow route");
    let quick = stats.iter().find(|r| r.topic == "quick").expect("quick route");
    assert_eq!(slow.stats.handled, 0, "{slow:?}");
    assert_eq!(
        slow.stats.requeued_at_shutdown, 2,
        "the two slow handlers in flight were requeued: {slow:?}"
    );
    assert_eq!(quick.stats.handled, 10, "the quick route went on: {quick:?}");
}
