//! An idempotency store in Redis, shared by every process of a group.

use std::time::Duration;

use async_trait::async_trait;
use mq_core::Result;
use mq_core::worker::IdempotencyStore;

use crate::RedisBroker;

/// Remembers processed message ids in Redis (`{prefix}processed:{id}` with
/// a TTL), so effectively-once holds across the processes of a group.
///
/// ```no_run
/// # async fn run(broker: mq_redis::RedisBroker, consumer: Box<dyn mq_core::Consumer>) {
/// use std::{sync::Arc, time::Duration};
/// use mq_core::worker::{Guarantee, Worker};
/// let store = Arc::new(mq_redis::RedisIdempotencyStore::new(&broker));
/// let worker = Worker::new(consumer).guarantee(Guarantee::EffectivelyOnce { store, ttl: Duration::from_secs(3600) });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisIdempotencyStore {
    broker: RedisBroker,
}

impl RedisIdempotencyStore {
    /// A store on `broker`'s server.
    pub fn new(broker: &RedisBroker) -> Self {
        RedisIdempotencyStore {
            broker: broker.clone(),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}processed:{id}", self.broker.config().options.prefix)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn seen(&self, id: &str) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.key(id));
        let n: i64 = self.broker.inner.query("EXISTS (idempotency)", &cmd).await?;
        Ok(n > 0)
    }

    async fn mark(&self, id: &str, ttl: Duration) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(id))
            .arg(1)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        self.broker.inner.query::<()>("SET (idempotency)", &cmd).await
    }
}
