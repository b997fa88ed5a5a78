#![allow(missing_docs, clippy::unwrap_used)]
//! Per-operation cost of each side, single-threaded: `cargo bench -p mq-memory --bench per_op`.
use mq_core::{Broker, Message, ProducerOptions, Subscription};
fn main() {
    let only_send = std::env::var("MQ_BENCH_PROFILE").is_ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = 500_000usize;
        let payload = bytes::Bytes::from(vec![1u8; 100]);
        let broker = mq_memory::MemoryBroker::with_config(mq_memory::MemoryConfig::default().capacity(n + 1));
        let mut c = broker
            .subscribe(Subscription::new("t", "g").prefetch(256))
            .await
            .unwrap();
        let p = broker.producer(ProducerOptions::default()).await.unwrap();
        if only_send {
            for _ in 0..10 {
                for _ in 0..n / 10 {
                    p.send("t", Message::new(payload.clone())).await.unwrap();
                }
                for _ in 0..n / 10 {
                    c.recv().await.unwrap().unwrap().ack().await.unwrap();
                }
            }
            return;
        }
        let t = std::time::Instant::now();
        for _ in 0..n {
            let _ = Message::new(payload.clone());
        }
        println!(
            "Message::new      {:>5.0} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        let t = std::time::Instant::now();
        for _ in 0..n {
            p.send("t", Message::new(payload.clone())).await.unwrap();
        }
        println!(
            "new + send        {:>5.0} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        let t = std::time::Instant::now();
        for _ in 0..n {
            let d = c.recv().await.unwrap().unwrap();
            d.ack().await.unwrap();
        }
        println!(
            "recv + ack        {:>5.0} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let t = std::time::Instant::now();
        for _ in 0..n {
            tx.send(payload.clone()).await.unwrap();
            rx.recv().await.unwrap();
        }
        println!(
            "mpsc send + recv  {:>5.0} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    });
}
