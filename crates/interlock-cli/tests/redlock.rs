//! The redlock backend's own fault cases, beyond the conformance suite (which runs on 3 and on 5
//! masters in tests/conformance.rs): masters killed (a minority, then a majority), a holder
//! killed or stopped, masters restarted, the fencing write-back, peers holding a minority or a
//! quorum, bad URLs and credentials, unreachable masters, a key of the wrong type, and what a
//! cancelled or timed-out acquisition leaves (nothing but the counters, no subscriber). Each
//! case uses a namespace of the shared private masters, or a group of its own when it breaks
//! them; never a server on a standard port.
#![cfg(feature = "redlock")]

use std::process::Command;
use std::time::{Duration, Instant};

use interlock::{AcquireOptions, Error};
use interlock_testkit::process::Hold;
use interlock_testkit::servers::PortLease;
use interlock_testkit::servers::redis::{RedisGroup, RedisOptions};
use interlock_testkit::servers::resp::Resp;
use interlock_testkit::{Harness, RedlockHarness};
use interlock_testkit::{one_line, unique};

const BIN: &str = env!("CARGO_BIN_EXE_interlock");
const EVENTUALLY: Duration = Duration::from_secs(20);

fn shared(n: usize) -> Option<RedlockHarness> {
    RedlockHarness::new(BIN, n)
}

fn own(n: usize) -> Option<RedlockHarness> {
    RedlockHarness::own_group(BIN, n)
}

/// `GET` of `key` on master `i` (in the harness's database), as a number.
fn get_int(h: &RedlockHarness, i: usize, key: &str) -> Option<i64> {
    h.group().member(i).cmd(h.ns().db, &["GET", key]).expect("GET").text().and_then(|t| t.parse().ok())
}

/// With 5 masters: 2 killed, a held lock keeps being renewed by the other 3 and new locks are
/// taken and released; a third killed, acquire fails with `Unavailable` (naming the quorum)
/// within its timeout, and the held guard reports its loss once its lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_masters_two_killed_locks_go_on_three_killed_unavailable_and_lost() {
    let Some(h) = own(5) else { return };
    let url = format!("{}&command_timeout=1s", h.url());
    let p = interlock::connect(&url).await.unwrap();
    let lease = Duration::from_millis(1500);
    let opts = || AcquireOptions::forever().lease(lease);
    let held = p.mutex(unique("held")).unwrap().lock_with(opts()).await.unwrap().unwrap();
    assert_eq!(h.kill_members(2).await, Some(5));
    let name = unique("after2");
    let mut last = 0;
    for _ in 0..5 {
        let g = p.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("a lock with 3 of 5 masters");
        let t = g.fencing_token().unwrap();
        assert!(t > last, "tokens go on increasing with 2 masters down");
        last = t;
        g.release().await.expect("released on the 3 left");
    }
    tokio::time::sleep(lease * 2).await;
    assert!(!held.is_lost(), "a lock renewed by 3 of 5 masters was lost");
    // A new provider connects with 2 masters down.
    let q = interlock::connect(&url).await.expect("connect with a quorum up");
    assert!(q.mutex(&name).unwrap().try_lock().await.unwrap().is_some());

    assert!(h.kill_members(1).await.is_some());
    let started = Instant::now();
    let timeout = Duration::from_secs(3);
    let e = p.mutex(unique("after3")).unwrap().lock_timeout(timeout).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { backend: "redlock", .. }), "{e:?}");
    let s = one_line(&e);
    assert!(s.contains("of 5 masters answered, 3 needed"), "{s}");
    assert!(started.elapsed() <= timeout + Duration::from_secs(2), "took {:?}", started.elapsed());
    tokio::time::timeout(EVENTUALLY, held.lost()).await.expect("the held guard reports its loss");
    assert!(held.release().await.unwrap_err().is_lock_lost());
}

/// The conformance minority case on groups of their own, 3 and 5 masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_of_members_killed_keeps_locks_3() {
    let Some(h) = own(3) else { return };
    interlock_testkit::conformance::minority_of_members_killed_keeps_locks(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_of_members_killed_keeps_locks_5() {
    let Some(h) = own(5) else { return };
    interlock_testkit::conformance::minority_of_members_killed_keeps_locks(&h).await;
}

/// The conformance restart case on a group of its own: every master restarted without
/// persistence; every holder reports the loss, the providers go on, tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_masters_restarted_signals_lost_to_every_holder() {
    let Some(h) = own(3) else { return };
    interlock_testkit::conformance::server_restart_signals_lost_to_every_holder(&h).await;
}

