//! The whole conformance kit on the in-memory broker.

use std::sync::Arc;

use mq_core::Broker;
use mq_memory::MemoryBroker;

async fn broker() -> Arc<dyn Broker> {
    Arc::new(MemoryBroker::new())
}

mq_core::conformance_tests!(broker);

/// `run_all` runs the same checks one after another on fresh brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_lists_every_check_once() {
    let names: Vec<&str> = mq_core::testkit::all().into_iter().map(|(n, _)| n).collect();
    let unique: std::collections::HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "no check listed twice");
    assert!(names.len() >= 20, "the kit has {} checks", names.len());
}
