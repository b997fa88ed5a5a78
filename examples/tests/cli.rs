//! The `mq` command line, run as a process against Redis, RabbitMQ and
//! librdkafka's mock cluster (and memory where no server is needed): send
//! then tail (text, binary, JSON from stdin, headers, key), `--no-ack`
//! handing back, dead-letter list and replay (exact, and interrupted by a
//! signal without loss), bench, and every kind of bad input giving one
//! line and exit code 1 or 2.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mq_core::testkit::unique;
use mq_core::{Broker, Consumer, Message, Nack, ProducerOptions, StartPosition, Subscription, headers};

const MQ: &str = env!("CARGO_BIN_EXE_mq");

/// What a finished `mq` printed.
#[derive(Debug)]
struct Run {
    code: i32,
    out: String,
    err: String,
}

/// Runs `mq args` (stdin from `input`), bounded: 120 s.
fn mq_with(args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(MQ);
    command
        .args(args)
        .env_remove("MQ_URL")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("the mq binary");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
    }
    let (out, err) = finish(&mut child, Duration::from_secs(120), &format!("mq {args:?}"));
    let code = child.wait().unwrap().code().unwrap_or(-1);
    Run { code, out, err }
}

fn mq(args: &[&str]) -> Run {
    mq_with(args, None, &[])
}

/// `mq args`, which must succeed.
fn mq_ok(args: &[&str]) -> String {
    let run = mq(args);
    assert_eq!(run.code, 0, "mq {args:?} failed: {run:?}");
    run.out
}

/// Waits for `child` to exit (killing it and failing after `limit`) and
/// returns its stdout and stderr.
fn finish(child: &mut Child, limit: Duration, what: &str) -> (String, String) {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (out.join().unwrap(), err.join().unwrap())
}

/// A running `mq tail`, once it printed that it is subscribed.
struct Tail {
    child: Child,
    err: mpsc::Receiver<String>,
}

impl Tail {
    fn start(args: &[&str]) -> Tail {
        let mut child = Command::new(MQ)
            .arg("tail")
            .args(args)
            .env_remove("MQ_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the mq binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, err) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        match err.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("mq: tailing ") => {}
            Ok(line) => panic!("mq tail {args:?}: {line}"),
            Err(_) => panic!("mq tail {args:?} did not subscribe within 60 s"),
        }
        Tail { child, err }
    }

