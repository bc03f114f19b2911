//! `file:///DIR` (and `file://`, the default directory): `flock(2)` locks on files, no server.
//!
//! | property | value |
//! |---|---|
//! | what holds the lock | `flock(2)` on `DIR/NAME`, one open file description per guard |
//! | released on holder crash by | the kernel, at once |
//! | primitives | mutex and write lock (`LOCK_EX`), read lock (`LOCK_SH`), semaphore (one file per permit) |
//! | fencing | a counter in `DIR/.NAME.fence`, untouched by tools that truncate the lock file |
//! | lost locks | cannot happen while the process lives |
//! | waiting | inotify close events plus a bounded re-check; never a blocked thread, never a signal |
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

mod config;
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
use crate::raw::{BoxFuture, Capabilities};
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
    default_lease: None,
    capabilities: Capabilities::new(true, false, true),
    availability: Availability::Built,
    connect: Some(connect),
};

fn connect(url: &LockUrl) -> BoxFuture<'_, Result<Connected>> {
    Box::pin(async move {
        let provider = FileProvider::new(FileConfig::from_url(url)?);
        Ok((Arc::new(provider) as _, BACKEND.default_lease_config()))
    })
}

/// How many lock attempts (non-blocking `flock` calls) this process has made on the file backend.
/// A diagnostic for benchmarks: attempts per release show how many waiters each release woke.
pub fn lock_attempts() -> u64 {
    raw::ATTEMPTS.load(std::sync::atomic::Ordering::Relaxed)
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
