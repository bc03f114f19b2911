//! `redis://[user[:password]@]host[:port][/db][?prefix=P&lease=DUR&renew=DUR&command_timeout=DUR]`
//! and `redis+cluster://[user[:password]@]host:port,host:port,...[?the same options]` (seed
//! nodes of a Redis Cluster; no database but 0); `rediss://` and `rediss+cluster://` over TLS
//! (`&ca=PATH&cert=PATH&key=PATH`).

use std::time::Duration;

use crate::error::Result;
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
    /// `rediss://`: TLS, with these certificates.
    pub tls: Option<TlsFiles>,
}

/// What `rediss://` trusts and presents: PEM files read when the URL is parsed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// `?ca=PATH`: the CA certificates to trust instead of the system's.
    pub ca: Option<Vec<u8>>,
    /// `?cert=PATH&key=PATH`: a client certificate chain and its private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Says which files were given, never their contents (the client key is a secret).
impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("ca", &self.ca.is_some()).field("client", &self.client.is_some()).finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("command_timeout", &self.command_timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The scheme of a Redis Cluster URL.
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster";
/// The scheme of a Redis Cluster URL over TLS.
pub(crate) const TLS_CLUSTER_SCHEME: &str = "rediss+cluster";

pub(crate) const OPTIONS: &[&str] = &["prefix", "lease", "renew", "command_timeout", "ca", "cert", "key"];

impl RedisConfig {
    pub(crate) fn from_url(url: &LockUrl) -> Result<Self> {
        let tls = url.scheme() == "rediss" || url.scheme() == TLS_CLUSTER_SCHEME;
        // Without `//` everything would be the path, a user and password included: refuse it
        // without repeating it (messages never echo URL parts that may hold a secret).
        if url.hosts().is_empty() && !url.path().is_empty() && !url.path().starts_with('/') {
            return Err(url.invalid("write redis://[user[:password]@]host[:port][/db]"));
        }
        let cluster = url.scheme() == CLUSTER_SCHEME || url.scheme() == TLS_CLUSTER_SCHEME;
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
        let lease = LeaseConfig::from_url(url, &mut opts, super::BACKEND.capabilities.lease)?.unwrap_or_default();
        let command_timeout = opts.take_duration("command_timeout")?.unwrap_or(DEFAULT_COMMAND_TIMEOUT);
        let tls = tls_files(url, &mut opts, tls, "rediss:// or rediss+cluster://")?;
        opts.finish(OPTIONS)?;
        if command_timeout < Duration::from_millis(1) {
            return Err(url.invalid("option `command_timeout` must be at least 1ms"));
        }
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
            tls,
        })
    }
}

/// The TLS files of the options `ca`, `cert` and `key` (taken from `opts`), read now: `Some` when
/// `tls` (the URL's scheme asks for TLS), an error when the options come without it (`schemes`
/// says which schemes would).
pub(crate) fn tls_files(
    url: &LockUrl,
    opts: &mut crate::url::UrlOptions<'_>,
    tls: bool,
    schemes: &str,
) -> Result<Option<TlsFiles>> {
    let files = ["ca", "cert", "key"].map(|k| opts.take(k).map(str::to_owned));
    let [ca, cert, key] = match (tls, files) {
        (false, [None, None, None]) => return Ok(None),
        (false, _) => return Err(url.invalid(format!("options `ca`, `cert` and `key` are for TLS: write {schemes}"))),
        (true, files) => files,
    };
    let read = |what: &str, path: String| {
        std::fs::read(&path).map_err(|e| url.invalid(format!("cannot read the {what} file {path:?}: {e}")))
    };
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((read("client certificate (cert)", c)?, read("client key (key)", k)?)),
        (None, None) => None,
        _ => return Err(url.invalid("options `cert` and `key` go together (a client certificate and its key)")),
    };
    Ok(Some(TlsFiles { ca: ca.map(|p| read("CA (ca)", p)).transpose()?, client }))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
pub(crate) fn split_host_port(h: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing `]`")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("only an IPv6 address goes in brackets (`[::1]:6379`)".into());
        }
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("expected `:PORT` after `]`")?)),
        }
    } else {
        match h.split_once(':') {
            // `127.0.0.1:31001:99` is no host name: refuse it rather than ask DNS for it.
            Some((_, port)) if port.contains(':') => {
                return Err("one `:PORT` per host (an IPv6 address goes in brackets: `[::1]:6379`)".into());
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn cfg(s: &str) -> Result<RedisConfig> {
        RedisConfig::from_url(&LockUrl::parse(s)?)
    }

    #[test]
    fn parses() {
        let c = cfg("redis://").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db, c.prefix.as_str()), ("127.0.0.1", 6379, 0, ""));
        assert_eq!(c.lease.lease, crate::DEFAULT_LEASE);
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
        assert_eq!(cfg("redis://h").unwrap().tls, None);
        let c = cfg("rediss://:pw@h:6380/2").unwrap();
        assert_eq!((c.port, c.db, c.tls), (6380, 2, Some(TlsFiles { ca: None, client: None })));
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
        let c = cfg("rediss+cluster://h1:7000,h2:7001").unwrap();
        assert!(c.cluster && c.tls.is_some() && c.nodes.len() == 2);
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
            ("redis://:pw-9@127.0.0.1:31001:99/0", "one `:PORT` per host"),
            ("redis://::1", "one `:PORT` per host"),
            ("redis://[db.example]:6379", "only an IPv6 address"),
        ] {
            let e = cfg(url).unwrap_err();
            assert!(matches!(e, Error::InvalidUrl { .. }), "{url}: {e:?}");
            let e = e.to_string();
            assert!(e.contains(why) && !e.contains("pw-9"), "{url}: {e}");
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
        for (url, why) in [
            ("redis://h?ca=/etc/hostname", "for TLS"),
            ("rediss://h?cert=/etc/hostname", "go together"),
            ("rediss://:pw@h?ca=/nonexistent/ca.pem", "cannot read the CA (ca) file \"/nonexistent/ca.pem\""),
        ] {
            let e = cfg(url).map(drop).unwrap_err().to_string();
            assert!(e.contains(why) && !e.contains("pw@"), "{url}: {e}");
        }
    }
}