    /// Its exit code and stdout (it must end within 120 s).
    fn finish(mut self) -> (i32, String) {
        let (out, _) = finish(&mut self.child, Duration::from_secs(120), "mq tail");
        let rest: Vec<String> = self.err.try_iter().collect();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        assert!(
            rest.is_empty() || code != 0,
            "mq tail printed on stderr: {rest:?}"
        );
        (code, out)
    }
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}", unique("cli")));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Text with a key and headers, binary from a file, JSON from stdin: what
/// `mq tail --format json` prints for each; then a delivery tailed with
/// `--no-ack` comes back to the next tail of the group.
fn send_then_tail(url: &str) {
    let topic = unique("cli");
    let tail = Tail::start(&[
        url, &topic, "--group", "t", "--max", "3", "--idle", "60", "--format", "json",
    ]);
    let sent = mq_ok(&[
        "send",
        url,
        &topic,
        "hello world",
        "--key",
        "k1",
        "-H",
        "a=1",
        "-H",
        "b=two words",
    ]);
    assert!(
        sent.starts_with("sent id=") && sent.contains(&format!("topic={topic}")),
        "{sent}"
    );
    let binary: Vec<u8> = vec![0, 0x9f, 0x92, 0x96, 0xff, b'\n', 1];
    let file = temp_file("bin", &binary);
    mq_ok(&[
        "send",
        url,
        &topic,
        "--file",
        file.to_str().unwrap(),
        "--key",
        "k2",
    ]);
    let _ = std::fs::remove_file(file);
    let json = mq_with(&["send", url, &topic, "-", "--json"], Some(br#"{"n": 1}"#), &[]);
    assert_eq!(json.code, 0, "{json:?}");
    let not_json = mq_with(&["send", url, &topic, "-", "--json"], Some(b"{nope"), &[]);
    assert_eq!(not_json.code, 2, "{not_json:?}");

    let (code, out) = tail.finish();
    assert_eq!(code, 0, "{out}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{out}");
    let by_key: HashMap<String, &serde_json::Value> = lines
        .iter()
        .map(|v| (v["key"].as_str().unwrap_or("-").to_owned(), v))
        .collect();
    let text = by_key["k1"];
    assert_eq!(text["payload"], "hello world");
    assert_eq!(text["headers"]["a"], "1");
    assert_eq!(text["headers"]["b"], "two words");
    assert_eq!(text["attempt"], 1);
    assert_eq!(text["topic"], topic.as_str());
    let bin = by_key["k2"];
    assert!(bin.get("payload").is_none(), "{bin}");
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bin["payload_base64"].as_str().unwrap())
            .unwrap(),
        binary
    );
    let j = by_key["-"];
    assert_eq!(j["payload"], r#"{"n": 1}"#);
    assert_eq!(j["headers"][headers::CONTENT_TYPE], "application/json");

    // --no-ack hands back: the next tail of the group gets it again.
    let again = Tail::start(&[
        url, &topic, "--group", "t", "--max", "1", "--idle", "60", "--no-ack",
    ]);
    let sent = mq_ok(&["send", url, &topic, "once more", "--key", "k3"]);
    let id = sent
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .unwrap()
        .to_owned();
    let (code, held) = again.finish();
    assert_eq!(code, 0);
    assert!(held.starts_with(&format!("id={id} key=k3 attempt=1 ")), "{held}");
    assert!(held.trim_end().ends_with(" once more"), "{held}");
    let out = mq_ok(&["tail", url, &topic, "--group", "t", "--max", "1", "--idle", "60"]);
    assert!(out.starts_with(&format!("id={id} key=k3 ")), "handed back: {out}");
    mq_core::testkit::report(&format!(
        "mq send/tail on {}: 3 kinds round trip, --no-ack handed back",
        scheme(url)
    ));
}

fn scheme(url: &str) -> &str {
    url.split("://").next().unwrap_or(url)
}

/// Sends `n` messages to a new topic; a consumer of group `svc`
/// dead-letters those whose index is in `dead` (reason `timeout` for odd
/// ones, `bad` for even ones) and acks the rest. Returns the topic, the
/// consumer (left open) and the dead-lettered ids by reason.
async fn dead_letter(
    broker: &dyn Broker,
    n: usize,
    dead: impl Fn(usize) -> bool,
) -> (String, Box<dyn Consumer>, HashSet<String>, HashSet<String>) {
    let topic = unique("clidlq");
    let mut svc = broker
        .subscribe(
            Subscription::new(&topic, "svc")
                .start(StartPosition::Earliest)
                .prefetch(500),
        )
        .await
        .unwrap();
    let producer = broker.producer(ProducerOptions::default()).await.unwrap();
    let batch: Vec<Message> = (0..n)
        .map(|i| Message::new(i.to_string()).with_header("app", "x"))
        .collect();
    for chunk in batch.chunks(500) {
        producer.send_batch(&topic, chunk.to_vec()).await.unwrap();
    }
    let (mut timeout, mut bad) = (HashSet::new(), HashSet::new());
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} received", seen.len());
        let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(30), svc.recv()).await else {
            panic!("only {} of {n} received", seen.len());
        };
        let i: usize = std::str::from_utf8(&d.message().payload)
            .unwrap()
            .parse()
            .unwrap();
        if !seen.insert(i) {
            d.ack().await.unwrap();
            continue;
        }
        if dead(i) {
            let (set, reason) = if i % 2 == 1 {
                (&mut timeout, "timeout")
            } else {
                (&mut bad, "bad")
            };
            set.insert(d.message().id.clone());
            d.nack(Nack::dead_letter(format!("{reason} {i}"))).await.unwrap();
        } else {
            d.ack().await.unwrap();
        }
    }
    producer.close().await.unwrap();
    (topic, svc, timeout, bad)
}

