//! The whole conformance kit on a real RabbitMQ (`MQ_TEST_AMQP_URL`).

mod common;

mq_core::conformance_tests!(common::broker);
