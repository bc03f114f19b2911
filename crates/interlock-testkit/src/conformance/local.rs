//! What the in-process queue would hide: acquisitions of one provider normally queue locally
//! first, so no other case makes two of them meet at the backend. These cases skip the queue
//! ([`AcquireOptions::without_local_queue`]) and prove that the backend itself keeps two
//! acquisitions of one provider apart: a backend that shared one session or connection between
//! them (MySQL `GET_LOCK` and PostgreSQL advisory locks are re-entrant per session) fails here.

use std::time::Duration;

use interlock::AcquireOptions;

use crate::harness::Harness;
use crate::unique;

use super::EVENTUALLY;

fn try_direct() -> AcquireOptions {
    AcquireOptions::try_once().without_local_queue()
}

fn wait_direct() -> AcquireOptions {
    AcquireOptions::timeout(EVENTUALLY).without_local_queue()
}

/// Two acquisitions of one provider, straight to the backend, exclude each other: a second
/// mutex, a reader against a writer, a writer against readers, one permit too many; and a direct
/// waiter gets the lock when the holder lets go.
pub async fn one_provider_excludes_itself_at_the_backend<H: Harness>(h: &H) {
    let p = h.provider().await;
    let name = unique("direct");
    let m = p.mutex(&name).unwrap();
    let g = m.lock_with(wait_direct()).await.unwrap().expect("free");
    assert!(
        m.lock_with(try_direct()).await.unwrap().is_none(),
        "a second acquisition of the same provider got a held mutex from the backend"
    );
    let rw = p.rwlock(&name).unwrap();
    assert!(rw.read_with(try_direct()).await.unwrap().is_none(), "a reader got in beside a writer");
    // A direct waiter is woken by the release, like any other.
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.lock_with(wait_direct()).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    g.release().await.unwrap();
    let g2 = waiter.await.unwrap().unwrap().expect("the waiter gets the lock");
    g2.release().await.unwrap();

    let r1 = rw.read_with(wait_direct()).await.unwrap().expect("free");
    let r2 = rw.read_with(try_direct()).await.unwrap().expect("readers share");
    assert!(rw.write_with(try_direct()).await.unwrap().is_none(), "a writer got in beside readers");
    r1.release().await.unwrap();
    r2.release().await.unwrap();

    if !p.capabilities().semaphore {
        assert_eq!(p.local_queue_len(), 0, "direct acquisitions never enter the local queue");
        return super::not_applicable("one_provider_excludes_itself_at_the_backend (semaphore part)", "no semaphores");
    }
    let sem = p.semaphore(unique("direct-sem"), 2).unwrap();
    let a = sem.acquire_with(wait_direct()).await.unwrap().expect("permit 1");
    let b = sem.acquire_with(try_direct()).await.unwrap().expect("permit 2");
    assert!(sem.acquire_with(try_direct()).await.unwrap().is_none(), "a third permit of 2");
    a.release().await.unwrap();
    b.release().await.unwrap();
    assert_eq!(p.local_queue_len(), 0, "direct acquisitions never enter the local queue");
}