/// What `svc` receives until `want` distinct ids came or `wait` passes
/// with nothing: id -> times, acked.
async fn drain(svc: &mut Box<dyn Consumer>, want: usize, wait: Duration) -> HashMap<String, usize> {
    let mut got: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let limit = if got.len() >= want {
            Duration::from_millis(300)
        } else {
            wait
        };
        let d = match tokio::time::timeout(limit, svc.recv()).await {
            Err(_) => break,
            Ok(Ok(Some(d))) => d,
            Ok(other) => panic!("the service's consumer: {other:?}"),
        };
        assert_eq!(d.message().header("app"), Some("x"), "application headers kept");
        assert!(
            d.message().header(headers::DEAD_LETTER_REASON).is_none(),
            "dead-letter headers gone"
        );
        *got.entry(d.message().id.clone()).or_default() += 1;
        d.ack().await.unwrap();
    }
    got
}

/// `mq dlq list` and `mq dlq replay` move exactly the dead letters asked for.
async fn dlq_exact(url: &str, idle: &str) {
    let broker = mq_examples::registry().connect(url).await.unwrap();
    let (topic, mut svc, timeout, bad) = dead_letter(broker.as_ref(), 6, |i| (1..=4).contains(&i)).await;
    let dlq = format!("{topic}.dlq");
    let listed = json_lines(&mq_ok(&[
        "dlq", "list", url, &dlq, "--idle", idle, "--format", "json",
    ]));
    let ids: HashSet<String> = listed
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, timeout.union(&bad).cloned().collect::<HashSet<_>>());
    assert!(
        listed
            .iter()
            .all(|v| v["headers"][headers::ORIGINAL_TOPIC] == topic.as_str())
    );

    let first = mq_ok(&[
        "dlq",
        "replay",
        url,
        &dlq,
        "--filter",
        "reason=timeout",
        "--idle",
        idle,
    ]);
    assert_eq!(
        first.trim(),
        format!(
            "read 4, replayed 2, left: 2 not matching the filter, 0 without an original topic; {topic}: 2"
        )
    );
    let got = drain(&mut svc, 2, Duration::from_secs(10)).await;
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), timeout, "{got:?}");
    assert!(got.values().all(|&n| n == 1), "{got:?}");

    let dry = mq_ok(&["dlq", "replay", url, &dlq, "--dry-run", "--idle", idle]);
    assert!(dry.starts_with("read 2, would replay 2,"), "{dry}");
    let second = mq_ok(&["dlq", "replay", url, &dlq, "--idle", idle]);
    assert!(second.starts_with("read 2, replayed 2,"), "{second}");
    let got = drain(&mut svc, 2, Duration::from_secs(10)).await;
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), bad, "{got:?}");
    let empty = mq_ok(&["dlq", "list", url, &dlq, "--idle", idle]);
    assert_eq!(
        empty.trim(),
        format!("0 dead letter(s) in {dlq} for group mq-dlq-replay")
    );
    svc.close().await.unwrap();
    broker.close().await.unwrap();
    mq_core::testkit::report(&format!(
        "mq dlq on {}: list 4, replay --filter reason=timeout 2, replay 2, list 0",
        scheme(url)
    ));
}

/// Copies an interrupted replay sends back before it is stopped.
const KILL_AFTER: usize = 100;

