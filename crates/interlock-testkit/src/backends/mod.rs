//! One module per backend, mirroring `crates/interlock/src/backends/<name>/`: the backend's
//! [`Harness`](crate::Harness) (how the conformance suite reaches it and breaks it), and, for a
//! network backend, its use of the server in `servers/<name>.rs`.
//!
//! A new backend adds `NAME.rs` here with its `NAMEHarness`, re-exported at the crate root (see
//! `docs/testing.md`, "Adding a backend").

pub mod file;
pub mod memory;
pub mod redis;
pub mod redis_cluster;
pub mod redis_tls;
pub mod redlock;

/// Where a network harness's server lives: a namespace `N` of the server `S` that the test binary
/// shares, or a server of its own (leaked, so that the namespace may borrow it for `'static`; the
/// harness kills it when dropped) with a namespace of it. Only a server of its own may be
/// restarted, killed or otherwise broken by a fault hook.
#[derive(Debug)]
pub(crate) enum Home<S: 'static, N> {
    Shared(N),
    Own(&'static S, N),
}

impl<S, N> Home<S, N> {
    /// The harness's namespace, wherever its server lives.
    pub(crate) fn ns(&self) -> &N {
        match self {
            Home::Shared(ns) | Home::Own(_, ns) => ns,
        }
    }

    /// The harness's own server; `None` on the shared one.
    pub(crate) fn own(&self) -> Option<&'static S> {
        match self {
            Home::Own(server, _) => Some(server),
            Home::Shared(_) => None,
        }
    }
}
