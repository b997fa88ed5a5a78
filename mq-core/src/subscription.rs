//! What a consumer asks for: topic, group and delivery settings.

use std::time::Duration;

/// Where a group that does not exist yet starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartPosition {
    /// From the oldest message the broker still holds (needs
    /// [`Capabilities::replay_from_earliest`](crate::Capabilities)).
    Earliest,
    /// From the messages sent after `subscribe` returns.
    #[default]
    Latest,
}

/// A subscription: the topic, the group, and how deliveries are handed out.
///
/// Every group receives every message of the topic; consumers that subscribe
/// with the same group compete, each message going to one of them. The
/// settings other than `topic` and `group` apply to the consumer that
/// subscribes with them.
///
/// ```
/// use std::time::Duration;
/// use mq_core::{StartPosition, Subscription};
///
/// let sub = Subscription::new("orders", "billing")
///     .start(StartPosition::Earliest)
///     .prefetch(50)
///     .ack_timeout(Duration::from_secs(10))
///     .max_attempts(5);
/// assert_eq!(sub.dead_letter_topic(), "orders.dlq");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subscription {
    /// The topic to consume.
    pub topic: String,
    /// The group (subscription name).
    pub group: String,
    /// Where a new group starts. An existing group continues where it was.
    pub start: StartPosition,
    /// The most unsettled deliveries this consumer holds at once (at least 1).
    pub prefetch: usize,
    /// How long a delivery may stay unsettled before the broker may hand it to
    /// another consumer (where the backend supports it).
    pub ack_timeout: Duration,
    /// After this many deliveries of one message, a failed one is
    /// dead-lettered instead of requeued. `None`: never.
    pub max_attempts: Option<u32>,
    /// Where dead letters go; `None` means `{topic}.dlq`.
    pub dead_letter: Option<String>,
}

impl Subscription {
    /// Default prefetch.
    pub const DEFAULT_PREFETCH: usize = 100;
    /// Default ack timeout.
    pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default max attempts.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

    /// A subscription of `group` to `topic` with the defaults: start at
    /// latest, prefetch 100, ack timeout 30 s, 10 attempts, dead letters to
    /// `{topic}.dlq`.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Subscription {
            topic: topic.into(),
            group: group.into(),
            start: StartPosition::Latest,
            prefetch: Self::DEFAULT_PREFETCH,
            ack_timeout: Self::DEFAULT_ACK_TIMEOUT,
            max_attempts: Some(Self::DEFAULT_MAX_ATTEMPTS),
            dead_letter: None,
        }
    }

    /// Sets where a new group starts.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets the prefetch (values below 1 are raised to 1).
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Sets the ack timeout.
    pub fn ack_timeout(mut self, ack_timeout: Duration) -> Self {
        self.ack_timeout = ack_timeout;
        self
    }

    /// Sets the max attempts (values below 1 are raised to 1).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts.max(1));
        self
    }

    /// Never dead-letters for the number of attempts.
    pub fn unlimited_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// Sets the dead-letter topic.
    pub fn dead_letter_to(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter = Some(topic.into());
        self
    }

    /// The dead-letter topic: the one set, or `{topic}.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// Checks the topic and group have names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) naming the empty one.
    pub fn validate(&self, backend: &'static str) -> crate::Result<()> {
        for (what, name) in [("topic", &self.topic), ("group", &self.group)] {
            if name.is_empty() {
                return Err(crate::Error::InvalidOption {
                    backend,
                    option: what.into(),
                    reason: format!("the {what} name is empty"),
                });
            }
        }
        Ok(())
    }

    /// Whether a delivery on its `attempt`-th try has used up its attempts.
    pub fn attempts_exhausted(&self, attempt: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempt >= max)
    }

    /// The dead-letter reason for a delivery on its `attempt`-th try that has
    /// used up its attempts ([`attempts_exhausted_reason`](crate::attempts_exhausted_reason));
    /// `None` while it may be tried again.
    pub fn exhausted_reason(&self, attempt: u32) -> Option<String> {
        self.max_attempts
            .filter(|_| self.attempts_exhausted(attempt))
            .map(crate::attempts_exhausted_reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced() {
        let sub = Subscription::new("t", "g").prefetch(0).max_attempts(0);
        assert_eq!(sub.prefetch, 1);
        assert_eq!(sub.max_attempts, Some(1));
        assert!(sub.attempts_exhausted(1));
        assert!(
            !Subscription::new("t", "g")
                .unlimited_attempts()
                .attempts_exhausted(u32::MAX)
        );
    }

    #[test]
    fn exhausted_reason_names_the_limit_once_it_is_reached() {
        let sub = Subscription::new("t", "g").max_attempts(3);
        assert_eq!(sub.exhausted_reason(2), None);
        assert_eq!(
            sub.exhausted_reason(3).as_deref(),
            Some("max attempts (3) reached")
        );
        assert_eq!(
            Subscription::new("t", "g")
                .unlimited_attempts()
                .exhausted_reason(99),
            None
        );
    }

    #[test]
    fn validate_names_the_empty_field() {
        assert!(Subscription::new("t", "g").validate("x").is_ok());
        let err = Subscription::new("t", "").validate("x").unwrap_err();
        assert!(err.to_string().contains("group"), "{err}");
    }

    #[test]
    fn dead_letter_topic_default_and_override() {
        assert_eq!(Subscription::new("a.b", "g").dead_letter_topic(), "a.b.dlq");
        assert_eq!(
            Subscription::new("a", "g")
                .dead_letter_to("bad")
                .dead_letter_topic(),
            "bad"
        );
    }
}