/// `mq dlq replay` stopped by `signal` once copies arrive: nothing lost;
/// a second replay finishes.
async fn dlq_interrupted(url: &str, n: usize, signal: &str, idle: &str, again: &[&str]) {
    let broker = mq_examples::registry().connect(url).await.unwrap();
    let (topic, mut svc, timeout, bad) = dead_letter(broker.as_ref(), n, |_| true).await;
    let all: HashSet<String> = timeout.union(&bad).cloned().collect();
    let dlq = format!("{topic}.dlq");
    let mut child = Command::new(MQ)
        .args(["dlq", "replay", url, &dlq, "--idle", idle])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first copies back: the replay is under way.
    let mut got: HashMap<String, usize> = HashMap::new();
    while got.len() < KILL_AFTER {
        let d = tokio::time::timeout(Duration::from_secs(60), svc.recv())
            .await
            .expect("replayed copies within 60 s")
            .unwrap()
            .unwrap();
        *got.entry(d.message().id.clone()).or_default() += 1;
        d.ack().await.unwrap();
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (out, err) = finish(&mut child, Duration::from_secs(60), "the interrupted replay");
    let code = child.wait().unwrap();
    if signal == "-INT" {
        assert_eq!(code.code(), Some(1), "{out}{err}");
        assert_eq!(
            err.trim(),
            "mq: interrupted; what was not replayed stays in the dead-letter topic"
        );
    }
    for (id, k) in drain(&mut svc, n, Duration::from_secs(3)).await {
        *got.entry(id).or_default() += k;
    }
    let before = got.len();
    assert!(
        before < n,
        "the replay ended ({before} of {n} back) before it was interrupted"
    );

    let rest = mq_ok(&[&["dlq", "replay", url, &dlq, "--idle", idle][..], again].concat());
    for (id, k) in drain(&mut svc, n - before, Duration::from_secs(10)).await {
        *got.entry(id).or_default() += k;
    }
    let missing = all.iter().filter(|id| !got.contains_key(*id)).count();
    let twice: usize = got.values().map(|&k| k - 1).sum();
    assert_eq!(missing, 0, "lost after the interruption; second replay: {rest}");
    assert!(got.keys().all(|id| all.contains(id)));
    let empty = mq_ok(&["dlq", "list", url, &dlq, "--idle", idle]);
    assert!(empty.starts_with("0 dead letter(s)"), "{empty}");
    svc.close().await.unwrap();
    broker.close().await.unwrap();
    mq_core::testkit::report(&format!(
        "mq dlq replay on {} stopped by kill {signal} after {before} of {n} came back: lost 0, twice {twice}; then `{}`",
        scheme(url),
        rest.trim()
    ));
}

/// `mq bench` for a small count: every message counted once, figures printed.
fn bench(url: &str) {
    let topic = unique("clibench");
    let out = mq_ok(&[
        "bench",
        url,
        "--messages",
        "300",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--topic",
        &topic,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["sent"], 300, "{v}");
    assert_eq!(v["received"], 300, "{v}");
    assert_eq!(v["missing"], 0, "{v}");
    assert_eq!(v["send_errors"], 0, "{v}");
    for h in ["confirm_ms", "end_to_end_ms"] {
        let p50 = v[h]["p50"].as_f64().unwrap();
        let max = v[h]["max"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= max, "{h}: {v}");
    }
    assert!(v["receive_rate"].as_f64().unwrap() > 0.0);
    // Again on the same topic and group: the first run's messages, if
    // the group reads them again, are not counted as this run's.
    let text = mq_ok(&["bench", url, "--messages", "300", "--topic", &topic]);
    assert!(text.contains("(0 duplicates, 0 missing"), "{text}");
    // One line, for the run's figures.
    let ms = |h: &str, p: &str| v[h][p].as_f64().unwrap_or(f64::NAN);
    mq_core::testkit::report(&format!(
        "mq bench on {} (300 messages, 2 producers, 2 consumers): sent {:.0} msg/s, received {:.0} msg/s, confirm p50 {:.3} ms p99 {:.3} ms, end-to-end p50 {:.3} ms p99 {:.3} ms",
        scheme(url),
        v["send_rate"].as_f64().unwrap_or(f64::NAN),
        v["receive_rate"].as_f64().unwrap_or(f64::NAN),
        ms("confirm_ms", "p50"),
        ms("confirm_ms", "p99"),
        ms("end_to_end_ms", "p50"),
        ms("end_to_end_ms", "p99"),
    ));
}

fn env_url(var: &str, how: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("no broker to test against: set {var} ({how}), or run scripts/test.sh"),
    }
}

/// The mock cluster creates topics itself (it has no CreateTopics); short
/// sessions make a group's joins quick.
fn kafka_url(servers: &str) -> String {
    format!(
        "kafka://{servers}?create_topics=false&rdkafka.session.timeout.ms=6000&rdkafka.heartbeat.interval.ms=500"
    )
}

fn redis_url() -> String {
    env_url("MQ_TEST_REDIS_URL", "e.g. redis://127.0.0.1:6379/15")
}

fn amqp_url() -> String {
    env_url("MQ_TEST_AMQP_URL", "e.g. amqp://guest:guest@127.0.0.1:5672/%2f")
}

#[test]
fn redis_send_then_tail() {
    send_then_tail(&redis_url());
}

#[test]
fn rabbitmq_send_then_tail() {
    send_then_tail(&amqp_url());
}

#[test]
fn kafka_send_then_tail() {
    let (_cluster, servers) = common::kafka_mock();
    send_then_tail(&kafka_url(&servers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dlq() {
    let url = redis_url();
    dlq_exact(&url, "3").await;
    // What the killed replay held comes back once the ack timeout passed.
    dlq_interrupted(&url, 3000, "-KILL", "3", &["--ack-timeout", "2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_dlq() {
    let url = amqp_url();
    dlq_exact(&url, "3").await;
    dlq_interrupted(&url, 2000, "-INT", "3", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dlq() {
    let (_cluster, servers) = common::kafka_mock();
    let url = kafka_url(&servers);
    dlq_exact(&url, "5").await;
    dlq_interrupted(&url, 1000, "-KILL", "5", &[]).await;
}

#[test]
fn bench_on_every_backend() {
    bench("memory://");
    bench(&redis_url());
    bench(&amqp_url());
    let (_cluster, servers) = common::kafka_mock();
    bench(&kafka_url(&servers));
    // The text form on memory.
    let out = mq_ok(&["bench", "memory://", "--messages", "100"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("mq bench: memory, topic mq-bench-"), "{out}");
    assert!(
        lines[1].starts_with("sent ") && lines[1].contains(" 100 in "),
        "{out}"
    );
    assert!(lines[2].contains("(0 duplicates, 0 missing)"), "{out}");
    fails(&["bench", "memory://", "--size", "23"], 2, None);
    assert!(
        lines[3].starts_with("confirm    p50 ") && lines[4].starts_with("end-to-end p50 "),
        "{out}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One line on stderr, `mq: ...`, no panic, no `secret`; the exit code.
fn fails(args: &[&str], code: i32, secret: Option<&str>) -> String {
    let run = mq(args);
    assert_eq!(run.code, code, "mq {args:?}: {run:?}");
    assert!(run.out.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {run:?}");
    assert!(lines[0].starts_with("mq: "), "{run:?}");
    assert!(!run.err.contains("panicked"), "{run:?}");
    if let Some(secret) = secret {
        assert!(!run.err.contains(secret), "the password shown: {run:?}");
    }
    lines[0].to_owned()
}

#[test]
fn bad_input_gives_one_line_and_a_script_friendly_code() {
    // Usage: exit 2.
    let line = fails(&["send", "--bogus", "redis://127.0.0.1:6379", "t", "x"], 2, None);
    assert!(line.contains("--bogus"), "{line}");
    fails(&["frobnicate"], 2, None);
    let line = fails(&["ping", "redis://127.0.0.1:notaport"], 2, None);
    assert!(line.contains("invalid broker URL"), "{line}");
    let line = fails(&["ping", "nats://127.0.0.1:4222"], 2, None);
    assert!(line.contains("nats") && line.contains("redis"), "{line}");
    let line = fails(&["ping", "redis://127.0.0.1:6379?bogus=1"], 2, None);
    assert!(line.contains("unknown option `bogus`"), "{line}");
    let line = fails(&["ping"], 2, None);
    assert!(line.contains("MQ_URL"), "{line}");
    let line = fails(&["send", "redis://127.0.0.1:6379"], 2, None);
    assert!(line.contains("<TOPIC>"), "{line}");
    fails(&["send", "redis://127.0.0.1:6379", "t", "x", "extra"], 2, None);
    fails(
        &["tail", "redis://127.0.0.1:6379", "t", "--from", "middle"],
        2,
        None,
    );
    fails(&["bench", "memory://", "--size", "8"], 2, None);
    fails(
        &["dlq", "replay", "memory://", "t.dlq", "--filter", "noequals"],
        2,
        None,
    );
    fails(
        &["send", "redis://127.0.0.1:6379", "t", "x", "-H", "novalue"],
        2,
        None,
    );
    fails(&["--config", "/nonexistent/mq.toml", "ping"], 2, None);

    // Failures: exit 1, quickly.
    let port = free_port().to_string();
    for url in [
        format!("redis://:s3cret-pw@127.0.0.1:{port}"),
        format!("amqp://guest:s3cret-pw@127.0.0.1:{port}/%2f"),
        format!("kafka://127.0.0.1:{port}"),
    ] {
        let started = Instant::now();
        let line = fails(&["ping", &url, "--connect-timeout", "3"], 1, Some("s3cret-pw"));
        assert!(started.elapsed() < Duration::from_secs(30), "{line}");
        let line2 = fails(
            &["send", &url, "t", "x", "--connect-timeout", "3"],
            1,
            Some("s3cret-pw"),
        );
        assert!(!line2.is_empty());
        let _ = line;
    }
    // Help: examples for every command.
    for cmd in [
        &["--help"][..],
        &["send", "--help"],
        &["tail", "--help"],
        &["bench", "--help"],
        &["lag", "--help"],
        &["ping", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "replay", "--help"],
    ] {
        let run = mq(cmd);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.out.contains("Examples:\n  mq "), "mq {cmd:?}: {}", run.out);
    }
}

#[test]
fn wrong_passwords_are_refused_without_showing_them() {
    let redis = redis_url();
    let rest = redis.split_once("://").unwrap().1;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let line = fails(
        &["ping", &format!("redis://nobody:s3cret-pw@{host}")],
        1,
        Some("s3cret-pw"),
    );
    assert!(line.contains("authentication failed"), "{line}");

    let amqp = amqp_url();
    let rest = amqp.split_once("://").unwrap().1;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let line = fails(
        &["ping", &format!("amqp://guest:s3cret-pw@{host}")],
        1,
        Some("s3cret-pw"),
    );
    assert!(line.contains("authentication failed"), "{line}");
    let line = fails(
        &["tail", &format!("amqp://guest:s3cret-pw@{host}"), "t"],
        1,
        Some("s3cret-pw"),
    );
    assert!(line.contains("authentication failed"), "{line}");
}

#[test]
fn ping_lag_config_and_mq_url() {
    let redis = redis_url();
    let out = mq_ok(&["ping", &redis]);
    assert!(
        out.starts_with("redis at redis://") && out.contains(" answered in "),
        "{out}"
    );
    let amqp = amqp_url();
    let out = mq_ok(&["ping", &amqp, "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["backend"], "rabbitmq");
    assert!(!out.contains("guest:guest"), "{out}");

    // Lag: 5 sent to a group that read none, then the tail acks 5.
    let topic = unique("clilag");
    let line = fails(&["lag", &redis, &topic, "--group", "g"], 1, None);
    assert!(line.contains(&topic), "no group yet: {line}");
    // The group made by a tail that sees nothing for 1 s.
    let (code, out) = Tail::start(&[&redis, &topic, "--group", "g", "--idle", "1"]).finish();
    assert_eq!((code, out.as_str()), (0, ""));
    mq_ok(&["send", &redis, &topic, "x", "--count", "5"]);
    let out = mq_ok(&["lag", &redis, &topic, "--group", "g", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["behind"], 5, "{out}");
    let read = mq_ok(&[
        "tail", &redis, &topic, "--group", "g", "--max", "5", "--idle", "30",
    ]);
    assert_eq!(read.lines().count(), 5, "{read}");
    let out = mq_ok(&["lag", &redis, &topic, "--group", "g"]);
    assert_eq!(
        out.trim(),
        format!("redis: group `g` of `{topic}` is 0 behind (0 in flight)")
    );

    // The URL from MQ_URL, then from --config (a runtime configuration file).
    let run = mq_with(&["lag", &topic, "--group", "g"], None, &[("MQ_URL", &redis)]);
    assert_eq!(run.code, 0, "{run:?}");
    let file = temp_file("mq.toml", format!("[broker]\nurl = \"{redis}\"\n").as_bytes());
    let out = mq_ok(&["--config", file.to_str().unwrap(), "lag", &topic, "--group", "g"]);
    assert!(out.contains("0 behind"), "{out}");
    let _ = std::fs::remove_file(file);
}
