//! Killed client connections, on backends whose locks outlive the connection that took them
//! (Redis, Redlock): `CLIENT KILL` of every connection neither ends a wait, nor leaves a released
//! lock held, nor loses a held one. Connections are opened again; only a server that stays
//! unreachable is an error.

use std::process::Stdio;
use std::time::{Duration, Instant};

use interlock::AcquireOptions;
use tokio::process::Command;

use crate::harness::Harness;
use crate::unique;

use super::{EVENTUALLY, lease_args, leased, not_applicable};

/// Kills every client connection a few times while waiters wait (a library waiter, and an
/// `interlock run -w` waiter): they keep waiting, and get the lock once it is released.
pub async fn killed_client_connections_do_not_end_a_wait<H: Harness>(h: &H) {
    let case = "killed_client_connections_do_not_end_a_wait";
    let name = unique("killwait");
    let p = h.provider().await;
    let holder = p.mutex(&name).unwrap().lock().await.unwrap();
    if !h.kill_client_connections().await {
        return not_applicable(case, "the harness cannot kill client connections");
    }
    let waiter_provider = h.provider().await;
    let m = waiter_provider.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await });
    let mut run = h.bin().map(|bin| {
        Command::new(bin)
            .args(["run", "-w", "20", name.as_str(), "--", "true"])
            .env("INTERLOCK_URL", h.url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn interlock run")
    });
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(h.kill_client_connections().await);
    }
    assert!(!waiter.is_finished(), "the wait ended: {:?}", waiter.await);
    if let Some(r) = &mut run {
        assert!(r.try_wait().unwrap().is_none(), "interlock run ended its wait: {:?}", r.try_wait());
    }
    holder.release().await.expect("the holder's lock survived the killed connections");
    let g = waiter.await.unwrap().expect("the waiter gets the lock after the killed connections");
    g.release().await.unwrap();
    if let Some(mut r) = run {
        let status = tokio::time::timeout(EVENTUALLY, r.wait()).await.expect("interlock run ends").unwrap();
        assert!(status.success(), "interlock run: {status}");
    }
}

/// A release that finds its connection killed is made again on a new one: the lock is free at
/// once afterwards, not when its lease runs out (for a library guard and for `interlock run`).
pub async fn a_release_after_killed_client_connections_frees_the_lock_at_once<H: Harness>(h: &H) {
    let case = "a_release_after_killed_client_connections_frees_the_lock_at_once";
    let name = unique("killrelease");
    let p = h.provider().await;
    let long = leased(&p, AcquireOptions::forever(), Duration::from_secs(60));
    let g = p.mutex(&name).unwrap().lock_with(long).await.unwrap().unwrap();
    if !h.kill_client_connections().await {
        return not_applicable(case, "the harness cannot kill client connections");
    }
    g.release().await.expect("the release goes through on a new connection");
    let other = h.provider().await;
    freed_soon(&other, &name).await;
    let again = other.mutex(&name).unwrap().try_lock().await.unwrap();
    again.expect("free at once after the release").release().await.unwrap();

    let Some(bin) = h.bin() else { return };
    let mut run = Command::new(bin)
        .arg("run")
        .args(lease_args(&p, Duration::from_secs(60)))
        .args([name.as_str(), "--", "sleep", "1"])
        .env("INTERLOCK_URL", h.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn interlock run");
    let deadline = Instant::now() + EVENTUALLY;
    while other.mutex(&name).unwrap().try_lock().await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "interlock run never took the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While the command runs: every connection of interlock's goes.
    assert!(h.kill_client_connections().await);
    let status = tokio::time::timeout(EVENTUALLY, run.wait()).await.expect("interlock run ends").unwrap();
    assert!(status.success(), "interlock run: {status}");
    freed_soon(&other, &name).await;
    let again = other.mutex(&name).unwrap().try_lock().await.unwrap();
    again.expect("free at once after interlock run released it").release().await.unwrap();
}

/// Nobody holds `name` anywhere (on Redlock: on no master, not even a minority) within a second,
/// far below the 60 s lease the holders asked for: the release reached every server.
async fn freed_soon(p: &interlock::Provider, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let status = p.status(name).await.unwrap();
        if status.held.is_none() && status.holders.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still held after the release: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A held lock survives killed connections: its renewals go on over new ones, through several
/// leases, and nobody else gets in.
pub async fn renewal_goes_on_after_killed_client_connections<H: Harness>(h: &H) {
    let case = "renewal_goes_on_after_killed_client_connections";
    let name = unique("killrenew");
    let p = h.provider().await;
    let opts = leased(&p, AcquireOptions::forever(), Duration::from_millis(900));
    let g = p.mutex(&name).unwrap().lock_with(opts).await.unwrap().unwrap();
    if !h.kill_client_connections().await {
        return not_applicable(case, "the harness cannot kill client connections");
    }
    let other = h.provider().await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!g.is_lost(), "the lock was lost after CLIENT KILL");
        assert!(other.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "someone else got in");
        assert!(h.kill_client_connections().await);
    }
    g.release().await.expect("released normally, never lost");
}
