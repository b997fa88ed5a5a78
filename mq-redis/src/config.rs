//! Settings of a Redis Streams broker, from a URL or serde.

use std::time::Duration;

use mq_core::{BrokerUrl, Error, Result, Secret};
use serde::Deserialize;

/// Where and how to connect, from a `redis://` or `rediss://` URL:
/// `redis://[user][:password]@host[:port][/db][?option=value...]`.
///
/// Options (also settable through [`mq_core::MqConfig`]'s `options`):
///
/// | option | meaning | default |
/// |---|---|---|
/// | `prefix` | prefix of every key mq creates | `mq:` |
/// | `max_len` | trim streams to about this many entries (`XADD MAXLEN ~`) | none |
/// | `block_ms` | longest a blocking read waits before housekeeping | 1000 |
/// | `batch` | most entries one read fetches (`XREADGROUP COUNT`) | 100 |
/// | `claim_interval_ms` | how often consumers reclaim idle entries and move due delayed ones | 250 |
/// | `max_message_bytes` | largest message accepted | 67108864 |
/// | `connect_timeout_ms` | time to connect (each try) | 5000 |
/// | `response_timeout_ms` | time for a reply, except blocking reads | 5000 |
/// | `retries` | tries again after a lost connection, per command | 5 |
///
/// ```
/// let url: mq_core::BrokerUrl = "redis://:pw@127.0.0.1:6379/2?max_len=1000".parse()?;
/// let config = mq_redis::RedisConfig::from_url(&url)?;
/// assert_eq!(config.options.max_len, Some(1000));
/// assert_eq!(config.db, 2);
/// assert!(!format!("{config:?}").contains("pw"));
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `true` for `rediss://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (6379 when absent).
    pub port: u16,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Database number.
    pub db: i64,
    /// Tuning options.
    pub options: RedisOptions,
}

/// The tuning options of [`RedisConfig`]; serde reads them with these
/// names, rejecting unknown ones.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key mq creates.
    pub prefix: String,
    /// Approximate stream length cap (`MAXLEN ~`); `None`: no trimming.
    pub max_len: Option<usize>,
    /// Longest a blocking read waits, in milliseconds.
    pub block_ms: u64,
    /// Most entries one read fetches.
    pub batch: usize,
    /// How often consumers reclaim idle entries and move due delayed ones, in milliseconds.
    pub claim_interval_ms: u64,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Time to connect, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time for a reply (blocking reads excepted), in milliseconds.
    pub response_timeout_ms: u64,
    /// Tries again after a lost connection, per command.
    pub retries: u32,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "mq:".into(),
            max_len: None,
            block_ms: 1000,
            batch: 100,
            claim_interval_ms: 250,
            max_message_bytes: 64 * 1024 * 1024,
            connect_timeout_ms: 5000,
            response_timeout_ms: 5000,
            retries: 5,
        }
    }
}

impl RedisOptions {
    /// The option names.
    pub const NAMES: &'static [&'static str] = &[
        "prefix",
        "max_len",
        "block_ms",
        "batch",
        "claim_interval_ms",
        "max_message_bytes",
        "connect_timeout_ms",
        "response_timeout_ms",
        "retries",
    ];

    pub(crate) fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms.max(1))
    }

    pub(crate) fn claim_interval(&self) -> Duration {
        Duration::from_millis(self.claim_interval_ms.max(10))
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms.max(1))
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("endpoint", &self.endpoint())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("options", &self.options)
            .finish()
    }
}

impl RedisConfig {
    /// Reads a `redis://` or `rediss://` URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for another scheme, several hosts, or a path
    /// that is not a database number; [`Error::UnknownOption`] and
    /// [`Error::InvalidOption`] for bad options.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(format!(
                    "the redis backend takes redis:// or rediss://, not {other}://"
                )));
            }
        };
        let (host, port) = match url.hosts() {
            [] => ("127.0.0.1".to_string(), 6379),
            [one] => (one.host.clone(), one.port.unwrap_or(6379)),
            _ => return Err(invalid("give one Redis host (cluster is not supported)".into())),
        };
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db
                .parse::<i64>()
                .map_err(|_| invalid(format!("the path `/{db}` must be a database number")))?,
        };
        url.check_options("redis", RedisOptions::NAMES, &[])?;
        let mut options = RedisOptions::default();
        if let Some(v) = url.option("prefix") {
            options.prefix = v.to_string();
        }
        options.max_len = url.parse_option("redis", "max_len")?;
        macro_rules! number {
            ($name:ident) => {
                if let Some(v) = url.parse_option("redis", stringify!($name))? {
                    options.$name = v;
                }
            };
        }
        number!(block_ms);
        number!(batch);
        number!(claim_interval_ms);
        number!(max_message_bytes);
        number!(connect_timeout_ms);
        number!(response_timeout_ms);
        number!(retries);
        if options.batch == 0 {
            return Err(Error::InvalidOption {
                backend: "redis",
                option: "batch".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(RedisConfig {
            tls,
            host,
            port,
            username: url.username().map(str::to_string),
            password: url.password().cloned(),
            db,
            options,
        })
    }

    /// `host:port/db`, for messages (no credentials).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}:{}/{}", self.host, self.port, self.db)
    }

    /// The URL redis-rs connects with, password included. Never log it.
    pub(crate) fn client_url(&self) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let scheme = if self.tls { "rediss" } else { "redis" };
        let mut auth = String::new();
        if self.username.is_some() || self.password.is_some() {
            if let Some(user) = &self.username {
                auth.push_str(&utf8_percent_encode(user, NON_ALPHANUMERIC).to_string());
            }
            if let Some(pass) = &self.password {
                auth.push(':');
                auth.push_str(&utf8_percent_encode(pass.expose(), NON_ALPHANUMERIC).to_string());
            }
            auth.push('@');
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{auth}{host}:{}/{}", self.port, self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RedisConfig> {
        RedisConfig::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn reads_url_and_options() {
        let c = parse("rediss://app:p%40ss@cache:6380/3?prefix=x:&batch=10&max_len=50").unwrap();
        assert!(c.tls);
        assert_eq!((c.host.as_str(), c.port, c.db), ("cache", 6380, 3));
        assert_eq!(c.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(
            (c.options.prefix.as_str(), c.options.batch, c.options.max_len),
            ("x:", 10, Some(50))
        );
        assert_eq!(c.client_url(), "rediss://app:p%40ss@cache:6380/3");
        assert_eq!(parse("redis://").unwrap().endpoint(), "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn rejects_bad_input_without_showing_the_password() {
        for (url, needle) in [
            ("redis://:secretpw@h?blok_ms=1", "`blok_ms`"),
            ("redis://:secretpw@h?batch=0", "at least 1"),
            ("redis://:secretpw@h?batch=many", "`many`"),
            ("redis://:secretpw@h/notadb", "database number"),
            ("redis://:secretpw@a,b", "one Redis host"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secretpw"), "{url}: {err}");
        }
        let shown = format!("{:?}", parse("redis://u:secretpw@h").unwrap());
        assert!(!shown.contains("secretpw"), "{shown}");
    }
}
