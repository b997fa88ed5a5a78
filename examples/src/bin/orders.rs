//! An orders service on the router, configured by `examples/orders.toml`
//! and the environment (prefix `MQ_`).
//!
//! Three routes: `orders` (typed JSON: a transient failure is retried, an
//! order of nothing or a payload that is not an order is dead-lettered at
//! once) publishes `order-shipped` events; `shipped` takes those events;
//! `dead` takes the dead letters. At start it sends a demo batch of orders
//! (`MQ_ORDERS`, 10 by default): one flaky, one of quantity 0, one that is
//! not JSON. It runs until Ctrl-C or SIGTERM, or, with `MQ_EXIT_WHEN_DONE=1`,
//! until the demo batch is through; then it drains, closes the broker and
//! prints what it did.
//!
//! ```text
//! cargo run -p mq-examples --bin orders
//! MQ_URL=redis://127.0.0.1:6379 cargo run -p mq-examples --bin orders
//! MQ_ROUTES__ORDERS__CONCURRENCY=16 cargo run -p mq-examples --bin orders
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mq_core::service::ServiceConfig;
use mq_core::worker::{HandlerResult, Job, Meta, Publish, json, permanent};
use mq_core::{Error, Message, ProducerOptions, headers};
use tokio_util::sync::CancellationToken;

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
    item: String,
    quantity: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Shipped {
    order: u32,
    item: String,
}

#[derive(Default)]
struct Counts {
    shipped: AtomicU64,
    dead: AtomicU64,
    retried: AtomicU64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orders: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> mq_core::Result<()> {
    let path = std::env::var_os("MQ_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/orders.toml")));
    let config = ServiceConfig::load(Some(&path), "MQ_")?;
    let orders: usize = std::env::var("MQ_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
        .max(3);
    let exit_when_done = std::env::var("MQ_EXIT_WHEN_DONE").is_ok_and(|v| v == "1");
    let broker = config.connect(&mq_examples::registry()).await?;
    println!(
        "orders: {} on {}",
        path.display(),
        mq_core::url::redact(&config.broker.url)
    );

    let counts = Arc::new(Counts::default());
    let shipped_topic = config
        .routes
        .get("shipped")
        .map(|r| r.topic.clone())
        .ok_or_else(|| missing("shipped"))?;
    let orders_topic = config
        .routes
        .get("orders")
        .map(|r| r.topic.clone())
        .ok_or_else(|| missing("orders"))?;

    let ship = {
        let counts = counts.clone();
        let shipped_topic = shipped_topic.clone();
        json(move |order: Order, meta: Meta| {
            let counts = counts.clone();
            let shipped_topic = shipped_topic.clone();
            async move {
                if order.quantity == 0 {
                    return Err(permanent(format!("order {} is for nothing", order.id)));
                }
                if order.item == "flaky" && meta.attempt < 2 {
                    counts.retried.fetch_add(1, Ordering::Relaxed);
                    return Err("the warehouse did not answer".into());
                }
                let event = Shipped {
                    order: order.id,
                    item: order.item,
                };
                HandlerResult::Ok(vec![Publish::new(shipped_topic, Message::json(&event)?)])
            }
        })
    };
    let notify = {
        let counts = counts.clone();
        json(move |event: Shipped, _meta: Meta| {
            let counts = counts.clone();
            async move {
                println!("shipped: order {} ({})", event.order, event.item);
                counts.shipped.fetch_add(1, Ordering::Relaxed);
                HandlerResult::Ok(vec![])
            }
        })
    };
    let dead = {
        let counts = counts.clone();
        move |job: Job| {
            let counts = counts.clone();
            async move {
                println!(
                    "dead letter: {}",
                    job.message.header(headers::DEAD_LETTER_REASON).unwrap_or("?")
                );
                counts.dead.fetch_add(1, Ordering::Relaxed);
                HandlerResult::Ok(vec![])
            }
        }
    };
    let router = config
        .router(broker.clone())
        .route(config.route("orders", ship)?)
        .route(config.route("shipped", notify)?)
        .route(config.route("dead", dead)?);

    let stop = CancellationToken::new();
    let demo = {
        let broker = broker.clone();
        let stop = stop.clone();
        let counts = counts.clone();
        move |_handle| {
            tokio::spawn(async move {
                if let Err(e) = send_demo(&*broker, &orders_topic, orders).await {
                    eprintln!("orders: sending the demo batch failed: {e}");
                    stop.cancel();
                    return;
                }
                if exit_when_done {
                    // Bounded: the batch is through in well under a minute.
                    let expected = (orders as u64 - 2, 2);
                    for _ in 0..600 {
                        let seen = (
                            counts.shipped.load(Ordering::Relaxed),
                            counts.dead.load(Ordering::Relaxed),
                        );
                        if seen == expected {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    stop.cancel();
                }
            });
        }
    };
    let signals = tokio::spawn({
        let stop = stop.clone();
        async move {
            mq_core::worker::shutdown_signal().await;
            stop.cancel();
        }
    });
    let stats = router.run_with(stop, demo).await?;
    signals.abort();
    for route in &stats {
        println!(
            "route {} ({}): handled {}, failed {}, dead-lettered {}",
            route.topic, route.group, route.stats.handled, route.stats.failed, route.stats.dead_lettered
        );
    }
    println!(
        "orders: shipped {}, dead-lettered {}, retried {}",
        counts.shipped.load(Ordering::Relaxed),
        counts.dead.load(Ordering::Relaxed),
        counts.retried.load(Ordering::Relaxed)
    );
    Ok(())
}

fn missing(route: &str) -> Error {
    Error::InvalidOption {
        backend: "config",
        option: format!("routes.{route}"),
        reason: "the orders service needs this route".into(),
    }
}

/// `orders` orders: the second flaky, the third of quantity 0, the last
/// not JSON at all.
async fn send_demo(broker: &dyn mq_core::Broker, topic: &str, orders: usize) -> mq_core::Result<()> {
    let producer = broker.producer(ProducerOptions::default()).await?;
    for id in 1..orders {
        let id = u32::try_from(id).unwrap_or(u32::MAX);
        let order = Order {
            id,
            item: if id == 2 {
                "flaky".into()
            } else {
                format!("item-{id}")
            },
            quantity: if id == 3 { 0 } else { 1 },
        };
        producer
            .send(
                topic,
                Message::json(&order)?.with_key(format!("customer-{}", id % 3)),
            )
            .await?;
    }
    producer
        .send(
            topic,
            Message::new("{not an order").with_header(headers::CONTENT_TYPE, "application/json"),
        )
        .await?;
    producer.close().await
}
