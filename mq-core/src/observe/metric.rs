//! The metrics mq records through the `metrics` facade (the application
//! installs the recorder and exporter it wants, e.g.
//! `metrics-exporter-prometheus`).
//!
//! | name | type | unit | labels |
//! |---|---|---|---|
//! | [`SENT`] `messaging.client.sent.messages` | counter | messages | system, destination, error.type on failure |
//! | [`CONSUMED`] `messaging.client.consumed.messages` | counter | messages | system, destination, group |
//! | [`OPERATION_DURATION`] `messaging.client.operation.duration` | histogram | s | system, operation (`send`, `requeue`, `dead_letter`; acks are counted, not timed), destination, error.type on failure |
//! | [`PROCESS_DURATION`] `messaging.process.duration` | histogram | s | system, destination, group, outcome (`ok`, `error`, `panic`, `timeout`) |
//! | [`SETTLED`] `mq.client.settled.messages` | counter | messages | system, destination, group, outcome (`acked`, `requeued`, `dead_lettered`) |
//! | [`SETTLE_ERRORS`] `mq.client.settle.errors` | counter | settles | system, destination, group, operation, error.type |
//! | [`RECEIVE_ERRORS`] `messaging.client.receive.errors` | counter | receives | system, destination, group, error.type |
//! | [`IN_FLIGHT`] `mq.client.deliveries.in_flight` | gauge | deliveries | system, destination, group |
//! | [`END_TO_END`] `mq.client.end_to_end.duration` | histogram | s | system, destination, group |
//! | [`LAG`] `mq.consumer.lag` | gauge | messages | system, destination, group |
//! | [`LAG_IN_FLIGHT`] `mq.consumer.lag.in_flight` | gauge | messages | system, destination, group (where the backend tells) |
//!
//! Label names: `messaging.system`, `messaging.destination.name`,
//! `messaging.consumer.group.name`, `messaging.operation.name`, `outcome`,
//! `error.type`. No label holds a message id or key. The lag gauges are
//! set each time [`Broker::lag`](crate::Broker::lag) is called on an
//! instrumented broker.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};

use crate::{Error, Lag};

/// Messages sent (counted once the send returns; failed ones with
/// `error.type`).
pub const SENT: &str = "messaging.client.sent.messages";
/// Messages handed to a consumer.
pub const CONSUMED: &str = "messaging.client.consumed.messages";
/// How long a send (until confirmed) or a settle took, in seconds.
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// How long the worker's handler took, in seconds.
pub const PROCESS_DURATION: &str = "messaging.process.duration";
/// Deliveries settled, by outcome.
pub const SETTLED: &str = "mq.client.settled.messages";
/// Settles that failed.
pub const SETTLE_ERRORS: &str = "mq.client.settle.errors";
/// Receives that failed.
pub const RECEIVE_ERRORS: &str = "messaging.client.receive.errors";
/// Deliveries received and not yet settled (nor dropped).
pub const IN_FLIGHT: &str = "mq.client.deliveries.in_flight";
/// From the message's timestamp to its delivery, in seconds.
pub const END_TO_END: &str = "mq.client.end_to_end.duration";
/// Messages of a group not yet delivered ([`Lag::behind`]).
pub const LAG: &str = "mq.consumer.lag";
/// Messages of a group delivered and not settled ([`Lag::in_flight`]).
pub const LAG_IN_FLIGHT: &str = "mq.consumer.lag.in_flight";

/// The bucket boundaries, in seconds, that the OpenTelemetry messaging
/// conventions recommend for [`OPERATION_DURATION`] and
/// [`PROCESS_DURATION`]; they suit [`END_TO_END`] too.
///
/// Give them to the exporter, e.g. `metrics-exporter-prometheus`'s
/// `PrometheusBuilder::set_buckets(&DURATION_BUCKETS)`: its histograms are
/// then Prometheus histograms, which aggregate across instances and cost a
/// bucket increment per value, instead of summaries, whose upkeep adds
/// every value to a sketch.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Label: the broker ([`Broker::name`](crate::Broker::name)).
pub const SYSTEM: &str = "messaging.system";
/// Label: the topic.
pub const DESTINATION: &str = "messaging.destination.name";
/// Label: the group.
pub const GROUP: &str = "messaging.consumer.group.name";
/// Label: the operation.
pub const OPERATION: &str = "messaging.operation.name";
/// Label: how it ended.
pub const OUTCOME: &str = "outcome";
/// Label: the kind of error ([`Error::kind`]).
pub const ERROR_TYPE: &str = "error.type";

fn labels(system: &'static str, topic: &str, group: Option<&str>) -> Vec<Label> {
    let mut labels = vec![
        Label::new(SYSTEM, system),
        Label::new(DESTINATION, topic.to_string()),
    ];
    if let Some(group) = group {
        labels.push(Label::new(GROUP, group.to_string()));
    }
    labels
}

fn with(mut labels: Vec<Label>, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
    labels.extend(extra.iter().map(|(k, v)| Label::new(*k, *v)));
    labels
}

/// A producer's handles for one topic.
#[derive(Debug)]
pub(crate) struct SendMetrics {
    base: Vec<Label>,
    sent: Counter,
    duration: Histogram,
}

