//! What the conformance suite needs from a backend: a URL, and hooks for fault cases.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use interlock::Provider;
use interlock::memory::Step;

/// A backend under test. The suite only uses these methods, so a new backend needs a harness and
/// one line of `conformance_suite!`.
pub trait Harness: Send + Sync + 'static {
    /// The URL of the backend under test (a fresh namespace per harness instance).
    fn url(&self) -> String;

    /// The `interlock` binary, for cross-process cases (`None`: those cases are skipped).
    fn bin(&self) -> Option<&Path>;

    /// A new provider; each call is a separate client (its own in-process queue).
    fn provider(&self) -> impl Future<Output = Provider> + Send {
        let url = self.url();
        async move { interlock::connect(&url).await.expect("connect") }
    }

    /// Fault hook: make every current holder of `name` lose its lock on the backend side (lease
    /// expiry, session kill). Returns false when the backend cannot lose locks.
    fn expire(&self, name: &str) -> impl Future<Output = bool> + Send;

    /// The lease to request in lost-lock cases, short enough that tests are quick.
    fn short_lease(&self) -> Duration {
        Duration::from_millis(600)
    }
}

/// `memory://` with a fresh space per harness, and a lease so that the lease monitor runs in
/// every case.
#[derive(Debug)]
pub struct MemoryHarness {
    space: String,
}

impl MemoryHarness {
    /// A harness with its own memory space.
    pub fn new() -> Self {
        MemoryHarness { space: crate::unique("conformance") }
    }

    /// A harness whose backend takes `latency` for every step (request, answer, release, renewal,
    /// undo), as a network backend does: each step becomes an await point that the suite's
    /// cancellations can hit.
    pub fn with_latency(latency: Duration) -> Self {
        let h = MemoryHarness::new();
        let space = interlock::memory::MemorySpace::named(&h.space);
        for step in [Step::Acquire, Step::Grant, Step::Undo, Step::Release, Step::Renew] {
            space.set_delay(step, Some(latency));
        }
        h
    }
}

impl Default for MemoryHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for MemoryHarness {
    fn url(&self) -> String {
        format!("memory://{}?lease=2s", self.space)
    }

    fn bin(&self) -> Option<&Path> {
        None
    }

    async fn expire(&self, name: &str) -> bool {
        interlock::memory::MemorySpace::named(&self.space).expire(name).expect("name");
        true
    }
}

/// `file://` in a fresh temporary directory.
#[derive(Debug)]
pub struct FileHarness {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl FileHarness {
    /// A harness with its own lock directory, driving `bin` (the `interlock` binary) for
    /// cross-process cases.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        FileHarness { dir: tempfile::tempdir().expect("tempdir"), bin: bin.into() }
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Harness for FileHarness {
    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn bin(&self) -> Option<&Path> {
        Some(&self.bin)
    }

    async fn expire(&self, _name: &str) -> bool {
        false
    }
}
