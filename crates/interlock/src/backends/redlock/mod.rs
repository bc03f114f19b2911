//! `redlock://`: the Redlock algorithm over N independent Redis masters (3 or more, usually 3
//! or 5): the redis backend's key on each master, granted when a quorum (`N/2 + 1`) set it, with
//! fencing tokens that are the quorum's maximum written back to a majority.
//!
//! | property | value |
//! |---|---|
//! | what holds the lock | the key `prefix + name` with this holder's token and `PX lease` on a quorum of masters |
//! | validity | lease − time the acquiring round took − drift (1% of the lease + 2 ms), by the local monotonic clock; renewed by quorum |
//! | released on holder crash by | lease expiry (default 10 s) |
//! | primitives | mutex, read-write lock (per master: readers in a ZSET with per-holder expiry; a waiting writer keeps new readers out); no semaphores |
//! | fencing | each master `INCR`s its own counter `{K}:fence` in the acquire script; the token is the quorum's maximum, written back (set-if-greater, while the lock is held there) to a majority before the guard is returned |
//! | lost locks | a renewal round where too many masters say the lock is not ours, or no quorum extended it before the validity ran out |
//! | waiting | waiters queue per master (ranked by their own start time, the same everywhere; FIFO among writers); a release that frees the lock PUBLISHes the first waiting writer on `{K}:released`, where waiters subscribe (RESP3) before the attempt that precedes their wait; after a split vote, the next wake-up or a random jitter; re-check at the holder's TTL and every 500 ms at most |
//! | interop | redlock-py (`Redlock([...]).lock(name, ttl)`) and pottery's `Redlock` (`?prefix=redlock:`) on the same masters |
//! | limits | at least 3 masters; no semaphores; no TLS; see `docs/backends/redlock.md` |
//!
//! The whole page, with the fencing argument and its assumptions, is `docs/backends/redlock.md`.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
//! let locks = interlock::connect("redlock://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379?lease=30s").await?;
//! let guard = locks.mutex("nightly")?.lock().await?;   // the key `nightly` on at least 2 of the 3
//! let token = guard.fencing_token();                   // never goes back (docs: "Fencing")
//! guard.release().await?;
//! # let _ = token; Ok(()) }
//! ```

#[cfg(feature = "redlock")]
mod config;
mod keys;
#[cfg(feature = "redlock")]
mod raw;
#[cfg(feature = "redlock")]
mod scripts;
#[cfg(feature = "redlock")]
mod wake;

use std::time::Duration;

#[cfg(feature = "redlock")]
use super::Connected;
use super::{Availability, Backend};
use crate::raw::{Capabilities, LeaseModel};
#[cfg(feature = "redlock")]
use crate::{
    error::Result,
    raw::{BoxFuture, Tasks},
    url::LockUrl,
};

pub(crate) const BACKEND_NAME: &str = "redlock";

/// The Redlock backend's registry entry.
pub(crate) const BACKEND: Backend = Backend {
    name: BACKEND_NAME,
    title: "Redlock",
    schemes: &["redlock", "redlocks"],
    url_form: "redlock[s]://[user[:pass]@]h1[:port],h2[:port],h3[:port][/db][?prefix=P&lease=DUR&renew=DUR&command_timeout=DUR\
               &ca=PATH&cert=PATH&key=PATH] (redlocks: TLS to every master)",
    holds: "the same key on a majority of masters",
    feature: Some("redlock"),
    docs: "docs/backends/redlock.md",
    capabilities: Capabilities::new(true, true, true).without_semaphore().with_lease(LeaseModel::PerLock),
    availability: if cfg!(feature = "redlock") { Availability::Built } else { Availability::FeatureOff },
    connect: CONNECT,
};

#[cfg(feature = "redlock")]
const CONNECT: Option<super::Connect> = Some(connect);
#[cfg(not(feature = "redlock"))]
const CONNECT: Option<super::Connect> = None;

#[cfg(feature = "redlock")]
fn connect<'a>(url: &'a LockUrl, tasks: &'a Tasks) -> BoxFuture<'a, Result<Connected>> {
    Box::pin(async move {
        let config = config::RedlockConfig::from_url(url)?;
        let lease = config.lease;
        let provider = raw::RedlockProvider::connect(config, tasks.clone()).await?;
        Ok((std::sync::Arc::new(provider) as _, Some(lease)))
    })
}

/// The fewest masters a `redlock://` URL may name: 3 (one master is `redis://`; two survive no
/// failure, so they are refused too).
pub const MIN_MASTERS: usize = 3;

/// How often, at most, a waiter re-checks a lock without a wake-up (a peer tool released it
/// without publishing, or a master's connection dropped): 500 ms, plus a random jitter of up to
/// 50 ms.
pub const RECHECK: Duration = Duration::from_millis(500);

#[cfg(feature = "redlock")]
const _: () = {
    assert!(RECHECK.as_millis() == raw::RECHECK.as_millis());
    assert!(MIN_MASTERS == config::MIN_MASTERS);
};

/// The quorum of `masters` masters: `masters / 2 + 1`.
///
/// # Examples
///
/// ```
/// assert_eq!(interlock::redlock::quorum(3), 2);
/// assert_eq!(interlock::redlock::quorum(5), 3);
/// ```
pub fn quorum(masters: usize) -> usize {
    masters / 2 + 1
}

/// The key that lock `name` uses on every master: the redis backend's, `prefix + name`.
///
/// # Examples
///
/// ```
/// assert_eq!(interlock::redlock::lock_key("redlock:", "deploy"), "redlock:deploy");
/// ```
pub fn lock_key(prefix: &str, name: &str) -> String {
    keys::Keys::new(prefix, name).lock
}

/// Opens a plain connection of its own to every master of `url` (in the URL's order), as
/// [`crate::redis::raw_connection`] does for one server: for measurements next to interlock's
/// (`interlock bench`'s floor sends one `PING` to every master at once). It takes no lock.
///
/// Not part of interlock's API (hidden from its docs): it exists for `interlock bench`.
///
/// # Errors
///
/// As [`crate::connect`], when the URL is refused or any master cannot be reached.
#[doc(hidden)]
#[cfg(feature = "redlock")]
pub async fn raw_connections(url: &str) -> Result<Vec<crate::redis::RawConnection>> {
    raw::raw_connections(&config::RedlockConfig::from_url(&LockUrl::parse(url)?)?).await
}