impl SendMetrics {
    pub(crate) fn new(system: &'static str, topic: &str) -> Self {
        let base = labels(system, topic, None);
        SendMetrics {
            sent: metrics::counter!(SENT, base.clone()),
            duration: metrics::histogram!(OPERATION_DURATION, with(base.clone(), &[(OPERATION, "send")])),
            base,
        }
    }

    pub(crate) fn sent(&self, count: usize, took: Duration, err: Option<&Error>) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        match err {
            None => {
                self.sent.increment(count);
                self.duration.record(took.as_secs_f64());
            }
            Some(e) => {
                let failed = with(self.base.clone(), &[(ERROR_TYPE, e.kind())]);
                metrics::counter!(SENT, failed.clone()).increment(count);
                metrics::histogram!(OPERATION_DURATION, with(failed, &[(OPERATION, "send")]))
                    .record(took.as_secs_f64());
            }
        }
    }
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    DeadLetter,
}

impl Settle {
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Requeue => "requeue",
            Settle::DeadLetter => "dead_letter",
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Settle::Ack => "acked",
            Settle::Requeue => "requeued",
            Settle::DeadLetter => "dead_lettered",
        }
    }

    fn index(self) -> usize {
        match self {
            Settle::Ack => 0,
            Settle::Requeue => 1,
            Settle::DeadLetter => 2,
        }
    }
}

impl Settle {
    /// Whether the settle's duration is recorded: a requeue's and a
    /// dead-letter's are (they send, or re-publish, on most backends); an
    /// ack's is not, as on every backend it returns once it is queued
    /// (mq-redis batches XACKs in the background, RabbitMQ's `basic.ack`
    /// has no reply, mq-kafka stores the offset for the next commit,
    /// mq-memory is local): its duration would tell nothing and cost two
    /// clock reads and a histogram value per message.
    pub(crate) fn timed(self) -> bool {
        self != Settle::Ack
    }
}

const SETTLES: [Settle; 3] = [Settle::Ack, Settle::Requeue, Settle::DeadLetter];

/// A consumer's handles (one topic, one group).
#[derive(Debug)]
pub(crate) struct ConsumerMetrics {
    base: Vec<Label>,
    consumed: Counter,
    end_to_end: Histogram,
    pub(crate) in_flight: Gauge,
    settled: [Counter; 3],
    settle_duration: [Histogram; 3],
    process_ok: Histogram,
}

impl ConsumerMetrics {
    pub(crate) fn new(system: &'static str, topic: &str, group: &str) -> Self {
        let base = labels(system, topic, Some(group));
        let settled =
            SETTLES.map(|s| metrics::counter!(SETTLED, with(base.clone(), &[(OUTCOME, s.outcome())])));
        let settle_duration = SETTLES.map(|s| {
            metrics::histogram!(
                OPERATION_DURATION,
                with(base.clone(), &[(OPERATION, s.operation())])
            )
        });
        ConsumerMetrics {
            consumed: metrics::counter!(CONSUMED, base.clone()),
            end_to_end: metrics::histogram!(END_TO_END, base.clone()),
            in_flight: metrics::gauge!(IN_FLIGHT, base.clone()),
            process_ok: metrics::histogram!(PROCESS_DURATION, with(base.clone(), &[(OUTCOME, "ok")])),
            settled,
            settle_duration,
            base,
        }
    }

    pub(crate) fn consumed(&self, age: Duration) {
        self.consumed.increment(1);
        self.end_to_end.record(age.as_secs_f64());
        self.in_flight.increment(1.0);
    }

    pub(crate) fn receive_failed(&self, err: &Error) {
        metrics::counter!(
            RECEIVE_ERRORS,
            with(self.base.clone(), &[(ERROR_TYPE, err.kind())])
        )
        .increment(1);
    }

    /// Records a settle; `took` is `None` for an ack, which is counted and
    /// not timed (see [`Settle::timed`]).
    pub(crate) fn settled(&self, how: Settle, took: Option<Duration>, err: Option<&Error>) {
        match err {
            None => {
                self.settled[how.index()].increment(1);
                if let Some(took) = took {
                    self.settle_duration[how.index()].record(took.as_secs_f64());
                }
            }
            Some(e) => {
                let failed = with(
                    self.base.clone(),
                    &[(OPERATION, how.operation()), (ERROR_TYPE, e.kind())],
                );
                metrics::counter!(SETTLE_ERRORS, failed.clone()).increment(1);
                if let Some(took) = took {
                    metrics::histogram!(OPERATION_DURATION, failed).record(took.as_secs_f64());
                }
            }
        }
    }

    /// The handler's duration; `outcome` is `ok`, `error`, `panic` or
    /// `timeout`.
    pub(crate) fn processed(&self, outcome: &'static str, took: Duration) {
        if outcome == "ok" {
            self.process_ok.record(took.as_secs_f64());
        } else {
            metrics::histogram!(PROCESS_DURATION, with(self.base.clone(), &[(OUTCOME, outcome)]))
                .record(took.as_secs_f64());
        }
    }
}

/// Sets the lag gauges of `lag`'s topic and group.
pub(crate) fn record_lag(system: &'static str, lag: &Lag) {
    let base = labels(system, &lag.topic, Some(&lag.group));
    #[allow(clippy::cast_precision_loss)] // a gauge is an f64
    {
        metrics::gauge!(LAG, base.clone()).set(lag.behind as f64);
        if let Some(in_flight) = lag.in_flight {
            metrics::gauge!(LAG_IN_FLIGHT, base).set(in_flight as f64);
        }
    }
}
