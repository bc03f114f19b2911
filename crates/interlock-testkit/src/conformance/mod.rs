//! The conformance suite: the same cases against every backend (DESIGN section 5).
//!
//! Each case is an `async fn case<H: Harness>(h: &H)`; [`conformance_suite!`](crate::conformance_suite)
//! expands them into one named test per case per backend. Cases that need a capability the
//! backend lacks (cross-process, losing a lock) or a fault hook its harness lacks (restart the
//! server, kill a connection, pause a holder) return early with a note.

mod cancel;
mod exclusion;
mod faults;
mod fencing;
mod gone;
mod input;
mod local;
mod outages;
mod reconnect;
mod shared;
mod waiting;

pub use cancel::*;
pub use exclusion::*;
pub use faults::*;
pub use fencing::*;
pub use gone::*;
pub use input::*;
pub use local::*;
pub use outages::*;
pub use reconnect::*;
pub use shared::*;
pub use waiting::*;

use std::time::Duration;

/// "Eventually" bound for things that must happen (never a speed assertion).
pub(crate) const EVENTUALLY: Duration = Duration::from_secs(20);

pub(crate) fn not_applicable(case: &str, why: &str) {
    eprintln!("conformance: {case}: not applicable ({why})");
}

/// `opts` with its own `lease`, on backends whose locks each have one
/// ([`interlock::LeaseModel::PerLock`]); elsewhere `opts` as it is, since a per-call lease is refused
/// there (locks that do not expire, or share their session's lease, which the harness's URL sets).
pub(crate) fn leased(
    p: &interlock::Provider,
    opts: interlock::AcquireOptions,
    lease: Duration,
) -> interlock::AcquireOptions {
    match p.lease_model() {
        interlock::LeaseModel::PerLock => opts.lease(lease),
        _ => opts,
    }
}

/// The `--lease DUR` arguments of `interlock run` / `hold` for `lease`, where [`leased`] would set
/// it; none elsewhere.
pub(crate) fn lease_args(p: &interlock::Provider, lease: Duration) -> Vec<String> {
    match p.lease_model() {
        interlock::LeaseModel::PerLock => vec!["--lease".into(), format!("{}ms", lease.as_millis())],
        _ => Vec::new(),
    }
}

/// The primitives a case needs besides mutexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    RwLock,
    Semaphore,
}

/// True when the backend has what `case` needs; otherwise says so loudly and returns false, and
/// the case skips (the core refuses those primitives: see `primitives_a_backend_lacks_are_refused`).
pub(crate) fn has(p: &interlock::Provider, case: &str, needs: &[Needs]) -> bool {
    let caps = p.capabilities();
    for need in needs {
        let (ok, what) = match need {
            Needs::RwLock => (caps.rwlock, "read-write locks"),
            Needs::Semaphore => (caps.semaphore, "semaphores"),
        };
        if !ok {
            not_applicable(case, &format!("this backend declares no {what}"));
            return false;
        }
    }
    true
}

/// Instantiates the suite once per line, as [`conformance_suite!`](crate::conformance_suite) does
/// for one, and defines `fn conformance_suites() -> Vec<&'static str>`: the names of the suites
/// this build runs (a line's `#[cfg(...)]` applies to both), which a test checks against the
/// registry's built backends. The list comes from the macro's input, so no formatting of the
/// lines can hide one from it.
///
/// ```ignore
/// interlock_testkit::conformance_suites! {
///     memory => interlock_testkit::MemoryHarness::new(),
///     #[cfg(feature = "redis")]
///     redis => redis_harness!(),
/// }
/// ```
#[macro_export]
macro_rules! conformance_suites {
    ($( $(#[cfg($cfg:meta)])* $name:ident => $harness:expr ),* $(,)?) => {
        $(
            $(#[cfg($cfg)])*
            $crate::conformance_suite!($name, $harness);
        )*

        /// The names of the conformance suites instantiated in this file, for this build.
        #[allow(dead_code)]
        fn conformance_suites() -> ::std::vec::Vec<&'static str> {
            #[allow(unused_mut)]
            let mut names = ::std::vec::Vec::new();
            $(
                $(#[cfg($cfg)])*
                names.push(stringify!($name));
            )*
            names
        }
    };
}

/// Expands into a module `$name` with one `#[tokio::test]` per conformance case, each running
/// against a fresh `$harness`.
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $harness:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@cases $harness;
                mutex_excludes_tasks,
                mutex_excludes_threads,
                mutex_excludes_across_providers,
                mutex_excludes_processes,
                unlocked_tasks_lose_updates,
                unlocked_processes_lose_updates,
                not_reentrant,
                one_provider_excludes_itself_at_the_backend,
                rwlock_readers_share_writers_alone,
                rwlock_mixed_load_never_overlaps_a_writer,
                semaphore_never_exceeds_permits,
                semaphore_permits_mismatch_is_an_error,
                try_is_none_when_held,
                timeout_expires_on_time,
                zero_timeout_is_one_attempt,
                timeout_succeeds_after_release,
                waiter_wakes_on_release,
                cancelled_wait_leaves_nothing_behind,
                timed_out_wait_leaves_nothing_behind,
                drop_releases,
                release_then_reacquire,
                acquire_cancelled_at_any_point_leaves_nothing_behind,
                cancelled_release_still_releases,
                gone_waiter_timed_out_never_holds_up_the_next,
                gone_waiter_dropped_never_holds_up_the_next,
                gone_waiter_cli_timeout_never_holds_up_the_next,
                gone_waiter_sigterm_never_holds_up_the_next,
                gone_waiter_sigint_never_holds_up_the_next,
                gone_waiter_kill_9_never_holds_up_the_next,
                gone_waiter_sigstop_never_holds_up_the_next,
                monitor_ends_with_its_guard,
                background_tasks_end_with_the_provider,
                fencing_tokens_strictly_increase,
                fencing_tokens_shared_holders,
                fencing_tokens_across_processes,
                kill_9_of_holder_releases,
                lost_lock_is_signalled,
                renewal_keeps_lock_past_its_lease,
                stale_release_never_frees_another_holder,
                paused_holder_reports_lost_on_resume,
                server_restart_signals_lost_to_every_holder,
                killed_connection_signals_lost_and_wakes_the_next_waiter,
                minority_of_members_killed_keeps_locks,
                killed_client_connections_do_not_end_a_wait,
                a_release_after_killed_client_connections_frees_the_lock_at_once,
                renewal_goes_on_after_killed_client_connections,
                bad_names_are_refused,
                primitives_a_backend_lacks_are_refused,
                status_reports_holders
            );
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let harness = $harness;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}
