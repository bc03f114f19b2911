//! Faults: a holder killed with SIGKILL, a lock taken away by the backend, leases outliving
//! their first term, and releases that come too late.

use std::time::Duration;

use interlock::{AcquireOptions, Error};

use crate::harness::Harness;
use crate::process::Hold;
use crate::unique;

use super::{EVENTUALLY, leased, not_applicable};

/// `kill -9` of a holder process releases its lock (files: at once, by the kernel; leased
/// backends: at lease expiry), and the next holder's token is higher.
pub async fn kill_9_of_holder_releases<H: Harness>(h: &H) {
    let Some(bin) = h.bin() else { return not_applicable("kill_9_of_holder_releases", "no cross-process support") };
    let name = unique("kill9");
    let p = h.provider().await;
    let hold = Hold::start(bin, &h.url(), &name, &[]).await;
    let token = hold.token.expect("token");
    assert!(p.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "the holder process holds it");
    hold.kill9().await;
    let g = p.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("released after kill -9");
    assert!(g.fencing_token().unwrap() > token);
}

/// When the backend takes the lock away, the guard says so: `lost()` completes, `is_lost()` is
/// true, `release()` is `Err(LockLost)`, and the next holder's token is higher.
pub async fn lost_lock_is_signalled<H: Harness>(h: &H) {
    let p = h.provider().await;
    if !p.capabilities().can_lose {
        return not_applicable("lost_lock_is_signalled", "this backend cannot lose a lock while the process lives");
    }
    let name = unique("lost");
    let m = p.mutex(&name).unwrap();
    let g = m.lock_with(leased(&p, AcquireOptions::forever(), h.short_lease())).await.unwrap().unwrap();
    let token = g.fencing_token().unwrap();
    assert!(!g.is_lost());
    if !h.expire(&name).await {
        g.release().await.unwrap();
        return not_applicable("lost_lock_is_signalled", "the harness cannot take a lock away");
    }
    tokio::time::timeout(EVENTUALLY, g.lost()).await.expect("lost() completes after the backend dropped the lock");
    assert!(g.is_lost());
    let next = h.provider().await.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.unwrap();
    assert!(next.fencing_token().unwrap() > token);
    let r = g.release().await;
    assert!(matches!(r, Err(Error::LockLost { .. })), "{r:?}");
    next.release().await.unwrap();
}

/// A lock held for several leases stays held: the monitor renews it.
pub async fn renewal_keeps_lock_past_its_lease<H: Harness>(h: &H) {
    let p = h.provider().await;
    if !p.capabilities().can_lose {
        return not_applicable("renewal_keeps_lock_past_its_lease", "no leases");
    }
    let name = unique("renew");
    // Long enough that a renewal (every third of it) delayed by a loaded machine's scheduler
    // does not lose the lock (300 ms did once, with eight test threads on two CPUs).
    let lease = Duration::from_secs(1);
    let g = p.mutex(&name).unwrap().lock_with(leased(&p, AcquireOptions::forever(), lease)).await.unwrap().unwrap();
    tokio::time::sleep(lease * 5 / 2).await;
    assert!(!g.is_lost(), "renewed lock reported lost");
    assert!(h.provider().await.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "lease expired");
    g.release().await.unwrap();
}

/// A holder whose lock expired and went to someone else must not release the new holder's lock.
pub async fn stale_release_never_frees_another_holder<H: Harness>(h: &H) {
    let p = h.provider().await;
    if !p.capabilities().can_lose {
        return not_applicable("stale_release_never_frees_another_holder", "no leases");
    }
    let name = unique("stale");
    let a = p
        .mutex(&name)
        .unwrap()
        .lock_with(leased(&p, AcquireOptions::forever(), h.short_lease()))
        .await
        .unwrap()
        .unwrap();
    if !h.expire(&name).await {
        a.release().await.unwrap();
        return not_applicable("stale_release_never_frees_another_holder", "the harness cannot take a lock away");
    }
    let other = h.provider().await;
    let b = other.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.unwrap();
    assert!(matches!(a.release().await, Err(Error::LockLost { .. })));
    assert!(h.provider().await.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "A's release freed B's lock");
    b.release().await.unwrap();
}
