//! Remembering processed message ids, for effectively-once handling.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::Result;

/// Remembers which message ids were processed, for a while.
///
/// The worker asks [`seen`](IdempotencyStore::seen) before handling and
/// calls [`mark`](IdempotencyStore::mark) after the handler succeeded (and
/// its outputs were published), before acking. A message delivered again
/// after that is acked without being handled again.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + fmt::Debug {
    /// Whether `id` was marked and has not expired.
    async fn seen(&self, id: &str) -> Result<bool>;
    /// Marks `id` as processed for `ttl`.
    async fn mark(&self, id: &str, ttl: Duration) -> Result<()>;
}

/// An in-process [`IdempotencyStore`]: fine for one process; use a shared
/// one (e.g. mq-redis's) when several processes consume the same group.
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    ids: Mutex<(HashMap<String, Instant>, usize)>,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many ids it holds (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner).0.len()
    }

    /// Whether it holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn seen(&self, id: &str) -> Result<bool> {
        let ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(ids.0.get(id).is_some_and(|expires| *expires > Instant::now()))
    }

    async fn mark(&self, id: &str, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, purge_at) = &mut *ids;
        map.insert(
            id.to_string(),
            now.checked_add(ttl)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        );
        // Purge expired ids whenever the map doubled since the last purge.
        if map.len() >= (*purge_at).max(1024) {
            map.retain(|_, expires| *expires > now);
            *purge_at = map.len() * 2;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_expire() {
        let store = MemoryIdempotencyStore::new();
        assert!(!store.seen("a").await.unwrap());
        store.mark("a", Duration::from_secs(60)).await.unwrap();
        store.mark("b", Duration::ZERO).await.unwrap();
        assert!(store.seen("a").await.unwrap());
        assert!(!store.seen("b").await.unwrap(), "a zero TTL expires at once");
    }

    #[tokio::test]
    async fn expired_ids_are_purged() {
        let store = MemoryIdempotencyStore::new();
        for i in 0..3000 {
            store.mark(&i.to_string(), Duration::ZERO).await.unwrap();
        }
        assert!(
            store.len() < 2048,
            "expired ids were purged, {} left",
            store.len()
        );
    }
}
