//! The redis backend's own fault cases, beyond the conformance suite (which runs on redis in
//! tests/conformance.rs): a holder killed or a server restarted, the holder's connection killed,
//! bad credentials and unreachable servers, a server that dies mid-wait, a key of the wrong
//! type, a peer tool's plain `SET NX PX`, and what a cancelled waiter leaves behind. Each case
//! uses a namespace of the shared private `redis-server`, or a server of its own when it breaks
//! it; never a server on a standard port.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use interlock::{AcquireOptions, Error};
use interlock_testkit::process::Hold;
use interlock_testkit::servers::PortLease;
use interlock_testkit::servers::redis::{Redis, RedisOptions};
use interlock_testkit::servers::resp::Resp;
use interlock_testkit::{Harness, RedisHarness};
use interlock_testkit::{one_line, unique};

const BIN: &str = env!("CARGO_BIN_EXE_interlock");
const EVENTUALLY: Duration = Duration::from_secs(20);

fn shared() -> Option<RedisHarness> {
    RedisHarness::new(BIN)
}

fn own() -> Option<RedisHarness> {
    RedisHarness::own_server(BIN)
}

/// `kill -9` of an `interlock hold` holder: a waiter of another process gets the lock within
/// the lease plus one renewal period (plus scheduling slack), with a higher token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_holder_frees_the_lock_within_lease_plus_one_renewal() {
    let Some(h) = shared() else { return };
    let name = unique("kill9");
    let lease = Duration::from_millis(1500);
    let hold = Hold::start(h.bin().unwrap(), &h.url(), &name, &["--lease", "1500ms"]).await;
    let token = hold.token.unwrap();
    let p = h.provider().await;
    let m = p.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    let killed = Instant::now();
    hold.kill9().await;
    let g = waiter.await.unwrap().expect("the waiter gets the lock after the holder's lease");
    let took = killed.elapsed();
    assert!(took <= lease + lease / 3 + Duration::from_secs(2), "took {took:?}: more than lease + renewal + slack");
    assert!(g.fencing_token().unwrap() > token);
    g.release().await.unwrap();
}

/// The conformance case on a server of its own: a restart without persistence is reported to
/// every holder (mutex, readers, permit), the providers work afterwards, tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_signals_lost_to_every_holder() {
    let Some(h) = own() else { return };
    interlock_testkit::conformance::server_restart_signals_lost_to_every_holder(&h).await;
}

/// After a restart without persistence the holder hears it from its next renewal, not from
/// its lease running out: with a 60 s lease renewed every second, `lost()` completes within a
/// few renewal periods, and the reason is the backend's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_is_reported_by_the_next_renewal() {
    let Some(h) = own() else { return };
    let p = h.provider().await;
    let opts = AcquireOptions::forever().lease(Duration::from_secs(60)).renew_every(Duration::from_secs(1));
    let g = p.mutex(unique("restart")).unwrap().lock_with(opts).await.unwrap().unwrap();
    assert!(h.restart_server().await);
    let restarted = Instant::now();
    tokio::time::timeout(EVENTUALLY, g.lost()).await.expect("lost after the restart");
    assert!(restarted.elapsed() < Duration::from_secs(10), "took {:?}", restarted.elapsed());
    match g.release().await {
        Err(Error::LockLost { reason, .. }) => assert!(reason.contains("no longer holds"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// `CLIENT KILL` of every connection of the namespace (the holder's shared connection among
/// them): the lock is a key with a lease, not tied to the connection, so it stays held, the
/// renewals go on over a new connection, and nobody else gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_kill_keeps_the_lock_and_renewal_continues() {
    let Some(h) = shared() else { return };
    let name = unique("clientkill");
    let p = h.provider().await;
    let opts = AcquireOptions::forever().lease(Duration::from_millis(900)).renew_every(Duration::from_millis(300));
    let g = p.mutex(&name).unwrap().lock_with(opts).await.unwrap().unwrap();
    for _ in 0..3 {
        let killed = h.ns().kill_clients().expect("CLIENT KILL");
        assert!(killed >= 1, "no connection of the namespace was killed");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!g.is_lost(), "the lock was lost after CLIENT KILL");
        let other = h.provider().await;
        assert!(other.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "someone else got in");
    }
    g.release().await.expect("released normally, never lost");
}

/// A lock handed over to a waiter is valid from when the waiter's wait (and the claim pipelined
/// behind it) was sent, so it comes with less than its whole lease left. With a renewal interval
/// close to the lease (3 s renewed every 2.7 s: a 300 ms margin), the guard's monitor renews it
/// by the validity it came with, not a renewal interval after the grant, and it is never lost;
/// the backend does not renew inside `acquire` to get there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_handed_over_after_a_wait_is_renewed_in_time() {
    let Some(h) = shared() else { return };
    let name = unique("handedover");
    let opts = AcquireOptions::forever().lease(Duration::from_secs(3)).renew_every(Duration::from_millis(2700));
    let (p, q) = (h.provider().await, h.provider().await);
    let mut shortest = Duration::MAX;
    for _ in 0..3 {
        let holder = p.mutex(&name).unwrap().lock_with(opts).await.unwrap().unwrap();
        let m = q.mutex(&name).unwrap();
        let waiter = tokio::spawn(async move { m.lock_with(opts).await });
        // Released while the waiter waits in `BLPOP` (each wait lasts up to 500 ms).
        tokio::time::sleep(Duration::from_millis(450)).await;
        holder.release().await.unwrap();
        let g = waiter.await.unwrap().unwrap().unwrap();
        shortest = shortest.min(g.valid_until().unwrap().saturating_duration_since(Instant::now()));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(!g.is_lost(), "a lock handed over with less than its lease left was lost");
        g.release().await.expect("released, never lost");
    }
    eprintln!("the shortest validity a handed-over lock came with: {shortest:?} (renewal interval 2.7 s)");
}

