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
