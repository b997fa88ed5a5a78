//! A Redis Cluster of the test's own: 3 primaries and 3 replicas, each a
//! redis-server on free loopback ports (client and bus), created with
//! `redis-cli --cluster create`, stopped by PID on drop. The machine's
//! shared Redis is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{free_port, wait_for_port};

struct Node {
    child: Option<Child>,
    port: u16,
    bus: u16,
    dir: PathBuf,
}

impl Node {
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &self.bus.to_string(),
            ])
            .args([
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ])
            // A replica may take over however long since it last heard
            // from its primary (the default refuses after about 20 s
            // with this timeout), and syncs without the 5 s delay.
            .args([
                "--cluster-replica-validity-factor",
                "0",
                "--repl-diskless-sync-delay",
                "0",
            ])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_for_port(self.port);
    }
}

pub(crate) struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// `redis-cli -p port args...`, its output (empty when it fails).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Cluster {
    /// Starts 6 nodes and makes them a cluster (3 primaries, 1 replica
    /// each); returns once every node reports `cluster_state:ok`.
    pub(crate) fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("mq-redis-cluster-{}", mq_core::new_id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for i in 0..6 {
            let (port, bus) = (free_port(), free_port());
            let dir = cluster.dir.join(format!("n{i}"));
            std::fs::create_dir_all(&dir).expect("a node dir");
            let mut node = Node {
                child: None,
                port,
                bus,
                dir,
            };
            node.spawn();
            cluster.nodes.push(node);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            while !cli(node.port, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not become ok on port {}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Every replica attached and in sync, so a failover has one to promote.
        while cluster.primaries().len() != 3 || cluster.synced_replicas() != 3 {
            assert!(Instant::now() < deadline, "the replicas did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// A URL naming every primary's first seed (three nodes) with `extra` options.
    pub(crate) fn url(&self, extra: &str) -> String {
        let hosts: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}?{extra}", hosts.join(","))
    }

    /// A live node's port.
    fn any_live(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.port)
            .expect("a live node")
    }

    /// `(port, slot ranges)` of each primary that is not failed.
    fn primaries(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        cli(self.any_live(), &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port = fields
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let slots = fields
                    .iter()
                    .skip(8)
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some((port, slots))
            })
            .collect()
    }

    fn synced_replicas(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| {
                let info = cli(n.port, &["info", "replication"]);
                info.contains("role:slave") && info.contains("master_link_status:up")
            })
            .count()
    }

    /// The port of the primary owning `key`'s slot.
    pub(crate) fn primary_of(&self, key: &str) -> Option<u16> {
        let slot: u16 = cli(self.any_live(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()?;
        self.primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// Starts the killed node on `port` again from its directory: it knows
    /// the cluster from its `nodes.conf` and rejoins as a replica of the
    /// primary that took its slots over. Returns once it is in sync.
    pub(crate) fn restart(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the cluster");
        if node.child.is_none() {
            node.spawn();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = cli(port, &["info", "replication"]);
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the restarted node {port} did not sync as a replica: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether a primary other than `port` owns `key`'s slot and the
    /// cluster is ok again.
    pub(crate) fn failed_over(&self, key: &str, port: u16) -> bool {
        cli(self.any_live(), &["cluster", "info"]).contains("cluster_state:ok")
            && self.primary_of(key).is_some_and(|p| p != port)
    }

    /// SIGKILL of the node on `port`.
    pub(crate) fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
