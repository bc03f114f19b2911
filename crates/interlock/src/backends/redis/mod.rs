//! `redis://`: leased locks on one Redis server (`SET key token NX PX lease`), with fencing
//! tokens, FIFO waiters woken by the release itself, read-write locks and semaphores.
//!
//! | property | value |
//! |---|---|
//! | what holds the lock | the key `prefix + name` with a random token, `PX lease`; renewed in the background (compare-and-`PEXPIRE`) |
//! | released on holder crash by | lease expiry (default 10 s, `?lease=`) |
//! | primitives | mutex and write lock (the key), read lock (a ZSET of readers, the key holds [`READERS_VALUE`]), semaphore (a ZSET of permit holders); every holder expires on its own lease |
//! | fencing | the next value of `{KEY}:fence` in the acquiring script (one round trip): the counter plus one, never below the server clock in µs, so a counter lost or behind (restart without persistence, failover) still gives increasing tokens |
//! | lost locks | a renewal that finds the key gone or someone else's, or the lease running out by the local clock |
//! | waiting | FIFO queue per lock; the release hands the lock to the head waiter (sets the key to its token for a claim window of [`CLAIM`]) and pushes to that waiter's own list, where it blocks in `BLPOP` on a connection of its own with its next attempt pipelined behind, which claims the lock (its whole lease) in the same round trip; re-check at the holder's remaining TTL and every 500 ms at most (peer tools release without waking us) |
//! | writer starvation | a reader never passes a writer queued ahead of it |
//! | interop | redis-py `Lock(name)` (`SET name token NX`, PX only with a timeout), python-redis-lock (`?prefix=lock:`), pottery and redlock-py on one master (`?prefix=redlock:` for pottery), any `SET name v NX [PX]` peer: the same key, compare-and-delete release (docs/backends/redis.md#interop) |
//! | TLS | `rediss://`, `rediss+cluster://` (rustls, ring): the system's roots or `?ca=PATH`, a client certificate with `?cert=PATH&key=PATH` |
//! | limits | one server, or one Redis Cluster (`redis+cluster://`; a failover can lose a lock) |
//!
//! Keys (pinned by golden tests) are in `docs/backends/redis.md`, with the whole page.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
//! let locks = interlock::connect("redis://127.0.0.1:6379/0?lease=30s").await?;
//! let guard = locks.mutex("nightly")?.lock().await?;   // the key `nightly`, as redis-py's Lock("nightly")
//! let token = guard.fencing_token();                   // hand it to the store you write to
//! guard.release().await?;
//! # let _ = token; Ok(()) }
//! ```

#[cfg(feature = "redis")]
pub(crate) mod config;
mod keys;
#[cfg(feature = "redis")]
pub(crate) mod raw;
#[cfg(feature = "redis")]
mod scripts;

use std::time::Duration;

pub use keys::READERS_VALUE;
pub(crate) use keys::side_base_of;

#[cfg(feature = "redis")]
use super::Connected;
use super::{Availability, Backend};
use crate::raw::{Capabilities, LeaseModel};
#[cfg(feature = "redis")]
use crate::{
    error::Result,
    raw::{BoxFuture, Tasks},
    url::LockUrl,
};

pub(crate) const BACKEND_NAME: &str = "redis";

/// The Redis backend's registry entry.
pub(crate) const BACKEND: Backend = Backend {
    name: BACKEND_NAME,
    title: "Redis",
    schemes: &["redis", "rediss", "redis+cluster", "rediss+cluster"],
    url_form: "redis[s]://[user[:pass]@]host[:port][/db][?prefix=P&lease=DUR&renew=DUR&command_timeout=DUR\
               &ca=PATH&cert=PATH&key=PATH], redis[s]+cluster://[user[:pass]@]h1:p1,h2:p2,...[?the same options]",
    holds: "SET key token NX PX lease",
    feature: Some("redis"),
    docs: "docs/backends/redis.md",
    capabilities: Capabilities::new(true, true, true).with_lease(LeaseModel::PerLock),
    availability: if cfg!(feature = "redis") { Availability::Built } else { Availability::FeatureOff },
    connect: CONNECT,
};

#[cfg(feature = "redis")]
const CONNECT: Option<super::Connect> = Some(connect);
#[cfg(not(feature = "redis"))]
const CONNECT: Option<super::Connect> = None;

#[cfg(feature = "redis")]
fn connect<'a>(url: &'a LockUrl, _: &'a Tasks) -> BoxFuture<'a, Result<Connected>> {
    Box::pin(async move {
        let config = config::RedisConfig::from_url(url)?;
        let lease = config.lease;
        let provider = raw::RedisProvider::connect(config).await?;
        Ok((std::sync::Arc::new(provider) as _, Some(lease)))
    })
}

