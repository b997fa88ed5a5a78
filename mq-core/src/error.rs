//! The one public error type of mq.

use std::time::Duration;

use crate::Message;

/// A boxed error from a backend's client library, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type used throughout mq.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mq, whatever the backend.
///
/// Each backend maps its client's errors into this enum and keeps the original
/// as the [`source`](std::error::Error::source). Messages name the thing that
/// failed (topic, group, URL without its password) and, where there is one,
/// what to do about it. No variant ever carries a password: URLs are redacted
/// before they are stored here.
///
/// Use [`Error::is_retryable`] to decide whether trying the same operation
/// again can succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A broker URL could not be parsed.
    #[error("invalid broker URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No backend is registered for a URL scheme.
    #[error("no backend is registered for scheme `{scheme}`{hint}; registered schemes: {available}")]
    UnknownScheme {
        /// The scheme that was asked for.
        scheme: String,
        /// Extra advice, e.g. which crate provides the scheme (may be empty).
        hint: String,
        /// The schemes that are registered, comma separated.
        available: String,
    },

    /// A URL query option or config key that the backend does not know.
    #[error("unknown option `{option}` for the {backend} backend; known options: {known}")]
    UnknownOption {
        /// The backend that rejected the option.
        backend: &'static str,
        /// The option as given.
        option: String,
        /// The options the backend knows, comma separated.
        known: String,
    },

    /// An option or setting has a value the backend cannot use.
    #[error("invalid value for `{option}` ({backend}): {reason}")]
    InvalidOption {
        /// The backend that rejected the value.
        backend: &'static str,
        /// The option name.
        option: String,
        /// Why the value was rejected.
        reason: String,
    },

    /// The broker could not be reached, or the connection was lost.
    #[error("{backend}: cannot reach {endpoint}: {reason}")]
    Connection {
        /// The backend.
        backend: &'static str,
        /// The endpoint, with any password redacted.
        endpoint: String,
        /// What happened.
        reason: String,
        /// The client error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The broker refused the credentials.
    #[error("{backend}: authentication failed for {endpoint}: {reason}")]
    Auth {
        /// The backend.
        backend: &'static str,
        /// The endpoint, with any password redacted.
        endpoint: String,
        /// What the broker said (never the password).
        reason: String,
    },

    /// An operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done, e.g. `send to topic "orders"`.
        operation: String,
        /// How long it was given.
        after: Duration,
    },

    /// The broker, producer or consumer has been closed.
    #[error("{what} is closed")]
    Closed {
        /// What is closed, e.g. `broker memory`.
        what: String,
    },

    /// A topic is at capacity and the send was not allowed to wait.
    ///
    /// The message is given back, so nothing is lost: see [`Error::into_message`].
    #[error("topic `{topic}` is full")]
    Full {
        /// The topic.
        topic: String,
        /// The message that was not sent.
        message: Box<Message>,
    },

    /// A message is larger than the backend accepts.
    #[error("message of {size} bytes is too large for topic `{topic}` (limit {limit} bytes)")]
    TooLarge {
        /// The topic.
        topic: String,
        /// The encoded size of the message.
        size: usize,
        /// The largest size accepted.
        limit: usize,
    },

    /// A delivery was already acked or nacked and cannot be settled another way.
    #[error("delivery of message `{id}` was already {settled}")]
    AlreadySettled {
        /// The message id.
        id: String,
        /// How it was settled: `acked`, `requeued` or `dead-lettered`.
        settled: &'static str,
    },

    /// A delivery can no longer be settled: its lease ran out or its consumer
    /// is gone, and the broker will deliver the message again.
    #[error("delivery of message `{id}` expired ({reason}); the message will be delivered again")]
    DeliveryExpired {
        /// The message id.
        id: String,
        /// Why, e.g. `ack timeout passed`.
        reason: String,
    },

    /// A payload could not be decoded into the requested type.
    #[error("cannot decode payload of message `{id}` as {target}: {source}")]
    Decode {
        /// The message id.
        id: String,
        /// The type that was asked for.
        target: &'static str,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },

    /// A value could not be encoded into a payload.
    #[error("cannot encode {target} as a payload: {source}")]
    Encode {
        /// The type that was being encoded.
        target: &'static str,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },

    /// The backend does not support what was asked.
    #[error("the {backend} backend does not support {feature}")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// The missing feature.
        feature: String,
    },

    /// Any other failure reported by a backend or its broker.
    #[error("{backend}: {operation} failed: {reason}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// What was being done, naming the topic or group.
        operation: String,
        /// What went wrong.
        reason: String,
        /// Whether trying again may succeed.
        retryable: bool,
        /// The client error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Whether trying the same operation again may succeed.
    ///
    /// Lost connections, time-outs, full topics and backend errors that say so
    /// are retryable; bad input, bad credentials and closed handles are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connection { .. } | Error::Timeout { .. } | Error::Full { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// A short, stable name of the kind of error, for the `error.type`
    /// attribute of spans and metrics (never a message, so of low
    /// cardinality): `connection`, `auth`, `timeout`, `too_large`, ...
    ///
    /// ```
    /// assert_eq!(mq_core::Error::closed("producer").kind(), "closed");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "invalid_url",
            Error::UnknownScheme { .. } => "unknown_scheme",
            Error::UnknownOption { .. } => "unknown_option",
            Error::InvalidOption { .. } => "invalid_option",
            Error::Connection { .. } => "connection",
            Error::Auth { .. } => "auth",
            Error::Timeout { .. } => "timeout",
            Error::Closed { .. } => "closed",
            Error::Full { .. } => "full",
            Error::TooLarge { .. } => "too_large",
            Error::AlreadySettled { .. } => "already_settled",
            Error::DeliveryExpired { .. } => "delivery_expired",
            Error::Decode { .. } => "decode",
            Error::Encode { .. } => "encode",
            Error::Unsupported { .. } => "unsupported",
            Error::Backend { .. } => "backend",
        }
    }

    /// Takes back the message an unsent operation carried, if this error has one.
    ///
    /// ```
    /// use mq_core::{Error, Message};
    /// let err = Error::Full { topic: "t".into(), message: Box::new(Message::new("hi")) };
    /// assert_eq!(err.into_message().unwrap().payload, "hi");
    /// ```
    pub fn into_message(self) -> Option<Message> {
        match self {
            Error::Full { message, .. } => Some(*message),
            _ => None,
        }
    }

    /// A [`Error::Closed`] for `what`.
    pub fn closed(what: impl Into<String>) -> Self {
        Error::Closed { what: what.into() }
    }

    /// A non-retryable [`Error::Backend`] without a source.
    pub fn backend(backend: &'static str, operation: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Backend {
            backend,
            operation: operation.into(),
            reason: reason.into(),
            retryable: false,
            source: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let timeout = Error::Timeout {
            operation: "send".into(),
            after: Duration::from_secs(1),
        };
        assert!(timeout.is_retryable());
        assert!(!Error::closed("broker").is_retryable());
        assert!(!Error::backend("x", "op", "bad").is_retryable());
        let auth = Error::Auth {
            backend: "x",
            endpoint: "h".into(),
            reason: "no".into(),
        };
        assert!(!auth.is_retryable());
    }

    #[test]
    fn full_gives_the_message_back() {
        let msg = Message::new("payload").with_key("k");
        let id = msg.id.clone();
        let err = Error::Full {
            topic: "t".into(),
            message: Box::new(msg),
        };
        assert!(err.is_retryable());
        let back = err.into_message().expect("full carries the message");
        assert_eq!(back.id, id);
        assert_eq!(back.key.as_deref(), Some("k"));
    }
}
