//! Helpers for backend authors: the handle a delivery settles through
//! ([`AckHandle`], with [`Delivery::new`](crate::Delivery::new)), the checks
//! every send makes ([`check_send`], [`NameLimits`]), dead-letter copies
//! ([`dead_letter_message`]), reading what arrives off the wire without
//! trusting it, and closing producers ([`SendGate`]).
//!
//! Applications do not need this module.

pub use crate::delivery::{AckHandle, attempts_exhausted_reason, dead_letter_message};
pub use crate::producer::check_send;
pub use crate::rng::Rng;
use crate::{Error, Message, Result, Subscription};

/// The attempt count a message carries in a header or field, read without
/// trusting it: missing, empty, negative, non-numeric or zero values are
/// attempt 1; values past `u32::MAX` are `u32::MAX` (so a message that
/// claims a huge count is dead-lettered as soon as it fails, never
/// wrapped around to a first attempt).
///
/// ```
/// use mq_core::backend::parse_attempt;
/// assert_eq!(parse_attempt(b"3"), 3);
/// assert_eq!(parse_attempt(b"99999999999999999999"), u32::MAX);
/// assert_eq!(parse_attempt(b"-2"), 1);
/// assert_eq!(parse_attempt(b"\xff"), 1);
/// ```
pub fn parse_attempt(value: &[u8]) -> u32 {
    let Ok(text) = std::str::from_utf8(value) else {
        return 1;
    };
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return 1;
    }
    // All digits: too long for u64 still means "very large".
    let n = text.parse::<u64>().unwrap_or(u64::MAX);
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// The attempt of a redelivery: `stored` (from the message) plus the
/// broker's count of earlier deliveries, saturating.
pub fn add_attempts(stored: u32, earlier_deliveries: u64) -> u32 {
    let extra = u32::try_from(earlier_deliveries).unwrap_or(u32::MAX);
    stored.saturating_add(extra).max(1)
}

/// The text a panic carried (`panic!("...")` gives a `&str` or a
/// `String`), for an error that names it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into())
}

/// The longest names a broker accepts, in bytes (`usize::MAX`: no limit).
///
/// A backend checks them before the network with
/// [`check_subscription`](NameLimits::check_subscription) and
/// [`check_send`](NameLimits::check_send), so a name over the limit is an
/// [`Error::InvalidOption`] naming the field and the limit, never a panic
/// in a client library or a refusal after a round trip.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct NameLimits {
    /// A topic name.
    pub topic: usize,
    /// A topic and group together (the backend's names built from both,
    /// less the topic's and the group's own lengths).
    pub subscription: usize,
    /// A message id.
    pub id: usize,
    /// A header name.
    pub header_name: usize,
    /// The characters topic and group names may hold, where the broker
    /// restricts them.
    pub charset: Option<Charset>,
}

/// The characters a broker allows in names.
#[derive(Debug, Clone, Copy)]
pub struct Charset {
    /// The allowed characters in words, for error messages.
    pub describe: &'static str,
    /// Whether a character is allowed.
    pub allowed: fn(char) -> bool,
}

impl NameLimits {
    /// No limits.
    pub const NONE: NameLimits = NameLimits {
        topic: usize::MAX,
        subscription: usize::MAX,
        id: usize::MAX,
        header_name: usize::MAX,
        charset: None,
    };

    /// Limits on topic names, topic and group together, ids and header names.
    pub const fn new(topic: usize, subscription: usize, id: usize, header_name: usize) -> Self {
        NameLimits {
            topic,
            subscription,
            id,
            header_name,
            charset: None,
        }
    }

    /// The same limits, with topic and group names restricted to `charset`.
    pub const fn with_charset(mut self, charset: Charset) -> Self {
        self.charset = Some(charset);
        self
    }

    fn check_chars(&self, backend: &'static str, what: &str, name: &str) -> Result<()> {
        let Some(charset) = self.charset else {
            return Ok(());
        };
        match name.chars().find(|c| !(charset.allowed)(*c)) {
            None => Ok(()),
            Some(c) => Err(invalid(
                backend,
                what,
                format!(
                    "`{}` holds {c:?}; {backend} allows only {} in {what} names",
                    shorten(name),
                    charset.describe
                ),
            )),
        }
    }

    /// Checks a topic name: not empty, within the limit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming `topic` and the limit.
    pub fn check_topic(&self, backend: &'static str, topic: &str) -> Result<()> {
        if topic.is_empty() {
            return Err(invalid(backend, "topic", "the topic name is empty".into()));
        }
        within(backend, "topic", topic, self.topic)?;
        self.check_chars(backend, "topic", topic)
    }

