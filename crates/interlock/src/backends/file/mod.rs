//! `file:///DIR` (and `file://`, the default directory): `flock(2)` locks on files, no server.
//!
//! | property | value |
//! |---|---|
//! | what holds the lock | `flock(2)` on `DIR/NAME`, one open file description per guard |
//! | released on holder crash by | the kernel, at once |
//! | primitives | mutex and write lock (`LOCK_EX`), read lock (`LOCK_SH`), semaphore (one file per permit) |
//! | fencing | a counter in `DIR/.NAME.fence`, untouched by tools that truncate the lock file |
//! | lost locks | cannot happen while the process lives |
//! | waiting | in the kernel (a blocking `flock` on a small pool's thread); inotify past the pool's bound; never a signal |
//! | limits | local filesystems only (NFS emulates `flock` with POSIX locks); at most 1024 permits |
//! | interop | `flock(1)` (`-s` for shared), Python `fcntl.flock`, filelock, portalocker |
//!
//! Name mapping (pinned by golden tests): safe names (`[A-Za-z0-9_][A-Za-z0-9_.-]*`, at most 200
//! bytes) are used verbatim; other names are percent-encoded, and hashed when long. No name can
//! leave the directory. See `docs/backends/file.md` for the whole page.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> interlock::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let locks = interlock::connect(&format!("file://{}", dir.path().display())).await?;
//! let guard = locks.mutex("nightly")?.lock().await?;
//! assert!(dir.path().join("nightly").exists()); // `flock DIR/nightly` meets us here
//! guard.release().await?;
//! # Ok(()) }
//! ```

mod blocker;
mod clofork;
mod config;
mod fdcache;
mod fence;
mod mapping;
mod raw;
mod status;
mod watch;

use config::FileConfig;
pub use config::{default_dir_path, prepare_dir};
use raw::FileProvider;

use std::sync::Arc;

use super::{Availability, Backend, Connected};
use crate::error::Result;
use crate::raw::{BoxFuture, Capabilities, Tasks};
use crate::url::LockUrl;

/// The file backend's registry entry.
pub(crate) const BACKEND: Backend = Backend {
    name: raw::BACKEND,
    title: "file",
    schemes: &["file"],
    url_form: "file:///DIR, file:// (the default directory)",
    holds: "flock(2) on DIR/NAME",
    feature: None,
    docs: "docs/backends/file.md",
    capabilities: Capabilities::new(true, false, true),
    availability: Availability::Built,
    connect: Some(connect),
};

fn connect<'a>(url: &'a LockUrl, _: &'a Tasks) -> BoxFuture<'a, Result<Connected>> {
    Box::pin(async move {
        let provider = FileProvider::new(FileConfig::from_url(url)?);
        Ok((Arc::new(provider) as _, None))
    })
}

/// How many lock attempts (`flock` calls that try to take a lock file or permit: non-blocking
/// ones, and blocking ones made by a waiter) this process has made on the file backend. A
/// diagnostic for benchmarks: attempts per release show how many waiters each release woke.
pub fn lock_attempts() -> u64 {
    raw::ATTEMPTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Ghost holds of this process so far (see docs/backends/file.md, "Waiting"): a waiter blocked
/// in the kernel for a caller that has gone (deadline, cancellation) gets the lock later and
/// unlocks it at once, unless a later waiter of this process adopted its place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GhostStats {
    /// Locks taken for a caller that had gone, and released at once.
    pub holds: u64,
    /// The longest of those holds (from `flock` returning to the unlock returning).
    pub longest: std::time::Duration,
    /// Abandoned waits taken over by a later waiter of this process (no ghost hold).
    pub adopted: u64,
}

/// This process's [`GhostStats`], a diagnostic for tests and benchmarks.
pub fn ghost_stats() -> GhostStats {
    let (holds, longest, adopted) = blocker::ghost_stats();
    GhostStats { holds, longest, adopted }
}

/// The file (inside the lock directory) that lock `name` maps to, for tools that want to meet
/// interlock on the same file.
///
/// # Examples
///
/// ```
/// assert_eq!(interlock::file::lock_file_name("deploy"), "deploy");
/// assert_eq!(interlock::file::lock_file_name("jobs/clean up"), "jobs%2Fclean%20up");
/// ```
pub fn lock_file_name(name: &str) -> String {
    mapping::file_name(name)
}
