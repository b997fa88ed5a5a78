//! # mq-kafka: the Kafka adapter for mq
//!
//! Implements the [`mq_core`] contract on Kafka over rdkafka (with its
//! bundled librdkafka: no system library needed), and registers `kafka://`.
//!
//! | mq | Kafka |
//! |---|---|
//! | topic | topic (created with `partitions` when missing); the key picks the partition |
//! | group | consumer group |
//! | receipt | delivery report of the idempotent producer (`acks=all`) |
//! | ack | the offset is stored (by the consumer's thread, a batch at a time) once it and every earlier delivered offset of its partition are acked; committed every second, on revoke and on close |
//! | requeue | a copy with attempt + 1 to `{topic}.{group}.retry`, then ack; with a delay the copy carries its due time and is held until then |
//! | dead letter | produced to `{topic}.dlq` with reason headers, then ack |
//! | crashed consumer | uncommitted offsets are read again by the member that gets the partition |
//! | start at latest | a new group's offsets are set to the end of each partition when it subscribes |
//! | transactions | [`KafkaBroker::transactional_producer`]: an atomic `send_batch`, and explicit transactions over several sends and topics; consumers read committed messages only |
//! | exactly once | [`KafkaBroker::subscribe_transactional`] + [`KafkaTransaction::consume`]: a delivery's offset is committed with the transaction's output; an aborted transaction requeues its inputs in a transaction of its own |
//!
//! Ordering: messages of one key keep their order, except a requeued
//! message, which comes back through the retry topic after the ones that
//! followed it.
//!
//! ```no_run
//! # async fn run() -> mq_core::Result<()> {
//! let mut registry = mq_core::Registry::new();
//! mq_kafka::register(&mut registry);
//! let broker = registry.connect("kafka://127.0.0.1:9092?rdkafka.linger.ms=5").await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod broker;
mod config;
mod consumer;
mod error;
mod hand_back;
mod producer;
mod retry_gate;
#[cfg(feature = "testcontainers")]
pub mod testing;
mod transaction;

pub use broker::{KafkaBroker, KafkaConnector, register};
pub use config::{GroupId, KafkaConfig, KafkaOptions};
pub use consumer::KafkaConsumer;
pub use producer::KafkaProducer;
pub use transaction::{KafkaTransaction, KafkaTransactionalProducer};