    /// Checks a subscription's topic and group (the topic and group alone
    /// and together, for the names the backend builds from them).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming `topic` or `group` and the limit.
    pub fn check_subscription(&self, backend: &'static str, sub: &Subscription) -> Result<()> {
        sub.validate(backend)?;
        self.check_topic(backend, &sub.topic)?;
        self.check_chars(backend, "group", &sub.group)?;
        let together = sub.topic.len().saturating_add(sub.group.len());
        if together > self.subscription {
            return Err(invalid(
                backend,
                "group",
                format!(
                    "topic `{}` and group `{}` are {together} bytes together; {backend} allows at most {}",
                    shorten(&sub.topic),
                    shorten(&sub.group),
                    self.subscription
                ),
            ));
        }
        within(backend, "dead_letter", &sub.dead_letter_topic(), self.topic)
    }

    /// Checks the topic, and every message's id and header names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the field and the limit.
    pub fn check_send(&self, backend: &'static str, topic: &str, messages: &[Message]) -> Result<()> {
        self.check_topic(backend, topic)?;
        for m in messages {
            within(backend, "id", &m.id, self.id)?;
            for name in m.headers.keys() {
                within(backend, "header name", name, self.header_name)?;
            }
        }
        Ok(())
    }
}

fn invalid(backend: &'static str, option: &str, reason: String) -> Error {
    Error::InvalidOption {
        backend,
        option: option.into(),
        reason,
    }
}

fn within(backend: &'static str, what: &str, name: &str, limit: usize) -> Result<()> {
    if name.len() <= limit {
        return Ok(());
    }
    Err(invalid(
        backend,
        what,
        format!(
            "`{}` is {} bytes; {backend} allows at most {limit}",
            shorten(name),
            name.len()
        ),
    ))
}

/// The first 40 characters of a long name, for an error message.
fn shorten(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &name[..at]),
        None => name.to_string(),
    }
}

/// What a producer's `close` needs: sends in flight are counted, `close`
/// refuses new ones and waits for those in flight.
///
/// Each send holds a [`SendPass`] from [`enter`](SendGate::enter) while it
/// runs. [`close`](SendGate::close) is cancel safe: once called (even if
/// dropped before it returns), new sends are refused.
///
/// ```
/// # async fn run() {
/// use mq_core::backend::SendGate;
/// let gate = SendGate::new("memory producer");
/// let pass = gate.enter().expect("open");
/// drop(pass); // the send ended
/// gate.close().await;
/// assert!(matches!(gate.enter(), Err(mq_core::Error::Closed { .. })));
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(run());
/// ```
#[derive(Debug)]
pub struct SendGate {
    what: &'static str,
    closed: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    closing: tokio::sync::Notify,
}

/// A send in flight (see [`SendGate::enter`]); the send ends when it drops.
#[derive(Debug)]
pub struct SendPass<'a>(&'a SendGate);

impl SendGate {
    /// An open gate; `what` names the producer in the `Closed` error.
    pub fn new(what: &'static str) -> Self {
        SendGate {
            what,
            closed: std::sync::atomic::AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            closing: tokio::sync::Notify::new(),
        }
    }

    /// Lets a send in, unless the gate was closed.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once [`close`](SendGate::close) was called.
    pub fn enter(&self) -> Result<SendPass<'_>> {
        use std::sync::atomic::Ordering;
        // Counted first, then checked: `close` sets the flag first, then
        // reads the count, so either it waits for this send or the send sees
        // the flag.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let pass = SendPass(self);
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::closed(self.what));
        }
        Ok(pass)
    }

    /// Whether [`close`](SendGate::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once [`close`](SendGate::close) was called: a send that
    /// waits (for room, say) selects on it, so that `close` does not wait
    /// on it for good.
    pub async fn closing(&self) {
        loop {
            let closing = self.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if self.is_closed() {
                return;
            }
            closing.await;
        }
    }

    /// Refuses new sends, then waits until none is in flight.
    pub async fn close(&self) {
        use std::sync::atomic::Ordering;
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for SendPass<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.closed.load(Ordering::SeqCst) {
            self.0.idle.notify_waiters();
        }
    }
}

