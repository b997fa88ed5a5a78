//! `mq tail`.

use std::time::Duration;

use mq_core::{Delivery, StartPosition, Subscription};

use crate::show::{Format, line};
use crate::{Context, Failure, close, seconds};

pub(crate) const EXAMPLES: &str = "\
Reads as a group (`mq-tail` unless --group): the group's position is kept
between runs; --from applies when the group is new. With --ack (the
default) each delivery is acked once printed; with --no-ack they are held
and handed back to the group on exit (at most 10000 held).
Stops at --max, after --idle seconds without a delivery, or on Ctrl-C.

Examples:
  mq tail redis://127.0.0.1:6379 orders
  mq tail redis://127.0.0.1:6379 orders --from earliest --max 10 --no-ack
  mq tail kafka://127.0.0.1:9092 orders --group audit --format json --idle 5";

/// `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum From {
    /// The oldest message the broker keeps.
    Earliest,
    /// Only messages sent from now on.
    Latest,
}

/// `mq tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// The broker URL (or from --config or MQ_URL), then the topic
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// The group to read as.
    #[arg(long, short, default_value = "mq-tail")]
    group: String,
    /// Where a new group starts.
    #[arg(long, value_enum, default_value_t = From::Latest)]
    from: From,
    /// Acks each delivery once printed (the default).
    #[arg(long, overrides_with = "no_ack")]
    ack: bool,
    /// Holds the deliveries and hands them back to the group on exit.
    #[arg(long, overrides_with = "ack")]
    no_ack: bool,
    /// Stops after this many deliveries.
    #[arg(long, short = 'n', value_name = "N")]
    max: Option<usize>,
    /// Stops after this many seconds without a delivery.
    #[arg(long, value_name = "SECS")]
    idle: Option<f64>,
    /// How each delivery is printed.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// The most deliveries `--no-ack` holds.
const HOLD: usize = 10_000;

pub(crate) async fn run(context: &Context, args: TailArgs) -> Result<(), Failure> {
    let target = context.target(args.args, &["TOPIC"], 1)?;
    let topic = target.rest[0].clone();
    let idle = args.idle.map(|s| seconds(s, "--idle")).transpose()?;
    if args.max == Some(0) {
        return Ok(());
    }
    let hold = args.no_ack;
    let mut subscription = Subscription::new(&topic, args.group.as_str()).start(match args.from {
        From::Earliest => StartPosition::Earliest,
        From::Latest => StartPosition::Latest,
    });
    if hold {
        // Held deliveries stay ours until we exit.
        subscription = subscription
            .prefetch(args.max.unwrap_or(HOLD).clamp(1, HOLD))
            .ack_timeout(Duration::from_secs(3600));
    }
    let broker = context.connect(&target.config, true).await?;
    let mut consumer = match broker.subscribe(subscription).await {
        Ok(consumer) => consumer,
        Err(e) => {
            close(broker.as_ref()).await;
            return Err(e.into());
        }
    };
    // On stderr, so that stdout holds only deliveries; a script (or a
    // test) can wait for it before sending.
    eprintln!("mq: tailing {topic} as group {} (Ctrl-C to stop)", args.group);
    let mut held: Vec<Delivery> = Vec::new();
    let mut shown = 0usize;
    let reading = async {
        while args.max.is_none_or(|max| shown < max) {
            let next = match idle {
                Some(idle) => match tokio::time::timeout(idle, consumer.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => consumer.recv().await,
            };
            let Some(delivery) = next? else { break };
            println!(
                "{}",
                line(args.format, &topic, delivery.message(), Some(delivery.attempt()))
            );
            shown += 1;
            if hold {
                held.push(delivery);
            } else {
                delivery.ack().await?;
            }
        }
        Ok::<(), mq_core::Error>(())
    };
    let outcome = tokio::select! {
        outcome = reading => outcome.map_err(Failure::from),
        () = crate::interrupted() => Ok(()),
    };
    // Closing hands the held deliveries back.
    let closed = tokio::time::timeout(Duration::from_secs(10), consumer.close()).await;
    drop(held);
    close(broker.as_ref()).await;
    outcome?;
    match closed {
        Ok(closed) => closed.map_err(Failure::from),
        Err(_) => Err(Failure::Failed("the consumer did not close within 10 s".into())),
    }
}
