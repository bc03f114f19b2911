//! Read-write locks and semaphores: shared holders overlap, exclusive ones are alone, permits are
//! never exceeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use interlock::Error;

use crate::harness::Harness;
use crate::unique;

use super::{Needs, has};

/// Readers overlap; a writer is refused while readers hold, and readers while a writer holds.
pub async fn rwlock_readers_share_writers_alone<H: Harness>(h: &H) {
    let (p1, p2) = (h.provider().await, h.provider().await);
    if !has(&p1, "rwlock_readers_share_writers_alone", &[Needs::RwLock]) {
        return;
    }
    let name = unique("rw");
    let (a, b) = (p1.rwlock(&name).unwrap(), p2.rwlock(&name).unwrap());
    let r1 = a.read().await.unwrap();
    let r2 = b.try_read().await.unwrap().expect("a second reader (other provider) shares");
    let r3 = a.try_read().await.unwrap().expect("a second reader (same provider) shares");
    assert!(b.try_write().await.unwrap().is_none(), "a writer must wait for readers");
    assert!(a.try_write().await.unwrap().is_none());
    drop(r1);
    r2.release().await.unwrap();
    assert!(b.try_write().await.unwrap().is_none(), "one reader left");
    r3.release().await.unwrap();
    let w = b.write_timeout(super::EVENTUALLY).await.unwrap();
    assert!(a.try_read().await.unwrap().is_none(), "readers must wait for the writer");
    assert!(a.try_write().await.unwrap().is_none());
    w.release().await.unwrap();
    drop(a.try_read().await.unwrap().expect("free again"));
}

/// Readers and writers hammer one lock from two providers: a writer is never inside with anyone,
/// and readers do overlap.
pub async fn rwlock_mixed_load_never_overlaps_a_writer<H: Harness>(h: &H) {
    let name = unique("rwload");
    let (p1, p2) = (h.provider().await, h.provider().await);
    if !has(&p1, "rwlock_mixed_load_never_overlaps_a_writer", &[Needs::RwLock]) {
        return;
    }
    // readers > 0: that many readers inside; -1: a writer inside.
    let state = Arc::new(AtomicI64::new(0));
    let max_readers = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for t in 0..12 {
        let rw = if t % 2 == 0 { p1.rwlock(&name).unwrap() } else { p2.rwlock(&name).unwrap() };
        let (state, max_readers) = (state.clone(), max_readers.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                if (t + i) % 4 == 0 {
                    let g = rw.write().await.unwrap();
                    assert_eq!(
                        state.compare_exchange(0, -1, Ordering::SeqCst, Ordering::SeqCst),
                        Ok(0),
                        "writer not alone"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    state.store(0, Ordering::SeqCst);
                    g.release().await.unwrap();
                } else {
                    let g = rw.read().await.unwrap();
                    let n = state.fetch_add(1, Ordering::SeqCst);
                    assert!(n >= 0, "reader entered while a writer was inside");
                    max_readers.fetch_max(n + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    state.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(max_readers.load(Ordering::SeqCst) > 1, "readers never overlapped");
}

/// Twelve tasks on a 3-permit semaphore from two providers: never more than 3 inside, and 3 is
/// reached.
pub async fn semaphore_never_exceeds_permits<H: Harness>(h: &H) {
    let name = unique("sem");
    let (p1, p2) = (h.provider().await, h.provider().await);
    if !has(&p1, "semaphore_never_exceeds_permits", &[Needs::Semaphore]) {
        return;
    }
    let inside = Arc::new(AtomicI64::new(0));
    let max = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for t in 0..12 {
        let sem = if t % 2 == 0 { p1.semaphore(&name, 3).unwrap() } else { p2.semaphore(&name, 3).unwrap() };
        let (inside, max) = (inside.clone(), max.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let g = sem.acquire().await.unwrap();
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                assert!(n <= 3, "{n} holders of a 3-permit semaphore");
                tokio::time::sleep(Duration::from_millis(3)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(max.load(Ordering::SeqCst), 3, "the semaphore never filled up");
    let s = p1.semaphore(&name, 3).unwrap();
    let held: Vec<_> = [s.try_acquire().await, s.try_acquire().await, s.try_acquire().await]
        .into_iter()
        .map(|g| g.unwrap().expect("free permit"))
        .collect();
    assert!(p2.semaphore(&name, 3).unwrap().try_acquire().await.unwrap().is_none(), "a fourth permit");
    drop(held);
}

/// Holders that disagree on the permits count get an error, in one provider and across two.
pub async fn semaphore_permits_mismatch_is_an_error<H: Harness>(h: &H) {
    let name = unique("mismatch");
    let (p1, p2) = (h.provider().await, h.provider().await);
    if !has(&p1, "semaphore_permits_mismatch_is_an_error", &[Needs::Semaphore]) {
        return;
    }
    let g = p1.semaphore(&name, 3).unwrap().acquire().await.unwrap();
    let local = p1.semaphore(&name, 4).unwrap().try_acquire().await;
    assert!(matches!(local, Err(Error::PermitsMismatch { existing: 3, requested: 4, .. })), "{local:?}");
    let remote = p2.semaphore(&name, 4).unwrap().try_acquire().await;
    assert!(matches!(remote, Err(Error::PermitsMismatch { existing: 3, requested: 4, .. })), "{remote:?}");
    g.release().await.unwrap();
    // Once nobody holds it, a new count is fine.
    drop(p2.semaphore(&name, 4).unwrap().try_acquire().await.unwrap().expect("free"));
}