/// A wrong password, and none where one is required, are `Auth` from `connect`, one line, without
/// the password; the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_password_is_an_auth_error() {
    let opts = RedisOptions { password: Some("right-pw-123".into()), ..Default::default() };
    let Some(r) = Redis::start_or_skip(&opts) else { return };
    let port = r.port();
    for url in [format!("redis://:wrong-pw-456@127.0.0.1:{port}/1"), format!("redis://127.0.0.1:{port}/1")] {
        let e = interlock::connect(&url).await.unwrap_err();
        assert!(matches!(e, Error::Auth { backend: "redis", .. }), "{url}: {e:?}");
        let s = one_line(&e);
        assert!(!s.contains("wrong-pw") && !s.contains("right-pw"), "{s}");
        assert!(!format!("{e:?}").contains("wrong-pw"), "{e:?}");
    }
    let e = interlock::connect(&format!("redis://nobody:right-pw-123@127.0.0.1:{port}/1")).await.unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "an unknown ACL user: {e:?}");
    let p = interlock::connect(&r.url(1)).await.expect("the right password");
    p.mutex("x").unwrap().try_lock().await.unwrap().unwrap().release().await.unwrap();
}

/// Nothing listening, and an address that does not answer: `Unavailable` from `connect`, one
/// line, within its `connect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_server_is_unavailable_within_connect_timeout() {
    let port = PortLease::reserve(); // leased, nothing listens on it
    let started = Instant::now();
    let e = interlock::connect(&format!("redis://:pw@127.0.0.1:{}/0", port.port())).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { backend: "redis", .. }), "{e:?}");
    assert!(!one_line(&e).contains("pw@"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A TEST-NET-1 address (RFC 5737): nothing answers there.
    let started = Instant::now();
    let e = interlock::connect("redis://192.0.2.1:6379/0?connect_timeout=500ms").await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    one_line(&e);
    assert!(started.elapsed() < Duration::from_secs(5), "connect_timeout not honoured: {:?}", started.elapsed());
}

/// The server dies while a waiter waits: the wait ends with a one-line `Unavailable`, and the
/// holder's guard reports its lock lost (by its lease), so nobody believes it holds the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_dying_mid_wait_is_an_error_and_holds_nothing() {
    let Some(h) = own() else { return };
    let name = unique("dies");
    let (p1, p2) = (h.provider().await, h.provider().await);
    let g = p1.mutex(&name).unwrap().lock().await.unwrap();
    let m = p2.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { m.lock().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.ns().redis().kill();
    let r = tokio::time::timeout(EVENTUALLY, waiter).await.expect("the waiter gives up").unwrap();
    match r {
        Err(e @ Error::Unavailable { .. }) => {
            one_line(&e);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    tokio::time::timeout(EVENTUALLY, g.lost()).await.expect("the holder learns its lock is lost");
    assert!(g.release().await.unwrap_err().is_lock_lost());
}

/// A key of another type at the lock's name is not a lock: every form fails with one line naming
/// it, none panics, none waits, and nothing is believed held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_of_the_wrong_type_is_a_clear_error() {
    let Some(h) = shared() else { return };
    let name = unique("wrongtype");
    h.ns().cmd(&["HSET", &h.key(&name), "field", "value"]).unwrap();
    let p = h.provider().await;
    let errors = [
        p.mutex(&name).unwrap().try_lock().await.map(drop).unwrap_err(),
        p.mutex(&name).unwrap().lock_timeout(Duration::from_secs(2)).await.map(drop).unwrap_err(),
        p.rwlock(&name).unwrap().read_timeout(Duration::from_secs(2)).await.map(drop).unwrap_err(),
        p.status(&name).await.map(drop).unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, Error::Backend { backend: "redis", .. }), "{e:?}");
        assert!(one_line(&e).contains("not a lock"), "{e}");
    }
    assert_eq!(h.ns().cmd(&["TYPE", &h.key(&name)]).unwrap().text().as_deref(), Some("hash"), "left alone");
}

