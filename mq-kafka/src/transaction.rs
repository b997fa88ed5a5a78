//! Kafka transactions: an atomic `send_batch`, and explicit transactions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mq_core::backend::check_send;
use mq_core::{Delivery, Error, Message, Nack, Producer, Receipt, Result};
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::broker::Inner;
use crate::consumer::{KafkaAck, Shared};
use crate::error::map;
use crate::producer::{blocking, single};

/// How long librdkafka may take to begin, commit or abort a transaction.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer whose every `send_batch` is one Kafka transaction: consumers
/// (which read committed messages only, librdkafka's default) see all of
/// the batch or none of it. [`KafkaTransactionalProducer::begin`] opens a
/// transaction spanning several sends and topics.
///
/// One transaction at a time per producer (they are serialised); its
/// `transactional.id` fences older producers with the same id.
///
/// ```no_run
/// # async fn run(broker: mq_kafka::KafkaBroker) -> mq_core::Result<()> {
/// use mq_core::{Message, Producer};
/// let producer = broker.transactional_producer("billing-1").await?;
/// producer.send_batch("invoices", vec![Message::new("a"), Message::new("b")]).await?; // all or nothing
/// let txn = producer.begin().await?;
/// txn.send("invoices", Message::new("c")).await?;
/// txn.send("audit", Message::new("c sent")).await?;
/// txn.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaTransactionalProducer {
    inner: Arc<Inner>,
    producer: FutureProducer,
    transactional_id: Arc<str>,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
    gate: Arc<mq_core::backend::SendGate>,
}

impl std::fmt::Debug for KafkaTransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransactionalProducer")
            .field("transactional_id", &self.transactional_id)
            .finish_non_exhaustive()
    }
}

impl KafkaTransactionalProducer {
    pub(crate) async fn new(inner: Arc<Inner>, transactional_id: &str) -> Result<Self> {
        inner.check_open()?;
        let producer: FutureProducer = inner
            .config
            .client()
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| map(e, "create a transactional producer", inner.endpoint()))?;
        blocking(&producer, "initialise transactions", inner.endpoint(), |p| {
            p.init_transactions(TXN_TIMEOUT)
        })
        .await?;
        Ok(KafkaTransactionalProducer {
            inner,
            producer,
            transactional_id: transactional_id.into(),
            one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
            gate: Arc::new(mq_core::backend::SendGate::new("kafka transactional producer")),
        })
    }

    /// Opens a transaction; it ends with [`KafkaTransaction::commit`] or
    /// [`KafkaTransaction::abort`] (dropping it without either aborts it).
    ///
    /// # Errors
    ///
    /// The broker refused to begin (fenced by a newer producer, say).
    pub async fn begin(&self) -> Result<KafkaTransaction> {
        self.inner.check_open()?;
        if self.gate.is_closed() {
            return Err(Error::closed("kafka transactional producer"));
        }
        let guard = self.one_at_a_time.clone().lock_owned().await;
        self.open(Some(guard)).await
    }

    /// Begins a transaction; `guard` is `None` inside one that holds it.
    async fn open(&self, guard: Option<tokio::sync::OwnedMutexGuard<()>>) -> Result<KafkaTransaction> {
        blocking(
            &self.producer,
            "begin a transaction",
            self.inner.endpoint(),
            |p| p.begin_transaction(),
        )
        .await?;
        Ok(KafkaTransaction {
            owner: self.clone(),
            open: true,
            guard,
            consumed: Vec::new(),
            consumer: None,
        })
    }
}

/// An open transaction of a [`KafkaTransactionalProducer`].
///
/// Consume-transform-produce, exactly once: deliveries of a consumer from
/// [`KafkaBroker::subscribe_transactional`](crate::KafkaBroker::subscribe_transactional)
/// passed to [`consume`](Self::consume) are committed with the
/// transaction's messages: both happen, or neither.
///
/// ```no_run
/// # async fn run(broker: mq_kafka::KafkaBroker) -> mq_core::Result<()> {
/// use mq_core::{Consumer, Message, Subscription};
/// let mut orders = broker.subscribe_transactional(Subscription::new("orders", "billing")).await?;
/// let producer = broker.transactional_producer("billing-1").await?;
/// while let Some(order) = orders.recv().await? {
///     let mut txn = producer.begin().await?;
///     txn.send("invoices", Message::new(order.message().payload.clone())).await?;
///     txn.consume(order)?;
///     txn.commit().await?; // the invoice is visible and the order consumed, or neither
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct KafkaTransaction {
    owner: KafkaTransactionalProducer,
    open: bool,
    /// Held until the transaction ends: one at a time per producer.
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Deliveries the transaction consumes, and their consumer.
    consumed: Vec<Delivery>,
    consumer: Option<Arc<Shared>>,
}

