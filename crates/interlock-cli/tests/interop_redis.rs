//! The redis backend against the real Python tools people lock with today (from PyPI), on the
//! same name, both ways, on a namespace (its own database) of the testkit's private
//! `redis-server`: redis-py's `Lock`, python-redis-lock (key `lock:NAME`), pottery's `Redlock`
//! on one master (key `redlock:NAME`), redlock-py on one master, and a plain `SET NX PX` from
//! `redis-cli`. A missing tool skips its test loudly, or fails it under
//! `INTERLOCK_TEST_REQUIRE=1` (`scripts/test.sh` installs them with pip).
//!
//! None of these tools wakes interlock's waiters when it releases: interlock notices within its
//! bounded re-check. The peers hold with no TTL or a 60 s one, so a waiter that gets the lock
//! within the tests' 20 s bound got it from the re-check, not from an expiry.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;
mod redis_peers;

use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{Proc, require_tool};
use interlock::{Error, Provider};
use interlock_testkit::servers::redis::{self, RedisNs};
use interlock_testkit::unique;
use redis_peers::{alnum22, uuid4};

const EVENTUALLY: Duration = Duration::from_secs(20);

/// A Python tool, and what its lock looks like in Redis (read in its source, checked here).
struct Peer {
    /// `TOOL` for [`redis_peers::PEER_PY`].
    tool: &'static str,
    /// The module it needs.
    module: &'static str,
    /// Its key is `prefix + name`: interlock meets it with `?prefix=` this.
    prefix: &'static str,
    /// The token it sets as the key's value, as its source makes it.
    value: fn(&str) -> bool,
    /// What `value` accepts, for messages.
    value_is: &'static str,
    /// The key's TTL with the options [`redis_peers::PEER_PY`] uses: `None` for none (`PTTL` -1).
    ttl_ms: Option<i64>,
    /// How long its blocking acquire may wait for interlock's release, in seconds.
    wait_s: u32,
    /// Keys of its own beside the lock key, left alone by the leftover check.
    own_keys: Option<&'static str>,
}