/// A fencing counter that fell behind (a failover to a replica that had not received the last
/// increments) or vanished (a restart without persistence, eviction) still gives tokens above
/// every earlier one, to writers, readers and permit holders: tokens never fall below the server
/// clock in µs. (A counter holding what interlock never writes is an error: see
/// `a_fencing_counter_interlock_never_wrote_is_an_error_naming_it`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fencing_counter_behind_or_lost_still_gives_higher_tokens() {
    let Some(h) = shared() else { return };
    let name = unique("fence-behind");
    let base = h.side(&name);
    let (fence, sem_fence) = (format!("{base}:fence"), format!("{base}:sem:fence"));
    let p = h.provider().await;
    let (m, rw, sem) = (p.mutex(&name).unwrap(), p.rwlock(&name).unwrap(), p.semaphore(&name, 2).unwrap());
    let token = |g: &interlock::Guard| g.fencing_token().expect("redis guards have tokens");
    let mut last = 0;
    for damage in [Some("5"), None, Some("1")] {
        let g = m.lock().await.unwrap();
        assert!(token(&g) > last, "writer token {} after {last}", token(&g));
        last = token(&g);
        g.release().await.unwrap();
        let g = sem.acquire().await.unwrap();
        let sem_token = token(&g);
        g.release().await.unwrap();
        for counter in [&fence, &sem_fence] {
            match damage {
                Some(v) => h.ns().cmd(&["SET", counter, v]).unwrap(),
                None => h.ns().cmd(&["DEL", counter]).unwrap(),
            };
        }
        let r = rw.read().await.unwrap();
        assert!(token(&r) >= last, "reader token {} below the last writer's {last} ({damage:?})", token(&r));
        r.release().await.unwrap();
        let g = m.lock().await.unwrap();
        assert!(token(&g) > last, "writer token {} after {last} ({damage:?})", token(&g));
        last = token(&g);
        g.release().await.unwrap();
        let g = sem.acquire().await.unwrap();
        assert!(token(&g) > sem_token, "permit token {} after {sem_token} ({damage:?})", token(&g));
        g.release().await.unwrap();
    }
}

