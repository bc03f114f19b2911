//! Waiters that go away: a waiter that times out, is cancelled, or whose process ends while it
//! waits (`interlock run -w` timing out, SIGTERM, SIGINT, SIGKILL) or stops (SIGSTOP) never holds up
//! the next waiter by more than a short bound, whatever its own lease: the release goes to a real
//! waiter, not to the one that is gone (nor to its full lease). Each case has the gone waiter ask
//! for a long lease, releases the lock, and measures (and prints) how long the next waiter took.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use interlock::{AcquireOptions, Error, Provider};
use rustix::process::Signal;
use tokio::process::{Child, Command};

use crate::harness::Harness;
use crate::unique;

use super::{EVENTUALLY, lease_args, leased, not_applicable};

/// The gone waiter's lease: a delay anywhere near it would be the defect.
const GONE_LEASE: Duration = Duration::from_secs(30);

/// The next waiter gets the lock within this much after the release (generous: a loaded machine;
/// the backends' own bounds are a second or two, see their docs).
const NEXT_WITHIN: Duration = Duration::from_secs(6);

/// How a waiter goes away.
#[derive(Clone, Copy, Debug)]
enum Gone {
    /// `lock_timeout` runs out.
    TimedOut,
    /// The task waiting in `lock()` is aborted.
    Dropped,
    /// `interlock run -w 1` times out.
    CliTimeout,
    /// `interlock run` gets this signal while it waits.
    Signal(Signal),
    /// `interlock run` gets SIGSTOP while it waits, and stays stopped.
    Stopped,
}

/// A library waiter that times out leaves nothing that holds up the next waiter.
pub async fn gone_waiter_timed_out_never_holds_up_the_next<H: Harness>(h: &H) {
    gone_waiter(h, "gone_waiter_timed_out_never_holds_up_the_next", Gone::TimedOut).await;
}

/// A library waiter whose future is dropped (its task aborted) leaves nothing that holds up the
/// next waiter.
pub async fn gone_waiter_dropped_never_holds_up_the_next<H: Harness>(h: &H) {
    gone_waiter(h, "gone_waiter_dropped_never_holds_up_the_next", Gone::Dropped).await;
}

/// `interlock run -w 1` that times out leaves nothing that holds up the next waiter.
pub async fn gone_waiter_cli_timeout_never_holds_up_the_next<H: Harness>(h: &H) {
    gone_waiter(h, "gone_waiter_cli_timeout_never_holds_up_the_next", Gone::CliTimeout).await;
}

/// A waiting `interlock run` ended by SIGTERM (as `timeout` sends it) leaves nothing behind and
/// dies of the signal.
pub async fn gone_waiter_sigterm_never_holds_up_the_next<H: Harness>(h: &H) {
    gone_waiter(h, "gone_waiter_sigterm_never_holds_up_the_next", Gone::Signal(Signal::TERM)).await;
}

/// A waiting `interlock run` ended by SIGINT (Ctrl-C) leaves nothing behind and dies of the
/// signal.
pub async fn gone_waiter_sigint_never_holds_up_the_next<H: Harness>(h: &H) {
    gone_waiter(h, "gone_waiter_sigint_never_holds_up_the_next", Gone::Signal(Signal::INT)).await;
}

/// A waiting `interlock run` killed with SIGKILL (no undo can run) holds up the next waiter only
/// briefly: what it left expires in a short time of its own, not with its lease.
pub async fn gone_waiter_kill_9_never_holds_up_the_next<H: Harness>(h: &H) {
    gone_waiter(h, "gone_waiter_kill_9_never_holds_up_the_next", Gone::Signal(Signal::KILL)).await;
}

/// A waiting `interlock run` stopped with SIGSTOP (and never continued) holds up the next waiter
/// only briefly, on backends whose locks expire. (Where a lock is a kernel lock or a connection's,
/// a stopped waiter that is granted the lock holds it while it is stopped.)
pub async fn gone_waiter_sigstop_never_holds_up_the_next<H: Harness>(h: &H) {
    gone_waiter(h, "gone_waiter_sigstop_never_holds_up_the_next", Gone::Stopped).await;
}

