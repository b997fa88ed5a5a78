//! Traffic through broker faults, for each backend's fault suite: many
//! publishers send while the test kills or restarts its own broker, and
//! two consumers of one group receive throughout, one polling `recv` under
//! 500 ms timeouts and one awaiting `recv` plainly. What matters is
//! counted: no confirmed message may be lost.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Broker, Consumer, Message, Producer, ProducerOptions, Subscription};

/// How a run through faults went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FaultReport {
    /// Sends attempted.
    pub sent: usize,
    /// Sends the broker confirmed.
    pub confirmed: usize,
    /// Sends that returned an error (the message may or may not be there).
    pub send_errors: usize,
    /// Confirmed messages never received: must be 0.
    pub confirmed_lost: usize,
    /// Deliveries beyond the first of a message (at-least-once).
    pub duplicates: usize,
    /// Errors `recv` returned, per consumer (timed-out, plain).
    pub recv_errors: (usize, usize),
    /// Deliveries each consumer received after the last fault (timed-out,
    /// plain): both kept working, neither was made anew.
    pub after_faults: (usize, usize),
    /// Messages sent after the run, one every 100 ms, until both
    /// consumers had received since the last fault (a consumer whose
    /// reconnect backed off past the end of the traffic): 0 when both
    /// already had.
    pub top_up: usize,
    /// How long the top-up took.
    pub top_up_took: Duration,
    /// Polls of the timed-out consumer cut short by its timeout.
    pub timeouts: usize,
    /// How long the run took.
    pub took: Duration,
}

impl std::fmt::Display for FaultReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, confirmed {}, send errors {}, confirmed-lost {}, duplicates {}, \
             recv errors {}/{}, received after the last fault {}/{} (500 ms timeouts / plain recv), \
             {} topped up in {:.1?}, {} recv timeouts, {:.1?}",
            self.sent,
            self.confirmed,
            self.send_errors,
            self.confirmed_lost,
            self.duplicates,
            self.recv_errors.0,
            self.recv_errors.1,
            self.after_faults.0,
            self.after_faults.1,
            self.top_up,
            self.top_up_took,
            self.timeouts,
            self.took
        )
    }
}

impl FaultReport {
    /// Reports the run as `what` and asserts that no confirmed message was
    /// lost, that sends were confirmed, and that both consumers (never made
    /// anew) kept receiving after the last fault.
    pub fn assert_nothing_lost(&self, what: &str) {
        super::report(&format!("{what}: {self}"));
        assert_eq!(self.confirmed_lost, 0, "{what}: {self}");
        assert!(self.confirmed > 0, "{what}: {self}");
        assert!(
            self.after_faults.0 > 0 && self.after_faults.1 > 0,
            "{what}: both consumers kept receiving after the faults: {self}"
        );
    }
}

/// What the run is to do.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Messages to send in all.
    pub sends: usize,
    /// Concurrent publishers (each sends its share one `send` at a time).
    pub publishers: usize,
    /// A pause after each send of a publisher, so the faults land mid-stream.
    pub pace: Duration,
    /// The faults, as fractions of `sends` confirmed before each starts.
    pub faults_at: Vec<f64>,
    /// The longest the whole run may take.
    pub bound: Duration,
}

