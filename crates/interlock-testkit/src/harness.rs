//! What the conformance suite needs from a backend: a URL, and hooks for fault cases. The
//! harnesses themselves live with their backends, in [`crate::backends`].

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use interlock::Provider;

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
