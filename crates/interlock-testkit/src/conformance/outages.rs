//! Outages (DESIGN section 5, fault cases): a holder stopped past its lease, a server restart, a
//! connection killed server-side, a minority of an ensemble (or of Redlock's masters) killed. Each needs a fault hook of the harness
//! ([`Harness::restart_server`], [`Harness::kill_connections`], [`Harness::pause_holders`] or a
//! helper process to stop) and a backend that can lose a lock; without them it is not applicable.

use std::time::Duration;

use interlock::{AcquireOptions, Error, Guard, Provider};

use crate::harness::Harness;
use crate::process::Hold;
use crate::unique;

use super::{EVENTUALLY, lease_args, leased, not_applicable};

/// The lease of holders whose loss must come from the backend's signal, not from a lease expiry.
/// The holder renews every third of it, so after a fault its lease still has at least two thirds
/// to run (80 s): far more than the [`EVENTUALLY`] (20 s) within which the next waiter must be in.
const LONG_LEASE: Duration = Duration::from_secs(120);

const _: () = assert!(EVENTUALLY.as_secs() < LONG_LEASE.as_secs() * 2 / 3);

fn can_lose(p: &Provider) -> bool {
    p.capabilities().can_lose
}

/// Asserts that `g` reports its lock lost: `lost()` completes (within [`EVENTUALLY`]), `is_lost()`
/// is true, and `release()` is `Err(LockLost)`.
async fn assert_reported_lost(g: Guard, what: &str) {
    tokio::time::timeout(EVENTUALLY, g.lost()).await.unwrap_or_else(|_| panic!("lost() never completed: {what}"));
    assert!(g.is_lost(), "{what}: lost() completed but is_lost() is false");
    let r = g.release().await;
    assert!(matches!(r, Err(Error::LockLost { .. })), "{what}: release() of a lost lock returned {r:?}");
}

/// A holder stopped (SIGSTOP) past its lease loses its lock to the next holder, whose token is
/// higher; once it continues (SIGCONT) it reports the loss (`interlock hold` exits 75; an
/// in-process guard's `lost()` completes and its `release()` is `LockLost`) and leaves the next
/// holder's lock alone.
///
/// Stops a real `interlock hold` process when the backend crosses processes, and otherwise pauses
/// an in-process holder with [`Harness::pause_holders`] (memory: its renewals wait).
pub async fn paused_holder_reports_lost_on_resume<H: Harness>(h: &H) {
    const CASE: &str = "paused_holder_reports_lost_on_resume";
    let p = h.provider().await;
    if !can_lose(&p) {
        return not_applicable(
            CASE,
            "this backend cannot lose a lock while its holder lives: a stopped holder keeps it",
        );
    }
    if !h.stopped_holder_loses_lock() {
        return not_applicable(
            CASE,
            "a lock of this backend lives as long as its connection, which a stopped holder keeps",
        );
    }
    let name = unique("paused");
    let lease = h.short_lease();
    if let (Some(bin), true) = (h.bin(), p.capabilities().cross_process) {
        let args = lease_args(&p, lease);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let hold = Hold::start(bin, &h.url(), &name, &args).await;
        let token = hold.token.expect("hold prints a token");
        hold.pause();
        let next = p
            .mutex(&name)
            .unwrap()
            .lock_timeout(EVENTUALLY)
            .await
            .expect("the next holder gets the lock once the stopped holder's lease ran out");
        assert!(next.fencing_token().unwrap() > token, "the next holder's token is not above the stopped one's");
        hold.resume();
        let code = hold.wait_exit(EVENTUALLY).await;
        assert_eq!(code, Some(75), "a holder resumed after its lease ran out must report the lost lock (exit 75)");
        assert_still_held(h, &name, "the resumed holder freed the next holder's lock").await;
        return next.release().await.unwrap();
    }
    let g = p.mutex(&name).unwrap().lock_with(leased(&p, AcquireOptions::forever(), lease)).await.unwrap().unwrap();
    let token = g.fencing_token().unwrap();
    if !h.pause_holders(&name).await {
        g.release().await.unwrap();
        return not_applicable(CASE, "no holder process to stop, and the harness cannot pause an in-process holder");
    }
    let other = h.provider().await;
    let next = other
        .mutex(&name)
        .unwrap()
        .lock_timeout(EVENTUALLY)
        .await
        .expect("the next holder gets the lock once the paused holder's lease ran out");
    assert!(next.fencing_token().unwrap() > token, "the next holder's token is not above the paused one's");
    assert!(h.resume_holders(&name).await, "the harness paused holders it cannot resume");
    assert_reported_lost(g, "a holder resumed after its lease ran out").await;
    assert_still_held(h, &name, "the resumed holder's release freed the next holder's lock").await;
    next.release().await.unwrap();
}

