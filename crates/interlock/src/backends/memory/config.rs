//! `memory://[SPACE][?expiry=none|connection|lock|session&lease=DUR&renew=DUR&timeouts=client|server&grace=DUR&connect_delay=DUR]`

use std::time::Duration;

use crate::error::Result;
use crate::raw::{LEASE_OPTIONS, LeaseConfig, LeaseModel};
use crate::url::LockUrl;

/// How a `memory://` provider's locks expire, so that the conformance suite can run each model
/// the network backends have before they exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Never: a lock is held until released (only the fault hooks take it away).
    None,
    /// Never by time, but each lock lives on a connection of its own that the fault hooks can
    /// kill (told at once, as a client sees its connection close): MySQL `GET_LOCK`, PostgreSQL
    /// advisory locks.
    Connection,
    /// A lease per lock, renewed by the core's monitor per guard: Redis, Redlock.
    Lock,
    /// One lease for the provider's session, kept alive by a background task of the provider;
    /// when the session goes, every lock of it goes: ZooKeeper, etcd.
    Session,
}

impl Expiry {
    pub(crate) fn model(self) -> LeaseModel {
        match self {
            Expiry::None | Expiry::Connection => LeaseModel::None,
            Expiry::Lock => LeaseModel::PerLock,
            Expiry::Session => LeaseModel::PerSession,
        }
    }
}

/// How long past the deadline the core waits for a memory backend that times its waits out by
/// itself (`timeouts=server`) when the URL does not say (`grace`).
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(1);

/// What a `memory://` URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemoryConfig {
    /// Locks in one space exclude each other; `memory://` is the space named "".
    pub space: String,
    pub expiry: Expiry,
    /// The lease of locks (`Lock`) or of the session (`Session`); `None` otherwise.
    pub lease: Option<LeaseConfig>,
    /// `timeouts=server`: waits time out by themselves at their deadline, as `GET_LOCK(name, t)`
    /// does on a server, and the core waits this long after the deadline before it cancels.
    pub server_timeouts: Option<Duration>,
    /// How long connecting takes, to test `connect_timeout` (a server that answers slowly).
    pub connect_delay: Option<Duration>,
}

pub(crate) const OPTIONS: &[&str] = &["expiry", "lease", "renew", "timeouts", "grace", "connect_delay"];

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
        let expiry = match opts.take("expiry") {
            None if url.query().iter().any(|(k, _)| LEASE_OPTIONS.contains(&k.as_str())) => Expiry::Lock,
            None | Some("none") => Expiry::None,
            Some("connection") => Expiry::Connection,
            Some("lock") => Expiry::Lock,
            Some("session") => Expiry::Session,
            Some(other) => {
                return Err(url.invalid(format!(
                    "option `expiry`: `{other}` is none of `none`, `connection`, `lock`, `session`"
                )));
            }
        };
        let lease = LeaseConfig::from_url(url, &mut opts, expiry.model())?;
        let server_timeouts = match opts.take("timeouts") {
            None | Some("client") => None,
            Some("server") => Some(DEFAULT_GRACE),
            Some(other) => {
                return Err(url.invalid(format!("option `timeouts`: `{other}` is neither `client` nor `server`")));
            }
        };
        let server_timeouts = match (server_timeouts, opts.take_duration("grace")?) {
            (Some(_), Some(grace)) => Some(grace),
            (None, Some(_)) => return Err(url.invalid("option `grace` goes with `timeouts=server`")),
            (timeouts, None) => timeouts,
        };
        let connect_delay = opts.take_duration("connect_delay")?;
        opts.finish(OPTIONS)?;
        Ok(MemoryConfig { space, expiry, lease, server_timeouts, connect_delay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Result<MemoryConfig> {
        MemoryConfig::from_url(&LockUrl::parse(s)?)
    }

    #[test]
    fn parses() {
        let c = cfg("memory://").unwrap();
        assert_eq!((c.space.as_str(), c.expiry, c.lease, c.server_timeouts), ("", Expiry::None, None, None));
        let c = cfg("memory://tests?lease=300ms").unwrap();
        let lease = c.lease.unwrap();
        assert_eq!(
            (c.space.as_str(), c.expiry, lease.lease, lease.renew_every),
            ("tests", Expiry::Lock, Duration::from_millis(300), Duration::from_millis(100))
        );
        assert_eq!(cfg("memory://?renew=1s").unwrap().expiry, Expiry::Lock);
        let c = cfg("memory://?expiry=session").unwrap();
        assert_eq!((c.expiry, c.lease.unwrap().lease), (Expiry::Session, crate::DEFAULT_LEASE));
        let c = cfg("memory://?expiry=connection&timeouts=server").unwrap();
        assert_eq!((c.expiry, c.lease, c.server_timeouts), (Expiry::Connection, None, Some(DEFAULT_GRACE)));
        let c = cfg("memory://?timeouts=server&grace=50ms").unwrap();
        assert_eq!(c.server_timeouts, Some(Duration::from_millis(50)));
        assert!(cfg("memory://a,b").is_err());
        assert!(cfg("memory://x/y").is_err());
        assert!(cfg("memory://?lease=1s&renew=2s").is_err());
        assert!(cfg("memory://?ttl=1s").is_err());
        let e = cfg("memory://?lease=25h").unwrap_err().to_string();
        assert!(e.contains("too long (at most 1 day)"), "{e}");
        assert!(cfg("memory://?lease=24h").is_ok());
        for (url, why) in [
            ("memory://?expiry=none&lease=1s", "no leases"),
            ("memory://?expiry=connection&renew=1s", "option `renew`: this backend has no leases"),
            ("memory://?expiry=forever", "none of"),
            ("memory://?timeouts=soon", "neither"),
            ("memory://?grace=1s", "goes with `timeouts=server`"),
        ] {
            let e = cfg(url).unwrap_err();
            assert!(e.is_usage() && e.to_string().contains(why), "{url}: {e}");
        }
    }
}
