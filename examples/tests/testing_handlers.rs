//! Testing your handlers against the faults at-least-once delivery allows,
//! with mq-memory misbehaving on purpose (`mq_memory::Faults`): the README's
//! "Testing your handlers" section.
//!
//! A deposit handler that adds each deposit to a balance is not idempotent:
//! under `duplicate=0.1` the balance comes out wrong, and the check below
//! fails. The same handler behind the worker's effectively-once guarantee
//! books every deposit once. And a router that ships each order, run under
//! lost acks and failed sends, still publishes every output.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mq_core::worker::{
    Guarantee, HandlerResult, Job, MemoryIdempotencyStore, Publish, Route, Router, Worker,
};
use mq_core::{Broker, Message, ProducerOptions, StartPosition, Subscription};
use mq_memory::{Faults, MemoryBroker, MemoryConfig};
use tokio_util::sync::CancellationToken;

const DEPOSITS: i64 = 200;

/// Sends `message` until a send is confirmed (an injected failure is
/// retryable, as a real broker's would be).
async fn send_until_confirmed(broker: &MemoryBroker, topic: &str, message: Message) {
    let producer = broker.memory_producer(ProducerOptions::default());
    for _ in 0..100 {
        match producer.try_send(topic, message.clone()) {
            Ok(_) => return,
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    panic!("100 sends of one message failed");
}

/// Runs `DEPOSITS` deposits of 1 through a worker with `guarantee` on a
/// broker that hands out 10 % of deliveries twice; returns the balance.
async fn balance_after_deposits(guarantee: Guarantee) -> (i64, u64) {
    let broker = MemoryBroker::with_config(MemoryConfig::default().faults(Faults::seeded(42).duplicate(0.1)));
    let consumer = broker
        .subscribe(Subscription::new("deposits", "ledger").start(StartPosition::Earliest))
        .await
        .unwrap();
    for _ in 0..DEPOSITS {
        send_until_confirmed(&broker, "deposits", Message::new("1")).await;
    }
    let balance = Arc::new(AtomicI64::new(0));
    let handler = {
        let balance = balance.clone();
        // Not idempotent: a message handled twice is booked twice.
        move |job: Job| {
            let balance = balance.clone();
            async move {
                let amount: i64 = std::str::from_utf8(&job.message.payload)
                    .unwrap()
                    .parse()
                    .unwrap();
                balance.fetch_add(amount, Ordering::SeqCst);
                HandlerResult::Ok(vec![])
            }
        }
    };
    let stop = CancellationToken::new();
    let worker = Worker::new(consumer).guarantee(guarantee);
    let live = worker.stats();
    let running = tokio::spawn(worker.run(handler, stop.clone()));
    // Until every delivery, duplicates included, was handled or skipped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let group = broker.group_stats("deposits", "ledger").unwrap();
        let worker = live.snapshot();
        let drained = group.backlog == 0 && group.ready == 0 && group.in_flight == 0;
        let seen = worker.handled + worker.duplicates;
        if drained && seen == DEPOSITS as u64 + broker.faults().duplicated {
            break;
        }
        assert!(Instant::now() < deadline, "{group:?} {worker:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    (balance.load(Ordering::SeqCst), broker.faults().duplicated)
}

/// The check a service's test makes: every deposit booked exactly once.
fn books_every_deposit_once(balance: i64) -> Result<(), String> {
    if balance == DEPOSITS {
        Ok(())
    } else {
        Err(format!("balance {balance}, expected {DEPOSITS}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_catch_a_handler_that_is_not_idempotent() {
    let (balance, duplicated) = balance_after_deposits(Guarantee::AtLeastOnce).await;
    assert!(duplicated > 0);
    let verdict = books_every_deposit_once(balance);
    assert_eq!(
        verdict,
        Err(format!(
            "balance {}, expected {DEPOSITS}",
            DEPOSITS + duplicated as i64
        )),
        "every duplicate was booked again"
    );
    mq_core::testkit::report(&format!(
        "testing handlers: at-least-once, duplicate=0.1 seed 42: {duplicated} duplicates, check: {verdict:?}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_handler_behind_effectively_once_books_each_deposit_once() {
    let guarantee = Guarantee::EffectivelyOnce {
        store: Arc::new(MemoryIdempotencyStore::new()),
        ttl: Duration::from_secs(600),
    };
    let (balance, duplicated) = balance_after_deposits(guarantee).await;
    assert!(duplicated > 0);
    let verdict = books_every_deposit_once(balance);
    assert_eq!(verdict, Ok(()));
    mq_core::testkit::report(&format!(
        "testing handlers: effectively-once, duplicate=0.1 seed 42: {duplicated} duplicates, check: {verdict:?}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_under_lost_acks_and_failed_sends_publishes_every_output() {
    const ORDERS: usize = 200;
    let broker = MemoryBroker::with_config(
        MemoryConfig::default().faults(Faults::seeded(7).redeliver(0.2).fail_send(0.2)),
    );
    let mut shipped = broker
        .subscribe(Subscription::new("shipped", "audit").start(StartPosition::Earliest))
        .await
        .unwrap();
    let ship = |job: Job| async move {
        let order = String::from_utf8(job.message.payload.to_vec()).unwrap();
        HandlerResult::Ok(vec![Publish::new(
            "shipped",
            Message::new(format!("shipped {order}")),
        )])
    };
    let stop = CancellationToken::new();
    let router = Router::new(Arc::new(broker.clone()) as Arc<dyn Broker>).route(Route::new(
        Subscription::new("orders", "shipping")
            .start(StartPosition::Earliest)
            .unlimited_attempts(),
        ship,
    ));
    let running = tokio::spawn(router.run(stop.clone()));
    for i in 0..ORDERS {
        send_until_confirmed(&broker, "orders", Message::new(i.to_string())).await;
    }
    let mut outputs: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs.len() < ORDERS && Instant::now() < deadline {
        let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(10), shipped.recv()).await else {
            break;
        };
        *outputs
            .entry(String::from_utf8(d.message().payload.to_vec()).unwrap())
            .or_default() += 1;
        // The audit consumer's acks are lost too, now and then.
        let _ = d.ack().await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    let faults = broker.faults();
    assert!(faults.redelivered > 0 && faults.failed_sends > 0, "{faults:?}");
    let missing: Vec<usize> = (0..ORDERS)
        .filter(|i| !outputs.contains_key(&format!("shipped {i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "orders never shipped: {missing:?} ({faults:?})"
    );
    let twice = outputs.values().filter(|&&n| n > 1).count();
    mq_core::testkit::report(&format!(
        "testing handlers: router under redeliver=0.2 fail_send=0.2 seed 7: {ORDERS} orders, all shipped, {twice} shipped more than once; {faults:?}"
    ));
}
