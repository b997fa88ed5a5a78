//! Dead-letter replay: reads a dead-letter topic and sends each message back
//! to the topic it was dead-lettered from (its
//! [`ORIGINAL_TOPIC`](crate::headers::ORIGINAL_TOPIC) header), acking the
//! dead letter only once the copy is confirmed.
//!
//! Nothing is lost when a replay stops half-way (an error, a dropped
//! future, a killed process): a dead letter is acked only after its copy
//! was confirmed, so at worst a message is replayed twice. Dead letters
//! that are skipped (no original topic, not matching the filter, a dry
//! run) are held unsettled and handed back to the dead-letter topic when
//! the replay ends.
//!
//! ```no_run
//! # async fn run(broker: std::sync::Arc<dyn mq_core::Broker>) -> mq_core::Result<()> {
//! use mq_core::dlq::{ReplayOptions, replay};
//! let options = ReplayOptions::default().filter("mq-dead-letter-reason", "timeout");
//! let report = replay(broker.as_ref(), "orders.dlq", &options).await?;
//! println!("{report}"); // read 12, replayed 3, left: 9 not matching the filter, ...
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Broker, Delivery, Message, ProducerOptions, Result, StartPosition, Subscription, headers};

/// The group [`replay`] and [`list`] read with unless told otherwise. A
/// backend that would drop dead letters no group reads yet (RabbitMQ) keeps
/// them for this group.
pub const DEFAULT_GROUP: &str = "mq-dlq-replay";

/// What [`replay`] reads and sends.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// The group that reads the dead-letter topic (`mq-dlq-replay`): its
    /// position is where the next replay starts.
    pub group: String,
    /// Replay only dead letters whose headers hold every `(name, text)`
    /// pair: the header's value contains the text (e.g.
    /// `("mq-dead-letter-reason", "timeout")`).
    pub filter: Vec<(String, String)>,
    /// Stop after this many replayed.
    pub max: Option<usize>,
    /// Read and count, send nothing, hand every dead letter back.
    pub dry_run: bool,
    /// Stop once no dead letter arrived for this long.
    pub idle: Duration,
    /// Most dead letters held unsettled at once (skipped ones stay held
    /// until the end): the subscription's prefetch.
    pub window: usize,
    /// The subscription's ack timeout. Where the backend hands a dead
    /// consumer's deliveries to the group only after it (Redis), a replay
    /// that was killed leaves its held dead letters to the next replay
    /// once this passed.
    pub ack_timeout: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            group: DEFAULT_GROUP.into(),
            filter: Vec::new(),
            max: None,
            dry_run: false,
            idle: Duration::from_secs(2),
            window: 10_000,
            ack_timeout: Subscription::DEFAULT_ACK_TIMEOUT,
        }
    }
}

impl ReplayOptions {
    /// Reads with group `group`.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Adds a header filter: header `name` contains `text`.
    #[must_use]
    pub fn filter(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.filter.push((name.into(), text.into()));
        self
    }

    /// Stops after `max` replayed.
    #[must_use]
    pub fn max(mut self, max: usize) -> Self {
        self.max = Some(max);
        self
    }

    /// Counts only.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Reads with ack timeout `ack_timeout`.
    #[must_use]
    pub fn ack_timeout(mut self, ack_timeout: Duration) -> Self {
        self.ack_timeout = ack_timeout;
        self
    }

    /// Stops after `idle` without a dead letter.
    #[must_use]
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How the dead-letter topic is read: from the earliest for a new group.
    fn subscription(&self, dead_letter_topic: &str) -> Subscription {
        Subscription::new(dead_letter_topic, self.group.as_str())
            .start(StartPosition::Earliest)
            .prefetch(self.window.max(1))
            .ack_timeout(self.ack_timeout)
    }

    fn matches(&self, message: &Message) -> bool {
        self.filter.iter().all(|(name, text)| {
            message
                .headers
                .get(name)
                .is_some_and(|value| value.contains(text.as_str()))
        })
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters read.
    pub read: usize,
    /// Sent back and acked (with `dry_run`: that would have been).
    pub replayed: usize,
    /// Left in the dead-letter topic: not matching the filter.
    pub filtered_out: usize,
    /// Left in the dead-letter topic: no original-topic header.
    pub no_origin: usize,
    /// Replayed per original topic.
    pub by_topic: BTreeMap<String, usize>,
    /// Whether nothing was sent.
    pub dry_run: bool,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run { "would replay" } else { "replayed" };
        write!(
            f,
            "read {}, {verb} {}, left: {} not matching the filter, {} without an original topic",
            self.read, self.replayed, self.filtered_out, self.no_origin
        )?;
        for (topic, n) in &self.by_topic {
            write!(f, "; {topic}: {n}")?;
        }
        Ok(())
    }
}

