//! One configuration for a whole service (feature `service-config`): the
//! broker, and per route the subscription and the handler's settings, with
//! defaults, read from a TOML file and overridden by environment variables
//! with a prefix, through `figment`.
//!
//! ```toml
//! grace_ms = 30000                  # how long shutdown waits for handlers
//!
//! [broker]
//! url = "redis://127.0.0.1:6379"    # MqConfig: a URL and its options
//! options = { max_len = 100000 }
//!
//! [routes.orders]                   # a route, named; its handler is given in code
//! topic = "orders"
//! group = "shipping"
//! start = "earliest"                # or "latest" (the default)
//! prefetch = 100
//! ack_timeout_ms = 30000
//! max_attempts = 5                  # the one count of attempts
//! dead_letter_topic = "orders.dlq"
//! concurrency = 8
//! timeout_ms = 5000
//! retry = { initial_ms = 100, max_ms = 30000, multiplier = 2.0, jitter = 0.2 }
//! ```
//!
//! With prefix `MQ_`, `MQ_BROKER__URL=amqp://...` (or `MQ_URL`) and
//! `MQ_ROUTES__ORDERS__CONCURRENCY=16` override the file (a double
//! underscore separates the levels; other `MQ_` variables, such as
//! `MQ_TEST_REDIS_URL`, are not read). A key the structure does not have is
//! an error naming it and the keys it knows; a bad value is an error naming
//! its key. `Debug` shows the broker's password and secret options as
//! `***`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::worker::{Handler, Route, Router};
use crate::{Broker, Error, MqConfig, Registry, Result, StartPosition, Subscription};

/// A whole service's settings; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The broker: a URL and options.
    #[serde(default = "default_broker")]
    pub broker: MqConfig,
    /// How long shutdown waits for each route's handlers, in milliseconds.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// The routes, by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

fn default_broker() -> MqConfig {
    MqConfig::new("memory://")
}

fn default_grace_ms() -> u64 {
    30_000
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            broker: default_broker(),
            grace_ms: default_grace_ms(),
            routes: BTreeMap::new(),
        }
    }
}

/// Where a new group starts, as the configuration spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// From the oldest message the broker holds.
    Earliest,
    /// From the messages sent after subscribing.
    #[default]
    Latest,
}

/// One route: its subscription and its handler's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// Where a new group starts.
    #[serde(default)]
    pub start: Start,
    /// The most unsettled deliveries at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// How long a delivery may stay unsettled before it is redelivered, in
    /// milliseconds (where the backend does that).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Deliveries of one message before it is dead-lettered: the one count
    /// of attempts (the retry policy has none of its own).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Where dead letters go; `{topic}.dlq` when not set.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Handlers of this route at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A handler running longer fails, in milliseconds; none when not set.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The delays between attempts.
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_prefetch() -> usize {
    Subscription::DEFAULT_PREFETCH
}

fn default_ack_timeout_ms() -> u64 {
    u64::try_from(Subscription::DEFAULT_ACK_TIMEOUT.as_millis()).unwrap_or(u64::MAX)
}

fn default_max_attempts() -> u32 {
    Subscription::DEFAULT_MAX_ATTEMPTS
}

fn default_concurrency() -> usize {
    1
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// The first delay, in milliseconds.
    #[serde(default = "default_initial_ms")]
    pub initial_ms: u64,
    /// The longest delay, in milliseconds.
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
    /// Each delay is the last times this.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// A random part of each delay, 0 to 1.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_initial_ms() -> u64 {
    100
}

fn default_max_ms() -> u64 {
    30_000
}

fn default_multiplier() -> f64 {
    2.0
}

