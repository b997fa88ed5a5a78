//! In-memory brokers, 1 producer -> 1 consumer, recv + ack: mq-memory,
//! ruststream's memory broker, omniqueue's in-memory backend and a
//! `tokio::sync::mpsc<mq_core::Message>` (the raw floor).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use mq_core::{Broker, Message, Producer, ProducerOptions, Subscription};
use ruststream::{IncomingMessage, OutgoingMessage, Publisher, Subscriber};

use crate::Outcome;

/// The raw floor: a bounded channel of mq's own messages (what mq-memory's
/// consumer hands out), no leases, no acks.
pub async fn mpsc(n: usize, payload: Bytes) -> Outcome {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(1024);
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut seen = 0;
        while let Some(m) = rx.recv().await {
            seen += m.payload.len().min(1);
        }
        seen
    });
    tokio::spawn(async move {
        for _ in 0..n {
            if tx.send(Message::new(payload.clone())).await.is_err() {
                break;
            }
        }
    });
    let seen = consumer.await.map_err(|e| e.to_string())?;
    check(seen, n)?;
    Ok(start.elapsed())
}

/// mq-memory: `send` awaited one by one; `recv` + `ack` with leases (the
/// at-least-once bookkeeping) and a prefetch of 256.
pub async fn mq(n: usize, payload: Bytes) -> Outcome {
    let broker: Arc<dyn Broker> = Arc::new(mq_memory::MemoryBroker::new());
    let mut consumer = broker
        .subscribe(Subscription::new("bench", "g").prefetch(256))
        .await
        .map_err(|e| e.to_string())?;
    let producer: Box<dyn Producer> = broker
        .producer(ProducerOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            match consumer.recv().await {
                Ok(Some(d)) => {
                    d.ack().await.map_err(|e| e.to_string())?;
                    seen += 1;
                }
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok::<_, String>(seen)
    });
    for _ in 0..n {
        producer
            .send("bench", Message::new(payload.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let seen = consumer.await.map_err(|e| e.to_string())??;
    let took = start.elapsed();
    check(seen, n)?;
    broker.close().await.map_err(|e| e.to_string())?;
    Ok(took)
}

/// ruststream's memory broker: `publish` awaited one by one (it takes the
/// payload into its own buffer, as mq's `Message` holds `Bytes`); the
/// subscription's stream, each message acked. Its queue is unbounded and
/// keeps no lease.
pub async fn ruststream(n: usize, payload: Bytes) -> Outcome {
    let broker = ruststream::memory::MemoryBroker::new();
    let mut subscriber = broker.subscribe("bench");
    let publisher = broker.publisher();
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut stream = std::pin::pin!(subscriber.stream());
        let mut seen = 0;
        while seen < n {
            match stream.next().await {
                Some(Ok(m)) => {
                    seen += m.payload().len().min(1);
                    m.ack().await.map_err(|e| e.to_string())?;
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        Ok::<_, String>(seen)
    });
    for _ in 0..n {
        publisher
            .publish(OutgoingMessage::new("bench", &payload[..]), None)
            .await
            .map_err(|e| e.to_string())?;
    }
    let seen = consumer.await.map_err(|e| e.to_string())??;
    let took = start.elapsed();
    check(seen, n)?;
    Ok(took)
}

/// omniqueue's in-memory backend: `send_raw` one by one (it copies the
/// payload into a `Vec`), `receive` + `ack`. Unbounded, no lease.
pub async fn omniqueue(n: usize, payload: Bytes) -> Outcome {
    let (producer, mut consumer) = omniqueue::backends::InMemoryBackend::builder()
        .build_pair()
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            let d = consumer.receive().await.map_err(|e| e.to_string())?;
            seen += d.borrow_payload().map_or(0, |p| p.len().min(1));
            d.ack().await.map_err(|(e, _)| e.to_string())?;
        }
        Ok::<_, String>(seen)
    });
    for _ in 0..n {
        producer.send_raw(&payload).await.map_err(|e| e.to_string())?;
    }
    let seen = consumer.await.map_err(|e| e.to_string())??;
    let took = start.elapsed();
    check(seen, n)?;
    Ok(took)
}

fn check(seen: usize, n: usize) -> Result<(), String> {
    if seen == n {
        Ok(())
    } else {
        Err(format!("consumed {seen} of {n}"))
    }
}