/// `kill -9` of an `interlock hold` holder: a waiter of another process gets the lock within the
/// lease plus one renewal period (plus slack), with a higher token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_holder_frees_the_lock_within_lease_plus_one_renewal() {
    let Some(h) = shared(3) else { return };
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

/// SIGSTOP of an `interlock hold` past its lease, then SIGCONT, on 5 masters: another process
/// took the lock with a higher token, and the stopped holder reports the loss (exit 75) without
/// freeing the new holder's lock (the conformance case, on a group of 5 of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_holder_past_its_lease_reports_lost_on_5_masters() {
    let Some(h) = own(5) else { return };
    interlock_testkit::conformance::paused_holder_reports_lost_on_resume(&h).await;
}

/// The fencing write-back: after an acquisition, a majority of masters have a counter at least
/// the guard's token; a master whose counter is far ahead (restarted with a clock ahead) pulls
/// the tokens up, never down; and tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_token_is_the_quorum_max_written_back_to_a_majority() {
    let Some(h) = shared(3) else { return };
    let name = unique("writeback");
    let fence = format!("{}:fence", h.side(&name));
    let p = h.provider().await;
    let m = p.mutex(&name).unwrap();
    let g = m.lock().await.unwrap();
    let t1 = g.fencing_token().unwrap();
    let at_least = (0..3).filter(|i| get_int(&h, *i, &fence).is_some_and(|c| c >= t1 as i64)).count();
    assert!(at_least >= 2, "the token {t1} is on {at_least} of 3 counters");
    g.release().await.unwrap();
    // Master 0's counter jumps far ahead.
    let ahead = t1 + 1_000_000;
    h.group().member(0).cmd(h.ns().db, &["SET", &fence, &ahead.to_string()]).unwrap();
    let mut last = t1;
    for _ in 0..10 {
        let g = m.lock().await.unwrap();
        let t = g.fencing_token().unwrap();
        assert!(t > last, "token {t} after {last}");
        last = t;
        g.release().await.unwrap();
    }
    // The two others follow once master 0 was part of a quorum: then the counters agree again.
    assert!(last > ahead || (0..3).filter(|i| get_int(&h, *i, &fence) == Some(last as i64)).count() >= 2);
}

/// Once a name is in use the masters' counters agree, so each acquisition's quorum returns the
/// same value and no write-back round is needed: tokens then go up by exactly one. (On first use
/// each master starts from its own clock; the counters agree once a quorum that includes the
/// highest has written it back to every master, within the first few acquisitions: ten here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_in_use_gets_consecutive_tokens_from_agreeing_counters() {
    let Some(h) = shared(3) else { return };
    let name = unique("agree");
    let fence = format!("{}:fence", h.side(&name));
    let p = h.provider().await;
    let m = p.mutex(&name).unwrap();
    let mut last = 0;
    for _ in 0..10 {
        let g = m.lock().await.unwrap();
        let t = g.fencing_token().unwrap();
        assert!(t > last);
        last = t;
        g.release().await.unwrap();
    }
    for _ in 0..10 {
        let g = m.lock().await.unwrap();
        let t = g.fencing_token().unwrap();
        assert_eq!(t, last + 1, "the counters did not agree");
        last = t;
        g.release().await.unwrap();
    }
    let agree = (0..3).filter(|i| get_int(&h, *i, &fence) == Some(last as i64)).count();
    assert!(agree >= 2, "{agree} of 3 counters at the last token");
}

/// A peer's key on one master of three (a minority) does not stop us; on two (a quorum) it
/// does, until the peer deletes it (no publish: found by the re-check) .
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_on_a_minority_does_not_exclude_us_on_a_quorum_it_does() {
    let Some(h) = shared(3) else { return };
    let name = unique("peer");
    let key = h.key(&name);
    let db = h.ns().db;
    let set = |i: usize| h.group().member(i).cmd(db, &["SET", &key, "peer", "NX", "PX", "60000"]).unwrap();
    assert_eq!(set(0).text().as_deref(), Some("OK"));
    let p = h.provider().await;
    let m = p.mutex(&name).unwrap();
    let g = m.try_lock().await.unwrap().expect("a peer on 1 of 3 masters leaves us a quorum");
    g.release().await.unwrap();
    assert_eq!(set(1).text().as_deref(), Some("OK"));
    assert!(m.try_lock().await.unwrap().is_none(), "a peer on 2 of 3 masters excludes us");
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiter.is_finished());
    for i in 0..2 {
        h.group().member(i).cmd(db, &["DEL", &key]).unwrap();
    }
    let deleted = Instant::now();
    let g = waiter.await.unwrap().expect("ours after the peer's DEL");
    assert!(deleted.elapsed() < interlock::redlock::RECHECK + Duration::from_secs(2), "{:?}", deleted.elapsed());
    // While we hold, the peer's SET NX fails on every master.
    for i in 0..3 {
        assert_eq!(set(i), Resp::Nil, "master {i}");
    }
    g.release().await.unwrap();
}

