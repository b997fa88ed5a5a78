//! A password given as a librdkafka option never shows: not in a Debug,
//! a Display, a URL, an error, nor in any log line at TRACE level
//! (librdkafka's own debug logs included). Its own test binary, since it
//! installs the process's global `tracing` subscriber.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::time::Duration;

use common::{MOCK_OPTIONS, Mock};
use mq_core::testkit::logs::CapturedLogs;
use mq_core::{Broker, BrokerUrl, Message, MqConfig, ProducerOptions};
use mq_kafka::{KafkaBroker, KafkaConfig};

const PASSWORD: &str = "pw-7f3a9c-never-shown";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_never_show_the_password() {
    let logs = CapturedLogs::global();
    let mock = Mock::start();
    let url = format!(
        "kafka://{}?{MOCK_OPTIONS}&rdkafka.security.protocol=sasl_plaintext&rdkafka.sasl.mechanism=PLAIN\
         &rdkafka.sasl.username=app&rdkafka.sasl.password={PASSWORD}&rdkafka.debug=broker,security,conf\
         &rdkafka.socket.timeout.ms=3000",
        mock.servers()
    );
    let parsed = BrokerUrl::parse(&url).expect("URL");
    let config = KafkaConfig::from_url(&parsed).expect("config");
    let mq_config = MqConfig::new(&url);
    let mut shown = vec![
        parsed.to_string(),
        format!("{parsed:?}"),
        format!("{config:?}"),
        format!("{mq_config:?}"),
        mq_config.to_url().expect("URL").to_string(),
        mq_core::url::redact(&url),
    ];
    match tokio::time::timeout(Duration::from_secs(60), KafkaBroker::connect(config)).await {
        Err(_) => shown.push("connect did not finish in 60 s".into()),
        Ok(Err(e)) => shown.extend([e.to_string(), format!("{e:?}")]),
        Ok(Ok(broker)) => {
            let producer = broker
                .producer(ProducerOptions::default().send_timeout(Duration::from_secs(5)))
                .await;
            match producer {
                Ok(p) => match p.send("mq-secrets", Message::new("x")).await {
                    Ok(r) => shown.push(format!("{r:?}")),
                    Err(e) => shown.extend([e.to_string(), format!("{e:?}")]),
                },
                Err(e) => shown.extend([e.to_string(), format!("{e:?}")]),
            }
            shown.push(format!("{broker:?}"));
            let _ = broker.close().await;
        }
    }
    for text in &shown {
        assert!(!text.contains(PASSWORD), "the password shows in: {text}");
    }
    logs.assert_never_show("kafka", &[PASSWORD], "rdkafka");
}
