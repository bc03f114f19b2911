//! The redis backend on a Redis Cluster (`redis+cluster://`), beyond the conformance suite
//! (which runs on the cluster in tests/conformance.rs, `redis_cluster::`): every key of one lock
//! in the lock key's slot, checked with the server's own `CLUSTER KEYSLOT`; names with braces;
//! locks on each of the three masters; a killed connection; a seed node that does not answer; a
//! slot that moves while a waiter waits; a cluster restarted; a master killed (a failed slot).
//! Each case uses a key prefix of the shared private cluster, or a cluster of its own when it
//! breaks it.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use interlock::{AcquireOptions, Error};
use interlock_testkit::servers::PortLease;
use interlock_testkit::{Harness, RedisClusterHarness};
use interlock_testkit::{one_line, unique};

const BIN: &str = env!("CARGO_BIN_EXE_interlock");
const EVENTUALLY: Duration = Duration::from_secs(20);

fn shared() -> Option<RedisClusterHarness> {
    RedisClusterHarness::new(BIN)
}

fn own() -> Option<RedisClusterHarness> {
    RedisClusterHarness::own_cluster(BIN)
}

/// Names with and without braces, including the awkward ones (a `}` without a tag).
const NAMES: &[&str] = &["deploy", "a{b}c", "{user42}", "user42", "x{}y", "a}b", "}", "{", "{{a}}", "ü{ß}z", "a{b"];

/// Every key of a lock (mutex and semaphore side keys, a waiter's wake-up list): the server's
/// `CLUSTER KEYSLOT` puts each one in the lock key's slot, for names with and without braces.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_of_a_lock_is_in_the_lock_keys_slot_by_cluster_keyslot() {
    let Some(h) = shared() else { return };
    for prefix in ["", "app:", "{tenant}:"] {
        for name in NAMES {
            let key = interlock::redis::lock_key(prefix, name);
            let base = interlock::redis::side_key_base(prefix, name);
            let slot = h.cluster().keyslot(&key).unwrap();
            let suffixes = [
                ":fence",
                ":readers",
                ":q",
                ":qx",
                ":wake:w:0123456789abcdef0123456789abcdef:2000",
                ":sem",
                ":sem:fence",
                ":sem:permits",
                ":sem:q",
                ":sem:qx",
                ":sem:wake:s:0123456789abcdef0123456789abcdef:2000:3",
            ];
            for s in suffixes {
                let side = format!("{base}{s}");
                assert_eq!(h.cluster().keyslot(&side).unwrap(), slot, "{side:?} is not in the slot of {key:?}");
            }
        }
    }
}

/// Mutex, read-write lock and semaphore on names with braces: no `CROSSSLOT`, exclusion holds,
/// tokens increase, and the keys are where the docs say.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_with_braces_lock_on_a_cluster() {
    let Some(h) = shared() else { return };
    let (p, q) = (h.provider().await, h.provider().await);
    for name in NAMES {
        let name = format!("{name}-{}", unique("b"));
        let g = p.mutex(&name).unwrap().try_lock().await.unwrap().expect("free");
        assert!(q.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "{name}: two holders");
        let key = h.key(&name);
        assert!(h.cluster().cmd_for(&key, &["EXISTS", &key]).unwrap().int() == Some(1), "{name}: no key {key:?}");
        let t1 = g.fencing_token().unwrap();
        g.release().await.unwrap();
        let r = q.rwlock(&name).unwrap().read().await.unwrap();
        assert!(p.rwlock(&name).unwrap().try_write().await.unwrap().is_none(), "{name}: a writer with a reader");
        r.release().await.unwrap();
        let w = p.rwlock(&name).unwrap().write().await.unwrap();
        assert!(w.fencing_token().unwrap() > t1, "{name}");
        w.release().await.unwrap();
        let s1 = p.semaphore(&name, 2).unwrap().acquire().await.unwrap();
        let s2 = q.semaphore(&name, 2).unwrap().acquire().await.unwrap();
        assert!(p.semaphore(&name, 2).unwrap().try_acquire().await.unwrap().is_none(), "{name}: a third permit");
        s1.release().await.unwrap();
        s2.release().await.unwrap();
    }
}