/// Acquisitions that time out or are cancelled (mutex, read lock, a waiting writer) leave
/// nothing on any master but the fencing counter: no key, no reader, no waiting writer, and no
/// subscriber on the lock's channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_and_timed_out_acquisitions_leave_nothing_on_any_master() {
    let Some(h) = shared(3) else { return };
    let name = unique("leftover");
    let (p1, p2) = (h.provider().await, h.provider().await);
    let r = p1.rwlock(&name).unwrap().read().await.unwrap();
    let t = p2.mutex(&name).unwrap().lock_timeout(Duration::from_millis(300)).await;
    assert!(matches!(t, Err(Error::Timeout { .. })), "{t:?}");
    let w = p2.rwlock(&name).unwrap();
    let waiter = tokio::spawn(async move { w.write().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let channel = format!("{}:released", h.side(&name));
    let writers = format!("{}:writers", h.side(&name));
    let numsub = |i: usize| match h.group().member(i).cmd(0, &["PUBSUB", "NUMSUB", &channel]).unwrap() {
        Resp::Array(a) => a.get(1).and_then(Resp::int).unwrap_or(-1),
        other => panic!("{other:?}"),
    };
    assert!((0..3).all(|i| numsub(i) >= 1), "the waiter subscribed on every master");
    assert!((0..3).any(|i| h.group().member(i).cmd(h.ns().db, &["EXISTS", &writers]).unwrap().int() == Some(1)));
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    r.release().await.unwrap();
    let expected = vec![format!("{}:fence", h.side(&name))];
    let deadline = Instant::now() + EVENTUALLY;
    for i in 0..3 {
        loop {
            let keys: Vec<String> = h.ns().keys_on(i).unwrap().into_iter().filter(|k| k.contains(&name)).collect();
            if keys == expected && numsub(i) == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "left behind on master {i}: {keys:?}, {} subscriber(s)", numsub(i));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A key of another type at the lock's name on the masters is not a lock: one line, no wait,
/// nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_of_the_wrong_type_is_a_clear_error() {
    let Some(h) = shared(3) else { return };
    let name = unique("wrongtype");
    h.cmd_all(&["HSET", &h.key(&name), "field", "value"]);
    let p = h.provider().await;
    let errors = [
        p.mutex(&name).unwrap().try_lock().await.map(drop).unwrap_err(),
        p.mutex(&name).unwrap().lock_timeout(Duration::from_secs(2)).await.map(drop).unwrap_err(),
        p.rwlock(&name).unwrap().read_timeout(Duration::from_secs(2)).await.map(drop).unwrap_err(),
        p.status(&name).await.map(drop).unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, Error::Backend { backend: "redlock", .. }), "{e:?}");
        assert!(one_line(&e).contains("not a lock"), "{e}");
    }
}

/// A wrong password, and none where one is required, are `Auth` from `connect`, one line,
/// without the password; the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_password_is_an_auth_error() {
    let opts = RedisOptions { password: Some("right-pw-123".into()), ..Default::default() };
    let Some(g) = RedisGroup::start_or_skip(3, &opts) else { return };
    let hosts: Vec<String> = g.members().iter().map(|r| format!("127.0.0.1:{}", r.port())).collect();
    let hosts = hosts.join(",");
    for url in [format!("redlock://:wrong-pw-456@{hosts}/1"), format!("redlock://{hosts}/1")] {
        let e = interlock::connect(&url).await.unwrap_err();
        assert!(matches!(e, Error::Auth { backend: "redlock", .. }), "{url}: {e:?}");
        let s = one_line(&e);
        assert!(!s.contains("wrong-pw") && !s.contains("right-pw"), "{s}");
        assert!(!format!("{e:?}").contains("wrong-pw"), "{e:?}");
    }
    let p = interlock::connect(&format!("redlock://:right-pw-123@{hosts}/1")).await.expect("the right password");
    p.mutex("x").unwrap().try_lock().await.unwrap().unwrap().release().await.unwrap();
}

