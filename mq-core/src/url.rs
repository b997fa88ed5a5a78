//! Broker URLs: `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?options]`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

use crate::{Error, Result};

/// A secret string (a password): never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// One `host[:port]` of a broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// A parsed broker URL. Several hosts may be given, comma separated
/// (`kafka://a:9092,b:9092`).
///
/// `Display` and `Debug` show the URL with its password replaced by `***`;
/// only [`BrokerUrl::password`] gives the password, for the client library.
///
/// ```
/// use mq_core::BrokerUrl;
/// let url: BrokerUrl = "amqp://app:s3cret@rabbit:5672/prod?prefetch=50".parse()?;
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.username(), Some("app"));
/// assert_eq!(url.password().map(|p| p.expose()), Some("s3cret"));
/// assert_eq!(url.option("prefetch"), Some("50"));
/// assert_eq!(url.to_string(), "amqp://app:***@rabbit:5672/prod?prefetch=50");
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    scheme: String,
    username: Option<String>,
    password: Option<Secret>,
    hosts: Vec<HostPort>,
    path: String,
    options: BTreeMap<String, String>,
}

impl BrokerUrl {
    /// Parses a URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] (with the password redacted) when there is no
    /// scheme, a port is not a number, a host is empty, an option repeats, or
    /// percent-encoding is not UTF-8.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact(input),
            reason,
        };
        let input = input.trim();
        let (scheme, rest) = input.split_once("://").ok_or_else(|| {
            invalid("expected `scheme://...`, e.g. `memory://` or `amqp://localhost`".into())
        })?;
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(invalid(format!("`{scheme}` is not a valid scheme")));
        }
        let scheme = scheme.to_ascii_lowercase();
        let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        if !fragment.is_empty() {
            return Err(invalid("a broker URL takes no `#fragment`".into()));
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let decode = |s: &str, what: &str| -> Result<String> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| invalid(format!("the {what} is not valid UTF-8 after percent-decoding")))
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = decode(user, "user name")?;
                let pass = pass.map(|p| decode(p, "password")).transpose()?;
                ((!user.is_empty()).then_some(user), pass.map(Secret))
            }
        };
        let mut hosts = Vec::new();
        if !hostlist.is_empty() {
            for part in hostlist.split(',') {
                hosts.push(parse_host(part).map_err(&invalid)?);
            }
        }
        let mut options = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(&k.replace('+', " "), "option name")?;
            let v = decode(&v.replace('+', " "), "option value")?;
            if k.is_empty() {
                return Err(invalid("an option has an empty name".into()));
            }
            if options.insert(k.clone(), v).is_some() {
                return Err(invalid(format!("option `{k}` is given twice")));
            }
        }
        Ok(BrokerUrl {
            scheme,
            username,
            password,
            hosts,
            path: decode(path, "path")?,
            options,
        })
    }

    /// The scheme, lower case.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The hosts, in order (empty for `memory://`).
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// The path, percent-decoded, with its leading `/` (empty when absent).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query options, percent-decoded.
    pub fn options(&self) -> &BTreeMap<String, String> {
        &self.options
    }

    /// One query option.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    /// Adds or replaces a query option (used by config structs).
    pub fn set_option(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.options.insert(name.into(), value.into());
    }

    /// Fails with [`Error::UnknownOption`] for the first option that is not in
    /// `known` and does not start with one of `prefixes`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownOption`] naming the option and listing `known`.
    pub fn check_options(&self, backend: &'static str, known: &[&str], prefixes: &[&str]) -> Result<()> {
        for name in self.options.keys() {
            let ok = known.contains(&name.as_str()) || prefixes.iter().any(|p| name.starts_with(p));
            if !ok {
                let mut list: Vec<String> = known.iter().map(|k| k.to_string()).collect();
                list.extend(prefixes.iter().map(|p| format!("{p}*")));
                return Err(Error::UnknownOption {
                    backend,
                    option: name.clone(),
                    known: if list.is_empty() {
                        "none".into()
                    } else {
                        list.join(", ")
                    },
                });
            }
        }
        Ok(())
    }

    /// Parses option `name` with `FromStr`, `None` when absent.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] when the value does not parse.
    pub fn parse_option<T>(&self, backend: &'static str, name: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.option(name)
            .map(|v| {
                v.parse::<T>().map_err(|e| Error::InvalidOption {
                    backend,
                    option: name.to_string(),
                    reason: if is_secret_option(name) {
                        format!("the value does not parse: {e}")
                    } else {
                        format!("`{v}`: {e}")
                    },
                })
            })
            .transpose()
    }

    /// The URL with the password in clear, for handing to a client library.
    /// Never log it.
    pub fn expose(&self) -> String {
        self.render(false)
    }

    fn render(&self, redacted: bool) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let mut out = format!("{}://", self.scheme);
        if self.username.is_some() || self.password.is_some() {
            if let Some(user) = &self.username {
                out.extend(utf8_percent_encode(user, NON_ALPHANUMERIC).map(str::to_string));
            }
            if let Some(pass) = &self.password {
                out.push(':');
                if redacted {
                    out.push_str("***");
                } else {
                    out.extend(utf8_percent_encode(pass.expose(), NON_ALPHANUMERIC).map(str::to_string));
                }
            }
            out.push('@');
        }
        let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        out.push_str(&hosts.join(","));
        out.push_str(&self.path);
        if !self.options.is_empty() {
            out.push('?');
            let pairs: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| {
                    let v = if redacted && is_secret_option(k) { "***" } else { v };
                    format!("{}={}", enc_query(k), enc_query(v))
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

fn enc_query(s: &str) -> String {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    const QUERY: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'&')
        .add(b'=')
        .add(b'#')
        .add(b'+')
        .add(b'%');
    utf8_percent_encode(s, QUERY).to_string()
}

fn parse_host(part: &str) -> std::result::Result<HostPort, String> {
    if part.is_empty() {
        return Err("a host in the list is empty".into());
    }
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{part}`: missing `]` after an IPv6 address"))?;
        match after {
            "" => (host, None),
            p if p.starts_with(':') => (host, Some(&p[1..])),
            _ => return Err(format!("`{part}`: unexpected text after `]`")),
        }
    } else {
        match part.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (part, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{part}` has no host name"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '@' | '[' | ']'))
    {
        return Err(format!("`{host}` is not a valid host name"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("port `{p}` of `{host}` is not a number from 0 to 65535"))?,
        ),
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

impl FromStr for BrokerUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BrokerUrl::parse(s)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(true))
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.render(true))
    }
}

