//! A consumer process killed with SIGKILL while it holds 50 unacked
//! deliveries: another consumer of the group gets all 50, on every
//! backend with a server (the killed one is the `hold` example binary).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mq_core::testkit::{expect_delivery, group_for, unique};
use mq_core::{Message, ProducerOptions, Subscription};

const HELD: usize = 50;
/// How long the survivor's group leaves an idle delivery with a dead
/// consumer (where the backend redelivers on a timer).
const ACK_TIMEOUT_MS: u64 = 1000;

/// The `hold` process and the lines it prints.
struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    fn start(url: &str, topic: &str, group: &str) -> Holder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hold"))
            .args([url, topic, group, &HELD.to_string(), &ACK_TIMEOUT_MS.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the hold example binary");
        let stdout = child.stdout.take().expect("its stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Holder { child, lines }
    }

    /// Waits (at most 60 s) for the line `want`.
    fn expect(&mut self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!("hold did not print `{want}` within 60 s (exited: {status:?})");
                }
            }
        }
    }

    fn kill(&mut self) {
        // Child::kill is SIGKILL on Unix: no close, no goodbye to the broker.
        self.child.kill().expect("SIGKILL the holder");
        self.child.wait().expect("reap the holder");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn killed_holder_hands_its_deliveries_to_the_group(url: &str) {
    let broker = mq_examples::registry().connect(url).await.expect("connect");
    let topic = unique("killed");
    let group = group_for(&topic, "g");
    let mut holder = Holder::start(url, &topic, &group);
    holder.expect("subscribed");
    let producer = broker
        .producer(ProducerOptions::default())
        .await
        .expect("producer");
    let mut sent = HashSet::new();
    for i in 0..HELD {
        sent.insert(
            producer
                .send(&topic, Message::new(format!("{i}")))
                .await
                .expect("send")
                .id,
        );
    }
    holder.expect(&format!("holding {HELD}"));
    holder.kill();
    let killed_at = Instant::now();
    let sub = Subscription::new(&topic, &group)
        .prefetch(HELD)
        .ack_timeout(Duration::from_millis(ACK_TIMEOUT_MS));
    let mut survivor = broker.subscribe(sub).await.expect("subscribe");
    let mut got = HashSet::new();
    while got.len() < HELD {
        let d = expect_delivery(survivor.as_mut(), "a delivery the killed consumer held").await;
        assert!(sent.contains(&d.message().id), "an unknown message");
        got.insert(d.message().id.clone());
        d.ack().await.expect("ack");
    }
    mq_core::testkit::report(&format!(
        "{}: the {HELD} deliveries a SIGKILLed consumer held reached the group's other consumer {:.2?} after the kill",
        broker.name(),
        killed_at.elapsed()
    ));
    assert_eq!(got, sent);
    survivor.close().await.expect("close");
}

fn env_url(var: &str, how: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("no broker to test against: set {var} ({how}), or run scripts/test.sh"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_consumer_holding_50() {
    let url = env_url("MQ_TEST_REDIS_URL", "e.g. redis://127.0.0.1:6379/15");
    killed_holder_hands_its_deliveries_to_the_group(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_killed_consumer_holding_50() {
    let url = env_url("MQ_TEST_AMQP_URL", "e.g. amqp://guest:guest@127.0.0.1:5672/%2f");
    killed_holder_hands_its_deliveries_to_the_group(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_killed_consumer_holding_50() {
    let (owner, servers) = common::kafka_mock();
    // A short session: the dead member's partitions move after it expires.
    let url = format!(
        "kafka://{servers}?create_topics=false&rdkafka.session.timeout.ms=4000&rdkafka.heartbeat.interval.ms=500"
    );
    killed_holder_hands_its_deliveries_to_the_group(&url).await;
    drop(owner);
}
