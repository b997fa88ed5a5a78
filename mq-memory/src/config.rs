//! Settings of an in-memory broker, from code, a URL or serde.

use mq_core::{BrokerUrl, Error, Result};
use serde::Deserialize;

use crate::Faults;

/// Settings of a [`MemoryBroker`](crate::MemoryBroker).
///
/// From a URL: `memory://?capacity=5000&max_message_bytes=1048576`, plus
/// the [`Faults`] options (`memory://?seed=7&duplicate=0.1`).
///
/// ```
/// let config = mq_memory::MemoryConfig::default().capacity(500);
/// assert_eq!(config.capacity, 500);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// The most messages a topic retains. Messages every group has taken are
    /// dropped, oldest first, to make room (they are history for new groups
    /// starting at earliest); when the oldest one is still waiting for some
    /// group, the topic is full and `send` waits.
    pub capacity: usize,
    /// The largest message accepted, in bytes (payload, key, id and headers).
    pub max_message_bytes: usize,
    /// Faults to inject, for tests of handlers (none by default).
    pub faults: Faults,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            capacity: 10_000,
            max_message_bytes: 16 * 1024 * 1024,
            faults: Faults::default(),
        }
    }
}

impl MemoryConfig {
    /// The URL query options this backend knows (besides
    /// [`Faults::OPTIONS`]).
    pub const OPTIONS: &'static [&'static str] = &["capacity", "max_message_bytes"];

    /// Sets the per-topic capacity (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Injects `faults` (see [`Faults`]).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Sets the largest message accepted.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Reads a `memory://` URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for another scheme, a host, a path or
    /// credentials; [`Error::UnknownOption`] and [`Error::InvalidOption`] for
    /// bad options.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.scheme() != "memory" {
            return Err(invalid("the memory backend takes `memory://` URLs"));
        }
        if !url.hosts().is_empty() || !url.path().is_empty() || url.username().is_some() {
            return Err(invalid(
                "`memory://` takes no host, path or credentials: every connect makes a new, independent broker",
            ));
        }
        let known: Vec<&str> = Self::OPTIONS.iter().chain(Faults::OPTIONS).copied().collect();
        url.check_options("memory", &known, &[])?;
        let mut config = MemoryConfig::default();
        if let Some(capacity) = url.parse_option::<usize>("memory", "capacity")? {
            if capacity == 0 {
                return Err(Error::InvalidOption {
                    backend: "memory",
                    option: "capacity".into(),
                    reason: "must be at least 1".into(),
                });
            }
            config.capacity = capacity;
        }
        if let Some(bytes) = url.parse_option("memory", "max_message_bytes")? {
            config.max_message_bytes = bytes;
        }
        config.faults = Faults::from_url(url)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<MemoryConfig> {
        MemoryConfig::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn reads_options() {
        let c = parse("memory://?capacity=5&max_message_bytes=100").unwrap();
        assert_eq!((c.capacity, c.max_message_bytes), (5, 100));
        assert_eq!(parse("memory://").unwrap(), MemoryConfig::default());
    }

    #[test]
    fn rejects_bad_input() {
        let unknown = parse("memory://?capcity=5").unwrap_err();
        assert!(matches!(unknown, Error::UnknownOption { .. }), "{unknown}");
        assert!(unknown.to_string().contains("capacity, max_message_bytes"));
        assert!(matches!(
            parse("memory://?capacity=0").unwrap_err(),
            Error::InvalidOption { .. }
        ));
        assert!(matches!(
            parse("memory://?capacity=-1").unwrap_err(),
            Error::InvalidOption { .. }
        ));
        let host = parse("memory://somewhere").unwrap_err();
        assert!(host.to_string().contains("no host"), "{host}");
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let c: MemoryConfig = serde_json_like(r#"{"capacity": 7}"#).unwrap();
        assert_eq!(c.capacity, 7);
        assert_eq!(c.max_message_bytes, MemoryConfig::default().max_message_bytes);
        assert!(serde_json_like(r#"{"capasity": 7}"#).is_err());
    }

    fn serde_json_like(s: &str) -> std::result::Result<MemoryConfig, String> {
        // mq-memory has no JSON dependency; go through mq-core's config type.
        let config: mq_core::MqConfig =
            serde_json::from_str(&format!(r#"{{"url": "memory://", "options": {s}}}"#))
                .map_err(|e| e.to_string())?;
        let url = config.to_url().map_err(|e| e.to_string())?;
        MemoryConfig::from_url(&url).map_err(|e| e.to_string())
    }
}