/// The message to send back: the dead letter without the headers dead
/// lettering added (same id, key, payload and the application's headers).
pub fn restored(dead: &Message) -> Message {
    let mut message = dead.clone();
    for name in [
        headers::DEAD_LETTER_REASON,
        headers::ORIGINAL_TOPIC,
        headers::ORIGINAL_GROUP,
        headers::ATTEMPTS,
        headers::ATTEMPT,
    ] {
        message.headers.remove(name);
    }
    message
}

/// Replays the dead letters of `dead_letter_topic` on `broker` (see the
/// module docs), from the replay group's position (earliest for a new
/// group), until `options.idle` passes without one or `options.max` are
/// replayed.
///
/// # Errors
///
/// The first error of subscribing, receiving, sending or acking; what was
/// not acked by then stays in the dead-letter topic.
pub async fn replay(
    broker: &dyn Broker,
    dead_letter_topic: &str,
    options: &ReplayOptions,
) -> Result<ReplayReport> {
    let mut consumer = broker.subscribe(options.subscription(dead_letter_topic)).await?;
    let producer = broker.producer(ProducerOptions::default()).await?;
    let mut report = ReplayReport {
        dry_run: options.dry_run,
        ..ReplayReport::default()
    };
    // Held unsettled, handed back when the consumer closes.
    let mut held: Vec<Delivery> = Vec::new();
    let outcome = async {
        while options.max.is_none_or(|max| report.replayed < max) {
            let delivery = match tokio::time::timeout(options.idle, consumer.recv()).await {
                Err(_) | Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Some(delivery))) => delivery,
            };
            report.read += 1;
            let origin = delivery.message().headers.get(headers::ORIGINAL_TOPIC).cloned();
            let Some(origin) = origin.filter(|t| !t.is_empty()) else {
                report.no_origin += 1;
                held.push(delivery);
                continue;
            };
            if !options.matches(delivery.message()) {
                report.filtered_out += 1;
                held.push(delivery);
                continue;
            }
            report.replayed += 1;
            *report.by_topic.entry(origin.clone()).or_default() += 1;
            if options.dry_run {
                held.push(delivery);
                continue;
            }
            producer.send(&origin, restored(delivery.message())).await?;
            delivery.ack().await?;
        }
        Ok(())
    }
    .await;
    // Closing hands back what is held; then the rest is settled.
    let closed = consumer.close().await;
    drop(held);
    let _ = producer.close().await;
    outcome?;
    closed?;
    Ok(report)
}

/// Reads the dead letters of `dead_letter_topic` as [`replay`] would (the
/// same group, filter, `max` and `idle`), sends nothing, and hands every
/// one back when it returns: the dead letters a replay with `options`
/// would send, in the order read. Those without an original topic are
/// listed too (a replay leaves them); those not matching the filter are not.
///
/// # Errors
///
/// The first error of subscribing or receiving; nothing is settled either way.
pub async fn list(
    broker: &dyn Broker,
    dead_letter_topic: &str,
    options: &ReplayOptions,
) -> Result<Vec<Message>> {
    let mut consumer = broker.subscribe(options.subscription(dead_letter_topic)).await?;
    let mut held: Vec<Delivery> = Vec::new();
    let mut listed = Vec::new();
    let outcome = async {
        while options.max.is_none_or(|max| listed.len() < max) && held.len() < options.window.max(1) {
            let delivery = match tokio::time::timeout(options.idle, consumer.recv()).await {
                Err(_) | Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Some(delivery))) => delivery,
            };
            if options.matches(delivery.message()) {
                listed.push(delivery.message().clone());
            }
            held.push(delivery);
        }
        Ok(())
    }
    .await;
    let closed = consumer.close().await;
    drop(held);
    outcome?;
    closed?;
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_drops_only_the_dead_letter_headers() {
        let original = Message::new("x").with_key("k").with_header("app", "1");
        let dead = crate::backend::dead_letter_message(&original, "orders", "billing", 3, "boom");
        assert_eq!(
            dead.headers.get(headers::ORIGINAL_TOPIC).map(String::as_str),
            Some("orders")
        );
        let back = restored(&dead);
        assert_eq!(back.id, original.id);
        assert_eq!(back.key, original.key);
        assert_eq!(back.payload, original.payload);
        assert_eq!(back.headers, original.headers);
    }

    #[test]
    fn filter_needs_every_pair() {
        let m = Message::new("x").with_header("mq-dead-letter-reason", "handler timeout");
        let opts = ReplayOptions::default().filter("mq-dead-letter-reason", "timeout");
        assert!(opts.matches(&m));
        assert!(!opts.clone().filter("other", "y").matches(&m));
        assert!(
            !ReplayOptions::default()
                .filter("mq-dead-letter-reason", "decode")
                .matches(&m)
        );
    }
}