impl KafkaTransaction {
    /// Sends `message` within the transaction; the receipt comes once the
    /// broker has it (consumers see it only after the commit).
    ///
    /// # Errors
    ///
    /// As [`Producer::send`]; the transaction should then be aborted.
    pub async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        single(self.send_batch(topic, vec![message]).await?, topic)
    }

    /// Sends `messages` within the transaction.
    ///
    /// # Errors
    ///
    /// As [`Producer::send_batch`]; the transaction should then be aborted.
    pub async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.owner
            .inner
            .produce_on(&self.owner.producer, topic, messages)
            .await
    }

    /// Makes `delivery` part of the transaction: its offset is committed
    /// with the transaction (with every earlier delivery of its partition
    /// that is settled), and it is acked once the transaction commits. If
    /// the transaction aborts or fails it is requeued (attempt + 1) instead.
    ///
    /// Exactly once holds for a partition consumed in order. A delivery
    /// behind an unsettled earlier one of its partition is committed by the
    /// transaction that settles that earlier one; until then a restart reads
    /// it again.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a delivery of another backend, of a
    /// consumer that commits by itself (not from `subscribe_transactional`),
    /// or of a second consumer in the same transaction;
    /// [`Error::AlreadySettled`] for a settled one.
    pub fn consume(&mut self, delivery: Delivery) -> Result<()> {
        let unsupported = |feature: &str| Error::Unsupported {
            backend: "kafka",
            feature: feature.to_string(),
        };
        let Some(handle) = delivery.backend_handle::<KafkaAck>() else {
            return Err(unsupported(
                "a delivery of another backend in a Kafka transaction",
            ));
        };
        if !handle.shared.transactional() {
            return Err(unsupported(
                "consuming in a transaction a delivery of a consumer that commits by itself \
                 (subscribe with KafkaBroker::subscribe_transactional)",
            ));
        }
        if let Some(consumer) = &self.consumer
            && !Arc::ptr_eq(consumer, &handle.shared)
        {
            return Err(unsupported("deliveries of two consumers in one transaction"));
        }
        if delivery.is_settled() {
            return Err(Error::AlreadySettled {
                id: delivery.message().id.clone(),
                settled: "settled",
            });
        }
        self.consumer = Some(handle.shared.clone());
        self.consumed.push(delivery);
        Ok(())
    }

    /// Commits: everything sent in the transaction becomes visible at once,
    /// and the consumed deliveries' offsets are committed with it.
    ///
    /// # Errors
    ///
    /// The commit failed: nothing of the transaction is visible, and the
    /// consumed deliveries are requeued.
    pub async fn commit(mut self) -> Result<()> {
        self.open = false;
        let consumed = std::mem::take(&mut self.consumed);
        match self.commit_with(&consumed).await {
            Ok(()) => {
                for d in &consumed {
                    // Committed already; this settles the delivery here.
                    if let Err(e) = d.ack().await {
                        tracing::debug!(error = %e, "acking a delivery its transaction consumed");
                    }
                }
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = self.abort_only().await {
                    tracing::warn!(error = %abort, "aborting a transaction whose commit failed");
                }
                self.owner.hand_back(consumed).await;
                Err(e)
            }
        }
    }

    /// Sends the consumed offsets to the transaction and commits it.
    async fn commit_with(&self, consumed: &[Delivery]) -> Result<()> {
        if let Some(consumer) = &self.consumer {
            let settling: Vec<_> = consumed
                .iter()
                .filter_map(|d| d.backend_handle::<KafkaAck>())
                .map(|h| (h.source, h.partition, h.offset, h.generation))
                .collect();
            let positions =
                consumer
                    .tracker
                    .positions_with(&settling)
                    .map_err(|i| Error::DeliveryExpired {
                        id: consumed[i].message().id.clone(),
                        reason: "its partition was reassigned; its new owner delivers it again".into(),
                    })?;
            let mut offsets = TopicPartitionList::new();
            for (topic, partition, next) in &positions {
                offsets
                    .add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .map_err(|e| map(e, "list the consumed offsets", self.owner.inner.endpoint()))?;
            }
            let metadata = consumer.consumer.group_metadata().ok_or_else(|| {
                Error::backend(
                    "kafka",
                    "read the consumer group's metadata",
                    "the consumer is not in its group",
                )
            })?;
            blocking(
                &self.owner.producer,
                "send the consumed offsets to the transaction",
                self.owner.inner.endpoint(),
                move |p| p.send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT),
            )
            .await?;
        }
        blocking(
            &self.owner.producer,
            "commit a transaction",
            self.owner.inner.endpoint(),
            |p| p.commit_transaction(TXN_TIMEOUT),
        )
        .await
    }

    /// Aborts the transaction, nothing else.
    async fn abort_only(&self) -> Result<()> {
        blocking(
            &self.owner.producer,
            "abort a transaction",
            self.owner.inner.endpoint(),
            |p| p.abort_transaction(TXN_TIMEOUT),
        )
        .await
    }

    /// Aborts: nothing sent in the transaction becomes visible, and the
    /// consumed deliveries are requeued.
    ///
    /// # Errors
    ///
    /// The abort could not be completed in time.
    pub async fn abort(mut self) -> Result<()> {
        self.open = false;
        let result = self.abort_only().await;
        self.owner.hand_back(std::mem::take(&mut self.consumed)).await;
        result
    }
}

