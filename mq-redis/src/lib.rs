//! # mq-redis: the Redis Streams adapter for mq
//!
//! Implements the [`mq_core`] contract on Redis Streams (Redis 6.2 or newer:
//! it uses `XAUTOCLAIM`) over redis-rs, and registers `redis://` and
//! `rediss://` (feature `tls`).
//!
//! | mq | Redis |
//! |---|---|
//! | topic | stream `{prefix}{topic}` (XADD, optional `MAXLEN ~`) |
//! | group | consumer group (XGROUP CREATE ... MKSTREAM; `0` for earliest, `$` for latest) |
//! | receipt | the XADD reply (the entry id) |
//! | consume | XREADGROUP BLOCK/COUNT on a connection of its own, without response timeout |
//! | ack | XACK, batched in the background |
//! | requeue | a copy with attempt + 1 in the group's retry stream, XACK of the original, atomically |
//! | delayed requeue | a copy in a sorted set (in Redis: survives client restarts), moved to the retry stream when due |
//! | dead letter | XADD to the dead-letter topic's stream with reason headers, XACK, atomically |
//! | crashed consumer | XAUTOCLAIM of entries idle longer than the ack timeout |
//! | prefetch | unsettled deliveries per consumer; reads ask only for that many |
//! | reconnect | the shared connection reconnects and the failed command is retried; the reader reconnects |
//! | Redis Cluster | several hosts or `cluster=true`: redis-rs's cluster client; every key of a topic in one slot (`{prefix}{{topic}}...`); a cluster connection whose command times out is replaced |
//! | replication | `wait_replicas=n`: a send, requeue or dead letter is confirmed once `WAIT` says `n` replicas have it |
//!
//! ```no_run
//! # async fn run() -> mq_core::Result<()> {
//! use mq_core::{Message, Subscription};
//! let mut registry = mq_core::Registry::new();
//! mq_redis::register(&mut registry);
//! let broker = registry.connect("redis://127.0.0.1:6379").await?;
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
//! | `tls` | `rediss://` through rustls (ring), with the webpki roots |
//! | `testcontainers` | `testing::TestRedis`: a Redis 7 container for tests when `MQ_TEST_REDIS_URL` is unset and Docker is there |

mod broker;
mod codec;
mod config;
mod conn;
mod consumer;
mod error;
mod idempotency;
mod producer;
mod scripts;
#[cfg(feature = "testcontainers")]
pub mod testing;

pub use broker::{RedisBroker, RedisConnector, register};
pub use config::{RedisConfig, RedisOptions};
pub use conn::RedisConnection;
pub use consumer::RedisConsumer;
pub use idempotency::RedisIdempotencyStore;
pub use producer::RedisProducer;
