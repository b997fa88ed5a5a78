//! # mq-rabbit: the RabbitMQ adapter for mq (not implemented yet)
//!
//! This crate will implement the [`mq_core`] contract on RabbitMQ over lapin and
//! register the `amqp://` and `amqps://` URL schemes. It is an empty placeholder today: nothing
//! here connects to RabbitMQ, and [`mq_core::Registry`] reports the scheme as not
//! registered. See the workspace README's backend table for the status.