/// Names whose slots are on each of the three masters: each locks, its key is on that master
/// (and not on the others), and a waiter on each is woken by the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_on_each_of_the_three_masters() {
    let Some(h) = shared() else { return };
    let (p, q) = (h.provider().await, h.provider().await);
    let c = h.cluster();
    for node in 0..3 {
        let name = (0..)
            .map(|i| format!("{}-{i}", unique("node")))
            .find(|n| c.node_of_slot(c.keyslot(&h.key(n)).unwrap()).unwrap() == node)
            .unwrap();
        let key = h.key(&name);
        let g = p.mutex(&name).unwrap().lock().await.unwrap();
        for other in 0..3 {
            let exists = c.cmd_on(other, &["EXISTS", &key]);
            match (other == node, exists) {
                (true, Ok(r)) => assert_eq!(r.int(), Some(1), "the key is not on master {node}"),
                (false, Err(e)) => assert!(e.to_string().contains("MOVED"), "master {other}: {e}"),
                (mine, r) => panic!("master {other} (owner: {mine}) answered {r:?}"),
            }
        }
        let m = q.mutex(&name).unwrap();
        let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = g.fencing_token().unwrap();
        g.release().await.unwrap();
        let g2 = waiter.await.unwrap().unwrap_or_else(|e| panic!("the waiter on master {node}: {e}"));
        assert!(g2.fencing_token().unwrap() > token);
        g2.release().await.unwrap();
    }
}

/// `CLIENT KILL` of every connection on every master: the lock is a key with a lease, so it
/// stays held, renewals go on over new connections, and nobody else gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_keep_the_lock_and_renewal_continues() {
    let Some(h) = own() else { return };
    let name = unique("clientkill");
    let p = h.provider().await;
    let opts = AcquireOptions::forever().lease(Duration::from_millis(900)).renew_every(Duration::from_millis(300));
    let g = p.mutex(&name).unwrap().lock_with(opts).await.unwrap().unwrap();
    for _ in 0..3 {
        let killed = h.cluster().kill_clients().expect("CLIENT KILL");
        assert!(killed >= 1, "no connection was killed");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!g.is_lost(), "the lock was lost after CLIENT KILL");
        let other = h.provider().await;
        assert!(other.mutex(&name).unwrap().try_lock().await.unwrap().is_none(), "someone else got in");
    }
    g.release().await.expect("released normally, never lost");
}

/// A seed node that does not answer (nothing listens on its port), first in the list: the
/// others give the slot map, and locks work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_seed_among_the_seeds_is_skipped() {
    let Some(h) = shared() else { return };
    let dead = PortLease::reserve(); // leased, nothing listens on it
    let seeds = h.ns().url().replacen("redis+cluster://", &format!("redis+cluster://127.0.0.1:{},", dead.port()), 1);
    let url = format!("{seeds}?prefix={}", h.ns().prefix);
    let p = interlock::connect(&url).await.expect("connect through the live seeds");
    let g = p.mutex(unique("deadseed")).unwrap().lock().await.unwrap();
    g.release().await.unwrap();
    // Only dead seeds: Unavailable, one line.
    let e = interlock::connect(&format!("redis+cluster://:pw@127.0.0.1:{}", dead.port())).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { backend: "redis", .. }), "{e:?}");
    assert!(!one_line(&e).contains("pw@"), "{e}");
}

/// The slot of a lock moves to another master (a resharding) while a waiter waits on it: the
/// waiter is not lost (its wait ends with `MOVED` or times out, and it re-checks on the new
/// master), and the release hands it the lock there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_moving_during_a_wait_does_not_lose_the_waiter() {
    let Some(h) = own() else { return };
    let c = h.cluster();
    let name = unique("moved");
    let key = h.key(&name);
    let slot = c.keyslot(&key).unwrap();
    let (p, q) = (h.provider().await, h.provider().await);
    let g = p.mutex(&name).unwrap().lock().await.unwrap();
    let m = q.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = c.node_of_slot(slot).unwrap();
    let to = (from + 1) % 3;
    tokio::task::block_in_place(|| c.move_slot(slot, to)).expect("move the slot");
    assert_eq!(c.node_of_slot(slot).unwrap(), to);
    assert_eq!(c.cmd_on(to, &["EXISTS", &key]).unwrap().int(), Some(1), "the lock key moved with its slot");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiter.is_finished(), "the waiter gave up: {:?}", waiter.await);
    assert!(!g.is_lost(), "the holder lost its lock in the move");
    let token = g.fencing_token().unwrap();
    g.release().await.expect("the holder releases on the new master");
    let g2 = waiter.await.unwrap().expect("the waiter gets the lock on the new master");
    assert!(g2.fencing_token().unwrap() > token);
    g2.release().await.unwrap();
}

