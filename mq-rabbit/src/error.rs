//! Mapping lapin errors into `mq_core::Error`.

use lapin::ErrorKind;
use mq_core::Error;

/// Whether the error means the connection or channel went away (so trying
/// again on a new one may succeed).
pub(crate) fn is_transient(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::IOError(_)
            | ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannel(_)
            | ErrorKind::MissingHeartbeatError
    ) || err.to_string().contains("CONNECTION_FORCED")
}

/// Maps `err`, raised while doing `operation` against `endpoint` (no credentials).
pub(crate) fn map(err: lapin::Error, operation: &str, endpoint: &str) -> Error {
    let text = err.to_string();
    if text.contains("ACCESS_REFUSED")
        || text.contains("access_refused")
        || text.contains("Login was refused")
    {
        return Error::Auth {
            backend: "rabbitmq",
            endpoint: endpoint.to_string(),
            reason: "the server refused the user name or password (check the URL's credentials)".into(),
        };
    }
    if is_transient(&err) {
        return Error::Connection {
            backend: "rabbitmq",
            endpoint: endpoint.to_string(),
            reason: format!("{operation}: {text}"),
            source: Some(Box::new(err)),
        };
    }
    Error::Backend {
        backend: "rabbitmq",
        operation: operation.to_string(),
        reason: text,
        retryable: false,
        source: Some(Box::new(err)),
    }
}
