//! The whole conformance kit on a real RabbitMQ (`MQ_TEST_AMQP_URL`): with
//! the default topology (an exchange per topic, a queue per group), and
//! with `topology=queue` (a topic is one queue; it declares no consumer
//! groups, so the kit skips the checks of several groups).

mod common;

mq_core::conformance_tests!(common::broker);

/// The kit with `topology=queue`.
mod queue_topology {
    use std::sync::Arc;

    use super::common;

    async fn broker() -> Arc<dyn mq_core::Broker> {
        Arc::new(common::rabbit_broker("topology=queue").await)
    }

    mq_core::conformance_tests!(broker);
}
