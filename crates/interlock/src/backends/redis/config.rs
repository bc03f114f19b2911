//! `redis://[user[:password]@]host[:port][/db][?prefix=P&lease=DUR&renew=DUR&command_timeout=DUR]`
//! and `redis+cluster://[user[:password]@]host:port,host:port,...[?the same options]` (seed
//! nodes of a Redis Cluster; no database but 0).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::provider::DEFAULT_LEASE;
use crate::raw::LeaseConfig;
use crate::url::LockUrl;

/// The port when the URL gives none.
pub(crate) const DEFAULT_PORT: u16 = 6379;

/// How long one command may take when the URL does not say (`command_timeout`).
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// What a `redis://` URL says.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisConfig {
    /// The server, or the first seed node of a cluster.
    pub host: String,
    pub port: u16,
    /// A Redis Cluster (`redis+cluster://`): `nodes` are its seed nodes (`host`/`port` the first).
    pub cluster: bool,
    /// Every host of the URL (one for `redis://`), in order.
    pub nodes: Vec<(String, u16)>,
    pub db: i64,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Prepended to every lock name to make its key (default empty: the key is the name).
    pub prefix: String,
    pub lease: LeaseConfig,
    /// The longest a command may take before it fails (the blocking wait of a waiter excepted).
    pub command_timeout: Duration,
    /// The URL with its password redacted, for messages.
    pub shown: String,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

/// The scheme of a Redis Cluster URL.
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster";

pub(crate) const OPTIONS: &[&str] = &["prefix", "lease", "renew", "command_timeout"];

impl RedisConfig {
    pub(crate) fn from_url(url: &LockUrl) -> Result<Self> {
        if url.scheme() == "rediss" {
            return Err(Error::Unsupported {
                backend: super::BACKEND_NAME,
                operation: "`rediss://` (TLS) is not supported by this build: the redis crate's TLS needs a rustls \
                            crypto provider (ring or aws-lc-rs), which compiles C code, and is not built in yet; \
                            use `redis://` over a trusted network or a TLS tunnel"
                    .into(),
            });
        }
        // Without `//` everything would be the path, a user and password included: refuse it
        // without repeating it (messages never echo URL parts that may hold a secret).
        if url.hosts().is_empty() && !url.path().is_empty() && !url.path().starts_with('/') {
            return Err(url.invalid("write redis://[user[:password]@]host[:port][/db]"));
        }
        let cluster = url.scheme() == CLUSTER_SCHEME;
        let nodes: Vec<(String, u16)> = match url.hosts() {
            [] => vec![("127.0.0.1".to_owned(), DEFAULT_PORT)],
            [h] => vec![split_host_port(h).map_err(|why| url.invalid(why))?],
            _ if !cluster => {
                return Err(url.invalid(
                    "redis:// takes one host (a Redis Cluster is redis+cluster://h1:p1,h2:p2,...; several \
                     independent masters are Redlock: redlock://h1,h2,h3)",
                ));
            }
            hosts => hosts
                .iter()
                .map(|h| split_host_port(h))
                .collect::<std::result::Result<_, _>>()
                .map_err(|why| url.invalid(why))?,
        };
        let (host, port) = nodes[0].clone();
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            d => d
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| url.invalid("the path must be a database number (redis://host:6379/0)"))?,
        };
        if cluster && db != 0 {
            return Err(
                url.invalid("a Redis Cluster has only database 0: remove the `/DB` path (redis+cluster://h1:p1,h2:p2)")
            );
        }
        let mut opts = url.options();
        let prefix = opts.take("prefix").unwrap_or_default().to_owned();
        let lease = opts.take_duration("lease")?;
        let renew = opts.take_duration("renew")?;
        let command_timeout = opts.take_duration("command_timeout")?.unwrap_or(DEFAULT_COMMAND_TIMEOUT);
        opts.finish(OPTIONS)?;
        if command_timeout < Duration::from_millis(1) {
            return Err(url.invalid("option `command_timeout` must be at least 1ms"));
        }
        let lease = lease.unwrap_or(DEFAULT_LEASE);
        let renew_every = renew.unwrap_or(lease / 3);
        let lease = LeaseConfig::new(lease, renew_every).map_err(|e| url.invalid(lease_reason(e)))?;
        Ok(RedisConfig {
            host,
            port,
            cluster,
            nodes,
            db,
            user: url.user().map(str::to_owned),
            password: url.password().map(str::to_owned),
            prefix,
            lease,
            command_timeout,
            shown: url.redacted().to_owned(),
        })
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(h: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing `]`")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("expected `:PORT` after `]`")?)),
        }
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or("the port must be a number from 1 to 65535")?,
    };
    Ok((host.to_owned(), port))
}

