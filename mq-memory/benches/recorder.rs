//! What one instrumented message costs at least, whatever mq does: the
//! clock reads and the recorder's work for each value, measured on their
//! own (single thread, a tight loop, median of rounds).
//!
//! An instrumented message with metrics on reads the clock three times
//! (the send's start and end, the delivery's age), records two histogram
//! values (send duration, end-to-end) and touches five counters and gauges
//! (sent, consumed, settled, in flight up and down). On mq-memory, where a
//! message costs about 600–800 ns, that floor alone decides how close to
//! 1.0 the "fmt subscriber + Prometheus recorder" ratio of the throughput
//! harness can get.
//!
//! Run: `cargo bench -p mq-memory --bench recorder`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Instant, SystemTime};

const N: u32 = 2_000_000;
const ROUNDS: usize = 7;

/// Median ns per call of `f` over [`ROUNDS`] rounds of [`N`] calls.
fn per_call(mut f: impl FnMut(u32)) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..N {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / f64::from(N)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&mq_core::observe::metric::DURATION_BUCKETS)
        .unwrap()
        .install_recorder()
        .unwrap();
    let counter = metrics::counter!("c", "a" => "b");
    let gauge = metrics::gauge!("g", "a" => "b");
    let histogram = metrics::histogram!("h", "a" => "b");
    println!("per call, median of {ROUNDS} rounds of {N}, one thread:");
    let clock = per_call(|_| {
        black_box(Instant::now());
    });
    println!("  std::time::Instant::now                {clock:6.1} ns");
    let wall = per_call(|_| {
        black_box(SystemTime::now());
    });
    println!("  std::time::SystemTime::now             {wall:6.1} ns");
    let c = per_call(|_| counter.increment(1));
    println!("  Prometheus counter increment           {c:6.1} ns");
    let g = per_call(|_| gauge.increment(1.0));
    println!("  Prometheus gauge increment             {g:6.1} ns");
    let h = per_call(|i| histogram.record(f64::from(i) * 1e-9));
    println!("  Prometheus histogram record (buckets)  {h:6.1} ns");
    handle.run_upkeep();
    let floor = 2.0 * clock + wall + 2.0 * h + 3.0 * c + 2.0 * g;
    println!(
        "  floor of one message with metrics on (3 clock reads, 2 histogram values, 3 counters, 2 gauge steps): {floor:.0} ns"
    );
}
