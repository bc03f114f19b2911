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

use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{Proc, require_tool};
use interlock::{Error, Provider};
use interlock_testkit::RedlockHarness;
use interlock_testkit::unique;

const PYTHON: &str = "python3";
const EVENTUALLY: Duration = Duration::from_secs(20);

/// `peer.py TOOL URL1,URL2,URL3 NAME MODE`, with the modes of interop_redis.rs:
///
/// - `hold`: takes the lock at once (exit 4 if busy), prints `locked TOKEN`; a stdin line
///   `release` releases it (`released`); end of stdin ends the program.
/// - `try`: one attempt: exit 0 after taking and releasing the lock, 3 if busy.
/// - `wait=SECONDS`: one attempt that must fail (exit 5 if it got the lock), `busy`, then the
///   tool's own blocking acquire bounded by SECONDS: exit 0 after taking and releasing, 3 if not.
const PEER_PY: &str = r#"
import sys
import redis

tool, urls, name, mode = sys.argv[1:5]
urls = urls.split(",")


class Pottery:
    # pottery's Redlock on the three masters: key `redlock:NAME`, auto-release after 60 s.
    def __init__(self):
        import pottery
        masters = {redis.Redis.from_url(u) for u in urls}
        self.lock = pottery.Redlock(key=name, masters=masters, auto_release_time=60)

    def acquire(self, wait):
        if wait is None:
            return self.lock.acquire(blocking=False)
        return self.lock.acquire(blocking=True, timeout=wait)

    def release(self):
        self.lock.release()

    def token(self):
        return self.lock._uuid  # private: the value it set, to compare with the keys


class RedlockPy:
    # redlock-py on the three masters: key NAME, a 60 s TTL.
    def __init__(self):
        import redlock
        self.redlock = redlock
        self.held = None

    def acquire(self, wait):
        if wait is None:
            self.dlm = self.redlock.Redlock(urls, retry_count=1, retry_delay=0.01)
        else:
            self.dlm = self.redlock.Redlock(urls, retry_count=int(wait / 0.1) + 1, retry_delay=0.1)
        self.held = self.dlm.lock(name, 60000)
        return bool(self.held)

    def release(self):
        self.dlm.unlock(self.held)

    def token(self):
        return self.held.key.decode()


TOOLS = {"pottery": Pottery, "redlock-py": RedlockPy}
peer = TOOLS[tool]()

if mode == "hold":
    if not peer.acquire(None):
        sys.exit(4)
    print("locked", peer.token(), flush=True)
    for line in sys.stdin:
        if line.strip() == "release":
            peer.release()
            print("released", flush=True)
elif mode == "try":
    if not peer.acquire(None):
        sys.exit(3)
    peer.release()
elif mode.startswith("wait="):
    if peer.acquire(None):
        peer.release()
        sys.exit(5)
    print("busy", flush=True)
    if not peer.acquire(float(mode[len("wait="):])):
        sys.exit(3)
    peer.release()
else:
    sys.exit("unknown mode " + mode)
"#;

/// A Python Redlock, its key prefix (interlock meets it with `?prefix=` this), and the values it
/// sets (read in its source, checked here).
struct Peer {
    tool: &'static str,
    module: &'static str,
    prefix: &'static str,
    value: fn(&str) -> bool,
}

/// redlock-py: 22 random letters and digits.
fn alnum22(v: &str) -> bool {
    v.len() == 22 && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// pottery: `str(uuid4())`.
fn uuid4(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        && parts[2].starts_with('4')
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

fn peer_cmd(peer: &Peer, h: &RedlockHarness, name: &str, mode: &str) -> Command {
    let mut c = Command::new(PYTHON);
    c.args(["-c", PEER_PY, peer.tool, &peer_urls(h), name, mode]);
    c
}

fn peer_try(peer: &Peer, h: &RedlockHarness, name: &str) -> bool {
    let out = blocking(|| cli_support::output(peer_cmd(peer, h, name, "try")));
    match out.code() {
        Some(0) => true,
        Some(3) => false,
        other => panic!("{} try exited {other:?}: {}", peer.tool, out.stderr),
    }
}

/// `GET key` on every master.
fn get_all(h: &RedlockHarness, key: &str) -> Vec<Option<String>> {
    h.group().members().iter().map(|r| r.cmd(h.ns().db, &["GET", key]).unwrap().text()).collect()
}

async fn both_ways(peer: &Peer) {
    if !require_tool(PYTHON, &["-c", &format!("import redis, {}", peer.module)]) {
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
    let expected = vec![format!("{{{key}}}:fence")];
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
