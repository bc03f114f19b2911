//! The harness's fault hooks: one that a harness does not implement skips loudly (a failure with
//! `INTERLOCK_TEST_REQUIRE=1`), one that it declines (`false`) makes the case not applicable.
//! Each case runs in a child process of this test binary, so that `INTERLOCK_TEST_REQUIRE` can be
//! set for it alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use interlock_testkit::{Harness, conformance, unique};

/// Set in the child: which harness (`bare` or `declining`) and which case it runs.
const CHILD_ENV: &str = "INTERLOCK_TESTKIT_HARNESS_CHILD";

/// The cases that need a fault hook, and the hook each needs first, on a backend that can lose
/// locks and crosses no process (memory with a lease).
const CASES: &[(&str, &str)] = &[
    ("lost_lock_is_signalled", "expire"),
    ("stale_release_never_frees_another_holder", "expire"),
    ("monitor_ends_with_its_guard", "expire"),
    ("server_restart_signals_lost_to_every_holder", "restart_server"),
    ("killed_connection_signals_lost_and_wakes_the_next_waiter", "kill_connections"),
    ("paused_holder_reports_lost_on_resume", "pause_holders"),
];

/// `memory://` with a lease, and no fault hook at all: the trait's defaults.
struct Bare {
    space: String,
}

impl Harness for Bare {
    fn url(&self) -> String {
        format!("memory://{}?lease=2s", self.space)
    }

    fn bin(&self) -> Option<&Path> {
        None
    }
}

/// The same backend, with every fault hook declined.
struct Declining {
    space: String,
}

impl Harness for Declining {
    fn url(&self) -> String {
        format!("memory://{}?lease=2s", self.space)
    }

    fn bin(&self) -> Option<&Path> {
        None
    }

    async fn expire(&self, _name: &str) -> bool {
        false
    }

    async fn restart_server(&self) -> bool {
        false
    }

    async fn kill_connections(&self, _name: &str) -> bool {
        false
    }

    async fn pause_holders(&self, _name: &str) -> bool {
        false
    }

    async fn resume_holders(&self, _name: &str) -> bool {
        false
    }
}

async fn run_case<H: Harness>(h: &H, case: &str) {
    match case {
        "lost_lock_is_signalled" => conformance::lost_lock_is_signalled(h).await,
        "stale_release_never_frees_another_holder" => conformance::stale_release_never_frees_another_holder(h).await,
        "monitor_ends_with_its_guard" => conformance::monitor_ends_with_its_guard(h).await,
        "server_restart_signals_lost_to_every_holder" => {
            conformance::server_restart_signals_lost_to_every_holder(h).await
        }
        "killed_connection_signals_lost_and_wakes_the_next_waiter" => {
            conformance::killed_connection_signals_lost_and_wakes_the_next_waiter(h).await;
        }
        "paused_holder_reports_lost_on_resume" => conformance::paused_holder_reports_lost_on_resume(h).await,
        other => panic!("no case {other}"),
    }
}

/// Runs `case` on `harness` in a child process, `INTERLOCK_TEST_REQUIRE` set to `require`.
fn child(harness: &str, case: &str, require: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_runs_one_case", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{harness}:{case}"))
        .env("INTERLOCK_TEST_REQUIRE", require)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn hooks_a_harness_lacks_skip_loudly_or_fail_when_required() {
    for (case, hook) in CASES {
        let said = format!("the case needs Harness::{hook}, which harness::Bare does not implement");
        let out = child("bare", case, "0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: skipped, not failed: {stderr}");
        assert!(stderr.contains(&format!("*** SKIPPED: conformance: {said}")), "{case}: {stderr}");
        assert!(stderr.contains(&format!("conformance: {case}")), "{case} says it did not run: {stderr}");
        let out = child("bare", case, "1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: INTERLOCK_TEST_REQUIRE=1 makes a missing hook a failure");
        assert!(stderr.contains(&format!("{said} is required (INTERLOCK_TEST_REQUIRE=1)")), "{case}: {stderr}");
    }
}

#[test]
fn hooks_a_harness_declines_make_the_case_not_applicable() {
    for (case, _) in CASES {
        let out = child("declining", case, "1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: not applicable is no failure, even when required: {stderr}");
        assert!(stderr.contains(&format!("conformance: {case}")) && stderr.contains("not applicable"), "{stderr}");
        assert!(!stderr.contains("SKIPPED"), "{case}: a declined hook is no skip: {stderr}");
    }
}

/// Not a test of its own: the tests above run it in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run by the hooks_* tests in a child process"]
async fn child_runs_one_case() {
    let Ok(what) = std::env::var(CHILD_ENV) else { return };
    let (harness, case) = what.split_once(':').unwrap();
    match harness {
        "bare" => run_case(&Bare { space: unique("bare") }, case).await,
        "declining" => run_case(&Declining { space: unique("declining") }, case).await,
        other => panic!("no harness {other}"),
    }
}
