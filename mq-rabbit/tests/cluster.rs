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
    let moved_after = Arc::new(std::sync::Mutex::new(None));
    let traffic = traffic_through_faults(broker.clone(), sub, plan, |_| {
        let (victim, took, moved) = (victim.clone(), stopped_after.clone(), moved_after.clone());
        let (watched, first) = (rabbit.clone(), first.clone());
        async move {
            let began = Instant::now();
            // How long until the client is connected to another node.
            let watcher = tokio::spawn(async move {
                while watched.connected_node() == first && began.elapsed() < Duration::from_secs(120) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                *moved.lock().expect("not poisoned") = Some(began.elapsed());
            });
            tokio::task::spawn_blocking(move || victim.stop())
                .await
                .expect("stop the connected node");
            *took.lock().expect("not poisoned") = Some(began.elapsed());
            let _ = tokio::time::timeout(Duration::from_secs(120), watcher).await;
        }
    })
    .await;
    let stopped_after = *stopped_after.lock().expect("not poisoned");
    let moved_after = *moved_after.lock().expect("not poisoned");
    let now = rabbit.connected_node();
    report(&format!(
        "rabbitmq cluster: connected to {first}, that node stopped (rabbitmqctl stop took {stopped_after:.1?}); \
         the client connected to {now} {moved_after:.1?} after the stop began (connection generation {})",
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
    assert_eq!(broker.config().nodes().len(), 2);
    let health = broker.health().await.expect("the second host answers");
    assert_eq!(health.endpoint, node, "health names the node that answered");
    broker.close().await.expect("close");
}

/// A TCP proxy to `target` that can freeze: once `frozen` is set it
/// forwards nothing more either way but keeps the sockets open, as a node
/// that stopped answering.
async fn freezing_proxy(target: (String, u16)) -> (u16, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to, frozen) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    flag.clone(),
                ),
                (Box::new(sr), Box::new(cw), flag.clone()),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if frozen.load(Ordering::Acquire) {
                            // Hold the sockets open, forward nothing (bounded: 60 s).
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (port, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_when_the_node_stops_answering() {
    let shared = RabbitConfig::from_url(&BrokerUrl::parse(&common::url()).expect("URL")).expect("config");
    let (port, frozen) = freezing_proxy((shared.host.clone(), shared.port)).await;
    let vhost = common::url()
        .rsplit_once('/')
        .map(|(_, v)| v.split('?').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/{vhost}?connect_timeout_ms=1000");
    let broker = connect(&url).await;
    broker
        .health()
        .await
        .expect("the broker answers through the proxy");
    frozen.store(true, std::sync::atomic::Ordering::Release);
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(15), broker.close()).await;
    let took = started.elapsed();
    report(&format!(
        "rabbitmq: close with a node that stopped answering returned after {took:.1?}: {closed:?}"
    ));
    assert!(closed.is_ok(), "close hung for 15 s");
    assert!(
        took < Duration::from_secs(5),
        "close took {took:?} (bound: connect timeout 1 s + 2 s)"
    );
}
