//! Malformed messages as a stranger's program would write them straight
//! onto a broker's wire: for each backend's robustness tests.
//!
//! A case is a list of (name, value) byte pairs: header names or stream
//! fields, some of them the backend's own (`reserved`, such as the attempt
//! header), with values a well-behaved producer would never write: huge,
//! negative and non-numeric counts, far-future times, empty, oversized and
//! non-UTF-8 bytes. The cases come from [`mod@proptest`] strategies run with a
//! fixed seed, so a failing case is the same on every run.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// One malformed message: its fields or headers, in order.
pub type ForeignCase = Vec<(Vec<u8>, Vec<u8>)>;

/// Values that break a careless parser.
const ODD_NUMBERS: &[&str] = &[
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "-1",
    "-4294967296",
    "0",
    "1e9",
    " 3",
    "NaN",
    // A due time in the year 9999 (ms since the epoch).
    "253402300799000",
];

fn name(reserved: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::sample::select(reserved).prop_map(String::into_bytes),
        2 => "[a-z][a-z0-9-]{0,15}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 1..24),
        1 => (256usize..1200).prop_map(|n| vec![b'n'; n]),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::sample::select(ODD_NUMBERS).prop_map(|s| s.as_bytes().to_vec()),
        2 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => Just(Vec::new()),
        1 => Just(vec![0xff, 0xfe, 0x00, 0xc3]),
        1 => (1usize..70_000).prop_map(|n| vec![b'v'; n]),
    ]
}

/// `n` malformed cases whose names come partly from `reserved`, the same
/// on every run. Each case has 0 to 8 fields; names may repeat.
pub fn foreign_cases(n: usize, reserved: &[&str]) -> Vec<ForeignCase> {
    let reserved: Vec<String> = reserved.iter().map(|s| (*s).to_string()).collect();
    let strategy = proptest::collection::vec((name(reserved), value()), 0..8);
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    (0..n)
        .map(|_| match strategy.new_tree(&mut runner) {
            Ok(tree) => tree.current(),
            Err(_) => Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_the_same_every_run_and_odd() {
        let a = foreign_cases(300, &["mq-attempt"]);
        assert_eq!(a, foreign_cases(300, &["mq-attempt"]));
        let fields = || a.iter().flatten();
        assert!(fields().any(|(n, v)| n == b"mq-attempt" && v == b"4294967295"));
        assert!(fields().any(|(_, v)| std::str::from_utf8(v).is_err()));
        assert!(fields().any(|(n, _)| n.len() > 255));
        assert!(fields().any(|(_, v)| v.len() > 65_535));
        assert!(a.iter().any(Vec::is_empty));
    }
}

/// The header a robustness test puts last on every case: its index.
pub const CASE: &str = "mq-test-case";

/// What became of the cases written onto the wire.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Delivered and acked.
    pub delivered: usize,
    /// Dead-lettered with a reason (after a delivery dropped unsettled
    /// when it claimed an attempt past the subscription's maximum).
    pub dead_lettered: usize,
    /// Errors `recv` returned (each names what it could not read).
    pub errors: usize,
    /// Deliveries seen again after being dropped.
    pub redelivered: usize,
}

/// Receives from `consumer` (the cases' group, whose maximum attempts is
/// `max_attempts`) and from `dead` (a group of its dead-letter topic)
/// until every case `0..cases` is accounted for, within `bound`: a
/// delivery is acked, except that one claiming an attempt of
/// `max_attempts` or more is settled otherwise, once: dropped unsettled
/// where the broker redelivers on an ack timeout (`ack_timeout_redelivery`),
/// requeued elsewhere; either way the backend must then dead-letter it (or
/// deliver it again). Panics when `recv` ends (`None`) or a case is not
/// accounted for in time, naming the missing ones.
pub async fn account_for(
    broker: &dyn crate::Broker,
    consumer: &mut dyn crate::Consumer,
    dead: &mut dyn crate::Consumer,
    cases: usize,
    max_attempts: u32,
    bound: std::time::Duration,
) -> Tally {
    let drop_over_max = broker.capabilities().ack_timeout_redelivery;
    use std::collections::BTreeSet;
    let deadline = tokio::time::Instant::now() + bound;
    let mut missing: BTreeSet<usize> = (0..cases).collect();
    let mut dropped = BTreeSet::new();
    let mut tally = Tally::default();
    let case_of = |d: &crate::Delivery| {
        d.message()
            .headers
            .get(CASE)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("a delivery without a readable `{CASE}` header: {:?}", d.message()))
    };
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "{} cases neither delivered nor dead-lettered within {bound:?} ({tally:?}): {:?}",
            missing.len(),
            missing.iter().take(20).collect::<Vec<_>>()
        );
        let (from_dead, got) = tokio::select! {
            r = consumer.recv() => (false, r),
            r = dead.recv() => (true, r),
            () = tokio::time::sleep(left) => continue,
        };
        let delivery = match got {
            Ok(Some(d)) => d,
            Ok(None) => panic!(
                "a consumer ended (recv gave None) with {} cases left",
                missing.len()
            ),
            Err(e) => {
                eprintln!("recv reported: {e}");
                tally.errors += 1;
                continue;
            }
        };
        let case = case_of(&delivery);
        if from_dead {
            let reason = delivery.message().headers.get(crate::headers::DEAD_LETTER_REASON);
            assert!(
                reason.is_some_and(|r| !r.is_empty()),
                "case {case} dead-lettered without a reason"
            );
            tally.dead_lettered += usize::from(missing.remove(&case));
        } else if delivery.attempt() >= max_attempts && dropped.insert(case) {
            if drop_over_max {
                drop(delivery);
            } else if let Err(e) = delivery.nack(crate::Nack::requeue()).await {
                eprintln!("requeue of case {case} failed: {e}");
            }
            continue;
        } else {
            if dropped.contains(&case) {
                tally.redelivered += 1;
            }
            tally.delivered += usize::from(missing.remove(&case));
        }
        if let Err(e) = delivery.ack().await {
            eprintln!("ack of case {case} failed: {e}");
        }
    }
    tally
}

impl Tally {
    /// Reports the tally as `what` and asserts every one of `cases` was
    /// delivered or dead-lettered, some of them dead-lettered (the cases
    /// that claim a huge attempt).
    pub fn assert_all_accounted(&self, what: &str, cases: usize) {
        super::report(&format!("{what}: {self:?}"));
        assert_eq!(self.delivered + self.dead_lettered, cases, "{what}: {self:?}");
        assert!(
            self.dead_lettered >= 1,
            "{what}: cases claiming a huge attempt are dead-lettered once settled otherwise than by an ack"
        );
    }
}

/// After the strangers, a message mq itself sends to `topic` still reaches
/// `consumer`.
pub async fn still_delivers(broker: &dyn crate::Broker, consumer: &mut dyn crate::Consumer, topic: &str) {
    let producer = broker
        .producer(crate::ProducerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{}: cannot create a producer: {e}", broker.name()));
    let id = producer
        .send(topic, crate::Message::new("after the strangers"))
        .await
        .unwrap_or_else(|e| panic!("send to {topic} failed: {e}"))
        .id;
    let d = super::expect_delivery(consumer, "a normal message after the foreign ones").await;
    assert_eq!(d.message().id, id);
    super::ack(&d).await;
}
