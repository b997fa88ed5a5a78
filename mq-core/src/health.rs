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

/// How far a group is behind on a topic ([`Broker::lag`](crate::Broker::lag)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lag {
    /// The backend's name.
    pub backend: &'static str,
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// Messages of the topic the group has not settled yet, as the backend
    /// counts them: on Kafka the offsets behind the committed ones (in
    /// flight included), on Redis the entries not yet read plus the pending
    /// ones, on RabbitMQ the queue's ready messages (AMQP does not count
    /// the unacked ones), on memory all not yet acked.
    pub behind: u64,
    /// Of those, the ones delivered and not yet settled, where the backend
    /// tells them apart.
    pub in_flight: Option<u64>,
}

impl Lag {
    /// `behind` messages of `topic` for `group`, `in_flight` of them handed out.
    pub fn new(
        backend: &'static str,
        topic: impl Into<String>,
        group: impl Into<String>,
        behind: u64,
        in_flight: Option<u64>,
    ) -> Self {
        Lag {
            backend,
            topic: topic.into(),
            group: group.into(),
            behind,
            in_flight,
        }
    }
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: group `{}` of `{}` is {} behind",
            self.backend, self.group, self.topic, self.behind
        )?;
        if let Some(n) = self.in_flight {
            write!(f, " ({n} in flight)")?;
        }
        Ok(())
    }
}
