//! The conformance kit must fail a backend that breaks the contract. Each
//! test wraps the memory broker with one fault and checks the relevant kit
//! function panics (and passes without the fault).

use std::sync::Arc;

use async_trait::async_trait;
use mq_core::backend::AckHandle;
use mq_core::{
    Broker, Capabilities, Consumer, Delivery, Message, Nack, Producer, ProducerOptions, Receipt, Result,
    Subscription, testkit,
};
use mq_memory::MemoryBroker;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    DropHeaders,
    RequeueLosesMessage,
    CloseIgnored,
    /// `recv` awaits something after taking a delivery: a cancelled `recv`
    /// loses it.
    CancelUnsafe,
    /// The producer keeps `Producer::close`'s default (a flush): later
    /// sends still go through.
    ProducerCloseIgnored,
}

#[derive(Debug)]
struct Faulty {
    inner: MemoryBroker,
    fault: Fault,
}

#[derive(Debug)]
struct FaultyProducer {
    inner: Box<dyn Producer>,
    fault: Fault,
}

#[derive(Debug)]
struct FaultyConsumer {
    inner: Box<dyn Consumer>,
    fault: Fault,
}

#[derive(Debug)]
struct FaultyAck {
    inner: Delivery,
    fault: Fault,
}

#[async_trait]
impl Broker for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn producer(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        Ok(Box::new(FaultyProducer {
            inner: self.inner.producer(options).await?,
            fault: self.fault,
        }))
    }
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(FaultyConsumer {
            inner: self.inner.subscribe(sub).await?,
            fault: self.fault,
        }))
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    async fn health(&self) -> Result<mq_core::Health> {
        self.inner.health().await
    }
}

#[async_trait]
impl Producer for FaultyProducer {
    async fn send(&self, topic: &str, mut message: Message) -> Result<Receipt> {
        if self.fault == Fault::DropHeaders {
            message.headers.clear();
        }
        self.inner.send(topic, message).await
    }
    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.inner.send_batch(topic, messages).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    async fn close(&self) -> Result<()> {
        if self.fault == Fault::ProducerCloseIgnored {
            return self.flush().await;
        }
        self.inner.close().await
    }
}

#[async_trait]
impl Consumer for FaultyConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        let Some(d) = self.inner.recv().await? else {
            return Ok(None);
        };
        if self.fault == Fault::CancelUnsafe {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let (message, attempt) = (d.message().clone(), d.attempt());
        let (topic, group) = (d.topic().into(), d.group().into());
        let handle = FaultyAck {
            inner: d,
            fault: self.fault,
        };
        Ok(Some(Delivery::new(
            message,
            attempt,
            topic,
            group,
            Box::new(handle),
        )))
    }
    async fn close(&mut self) -> Result<()> {
        if self.fault == Fault::CloseIgnored {
            return Ok(());
        }
        self.inner.close().await
    }
}

#[async_trait]
impl AckHandle for FaultyAck {
    async fn ack(&self, _: &Delivery) -> Result<()> {
        self.inner.ack().await
    }
    async fn nack(&self, _: &Delivery, nack: Nack) -> Result<()> {
        if self.fault == Fault::RequeueLosesMessage && matches!(nack, Nack::Requeue { .. }) {
            return self.inner.ack().await;
        }
        self.inner.nack(nack).await
    }
}

fn faulty(fault: Fault) -> Arc<dyn Broker> {
    Arc::new(Faulty {
        inner: MemoryBroker::new(),
        fault,
    })
}

/// Runs `check` on a broker with `fault` in a task; true if it panicked.
async fn fails<F, Fut>(fault: Fault, check: F) -> bool
where
    F: FnOnce(Arc<dyn Broker>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // The memory broker answers in microseconds; a short bound keeps the
    // failing runs quick.
    testkit::set_wait(std::time::Duration::from_secs(2));
    match tokio::spawn(check(faulty(fault))).await {
        Ok(()) => false,
        Err(e) => e.is_panic(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_catches_dropped_headers() {
    assert!(!fails(Fault::None, testkit::round_trip_keeps_message).await);
    assert!(fails(Fault::DropHeaders, testkit::round_trip_keeps_message).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_catches_a_requeue_that_loses_the_message() {
    assert!(!fails(Fault::None, testkit::nack_requeue_redelivers_with_next_attempt).await);
    assert!(
        fails(
            Fault::RequeueLosesMessage,
            testkit::nack_requeue_redelivers_with_next_attempt
        )
        .await
    );
    assert!(
        fails(
            Fault::RequeueLosesMessage,
            testkit::dead_letter_after_max_attempts
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_catches_a_close_that_does_nothing() {
    assert!(!fails(Fault::None, testkit::recv_after_close_returns_none).await);
    assert!(fails(Fault::CloseIgnored, testkit::recv_after_close_returns_none).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_catches_a_recv_that_is_not_cancel_safe() {
    assert!(!fails(Fault::None, testkit::cancelled_recv_loses_nothing).await);
    assert!(fails(Fault::CancelUnsafe, testkit::cancelled_recv_loses_nothing).await);
}

#[tokio::test]
async fn kit_catches_a_producer_close_that_refuses_nothing() {
    assert!(!fails(Fault::None, testkit::producer_close_waits_and_refuses_later_sends).await);
    assert!(
        fails(
            Fault::ProducerCloseIgnored,
            testkit::producer_close_waits_and_refuses_later_sends
        )
        .await
    );
}
