//! `interlock guard` (hidden): the watchman `interlock run` starts before the command on backends
//! whose locks expire. It keeps the command's tree inside the lease whatever happens to
//! interlock itself:
//!
//! - **interlock dies** (even by SIGKILL): nobody renews the lock, so the command's whole tree
//!   must stop. The command itself gets its own parent-death signal, but its children do not. The
//!   guardian leads a process group of its own, which the command then joins; it learns of the
//!   death from its parent-death signal (SIGTERM), from its parent changing, or from the end of
//!   the lease feed below (interlock's end of the pipe closes with it), and kills its group with
//!   SIGKILL.
//! - **interlock is paused** (SIGSTOP, a debugger, an overloaded host) or cannot renew: the lease
//!   runs out while the command goes on. interlock writes each validity instant of the lock to
//!   the guardian's standard input (`--margin-ms`: 8 bytes, little-endian, nanoseconds of
//!   `CLOCK_MONOTONIC`, which every process of the machine shares), at the start and after each
//!   renewal. When the margin before the newest instant is reached with no newer one, the
//!   guardian **stops** every process of the command's tree with SIGSTOP (it cannot be caught
//!   and takes effect at once); if a renewal then arrives in time it continues them (SIGCONT);
//!   if the instant itself passes, the lock may be someone else's: it kills them with SIGKILL,
//!   so that a stopped command never runs again inside another holder's lock, and exits 75.
//!
//! It catches the signals interlock passes on to that group, so that none can end or stop it, and
//! acts on interlock's death only once interlock is really gone. `interlock run` kills it
//! (SIGKILL) once the command's tree is done.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use clap::Args;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, Signal};
use signal_hook::consts::signal as sig;

use crate::exit::{self, Failure, Outcome};
use crate::tree;

/// Arguments of `interlock guard`.
#[derive(Args, Debug)]
pub struct GuardArgs {
    /// interlock's process id: when our parent is no longer this process, interlock is dead
    #[arg(long)]
    pub parent: i32,

    /// Standard input carries the lock's validity instants: stop the command's tree this many
    /// milliseconds before the newest one, kill it at the instant itself
    #[arg(long, value_name = "MS")]
    pub margin_ms: Option<u64>,
}

/// The guardian's margin for a lease: how long before the lease's validity runs out unrenewed it
/// stops the command's tree. A quarter of the lease, at most 1 s: it must cover the guardian's own
/// wake-up and the time to stop every process (a few milliseconds on an idle machine, tens on a
/// loaded one; 1 s leaves room for a badly overloaded one), and stay below the two renewal periods
/// (a renewal every third of the lease) that must fail in a row before it is reached.
pub fn margin(lease: Duration) -> Duration {
    (lease / 4).min(Duration::from_secs(1))
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// `at` (this process's monotonic clock, as `Instant` counts it) as nanoseconds of
/// `CLOCK_MONOTONIC`, the clock the guardian reads: the message interlock writes.
pub fn encode(at: Instant) -> [u8; 8] {
    let (now, ns) = (Instant::now(), now_ns());
    let at_ns = match at.checked_duration_since(now) {
        Some(ahead) => ns.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX)),
        None => ns.saturating_sub(u64::try_from(now.duration_since(at).as_nanos()).unwrap_or(u64::MAX)),
    };
    at_ns.to_le_bytes()
}

/// What the guardian does to the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tree {
    Running,
    Stopped,
}