/// The message of a lease error without its "invalid argument: " prefix, for an `InvalidUrl`.
fn lease_reason(e: Error) -> String {
    match e {
        Error::InvalidArgument(msg) => msg,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Result<RedisConfig> {
        RedisConfig::from_url(&LockUrl::parse(s)?)
    }

    #[test]
    fn parses() {
        let c = cfg("redis://").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db, c.prefix.as_str()), ("127.0.0.1", 6379, 0, ""));
        assert_eq!(c.lease.lease, DEFAULT_LEASE);
        let c =
            cfg("redis://app:s3cret@db.example:6380/3?prefix=locks:&lease=30s&renew=5s&command_timeout=2s").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db), ("db.example", 6380, 3));
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref(), c.prefix.as_str()),
            (Some("app"), Some("s3cret"), "locks:")
        );
        assert_eq!((c.lease.lease, c.lease.renew_every), (Duration::from_secs(30), Duration::from_secs(5)));
        assert_eq!(c.command_timeout, Duration::from_secs(2));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = cfg("redis://:pw@[::1]:7000").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user, c.password.as_deref()), ("::1", 7000, None, Some("pw")));
        assert_eq!(cfg("redis://[::1]").unwrap().port, 6379);
        assert!(!cfg("redis://h").unwrap().cluster);
    }

    #[test]
    fn parses_cluster_seeds() {
        let c = cfg("redis+cluster://app:s3cret@h1:7000,h2:7001,[::1]:7002/0?prefix=p:&lease=5s").unwrap();
        assert!(c.cluster);
        let nodes: Vec<(&str, u16)> = c.nodes.iter().map(|(h, p)| (h.as_str(), *p)).collect();
        assert_eq!(nodes, [("h1", 7000), ("h2", 7001), ("::1", 7002)]);
        assert_eq!((c.host.as_str(), c.port, c.db, c.prefix.as_str()), ("h1", 7000, 0, "p:"));
        assert_eq!((c.user.as_deref(), c.password.as_deref()), (Some("app"), Some("s3cret")));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = cfg("redis+cluster://h1").unwrap();
        assert_eq!(c.nodes, [("h1".to_owned(), 6379)]);
    }

    #[test]
    fn refuses() {
        for (url, why) in [
            ("redis://h:0", "the port must be"),
            ("redis://h:x", "the port must be"),
            ("redis:u:pw@h", "write redis://"),
            ("redis://h/x", "database number"),
            ("redis://h/-1", "database number"),
            ("redis://a,b", "one host"),
            ("redis://h?ttl=1s", "unknown option"),
            ("redis://h?lease=1s&renew=2s", "renewal interval"),
            ("redis://h?command_timeout=0s", "command_timeout"),
            ("redis://[::1", "closing"),
        ] {
            let e = cfg(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        for (url, why) in [
            ("redis+cluster://h1:7000,h2:7001/1", "only database 0"),
            ("redis+cluster://h1:7000,h2:x", "the port must be"),
            ("redis+cluster://h1:7000,,h2", "empty"),
            ("redis+cluster://h1:7000?db=1", "unknown option"),
        ] {
            let e = cfg(url).map(drop).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        let e = cfg("rediss://:pw@h").unwrap_err();
        assert!(matches!(e, Error::Unsupported { backend: "redis", .. }), "{e}");
        assert!(e.to_string().contains("TLS") && !e.to_string().contains("pw"), "{e}");
    }
}
