//! Every log line and span a process emits through `tracing`, at every
//! level, kept as text: for tests that a secret never reaches a log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A `tracing` subscriber that enables everything (TRACE included) and
/// keeps each event and span, with all their fields, as a line of text
/// (also printed to stderr when `MQ_TEST_ECHO_LOGS` is set).
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs {
    lines: Arc<Mutex<Vec<String>>>,
    next_span: Arc<AtomicU64>,
}

impl CapturedLogs {
    /// The process's capture: installed as the global subscriber on the
    /// first call, the same one after.
    ///
    /// # Panics
    ///
    /// When the process has another global subscriber: run the tests that
    /// use this in a test binary of their own.
    pub fn global() -> CapturedLogs {
        static GLOBAL: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let capture = CapturedLogs::default();
                #[allow(clippy::expect_used)]
                tracing::subscriber::set_global_default(capture.clone())
                    .expect("no other global tracing subscriber in this test binary");
                capture
            })
            .clone()
    }

    /// The lines captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many captured lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Reports how many lines were captured and asserts none holds any of
    /// `secrets` nor lacks a line with `proof` (a sign that the client
    /// library's own logs were captured, else the check proves nothing).
    pub fn assert_never_show(&self, what: &str, secrets: &[&str], proof: &str) {
        let lines = self.lines();
        let leaks: Vec<&String> = lines
            .iter()
            .filter(|l| secrets.iter().any(|s| !s.is_empty() && l.contains(s)))
            .collect();
        super::report(&format!(
            "{what}: {} log lines captured at TRACE, a secret in {} of them",
            lines.len(),
            leaks.len()
        ));
        assert!(leaks.is_empty(), "{what}: a secret shows in log lines: {leaks:?}");
        assert!(
            lines.iter().any(|l| l.contains(proof)),
            "{what}: no captured line holds `{proof}` (else this check proves nothing)"
        );
    }

    fn push(&self, line: String) {
        // For a test that dies where nothing can read what it kept.
        if std::env::var_os("MQ_TEST_ECHO_LOGS").is_some() {
            eprintln!("{line}");
        }
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
}

/// Writes every field as ` name=value`.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl Subscriber for CapturedLogs {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut text = Text(format!(
            "span {} {}",
            span.metadata().target(),
            span.metadata().name()
        ));
        span.record(&mut text);
        self.push(text.0);
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).saturating_add(1))
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut text = Text("record".into());
        values.record(&mut text);
        self.push(text.0);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut text = Text(format!("{} {}", meta.level(), meta.target()));
        event.record(&mut text);
        self.push(text.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
