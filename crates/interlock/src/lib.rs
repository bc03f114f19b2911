//! # interlock
//!
//! One correct lock API — mutex, read-write lock, semaphore — across threads, async tasks,
//! processes and hosts, on the coordination systems teams already run. The backend is chosen by
//! URL; the contract is the same everywhere.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
//! use std::time::Duration;
//!
//! let locks = interlock::connect("memory://").await?; // or file:///var/lock/myapp, ...
//! let job = locks.mutex("nightly-report")?;
//!
//! let guard = job.lock_timeout(Duration::from_secs(5)).await?;
//! let token = guard.fencing_token();          // hand this to the store you write to
//! assert!(job.try_lock().await?.is_none());   // held: contention is `None`, not an error
//! guard.release().await?;                     // reports a lock lost while held
//! # let _ = token;
//! # Ok(()) }
//! ```
//!
//! ## Backends
//!
//! | backend | URL | what holds the lock | released on holder crash by | status |
//! |---|---|---|---|---|
//! | file (default) | `file:///var/lock/myapp`, `file://` | `flock(2)` on `DIR/NAME` | the kernel, at once | built |
//! | memory | `memory://[SPACE]` | in-process state | process exit | built |
//! | Redis | `redis://[user[:pass]@]host:6379/0` | `SET key token NX PX lease` | lease expiry | built (feature `redis`; also `rediss://` and `redis+cluster://`) |
//! | Redlock | `redlock://h1:6379,h2:6379,h3:6379` | the same key on a majority | lease expiry | built (feature `redlock`; no semaphores) |
//! | ZooKeeper | `zk://h1:2181,h2:2181/locks` | ephemeral sequential znode | session expiry | planned |
//! | etcd | `etcd://h1:2379,h2:2379` | key with a lease | lease expiry | planned |
//! | MySQL / MariaDB | `mysql://user:pass@host:3306/db` | `GET_LOCK(name)` | connection close | planned |
//! | PostgreSQL | `postgres://user@host:5432/db` | `pg_advisory_lock(key)` | connection close | planned |
//!
//! ## The contract
//!
//! - **Three acquisition forms everywhere**: `try_*` (one attempt, `Ok(None)` on contention),
//!   `*_timeout(d)` ([`Error::Timeout`] after `d`), and the plain form (waits forever), plus
//!   `*_with(`[`AcquireOptions`]`)`. Dropping an acquire future mid-wait leaves nothing behind.
//! - **Every acquisition is an independent holder**, also between threads and tasks of one
//!   process. Locks are **not re-entrant**: a task that takes a lock it already holds waits for
//!   itself (or gets `None` from `try_*`).
//! - **Fencing tokens** on every guard ([`Guard::fencing_token`]): strictly increasing per name
//!   for exclusive holders, across processes and restarts.
//! - **Lost locks are visible**: [`Guard::lost`], [`Guard::is_lost`], and
//!   [`Guard::release`] returning [`Error::LockLost`].
//! - **Waiters wake on the backend's own signal**, not by polling; within one process waiters of
//!   a name queue locally (FIFO) so one waiter per process goes to the backend.
//!
//! ## What a distributed lock cannot promise
//!
//! A lock on another machine is a lease on time. A process can pause (GC, swap, `SIGSTOP`, a VM
//! migration) for longer than its lease; when it resumes, it may still believe it holds a lock that
//! expired and was given to someone else. interlock renews leases in the background and signals a
//! loss as soon as its local monotonic clock says the lease ran out, but no client-side check can
//! close the window between "I checked" and "my write landed". Protect anything that matters with
//! the fencing token: make the store reject writes carrying a token lower than the highest it has
//! seen. The `file` and `memory` backends cannot lose a lock while the process lives.
//!
//! ## Blocking use
//!
//! [`blocking`] has the same API without `async`.

#![warn(missing_docs)]

pub mod backends;
pub mod blocking;
mod error;
mod guard;
mod lease;
mod local;
mod name;
mod provider;
pub mod raw;
pub mod url;

pub use backends::{file, memory, redis, redlock};
pub use error::{BoxError, Error, Result};
pub use guard::{Guard, ValidityWatch};
pub use name::{LockName, MAX_NAME_LEN};
pub use provider::{AcquireOptions, Mutex, Provider, RwLock, Semaphore, WaitFor};
pub use raw::{DEFAULT_LEASE, HeldMode, LeaseModel, LockKind, LockStatus, finish_cleanups};
pub use url::LockUrl;

/// Connects to the backend named by `url` and returns a provider of locks.
///
/// | URL | backend |
/// |---|---|
/// | `file:///DIR` | `flock(2)` files in `DIR` (created 0700 by the first acquisition if missing) |
/// | `file://` | files in the default directory, `/tmp/interlock-$UID`, the same in every session of a user |
/// | `memory://[SPACE][?lease=DUR]` | in-process locks |
/// | `redis://[user[:pass]@]host[:port][/db][?prefix=P&lease=DUR]` | leased keys on one Redis server (cargo feature `redis`) |
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a malformed URL or an unknown option; [`Error::Unsupported`] for a
/// backend not built into this binary; [`Error::Io`] for an unusable lock directory; backend
/// connection errors ([`Error::Unavailable`], [`Error::Auth`]), also when the backend does not
/// connect within the URL's `connect_timeout` (every backend takes it; default
/// [`DEFAULT_CONNECT_TIMEOUT`]). Messages never show a password.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(interlock::connect("memory://").await.is_ok());
/// let err = interlock::connect("gopher://x").await.unwrap_err();
/// assert!(err.to_string().contains("unknown scheme"));
/// # }
/// ```
pub async fn connect(url: &str) -> Result<Provider> {
    let parsed = LockUrl::parse(url)?;
    let limit = parsed.options().take_duration(url::CONNECT_TIMEOUT)?.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    // The provider's background tasks, from the start: what a backend spawned while connecting
    // goes if the connection fails or takes too long.
    let tasks = raw::Tasks::new();
    let connected = match tokio::time::timeout(limit, backends::connect_raw(&parsed, &tasks)).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => {
            tasks.shutdown().await;
            return Err(e);
        }
        Err(_) => {
            tasks.shutdown().await;
            return Err(Error::Unavailable {
                backend: backends::for_scheme(parsed.scheme()).map_or("interlock", |b| b.name),
                message: format!("{parsed}: no connection within {limit:?} ({} option)", url::CONNECT_TIMEOUT),
                source: None,
            });
        }
    };
    let (raw, lease) = connected;
    Ok(Provider::from_raw_with_tasks(raw, lease, tasks, parsed.redacted().to_owned()))
}

/// How long [`connect`] waits for a backend to connect (and authenticate, and set up what it
/// needs) when the URL's `connect_timeout` option does not say.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
