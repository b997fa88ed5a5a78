//! # mq-kafka: the Kafka adapter for mq (not implemented yet)
//!
//! This crate will implement the [`mq_core`] contract on Kafka over rdkafka and
//! register the `kafka://` URL schemes. It is an empty placeholder today: nothing
//! here connects to Kafka, and [`mq_core::Registry`] reports the scheme as not
//! registered. See the workspace README's backend table for the status.
