//! The conformance suite (crates/interlock-testkit/src/conformance) against every backend built
//! here. It lives in the CLI crate because its cross-process cases drive the `interlock` binary
//! (`interlock hold`, `interlock worker`). Test names are `<backend>::<case>`.

interlock_testkit::conformance_suite!(memory, interlock_testkit::MemoryHarness::new());
interlock_testkit::conformance_suite!(file, interlock_testkit::FileHarness::new(env!("CARGO_BIN_EXE_interlock")));
interlock_testkit::conformance_suite!(
    memory_latency,
    interlock_testkit::MemoryHarness::with_latency(std::time::Duration::from_millis(2))
);