/// Guards the command's tree (module docs). Exits 75 after killing the tree because the lease ran
/// out, 0 after killing it because interlock died; never returns otherwise (interlock kills us
/// once the tree is done).
///
/// # Errors
///
/// A [`Failure`] (exit 64) for a bad pid, (74) when the signal handlers cannot be set.
pub fn guard(args: GuardArgs) -> Outcome {
    let Some(parent) = Pid::from_raw(args.parent) else {
        return Err(Failure::usage("guard needs a positive --parent"));
    };
    // The command's group is ours, so interlock's signals for it reach us too: catch them all
    // (a caught SIGTSTP does not stop us either); each one wakes the loop below through a
    // self-pipe, and only interlock's death or the lease counts. SIGCONT too: someone continuing
    // the tree while we keep it stopped gets it stopped again.
    let (wake, wake_tx) =
        UnixStream::pair().map_err(|e| Failure::io("cannot create the guardian's wake-up pipe", e))?;
    wake.set_nonblocking(true).map_err(|e| Failure::io("cannot set up the guardian's wake-up pipe", e))?;
    for s in [
        sig::SIGTERM,
        sig::SIGHUP,
        sig::SIGINT,
        sig::SIGQUIT,
        sig::SIGUSR1,
        sig::SIGUSR2,
        sig::SIGALRM,
        sig::SIGTSTP,
        sig::SIGCONT,
    ] {
        let tx = wake_tx.try_clone().map_err(|e| Failure::io("cannot set up the guardian's wake-up pipe", e))?;
        signal_hook::low_level::pipe::register(s, tx).map_err(|e| Failure::io("cannot install signal handlers", e))?;
    }
    drop(wake_tx);
    // interlock blocked SIGTERM for us until now (see `tree::guardian_setup`).
    crate::signals::unblock(&[sig::SIGTERM]);
    let margin = args.margin_ms.map(Duration::from_millis);
    let mut feed = Feed { open: margin.is_some(), ended: false, buf: Vec::new(), deadline: None };
    let mut state = Tree::Running;
    let me = rustix::process::getpid();
    loop {
        // interlock may have died before our parent-death signal was set up (interlock set it
        // between fork and exec, and checked our parent there): look before each wait.
        if rustix::process::getppid() != Some(parent) || feed.ended {
            return Ok(interlock_died());
        }
        let mut wait = None;
        if let (Some(margin), Some(deadline)) = (margin, feed.deadline) {
            let now = now_ns();
            let stop_at = deadline.saturating_sub(u64::try_from(margin.as_nanos()).unwrap_or(u64::MAX));
            if now >= deadline {
                exit::say(
                    "the lock's lease ran out with no renewal (interlock is stopped or cannot reach the backend): \
                     the command, stopped since before the lease's end, is killed (SIGKILL)",
                );
                tree::signal_all_below(parent, me, Signal::KILL);
                return Ok(exit::LOCK_LOST);
            }
            match state {
                Tree::Running if now >= stop_at => {
                    tree::signal_all_below(parent, me, Signal::STOP);
                    state = Tree::Stopped;
                    tracing::debug!(late_ms = (now - stop_at) / 1_000_000, "stopped the command's tree");
                    exit::say(&format!(
                        "no renewal of the lock's lease in time (interlock is stopped or cannot reach the backend): \
                         the command is stopped (SIGSTOP) {margin:?} before the lease runs out, until one comes"
                    ));
                }
                Tree::Stopped if now < stop_at => {
                    tree::signal_all_below(parent, me, Signal::CONT);
                    state = Tree::Running;
                    exit::say("the lock's lease was renewed in time: the command continues (SIGCONT)");
                }
                _ => {}
            }
            wait = Some(Duration::from_nanos(if state == Tree::Running { stop_at } else { deadline } - now));
        }
        let signalled = match feed.wait(&wake, wait) {
            Ok(signalled) => signalled,
            Err(e) => {
                // Without its wait, the guardian cannot guard: stop the tree rather than let it run
                // unwatched (interlock then reports the loss).
                exit::say(&format!("the guardian cannot wait ({e}): the command is killed (SIGKILL)"));
                tree::signal_all_below(parent, me, Signal::KILL);
                return Ok(exit::LOCK_LOST);
            }
        };
        if signalled && state == Tree::Stopped && feed.deadline.is_some() {
            // Someone continued the tree while its lease is too short (interlock forwards no
            // SIGCONT then, but others may send one): stop it again, unless a renewal came.
            let renewed = match (margin, feed.deadline) {
                (Some(m), Some(d)) => now_ns().saturating_add(u64::try_from(m.as_nanos()).unwrap_or(u64::MAX)) < d,
                _ => false,
            };
            if !renewed {
                tree::signal_all_below(parent, me, Signal::STOP);
            }
        }
    }
}

/// interlock is gone: its lock expires unrenewed, so the command's group is killed (us too).
fn interlock_died() -> u8 {
    exit::say("interlock died while the command ran; its lock expires unrenewed, so the command is killed");
    if let Err(e) = rustix::process::kill_current_process_group(Signal::KILL) {
        tracing::debug!(error = %e, "cannot kill the command's process group");
    }
    0
}

/// The lease feed on standard input.
struct Feed {
    /// False without `--margin-ms` (standard input is then not a feed), and after end-of-file.
    open: bool,
    /// End-of-file: interlock's end of the pipe closed, with interlock (it holds it while the
    /// command runs). The kernel closes a dying process's files before it re-parents its
    /// children, so this may come before our parent changes.
    ended: bool,
    buf: Vec<u8>,
    /// The newest validity instant (`CLOCK_MONOTONIC` ns).
    deadline: Option<u64>,
}

impl Feed {
    /// Waits for the feed, a caught signal or `timeout`; reads what came. Returns whether a
    /// signal woke us.
    fn wait(&mut self, wake: &UnixStream, timeout: Option<Duration>) -> io::Result<bool> {
        let stdin = io::stdin();
        let input = stdin.as_fd();
        let ts = timeout.map(|d| Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        let mut fds = vec![PollFd::from_borrowed_fd(wake.as_fd(), PollFlags::IN)];
        if self.open {
            fds.push(PollFd::from_borrowed_fd(input, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let signalled = !fds[0].revents().is_empty();
        let fed = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        drop(fds);
        if signalled {
            let mut sink = [0u8; 64];
            while matches!(rustix::io::read(wake, &mut sink), Ok(n) if n > 0) {}
        }
        if fed {
            let mut chunk = [0u8; 512];
            match rustix::io::read(input, &mut chunk) {
                Ok(0) => {
                    self.open = false;
                    self.ended = true;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    let whole = self.buf.len() / 8 * 8;
                    if let Some(last) = self.buf[..whole].chunks_exact(8).last() {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(last);
                        self.deadline = Some(u64::from_le_bytes(b));
                    }
                    self.buf.drain(..whole);
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(signalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_quarter_of_the_lease_at_most_a_second() {
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(margin(Duration::from_millis(600)), Duration::from_millis(150));
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_secs(1));
    }

    #[test]
    fn instants_are_encoded_on_the_shared_monotonic_clock() {
        let now = u64::from_le_bytes(encode(Instant::now()));
        let later = u64::from_le_bytes(encode(Instant::now() + Duration::from_secs(3)));
        let earlier = u64::from_le_bytes(encode(Instant::now().checked_sub(Duration::from_secs(1)).unwrap()));
        let ns = now_ns();
        assert!(now <= ns && ns - now < 1_000_000_000, "{now} vs {ns}");
        assert!(later > now + 2_900_000_000 && earlier < now);
    }
}
