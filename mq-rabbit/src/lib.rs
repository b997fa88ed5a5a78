//! # mq-rabbit: the RabbitMQ adapter for mq
//!
//! Implements the [`mq_core`] contract on RabbitMQ over lapin 4, and
//! registers `amqp://` and `amqps://` (feature `tls`).
//!
//! | mq | RabbitMQ |
//! |---|---|
//! | topic | durable exchange named after it (type `topic`), routing key = message key or topic |
//! | group | durable queue `{topic}.{group}` bound with `#` (classic, or quorum with `queue_type=quorum`) |
//! | receipt | publisher confirm (always on), pipelined; unroutable (mandatory) is an error |
//! | prefetch | `basic_qos` on the consumer's own channel (always set) |
//! | ack | `basic_ack` |
//! | requeue | a confirmed copy with attempt + 1 to the group's queue, then `basic_ack` |
//! | delayed requeue | a copy to `{queue}.delay.{ms}` (message TTL, dead-lettering back to the group's queue) |
//! | dead letter | a copy with reason headers to the dead-letter topic's exchange (kept for the replay group `mq-dlq-replay`, in queue `{dlq}.mq-dlq-replay`, if no group reads it yet) |
//! | crashed consumer | its channel closes; RabbitMQ requeues its unacked deliveries (`redelivered`, `x-delivery-count` on quorum) |
//! | reconnect | a new connection; publishes that were in flight are sent again; consumers consume again |
//! | cluster | several hosts are its nodes: the first that answers, and after a lost connection the next one first; quorum queues keep messages when a node goes |
//!
//! ```no_run
//! # async fn run() -> mq_core::Result<()> {
//! use mq_core::{Message, Subscription};
//! let mut registry = mq_core::Registry::new();
//! mq_rabbit::register(&mut registry);
//! let broker = registry.connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let mut consumer = broker.subscribe(Subscription::new("orders", "billing")).await?;
//! broker.producer(Default::default()).await?.send("orders", Message::new("tea")).await?;
//! if let Some(delivery) = consumer.recv().await? {
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `tls` | `amqps://` through rustls (ring) with the webpki roots |
//! | `testcontainers` | `testing::TestRabbit`: a RabbitMQ 4.1 container for tests when `MQ_TEST_AMQP_URL` is unset and Docker is there |

mod broker;
mod codec;
mod config;
mod consumer;
mod error;
mod producer;
#[cfg(feature = "testcontainers")]
pub mod testing;

pub use broker::{RabbitBroker, RabbitConnector, register};
pub use config::{RabbitConfig, RabbitOptions};
pub use consumer::RabbitConsumer;
pub use producer::RabbitProducer;
