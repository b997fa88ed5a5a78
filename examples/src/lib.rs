//! Shared set-up for the examples: a registry with every backend this build
//! includes.

/// A registry with every backend compiled into the examples: `memory://`,
/// `redis://`, `amqp://` and `kafka://`.
pub fn registry() -> mq_core::Registry {
    let mut registry = mq_core::Registry::new();
    mq_memory::register(&mut registry);
    mq_redis::register(&mut registry);
    mq_rabbit::register(&mut registry);
    mq_kafka::register(&mut registry);
    registry
}
