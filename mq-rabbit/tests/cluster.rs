//! mq-rabbit on a RabbitMQ cluster of the test's own: three nodes beside
//! the machine's (each its own node name, ports, mnesia and log dirs and
//! config file), joined with `rabbitmqctl join_cluster`, quorum queues. The
//! conformance kit runs on it; then the node the client is connected to is
//! stopped during 10,000 confirmed sends and consumption. The machine's
//! shared node is never touched.

#![allow(clippy::expect_used)] // test helpers panic on failure by design

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::node::Node;
use mq_core::testkit::faults::{FaultPlan, traffic_through_faults};
use mq_core::testkit::{group_for, report, unique};
use mq_core::{Broker, BrokerUrl, Subscription};
use mq_rabbit::{RabbitBroker, RabbitConfig};

/// Three nodes, the second and third joined to the first.
async fn start_cluster() -> Vec<Arc<Node>> {
    let started = Instant::now();
    let nodes = tokio::task::spawn_blocking(|| {
        let nodes: Vec<Node> = (0..3).map(|_| Node::start()).collect();
        for node in &nodes[1..] {
            node.join(&nodes[0]);
        }
        nodes
    })
    .await
    .expect("start the cluster");
    let running = nodes[0].running_nodes();
    assert_eq!(running, 3, "the cluster's running nodes");
    report(&format!(
        "rabbitmq cluster: 3 nodes (ports {}, {}, {}) started and joined in {:.1?}",
        nodes[0].port,
        nodes[1].port,
        nodes[2].port,
        started.elapsed()
    ));
    nodes.into_iter().map(Arc::new).collect()
}

fn url(nodes: &[Arc<Node>], extra: &str) -> String {
    let hosts: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    format!(
        "amqp://guest:guest@{}/%2f?queue_type=quorum&{extra}",
        hosts.join(",")
    )
}

async fn connect(url: &str) -> RabbitBroker {
    let config = RabbitConfig::from_url(&BrokerUrl::parse(url).expect("URL")).expect("config");
    RabbitBroker::connect(config)
        .await
        .expect("connect to the test's cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_cluster_passes_the_kit_and_survives_losing_the_connected_node() {
    let nodes = start_cluster().await;

    // The kit, with quorum queues.
    let kit_url = url(&nodes, "retries=10");
    let started = Instant::now();
    mq_core::testkit::run_all(|| async { Arc::new(connect(&kit_url).await) as Arc<dyn Broker> }).await;
    report(&format!(
        "rabbitmq cluster (3 nodes, quorum queues): the conformance kit passed in {:.1?}",
        started.elapsed()
    ));

    // The node the client is connected to is stopped mid-traffic.
    let rabbit = connect(&url(&nodes, "retries=40")).await;
    let first = rabbit.connected_node();
    let victim = nodes
        .iter()
        .find(|n| first.contains(&format!(":{}/", n.port)))
        .expect("the connected node is one of the three")
        .clone();
    assert_eq!(victim.port, nodes[0].port, "the first node that answers: {first}");
    let broker: Arc<dyn Broker> = Arc::new(rabbit.clone());
    let topic = unique("cluster");
    let sub = Subscription::new(&topic, group_for(&topic, "g")).prefetch(100);
    let plan = FaultPlan {
        sends: 10_000,
        publishers: 50,
        // Paced so that traffic goes on well after the stop (which takes
        // about 5 s): 200 sends per publisher at 60 ms, the stop at 20 %.
        pace: Duration::from_millis(60),
        faults_at: vec![0.2],
        bound: Duration::from_secs(300),
    };
    let stopped_after = Arc::new(std::sync::Mutex::new(None));
    let traffic = traffic_through_faults(broker.clone(), sub, plan, |_| {
        let (victim, took) = (victim.clone(), stopped_after.clone());
        async move {
            let began = Instant::now();
            tokio::task::spawn_blocking(move || victim.stop())
                .await
                .expect("stop the connected node");
            *took.lock().expect("not poisoned") = Some(began.elapsed());
        }
    })
    .await;
    let stopped_after = *stopped_after.lock().expect("not poisoned");
    let now = rabbit.connected_node();
    report(&format!(
        "rabbitmq cluster: connected to {first}, that node stopped (took {stopped_after:?}), carried on on {now} \
         (connection generation {})",
        rabbit.connection_generation()
    ));
    traffic.assert_nothing_lost("rabbitmq cluster, the connected node stopped");
    assert_ne!(now, first, "the client moved to another node");
    assert!(rabbit.connection_generation() >= 2, "the client reconnected");
    broker.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_connect_to_the_first_that_answers() {
    // A port nobody listens on, then the test's RabbitMQ.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let shared = common::url();
    let (scheme_auth, rest) = shared.split_once('@').expect("a URL with credentials");
    let url = format!("{scheme_auth}@127.0.0.1:{dead},{rest}");
    let broker = connect(&url).await;
    let node = broker.connected_node();
    assert!(!node.contains(&format!(":{dead}/")), "{node}");
    assert_eq!(broker.config().nodes.len(), 2);
    let health = broker.health().await.expect("the second host answers");
    assert_eq!(health.endpoint, node, "health names the node that answered");
    broker.close().await.expect("close");
}
