//! The fault suite on Redis: a private `redis-server` (append-only,
//! fsync always) killed with SIGKILL and restarted twice while 100
//! publishers send 10,000 messages and two consumers of one group receive
//! (one under 500 ms `recv` timeouts, one awaiting `recv`). No confirmed
//! message may be lost. The machine's shared Redis is never touched.

#![allow(clippy::expect_used)] // test helpers panic on failure by design

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::server::Server;
use mq_core::testkit::faults::{FaultPlan, traffic_through_faults};
use mq_core::testkit::{group_for, unique};
use mq_core::{Broker, BrokerUrl, Subscription};
use mq_redis::{RedisBroker, RedisConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_sends_survive_two_sigkills_of_the_server() {
    let server = Arc::new(std::sync::Mutex::new(Server::start()));
    let port = server.lock().expect("the server").port;
    // Commands are tried again across the restart.
    let url = format!("redis://127.0.0.1:{port}?retries=40&connect_timeout_ms=500&response_timeout_ms=3000");
    let config = RedisConfig::from_url(&BrokerUrl::parse(&url).expect("URL")).expect("config");
    let broker: Arc<dyn Broker> = Arc::new(
        RedisBroker::connect(config)
            .await
            .expect("connect to the private server"),
    );
    let topic = unique("faults");
    let sub = Subscription::new(&topic, group_for(&topic, "g"))
        .prefetch(100)
        .ack_timeout(Duration::from_secs(2));
    let plan = FaultPlan {
        sends: 10_000,
        publishers: 100,
        pace: Duration::ZERO,
        faults_at: vec![0.3, 0.65],
        bound: Duration::from_secs(240),
    };
    let report = traffic_through_faults(broker.clone(), sub, plan, |i| {
        let server = server.clone();
        async move {
            tokio::task::spawn_blocking(move || server.lock().expect("the server").restart())
                .await
                .expect("restart");
            eprintln!("redis: SIGKILL and restart {} done", i + 1);
        }
    })
    .await;
    report.assert_nothing_lost("redis fault suite");
    broker.close().await.expect("close");
}