impl KafkaTransactionalProducer {
    /// Requeues what an aborted transaction consumed (attempt + 1, or a dead
    /// letter once the attempts are used up) in a transaction of its own
    /// that also commits their offsets, so a copy exists exactly when its
    /// original counts as consumed. Deliveries whose partition went to
    /// another member are left to it. Should that transaction fail too, they
    /// are requeued outside one (a restart before the next commit may then
    /// read an original again).
    async fn hand_back(&self, consumed: Vec<Delivery>) {
        let consumed: Vec<Delivery> = consumed
            .into_iter()
            .filter(|d| {
                d.backend_handle::<KafkaAck>()
                    .is_some_and(|h| h.shared.tracker.owns(h.source, h.partition, h.generation))
            })
            .collect();
        if consumed.is_empty() {
            return;
        }
        let in_transaction = match self.requeue_in_transaction(&consumed).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "requeueing in a transaction what an aborted one consumed failed; requeueing without one");
                false
            }
        };
        for d in &consumed {
            // Requeued already when in a transaction: the ack only settles it here.
            let settled = if in_transaction {
                d.ack().await
            } else {
                d.nack(Nack::requeue()).await
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "settling a delivery of an aborted transaction failed; it is read again after a restart");
            }
        }
    }

    async fn requeue_in_transaction(&self, consumed: &[Delivery]) -> Result<()> {
        // Aborted when dropped unfinished.
        let mut txn = self.open(None).await?;
        txn.consumer = consumed
            .first()
            .and_then(|d| d.backend_handle::<KafkaAck>())
            .map(|h| h.shared.clone());
        for d in consumed {
            if let Some(h) = d.backend_handle::<KafkaAck>() {
                h.shared
                    .requeue(Some(&self.producer), d.message(), d.attempt(), Duration::ZERO)
                    .await?;
            }
        }
        txn.commit_with(consumed).await?;
        txn.open = false;
        Ok(())
    }
}

impl Drop for KafkaTransaction {
    fn drop(&mut self) {
        if self.open {
            // Neither committed nor aborted: abort, off the runtime's threads.
            // The next transaction waits for this abort.
            let producer = self.owner.producer.clone();
            let guard = self.guard.take();
            let consumed = std::mem::take(&mut self.consumed);
            let owner = self.owner.clone();
            let runtime = tokio::runtime::Handle::try_current().ok();
            std::thread::spawn(move || {
                if let Err(e) = producer.abort_transaction(TXN_TIMEOUT) {
                    tracing::warn!(error = %e, "aborting a dropped transaction failed");
                }
                // Without a runtime they are read again after a restart.
                if let Some(runtime) = runtime {
                    runtime.spawn(async move {
                        owner.hand_back(consumed).await;
                        drop(guard);
                    });
                } else {
                    drop(guard);
                }
            });
        }
    }
}

#[async_trait]
impl Producer for KafkaTransactionalProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        single(self.send_batch(topic, vec![message]).await?, topic)
    }

    /// One transaction: all of `messages` become visible, or none.
    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let _pass = self.gate.enter()?;
        crate::broker::LIMITS.check_send("kafka", topic, &messages)?;
        check_send("kafka", topic, &messages, self.inner.config.max_message_bytes())?;
        let txn = self.begin().await?;
        match txn.send_batch(topic, messages).await {
            Ok(receipts) => {
                txn.commit().await?;
                Ok(receipts)
            }
            Err(e) => {
                if let Err(abort) = txn.abort().await {
                    tracing::warn!(error = %abort, "aborting a failed transaction");
                }
                Err(e)
            }
        }
    }

    async fn flush(&self) -> Result<()> {
        blocking(&self.producer, "flush", self.inner.endpoint(), |p| {
            p.flush(Duration::from_secs(30))
        })
        .await
    }

    /// Refuses later sends and transactions, waits for the `send_batch`
    /// transactions in flight, then flushes. A transaction opened with
    /// [`begin`](KafkaTransactionalProducer::begin) is not waited for: it
    /// ends with its own commit or abort.
    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        self.flush().await
    }
}
