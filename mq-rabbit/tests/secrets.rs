//! A password never shows: not in a Debug, a Display, a URL, an error, nor
//! in any log line at TRACE level (lapin's included), when connecting with
//! a wrong one and working with the right one. Its own test binary, since
//! it installs the process's global `tracing` subscriber.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use mq_core::testkit::logs::CapturedLogs;
use mq_core::{BrokerUrl, Error, Message, MqConfig, ProducerOptions, Registry, Subscription};
use mq_rabbit::RabbitConfig;

const WRONG: &str = "pw-wrong-3d71aa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_never_show_the_password() {
    let logs = CapturedLogs::install();
    let good = BrokerUrl::parse(&common::url()).unwrap();
    let right = good
        .password()
        .map(|p| p.expose().to_string())
        .unwrap_or_default();
    let user = good.username().unwrap_or("guest").to_string();
    // guest:guest: the user name is no secret, so only a distinct password is looked for.
    let right = if right.len() >= 5 && right != user {
        right
    } else {
        String::new()
    };
    let hosts = good.hosts()[0].to_string();
    let vhost = good.path().replace("//", "/%2f");
    let mut registry = Registry::new();
    mq_rabbit::register(&mut registry);

    let wrong_url = format!("amqp://{user}:{WRONG}@{hosts}{vhost}?retries=0");
    let parsed = BrokerUrl::parse(&wrong_url).unwrap();
    let mut shown = vec![
        parsed.to_string(),
        format!("{parsed:?}"),
        format!("{:?}", RabbitConfig::from_url(&parsed).unwrap()),
        format!("{:?}", MqConfig::new(&wrong_url)),
    ];
    let err = registry
        .connect(&wrong_url)
        .await
        .expect_err("a wrong password must fail");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    shown.extend([err.to_string(), format!("{err:?}")]);

    let broker = registry
        .connect(&common::url())
        .await
        .expect("the right password connects");
    let topic = mq_core::testkit::unique("secrets");
    let mut consumer = broker
        .subscribe(Subscription::new(
            &topic,
            mq_core::testkit::group_for(&topic, "g"),
        ))
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    producer.send(&topic, Message::new("x")).await.unwrap();
    let d = mq_core::testkit::expect_delivery(consumer.as_mut(), "the message").await;
    d.ack().await.unwrap();
    consumer.close().await.unwrap();
    shown.push(format!("{broker:?}"));
    broker.close().await.unwrap();

    for text in &shown {
        assert!(!text.contains(WRONG), "the wrong password shows in: {text}");
        assert!(
            right.is_empty() || !text.contains(&right),
            "the password shows in: {text}"
        );
    }
    let lines = logs.lines();
    let leaks: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(WRONG) || (!right.is_empty() && l.contains(&right)))
        .collect();
    eprintln!(
        "rabbitmq: {} log lines captured at TRACE, a password in {} of them",
        lines.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "a password shows in log lines: {leaks:?}");
    assert!(
        lines.iter().any(|l| l.contains("lapin")),
        "lapin's own logs were captured (else this test proves nothing)"
    );
}