/// A server restart that forgets the locks is reported to every holder (mutex, readers,
/// semaphore permit, on two providers): `lost()` completes and `release()` is `LockLost`. The
/// providers go on working afterwards, and a new one too; fencing tokens keep increasing across
/// the restart unless the harness says the backend cannot promise that
/// ([`Harness::tokens_survive_restart`]).
pub async fn server_restart_signals_lost_to_every_holder<H: Harness>(h: &H) {
    const CASE: &str = "server_restart_signals_lost_to_every_holder";
    let p = h.provider().await;
    if !can_lose(&p) {
        return not_applicable(
            CASE,
            "this backend cannot lose a lock while its holder lives: there is no server to restart",
        );
    }
    let q = h.provider().await;
    // Backends without semaphores (Redlock) run the mutex and reader parts only.
    let sem = p.capabilities().semaphore;
    let (a, b, c) = (unique("restart-mutex"), unique("restart-rw"), unique("restart-sem"));
    let opts = || leased(&p, AcquireOptions::forever(), h.short_lease());
    let m = p.mutex(&a).unwrap().lock_with(opts()).await.unwrap().unwrap();
    let r1 = p.rwlock(&b).unwrap().read_with(opts()).await.unwrap().unwrap();
    let r2 = q.rwlock(&b).unwrap().read_with(opts()).await.unwrap().unwrap();
    let s1 = if sem { Some(q.semaphore(&c, 2).unwrap().acquire_with(opts()).await.unwrap().unwrap()) } else { None };
    let tokens = [Some(&m), Some(&r1), Some(&r2), s1.as_ref()].map(|g| g.map(|g| g.fencing_token().unwrap()));
    if !h.restart_server().await {
        for g in [Some(m), Some(r1), Some(r2), s1].into_iter().flatten() {
            g.release().await.unwrap();
        }
        return not_applicable(CASE, "the harness cannot restart this backend's server");
    }
    for (g, what) in [(Some(m), "mutex"), (Some(r1), "reader 1"), (Some(r2), "reader 2"), (s1, "semaphore permit")] {
        if let Some(g) = g {
            assert_reported_lost(g, &format!("the {what} held across a server restart")).await;
        }
    }
    let new = h.provider().await;
    let m2 =
        p.mutex(&a).unwrap().lock_timeout(EVENTUALLY).await.expect("a provider from before the restart locks again");
    let w = q.rwlock(&b).unwrap().write_timeout(EVENTUALLY).await.expect("a provider from before the restart writes");
    let s2 = if sem {
        Some(new.semaphore(&c, 2).unwrap().acquire_timeout(EVENTUALLY).await.expect("a new provider takes a permit"))
    } else {
        drop(new.mutex(&c).unwrap().lock_timeout(EVENTUALLY).await.expect("a new provider locks"));
        None
    };
    if h.tokens_survive_restart() {
        let [tm, tr1, tr2, ts1] = tokens.map(|t| t.unwrap_or(0));
        assert!(m2.fencing_token().unwrap() > tm, "mutex token went back across the restart");
        assert!(w.fencing_token().unwrap() > tr1.max(tr2), "writer token not above the readers' across the restart");
        if let Some(s2) = &s2 {
            assert!(s2.fencing_token().unwrap() > ts1, "permit token went back across the restart");
        }
    } else {
        eprintln!(
            "conformance: {CASE}: fencing tokens not checked across the restart \
             (the harness says this backend's tokens may start over after one)"
        );
    }
    for g in [Some(m2), Some(w), s2].into_iter().flatten() {
        g.release().await.unwrap();
    }
}

