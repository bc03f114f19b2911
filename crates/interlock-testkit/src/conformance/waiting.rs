//! try / timeout / wait forever, wake-ups, cancellation and release on drop.

use std::time::{Duration, Instant};

use interlock::Error;

use crate::harness::Harness;
use crate::unique;

use super::EVENTUALLY;

/// `try_*` is `Ok(None)` under contention, and other names are unaffected.
pub async fn try_is_none_when_held<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("try");
    let g = p1.mutex(&name).unwrap().lock().await.unwrap();
    assert!(p2.mutex(&name).unwrap().try_lock().await.unwrap().is_none());
    assert!(p1.mutex(&name).unwrap().try_lock().await.unwrap().is_none());
    drop(p2.mutex(unique("other")).unwrap().try_lock().await.unwrap().expect("another name is free"));
    g.release().await.unwrap();
    drop(p2.mutex(&name).unwrap().try_lock().await.unwrap().expect("free after release"));
}

/// A timed wait on a held lock returns `Error::Timeout`, not before the timeout and not long after.
pub async fn timeout_expires_on_time<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("timeout");
    let _g = p1.mutex(&name).unwrap().lock().await.unwrap();
    for p in [&p1, &p2] {
        let start = Instant::now();
        let r = p.mutex(&name).unwrap().lock_timeout(Duration::from_millis(300)).await;
        let took = start.elapsed();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(took >= Duration::from_millis(300), "gave up early: {took:?}");
        assert!(took < Duration::from_secs(5), "timeout not honoured: {took:?}");
    }
}

/// `timeout(0)` is one attempt that reports `Timeout` on contention and succeeds when free.
pub async fn zero_timeout_is_one_attempt<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("zero");
    let g = p1.mutex(&name).unwrap().lock_timeout(Duration::ZERO).await.expect("free lock, zero timeout");
    let r = p2.mutex(&name).unwrap().lock_timeout(Duration::ZERO).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    g.release().await.unwrap();
}

/// A timed wait succeeds when the holder releases before the deadline.
pub async fn timeout_succeeds_after_release<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("late");
    let g = p1.mutex(&name).unwrap().lock().await.unwrap();
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        g.release().await.unwrap();
    });
    drop(p2.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("acquired after the release"));
    releaser.await.unwrap();
}

/// Waiters in another provider and in the same provider get the lock after each release.
pub async fn waiter_wakes_on_release<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("wake");
    let mut g = p1.mutex(&name).unwrap().lock().await.unwrap();
    for p in [&p2, &p1, &p2] {
        let m = p.mutex(&name).unwrap();
        let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        g.release().await.unwrap();
        g = waiter.await.unwrap().expect("the waiter gets the lock");
    }
    g.release().await.unwrap();
}

async fn assert_nothing_left<H: Harness>(h: &H, waiter_provider: &interlock::Provider, name: &str) {
    assert_eq!(waiter_provider.local_queue_len(), 0, "the cancelled waiter left a local queue entry");
    // Whatever the cancelled waiter did, the lock must now be free for someone else, and stay so.
    let other = h.provider().await;
    for _ in 0..3 {
        let g = other.mutex(name).unwrap().lock_timeout(EVENTUALLY).await.expect("free after cancel");
        tokio::time::sleep(Duration::from_millis(50)).await;
        g.release().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = other.status(name).await.unwrap();
    assert!(status.held.is_none(), "a cancelled waiter holds the lock: {status:?}");
    if let Some(w) = status.waiters {
        assert_eq!(w, 0, "a cancelled waiter is still queued: {status:?}");
    }
}

/// Dropping an acquire future mid-wait leaves no lock held and nothing queued.
pub async fn cancelled_wait_leaves_nothing_behind<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("cancel");
    let g = p1.mutex(&name).unwrap().lock().await.unwrap();
    let m = p2.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { m.lock().await });
    let m2 = p2.mutex(&name).unwrap();
    let local_waiter = tokio::spawn(async move { m2.lock().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    waiter.abort();
    local_waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert!(local_waiter.await.unwrap_err().is_cancelled());
    g.release().await.unwrap();
    assert_nothing_left(h, &p2, &name).await;

    // The same for a semaphore waiter.
    if !p1.capabilities().semaphore {
        return super::not_applicable("cancelled_wait_leaves_nothing_behind (semaphore part)", "no semaphores");
    }
    let sem_name = unique("cancelsem");
    let held = p1.semaphore(&sem_name, 1).unwrap().acquire().await.unwrap();
    let s = p2.semaphore(&sem_name, 1).unwrap();
    let waiter = tokio::spawn(async move { s.acquire().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    held.release().await.unwrap();
    assert_eq!(p2.local_queue_len(), 0);
    let other = h.provider().await.semaphore(&sem_name, 1).unwrap();
    for _ in 0..3 {
        let g = other.acquire_timeout(EVENTUALLY).await.expect("the cancelled semaphore waiter took nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
        g.release().await.unwrap();
    }
}

/// A wait that times out leaves nothing behind either.
pub async fn timed_out_wait_leaves_nothing_behind<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("timedout");
    let g = p1.mutex(&name).unwrap().lock().await.unwrap();
    let r = p2.mutex(&name).unwrap().lock_timeout(Duration::from_millis(100)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })));
    let r = p2.rwlock(&name).unwrap().read_timeout(Duration::from_millis(50)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })));
    g.release().await.unwrap();
    assert_nothing_left(h, &p2, &name).await;
}

/// Dropping a guard releases the lock (at once here; network backends may take a moment, hence
/// the bounded wait).
pub async fn drop_releases<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    let name = unique("drop");
    let g = p1.mutex(&name).unwrap().lock().await.unwrap();
    drop(g);
    drop(p2.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("released by drop"));
    let r = p1.rwlock(unique("droprw")).unwrap();
    drop(r.read().await.unwrap());
    drop(r.write_timeout(EVENTUALLY).await.expect("read guard released by drop"));
    if !p1.capabilities().semaphore {
        return super::not_applicable("drop_releases (semaphore part)", "no semaphores");
    }
    let s = p1.semaphore(unique("dropsem"), 1).unwrap();
    drop(s.acquire().await.unwrap());
    drop(s.acquire_timeout(EVENTUALLY).await.expect("permit released by drop"));
}

/// `release` succeeds once, and the lock can be taken again at once.
pub async fn release_then_reacquire<H: Harness>(h: &H) {
    let p = h.provider().await;
    let m = p.mutex(unique("rel")).unwrap();
    for _ in 0..20 {
        let g = m.try_lock().await.unwrap().expect("free");
        assert!(!g.is_lost());
        g.release().await.unwrap();
    }
}
