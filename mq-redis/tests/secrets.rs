//! A password never shows: not in a Debug, a Display, a URL, an error, nor
//! in any log line at TRACE level, when connecting with a wrong one and
//! working with the right one. Its own test binary, since it installs the
//! process's global `tracing` subscriber.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use mq_core::testkit::logs::CapturedLogs;
use mq_core::{BrokerUrl, Error, Message, MqConfig, ProducerOptions, Registry, Subscription};
use mq_redis::RedisConfig;

const RIGHT: &str = "pw-right-5be2d1";
const WRONG: &str = "pw-wrong-90c4e7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_never_show_the_password() {
    let logs = CapturedLogs::global();
    let server = common::server::Server::with_password(RIGHT);
    let mut registry = Registry::new();
    mq_redis::register(&mut registry);
    let mut shown = Vec::new();
    for password in [WRONG, RIGHT] {
        let url = format!(
            "redis://:{password}@127.0.0.1:{}?retries=0&api_token={password}x",
            server.port
        );
        let url = url.replace("&api_token", "&prefix=mq:&api_token");
        // Options the backend does not know are an error that names the
        // option, never its value.
        let unknown = registry
            .connect(&url)
            .await
            .expect_err("api_token is no redis option");
        shown.extend([unknown.to_string(), format!("{unknown:?}")]);
        let url = url.split("&api_token").next().unwrap().to_string();
        let parsed = BrokerUrl::parse(&url).unwrap();
        shown.extend([
            parsed.to_string(),
            format!("{parsed:?}"),
            format!("{:?}", RedisConfig::from_url(&parsed).unwrap()),
            format!("{:?}", MqConfig::new(&url)),
        ]);
        match registry.connect(&url).await {
            Err(e) => {
                assert_eq!(password, WRONG, "the right password connects: {e}");
                assert!(matches!(e, Error::Auth { .. }), "{e}");
                shown.extend([e.to_string(), format!("{e:?}")]);
            }
            Ok(broker) => {
                assert_eq!(password, RIGHT, "a wrong password must fail");
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
            }
        }
    }
    for text in &shown {
        assert!(
            !text.contains(RIGHT) && !text.contains(WRONG),
            "a password shows in: {text}"
        );
    }
    logs.assert_never_show("redis", &[RIGHT, WRONG], "connected to Redis");
}
