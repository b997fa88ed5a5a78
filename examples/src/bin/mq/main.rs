//! `mq`, the command line: send, tail, bench, lag, ping and dead-letter
//! list / replay on any broker this build has, chosen by URL.
//!
//! ```text
//! cargo install --path examples --bin mq
//! mq send redis://127.0.0.1:6379 orders '{"id":1}' --json --key customer-1
//! mq tail redis://127.0.0.1:6379 orders --from earliest --max 10
//! MQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f mq bench --messages 10000
//! ```
//!
//! Exit codes: 0 done, 1 failed (the broker refused, did not answer, a
//! message was missing...), 2 usage (an unknown option, a malformed URL or
//! option, a missing argument). Errors are one line on stderr, never with
//! a password.

mod bench;
mod dlq;
mod send;
mod show;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mq_core::{Broker, Error, MqConfig};

const EXAMPLES: &str = "\
The broker is the first argument when it is a URL (it holds `://`);
otherwise it comes from --config FILE, then from $MQ_URL.

Examples:
  mq ping redis://127.0.0.1:6379
  mq send amqp://guest:guest@127.0.0.1:5672/%2f orders 'tea for two' --key customer-1
  mq tail kafka://127.0.0.1:9092 orders --from earliest --max 10 --format json
  mq bench redis://127.0.0.1:6379 --messages 10000 --producers 2 --consumers 2
  mq lag redis://127.0.0.1:6379 orders --group billing
  mq dlq list redis://127.0.0.1:6379 orders.dlq
  mq dlq replay redis://127.0.0.1:6379 orders.dlq --filter reason=timeout
  MQ_URL=redis://127.0.0.1:6379 mq tail orders
  mq --config examples/orders.toml dlq list orders.dlq

Exit codes: 0 done, 1 failed, 2 usage (unknown option, malformed URL).";

/// `mq`: send, tail, bench, lag, ping and replay dead letters on RabbitMQ,
/// Kafka, Redis Streams or memory, chosen by URL.
#[derive(Debug, Parser)]
#[command(name = "mq", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// A configuration file (TOML, the runtime's format): its `[broker]`
    /// table gives the URL and options when no URL is given; `MQ_*`
    /// variables override it (`MQ_URL`, `MQ_BROKER__OPTIONS__...`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds to wait for the broker at start: connecting and a first
    /// health probe.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sends a message (or --count copies) and prints the receipt.
    #[command(override_usage = "mq send [OPTIONS] [URL] <TOPIC> [PAYLOAD|-]", after_help = send::EXAMPLES)]
    Send(send::SendArgs),
    /// Prints deliveries as they come.
    #[command(override_usage = "mq tail [OPTIONS] [URL] <TOPIC>", after_help = tail::EXAMPLES)]
    Tail(tail::TailArgs),
    /// Measures throughput and latency: producers and consumers on one topic.
    #[command(override_usage = "mq bench [OPTIONS] [URL]", after_help = bench::EXAMPLES)]
    Bench(bench::BenchArgs),
    /// How far a group is behind on a topic.
    #[command(override_usage = "mq lag [OPTIONS] --group <GROUP> [URL] <TOPIC>", after_help = LAG_EXAMPLES)]
    Lag(LagArgs),
    /// Whether the broker answers, and how fast.
    #[command(override_usage = "mq ping [OPTIONS] [URL]", after_help = PING_EXAMPLES)]
    Ping(PingArgs),
    /// Dead letters: list them, or send them back to their topics.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

const LAG_EXAMPLES: &str = "\
Examples:
  mq lag redis://127.0.0.1:6379 orders --group billing
  mq lag kafka://127.0.0.1:9092 orders --group billing --json";

const PING_EXAMPLES: &str = "\
Examples:
  mq ping redis://127.0.0.1:6379
  MQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f mq ping --json";

/// `mq lag`.
#[derive(Debug, clap::Args)]
struct LagArgs {
    /// The broker URL (or from --config or MQ_URL), then the topic
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// The group.
    #[arg(long, short)]
    group: String,
    /// Prints one JSON object.
    #[arg(long)]
    json: bool,
}

