//! Mapping lapin errors into `mq_core::Error`, by lapin's typed error
//! kinds (never by matching message text).

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use mq_core::Error;

/// The AMQP error the broker sent, if that is what `err` is.
fn amqp(err: &lapin::Error) -> Option<&AMQPErrorKind> {
    match err.kind() {
        ErrorKind::ProtocolError(e) => Some(e.kind()),
        _ => None,
    }
}

/// Whether the error means the connection or channel went away (so trying
/// again on a new one may succeed): I/O errors, a closed connection or
/// channel, a missed heartbeat, or the broker closing the connection
/// (`CONNECTION_FORCED`: a restart, an operator).
pub(crate) fn is_transient(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::IOError(_)
            | ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannel(_)
            | ErrorKind::MissingHeartbeatError
    ) || matches!(
        amqp(err),
        Some(AMQPErrorKind::Hard(
            AMQPHardError::CONNECTIONFORCED | AMQPHardError::INTERNALERROR
        ))
    )
}

/// Whether the broker refused the credentials.
fn is_auth(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::AuthProviderError(_))
        || matches!(amqp(err), Some(AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)))
}

/// Maps `err`, raised while doing `operation` against `endpoint` (no
/// credentials). Only what may heal is `Error::Connection` (and so tried
/// again): refused credentials are `Error::Auth`, the rest (a missing
/// virtual host, a refused declaration...) is a `Error::Backend` that is
/// not retryable.
pub(crate) fn map(err: lapin::Error, operation: &str, endpoint: &str) -> Error {
    if is_auth(&err) {
        return Error::Auth {
            backend: "rabbitmq",
            endpoint: endpoint.to_string(),
            reason: "the server refused the user name or password (check the URL's credentials)".into(),
        };
    }
    let text = err.to_string();
    if is_transient(&err) {
        return Error::Connection {
            backend: "rabbitmq",
            endpoint: endpoint.to_string(),
            reason: format!("{operation}: {text}"),
            source: Some(Box::new(err)),
        };
    }
    let reason = match amqp(&err) {
        // At connect: the virtual host is missing, or the user may not use it.
        Some(AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)) if operation == "connect" => format!(
            "{text} (check the URL's virtual host: it must exist and the user must have permissions on it)"
        ),
        _ => text,
    };
    Error::Backend {
        backend: "rabbitmq",
        operation: operation.to_string(),
        reason,
        retryable: false,
        source: Some(Box::new(err)),
    }
}
