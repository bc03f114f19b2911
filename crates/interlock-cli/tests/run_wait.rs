//! `interlock run` waiting for a lock on backends whose locks expire, where a waiter's place lives
//! on the server: the signals that reach it while it waits. SIGTSTP (Ctrl-Z, `kill -TSTP`) gives
//! the wait up before interlock stops, so that a stopped waiter is never handed the lock (it would
//! keep it, doing nothing, for its lease) nor holds up the queue, and it waits again once
//! continued, for what is left of `-w`; a second terminating signal while a wait's undo lands
//! ends interlock at once; `timeout(1)`'s two copies of one SIGTERM are one signal, whose undo
//! lands. On redis and on Redlock, private servers through the testkit.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::time::{Duration, Instant};

use cli_support::{BIN, LONG, Proc, interlock};
use interlock::Provider;
use interlock_testkit::{Harness, unique};
use rustix::process::Signal;

/// The next waiter gets the lock within this much after the release (generous: a loaded
/// machine; a stopped waiter that kept its place would hold it up for its 30 s lease).
const NEXT_WITHIN: Duration = Duration::from_secs(6);

/// `interlock run -u URL ARGS... NAME -- sh -c 'echo in'`, started: it prints `in` once it holds
/// the lock. In a process group of its own, whose parent (this test) is in another group of the
/// same session, so that the group is never orphaned: in an orphaned group interlock rightly
/// lets SIGTSTP go (the kernel would discard it), and the test's own group is orphaned when the
/// test run was started by a shell that has exited (`nohup .ci/run &`).
fn waiter(url: &str, args: &[&str], name: &str) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut c = interlock();
    c.process_group(0);
    c.args(["run", "-u", url]).args(args).args([name, "--", "sh", "-c", "echo in"]);
    Proc::spawn(c)
}