/// `mq ping`.
#[derive(Debug, clap::Args)]
struct PingArgs {
    /// The broker URL (or from --config or MQ_URL)
    #[arg(value_name = "URL", num_args = 0..=1)]
    args: Vec<String>,
    /// Prints one JSON object.
    #[arg(long)]
    json: bool,
}

/// Why a command did not succeed: exit code 2 or 1.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command line or configuration was wrong (exit 2).
    Usage(String),
    /// The command ran and failed (exit 1).
    Failed(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let usage = matches!(
            e,
            Error::InvalidUrl { .. }
                | Error::UnknownScheme { .. }
                | Error::UnknownOption { .. }
                | Error::InvalidOption { .. }
        );
        if usage {
            Failure::Usage(e.to_string())
        } else {
            Failure::Failed(e.to_string())
        }
    }
}

/// A usage failure.
pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// A command's positional arguments once the broker URL is taken off the
/// front (or found elsewhere).
pub(crate) struct Target {
    /// The broker configuration.
    pub(crate) config: MqConfig,
    /// The positional arguments after the URL.
    pub(crate) rest: Vec<String>,
}

/// Context every command gets.
pub(crate) struct Context {
    config_file: Option<PathBuf>,
    connect_timeout: Duration,
}

impl Context {
    /// Splits `args` into the broker and the rest: the first argument is
    /// the URL when it holds `://`; otherwise the URL comes from
    /// `--config`, then `MQ_URL`. `names` are the rest's names, `required`
    /// how many of them must be there.
    pub(crate) fn target(
        &self,
        mut args: Vec<String>,
        names: &[&str],
        required: usize,
    ) -> Result<Target, Failure> {
        let has_url = args.first().is_some_and(|a| a.contains("://"));
        if !has_url && args.len() > names.len() {
            return Err(usage(format!(
                "`{}` is not a broker URL (scheme://host...); see --help",
                args[0]
            )));
        }
        let config = if has_url {
            MqConfig::new(args.remove(0))
        } else if let Some(path) = &self.config_file {
            mq_core::service::ServiceConfig::load(Some(path), "MQ_")?.broker
        } else {
            match std::env::var("MQ_URL") {
                Ok(url) if !url.trim().is_empty() => MqConfig::new(url),
                _ => {
                    return Err(usage(
                        "no broker: give a URL first (e.g. redis://127.0.0.1:6379), set MQ_URL, or pass --config FILE",
                    ));
                }
            }
        };
        if args.len() < required {
            return Err(usage(format!(
                "missing {}; see --help",
                names[args.len()..required]
                    .iter()
                    .map(|n| format!("<{n}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        if args.len() > names.len() {
            return Err(usage(format!(
                "unexpected argument `{}` (after {}); see --help",
                args[names.len()],
                names
                    .iter()
                    .map(|n| format!("<{n}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        // Checked here so that a malformed URL is a usage error before any
        // connection.
        config.to_url()?;
        Ok(Target { config, rest: args })
    }

    /// Connects to the broker; with `probe`, also waits for one health
    /// probe to answer (a broker that cannot probe is taken as it is).
    pub(crate) async fn connect(&self, config: &MqConfig, probe: bool) -> Result<Arc<dyn Broker>, Failure> {
        let shown = mq_core::url::redact(&config.url);
        let wait = self.connect_timeout;
        let broker = tokio::time::timeout(wait, mq_examples::registry().connect_config(config))
            .await
            .map_err(|_| Failure::Failed(format!("{shown} did not answer within {wait:?} (connecting)")))??;
        if probe {
            match tokio::time::timeout(wait, broker.health()).await {
                Ok(Ok(_)) | Ok(Err(Error::Unsupported { .. })) => {}
                Ok(Err(e)) => {
                    close(broker.as_ref()).await;
                    return Err(e.into());
                }
                Err(_) => {
                    close(broker.as_ref()).await;
                    return Err(Failure::Failed(format!(
                        "{shown} did not answer a health probe within {wait:?}"
                    )));
                }
            }
        }
        Ok(broker)
    }
}

/// Closes `broker`, bounded: an error or a hang at exit changes nothing
/// the command did.
pub(crate) async fn close(broker: &dyn Broker) {
    let _ = tokio::time::timeout(Duration::from_secs(5), broker.close()).await;
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub(crate) async fn interrupted() {
    mq_core::worker::shutdown_signal().await;
}

/// Parses `NAME=VALUE`.
pub(crate) fn pair(text: &str, what: &str) -> Result<(String, String), Failure> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(usage(format!("{what} `{text}` is not NAME=VALUE"))),
    }
}

/// A seconds option as a duration.
pub(crate) fn seconds(secs: f64, what: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| usage(format!("{what} must be a number of seconds >= 0, not {secs}")))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ");
            eprintln!("mq: {first} (see `mq --help`)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mq: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secret = secret_of(&cli);
    let outcome = runtime.block_on(run(cli));
    // Background tasks of a backend (reconnects...) do not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, message) = match failure {
                Failure::Usage(m) => (2, m),
                Failure::Failed(m) => (1, m),
            };
            eprintln!("mq: {}", one_line(&message, secret.as_deref()));
            ExitCode::from(code)
        }
    }
}

/// The password of the URL on the command line or in `MQ_URL`, to keep
/// out of what is printed even if an error repeated it.
fn secret_of(cli: &Cli) -> Option<String> {
    let candidates = std::env::args().chain(std::env::var("MQ_URL").ok());
    let _ = cli;
    candidates
        .filter(|a| a.contains("://"))
        .filter_map(|a| mq_core::BrokerUrl::parse(&a).ok())
        .find_map(|u| u.password().map(|p| p.expose().to_owned()))
        .filter(|p| p.len() >= 3)
}

/// `message` on one line, without `secret`.
fn one_line(message: &str, secret: Option<&str>) -> String {
    let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(secret) = secret {
        line = line.replace(secret, "***");
    }
    line
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let context = Context {
        config_file: cli.config,
        connect_timeout: seconds(cli.connect_timeout, "--connect-timeout")?,
    };
    match cli.command {
        Command::Send(args) => send::run(&context, args).await,
        Command::Tail(args) => tail::run(&context, args).await,
        Command::Bench(args) => bench::run(&context, args).await,
        Command::Dlq(command) => dlq::run(&context, command).await,
        Command::Ping(args) => {
            let target = context.target(args.args, &[], 0)?;
            let broker = context.connect(&target.config, false).await?;
            let probe = tokio::time::timeout(context.connect_timeout, broker.health()).await;
            close(broker.as_ref()).await;
            let health = probe.map_err(|_| {
                Failure::Failed(format!(
                    "{} did not answer a health probe within {:?}",
                    mq_core::url::redact(&target.config.url),
                    context.connect_timeout
                ))
            })??;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "backend": health.backend,
                        "endpoint": health.endpoint,
                        "latency_ms": health.latency.as_secs_f64() * 1e3,
                    })
                );
            } else {
                println!("{health}");
            }
            Ok(())
        }
        Command::Lag(args) => {
            let target = context.target(args.args, &["TOPIC"], 1)?;
            let topic = &target.rest[0];
            let broker = context.connect(&target.config, false).await?;
            let lag = tokio::time::timeout(context.connect_timeout, broker.lag(topic, &args.group)).await;
            close(broker.as_ref()).await;
            let lag = lag.map_err(|_| {
                Failure::Failed(format!("no lag figure within {:?}", context.connect_timeout))
            })??;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "backend": lag.backend,
                        "topic": lag.topic,
                        "group": lag.group,
                        "behind": lag.behind,
                        "in_flight": lag.in_flight,
                    })
                );
            } else {
                println!("{lag}");
            }
            Ok(())
        }
    }
}