fn hex32(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn base64_24(v: &str) -> bool {
    v.len() == 24 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// redis-py `redis.Redis().lock(name)`: key `name`, value `uuid1().hex`, no TTL by default
/// (`timeout=None`: `SET name token NX` without `PX`), release by a compare-and-delete script,
/// blocking acquire polls every 0.1 s.
const REDIS_PY: Peer = Peer {
    tool: "redis-py",
    module: "redis",
    prefix: "",
    value: hex32,
    value_is: "32 lowercase hex digits (uuid1().hex)",
    ttl_ms: None,
    wait_s: 10,
    own_keys: None,
};

/// python-redis-lock `redis_lock.Lock(conn, name)`: key `lock:NAME`, value base64 of 18 random
/// bytes, no TTL by default (`expire=None`), release by a compare-and-delete script that also
/// pushes to its own list `lock-signal:NAME` (expiring after 1 s), where its own waiters block
/// in `BLPOP`. interlock's release does not push there, so a waiting python-redis-lock sees our
/// release only when its `BLPOP` times out (its `timeout`; without `timeout` or `expire` it
/// waits forever): 3 s here.
const PYTHON_REDIS_LOCK: Peer = Peer {
    tool: "python-redis-lock",
    module: "redis_lock",
    prefix: "lock:",
    value: base64_24,
    value_is: "24 base64 characters (18 random bytes)",
    ttl_ms: None,
    wait_s: 3,
    own_keys: Some("lock-signal:"),
};

/// pottery `Redlock(key=name, masters={r})` on one master: key `redlock:NAME`, value
/// `str(uuid4())`, `SET NX PX auto_release_time` (10 s by default, 60 s here), release by a
/// compare-and-delete script, blocking acquire retries after a random 0-0.2 s.
const POTTERY: Peer = Peer {
    tool: "pottery",
    module: "pottery",
    prefix: "redlock:",
    value: uuid4,
    value_is: "a version 4 UUID (str(uuid4()))",
    ttl_ms: Some(60_000),
    wait_s: 10,
    own_keys: None,
};

/// redlock-py `Redlock([url]).lock(name, ttl)` on one master: key `name`, value 22 random
/// letters and digits, `SET NX PX ttl`, release by a compare-and-delete script, retries
/// `retry_count` times `retry_delay` apart.
const REDLOCK_PY: Peer = Peer {
    tool: "redlock-py",
    module: "redlock",
    prefix: "",
    value: alnum22,
    value_is: "22 ASCII letters and digits",
    ttl_ms: Some(60_000),
    wait_s: 10,
    own_keys: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lock_excludes_and_is_excluded() {
    both_ways(&REDIS_PY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_redis_lock_with_prefix_lock_excludes_and_is_excluded() {
    both_ways(&PYTHON_REDIS_LOCK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pottery_redlock_on_one_master_with_prefix_redlock_excludes_and_is_excluded() {
    both_ways(&POTTERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_py_on_one_master_excludes_and_is_excluded() {
    both_ways(&REDLOCK_PY).await;
}

/// Blocking calls (child processes, their pipes) from an async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn peer_cmd(peer: &Peer, ns: &RedisNs<'_>, name: &str, mode: &str) -> Command {
    redis_peers::command(peer.tool, &ns.url(), name, mode)
}

/// `peer.py ... try`: true if the tool got the lock at once (and released it).
fn peer_try(peer: &Peer, ns: &RedisNs<'_>, name: &str) -> bool {
    blocking(|| redis_peers::try_once(peer.tool, &ns.url(), name))
}

/// interlock's URL for a peer with key prefix `prefix`, on the namespace's database.
fn url(ns: &RedisNs<'_>, prefix: &str) -> String {
    if prefix.is_empty() { ns.url() } else { format!("{}?prefix={prefix}", ns.url()) }
}

fn get(ns: &RedisNs<'_>, key: &str) -> Option<String> {
    ns.cmd(&["GET", key]).unwrap().text()
}

/// Both ways on one name: the tool holds, interlock is kept out and gets the lock through its
/// re-check once the tool releases (no wake-up from the tool); interlock holds (a mutex, then
/// a read lock), the tool is kept out and gets the lock once interlock releases, with a single
/// attempt and with its own blocking acquire.
async fn both_ways(peer: &Peer) {
    if !redis_peers::available(peer.module) {
        return;
    }
    let Some(server) = redis::shared() else { return };
    let ns = server.namespace();
    let name = unique(peer.tool);
    let key = format!("{}{name}", peer.prefix);
    let p: Provider = interlock::connect(&url(&ns, peer.prefix)).await.unwrap();
    assert_eq!(interlock::redis::lock_key(peer.prefix, &name), key);
    let m = p.mutex(&name).unwrap();

    // The tool holds: its key is `prefix + name` and holds its token.
    let mut theirs = Proc::spawn(peer_cmd(peer, &ns, &name, "hold"));
    let line = blocking(|| theirs.line());
    let token = line.strip_prefix("locked ").unwrap_or_else(|| panic!("{}: {line:?}", peer.tool)).to_owned();
    assert_eq!(get(&ns, &key).as_deref(), Some(token.as_str()), "{}: the key {key:?} holds its token", peer.tool);
    assert!((peer.value)(&token), "{}: {token:?} is not {}", peer.tool, peer.value_is);
    let pttl = ns.cmd(&["PTTL", &key]).unwrap().int().unwrap();
    match peer.ttl_ms {
        None => assert_eq!(pttl, -1, "{}: no TTL by default", peer.tool),
        Some(ttl) => assert!(pttl > 0 && pttl <= ttl, "{}: PTTL {pttl}, expected at most {ttl}", peer.tool),
    }

    // interlock is kept out: one attempt, a bounded wait, a read lock.
    assert!(m.try_lock().await.unwrap().is_none(), "{}: interlock got a lock the tool holds", peer.tool);
    let r = m.lock_timeout(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{}: {r:?}", peer.tool);
    assert!(p.rwlock(&name).unwrap().try_read().await.unwrap().is_none(), "{}: a reader got in", peer.tool);

    // A waiter gets the lock once the tool releases, although the tool wakes nobody: the key
    // has no TTL or a 60 s one, so within 20 s only the re-check can have seen the release.
    let m2 = m.clone();
    let waiter = tokio::spawn(async move { m2.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "{}: the waiter did not wait", peer.tool);
    theirs.send("release\n");
    assert_eq!(blocking(|| theirs.line()), "released", "{}", peer.tool);
    let g = waiter.await.unwrap().unwrap_or_else(|e| panic!("{}: the waiter never got the lock: {e}", peer.tool));
    let ours = get(&ns, &key).expect("our key");
    assert_ne!(ours, token, "{}", peer.tool);

    // interlock holds: the tool's single attempt fails; its blocking acquire gets the lock once
    // interlock releases.
    assert!(!peer_try(peer, &ns, &name), "{} got a lock interlock holds", peer.tool);
    let mut waiting = Proc::spawn(peer_cmd(peer, &ns, &name, &format!("wait={}", peer.wait_s)));
    assert_eq!(blocking(|| waiting.line()), "busy", "{}: {}", peer.tool, waiting.stderr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiting.running(), "{}: its blocking acquire returned while interlock held the lock", peer.tool);
    g.release().await.unwrap();
    let st = blocking(|| waiting.wait());
    assert!(
        st.success(),
        "{}'s blocking acquire did not get the lock after interlock released: {st:?} {}",
        peer.tool,
        waiting.stderr()
    );

    // A read lock: the key holds `interlock:readers`, so the tool's `SET NX` fails too.
    let reader = p.rwlock(&name).unwrap().read().await.unwrap();
    assert_eq!(get(&ns, &key).as_deref(), Some(interlock::redis::READERS_VALUE));
    assert!(!peer_try(peer, &ns, &name), "{} got a lock interlock's reader holds", peer.tool);
    reader.release().await.unwrap();
    assert!(peer_try(peer, &ns, &name), "{} must get the lock once interlock released it", peer.tool);

    theirs.close_stdin();
    assert!(blocking(|| theirs.wait()).success(), "{}: {}", peer.tool, theirs.stderr());
    assert_eq!(get(&ns, &key), None, "{}: the lock is free", peer.tool);
    only_the_fencing_counter_left(&ns, peer.prefix, &name, peer.own_keys).await;
}

/// Of interlock's keys for the name only the fencing counter stays (no queue entry, no wake-up
/// list); keys the tool keeps of its own (`own`) are left out.
async fn only_the_fencing_counter_left(ns: &RedisNs<'_>, prefix: &str, name: &str, own: Option<&str>) {
    let expected = vec![format!("{}:fence", interlock::redis::side_key_base(prefix, name))];
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let keys: Vec<String> = ns
            .keys()
            .unwrap()
            .into_iter()
            .filter(|k| k.contains(name) && !own.is_some_and(|o| k.starts_with(o)))
            .collect();
        if keys == expected {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `redis-cli -p PORT -n DB ARGS...`: its output, trimmed (a nil reply is an empty line).
fn redis_cli(ns: &RedisNs<'_>, args: &[&str]) -> String {
    let mut c = Command::new("redis-cli");
    c.args(["-h", "127.0.0.1", "-p", &ns.redis().port().to_string(), "-n", &ns.db.to_string()]).args(args);
    let out = blocking(|| cli_support::output(c));
    assert!(out.status.success(), "redis-cli {args:?}: {:?} {}", out.status, out.stderr);
    out.stdout.trim().to_owned()
}

/// A plain `SET name v NX PX 60000` from `redis-cli`, released with a plain `DEL`: the key
/// excludes interlock (one attempt, a bounded wait, a reader); a waiter gets the lock after
/// the `DEL` (no wake-up, the TTL 60 s away: the re-check); while interlock holds (mutex or
/// readers) the `SET NX` fails, and it succeeds once interlock released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_set_nx_px_excludes_and_is_excluded() {
    if !require_tool("redis-cli", &["--version"]) {
        return;
    }
    let Some(server) = redis::shared() else { return };
    let ns = server.namespace();
    let name = unique("redis-cli");
    let set_nx = ["SET", name.as_str(), "cli-holder", "NX", "PX", "60000"];
    assert_eq!(redis_cli(&ns, &set_nx), "OK");
    let p = interlock::connect(&ns.url()).await.unwrap();
    let m = p.mutex(&name).unwrap();
    assert!(m.try_lock().await.unwrap().is_none());
    assert!(matches!(m.lock_timeout(Duration::from_millis(300)).await, Err(Error::Timeout { .. })));
    assert!(p.rwlock(&name).unwrap().try_read().await.unwrap().is_none());
    let m2 = m.clone();
    let waiter = tokio::spawn(async move { m2.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    assert_eq!(redis_cli(&ns, &["DEL", &name]), "1");
    let g = waiter.await.unwrap().expect("the waiter gets the lock after the DEL");
    assert_eq!(redis_cli(&ns, &set_nx), "", "SET NX on a lock interlock holds");
    g.release().await.unwrap();
    let reader = p.rwlock(&name).unwrap().read().await.unwrap();
    assert_eq!(redis_cli(&ns, &set_nx), "", "SET NX on a lock interlock's reader holds");
    reader.release().await.unwrap();
    assert_eq!(redis_cli(&ns, &set_nx), "OK");
    assert_eq!(redis_cli(&ns, &["DEL", &name]), "1");
    only_the_fencing_counter_left(&ns, "", &name, None).await;
}