/// The conformance case on a cluster of its own: a restart of every node without persistence is
/// reported to every holder, the providers work afterwards, tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_restart_signals_lost_to_every_holder() {
    let Some(h) = own() else { return };
    interlock_testkit::conformance::server_restart_signals_lost_to_every_holder(&h).await;
}

/// A master is killed (no replica takes over): a lock on its slots fails with a one-line
/// `Unavailable`, at once (connection refused) and once the cluster marks the slots failed
/// (`CLUSTERDOWN`, for every slot); nothing is believed held; a holder there learns it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_slot_is_a_clear_unavailable_error() {
    let Some(h) = own() else { return };
    let c = h.cluster();
    let on = |node: usize| {
        (0..)
            .map(|i| format!("{}-{i}", unique("failed")))
            .find(|n| c.node_of_slot(c.keyslot(&h.key(n)).unwrap()).unwrap() == node)
            .unwrap()
    };
    let (doomed, elsewhere) = (on(2), on(0));
    // Commands (their retries included) give up after 1 s: before the 5 s acquire timeout.
    let p = interlock::connect(&format!("{}&command_timeout=1s", h.url())).await.unwrap();
    let opts = AcquireOptions::forever().lease(Duration::from_millis(1500)).renew_every(Duration::from_millis(500));
    let held = p.mutex(&doomed).unwrap().lock_with(opts).await.unwrap().unwrap();
    // Another client (the holder's own would queue behind its guard, locally).
    let q = interlock::connect(&format!("{}&command_timeout=1s", h.url())).await.unwrap();
    c.node(2).kill();
    let started = Instant::now();
    let e = q.mutex(&doomed).unwrap().lock_timeout(Duration::from_secs(5)).await.map(drop).unwrap_err();
    assert!(matches!(e, Error::Unavailable { backend: "redis", .. }), "{e:?}");
    one_line(&e);
    assert!(started.elapsed() < EVENTUALLY, "took {:?}", started.elapsed());
    tokio::time::timeout(EVENTUALLY, held.lost()).await.expect("the holder on the dead master learns it lost");
    assert!(held.release().await.unwrap_err().is_lock_lost());
    // Once the others mark the master failed, the whole cluster refuses (full coverage).
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let info = c.cmd_on(0, &["CLUSTER", "INFO"]).unwrap().text().unwrap_or_default();
        if info.contains("cluster_state:fail") {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster never marked the master failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = q.mutex(&elsewhere).unwrap().try_lock().await.map(drop).unwrap_err();
    assert!(matches!(e, Error::Unavailable { backend: "redis", .. }), "{e:?}");
    assert!(one_line(&e).to_ascii_lowercase().contains("cluster is down"), "{e}");
}

/// `interlock bench -u redis+cluster://...` runs every workload with its `PING` floor (through
/// a cluster connection, to the master of slot 0) and finds no exclusion violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_runs_on_a_cluster_with_its_floor() {
    let Some(h) = shared() else { return };
    let url = format!("{}?prefix={}", h.ns().url(), h.ns().prefix);
    let args = ["--duration", "0.3", "--clients", "2,3", "--handoffs", "500", "--locks", "200", "--waiters", "10"];
    let out = tokio::process::Command::new(BIN)
        .args(["bench", "-u", &url])
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run interlock bench");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bench failed ({:?}): {stderr}\n{stdout}", out.status);
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(doc["backend"], "redis", "{doc}");
    let floors = doc["uncontended"]["floors"].to_string();
    assert!(floors.contains("PING"), "no PING floor: {doc}");
    assert!(doc["violations"].as_array().is_some_and(Vec::is_empty), "{doc}");
}
