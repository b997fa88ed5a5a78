//! The conformance kit runs on shared real brokers, many checks at once: no
//! two checks may use the same group, or they join each other's groups
//! (on Kafka, one group rebalancing across checks).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mq_core::{Broker, Capabilities, Consumer, Producer, ProducerOptions, Result, Subscription, testkit};
use mq_memory::MemoryBroker;

/// Records the (topic, group) of every subscription.
#[derive(Debug)]
struct Recording {
    inner: MemoryBroker,
    seen: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Broker for Recording {
    fn name(&self) -> &'static str {
        // Transparent: checks compare a probe's backend with this name.
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        self.inner.producer(options).await
    }
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sub.group.clone());
        self.inner.subscribe(sub).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    async fn health(&self) -> Result<mq_core::Health> {
        self.inner.health().await
    }
    async fn lag(&self, topic: &str, group: &str) -> Result<mq_core::Lag> {
        self.inner.lag(topic, group).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_checks_share_a_group_name() {
    let mut groups_of: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for (name, check) in testkit::all() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let broker = Arc::new(Recording {
            inner: MemoryBroker::new(),
            seen: seen.clone(),
        });
        check(broker).await;
        let groups = std::mem::take(&mut *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        groups_of.insert(name, groups.into_iter().collect());
    }
    assert!(
        groups_of.values().filter(|g| !g.is_empty()).count() >= 20,
        "most checks subscribe: {groups_of:?}"
    );
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (check, groups) in &groups_of {
        for group in groups {
            if let Some(other) = owner.insert(group, check) {
                panic!("checks `{other}` and `{check}` both use group `{group}`");
            }
        }
    }
}
