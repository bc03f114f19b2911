//! Test support for interlock: the conformance suite every backend runs, one module per backend
//! with its harness ([`backends`], mirroring the library's `backends/<name>/`), helper processes
//! (`interlock hold`, `interlock worker`), and the plumbing to run private server processes on
//! loopback ([`servers`]).
//!
//! A backend's test file instantiates the suite once per harness:
//!
//! ```ignore
//! interlock_testkit::conformance_suites! {
//!     file => interlock_testkit::FileHarness::new(env!("CARGO_BIN_EXE_interlock")),
//! }
//! ```
//!
//! which expands into one `#[tokio::test]` per case, named `file::<case>`, so a failure names both,
//! and a `conformance_suites()` list of the suites.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod backends;
pub mod conformance;
pub mod harness;
pub mod process;
pub mod servers;

pub use backends::file::FileHarness;
pub use backends::memory::MemoryHarness;
pub use backends::redis::RedisHarness;
pub use backends::redis_cluster::RedisClusterHarness;
pub use backends::redis_tls::RedisTlsHarness;
pub use backends::redlock::RedlockHarness;
pub use harness::Harness;

/// True when missing tools or servers must fail the tests (`INTERLOCK_TEST_REQUIRE=1`, as in CI).
pub fn required() -> bool {
    std::env::var("INTERLOCK_TEST_REQUIRE").is_ok_and(|v| v == "1")
}

/// Skips (loudly) or fails, depending on [`required`]. Returns normally when skipping, so
/// callers write `if !have_x { return skip("x") }`.
///
/// # Panics
///
/// When `INTERLOCK_TEST_REQUIRE=1`.
pub fn skip(what: &str) {
    if required() {
        panic!("{what} is required (INTERLOCK_TEST_REQUIRE=1)");
    }
    eprintln!("\n*** SKIPPED: {what} (set INTERLOCK_TEST_REQUIRE=1 to make this a failure) ***\n");
}

/// The error's message, asserted to be one line (every error interlock shows is).
///
/// # Panics
///
/// When the message has a line break.
pub fn one_line(e: &interlock::Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "not one line: {s:?}");
    s
}

/// A lock name no other test uses: `prefix-PID-N`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
