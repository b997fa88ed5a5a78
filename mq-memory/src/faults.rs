//! Faults injected on purpose, so that a service's tests can check its
//! handlers survive what at-least-once delivery allows: duplicates,
//! redeliveries, reordering, failed sends, lost confirms, delays and
//! broker restarts. Every choice comes from one seeded generator: the same
//! seed and the same sequence of calls give the same faults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mq_core::backend::Rng;
use mq_core::{BrokerUrl, Error, Result};
use serde::Deserialize;

/// Which faults a [`MemoryBroker`](crate::MemoryBroker) injects, each with
/// a probability in `[0, 1]` (none by default).
///
/// On a URL: `memory://?seed=7&duplicate=0.1&redeliver=0.05&fail_send=0.1`.
///
/// ```
/// use mq_memory::{Faults, MemoryBroker, MemoryConfig};
/// let faults = Faults::seeded(7).duplicate(0.1).fail_send(0.05);
/// let broker = MemoryBroker::with_config(MemoryConfig::default().faults(faults));
/// assert_eq!(broker.faults().duplicated, 0);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Faults {
    /// The seed of the one generator every choice comes from.
    pub seed: u64,
    /// A delivery is handed out twice: the copy comes on the consumer's next
    /// `recv`, with the same id and attempt; settling the copy does nothing.
    pub duplicate: f64,
    /// An ack is lost, as if the consumer crashed after handling but before
    /// the ack reached the broker: `ack` returns `Ok`, and the message comes
    /// back with attempt + 1 (or is dead-lettered if out of attempts).
    pub redeliver: f64,
    /// A delivery is handed out after the next one the consumer holds,
    /// never across a key unless [`reorder_across_keys`](Faults::reorder_across_keys).
    pub reorder: f64,
    /// Whether reordering may swap messages of one key.
    pub reorder_across_keys: bool,
    /// A send fails with a retryable error and stores nothing.
    pub fail_send: f64,
    /// A send stores the message but reports a retryable error, as a lost
    /// publisher confirm does.
    pub lose_confirm: f64,
    /// A delivery is held back for up to [`delay_ms`](Faults::delay_ms).
    pub delay: f64,
    /// The longest extra delay, in milliseconds (a delay is drawn between 0
    /// and this).
    pub delay_ms: u64,
}

impl Faults {
    /// The URL query options of faults.
    pub const OPTIONS: &'static [&'static str] = &[
        "seed",
        "duplicate",
        "redeliver",
        "reorder",
        "reorder_across_keys",
        "fail_send",
        "lose_confirm",
        "delay",
        "delay_ms",
    ];

    /// No faults yet, with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Faults {
            seed,
            ..Faults::default()
        }
    }

    /// Sets [`duplicate`](Faults::duplicate).
    #[must_use]
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// Sets [`redeliver`](Faults::redeliver).
    #[must_use]
    pub fn redeliver(mut self, p: f64) -> Self {
        self.redeliver = p;
        self
    }

    /// Sets [`reorder`](Faults::reorder).
    #[must_use]
    pub fn reorder(mut self, p: f64) -> Self {
        self.reorder = p;
        self
    }

    /// Sets [`reorder_across_keys`](Faults::reorder_across_keys).
    #[must_use]
    pub fn reorder_across_keys(mut self, yes: bool) -> Self {
        self.reorder_across_keys = yes;
        self
    }

    /// Sets [`fail_send`](Faults::fail_send).
    #[must_use]
    pub fn fail_send(mut self, p: f64) -> Self {
        self.fail_send = p;
        self
    }

    /// Sets [`lose_confirm`](Faults::lose_confirm).
    #[must_use]
    pub fn lose_confirm(mut self, p: f64) -> Self {
        self.lose_confirm = p;
        self
    }

    /// Sets [`delay`](Faults::delay) and [`delay_ms`](Faults::delay_ms).
    #[must_use]
    pub fn delay(mut self, p: f64, max: Duration) -> Self {
        self.delay = p;
        self.delay_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Whether any fault may happen.
    pub fn any(&self) -> bool {
        [
            self.duplicate,
            self.redeliver,
            self.reorder,
            self.fail_send,
            self.lose_confirm,
            self.delay,
        ]
        .iter()
        .any(|p| *p > 0.0)
    }

    /// Checks every probability is in `[0, 1]`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the option.
    pub fn check(&self) -> Result<()> {
        for (name, p) in [
            ("duplicate", self.duplicate),
            ("redeliver", self.redeliver),
            ("reorder", self.reorder),
            ("fail_send", self.fail_send),
            ("lose_confirm", self.lose_confirm),
            ("delay", self.delay),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidOption {
                    backend: "memory",
                    option: name.into(),
                    reason: format!("a probability is between 0 and 1, not {p}"),
                });
            }
        }
        Ok(())
    }

    /// Reads the fault options of a `memory://` URL.
    pub(crate) fn from_url(url: &BrokerUrl) -> Result<Self> {
        let mut faults = Faults::default();
        if let Some(seed) = url.parse_option("memory", "seed")? {
            faults.seed = seed;
        }
        for (name, slot) in [
            ("duplicate", &mut faults.duplicate),
            ("redeliver", &mut faults.redeliver),
            ("reorder", &mut faults.reorder),
            ("fail_send", &mut faults.fail_send),
            ("lose_confirm", &mut faults.lose_confirm),
            ("delay", &mut faults.delay),
        ] {
            if let Some(p) = url.parse_option::<f64>("memory", name)? {
                *slot = p;
            }
        }
        if let Some(yes) = url.parse_option("memory", "reorder_across_keys")? {
            faults.reorder_across_keys = yes;
        }
        if let Some(ms) = url.parse_option("memory", "delay_ms")? {
            faults.delay_ms = ms;
        }
        faults.check()?;
        Ok(faults)
    }
}

