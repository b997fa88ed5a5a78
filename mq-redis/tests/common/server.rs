//! A redis-server of the test's own, on a free loopback port: appended and
//! fsynced before it replies (what it confirmed survives a SIGKILL), killed
//! and restarted from the same directory by the test, stopped by PID on
//! drop. The machine's shared Redis is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    password: Option<String>,
    args: Vec<String>,
}

/// Waits (at most 20 s) until a server listens on loopback `port`.
pub(crate) fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port (free when this returns; the server binds it next).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Server {
    /// Starts a server on a free port in a new directory.
    pub(crate) fn start() -> Server {
        Server::start_with(None)
    }

    /// Starts a server that requires `password`.
    pub(crate) fn with_password(password: &str) -> Server {
        Server::start_with(Some(password.to_string()))
    }

    /// Starts a server with extra command-line settings.
    pub(crate) fn with_args(args: &[&str]) -> Server {
        let mut server = Server::new(None);
        server.args = args.iter().map(|a| (*a).to_string()).collect();
        server.run();
        server
    }

    fn start_with(password: Option<String>) -> Server {
        let mut server = Server::new(password);
        server.run();
        server
    }

    fn new(password: Option<String>) -> Server {
        let dir = std::env::temp_dir().join(format!("mq-redis-test-{}", mq_core::new_id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Server {
            child: None,
            port: free_port(),
            dir,
            password,
            args: Vec::new(),
        }
    }

    fn run(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
        .arg(&self.dir);
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        cmd.args(&self.args);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// SIGKILL, and wait until the process is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same port from the same
    /// directory (its append-only file).
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// A URL for it that gives up fast (for tests of a server going away).
    pub(crate) fn url(&self) -> String {
        format!(
            "redis://127.0.0.1:{}?retries=1&connect_timeout_ms=300&response_timeout_ms=1000",
            self.port
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