/// Waits until `name` has `n` waiters queued on the backend.
async fn queued(p: &Provider, name: &str, n: usize) {
    let deadline = Instant::now() + LONG;
    while p.status(name).await.unwrap().waiters != Some(n) {
        assert!(Instant::now() < deadline, "never {n} waiter(s) queued: {:?}", p.status(name).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until process `pid` is stopped (state `T`).
async fn stopped(w: &Proc) {
    let deadline = Instant::now() + LONG;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", w.pid())).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')) {
            return;
        }
        assert!(Instant::now() < deadline, "interlock never stopped: {stat}; stderr: {}", w.stderr());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A waiting `interlock run --lease 30s` gets SIGTSTP: it leaves the queue before it stops (on
/// this backend a registration would last 2 s, and a release in that time would hand it the lock
/// for its 30 s lease), the next waiter gets the lock from the release, and once continued the
/// first waits again and runs its command.
async fn a_stopped_waiter_gives_up_its_place(url: &str) {
    let p = interlock::connect(url).await.unwrap();
    let name = unique("tstp");
    let held = p.mutex(&name).unwrap().lock().await.unwrap();
    let mut w = waiter(url, &["--lease", "30s"], &name);
    queued(&p, &name, 1).await;
    w.signal(Signal::TSTP);
    stopped(&w).await;
    let status = p.status(&name).await.unwrap();
    assert_eq!(status.waiters, Some(0), "the stopped waiter is still queued: {status:?}");

    let q = interlock::connect(url).await.unwrap();
    let next = {
        let m = q.mutex(&name).unwrap();
        tokio::spawn(async move { m.lock_timeout(LONG).await })
    };
    queued(&p, &name, 1).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let g = next.await.unwrap().expect("the next waiter gets the lock");
    let took = released.elapsed();
    eprintln!("the next waiter got the lock {took:?} after the release (the first one stopped)");
    assert!(took < NEXT_WITHIN, "the next waiter waited {took:?} after the release");
    assert!(w.running(), "{}", w.stderr());

    w.signal(Signal::CONT);
    queued(&p, &name, 1).await;
    g.release().await.unwrap();
    assert_eq!(w.line(), "in", "{}", w.stderr());
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
}

mod on_redis {
    use super::*;

    fn harness() -> Option<interlock_testkit::RedisHarness> {
        interlock_testkit::RedisHarness::new(BIN)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_waiter_gives_up_its_place() {
        let Some(h) = harness() else { return };
        super::a_stopped_waiter_gives_up_its_place(&h.url()).await;
    }

    /// `-w 3`, stopped (SIGTSTP) for 4 s: once continued, what is left of the wait is nothing, so
    /// it makes one attempt and exits with the conflict code at once, rather than waiting 3 s more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_continued_after_its_deadline_makes_one_attempt() {
        let Some(h) = harness() else { return };
        let url = h.url();
        let p = interlock::connect(&url).await.unwrap();
        let name = unique("tstp-deadline");
        let held = p.mutex(&name).unwrap().lock().await.unwrap();
        let mut w = waiter(&url, &["-w", "3"], &name);
        queued(&p, &name, 1).await;
        w.signal(Signal::TSTP);
        stopped(&w).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let continued = Instant::now();
        w.signal(Signal::CONT);
        let st = w.wait();
        let took = continued.elapsed();
        eprintln!("continued after its deadline: exit {st} {took:?} later");
        assert_eq!(st.code(), Some(1), "{}", w.stderr());
        assert!(took < Duration::from_millis(2500), "it waited on past its deadline: {took:?}");
        held.release().await.unwrap();
    }

    /// A waiting `interlock run` gets SIGINT while the server is stopped (SIGSTOP), so that the
    /// wait's undo cannot land; a second SIGINT 200 ms later ends it at once (it died of SIGINT),
    /// not after the 3 s interlock otherwise gives the undo.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_signal_while_the_undo_lands_ends_interlock_at_once() {
        let Some(h) = interlock_testkit::RedisHarness::own_server(BIN) else { return };
        let url = h.url();
        let p = interlock::connect(&url).await.unwrap();
        let name = unique("second-int");
        let _held = p.mutex(&name).unwrap().lock().await.unwrap();
        let mut w = waiter(&url, &["--lease", "30s"], &name);
        queued(&p, &name, 1).await;
        let server = h.ns().redis().server();
        server.pause();
        let started = Instant::now();
        w.signal(Signal::INT);
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.signal(Signal::INT);
        let st = w.wait();
        let took = started.elapsed();
        server.resume();
        eprintln!("two SIGINTs, the server stopped: {st} after {took:?}");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(Signal::INT.as_raw()), "{st}");
        assert!(took < Duration::from_millis(2500), "the second SIGINT did not end interlock: {took:?}");
    }

    /// `timeout -s TERM 1 interlock run ...` sends SIGTERM to interlock and then to its process
    /// group (interlock again), microseconds apart: one signal, whose undo lands before interlock
    /// dies, so nothing stays queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_two_sigterms_of_timeout_are_one_and_the_undo_lands() {
        let Some(h) = harness() else { return };
        if !cli_support::require_tool("timeout", &["--version"]) {
            return;
        }
        let url = h.url();
        let p = interlock::connect(&url).await.unwrap();
        let name = unique("timeout-term");
        let held = p.mutex(&name).unwrap().lock().await.unwrap();
        for _ in 0..3 {
            let out = std::process::Command::new("timeout")
                .args(["-s", "TERM", "1", BIN, "run", "-u", &url, "--lease", "30s", &name, "--", "true"])
                .env_remove("INTERLOCK_LOG")
                .output()
                .expect("run timeout");
            assert_eq!(out.status.code(), Some(124), "{out:?}");
            let status = p.status(&name).await.unwrap();
            assert_eq!(status.waiters, Some(0), "the waiter that timeout ended is still queued: {status:?}");
        }
        held.release().await.unwrap();
    }
}

#[cfg(feature = "redlock")]
mod on_redlock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_waiter_gives_up_its_place() {
        let Some(h) = interlock_testkit::RedlockHarness::new(BIN, 3) else { return };
        super::a_stopped_waiter_gives_up_its_place(&h.url()).await;
    }
}
