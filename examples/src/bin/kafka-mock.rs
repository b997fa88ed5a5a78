//! librdkafka's mock cluster on loopback: a Kafka to try mq (and the `mq`
//! command line) against without a Kafka server. Prints its bootstrap
//! servers as a `kafka://` URL, then runs until Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run -p mq-examples --bin kafka-mock -- 3      # brokers (default 1)
//! kafka://127.0.0.1:40651,127.0.0.1:42845,127.0.0.1:43731?create_topics=false
//! ```
//!
//! The mock creates topics on first use (it has no CreateTopics, hence
//! `create_topics=false`) and keeps everything in memory.

use std::process::ExitCode;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer as _};

#[tokio::main]
async fn main() -> ExitCode {
    let brokers = std::env::args().nth(1).unwrap_or_else(|| "1".into());
    if !brokers.parse::<u32>().is_ok_and(|n| (1..=9).contains(&n)) {
        eprintln!("kafka-mock: the number of brokers is 1 to 9, not `{brokers}`");
        return ExitCode::from(2);
    }
    let owner: BaseProducer = match ClientConfig::new()
        .set("test.mock.num.brokers", &brokers)
        .create()
    {
        Ok(owner) => owner,
        Err(e) => {
            eprintln!("kafka-mock: cannot start the mock cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(cluster) = owner.client().mock_cluster() else {
        eprintln!("kafka-mock: librdkafka made no mock cluster");
        return ExitCode::FAILURE;
    };
    println!("kafka://{}?create_topics=false", cluster.bootstrap_servers());
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
