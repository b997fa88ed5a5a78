//! `mq send`.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Instant;

use mq_core::{Message, ProducerOptions, headers};

use crate::{Context, Failure, close, pair, usage};

pub(crate) const EXAMPLES: &str = "\
PAYLOAD is the message's text; `-` reads it from stdin; --file reads a
file (any bytes). Each receipt is printed as `sent id=... topic=...
position=...`; with --count, one summary line.

Examples:
  mq send redis://127.0.0.1:6379 orders 'tea for two'
  mq send redis://127.0.0.1:6379 orders '{\"id\":1}' --json --key customer-1 -H source=cli
  echo hello | mq send amqp://guest:guest@127.0.0.1:5672/%2f orders -
  mq send kafka://127.0.0.1:9092 images --file cat.png --key cat
  mq send redis://127.0.0.1:6379 load-test 'x' --count 10000";

/// `mq send`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// The broker URL (or from --config or MQ_URL), the topic, the payload (`-`: stdin)
    #[arg(value_name = "ARGS", num_args = 1..=3, required = true)]
    args: Vec<String>,
    /// The message key (partition and ordering key).
    #[arg(long, short)]
    key: Option<String>,
    /// A header, NAME=VALUE; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// The payload must be JSON; sets `content-type: application/json`
    /// unless a header sets it.
    #[arg(long)]
    json: bool,
    /// Sends this many copies (each with its own id) and prints a summary.
    #[arg(long, short = 'n', default_value_t = 1, value_name = "N")]
    count: u64,
    /// Reads the payload from this file.
    #[arg(long, short, value_name = "FILE")]
    file: Option<PathBuf>,
}

pub(crate) async fn run(context: &Context, args: SendArgs) -> Result<(), Failure> {
    let target = context.target(args.args, &["TOPIC", "PAYLOAD"], 1)?;
    let topic = target.rest[0].clone();
    let payload: Vec<u8> = match (target.rest.get(1).map(String::as_str), &args.file) {
        (Some(_), Some(_)) => return Err(usage("give a PAYLOAD or --file, not both")),
        (Some("-"), None) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Failure::Failed(format!("cannot read stdin: {e}")))?;
            buf
        }
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| Failure::Failed(format!("cannot read `{}`: {e}", path.display())))?,
        (None, None) => return Err(usage("no payload: give PAYLOAD, `-` for stdin, or --file FILE")),
    };
    if args.count == 0 {
        return Err(usage("--count must be at least 1"));
    }
    let mut pairs = Vec::with_capacity(args.headers.len());
    for h in &args.headers {
        pairs.push(pair(h, "header")?);
    }
    if args.json {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&payload) {
            return Err(usage(format!("--json: the payload is not JSON: {e}")));
        }
        if !pairs
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(headers::CONTENT_TYPE))
        {
            pairs.push((headers::CONTENT_TYPE.to_owned(), "application/json".to_owned()));
        }
    }
    let payload = bytes::Bytes::from(payload);
    let message = || {
        let mut m = Message::new(payload.clone());
        if let Some(key) = &args.key {
            m = m.with_key(key.clone());
        }
        for (k, v) in &pairs {
            m = m.with_header(k.clone(), v.clone());
        }
        m
    };

    let broker = context.connect(&target.config, true).await?;
    let outcome = async {
        let producer = broker.producer(ProducerOptions::default()).await?;
        let sent = async {
            if args.count == 1 {
                let receipt = producer.send(&topic, message()).await?;
                println!(
                    "sent id={} topic={} position={}",
                    receipt.id, receipt.topic, receipt.position
                );
                return Ok(());
            }
            let started = Instant::now();
            let mut left = args.count;
            while left > 0 {
                let n = left.min(100);
                let batch: Vec<Message> = (0..n).map(|_| message()).collect();
                producer.send_batch(&topic, batch).await?;
                left -= n;
            }
            let took = started.elapsed();
            println!(
                "sent {} messages to {topic} in {:.3} s ({:.0} msg/s)",
                args.count,
                took.as_secs_f64(),
                args.count as f64 / took.as_secs_f64().max(1e-9)
            );
            Ok::<(), mq_core::Error>(())
        }
        .await;
        let _ = producer.close().await;
        sent
    };
    let outcome = tokio::select! {
        outcome = outcome => outcome.map_err(Failure::from),
        () = crate::interrupted() => Err(Failure::Failed("interrupted; what was printed was confirmed".into())),
    };
    close(broker.as_ref()).await;
    outcome
}
