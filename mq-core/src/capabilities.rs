//! What a backend guarantees.

/// What a broker guarantees, declared by each backend.
///
/// The conformance kit runs a check only where the backend declares the
/// behaviour it checks; application code can do the same. Start from
/// [`Capabilities::default`] (nothing declared) and set what holds:
///
/// ```
/// let mut caps = mq_core::Capabilities::default();
/// caps.consumer_groups = true;
/// caps.max_message_bytes = Some(1 << 20);
/// assert!(!caps.transactions);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages with the same key reach a consumer in the order they were sent
    /// (redeliveries excepted).
    pub ordering_per_key: bool,
    /// Messages survive a broker restart.
    pub persistence: bool,
    /// `Nack::Requeue` with a delay holds the message back for that delay.
    pub delayed_requeue: bool,
    /// Several groups each receive every message, and consumers inside a group
    /// compete for messages.
    pub consumer_groups: bool,
    /// A new group can start from the oldest retained message.
    pub replay_from_earliest: bool,
    /// A delivery left unsettled longer than the subscription's ack timeout is
    /// delivered again while its consumer is still open.
    pub ack_timeout_redelivery: bool,
    /// Dead-lettering (explicit, and after the subscription's max attempts).
    pub dead_letter: bool,
    /// Atomic batches and consume-transform-produce transactions.
    pub transactions: bool,
    /// The largest message the backend accepts, if it has a limit.
    pub max_message_bytes: Option<usize>,
}