/// Whether an option holds a credential, so its value is shown as `***`
/// wherever mq shows options (Debug, Display, errors, logs): a name that
/// contains `password`, `passwd`, `secret`, `token`, `key` or `credential`
/// (any case, any separator), and librdkafka's SASL settings other than
/// the mechanism and service name.
///
/// ```
/// use mq_core::url::is_secret_option;
/// assert!(is_secret_option("rdkafka.sasl.password"));
/// assert!(is_secret_option("rdkafka.sasl.oauthbearer.config"));
/// assert!(is_secret_option("rdkafka.ssl.key.pem"));
/// assert!(is_secret_option("api_token"));
/// assert!(!is_secret_option("rdkafka.sasl.mechanism"));
/// assert!(!is_secret_option("prefetch"));
/// ```
pub fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const WORDS: [&str; 6] = ["password", "passwd", "secret", "token", "key", "credential"];
    if WORDS.iter().any(|w| name.contains(w)) {
        return true;
    }
    match name.find("sasl.") {
        Some(at) => {
            let setting = &name[at + "sasl.".len()..];
            !matches!(
                setting,
                "mechanism" | "mechanisms" | "username" | "kerberos.service.name" | "kerberos.principal"
            )
        }
        None => false,
    }
}

/// A URL-like string with any password, and the value of every option that
/// holds a credential ([`is_secret_option`]), replaced by `***`, for error
/// messages about strings that may not parse.
///
/// ```
/// assert_eq!(mq_core::url::redact("amqp://u:pw@h:x"), "amqp://u:***@h:x");
/// assert_eq!(mq_core::url::redact("redis://h"), "redis://h");
/// assert_eq!(
///     mq_core::url::redact("kafka://h?rdkafka.sasl.password=pw&partitions=3"),
///     "kafka://h?rdkafka.sasl.password=***&partitions=3"
/// );
/// ```
pub fn redact(input: &str) -> String {
    let (head, rest) = match input.find("://") {
        Some(i) => input.split_at(i + 3),
        None => ("", input),
    };
    // The last `@`: a password may hold `/`, `?` or `#` unencoded. When the
    // `@` was in the query instead, this hides too much, never too little.
    let mut out = head.to_string();
    let after = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                _ if head.is_empty() => out.push_str("***"),
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            &rest[at..]
        }
        None => rest,
    };
    out.push_str(after);
    let Some(q) = out.find('?') else {
        return out;
    };
    let (base, query) = out.split_at(q + 1);
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_option(&decode_lossy(k)) => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    let mut masked = format!("{base}{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        masked.push('#');
        masked.push_str(fragment);
    }
    masked
}