/// The key that lock `name` uses with key prefix `prefix` (the URL's `?prefix=`, default empty):
/// `prefix + name`, verbatim, as redis-py's `Lock(name)` and any `SET name token NX PX` peer use.
///
/// # Examples
///
/// ```
/// assert_eq!(interlock::redis::lock_key("", "deploy"), "deploy");
/// assert_eq!(interlock::redis::lock_key("lock:", "deploy"), "lock:deploy");
/// ```
pub fn lock_key(prefix: &str, name: &str) -> String {
    keys::lock_key(prefix, name)
}

/// The start of every side key (fencing counter, readers, queue, wake-up lists, semaphore) of
/// lock `name` with key prefix `prefix`: `{KEY}` for a key without `}` (`KEY` = `prefix +
/// name`), otherwise `{TAG}LEN:KEY` with the key's own Redis Cluster hash tag, or a short tag of
/// its slot, so that every key of one lock lives in the lock key's cluster slot; preceded by the
/// prefix itself when it has no `{`, so that an ACL user limited to `~prefix*` reaches every key.
/// The side keys are this followed by `:fence`, `:readers`, `:q`, `:qx`, `:wake:...`, `:sem`,
/// `:sem:...` (see docs/backends/redis.md, "Name mapping").
///
/// # Examples
///
/// ```
/// assert_eq!(interlock::redis::side_key_base("", "deploy"), "{deploy}");
/// assert_eq!(interlock::redis::side_key_base("", "user{42}"), "{42}8:user{42}");
/// assert_eq!(interlock::redis::side_key_base("app:", "deploy"), "app:{app:deploy}");
/// ```
pub fn side_key_base(prefix: &str, name: &str) -> String {
    keys::side_base_of(prefix, name)
}

/// How often, at most, a waiter re-checks a lock without a wake-up (a peer tool released it
/// without waking interlock's waiters): 500 ms.
pub const RECHECK: Duration = Duration::from_millis(500);

#[cfg(feature = "redis")]
const _: () = assert!(RECHECK.as_millis() == raw::RECHECK.as_millis());

/// How long a lock handed over to a waiter lives until that waiter claims it (then it has the
/// waiter's lease): 1 s, at most the lease. A live waiter claims at once; a waiter that is gone
/// (killed, stopped, its undo lost) holds up the next one about this long, not for its lease.
pub const CLAIM: Duration = Duration::from_secs(1);

/// How long a waiter's place in the queue lasts without a refresh (every [`RECHECK`] at most): 2 s.
pub const REGISTRATION: Duration = Duration::from_secs(2);

#[cfg(feature = "redis")]
const _: () =
    assert!(CLAIM.as_millis() == raw::CLAIM.as_millis() && REGISTRATION.as_millis() == raw::REGISTRATION.as_millis());

/// A plain connection of its own to the server, or the cluster, of a `redis://` URL: what
/// [`raw_connection`] opens. Not a lock.
///
/// Not part of interlock's API (hidden from its docs): its variants are the `redis` crate's
/// types, which follow that crate's version.
#[doc(hidden)]
#[cfg(feature = "redis")]
#[non_exhaustive]
pub enum RawConnection {
    /// One server (`redis://`, `rediss://`), or one Redlock master.
    Server(::redis::aio::MultiplexedConnection),
    /// A Redis Cluster (`redis+cluster://`, `rediss+cluster://`): commands go where the caller
    /// routes them.
    Cluster(::redis::cluster_async::ClusterConnection),
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RawConnection::Server(_) => "RawConnection::Server",
            RawConnection::Cluster(_) => "RawConnection::Cluster",
        })
    }
}

/// Opens a plain connection of its own to the server (or cluster) of `url`, connected and
/// authenticated as the backend's own connections are (TLS with the URL's `ca`, `cert` and
/// `key`, ACL user and password, database; `command_timeout` bounds connecting and each reply),
/// for measurements next to interlock's: `interlock bench`'s floors time `PING`s on it. It takes
/// no lock and creates no key.
///
/// Not part of interlock's API (hidden from its docs): it exists for `interlock bench`, and its
/// [`RawConnection`] follows the `redis` crate's version.
///
/// # Errors
///
/// As [`crate::connect`]: [`crate::Error::InvalidUrl`] for a URL the backend refuses,
/// [`crate::Error::Unavailable`] when the server cannot be reached, [`crate::Error::Auth`] when
/// it refuses the credentials.
#[doc(hidden)]
#[cfg(feature = "redis")]
pub async fn raw_connection(url: &str) -> Result<RawConnection> {
    raw::raw_connection(&config::RedisConfig::from_url(&LockUrl::parse(url)?)?).await
}
