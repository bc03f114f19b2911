//! `redlock://[user[:password]@]h1[:port],h2[:port],h3[:port][,...][/db][?prefix=P&lease=DUR&renew=DUR&command_timeout=DUR]`,
//! and `redlocks://` (TLS to every master, with the redis backend's `ca`, `cert` and `key`).

use std::time::Duration;

use crate::backends::redis::config::{DEFAULT_COMMAND_TIMEOUT, RedisConfig, split_host_port, tls_files};
use crate::error::Result;
use crate::raw::LeaseConfig;
use crate::url::LockUrl;

/// The fewest masters a `redlock://` URL may name. One master is the `redis://` backend (with
/// the same keys); two masters need both for a quorum, so they survive no failure and are strictly
/// worse than one: both are refused rather than accepted with a weaker promise.
pub(crate) const MIN_MASTERS: usize = 3;

/// What a `redlock://` URL says: the same settings as `redis://` for each master.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedlockConfig {
    /// One per master, in URL order (each with its own host and port, the rest shared).
    pub masters: Vec<RedisConfig>,
    pub prefix: String,
    pub lease: LeaseConfig,
    pub command_timeout: Duration,
    /// The URL with its password redacted, for messages.
    pub shown: String,
}

impl std::fmt::Debug for RedlockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedlockConfig")
            .field("url", &self.shown)
            .field("masters", &self.masters.len())
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

pub(crate) const OPTIONS: &[&str] = &["prefix", "lease", "renew", "command_timeout", "ca", "cert", "key"];

/// The scheme of Redlock over TLS.
pub(crate) const TLS_SCHEME: &str = "redlocks";

impl RedlockConfig {
    pub(crate) fn from_url(url: &LockUrl) -> Result<Self> {
        if url.hosts().is_empty() && !url.path().is_empty() && !url.path().starts_with('/') {
            return Err(url.invalid("write redlock://[user[:password]@]h1:6379,h2:6379,h3:6379[/db]"));
        }
        let mut hosts = Vec::new();
        for h in url.hosts() {
            let (host, port) = split_host_port(h).map_err(|why| url.invalid(why))?;
            if hosts.iter().any(|(h2, p2): &(String, u16)| *h2 == host && *p2 == port) {
                return Err(
                    url.invalid(format!("master {host}:{port} is named twice (each master counts once in the quorum)"))
                );
            }
            hosts.push((host, port));
        }
        if hosts.len() < MIN_MASTERS {
            return Err(url.invalid(format!(
                "Redlock needs at least {MIN_MASTERS} independent masters (redlock://h1,h2,h3), got {}: \
                 one master is redis://host, and two survive no failure",
                hosts.len()
            )));
        }
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            d => d
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| url.invalid("the path must be a database number (redlock://h1,h2,h3/0)"))?,
        };
        let mut opts = url.options();
        let prefix = opts.take("prefix").unwrap_or_default().to_owned();
        let lease = LeaseConfig::from_url(url, &mut opts, super::BACKEND.capabilities.lease)?.unwrap_or_default();
        let command_timeout = opts.take_duration("command_timeout")?.unwrap_or(DEFAULT_COMMAND_TIMEOUT);
        let tls = tls_files(url, &mut opts, url.scheme() == TLS_SCHEME, "redlocks://")?;
        opts.finish(OPTIONS)?;
        if command_timeout < Duration::from_millis(1) {
            return Err(url.invalid("option `command_timeout` must be at least 1ms"));
        }
        let masters = hosts
            .into_iter()
            .map(|(host, port)| RedisConfig {
                shown: format!("{host}:{port}"),
                cluster: false,
                nodes: vec![(host.clone(), port)],
                tls: tls.clone(),
                host,
                port,
                db,
                user: url.user().map(str::to_owned),
                password: url.password().map(str::to_owned),
                prefix: prefix.clone(),
                lease,
                command_timeout,
            })
            .collect();
        Ok(RedlockConfig { masters, prefix, lease, command_timeout, shown: url.redacted().to_owned() })
    }

    /// How many masters make a quorum: `N/2 + 1`.
    pub(crate) fn quorum(&self) -> usize {
        self.masters.len() / 2 + 1
    }
}

/// The clock drift allowance of a lease: 1% of it plus 2 ms (the Redlock algorithm's figure).
pub(crate) fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Result<RedlockConfig> {
        RedlockConfig::from_url(&LockUrl::parse(s)?)
    }

    #[test]
    fn parses() {
        let c = cfg("redlock://:s3cret@a:7000,b,[::1]:7002/2?prefix=redlock:&lease=30s&renew=5s").unwrap();
        let hosts: Vec<_> = c.masters.iter().map(|m| (m.host.as_str(), m.port, m.db)).collect();
        assert_eq!(hosts, [("a", 7000, 2), ("b", 6379, 2), ("::1", 7002, 2)]);
        assert_eq!(c.quorum(), 2);
        assert_eq!(c.prefix, "redlock:");
        assert!(c.masters.iter().all(|m| m.password.as_deref() == Some("s3cret")));
        assert_eq!((c.lease.lease, c.lease.renew_every), (Duration::from_secs(30), Duration::from_secs(5)));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(cfg("redlock://a,b,c,d,e").unwrap().quorum(), 3);
        assert_eq!(cfg("redlock://a,b,c,d").unwrap().quorum(), 3);
        assert_eq!(drift(Duration::from_secs(10)), Duration::from_millis(102));
        assert!(c.masters.iter().all(|m| m.tls.is_none()));
        let tls = cfg("redlocks://a,b,c").unwrap();
        assert!(tls.masters.iter().all(|m| m.tls.is_some()));
    }

    #[test]
    fn refuses() {
        for (url, why) in [
            ("redlock://a", "at least 3"),
            ("redlock://a,b", "at least 3"),
            ("redlock://", "at least 3"),
            ("redlock://a,b,a:6379", "named twice"),
            ("redlock://a,b,c:0", "the port must be"),
            ("redlock://a,b,c/x", "database number"),
            ("redlock://a,b,c?ttl=1s", "unknown option"),
            ("redlock://a,b,c?command_timeout=0s", "command_timeout"),
            ("redlock:u:pw@h", "write redlock://"),
            ("redlock://a,b,c?ca=/etc/hostname", "write redlocks://"),
            ("redlocks://a,b,c?cert=/etc/hostname", "go together"),
            ("redlocks://a,b,c?ca=/nonexistent/ca.pem", "cannot read the CA (ca) file"),
        ] {
            let e = cfg(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        let e = cfg("redlock://:pw@a,b").unwrap_err().to_string();
        assert!(!e.contains("pw@"), "{e}");
    }
}
