//! What the metrics tests share: reading `metrics-util`'s debugging
//! recorder.
#![allow(dead_code)] // each test binary uses what it needs

use metrics_util::debugging::{DebugValue, Snapshotter};
use mq_core::observe::metric;

/// What the recorder got since the last look (a snapshot drains every
/// series it shows).
pub(crate) type Seen = Vec<(metrics_util::CompositeKey, DebugValue)>;

/// A look at the recorder, without handing mq's counts over first.
pub(crate) fn look(snapshotter: &Snapshotter) -> Seen {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

/// The value of `name` for `topic` in `seen` (a histogram's: its number
/// of values), summed over the series with the `extra` labels too; `None`
/// when there is no such series.
pub(crate) fn value(seen: &Seen, name: &str, topic: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for (key, value) in seen {
        let key = key.key();
        let matches = key.name() == name
            && key
                .labels()
                .any(|l| l.key() == metric::DESTINATION && l.value() == topic)
            && extra
                .iter()
                .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
        if !matches {
            continue;
        }
        #[allow(clippy::cast_precision_loss)]
        let v = match value {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        *total.get_or_insert(0.0) += v;
    }
    total
}