/// A holder whose connection is killed server-side reports the loss, and a waiter of another
/// provider gets the lock on the backend's signal: within 20 s of the kill, while the killed
/// holder's 120 s lease still had at least 80 s to run, so a backend that only frees the lock at
/// lease expiry fails. The next holder's token is higher.
pub async fn killed_connection_signals_lost_and_wakes_the_next_waiter<H: Harness>(h: &H) {
    const CASE: &str = "killed_connection_signals_lost_and_wakes_the_next_waiter";
    let p = h.provider().await;
    if !can_lose(&p) {
        return not_applicable(
            CASE,
            "this backend cannot lose a lock while its holder lives: its locks live in no connection",
        );
    }
    let name = unique("killed");
    let g =
        p.mutex(&name).unwrap().lock_with(leased(&p, AcquireOptions::forever(), LONG_LEASE)).await.unwrap().unwrap();
    let token = g.fencing_token().unwrap();
    let other = h.provider().await;
    let waiter = tokio::spawn({
        let (other, name) = (other.clone(), name.clone());
        async move { other.mutex(&name).unwrap().lock_with(leased(&other, AcquireOptions::forever(), LONG_LEASE)).await }
    });
    // Gate: the waiter waits at the backend before the kill (where the backend counts waiters).
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let waiters = p.status(&name).await.unwrap().waiters;
        if waiters.is_none_or(|w| w >= 1) || waiter.is_finished() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the waiter never reached the backend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!waiter.is_finished(), "the waiter got the lock while it was held: {:?}", waiter.await);
    if !h.kill_connections(&name).await {
        waiter.abort();
        g.release().await.unwrap();
        return not_applicable(
            CASE,
            "the harness cannot kill a holder's connection, or this backend's locks outlive it",
        );
    }
    let next = tokio::time::timeout(EVENTUALLY, waiter)
        .await
        .expect("the waiter did not get the lock within 20 s of the kill: woken by the lease expiry, not the backend's signal?")
        .expect("waiter task")
        .expect("the waiter's acquisition")
        .expect("a guard");
    assert!(next.fencing_token().unwrap() > token, "the next holder's token is not above the killed one's");
    assert_reported_lost(g, "the holder whose connection was killed").await;
    assert_still_held(h, &name, "the killed holder's release freed the next holder's lock").await;
    next.release().await.unwrap();
}

/// Asserts that `name` is held, from a provider of its own.
async fn assert_still_held<H: Harness>(h: &H, name: &str, what: &str) {
    assert!(h.provider().await.mutex(name).unwrap().try_lock().await.unwrap().is_none(), "{what}");
}

/// With a minority of its members killed (Redlock masters, a ZooKeeper or etcd ensemble), a
/// backend keeps working: a lock held before stays held (renewed by the quorum left, never
/// reported lost), exclusion holds, a new lock can be taken and released, and tokens keep
/// increasing. Needs [`Harness::kill_members`]; not applicable to single-server backends.
pub async fn minority_of_members_killed_keeps_locks<H: Harness>(h: &H) {
    const CASE: &str = "minority_of_members_killed_keeps_locks";
    let p = h.provider().await;
    let name = unique("minority");
    // Short enough that the lock must be renewed by the survivors during the case.
    let lease = h.short_lease() * 2;
    let held = p.mutex(&name).unwrap().lock_with(leased(&p, AcquireOptions::forever(), lease)).await.unwrap().unwrap();
    let token = held.fencing_token();
    let Some(members) = h.kill_members(1).await else {
        held.release().await.unwrap();
        return not_applicable(CASE, "the harness has a single server (no members to kill)");
    };
    let minority = (members - 1) / 2;
    if minority > 1 {
        assert!(h.kill_members(minority - 1).await.is_some());
    }
    tokio::time::sleep(lease * 3).await;
    assert!(!held.is_lost(), "a lock held before {minority} of {members} members died was lost");
    let other = h.provider().await;
    assert!(other.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "exclusion with a minority down");
    held.release().await.unwrap();
    let next =
        other.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("a lock can be taken with a minority down");
    if let (Some(a), Some(b)) = (token, next.fencing_token()) {
        assert!(b > a, "tokens went back with a minority down: {a} then {b}");
    }
    next.release().await.unwrap();
}