/// A peer's plain `SET name v NX PX 1500` (redis-py's `Lock` does the same) excludes us, and we
/// get the lock once it expires (the waiter re-checks at the key's remaining TTL); while we hold
/// it, the peer's `SET NX` fails. A peer that deletes its key without waking us is noticed within
/// the re-check bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_set_nx_px_excludes_us_until_it_expires() {
    let Some(h) = shared() else { return };
    let name = unique("peer");
    let key = h.key(&name);
    let ns = h.ns();
    assert_eq!(ns.cmd(&["SET", &key, "peer-token", "NX", "PX", "1500"]).unwrap().text().as_deref(), Some("OK"));
    let p = h.provider().await;
    let m = p.mutex(&name).unwrap();
    assert!(m.try_lock().await.unwrap().is_none(), "the peer's key excludes us");
    let started = Instant::now();
    let g = m.lock_timeout(EVENTUALLY).await.expect("ours once the peer's key expired");
    assert!(started.elapsed() >= Duration::from_millis(1000), "got it before the peer's key expired");
    assert_eq!(ns.cmd(&["SET", &key, "peer-token", "NX", "PX", "1500"]).unwrap(), Resp::Nil);
    g.release().await.unwrap();

    // A peer without a TTL that deletes its key: no wake-up, so the bounded re-check finds it.
    assert_eq!(ns.cmd(&["SET", &key, "peer-token", "NX"]).unwrap().text().as_deref(), Some("OK"));
    let m2 = m.clone();
    let waiter = tokio::spawn(async move { m2.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiter.is_finished());
    ns.cmd(&["DEL", &key]).unwrap();
    let deleted = Instant::now();
    let g = waiter.await.unwrap().expect("the waiter gets the lock after the peer's DEL");
    assert!(deleted.elapsed() < interlock::redis::RECHECK + Duration::from_secs(2), "{:?}", deleted.elapsed());
    g.release().await.unwrap();
}

