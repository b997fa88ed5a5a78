//! The whole conformance kit on Kafka: librdkafka's embedded mock cluster,
//! or a real cluster named by `MQ_TEST_KAFKA_BROKERS`.

mod common;

mq_core::conformance_tests!(common::broker);