/// Subscribes two consumers with `sub`, sends `plan.sends` messages to
/// `sub.topic` from `plan.publishers` publishers, and calls `fault(i)` (a
/// kill, a restart...) once `plan.faults_at[i]` of them are confirmed,
/// while the traffic goes on. Then waits, within `plan.bound`, until every
/// confirmed message was received, and reports. Panics if `recv` ends or
/// the bound passes; the caller asserts on the report.
pub async fn traffic_through_faults<F, Fut>(
    broker: Arc<dyn Broker>,
    sub: Subscription,
    plan: FaultPlan,
    mut fault: F,
) -> FaultReport
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    let deadline = started + plan.bound;
    let topic = sub.topic.clone();
    let timed = subscribe(&broker, sub.clone()).await;
    let plain = subscribe(&broker, sub).await;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let faults_done = Arc::new(AtomicBool::new(false));
    let stop = tokio_util::sync::CancellationToken::new();
    // What each consumer received after the last fault, as it goes.
    let (timed_after, plain_after) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    let timed = tokio::spawn(receive(
        timed,
        Some(Duration::from_millis(500)),
        seen.clone(),
        (faults_done.clone(), timed_after.clone()),
        stop.clone(),
    ));
    let plain = tokio::spawn(receive(
        plain,
        None,
        seen.clone(),
        (faults_done.clone(), plain_after.clone()),
        stop.clone(),
    ));

    let producer: Arc<dyn Producer> = Arc::from(
        broker
            .producer(ProducerOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: cannot create a producer: {e}", broker.name())),
    );
    let confirmed_count = Arc::new(AtomicUsize::new(0));
    let per = plan.sends.div_ceil(plan.publishers.max(1));
    let mut publishers = Vec::new();
    for p in 0..plan.publishers.max(1) {
        let (producer, topic, count) = (producer.clone(), topic.clone(), confirmed_count.clone());
        let n = per.min(plan.sends.saturating_sub(p * per));
        let pace = plan.pace;
        publishers.push(tokio::spawn(async move {
            let (mut confirmed, mut errors) = (Vec::with_capacity(n), 0usize);
            for i in 0..n {
                match producer.send(&topic, Message::new(format!("{p}-{i}"))).await {
                    Ok(receipt) => {
                        confirmed.push(receipt.id);
                        count.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        if errors < 3 {
                            eprintln!("publisher {p}: send {i} failed: {e}");
                        }
                        errors += 1;
                    }
                }
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            (confirmed, errors)
        }));
    }

    // The faults, each once its share of the sends is confirmed.
    for (i, at) in plan.faults_at.iter().enumerate() {
        let want = (plan.sends as f64 * at) as usize;
        while confirmed_count.load(Ordering::Acquire) < want && !publishers.iter().all(|p| p.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "fault {i}: {want} confirmed not reached in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "fault {i} at {} confirmed",
            confirmed_count.load(Ordering::Acquire)
        );
        fault(i).await;
    }
    faults_done.store(true, Ordering::Release);

    let mut report = FaultReport {
        sent: plan.sends,
        ..FaultReport::default()
    };
    let mut confirmed = Vec::with_capacity(plan.sends);
    for p in publishers {
        let left = deadline.saturating_duration_since(Instant::now());
        let (ids, errors) = tokio::time::timeout(left, p)
            .await
            .unwrap_or_else(|_| panic!("the publishers did not finish within {:?}", plan.bound))
            .unwrap_or_else(|e| panic!("a publisher failed: {e}"));
        confirmed.extend(ids);
        report.send_errors += errors;
    }
    report.confirmed = confirmed.len();

    // Every confirmed message received, within the bound.
    loop {
        let missing = {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            confirmed.iter().filter(|id| !seen.contains_key(*id)).count()
        };
        if missing == 0 || Instant::now() >= deadline || timed.is_finished() && plain.is_finished() {
            report.confirmed_lost = missing;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both consumers are to receive after the last fault. One whose
    // reconnect backed off past the end of the traffic gets more, a
    // message every 100 ms, for at most 60 s (within the bound): a
    // consumer that stopped for good still fails the check, and the
    // report says how long the slow one took.
    let top_up_started = Instant::now();
    let top_up_until = (top_up_started + Duration::from_secs(60)).min(deadline);
    while (timed_after.load(Ordering::Acquire) == 0 || plain_after.load(Ordering::Acquire) == 0)
        && Instant::now() < top_up_until
        && !(timed.is_finished() && plain.is_finished())
    {
        let send = producer.send(&topic, Message::new(format!("top-up-{}", report.top_up)));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), send).await {
            report.top_up += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.top_up_took = top_up_started.elapsed();
    // Late duplicates have a moment to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let timed = timed
        .await
        .unwrap_or_else(|e| panic!("the timed-out consumer's task failed: {e}"));
    let plain = plain
        .await
        .unwrap_or_else(|e| panic!("the plain consumer's task failed: {e}"));
    report.recv_errors = (timed.errors, plain.errors);
    report.after_faults = (
        timed_after.load(Ordering::Acquire),
        plain_after.load(Ordering::Acquire),
    );
    report.timeouts = timed.timeouts;
    report.duplicates = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .map(|n| n.saturating_sub(1))
        .sum();
    report.took = started.elapsed();
    report
}

async fn subscribe(broker: &Arc<dyn Broker>, sub: Subscription) -> Box<dyn Consumer> {
    broker
        .subscribe(sub)
        .await
        .unwrap_or_else(|e| panic!("{}: cannot subscribe: {e}", broker.name()))
}

struct Received {
    errors: usize,
    timeouts: usize,
}

/// Receives and acks until stopped: under `timeout` when given, else
/// awaiting `recv` (cancelled only by the stop at the end).
async fn receive(
    mut consumer: Box<dyn Consumer>,
    timeout: Option<Duration>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    (faults_done, after_faults): (Arc<AtomicBool>, Arc<AtomicUsize>),
    stop: tokio_util::sync::CancellationToken,
) -> Received {
    let mut r = Received {
        errors: 0,
        timeouts: 0,
    };
    loop {
        let got = match timeout {
            Some(t) => tokio::select! {
                () = stop.cancelled() => break,
                got = tokio::time::timeout(t, consumer.recv()) => match got {
                    Ok(got) => got,
                    Err(_) => {
                        r.timeouts += 1;
                        continue;
                    }
                },
            },
            None => tokio::select! {
                () = stop.cancelled() => break,
                got = consumer.recv() => got,
            },
        };
        match got {
            Ok(Some(d)) => {
                *seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(d.message().id.clone())
                    .or_default() += 1;
                if faults_done.load(Ordering::Acquire) {
                    after_faults.fetch_add(1, Ordering::AcqRel);
                }
                // An ack on a connection that was lost fails; the message
                // comes again (a duplicate, not a loss).
                let _ = d.ack().await;
            }
            Ok(None) => panic!("a consumer ended (recv gave None) during the faults"),
            Err(e) => {
                if r.errors < 3 {
                    eprintln!("recv: {e}");
                }
                r.errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = consumer.close().await;
    r
}
