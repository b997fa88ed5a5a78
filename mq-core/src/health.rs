//! What a health probe of a broker found.

use std::time::Duration;

/// A broker answered a health probe ([`Broker::health`](crate::Broker::health)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The backend's name.
    pub backend: &'static str,
    /// The server that answered, without credentials.
    pub endpoint: String,
    /// How long the round trip took.
    pub latency: Duration,
}

impl Health {
    /// A probe of `backend` at `endpoint` answered in `latency`.
    pub fn new(backend: &'static str, endpoint: impl Into<String>, latency: Duration) -> Self {
        Health {
            backend,
            endpoint: endpoint.into(),
            latency,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {} answered in {:.1?}",
            self.backend, self.endpoint, self.latency
        )
    }
}
