//! `memory://[SPACE][?lease=DUR&renew=DUR&connect_delay=DUR]`

use crate::error::Result;
use crate::provider::DEFAULT_LEASE;
use crate::raw::LeaseConfig;
use crate::url::LockUrl;

/// What a `memory://` URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemoryConfig {
    /// Locks in one space exclude each other; `memory://` is the space named "".
    pub space: String,
    /// Locks expire (and are renewed by the lease monitor) only when the URL sets `lease`.
    pub expiring: bool,
    pub lease: LeaseConfig,
    /// How long connecting takes, to test `connect_timeout` (a server that answers slowly).
    pub connect_delay: Option<std::time::Duration>,
}

pub(crate) const OPTIONS: &[&str] = &["lease", "renew", "connect_delay"];

impl MemoryConfig {
    pub(crate) fn from_url(url: &LockUrl) -> Result<Self> {
        if url.user().is_some() || url.password().is_some() {
            return Err(url.invalid("memory:// takes no user or password"));
        }
        if url.hosts().len() > 1 || !url.path().trim_start_matches('/').is_empty() {
            return Err(url.invalid("memory:// takes at most a space name: memory://[SPACE]"));
        }
        let space = url.hosts().first().cloned().unwrap_or_default();
        let mut opts = url.options();
        let lease = opts.take_duration("lease")?;
        let renew = opts.take_duration("renew")?;
        let connect_delay = opts.take_duration("connect_delay")?;
        opts.finish(OPTIONS)?;
        let expiring = lease.is_some();
        let lease = lease.unwrap_or(DEFAULT_LEASE);
        let renew_every = renew.unwrap_or(lease / 3);
        let lease = LeaseConfig::new(lease, renew_every).map_err(|e| url.invalid(lease_reason(e)))?;
        Ok(MemoryConfig { space, expiring, lease, connect_delay })
    }
}

/// The message of a lease error without its "invalid argument: " prefix, for an `InvalidUrl`.
fn lease_reason(e: crate::Error) -> String {
    match e {
        crate::Error::InvalidArgument(msg) => msg,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(s: &str) -> Result<MemoryConfig> {
        MemoryConfig::from_url(&LockUrl::parse(s)?)
    }

    #[test]
    fn parses() {
        let c = cfg("memory://").unwrap();
        assert_eq!((c.space.as_str(), c.expiring), ("", false));
        let c = cfg("memory://tests?lease=300ms").unwrap();
        assert_eq!(
            (c.space.as_str(), c.expiring, c.lease.lease, c.lease.renew_every),
            ("tests", true, Duration::from_millis(300), Duration::from_millis(100))
        );
        assert!(cfg("memory://a,b").is_err());
        assert!(cfg("memory://x/y").is_err());
        assert!(cfg("memory://?lease=1s&renew=2s").is_err());
        assert!(cfg("memory://?ttl=1s").is_err());
        let e = cfg("memory://?lease=25h").unwrap_err().to_string();
        assert!(e.contains("too long (at most 1 day)"), "{e}");
        assert!(cfg("memory://?lease=24h").is_ok());
    }
}
