//! Cancel-safety written once in the core: acquisitions and releases dropped at any point, and
//! monitor tasks that end with their guards. Backends with delay hooks (memory) also test each
//! await point on its own; these cases cancel blindly at a range of instants, which hits whatever
//! await points a backend has (a request in flight, a wait, an answer in flight).

use std::time::{Duration, Instant};

use interlock::{AcquireOptions, Provider};

use crate::harness::Harness;
use crate::unique;

use super::{EVENTUALLY, leased, not_applicable};

/// A lease far longer than `EVENTUALLY`, so that a lock left behind cannot pass for a free one by
/// expiring during the check.
const LONG_LEASE: Duration = Duration::from_secs(120);

fn long_lease(p: &Provider) -> AcquireOptions {
    leased(p, AcquireOptions::forever(), LONG_LEASE)
}

/// Instants after which an operation is cancelled: at its first poll, then a spread that covers a
/// loopback round trip or two.
const CANCEL_AFTER_MS: [u64; 8] = [0, 1, 2, 3, 5, 10, 20, 50];

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENTUALLY;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The provider has no local queue entry and no monitor task left (eventually: aborted tasks and
/// background releases finish shortly after).
async fn provider_is_idle(p: &Provider) {
    eventually("no local queue entry left", || p.local_queue_len() == 0).await;
    eventually("no monitor task left", || p.monitor_count() == 0).await;
}

/// Someone else can take the lock, so nothing of ours holds it.
async fn free_for_another_provider<H: Harness>(h: &H, name: &str) {
    let other = h.provider().await;
    let g = other.mutex(name).unwrap().lock_timeout(EVENTUALLY).await.expect("the lock is free for someone else");
    g.release().await.unwrap();
    let status = other.status(name).await.unwrap();
    if let Some(w) = status.waiters {
        assert_eq!(w, 0, "a cancelled acquisition is still queued on the backend: {status:?}");
    }
}

/// An acquisition dropped after any delay (its request in flight, waiting on the backend, its
/// answer in flight, or done) leaves no lock held, nothing queued and no monitor; on a free lock
/// and on a lock held elsewhere, for mutexes and readers.
pub async fn acquire_cancelled_at_any_point_leaves_nothing_behind<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("cancelany");
    for held_elsewhere in [false, true] {
        let holder = match held_elsewhere {
            true => Some(p1.mutex(&name).unwrap().lock().await.unwrap()),
            false => None,
        };
        let (m, r) = (p2.mutex(&name).unwrap(), p2.rwlock(&name).unwrap());
        for ms in CANCEL_AFTER_MS {
            let after = Duration::from_millis(ms);
            if let Ok(g) = tokio::time::timeout(after, m.lock_with(long_lease(&p2))).await {
                assert!(!held_elsewhere, "acquired a lock held elsewhere");
                drop(g.unwrap());
            }
            if let Ok(g) = tokio::time::timeout(after, r.read_with(long_lease(&p2))).await {
                assert!(!held_elsewhere, "read a lock held elsewhere");
                drop(g.unwrap());
            }
        }
        if let Some(g) = holder {
            g.release().await.unwrap();
        }
        free_for_another_provider(h, &name).await;
        provider_is_idle(&p2).await;
    }
}

/// A `release()` dropped midway still releases (the guard falls back to the release a dropped
/// guard does): the next local waiter and then another provider get the lock.
pub async fn cancelled_release_still_releases<H: Harness>(h: &H) {
    let p = h.provider().await;
    let name = unique("cancelrel");
    for ms in CANCEL_AFTER_MS {
        let opts = leased(&p, AcquireOptions::timeout(EVENTUALLY), LONG_LEASE);
        let g = p.mutex(&name).unwrap().lock_with(opts).await.unwrap().unwrap();
        let m = p.mutex(&name).unwrap();
        let local_waiter = tokio::spawn(async move { m.lock_with(opts).await.map(Option::unwrap) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Cancelled at its first poll (0 ms) or later; it may also have finished by then.
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), g.release()).await {
            r.unwrap();
        }
        let next = local_waiter.await.unwrap().expect("the next local waiter gets the lock");
        next.release().await.unwrap();
        free_for_another_provider(h, &name).await;
    }
    provider_is_idle(&p).await;
}

/// The monitor task of a guard (lease renewal, the backend's loss events) ends when the guard is
/// released, dropped, or loses its lock: no task outlives its guard.
pub async fn monitor_ends_with_its_guard<H: Harness>(h: &H) {
    let p = h.provider().await;
    let m = p.mutex(unique("monitor")).unwrap();
    let opts = leased(&p, AcquireOptions::forever(), h.short_lease());
    let g = m.lock_with(opts).await.unwrap().unwrap();
    if p.monitor_count() == 0 {
        g.release().await.unwrap();
        return not_applicable("monitor_ends_with_its_guard", "this backend's guards need no monitor");
    }
    assert_eq!(p.monitor_count(), 1, "one monitor per guard");
    g.release().await.unwrap();
    eventually("monitor gone after release", || p.monitor_count() == 0).await;
    drop(m.lock_with(opts).await.unwrap().unwrap());
    eventually("monitor gone after drop", || p.monitor_count() == 0).await;
    if p.capabilities().can_lose {
        let name = unique("monitorlost");
        let g = p.mutex(&name).unwrap().lock_with(opts).await.unwrap().unwrap();
        if !h.expire(&name).await {
            g.release().await.unwrap();
            return not_applicable("monitor_ends_with_its_guard (lost part)", "the harness cannot take a lock away");
        }
        tokio::time::timeout(EVENTUALLY, g.lost()).await.expect("lost");
        eventually("monitor gone after the loss, before release", || p.monitor_count() == 0).await;
        assert!(g.release().await.unwrap_err().is_lock_lost());
    }
}

/// The backend's background tasks (a session's keep-alive, a connection's driver, the requests
/// of a quorum round whose answers nobody waits for any more) belong to the provider: after some
/// work (acquisitions, a wait, a try that finds the lock held, a status), `close()` leaves none
/// running, and neither does the drop of the provider's last handle.
pub async fn background_tasks_end_with_the_provider<H: Harness>(h: &H) {
    let name = unique("tasks");
    let work = |p: Provider| {
        let name = name.clone();
        async move {
            let m = p.mutex(&name).unwrap();
            let g = m.lock_timeout(EVENTUALLY).await.unwrap();
            let waiter = tokio::spawn({
                let m = m.clone();
                async move { m.lock_timeout(EVENTUALLY).await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            g.release().await.unwrap();
            waiter.await.unwrap().unwrap().release().await.unwrap();
            p.status(&name).await.unwrap();
            p.task_count()
        }
    };
    let p = h.provider().await;
    let during = work(p.clone()).await;
    let other = h.provider().await;
    assert!(other.mutex(&name).unwrap().try_lock().await.unwrap().is_some());
    p.close().await.unwrap();
    assert_eq!(p.task_count(), 0, "background tasks left after close ({during} after the work)");

    let p = h.provider().await;
    let tasks = p.tasks();
    work(p).await;
    eventually("no background task left once the last handle is gone", || tasks.count() == 0).await;
    other.close().await.unwrap();
    assert_eq!(other.task_count(), 0);
    eprintln!("conformance: background_tasks_end_with_the_provider: {during} task(s) alive after the work");
}
