//! Hold: receive deliveries of a subscription and keep them unsettled
//! until killed — a consumer process that dies holding work, for fault
//! drills (the group must then hand that work to its other consumers).
//!
//! ```text
//! hold URL TOPIC GROUP COUNT [ACK_TIMEOUT_MS]
//! ```
//!
//! It prints `subscribed` once it is a member of the group, then
//! `holding COUNT` once it holds that many deliveries, and waits (at most
//! ten minutes) to be killed.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use mq_core::Subscription;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hold: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, topic, group, count, rest @ ..] = args.as_slice() else {
        return Err("usage: hold URL TOPIC GROUP COUNT [ACK_TIMEOUT_MS]".into());
    };
    let count: usize = count.parse().map_err(|e| format!("COUNT `{count}`: {e}"))?;
    let mut sub = Subscription::new(topic, group).prefetch(count.max(1));
    if let Some(ms) = rest.first() {
        let ms: u64 = ms.parse().map_err(|e| format!("ACK_TIMEOUT_MS `{ms}`: {e}"))?;
        sub = sub.ack_timeout(Duration::from_millis(ms));
    }
    let broker = mq_examples::registry()
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = broker.subscribe(sub).await.map_err(|e| e.to_string())?;
    say("subscribed");
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await {
            Ok(Ok(Some(d))) => held.push(d),
            Ok(Ok(None)) => return Err("the consumer ended".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("only {} of {count} deliveries in 60 s", held.len())),
        }
    }
    say(&format!("holding {}", held.len()));
    tokio::time::sleep(Duration::from_secs(600)).await;
    Err("not killed within ten minutes".into())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
