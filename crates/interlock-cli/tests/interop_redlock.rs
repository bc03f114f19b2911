//! The redlock backend against the Python Redlock implementations people use today (from PyPI),
//! on the same three masters and the same name, both ways: redlock-py
//! (`Redlock([m1, m2, m3]).lock(name, ttl)`, key `NAME`) and pottery's `Redlock` (key
//! `redlock:NAME`, so interlock uses `?prefix=redlock:`). The masters are a namespace (one
//! database on each) of the testkit's private group of three. A missing tool skips its test
//! loudly, or fails it under `INTERLOCK_TEST_REQUIRE=1` (`scripts/test.sh` installs them).
//!
//! Neither tool publishes on release: interlock's waiters notice within the bounded re-check.
//! The tools hold with a 60 s TTL, so a waiter that gets the lock within 20 s got it from the
//! re-check, not from an expiry.
#![cfg(feature = "redlock")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;
mod redis_peers;

use std::time::{Duration, Instant};

use cli_support::Proc;
use interlock::{Error, Provider};
use interlock_testkit::RedlockHarness;
use interlock_testkit::unique;
use redis_peers::{alnum22, uuid4};

const EVENTUALLY: Duration = Duration::from_secs(20);

/// A Python Redlock, its key prefix (interlock meets it with `?prefix=` this), and the values it
/// sets (read in its source, checked here).
struct Peer {
    tool: &'static str,
    module: &'static str,
    prefix: &'static str,
    value: fn(&str) -> bool,
}

