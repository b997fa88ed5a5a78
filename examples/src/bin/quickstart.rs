//! Quickstart: send a few JSON orders, consume them in a group, ack them.
//!
//! Runs on the in-memory broker by default; set `MQ_URL` to use another
//! broker this program was built with (see `mq_examples::registry`):
//!
//! ```text
//! cargo run -p mq-examples --bin quickstart
//! MQ_URL=memory://?capacity=100 cargo run -p mq-examples --bin quickstart
//! ```

use std::process::ExitCode;
use std::time::Duration;

use mq_core::{MqConfig, Nack, ProducerExt, StartPosition, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    customer: String,
    item: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> mq_core::Result<()> {
    let config = MqConfig::from_env_or("memory://");
    let broker = mq_examples::registry().connect_config(&config).await?;
    println!(
        "broker: {} ({})",
        broker.name(),
        mq_core::url::redact(&config.url)
    );

    // A unique topic per run, so a real broker's leftovers do not mix in.
    let topic = format!("orders-{}", &mq_core::new_id()[24..]);
    let subscription = Subscription::new(&topic, "billing")
        .start(StartPosition::Earliest)
        .prefetch(10)
        .max_attempts(3);
    let mut consumer = broker.subscribe(subscription).await?;
    let producer = broker.producer(Default::default()).await?;

    let orders = [
        (1, "ada", "tea", 2),
        (2, "grace", "scone", 1),
        (3, "ada", "jam", 1),
        (4, "linus", "coffee", 3),
    ];
    for (id, customer, item, quantity) in orders {
        let order = Order {
            id,
            customer: customer.into(),
            item: item.into(),
            quantity,
        };
        // Keyed by customer: one customer's orders stay in order.
        let message = mq_core::Message::json(&order)?.with_key(customer);
        let receipt = producer.send(&topic, message).await?;
        println!(
            "sent     order {id} ({quantity} x {item} for {customer}) at {}",
            receipt.position
        );
    }
    producer.send_json(&topic, &"not an order").await?;

    let mut handled = 0;
    while handled < orders.len() + 1 {
        let Some(delivery) = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .map_err(|_| mq_core::Error::Timeout {
                operation: format!("waiting for orders on `{topic}`"),
                after: Duration::from_secs(10),
            })??
        else {
            break;
        };
        match delivery.decode_json::<Order>() {
            Ok(order) if order.id == 2 && delivery.attempt() == 1 => {
                // A transient failure: try again shortly.
                println!(
                    "retry    order {} (attempt {}): the kitchen is busy",
                    order.id,
                    delivery.attempt()
                );
                delivery
                    .nack(Nack::requeue_after(Duration::from_millis(50)))
                    .await?;
            }
            Ok(order) => {
                println!(
                    "billed   order {} for {} (attempt {})",
                    order.id,
                    order.customer,
                    delivery.attempt()
                );
                delivery.ack().await?;
                handled += 1;
            }
            Err(e) => {
                println!("rejected message {}: {e}", delivery.message().id);
                delivery.nack(Nack::dead_letter(e.to_string())).await?;
                handled += 1;
            }
        }
    }
    consumer.close().await?;
    broker.close().await?;
    println!("done: {handled} messages handled");
    Ok(())
}