/// Fewer than 3 masters, or one named twice: `InvalidUrl` naming the rule, without the password.
/// Masters where nothing listens: `Unavailable` from `connect`, one line, and exit 69 from the CLI
/// with one line naming the backend and no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_urls_and_unreachable_masters_are_one_line_errors() {
    for url in ["redlock://:pw-1@127.0.0.1:1", "redlock://:pw-1@a:1,b:1", "redlock://:pw-1@a:1,b:1,a:1"] {
        let e = interlock::connect(url).await.unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{url}: {e:?}");
        let s = one_line(&e);
        assert!(!s.contains("pw-1") && (s.contains("at least 3") || s.contains("twice")), "{s}");
    }
    let ports: Vec<PortLease> = (0..3).map(|_| PortLease::reserve()).collect();
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{}", p.port())).collect();
    let url = format!("redlock://:pw-2@{}/0", hosts.join(","));
    let started = Instant::now();
    let e = interlock::connect(&url).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { backend: "redlock", .. }), "{e:?}");
    let s = one_line(&e);
    assert!(s.contains("0 of 3 masters answered, 2 needed") && !s.contains("pw-2"), "{s}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = Command::new(BIN)
        .args(["run", "-u", &url, "job", "--", "true"])
        .env_remove("INTERLOCK_LOG")
        .output()
        .expect("run interlock");
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("redlock") && !stderr.contains("pw-2"), "{stderr}");
}

/// A release that frees the lock publishes on the lock's channel on every master (what wakes
/// interlock's waiters), seen by a plain subscriber of each master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_publishes_on_every_master() {
    let Some(h) = shared(3) else { return };
    let name = unique("publish");
    let channel = format!("{}:released", h.side(&name));
    let mut conns: Vec<redis::Connection> = h
        .group()
        .members()
        .iter()
        .map(|r| redis::Client::open(format!("redis://127.0.0.1:{}/", r.port())).unwrap().get_connection().unwrap())
        .collect();
    let mut subs: Vec<redis::PubSub<'_>> = conns.iter_mut().map(|c| c.as_pubsub()).collect();
    for s in &mut subs {
        s.subscribe(&channel).expect("SUBSCRIBE");
        s.set_read_timeout(Some(EVENTUALLY)).unwrap();
    }
    let p = h.provider().await;
    let g = p.mutex(&name).unwrap().lock().await.unwrap();
    g.release().await.unwrap();
    for (i, s) in subs.iter_mut().enumerate() {
        let msg = s.get_message().unwrap_or_else(|e| panic!("master {i}: {e}"));
        assert_eq!(msg.get_channel_name(), channel, "master {i}");
    }
}

/// A fencing counter holding what interlock never writes is an error that names the counter and
/// the master where a quorum cannot be had without it (never a token 0 or a lower one, and nothing
/// is left set on any master); on a minority of masters it is one master's failure, which the
/// others outvote: tokens go on increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fencing_counter_interlock_never_wrote_is_an_error_naming_it() {
    let Some(h) = shared(3) else { return };
    let p = h.provider().await;
    for (damage, on) in [("99999999999999999999999", 2), ("not a number", 3), ("hash", 2), ("9007199254740991", 1)] {
        let name = unique("badfence");
        let fence = format!("{}:fence", interlock::redis::side_key_base(&h.ns().prefix, &name));
        let before = p.mutex(&name).unwrap().lock().await.unwrap();
        let last = before.fencing_token().unwrap();
        before.release().await.unwrap();
        for i in 0..on {
            let m = h.group().member(i);
            m.cmd(h.ns().db, &["DEL", &fence]).unwrap();
            match damage {
                "hash" => m.cmd(h.ns().db, &["HSET", &fence, "f", "v"]).unwrap(),
                v => m.cmd(h.ns().db, &["SET", &fence, v]).unwrap(),
            };
        }
        if on == 1 {
            // A minority: outvoted.
            let g = p.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("the other masters' quorum");
            assert!(g.fencing_token().unwrap() > last, "{damage}: token {:?} after {last}", g.fencing_token());
            g.release().await.unwrap();
            continue;
        }
        for r in [
            p.mutex(&name).unwrap().try_lock().await.map(drop),
            p.rwlock(&name).unwrap().read_timeout(Duration::from_secs(2)).await.map(drop),
        ] {
            let e = r.expect_err(damage);
            let s = one_line(&e);
            assert!(matches!(e, Error::Backend { backend: "redlock", .. }), "{damage}: {e:?}");
            let named_a_master = (0..on).any(|i| s.contains(&format!(":{}", h.group().member(i).port())));
            assert!(s.contains(&format!("fencing counter {fence}")) && named_a_master, "{s}");
        }
        for i in 0..3 {
            let left: Vec<String> = h.ns().keys_on(i).unwrap().into_iter().filter(|k| k.contains(&name)).collect();
            assert_eq!(left, vec![fence.clone()], "{damage}: master {i} keeps more than its counter");
        }
    }
}

