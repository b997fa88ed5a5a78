//! Consuming from several consumers at once.

use async_trait::async_trait;
use futures::future::select_all;

use crate::{Consumer, Delivery, Result};

/// Fan-in: consumes from several consumers (of one cluster's nodes, or of
/// different brokers) as one. Each delivery keeps its own ack handle, so it
/// is settled on the broker it came from. Consumers that end are dropped from
/// the set; `recv` returns `None` once all have ended. Which consumer is
/// asked first rotates, so a busy one does not starve the others.
///
/// Relies on `recv` being cancel safe, as the [`Consumer`] contract requires.
#[derive(Debug)]
pub struct MergedConsumer {
    consumers: Vec<Box<dyn Consumer>>,
    next: usize,
}

impl MergedConsumer {
    /// Merges `consumers`.
    pub fn new(consumers: Vec<Box<dyn Consumer>>) -> Self {
        MergedConsumer { consumers, next: 0 }
    }

    /// How many consumers are still open.
    pub fn len(&self) -> usize {
        self.consumers.len()
    }

    /// Whether all consumers ended.
    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty()
    }
}

#[async_trait]
impl Consumer for MergedConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        loop {
            let n = self.consumers.len();
            if n == 0 {
                return Ok(None);
            }
            let start = self.next % n;
            let (result, position) = {
                let (before, after) = self.consumers.split_at_mut(start);
                let futures: Vec<_> = after
                    .iter_mut()
                    .chain(before.iter_mut())
                    .map(|c| c.recv())
                    .collect();
                let (result, position, _rest) = select_all(futures).await;
                (result, position)
            };
            let index = (start + position) % n;
            self.next = index + 1;
            match result {
                Ok(Some(delivery)) => return Ok(Some(delivery)),
                Ok(None) => {
                    self.consumers.remove(index);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        let mut result = Ok(());
        for mut consumer in self.consumers.drain(..) {
            if let Err(e) = consumer.close().await {
                result = Err(e);
            }
        }
        result
    }
}
