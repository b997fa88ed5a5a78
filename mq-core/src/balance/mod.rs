//! Load balancing and failover across several endpoints: nodes of one
//! cluster, or whole brokers of different kinds.
//!
//! * [`BalancePolicy`] picks an endpoint among the healthy ones:
//!   [`RoundRobin`], [`Random`] (seedable), [`LeastInFlight`],
//!   [`PowerOfTwoChoices`], [`PrimaryBackup`] (failover in priority order).
//! * [`CircuitBreaker`] keeps each endpoint's health: consecutive failures
//!   open it for a cooldown, then one probe is let through (half-open).
//! * [`BalancedProducer`] sends through N producers; a send that fails on one
//!   endpoint is tried on the others, so an endpoint going down loses nothing
//!   that was confirmed.
//! * [`MergedConsumer`] consumes from several consumers at once (fan-in);
//!   each delivery is settled on the broker it came from.
//!
//! ```
//! # async fn run() -> mq_core::Result<()> {
//! use std::sync::Arc;
//! use mq_core::{Broker, Message, Producer, balance::{BalancedProducer, PrimaryBackup}};
//! let (a, b) = (mq_memory::MemoryBroker::new(), mq_memory::MemoryBroker::new());
//! let producer = BalancedProducer::new(
//!     vec![a.producer(Default::default()).await?, b.producer(Default::default()).await?],
//!     Arc::new(PrimaryBackup),
//! );
//! producer.send("orders", Message::new("tea")).await?; // to `a` while it is healthy
//! assert_eq!(a.topic_len("orders"), 1);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```

mod breaker;
mod consumer;
mod policy;
mod producer;

pub use breaker::{BreakerState, CircuitBreaker};
pub use consumer::MergedConsumer;
pub use policy::{BalancePolicy, LeastInFlight, PowerOfTwoChoices, PrimaryBackup, Random, RoundRobin};
pub use producer::BalancedProducer;
