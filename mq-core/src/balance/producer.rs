//! Sending through several endpoints with balancing and failover.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{BalancePolicy, BreakerState, CircuitBreaker};
use crate::{Error, Message, Producer, Receipt, Result};

#[derive(Debug)]
struct Endpoint {
    producer: Box<dyn Producer>,
    breaker: CircuitBreaker,
    in_flight: AtomicUsize,
}

/// Counts an operation as under way on an endpoint while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A producer over several endpoints (producers of one cluster's nodes, or
/// of different brokers).
///
/// Each send goes to the endpoint the [`BalancePolicy`] picks among the
/// healthy ones. A send that fails there with a retryable error (lost
/// connection, time-out, closed endpoint) is tried on the next endpoint, and
/// so on until one confirms or all were tried: an endpoint going down loses
/// no message whose send returned a receipt. Failures feed each endpoint's
/// [`CircuitBreaker`] (by default 3 in a row open it for 5 s), so a dead
/// endpoint is skipped until a probe finds it back. Errors that no other
/// endpoint would fix (too large, invalid) come back at once.
#[derive(Debug)]
pub struct BalancedProducer {
    endpoints: Vec<Endpoint>,
    policy: Arc<dyn BalancePolicy>,
    gate: crate::backend::SendGate,
}

impl BalancedProducer {
    /// Balances over `producers` (in priority order, for
    /// [`PrimaryBackup`](super::PrimaryBackup)) with `policy`.
    pub fn new(producers: Vec<Box<dyn Producer>>, policy: Arc<dyn BalancePolicy>) -> Self {
        BalancedProducer {
            endpoints: producers
                .into_iter()
                .map(|producer| Endpoint {
                    producer,
                    breaker: CircuitBreaker::new(3, Duration::from_secs(5)),
                    in_flight: AtomicUsize::new(0),
                })
                .collect(),
            policy,
            gate: crate::backend::SendGate::new("balanced producer"),
        }
    }

    /// Sets every endpoint's breaker: open after `threshold` consecutive
    /// failures, for `cooldown`.
    pub fn breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        for e in &mut self.endpoints {
            e.breaker = CircuitBreaker::new(threshold, cooldown);
        }
        self
    }

    /// Each endpoint's breaker state now.
    pub fn health(&self) -> Vec<BreakerState> {
        let now = Instant::now();
        self.endpoints.iter().map(|e| e.breaker.state(now)).collect()
    }

    async fn run<'a, T>(
        &'a self,
        what: &str,
        op: impl Fn(&'a dyn Producer) -> BoxFuture<'a, Result<T>>,
    ) -> Result<T> {
        let _pass = self.gate.enter()?;
        let n = self.endpoints.len();
        let mut tried = vec![false; n];
        let mut last_error = None;
        loop {
            let now = Instant::now();
            let candidates: Vec<usize> = (0..n)
                .filter(|&i| {
                    !tried[i] && !matches!(self.endpoints[i].breaker.state(now), BreakerState::Open { .. })
                })
                .collect();
            let in_flight: Vec<usize> = self
                .endpoints
                .iter()
                .map(|e| e.in_flight.load(Ordering::Relaxed))
                .collect();
            let Some(i) = self.policy.pick(&candidates, &in_flight) else {
                return Err(last_error.unwrap_or_else(|| Error::Connection {
                    backend: "balanced",
                    endpoint: format!("{n} endpoints"),
                    reason: format!("{what}: no healthy endpoint (all circuit breakers are open)"),
                    source: None,
                }));
            };
            tried[i] = true;
            let endpoint = &self.endpoints[i];
            // Past its cooldown, an endpoint takes one probe at a time.
            if !endpoint.breaker.allow(now) {
                continue;
            }
            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(&endpoint.in_flight);
            let result = op(endpoint.producer.as_ref()).await;
            drop(guard);
            match result {
                Ok(value) => {
                    endpoint.breaker.success();
                    return Ok(value);
                }
                Err(e) if e.is_retryable() || matches!(e, Error::Closed { .. }) => {
                    tracing::warn!(endpoint = i, error = %e, "{what} failed; trying another endpoint");
                    endpoint.breaker.failure(Instant::now());
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl Producer for BalancedProducer {
    async fn send(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.run("send", |p| {
            let message = message.clone();
            Box::pin(async move { p.send(topic, message).await })
        })
        .await
    }

    async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        // A batch that failed part-way is sent whole to the next endpoint:
        // some messages may arrive twice (at-least-once), none is lost.
        self.run("send_batch", |p| {
            let messages = messages.clone();
            Box::pin(async move { p.send_batch(topic, messages).await })
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        let mut result = Ok(());
        for e in &self.endpoints {
            if let Err(err) = e.producer.flush().await {
                result = Err(err);
            }
        }
        result
    }

    /// Refuses later sends, waits for those in flight, then closes every
    /// endpoint's producer (all of them, even after an error: the last
    /// error is returned).
    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        let mut result = Ok(());
        for e in &self.endpoints {
            if let Err(err) = e.producer.close().await {
                result = Err(err);
            }
        }
        result
    }
}