/// Waiters that time out or are cancelled, on a mutex, a read lock and a semaphore, leave no key
/// behind but the fencing counters (kept for good): no queue entry, no wake-up list, no holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_and_timed_out_waiters_leave_only_the_fencing_counters() {
    let Some(h) = shared() else { return };
    let name = unique("leftover");
    let (p1, p2) = (h.provider().await, h.provider().await);
    let g = p1.mutex(&name).unwrap().lock().await.unwrap();
    let s = p1.semaphore(&name, 1).unwrap().acquire().await.unwrap();
    let r = p2.mutex(&name).unwrap().lock_timeout(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    let r = p2.rwlock(&name).unwrap().read_timeout(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    let sem = p2.semaphore(&name, 1).unwrap();
    let waiter = tokio::spawn(async move { sem.acquire().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    g.release().await.unwrap();
    s.release().await.unwrap();
    let base = h.side(&name);
    let expected = vec![format!("{base}:fence"), format!("{base}:sem:fence")];
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let keys: Vec<String> = h.ns().keys().unwrap().into_iter().filter(|k| k.contains(&name)).collect();
        if keys == expected {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waiters of five providers get the lock in the order they arrived, one per release: each
/// release hands the lock to the head of the queue (pushed to its own list), and the others
/// stay queued (`status().waiters` counts down by one per release).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_release_hands_the_lock_to_the_longest_waiting_waiter() {
    let Some(h) = shared() else { return };
    let name = unique("fifo");
    let p = h.provider().await;
    let mut g = p.mutex(&name).unwrap().lock().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let q = h.provider().await;
        let (tx, n) = (tx.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let guard = q.mutex(&n).unwrap().lock_timeout(EVENTUALLY).await.unwrap();
            tx.send((i, guard)).unwrap();
        }));
        // Queued in this order.
        let deadline = Instant::now() + EVENTUALLY;
        while p.status(&name).await.unwrap().waiters != Some(i + 1) {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for i in 0..5 {
        let last_token = g.fencing_token().unwrap();
        g.release().await.unwrap();
        let (who, next) = tokio::time::timeout(EVENTUALLY, rx.recv()).await.unwrap().unwrap();
        assert_eq!(who, i, "the lock went to waiter {who}, not to the longest-waiting one ({i})");
        assert!(next.fencing_token().unwrap() > last_token);
        assert_eq!(p.status(&name).await.unwrap().waiters, Some(4 - i), "one release, one waiter");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "a second waiter got the lock from the same release");
        g = next;
    }
    g.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A fencing counter holding what interlock never writes (a number too large for a token, text,
/// a negative or fractional number, another type) is an error that names the counter, for a
/// writer, a reader and a permit, from `try_lock`, from a wait and from `interlock run`; never a
/// token 0 or one below an earlier token, and nothing is left set. A waiter that meets it while
/// waiting gets the error too; the holder's release still releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fencing_counter_interlock_never_wrote_is_an_error_naming_it() {
    let Some(h) = shared() else { return };
    let p = h.provider().await;
    let base = |name: &str| interlock::redis::side_key_base(&h.ns().prefix, name);
    for damage in ["99999999999999999999999", "9007199254740991", "not a number", "-5", "1.5", "hash"] {
        let name = unique("badfence");
        let (fence, sem_fence) = (format!("{}:fence", base(&name)), format!("{}:sem:fence", base(&name)));
        for counter in [&fence, &sem_fence] {
            match damage {
                "hash" => h.ns().cmd(&["HSET", counter, "f", "v"]).unwrap(),
                v => h.ns().cmd(&["SET", counter, v]).unwrap(),
            };
        }
        let attempts = [
            (p.mutex(&name).unwrap().try_lock().await.map(drop), &fence),
            (p.mutex(&name).unwrap().lock_timeout(Duration::from_secs(2)).await.map(drop), &fence),
            (p.rwlock(&name).unwrap().try_read().await.map(drop), &fence),
            (p.semaphore(&name, 2).unwrap().try_acquire().await.map(drop), &sem_fence),
        ];
        for (r, counter) in attempts {
            let e = r.expect_err(damage);
            let s = one_line(&e);
            assert!(matches!(e, Error::Backend { backend: "redis", .. }), "{damage}: {e:?}");
            assert!(s.contains(&format!("fencing counter {counter}")), "{damage}: {s}");
        }
        let left: Vec<String> = h.ns().keys().unwrap().into_iter().filter(|k| k.contains(&name)).collect();
        assert_eq!(left, vec![fence.clone(), sem_fence.clone()], "{damage}: something was written");
        let out = std::process::Command::new(BIN)
            .args(["run", name.as_str(), "--", "sh", "-c", "echo ran with token=$INTERLOCK_TOKEN"])
            .env("INTERLOCK_URL", h.url())
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(69), "{damage}: {stdout} {stderr}");
        assert!(stdout.is_empty() && stderr.contains(&fence) && stderr.lines().count() == 1, "{stdout} / {stderr}");
    }

    // Damaged while a waiter waits: the release releases, the waiter gets the error.
    let name = unique("badfence-wait");
    let g = p.mutex(&name).unwrap().lock().await.unwrap();
    let m = h.provider().await.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fence = format!("{}:fence", base(&name));
    h.ns().cmd(&["SET", &fence, "garbage"]).unwrap();
    g.release().await.expect("the release releases");
    let e = waiter.await.unwrap().unwrap_err();
    assert!(one_line(&e).contains(&fence), "{e}");
    assert_eq!(h.ns().cmd(&["EXISTS", &h.key(&name)]).unwrap(), Resp::Int(0), "the lock is free");
}

/// A side key of another type than interlock keeps there is an error naming that key, not the
/// lock key: the queue `{KEY}:q`, the readers and the semaphore's holders made lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_side_key_of_the_wrong_type_is_an_error_naming_it() {
    let Some(h) = shared() else { return };
    let p = h.provider().await;
    let holder = h.provider().await;
    for side in [":q", ":readers", ":sem"] {
        let name = unique("wrongside");
        let key = format!("{}{side}", interlock::redis::side_key_base(&h.ns().prefix, &name));
        // Held first (the queue is read when the lock is busy, the readers when readers hold it),
        // then damaged.
        let _held = match side {
            ":readers" => holder.rwlock(&name).unwrap().try_read().await.unwrap(),
            ":sem" => None,
            _ => holder.mutex(&name).unwrap().try_lock().await.unwrap(),
        };
        h.ns().cmd(&["DEL", &key]).unwrap();
        h.ns().cmd(&["LPUSH", &key, "x"]).unwrap();
        let r = match side {
            ":sem" => p.semaphore(&name, 1).unwrap().try_acquire().await.map(drop),
            ":readers" => p.rwlock(&name).unwrap().try_read().await.map(drop),
            _ => p.mutex(&name).unwrap().lock_timeout(Duration::from_secs(2)).await.map(drop),
        };
        let e = r.expect_err(side);
        assert!(matches!(e, Error::Backend { backend: "redis", .. }), "{side}: {e:?}");
        let s = one_line(&e);
        assert!(s.contains(&format!("{key:?} holds a list, where interlock keeps a zset")), "{side}: {s}");
        h.ns().cmd(&["DEL", &key]).unwrap();
    }
}

/// ACL users that lack a permission interlock needs are told which: no EVALSHA (the scripts), no
/// BLPOP (the waits), keys limited to a pattern that excludes the lock. Each is `Error::Auth`
/// ("permission denied", not "authentication failed"), one line, without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acl_user_without_a_permission_is_told_which() {
    let Some(r) = Redis::start_or_skip(&RedisOptions::default()) else { return };
    let acl = |args: &[&str]| {
        let mut cmd = vec!["ACL", "SETUSER"];
        cmd.extend_from_slice(args);
        r.cmd(0, &cmd).unwrap();
    };
    acl(&["noeval", "on", ">pw-noeval-1", "~*", "&*", "+@all", "-evalsha", "-eval"]);
    acl(&["noblpop", "on", ">pw-noblpop-1", "~*", "&*", "+@all", "-blpop"]);
    acl(&["otherkeys", "on", ">pw-otherkeys-1", "~other:*", "&*", "+@all"]);
    let url = |user: &str, extra: &str| format!("redis://{user}:pw-{user}-1@127.0.0.1:{}/0{extra}", r.port());
    let holder = interlock::connect(&r.url(0)).await.unwrap();
    let _held = holder.mutex("busy").unwrap().lock().await.unwrap();
    let cases = [
        (url("noeval", ""), "free", "EVALSHA"),
        (url("noblpop", ""), "busy", "BLPOP"),
        (url("otherkeys", "?prefix=app:"), "free", "app:free"),
    ];
    for (url, name, says) in cases {
        let p = interlock::connect(&url).await.expect("connect needs no more than PING and SELECT");
        let e = p.mutex(name).unwrap().lock_timeout(Duration::from_secs(2)).await.unwrap_err();
        let s = one_line(&e);
        assert!(matches!(e, Error::Auth { backend: "redis", .. }), "{url}: {e:?}");
        assert!(s.contains("permission denied") && !s.contains("authentication failed"), "{s}");
        assert!(s.contains(says), "{s} should name {says}");
        assert!(!s.contains("pw-"), "{s}");
    }
}

