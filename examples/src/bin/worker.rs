//! A worker with retries and a dead-letter topic.
//!
//! Payments are handled four at a time; a flaky one fails twice and then
//! succeeds on its third attempt; a bad one keeps failing and is dead-lettered
//! after three attempts. Stops gracefully once everything is settled.
//!
//! ```text
//! cargo run -p mq-examples --bin worker
//! MQ_URL=redis://127.0.0.1:6379 cargo run -p mq-examples --bin worker
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mq_core::retry::ExponentialBackoff;
use mq_core::worker::{HandlerResult, Job, Worker};
use mq_core::{Message, MqConfig, Subscription, headers};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker example failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> mq_core::Result<()> {
    let config = MqConfig::from_env_or("memory://");
    let broker = mq_examples::registry().connect_config(&config).await?;
    let topic = format!("payments-{}", &mq_core::new_id()[24..]);
    let mut dead_letters = broker
        .subscribe(Subscription::new(format!("{topic}.dlq"), "ops"))
        .await?;
    let consumer = broker
        .subscribe(Subscription::new(&topic, "billing").prefetch(16))
        .await?;

    let producer = broker.producer(Default::default()).await?;
    for name in ["ok-1", "flaky", "ok-2", "bad", "ok-3"] {
        producer.send(&topic, Message::new(name)).await?;
    }

    let retry = ExponentialBackoff::new(Duration::from_millis(100))
        .max_attempts(3)
        .jitter(0.1);
    let stop = CancellationToken::new();
    let worker = Worker::new(consumer)
        .concurrency(4)
        .retry(Arc::new(retry))
        .grace(Duration::from_secs(5));
    let running = tokio::spawn(worker.run(
        |job: Job| async move {
            let name = String::from_utf8_lossy(&job.message.payload).into_owned();
            match name.as_str() {
                "bad" => HandlerResult::Err(format!("card declined for {name}").into()),
                "flaky" if job.attempt < 3 => {
                    println!("payment {name}: attempt {} failed, will retry", job.attempt);
                    HandlerResult::Err("gateway timeout".into())
                }
                _ => {
                    println!("payment {name}: done (attempt {})", job.attempt);
                    HandlerResult::Ok(vec![])
                }
            }
        },
        stop.clone(),
    ));

    let dead = tokio::time::timeout(Duration::from_secs(30), dead_letters.recv())
        .await
        .map_err(|_| mq_core::Error::Timeout {
            operation: "waiting for the dead letter".into(),
            after: Duration::from_secs(30),
        })??;
    if let Some(dead) = dead {
        println!(
            "dead letter: {} after {} attempts: {}",
            String::from_utf8_lossy(&dead.message().payload),
            dead.message().header(headers::ATTEMPTS).unwrap_or("?"),
            dead.message().header(headers::DEAD_LETTER_REASON).unwrap_or("?"),
        );
        dead.ack().await?;
    }
    // Give the flaky payment time for its third attempt, then stop.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.cancel();
    let stats = running
        .await
        .map_err(|e| mq_core::Error::backend("example", "worker task", e.to_string()))??;
    println!(
        "stopped: {} handled, {} failures, {} dead-lettered",
        stats.handled, stats.failed, stats.dead_lettered
    );
    broker.close().await
}
