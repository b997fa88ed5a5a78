//! A load-balanced producer with failover across two brokers.
//!
//! Sends go to the primary while it is healthy; when it goes down they fail
//! over to the backup without an error; a merged consumer reads both.
//!
//! ```text
//! cargo run -p mq-examples --bin failover
//! MQ_PRIMARY_URL=redis://127.0.0.1:6379 MQ_BACKUP_URL=memory:// cargo run -p mq-examples --bin failover
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mq_core::balance::{BalancedProducer, BreakerState, MergedConsumer, PrimaryBackup};
use mq_core::{Consumer, Message, MqConfig, Producer, Subscription};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover example failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn url(var: &str) -> MqConfig {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => MqConfig::new(url),
        _ => MqConfig::new("memory://"),
    }
}

async fn run() -> mq_core::Result<()> {
    let registry = mq_examples::registry();
    let primary = registry.connect_config(&url("MQ_PRIMARY_URL")).await?;
    let backup = registry.connect_config(&url("MQ_BACKUP_URL")).await?;
    let topic = format!("events-{}", &mq_core::new_id()[24..]);
    let sub = || Subscription::new(&topic, "audit");
    let consumers: Vec<Box<dyn Consumer>> =
        vec![primary.subscribe(sub()).await?, backup.subscribe(sub()).await?];
    let mut merged = MergedConsumer::new(consumers);

    let producer = BalancedProducer::new(
        vec![
            primary.producer(Default::default()).await?,
            backup.producer(Default::default()).await?,
        ],
        Arc::new(PrimaryBackup),
    )
    .breaker(1, Duration::from_secs(30));

    for i in 1..=3 {
        producer.send(&topic, Message::new(format!("event {i}"))).await?;
    }
    consume(&mut merged, 3).await?;
    println!("primary ({}) is going down", primary.name());
    primary.close().await?;
    for i in 4..=6 {
        producer.send(&topic, Message::new(format!("event {i}"))).await?;
    }
    let health: Vec<&str> = producer
        .health()
        .iter()
        .map(|s| match s {
            BreakerState::Closed => "up",
            BreakerState::Open { .. } => "down",
            _ => "probing",
        })
        .collect();
    println!("endpoints (primary, backup): {health:?}");
    consume(&mut merged, 3).await?;
    merged.close().await?;
    backup.close().await
}

async fn consume(merged: &mut MergedConsumer, n: usize) -> mq_core::Result<()> {
    for _ in 0..n {
        let next = tokio::time::timeout(Duration::from_secs(10), merged.recv())
            .await
            .map_err(|_| mq_core::Error::Timeout {
                operation: "reading the events".into(),
                after: Duration::from_secs(10),
            })??;
        let Some(d) = next else { break };
        println!("consumed {}", String::from_utf8_lossy(&d.message().payload));
        d.ack().await?;
    }
    Ok(())
}
