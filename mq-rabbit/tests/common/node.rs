//! A RabbitMQ node of the test's own, beside the machine's: its own node
//! name, AMQP and distribution ports (free loopback ports), mnesia and log
//! directories, and its own `RABBITMQ_CONFIG_FILE` (the machine's config
//! pins port 5672). Killed (SIGKILL, by PID) and started again by the test,
//! and stopped by PID when dropped. The machine's shared node is never
//! touched.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Node {
    name: String,
    pub(crate) port: u16,
    dist_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Node {
    /// Starts a new node (about 10 s on two cores).
    pub(crate) fn start() -> Node {
        let id = &mq_core::new_id()[24..];
        let dir = std::env::temp_dir().join(format!("mq-rabbit-node-{id}"));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("the node's directories");
        }
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("the node's config");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("the node's plugins file");
        // The server runs as the rabbitmq user where it exists.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let node = Node {
            name: format!("mqtest{id}@localhost"),
            port,
            dist_port,
            dir,
        };
        node.run();
        node
    }

    fn rabbitmqctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl on PATH (scripts/test.sh installs rabbitmq-server)")
    }

    fn run(&self) {
        let dir = &self.dir;
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server on PATH (scripts/test.sh installs it)");
        assert!(
            status.success(),
            "rabbitmq-server -detached for {} failed",
            self.name
        );
        // The listener opens once the broker has booted (5-10 s here);
        // await_startup then confirms the node is fully up.
        wait_until("the node's AMQP port is open", Duration::from_secs(120), || {
            port_open(self.port)
        });
        let out = self.rabbitmqctl(&["--timeout", "120", "await_startup"]);
        assert!(
            out.status.success(),
            "node {} did not start: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The PID from the node's pid file, if that process is still this
    /// node's Erlang VM (a stale file's PID may belong to another process
    /// by now, which must not be killed).
    fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // The node's VM inherits the environment it was started with.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        String::from_utf8_lossy(&environ)
            .contains(&format!("RABBITMQ_NODENAME={}", self.name))
            .then_some(pid)
    }

    /// Stops the node (by its PID file) and waits until its ports are free.
    pub(crate) fn stop(&self) {
        let pid_file = self.dir.join("pid");
        let out = self.rabbitmqctl(&["stop", &pid_file.to_string_lossy()]);
        if !out.status.success()
            && let Some(pid) = self.pid()
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        wait_until("the node's ports are free", Duration::from_secs(60), || {
            !port_open(self.port) && !port_open(self.dist_port)
        });
    }

    /// Kills the node with SIGKILL (by its PID) and waits until its ports
    /// are free: no graceful shutdown, as a crash or an OOM kill.
    pub(crate) fn kill(&self) {
        let pid = self
            .pid()
            .expect("the node is running (its pid file names its VM)");
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid} failed");
        wait_until(
            "the killed node's ports are free",
            Duration::from_secs(60),
            || !port_open(self.port) && !port_open(self.dist_port),
        );
    }

    /// Kills the node (SIGKILL) and starts it again from the same
    /// directories.
    pub(crate) fn restart(&self) {
        self.kill();
        self.run();
    }

    /// Makes this node a member of `seed`'s cluster (stop_app, reset,
    /// join_cluster, start_app).
    pub(crate) fn join(&self, seed: &Node) {
        for args in [
            vec!["stop_app"],
            vec!["reset"],
            vec!["join_cluster", seed.name.as_str()],
            vec!["start_app"],
        ] {
            let out = self.rabbitmqctl(&args);
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?} on {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = self.rabbitmqctl(&["--timeout", "120", "await_startup"]);
        assert!(
            out.status.success(),
            "node {} did not start after joining",
            self.name
        );
    }

    /// The cluster's running nodes, as this node sees them.
    pub(crate) fn running_nodes(&self) -> usize {
        let out = self.rabbitmqctl(&["cluster_status", "--formatter", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("\"running_nodes\":[")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .map_or(0, |list| list.matches('@').count())
    }

    /// Its URL, trying again long enough to ride through a restart.
    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?retries=40", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if port_open(self.port) || self.pid().is_some() {
            let pid_file = self.dir.join("pid");
            let out = self.rabbitmqctl(&["stop", &pid_file.to_string_lossy()]);
            if !out.status.success()
                && let Some(pid) = self.pid()
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        // MQ_TEST_KEEP_NODE_DIRS=1 keeps the node's logs for a post-mortem.
        if std::env::var_os("MQ_TEST_KEEP_NODE_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
