//! Mapping redis-rs errors into `mq_core::Error`.

use mq_core::Error;
use redis::{ErrorKind, RedisError};

/// Whether trying the command again, after reconnecting, may succeed.
/// On a cluster that includes a redirection (MOVED, ASK) the client did not
/// follow itself (a pipeline's), and a cluster that is failing over
/// (CLUSTERDOWN, TRYAGAIN): the client refreshes its slot map meanwhile.
pub(crate) fn is_transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_cluster_error()
        || matches!(
            err.code(),
            Some("LOADING" | "TRYAGAIN" | "BUSY" | "MASTERDOWN" | "MOVED" | "ASK" | "CLUSTERDOWN")
        )
}

/// Maps `err`, raised while doing `operation` against `endpoint` (which has
/// no credentials), keeping it as the source.
pub(crate) fn map(err: RedisError, operation: &str, endpoint: &str) -> Error {
    let code = err.code().map(str::to_string);
    if err.kind() == ErrorKind::AuthenticationFailed
        || matches!(code.as_deref(), Some("WRONGPASS" | "NOAUTH"))
    {
        return Error::Auth {
            backend: "redis",
            endpoint: endpoint.to_string(),
            reason: "the server refused the user name or password (check the URL's credentials)".into(),
        };
    }
    if is_transient(&err) {
        return Error::Connection {
            backend: "redis",
            endpoint: endpoint.to_string(),
            reason: format!("{operation}: {err}"),
            source: Some(Box::new(err)),
        };
    }
    // Inside a pipeline reply the server's code is only in the text.
    let wrong_type = code.as_deref() == Some("WRONGTYPE") || err.to_string().contains("WRONGTYPE");
    let reason = if wrong_type {
        "the key holds a value that is not a stream; use another topic or prefix".to_string()
    } else {
        err.to_string()
    };
    Error::Backend {
        backend: "redis",
        operation: operation.to_string(),
        reason,
        retryable: false,
        source: Some(Box::new(err)),
    }
}