fn default_jitter() -> f64 {
    0.2
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_ms: default_initial_ms(),
            max_ms: default_max_ms(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

impl RetryConfig {
    /// The policy: no count of its own (the subscription's max attempts
    /// stops it).
    pub fn policy(&self) -> Arc<dyn RetryPolicy> {
        Arc::new(
            ExponentialBackoff::new(Duration::from_millis(self.initial_ms))
                .max_delay(Duration::from_millis(self.max_ms))
                .multiplier(self.multiplier)
                .jitter(self.jitter)
                .max_attempts(u32::MAX),
        )
    }
}

impl RouteConfig {
    /// The subscription.
    pub fn subscription(&self) -> Subscription {
        let mut sub = Subscription::new(&self.topic, &self.group)
            .start(match self.start {
                Start::Earliest => StartPosition::Earliest,
                Start::Latest => StartPosition::Latest,
            })
            .prefetch(self.prefetch)
            .ack_timeout(Duration::from_millis(self.ack_timeout_ms))
            .max_attempts(self.max_attempts);
        if let Some(dlq) = &self.dead_letter_topic {
            sub = sub.dead_letter_to(dlq);
        }
        sub
    }

    /// The route of `handler` with these settings.
    pub fn route(&self, handler: impl Handler) -> Route {
        let mut route = Route::new(self.subscription(), handler)
            .concurrency(self.concurrency)
            .retry(self.retry.policy());
        if let Some(ms) = self.timeout_ms {
            route = route.timeout(Duration::from_millis(ms));
        }
        route
    }

    fn check(&self, name: &str) -> Result<()> {
        let bad = |option: &str, reason: &str| Error::InvalidOption {
            backend: "config",
            option: format!("routes.{name}.{option}"),
            reason: reason.into(),
        };
        if self.concurrency == 0 {
            return Err(bad("concurrency", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return Err(bad("retry.jitter", "must be between 0 and 1"));
        }
        if !self.retry.multiplier.is_finite() || self.retry.multiplier < 1.0 {
            return Err(bad("retry.multiplier", "must be a number of at least 1"));
        }
        self.subscription().validate("config")
    }
}

/// The variables of the environment that start with `prefix`: `{prefix}URL`
/// is the broker's URL (as `MqConfig::from_env_or` reads `MQ_URL`); of the
/// others, only those under a key of the structure (`BROKER__`,
/// `GRACE_MS`, `ROUTES__`) are read, so that unrelated variables with the
/// same prefix (`MQ_TEST_...`) are not taken for misspelt keys. Under those
/// keys, an unknown name is an error.
fn env(prefix: &str) -> Env {
    Env::prefixed(prefix)
        .split("__")
        .map(|key| {
            if key == "url" {
                "broker.url".into()
            } else {
                key.into()
            }
        })
        .filter(|key| {
            // Uncased: the key keeps the variable's case here.
            let first = key
                .as_str()
                .split('.')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            matches!(first.as_str(), "broker" | "grace_ms" | "routes")
        })
}

impl ServiceConfig {
    /// Reads the defaults, then the TOML file at `path` (if given; it must
    /// exist), then the environment variables that start with `prefix`
    /// (`MQ_` gives `MQ_BROKER__URL`, `MQ_ROUTES__ORDERS__CONCURRENCY`),
    /// each over the last, and checks the result.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] (backend `config`) naming the key: an
    /// unknown key (with the keys known there), a value of the wrong type,
    /// a value out of range, a missing file.
    pub fn load(path: Option<&Path>, prefix: &str) -> Result<ServiceConfig> {
        let mut figment = Figment::from(Serialized::defaults(ServiceConfig::default()));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(Error::InvalidOption {
                    backend: "config",
                    option: "file".into(),
                    reason: format!("no configuration file at `{}`", path.display()),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::extract(figment.merge(env(prefix)))
    }

    /// As [`load`](ServiceConfig::load), from TOML text instead of a file.
    ///
    /// # Errors
    ///
    /// As [`load`](ServiceConfig::load).
    pub fn from_toml(toml: &str, prefix: &str) -> Result<ServiceConfig> {
        let figment = Figment::from(Serialized::defaults(ServiceConfig::default()))
            .merge(Toml::string(toml))
            .merge(env(prefix));
        Self::extract(figment)
    }

    fn extract(figment: Figment) -> Result<ServiceConfig> {
        let config: ServiceConfig = figment.extract().map_err(|errors| {
            let first = errors.into_iter().next();
            match first {
                Some(e) => Error::InvalidOption {
                    backend: "config",
                    option: if e.path.is_empty() {
                        "(top level)".into()
                    } else {
                        e.path.join(".")
                    },
                    // The value is not repeated: it may be a secret.
                    reason: e.kind.to_string(),
                },
                None => Error::InvalidOption {
                    backend: "config",
                    option: "(top level)".into(),
                    reason: "the configuration could not be read".into(),
                },
            }
        })?;
        for (name, route) in &config.routes {
            route.check(name)?;
        }
        config.broker.to_url()?;
        Ok(config)
    }

    /// The route named `name`, for `handler`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] when the configuration has no such route
    /// (naming the routes it has).
    pub fn route(&self, name: &str, handler: impl Handler) -> Result<Route> {
        match self.routes.get(name) {
            Some(route) => Ok(route.route(handler)),
            None => Err(Error::InvalidOption {
                backend: "config",
                option: format!("routes.{name}"),
                reason: format!(
                    "no such route; the configuration has: {}",
                    self.routes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// Connects the broker through `registry`.
    ///
    /// # Errors
    ///
    /// As [`Registry::connect_config`].
    pub async fn connect(&self, registry: &Registry) -> Result<Arc<dyn Broker>> {
        registry.connect_config(&self.broker).await
    }

    /// A router on `broker` with this configuration's grace period (add
    /// the routes with [`route`](ServiceConfig::route)).
    pub fn router(&self, broker: Arc<dyn Broker>) -> Router {
        Router::new(broker).grace(Duration::from_millis(self.grace_ms))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's error
mod tests {
    use super::*;

    const FILE: &str = r#"
grace_ms = 5000

[broker]
url = "redis://:hunter2@127.0.0.1:6379/3"
options = { max_len = 1000, password = "s3cret" }

[routes.orders]
topic = "orders"
group = "shipping"
start = "earliest"
max_attempts = 5
concurrency = 8
timeout_ms = 2000
retry = { initial_ms = 50 }

[routes.audit]
topic = "orders"
group = "audit"
"#;

    #[test]
    fn a_file_and_the_environment_make_the_settings() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("service.toml", FILE)?;
            jail.set_env("MQT_ROUTES__ORDERS__CONCURRENCY", "16");
            jail.set_env("MQT_ROUTES__AUDIT__PREFETCH", "7");
            jail.set_env("MQT_GRACE_MS", "100");
            jail.set_env("MQT_URL", "redis://:hunter2@127.0.0.1:6379/4");
            jail.set_env("MQT_TEST_SOMETHING", "not a key of the configuration");
            let config = ServiceConfig::load(Some(Path::new("service.toml")), "MQT_").expect("load");
            assert_eq!(config.grace_ms, 100, "the environment wins over the file");
            let orders = &config.routes["orders"];
            assert_eq!(
                (
                    orders.concurrency,
                    orders.max_attempts,
                    orders.timeout_ms,
                    orders.start
                ),
                (16, 5, Some(2000), Start::Earliest)
            );
            assert_eq!(orders.retry.initial_ms, 50);
            assert_eq!(
                orders.retry.max_ms, 30_000,
                "defaults fill what the file leaves out"
            );
            let audit = &config.routes["audit"];
            assert_eq!(
                (audit.prefetch, audit.concurrency, audit.max_attempts),
                (7, 1, 10)
            );
            let sub = orders.subscription();
            assert_eq!((sub.max_attempts, sub.start), (Some(5), StartPosition::Earliest));
            assert_eq!(sub.dead_letter_topic(), "orders.dlq");
            assert!(config.broker.url.ends_with("/4"), "MQT_URL is the broker's URL");
            let shown = format!("{config:?}");
            assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        figment::Jail::expect_with(|jail| {
            let typo = ServiceConfig::from_toml(
                "[routes.orders]\ntopic = \"o\"\ngroup = \"g\"\nconcurency = 4\n",
                "MQT_",
            )
            .expect_err("a typo");
            let text = typo.to_string();
            assert!(
                text.contains("concurency") && text.contains("concurrency"),
                "{text}"
            );
            assert!(text.contains("routes.orders"), "{text}");

            let wrong_type = ServiceConfig::from_toml(
                "[routes.orders]\ntopic = \"o\"\ngroup = \"g\"\nprefetch = \"lots\"\n",
                "MQT_",
            )
            .expect_err("a string for a number");
            assert!(
                wrong_type.to_string().contains("routes.orders.prefetch"),
                "{wrong_type}"
            );

            let zero = ServiceConfig::from_toml(
                "[routes.orders]\ntopic = \"o\"\ngroup = \"g\"\nconcurrency = 0\n",
                "MQT_",
            )
            .expect_err("no handler at all");
            assert!(zero.to_string().contains("routes.orders.concurrency"), "{zero}");

            let missing =
                ServiceConfig::from_toml("[routes.orders]\ntopic = \"o\"\n", "MQT_").expect_err("no group");
            assert!(missing.to_string().contains("group"), "{missing}");

            jail.set_env("MQT_ROUTES__ORDERS__CONCURENCY", "4");
            let typo_env =
                ServiceConfig::from_toml("[routes.orders]\ntopic = \"o\"\ngroup = \"g\"\n", "MQT_")
                    .expect_err("a typo in an environment variable under a known key");
            assert!(typo_env.to_string().contains("concurency"), "{typo_env}");

            let no_file = ServiceConfig::load(Some(Path::new("nowhere.toml")), "MQT_").expect_err("no file");
            assert!(no_file.to_string().contains("nowhere.toml"), "{no_file}");
            Ok(())
        });
    }

    #[test]
    fn a_route_not_in_the_configuration_is_named_with_those_that_are() {
        let config = ServiceConfig::from_toml("[routes.orders]\ntopic = \"o\"\ngroup = \"g\"\n", "MQT_NONE_")
            .expect("config");
        let err = config
            .route("ordres", |_job: crate::worker::Job| async {
                crate::worker::HandlerResult::Ok(vec![])
            })
            .expect_err("a typo in the code");
        assert!(err.to_string().contains("orders"), "{err}");
    }
}