/// How many faults of each kind a broker injected
/// ([`MemoryBroker::faults`](crate::MemoryBroker::faults)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FaultCounts {
    /// Deliveries handed out twice.
    pub duplicated: u64,
    /// Acks lost (the message came back).
    pub redelivered: u64,
    /// Deliveries handed out after a later one.
    pub reordered: u64,
    /// Sends that failed, storing nothing.
    pub failed_sends: u64,
    /// Sends stored whose confirm was lost.
    pub lost_confirms: u64,
    /// Deliveries held back.
    pub delayed: u64,
    /// Calls of [`MemoryBroker::restart`](crate::MemoryBroker::restart).
    pub restarts: u64,
}

/// The injector a broker shares with its producers and consumers.
#[derive(Debug)]
pub(crate) struct Injector {
    pub(crate) faults: Faults,
    /// Whether any probability is above 0: the only check on the hot paths.
    pub(crate) active: bool,
    rng: Rng,
    pub(crate) duplicated: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) reordered: AtomicU64,
    pub(crate) failed_sends: AtomicU64,
    pub(crate) lost_confirms: AtomicU64,
    pub(crate) delayed: AtomicU64,
    pub(crate) restarts: AtomicU64,
}

impl Default for Injector {
    fn default() -> Self {
        Injector::new(Faults::default())
    }
}

impl Injector {
    pub(crate) fn new(faults: Faults) -> Self {
        Injector {
            active: faults.any(),
            rng: Rng::seeded(faults.seed),
            faults,
            duplicated: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            failed_sends: AtomicU64::new(0),
            lost_confirms: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }

    /// Whether a fault of probability `p` happens now (draws only when `p > 0`).
    pub(crate) fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.next_f64() < p
    }

    /// A delay to hold a delivery back by, when one happens now.
    pub(crate) fn delay(&self) -> Option<Duration> {
        if !self.roll(self.faults.delay) {
            return None;
        }
        let ms = self.rng.next_u64() % self.faults.delay_ms.saturating_add(1);
        Some(Duration::from_millis(ms))
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> FaultCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultCounts {
            duplicated: get(&self.duplicated),
            redelivered: get(&self.redelivered),
            reordered: get(&self.reordered),
            failed_sends: get(&self.failed_sends),
            lost_confirms: get(&self.lost_confirms),
            delayed: get(&self.delayed),
            restarts: get(&self.restarts),
        }
    }

    /// The error an injected send failure returns.
    pub(crate) fn send_error(what: &str) -> Error {
        Error::Connection {
            backend: "memory",
            endpoint: "memory://".into(),
            reason: format!("injected fault: {what}"),
            source: None,
        }
    }
}