/// `interlock run` whose key is deleted (an administrator, `FLUSHDB`): the next renewal reports
/// the loss, the command gets SIGTERM and may handle it (within what is left of the lease it had:
/// about 3 s here, lease 6 s, margin 1 s), and interlock exits 75.
#[test]
fn run_sends_sigterm_when_the_backend_reports_the_loss() {
    use std::io::{BufRead, BufReader};
    let Some(h) = shared() else { return };
    let name = unique("run-deleted");
    let mut child = std::process::Command::new(BIN)
        .args(["run", "-u", &h.url(), "--lease", "6s", "--kill-after", "20s", &name, "--", "sh", "-c"])
        .arg("trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done")
        .env_remove("INTERLOCK_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run interlock");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    h.ns().cmd(&["DEL", &h.key(&name)]).expect("DEL");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "got-term", "the command handles SIGTERM after a loss the backend reported");
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("no longer holds") && stderr.contains("SIGTERM"), "{stderr}");
}

/// A host with two ports (`127.0.0.1:31001:99`) is a bad URL, not a host name to look up: from
/// `connect` `InvalidUrl` at once, and from the CLI exit 64 with one line; never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_with_two_ports_is_a_bad_url_not_a_name_to_look_up() {
    let url = "redis://:pw-31@127.0.0.1:31001:99/0";
    let e = interlock::connect(url).await.unwrap_err();
    assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
    let s = one_line(&e);
    assert!(s.contains("one `:PORT` per host") && !s.contains("pw-31"), "{s}");
    let out = std::process::Command::new(BIN)
        .args(["run", "-u", url, "job", "--", "true"])
        .env_remove("INTERLOCK_LOG")
        .output()
        .expect("run interlock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("one `:PORT` per host") && !stderr.contains("pw-31"), "{stderr}");
}

