//! The `memory://` harness: a fresh space per harness, and the memory backend's fault hooks
//! ([`interlock::memory::MemorySpace`]) standing in for a server's. The memory backend runs in
//! each lease model and with server-side timeouts (`expiry=`, `timeouts=`, see
//! docs/backends/memory.md), so the suite walks the paths of the network backends before they
//! exist: [`MemoryHarness::new`] (a lease per lock, as Redis), [`MemoryHarness::without_expiry`],
//! [`MemoryHarness::like_sql`] (locks on connections, server-side timeouts: MySQL, PostgreSQL),
//! [`MemoryHarness::with_session`] (one session lease per provider: etcd) and
//! [`MemoryHarness::like_zookeeper`] (a session and server-side timeouts).

use std::path::Path;
use std::time::Duration;

use interlock::memory::{MemorySpace, Step};

use crate::harness::Harness;

/// `memory://` with a fresh space per harness, in one of the backend's models.
#[derive(Debug)]
pub struct MemoryHarness {
    space: String,
    /// The URL's options (`lease=2s`, `expiry=session&lease=2s`, ...).
    options: &'static str,
}

/// Every step of the backend, for the latency variants.
const STEPS: [Step; 6] = [Step::Acquire, Step::Grant, Step::Undo, Step::Release, Step::Renew, Step::TimedOut];

impl MemoryHarness {
    /// A lease per lock (`?lease=2s`), so that the lease monitor runs in every case.
    pub fn new() -> Self {
        MemoryHarness::with_options("lease=2s")
    }

    /// `memory://SPACE?OPTIONS` (fresh space), in whatever model the options choose.
    pub fn with_options(options: &'static str) -> Self {
        MemoryHarness { space: crate::unique("conformance"), options }
    }

    /// Locks that never expire and cannot be lost (`expiry=none`): the reference for `file`.
    pub fn without_expiry() -> Self {
        MemoryHarness::with_options("expiry=none")
    }

    /// As a SQL backend: no lease, each lock on a connection of its own that the fault hooks kill
    /// (the holder told at once), waits that time out on the server (`timeouts=server`), and 2 ms
    /// on every step.
    pub fn like_sql() -> Self {
        MemoryHarness::with_options("expiry=connection&timeouts=server").latency(Duration::from_millis(2))
    }

    /// One session lease (2 s) per provider, kept alive by a task of the provider; its end ends
    /// every lock of it (`expiry=session`), as on etcd with a lease per client.
    pub fn with_session() -> Self {
        MemoryHarness::with_options("expiry=session&lease=2s")
    }

    /// As ZooKeeper: a session (2 s) per provider, waits that time out on the server, and 2 ms on
    /// every step.
    pub fn like_zookeeper() -> Self {
        MemoryHarness::with_options("expiry=session&lease=2s&timeouts=server").latency(Duration::from_millis(2))
    }

    /// A harness whose backend takes `latency` for every step (request, answer, release, renewal,
    /// undo), as a network backend does: each step becomes an await point that the suite's
    /// cancellations can hit.
    pub fn with_latency(latency: Duration) -> Self {
        MemoryHarness::new().latency(latency)
    }

    /// The same harness with `latency` on every step.
    pub fn latency(self, latency: Duration) -> Self {
        let space = self.space();
        for step in STEPS {
            space.set_delay(step, Some(latency));
        }
        self
    }

    /// The memory space of this harness, for its fault hooks.
    pub fn space(&self) -> MemorySpace {
        MemorySpace::named(&self.space)
    }

    fn has(&self, option: &str) -> bool {
        self.options.split('&').any(|o| o == option)
    }
}

impl Default for MemoryHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for MemoryHarness {
    fn url(&self) -> String {
        format!("memory://{}?{}", self.space, self.options)
    }

    fn bin(&self) -> Option<&Path> {
        None
    }

    /// Per lock: the holders are forgotten, as at a lease expiry. With a session: the holders'
    /// sessions lapse (every lock of them goes). On connections: the connections are killed.
    async fn expire(&self, name: &str) -> bool {
        self.space().expire(name).expect("name");
        !self.has("expiry=none")
    }

    /// The space forgets every holder and tells each (its session ended with the server); the
    /// fencing counters are kept, so tokens go on increasing.
    async fn restart_server(&self) -> bool {
        self.space().restart();
        true
    }

    /// Memory guards behave like one session per lock (or the provider's session): `revoke`
    /// pushes the loss to the holders of `name` (with a session, to every lock of it) and wakes
    /// the waiters, as a server does when it kills a session.
    async fn kill_connections(&self, name: &str) -> bool {
        self.space().revoke(name).expect("name");
        true
    }

    /// A lock on a connection lives as long as the connection, which a stopped holder keeps.
    fn stopped_holder_loses_lock(&self) -> bool {
        !self.has("expiry=connection")
    }

    /// The holders' renewals wait (with a session, its keep-alive too), as a stopped process
    /// renews nothing (memory locks cannot be held by another process, so there is no
    /// `interlock hold` to stop).
    async fn pause_holders(&self, name: &str) -> bool {
        self.space().pause_holders(name).expect("name");
        true
    }

    async fn resume_holders(&self, name: &str) -> bool {
        self.space().resume_holders(name).expect("name");
        true
    }
}
