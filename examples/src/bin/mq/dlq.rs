//! `mq dlq list` and `mq dlq replay`.

use std::time::Duration;

use mq_core::dlq::{ReplayOptions, list, replay};
use mq_core::headers;

use crate::show::{Format, line};
use crate::{Context, Failure, close, pair, seconds};

const LIST_EXAMPLES: &str = "\
TOPIC is the dead-letter topic (`orders.dlq` for `orders` unless the
subscription named another). Lists what a replay with the same options
would send; settles nothing. Each line shows where the message came from
and why it was dead-lettered.

Examples:
  mq dlq list redis://127.0.0.1:6379 orders.dlq
  mq dlq list redis://127.0.0.1:6379 orders.dlq --filter reason=timeout --format json";

const REPLAY_EXAMPLES: &str = "\
Sends each dead letter back to its original topic (its mq-original-topic
header), without the dead-letter headers, and acks it only once the copy
is confirmed: interrupted at any point, nothing is lost (a message may be
sent back twice; on Redis, the dead letters a killed replay held come
back after --ack-timeout). Dead letters not matching the filter, or without an
original topic, stay. The group's position is kept between runs.

--filter NAME=TEXT keeps dead letters whose header NAME contains TEXT;
`reason`, `topic` and `group` stand for mq-dead-letter-reason,
mq-original-topic and mq-original-group.

Examples:
  mq dlq replay redis://127.0.0.1:6379 orders.dlq --dry-run
  mq dlq replay redis://127.0.0.1:6379 orders.dlq --filter reason=timeout --max 100
  mq dlq replay amqp://guest:guest@127.0.0.1:5672/%2f orders.dlq";

/// `mq dlq`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// Lists dead letters (settles nothing).
    #[command(override_usage = "mq dlq list [OPTIONS] [URL] <TOPIC>", after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Sends dead letters back to their original topics.
    #[command(override_usage = "mq dlq replay [OPTIONS] [URL] <TOPIC>", after_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
}

/// What both commands read.
#[derive(Debug, clap::Args)]
pub(crate) struct Selection {
    /// The broker URL (or from --config or MQ_URL), then the topic
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// The group that reads the dead-letter topic.
    #[arg(long, short, default_value = "mq-dlq-replay")]
    group: String,
    /// Only dead letters whose header NAME contains TEXT (`reason`,
    /// `topic`, `group` for the dead-letter headers); repeat for more.
    #[arg(long, value_name = "NAME=TEXT")]
    filter: Vec<String>,
    /// At most this many.
    #[arg(long, short = 'n', value_name = "N")]
    max: Option<usize>,
    /// Stops after this many seconds without a dead letter.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    idle: f64,
    /// The ack timeout of the reading group. On Redis, dead letters that a
    /// killed replay held come back to the group once it passed.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    ack_timeout: f64,
}

/// `mq dlq list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    selection: Selection,
    /// How each dead letter is printed.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// `mq dlq replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    selection: Selection,
    /// Counts what would be replayed; sends nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Selection {
    fn options(&self) -> Result<ReplayOptions, Failure> {
        let mut options = ReplayOptions::default()
            .group(self.group.as_str())
            .idle(seconds(self.idle, "--idle")?.max(Duration::from_millis(1)))
            .ack_timeout(seconds(self.ack_timeout, "--ack-timeout")?.max(Duration::from_millis(1)));
        if let Some(max) = self.max {
            options = options.max(max);
        }
        for f in &self.filter {
            let (name, text) = pair(f, "filter")?;
            let name = match name.as_str() {
                "reason" => headers::DEAD_LETTER_REASON.to_owned(),
                "topic" => headers::ORIGINAL_TOPIC.to_owned(),
                "group" => headers::ORIGINAL_GROUP.to_owned(),
                _ => name,
            };
            options = options.filter(name, text);
        }
        Ok(options)
    }
}

pub(crate) async fn run(context: &Context, command: DlqCommand) -> Result<(), Failure> {
    let (selection, listing) = match &command {
        DlqCommand::List(a) => (&a.selection, true),
        DlqCommand::Replay(a) => (&a.selection, false),
    };
    let options = selection.options()?;
    let target = context.target(selection.args.clone(), &["TOPIC"], 1)?;
    let topic = target.rest[0].clone();
    let broker = context.connect(&target.config, true).await?;
    let work = async {
        match &command {
            DlqCommand::List(a) => {
                let messages = list(broker.as_ref(), &topic, &options).await?;
                for m in &messages {
                    println!("{}", line(a.format, &topic, m, None));
                }
                if a.format == Format::Text {
                    println!(
                        "{} dead letter(s) in {topic} for group {}",
                        messages.len(),
                        options.group
                    );
                }
            }
            DlqCommand::Replay(a) => {
                let options = options.clone().dry_run(a.dry_run);
                let report = replay(broker.as_ref(), &topic, &options).await?;
                println!("{report}");
            }
        }
        Ok::<(), mq_core::Error>(())
    };
    let outcome = tokio::select! {
        outcome = work => outcome.map_err(Failure::from),
        () = crate::interrupted() => Err(Failure::Failed(if listing {
            "interrupted".into()
        } else {
            "interrupted; what was not replayed stays in the dead-letter topic".into()
        })),
    };
    close(broker.as_ref()).await;
    outcome
}
