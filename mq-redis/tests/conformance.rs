//! The whole conformance kit on a real Redis (`MQ_TEST_REDIS_URL`).

mod common;

mq_core::conformance_tests!(common::broker);
