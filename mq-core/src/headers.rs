//! Header names that mq itself reads and writes.
//!
//! Every name starts with `mq-`; applications should not use that prefix for
//! their own headers. Backends store these like any other header.

/// The payload's media type, set by [`Message::json`](crate::Message::json).
pub const CONTENT_TYPE: &str = "content-type";

/// On a requeued copy (backends that requeue by republishing): the attempt
/// number the copy will be delivered as.
pub const ATTEMPT: &str = "mq-attempt";

/// On a dead letter: why it was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "mq-dead-letter-reason";

/// On a dead letter: the topic it was consumed from.
pub const ORIGINAL_TOPIC: &str = "mq-original-topic";

/// On a dead letter: the group it was consumed by.
pub const ORIGINAL_GROUP: &str = "mq-original-group";

/// On a dead letter: how many times it had been delivered.
pub const ATTEMPTS: &str = "mq-attempts";

/// For request/reply: the topic a reply should be sent to.
pub const REPLY_TO: &str = "mq-reply-to";

/// For request/reply: the id of the request a reply answers.
pub const CORRELATION_ID: &str = "mq-correlation-id";