/// An ACL user limited to the keys `~app:*` (and no `@dangerous` commands) with `?prefix=app:`:
/// every key of its locks starts with the prefix (the side keys are `app:{app:NAME}:...`), so a
/// mutex, a read lock, a semaphore, a waiter woken by a release and `status` all work, and leave
/// only counters under `app:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acl_user_limited_to_its_prefix_reaches_every_key_of_its_locks() {
    let Some(r) = Redis::start_or_skip(&RedisOptions::default()) else { return };
    let acl = ["ACL", "SETUSER", "app", "on", ">app-pw-1", "~app:*", "&app:*", "+@all", "-@dangerous"];
    assert_eq!(r.cmd(0, &acl).unwrap(), Resp::Simple("OK".into()));
    let url = format!("redis://app:app-pw-1@127.0.0.1:{}/0?prefix=app:&lease=2s", r.port());
    let (p, q) = (interlock::connect(&url).await.expect("connect"), interlock::connect(&url).await.unwrap());
    let name = unique("acl");
    let g = p.mutex(&name).unwrap().lock().await.expect("a mutex with the side keys under app:");
    let waiter = {
        let m = q.mutex(&name).unwrap();
        tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.status(&name).await.expect("status").waiters, Some(1));
    g.release().await.unwrap();
    waiter.await.unwrap().expect("the waiter, woken by the release").release().await.unwrap();
    p.rwlock(&name).unwrap().read().await.expect("a read lock").release().await.unwrap();
    p.semaphore(&name, 2).unwrap().acquire().await.expect("a permit").release().await.unwrap();
    let keys: Vec<String> = match r.cmd(0, &["KEYS", &format!("*{name}*")]).unwrap() {
        Resp::Array(a) => a.iter().filter_map(Resp::text).collect(),
        other => panic!("{other:?}"),
    };
    assert!(!keys.is_empty() && keys.iter().all(|k| k.starts_with("app:") && k.ends_with("fence")), "{keys:?}");
    // Outside its keys, the same user is refused (nothing is held).
    let other = format!("redis://app:app-pw-1@127.0.0.1:{}/0?prefix=other:", r.port());
    let e = interlock::connect(&other).await.unwrap().mutex(&name).unwrap().try_lock().await.map(drop).unwrap_err();
    assert!(!one_line(&e).contains("app-pw-1"), "{e}");
}

/// `maxmemory` with `allkeys-lru`: filler written past the limit, while the holder is paused,
/// evicts the lock key and its fencing counter (they have not been used as recently). The holder learns it from its next
/// renewal (`interlock hold` exits 75, as for a deleted key), and the next acquisition's token is
/// still higher (tokens never fall below the server clock in µs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_maxmemory_is_a_lost_lock_and_tokens_still_increase() {
    let Some(h) = own() else { return };
    let r = h.ns().redis();
    let info = r.cmd(0, &["INFO", "memory"]).unwrap().text().unwrap_or_default();
    let used: u64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let limit = (used + 2_000_000).to_string();
    assert_eq!(r.cmd(0, &["CONFIG", "SET", "maxmemory", &limit]).unwrap(), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(0, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]).unwrap(), Resp::Simple("OK".into()));
    let name = unique("evicted");
    let hold = Hold::start(h.bin().unwrap(), &h.url(), &name, &["--lease", "3s"]).await;
    let token = hold.token.unwrap();
    // The holder is paused while the filler goes in, so that no renewal makes its key recently
    // used (an LRU keeps a key renewed every second, and the case depended on timing).
    hold.pause();
    let filler = "x".repeat(10_000);
    for i in 0..1000 {
        h.ns().cmd(&["SET", &format!("filler:{i}"), &filler]).expect("SET filler");
    }
    let gone = h.ns().cmd(&["EXISTS", &h.key(&name), &format!("{}:fence", h.side(&name))]).unwrap().int();
    hold.resume();
    assert_eq!(gone, Some(0), "the lock key and its counter were evicted");
    assert_eq!(hold.wait_exit(EVENTUALLY).await, Some(75), "the holder reports the evicted lock as lost");
    r.cmd(0, &["CONFIG", "SET", "maxmemory", "0"]).unwrap();
    let g = h.provider().await.mutex(&name).unwrap().try_lock().await.unwrap().expect("free again");
    assert!(g.fencing_token().unwrap() > token, "a token after an evicted counter is still higher");
    g.release().await.unwrap();
}
