//! Choosing a broker from configuration (TOML, env) instead of a URL string.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{BrokerUrl, Result};

/// A scalar option value from a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum OptionValue {
    /// A string.
    String(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::String(s) => f.write_str(s),
            OptionValue::Int(i) => write!(f, "{i}"),
            OptionValue::Float(x) => write!(f, "{x}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Broker configuration as data: a URL plus options, the same options the
/// URL query takes. Deserializes from TOML, JSON, env-based config crates...
///
/// ```toml
/// [mq]
/// url = "amqp://app@rabbit:5672/prod"
/// [mq.options]
/// prefetch = 200
/// ```
///
/// ```
/// let config: mq_core::MqConfig = serde_json::from_str(
///     r#"{"url": "memory://", "options": {"capacity": 500}}"#,
/// ).unwrap();
/// assert_eq!(config.to_url()?.option("capacity"), Some("500"));
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MqConfig {
    /// The broker URL. `Debug` shows it with the password redacted.
    pub url: String,
    /// Options, merged into the URL's query (they win over the query).
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
}

impl std::fmt::Debug for MqConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqConfig")
            .field("url", &crate::url::redact(&self.url))
            .field("options", &Redacted(&self.options))
            .finish()
    }
}

/// Options with the values of credentials shown as `***`.
struct Redacted<'a>(&'a BTreeMap<String, OptionValue>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown: &dyn std::fmt::Debug = if crate::url::is_secret_option(k) {
                    &"***"
                } else {
                    v
                };
                (k, shown)
            }))
            .finish()
    }
}

impl MqConfig {
    /// A config for `url` with no extra options.
    pub fn new(url: impl Into<String>) -> Self {
        MqConfig {
            url: url.into(),
            options: BTreeMap::new(),
        }
    }

    /// Reads `MQ_URL` from the environment, or `default` when it is unset or empty.
    pub fn from_env_or(default: &str) -> Self {
        match std::env::var("MQ_URL") {
            Ok(url) if !url.trim().is_empty() => MqConfig::new(url),
            _ => MqConfig::new(default),
        }
    }

    /// The URL with the options merged in.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl) when the URL does not parse.
    pub fn to_url(&self) -> Result<BrokerUrl> {
        let mut url = BrokerUrl::parse(&self.url)?;
        for (k, v) in &self.options {
            url.set_option(k.clone(), v.to_string());
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password() {
        let mut config = MqConfig::new("amqp://app:hunter2@h");
        config.options.insert(
            "rdkafka.sasl.password".into(),
            OptionValue::String("hunter3".into()),
        );
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter3") && shown.contains("sasl.password"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2") && shown.contains("app:***"), "{shown}");
    }

    #[test]
    fn options_override_query() {
        let mut config = MqConfig::new("memory://?capacity=1");
        config.options.insert("capacity".into(), OptionValue::Int(9));
        config.options.insert("flag".into(), OptionValue::Bool(true));
        let url = config.to_url().unwrap();
        assert_eq!(url.option("capacity"), Some("9"));
        assert_eq!(url.option("flag"), Some("true"));
    }
}
