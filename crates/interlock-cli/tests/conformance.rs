//! The conformance suite (crates/interlock-testkit/src/conformance) against every backend built
//! here. It lives in the CLI crate because its cross-process cases drive the `interlock` binary
//! (`interlock hold`, `interlock worker`). Test names are `<backend>::<case>`.

/// A namespace of the shared private redis-server; when `redis-server` is missing the case returns
/// at once, skipped loudly (a failure with `INTERLOCK_TEST_REQUIRE=1`).
#[cfg(feature = "redis")]
macro_rules! redis_harness {
    () => {
        match interlock_testkit::RedisHarness::new(env!("CARGO_BIN_EXE_interlock")) {
            Some(h) => h,
            None => return,
        }
    };
}

/// A key prefix of the shared private 3-master Redis Cluster; skipped like `redis_harness!`.
#[cfg(feature = "redis")]
macro_rules! redis_cluster_harness {
    () => {
        match interlock_testkit::RedisClusterHarness::new(env!("CARGO_BIN_EXE_interlock")) {
            Some(h) => h,
            None => return,
        }
    };
}

/// A database of the shared private TLS `redis-server` (`rediss://`); skipped like `redis_harness!`.
#[cfg(feature = "redis")]
macro_rules! redis_tls_harness {
    () => {
        match interlock_testkit::RedisTlsHarness::new(env!("CARGO_BIN_EXE_interlock")) {
            Some(h) => h,
            None => return,
        }
    };
}

/// A namespace of the shared group of `$n` private redis-server masters (skipped as above).
#[cfg(feature = "redlock")]
macro_rules! redlock_harness {
    ($n:expr) => {
        match interlock_testkit::RedlockHarness::new(env!("CARGO_BIN_EXE_interlock"), $n) {
            Some(h) => h,
            None => return,
        }
    };
}

interlock_testkit::conformance_suites! {
    memory => interlock_testkit::MemoryHarness::new(),
    file => interlock_testkit::FileHarness::new(env!("CARGO_BIN_EXE_interlock")),
    #[cfg(feature = "redis")]
    redis => redis_harness!(),
    #[cfg(feature = "redis")]
    redis_cluster => redis_cluster_harness!(),
    #[cfg(feature = "redis")]
    redis_tls => redis_tls_harness!(),
    #[cfg(feature = "redlock")]
    redlock => redlock_harness!(3),
    #[cfg(feature = "redlock")]
    redlock5 => redlock_harness!(5),
    memory_latency => interlock_testkit::MemoryHarness::with_latency(std::time::Duration::from_millis(2)),
    // The memory backend in the other lease models and with server-side timeouts: the paths of
    // the SQL, ZooKeeper and etcd backends, before they exist (docs/backends/memory.md).
    memory_no_expiry => interlock_testkit::MemoryHarness::without_expiry(),
    memory_like_sql => interlock_testkit::MemoryHarness::like_sql(),
    memory_session => interlock_testkit::MemoryHarness::with_session(),
    memory_like_zookeeper => interlock_testkit::MemoryHarness::like_zookeeper(),
}

/// Every backend this build has is complete: a docs page, and a line above that runs the suite
/// on it, under the backend's registry name. (Adding a backend: see docs/testing.md, "Adding a
/// backend".)
#[test]
fn every_built_backend_has_a_docs_page_and_a_conformance_harness() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let suites = conformance_suites();
    for b in interlock::backends::backends() {
        if b.availability != interlock::backends::Availability::Built {
            continue;
        }
        assert!(!b.docs.is_empty() && root.join(b.docs).is_file(), "{}: no docs page at {:?}", b.name, b.docs);
        assert!(
            suites.contains(&b.name),
            "{}: no conformance suite named so in this file (suites: {suites:?})",
            b.name
        );
    }
}

/// The `interlock` binary forwards every backend feature of the library, and has them all by
/// default.
#[test]
fn the_binary_forwards_every_backend_feature_by_default() {
    let manifest =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let default = manifest.lines().find(|l| l.trim_start().starts_with("default =")).unwrap_or("");
    for b in interlock::backends::backends() {
        let (Some(feature), false) = (b.feature, b.availability == interlock::backends::Availability::Planned) else {
            continue;
        };
        // `NAME = ["interlock/NAME"]`, or followed by what the CLI itself needs for the backend.
        let forward = format!("{feature} = [\"interlock/{feature}\"");
        assert!(manifest.contains(&forward), "crates/interlock-cli/Cargo.toml lacks `{forward}...]`");
        assert!(default.contains(&format!("\"{feature}\"")), "`{feature}` is not in the CLI's default features");
    }
}
