//! The `observability` example, run as a process: its Prometheus endpoint
//! is scraped over loopback and holds the counters of what it did, and
//! the spans it printed make one trace across the broker.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the example when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts the example; returns it, the lines it printed up to the
/// `metrics:` line, and the metrics address. `None` if it exited first
/// (the port was taken in between: the caller tries another).
fn start() -> Option<(Running, Vec<String>, String)> {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_observability"))
        .env("MQ_URL", "memory://")
        .env("MQ_METRICS_ADDR", &addr)
        .env("MQ_SERVE_SECS", "120")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the observability example binary");
    let stdout = child.stdout.take().expect("its stdout");
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("metrics: ") => return Some((running, lines, addr)),
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the example printed no `metrics:` line within 60 s; it printed: {lines:#?}")
            }
        }
    }
}

/// `GET /metrics` over a plain TCP connection.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the metrics endpoint answered: {response}"
    );
    response
}

/// The value of the sample whose line starts with `name{` and holds every
/// one of `labels`.
fn sample(scraped: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scraped
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_example_serves_its_counters_and_one_trace_crosses_the_broker() {
    let (_running, lines, addr) = (0..3)
        .find_map(|_| start())
        .expect("the example exited before serving, three times (see its stderr)");
    let scraped = scrape(&addr);
    let counters = [
        ("messaging_client_sent_messages", vec![], 5.0),
        (
            "messaging_client_consumed_messages",
            vec![r#"messaging_consumer_group_name="billing""#],
            6.0,
        ),
        ("mq_client_settled_messages", vec![r#"outcome="acked""#], 5.0),
        ("mq_client_settled_messages", vec![r#"outcome="requeued""#], 1.0),
        ("mq_client_deliveries_in_flight", vec![], 0.0),
        ("mq_consumer_lag", vec![], 0.0),
        (
            "messaging_process_duration_count",
            vec![r#"outcome="error""#],
            1.0,
        ),
        ("messaging_process_duration_count", vec![r#"outcome="ok""#], 5.0),
    ];
    for (name, labels, want) in counters {
        let mut all = labels.clone();
        all.push(r#"messaging_system="memory""#);
        assert_eq!(
            sample(&scraped, name, &all),
            Some(want),
            "`{name}` {labels:?} in the scrape:\n{scraped}"
        );
    }

    // The spans: every `process` span is in the `checkout` span's trace.
    let trace_of = |line: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("trace="))
            .unwrap_or_default()
            .to_string()
    };
    let checkout = lines
        .iter()
        .find(|l| l.starts_with("span checkout "))
        .unwrap_or_else(|| panic!("no checkout span among {lines:#?}"));
    let processes: Vec<&String> = lines.iter().filter(|l| l.starts_with("span process ")).collect();
    assert_eq!(
        processes.len(),
        6,
        "process spans (5 orders, one tried twice): {lines:#?}"
    );
    for process in processes {
        assert_eq!(trace_of(process), trace_of(checkout), "{process}");
    }
}
