//! Kafka transactions: an atomic `send_batch`, and explicit transactions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mq_core::{Message, Producer, Receipt, Result, check_send};
use rdkafka::producer::{FutureProducer, Producer as _};

use crate::broker::Inner;
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
        let guard = self.one_at_a_time.clone().lock_owned().await;
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
            guard: Some(guard),
        })
    }
}

/// An open transaction of a [`KafkaTransactionalProducer`].
#[derive(Debug)]
pub struct KafkaTransaction {
    owner: KafkaTransactionalProducer,
    open: bool,
    /// Held until the transaction ends: one at a time per producer.
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
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
            .produce_on(&self.owner.producer, topic, &messages)
            .await
    }

    /// Commits: everything sent in the transaction becomes visible at once.
    ///
    /// # Errors
    ///
    /// The commit failed; nothing of the transaction is visible.
    pub async fn commit(mut self) -> Result<()> {
        self.open = false;
        blocking(
            &self.owner.producer,
            "commit a transaction",
            self.owner.inner.endpoint(),
            |p| p.commit_transaction(TXN_TIMEOUT),
        )
        .await
    }

    /// Aborts: nothing sent in the transaction becomes visible.
    ///
    /// # Errors
    ///
    /// The abort could not be completed in time.
    pub async fn abort(mut self) -> Result<()> {
        self.open = false;
        blocking(
            &self.owner.producer,
            "abort a transaction",
            self.owner.inner.endpoint(),
            |p| p.abort_transaction(TXN_TIMEOUT),
        )
        .await
    }
}

impl Drop for KafkaTransaction {
    fn drop(&mut self) {
        if self.open {
            // Neither committed nor aborted: abort, off the runtime's threads.
            // The next transaction waits for this abort.
            let producer = self.owner.producer.clone();
            let guard = self.guard.take();
            std::thread::spawn(move || {
                if let Err(e) = producer.abort_transaction(TXN_TIMEOUT) {
                    tracing::warn!(error = %e, "aborting a dropped transaction failed");
                }
                drop(guard);
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
}
