//! The `orders` example service, run as a process on memory, Redis,
//! RabbitMQ and Kafka (librdkafka's mock cluster), configured by
//! `examples/orders.toml` with the topics overridden from the environment:
//! 8 orders shipped (one after a retry), 2 dead-lettered at once.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mq_core::testkit::unique;

/// Runs the service on `url` (bounded: 120 s) and returns its output.
fn run_orders(url: &str) -> String {
    let topic = unique("orders");
    let mut child = Command::new(env!("CARGO_BIN_EXE_orders"))
        .env("MQ_URL", url)
        .env("MQ_EXIT_WHEN_DONE", "1")
        .env("MQ_ROUTES__ORDERS__TOPIC", &topic)
        .env("MQ_ROUTES__ORDERS__DEAD_LETTER_TOPIC", format!("{topic}.dlq"))
        .env("MQ_ROUTES__SHIPPED__TOPIC", format!("{topic}-shipped"))
        .env("MQ_ROUTES__DEAD__TOPIC", format!("{topic}.dlq"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the orders example binary");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the orders service on {url} did not end within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        status.success(),
        "orders on {url} failed ({status}):\n{out}\n{err}"
    );
    out
}

fn check(out: &str) {
    let summary = out
        .lines()
        .find(|l| l.starts_with("orders: shipped"))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    assert_eq!(summary, "orders: shipped 8, dead-lettered 2, retried 1", "{out}");
    let dead: Vec<&str> = out.lines().filter(|l| l.starts_with("dead letter: ")).collect();
    assert_eq!(dead.len(), 2, "{out}");
    assert!(
        dead.iter().any(|l| l.contains("order 3 is for nothing")),
        "{dead:?}"
    );
    assert!(dead.iter().any(|l| l.contains("cannot decode")), "{dead:?}");
    assert!(
        out.contains("(shipping): handled 8, failed 3, dead-lettered 2"),
        "the orders route's counters (the flaky one failed once, two dead letters): {out}"
    );
    mq_core::testkit::report(&format!("orders example: {summary}"));
}

fn env_url(var: &str, how: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("no broker to test against: set {var} ({how}), or run scripts/test.sh"),
    }
}

#[test]
fn orders_on_memory() {
    check(&run_orders("memory://"));
}

#[test]
fn orders_on_redis() {
    check(&run_orders(&env_url(
        "MQ_TEST_REDIS_URL",
        "e.g. redis://127.0.0.1:6379/15",
    )));
}

#[test]
fn orders_on_rabbitmq() {
    check(&run_orders(&env_url(
        "MQ_TEST_AMQP_URL",
        "e.g. amqp://guest:guest@127.0.0.1:5672/%2f",
    )));
}

#[test]
fn orders_on_kafka_mock_cluster() {
    let (owner, servers) = common::kafka_mock();
    check(&run_orders(&format!(
        "kafka://{servers}?create_topics=false&rdkafka.session.timeout.ms=6000&rdkafka.heartbeat.interval.ms=500"
    )));
    drop(owner);
}