/// The body of [`Consumer::recv_many`](crate::Consumer::recv_many), for a
/// backend that can take deliveries already fetched without a future each:
/// waits (at most `wait`) for the first through `recv`, then calls
/// `take_ready` until `max` are taken or it says none is ready (`None`).
/// An error from `take_ready` ends the batch early: what was taken is
/// returned and the error logged at WARN, as the default `recv_many` does
/// (which is this, taking with `recv` polled once).
///
/// # Errors
///
/// `recv`'s error, when it comes before any delivery.
pub async fn recv_many_with<C: crate::Consumer + ?Sized>(
    consumer: &mut C,
    max: usize,
    wait: std::time::Duration,
    mut take_ready: impl FnMut(&mut C) -> Option<Result<crate::Delivery>> + Send,
) -> Result<Option<Vec<crate::Delivery>>> {
    let mut batch = Vec::new();
    if max == 0 {
        return Ok(Some(batch));
    }
    match tokio::time::timeout(wait, consumer.recv()).await {
        Err(_) => return Ok(Some(batch)),
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Some(first))) => batch.push(first),
    }
    while batch.len() < max {
        match take_ready(consumer) {
            Some(Ok(delivery)) => batch.push(delivery),
            Some(Err(e)) => {
                tracing::warn!(error = %e, taken = batch.len(), "recv_many: an error ended the batch early");
                break;
            }
            None => break,
        }
    }
    Ok(Some(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_closes_after_the_sends_in_flight() {
        use std::sync::Arc;
        let gate = Arc::new(SendGate::new("test producer"));
        let pass = gate.enter().expect("open");
        let closing = tokio::spawn({
            let gate = gate.clone();
            async move { gate.close().await }
        });
        // The waiter for `closing` and the close itself see it.
        tokio::time::timeout(std::time::Duration::from_secs(5), gate.closing())
            .await
            .expect("closing() resolves once close was called");
        assert!(
            matches!(gate.enter(), Err(Error::Closed { .. })),
            "no send after close"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!closing.is_finished(), "close returned with a send in flight");
        drop(pass);
        tokio::time::timeout(std::time::Duration::from_secs(5), closing)
            .await
            .expect("close returns once the send ended")
            .expect("close task");
        gate.close().await;
    }

    #[test]
    fn attempts_from_the_wire_never_overflow() {
        assert_eq!(parse_attempt(b""), 1);
        assert_eq!(parse_attempt(b"0"), 1);
        assert_eq!(parse_attempt(b" 7 "), 7);
        assert_eq!(parse_attempt(b"4294967295"), u32::MAX);
        assert_eq!(parse_attempt(b"4294967296"), u32::MAX);
        assert_eq!(parse_attempt(b"1e3"), 1);
        assert_eq!(add_attempts(u32::MAX, 5), u32::MAX);
        assert_eq!(add_attempts(3, u64::MAX), u32::MAX);
        assert_eq!(add_attempts(2, 1), 3);
    }

    #[test]
    fn names_over_the_limit_name_the_field_and_the_limit() {
        let limits = NameLimits::new(10, 12, 5, 3);
        let err = limits.check_topic("b", &"t".repeat(11)).unwrap_err().to_string();
        assert!(
            err.contains("`topic`") && err.contains("11 bytes") && err.contains("at most 10"),
            "{err}"
        );
        assert!(limits.check_topic("b", "").is_err());
        assert!(limits.check_topic("b", &"t".repeat(10)).is_ok());

        let err = limits
            .check_subscription("b", &Subscription::new("topic", "group-xx"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`group`") && err.contains("13 bytes together"),
            "{err}"
        );
        assert!(
            limits
                .check_subscription("b", &Subscription::new("tt", "g"))
                .is_ok()
        );

        let long_id = Message::new("x").with_id("123456");
        let err = limits.check_send("b", "t", &[long_id]).unwrap_err().to_string();
        assert!(err.contains("`id`") && err.contains("at most 5"), "{err}");
        let header = Message::new("x").with_id("1").with_header("abcd", "v");
        let err = limits.check_send("b", "t", &[header]).unwrap_err().to_string();
        assert!(err.contains("header name") && err.contains("at most 3"), "{err}");

        let long = "ü".repeat(100);
        let err = NameLimits::new(10, 10, 10, 10)
            .check_topic("b", &long)
            .unwrap_err()
            .to_string();
        assert!(err.contains("200 bytes") && err.len() < 200, "{err}");

        let kafka = NameLimits::new(249, 242, usize::MAX, usize::MAX).with_charset(Charset {
            describe: "ASCII letters, digits, `.`, `_` and `-`",
            allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
        });
        let err = kafka.check_topic("kafka", "orders/eu").unwrap_err().to_string();
        assert!(err.contains("'/'") && err.contains("ASCII letters"), "{err}");
        let err = kafka
            .check_subscription("kafka", &Subscription::new("orders", "billing team"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`group`") && err.contains("' '"), "{err}");
        assert!(
            kafka
                .check_subscription("kafka", &Subscription::new("orders.eu", "billing_1"))
                .is_ok()
        );
    }
}