async fn gone_waiter<H: Harness>(h: &H, case: &str, gone: Gone) {
    let cli = !matches!(gone, Gone::TimedOut | Gone::Dropped);
    let bin = match (cli, h.bin()) {
        (true, None) => return not_applicable(case, "no cross-process support"),
        (_, bin) => bin,
    };
    let p = h.provider().await;
    if matches!(gone, Gone::Stopped) && !(p.capabilities().can_lose && h.stopped_holder_loses_lock()) {
        return not_applicable(case, "no leases: a stopped waiter granted the lock holds it while stopped");
    }
    let name = unique("gone");
    let holder = p.mutex(&name).unwrap().lock().await.unwrap();

    // The waiter that goes away, asking for a long lease.
    let waiter_provider = h.provider().await;
    let m = waiter_provider.mutex(&name).unwrap();
    let (mut task, mut child) = (None, None);
    match gone {
        Gone::TimedOut => {
            let opts = leased(&waiter_provider, AcquireOptions::timeout(Duration::from_secs(1)), GONE_LEASE);
            task = Some(tokio::spawn(async move { m.lock_with(opts).await.map(drop) }));
        }
        Gone::Dropped => {
            let opts = leased(&waiter_provider, AcquireOptions::forever(), GONE_LEASE);
            task = Some(tokio::spawn(async move { m.lock_with(opts).await.map(drop) }));
        }
        _ => {
            let mut cmd = Command::new(bin.expect("checked"));
            cmd.arg("run").args(lease_args(&waiter_provider, GONE_LEASE));
            if matches!(gone, Gone::CliTimeout) {
                cmd.args(["-w", "1"]);
            }
            cmd.args([name.as_str(), "--", "true"])
                .env("INTERLOCK_URL", h.url())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            child = Some(cmd.spawn().expect("spawn interlock run"));
        }
    }
    queued(&p, &name, 1).await;

    // It goes.
    let mut left_its_registration = false;
    match gone {
        Gone::TimedOut => {
            let r = task.take().expect("task").await.expect("the waiter task");
            assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        }
        Gone::Dropped => {
            let t = task.take().expect("task");
            t.abort();
            assert!(t.await.unwrap_err().is_cancelled());
        }
        Gone::CliTimeout => {
            let st = exit_of(child.as_mut().expect("child")).await;
            assert_eq!(st.code(), Some(1), "interlock run -w 1 timing out: {st}");
        }
        Gone::Signal(sig) => {
            signal(child.as_ref().expect("child"), sig);
            let st = exit_of(child.as_mut().expect("child")).await;
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(sig.as_raw()), "{st}");
            left_its_registration = sig == Signal::KILL;
        }
        Gone::Stopped => {
            signal(child.as_ref().expect("child"), Signal::STOP);
            // Long enough that a wait it had in flight when it stopped has ended (backends bound
            // each wait by their re-check, 500 ms on Redis and Redlock).
            tokio::time::sleep(Duration::from_millis(1200)).await;
            left_its_registration = true;
        }
    }
    // Where the waiter's place lives on a server (the backends whose locks expire), what it left
    // to undo has been undone (by the processes: before they exited). (A file-lock waiter that was
    // cancelled may stay a waiter in the kernel until it is granted, and then releases at once.)
    if !left_its_registration && p.capabilities().can_lose {
        assert!(interlock::finish_cleanups(EVENTUALLY).await, "cleanups still running");
        let status = p.status(&name).await.unwrap();
        if let Some(w) = status.waiters {
            assert_eq!(w, 0, "{case}: the gone waiter is still queued: {status:?}");
        }
    }

    // The next, real waiter gets the lock from the release.
    let next_provider = h.provider().await;
    let next_m = next_provider.mutex(&name).unwrap();
    let next = tokio::spawn(async move { next_m.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "the next waiter got a held lock");
    let released = Instant::now();
    holder.release().await.unwrap();
    let g = next.await.unwrap().expect("the next waiter gets the lock");
    let took = released.elapsed();
    eprintln!("{case}: the next waiter got the lock {took:?} after the release (gone waiter: {gone:?})");
    assert!(took < NEXT_WITHIN, "{case}: the next waiter waited {took:?} after the release ({gone:?})");
    g.release().await.unwrap();

    if let Some(mut c) = child {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    // Nothing stays queued (what a killed or stopped waiter left expires on its own).
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let status = p.status(&name).await.unwrap();
        if status.waiters.is_none_or(|w| w == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "{case}: still queued: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until at least `n` waiters of `name` are queued, where the backend can tell (otherwise
/// for a moment).
async fn queued(p: &Provider, name: &str, n: usize) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match p.status(name).await.unwrap().waiters {
            None => return tokio::time::sleep(Duration::from_millis(700)).await,
            Some(w) if w >= n => return,
            Some(_) => {}
        }
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exit_of(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(EVENTUALLY, child.wait()).await.expect("interlock run exits").expect("wait")
}

fn signal(child: &Child, sig: Signal) {
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal interlock run");
}