const REDLOCK_PY: Peer = Peer { tool: "redlock-py", module: "redlock", prefix: "", value: alnum22 };
const POTTERY: Peer = Peer { tool: "pottery", module: "pottery", prefix: "redlock:", value: uuid4 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_py_on_three_masters_excludes_and_is_excluded() {
    both_ways(&REDLOCK_PY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pottery_redlock_on_three_masters_with_prefix_redlock_excludes_and_is_excluded() {
    both_ways(&POTTERY).await;
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The masters as `redis://127.0.0.1:PORT/DB` URLs, comma-separated, for the tools.
fn peer_urls(h: &RedlockHarness) -> String {
    h.ns().urls().join(",")
}

fn peer_cmd(peer: &Peer, h: &RedlockHarness, name: &str, mode: &str) -> std::process::Command {
    redis_peers::command(peer.tool, &peer_urls(h), name, mode)
}

fn peer_try(peer: &Peer, h: &RedlockHarness, name: &str) -> bool {
    blocking(|| redis_peers::try_once(peer.tool, &peer_urls(h), name))
}

/// `GET key` on every master.
fn get_all(h: &RedlockHarness, key: &str) -> Vec<Option<String>> {
    h.group().members().iter().map(|r| r.cmd(h.ns().db, &["GET", key]).unwrap().text()).collect()
}

async fn both_ways(peer: &Peer) {
    if !redis_peers::available(peer.module) {
        return;
    }
    let Some(h) = RedlockHarness::new(env!("CARGO_BIN_EXE_interlock"), 3) else { return };
    let name = unique(peer.tool);
    let key = format!("{}{name}", peer.prefix);
    assert_eq!(interlock::redlock::lock_key(peer.prefix, &name), key);
    let url = if peer.prefix.is_empty() { h.base_url() } else { format!("{}?prefix={}", h.base_url(), peer.prefix) };
    let p: Provider = interlock::connect(&url).await.unwrap();
    let m = p.mutex(&name).unwrap();

    // The tool holds: its key holds its token on every master, with a TTL.
    let mut theirs = Proc::spawn(peer_cmd(peer, &h, &name, "hold"));
    let line = blocking(|| theirs.line());
    let token = line.strip_prefix("locked ").unwrap_or_else(|| panic!("{}: {line:?}", peer.tool)).to_owned();
    assert!((peer.value)(&token), "{}: unexpected token {token:?}", peer.tool);
    let held_on = get_all(&h, &key).iter().filter(|v| v.as_deref() == Some(token.as_str())).count();
    assert!(held_on >= 2, "{}: its token is on {held_on} of 3 masters", peer.tool);
    for r in h.group().members() {
        let pttl = r.cmd(h.ns().db, &["PTTL", &key]).unwrap().int().unwrap();
        assert!(pttl == -2 || (pttl > 0 && pttl <= 60_000), "{}: PTTL {pttl}", peer.tool);
    }

    // interlock is kept out.
    assert!(m.try_lock().await.unwrap().is_none(), "{}: interlock got a lock the tool holds", peer.tool);
    let r = m.lock_timeout(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{}: {r:?}", peer.tool);
    assert!(p.rwlock(&name).unwrap().try_read().await.unwrap().is_none(), "{}: a reader got in", peer.tool);

    // A waiter gets the lock once the tool releases (the re-check: the tool does not publish).
    let m2 = m.clone();
    let waiter = tokio::spawn(async move { m2.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "{}: the waiter did not wait", peer.tool);
    theirs.send("release\n");
    assert_eq!(blocking(|| theirs.line()), "released", "{}", peer.tool);
    let g = waiter.await.unwrap().unwrap_or_else(|e| panic!("{}: the waiter never got the lock: {e}", peer.tool));
    assert!(get_all(&h, &key).iter().all(|v| v.as_deref() != Some(token.as_str())), "{}", peer.tool);

    // interlock holds: the tool's attempt fails; its blocking acquire gets it after our release.
    assert!(!peer_try(peer, &h, &name), "{} got a lock interlock holds", peer.tool);
    let mut waiting = Proc::spawn(peer_cmd(peer, &h, &name, "wait=10"));
    assert_eq!(blocking(|| waiting.line()), "busy", "{}: {}", peer.tool, waiting.stderr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiting.running(), "{}: its blocking acquire returned while interlock held the lock", peer.tool);
    g.release().await.unwrap();
    let st = blocking(|| waiting.wait());
    assert!(
        st.success(),
        "{}'s blocking acquire failed after interlock released: {st:?} {}",
        peer.tool,
        waiting.stderr()
    );

    // A read lock: the key holds `interlock:readers` on every master, so the tool's SET NX fails.
    let reader = p.rwlock(&name).unwrap().read().await.unwrap();
    assert!(!peer_try(peer, &h, &name), "{} got a lock interlock's reader holds", peer.tool);
    reader.release().await.unwrap();
    assert!(peer_try(peer, &h, &name), "{} must get the lock once interlock released it", peer.tool);

    theirs.close_stdin();
    assert!(blocking(|| theirs.wait()).success(), "{}: {}", peer.tool, theirs.stderr());
    // Of interlock's keys only the fencing counters stay, on every master. The tool's own lock
    // key may stay on one master with the tool's value (seen with pottery, under load: its
    // acquire returns at a quorum, and a late SET can land after its release); it expires with
    // the tool's TTL and is not interlock's.
    let expected = vec![format!("{}:fence", interlock::redis::side_key_base(peer.prefix, &name))];
    let deadline = Instant::now() + EVENTUALLY;
    for i in 0..3 {
        loop {
            let theirs = |k: &String| {
                *k == key
                    && h.group().member(i).cmd(h.ns().db, &["GET", k]).unwrap().text().is_some_and(|v| (peer.value)(&v))
            };
            let keys: Vec<String> =
                h.ns().keys_on(i).unwrap().into_iter().filter(|k| k.contains(&name) && !theirs(k)).collect();
            if keys == expected {
                break;
            }
            if Instant::now() >= deadline {
                let r = h.group().member(i);
                let value = r.cmd(h.ns().db, &["GET", &key]).ok().and_then(|v| v.text());
                let pttl = r.cmd(h.ns().db, &["PTTL", &key]).ok().and_then(|v| v.int());
                panic!(
                    "{}: left behind on master {i}: {keys:?} (the lock key holds {value:?}, PTTL {pttl:?})",
                    peer.tool
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
