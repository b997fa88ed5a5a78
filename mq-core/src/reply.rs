//! Request/reply over any backend, with reply-to and correlation-id headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::worker::Publish;
use crate::{Broker, Error, Message, Producer, Result, StartPosition, Subscription, headers};

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// Sends requests and waits for their replies.
///
/// It owns a reply topic (`mq.reply.{random}`) it consumes in the
/// background. A request carries [`REPLY_TO`](headers::REPLY_TO) naming that
/// topic; the responder sends its reply there with
/// [`CORRELATION_ID`](headers::CORRELATION_ID) set to the request's id (see
/// [`reply`]), and [`request`](Requester::request) returns it.
///
/// ```
/// # async fn run() -> mq_core::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use mq_core::{Broker, Message, Subscription, reply::{Requester, reply}};
/// use mq_core::worker::{HandlerResult, Job, Worker};
///
/// let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
/// // A responder: a worker whose handler returns the reply.
/// let consumer = broker.subscribe(Subscription::new("prices", "pricing")).await?;
/// let producer = Arc::from(broker.producer(Default::default()).await?);
/// let stop = tokio_util::sync::CancellationToken::new();
/// tokio::spawn(Worker::new(consumer).producer(producer).run(|job: Job| async move {
///     HandlerResult::Ok(vec![reply(&job.message, Message::new("4.20"))?])
/// }, stop.clone()));
///
/// let requester = Requester::new(broker.as_ref()).await?;
/// let answer = requester.request("prices", Message::new("tea"), Duration::from_secs(5)).await?;
/// assert_eq!(answer.payload, "4.20");
/// # stop.cancel();
/// # Ok(()) }
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug)]
pub struct Requester {
    producer: Box<dyn Producer>,
    reply_topic: String,
    waiting: Waiting,
    reader: JoinHandle<()>,
}

impl Requester {
    /// Subscribes to a new reply topic on `broker` and starts reading it.
    ///
    /// # Errors
    ///
    /// The broker's errors creating the producer or the subscription.
    pub async fn new(broker: &dyn Broker) -> Result<Self> {
        let reply_topic = format!("mq.reply.{}", crate::new_id());
        let sub = Subscription::new(&reply_topic, "requester")
            .start(StartPosition::Earliest)
            .prefetch(1000);
        let mut consumer = broker.subscribe(sub).await?;
        let producer = broker.producer(Default::default()).await?;
        let waiting: Waiting = Arc::default();
        let reader = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                loop {
                    let delivery = match consumer.recv().await {
                        Ok(Some(d)) => d,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "requester: reading replies failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let message = delivery.message().clone();
                    if let Err(e) = delivery.ack().await {
                        tracing::warn!(error = %e, "requester: acking a reply failed");
                    }
                    let Some(correlation) = message.header(headers::CORRELATION_ID) else {
                        tracing::warn!(id = %message.id, "requester: a reply without correlation id was dropped");
                        continue;
                    };
                    let waiter = waiting
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(correlation);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(message);
                        }
                        // Its request timed out, or it is a duplicate.
                        None => {
                            tracing::debug!(correlation, "requester: a reply nobody waits for was dropped")
                        }
                    }
                }
            }
        });
        Ok(Requester {
            producer,
            reply_topic,
            waiting,
            reader,
        })
    }

    /// The topic replies come back on.
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// Sends `message` to `topic` and waits up to `timeout` for its reply.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] naming the topic when no reply came in time; the
    /// producer's errors.
    pub async fn request(&self, topic: &str, message: Message, timeout: Duration) -> Result<Message> {
        let message = message.with_header(headers::REPLY_TO, self.reply_topic.clone());
        let correlation = message.id.clone();
        let (tx, rx) = oneshot::channel();
        self.lock().insert(correlation.clone(), tx);
        let sent = self.producer.send(topic, message).await;
        if let Err(e) = sent {
            self.lock().remove(&correlation);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::closed("requester's reply reader")),
            Err(_) => {
                self.lock().remove(&correlation);
                Err(Error::Timeout {
                    operation: format!("request to topic `{topic}` (no reply)"),
                    after: timeout,
                })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reply to `request`, for a worker handler to return: addressed to the
/// request's reply-to topic, with the request's id as correlation id.
///
/// # Errors
///
/// [`Error::InvalidOption`] when the request has no reply-to header.
pub fn reply(request: &Message, reply: Message) -> Result<Publish> {
    let topic = request
        .header(headers::REPLY_TO)
        .ok_or_else(|| Error::InvalidOption {
            backend: "mq",
            option: headers::REPLY_TO.into(),
            reason: format!(
                "message `{}` has no reply-to header: it is not a request",
                request.id
            ),
        })?;
    Ok(Publish::new(
        topic,
        reply.with_header(headers::CORRELATION_ID, request.id.clone()),
    ))
}
