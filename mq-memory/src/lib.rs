//! # mq-memory: the in-memory reference broker
//!
//! The full portable semantics of [`mq_core`] in one process, with no
//! network and nothing to install: topics, groups that each get every
//! message, competing consumers, ack, requeue with delay, redelivery of
//! unsettled deliveries (on consumer close or drop, and after the ack
//! timeout), attempt counting, dead letters, start at earliest or latest,
//! and bounded topics with backpressure.
//!
//! It is the default broker of the examples and the one to use in unit
//! tests; it runs the whole conformance kit in plain `cargo test`.
//!
//! ```
//! # async fn run() -> mq_core::Result<()> {
//! let mut registry = mq_core::Registry::new();
//! mq_memory::register(&mut registry);
//! let broker = registry.connect("memory://?capacity=1000").await?;
//! assert!(broker.capabilities().replay_from_earliest);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```
//!
//! Not persistent: messages live as long as the broker object.
//!
//! For tests of handlers it misbehaves on purpose when asked ([`Faults`]):
//! duplicates, lost acks (redeliveries), reordering, failed sends, lost
//! confirms, delays, and [`MemoryBroker::restart`]; all from one seed, and
//! counted ([`MemoryBroker::faults`]).

mod broker;
mod config;
mod consumer;
mod faults;
mod producer;
mod topic;

pub use broker::{MemoryBroker, MemoryConnector, register};
pub use config::MemoryConfig;
pub use consumer::MemoryConsumer;
pub use faults::{FaultCounts, Faults};
pub use producer::MemoryProducer;
pub use topic::GroupStats;
