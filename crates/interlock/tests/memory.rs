//! memory:// specifics: the lease monitor against injected faults, local queueing, the blocking
//! facade's refusal inside a runtime. (The shared contract is in the conformance suite.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use interlock::memory::MemorySpace;
use interlock::{AcquireOptions, Error};

fn space() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("memtest-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

const EVENTUALLY: Duration = Duration::from_secs(20);

/// Renewals fail (server unreachable): the guard reports the loss by its local clock, and does so
/// before anyone else can get the lock (the server's lease outlives the client's estimate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_renewals_lose_the_lock_by_the_local_clock_before_anyone_else_gets_it() {
    let s = space();
    let url = format!("memory://{s}?lease=300ms");
    let p = interlock::connect(&url).await.unwrap();
    let g = p.mutex("job").unwrap().lock().await.unwrap();
    MemorySpace::named(&s).set_renewals_failing(true);
    let other = interlock::connect(&url).await.unwrap();
    let next = other.mutex("job").unwrap().lock_timeout(EVENTUALLY).await.unwrap();
    assert!(g.is_lost(), "someone else got the lock while the first guard still believed it held it");
    MemorySpace::named(&s).set_renewals_failing(false);
    assert!(matches!(g.release().await, Err(Error::LockLost { .. })));
    assert!(next.fencing_token() > Some(1));
}

/// A pushed loss (as a ZooKeeper session expiry would be) reaches `lost()` at once.
#[tokio::test]
async fn revoke_is_signalled() {
    let s = space();
    let p = interlock::connect(&format!("memory://{s}?lease=5s")).await.unwrap();
    let g = p.mutex("job").unwrap().lock().await.unwrap();
    let lost = g.lost();
    assert_eq!(MemorySpace::named(&s).revoke("job").unwrap(), 1);
    tokio::time::timeout(EVENTUALLY, lost).await.unwrap();
    assert!(g.is_lost());
    let e = g.release().await.unwrap_err();
    assert!(e.is_lock_lost() && e.to_string().contains("revoked"), "{e}");
}

/// Without a lease, memory locks never expire and renewals never run.
#[tokio::test(start_paused = true)]
async fn no_lease_no_expiry() {
    let s = space();
    let p = interlock::connect(&format!("memory://{s}")).await.unwrap();
    let g = p.mutex("job").unwrap().lock().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!g.is_lost());
    assert!(!p.capabilities().can_lose);
    g.release().await.unwrap();
}

/// Per-call lease options are validated.
#[tokio::test]
async fn bad_leases_are_refused() {
    let p = interlock::connect(&format!("memory://{}?lease=1s", space())).await.unwrap();
    let m = p.mutex("x").unwrap();
    for opts in [
        AcquireOptions::forever().lease(Duration::from_millis(1)),
        AcquireOptions::forever().lease(Duration::from_secs(1)).renew_every(Duration::from_secs(2)),
        AcquireOptions::forever().renew_every(Duration::ZERO),
    ] {
        assert!(matches!(m.lock_with(opts).await, Err(Error::InvalidArgument(_))), "{opts:?}");
    }
    assert!(interlock::connect("memory://?lease=soon").await.is_err());
}

/// A lease too long to add to an `Instant` is a one-line `InvalidArgument`, not a panic
/// ("overflow when adding duration to instant"), on every backend; so is any lease over a day.
#[tokio::test]
async fn huge_leases_are_invalid_arguments_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("memory://{}?lease=1s", space()),
        format!("memory://{}", space()),
        format!("file://{}", dir.path().display()),
    ] {
        let p = interlock::connect(&url).await.unwrap();
        let m = p.mutex("x").unwrap();
        let day = Duration::from_secs(24 * 3600);
        for opts in [
            AcquireOptions::forever().lease(Duration::MAX),
            AcquireOptions::try_once().lease(Duration::MAX).renew_every(Duration::from_secs(1)),
            AcquireOptions::forever().lease(day + Duration::from_secs(1)),
            AcquireOptions::forever().renew_every(Duration::MAX),
            AcquireOptions::forever().lease(Duration::from_secs(1)).renew_every(Duration::from_micros(10)),
        ] {
            match m.lock_with(opts).await {
                Err(Error::InvalidArgument(msg)) => assert!(!msg.contains('\n') && msg.len() < 200, "{msg}"),
                other => panic!("{url} {opts:?}: {other:?}"),
            }
        }
        // The bounds themselves are accepted.
        let g = m.lock_with(AcquireOptions::forever().lease(day)).await.unwrap().unwrap();
        g.release().await.unwrap();
    }
    let e = interlock::connect("memory://?lease=25h").await.unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("at most 1 day"), "{e}");
}

/// Ten waiters in one process send one waiter to the backend, and get the lock in FIFO order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_waiters_queue_fifo_and_send_one_to_the_backend() {
    let s = space();
    let url = format!("memory://{s}");
    let holder = interlock::connect(&url).await.unwrap();
    let g = holder.mutex("q").unwrap().lock().await.unwrap();
    let p = interlock::connect(&url).await.unwrap();
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (m, order) = (p.mutex("q").unwrap(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = m.lock().await.unwrap();
            order.lock().unwrap().push(i);
            g.release().await.unwrap();
        }));
        // Let each waiter enqueue before the next, so FIFO order is defined.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (holders, waiters) = MemorySpace::named(&s).counts("q").unwrap();
    assert_eq!((holders, waiters), (1, 1), "one backend waiter for ten local ones");
    g.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
    assert_eq!(MemorySpace::named(&s).counts("q").unwrap(), (0, 0));
    assert_eq!(p.local_queue_len(), 0);
}

/// The blocking facade refuses to run inside a runtime instead of deadlocking.
#[tokio::test]
async fn blocking_api_refuses_inside_a_runtime() {
    let e = interlock::blocking::connect("memory://").unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
}

/// The blocking facade works from plain threads, with leases renewed in the background.
#[test]
fn blocking_api_renews_leases_in_the_background() {
    let s = space();
    let p = interlock::blocking::connect(&format!("memory://{s}?lease=200ms")).unwrap();
    let g = p.mutex("b").unwrap().lock().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(!g.is_lost());
    assert!(p.mutex("b").unwrap().try_lock().unwrap().is_none());
    MemorySpace::named(&s).set_renewals_failing(true);
    assert!(g.wait_lost_timeout(EVENTUALLY).unwrap());
    assert!(g.release().unwrap_err().is_lock_lost());
}

/// Schemes that are planned but not built say which backend and feature would serve them.
#[tokio::test]
async fn unbuilt_and_unknown_schemes() {
    let e = interlock::connect("redis://user:hunter2@127.0.0.1:6379/0").await.unwrap_err().to_string();
    assert!(e.contains("Redis") && e.contains("feature `redis`"), "{e}");
    assert!(!e.contains("hunter2"));
    let e = interlock::connect("gopher://x").await.unwrap_err().to_string();
    assert!(e.contains("unknown scheme `gopher`"), "{e}");
    let e = interlock::connect("not a url").await.unwrap_err();
    assert!(e.is_usage(), "{e}");
}

/// A `lost()` future taken before a normal release never completes, even after the old lease
/// would have run out.
#[tokio::test]
async fn lost_never_fires_after_a_normal_release() {
    let p = interlock::connect(&format!("memory://{}?lease=100ms", space())).await.unwrap();
    let g = p.mutex("r").unwrap().lock().await.unwrap();
    let lost = g.lost();
    g.release().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), lost).await.is_err(), "lost() fired after release");
}
