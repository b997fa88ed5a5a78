//! # mq-redis: the Redis Streams adapter for mq (not implemented yet)
//!
//! This crate will implement the [`mq_core`] contract on Redis Streams over redis-rs and
//! register the `redis://` and `rediss://` URL schemes. It is an empty placeholder today: nothing
//! here connects to Redis Streams, and [`mq_core::Registry`] reports the scheme as not
//! registered. See the workspace README's backend table for the status.
