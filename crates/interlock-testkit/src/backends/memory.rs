//! The `memory://` harness: a fresh space per harness, and the memory backend's fault hooks
//! ([`interlock::memory::MemorySpace`]) standing in for a server's.

use std::path::Path;
use std::time::Duration;

use interlock::memory::{MemorySpace, Step};

use crate::harness::Harness;

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
        let space = h.space();
        for step in [Step::Acquire, Step::Grant, Step::Undo, Step::Release, Step::Renew] {
            space.set_delay(step, Some(latency));
        }
        h
    }

    /// The memory space of this harness, for its fault hooks.
    pub fn space(&self) -> MemorySpace {
        MemorySpace::named(&self.space)
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
        self.space().expire(name).expect("name");
        true
    }

    /// The space forgets every holder and tells each (its session ended with the server); the
    /// fencing counters are kept, so tokens go on increasing.
    async fn restart_server(&self) -> bool {
        self.space().restart();
        true
    }

    /// Memory guards behave like one session per lock: `revoke` pushes the loss to the holders
    /// of `name` and wakes the waiters, as a server does when it kills a session.
    async fn kill_connections(&self, name: &str) -> bool {
        self.space().revoke(name).expect("name");
        true
    }

    /// The holders' renewals wait, as a stopped process renews nothing (memory locks cannot be
    /// held by another process, so there is no `interlock hold` to stop).
    async fn pause_holders(&self, name: &str) -> bool {
        self.space().pause_holders(name).expect("name");
        true
    }

    async fn resume_holders(&self, name: &str) -> bool {
        self.space().resume_holders(name).expect("name");
        true
    }
}