/// A side key of another type than interlock keeps there (the waiting writers, a list) is an
/// error naming that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_side_key_of_the_wrong_type_is_an_error_naming_it() {
    let Some(h) = shared(3) else { return };
    let name = unique("wrongside");
    let writers = format!("{}:writers", interlock::redis::side_key_base(&h.ns().prefix, &name));
    h.cmd_all(&["LPUSH", &writers, "x"]);
    let e = h.provider().await.mutex(&name).unwrap().try_lock().await.map(drop).unwrap_err();
    let s = one_line(&e);
    assert!(matches!(e, Error::Backend { backend: "redlock", .. }), "{e:?}");
    assert!(s.contains(&format!("{writers:?} holds a list, where interlock keeps a zset")), "{s}");
}

/// Runs `f` and returns its result and how long it took.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// `k` of 5 masters paused with SIGSTOP (not killed), before and after the provider connected:
/// connect, acquire, release, status, a handoff to a waiter and renewals go on with the others
/// and never wait for a paused master (each call well under the 5 s command timeout, the figures
/// printed next to the healthy ones); exclusion holds; `interlock run` and `status` (with
/// `connect_timeout=3s`) do the same; and once the masters are continued, they hold no stale
/// key of the lock (a grant or registration that reached them late was undone there).
#[allow(clippy::unwrap_used)]
async fn paused_masters_never_slow_a_call(k: usize) {
    let Some(h) = own(5) else { return };
    let url = h.base_url();
    let name = unique("paused-masters");
    let bound = Duration::from_secs(2);
    let figures = |what: &str, healthy: Duration, paused: Duration| {
        eprintln!("{k} of 5 paused: {what}: {paused:?} (healthy: {healthy:?})");
        assert!(paused < bound, "{what} took {paused:?} with {k} of 5 masters paused");
    };
    // Healthy figures first.
    let (p, healthy_connect) = timed(interlock::connect(&url)).await;
    let p = p.expect("connect");
    let m = p.mutex(&name).unwrap();
    let (g, healthy_acquire) = timed(m.lock()).await;
    let (r, healthy_release) = timed(g.unwrap().release()).await;
    r.unwrap();
    let (_, healthy_status) = timed(p.status(&name)).await;
    // Paused after the provider connected.
    let early = interlock::connect(&url).await.expect("connect");
    for i in 0..k {
        h.group().member(i).server().pause();
    }
    let (g, took) = timed(early.mutex(&name).unwrap().lock()).await;
    let g = g.expect("a lock with a quorum answering");
    figures("acquire (connected before the pause)", healthy_acquire, took);
    assert!(p.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "exclusion with masters paused");
    let waiter = {
        let m = p.mutex(&name).unwrap();
        tokio::spawn(async move { timed(m.lock_timeout(EVENTUALLY)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r, took) = timed(g.release()).await;
    r.expect("released on a quorum");
    figures("release (connected before the pause)", healthy_release, took);
    let (w, _) = waiter.await.unwrap();
    let w = w.expect("the waiter gets the lock after the release");
    w.release().await.unwrap();
    // Renewals by quorum: a 1.5 s lease kept through 3 s.
    let opts = AcquireOptions::forever().lease(Duration::from_millis(1500));
    let held = early.mutex(unique("renewed")).unwrap().lock_with(opts).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!held.is_lost(), "renewals on a quorum keep the lock");
    held.release().await.unwrap();
    // A provider that connects while they are paused.
    let (q, took) = timed(interlock::connect(&format!("{url}?connect_timeout=3s"))).await;
    let q = q.expect("connect with a quorum answering");
    figures("connect", healthy_connect, took);
    let (g, took) = timed(q.mutex(&name).unwrap().lock()).await;
    let g = g.unwrap();
    figures("acquire", healthy_acquire, took);
    let (r, took) = timed(g.release()).await;
    r.unwrap();
    figures("release", healthy_release, took);
    let (st, took) = timed(q.status(&name)).await;
    let st = st.expect("status with a quorum answering");
    figures("status", healthy_status, took);
    let location = st.location.unwrap_or_default();
    assert!(
        st.held.is_none() && location.contains(&format!("answered by {} of 5 masters; {k} did not answer", 5 - k)),
        "{location}"
    );
    // The command.
    let cli = |args: &[&str]| {
        let started = Instant::now();
        let out = Command::new(BIN).args(args).env_remove("INTERLOCK_LOG").output().expect("run interlock");
        (out, started.elapsed())
    };
    let ct = format!("{url}?connect_timeout=3s");
    let (out, took) = cli(&["run", "-u", &ct, &name, "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    eprintln!("{k} of 5 paused: interlock run: {took:?}");
    assert!(took < Duration::from_secs(5), "interlock run took {took:?}");
    let (out, took) = cli(&["status", "-u", &ct, &name]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("free") && stdout.contains("did not answer"), "{out:?}");
    eprintln!("{k} of 5 paused: interlock status: {took:?}: {}", stdout.trim());
    assert!(took < Duration::from_secs(5), "interlock status took {took:?}");
    // Continued: what reached them while paused runs now; nothing of the lock stays but counters.
    for i in 0..k {
        h.group().member(i).server().resume();
    }
    // Within 6 s: the undo of a late answer goes out when its request times out (5 s after the
    // attempt), well before a stale key's 10 s lease would have expired it.
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(6);
    for i in 0..5 {
        loop {
            let keys: Vec<String> = h.ns().keys_on(i).unwrap().into_iter().filter(|k| k.contains(&name)).collect();
            if keys.iter().all(|k| k.ends_with(":fence")) {
                break;
            }
            assert!(Instant::now() < deadline, "left behind on master {i}: {keys:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("{k} of 5 paused: no stale key {:?} after the masters were continued", resumed.elapsed());
}

/// The requests of Redlock's rounds are tasks of the provider: with one of three masters paused,
/// a lock and its release return on the quorum while the paused master's requests are still
/// under way, counted as the provider's tasks; `close()` lets them end (each is bounded by the
/// command timeout) and leaves none. Closing closes the masters' connections: a guard taken
/// before can no longer renew and is lost when its lease runs out (before, Redlock had no
/// `close`, and such a guard went on renewing); a new provider works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rounds_are_tasks_of_the_provider_and_close_ends_them() {
    let Some(h) = own(3) else { return };
    let url = format!("{}&command_timeout=1s", h.url());
    let p = interlock::connect(&url).await.unwrap();
    let name = unique("tasks");
    // Every master's connection open.
    p.mutex(&name).unwrap().lock().await.unwrap().release().await.unwrap();
    let opts = AcquireOptions::forever().lease(Duration::from_millis(1500));
    let held = p.mutex(unique("held")).unwrap().lock_with(opts).await.unwrap().unwrap();
    h.group().member(0).server().pause();
    let g = p.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("a lock on the quorum left");
    g.release().await.expect("released on the quorum left");
    assert!(p.task_count() >= 1, "the paused master's requests are not the provider's tasks");
    let started = Instant::now();
    p.close().await.unwrap();
    eprintln!("close took {:?} (the paused master's requests time out after 1 s)", started.elapsed());
    assert_eq!(p.task_count(), 0, "tasks left after close");
    h.group().member(0).server().resume();
    assert!(matches!(p.mutex(&name).unwrap().try_lock().await, Err(Error::Unavailable { .. })));
    tokio::time::timeout(EVENTUALLY, held.lost()).await.expect("a guard of a closed provider is lost at its lease");
    assert!(held.release().await.is_err());
    let q = interlock::connect(&url).await.unwrap();
    let g = q.mutex(&name).unwrap().lock_timeout(EVENTUALLY).await.expect("a new provider works");
    g.release().await.unwrap();
    q.close().await.unwrap();
    assert_eq!(q.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_paused_master_of_five_never_slows_a_call() {
    paused_masters_never_slow_a_call(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_paused_masters_of_five_never_slow_a_call() {
    paused_masters_never_slow_a_call(2).await;
}

/// A wait given up while `k` of 5 masters are paused (SIGSTOP) ends as soon as a quorum has
/// answered its undo, never after the paused masters' command timeout (5 s): `finish_cleanups`
/// after a timed-out `lock_timeout`, a blocking `lock_timeout` (which returns once its own undo
/// has landed), `interlock run -w 1` (which lets the undo land before it exits) and a waiting
/// `interlock run` ended by SIGTERM. The undo's releases to the paused masters wait in their
/// connections and land when the masters run again: nothing of the gone waiters stays. (Each
/// bound is well above the healthy figure, printed, and below what waiting for a paused master
/// took: 5 s, UNDO_WAIT's 2 s, the CLI's 3 s.)
#[allow(clippy::unwrap_used)]
async fn given_up_waits_never_wait_for_paused_masters(k: usize) {
    let Some(h) = own(5) else { return };
    let url = h.base_url();
    let name = unique("given-up");
    let p = interlock::connect(&url).await.expect("connect");
    let m = p.mutex(&name).unwrap();
    // Every script has run on every master (a master that has not loaded the release script
    // cannot run a release sent by a process that has exited since).
    m.lock().await.unwrap().release().await.unwrap();
    let held = m.lock().await.unwrap();
    for i in 0..k {
        h.group().member(i).server().pause();
    }
    // A provider of its own: one of `p` would queue in `p` behind `held`, never on the masters.
    let q = interlock::connect(&url).await.expect("connect with a quorum answering");
    let started = Instant::now();
    let timed_out = q.mutex(&name).unwrap().lock_timeout(Duration::from_millis(300)).await;
    assert!(matches!(timed_out, Err(Error::Timeout { .. })), "{timed_out:?}");
    assert!(interlock::finish_cleanups(EVENTUALLY).await, "the undo never ended");
    let took = started.elapsed();
    eprintln!("{k} of 5 paused: lock_timeout(300ms) and its undo: {took:?}");
    assert!(took < Duration::from_millis(2500), "the undo waited for the paused masters: {took:?}");

    let (blocking_url, blocking_name) = (url.clone(), name.clone());
    // On a thread of its own: the blocking API refuses to run inside a runtime.
    let blocking = std::thread::spawn(move || {
        let b = interlock::blocking::connect(&blocking_url).expect("connect");
        let m = b.mutex(&blocking_name).unwrap();
        let started = Instant::now();
        let r = m.lock_timeout(Duration::from_millis(300)).map(drop);
        (r, started.elapsed())
    });
    let (r, took) = tokio::task::spawn_blocking(move || blocking.join().unwrap()).await.unwrap();
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    eprintln!("{k} of 5 paused: blocking lock_timeout(300ms): {took:?}");
    assert!(took < Duration::from_millis(1800), "the blocking wait waited for the paused masters: {took:?}");

    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["run", "-u", &url, "-w", "1", &name, "--", "true"])
        .env_remove("INTERLOCK_LOG")
        .output()
        .expect("run interlock");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    eprintln!("{k} of 5 paused: interlock run -w 1 timing out: {took:?}");
    assert!(took < Duration::from_millis(3500), "interlock run -w 1 waited for the paused masters: {took:?}");

    let mut waiter = Command::new(BIN)
        .args(["run", "-u", &url, &name, "--", "true"])
        .env_remove("INTERLOCK_LOG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run interlock");
    let deadline = Instant::now() + EVENTUALLY;
    while p.status(&name).await.unwrap().waiters != Some(1) {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(waiter.id()).unwrap()).unwrap();
    let started = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let st = waiter.wait().unwrap();
    let took = started.elapsed();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(15), "{st}");
    eprintln!("{k} of 5 paused: a waiting interlock run ended by SIGTERM: {took:?}");
    assert!(took < Duration::from_millis(2000), "SIGTERM's undo waited for the paused masters: {took:?}");

    held.release().await.unwrap();
    for i in 0..k {
        h.group().member(i).server().resume();
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    for i in 0..5 {
        loop {
            let keys: Vec<String> = h.ns().keys_on(i).unwrap().into_iter().filter(|k| k.contains(&name)).collect();
            if keys.iter().all(|k| k.ends_with(":fence")) {
                break;
            }
            assert!(Instant::now() < deadline, "left behind on master {i}: {keys:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wait_given_up_with_one_paused_master_of_five_ends_at_once() {
    given_up_waits_never_wait_for_paused_masters(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wait_given_up_with_two_paused_masters_of_five_ends_at_once() {
    given_up_waits_never_wait_for_paused_masters(2).await;
}

/// Masters that do not have interlock's scripts cached (first use after they started, a `SCRIPT
/// FLUSH`) get them at connect: so the release that `interlock hold` sends to a paused master just
/// before it exits (it returns once a quorum released) is one `EVALSHA` that the master runs
/// when it is continued. (Without the scripts, the master answered `NOSCRIPT` once continued, to a
/// process that was gone and could not send the script again, and kept the key for its lease.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_sent_to_a_paused_master_lands_after_the_process_exits() {
    let Some(h) = own(3) else { return };
    for r in h.group().members() {
        assert_eq!(r.cmd(0, &["SCRIPT", "FLUSH"]).unwrap(), Resp::Simple("OK".into()));
    }
    let url = h.base_url();
    let name = unique("late-release");
    let hold = Hold::start(h.bin().unwrap(), &url, &name, &[]).await;
    let paused = h.group().member(0).server();
    paused.pause();
    assert_eq!(hold.release().await, Some(0), "released on a quorum while a master is paused");
    paused.resume();
    // No prefix in the base URL: the key is the name; the lease is the default 10 s.
    let key = name.clone();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = h.group().member(0).cmd(h.ns().db, &["PTTL", &key]).unwrap();
        if left == Resp::Int(-2) {
            break;
        }
        assert!(Instant::now() < deadline, "the paused master kept the released key: PTTL {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP forwarder on a leased loopback port to `target`: another address of the same server.
fn forwarder(target: u16) -> PortLease {
    let lease = PortLease::reserve();
    let listener = std::net::TcpListener::bind(("127.0.0.1", lease.port())).expect("bind the forwarder");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else { continue };
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || std::io::copy(&mut c, &mut s));
            std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
        }
    });
    lease
}

/// One server named twice is refused at connect (`InvalidUrl`, CLI exit 64, one line, no
/// password), not counted as two masters: by its address (`127.0.0.1:X` and `localhost:X`), and
/// by its `run_id` when it is reached through two addresses (here a forwarder).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_server_named_twice_is_refused_at_connect() {
    let Some(h) = shared(3) else { return };
    let (x, y) = (h.group().member(0).port(), h.group().member(1).port());
    let db = h.ns().db;
    let via = forwarder(x);
    for (url, why) in [
        (
            format!("redlock://:pw-7@127.0.0.1:{x},localhost:{x},127.0.0.1:{y}/{db}"),
            format!("(both are 127.0.0.1:{x})"),
        ),
        (format!("redlock://:pw-7@127.0.0.1:{x},127.0.0.1:{},127.0.0.1:{y}/{db}", via.port()), "run_id".to_owned()),
    ] {
        let e = interlock::connect(&url).await.map(drop).unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{url}: {e:?}");
        let s = one_line(&e);
        assert!(s.contains("are the same server") && s.contains(&why) && !s.contains("pw-7"), "{s}");
        let out = Command::new(BIN).args(["run", "-u", &url, "x", "--", "true"]).env_remove("INTERLOCK_LOG").output();
        let out = out.expect("run interlock");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.trim_end().lines().count() == 1 && !stderr.contains("pw-7"), "{stderr}");
    }
}

/// An ACL user limited to `~app:*` and the channels `&app:*` on every master, with
/// `?prefix=app:`: every key and the release channel start with the prefix, so a mutex, a waiter
/// woken by the release's publish, a read lock and `status` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acl_user_limited_to_its_prefix_reaches_every_key_and_channel_of_its_locks() {
    let Some(g) = RedisGroup::start_or_skip(3, &RedisOptions::default()) else { return };
    let acl = ["ACL", "SETUSER", "app", "on", ">app-pw-2", "~app:*", "&app:*", "+@all", "-@dangerous"];
    for r in g.members() {
        assert_eq!(r.cmd(0, &acl).unwrap(), Resp::Simple("OK".into()));
    }
    let hosts: Vec<String> = g.members().iter().map(|r| format!("127.0.0.1:{}", r.port())).collect();
    let url = format!("redlock://app:app-pw-2@{}/0?prefix=app:&lease=2s", hosts.join(","));
    let (p, q) = (interlock::connect(&url).await.expect("connect"), interlock::connect(&url).await.unwrap());
    let name = unique("acl");
    let held = p.mutex(&name).unwrap().lock().await.expect("a mutex with the side keys under app:");
    let waiter = {
        let m = q.mutex(&name).unwrap();
        tokio::spawn(async move { timed(m.lock_timeout(EVENTUALLY)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.status(&name).await.expect("status").waiters, Some(1));
    held.release().await.unwrap();
    let (w, _) = waiter.await.unwrap();
    w.expect("the waiter, woken by the release").release().await.unwrap();
    p.rwlock(&name).unwrap().read().await.expect("a read lock").release().await.unwrap();
    for r in g.members() {
        let keys: Vec<String> = match r.cmd(0, &["KEYS", &format!("*{name}*")]).unwrap() {
            Resp::Array(a) => a.iter().filter_map(Resp::text).collect(),
            other => panic!("{other:?}"),
        };
        assert!(keys.iter().all(|k| k.starts_with("app:")), "{keys:?}");
    }
}