fn decode_lossy(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_host_kafka_url() {
        let url = BrokerUrl::parse("kafka://a:9092,b:9093,[::1]:9094?acks=all").unwrap();
        assert_eq!(url.hosts().len(), 3);
        assert_eq!(url.hosts()[1].to_string(), "b:9093");
        assert_eq!(url.hosts()[2].host, "::1");
        assert_eq!(url.hosts()[2].port, Some(9094));
        assert_eq!(url.option("acks"), Some("all"));
    }

    #[test]
    fn memory_url_has_no_hosts() {
        let url = BrokerUrl::parse("memory://").unwrap();
        assert_eq!(url.scheme(), "memory");
        assert!(url.hosts().is_empty());
    }

    #[test]
    fn password_never_shown() {
        let url = BrokerUrl::parse("amqp://user:hunter%402@h/vh?x=1").unwrap();
        assert_eq!(url.password().unwrap().expose(), "hunter@2");
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            format!("{:?}", url.password()),
        ] {
            assert!(!shown.contains("hunter"), "{shown}");
        }
        assert!(url.expose().contains("hunter%402"));
        assert_eq!(BrokerUrl::parse(&url.expose()).unwrap(), url);
    }

    #[test]
    fn malformed_urls_are_clear_errors_without_password() {
        for (input, needle) in [
            ("localhost:5672", "scheme://"),
            ("amqp://u:topsecret@h:notaport", "port `notaport`"),
            ("kafka://a:1,,b:2", "empty"),
            ("redis://u:topsecret@h?db=1&db=2", "given twice"),
            ("1x://h", "not a valid scheme"),
            ("amqp://u:topsecret@[::1", "missing `]`"),
        ] {
            let err = BrokerUrl::parse(input).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{input}: {err:?}");
            assert!(text.contains(needle), "{input}: {text}");
            assert!(!text.contains("topsecret"), "{input}: {text}");
        }
    }

    #[test]
    fn unknown_option_lists_known_ones() {
        let url = BrokerUrl::parse("memory://?capacty=5").unwrap();
        let err = url.check_options("memory", &["capacity"], &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`capacty`") && text.contains("capacity"), "{text}");
        let ok = BrokerUrl::parse("kafka://h?librdkafka.linger.ms=5").unwrap();
        ok.check_options("kafka", &["acks"], &["librdkafka."]).unwrap();
    }

    #[test]
    fn parse_option_reports_bad_values() {
        let url = BrokerUrl::parse("memory://?capacity=lots").unwrap();
        let err = url.parse_option::<usize>("memory", "capacity").unwrap_err();
        assert!(err.to_string().contains("`lots`"), "{err}");
        assert_eq!(url.parse_option::<usize>("memory", "absent").unwrap(), None);
    }

    #[test]
    fn secret_options_never_shown() {
        let text = "kafka://h:9092?rdkafka.sasl.password=s3cr3t-1&rdkafka.sasl.username=app\
                    &rdkafka.ssl.key.password=s3cr3t-2&api%5Ftoken=s3cr3t-3&partitions=3";
        let url = BrokerUrl::parse(text).unwrap();
        assert_eq!(
            url.option("rdkafka.sasl.password"),
            Some("s3cr3t-1"),
            "the client still gets it"
        );
        let config = crate::MqConfig::new(text);
        let bad = BrokerUrl::parse("kafka://h?sasl.password=s3cr3t-4")
            .unwrap()
            .parse_option::<u32>("kafka", "sasl.password")
            .unwrap_err();
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            format!("{config:?}"),
            config.to_url().unwrap().to_string(),
            redact(text),
            redact("kafka://h?rdkafka.sasl.password=s3cr3t-5&email=a@b"),
            bad.to_string(),
            format!("{bad:?}"),
        ] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(
                shown.contains("***") || shown.contains("does not parse"),
                "{shown}"
            );
        }
        assert!(url.to_string().contains("partitions=3") && url.to_string().contains("username=app"));
        assert!(
            url.expose().contains("s3cr3t-1"),
            "expose is for the client library"
        );
    }

    #[test]
    fn redact_handles_odd_input() {
        assert_eq!(redact("u:pw@host"), "***@host");
        // The last `@` ends the user info: a password may hold `/` or `?`.
        assert_eq!(redact("amqp://u:p:w@h/x@y"), "amqp://u:***@y");
        assert_eq!(redact("amqp://u:p/?w@h/vh"), "amqp://u:***@h/vh");
        assert_eq!(redact("amqp://justuser@h"), "amqp://justuser@h");
    }
}
