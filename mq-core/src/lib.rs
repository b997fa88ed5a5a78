//! # mq-core: one message-queue contract, any broker
//!
//! mq-core is the portable part of mq: the traits every backend implements
//! and every application codes against.
//!
//! * [`Broker`] makes [`Producer`]s and [`Consumer`]s; pick one by URL with
//!   a [`Registry`] (`memory://`, `amqp://`, `kafka://`, `redis://`).
//! * [`Producer::send`] returns a [`Receipt`] once the broker has the message.
//! * [`Consumer::recv`] yields [`Delivery`]s, settled with
//!   [`ack`](Delivery::ack) or [`nack`](Delivery::nack) ([`Nack::Requeue`]
//!   with a delay, [`Nack::DeadLetter`] with a reason).
//! * A [`Subscription`] names a topic and a group: every group gets every
//!   message; consumers in one group compete for them.
//! * [`Capabilities`] say what a backend guarantees.
//!
//! ```
//! # async fn run() -> mq_core::Result<()> {
//! use mq_core::{Message, ProducerOptions, Registry, Subscription};
//!
//! let mut registry = Registry::new();
//! mq_memory::register(&mut registry);
//! let broker = registry.connect("memory://").await?;
//!
//! let mut consumer = broker.subscribe(Subscription::new("orders", "billing")).await?;
//! let producer = broker.producer(ProducerOptions::default()).await?;
//! producer.send("orders", Message::new("2 teas")).await?;
//!
//! let delivery = consumer.recv().await?.expect("consumer is open");
//! assert_eq!(delivery.message().payload, "2 teas");
//! delivery.ack().await?;
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```
//!
//! Policies and runtime that work over any backend:
//!
//! * retry policies and a retrying producer: [`retry`];
//! * load balancing, circuit breakers, failover, fan-in: [`balance`];
//! * the handler runtime (concurrency, retries, dead letters,
//!   graceful shutdown, at-most/at-least/effectively-once): [`worker`];
//! * request/reply: [`reply`].
//!
//! ## Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `testkit` | the `testkit` module: the conformance checks every backend runs |

pub mod backend;
pub mod balance;
mod broker;
mod capabilities;
pub mod codec;
mod config;
mod consumer;
mod delivery;
pub mod dlq;
mod error;
pub mod headers;
mod health;
mod message;
pub mod observe;
mod producer;
mod registry;
pub mod reply;
pub mod retry;
mod rng;
#[cfg(feature = "service-config")]
pub mod service;
mod subscription;
pub mod url;
pub mod worker;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use broker::Broker;
pub use capabilities::Capabilities;
pub use config::{MqConfig, OptionValue};
pub use consumer::{Consumer, ConsumerExt};
pub use delivery::{Delivery, Nack, ack_all};
// Moved to `mq_core::backend`; kept at the root, hidden, for one release.
#[doc(hidden)]
pub use delivery::{AckHandle, attempts_exhausted_reason, dead_letter_message};
pub use error::{BoxError, Error, Result};
pub use health::{Health, Lag};
pub use message::{Headers, Message, new_id, time_from_millis};
#[doc(hidden)]
pub use producer::check_send;
pub use producer::{Position, Producer, ProducerExt, ProducerOptions, Receipt};
pub use registry::{Connector, Registry};
pub use subscription::{StartPosition, Subscription};
pub use url::{BrokerUrl, HostPort, Secret};

#[doc(hidden)]
pub use async_trait::async_trait;
