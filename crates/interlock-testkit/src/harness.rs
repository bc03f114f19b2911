//! What the conformance suite needs from a backend: a URL, and hooks for fault cases. The
//! harnesses themselves live with their backends, in [`crate::backends`].
//!
//! A fault hook answers in one of three ways:
//!
//! - `true`: it did it, and the case goes on;
//! - `false` from the harness's own method: it cannot (no server to restart, locks that outlive
//!   their connection, a server shared with other cases), and the case says it is not applicable
//!   on stderr (`conformance: CASE: not applicable (WHY)`) and passes; the method's docs say why;
//! - the trait's default, for a hook the harness does not implement: it skips loudly
//!   ([`crate::skip`]: `*** SKIPPED: ... ***`, and a failure with `INTERLOCK_TEST_REQUIRE=1`, as
//!   in CI), then answers `false`. A hook is only called where the backend's capabilities say the
//!   case applies (a backend that cannot lose locks is never asked to expire one), so a harness
//!   implements the hooks its backend can reach, declines the others it cannot serve with `false`
//!   and a reason, and leaves the rest out.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use interlock::Provider;

/// A backend under test. The suite only uses these methods, so a new backend needs a harness and
/// one line of `conformance_suites!`.
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
    /// expiry, session kill). Returns false when the harness cannot. Called only on backends that
    /// can lose locks. Default: not implemented (see the module docs).
    fn expire(&self, name: &str) -> impl Future<Output = bool> + Send {
        let _ = name;
        async { missing_hook::<Self>("expire") }
    }

    /// Fault hook: restart the server behind [`Harness::url`] without the locks it held, as a
    /// server restarted without persistence forgets every lock and session (Redis without an
    /// append-only file, a database restart that ends every session). Returns when the server
    /// accepts connections again; false when the harness cannot restart its backend (no server,
    /// or one shared with other cases: restart only a server no other case uses). The providers
    /// made before the restart must work after it. Called only on backends that can lose locks.
    /// Default: not implemented (see the module docs).
    fn restart_server(&self) -> impl Future<Output = bool> + Send {
        async { missing_hook::<Self>("restart_server") }
    }

    /// Fault hook for backends made of several servers (Redlock masters, a ZooKeeper or etcd
    /// ensemble): kill (SIGKILL) `k` of them, and return how many there are in all, or `None`
    /// when the harness has a single server or none (the default: the case is then not
    /// applicable, and says so). The members stay dead for the rest of the case (the harness
    /// restarts them for the next one).
    fn kill_members(&self, k: usize) -> impl Future<Output = Option<usize>> + Send {
        let _ = k;
        async { None }
    }

    /// Whether fencing tokens keep increasing across [`Harness::restart_server`] (DESIGN section
    /// 2 asks it of every backend: the counter must survive the restart). A harness returns false
    /// only for a server configured so that its counters are lost with a restart, and the
    /// backend's docs then say so; the restart case then checks everything but the tokens.
    fn tokens_survive_restart(&self) -> bool {
        true
    }

    /// Fault hook: kill, server-side, the connection or session that holds `name` for each of its
    /// current holders (`KILL` on MySQL, `pg_terminate_backend`, a ZooKeeper session expiry), as
    /// an administrator or a network failure would. Returns false when the harness cannot, or
    /// when the backend's locks do not live in a connection (a Redis key outlives the client
    /// connection that set it: killing that connection must not lose the lock at all). Called only
    /// on backends that can lose locks. Default: not implemented (see the module docs).
    fn kill_connections(&self, name: &str) -> impl Future<Output = bool> + Send {
        let _ = name;
        async { missing_hook::<Self>("kill_connections") }
    }

    /// Fault hook for backends whose locks outlive the connection that took them (Redis, Redlock):
    /// kill, server-side, every client connection of this harness's namespace (`CLIENT KILL`), as
    /// an administrator or a network failure would. Waits, releases and renewals must go on over
    /// new connections. Returns false when the harness cannot (the default: the cases are then not
    /// applicable, and say so; backends whose locks die with their connection use
    /// [`Harness::kill_connections`] instead).
    fn kill_client_connections(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// Whether a holder that stops (SIGSTOP) loses its lock once its lease runs out: true where a
    /// lock lives in a lease or a session that its holder must keep alive (Redis, etcd,
    /// ZooKeeper, memory with a lease); false where it lives as long as a connection, which the
    /// kernel keeps open for a stopped process (MySQL `GET_LOCK`, PostgreSQL advisory locks). The
    /// paused-holder case is not applicable when false.
    fn stopped_holder_loses_lock(&self) -> bool {
        true
    }

    /// Fault hook for holders in this process: make the current holders of `name` stop renewing,
    /// as SIGSTOP of their process would, until [`Harness::resume_holders`]. The paused-holder case
    /// uses a real `interlock hold` process stopped with SIGSTOP when the backend crosses
    /// processes ([`Harness::bin`]) and this hook otherwise (so only harnesses without a binary, or
    /// of backends that do not cross processes, need it). Returns false when the harness cannot.
    /// Default: not implemented (see the module docs).
    fn pause_holders(&self, name: &str) -> impl Future<Output = bool> + Send {
        let _ = name;
        async { missing_hook::<Self>("pause_holders") }
    }

    /// Fault hook: let the holders of `name` paused by [`Harness::pause_holders`] go on (SIGCONT).
    /// Returns false when the harness cannot. Default: not implemented (see the module docs).
    fn resume_holders(&self, name: &str) -> impl Future<Output = bool> + Send {
        let _ = name;
        async { missing_hook::<Self>("resume_holders") }
    }

    /// The lease to request in lost-lock cases, short enough that tests are quick.
    fn short_lease(&self) -> Duration {
        Duration::from_millis(600)
    }
}

/// What a fault hook the harness does not implement does: skips loudly (a failure with
/// `INTERLOCK_TEST_REQUIRE=1`), naming the harness and the hook, and answers that it cannot.
fn missing_hook<H: ?Sized>(hook: &str) -> bool {
    crate::skip(&format!(
        "conformance: the case needs Harness::{hook}, which {} does not implement",
        std::any::type_name::<H>()
    ));
    false
}
