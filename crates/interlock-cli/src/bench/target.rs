//! What the bench measures: the backend behind a URL, the lock directory when it is a file
//! backend, and the unique lock names (`bench-<pid>-<workload>`) that keep a bench from ever
//! touching real locks.

use std::path::PathBuf;

use interlock::Provider;

use super::holdtime::HoldTime;
use crate::acquire;
use crate::exit::Failure;

/// The backend under test.
#[derive(Debug)]
pub struct Target {
    /// The URL as given: passed to client processes in `$INTERLOCK_URL`, never shown.
    url: String,
    /// The provider the bench process itself uses.
    pub provider: Provider,
    /// The backend's short name (`file`, `memory`, ...).
    pub backend: &'static str,
    /// The lock directory, for the file backend.
    pub lock_dir: Option<PathBuf>,
    /// True when locks are visible to other processes (clients can then be processes).
    pub cross_process: bool,
    /// contended: how long a client keeps the lock (`--hold`), ours and the floor's clients alike.
    pub hold: HoldTime,
    prefix: String,
}

impl Target {
    /// Connects to `url`.
    ///
    /// # Errors
    ///
    /// 64 for a bad URL, 69 for a backend that cannot be used.
    pub async fn connect(url: &str) -> Result<Target, Failure> {
        let provider = acquire::connect(url).await?;
        let backend = provider.backend();
        let lock_dir = match interlock::LockUrl::parse(url) {
            Ok(u) if u.scheme() == "file" && u.path().is_empty() => Some(interlock::file::default_dir_path()),
            Ok(u) if u.scheme() == "file" => Some(PathBuf::from(u.path())),
            _ => None,
        };
        if let Some(dir) = &lock_dir {
            // The floors open files in the directory before any lock is taken: create it now,
            // as the first acquisition would.
            interlock::file::prepare_dir(dir).map_err(|e| Failure::from_lock(&e, crate::exit::CONFLICT_DEFAULT))?;
        }
        let cross_process = provider.capabilities().cross_process;
        Ok(Target {
            url: url.to_owned(),
            provider,
            backend,
            lock_dir,
            cross_process,
            hold: HoldTime::ZERO,
            prefix: format!("bench-{}", std::process::id()),
        })
    }

    /// The URL with any password hidden, for output.
    pub fn shown_url(&self) -> &str {
        self.provider.url()
    }

    /// The URL as given, for `$INTERLOCK_URL` of client processes only.
    pub fn secret_url(&self) -> &str {
        &self.url
    }

    /// A fresh provider on the same backend (an independent client in this process).
    ///
    /// # Errors
    ///
    /// As [`Target::connect`].
    pub async fn new_provider(&self) -> Result<Provider, Failure> {
        acquire::connect(&self.url).await
    }

    /// The lock name a workload uses: `bench-<pid>-<workload>`.
    pub fn name(&self, workload: &str) -> String {
        format!("{}-{workload}", self.prefix)
    }

    /// Removes the files this bench run left in the lock directory: every name starting with
    /// `bench-<pid>-<workload>` or `.bench-<pid>-<workload>` (lock, fencing and semaphore files).
    /// Our names are unique to this run and every client has exited, so nobody else uses them.
    pub fn cleanup(&self, workload: &str) {
        let Some(dir) = &self.lock_dir else { return };
        let ours = self.name(workload);
        let hidden = format!(".{ours}");
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if (name.starts_with(&ours) || name.starts_with(&hidden))
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::debug!(path = %entry.path().display(), error = %e, "cannot remove a bench lock file");
            }
        }
    }
}
